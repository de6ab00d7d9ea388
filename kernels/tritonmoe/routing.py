"""Routing: router logits, softmax in fp32, top-k and optional renormalisation, in one kernel.

`route(x, router_weight, top_k)` returns `(topk_weights [T, K] fp32, topk_ids [T, K] int32)`.
Ties are broken towards the lower expert index. A token whose logits hold NaN still gets K
distinct, valid expert ids (so no kernel downstream reads out of bounds) and NaN weights, so its
output row is NaN and no other row is touched.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


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


# Tokens per routing program: 16, and 32 from LARGE_T tokens on. Every program reads the whole router, and at 8192
# tokens 32-token programs (256 of them) took qwen3-30b-a3b 39.8 -> 29.4 us, deepseek-v3 172.7 -> 129.0 and
# mixtral-8x7b 38.0 -> 29.4; at 2048-4096 tokens the fewer programs are as fast or slower (olmoe-1b-7b T=2048
# 13.3 -> 15.3 us). `experiments/bench/routing_lab.py`, session 9 run 6, H100; eight warps lost everywhere.
BLOCK_T_LARGE_T = 8192


def route_block_t(T: int) -> int:
    """Tokens each program of `_routing_kernel` routes, for T tokens."""
    return 32 if T >= BLOCK_T_LARGE_T else 16


def route(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, renormalize: bool = True,
          block_t: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k softmax routing (`block_t` tokens a program, by default `route_block_t`). Inputs are assumed checked
    (see `tritonmoe.api.moe`)."""
    T, H = x.shape
    block_t = block_t or route_block_t(T)
    E = router_weight.shape[0]
    weights = torch.empty((T, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((T, top_k), dtype=torch.int32, device=x.device)
    if T == 0:
        return weights, ids
    _routing_kernel[(triton.cdiv(T, block_t),)](
        x, router_weight, weights, ids, T, H, E,
        x.stride(0), x.stride(1), router_weight.stride(0), router_weight.stride(1),
        **routing_meta(H, E, top_k, renormalize, block_t), num_warps=4,
    )
    return weights, ids


def routing_meta(H: int, E: int, top_k: int, renormalize: bool, block_t: int) -> dict:
    """Constexprs of `route_tokens`: the [BLOCK_H, BLOCK_E] router tile stays within 16K elements."""
    block_e = max(16, triton.next_power_of_2(E))
    block_h = max(16, min(512, 16384 // block_e, triton.next_power_of_2(H)))
    return dict(TOP_K=top_k, RENORMALIZE=renormalize, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_E=block_e,
                BLOCK_K=triton.next_power_of_2(top_k))
