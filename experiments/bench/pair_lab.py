"""Block-and-tail pair lab (perf notes v12): one gate/up program for an expert's full block and its tail block.

Not part of the package. With tail blocks (`TAIL_M`) an expert of 128 + r rows gets a 128-row block and an r-row
tail block, and each streams the expert's gate/up weight tiles through the L2 into its SM: at mixtral-8x7b T=512 a
third of the blocks are tails, each re-reading its expert's 235 MB of gate/up weights, and v9 found the L2 the
bound at that ridge. Here a program that owns a full block whose next block is the same expert's tail computes
both: each K step loads the weight tiles once and feeds two [rows, BLOCK_K] x [BLOCK_K, BLOCK_N] products per
projection (accumulators [BLOCK_M, BLOCK_N] and [TAIL_M, BLOCK_N], gate and up); the tail's own program exits.
Other blocks (an expert's second tail, an expert with only tails) run as before. Pointer loads, fused SwiGLU.

Timed as CUDA-graph replays (`tune.graph_time`) beside production `gate_up` on the same alignment; the used rows
are compared with production's.

    python experiments/bench/pair_lab.py --cases mixtral-8x7b:512 --out $OUT/pair.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe._gemm_common import block_extent, block_slots, dot_precision, gate_up_accumulate, grouped_pid  # noqa: E402
from tritonmoe.align import align_tokens  # noqa: E402
from tritonmoe.gate_up import gate_up  # noqa: E402
from problems import lab_main  # noqa: E402


@triton.jit
def _single(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n, F, H, num_routed,
            stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om,
            TOP_K: tl.constexpr, PRECISION: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_K: tl.constexpr):
    expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, ROWS)
    token = (slot // TOP_K).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F
    acc_g, acc_u = gate_up_accumulate(x_ptr, w_ptr, token, row_ok, expert, cols, col_ok, 0, F, H,
                                      stride_xt, stride_xh, stride_we, stride_wn, stride_wh,
                                      True, True, PRECISION, ROWS, BLOCK_N, BLOCK_K)
    out = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=col_ok[None, :])


@triton.jit
def _pair(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, tail_row0, pid_n, F, H, num_routed,
          stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om,
          TOP_K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M)
    _, rows2, slot2, row_ok2 = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m + 1, tail_row0, num_routed, TAIL_M)
    token = (slot // TOP_K).to(tl.int64)
    token2 = (slot2 // TOP_K).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < F
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_xt + ks[None, :] * stride_xh
    a2_ptrs = x_ptr + token2[:, None] * stride_xt + ks[None, :] * stride_xh
    w_base = w_ptr + expert * stride_we + ks[:, None] * stride_wh
    g_ptrs = w_base + cols[None, :].to(tl.int64) * stride_wn
    u_ptrs = w_base + (F + cols)[None, :].to(tl.int64) * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_g2 = tl.zeros((TAIL_M, BLOCK_N), dtype=tl.float32)
    acc_u2 = tl.zeros((TAIL_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        a2 = tl.load(a2_ptrs, mask=row_ok2[:, None], other=0.0)
        g = tl.load(g_ptrs, mask=col_ok[None, :], other=0.0)
        u = tl.load(u_ptrs, mask=col_ok[None, :], other=0.0)
        acc_g = tl.dot(a, g, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, u, acc_u, input_precision=PRECISION)
        acc_g2 = tl.dot(a2, g, acc_g2, input_precision=PRECISION)
        acc_u2 = tl.dot(a2, u, acc_u2, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_xh
        a2_ptrs += BLOCK_K * stride_xh
        g_ptrs += BLOCK_K * stride_wh
        u_ptrs += BLOCK_K * stride_wh
    out = acc_g * tl.sigmoid(acc_g) * acc_u
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=col_ok[None, :])
    out2 = acc_g2 * tl.sigmoid(acc_g2) * acc_u2
    tl.store(out_ptr + rows2[:, None].to(tl.int64) * stride_om + cols[None, :], out2.to(out_ptr.dtype.element_ty),
             mask=col_ok[None, :])


@triton.jit
def _pair_kernel(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
                 F, H, num_routed, num_pid_m,
                 stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om,
                 TOP_K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_pid_n = tl.cdiv(F, BLOCK_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    row0, height = block_extent(block_rows_ptr, num_post_ptr, pid_m, BLOCK_M, TAIL_M)
    expert = tl.load(expert_ids_ptr + pid_m)
    prev = tl.maximum(pid_m - 1, 0)
    _, prev_h = block_extent(block_rows_ptr, num_post_ptr, prev, BLOCK_M, TAIL_M)
    prev_full = (pid_m > 0) & (prev_h == BLOCK_M) & (tl.load(expert_ids_ptr + prev) == expert)
    nxt = tl.minimum(pid_m + 1, num_pid_m - 1)
    next_row0, next_h = block_extent(block_rows_ptr, num_post_ptr, nxt, BLOCK_M, TAIL_M)
    next_tail = (pid_m + 1 < num_pid_m) & (next_h == TAIL_M) & (tl.load(expert_ids_ptr + nxt) == expert)
    if height == BLOCK_M:
        if next_tail:
            _pair(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, next_row0, pid_n, F, H,
                  num_routed, stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om,
                  TOP_K, PRECISION, BLOCK_M, TAIL_M, BLOCK_N, BLOCK_K)
        else:
            _single(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n, F, H, num_routed,
                    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om,
                    TOP_K, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if (height == TAIL_M) & (prev_full == 0):  # a tail that follows its expert's full block was computed with it
        _single(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n, F, H, num_routed,
                stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om,
                TOP_K, PRECISION, TAIL_M, BLOCK_N, BLOCK_K)


def gate_up_pair(x, w_gate_up, align, top_k: int, cfg: dict) -> torch.Tensor:
    """`gate_up(..., fuse_swiglu=True)` on an alignment with tail blocks, each full block paired with its tail."""
    E, F2, H = w_gate_up.shape
    F = F2 // 2
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    if H % bk or not align.has_tails:
        raise ValueError("pair_lab: needs H a multiple of BLOCK_K and an alignment with tail blocks")
    out = torch.empty((align.sorted_ids.shape[0], F), dtype=x.dtype, device=x.device)
    num_pid_m = align.max_blocks
    _pair_kernel[(num_pid_m * triton.cdiv(F, bn),)](
        x, w_gate_up, out, align.sorted_ids, align.expert_ids, align.block_rows, align.num_post_padded,
        F, H, align.num_routed, num_pid_m,
        x.stride(0), x.stride(1), w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2), out.stride(0),
        TOP_K=top_k, PRECISION=dot_precision(x.dtype), BLOCK_M=align.block_m, TAIL_M=align.tail_m,
        BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))
    return out


def run_case(name: str, T: int, rows: list[dict]) -> None:
    from problems import load_models, make_tokens, make_weights
    from tune import graph_time
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    _, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    cfg = tritonmoe.api.resolve_config(x, ids.numel(), m.experts, m.hidden, m.ffn, None)
    gu = {k: v for k, v in cfg["gate_up"].items() if k not in ("PERSISTENT",)}
    base = {"BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    for tail in (64, 32):
        align = align_tokens(ids, m.experts, 128, tail_m=tail)
        used = int(align.num_post_padded)
        ref = gate_up(x, w.w_gate_up, align, gu, fuse_swiglu=True)

        def record(kind, fn, c):
            try:
                y = fn()
                torch.cuda.synchronize()
                err = float((y[:used].float() - ref[:used].float()).norm() / ref[:used].float().norm())
                us = round(graph_time(fn) * 1e3, 1)
            except Exception as e:  # a tile that does not compile or fit: recorded, not fatal
                err, us = float("nan"), float("nan")
                print(f"  {kind}: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
            rows.append({"device": torch.cuda.get_device_name(), "model": name, "tokens": T, "BLOCK_M": 128,
                         "TAIL_M": tail, "kind": kind, "us": us, "rel_diff_vs_prod": err, "cfg": str(c)})
            print(f"{name} T={T} tail={tail} {kind:26s} {us:9.1f} us  diff {err:.1e}", flush=True)

        record("prod_tuned_tile", lambda: gate_up(x, w.w_gate_up, align, gu, fuse_swiglu=True), gu)
        record("prod_base_tile", lambda: gate_up(x, w.w_gate_up, align, base, fuse_swiglu=True), base)
        for warps, stages in ((4, 3), (8, 3), (8, 2)):
            c = {**base, "num_warps": warps, "num_stages": stages}
            record(f"pair_w{warps}_s{stages}", lambda c=c: gate_up_pair(x, w.w_gate_up, align, m.top_k, c), c)


def main(argv=None) -> int:
    return lab_main(argv, __doc__, "pair_lab.py", "mixtral-8x7b:512", lambda name, T, rows, args: run_case(name, T, rows))


if __name__ == "__main__":
    sys.exit(main())
