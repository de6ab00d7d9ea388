"""Every number the paper prints is one of these functions applied to rows of raw results.

Each function takes the rows it is computed from (a frame made by the loaders of `raw.py` or
`sources.py`, with `source_file` and `source_row`) and keyword parameters, and returns the value.
`trace.py` records the function's name, its parameters and the rows it read beside every generated
`.tex` file; `check_tracing.py` reads the rows again and calls the same function, so a number that
does not come from raw rows (a constant typed into a script) cannot reach the paper unnoticed.
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd

DERIVATIONS: dict[str, Callable] = {}


def derivation(fn: Callable) -> Callable:
    DERIVATIONS[fn.__name__] = fn
    return fn


def _one(rows: pd.DataFrame, what: str) -> pd.Series:
    if len(rows) != 1:
        raise ValueError(f"{what}: expected exactly one row, got {len(rows)}")
    return rows.iloc[0]


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite value, got {value}")
    return value


@derivation
def cell(rows: pd.DataFrame, column: str):
    """The value of `column` in the single row given."""
    value = _one(rows, "cell")[column]
    return value.item() if hasattr(value, "item") else value


@derivation
def floor_fraction(rows: pd.DataFrame) -> float:
    """floor_ms / median_ms of one latency row: 1 means the run moved at the physical floor."""
    row = _one(rows, "floor_fraction")
    return _finite(row["floor_ms"] / row["median_ms"], "floor_fraction")


def _by_tokens(rows: pd.DataFrame, impl: str, baseline: str, column: str) -> pd.DataFrame:
    wide = rows.pivot(index="tokens", columns="impl", values=column)
    for name in (impl, baseline):
        if name not in wide:
            raise ValueError(f"impl: expected rows of {name!r}, got only {sorted(wide.columns)}")
    return wide


@derivation
def speedup(rows: pd.DataFrame, impl: str, baseline: str) -> float:
    """median_ms of `baseline` / median_ms of `impl` at one token count (above 1: `impl` is faster)."""
    wide = _by_tokens(rows, impl, baseline, "median_ms")
    if len(wide) != 1:
        raise ValueError(f"speedup: expected one token count, got {list(wide.index)}")
    return _finite(float(wide[baseline].iloc[0] / wide[impl].iloc[0]), "speedup")


@derivation
def speedup_extreme(rows: pd.DataFrame, impl: str, baseline: str, extreme: str) -> float:
    """The smallest (`extreme='min'`) or largest speed-up of `impl` over `baseline` across token counts."""
    wide = _by_tokens(rows, impl, baseline, "median_ms")
    ratio = (wide[baseline] / wide[impl]).dropna()
    if ratio.empty:
        raise ValueError("speedup_extreme: no token count with both impls measured")
    return float(getattr(ratio, extreme)())


def _moved(rows: pd.DataFrame, counter: str, weights: str | None) -> pd.Series:
    moved = rows[f"{counter}_read_bytes"] + rows[f"{counter}_write_bytes"]
    if weights is not None:
        if weights not in rows:
            raise ValueError(f"weights: expected a {weights!r} column to subtract, got columns {list(rows.columns)}")
        moved = moved - rows[weights]
    return moved


@derivation
def traffic_saved(rows: pd.DataFrame, impl: str, baseline: str, counter: str, extreme: str,
                  weights: str | None = None) -> float:
    """1 - bytes(impl) / bytes(baseline) over `stage == 'total'` rows, the smallest or largest across
    token counts. `counter`: 'dram' (measured or counted) or 'model' (analytic); `weights`: a column
    of weight bytes to subtract (activations only), e.g. the model's `weight_read_bytes`."""
    total = rows[rows["stage"] == "total"].assign(moved=lambda r: _moved(r, counter, weights))
    wide = _by_tokens(total, impl, baseline, "moved")
    saved = (1 - wide[impl] / wide[baseline]).dropna()
    if saved.empty:
        raise ValueError("traffic_saved: no token count with both impls")
    return float(getattr(saved, extreme)())


@derivation
def model_error_max(rows: pd.DataFrame) -> float:
    """Largest |counted - model| / model over the rows (read plus write bytes): how well the analytic
    traffic model predicts the bytes the interpreter counted."""
    counted = rows["dram_read_bytes"] + rows["dram_write_bytes"]
    model = rows["model_read_bytes"] + rows["model_write_bytes"]
    nonzero = model > 0
    if not nonzero.any():
        raise ValueError("model_error_max: every row has zero model bytes")
    err = ((counted - model).abs() / model)[nonzero]
    return float(err.max())


@derivation
def count_rows(rows: pd.DataFrame) -> int:
    return int(len(rows))


@derivation
def count_distinct(rows: pd.DataFrame, column: str) -> int:
    return int(rows[column].nunique())


@derivation
def count_where(rows: pd.DataFrame, column: str, at_most: float | None = None, equals=None) -> int:
    """Rows whose `column` is at most `at_most` (NaN never is) or equals `equals`."""
    if at_most is not None:
        return int((rows[column] <= at_most).sum())
    return int((rows[column] == equals).sum())


@derivation
def count_positive(rows: pd.DataFrame, column: str) -> int:
    """Rows whose `column` is above zero (e.g. kernels with matrix instructions)."""
    return int((rows[column] > 0).sum())


@derivation
def count_within_tolerance(rows: pd.DataFrame) -> int:
    """Rows whose rel_err is at most their tolerance (a NaN rel_err never is)."""
    return int((rows["rel_err"] <= rows["tolerance"]).sum())


@derivation
def fastest_impl(rows: pd.DataFrame) -> str:
    """The impl with the smallest median_ms among rows of one token count."""
    if rows["tokens"].nunique() != 1:
        raise ValueError("fastest_impl: expected rows of one token count")
    timed = rows.dropna(subset=["median_ms"])
    if timed.empty:
        raise ValueError("fastest_impl: no timed rows")
    return str(timed.loc[timed["median_ms"].idxmin(), "impl"])


@derivation
def distinct_text(rows: pd.DataFrame, column: str) -> str:
    """The distinct non-empty values of a text column, space-separated, in sorted order."""
    words = sorted({w for value in rows[column].dropna() for w in str(value).split()})
    return " ".join(words)


@derivation
def max_of(rows: pd.DataFrame, column: str) -> float:
    return float(rows[column].max())


@derivation
def min_of(rows: pd.DataFrame, column: str) -> float:
    return float(rows[column].min())
