"""Alignment of routed tokens to experts, on the device, with no host synchronisation.

What vLLM's `moe_align_block_size` does, in Triton. The T*K routed slots (slot i = token i // K,
choice i % K) are grouped by expert; each expert's group is padded to a multiple of BLOCK_M so
that every BLOCK_M rows of the grouped GEMMs belong to one expert.

Outputs (`Alignment`):
- `sorted_ids [max_padded]`: slot ids grouped by expert, in ascending slot order within an
  expert (stable, so the result is deterministic); padding holds the sentinel T*K.
- `expert_ids [max_blocks]`: the expert of each BLOCK_M block; -1 past the last used block.
- `num_post_padded [1]`: the number of used rows (a multiple of BLOCK_M), read by the GEMMs on
  the device so that their grids can be sized on the host without knowing it.
- `expert_counts [E]`: slots routed to each expert.

Sizes are static: sum_e ceil(c_e / BM) <= floor(N / BM) + min(E, N) blocks, so the host never
waits for the counts. Slot ids outside [0, E) are ignored (the public API checks them first).

Three kernels: per-chunk histograms, one program that turns them into offsets (and writes the
block-to-expert map and the padding), and a stable scatter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Elements of the [CHUNK, BLOCK_E] one-hot tiles the kernels hold in registers.
_TILE_ELEMS = 16384


@triton.jit
def _count_kernel(ids_ptr, chunk_counts_ptr, N, E, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + offs, mask=offs < N, other=-1)
    experts = tl.arange(0, BLOCK_E)
    onehot = ((ids[:, None] == experts[None, :]) & (experts[None, :] < E)).to(tl.int32)
    tl.store(chunk_counts_ptr + c * BLOCK_E + experts, tl.sum(onehot, axis=0))


@triton.jit
def _offsets_kernel(
    chunk_counts_ptr, chunk_base_ptr, expert_ids_ptr, sorted_ids_ptr, num_post_ptr, expert_counts_ptr,
    N, E, num_chunks, max_blocks,
    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, ROWS: tl.constexpr, BLOCK_B: tl.constexpr,
):
    experts = tl.arange(0, BLOCK_E)
    totals = tl.zeros((BLOCK_E,), dtype=tl.int32)
    for c0 in range(0, num_chunks, ROWS):
        r = c0 + tl.arange(0, ROWS)
        blk = tl.load(chunk_counts_ptr + r[:, None] * BLOCK_E + experts[None, :],
                      mask=r[:, None] < num_chunks, other=0)
        totals += tl.sum(blk, axis=0)
    starts, ends, total = expert_ranges(totals, num_post_ptr, expert_counts_ptr, E, BLOCK_M, BLOCK_E)
    # Per chunk and expert: where the chunk's first slot of that expert goes.
    running = starts
    for c0 in range(0, num_chunks, ROWS):
        r = c0 + tl.arange(0, ROWS)
        blk = tl.load(chunk_counts_ptr + r[:, None] * BLOCK_E + experts[None, :],
                      mask=r[:, None] < num_chunks, other=0)
        base = running[None, :] + tl.cumsum(blk, axis=0) - blk
        tl.store(chunk_base_ptr + r[:, None] * BLOCK_E + experts[None, :], base, mask=r[:, None] < num_chunks)
        running += tl.sum(blk, axis=0)
    write_blocks(expert_ids_ptr, sorted_ids_ptr, starts, ends, totals, total, N, max_blocks,
                 BLOCK_M, BLOCK_E, BLOCK_B)


@triton.jit
def expert_ranges(totals, num_post_ptr, expert_counts_ptr, E, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """Each expert's padded range [start, end) of aligned rows, from its slot count; stores the counts
    and the number of used rows. Returns (starts, ends, total)."""
    experts = tl.arange(0, BLOCK_E)
    padded = (totals + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    tl.store(num_post_ptr, tl.sum(padded, axis=0))
    tl.store(expert_counts_ptr + experts, totals, mask=experts < E)
    return ends - padded, ends, tl.sum(padded, axis=0)


@triton.jit
def write_blocks(expert_ids_ptr, sorted_ids_ptr, starts, ends, totals, total, N, max_blocks,
                 BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    """Writes the expert of each block (-1 past `total`) and the sentinel N in every padding row."""
    experts = tl.arange(0, BLOCK_E)
    rows_in_block = tl.arange(0, BLOCK_M)
    for b0 in range(0, max_blocks, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        pos = b * BLOCK_M
        # The owner of a used block is the first expert whose padded range ends after it.
        owner = tl.sum((ends[None, :] <= pos[:, None]).to(tl.int32), axis=1)
        used = pos < total
        tl.store(expert_ids_ptr + b, tl.where(used, owner, -1), mask=b < max_blocks)
        is_owner = experts[None, :] == owner[:, None]
        own_start = tl.sum(tl.where(is_owner, starts[None, :], 0), axis=1)
        own_count = tl.sum(tl.where(is_owner, totals[None, :], 0), axis=1)
        p = pos[:, None] + rows_in_block[None, :]
        is_pad = (p - own_start[:, None]) >= own_count[:, None]
        tl.store(sorted_ids_ptr + p, tl.full(p.shape, 0, tl.int32) + N, mask=is_pad & used[:, None])


@triton.jit
def align_one_chunk(ids_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr, expert_counts_ptr,
                    N, E, max_blocks,
                    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr, BLOCK_B: tl.constexpr):
    """The whole alignment in one program when all N <= CHUNK slots fit one tile."""
    offs = tl.arange(0, CHUNK)
    ok = offs < N
    ids = tl.load(ids_ptr + offs, mask=ok, other=-1)
    experts = tl.arange(0, BLOCK_E)
    onehot = ((ids[:, None] == experts[None, :]) & (experts[None, :] < E)).to(tl.int32)
    totals = tl.sum(onehot, axis=0)
    starts, ends, total = expert_ranges(totals, num_post_ptr, expert_counts_ptr, E, BLOCK_M, BLOCK_E)
    rank = tl.cumsum(onehot, axis=0) - onehot
    pos = tl.sum(onehot * (rank + starts[None, :]), axis=1)
    tl.store(sorted_ids_ptr + pos, offs, mask=ok & (ids >= 0) & (ids < E))
    write_blocks(expert_ids_ptr, sorted_ids_ptr, starts, ends, totals, total, N, max_blocks,
                 BLOCK_M, BLOCK_E, BLOCK_B)


@triton.jit
def _align_small_kernel(ids_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr, expert_counts_ptr,
                        N, E, max_blocks,
                        BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr, BLOCK_B: tl.constexpr):
    align_one_chunk(ids_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr, expert_counts_ptr, N, E, max_blocks,
                    BLOCK_M, BLOCK_E, CHUNK, BLOCK_B)


@triton.jit
def _scatter_kernel(ids_ptr, chunk_base_ptr, sorted_ids_ptr, N, E, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    ok = offs < N
    ids = tl.load(ids_ptr + offs, mask=ok, other=-1)
    experts = tl.arange(0, BLOCK_E)
    onehot = ((ids[:, None] == experts[None, :]) & (experts[None, :] < E)).to(tl.int32)
    rank = tl.cumsum(onehot, axis=0) - onehot
    base = tl.load(chunk_base_ptr + c * BLOCK_E + experts)
    pos = tl.sum(onehot * (rank + base[None, :]), axis=1)
    tl.store(sorted_ids_ptr + pos, offs, mask=ok & (ids >= 0) & (ids < E))


@dataclass(frozen=True)
class Alignment:
    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_post_padded: torch.Tensor
    expert_counts: torch.Tensor
    block_m: int
    num_routed: int  # N = T * K, also the padding sentinel

    @property
    def max_blocks(self) -> int:
        return self.expert_ids.shape[0]


def max_blocks(num_routed: int, num_experts: int, block_m: int) -> int:
    """Upper bound on the used BLOCK_M blocks: floor(N / BM) + min(E, N)."""
    return num_routed // block_m + min(num_experts, num_routed)


def align_meta(N: int, num_experts: int, block_m: int) -> dict:
    """Tile sizes of the alignment kernels for N slots."""
    block_e = max(16, triton.next_power_of_2(num_experts))
    # No larger than N needs: a 1024-row one-hot tile for 8 slots only costs registers.
    chunk = max(16, min(1024, _TILE_ELEMS // block_e, triton.next_power_of_2(max(1, N))))
    nb = max_blocks(N, num_experts, block_m)
    block_b = max(16, min(256, _TILE_ELEMS // max(block_e, block_m), triton.next_power_of_2(max(1, nb))))
    return dict(BLOCK_M=block_m, BLOCK_E=block_e, CHUNK=chunk, BLOCK_B=block_b)


def alloc_alignment(N: int, num_experts: int, block_m: int, device) -> Alignment:
    nb = max_blocks(N, num_experts, block_m)
    return Alignment(
        sorted_ids=torch.empty((nb * block_m,), dtype=torch.int32, device=device),
        expert_ids=torch.empty((nb,), dtype=torch.int32, device=device),
        num_post_padded=torch.empty((1,), dtype=torch.int32, device=device),
        expert_counts=torch.empty((num_experts,), dtype=torch.int32, device=device),
        block_m=block_m, num_routed=N,
    )


def align_tokens(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> Alignment:
    """Groups the routed slots of `topk_ids [T, K]` by expert, padded to `block_m`."""
    ids = topk_ids.reshape(-1)
    if ids.dtype != torch.int32:
        ids = ids.to(torch.int32)
    N = ids.numel()
    a = alloc_alignment(N, num_experts, block_m, ids.device)
    meta = align_meta(N, num_experts, block_m)
    if N <= meta["CHUNK"]:
        _align_small_kernel[(1,)](ids, a.sorted_ids, a.expert_ids, a.num_post_padded, a.expert_counts,
                                  N, num_experts, a.max_blocks, **meta)
        return a
    chunk, block_e = meta["CHUNK"], meta["BLOCK_E"]
    num_chunks = triton.cdiv(N, chunk)
    chunk_counts = torch.empty((num_chunks, block_e), dtype=torch.int32, device=ids.device)
    chunk_base = torch.empty((num_chunks, block_e), dtype=torch.int32, device=ids.device)
    _count_kernel[(num_chunks,)](ids, chunk_counts, N, num_experts, CHUNK=chunk, BLOCK_E=block_e)
    rows = max(1, min(64, triton.next_power_of_2(num_chunks), _TILE_ELEMS // block_e))
    _offsets_kernel[(1,)](
        chunk_counts, chunk_base, a.expert_ids, a.sorted_ids, a.num_post_padded, a.expert_counts,
        N, num_experts, num_chunks, a.max_blocks,
        BLOCK_M=block_m, BLOCK_E=block_e, ROWS=rows, BLOCK_B=meta["BLOCK_B"],
    )
    _scatter_kernel[(num_chunks,)](ids, chunk_base, a.sorted_ids, N, num_experts, CHUNK=chunk, BLOCK_E=block_e,
                                   num_warps=8)
    return a
