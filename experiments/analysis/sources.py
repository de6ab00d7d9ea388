"""One loader per kind of input file, chosen by the file's name, so a script and the tracing check
read a file the same way. Every frame carries `source_file` (the path as given) and `source_row`."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from .build import read_build_file
from .raw import RawDataError, read_ceiling, read_csv_checked, read_heldout, read_latency, read_traffic

# Analytic traffic model over the sweep (traffic_model.py writes it; weight_read_bytes splits out the weights).
TRAFFIC_MODEL_COLUMNS = {
    "model": "name", "dtype": "name", "tokens": "positive_int", "impl": "name", "stage": "stage",
    "model_read_bytes": "bytes", "model_write_bytes": "bytes", "weight_read_bytes": "bytes",
}
# Interpreter correctness on small shapes (interp_correctness.py writes it).
CORRECTNESS_COLUMNS = {
    "impl": "name", "dtype": "name", "tokens": "positive_int", "hidden": "positive_int", "ffn": "positive_int",
    "experts": "positive_int", "top_k": "positive_int", "rel_err": "timing", "tolerance": "positive_float",
}


def _traffic_model(path: Path, repo) -> pd.DataFrame:
    return read_csv_checked(path, TRAFFIC_MODEL_COLUMNS, repo=None)


def _correctness(path: Path, repo) -> pd.DataFrame:
    return read_csv_checked(path, CORRECTNESS_COLUMNS, repo=None)


LOADERS = {
    "latency.csv": lambda p, repo: read_latency(p, device=p.parent.name, repo=repo),
    "traffic.csv": lambda p, repo: read_traffic(p, device=p.parent.name, repo=repo),
    "ceiling.csv": lambda p, repo: read_ceiling(p, device=p.parent.name, repo=repo),
    "heldout.csv": lambda p, repo: read_heldout(p, device=p.parent.name, repo=repo),
    "traffic_interpreter.csv": lambda p, repo: read_traffic(p, repo=None),
    "traffic_model.csv": _traffic_model,
    "interp_correctness.csv": _correctness,
}


def load_rows(path: str | Path, repo: str | Path | None = ".") -> pd.DataFrame:
    """The checked rows of `path` with `source_file` and `source_row`; `repo=None` skips git_sha checks."""
    path = Path(path)
    if path.suffix == ".json" and path.name != "provenance.json":
        frame = read_build_file(path)
    else:
        loader = LOADERS.get(path.name)
        if loader is None:
            raise ValueError(f"path: expected a file named one of {', '.join(LOADERS)} or a compile result "
                             f"<build>/<target>/<impl>.json, got {str(path)!r}")
        frame = loader(path, repo)
    frame["source_file"] = str(path)
    return frame


def load_all(paths, repo: str | Path | None = ".") -> pd.DataFrame:
    """`load_rows` of every path, one frame (an empty one for no paths)."""
    paths = list(paths)
    return pd.concat([load_rows(p, repo) for p in paths], ignore_index=True) if paths else pd.DataFrame()


def read_yaml(path: str | Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def lookup(document, keys: list, where: str):
    """document[keys[0]][keys[1]]...; a missing key raises naming `where` and the key path."""
    value = document
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise RawDataError(f"{where}: no key {'.'.join(map(str, keys))!r}") from None
    return value


def read_document(path: str | Path):
    """A YAML or JSON file as Python data."""
    path = Path(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return read_yaml(path)
