"""Lab: the one-launch decode layer (`decode_layer_lab.py`) against the tuned two-GEMM path, per model and T.

    python experiments/bench/decode_lab.py --smoke            # one call, barrier vs phased, then exit
    python experiments/bench/decode_lab.py --out lab.csv --models qwen3-30b-a3b --tokens 1 2

Every candidate is checked against the float64 reference (on its own expert choice); the first candidate of each
point also runs as the phased launch (three launches, no barrier), compared with the barrier launch bit for bit.
Times are CUDA-graph replays (`tune.graph_time`, i.e. the `timing.bench` median; runs 1-2 of session 6 predate
`timing.py` and used `triton.testing.do_bench`, whose flush adds ~8.5 us to every call: compare candidates within
one run only). Writes one row per (model, T, candidate) plus the baseline rows.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import tritonmoe  # noqa: E402
from decode_layer_lab import decode_layer  # noqa: E402
from tritonmoe.reference import reference_moe  # noqa: E402
from problems import load_models, make_tokens, make_weights  # noqa: E402
from tune import graph_time  # noqa: E402


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def candidates(grid: str):
    if grid == "variants":
        for base in (dict(BLOCK_F=64, BLOCK_K=256, BLOCK_H=128, BLOCK_KD=256, num_stages=3, num_warps=4),
                     dict(BLOCK_F=128, BLOCK_K=128, BLOCK_H=256, BLOCK_KD=128, num_stages=3, num_warps=8),
                     dict(BLOCK_F=32, BLOCK_K=256, BLOCK_H=128, BLOCK_KD=256, num_stages=3, num_warps=4)):
            yield base
            yield {**base, "PRELOAD": True}
        return
    if grid == "wide":
        # K steps sized so a stage of the gate|up tile (2 x BLOCK_F x BLOCK_K) or of the down tile stays <= 64 KB.
        for bf, bh, nw in itertools.product((32, 64, 128), (64, 128, 256), (4, 8)):
            yield dict(BLOCK_F=bf, BLOCK_K=min(256, 16384 // bf), BLOCK_H=bh, BLOCK_KD=min(256, 32768 // bh),
                       num_stages=3, num_warps=nw)
        return
    if grid == "small":
        bfs, bhs, bks, bkds, stages, warps = (16, 32, 64), (16, 32, 64), (256,), (256,), (3,), (4,)
    else:
        bfs, bhs, bks, bkds, stages, warps = (16, 32, 64), (16, 32, 64), (128, 256), (128, 256), (3, 4), (4,)
    for bf, bh, bk, bkd, st, nw in itertools.product(bfs, bhs, bks, bkds, stages, warps):
        yield dict(BLOCK_F=bf, BLOCK_K=bk, BLOCK_H=bh, BLOCK_KD=bkd, num_stages=st, num_warps=nw)


def phase_times(m, x, wts, cfg):
    """Prints, per phase boundary, the spread over programs of the global timer (us from the first start);
    then the graph time with a counter buffer made once (no memset node) against one made per call."""
    from decode_layer_lab import default_programs
    P = default_programs(x.device)
    timing = torch.zeros((P, 8), dtype=torch.int64, device="cuda")
    for _ in range(3):
        decode_layer(x, *wts, m.top_k, True, cfg, timing=timing)
    torch.cuda.synchronize()
    t = timing[:, :7].double()
    t = (t - t[:, 0].min()) / 1e3
    names = ["start", "router done", "barrier 1", "top-k done", "gate_up done", "barrier 2", "down+combine done"]
    for i, n in enumerate(names):
        print(f"    {n:18s} min {t[:, i].min():6.1f}  med {t[:, i].median():6.1f}  max {t[:, i].max():6.1f} us")
    sync = torch.zeros(2 + (x.shape[1] + cfg["BLOCK_H"] - 1) // cfg["BLOCK_H"], dtype=torch.int32, device="cuda")
    t_keep = graph_time(lambda: decode_layer(x, *wts, m.top_k, True, cfg, sync=sync))
    t_new = graph_time(lambda: decode_layer(x, *wts, m.top_k, True, cfg))
    print(f"    graph: counters kept {t_keep * 1e3:.1f} us, zeroed per call {t_new * 1e3:.1f} us", flush=True)


def main(argv=None):
    models = load_models()
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--grid", default="small", choices=["small", "full", "wide", "variants"])
    ap.add_argument("--timing", action="store_true", help="phase timestamps of the best candidate")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    dt = torch.bfloat16
    if args.smoke:
        m = models["qwen3-30b-a3b"]
        w = make_weights(m, dt, "cuda", "uniform")
        x = make_tokens(m, 2, w, "uniform", dt, "cuda", seed=2)
        cfg = dict(BLOCK_F=32, BLOCK_K=256, BLOCK_H=32, BLOCK_KD=256)
        wts = (w.router_weight, w.w_gate_up, w.w_down)
        y1, _, ids1 = decode_layer(x, *wts, m.top_k, True, {**cfg, "phased": True})
        torch.cuda.synchronize()
        print("phased ok", flush=True)
        y2, _, ids2 = decode_layer(x, *wts, m.top_k, True, cfg)
        torch.cuda.synchronize()
        print("barrier ok; equal:", torch.equal(y1, y2), torch.equal(ids1, ids2), flush=True)
        t = graph_time(lambda: decode_layer(x, *wts, m.top_k, True, cfg))
        print(f"graph ok: {t * 1e3:.1f} us; base {graph_time(lambda: tritonmoe.moe(x, *wts, m.top_k)) * 1e3:.1f} us")
        ref = reference_moe(x, *wts, m.top_k, topk_ids=ids2)
        print("rel_err", rel_err(y2, ref))
        return 0
    rows = []
    t_start = time.time()
    for name in args.models:
        m = models[name]
        w = make_weights(m, dt, "cuda", "uniform")
        wts = (w.router_weight, w.w_gate_up, w.w_down)
        for T in args.tokens:
            x = make_tokens(m, T, w, "uniform", dt, "cuda", seed=T)
            base = graph_time(lambda: tritonmoe.moe(x, *wts, m.top_k))
            rows.append(dict(model=name, tokens=T, cand="two_gemm_tuned", us=base * 1e3, rel_err="", bitwise=""))
            best, compared = None, False
            for cfg in candidates(args.grid):
                try:
                    y, _, ids = decode_layer(x, *wts, m.top_k, True, cfg)
                except Exception as e:  # a candidate that does not compile (shared memory) is skipped
                    print(f"  skip {cfg}: {type(e).__name__}", flush=True)
                    continue
                # The phased launch (three compiles more) is compared with the barrier launch once per point.
                yp = None if compared else decode_layer(x, *wts, m.top_k, True, {**cfg, "phased": True})[0]
                compared = True
                ref = reference_moe(x, *wts, m.top_k, topk_ids=ids)
                err = rel_err(y, ref)
                t = graph_time(lambda: decode_layer(x, *wts, m.top_k, True, cfg))
                key = "F{BLOCK_F}-K{BLOCK_K}-H{BLOCK_H}-KD{BLOCK_KD}-s{num_stages}-w{num_warps}".format(**cfg)
                key += "-pre" * bool(cfg.get("PRELOAD"))
                rows.append(dict(model=name, tokens=T, cand=key, us=t * 1e3, rel_err=err, bitwise="" if yp is None else torch.equal(y, yp)))
                if best is None or t < best[0]:
                    best = (t, key, err, cfg)
                if args.grid == "variants":
                    print(f"  {key:40s} {t * 1e3:7.1f} us", flush=True)
            if best is None:
                print(f"{name} T={T}: no candidate compiled", flush=True)
                continue
            print(f"{name} T={T}: two-GEMM {base * 1e3:.1f} us, decode layer best {best[0] * 1e3:.1f} us ({best[1]}, "
                  f"rel_err {best[2]:.1e}) [{time.time() - t_start:.0f} s]", flush=True)
            if args.timing:
                phase_times(m, x, wts, best[3])
            if args.out:
                pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
