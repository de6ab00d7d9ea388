"""One layer call for Nsight Compute to profile (the perf notes' "why" behind a number).

    ncu --clock-control none --kernel-name regex:_gate_up_kernel --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        python experiments/bench/profile_layer.py --model mixtral-8x7b --tokens 1024
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from problems import load_models, make_tokens, make_weights  # noqa: E402


def main(argv=None):
    models = load_models()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mixtral-8x7b", choices=list(models))
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--impl", default="tritonmoe_fused")
    ap.add_argument("--calls", type=int, default=3)
    args = ap.parse_args(argv)
    m = models[args.model]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, args.tokens, w, "uniform", torch.bfloat16, "cuda", seed=args.tokens)
    for _ in range(args.calls):
        tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, impl=args.impl)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
