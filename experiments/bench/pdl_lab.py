"""Programmatic dependent launch on/off at small token counts (lab): whole-layer CUDA-graph times of
`tritonmoe.moe` with `TRITONMOE_PDL=1` and `=0`, and a check that both give bit-identical outputs.

    python experiments/bench/pdl_lab.py --out experiments/lab_results/h100-sxm/pdl.csv
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import tritonmoe  # noqa: E402
from problems import load_models, make_tokens, make_weights  # noqa: E402
from tune import graph_time  # noqa: E402


def main(argv=None) -> int:
    models = load_models()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qwen3-30b-a3b", "olmoe-1b-7b", "qwen2-moe-57b", "mixtral-8x7b"],
                    choices=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        m = models[name]
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")
        for t in args.tokens:
            x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
            out = {}
            for pdl in ("0", "1", "0", "1"):  # twice each, interleaved
                os.environ["TRITONMOE_PDL"] = pdl
                fn = lambda: tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k)  # noqa: E731
                y = fn()
                torch.cuda.synchronize()
                if "y" + pdl in out:
                    assert torch.equal(out["y" + pdl], y)
                out["y" + pdl] = y
                out.setdefault(pdl, []).append(graph_time(fn))
            same = torch.equal(out["y0"], out["y1"])
            row = {"model": name, "tokens": t, "pdl_off_us": round(min(out["0"]) * 1e3, 2),
                   "pdl_on_us": round(min(out["1"]) * 1e3, 2), "bit_identical": same}
            print(row, flush=True)
            rows.append(row)
        del w
        torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
