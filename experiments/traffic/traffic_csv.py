"""Rows of `traffic.csv` (CONTRACTS.md) and their atomic, merging write.

Contract columns first, then extensions that make each row explainable on its own:
- `model_read_bytes`/`model_write_bytes`: the model flavour the tool is compared with: `logical`
  for `tool=interpreter` (it must equal the count), `unique` for `tool=ncu`.
- `model_weight_read_bytes`: the weights' share of `model_read_bytes`.
- `logical_*`, `unique_*`: both flavours, always; `padding_bytes`: the unique bytes the BLOCK_M
  padding rows cost in that stage (in the model; part of the distance to the floor).
- `routed_rows` (T*K), `padded_rows` (num_post_padded), `hit_experts`, `fewest_bytes` (the
  floor's, per layer; the same on every stage row of a call).
"""
from __future__ import annotations

import csv
from pathlib import Path

from experiments.analysis.atomic import atomic_write
from tritonmoe.traffic import STAGES, TRITON_IMPLS, Blocks, LayerShape, Launch, fewest_bytes, padding_bytes, stage_traffic

CONTRACT_COLUMNS = ("device", "model", "dtype", "tokens", "impl", "stage", "dram_read_bytes", "dram_write_bytes",
                    "model_read_bytes", "model_write_bytes", "tool")
EXTRA_COLUMNS = ("model_weight_read_bytes", "logical_read_bytes", "logical_write_bytes", "unique_read_bytes",
                 "unique_write_bytes", "padding_bytes", "routed_rows", "padded_rows", "hit_experts", "fewest_bytes")
COLUMNS = CONTRACT_COLUMNS + EXTRA_COLUMNS
TOOL_FLAVOUR = {"interpreter": "logical", "ncu": "unique"}
# A measurement is identified by these; a new run replaces the old rows with the same key.
RUN_KEY = ("device", "model", "dtype", "tokens", "impl", "tool")


def stage_rows(*, device: str, model: str, dtype: str, impl: str, tool: str, shape: LayerShape,
               expert_counts, launch_list: list[Launch], config: dict | None,
               measured: dict[str, tuple[int, int]]) -> list[dict]:
    """One row per stage and 'total'. `launch_list` is the model of the call (`launches(impl, shape,
    expert_counts, config)`); `measured[stage] = (read, write)`, missing stages read as 0."""
    if tool not in TOOL_FLAVOUR:
        raise ValueError(f"tool: expected one of {tuple(TOOL_FLAVOUR)}, got {tool!r}")
    logical, unique = stage_traffic(launch_list, "logical"), stage_traffic(launch_list, "unique")
    compared = logical if TOOL_FLAVOUR[tool] == "logical" else unique
    triton_impl = impl in TRITON_IMPLS
    padded = Blocks.from_counts(shape, expert_counts, config["BLOCK_M"]).padded_rows if triton_impl else shape.routed
    padding = padding_bytes(impl, shape, expert_counts, config) if triton_impl else {}
    per_call = {
        "routed_rows": shape.routed, "padded_rows": padded,
        "hit_experts": sum(1 for c in expert_counts if int(c) > 0),
        "fewest_bytes": fewest_bytes(shape, expert_counts),
    }
    rows = []
    for stage in (*STAGES, "total"):
        got = measured.get(stage, (0, 0))
        rows.append({
            "device": device, "model": model, "dtype": dtype, "tokens": shape.tokens, "impl": impl, "stage": stage,
            "dram_read_bytes": int(got[0]), "dram_write_bytes": int(got[1]),
            "model_read_bytes": compared[stage].read, "model_write_bytes": compared[stage].write, "tool": tool,
            "model_weight_read_bytes": compared[stage].weight_read,
            "logical_read_bytes": logical[stage].read, "logical_write_bytes": logical[stage].write,
            "unique_read_bytes": unique[stage].read, "unique_write_bytes": unique[stage].write,
            "padding_bytes": padding.get(stage, 0), **per_call,
        })
    return rows


def read_rows(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict], *, merge: bool = True) -> None:
    """Writes `rows` to `path` atomically (`experiments.analysis.atomic`). With `merge`, rows
    already there whose run key (`RUN_KEY`) no new row has are kept."""
    path = Path(path)
    new_keys = {tuple(str(r[k]) for k in RUN_KEY) for r in rows}
    kept = [r for r in read_rows(path) if tuple(str(r.get(k, "")) for k in RUN_KEY) not in new_keys] if merge else []
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(kept + rows)
