"""The whole expert in one kernel, for decode: gate+up+SwiGLU and the down projection per F chunk.

At small token counts the layer streams the hit experts' weights and little else; two grouped GEMMs
mean two ramps and tails and an `act` round trip. Here each program owns (a block of BLOCK_M aligned
slots, a chunk of BLOCK_F of the F dimension): it computes that chunk of `silu(x Wg^T) * (x Wu^T)` in
registers (one load of x for both tiles, as in `gate_up`), multiplies it at once by the matching
`[H, BLOCK_F]` slice of `w_down`, scales by the routing weight and writes the fp32 partial
`partial[f_chunk, slot, :]`. `down.combine` then sums the chunks and the top-k choices in a fixed
order, so the result stays deterministic. Selected by a layer config with an `expert` entry (only
for `tritonmoe_fused`); `act` never reaches global memory on this path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._gemm_common import block_slots, dot_precision, gate_up_accumulate
from ._host import cdiv
from ._launch import empty, launch
from .align import Alignment


@triton.jit
def _fused_expert_kernel(
    x_ptr, wgu_ptr, wd_ptr, partial_ptr, topk_weights_ptr,
    sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
    H, F, num_routed,
    stride_xt, stride_xh, stride_ge, stride_gn, stride_gh, stride_de, stride_dh, stride_df,
    stride_ps, stride_pm,
    TOP_K: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    num_pid_f = tl.cdiv(F, BLOCK_F)
    pid = tl.program_id(0)
    pid_m = pid // num_pid_f
    pid_f = pid % num_pid_f
    if pid_m * BLOCK_M >= tl.load(num_post_ptr):
        return
    expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, pid_m * BLOCK_M, num_routed, BLOCK_M)
    token = (slot // TOP_K).to(tl.int64)
    fs = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    f_ok = fs < F
    acc_g, acc_u = gate_up_accumulate(
        x_ptr, wgu_ptr, token, row_ok, expert, fs, f_ok, 0, F, H,
        stride_xt, stride_xh, stride_ge, stride_gn, stride_gh,
        True, EVEN_K, PRECISION, BLOCK_M, BLOCK_F, BLOCK_K)
    # Rounded to the input dtype, as the two-kernel path stores it, so both paths compute the same function.
    act = (acc_g * tl.sigmoid(acc_g) * acc_u).to(x_ptr.dtype.element_ty)
    route_w = tl.load(topk_weights_ptr + slot, mask=row_ok, other=0.0)
    hs = tl.arange(0, BLOCK_H)
    d_ptrs = wd_ptr + expert * stride_de + hs[None, :].to(tl.int64) * stride_dh + fs[:, None] * stride_df
    p_ptrs = partial_ptr + pid_f * stride_ps + slot[:, None].to(tl.int64) * stride_pm + hs[None, :]
    for h0 in range(0, H, BLOCK_H):
        h_ok = hs < H - h0
        wd = tl.load(d_ptrs, mask=f_ok[:, None] & h_ok[None, :], other=0.0)
        out = tl.dot(act, wd, input_precision=PRECISION) * route_w[:, None]
        tl.store(p_ptrs, out, mask=row_ok[:, None] & h_ok[None, :])
        d_ptrs += BLOCK_H * stride_dh
        p_ptrs += BLOCK_H


def fused_expert(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, align: Alignment,
                 topk_weights: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Returns `partial [cdiv(F, BLOCK_F), T*K, H]` (fp32), to be summed by `down.combine`."""
    if not align.uniform:
        raise ValueError("fused_expert: the one-kernel decode path takes an alignment without tail or extended blocks "
                         "(TAIL_M)")
    E, H, F = w_down.shape
    bf, bk, bh = cfg["BLOCK_F"], cfg["BLOCK_K"], cfg["BLOCK_H"]
    chunks = cdiv(F, bf)
    partial = empty((chunks, align.num_routed, H), torch.float32, x.device)
    grid = (align.max_blocks * chunks,)
    launch(_fused_expert_kernel, grid,
        x, w_gate_up, w_down, partial, topk_weights.reshape(-1),
        align.sorted_ids, align.expert_ids, align.num_post_padded,
        H, F, align.num_routed,
        x.stride(0), x.stride(1), w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2),
        w_down.stride(0), w_down.stride(1), w_down.stride(2), partial.stride(0), partial.stride(1),
        TOP_K=align.num_routed // x.shape[0], EVEN_K=(H % bk == 0), PRECISION=dot_precision(x.dtype),
        BLOCK_M=align.block_m, BLOCK_F=bf, BLOCK_K=bk, BLOCK_H=bh,
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return partial
