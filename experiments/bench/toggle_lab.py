"""Lab (perf notes v12): whole-layer times of a table config against the same with one GEMM's `DESC` toggled.

Each case's tuned config and its toggle are timed `--repeat` times each, interleaved, as whole layers on the uniform and
the zipf draw (`tune.layer_times`: CUDA graphs, each call checked against the float64 reference), so that a
difference of a percent stands out from the drift between runs.

    python experiments/bench/toggle_lab.py --cases qwen3-30b-a3b:8192 --gemm down --repeat 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from problems import add_cases_argument, load_models, make_tokens, make_weights  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cases_argument(ap, "qwen3-30b-a3b:8192")
    ap.add_argument("--gemm", choices=["gate_up", "down"], default="down")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("toggle_lab.py: no GPU here", file=sys.stderr)
        return 2
    from tune import layer_times
    models, cur, w = load_models(), None, None
    for name, T in args.cases:
        m = models[name]
        if cur != name:  # one model's weights at a time
            w = None
            torch.cuda.empty_cache()
            w, cur = make_weights(m, torch.bfloat16, "cuda", "uniform"), name
        x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
        cfg = tritonmoe.api.resolve_config(x, T * m.top_k, m.experts, m.hidden, m.ffn, None)
        g = cfg[args.gemm]
        flip = {**cfg, args.gemm: {**g, "DESC": not g.get("DESC", False)}}
        for c, times, _ in layer_times(m, w, T, [cfg, flip] * args.repeat):
            print(f"{name} T={T} {args.gemm} DESC={bool(c[args.gemm].get('DESC'))}: uniform {times[0] * 1e3:.1f} us, "
                  f"zipf {times[1] * 1e3:.1f} us", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
