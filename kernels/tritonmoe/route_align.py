"""Routing and alignment in one program, for small token counts (decode).

At decode sizes the layer's cost is streaming the hit experts' weights; every extra launch before the
GEMMs is a few microseconds of idle GPU. This kernel routes all T tokens and aligns the T*K slots in a
single program (one launch instead of two to four). It reuses the stage helpers of `routing` and
`align`; `route_and_align` falls back to the separate stages when the sizes do not fit one program.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .align import Alignment, align_meta, align_one_chunk, align_tokens, alloc_alignment
from .routing import route, route_tokens, routing_meta

# Largest T routed by the single program (more tokens are better spread over many programs).
MAX_TOKENS = 32


@triton.jit
def _route_align_kernel(
    x_ptr, wr_ptr, weights_ptr, ids_ptr,
    sorted_ids_ptr, expert_ids_ptr, num_post_ptr, expert_counts_ptr,
    T, H, E, max_blocks,
    stride_xt, stride_xh, stride_re, stride_rh,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, CHUNK: tl.constexpr, BLOCK_B: tl.constexpr,
):
    for t0 in range(0, T, BLOCK_T):
        route_tokens(x_ptr, wr_ptr, weights_ptr, ids_ptr, t0, T, H, E,
                     stride_xt, stride_xh, stride_re, stride_rh,
                     TOP_K, RENORMALIZE, BLOCK_T, BLOCK_H, BLOCK_E, BLOCK_K)
    # The ids just stored are read back by other threads of this program.
    tl.debug_barrier()
    align_one_chunk(ids_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr, expert_counts_ptr,
                    T * TOP_K, E, max_blocks, BLOCK_M, BLOCK_E, CHUNK, BLOCK_B)


def route_and_align(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, renormalize: bool,
                    block_m: int) -> tuple[torch.Tensor, torch.Tensor, Alignment]:
    """Returns (topk_weights [T, K] fp32, topk_ids [T, K] int32, alignment)."""
    T, H = x.shape
    E = router_weight.shape[0]
    N = T * top_k
    meta = align_meta(N, E, block_m)
    if T > MAX_TOKENS or N > meta["CHUNK"]:
        weights, ids = route(x, router_weight, top_k, renormalize)
        return weights, ids, align_tokens(ids, E, block_m)
    weights = torch.empty((T, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((T, top_k), dtype=torch.int32, device=x.device)
    a = alloc_alignment(N, E, block_m, x.device)
    rmeta = routing_meta(H, E, top_k, renormalize, block_t=16)
    _route_align_kernel[(1,)](
        x, router_weight, weights, ids,
        a.sorted_ids, a.expert_ids, a.num_post_padded, a.expert_counts,
        T, H, E, a.max_blocks,
        x.stride(0), x.stride(1), router_weight.stride(0), router_weight.stride(1),
        **rmeta, BLOCK_M=block_m, CHUNK=meta["CHUNK"], BLOCK_B=meta["BLOCK_B"], num_warps=4,
    )
    return weights, ids, a
