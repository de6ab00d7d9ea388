"""Atomic file writes: a failed or interrupted run leaves the previous file intact.

Every write goes to a temporary file in the same folder (so the final rename stays on one file
system), is flushed to disk, then replaces the target with `os.replace`, which is atomic on POSIX.
A reader therefore sees the old file or the new one, never half of one. Use it for anything under
`results/raw/` and for every generated file of the pipeline:

    from experiments.analysis.atomic import atomic_write, write_text, write_json, write_csv

    with atomic_write("results/raw/h100-sxm/latency.csv") as f:   # text mode; "wb" for bytes
        frame.to_csv(f, index=False)
    write_json("results/raw/h100-sxm/provenance.json", provenance)
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Yields a file open on a temporary sibling of `path`; on a clean exit it replaces `path`, on an
    exception it is deleted and `path` is untouched. `mode` is "w" (text) or "wb" (bytes)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: expected 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # keep the old file's permissions; mkstemp makes 0600
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame, **to_csv_kwargs) -> None:
    """`frame.to_csv` through a temporary file; `index=False` unless given."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        frame.to_csv(f, **to_csv_kwargs)
