"""Read raw results and stop on anything the contract does not allow.

Every script of the pipeline reads `results/raw/` through these functions, so a missing column, a
value of the wrong type, a NaN timing, a device folder without `provenance.json` or a `git_sha` the
repository does not know stops the pipeline with a `RawDataError` naming the file, the line and
the column. The frames returned are typed and carry `source_row` (the 0-based data row of the
file) so that every derived number can name the rows it came from (`trace.py`).
"""
from __future__ import annotations

import json
import math
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .schema import (CEILING_COLUMNS, CEILING_STAGES, HELDOUT_COLUMNS, HELDOUT_CONFIGS, HELDOUT_SETS, HELDOUT_TEXT,
                     LATENCY_COLUMNS, LATENCY_NOTE, PROVENANCE_KEYS, STAGES, TOOLS, TRAFFIC_COLUMNS, TRAFFIC_OPTIONAL)

LATENCY_KEY = ["model", "dtype", "routing", "tokens", "impl", "graph"]
TRAFFIC_KEY = ["model", "dtype", "tokens", "impl", "stage", "tool"]
CEILING_KEY = ["model", "dtype", "tokens", "impl", "stage"]
HELDOUT_KEY = ["set", "model", "dtype", "routing", "tokens", "impl", "config"]
_SHA = re.compile(r"^[0-9a-f]{7,40}(-dirty)?$")


class RawDataError(ValueError):
    """Raw results that break the contract; the message names the file, line and column."""


def _where(path: Path, row: int | None, column: str | None = None) -> str:
    at = str(path)
    if row is not None:
        at += f", line {row + 2} (data row {row})"  # line 1 is the header
    if column is not None:
        at += f", column {column!r}"
    return at


# One parser per kind of schema.py: text -> value, raising ValueError with what was expected.
def _name(text: str):
    if not text or text != text.strip():
        raise ValueError("expected a non-empty name without surrounding spaces")
    return text


def _positive_int(text: str):
    if not re.fullmatch(r"[0-9]+", text) or int(text) <= 0:
        raise ValueError("expected a positive integer")
    return int(text)


def _flag(text: str):
    if text not in ("0", "1"):
        raise ValueError("expected 0 or 1")
    return int(text)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number (NaN or Inf is not a measurement)")
    return value


def _positive_float(text: str):
    value = _finite(text)
    if value <= 0:
        raise ValueError("expected a positive number")
    return value


def _timing(text: str):
    value = _finite(text)
    if value < 0:
        raise ValueError("expected a non-negative number")
    return value


def _bytes(text: str):
    value = _finite(text)
    if value < 0 or value != int(value):
        raise ValueError("expected a non-negative whole number of bytes")
    return int(value)


def _git_sha(text: str):
    if not _SHA.match(text):
        raise ValueError("expected a git commit SHA (7 to 40 hex digits, optionally '-dirty')")
    return text


def _timestamp(text: str):
    try:
        return pd.Timestamp(text).isoformat()
    except ValueError:
        raise ValueError("expected an ISO 8601 timestamp") from None


def _enum(allowed):
    def parse(text: str):
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text
    return parse


PARSERS = {
    "name": _name, "positive_int": _positive_int, "flag": _flag, "positive_float": _positive_float,
    "timing": _timing, "bytes": _bytes, "git_sha": _git_sha, "timestamp": _timestamp,
    "stage": _enum(STAGES), "tool": _enum(TOOLS), "heldout_set": _enum(HELDOUT_SETS),
}


@lru_cache(maxsize=None)
def _is_repository(repo: str) -> bool:
    done = subprocess.run(["git", "-C", repo, "rev-parse", "--git-dir"], capture_output=True)
    return done.returncode == 0


