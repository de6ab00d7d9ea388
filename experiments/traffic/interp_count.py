"""Bytes counted in Triton's CPU interpreter for every Triton variant, against the logical model.

    python experiments/traffic/interp_count.py --out build/traffic/interpreter.csv

Runs each of `small_layers.SMALL_LAYERS` through `tritonmoe.moe` for each variant under
`interp_counter.InterpreterCounter` and writes one traffic.csv row per (layer, impl, stage) with
`tool=interpreter`, device `cpu-interpreter`: `dram_*` are the counted bytes, `model_*` the logical
model (`tritonmoe.traffic`), which must be equal. It exits 1 (and says where) if any launch differs.
This is a generated output of the pipeline, never a raw result.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# The interpreter must be chosen before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.route_align import route_and_align  # noqa: E402
from tritonmoe.traffic import TRITON_IMPLS, Blocks, LayerShape, Launch, launches  # noqa: E402

from experiments.traffic.interp_counter import InterpreterCounter, LaunchCount  # noqa: E402
from experiments.traffic.small_layers import SMALL_LAYERS, SmallLayer  # noqa: E402
from experiments.traffic.traffic_csv import stage_rows, write_rows  # noqa: E402

DEVICE = "cpu-interpreter"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class LayerCount:
    """One layer call: what the interpreter counted and what the model says, launch by launch."""
    layer: SmallLayer
    impl: str
    shape: LayerShape
    blocks: Blocks
    config: dict
    counted: list[LaunchCount]
    modelled: list[Launch]


def count_layer(layer: SmallLayer, impl: str) -> LayerCount:
    """Runs `tritonmoe.moe` once under the counter; the expert counts come from the same routing
    and alignment, run beforehand outside the counter."""
    x, wr, w_gate_up, w_down = layer.inputs()
    E, H, F, K = layer.experts, layer.hidden, layer.ffn, layer.top_k
    shape = LayerShape.of(layer.tokens, H, F, E, K, layer.dtype)
    cfg = layer.config(resolve_config(x, shape.routed, E, H, F, None))
    _, _, align = route_and_align(x, wr, K, True, cfg["BLOCK_M"], tail_of(cfg))
    blocks = Blocks.from_alignment(shape, align)
    with InterpreterCounter(weights=(wr, w_gate_up, w_down)) as counter:
        tritonmoe.moe(x, wr, w_gate_up, w_down, K, impl=impl, config=cfg)
    modelled = launches(impl, shape, blocks.expert_counts, cfg)
    return LayerCount(layer, impl, shape, blocks, cfg, counter.launches, modelled)


def mismatches(c: LayerCount) -> list[str]:
    """Every difference between counted and modelled launches, one line each (empty when equal)."""
    where = f"{c.layer.name} T={c.layer.tokens} {c.impl}"
    got, want = [k.kernel for k in c.counted], [m.kernel for m in c.modelled]
    if got != want:
        return [f"{where}: kernels launched {got}, model lists {want}"]
    out = []
    for i, (k, m) in enumerate(zip(c.counted, c.modelled)):
        if k.unattributed:
            out.append(f"{where}: launch {i} {k.kernel}: {k.unattributed} bytes at no argument's address")
        counted, model = k.by_buffer(), {n: rw for n, rw in m.by_buffer("logical").items() if rw != (0, 0)}
        for name in sorted(set(counted) | set(model)):
            if counted.get(name, (0, 0)) != model.get(name, (0, 0)):
                out.append(f"{where}: launch {i} {k.kernel}.{name}: counted (read, write) = "
                           f"{counted.get(name, (0, 0))}, model = {model.get(name, (0, 0))}")
        if k.traffic != m.traffic("logical"):
            out.append(f"{where}: launch {i} {k.kernel}: counted {k.traffic}, model {m.traffic('logical')}")
    return out


def measured_stages(counted: list[LaunchCount]) -> dict[str, tuple[int, int]]:
    """Counted (read, write) bytes per stage and 'total'."""
    out: dict[str, tuple[int, int]] = {}
    for k in counted:
        r, w = out.get(k.stage, (0, 0))
        out[k.stage] = (r + k.traffic.read, w + k.traffic.write)
    out["total"] = (sum(k.traffic.read for k in counted), sum(k.traffic.write for k in counted))
    return out


def rows_of(c: LayerCount) -> list[dict]:
    return stage_rows(device=DEVICE, model=c.layer.name, dtype=DTYPE_NAMES[c.layer.dtype], impl=c.impl,
                      tool="interpreter", shape=c.shape, expert_counts=c.blocks.expert_counts,
                      launch_list=c.modelled, config=c.config, measured=measured_stages(c.counted))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="traffic.csv to write (replaced, not merged)")
    ap.add_argument("--impls", nargs="+", default=list(TRITON_IMPLS), choices=list(TRITON_IMPLS))
    args = ap.parse_args(argv)
    rows, problems = [], []
    for layer in SMALL_LAYERS:
        for impl in args.impls:
            c = count_layer(layer, impl)
            problems += mismatches(c)
            rows += rows_of(c)
    write_rows(args.out, rows, merge=False)
    print(f"interp_count: {len(rows)} rows to {args.out}")
    for p in problems:
        print(f"MISMATCH {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
