"""Lab: the spread of repeated timings at large token counts, with the SM clock, power and temperature after each.

    python experiments/bench/spread_lab.py --out spread.csv

Times the same CUDA-graph replay of tritonmoe_fused (one draw, one config) `--repeats` times back to back, each
with `timing.bench`, and reads `nvidia-smi` after each: whether the 5-12% run-to-run spread seen at T >= 1024
(NOTES v7) follows the clock (power or thermal limits under sustained load) or is there at a steady clock.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import tritonmoe  # noqa: E402
from problems import add_cases_argument, load_models, make_tokens, make_weights  # noqa: E402
from timing import bench  # noqa: E402


def smi() -> dict:
    q = "clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.strip().split(", ")
    return dict(zip(["sm_mhz", "mem_mhz", "power_w", "temp_c", "throttle"], out))


def main():
    ap = argparse.ArgumentParser()
    add_cases_argument(ap, "mixtral-8x7b:1024", "mixtral-8x7b:4096", "qwen3-30b-a3b:4096")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    models = load_models()
    rows = []
    for name, T in args.cases:
        m = models[name]
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")
        x = make_tokens(m, int(T), w, "uniform", torch.bfloat16, "cuda", seed=int(T))
        fn = lambda: tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k)  # noqa: E731
        fn()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        for i in range(args.repeats):
            med, p20, p80 = bench(g.replay, 20, 80)
            rows.append({"model": name, "tokens": int(T), "repeat": i, "median_ms": round(med, 4),
                         "p20_ms": round(p20, 4), "p80_ms": round(p80, 4), **smi()})
            print(rows[-1], flush=True)
        del g, w
        torch.cuda.empty_cache()
    if args.out:
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
