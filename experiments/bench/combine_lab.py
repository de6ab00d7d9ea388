"""The down projection with the combine at one or two tokens (perf notes v18). Not part of the package.

`down.down_combine` streams each token's K experts' [BLOCK_N, F] down slices one BLOCK_K step ahead of its
multiply-adds (loads that feed no `tl.dot` get no software pipeline). At qwen3-30b-a3b T=1 it moves 25 MB in ~11 us
(2.3 TB/s) where the gate/up GEMM before it reaches 2.5 TB/s. Variants of the whole layer (the package's path up to
the activation, then):

- `table`: the package's `down_combine` with the table's config;
- `ahead2`: the same kernel with the weights loaded two steps ahead (twice the bytes in flight per program);
- `bn4`: the package's kernel at BLOCK_N = 4 (twice the programs), and `ahead2_bn4` both;
- `guN` in a variant's name (e.g. `table_gu16`): the gate/up tile at BLOCK_N = N.

Each variant's y is compared with `table`'s (bit-identical: the same sums in the same order). CUDA-graph replays with
the sweep's timing, interleaved, `--repeats` rounds.

    python experiments/bench/combine_lab.py --cases qwen3-30b-a3b:1 --out $OUT/combine.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from problems import lab_main, load_models, make_tokens, make_weights  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe._host import cdiv, next_power_of_2  # noqa: E402
from tritonmoe.api import resolve_config, selects_in_gemm  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.down import down_combine  # noqa: E402
from tritonmoe.route_align import prepare_selection, route_and_align  # noqa: E402
from tritonmoe.variants import act_fused  # noqa: E402


@triton.jit
def _down_combine_ahead2_kernel(
    act_ptr, w_ptr, y_ptr, topk_weights_ptr, topk_ids_ptr, slot_rows_ptr,
    H, F, stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_yt,
    TOP_K: tl.constexpr, BLOCK_KK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`down._down_combine_kernel` with the weight tiles of the next two steps in flight (masked past F)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    ks = tl.arange(0, BLOCK_KK)
    k_ok = ks < TOP_K
    slot = t * TOP_K + ks
    expert = tl.load(topk_ids_ptr + slot, mask=k_ok, other=0).to(tl.int64)
    row = tl.load(slot_rows_ptr + slot, mask=k_ok, other=0).to(tl.int64)
    route_w = tl.load(topk_weights_ptr + slot, mask=k_ok, other=0.0)
    fs = tl.arange(0, BLOCK_K)
    a_ptrs = act_ptr + row[:, None] * stride_am + fs[None, :] * stride_af
    w_ptrs = (w_ptr + expert[:, None, None] * stride_we + cols[None, :, None].to(tl.int64) * stride_wh
              + fs[None, None, :] * stride_wf)
    w_mask = k_ok[:, None, None] & col_ok[None, :, None]
    acc = tl.zeros((BLOCK_KK, BLOCK_N), dtype=tl.float32)
    w0 = tl.load(w_ptrs, mask=w_mask & (fs < F)[None, None, :], other=0.0)
    w1 = tl.load(w_ptrs + BLOCK_K * stride_wf, mask=w_mask & (fs < F - BLOCK_K)[None, None, :], other=0.0)
    w_ptrs += 2 * BLOCK_K * stride_wf
    for f0 in range(0, F, BLOCK_K):
        w = w0
        w0 = w1
        a = tl.load(a_ptrs, mask=k_ok[:, None] & (fs < F - f0)[None, :], other=0.0)
        w1 = tl.load(w_ptrs, mask=w_mask & (fs < F - f0 - 2 * BLOCK_K)[None, None, :], other=0.0)
        w_ptrs += BLOCK_K * stride_wf
        acc += tl.sum(w.to(tl.float32) * a.to(tl.float32)[:, None, :], axis=2)
        a_ptrs += BLOCK_K * stride_af
    out = tl.sum(acc * route_w[:, None], axis=0)
    tl.store(y_ptr + t * stride_yt + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok)


def down_combine_ahead2(act, w_down, align, topk_weights, topk_ids, cfg):
    E, H, F = w_down.shape
    T, K = topk_ids.shape
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    y = torch.empty((T, H), dtype=act.dtype, device=act.device)
    _down_combine_ahead2_kernel[(T, cdiv(H, bn))](
        act, w_down, y, topk_weights.reshape(-1), topk_ids.reshape(-1), align.slot_rows,
        H, F, act.stride(0), act.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2), y.stride(0),
        TOP_K=K, BLOCK_KK=next_power_of_2(K), BLOCK_N=bn, BLOCK_K=bk,
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))
    return y


def layer(x, w, m, cfg, mode):
    parts = mode.split("_")
    for p in parts:
        if p.startswith("gu"):  # the gate/up tile's BLOCK_N (more or fewer programs)
            cfg = {**cfg, "gate_up": {**cfg["gate_up"], "BLOCK_N": int(p[2:])}}
    if selects_in_gemm(x, w.w_gate_up, m.top_k, "tritonmoe_fused", cfg):
        sel = prepare_selection(x, w.router_weight, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
        tw, ids, al = sel.weights, sel.ids, sel.align
        act = act_fused(x, w.w_gate_up, al, cfg, select=sel)
    else:
        tw, ids, al = route_and_align(x, w.router_weight, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
        act = act_fused(x, w.w_gate_up, al, cfg)
    dcfg = dict(cfg["down"])
    if "bn4" in parts:
        dcfg["BLOCK_N"] = 4
    if "ahead2" in parts:
        return down_combine_ahead2(act, w.w_down, al, tw, ids, dcfg)
    return down_combine(act, w.w_down, al, tw, ids, dcfg)


def run_case(name, t, rows, args):
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
    cfg = resolve_config(x, t * m.top_k, m.experts, m.hidden, m.ffn, None)
    if cfg.get("expert") or not cfg["down"].get("COMBINE"):
        print(f"{name} T={t}: the table's down is not down_combine; skipped", flush=True)
        return
    graphs, ys = {}, {}
    for mode in args.modes:
        layer(x, w, m, cfg, mode)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = layer(x, w, m, cfg, mode)
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        graphs[mode], ys[mode] = g, y.clone()
    ref = ys[args.modes[0]]
    assert torch.isfinite(ref).all()
    for r in range(args.repeats):
        for mode, g in graphs.items():
            q = bench(g.replay, 10, 60)
            rows.append({"model": name, "tokens": t, "variant": mode, "round": r, "median_us": q[0] * 1e3,
                         "p20_us": q[1] * 1e3, "p80_us": q[2] * 1e3, "y_identical": bool(torch.equal(ys[mode], ref)),
                         "down": str(cfg["down"]), "device_name": torch.cuda.get_device_name()})
            print(rows[-1], flush=True)
    del graphs, w
    torch.cuda.empty_cache()


def add_arguments(ap):
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["table", "ahead2", "bn4", "ahead2_bn4", "table_gu16", "table_gu64"])


def main(argv=None):
    return lab_main(argv, __doc__, "combine_lab.py", "qwen3-30b-a3b:1", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
