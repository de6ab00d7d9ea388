"""The columns of the raw results (../shared/CONTRACTS.md) and the kind of value each must hold.

`raw.py` checks every file against these when it reads it. Columns may be added to the files
(the contract allows extending); the ones listed here must be present. A kind names a parser in
`raw.py`; `timing` columns may be empty only on a row whose `note` says why nothing was measured.
"""
from __future__ import annotations

STAGES = ("routing", "gate_up", "act", "down", "combine", "total")
TOOLS = ("ncu", "interpreter")

LATENCY_COLUMNS: dict[str, str] = {
    "device": "name",
    "model": "name",
    "dtype": "name",
    "routing": "name",
    "tokens": "positive_int",
    "impl": "name",
    "graph": "flag",
    "median_ms": "timing",
    "p20_ms": "timing",
    "p80_ms": "timing",
    "floor_ms": "positive_float",
    "rel_err": "timing",
    "git_sha": "git_sha",
    "timestamp": "timestamp",
}
# Optional: why a row holds no timing (a baseline that cannot run, an impl that cannot be captured).
LATENCY_NOTE = "note"

TRAFFIC_COLUMNS: dict[str, str] = {
    "device": "name",
    "model": "name",
    "dtype": "name",
    "tokens": "positive_int",
    "impl": "name",
    "stage": "stage",
    "dram_read_bytes": "bytes",
    "dram_write_bytes": "bytes",
    "model_read_bytes": "bytes",
    "model_write_bytes": "bytes",
    "tool": "tool",
}

# Extensions of traffic.csv (experiments/traffic/traffic_csv.py) read where present: the model's
# weight bytes among model_read_bytes, to split measured traffic into weights and activations.
TRAFFIC_OPTIONAL: dict[str, str] = {c: "bytes" for c in (
    "model_weight_read_bytes", "logical_read_bytes", "logical_write_bytes", "unique_read_bytes",
    "unique_write_bytes", "padding_bytes", "fewest_bytes")}

# ceiling.csv (experiments/bench/ceiling.py, an extension of the contract): the dense reference, the vendor's
# batched GEMMs on the layer's two products with even rows per expert (impl cublas_bmm), and one cuBLAS GEMM per
# expert on the rows of the sweep's draw (impl cublas_mm_drawn, rows_per_expert the largest expert's); one row per
# product (stage gate_up or down) and impl.
CEILING_COLUMNS: dict[str, str] = {
    "device": "name",
    "model": "name",
    "dtype": "name",
    "tokens": "positive_int",
    "stage": "stage",
    "impl": "name",
    "rows_per_expert": "positive_int",
    "median_ms": "positive_float",
    "p20_ms": "positive_float",
    "p80_ms": "positive_float",
    "git_sha": "git_sha",
    "timestamp": "timestamp",
}
CEILING_STAGES = ("gate_up", "down")

# heldout.csv (experiments/bench/heldout.py, an extension of the contract): the layer on configs a shape borrows
# from the nearest tuned shape, on the per-backend defaults and (held-out shapes) torch_grouped_mm beside them; on
# the tuned models (set `loo`) also on their own tables. `config` is empty on the peer's rows.
HELDOUT_COLUMNS: dict[str, str] = {
    **LATENCY_COLUMNS,
    "set": "heldout_set",
    "experts": "positive_int",
    "hidden": "positive_int",
    "ffn": "positive_int",
    "top_k": "positive_int",
}
HELDOUT_SETS = ("heldout", "loo")
HELDOUT_CONFIGS = ("own", "borrowed", "default")
HELDOUT_TEXT = ("config", "config_source", "note")

# provenance.json: the keys the paper's set-up section reads; more may be present.
PROVENANCE_KEYS = ("device_name", "git_sha", "date", "command")
