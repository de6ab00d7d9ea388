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

Two ways to feed the tensor cores, chosen by the config's `DESC` flag (the tuner picks per shape):
- pointers (default): each program gathers its tokens' rows of `x` and the weight tiles with masked loads;
- tensor descriptors (`DESC`): the tokens are first gathered once into aligned order (`gather_rows`,
  padding rows zero), so both operands are plain 2-D/3-D boxes that Hopper loads with TMA (other
  targets lower descriptors to ordinary loads: the same source compiles everywhere). In fused mode the
  weights are viewed as `[2E, F, H]` and one `[2, BLOCK_N, BLOCK_K]` box brings the gate and the up
  tile together, so each K step is a single `[BLOCK_M, 2*BLOCK_N]` product whose two halves are split
  in registers for `silu(gate) * up`.
  With `PERSISTENT` as well (and no tail blocks), one program per SM walks the tiles (`_gate_up_persistent_kernel`):
  the next tile's loads overlap this tile's epilogue, which leaves through a descriptor store.
- `PERSISTENT` without `DESC` (no tail blocks): the same persistent loop with the tokens gathered inside it by
  pointer loads and the weights as descriptor boxes (`_gate_up_persistent_gather_kernel`): no gather launch, which
  writes K copies of x on the top-k = 8 models.

At one token the pointer kernel can also make the routing choice itself (`select=`, `_gate_up_select_kernel`, see
`tritonmoe.route_align.prepare_selection`): every program picks the token's top k from the router's partial
logits, takes the expert of its block, and program 0 stores the routing and alignment tables for the later launches.
The tiles are those of `_gate_up_kernel` (same products, same order): the output is bit-identical.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._gemm_common import (block_extent, block_rows_slots, block_slots, dot_precision, gate_up_accumulate,
                           gate_up_accumulate_ext, order_blocks, tile_of)
from ._host import cdiv, next_power_of_2
from ._launch import empty, launch
from ._validate import interpreter_active
from .align import Alignment, last_box_rows
from .descriptors import descriptor, descriptor_ok, wants_descriptors
from .route_align import Selection, one_token_choices, write_one_token


