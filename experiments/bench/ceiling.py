"""The dense ceiling: cuBLAS's batched GEMMs on the layer's two products, every expert given the same rows.

For each model and token count, `torch.bmm` on `[E, m, H] x [E, H, 2F]` (gate|up) and on `[E, m, F] x [E, F, H]`
(down), `m = ceil(T*K / E)` rows per expert: the expert GEMMs of the layer with perfectly even routing and
nothing else (no router, no alignment or padding, no gather, no SwiGLU, no combine). It is not a peer (it does not
compute the layer) but a reference for the floor: the fraction of `floor_ms` that vendor GEMMs reach on the same
per-expert problems tells how much of a layer's distance to the floor is the GEMM shape itself. Weights and
inputs are random (never zeros); each product is timed like every row of the sweep (`timing.bench`: the L2
evicted by a read before each call, medians with p20/p80), so the weights come from DRAM as in the layer.

A second reference, `cublas_mm_drawn` (models of at most `DRAWN_MAX_EXPERTS` experts), gives every expert the rows
the sweep's uniform draw gives it at that token count (the sweep's weights and tokens, `tritonmoe.route`), one
cuBLAS `torch.mm` per expert and product; `rows_per_expert` is then the largest expert's rows. It is what the
vendor's GEMMs alone pay on the layer's own uneven rows (NOTES v24: cuBLAS sizes its tiles to the rows; our
kernels' 128-row blocks pay more). With more experts the launches of a per-expert loop would weigh on the timing,
so those models get no such rows.

Writes `results/raw/<device>/ceiling.csv` (one row per model, token count and product; rows of other models
and token counts already there are kept):

    python experiments/bench/ceiling.py --device-out results/raw/h100-sxm --git-sha $(git rev-parse --short HEAD)
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from problems import load_models, make_weights  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe.tuned import device_slug  # noqa: E402

CEILING_TOKENS = (256, 512, 1024, 2048, 4096, 8192)
IMPLS = ("cublas_bmm", "cublas_mm_drawn")
DRAWN_MAX_EXPERTS = 16
COLUMNS = ["device", "model", "dtype", "tokens", "stage", "impl", "rows_per_expert", "median_ms", "p20_ms", "p80_ms",
           "git_sha", "timestamp"]
KEY = ["model", "dtype", "tokens", "stage", "impl"]


def products(m, tokens: int, w_gate_up: torch.Tensor, w_down: torch.Tensor, gen: torch.Generator):
    """(stage, rows per expert, callable) for the two batched GEMMs at `tokens`."""
    rows = math.ceil(tokens * m.top_k / m.experts)
    a = torch.randn((m.experts, rows, m.hidden), generator=gen, device="cuda").to(torch.bfloat16)
    act = torch.randn((m.experts, rows, m.ffn), generator=gen, device="cuda").to(torch.bfloat16)
    wgu, wd = w_gate_up.transpose(1, 2), w_down.transpose(1, 2)
    return [("gate_up", rows, lambda: torch.bmm(a, wgu)), ("down", rows, lambda: torch.bmm(act, wd))]


def usable(products) -> bool:
    """True when every product (a tensor, or a list or tuple of tensors and of pairs of them) is finite and not all
    zeros: what a timed reference must give before its timing counts."""
    if isinstance(products, (list, tuple)):
        return all(usable(p) for p in products)
    return bool(torch.isfinite(products).all()) and float(products.abs().max()) > 0


def drawn_counts(m, tokens: int, w) -> list[int]:
    """Rows per expert of the sweep's uniform draw at `tokens` (its tokens, seed = tokens, through `tritonmoe.route`)."""
    import tritonmoe
    from problems import make_tokens
    x = make_tokens(m, tokens, w, "uniform", torch.bfloat16, w.w_gate_up.device, seed=tokens)
    _, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    return torch.bincount(ids.flatten().long(), minlength=m.experts).tolist()


