"""Per-kernel time of one layer call (torch.profiler, CUDA activity), for the perf notes.

    python experiments/bench/breakdown.py --model mixtral-8x7b --tokens 1 64 4096 --impl tritonmoe_fused

With `--routing zipf` the skewed draw of the sweep; each case first prints how the routed rows fall on the experts
(experts hit, rows of the busiest, rows per expert hit).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import tritonmoe  # noqa: E402
from problems import load_models, make_tokens, make_weights  # noqa: E402
from providers import PROVIDERS  # noqa: E402


def main(argv=None):
    models = load_models()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mixtral-8x7b", choices=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 64, 4096])
    ap.add_argument("--impl", nargs="+", default=["tritonmoe_fused"], choices=list(PROVIDERS))
    ap.add_argument("--routing", default="uniform", choices=["uniform", "zipf"])
    args = ap.parse_args(argv)
    m = models[args.model]
    w = make_weights(m, torch.bfloat16, "cuda", args.routing)
    for impl in args.impl:
        fn = PROVIDERS[impl].build(m, w)
        for t in args.tokens:
            x = make_tokens(m, t, w, args.routing, torch.bfloat16, "cuda", seed=t)
            _, ids = tritonmoe.route(x, w.router_weight, m.top_k)
            rows = torch.bincount(ids.reshape(-1).long(), minlength=m.experts)
            hit = int((rows > 0).sum())
            print(f"# {args.model} {args.routing} T={t}: {hit} experts hit, busiest {int(rows.max())} rows, "
                  f"{ids.numel() / max(1, hit):.1f} rows per expert hit")
            for _ in range(3):
                fn(x)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    fn(x)
                torch.cuda.synchronize()
            print(f"## {args.model} {impl} T={t} (10 calls)")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
