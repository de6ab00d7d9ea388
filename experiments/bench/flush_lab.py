"""Lab: what the benchmark's L2 flush costs the kernel timed after it.

`triton.testing.do_bench` clears the L2 before every timed call by zeroing a 256 MB buffer; the last ~50 MB of
those zeros stay in the L2 as dirty lines, which the timed kernel's reads then evict (written back to DRAM inside
the timed interval). This times the same CUDA-graph replays (`timing.bench`) after three flushes: do_bench's
zeroing, `timing.flush_l2`'s read of a buffer of the same size (leaves clean lines) and none (warm L2), for a pure
copy of the decode weight volume and for the layer paths at decode sizes. (Run 6's CSV came from the first
version of this script, which timed a fixed 200 replays in its own loop with the same three flushes.)

    python experiments/bench/flush_lab.py [--out flush.csv]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import tritonmoe  # noqa: E402
from decode_layer_lab import decode_layer  # noqa: E402
from problems import load_models, make_tokens, make_weights  # noqa: E402
from timing import FLUSH_BYTES, bench, flush_l2  # noqa: E402

FLUSHES = ("zero", "read", "none")
ZEROED = None


def zero_flush():
    """do_bench's flush: zero a 256 MB buffer (its own, so `timing.flush_l2`'s stays as it is)."""
    global ZEROED
    if ZEROED is None:
        ZEROED = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    ZEROED.zero_()


def replay_us(fn, flush: str) -> float:
    """Median of `timing.bench` (us) for a CUDA-graph replay of fn after the given flush before each call."""
    g = torch.cuda.CUDAGraph()
    fn()
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        fn()
    flusher = {"zero": zero_flush, "read": flush_l2, "none": lambda: None}[flush]
    return bench(g.replay, 10, 60, quantiles=(0.5,), flush=flusher)[0] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    models = load_models()
    print(torch.cuda.get_device_name(), flush=True)
    tiny = torch.ones(1, device="cuda")
    src = torch.randn(int(75e6 // 2), dtype=torch.bfloat16, device="cuda")
    half = src[: src.numel() // 2]
    dst = torch.empty_like(half)
    cases = [("tiny kernel", lambda: tiny.add_(1)),
             ("copy 37.5 MB (75 MB moved)", lambda: dst.copy_(half)),
             ("sum 75 MB", lambda: torch.sum(src, dtype=torch.float32))]
    for name in ("qwen3-30b-a3b", "olmoe-1b-7b", "mixtral-8x7b"):
        m = models[name]
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")
        wts = (w.router_weight, w.w_gate_up, w.w_down)
        for T in (1, 2):
            x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=T)
            cfg = dict(BLOCK_F=64, BLOCK_K=256, BLOCK_H=128, BLOCK_KD=256, num_warps=4, num_stages=3)
            cases.append((f"{name} T={T} two-GEMM", lambda x=x, wts=wts, k=m.top_k: tritonmoe.moe(x, *wts, k)))
            cases.append((f"{name} T={T} decode layer", lambda x=x, wts=wts, k=m.top_k, c=cfg: decode_layer(x, *wts, k, True, c)))
            if T == 1:
                cases.append((f"{name} T={T} decode layer, plain launch",
                              lambda x=x, wts=wts, k=m.top_k, c={**cfg, "cooperative": False}: decode_layer(x, *wts, k, True, c)))
        for label, fn in cases:
            r = {f: replay_us(fn, f) for f in FLUSHES}
            rows.append({"case": label, "device": torch.cuda.get_device_name(),
                         **{f"{f}_flush_us": round(v, 2) for f, v in r.items()}})
            print(f"{label:45s} zero-flush {r['zero']:7.1f}  read-flush {r['read']:7.1f}  no flush {r['none']:7.1f} us", flush=True)
        cases = []
    if args.out:
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