def drawn_products(counts, w_gate_up: torch.Tensor, w_down: torch.Tensor, gen: torch.Generator):
    """(stage, largest expert's rows, callable) for the two products with `counts[e]` rows for expert e: one
    `torch.mm` per expert that has rows, on random operands; a callable returns the list of its products."""
    if len(counts) != w_gate_up.shape[0] or min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"counts: expected {w_gate_up.shape[0]} non-negative rows per expert, not all zero, "
                         f"got {list(counts)}")
    dev, dt = w_gate_up.device, w_gate_up.dtype
    hit = [(e, c) for e, c in enumerate(counts) if c > 0]
    a = [torch.randn((c, w_gate_up.shape[2]), generator=gen, device=dev).to(dt) for _, c in hit]
    act = [torch.randn((c, w_down.shape[2]), generator=gen, device=dev).to(dt) for _, c in hit]
    wgu = [w_gate_up[e].transpose(0, 1) for e, _ in hit]
    wd = [w_down[e].transpose(0, 1) for e, _ in hit]
    rows = max(counts)
    return [("gate_up", rows, lambda: [torch.mm(x, y) for x, y in zip(a, wgu)]),
            ("down", rows, lambda: [torch.mm(x, y) for x, y in zip(act, wd)])]


def measure(models: list, tokens: list[int], git_sha: str, impls=IMPLS) -> list[dict]:
    slug = device_slug(torch.device("cuda"))
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for m in models:
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")  # the sweep's weights (scaled so products stay O(1))
        for t in tokens:
            todo = []
            if "cublas_bmm" in impls:
                todo += [("cublas_bmm", *p) for p in products(m, t, w.w_gate_up, w.w_down, gen)]
            if "cublas_mm_drawn" in impls and m.experts <= DRAWN_MAX_EXPERTS:
                todo += [("cublas_mm_drawn", *p) for p in drawn_products(drawn_counts(m, t, w), w.w_gate_up,
                                                                          w.w_down, gen)]
            for impl, stage, rows, fn in todo:
                if not usable(fn()):
                    raise RuntimeError(f"{m.name} T={t} {stage}: the product is not finite or is all zeros")
                med, p20, p80 = bench(fn)
                out.append({"device": slug, "model": m.name, "dtype": "bf16", "tokens": t, "stage": stage,
                            "impl": impl, "rows_per_expert": rows, "median_ms": med, "p20_ms": p20,
                            "p80_ms": p80, "git_sha": git_sha,
                            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")})
                print(f"{m.name:14s} T={t:5d} {impl:15s} {stage:7s} m={rows:4d} {med * 1e3:9.1f} us", flush=True)
        del w
        torch.cuda.empty_cache()
    return out


def merge(path: Path, rows: list[dict]) -> pd.DataFrame:
    """The file's rows with `rows` replacing those of the same key."""
    from device_info import merge_rows
    new = merge_rows(path, pd.DataFrame(rows, columns=COLUMNS), KEY)
    order = new[["model", "tokens", "stage"]].astype(str).assign(tokens=new["tokens"].astype(int))
    return new.loc[order.sort_values(["model", "tokens", "stage"], kind="stable").index]


def main(argv=None) -> int:
    models = load_models()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device-out", type=Path, required=True, help="results/raw/<device> (ceiling.csv goes there)")
    ap.add_argument("--git-sha", required=True, help="the commit of the code that runs (recorded in every row)")
    ap.add_argument("--git-dirty", type=int, default=0, help="1: the tree had changes (rows say <sha>-dirty)")
    ap.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=list(CEILING_TOKENS))
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("ceiling.py: no GPU here", file=sys.stderr)
        return 2
    t0 = time.time()
    sha = args.git_sha + ("-dirty" if args.git_dirty else "")
    rows = measure([models[n] for n in args.models], args.tokens, sha, args.impls)
    args.device_out.mkdir(parents=True, exist_ok=True)
    path = args.device_out / "ceiling.csv"
    merge(path, rows).to_csv(path, index=False)
    print(f"# {len(rows)} rows -> {path} in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
