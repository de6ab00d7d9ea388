"""Per-kernel time of one layer call (torch.profiler, CUDA activity), for the perf notes.

    python experiments/bench/breakdown.py --model mixtral-8x7b --tokens 1 64 4096 --impl tritonmoe_fused
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from problems import load_models, make_tokens, make_weights  # noqa: E402
from providers import PROVIDERS  # noqa: E402


def main(argv=None):
    models = load_models()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mixtral-8x7b", choices=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 64, 4096])
    ap.add_argument("--impl", nargs="+", default=["tritonmoe_fused"], choices=list(PROVIDERS))
    args = ap.parse_args(argv)
    m = models[args.model]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    for impl in args.impl:
        fn = PROVIDERS[impl].build(m, w)
        for t in args.tokens:
            x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
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
