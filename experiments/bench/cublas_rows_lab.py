"""Lab (perf notes v24): which cuBLAS kernel runs one expert's product at each row count, and how long it takes.

rows_lab (v24) found cuBLAS, one `torch.mm` per expert on the draw's rows, paying less for the uneven rows than our
grouped kernels at mixtral-8x22b (drawn/even 1.04-1.06 against 1.14-1.18). This lab asks why: for each `--rows` M it
times the two products of one expert, gate|up ([M, H] x [H, 2F]) and down ([M, F] x [F, H]), as CUDA-graph replays
(`tune.graph_time`), on random bf16 operands, and records the kernel(s) cuBLAS launched (torch.profiler), with the
tile and cluster shape read from the kernel's name where it gives them (`tile_of`).

    python experiments/bench/cublas_rows_lab.py --model mixtral-8x22b --rows 128 143 237 256 270 292 --out $OUT/cublas_rows.csv
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from problems import load_models, write_lab_csv  # noqa: E402

_TILE = re.compile(r"tilesize(\d+)x(\d+)x(\d+)")
_CLUSTER = re.compile(r"cluster(\d+)x(\d+)x(\d+)")
# cuBLAS's nvjet kernels: nvjet_<types>_<tile M>x<tile N>_<tile K>x<stages>_<cluster M>x<cluster N>_...
_NVJET = re.compile(r"nvjet_(?:[a-z0-9]+_)*?(\d+)x(\d+)_(\d+)x(\d+)_(\d+)x(\d+)_")


def tile_of(name: str) -> dict:
    """The tile (M x N x K) and cluster (M x N x K CTAs) a cuBLAS/CUTLASS kernel's name states, as strings like
    '128x256x64' ('' where the name does not say); nvjet kernels name them as
    nvjet_<arch>_<types>_<M>x<N>_<K>x<stages>_<cluster M>x<cluster N>_..., read that way (cuBLAS's M and N are
    those of the column-major product it computes: for torch.mm(a, w) on row-major tensors, M runs along w's
    columns and N along a's rows)."""
    j = _NVJET.search(name)
    if j:
        return {"tile": f"{j[1]}x{j[2]}x{j[3]}", "cluster": f"{j[5]}x{j[6]}x1"}
    t, c = _TILE.search(name), _CLUSTER.search(name)
    return {"tile": "x".join(t.groups()) if t else "", "cluster": "x".join(c.groups()) if c else ""}


def kernels_of(fn) -> list[str]:
    """The names of the GPU kernels one call of `fn` launches (torch.profiler), in launch order."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return [e.name for e in sorted(events, key=lambda e: e.time_range.start)]


def main_kernel(names: list[str]) -> str:
    """The GEMM among a call's kernels: the first whose name says nvjet or gemm and is not a split-K reduction,
    else the longest name ('' for none)."""
    for n in names:
        if ("nvjet" in n or "gemm" in n.lower()) and "reduce" not in n.lower():
            return n
    return max(names, key=len) if names else ""


def main(argv=None) -> int:
    from ceiling import usable
    from tune import graph_time
    models = load_models()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mixtral-8x7b", choices=list(models))
    ap.add_argument("--rows", nargs="+", type=int, default=[128, 256, 270])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if any(r < 1 for r in args.rows):
        ap.error(f"--rows: expected positive row counts, got {args.rows}")
    if not torch.cuda.is_available():
        print("cublas_rows_lab.py: no GPU here", file=sys.stderr)
        return 2
    m = models[args.model]
    gen = torch.Generator(device="cuda").manual_seed(0)
    scale = m.hidden ** -0.5
    w13 = (torch.randn((m.hidden, 2 * m.ffn), generator=gen, device="cuda") * scale).to(torch.bfloat16)
    w2 = (torch.randn((m.ffn, m.hidden), generator=gen, device="cuda") * scale).to(torch.bfloat16)
    rows = []
    for r in args.rows:
        for product, w in (("gate_up", w13), ("down", w2)):
            a = torch.randn((r, w.shape[0]), generator=gen, device="cuda").to(torch.bfloat16)

            def fn(a=a, w=w):
                return torch.mm(a, w)
            if not usable(fn()):
                raise RuntimeError(f"{args.model} rows={r} {product}: the product is not finite or is all zeros")
            us = graph_time(fn) * 1e3
            names = kernels_of(fn)
            main_k = main_kernel(names)
            shape = tile_of(main_k)
            rows.append({"device": torch.cuda.get_device_name(), "model": args.model, "product": product, "rows": r,
                         "us": round(us, 2), "kernels": len(names), **shape, "kernel": main_k[:300],
                         "others": ";".join(n[:80] for n in names if n != main_k)})
            print(f"{args.model} rows={r:5d} {product:7s} {us:8.1f} us  {shape}  {main_k[:140]}", flush=True)
        write_lab_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
