"""Routing: router logits, softmax in fp32, top-k and optional renormalisation.

`route(x, router_weight, top_k)` returns `(topk_weights [T, K] fp32, topk_ids [T, K] int32)`. Mostly one kernel
whose programs each route a block of tokens and read the whole router. Where that gives few programs a large
router (`route_split`: deepseek-v3's 3.7 MB router at up to 256 tokens, one program per 16 tokens each
streaming all of it), the router is read by many programs instead: partial logits over slices of H and blocks of
experts (`_router_partials_kernel`), then a selection launch that sums them in a fixed order (deterministic)
and picks the top k (`_select_partials_kernel`).
Ties are broken towards the lower expert index. A token whose logits hold NaN still gets K
distinct, valid expert ids (so no kernel downstream reads out of bounds) and NaN weights, so its
output row is NaN and no other row is touched.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._host import cdiv, next_power_of_2
from ._launch import empty, launch


@triton.jit
def router_logits(
    x_ptr, wr_ptr, rows, cols, T, E, h_start, h_end,
    stride_xt, stride_xh, stride_re, stride_rh,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """fp32 logits `x[rows, h_start:h_end] @ Wr[cols, h_start:h_end]^T` as a [BLOCK_T, BLOCK_E] tile."""
    row_ok = rows < T
    col_ok = cols < E
    logits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for h0 in range(h_start, h_end, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < h_end
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xt + hs[None, :] * stride_xh,
                    mask=row_ok[:, None] & h_ok[None, :], other=0.0)
        w = tl.load(wr_ptr + cols[None, :] * stride_re + hs[:, None] * stride_rh,
                    mask=col_ok[None, :] & h_ok[:, None], other=0.0)
        logits = tl.dot(x, w, logits, input_precision="ieee")
    return logits


@triton.jit
def topk_softmax(
    logits, rows, T, E,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Softmax in fp32, top-k (ties to the lower id), optional renormalisation of the [BLOCK_T, BLOCK_E]
    logits of tokens `rows` over all E experts. Returns (weights, ids) as [BLOCK_T, BLOCK_K] tiles (column k
    is choice k; columns >= TOP_K are 0)."""
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < E
    logits = tl.where(col_ok[None, :], logits, float("-inf"))
    m = tl.max(logits, axis=1)
    p = tl.exp(logits - m[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    # One max-reduction per choice: the key packs the probability's bits (non-negative floats order as their
    # bit patterns) above the reversed column, so the largest key is the largest probability with ties to the
    # lower id. NaN (a NaN row is NaN throughout) keys as probability 0, so such a row still picks K valid,
    # distinct experts (the lowest ids) and carries its NaN weights. Columns >= E and chosen ones key as -1.
    bits = tl.where(p == p, p, 0.0).to(tl.int32, bitcast=True).to(tl.int64)
    key = tl.where(col_ok[None, :], (bits << 32) | (BLOCK_E - 1 - cols)[None, :].to(tl.int64), -1)
    kcols = tl.arange(0, BLOCK_K)
    out_w = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    out_i = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    w_sum = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for k in tl.static_range(TOP_K):
        best = tl.max(key, axis=1)
        idx = (BLOCK_E - 1 - (best & 0xFFFFFFFF)).to(tl.int32)
        hit = cols[None, :] == idx[:, None]
        w = tl.sum(tl.where(hit, p, 0.0), axis=1)
        key = tl.where(hit, -1, key)
        w_sum += w
        out_w = tl.where(kcols[None, :] == k, w[:, None], out_w)
        out_i = tl.where(kcols[None, :] == k, idx[:, None], out_i)
    if RENORMALIZE:
        out_w = out_w / w_sum[:, None]
    return out_w, out_i


@triton.jit
def select_experts(
    logits, weights_ptr, ids_ptr, rows, T, E,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """`topk_softmax` of the logits of tokens `rows`; stores their weights and ids (slot t*TOP_K + k)."""
    out_w, out_i = topk_softmax(logits, rows, T, E, TOP_K, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K)
    kcols = tl.arange(0, BLOCK_K)
    offs = rows[:, None] * TOP_K + kcols[None, :]
    mask = (rows < T)[:, None] & (kcols[None, :] < TOP_K)
    tl.store(weights_ptr + offs, out_w, mask=mask)
    tl.store(ids_ptr + offs, out_i, mask=mask)


@triton.jit
def route_tokens(
    x_ptr, wr_ptr, weights_ptr, ids_ptr, t0,
    T, H, E,
    stride_xt, stride_xh, stride_re, stride_rh,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Routes tokens t0 .. t0+BLOCK_T-1 and stores their weights and ids (slot t*TOP_K + k)."""
    rows = t0 + tl.arange(0, BLOCK_T)
    logits = router_logits(x_ptr, wr_ptr, rows, tl.arange(0, BLOCK_E), T, E, 0, H,
                           stride_xt, stride_xh, stride_re, stride_rh, BLOCK_T, BLOCK_H, BLOCK_E)
    select_experts(logits, weights_ptr, ids_ptr, rows, T, E, TOP_K, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K)


@triton.jit
def _routing_kernel(
    x_ptr, wr_ptr, weights_ptr, ids_ptr,
    T, H, E,
    stride_xt, stride_xh, stride_re, stride_rh,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    route_tokens(x_ptr, wr_ptr, weights_ptr, ids_ptr, tl.program_id(0) * BLOCK_T, T, H, E,
                 stride_xt, stride_xh, stride_re, stride_rh,
                 TOP_K, RENORMALIZE, BLOCK_T, BLOCK_H, BLOCK_E, BLOCK_K)


@triton.jit
def _router_partials_kernel(
    x_ptr, wr_ptr, partial_ptr, T, H, E,
    stride_xt, stride_xh, stride_re, stride_rh,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, SPLIT_H: tl.constexpr,
):
    """Partial logits over H columns [s*SPLIT_H, (s+1)*SPLIT_H) for a block of experts: partial[s, t, e]."""
    cols = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    s = tl.program_id(1)
    h_start = s * SPLIT_H
    h_end = tl.minimum(h_start + SPLIT_H, H)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        logits = router_logits(x_ptr, wr_ptr, rows, cols, T, E, h_start, h_end,
                               stride_xt, stride_xh, stride_re, stride_rh, BLOCK_T, BLOCK_H, BLOCK_E)
        offs = (s * T + rows[:, None]).to(tl.int64) * E + cols[None, :]
        tl.store(partial_ptr + offs, logits, mask=(rows[:, None] < T) & (cols[None, :] < E))


@triton.jit
def sum_split_logits(partial_ptr, rows, T, E, num_splits,
                     BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_S: tl.constexpr):
    """The logits of tokens `rows` as the sum of their `num_splits` partial logits, split 0 first, BLOCK_S splits
    a load (one [BLOCK_S, BLOCK_T, BLOCK_E] tile, summed over its first axis): a fixed order for a given
    BLOCK_S."""
    cols = tl.arange(0, BLOCK_E)
    splits = tl.arange(0, BLOCK_S)
    logits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        s = s0 + splits
        mask = (s[:, None, None] < num_splits) & (rows[None, :, None] < T) & (cols[None, None, :] < E)
        offs = (s[:, None, None] * T + rows[None, :, None]).to(tl.int64) * E + cols[None, None, :]
        logits += tl.sum(tl.load(partial_ptr + offs, mask=mask, other=0.0), axis=0)
    return logits


@triton.jit
def _select_partials_kernel(
    partial_ptr, weights_ptr, ids_ptr, T, E, num_splits,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Sums the split logits of BLOCK_T tokens (`sum_split_logits`) and stores their top-k weights and ids."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    logits = sum_split_logits(partial_ptr, rows, T, E, num_splits, BLOCK_T, BLOCK_E, BLOCK_S)
    select_experts(logits, weights_ptr, ids_ptr, rows, T, E, TOP_K, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K)


PARTIALS_BLOCK_T = 16  # tokens a partial-logits program takes at a time (each step re-reads its router slice)


def router_partials(x: torch.Tensor, router_weight: torch.Tensor, split_h: int, block_e: int) -> torch.Tensor:
    """`partial [cdiv(H, split_h), T, E]` fp32: each slice of H's logits, `block_e` experts a program."""
    T, H = x.shape
    E = router_weight.shape[0]
    splits = cdiv(H, split_h)
    partial = empty((splits, T, E), torch.float32, x.device)
    launch(_router_partials_kernel, (cdiv(E, block_e), splits),
        x, router_weight, partial, T, H, E,
        x.stride(0), x.stride(1), router_weight.stride(0), router_weight.stride(1),
        BLOCK_T=PARTIALS_BLOCK_T, BLOCK_H=min(128, split_h), BLOCK_E=block_e, SPLIT_H=split_h, num_warps=4,
    )
    return partial


# The split routing (`route_split`): H columns and experts a partial-logits program reads (256 and 16, as the decode
# routing's), and the elements of the [BLOCK_S, BLOCK_T, BLOCK_E] tile of partial logits a selection program sums at
# once. It is taken where the one-kernel routing would run at most ROUTE_SPLIT_MAX_PROGRAMS programs, each reading a
# router of at least ROUTE_SPLIT_MIN_BYTES. `routing_lab.py`, session 10 run 9 (H100, graph replays): deepseek-v3's
# 3.7 MB router 65-68 us one-kernel at 16-2048 tokens; split 12.2 / 14.9 / 18.6 / 26.5 / 42.4 us at 16 / 32 / 64 /
# 128 / 256 tokens, 74.5 at 512 (its programs loop over the tokens, each expert block re-reading x). On routers of
# 0.1-0.5 MB (qwen3-30b-a3b, qwen2-moe-57b, olmoe-1b-7b, mixtral-8x7b) the one kernel took 11-17 us and the split
# 16-34 us at 32-128 tokens.
ROUTE_SPLIT_H = 256
ROUTE_SPLIT_BLOCK_E = 16
SELECT_TILE = 8192
ROUTE_SPLIT_MAX_PROGRAMS = 16
ROUTE_SPLIT_MIN_BYTES = 1 << 20


def route_split(T: int, H: int, E: int, elem_bytes: int = 2) -> bool:
    """Whether `route` reads the router through many programs (partial logits, then a selection launch)."""
    return cdiv(T, route_block_t(T)) <= ROUTE_SPLIT_MAX_PROGRAMS and E * H * elem_bytes >= ROUTE_SPLIT_MIN_BYTES


def select_meta(splits: int, E: int, top_k: int, renormalize: bool) -> dict:
    """Constexprs of `_select_partials_kernel`: all splits in one tile where SELECT_TILE allows, with as many tokens
    as then fit (1 to 16), else 16 tokens and the splits in tiles of SELECT_TILE elements."""
    block_e = max(16, next_power_of_2(E))
    block_s = next_power_of_2(splits)
    block_t = min(16, SELECT_TILE // (block_s * block_e))
    if block_t < 1:
        block_t = min(16, max(1, SELECT_TILE // block_e))
        block_s = max(1, SELECT_TILE // (block_t * block_e))
    return dict(TOP_K=top_k, RENORMALIZE=renormalize, BLOCK_T=block_t, BLOCK_E=block_e,
                BLOCK_K=next_power_of_2(top_k), BLOCK_S=block_s)


# Tokens per routing program: 16, and 32 from LARGE_T tokens on. Every program reads the whole router, and at 8192
# tokens 32-token programs (256 of them) took qwen3-30b-a3b 39.8 -> 29.4 us, deepseek-v3 172.7 -> 129.0 and
# mixtral-8x7b 38.0 -> 29.4; at 2048-4096 tokens the fewer programs are as fast or slower (olmoe-1b-7b T=2048
# 13.3 -> 15.3 us). `experiments/bench/routing_lab.py`, session 9 run 6, H100; eight warps lost everywhere.
BLOCK_T_LARGE_T = 8192


def route_block_t(T: int) -> int:
    """Tokens each program of `_routing_kernel` routes, for T tokens."""
    return 32 if T >= BLOCK_T_LARGE_T else 16


def route(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, renormalize: bool = True,
          block_t: int | None = None, split: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k softmax routing (`block_t` tokens a program, by default `route_block_t`; through split partial logits
    where `split`, by default `route_split`). Inputs are assumed checked (see `tritonmoe.api.moe`)."""
    T, H = x.shape
    block_t = block_t or route_block_t(T)
    E = router_weight.shape[0]
    weights = empty((T, top_k), torch.float32, x.device)
    ids = empty((T, top_k), torch.int32, x.device)
    if T == 0:
        return weights, ids
    if split is None:
        split = route_split(T, H, E, router_weight.element_size())
    if split:
        partial = router_partials(x, router_weight, ROUTE_SPLIT_H, ROUTE_SPLIT_BLOCK_E)
        meta = select_meta(partial.shape[0], E, top_k, renormalize)
        launch(_select_partials_kernel, (cdiv(T, meta["BLOCK_T"]),),
            partial, weights, ids, T, E, partial.shape[0], **meta, num_warps=4)
        return weights, ids
    launch(_routing_kernel, (cdiv(T, block_t),),
        x, router_weight, weights, ids, T, H, E,
        x.stride(0), x.stride(1), router_weight.stride(0), router_weight.stride(1),
        **routing_meta(H, E, top_k, renormalize, block_t), num_warps=4,
    )
    return weights, ids


@functools.lru_cache(maxsize=1024)
def routing_meta(H: int, E: int, top_k: int, renormalize: bool, block_t: int) -> dict:
    """Constexprs of `route_tokens`: the [BLOCK_H, BLOCK_E] router tile stays within 16K elements."""
    block_e = max(16, next_power_of_2(E))
    block_h = max(16, min(512, 16384 // block_e, next_power_of_2(H)))
    return dict(TOP_K=top_k, RENORMALIZE=renormalize, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_E=block_e,
                BLOCK_K=next_power_of_2(top_k))
