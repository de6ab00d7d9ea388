"""Routing and alignment in one program, for small token counts (decode).

At decode sizes the layer's cost is streaming the hit experts' weights; every extra launch before the
GEMMs is a few microseconds of idle GPU. Two launches: many programs read the router, each writing
partial logits over a slice of H; then one program sums them in a fixed order (deterministic), routes
all T tokens and aligns the T*K slots (instead of two to four launches, and instead of one SM reading
the whole router). It reuses the stage helpers of `routing` and `align`; `route_and_align` falls back
to the separate stages when the sizes do not fit one program.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._host import cdiv, next_power_of_2
from ._launch import empty, launch
from .align import Alignment, align_meta, align_one_chunk, align_tokens, alloc_alignment
from .routing import route, router_partials, routing_meta, select_experts, sum_split_logits

# Largest T routed by the single program (more tokens are better spread over many programs).
MAX_TOKENS = 32


# The router is read by many programs, not one: one SM streamed a 0.5 MB router in ~17 us (qwen3-30b-a3b,
# H100), longer than half that layer's floor. H columns each program reads, and its block of experts:
SPLIT_H = 256
SPLIT_BLOCK_E = 16
# Elements of the [BLOCK_S, BLOCK_T, BLOCK_E] tile of split logits the routing program sums at once.
_SPLIT_TILE = 2048


@triton.jit
def _route_align_partials_kernel(
    partial_ptr, weights_ptr, ids_ptr,
    sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr, expert_counts_ptr,
    T, E, num_splits, max_blocks,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, CHUNK: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """Sums the partial logits in a fixed order (deterministic), routes, then aligns, in one program.
    The splits are summed BLOCK_S at a time as one [BLOCK_S, BLOCK_T, BLOCK_E] tile (one split per load waited
    for each in turn); the selection runs on BLOCK_T tokens at once (its reductions are serial steps)."""
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        logits = sum_split_logits(partial_ptr, rows, T, E, num_splits, BLOCK_T, BLOCK_E, BLOCK_S)
        select_experts(logits, weights_ptr, ids_ptr, rows, T, E, TOP_K, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K)
    tl.debug_barrier()
    align_one_chunk(ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
                    expert_counts_ptr, T * TOP_K, E, max_blocks, BLOCK_M, TAIL_M, BLOCK_E, CHUNK, BLOCK_B)


def route_and_align(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, renormalize: bool,
                    block_m: int, tail_m: int | None = None,
                    split: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, Alignment]:
    """Returns (topk_weights [T, K] fp32, topk_ids [T, K] int32, alignment); `tail_m` as in `align_tokens`, `split`
    as in `routing.route` (where the sizes do not fit the one routing-and-alignment program)."""
    T, H = x.shape
    E = router_weight.shape[0]
    N = T * top_k
    meta = align_meta(N, E, block_m, tail_m)
    if T > MAX_TOKENS or N > meta["CHUNK"]:
        weights, ids = route(x, router_weight, top_k, renormalize, split=split)
        return weights, ids, align_tokens(ids, E, block_m, tail_m)
    weights = empty((T, top_k), torch.float32, x.device)
    ids = empty((T, top_k), torch.int32, x.device)
    a = alloc_alignment(N, E, block_m, x.device, tail_m)
    splits = cdiv(H, SPLIT_H)
    # Tokens selected at once: up to 16 (four times as many serial reductions at BLOCK_T = 4 cost olmoe T=16 30 us,
    # session 5 run 5); splits summed at once: as many as fit a _SPLIT_TILE tile.
    block_t = max(1, min(16, next_power_of_2(T)))
    rmeta = routing_meta(H, E, top_k, renormalize, block_t=block_t)
    block_s = max(1, min(next_power_of_2(splits), _SPLIT_TILE // (block_t * rmeta["BLOCK_E"])))
    partial = router_partials(x, router_weight, SPLIT_H, SPLIT_BLOCK_E)
    # Four warps: one warp (shuffle-only reductions) left every other block's padding rows unwritten at
    # E=64 on the H100 (Triton 3.6; session 5, run 3), so the program keeps the warps it was validated with.
    launch(_route_align_partials_kernel, (1,),
        partial, weights, ids, a.sorted_ids, a.slot_rows, a.expert_ids, a.block_rows, a.num_post_padded, a.expert_counts,
        T, E, splits, a.max_blocks,
        TOP_K=top_k, RENORMALIZE=renormalize, BLOCK_T=block_t, BLOCK_E=rmeta["BLOCK_E"], BLOCK_K=rmeta["BLOCK_K"],
        BLOCK_S=block_s, BLOCK_M=block_m, TAIL_M=meta["TAIL_M"], CHUNK=meta["CHUNK"], BLOCK_B=meta["BLOCK_B"],
        num_warps=4,
    )
    return weights, ids, a
