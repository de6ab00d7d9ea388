"""Down projection and combine.

`down(act, w_down, align, topk_weights)` is a grouped GEMM over the aligned rows of `act [max_padded, F]`
with `w_down [E, H, F]`; it scales each row by its routing weight and writes it to the row of its routed
slot in `partial [SPLIT_K, T*K, H]` (in the input dtype when SPLIT_K = 1, else fp32). With SPLIT_K > 1 the F dimension is split across
programs, which gives small token counts enough programs to fill the GPU.

`combine(partial, T, K)` sums the SPLIT_K * K partial rows of each token in a fixed order, so the
result is bit-identical run after run (no atomics anywhere).

`down_combine(act, w_down, align, topk_weights, topk_ids)` does both for few tokens in one launch (a program per
token and block of H columns sums the token's K choices itself; the down config's `COMBINE` flag).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._gemm_common import block_extent, block_rows_slots, block_slots, dot_precision, order_blocks, tile_of
from ._host import cdiv, next_power_of_2
from ._launch import empty, launch
from .align import Alignment, last_box_rows
from .descriptors import descriptor, descriptor_ok, wants_descriptors


@triton.jit
def _down_tile(
    a_ptr, w_ptr, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n, pid_s,
    H, F, num_routed, k_per_split,
    stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_ps, stride_pm, stride_pn,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M, BLOCK_N] tile of block `pid_m` (aligned rows from `row0`) over F split `pid_s`; with EXT_M > 0 an
    extended block's tile: its next EXT_M rows as a second row tile against each loaded weight tile."""
    expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, F)
    ks = k_start + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None].to(tl.int64) * stride_am + ks[None, :] * stride_af
    w_ptrs = w_ptr + expert * stride_we + cols[None, :].to(tl.int64) * stride_wh + ks[:, None] * stride_wf
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if EXT_M > 0:
        rows_e, slot_e, row_ok_e = block_rows_slots(sorted_ids_ptr, row0 + BLOCK_M, num_routed, EXT_M)
        e_ptrs = a_ptr + rows_e[:, None].to(tl.int64) * stride_am + ks[None, :] * stride_af
        acc_e = tl.zeros((EXT_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs, mask=col_ok[None, :], other=0.0)
            if EXT_M > 0:
                a_e = tl.load(e_ptrs)
        else:
            k_ok = (ks + (k0 - k_start)) < k_end
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=col_ok[None, :] & k_ok[:, None], other=0.0)
            if EXT_M > 0:
                a_e = tl.load(e_ptrs, mask=k_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        if EXT_M > 0:
            acc_e = tl.dot(a_e, w, acc_e, input_precision=PRECISION)
            e_ptrs += BLOCK_K * stride_af
        a_ptrs += BLOCK_K * stride_af
        w_ptrs += BLOCK_K * stride_wf
    _store_weighted(acc, partial_ptr, topk_weights_ptr, slot, row_ok, cols, col_ok, pid_s, stride_ps, stride_pm,
                    stride_pn)
    if EXT_M > 0:
        _store_weighted(acc_e, partial_ptr, topk_weights_ptr, slot_e, row_ok_e, cols, col_ok, pid_s, stride_ps,
                        stride_pm, stride_pn)


@triton.jit
def _store_weighted(acc, partial_ptr, topk_weights_ptr, slot, row_ok, cols, col_ok, pid_s, stride_ps, stride_pm,
                    stride_pn):
    """A down tile's rows scaled by their routing weights, stored to their slots' rows of split `pid_s`."""
    route_w = tl.load(topk_weights_ptr + slot, mask=row_ok, other=0.0)
    acc = acc * route_w[:, None]
    p_ptrs = partial_ptr + pid_s * stride_ps + slot[:, None].to(tl.int64) * stride_pm + cols[None, :] * stride_pn
    tl.store(p_ptrs, acc.to(partial_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(
    a_ptr, w_ptr, partial_ptr, topk_weights_ptr,
    sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
    H, F, num_routed, k_per_split, num_pid_m,
    stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_ps, stride_pm, stride_pn,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ORDER_BLOCKS: tl.constexpr,
):
    num_pid_n = tl.cdiv(H, BLOCK_N)
    pid_m, pid_n = tile_of(tl.program_id(0), expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
    pid_s = tl.program_id(1)
    row0, height = block_extent(block_rows_ptr, num_post_ptr, pid_m, BLOCK_M, TAIL_M)
    if height == BLOCK_M:
        _down_tile(a_ptr, w_ptr, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
                   pid_s, H, F, num_routed, k_per_split,
                   stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_ps, stride_pm, stride_pn,
                   EVEN_K, PRECISION, BLOCK_M, 0, BLOCK_N, BLOCK_K)
    if TAIL_M < BLOCK_M:
        if height == TAIL_M:  # a tail block: the same tile code at TAIL_M rows
            _down_tile(a_ptr, w_ptr, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0,
                       pid_n, pid_s, H, F, num_routed, k_per_split,
                       stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_ps, stride_pm, stride_pn,
                       EVEN_K, PRECISION, TAIL_M, 0, BLOCK_N, BLOCK_K)
    if TAIL_M > BLOCK_M:
        if height == TAIL_M:  # an extended block: BLOCK_M + (TAIL_M - BLOCK_M) rows against one weight stream
            _down_tile(a_ptr, w_ptr, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0,
                       pid_n, pid_s, H, F, num_routed, k_per_split,
                       stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_ps, stride_pm, stride_pn,
                       EVEN_K, PRECISION, BLOCK_M, TAIL_M - BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _down_desc_tile(
    a_desc, w_desc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n, pid_s,
    H, F, num_routed, k_per_split, stride_ps, stride_pm, stride_pn,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`_down_tile` from descriptor boxes; `a_desc`'s box is [BLOCK_M, BLOCK_K]."""
    expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M)
    n0 = pid_n * BLOCK_N
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, F)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        a = a_desc.load([row0, k0])
        w = tl.reshape(w_desc.load([expert.to(tl.int32), n0, k0]), (BLOCK_N, BLOCK_K))
        acc = tl.dot(a, w.T, acc, input_precision=PRECISION)
    cols = n0 + tl.arange(0, BLOCK_N)
    route_w = tl.load(topk_weights_ptr + slot, mask=row_ok, other=0.0)
    acc = acc * route_w[:, None]
    p_ptrs = partial_ptr + pid_s * stride_ps + slot[:, None].to(tl.int64) * stride_pm + cols[None, :] * stride_pn
    tl.store(p_ptrs, acc.to(partial_ptr.dtype.element_ty), mask=row_ok[:, None] & (cols < H)[None, :])


@triton.jit
def _down_desc_ext_tile(
    a_desc, a_ext_desc, w_desc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
    pid_s, H, F, num_routed, k_per_split, stride_ps, stride_pm, stride_pn,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`_down_desc_tile` of an extended block: a BLOCK_M-row and an EXT_M-row box of act against each weight box."""
    expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M)
    rows_e, slot_e, row_ok_e = block_rows_slots(sorted_ids_ptr, row0 + BLOCK_M, num_routed, EXT_M)
    n0 = pid_n * BLOCK_N
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, F)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_e = tl.zeros((EXT_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        a = a_desc.load([row0, k0])
        a_e = a_ext_desc.load([row0 + BLOCK_M, k0])
        w = tl.reshape(w_desc.load([expert.to(tl.int32), n0, k0]), (BLOCK_N, BLOCK_K))
        acc = tl.dot(a, w.T, acc, input_precision=PRECISION)
        acc_e = tl.dot(a_e, w.T, acc_e, input_precision=PRECISION)
    cols = n0 + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    _store_weighted(acc, partial_ptr, topk_weights_ptr, slot, row_ok, cols, col_ok, pid_s, stride_ps, stride_pm,
                    stride_pn)
    _store_weighted(acc_e, partial_ptr, topk_weights_ptr, slot_e, row_ok_e, cols, col_ok, pid_s, stride_ps, stride_pm,
                    stride_pn)


@triton.jit
def _down_desc_kernel(
    a_desc, a_tail_desc, w_desc, partial_ptr, topk_weights_ptr,
    sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
    H, F, num_routed, k_per_split, num_pid_m, stride_ps, stride_pm, stride_pn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ORDER_BLOCKS: tl.constexpr,
):
    """`_down_kernel` with both operands as descriptor boxes: act `[max_padded, F]` (BLOCK_M-row boxes, TAIL_M-row
    boxes for tail blocks) and the weights `[E, H, F]` in `[1, BLOCK_N, BLOCK_K]` boxes. Boxes past F or H read
    zeros; splits start at multiples of BLOCK_K."""
    num_pid_n = tl.cdiv(H, BLOCK_N)
    pid_m, pid_n = tile_of(tl.program_id(0), expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
    pid_s = tl.program_id(1)
    row0, height = block_extent(block_rows_ptr, num_post_ptr, pid_m, BLOCK_M, TAIL_M)
    if height == BLOCK_M:
        _down_desc_tile(a_desc, w_desc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0,
                        pid_n, pid_s, H, F, num_routed, k_per_split, stride_ps, stride_pm, stride_pn,
                        PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if TAIL_M < BLOCK_M:
        if height == TAIL_M:
            _down_desc_tile(a_tail_desc, w_desc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m,
                            row0, pid_n, pid_s, H, F, num_routed, k_per_split, stride_ps, stride_pm, stride_pn,
                            PRECISION, TAIL_M, BLOCK_N, BLOCK_K)
    if TAIL_M > BLOCK_M:
        if height == TAIL_M:  # an extended block; `a_tail_desc` boxes its TAIL_M - BLOCK_M extra rows
            _down_desc_ext_tile(a_desc, a_tail_desc, w_desc, partial_ptr, topk_weights_ptr, sorted_ids_ptr,
                                expert_ids_ptr, pid_m, row0, pid_n, pid_s, H, F, num_routed, k_per_split,
                                stride_ps, stride_pm, stride_pn, PRECISION, BLOCK_M, TAIL_M - BLOCK_M, BLOCK_N, BLOCK_K)


def uses_descriptors(cfg: dict, act: torch.Tensor, w_down: torch.Tensor) -> bool:
    """The config asks for descriptors and the tensors allow them (see `gate_up.uses_descriptors`)."""
    return (wants_descriptors(cfg, w_down.shape[2], act.element_size()) and w_down.is_contiguous()
            and descriptor_ok(w_down) and descriptor_ok(act) and act.dtype == w_down.dtype)


@triton.jit
def _combine_kernel(
    partial_ptr, y_ptr, T, H, stride_ps, stride_pm, stride_yt,
    split_k, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (tokens[:, None] < T) & (cols[None, :] < H)
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for s in range(split_k):
        for k in tl.static_range(TOP_K):
            rows = (tokens * TOP_K + k).to(tl.int64)
            acc += tl.load(partial_ptr + s * stride_ps + rows[:, None] * stride_pm + cols[None, :], mask=mask,
                           other=0.0).to(tl.float32)
    tl.store(y_ptr + tokens[:, None].to(tl.int64) * stride_yt + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


def down(act: torch.Tensor, w_down: torch.Tensor, align: Alignment, topk_weights: torch.Tensor,
         cfg: dict) -> torch.Tensor:
    """Returns `partial [SPLIT_K, T*K, H]`: each routed slot's weighted expert output."""
    E, H, F = w_down.shape
    split_k = max(1, int(cfg.get("SPLIT_K", 1)))
    bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    k_per_split = cdiv(cdiv(F, split_k), bk) * bk
    split_k = cdiv(F, k_per_split)
    # One split: each slot's row is final, so it is stored in the input dtype (half the bytes to write and
    # for the combine to read); several splits are summed later, so they keep fp32.
    partial_dtype = act.dtype if split_k == 1 else torch.float32
    partial = empty((split_k, align.num_routed, H), partial_dtype, act.device)
    num_pid_m = align.max_blocks
    grid = (num_pid_m * cdiv(H, bn), split_k)
    if uses_descriptors(cfg, act, w_down):
        a_desc = descriptor(act, [bm, bk])
        launch(_down_desc_kernel, grid,
            a_desc, descriptor(act, [last_box_rows(align), bk]) if not align.uniform else a_desc,
            descriptor(w_down, [1, bn, bk]), partial,
            topk_weights.reshape(-1), align.sorted_ids, align.expert_ids, align.block_rows, align.num_post_padded,
            H, F, align.num_routed, k_per_split, num_pid_m, partial.stride(0), partial.stride(1), partial.stride(2),
            PRECISION=dot_precision(act.dtype), BLOCK_M=bm, TAIL_M=align.tail_m, BLOCK_N=bn, BLOCK_K=bk,
            GROUP_M=cfg.get("GROUP_M", 1), ORDER_BLOCKS=order_blocks(cfg, align),
            num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
        )
        return partial
    launch(_down_kernel, grid,
        act, w_down, partial, topk_weights.reshape(-1),
        align.sorted_ids, align.expert_ids, align.block_rows, align.num_post_padded,
        H, F, align.num_routed, k_per_split, num_pid_m,
        act.stride(0), act.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2),
        partial.stride(0), partial.stride(1), partial.stride(2),
        EVEN_K=(F % k_per_split == 0 and k_per_split % bk == 0), PRECISION=dot_precision(act.dtype),
        BLOCK_M=bm, TAIL_M=align.tail_m, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
        ORDER_BLOCKS=order_blocks(cfg, align),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return partial


@triton.jit
def _down_combine_kernel(
    act_ptr, w_ptr, y_ptr, topk_weights_ptr, topk_ids_ptr, slot_rows_ptr,
    H, F, stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_yt,
    TOP_K: tl.constexpr, BLOCK_KK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
):
    """y[t, cols] for token t = program_id(0) and a block of H columns (program_id(1)): all TOP_K choices at once, each a
    [BLOCK_N, F] slice of its expert's down weights times the choice's act row (found through `slot_rows`), on the
    FMA units; weighted and summed over the choices in registers (a fixed reduction order: deterministic)."""
    t = tl.program_id(0).to(tl.int64)  # tokens on the grid's first axis (up to 2^31 - 1 of them)
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
    # The weights stream one step ahead (the next tile's loads are issued before this step's multiply-adds wait
    # for theirs): non-dot loads get no software pipeline, and one tile in flight per program left the HBM idle.
    f_ok = fs < F
    w_next = tl.load(w_ptrs, mask=w_mask & f_ok[None, None, :], other=0.0)
    for f0 in range(0, F, BLOCK_K):
        w = w_next
        if EVEN_K:
            a = tl.load(a_ptrs, mask=k_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=k_ok[:, None] & (fs < F - f0)[None, :], other=0.0)
        w_ptrs += BLOCK_K * stride_wf
        w_next = tl.load(w_ptrs, mask=w_mask & (fs < F - f0 - BLOCK_K)[None, None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a.to(tl.float32)[:, None, :], axis=2)
        a_ptrs += BLOCK_K * stride_af
    out = tl.sum(acc * route_w[:, None], axis=0)
    tl.store(y_ptr + t * stride_yt + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok)


def down_combine(act: torch.Tensor, w_down: torch.Tensor, align: Alignment, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor, cfg: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """The down projection and the combine in one kernel, for few tokens: returns `y [T, H]` in `act`'s dtype.

    At decode sizes `down` + `combine` are two launches, the second one waiting for the first's last wave
    and each slot's row written and read back. Here a program owns (a block of BLOCK_N columns of H, a token) and
    computes all K of the token's choices from the weights: no partial rows, no second launch. Its work is
    K * BLOCK_N * F multiply-adds per token on the FMA units, so it pays only while T is small (the tuner
    chooses it: the down config's `COMBINE` flag). `topk_ids [T, K]` are the token's experts (int32)."""
    E, H, F = w_down.shape
    T, K = topk_ids.shape
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    y = out if out is not None else empty((T, H), act.dtype, act.device)
    launch(_down_combine_kernel, (T, cdiv(H, bn)),
        act, w_down, y, topk_weights.reshape(-1), topk_ids.reshape(-1), align.slot_rows,
        H, F, act.stride(0), act.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2), y.stride(0),
        TOP_K=K, BLOCK_KK=next_power_of_2(K), BLOCK_N=bn, BLOCK_K=bk, EVEN_K=(F % bk == 0),
        num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2),
    )
    return y


def combine(partial: torch.Tensor, num_tokens: int, top_k: int, out_dtype: torch.dtype,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """y[t] = sum over splits s and choices k of partial[s, t*K + k], in that fixed order."""
    split_k, _, H = partial.shape
    y = out if out is not None else empty((num_tokens, H), out_dtype, partial.device)
    # Enough programs to fill the GPU even for one token with many partial rows to sum.
    block_h = max(128, min(1024, next_power_of_2(max(1, num_tokens * H // 512))))
    block_h = min(block_h, next_power_of_2(H))
    block_t = max(1, min(8, 4096 // block_h, next_power_of_2(max(1, num_tokens // 64))))
    grid = (cdiv(num_tokens, block_t), cdiv(H, block_h))
    launch(_combine_kernel, grid,
        partial, y, num_tokens, H, partial.stride(0), partial.stride(1), y.stride(0), split_k,
        TOP_K=top_k, BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4,
    )
    return y
