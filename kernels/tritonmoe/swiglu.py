"""The SwiGLU activation as its own kernel: `act = silu(gate) * up`, for the unfused variants.

Reads gate and up from global memory (a `[rows, 2F]` buffer for `tritonmoe_w13`, two `[rows, F]`
buffers for `tritonmoe_unfused`) and writes `act [rows, F]`; only the used aligned rows are touched.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._host import cdiv, next_power_of_2
from ._launch import empty, launch
from .align import Alignment


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, num_post_ptr, F, stride_gm, stride_um, stride_om,
                   BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    pid_m = tl.program_id(0)
    num_post = tl.load(num_post_ptr)
    if pid_m * BLOCK_M >= num_post:
        return
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    # The used rows end inside a block when tail blocks are shorter than BLOCK_M (`tritonmoe.align`).
    mask = (rows[:, None] < num_post) & (cols[None, :] < F)
    g = tl.load(gate_ptr + rows[:, None] * stride_gm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + rows[:, None] * stride_um + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], (g * tl.sigmoid(g) * u).to(out_ptr.dtype.element_ty),
             mask=mask)


def swiglu(gate: torch.Tensor, up: torch.Tensor, align: Alignment) -> torch.Tensor:
    """`silu(gate) * up` over the used aligned rows; gate/up may be column views of one buffer."""
    rows, F = gate.shape
    out = empty((rows, F), gate.dtype, gate.device)
    bm = align.block_m
    block_f = max(16, min(256, 8192 // bm, next_power_of_2(F)))  # <= 8K elements a tile: no spills
    grid = (cdiv(rows, bm), cdiv(F, block_f))
    launch(_swiglu_kernel, grid, gate, up, out, align.num_post_padded, F, gate.stride(0), up.stride(0), out.stride(0),
           BLOCK_M=bm, BLOCK_F=block_f, num_warps=4)
    return out
