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


# --- memory traffic: the fusion's saving, and ncu against the model and the floor -----------------
# Rows of traffic.csv (ncu: `dram_*` measured, `model_*` the unique-bytes model) or of the traffic
# model's CSV (`model_*` only, with `weight_read_bytes`).

@derivation
def tokens_reaching_saved(rows: pd.DataFrame, impl: str, baseline: str, counter: str, share: float,
                          weights: str | None = None) -> int:
    """The smallest token count at which `impl` saves at least `share` of `baseline`'s bytes
    (`stage == 'total'` rows; `counter` and `weights` as in `traffic_saved`); 0 when no token count
    of the rows does."""
    total = rows[rows["stage"] == "total"].assign(moved=lambda r: _moved(r, counter, weights))
    wide = _by_tokens(total, impl, baseline, "moved")
    saved = (1 - wide[impl] / wide[baseline]).dropna()
    if saved.empty:
        raise ValueError("tokens_reaching_saved: no token count with both impls")
    reached = saved[saved >= share]
    return int(reached.index.min()) if len(reached) else 0


def _measured_and_model(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    total = rows[rows["stage"] == "total"]
    if total.empty:
        raise ValueError("rows: expected traffic rows of stage 'total', got none")
    return (total["dram_read_bytes"] + total["dram_write_bytes"],
            total["model_read_bytes"] + total["model_write_bytes"])


@derivation
def dram_over_model(rows: pd.DataFrame, extreme: str) -> float:
    """Measured DRAM bytes / the model's bytes (read plus write) of `stage == 'total'` rows, the
    smallest (`extreme='min'`) or largest over the rows: 1 means the model predicts ncu exactly."""
    measured, model = _measured_and_model(rows)
    ratio = (measured / model.where(model > 0)).dropna()
    if ratio.empty:
        raise ValueError("dram_over_model: every total row has zero model bytes")
    return float(getattr(ratio, extreme)())


@derivation
def dram_over_fewest(rows: pd.DataFrame) -> float:
    """Measured DRAM bytes / the floor's fewest bytes (hit experts' weights, x once, y once) of one
    total row."""
    row = _one(rows[rows["stage"] == "total"], "dram_over_fewest")
    return _finite(float((row["dram_read_bytes"] + row["dram_write_bytes"]) / row["fewest_bytes"]),
                   "dram_over_fewest")


@derivation
def weight_read_factor(rows: pd.DataFrame) -> float:
    """(hit weights + DRAM reads beyond the model's unique reads) / hit weights of one total row: an
    upper bound on how many times each weight byte came from DRAM (1: each read once)."""
    row = _one(rows[rows["stage"] == "total"], "weight_read_factor")
    rereads = max(row["dram_read_bytes"] - row["model_read_bytes"], 0)
    return _finite(float((row["model_weight_read_bytes"] + rereads) / row["model_weight_read_bytes"]),
                   "weight_read_factor")


@derivation
def megabytes_beyond_model(rows: pd.DataFrame, part: str) -> float:
    """One total row, in MB (1e6 bytes): `part='total'` measured - model bytes; `'read'` DRAM reads
    beyond the model's unique reads (tile re-reads that L2 did not keep); `'write'` the model's
    unique writes that the DRAM counter had not seen when the kernels ended (held in L2). The
    parts add up: total = read - write."""
    row = _one(rows[rows["stage"] == "total"], "megabytes_beyond_model")
    parts = {"read": row["dram_read_bytes"] - row["model_read_bytes"],
             "write": row["model_write_bytes"] - row["dram_write_bytes"]}
    parts["total"] = parts["read"] - parts["write"]
    if part not in parts:
        raise ValueError(f"part: expected one of {', '.join(parts)}, got {part!r}")
    return float(parts[part] / 1e6)


@derivation
def reread_share(rows: pd.DataFrame) -> float:
    """Of one total row's possible tile re-reads (logical reads beyond the unique reads), the share
    that reached DRAM (reads beyond the unique reads); the rest stayed in L2."""
    row = _one(rows[rows["stage"] == "total"], "reread_share")
    possible = row["logical_read_bytes"] - row["unique_read_bytes"]
    if possible <= 0:
        raise ValueError(f"reread_share: expected logical reads beyond the unique reads, got {possible} bytes")
    return float(max(row["dram_read_bytes"] - row["unique_read_bytes"], 0) / possible)


def _dense_pair_ms(rows: pd.DataFrame, dense: str) -> float:
    """Sum of the gate_up and down products' median_ms of the dense reference `dense` (ceiling.csv rows)."""
    pair = rows[rows["impl"] == dense]
    if sorted(pair["stage"]) != ["down", "gate_up"]:
        raise ValueError(f"dense: expected one gate_up and one down row of {dense!r}, got stages "
                         f"{sorted(pair['stage'])}")
    return _finite(float(pair["median_ms"].sum()), "dense_ms")


@derivation
def dense_ms(rows: pd.DataFrame, dense: str) -> float:
    """The dense reference's two products together (ms): the expert GEMMs alone, even rows per expert."""
    return _dense_pair_ms(rows, dense)


@derivation
def dense_floor_fraction(rows: pd.DataFrame, dense: str, impl: str) -> float:
    """floor_ms (of `impl`'s latency row: the floor of that token count) / the dense pair's ms: how close to
    the floor the vendor's GEMMs alone come on the same per-expert problems."""
    row = _one(rows[rows["impl"] == impl], "dense_floor_fraction")
    return _finite(row["floor_ms"] / _dense_pair_ms(rows, dense), "dense_floor_fraction")


@derivation
def over_dense(rows: pd.DataFrame, dense: str, impl: str) -> float:
    """The dense pair's ms / `impl`'s whole-layer median_ms (above 1: the layer beats the GEMMs alone)."""
    row = _one(rows[rows["impl"] == impl], "over_dense")
    return _finite(_dense_pair_ms(rows, dense) / row["median_ms"], "over_dense")


# --- configs for shapes without a table (heldout.csv: `variant` is own, borrowed, default or a peer's impl) --------

def _variant_ratio(rows: pd.DataFrame, variant: str, baseline: str) -> pd.Series:
    """median_ms of `baseline` / median_ms of `variant` per (model, routing, tokens) point where both were timed."""
    wide = rows.pivot(index=["model", "routing", "tokens"], columns="variant", values="median_ms")
    for name in (variant, baseline):
        if name not in wide:
            raise ValueError(f"variant: expected rows of {name!r}, got only {sorted(wide.columns)}")
    ratio = (wide[baseline] / wide[variant]).dropna()
    if ratio.empty:
        raise ValueError(f"variant_speedup: no point with both {variant!r} and {baseline!r} timed")
    return ratio


@derivation
def variant_speedup(rows: pd.DataFrame, variant: str, baseline: str, stat: str) -> float:
    """The speed of `variant` over `baseline` (baseline ms / variant ms; above 1: `variant` is faster) across the
    (model, routing, tokens) points of the rows: their geometric mean (`stat='geomean'`), smallest or largest."""
    ratio = _variant_ratio(rows, variant, baseline)
    if stat == "geomean":
        return float(math.exp(sum(math.log(r) for r in ratio) / len(ratio)))
    if stat not in ("min", "max"):
        raise ValueError(f"stat: expected geomean, min or max, got {stat!r}")
    return float(getattr(ratio, stat)())


@derivation
def variant_slower_count(rows: pd.DataFrame, variant: str, baseline: str) -> int:
    """The (model, routing, tokens) points where `variant` took longer than `baseline`."""
    return int((_variant_ratio(rows, variant, baseline) < 1).sum())


@derivation
def variant_points(rows: pd.DataFrame, variant: str, baseline: str) -> int:
    """The (model, routing, tokens) points where both `variant` and `baseline` were timed."""
    return int(len(_variant_ratio(rows, variant, baseline)))


@derivation
def floor_fraction_extreme(rows: pd.DataFrame, extreme: str) -> float:
    """The smallest (`extreme='min'`) or largest floor_ms / median_ms over the timed rows given."""
    timed = rows.dropna(subset=["median_ms"])
    if timed.empty:
        raise ValueError("floor_fraction_extreme: no timed rows")
    return float(getattr(timed["floor_ms"] / timed["median_ms"], extreme)())


@derivation
def borrowed_shape(rows: pd.DataFrame) -> str:
    """The tuned shapes (E<e>_H<h>_F<f> of the table files) the rows' borrowed configs came from, space-separated."""
    picked = rows.loc[rows["config"] == "borrowed", "config_source"]
    # "borrowed:<device>/<file>@<bucket>", and "+tails:<BLOCK_M>/<TAIL_M>" where the skew guard added tails
    shapes = sorted({str(s).split("@")[0].split("/")[-1].removesuffix(".json").rsplit("_", 1)[0] for s in picked
                     if str(s)})
    if not shapes:
        raise ValueError("borrowed_shape: no borrowed rows with a config_source")
    return " ".join(shapes)