@triton.jit
def _gate_up_tile(
    x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
    N, H, num_routed, row_offset, up_offset,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] output tile of block `pid_m` (aligned rows from `row0`); with EXT_M > 0 an extended
    block's tile, its next EXT_M rows meeting each loaded weight tile too (`gate_up_accumulate_ext`)."""
    expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if EXT_M > 0:
        rows_e, slot_e, row_ok_e = block_rows_slots(sorted_ids_ptr, row0 + BLOCK_M, num_routed, EXT_M)
        acc_g, acc_u, acc_ge, acc_ue = gate_up_accumulate_ext(
            x_ptr, w_ptr, (slot // TOP_K).to(tl.int64), row_ok, (slot_e // TOP_K).to(tl.int64), row_ok_e, expert,
            cols, col_ok, row_offset, up_offset, H, stride_xt, stride_xh, stride_we, stride_wn, stride_wh,
            FUSE_SWIGLU, EVEN_K, PRECISION, BLOCK_M, EXT_M, BLOCK_N, BLOCK_K)
        _store_pointer_tile(acc_ge, acc_ue, out_ptr, rows_e, cols, col_ok, stride_om, stride_on, FUSE_SWIGLU)
    else:
        token = (slot // TOP_K).to(tl.int64)
        acc_g, acc_u = gate_up_accumulate(
            x_ptr, w_ptr, token, row_ok, expert, cols, col_ok, row_offset, up_offset, H,
            stride_xt, stride_xh, stride_we, stride_wn, stride_wh,
            FUSE_SWIGLU, EVEN_K, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    _store_pointer_tile(acc_g, acc_u, out_ptr, rows, cols, col_ok, stride_om, stride_on, FUSE_SWIGLU)


@triton.jit
def _store_pointer_tile(acc_g, acc_u, out_ptr, rows, cols, col_ok, stride_om, stride_on, FUSE_SWIGLU: tl.constexpr):
    """The pointer kernels' epilogue: `silu(gate) * up` (fused) or the one accumulator (plain), stored to aligned
    `rows` and `cols` in `out_ptr`'s dtype."""
    if FUSE_SWIGLU:
        out = acc_g * tl.sigmoid(acc_g) * acc_u
    else:
        out = acc_g
    o_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=col_ok[None, :])


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, out_ptr,
    sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
    N, H, num_routed, row_offset, up_offset, num_pid_m,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ORDER_BLOCKS: tl.constexpr,
):
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = tile_of(tl.program_id(0), expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
    row0, height = block_extent(block_rows_ptr, num_post_ptr, pid_m, BLOCK_M, TAIL_M)
    if height == BLOCK_M:
        _gate_up_tile(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
                      N, H, num_routed, row_offset, up_offset,
                      stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
                      TOP_K, FUSE_SWIGLU, EVEN_K, PRECISION, BLOCK_M, 0, BLOCK_N, BLOCK_K)
    if TAIL_M < BLOCK_M:
        if height == TAIL_M:  # a tail block: the same tile code at TAIL_M rows
            _gate_up_tile(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
                          N, H, num_routed, row_offset, up_offset,
                          stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
                          TOP_K, FUSE_SWIGLU, EVEN_K, PRECISION, TAIL_M, 0, BLOCK_N, BLOCK_K)
    if TAIL_M > BLOCK_M:
        if height == TAIL_M:  # an extended block: two token tiles against each weight tile
            _gate_up_tile(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
                          N, H, num_routed, row_offset, up_offset,
                          stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
                          TOP_K, FUSE_SWIGLU, EVEN_K, PRECISION, BLOCK_M, TAIL_M - BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _gate_up_select_kernel(
    x_ptr, w_ptr, out_ptr, partial_ptr, weights_ptr, ids_ptr,
    sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr, expert_counts_ptr,
    N, H, E, num_splits, max_blocks, row_offset, up_offset,
    stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_KK: tl.constexpr,
    BLOCK_S: tl.constexpr, HEIGHT: tl.constexpr, BLOCK_B: tl.constexpr,
    FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`_gate_up_kernel` for one token whose routing this launch decides: program (block m, column block n) sums the
    partial logits and picks the top k (`one_token_choices`), computes the tile of block m (HEIGHT rows: the slot of
    the choice ranked m among the chosen ids, then padding), and program 0 stores the routing and the alignment
    (`write_one_token`). TOP_K blocks times the column blocks."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    w, ids, rank = one_token_choices(partial_ptr, E, num_splits, TOP_K, RENORMALIZE, BLOCK_E, BLOCK_KK, BLOCK_S)
    if pid == 0:
        write_one_token(w, ids, rank, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                        block_rows_ptr, num_post_ptr, expert_counts_ptr, E, max_blocks,
                        TOP_K, BLOCK_E, BLOCK_KK, HEIGHT, BLOCK_B)
    kk = tl.arange(0, BLOCK_KK)
    expert = tl.sum(tl.where((rank == pid_m) & (kk < TOP_K), ids, 0), axis=0).to(tl.int64)
    r = tl.arange(0, HEIGHT)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc_g, acc_u = gate_up_accumulate(
        x_ptr, w_ptr, tl.zeros((HEIGHT,), dtype=tl.int64), r == 0, expert, cols, col_ok, row_offset, up_offset, H,
        0, stride_xh, stride_we, stride_wn, stride_wh,
        FUSE_SWIGLU, EVEN_K, PRECISION, HEIGHT, BLOCK_N, BLOCK_K)
    _store_pointer_tile(acc_g, acc_u, out_ptr, pid_m * HEIGHT + r, cols, col_ok, stride_om, stride_on, FUSE_SWIGLU)


@triton.jit
def _gather_rows_kernel(x_ptr, sorted_ids_ptr, num_post_ptr, out_ptr, H, num_routed, stride_xt, stride_xh,
                        stride_om, TOP_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[p] = x[slot_p // TOP_K] for the used aligned positions p; padding positions get zeros."""
    pid = tl.program_id(0)
    if pid * BLOCK_R >= tl.load(num_post_ptr):
        return
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    slot = tl.load(sorted_ids_ptr + rows)
    ok = slot < num_routed
    token = (slot // TOP_K).to(tl.int64)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        col_ok = cols < H
        v = tl.load(x_ptr + token[:, None] * stride_xt + cols[None, :] * stride_xh, mask=ok[:, None] & col_ok[None, :],
                    other=0.0)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :], v, mask=col_ok[None, :])


GATHER_BLOCK_R = 16  # aligned rows a gather program copies (the traffic model counts its programs)


def gather_rows(x: torch.Tensor, align: Alignment) -> torch.Tensor:
    """`x` gathered into aligned order: `[max_padded, H]`, row p = the token of slot p (zeros for padding);
    rows past the used positions are left unwritten (no kernel reads them)."""
    max_padded, H = align.sorted_ids.shape[0], x.shape[1]
    out = empty((max_padded, H), x.dtype, x.device)
    launch(_gather_rows_kernel, (cdiv(max_padded, GATHER_BLOCK_R),),
        x, align.sorted_ids, align.num_post_padded, out, H, align.num_routed, x.stride(0), x.stride(1), out.stride(0),
        TOP_K=align.num_routed // x.shape[0], BLOCK_R=GATHER_BLOCK_R, BLOCK_H=min(256, next_power_of_2(H)),
        num_warps=4)
    return out


@triton.jit
def _swiglu_of_pairs(acc, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """`silu(gate) * up` from one [BLOCK_M, 2*BLOCK_N] product over a [2, BLOCK_N, BLOCK_K] weight box, whose columns
    hold the gate and the up tile one after the other."""
    gate, up = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
    return gate * tl.sigmoid(gate) * up


@triton.jit
def _gate_up_desc_tile(
    a_desc, w_desc, out_ptr, expert, row0, n0, N, H, row_offset, stride_om, stride_on,
    FUSE_SWIGLU: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One output tile from descriptor boxes; `a_desc`'s box is [BLOCK_M, BLOCK_K]."""
    if FUSE_SWIGLU:
        # w_desc views the weights as [2E, F, H]: rows 2e and 2e+1 are expert e's gate and up matrices.
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            a = a_desc.load([row0, k0])
            b = tl.reshape(w_desc.load([2 * expert, n0, k0]), (2 * BLOCK_N, BLOCK_K))
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
        out = _swiglu_of_pairs(acc, BLOCK_M, BLOCK_N)
    else:
        # w_desc is [E, 2F, H] with a [1, BLOCK_N, BLOCK_K] box: rows past 2F read as zeros, never
        # another expert's; columns past N are not stored.
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            a = a_desc.load([row0, k0])
            b = tl.reshape(w_desc.load([expert, row_offset + n0, k0]), (BLOCK_N, BLOCK_K))
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
        out = acc
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = n0 + tl.arange(0, BLOCK_N)
    o_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=(cols < N)[None, :])


@triton.jit
def _gate_up_desc_ext_tile(
    a_desc, a_ext_desc, w_desc, out_ptr, expert, row0, n0, N, H, row_offset, stride_om, stride_on,
    FUSE_SWIGLU: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`_gate_up_desc_tile` of an extended block: a BLOCK_M-row and an EXT_M-row token box against each weight box."""
    W_ROWS: tl.constexpr = (1 + FUSE_SWIGLU) * BLOCK_N
    if FUSE_SWIGLU:
        box_e = 2 * expert
        box_n = n0
    else:
        box_e = expert
        box_n = row_offset + n0
    acc = tl.zeros((BLOCK_M, W_ROWS), dtype=tl.float32)
    acc_e = tl.zeros((EXT_M, W_ROWS), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        a = a_desc.load([row0, k0])
        a_e = a_ext_desc.load([row0 + BLOCK_M, k0])
        b = tl.reshape(w_desc.load([box_e, box_n, k0]), (W_ROWS, BLOCK_K))
        acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
        acc_e = tl.dot(a_e, b.T, acc_e, input_precision=PRECISION)
    _store_rows(acc, out_ptr, row0, n0, N, stride_om, stride_on, FUSE_SWIGLU, BLOCK_M, BLOCK_N)
    _store_rows(acc_e, out_ptr, row0 + BLOCK_M, n0, N, stride_om, stride_on, FUSE_SWIGLU, EXT_M, BLOCK_N)


@triton.jit
def _gate_up_desc_kernel(
    a_desc, a_tail_desc, w_desc, out_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
    N, H, num_pid_m, row_offset, stride_om, stride_on,
    FUSE_SWIGLU: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ORDER_BLOCKS: tl.constexpr,
):
    """`a_desc` boxes BLOCK_M rows of the gathered tokens, `a_tail_desc` TAIL_M rows (for tail blocks)."""
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = tile_of(tl.program_id(0), expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
    row0, height = block_extent(block_rows_ptr, num_post_ptr, pid_m, BLOCK_M, TAIL_M)
    if height > 0:
        expert = tl.load(expert_ids_ptr + pid_m)
        if height == BLOCK_M:
            _gate_up_desc_tile(a_desc, w_desc, out_ptr, expert, row0, pid_n * BLOCK_N, N, H, row_offset,
                               stride_om, stride_on, FUSE_SWIGLU, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        if TAIL_M < BLOCK_M:
            if height == TAIL_M:
                _gate_up_desc_tile(a_tail_desc, w_desc, out_ptr, expert, row0, pid_n * BLOCK_N, N, H, row_offset,
                                   stride_om, stride_on, FUSE_SWIGLU, PRECISION, TAIL_M, BLOCK_N, BLOCK_K)
        if TAIL_M > BLOCK_M:
            if height == TAIL_M:  # an extended block: `a_tail_desc` boxes its TAIL_M - BLOCK_M extra rows
                _gate_up_desc_ext_tile(a_desc, a_tail_desc, w_desc, out_ptr, expert, row0, pid_n * BLOCK_N, N, H,
                                       row_offset, stride_om, stride_on, FUSE_SWIGLU, PRECISION,
                                       BLOCK_M, TAIL_M - BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _persistent_weight_box(expert, n0, row_offset, FUSE_SWIGLU: tl.constexpr):
    """Where a persistent tile's weight boxes start: fused, the gate/up pair 2e of the [2E, F, H] view; plain, row
    `row_offset + n0` of expert e's [2F, H] rows."""
    if FUSE_SWIGLU:
        return 2 * expert, n0
    else:
        return expert, row_offset + n0


@triton.jit
def _persistent_store(out, out_desc, out_ptr, row0, n0, N, stride_om, stride_on,
                      TMA_STORE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """A persistent tile's output: through the descriptor (asynchronous on Hopper), else by pointers (columns < N)."""
    out = out.to(out_ptr.dtype.element_ty)
    if TMA_STORE:
        out_desc.store([row0, n0], out)
    else:
        rows = row0 + tl.arange(0, BLOCK_M)
        cols = n0 + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on, out,
                 mask=(cols < N)[None, :])


@triton.jit
def _gate_up_persistent_kernel(
    a_desc, w_desc, out_desc, out_ptr, expert_ids_ptr, num_post_ptr, N, H, row_offset, stride_om, stride_on,
    NUM_PROGRAMS: tl.constexpr, FUSE_SWIGLU: tl.constexpr, TMA_STORE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ORDER_BLOCKS: tl.constexpr,
):
    """`_gate_up_desc_kernel` (no tail blocks) as a persistent grid: NUM_PROGRAMS programs walk the used tiles in
    grouped order. The flattened tile loop lets the pipeline load the next tile's first boxes while this tile's last
    steps and epilogue run, and with TMA_STORE the tile leaves through a descriptor store (asynchronous on Hopper)."""
    W_ROWS: tl.constexpr = (1 + FUSE_SWIGLU) * BLOCK_N  # the box's rows: gate and up tiles, or one tile
    num_pid_m = tl.load(num_post_ptr) // BLOCK_M
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(H, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = tile_of(tile, expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
        row0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        box_e, box_n = _persistent_weight_box(tl.load(expert_ids_ptr + pid_m), n0, row_offset, FUSE_SWIGLU)
        acc = tl.zeros((BLOCK_M, W_ROWS), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([row0, ki * BLOCK_K])
            b = tl.reshape(w_desc.load([box_e, box_n, ki * BLOCK_K]), (W_ROWS, BLOCK_K))
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
        if FUSE_SWIGLU:
            acc = _swiglu_of_pairs(acc, BLOCK_M, BLOCK_N)
        _persistent_store(acc, out_desc, out_ptr, row0, n0, N, stride_om, stride_on, TMA_STORE, BLOCK_M, BLOCK_N)


@triton.jit
def _gate_up_persistent_gather_kernel(
    x_ptr, w_desc, out_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
    N, H, num_routed, row_offset, stride_xt, stride_xh, stride_om, stride_on,
    TOP_K: tl.constexpr, NUM_PROGRAMS: tl.constexpr, FUSE_SWIGLU: tl.constexpr, TMA_STORE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ORDER_BLOCKS: tl.constexpr,
):
    """`_gate_up_persistent_kernel` with the tokens gathered inside it: each tile loads its slots' rows of `x` by
    pointers (as `_gate_up_kernel` does), so no gather launch writes K copies of x first; the weights still come as
    descriptor boxes. Selected by `PERSISTENT` without `DESC`."""
    W_ROWS: tl.constexpr = (1 + FUSE_SWIGLU) * BLOCK_N
    num_pid_m = tl.load(num_post_ptr) // BLOCK_M
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(H, BLOCK_K)
    ks = tl.arange(0, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = tile_of(tile, expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
        row0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        box_e, box_n = _persistent_weight_box(tl.load(expert_ids_ptr + pid_m), n0, row_offset, FUSE_SWIGLU)
        slot = tl.load(sorted_ids_ptr + row0 + tl.arange(0, BLOCK_M))
        row_ok = slot < num_routed
        a_ptrs = x_ptr + (slot // TOP_K).to(tl.int64)[:, None] * stride_xt + ks[None, :] * stride_xh
        acc = tl.zeros((BLOCK_M, W_ROWS), dtype=tl.float32)
        for ki in range(k_tiles):
            a = tl.load(a_ptrs + ki * BLOCK_K * stride_xh, mask=row_ok[:, None] & (ks < H - ki * BLOCK_K)[None, :],
                        other=0.0)
            b = tl.reshape(w_desc.load([box_e, box_n, ki * BLOCK_K]), (W_ROWS, BLOCK_K))
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
        if FUSE_SWIGLU:
            acc = _swiglu_of_pairs(acc, BLOCK_M, BLOCK_N)
        _persistent_store(acc, out_desc, out_ptr, row0, n0, N, stride_om, stride_on, TMA_STORE, BLOCK_M, BLOCK_N)


@triton.jit
def _gather_product(x_ptr, w_desc, sorted_ids_ptr, row0, box_e, box_n, H, num_routed, stride_xt, stride_xh,
                    TOP_K: tl.constexpr, PRECISION: tl.constexpr, ROWS: tl.constexpr, EXT: tl.constexpr,
                    W_ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """x's rows for the slots of aligned rows [row0, row0 + ROWS) (gathered by pointers) times one weight box per K
    step; with EXT > 0 also rows [row0 + ROWS, row0 + ROWS + EXT) against the same box (an extended block).
    Returns the two fp32 accumulators; with EXT == 0 the second is a placeholder (the first's zeros, never stored)."""
    ks = tl.arange(0, BLOCK_K)
    slot = tl.load(sorted_ids_ptr + row0 + tl.arange(0, ROWS))
    ok = slot < num_routed
    a_ptrs = x_ptr + (slot // TOP_K).to(tl.int64)[:, None] * stride_xt + ks[None, :] * stride_xh
    acc = tl.zeros((ROWS, W_ROWS), dtype=tl.float32)
    if EXT > 0:
        slot_e = tl.load(sorted_ids_ptr + row0 + ROWS + tl.arange(0, EXT))
        ok_e = slot_e < num_routed
        e_ptrs = x_ptr + (slot_e // TOP_K).to(tl.int64)[:, None] * stride_xt + ks[None, :] * stride_xh
        acc_e = tl.zeros((EXT, W_ROWS), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            k_ok = (ks < H - k0)[None, :]
            a = tl.load(a_ptrs + k0 * stride_xh, mask=ok[:, None] & k_ok, other=0.0)
            a_e = tl.load(e_ptrs + k0 * stride_xh, mask=ok_e[:, None] & k_ok, other=0.0)
            b = tl.reshape(w_desc.load([box_e, box_n, k0]), (W_ROWS, BLOCK_K))
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
            acc_e = tl.dot(a_e, b.T, acc_e, input_precision=PRECISION)
    else:
        acc_e = acc
        for k0 in range(0, H, BLOCK_K):
            a = tl.load(a_ptrs + k0 * stride_xh, mask=ok[:, None] & (ks < H - k0)[None, :], other=0.0)
            b = tl.reshape(w_desc.load([box_e, box_n, k0]), (W_ROWS, BLOCK_K))
            acc = tl.dot(a, b.T, acc, input_precision=PRECISION)
    return acc, acc_e


@triton.jit
def _store_rows(acc, out_ptr, row0, n0, N, stride_om, stride_on,
                FUSE_SWIGLU: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """A [ROWS, (1 + FUSE_SWIGLU) * BLOCK_N] product's output (`silu(gate) * up` when fused) to aligned rows from
    `row0`, columns `n0` on (those < N), by pointers."""
    if FUSE_SWIGLU:
        acc = _swiglu_of_pairs(acc, ROWS, BLOCK_N)
    rows = row0 + tl.arange(0, ROWS)
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=(cols < N)[None, :])


@triton.jit
def _gate_up_persistent_ext_kernel(
    x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, block_rows_ptr,
    N, H, num_routed, row_offset, max_blocks, stride_xt, stride_xh, stride_om, stride_on,
    TOP_K: tl.constexpr, NUM_PROGRAMS: tl.constexpr, FUSE_SWIGLU: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, ORDER_BLOCKS: tl.constexpr, BLOCKS_P2: tl.constexpr,
):
    """`_gate_up_persistent_gather_kernel` over an alignment with extended last blocks (`TAIL_M > BLOCK_M`, see
    `tritonmoe.align`): a block of TAIL_M rows is one tile whose BLOCK_M and TAIL_M - BLOCK_M token rows meet each
    weight box in two products, so its weights are read once. The tiles differ in height, so the loop is not
    flattened and the output leaves by pointers. The used blocks are counted from `block_rows` (BLOCKS_P2 >=
    `max_blocks` entries)."""
    W_ROWS: tl.constexpr = (1 + FUSE_SWIGLU) * BLOCK_N
    bs = tl.arange(0, BLOCKS_P2)
    total = tl.load(block_rows_ptr + max_blocks)
    used = tl.sum((tl.load(block_rows_ptr + bs, mask=bs < max_blocks, other=total) < total).to(tl.int32))
    num_pid_n = tl.cdiv(N, BLOCK_N)
    for tile in range(tl.program_id(0), used * num_pid_n, NUM_PROGRAMS):
        pid_m, pid_n = tile_of(tile, expert_ids_ptr, used, num_pid_n, GROUP_M, ORDER_BLOCKS)
        row0 = tl.load(block_rows_ptr + pid_m)
        height = tl.load(block_rows_ptr + pid_m + 1) - row0
        n0 = pid_n * BLOCK_N
        box_e, box_n = _persistent_weight_box(tl.load(expert_ids_ptr + pid_m), n0, row_offset, FUSE_SWIGLU)
        if height == BLOCK_M:
            acc, _unused = _gather_product(x_ptr, w_desc, sorted_ids_ptr, row0, box_e, box_n, H, num_routed,
                                           stride_xt, stride_xh, TOP_K, PRECISION, BLOCK_M, 0, W_ROWS, BLOCK_K)
            _store_rows(acc, out_ptr, row0, n0, N, stride_om, stride_on, FUSE_SWIGLU, BLOCK_M, BLOCK_N)
        else:
            acc, acc_e = _gather_product(x_ptr, w_desc, sorted_ids_ptr, row0, box_e, box_n, H, num_routed,
                                         stride_xt, stride_xh, TOP_K, PRECISION, BLOCK_M, TAIL_M - BLOCK_M, W_ROWS,
                                         BLOCK_K)
            _store_rows(acc, out_ptr, row0, n0, N, stride_om, stride_on, FUSE_SWIGLU, BLOCK_M, BLOCK_N)
            _store_rows(acc_e, out_ptr, row0 + BLOCK_M, n0, N, stride_om, stride_on, FUSE_SWIGLU,
                        TAIL_M - BLOCK_M, BLOCK_N)


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    """The device's SM (CU) count: the persistent kernels' program count."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Programs of a persistent launch under the interpreter (no device to ask; several, so the tile loop is walked).
INTERPRETER_PROGRAMS = 3


def persistent_programs(device: torch.device, max_tiles: int) -> int:
    """Programs a persistent GEMM launches: one per SM (INTERPRETER_PROGRAMS on the CPU), at most one per tile."""
    if device.type in ("cpu", "meta") or interpreter_active():  # the interpreter, or a build that records launches
        sms = INTERPRETER_PROGRAMS
    else:
        sms = num_sms(device.index if device.index is not None else torch.cuda.current_device())
    return max(1, min(sms, max_tiles))


def uses_persistent(cfg: dict, align: Alignment) -> bool:
    """The config asks for a persistent kernel (`PERSISTENT`) and the alignment has one tile height."""
    return bool(cfg.get("PERSISTENT")) and align.uniform


def _weight_boxes_ok(x: torch.Tensor, w_gate_up: torch.Tensor) -> bool:
    """The weights can be read as descriptor boxes (contiguous, 16-byte aligned) beside tokens of their dtype."""
    return w_gate_up.is_contiguous() and descriptor_ok(w_gate_up) and x.dtype == w_gate_up.dtype


def uses_persistent_gather(cfg: dict, align: Alignment, x: torch.Tensor, w_gate_up: torch.Tensor) -> bool:
    """`PERSISTENT` without `DESC`: the persistent kernel that gathers the tokens itself, where the weights allow
    descriptor boxes (`_weight_boxes_ok`); else the pointer kernel runs."""
    return uses_persistent(cfg, align) and not cfg.get("DESC") and _weight_boxes_ok(x, w_gate_up)


def uses_descriptors(cfg: dict, x: torch.Tensor, w_gate_up: torch.Tensor) -> bool:
    """The config asks for descriptors and the tensors allow them (contiguous 16-byte aligned weights,
    rows of x a multiple of 16 bytes); otherwise the pointer kernel runs."""
    return wants_descriptors(cfg, w_gate_up.shape[2], x.element_size()) and _weight_boxes_ok(x, w_gate_up)


def _gate_up_desc(x_sorted, w_gate_up, align, cfg, fuse_swiglu, row_offset, n, out):
    E, F2, H = w_gate_up.shape
    F = F2 // 2
    bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    a_desc = descriptor(x_sorted, [bm, bk])
    a_tail_desc = descriptor(x_sorted, [last_box_rows(align), bk]) if not align.uniform else a_desc
    if fuse_swiglu:
        w_desc = descriptor(w_gate_up, [2, bn, bk], shape=[2 * E, F, H])
    else:
        w_desc = descriptor(w_gate_up, [1, bn, bk])
    if uses_persistent(cfg, align):
        programs = persistent_programs(x_sorted.device, align.max_blocks * cdiv(n, bn))
        tma_store = descriptor_ok(out)
        launch(_gate_up_persistent_kernel, (programs,),
            a_desc, w_desc, descriptor(out, [bm, bn]) if tma_store else out, out, align.expert_ids,
            align.num_post_padded, n, H, row_offset, out.stride(0), out.stride(1),
            NUM_PROGRAMS=programs, FUSE_SWIGLU=fuse_swiglu, TMA_STORE=tma_store, PRECISION=dot_precision(x_sorted.dtype),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1), ORDER_BLOCKS=order_blocks(cfg, align),
            num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
        )
        return out
    grid = (align.max_blocks * cdiv(n, bn),)
    launch(_gate_up_desc_kernel, grid,
        a_desc, a_tail_desc, w_desc, out, align.expert_ids, align.block_rows, align.num_post_padded,
        n, H, align.max_blocks, row_offset, out.stride(0), out.stride(1),
        FUSE_SWIGLU=fuse_swiglu, PRECISION=dot_precision(x_sorted.dtype),
        BLOCK_M=bm, TAIL_M=align.tail_m, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
        ORDER_BLOCKS=order_blocks(cfg, align),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return out


def selects_here(cfg: dict, x: torch.Tensor, w_gate_up: torch.Tensor) -> bool:
    """The gate/up config runs the pointer kernel for these tensors, which alone takes a `Selection`."""
    return not cfg.get("PERSISTENT") and not uses_descriptors(cfg, x, w_gate_up)


def _gate_up_select(x, w_gate_up, select: Selection, cfg, fuse_swiglu, row_offset, n, out):
    a, meta = select.align, select.meta
    E, F2, H = w_gate_up.shape
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    launch(_gate_up_select_kernel, (meta["TOP_K"] * cdiv(n, bn),),
        x, w_gate_up, out, select.partial, select.weights, select.ids,
        a.sorted_ids, a.slot_rows, a.expert_ids, a.block_rows, a.num_post_padded, a.expert_counts,
        n, H, E, select.partial.shape[0], a.max_blocks, row_offset, row_offset + F2 // 2,
        x.stride(1), w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2), out.stride(0), out.stride(1),
        **meta, FUSE_SWIGLU=fuse_swiglu, EVEN_K=(H % bk == 0), PRECISION=dot_precision(x.dtype),
        BLOCK_N=bn, BLOCK_K=bk, num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return out


def gate_up(x: torch.Tensor, w_gate_up: torch.Tensor, align: Alignment, cfg: dict, *,
            fuse_swiglu: bool, row_offset: int = 0, rows: int | None = None,
            out: torch.Tensor | None = None, x_sorted: torch.Tensor | None = None,
            select: Selection | None = None) -> torch.Tensor:
    """Grouped GEMM over the aligned slots.

    fused: returns `silu(x W_gate^T) * (x W_up^T)` as `[max_padded, F]`.
    plain: returns `x W[row_offset:row_offset+rows]^T` as `[max_padded, rows]`.
    With `cfg["DESC"]`, `x_sorted` (from `gather_rows`) is used if given, else gathered here.
    With `select` (one token, `tritonmoe.route_align.prepare_selection`; only where `selects_here`), this launch also
    makes the routing choice and fills `select`'s tensors; `align` is `select.align`.
    """
    F = w_gate_up.shape[1] // 2
    H = x.shape[1]
    n = F if fuse_swiglu else (rows if rows is not None else w_gate_up.shape[1] - row_offset)
    max_padded = align.sorted_ids.shape[0]
    if out is None:
        out = empty((max_padded, n), x.dtype, x.device)
    if select is not None:
        if align is not select.align or not selects_here(cfg, x, w_gate_up):
            raise ValueError("select: needs the pointer gate/up kernel (no DESC, no PERSISTENT) and its own alignment")
        return _gate_up_select(x, w_gate_up, select, cfg, fuse_swiglu, row_offset, n, out)
    bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    if uses_descriptors(cfg, x, w_gate_up):
        if x_sorted is None:
            x_sorted = gather_rows(x, align)
        return _gate_up_desc(x_sorted, w_gate_up, align, cfg, fuse_swiglu, row_offset, n, out)
    if align.has_ext and cfg.get("PERSISTENT") and _weight_boxes_ok(x, w_gate_up):
        E = w_gate_up.shape[0]
        w_desc = (descriptor(w_gate_up, [2, bn, bk], shape=[2 * E, F, H]) if fuse_swiglu
                  else descriptor(w_gate_up, [1, bn, bk]))
        programs = persistent_programs(x.device, align.max_blocks * cdiv(n, bn))
        launch(_gate_up_persistent_ext_kernel, (programs,),
            x, w_desc, out, align.sorted_ids, align.expert_ids, align.block_rows,
            n, H, align.num_routed, row_offset, align.max_blocks, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            TOP_K=align.num_routed // x.shape[0], NUM_PROGRAMS=programs, FUSE_SWIGLU=fuse_swiglu,
            PRECISION=dot_precision(x.dtype), BLOCK_M=bm, TAIL_M=align.tail_m, BLOCK_N=bn, BLOCK_K=bk,
            GROUP_M=cfg.get("GROUP_M", 1), ORDER_BLOCKS=order_blocks(cfg, align),
            BLOCKS_P2=next_power_of_2(align.max_blocks),
            num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
        )
        return out
    if uses_persistent_gather(cfg, align, x, w_gate_up):
        E = w_gate_up.shape[0]
        w_desc = (descriptor(w_gate_up, [2, bn, bk], shape=[2 * E, F, H]) if fuse_swiglu
                  else descriptor(w_gate_up, [1, bn, bk]))
        programs = persistent_programs(x.device, align.max_blocks * cdiv(n, bn))
        tma_store = descriptor_ok(out)
        launch(_gate_up_persistent_gather_kernel, (programs,),
            x, w_desc, descriptor(out, [bm, bn]) if tma_store else out, out,
            align.sorted_ids, align.expert_ids, align.num_post_padded,
            n, H, align.num_routed, row_offset, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            TOP_K=align.num_routed // x.shape[0], NUM_PROGRAMS=programs, FUSE_SWIGLU=fuse_swiglu, TMA_STORE=tma_store,
            PRECISION=dot_precision(x.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
            ORDER_BLOCKS=order_blocks(cfg, align),
            num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
        )
        return out
    num_pid_m = align.max_blocks
    grid = (num_pid_m * cdiv(n, bn),)
    launch(_gate_up_kernel, grid,
        x, w_gate_up, out,
        align.sorted_ids, align.expert_ids, align.block_rows, align.num_post_padded,
        n, H, align.num_routed, row_offset, row_offset + F, num_pid_m,
        x.stride(0), x.stride(1), w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2),
        out.stride(0), out.stride(1),
        TOP_K=align.num_routed // x.shape[0], FUSE_SWIGLU=fuse_swiglu, EVEN_K=(H % bk == 0),
        PRECISION=dot_precision(x.dtype),
        BLOCK_M=bm, TAIL_M=align.tail_m, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
        ORDER_BLOCKS=order_blocks(cfg, align),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return out