@lru_cache(maxsize=None)
def _commit_known(repo: str, sha: str) -> bool:
    done = subprocess.run(["git", "-C", repo, "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True)
    return done.returncode == 0


def check_git_sha(sha: str, where: str, repo: str | Path = ".") -> None:
    """The commit (without a '-dirty' suffix) must exist in `repo`: results name the code that made them."""
    repo = str(repo)
    if not _is_repository(repo):
        raise RawDataError(f"{where}: cannot check git_sha {sha!r}: {repo!r} is not a git repository "
                           f"(run the pipeline in a clone, or set check_git_sha: false in config/config.yaml)")
    commit = sha.removesuffix("-dirty")
    if not _commit_known(repo, commit):
        raise RawDataError(f"{where}: git_sha {sha!r} is not a commit of this repository; expected the SHA "
                           f"of the commit that produced the row (fetch it, or rerun the measurement)")


def read_csv_checked(path: str | Path, columns: dict[str, str], *, optional_text: tuple[str, ...] = (),
                     optional: dict[str, str] | None = None, device: str | None = None,
                     repo: str | Path | None = ".") -> pd.DataFrame:
    """Reads `path`, checks every row against `columns` (name -> kind) and returns typed columns plus
    `source_row`. `optional`: columns checked (and kept) only where the file has them; `device`: the
    folder's slug, which the `device` column must equal; `repo`: where `git_sha` values are looked
    up (None skips that check)."""
    path = Path(path)
    if not path.is_file():
        raise RawDataError(f"{path}: file not found")
    try:
        text = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise RawDataError(f"{path}: not a readable CSV file ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in text.columns]
    if missing:
        raise RawDataError(f"{_where(path, None)}: missing column(s) {', '.join(map(repr, missing))}; "
                           f"expected at least: {', '.join(columns)}")
    if len(text) == 0:
        raise RawDataError(f"{path}: no data rows")
    columns = {**columns, **{c: k for c, k in (optional or {}).items() if c in text.columns}}
    typed = {}
    notes = text[LATENCY_NOTE] if LATENCY_NOTE in text.columns else pd.Series([""] * len(text))
    for column, kind in columns.items():
        parse = PARSERS[kind]
        values = []
        for row, cell in enumerate(text[column]):
            if kind == "timing" and cell == "":
                if notes.iloc[row].strip():
                    values.append(math.nan)  # not measured, and the note says why
                    continue
                raise RawDataError(f"{_where(path, row, column)}: empty timing without a note; expected a "
                                   f"number, or a 'note' column saying why nothing was measured")
            try:
                values.append(parse(cell))
            except ValueError as e:
                raise RawDataError(f"{_where(path, row, column)} = {cell!r}: {e}") from None
        typed[column] = values
    frame = pd.DataFrame(typed)
    for column in optional_text:
        if column in text.columns:
            frame[column] = text[column].values
    frame["source_row"] = range(len(frame))
    if device is not None:
        wrong = frame.index[frame["device"] != device]
        if len(wrong):
            row = int(wrong[0])
            raise RawDataError(f"{_where(path, row, 'device')} = {frame['device'][row]!r}: expected {device!r}, "
                               f"the name of the folder holding the file")
    if repo is not None and "git_sha" in frame:
        for sha, group in frame.groupby("git_sha", sort=False):
            check_git_sha(sha, _where(path, int(group.index[0]), "git_sha"), repo)
    return frame


def _check_unique(frame: pd.DataFrame, key: list[str], path: Path) -> None:
    dup = frame.index[frame.duplicated(key, keep="first")]
    if len(dup):
        row = int(dup[0])
        first = int(frame.index[(frame[key] == frame.loc[row, key]).all(axis=1)][0])
        raise RawDataError(f"{_where(path, row)}: repeats the measurement of data row {first} "
                           f"(same {', '.join(key)}); expected one row per measurement")


def _check_quantiles(frame: pd.DataFrame, path: Path) -> None:
    """p20_ms <= median_ms <= p80_ms on every timed row (rows without timing, which carry a note, are skipped)."""
    measured = frame["median_ms"].notna() & frame["p20_ms"].notna() & frame["p80_ms"].notna()
    bad = frame.index[measured & ((frame["p20_ms"] > frame["median_ms"]) | (frame["median_ms"] > frame["p80_ms"]))]
    if len(bad):
        row = int(bad[0])
        raise RawDataError(f"{_where(path, row, 'median_ms')}: expected p20_ms <= median_ms <= p80_ms, got "
                           f"{frame['p20_ms'][row]}, {frame['median_ms'][row]}, {frame['p80_ms'][row]}")


def _check_allowed(frame: pd.DataFrame, column: str, allowed, path: Path, rows=None, also: str = "") -> None:
    """Every value of `column` (in `rows`, a mask; all rows by default) is one of `allowed`; `also` names what else
    the message should say is accepted."""
    rows = pd.Series(True, index=frame.index) if rows is None else rows
    bad = frame.index[rows & ~frame[column].isin(allowed)]
    if len(bad):
        row = int(bad[0])
        raise RawDataError(f"{_where(path, row, column)} = {frame[column][row]!r}: expected one of "
                           f"{', '.join(allowed)}{also}")


def read_latency(path: str | Path, *, device: str | None = None, repo: str | Path | None = ".") -> pd.DataFrame:
    """`latency.csv` of one device, checked; `note` is kept (empty where absent)."""
    path = Path(path)
    frame = read_csv_checked(path, LATENCY_COLUMNS, optional_text=(LATENCY_NOTE,), device=device, repo=repo)
    if LATENCY_NOTE not in frame:
        frame[LATENCY_NOTE] = ""
    _check_quantiles(frame, path)
    zero = frame.index[frame["median_ms"] == 0]
    if len(zero):
        raise RawDataError(f"{_where(path, int(zero[0]), 'median_ms')}: expected a positive time, got 0")
    _check_unique(frame, LATENCY_KEY, path)
    return frame


def read_traffic(path: str | Path, *, device: str | None = None, repo: str | Path | None = ".") -> pd.DataFrame:
    """`traffic.csv` of one device (ncu) or the interpreter's byte counts, checked."""
    path = Path(path)
    frame = read_csv_checked(path, TRAFFIC_COLUMNS, optional=TRAFFIC_OPTIONAL, device=device, repo=repo)
    _check_unique(frame, TRAFFIC_KEY, path)
    return frame


def read_ceiling(path: str | Path, *, device: str | None = None, repo: str | Path | None = ".") -> pd.DataFrame:
    """`ceiling.csv` of one device (`experiments/bench/ceiling.py`), checked: stages gate_up and down only,
    p20 <= median <= p80, one row per product."""
    path = Path(path)
    frame = read_csv_checked(path, CEILING_COLUMNS, device=device, repo=repo)
    _check_allowed(frame, "stage", CEILING_STAGES, path)
    _check_quantiles(frame, path)
    _check_unique(frame, CEILING_KEY, path)
    return frame


def read_heldout(path: str | Path, *, device: str | None = None, repo: str | Path | None = ".") -> pd.DataFrame:
    """`heldout.csv` of one device (`experiments/bench/heldout.py`), checked, with `variant`: the config's name on the
    headline impl's rows (own, borrowed, default), the impl's name on a peer's (whose `config` is empty)."""
    path = Path(path)
    frame = read_csv_checked(path, HELDOUT_COLUMNS, optional_text=HELDOUT_TEXT, device=device, repo=repo)
    for column in HELDOUT_TEXT:
        if column not in frame:
            frame[column] = ""
    peer = frame["config"] == ""
    _check_allowed(frame, "config", HELDOUT_CONFIGS, path, rows=~peer, also=", or empty on a peer's row")
    _check_quantiles(frame, path)
    _check_unique(frame, HELDOUT_KEY, path)
    frame["variant"] = frame["config"].where(~peer, frame["impl"])
    return frame


def read_provenance(device_dir: str | Path, *, repo: str | Path | None = ".") -> dict:
    """`provenance.json` of a device folder: a JSON object with at least `PROVENANCE_KEYS`."""
    path = Path(device_dir) / "provenance.json"
    if not path.is_file():
        raise RawDataError(f"{path}: missing; every device folder needs the provenance.json its run wrote "
                           f"(device, versions, git SHA, measured rates, command)")
    try:
        prov = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RawDataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(prov, dict):
        raise RawDataError(f"{path}: expected a JSON object, got {type(prov).__name__}")
    missing = [k for k in PROVENANCE_KEYS if not prov.get(k)]
    if missing:
        raise RawDataError(f"{path}: missing or empty key(s) {', '.join(map(repr, missing))}; expected at least "
                           f"{', '.join(PROVENANCE_KEYS)}")
    try:
        _git_sha(str(prov["git_sha"]))
    except ValueError as e:
        raise RawDataError(f"{path}, key 'git_sha' = {prov['git_sha']!r}: {e}") from None
    if repo is not None:
        check_git_sha(str(prov["git_sha"]), f"{path}, key 'git_sha'", repo)
    return prov


def device_folders(raw_root: str | Path, known: list[str]) -> list[str]:
    """Slugs of the devices with a folder under `raw_root`, sorted; each must be a known slug and hold
    `provenance.json`. A device without a folder was not measured."""
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        return []
    slugs = sorted(p.name for p in raw_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for slug in slugs:
        if slug not in known:
            raise RawDataError(f"{raw_root / slug}: unknown device folder {slug!r}; expected one of "
                               f"{', '.join(known)} (add a new device to 'devices' in config/config.yaml)")
        if not (raw_root / slug / "provenance.json").is_file():
            raise RawDataError(f"{raw_root / slug / 'provenance.json'}: missing; every device folder needs the "
                               f"provenance.json its run wrote")
    return slugs
