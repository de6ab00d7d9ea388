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
- `block_rows [max_blocks + 1]`: the first aligned row of each block; from the first unused block on,
  `num_post_padded`. A block's height is the difference of two neighbours.
- `slot_rows [N]`: the inverse of `sorted_ids`: the aligned row of each slot (written where `sorted_ids` is, for
  the down projection that sums a token's rows itself, `tritonmoe.down.down_combine`).

Tail blocks (`tail_m < block_m`): an expert's rows are BLOCK_M blocks and then, for the rest that does
not fill one, TAIL_M blocks (a rest needing BLOCK_M / TAIL_M of them takes one full block instead). An
expert with 135 slots is one 128-row block and one 16-row tail (144 rows), not two 128-row blocks (256
rows): the GEMMs then run the tall tiles that share weight tiles best without padding every expert to
them. Without tails (`tail_m == block_m`, the default) every block is BLOCK_M rows and starts at
`b * BLOCK_M`.

Extended last blocks (`block_m < tail_m < 2 * block_m`): an expert whose rest past its full blocks is at most
`tail_m - block_m` rows folds it into its last full block, one block of TAIL_M rows (a larger rest, or one with no
full block before it, is padded to a block of its own). At ~256 slots per expert with 128-row blocks an expert of
269 slots is a 128-row and a 192-row block (320 rows, its weight tiles read twice), not three 128-row blocks (384
rows, read three times) nor two blocks and a tail (the tail's tile reads a whole weight tile for a few rows). The
GEMMs compute an extended block as two token tiles against each weight tile (perf notes v25).

Sizes are static: at most `max_blocks(N, E, BM, TAIL)` blocks (floor(N / BM) + min(E, N) without tails)
and `max_rows(...)` aligned rows, so the host never waits for the counts. Slot ids outside [0, E) are
ignored (the public API checks them first).

Three kernels: per-chunk histograms, one program that turns them into offsets (and writes the
block-to-expert map and the padding), and a stable scatter. When that one program would walk many chunks or
blocks (`layout_plan`), its work is spread instead over two launches: per-expert totals, then programs that
each write a range of blocks or the chunk offsets of a few experts.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._host import cdiv, next_power_of_2
from ._launch import empty, launch

# Elements of the [CHUNK, BLOCK_E] one-hot tiles the kernels hold in registers.
_TILE_ELEMS = 16384
# Slots of one chunk at most: N <= CHUNK slots are aligned by one program (`_align_small_kernel`), more by chunks.
# 256 since session 21 (`experiments/bench/align_lab.py`, NOTES v22): at 1024, Mixtral's 8 experts reached one
# program at T=512 (a [1024, 16] tile, 24 us of a 1.18 ms layer, session 20's breakdown), where four chunks of 256
# take a few launches of many programs. With 64 or more experts _TILE_ELEMS / BLOCK_E caps CHUNK at 256 or less.
# Plans (`_launch`) and `align_meta` assume it fixed: a lab that changes it clears both.
MAX_CHUNK = 256
# Elements of the [BLOCK_B, BLOCK_E] tiles of `write_block_range`, which keeps several of them live (the expert of
# each block and its start, count, full blocks and first block): larger tiles spilled (session 5, run 4).
_BLOCK_TILE_ELEMS = 2048


@triton.jit
def _count_kernel(ids_ptr, chunk_counts_ptr, N, E, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + offs, mask=offs < N, other=-1)
    experts = tl.arange(0, BLOCK_E)
    onehot = ((ids[:, None] == experts[None, :]) & (experts[None, :] < E)).to(tl.int32)
    tl.store(chunk_counts_ptr + c * BLOCK_E + experts, tl.sum(onehot, axis=0))


@triton.jit
def column_totals(chunk_counts_ptr, cols, num_chunks, BLOCK_E: tl.constexpr, ROWS: tl.constexpr):
    """Slots per expert for the experts `cols`: the chunk table's column sums, ROWS chunks at a time (a fixed order)."""
    totals = tl.zeros(cols.shape, dtype=tl.int32)
    for c0 in range(0, num_chunks, ROWS):
        r = c0 + tl.arange(0, ROWS)
        totals += tl.sum(tl.load(chunk_counts_ptr + r[:, None] * BLOCK_E + cols[None, :],
                                 mask=r[:, None] < num_chunks, other=0), axis=0)
    return totals


@triton.jit
def chunk_bases(chunk_counts_ptr, chunk_base_ptr, cols, running, num_chunks, BLOCK_E: tl.constexpr, ROWS: tl.constexpr):
    """Per chunk and expert of `cols`: where the chunk's first slot of that expert goes, from the experts' first
    aligned rows `running`."""
    for c0 in range(0, num_chunks, ROWS):
        r = c0 + tl.arange(0, ROWS)
        offs = r[:, None] * BLOCK_E + cols[None, :]
        blk = tl.load(chunk_counts_ptr + offs, mask=r[:, None] < num_chunks, other=0)
        tl.store(chunk_base_ptr + offs, running[None, :] + tl.cumsum(blk, axis=0) - blk, mask=r[:, None] < num_chunks)
        running += tl.sum(blk, axis=0)


@triton.jit
def _offsets_kernel(
    chunk_counts_ptr, chunk_base_ptr, expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, num_post_ptr, expert_counts_ptr,
    N, E, num_chunks, max_blocks,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_E: tl.constexpr, ROWS: tl.constexpr, BLOCK_B: tl.constexpr,
):
    experts = tl.arange(0, BLOCK_E)
    totals = column_totals(chunk_counts_ptr, experts, num_chunks, BLOCK_E, ROWS)
    starts = write_blocks(expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, num_post_ptr, expert_counts_ptr,
                          totals, E, N, max_blocks, BLOCK_M, TAIL_M, BLOCK_E, BLOCK_B)
    chunk_bases(chunk_counts_ptr, chunk_base_ptr, experts, starts, num_chunks, BLOCK_E, ROWS)


# Expert columns per program of the parallel layout (`_totals_kernel`, chunk bases in `_layout_kernel`) and the
# chunk rows each of them sums at once.
_SLAB_E = 16
_SLAB_ROWS = 128
# Serial steps of the one-program `_offsets_kernel` (two passes over the chunk table, one over the blocks) above
# which the layout runs in parallel (`_totals_kernel` + `_layout_kernel`): one program took 46 us at qwen3-30b-a3b
# T=4096 and 248 us at deepseek-v3 T=8192 (session 6, run 14); one more launch costs a few us. At 15 steps it
# still took 17 us (olmoe-1b-7b T=2048, qwen2-moe-57b T=4096; session 9, run 3) against 7 us for the two parallel
# launches at 41 steps (qwen3-30b-a3b T=4096): ~1.1 us a step, so from 8 steps on the layout runs in parallel.
PARALLEL_LAYOUT_STEPS = 8


@triton.jit
def _totals_kernel(chunk_counts_ptr, expert_counts_ptr, num_chunks, E,
                   BLOCK_E: tl.constexpr, SLAB_E: tl.constexpr, ROWS: tl.constexpr):
    """Slots per expert for SLAB_E experts: the chunk table's column sums (in a fixed order)."""
    es = tl.program_id(0) * SLAB_E + tl.arange(0, SLAB_E)
    tl.store(expert_counts_ptr + es, column_totals(chunk_counts_ptr, es, num_chunks, BLOCK_E, ROWS), mask=es < E)


@triton.jit
def _layout_kernel(
    chunk_counts_ptr, chunk_base_ptr, expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, num_post_ptr, expert_counts_ptr,
    N, E, num_chunks, max_blocks, block_programs,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr,
    SLAB_E: tl.constexpr, ROWS: tl.constexpr,
):
    """The `_offsets_kernel`'s work spread over programs: the first `block_programs` write BLOCK_B blocks each, the
    others the chunk bases of SLAB_E experts each; every program derives the layout from the expert counts."""
    pid = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    totals = tl.load(expert_counts_ptr + experts, mask=experts < E, other=0)
    full, starts, block_starts, block_ends, total, total_blocks = block_layout(totals, BLOCK_M, TAIL_M)
    if pid < block_programs:
        if pid == 0:
            tl.store(num_post_ptr, total)
        write_block_range(expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, totals, full, starts, block_starts,
                          block_ends, total, total_blocks, N, max_blocks, pid * BLOCK_B, pid * BLOCK_B + BLOCK_B,
                          BLOCK_M, TAIL_M, BLOCK_E, BLOCK_B)
    else:
        es = (pid - block_programs) * SLAB_E + tl.arange(0, SLAB_E)
        running = tl.sum(tl.where(experts[None, :] == es[:, None], starts[None, :], 0), axis=1)
        chunk_bases(chunk_counts_ptr, chunk_base_ptr, es, running, num_chunks, BLOCK_E, ROWS)


@triton.jit
def block_layout(totals, BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr):
    """From the slot count of each expert (a [BLOCK_E] vector): its full blocks, its first aligned row, where its
    blocks start and end, and the totals (used rows, used blocks)."""
    full = totals // BLOCK_M
    if TAIL_M > BLOCK_M:
        # Extended last blocks: a rest of at most TAIL_M - BLOCK_M rows joins the last full block (one block of
        # TAIL_M rows); a larger rest, or one without a full block before it, is a padded block of its own. `full`
        # counts the extended block, so an expert has an extended block exactly when its count passes full * BLOCK_M.
        rest = totals - full * BLOCK_M
        ext = (full >= 1) & (rest > 0) & (rest <= TAIL_M - BLOCK_M)
        full = tl.where((rest > 0) & (ext == 0), full + 1, full)
        tails = full * 0
        padded = full * BLOCK_M + tl.where(ext, TAIL_M - BLOCK_M, 0)
    else:
        tails = (totals - full * BLOCK_M + TAIL_M - 1) // TAIL_M
        whole = tails * TAIL_M == BLOCK_M  # the rest needs as many rows as one full block: take one
        full = tl.where(whole, full + 1, full)
        tails = tl.where(whole, 0, tails)
        padded = full * BLOCK_M + tails * TAIL_M
    starts = tl.cumsum(padded, axis=0) - padded
    blocks = full + tails
    block_ends = tl.cumsum(blocks, axis=0)
    return full, starts, block_ends - blocks, block_ends, tl.sum(padded, axis=0), tl.sum(blocks, axis=0)


@triton.jit
def write_block_range(expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, totals, full, starts, block_starts, block_ends,
                      total, total_blocks, N, max_blocks, b_first, b_end,
                      BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    """Blocks b_first .. b_end-1 (of `block_layout`'s layout): the expert and first row of every block (-1 and the
    used-row count past the used blocks) and the sentinel N in every padding row of the used ones."""
    experts = tl.arange(0, BLOCK_E)
    if TAIL_M > BLOCK_M:
        rows_in_block = tl.arange(0, 2 * BLOCK_M)  # covers an extended block (TAIL_M < 2 * BLOCK_M rows)
    else:
        rows_in_block = tl.arange(0, BLOCK_M)
    for b0 in range(b_first, b_end, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        # The owner of a used block is the first expert whose blocks end after it.
        owner = tl.sum((block_ends[None, :] <= b[:, None]).to(tl.int32), axis=1)
        used = b < total_blocks
        is_owner = experts[None, :] == owner[:, None]
        own_start = tl.sum(tl.where(is_owner, starts[None, :], 0), axis=1)
        own_count = tl.sum(tl.where(is_owner, totals[None, :], 0), axis=1)
        own_full = tl.sum(tl.where(is_owner, full[None, :], 0), axis=1)
        j = b - tl.sum(tl.where(is_owner, block_starts[None, :], 0), axis=1)  # the block's rank in its expert
        n_full = tl.minimum(j, own_full)
        row0 = tl.where(used, own_start + n_full * BLOCK_M + (j - n_full) * TAIL_M, total)
        if TAIL_M > BLOCK_M:  # the last block of an expert whose count passes its full blocks is extended
            height = tl.where((j == own_full - 1) & (own_count > own_full * BLOCK_M), TAIL_M, BLOCK_M)
        else:
            height = tl.where(j < own_full, BLOCK_M, TAIL_M)
        in_range = b < b_end
        tl.store(expert_ids_ptr + b, tl.where(used, owner, -1), mask=in_range & (b < max_blocks))
        tl.store(block_rows_ptr + b, row0, mask=in_range & (b <= max_blocks))
        p = row0[:, None] + rows_in_block[None, :]
        is_pad = (rows_in_block[None, :] < height[:, None]) & ((p - own_start[:, None]) >= own_count[:, None])
        tl.store(sorted_ids_ptr + p, tl.full(p.shape, 0, tl.int32) + N, mask=is_pad & (used & in_range)[:, None])


@triton.jit
def write_blocks(expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, num_post_ptr, expert_counts_ptr,
                 totals, E, N, max_blocks,
                 BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr):
    """From the slot count of each expert: its padded range of aligned rows and its blocks (BLOCK_M blocks,
    then TAIL_M blocks for the rest). Stores the counts, the number of used rows, the expert and first row of
    every block (-1 and the used-row count past the used blocks) and the sentinel N in every padding row.
    Returns each expert's first aligned row."""
    experts = tl.arange(0, BLOCK_E)
    full, starts, block_starts, block_ends, total, total_blocks = block_layout(totals, BLOCK_M, TAIL_M)
    tl.store(num_post_ptr, total)
    tl.store(expert_counts_ptr + experts, totals, mask=experts < E)
    write_block_range(expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, totals, full, starts, block_starts, block_ends,
                      total, total_blocks, N, max_blocks, 0, max_blocks + 1, BLOCK_M, TAIL_M, BLOCK_E, BLOCK_B)
    return starts


@triton.jit
def align_one_chunk(ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
                    expert_counts_ptr, N, E, max_blocks,
                    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
                    BLOCK_B: tl.constexpr):
    """The whole alignment in one program when all N <= CHUNK slots fit one tile."""
    offs = tl.arange(0, CHUNK)
    ok = offs < N
    ids = tl.load(ids_ptr + offs, mask=ok, other=-1)
    experts = tl.arange(0, BLOCK_E)
    onehot = ((ids[:, None] == experts[None, :]) & (experts[None, :] < E)).to(tl.int32)
    totals = tl.sum(onehot, axis=0)
    starts = write_blocks(expert_ids_ptr, block_rows_ptr, sorted_ids_ptr, num_post_ptr, expert_counts_ptr,
                          totals, E, N, max_blocks, BLOCK_M, TAIL_M, BLOCK_E, BLOCK_B)
    rank = tl.cumsum(onehot, axis=0) - onehot
    pos = tl.sum(onehot * (rank + starts[None, :]), axis=1)
    valid = ok & (ids >= 0) & (ids < E)
    tl.store(sorted_ids_ptr + pos, offs, mask=valid)
    tl.store(slot_rows_ptr + offs, pos, mask=valid)


@triton.jit
def _align_small_kernel(ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
                        expert_counts_ptr, N, E, max_blocks,
                        BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
                        BLOCK_B: tl.constexpr):
    align_one_chunk(ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
                    expert_counts_ptr, N, E, max_blocks, BLOCK_M, TAIL_M, BLOCK_E, CHUNK, BLOCK_B)


@triton.jit
def _scatter_kernel(ids_ptr, chunk_base_ptr, sorted_ids_ptr, slot_rows_ptr, N, E, CHUNK: tl.constexpr,
                    BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    ok = offs < N
    ids = tl.load(ids_ptr + offs, mask=ok, other=-1)
    experts = tl.arange(0, BLOCK_E)
    onehot = ((ids[:, None] == experts[None, :]) & (experts[None, :] < E)).to(tl.int32)
    rank = tl.cumsum(onehot, axis=0) - onehot
    base = tl.load(chunk_base_ptr + c * BLOCK_E + experts)
    pos = tl.sum(onehot * (rank + base[None, :]), axis=1)
    valid = ok & (ids >= 0) & (ids < E)
    tl.store(sorted_ids_ptr + pos, offs, mask=valid)
    tl.store(slot_rows_ptr + offs, pos, mask=valid)


@dataclass(frozen=True)
class Alignment:
    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    block_rows: torch.Tensor
    num_post_padded: torch.Tensor
    expert_counts: torch.Tensor
    slot_rows: torch.Tensor  # [N]: the aligned row of each slot
    block_m: int
    num_routed: int  # N = T * K, also the padding sentinel
    tail_m: int = 0  # height of the tail blocks; 0 means none (set to block_m)

    def __post_init__(self):
        if not self.tail_m:
            object.__setattr__(self, "tail_m", self.block_m)

    @property
    def max_blocks(self) -> int:
        return self.expert_ids.shape[0]

    @property
    def has_tails(self) -> bool:
        return self.tail_m < self.block_m

    @property
    def has_ext(self) -> bool:
        """Extended last blocks (`tail_m > block_m`): an expert's last block may be `tail_m` rows high."""
        return self.tail_m > self.block_m

    @property
    def uniform(self) -> bool:
        """Every block is `block_m` rows and starts at `b * block_m` (no tails, no extended blocks)."""
        return self.tail_m == self.block_m


def check_tail(block_m: int, tail_m: int | None) -> int:
    """The last-block height to use (`block_m` for none); raises unless it is a power of two in [16, block_m] (tail
    blocks) or `block_m` plus a power of two in [16, block_m) (an extended last block)."""
    if tail_m is None:
        return block_m
    ext = tail_m - block_m
    if ext > 0:
        if not (16 <= ext < block_m and ext & (ext - 1) == 0):
            raise ValueError(f"TAIL_M: an extended last block takes BLOCK_M={block_m} plus a power of two of at "
                             f"least 16 and below BLOCK_M, got {tail_m}")
        return tail_m
    if not (16 <= tail_m <= block_m and tail_m & (tail_m - 1) == 0 and block_m % tail_m == 0):
        raise ValueError(f"TAIL_M: expected a power of two in [16, BLOCK_M={block_m}], got {tail_m}")
    return tail_m


def expert_blocks(count: int, block_m: int, tail_m: int | None = None) -> tuple[int, int]:
    """(full blocks, tail blocks) of an expert with `count` slots: what `block_layout` computes on the device, for
    the host (the traffic model). With an extended last block (`tail_m > block_m`) the blocks are all counted as full,
    the last one TAIL_M rows high where `count > full * block_m` (`block_heights` lists them)."""
    tail = check_tail(block_m, tail_m)
    full, rest = divmod(count, block_m)
    if tail > block_m:
        return (full, 0) if rest == 0 or (full >= 1 and rest <= tail - block_m) else (full + 1, 0)
    tails = -(-rest // tail)
    return (full + 1, 0) if tails * tail == block_m else (full, tails)


def block_heights(count: int, block_m: int, tail_m: int | None = None) -> list[int]:
    """The heights of an expert's blocks for `count` slots, in order (`block_layout` on the host)."""
    tail = check_tail(block_m, tail_m)
    full, tails = expert_blocks(count, block_m, tail)
    if tail > block_m:
        return [block_m] * (full - 1) + [tail] if count > full * block_m else [block_m] * full
    return [block_m] * full + [tail] * tails


def last_box_rows(align: "Alignment") -> int:
    """Rows of the descriptor box for an alignment's other block height: a tail block's TAIL_M rows, or an extended
    block's TAIL_M - BLOCK_M extra rows (its first BLOCK_M come through the full blocks' box)."""
    return align.tail_m - align.block_m if align.has_ext else align.tail_m


def max_blocks(num_routed: int, num_experts: int, block_m: int, tail_m: int | None = None) -> int:
    """Upper bound on the used blocks: floor(N / BM) + min(E, N) without tails. With tails an expert has at
    most floor(c / BM) full blocks and BM/TAIL - 1 tails, and never more blocks than ceil(c / TAIL). Extended last
    blocks only merge a block into another: the bound without tails holds."""
    tail = check_tail(block_m, tail_m)
    if tail > block_m:
        tail = block_m
    hit = min(num_experts, num_routed)
    return min(num_routed // block_m + hit * max(1, block_m // tail - 1), num_routed // tail + hit)


def max_rows(num_routed: int, num_experts: int, block_m: int, tail_m: int | None = None) -> int:
    """Upper bound on the aligned rows (the size of `sorted_ids` and of the GEMMs' row buffers): every block is
    at most BLOCK_M rows and, with tails, every expert pads by fewer than BLOCK_M rows."""
    tail = min(check_tail(block_m, tail_m), block_m)  # an extended block holds fewer rows than the two it replaces
    rows = max_blocks(num_routed, num_experts, block_m, tail) * block_m
    if tail < block_m:
        hit = min(num_experts, num_routed)
        rows = min(rows, cdiv(num_routed + hit * (block_m - 1), block_m) * block_m)
    return rows


@functools.lru_cache(maxsize=4096)
def align_meta(N: int, num_experts: int, block_m: int, tail_m: int | None = None) -> dict:
    """Tile sizes of the alignment kernels for N slots (memoised: computed on the host every call; read only)."""
    tail = check_tail(block_m, tail_m)
    block_e = max(16, next_power_of_2(num_experts))
    # No larger than N needs: a 1024-row one-hot tile for 8 slots only costs registers.
    chunk = max(16, min(MAX_CHUNK, _TILE_ELEMS // block_e, next_power_of_2(max(1, N))))
    nb = max_blocks(N, num_experts, block_m, tail) + 1  # the blocks and the end of the last one
    rows = 2 * block_m if tail > block_m else block_m  # `write_block_range`'s padding tile covers a block
    block_b = max(16, min(256, _BLOCK_TILE_ELEMS // max(block_e, rows), next_power_of_2(nb)))
    return dict(BLOCK_M=block_m, TAIL_M=tail, BLOCK_E=block_e, CHUNK=chunk, BLOCK_B=block_b)


def layout_plan(N: int, num_experts: int, block_m: int, tail_m: int | None = None) -> dict:
    """How the chunked alignment (N slots over more than one chunk) lays out its blocks: the chunk count, the
    one-program kernel's chunk rows per step, and whether the layout runs in parallel (more serial steps than
    PARALLEL_LAYOUT_STEPS) with its block programs, expert slabs and the slabs' chunk rows per step."""
    meta = align_meta(N, num_experts, block_m, tail_m)
    num_chunks = cdiv(N, meta["CHUNK"])
    rows = max(1, min(64, next_power_of_2(num_chunks), _BLOCK_TILE_ELEMS * 2 // meta["BLOCK_E"]))
    block_programs = cdiv(max_blocks(N, num_experts, block_m, tail_m) + 1, meta["BLOCK_B"])
    steps = 2 * cdiv(num_chunks, rows) + block_programs
    return dict(num_chunks=num_chunks, rows=rows, parallel=steps > PARALLEL_LAYOUT_STEPS,
                block_programs=block_programs, slabs=meta["BLOCK_E"] // _SLAB_E,
                slab_rows=min(_SLAB_ROWS, next_power_of_2(num_chunks)))


# Each int32 table of an alignment starts on a multiple of this many elements of their one allocation (128 bytes:
# the kernels see 16-byte aligned pointers, as from separate allocations).
_TABLE_ALIGN = 32


def int32_tables(device, *sizes: int) -> list[torch.Tensor]:
    """1-D int32 tensors of `sizes` elements, views of one allocation (one `torch.empty` instead of one each: a few us
    of host time per table on the GPU machine's host; perf notes v17), each starting 128-byte aligned."""
    parts = []
    for n in sizes:
        parts += [n, -n % _TABLE_ALIGN]
    return empty((sum(parts),), torch.int32, device).split(parts)[::2]


def alloc_alignment(N: int, num_experts: int, block_m: int, device, tail_m: int | None = None,
                    extra: tuple[int, ...] = ()) -> Alignment | tuple[Alignment, list[torch.Tensor]]:
    """The alignment's tables (uninitialised), in one allocation; with `extra` sizes, also int32 scratch tables of
    those sizes from the same allocation, returned beside it."""
    tail = check_tail(block_m, tail_m)
    nb = max_blocks(N, num_experts, block_m, tail)
    t = int32_tables(device, max_rows(N, num_experts, block_m, tail), nb, nb + 1, 1, num_experts, N, *extra)
    a = Alignment(sorted_ids=t[0], expert_ids=t[1], block_rows=t[2], num_post_padded=t[3], expert_counts=t[4],
                  slot_rows=t[5], block_m=block_m, num_routed=N, tail_m=tail)
    return (a, list(t[6:])) if extra else a


def align_tokens(topk_ids: torch.Tensor, num_experts: int, block_m: int, tail_m: int | None = None) -> Alignment:
    """Groups the routed slots of `topk_ids [T, K]` by expert, padded to `block_m` (with tail blocks of
    `tail_m` rows for each expert's rest when given)."""
    ids = topk_ids.reshape(-1)
    if ids.dtype != torch.int32:
        ids = ids.to(torch.int32)
    N = ids.numel()
    meta = align_meta(N, num_experts, block_m, tail_m)
    if N <= meta["CHUNK"]:
        a = alloc_alignment(N, num_experts, block_m, ids.device, tail_m)
        # Eight warps for the widest one-hot tiles ([1024, 16] spilled 14 KB at four: session 5).
        warps = 8 if meta["CHUNK"] * meta["BLOCK_E"] >= 8192 else 4
        launch(_align_small_kernel, (1,), ids, a.sorted_ids, a.slot_rows, a.expert_ids, a.block_rows,
               a.num_post_padded, a.expert_counts, N, num_experts, a.max_blocks, **meta, num_warps=warps)
        return a
    chunk, block_e = meta["CHUNK"], meta["BLOCK_E"]
    plan = layout_plan(N, num_experts, block_m, tail_m)
    num_chunks = plan["num_chunks"]
    a, (chunk_counts, chunk_base) = alloc_alignment(N, num_experts, block_m, ids.device, tail_m,
                                                    extra=(num_chunks * block_e,) * 2)
    launch(_count_kernel, (num_chunks,), ids, chunk_counts, N, num_experts, CHUNK=chunk, BLOCK_E=block_e)
    tables = (chunk_counts, chunk_base, a.expert_ids, a.block_rows, a.sorted_ids, a.num_post_padded, a.expert_counts)
    if plan["parallel"]:
        rows = plan["slab_rows"]
        launch(_totals_kernel, (plan["slabs"],), chunk_counts, a.expert_counts, num_chunks, num_experts,
               BLOCK_E=block_e, SLAB_E=_SLAB_E, ROWS=rows)
        launch(
            _layout_kernel, (plan["block_programs"] + plan["slabs"],),
            *tables, N, num_experts, num_chunks, a.max_blocks, plan["block_programs"],
            BLOCK_M=block_m, TAIL_M=meta["TAIL_M"], BLOCK_E=block_e, BLOCK_B=meta["BLOCK_B"], SLAB_E=_SLAB_E, ROWS=rows,
        )
    else:
        launch(
            _offsets_kernel, (1,), *tables, N, num_experts, num_chunks, a.max_blocks,
            BLOCK_M=block_m, TAIL_M=meta["TAIL_M"], BLOCK_E=block_e, ROWS=plan["rows"], BLOCK_B=meta["BLOCK_B"],
        )
    launch(_scatter_kernel, (num_chunks,), ids, chunk_base, a.sorted_ids, a.slot_rows, N, num_experts,
           CHUNK=chunk, BLOCK_E=block_e, num_warps=8)
    return a
