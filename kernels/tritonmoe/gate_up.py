"""Gate and up projections: the fused gate+up+SwiGLU grouped GEMM, and the plain grouped GEMM the
comparison variants are built from.

One kernel, two modes (`FUSE_SWIGLU`):
- fused: each program loads a [BLOCK_M, BLOCK_K] tile of gathered tokens once and multiplies it by
  the matching gate rows and up rows of the expert into two fp32 accumulators; the epilogue writes
  only `silu(gate) * up`. Gate and up never reach global memory.
- plain: one accumulator over weight rows `[row_offset, row_offset + N)`, written as is (used for
  the concatenated gate|up GEMM of `tritonmoe_w13` and the separate GEMMs of `tritonmoe_unfused`).

Rows of the output are indexed by position in the aligned (expert-grouped, padded) order, so the
down projection reads them contiguously; padding rows are written as zeros (their tokens load as 0).
The weights are `w_gate_up [E, 2F, H]`: gate rows 0..F-1, up rows F..2F-1.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._gemm_common import block_rows, dot_precision, gate_up_accumulate, grouped_pid
from .align import Alignment


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, out_ptr,
    sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
    N, H, num_routed, row_offset, up_offset, num_pid_m,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_post_ptr):
        return
    expert, rows, slot, row_ok = block_rows(sorted_ids_ptr, expert_ids_ptr, pid_m, num_routed, BLOCK_M)
    token = (slot // TOP_K).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc_g, acc_u = gate_up_accumulate(
        x_ptr, w_ptr, token, row_ok, expert, cols, col_ok, row_offset, up_offset, H,
        stride_xt, stride_xh, stride_we, stride_wn, stride_wh,
        FUSE_SWIGLU, EVEN_K, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if FUSE_SWIGLU:
        out = acc_g * tl.sigmoid(acc_g) * acc_u
    else:
        out = acc_g
    o_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=col_ok[None, :])


def gate_up(x: torch.Tensor, w_gate_up: torch.Tensor, align: Alignment, cfg: dict, *,
            fuse_swiglu: bool, row_offset: int = 0, rows: int | None = None,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped GEMM over the aligned slots.

    fused: returns `silu(x W_gate^T) * (x W_up^T)` as `[max_padded, F]`.
    plain: returns `x W[row_offset:row_offset+rows]^T` as `[max_padded, rows]`.
    """
    F = w_gate_up.shape[1] // 2
    H = x.shape[1]
    n = F if fuse_swiglu else (rows if rows is not None else w_gate_up.shape[1] - row_offset)
    max_padded = align.sorted_ids.shape[0]
    if out is None:
        out = torch.empty((max_padded, n), dtype=x.dtype, device=x.device)
    bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    num_pid_m = align.max_blocks
    grid = (num_pid_m * triton.cdiv(n, bn),)
    _gate_up_kernel[grid](
        x, w_gate_up, out,
        align.sorted_ids, align.expert_ids, align.num_post_padded,
        n, H, align.num_routed, row_offset, row_offset + F, num_pid_m,
        x.stride(0), x.stride(1), w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2),
        out.stride(0), out.stride(1),
        TOP_K=align.num_routed // x.shape[0], FUSE_SWIGLU=fuse_swiglu, EVEN_K=(H % bk == 0),
        PRECISION=dot_precision(x.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return out
