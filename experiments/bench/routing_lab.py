"""Lab: the routing by token block and warps (`routing._routing_kernel`), and split through partial logits.

Each program routes BLOCK_T tokens and reads the whole router; at 8192 tokens the default (16 tokens, 4 warps)
took 40 us on qwen3-30b-a3b and 195 us on deepseek-v3 (session 9, run 3). Larger token blocks read the router
fewer times but hold larger [BLOCK_T, BLOCK_E] tiles for the top-k. Times (kernel alone, L2 evicted before each
call, `timing.bench`) and whether the ids equal the default's and the weights match it to fp32 rounding.

Session 10 adds the split routing (`routing.route_split`: partial logits over (H slice, expert block) programs,
then a selection launch), by H slice and expert block. All variants are timed as CUDA-graph replays
(`tune.graph_time`: the split's two launches with the gap between them, as in a layer's graph).

    python experiments/bench/routing_lab.py --out lab.csv --cases qwen3-30b-a3b:8192 deepseek-v3:8192
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402

from problems import add_cases_argument, lab_weights, load_models, make_tokens, write_lab_csv  # noqa: E402
from tune import graph_time  # noqa: E402
from tritonmoe.routing import (_routing_kernel, _select_partials_kernel, router_partials,  # noqa: E402
                                routing_meta, select_meta)

# (BLOCK_T, warps) of the one-kernel routing; ("split", SPLIT_H, BLOCK_E) of the split one.
# Session 20: 64- and 128-token blocks (a wgmma-sized M, the router read T/64 times instead of T/16).
VARIANTS = [(16, 4), (32, 4), (64, 4), (64, 8), (128, 8), ("split", 256, 16), ("split", 512, 16), ("split", 512, 32),
            ("split", 1024, 16), ("split", 1024, 32)]


def launch(x, wr, top_k, block_t, warps, weights, ids):
    T, H = x.shape
    E = wr.shape[0]
    if block_t == "split":
        split_h, block_e = warps
        partial = router_partials(x, wr, split_h, block_e)
        meta = select_meta(partial.shape[0], E, top_k, True)
        _select_partials_kernel[(triton.cdiv(T, meta["BLOCK_T"]),)](partial, weights, ids, T, E, partial.shape[0],
                                                                    **meta, num_warps=4)
        return
    _routing_kernel[(triton.cdiv(T, block_t),)](
        x, wr, weights, ids, T, H, E, x.stride(0), x.stride(1), wr.stride(0), wr.stride(1),
        **routing_meta(H, E, top_k, True, block_t), num_warps=warps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cases_argument(ap, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    models = load_models()
    rows = []
    for name, T in args.cases:
        m = models[name]
        w = lab_weights(m)
        x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=T)
        out = {}
        for v in VARIANTS:
            block_t, warps = (v[0], v[1:]) if v[0] == "split" else v
            weights = torch.full((T, m.top_k), float("nan"), device="cuda")
            ids = torch.full((T, m.top_k), -1, dtype=torch.int32, device="cuda")
            try:
                launch(x, w.router_weight, m.top_k, block_t, warps, weights, ids)
                us = graph_time(lambda: launch(x, w.router_weight, m.top_k, block_t, warps, weights, ids)) * 1e3
            except Exception as e:  # noqa: BLE001 (a variant that does not compile is a result)
                print(f"{name} T={T} BLOCK_T={block_t} warps={warps}: {type(e).__name__}", flush=True)
                continue
            out[v] = (weights, ids)
            ref_w, ref_ids = out[VARIANTS[0]]
            same_ids = bool(torch.equal(ids, ref_ids))
            max_dw = float((weights - ref_w).abs().max())
            rows.append(dict(device=torch.cuda.get_device_name(), model=name, tokens=T, variant=str(v),
                             us=round(us, 2), same_ids=same_ids, max_weight_diff=max_dw))
            print(rows[-1], flush=True)
        write_lab_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
