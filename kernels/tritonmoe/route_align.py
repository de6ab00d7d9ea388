"""Routing and alignment in one program, for small token counts (decode).

At decode sizes the layer's cost is streaming the hit experts' weights; every extra launch before the
GEMMs is a few microseconds of idle GPU. Two launches: many programs read the router, each writing
partial logits over a slice of H; then one program sums them in a fixed order (deterministic), routes
all T tokens and aligns the T*K slots (instead of two to four launches, and instead of one SM reading
the whole router). It reuses the stage helpers of `routing` and `align`; `route_and_align` falls back
to the separate stages when the sizes do not fit one program.

At one token the second launch can go too (`prepare_selection`, the layer config's `SELECT_IN_GEMM`): the K chosen
experts are distinct, so the alignment is K blocks of one slot each, in expert order. Every program of the first
gate/up GEMM then sums the partial logits and picks the top k itself (`one_token_choices`), finds its block's
expert, and its program 0 stores the weights, ids and alignment tables (`write_one_token`) that the later launches
read: the same tables, bit for bit, as `route_and_align` writes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._host import cdiv, next_power_of_2
from ._launch import empty, launch
from .align import Alignment, align_meta, align_one_chunk, align_tokens, alloc_alignment
from .routing import route, router_partials, routing_meta, select_experts, sum_split_logits, topk_softmax

# Largest T routed by the single program (more tokens are better spread over many programs).
MAX_TOKENS = 32


# The router is read by many programs, not one: one SM streamed a 0.5 MB router in ~17 us (qwen3-30b-a3b,
# H100), longer than half that layer's floor. H columns each program reads, and its block of experts:
SPLIT_H = 256
SPLIT_BLOCK_E = 16
# Elements of the [BLOCK_S, BLOCK_T, BLOCK_E] tile of split logits the routing program sums at once; for one token
# (BLOCK_T = 1) up to _SPLIT_TILE_ONE: each tile is a load waited for in turn, and deepseek-v3's 28 splits of 256
# experts took four such waits at 2048 elements (session 15, `decode_route_lab.py --profile`).
_SPLIT_TILE = 2048
_SPLIT_TILE_ONE = 8192


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


def split_block(splits: int, block_t: int, block_e: int) -> int:
    """Splits of partial logits summed at once (`sum_split_logits`' BLOCK_S): all that fit a _SPLIT_TILE tile
    (_SPLIT_TILE_ONE for one token)."""
    tile = _SPLIT_TILE_ONE if block_t == 1 else _SPLIT_TILE
    return max(1, min(next_power_of_2(splits), tile // (block_t * block_e)))


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
    block_s = split_block(splits, block_t, rmeta["BLOCK_E"])
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


# --- one token: the selection inside the first gate/up GEMM ---------------------------------------

@triton.jit
def one_token_choices(partial_ptr, E, num_splits, TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
                      BLOCK_E: tl.constexpr, BLOCK_KK: tl.constexpr, BLOCK_S: tl.constexpr):
    """One token's top-k from its partial logits, as `_route_align_partials_kernel` computes it (the same sums in
    the same order, the same selection): ([BLOCK_KK] weights, [BLOCK_KK] ids, each choice's rank among the chosen
    ids). Choices >= TOP_K hold 0."""
    rows = tl.arange(0, 1)
    logits = sum_split_logits(partial_ptr, rows, 1, E, num_splits, 1, BLOCK_E, BLOCK_S)
    out_w, out_i = topk_softmax(logits, rows, 1, E, TOP_K, RENORMALIZE, 1, BLOCK_E, BLOCK_KK)
    w = tl.sum(out_w, axis=0)  # [1, BLOCK_KK] -> [BLOCK_KK]: one term each, exact
    ids = tl.sum(out_i, axis=0)
    kk = tl.arange(0, BLOCK_KK)
    smaller = (kk < TOP_K)[None, :] & (ids[None, :] < ids[:, None])
    return w, ids, tl.sum(smaller.to(tl.int32), axis=1)


@triton.jit
def write_one_token(w, ids, rank, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                    block_rows_ptr, num_post_ptr, expert_counts_ptr, E, max_blocks,
                    TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_KK: tl.constexpr, HEIGHT: tl.constexpr,
                    BLOCK_B: tl.constexpr):
    """The routing outputs and the alignment of one token's TOP_K slots as `align.align_one_chunk` lays them out:
    block rank(k) holds slot k then HEIGHT - 1 padding rows (the sentinel TOP_K), blocks in expert order, -1 and
    the used-row count past the used blocks."""
    kk = tl.arange(0, BLOCK_KK)
    valid = kk < TOP_K
    tl.store(weights_ptr + kk, w, mask=valid)
    tl.store(ids_ptr + kk, ids, mask=valid)
    r = tl.arange(0, HEIGHT)
    tl.store(sorted_ids_ptr + rank[:, None] * HEIGHT + r[None, :], tl.where(r[None, :] == 0, kk[:, None], TOP_K),
             mask=valid[:, None])
    tl.store(slot_rows_ptr + kk, rank * HEIGHT, mask=valid)
    b = tl.arange(0, BLOCK_B)
    owner = tl.sum(tl.where((rank[None, :] == b[:, None]) & valid[None, :], ids[None, :], 0), axis=1)
    tl.store(expert_ids_ptr + b, tl.where(b < TOP_K, owner, -1), mask=b < max_blocks)
    tl.store(block_rows_ptr + b, tl.minimum(b, TOP_K) * HEIGHT, mask=b <= max_blocks)
    tl.store(num_post_ptr, TOP_K * HEIGHT)
    e = tl.arange(0, BLOCK_E)
    tl.store(expert_counts_ptr + e, tl.sum(((ids[None, :] == e[:, None]) & valid[None, :]).to(tl.int32), axis=1),
             mask=e < E)


@dataclass(frozen=True)
class Selection:
    """A one-token routing left to the first gate/up GEMM (`gate_up.gate_up(..., select=...)`): the router's
    partial logits, and the tensors its program 0 fills (uninitialised until that launch)."""
    partial: torch.Tensor  # [splits, 1, E] fp32
    weights: torch.Tensor  # [1, K] fp32
    ids: torch.Tensor      # [1, K] int32
    align: Alignment
    renormalize: bool

    @property
    def meta(self) -> dict:
        return selection_meta(self.partial.shape[0], self.partial.shape[2], self.ids.shape[1], self.renormalize,
                              self.align.tail_m, self.align.max_blocks)


@functools.lru_cache(maxsize=1024)
def selection_meta(splits: int, E: int, top_k: int, renormalize: bool, height: int, max_blocks: int) -> dict:
    """Constexprs of `one_token_choices` and `write_one_token` (the summing tile as `route_and_align`'s at T=1)."""
    block_e = max(16, next_power_of_2(E))
    return dict(TOP_K=top_k, RENORMALIZE=renormalize, BLOCK_E=block_e, BLOCK_KK=next_power_of_2(top_k),
                BLOCK_S=split_block(splits, 1, block_e), HEIGHT=height, BLOCK_B=next_power_of_2(max_blocks + 1))


# Experts up to which a config without `SELECT_IN_GEMM` makes one token's choice inside the GEMM. Every program then
# runs the top-k over E columns; at E=256 (deepseek-v3) that cost more than the launch it saves (265 against 255 us a
# layer), at E <= 128 it saved 2.4-4.2 us (session 15, `tune.py --select-only`, H100).
SELECT_MAX_EXPERTS = 128


def select_default(E: int) -> bool:
    """`SELECT_IN_GEMM` where a config does not say."""
    return E <= SELECT_MAX_EXPERTS


def one_token_fits(top_k: int, E: int, block_m: int, tail_m: int | None) -> bool:
    """One token's slots fit the one-program alignment (`route_and_align` takes its two-launch path)."""
    return top_k <= align_meta(top_k, E, block_m, tail_m)["CHUNK"]


def prepare_selection(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, renormalize: bool,
                      block_m: int, tail_m: int | None = None) -> Selection:
    """For one token (`one_token_fits`): launches the router's partial logits and allocates what the first gate/up
    GEMM fills (weights, ids, the alignment's tables)."""
    weights = empty((1, top_k), torch.float32, x.device)
    ids = empty((1, top_k), torch.int32, x.device)
    a = alloc_alignment(top_k, router_weight.shape[0], block_m, x.device, tail_m)
    partial = router_partials(x, router_weight, SPLIT_H, SPLIT_BLOCK_E)
    return Selection(partial, weights, ids, a, renormalize)
