"""Stage-cost lab (perf notes v10): what each stage of the fused layer adds to one CUDA-graph replay.

Not part of the package. For each case, graphs of growing prefixes of `tritonmoe_fused`'s pipeline with the tuned
config (routing+alignment; + gate/up; + down; + combine; down and combine are one prefix with a COMBINE config) and the whole layer followed by a memset of a small int32
buffer (what a per-call zeroed counter table would cost) are timed with the sweep's timing (`timing.bench`, L2
flushed before each replay). The differences between consecutive prefixes are each stage's marginal cost inside a
graph, its ramp and drain included, which kernel durations from a profiler do not show.

    python experiments/bench/stage_lab.py --cases olmoe-1b-7b:1 qwen3-30b-a3b:1 --out $OUT/stage.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from problems import add_cases_argument, load_models, make_tokens, make_weights  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.down import combine, down, down_combine  # noqa: E402
from tritonmoe.fused_expert import fused_expert  # noqa: E402
from tritonmoe.route_align import route_and_align  # noqa: E402
from tritonmoe.variants import act_fused  # noqa: E402


def stages(x, w, m, cfg, upto: int, memset: torch.Tensor | None = None):
    wr, wgu, wd = w.router_weight, w.w_gate_up, w.w_down
    tw, ids, al = route_and_align(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
    if upto >= 1:
        if cfg.get("expert"):
            part = fused_expert(x, wgu, wd, al, tw, cfg["expert"])
            if upto >= 3:
                combine(part, x.shape[0], m.top_k, x.dtype)
        else:
            act = act_fused(x, wgu, al, cfg)
            if upto >= 2 and cfg["down"].get("COMBINE"):  # down and combine are one launch
                down_combine(act, wd, al, tw, ids, cfg["down"])
            elif upto >= 2:
                part = down(act, wd, al, tw, cfg["down"])
                if upto >= 3:
                    combine(part, x.shape[0], m.top_k, x.dtype)
    if memset is not None:
        memset.zero_()


def graph_ms(fn) -> list[float]:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return bench(g.replay, 10, 60)


def main(argv=None):
    models = load_models()
    ap = argparse.ArgumentParser()
    add_cases_argument(ap, "olmoe-1b-7b:1", "qwen3-30b-a3b:1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = []
    for name, t in args.cases:
        m = models[name]
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")
        x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
        cfg = resolve_config(x, t * m.top_k, m.experts, m.hidden, m.ffn, None)
        counters = torch.ones(max(1, t) * 64, dtype=torch.int32, device="cuda")
        variants = [("route", 0, None), ("gate_up", 1, None), ("down", 2, None), ("combine", 3, None),
                    ("layer+memset", 3, counters)]
        if cfg.get("expert"):
            variants = [v for v in variants if v[0] != "down"]
        if cfg["down"].get("COMBINE"):  # one launch for both: the "down" prefix is the whole layer
            variants = [v for v in variants if v[0] != "combine"]
        for label, upto, ms in variants:
            q = graph_ms(lambda: stages(x, w, m, cfg, upto, ms))
            rows.append({"model": name, "tokens": t, "prefix": label, "median_us": q[0] * 1e3,
                         "p20_us": q[1] * 1e3, "p80_us": q[2] * 1e3, "expert_path": bool(cfg.get("expert"))})
            print(rows[-1], flush=True)
        del w
        torch.cuda.empty_cache()
    df = pd.DataFrame(rows)
    df["device_name"] = torch.cuda.get_device_name()
    df.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
