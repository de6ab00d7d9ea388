"""Global-memory traffic of the MoE layer, modelled kernel launch by kernel launch.

For each variant (`launches(impl, ...)`) the model lists the kernels the layer launches, in order,
and for each kernel argument the bytes it reads and writes, in two flavours:

- logical: the bytes the kernel's `tl.load`/`tl.store` move, masked-off lanes excluded, counted
  once per program that moves them (x tiles re-read by every N block, weight tiles re-read by every
  M block of an expert, `num_post_padded` read by every program). Triton's interpreter counts
  exactly this (`experiments/traffic/interp_count.py`); a CI test holds the two equal.
- unique: each distinct element once per launch (an element the launch stores and then loads back
  counts as stored only): what DRAM would see if the caches kept every re-read within a kernel and
  nothing survived between kernels (what `ncu --cache-control all` measures, up to L2 write-back
  and 32-byte sectors).

Arguments are classed as weights (router, gate/up and down weights) or activations (everything
else: x, the routing and alignment arrays, intermediates, partial sums, y). The tile geometry
comes from the same layer config the call uses (`tritonmoe.api.resolve_config`) and the same
alignment (expert counts, BLOCK_M, padded rows), so a kernel change that moves different bytes
makes the CI test fail. Peers (`megablocks_grouped`, `torch_grouped_mm`) are modelled as ideal
kernels of their design (each kernel reads its inputs once and writes its outputs once).

Not modelled: L2 reuse across kernels, 32-byte sector rounding of scattered accesses, and the
L2 write-back timing of dirty lines; `experiments/traffic/compare.py` explains those in numbers.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import torch

from ._host import cdiv, next_power_of_2
from .align import align_meta, block_heights, check_tail, layout_plan, max_blocks, max_rows
from .config import default_config, tail_of
from .descriptors import wants_descriptors
from .gate_up import GATHER_BLOCK_R, INTERPRETER_PROGRAMS
from .route_align import MAX_TOKENS as ROUTE_ALIGN_MAX_TOKENS
from .route_align import SPLIT_BLOCK_E, SPLIT_H, select_default
from .routing import PARTIALS_BLOCK_T, ROUTE_SPLIT_BLOCK_E, ROUTE_SPLIT_H, route_block_t, route_split

STAGES = ("routing", "gate_up", "act", "down", "combine")
FLAVOURS = ("logical", "unique")
TRITON_IMPLS = ("tritonmoe_fused", "tritonmoe_w13", "tritonmoe_unfused")
PEER_IMPLS = ("megablocks_grouped", "torch_grouped_mm")

# Each Triton kernel of the package (by its function name) and the stage its bytes count under.
KERNEL_STAGES = {
    "_router_partials_kernel": "routing",
    "_route_align_partials_kernel": "routing",
    "_routing_kernel": "routing",
    "_select_partials_kernel": "routing",
    "_align_small_kernel": "routing",
    "_count_kernel": "routing",
    "_offsets_kernel": "routing",
    "_totals_kernel": "routing",
    "_layout_kernel": "routing",
    "_scatter_kernel": "routing",
    "_gate_up_kernel": "gate_up",
    # One token whose routing choice the first gate/up GEMM makes (the config's SELECT_IN_GEMM): its reads of the
    # partial logits and its stores of the routing and alignment tables count under gate_up with the GEMM.
    "_gate_up_select_kernel": "gate_up",
    # With the config's DESC flag: the tokens gathered into aligned order, then the descriptor GEMMs.
    "_gather_rows_kernel": "gate_up",
    "_gate_up_desc_kernel": "gate_up",
    "_gate_up_persistent_kernel": "gate_up",  # with PERSISTENT as well: one program per SM walks the tiles
    "_gate_up_persistent_gather_kernel": "gate_up",  # PERSISTENT without DESC: the same, tokens gathered inside
    "_gate_up_persistent_ext_kernel": "gate_up",  # the same over extended last blocks (TAIL_M > BLOCK_M)
    "_down_desc_kernel": "down",
    # The decode path's one kernel does gate+up, SwiGLU and down; a DRAM counter sees it whole, so
    # its bytes count under gate_up (that call's act and down stages are empty).
    "_fused_expert_kernel": "gate_up",
    "_swiglu_kernel": "act",
    "_down_kernel": "down",
    "_combine_kernel": "combine",
    # The down config's COMBINE flag: the down projection and the combine in one kernel; its bytes count under
    # down (that call's combine stage is empty).
    "_down_combine_kernel": "down",
}

_I32 = 4  # ids, counts, offsets
_F32 = 4  # routing weights and the down projection's partial sums


@dataclass(frozen=True)
class Traffic:
    """Bytes read and written, weights and activations apart."""
    weight_read: int = 0
    weight_write: int = 0
    act_read: int = 0
    act_write: int = 0

    @property
    def read(self) -> int:
        return self.weight_read + self.act_read

    @property
    def write(self) -> int:
        return self.weight_write + self.act_write

    @property
    def total(self) -> int:
        return self.read + self.write

    @property
    def act_total(self) -> int:
        return self.act_read + self.act_write

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.weight_read + other.weight_read, self.weight_write + other.weight_write,
                       self.act_read + other.act_read, self.act_write + other.act_write)


@dataclass(frozen=True)
class Access:
    """The bytes one kernel argument (`buffer`, the kernel's parameter name) moves in one launch."""
    buffer: str
    weight: bool
    read: int = 0
    write: int = 0
    unique_read: int = 0
    unique_write: int = 0

    def traffic(self, flavour: str) -> Traffic:
        r, w = (self.read, self.write) if flavour == "logical" else (self.unique_read, self.unique_write)
        return Traffic(r, w, 0, 0) if self.weight else Traffic(0, 0, r, w)


def _same(buffer: str, weight: bool = False, read: int = 0, write: int = 0) -> Access:
    """An argument whose every element is moved once (logical == unique)."""
    return Access(buffer, weight, read, write, read, write)


@dataclass(frozen=True)
class Launch:
    kernel: str
    stage: str
    accesses: tuple[Access, ...]

    def traffic(self, flavour: str = "logical") -> Traffic:
        _check_flavour(flavour)
        out = Traffic()
        for a in self.accesses:
            out = out + a.traffic(flavour)
        return out

    def by_buffer(self, flavour: str = "logical") -> dict[str, tuple[int, int]]:
        """{parameter name: (read bytes, write bytes)}, the form the interpreter counter reports."""
        _check_flavour(flavour)
        return {a.buffer: ((a.read, a.write) if flavour == "logical" else (a.unique_read, a.unique_write))
                for a in self.accesses}


@dataclass(frozen=True)
class LayerShape:
    """The expert shapes of one layer call: tokens T, hidden H, expert ffn F, experts E, top-k K."""
    tokens: int
    hidden: int
    ffn: int
    experts: int
    top_k: int
    elem_bytes: int  # of x, the weights and the intermediates (2 for bf16/fp16, 4 for fp32)

    def __post_init__(self):
        for name in ("tokens", "hidden", "ffn", "experts", "top_k", "elem_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.top_k > self.experts:
            raise ValueError(f"top_k: expected <= experts ({self.experts}), got {self.top_k}")

    @property
    def routed(self) -> int:
        """N = T*K routed slots."""
        return self.tokens * self.top_k

    @classmethod
    def of(cls, tokens: int, hidden: int, ffn: int, experts: int, top_k: int, dtype) -> "LayerShape":
        return cls(tokens, hidden, ffn, experts, top_k, elem_bytes(dtype))


def elem_bytes(dtype) -> int:
    """Bytes per element of a torch dtype (or a dtype name such as 'bfloat16')."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype or its name, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class Blocks:
    """The alignment's geometry: tokens grouped by expert, each group padded to BLOCK_M rows (or, with tail
    blocks, to full BLOCK_M blocks then TAIL_M blocks for the rest; see `tritonmoe.align`)."""
    block_m: int
    expert_counts: tuple[int, ...]
    max_blocks: int  # grid rows of the grouped GEMMs (an upper bound known on the host)
    tail_m: int = 0  # 0: no tails (set to block_m)
    padded_rows: int = field(init=False)  # num_post_padded
    used_blocks: int = field(init=False)
    hit_experts: int = field(init=False)
    max_rows: int = field(init=False)  # rows allocated for the aligned order (host bound)

    def __post_init__(self):
        bm = self.block_m
        tail = self.tail_m or bm
        object.__setattr__(self, "tail_m", tail)
        rows = blocks = 0
        for c in self.expert_counts:
            heights = block_heights(c, bm, tail)
            rows += sum(heights)
            blocks += len(heights)
        object.__setattr__(self, "padded_rows", rows)
        object.__setattr__(self, "used_blocks", blocks)
        object.__setattr__(self, "hit_experts", sum(1 for c in self.expert_counts if c > 0))
        object.__setattr__(self, "max_rows", max_rows(sum(self.expert_counts), len(self.expert_counts), bm, tail))

    @property
    def has_tails(self) -> bool:
        return self.tail_m < self.block_m

    @property
    def uniform(self) -> bool:
        """Every block BLOCK_M rows (no tails, no extended last blocks)."""
        return self.tail_m == self.block_m

    @property
    def has_ext(self) -> bool:
        """Extended last blocks (TAIL_M > BLOCK_M)."""
        return self.tail_m > self.block_m

    @classmethod
    def from_counts(cls, shape: LayerShape, expert_counts, block_m: int, tail_m: int | None = None) -> "Blocks":
        counts = tuple(int(c) for c in expert_counts)
        if len(counts) != shape.experts:
            raise ValueError(f"expert_counts: expected {shape.experts} counts (one per expert), got {len(counts)}")
        if any(c < 0 for c in counts) or sum(counts) != shape.routed:
            raise ValueError(f"expert_counts: expected non-negative counts summing to T*K = {shape.routed}, "
                             f"got {sum(counts)} ({counts if len(counts) <= 16 else '...'})")
        tail = check_tail(int(block_m), tail_m)
        return cls(int(block_m), counts, max_blocks(shape.routed, shape.experts, int(block_m), tail), tail)

    @classmethod
    def from_alignment(cls, shape: LayerShape, align) -> "Blocks":
        """From a `tritonmoe.align.Alignment`; checks its padded-row count against the counts."""
        blocks = cls.from_counts(shape, align.expert_counts.tolist(), align.block_m, align.tail_m)
        got = int(align.num_post_padded.item())
        if got != blocks.padded_rows:
            raise ValueError(f"align: expected num_post_padded = {blocks.padded_rows} from its expert counts, got {got}")
        if align.max_blocks != blocks.max_blocks:
            raise ValueError(f"align: expected {blocks.max_blocks} blocks, got {align.max_blocks}")
        return blocks


def _check_flavour(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour: expected one of {FLAVOURS}, got {flavour!r}")


# --- the kernels, one function each, in the order of their modules --------------------------------

def _route_accesses(s: LayerShape, programs: int) -> tuple[Access, ...]:
    """`routing.route_tokens` run by `programs` programs (or loop iterations) of BLOCK_T tokens:
    x rows once, the whole router weight once per program, fp32 weights and int32 ids out."""
    x = s.tokens * s.hidden * s.elem_bytes
    wr = s.experts * s.hidden * s.elem_bytes
    return (
        _same("x_ptr", read=x),
        Access("wr_ptr", True, read=programs * wr, unique_read=wr),
        _same("weights_ptr", write=s.routed * _F32),
    )


def _block_table_accesses(s: LayerShape, b: Blocks, *, sorted_ids_write: int, counts: bool = True) -> tuple[Access, ...]:
    """What `align.write_blocks` (or the parallel layout's `write_block_range` and totals kernel) stores
    (`counts`: the expert counts too)."""
    return (
        _same("sorted_ids_ptr", write=sorted_ids_write),
        _same("expert_ids_ptr", write=b.max_blocks * _I32),
        _same("block_rows_ptr", write=(b.max_blocks + 1) * _I32),
        _same("num_post_ptr", write=_I32),
        *((_same("expert_counts_ptr", write=s.experts * _I32),) if counts else ()),
    )


def _router_partials_launch(s: LayerShape, split_h: int, block_e: int) -> tuple[Launch, int]:
    """`routing._router_partials_kernel` and the bytes of the partial logits it writes."""
    splits = cdiv(s.hidden, split_h)
    x = s.tokens * s.hidden * s.elem_bytes
    wr = s.experts * s.hidden * s.elem_bytes
    partial = splits * s.tokens * s.experts * _F32
    return Launch("_router_partials_kernel", "routing", (
        # Every expert block reads all of x over its H slice; the router once per block of tokens.
        Access("x_ptr", False, read=cdiv(s.experts, block_e) * x, unique_read=x),
        Access("wr_ptr", True, read=cdiv(s.tokens, PARTIALS_BLOCK_T) * wr, unique_read=wr),
        _same("partial_ptr", write=partial),
    )), partial


def route_launches(s: LayerShape, split: bool | None = None) -> list[Launch]:
    """`routing.route`: one kernel, or (`split`, by default `routing.route_split`) partial logits then a selection."""
    if split is None:
        split = route_split(s.tokens, s.hidden, s.experts, s.elem_bytes)
    if not split:
        return [Launch("_routing_kernel", "routing", (*_route_accesses(s, cdiv(s.tokens, route_block_t(s.tokens))),
                                                      _same("ids_ptr", write=s.routed * _I32)))]
    partials, partial = _router_partials_launch(s, ROUTE_SPLIT_H, ROUTE_SPLIT_BLOCK_E)
    return [partials, Launch("_select_partials_kernel", "routing", (
        _same("partial_ptr", read=partial),
        _same("weights_ptr", write=s.routed * _F32),
        _same("ids_ptr", write=s.routed * _I32),
    ))]


def routing_launches(s: LayerShape, b: Blocks, split: bool | None = None) -> list[Launch]:
    """Routing and alignment as `route_align.route_and_align` dispatches them: split router logits then
    one program for the rest at small sizes, else `route` (`route_launches`; `split` as there) then `align_tokens`
    (itself one program when the N slots fit one chunk, else per-chunk histograms, the layout (one program of
    offsets, or totals then a parallel layout), and a stable scatter)."""
    n = s.routed
    meta = align_meta(n, s.experts, b.block_m, b.tail_m)
    if s.tokens <= ROUTE_ALIGN_MAX_TOKENS and n <= meta["CHUNK"]:
        partials, partial = _router_partials_launch(s, SPLIT_H, SPLIT_BLOCK_E)
        return [
            partials,
            Launch("_route_align_partials_kernel", "routing", (
                _same("partial_ptr", read=partial),
                _same("weights_ptr", write=s.routed * _F32),
                # The ids are stored, then read back by the same program (from cache: no unique read).
                Access("ids_ptr", False, read=n * _I32, write=n * _I32, unique_write=n * _I32),
                *_block_table_accesses(s, b, sorted_ids_write=b.padded_rows * _I32),
                _same("slot_rows_ptr", write=n * _I32),
            )),
        ]
    out = route_launches(s, split)
    if n <= meta["CHUNK"]:
        return out + [Launch("_align_small_kernel", "routing", (
            _same("ids_ptr", read=n * _I32),
            *_block_table_accesses(s, b, sorted_ids_write=b.padded_rows * _I32),
            _same("slot_rows_ptr", write=n * _I32),
        ))]
    table = cdiv(n, meta["CHUNK"]) * meta["BLOCK_E"] * _I32  # [num_chunks, BLOCK_E] int32
    count = Launch("_count_kernel", "routing", (
        _same("ids_ptr", read=n * _I32),
        _same("chunk_counts_ptr", write=table),
    ))
    plan = layout_plan(n, s.experts, b.block_m, b.tail_m)
    if plan["parallel"]:
        programs = plan["block_programs"] + plan["slabs"]
        layout = [
            Launch("_totals_kernel", "routing", (
                _same("chunk_counts_ptr", read=table),
                _same("expert_counts_ptr", write=s.experts * _I32),
            )),
            Launch("_layout_kernel", "routing", (
                # Every program derives the layout from the expert counts; the slab programs read the table once.
                Access("expert_counts_ptr", False, read=programs * s.experts * _I32, unique_read=s.experts * _I32),
                _same("chunk_counts_ptr", read=table),
                _same("chunk_base_ptr", write=table),
                *_block_table_accesses(s, b, sorted_ids_write=(b.padded_rows - n) * _I32, counts=False),
            )),
        ]
    else:
        layout = [Launch("_offsets_kernel", "routing", (
            Access("chunk_counts_ptr", False, read=2 * table, unique_read=table),  # two passes
            _same("chunk_base_ptr", write=table),
            *_block_table_accesses(s, b, sorted_ids_write=(b.padded_rows - n) * _I32),  # the sentinels
        ))]
    return out + [
        count,
        *layout,
        Launch("_scatter_kernel", "routing", (
            _same("ids_ptr", read=n * _I32),
            _same("chunk_base_ptr", read=table),
            _same("sorted_ids_ptr", write=n * _I32),
            _same("slot_rows_ptr", write=n * _I32),
        )),
    ]


def _block_extent(b: Blocks, programs_per_block: int) -> Access:
    """`_gemm_common.block_extent`, read by every program (even those past the used blocks): the used-row count
    without tails, else the block's first row and the next block's (every entry of `block_rows`)."""
    programs = b.max_blocks * programs_per_block
    if not b.uniform:
        return Access("block_rows_ptr", False, read=2 * programs * _I32, unique_read=(b.max_blocks + 1) * _I32)
    return Access("num_post_ptr", False, read=programs * _I32, unique_read=_I32)


def _expert_ids(b: Blocks, programs_per_block: int, cfg: dict, persistent: bool = False) -> Access:
    """`expert_ids` of a grouped GEMM: each used tile reads its block's expert. In expert order (`EXPERT_ORDER`,
    `_gemm_common.tile_of`) every program of a grid over all blocks (every tile of a persistent one) also reads one
    block's expert and the ids of all the grid's blocks (a persistent grid's: the used ones) to find its place."""
    read, unique = b.used_blocks * programs_per_block * _I32, b.used_blocks * _I32
    if cfg.get("EXPERT_ORDER"):
        if persistent:
            read += b.used_blocks * programs_per_block * (1 + b.used_blocks) * _I32
        else:
            read += b.max_blocks * programs_per_block * (1 + b.max_blocks) * _I32
            unique = b.max_blocks * _I32
    return Access("expert_ids_ptr", False, read=read, unique_read=unique)


def _block_metadata(b: Blocks, programs_per_block: int, cfg: dict | None = None) -> tuple[Access, ...]:
    """What every program of a grouped GEMM reads before its tiles: its block's extent (all programs),
    then the used blocks' expert (`_expert_ids`, with the config's tile order) and slot ids."""
    return (
        _block_extent(b, programs_per_block),
        _expert_ids(b, programs_per_block, cfg or {}),
        Access("sorted_ids_ptr", False, read=b.padded_rows * programs_per_block * _I32,
               unique_read=b.padded_rows * _I32),
    )


def gate_up_launch(s: LayerShape, b: Blocks, cfg: dict, *, n: int, fused: bool) -> Launch:
    """`gate_up._gate_up_kernel` over `n` weight rows (fused: n = F gate rows and F up rows).

    Every (M block, N block) program gathers its block's real token rows of x over all of H and
    the expert's weight tile; padding rows are written (as zeros), never read from x."""
    n_blocks = cdiv(n, cfg["BLOCK_N"])
    mats = 2 if fused else 1
    e = s.elem_bytes
    return Launch("_gate_up_kernel", "gate_up", (
        Access("x_ptr", False, read=s.routed * s.hidden * e * n_blocks, unique_read=s.tokens * s.hidden * e),
        Access("w_ptr", True, read=b.used_blocks * mats * n * s.hidden * e,
               unique_read=b.hit_experts * mats * n * s.hidden * e),
        _same("out_ptr", write=b.padded_rows * n * e),
        *_block_metadata(b, n_blocks, cfg),
    ))


def selects_in_gemm(impl: str, s: LayerShape, b: Blocks, config: dict) -> bool:
    """`api.selects_in_gemm` on the model's terms (contiguous weights): one token, the first gate/up GEMM the pointer
    kernel, the slots within the one-program alignment, not the one-kernel decode path, SELECT_IN_GEMM not off."""
    gu = config["gate_up"]
    return (s.tokens == 1 and config.get("SELECT_IN_GEMM", select_default(s.experts))
            and not (impl == "tritonmoe_fused" and config.get("expert"))
            and not gu.get("PERSISTENT") and not wants_descriptors(gu, s.hidden, s.elem_bytes)
            and s.routed <= align_meta(s.routed, s.experts, b.block_m, b.tail_m)["CHUNK"])


def gate_up_select_launch(s: LayerShape, b: Blocks, cfg: dict, partial: int, *, n: int, fused: bool) -> Launch:
    """`gate_up._gate_up_select_kernel`: `gate_up_launch`'s tiles (one block per choice), every program reading all
    the partial logits, and program 0 storing the routing and the alignment tables `route_and_align` would."""
    k = s.routed
    base = gate_up_launch(s, b, cfg, n=n, fused=fused)
    programs = k * cdiv(n, cfg["BLOCK_N"])
    tiles = [a for a in base.accesses if a.buffer in ("x_ptr", "w_ptr", "out_ptr")]
    return Launch("_gate_up_select_kernel", "gate_up", (
        *tiles,
        Access("partial_ptr", False, read=programs * partial, unique_read=partial),
        _same("weights_ptr", write=k * _F32),
        _same("ids_ptr", write=k * _I32),
        *_block_table_accesses(s, b, sorted_ids_write=b.padded_rows * _I32),
        _same("slot_rows_ptr", write=k * _I32),
    ))


def gather_launch(s: LayerShape, b: Blocks) -> Launch:
    """`gate_up._gather_rows_kernel`: every program reads the used-row count; the used ones copy their
    real slots' token rows of x (padding rows written as zeros) into aligned order."""
    e = s.elem_bytes
    programs = cdiv(b.max_rows, GATHER_BLOCK_R)
    return Launch("_gather_rows_kernel", "gate_up", (
        Access("x_ptr", False, read=s.routed * s.hidden * e, unique_read=s.tokens * s.hidden * e),
        Access("num_post_ptr", False, read=programs * _I32, unique_read=_I32),
        _same("sorted_ids_ptr", read=b.padded_rows * _I32),
        _same("out_ptr", write=b.padded_rows * s.hidden * e),
    ))


def gate_up_desc_launch(s: LayerShape, b: Blocks, cfg: dict, *, n: int, fused: bool, row_offset: int = 0) -> Launch:
    """`gate_up._gate_up_desc_kernel`: every (used M block, N block) program reads its BLOCK_M rows of the
    gathered tokens (padding included) over H and its weight boxes; boxes are clipped at H and at the
    matrix ends (fused: F per matrix; plain: 2F), so a plain GEMM over the gate rows with F off BLOCK_N
    also reads the first up rows of its last box."""
    bn = cfg["BLOCK_N"]
    n_blocks = cdiv(n, bn)
    rows = 2 * s.ffn if fused else min(n_blocks * bn, 2 * s.ffn - row_offset)
    e = s.elem_bytes
    return Launch("_gate_up_desc_kernel", "gate_up", (
        Access("a_desc", False, read=b.padded_rows * s.hidden * e * n_blocks, unique_read=b.padded_rows * s.hidden * e),
        Access("w_desc", True, read=b.used_blocks * rows * s.hidden * e, unique_read=b.hit_experts * rows * s.hidden * e),
        _same("out_ptr", write=b.padded_rows * n * e),
        _block_extent(b, n_blocks),
        _expert_ids(b, n_blocks, cfg),
    ))


def gate_up_persistent_launch(s: LayerShape, b: Blocks, cfg: dict, *, n: int, fused: bool, row_offset: int = 0,
                              sms: int = INTERPRETER_PROGRAMS, gather: bool = False) -> Launch:
    """`gate_up._gate_up_persistent_kernel` (`PERSISTENT`, no tail blocks): the bytes of `gate_up_desc_launch`, except
    that each of its min(sms, tiles) programs reads the used-row count once (not every tile program), and the tile
    leaves through the output's descriptor (`out_desc`: the same bytes whether stored by TMA or by pointers).
    `gather` (`PERSISTENT` without `DESC`): `gate_up._gate_up_persistent_gather_kernel`, whose used tiles read their
    block's slot ids and their real slots' token rows of x over H (as `_gate_up_kernel`) instead of gathered rows."""
    bn = cfg["BLOCK_N"]
    n_blocks = cdiv(n, bn)
    rows = 2 * s.ffn if fused else min(n_blocks * bn, 2 * s.ffn - row_offset)
    e = s.elem_bytes
    programs = max(1, min(sms, b.max_blocks * n_blocks))
    if gather:
        tokens = (
            Access("x_ptr", False, read=s.routed * s.hidden * e * n_blocks, unique_read=s.tokens * s.hidden * e),
            Access("sorted_ids_ptr", False, read=b.padded_rows * n_blocks * _I32, unique_read=b.padded_rows * _I32),
        )
    else:
        tokens = (Access("a_desc", False, read=b.padded_rows * s.hidden * e * n_blocks,
                         unique_read=b.padded_rows * s.hidden * e),)
    return Launch("_gate_up_persistent_gather_kernel" if gather else "_gate_up_persistent_kernel", "gate_up", (
        *tokens,
        Access("w_desc", True, read=b.used_blocks * rows * s.hidden * e, unique_read=b.hit_experts * rows * s.hidden * e),
        _same("out_desc", write=b.padded_rows * n * e),
        Access("num_post_ptr", False, read=programs * _I32, unique_read=_I32),
        _expert_ids(b, n_blocks, cfg, persistent=True),
    ))


def gate_up_persistent_ext_launch(s: LayerShape, b: Blocks, cfg: dict, *, n: int, fused: bool, row_offset: int = 0,
                                  sms: int = INTERPRETER_PROGRAMS) -> Launch:
    """`gate_up._gate_up_persistent_ext_kernel` (`PERSISTENT` without `DESC`, extended last blocks): the tokens and
    weights of the gathering persistent kernel (an extended block's tile reads its TAIL_M rows' slots and tokens and
    one weight box per K step), the output stored by pointers, and `block_rows` instead of the used-row count: each of
    the min(sms, tiles) programs reads all max_blocks + 1 entries once to count the used blocks, each tile its
    block's two."""
    bn = cfg["BLOCK_N"]
    n_blocks = cdiv(n, bn)
    rows = 2 * s.ffn if fused else min(n_blocks * bn, 2 * s.ffn - row_offset)
    e = s.elem_bytes
    programs = max(1, min(sms, b.max_blocks * n_blocks))
    tiles = b.used_blocks * n_blocks
    return Launch("_gate_up_persistent_ext_kernel", "gate_up", (
        Access("x_ptr", False, read=s.routed * s.hidden * e * n_blocks, unique_read=s.tokens * s.hidden * e),
        Access("sorted_ids_ptr", False, read=b.padded_rows * n_blocks * _I32, unique_read=b.padded_rows * _I32),
        Access("w_desc", True, read=b.used_blocks * rows * s.hidden * e, unique_read=b.hit_experts * rows * s.hidden * e),
        _same("out_ptr", write=b.padded_rows * n * e),
        Access("block_rows_ptr", False, read=(programs * (b.max_blocks + 1) + 2 * tiles) * _I32,
               unique_read=(b.max_blocks + 1) * _I32),
        _expert_ids(b, n_blocks, cfg, persistent=True),
    ))


def swiglu_launch(s: LayerShape, b: Blocks) -> Launch:
    """`swiglu._swiglu_kernel`: gate and up of the used rows in, act out."""
    block_f = max(16, min(256, 8192 // b.block_m, next_power_of_2(s.ffn)))
    programs = cdiv(b.max_rows, b.block_m) * cdiv(s.ffn, block_f)
    rows = b.padded_rows * s.ffn * s.elem_bytes
    return Launch("_swiglu_kernel", "act", (
        _same("gate_ptr", read=rows),
        _same("up_ptr", read=rows),
        _same("out_ptr", write=rows),
        Access("num_post_ptr", False, read=programs * _I32, unique_read=_I32),
    ))


def down_splits(s: LayerShape, cfg_down: dict) -> int:
    """The number of F splits `down.down` launches (SPLIT_K after rounding to BLOCK_K)."""
    split_k = max(1, int(cfg_down.get("SPLIT_K", 1)))
    k_per_split = cdiv(cdiv(s.ffn, split_k), cfg_down["BLOCK_K"]) * cfg_down["BLOCK_K"]
    return cdiv(s.ffn, k_per_split)


def down_partial_bytes(s: LayerShape, splits: int) -> int:
    """Bytes of a partial element: final rows (one split) in the input dtype, split sums in fp32."""
    return s.elem_bytes if splits == 1 else _F32


def down_launch(s: LayerShape, b: Blocks, cfg_down: dict) -> Launch:
    """`down._down_kernel`: every (M block, H block, F split) program reads all BLOCK_M rows of act
    (padding included) over its split; partial rows are written for real slots only. The descriptor
    kernel (`_down_desc_kernel`) moves the same bytes (its boxes are clipped at F and H)."""
    h_blocks = cdiv(s.hidden, cfg_down["BLOCK_N"])
    splits = down_splits(s, cfg_down)
    e = s.elem_bytes
    desc = wants_descriptors(cfg_down, s.ffn, s.elem_bytes)  # `down.uses_descriptors`, contiguous weights
    return Launch("_down_desc_kernel" if desc else "_down_kernel", "down", (
        Access("a_desc" if desc else "a_ptr", False, read=b.padded_rows * s.ffn * e * h_blocks, unique_read=b.padded_rows * s.ffn * e),
        Access("w_desc" if desc else "w_ptr", True, read=b.used_blocks * s.hidden * s.ffn * e,
               unique_read=b.hit_experts * s.hidden * s.ffn * e),
        _same("partial_ptr", write=splits * s.routed * s.hidden * down_partial_bytes(s, splits)),
        Access("topk_weights_ptr", False, read=s.routed * h_blocks * splits * _F32, unique_read=s.routed * _F32),
        *_block_metadata(b, h_blocks * splits, cfg_down),
    ))


def fused_expert_launch(s: LayerShape, b: Blocks, cfg_expert: dict) -> Launch:
    """`fused_expert._fused_expert_kernel` (decode): every (M block, F chunk) program gathers its
    block's token rows of x over H, the chunk's gate and up rows and the matching [H, BLOCK_F] slice
    of the down weights, and writes the fp32 partial rows of its real slots for that chunk."""
    chunks = cdiv(s.ffn, cfg_expert["BLOCK_F"])
    e = s.elem_bytes
    return Launch("_fused_expert_kernel", KERNEL_STAGES["_fused_expert_kernel"], (
        Access("x_ptr", False, read=s.routed * s.hidden * e * chunks, unique_read=s.tokens * s.hidden * e),
        Access("wgu_ptr", True, read=b.used_blocks * 2 * s.ffn * s.hidden * e,
               unique_read=b.hit_experts * 2 * s.ffn * s.hidden * e),
        Access("wd_ptr", True, read=b.used_blocks * s.hidden * s.ffn * e,
               unique_read=b.hit_experts * s.hidden * s.ffn * e),
        _same("partial_ptr", write=chunks * s.routed * s.hidden * _F32),
        Access("topk_weights_ptr", False, read=s.routed * chunks * _F32, unique_read=s.routed * _F32),
        *_block_metadata(b, chunks),
    ))


def fused_expert_chunks(s: LayerShape, cfg_expert: dict) -> int:
    return cdiv(s.ffn, cfg_expert["BLOCK_F"])


def down_combine_launch(s: LayerShape, b: Blocks, cfg_down: dict) -> Launch:
    """`down._down_combine_kernel`: every (H block, token) program reads, for each of the token's K choices, the
    choice's act row over F (found through `slot_rows`; padding rows never read) and the [BLOCK_N, F] slice of its
    expert's down weights, and writes its columns of y."""
    h_blocks = cdiv(s.hidden, cfg_down["BLOCK_N"])
    e = s.elem_bytes
    return Launch("_down_combine_kernel", "down", (
        Access("act_ptr", False, read=s.routed * s.ffn * e * h_blocks, unique_read=s.routed * s.ffn * e),
        Access("w_ptr", True, read=s.routed * s.hidden * s.ffn * e, unique_read=b.hit_experts * s.hidden * s.ffn * e),
        Access("topk_weights_ptr", False, read=s.routed * h_blocks * _F32, unique_read=s.routed * _F32),
        Access("topk_ids_ptr", False, read=s.routed * h_blocks * _I32, unique_read=s.routed * _I32),
        Access("slot_rows_ptr", False, read=s.routed * h_blocks * _I32, unique_read=s.routed * _I32),
        _same("y_ptr", write=s.tokens * s.hidden * e),
    ))


def combine_launch(s: LayerShape, splits: int, partial_bytes: int) -> Launch:
    """`down._combine_kernel`: sums the splits x K partial rows of each token into y."""
    return Launch("_combine_kernel", "combine", (
        _same("partial_ptr", read=splits * s.routed * s.hidden * partial_bytes),
        _same("y_ptr", write=s.tokens * s.hidden * s.elem_bytes),
    ))


def _act_launches(impl: str, s: LayerShape, b: Blocks, cfg: dict, sms: int = INTERPRETER_PROGRAMS,
                  select_partial: int | None = None) -> list[Launch]:
    """The variant-specific part (`tritonmoe.variants`); with `select_partial` (the bytes of the router's partial
    logits) its first GEMM makes the routing choice (`selects_in_gemm`)."""
    gu, F = cfg["gate_up"], s.ffn
    if select_partial is not None:
        first = functools.partial(gate_up_select_launch, s, b, gu, select_partial)
        if impl == "tritonmoe_fused":
            return [first(n=F, fused=True)]
        if impl == "tritonmoe_w13":
            return [first(n=2 * F, fused=False), swiglu_launch(s, b)]
        if impl == "tritonmoe_unfused":
            return [first(n=F, fused=False), gate_up_launch(s, b, gu, n=F, fused=False), swiglu_launch(s, b)]
    if wants_descriptors(gu, s.hidden, s.elem_bytes):  # `gate_up.uses_descriptors`; one gather of the tokens, shared by the GEMMs of the variant
        if gu.get("PERSISTENT") and b.uniform:  # `gate_up.uses_persistent`
            def gemm(n, fused, row_offset=0):
                return gate_up_persistent_launch(s, b, gu, n=n, fused=fused, row_offset=row_offset, sms=sms)
        else:
            def gemm(n, fused, row_offset=0):
                return gate_up_desc_launch(s, b, gu, n=n, fused=fused, row_offset=row_offset)
        if impl == "tritonmoe_fused":
            return [gather_launch(s, b), gemm(F, True)]
        if impl == "tritonmoe_w13":
            return [gather_launch(s, b), gemm(2 * F, False), swiglu_launch(s, b)]
        if impl == "tritonmoe_unfused":
            return [gather_launch(s, b), gemm(F, False), gemm(F, False, F), swiglu_launch(s, b)]
    if gu.get("PERSISTENT") and b.uniform:  # `gate_up.uses_persistent_gather` (contiguous weights)
        def gemm(n, fused, row_offset=0):
            return gate_up_persistent_launch(s, b, gu, n=n, fused=fused, row_offset=row_offset, sms=sms, gather=True)
    elif gu.get("PERSISTENT") and b.has_ext:  # `gate_up._gate_up_persistent_ext_kernel` (contiguous weights)
        def gemm(n, fused, row_offset=0):
            return gate_up_persistent_ext_launch(s, b, gu, n=n, fused=fused, row_offset=row_offset, sms=sms)
    else:
        def gemm(n, fused, row_offset=0):
            return gate_up_launch(s, b, gu, n=n, fused=fused)
    if impl == "tritonmoe_fused":
        return [gemm(F, True)]
    if impl == "tritonmoe_w13":
        return [gemm(2 * F, False), swiglu_launch(s, b)]
    if impl == "tritonmoe_unfused":
        return [gemm(F, False), gemm(F, False, F), swiglu_launch(s, b)]
    raise ValueError(f"impl: expected one of {TRITON_IMPLS}, got {impl!r}")


def launches(impl: str, shape: LayerShape, expert_counts, config: dict, *, sms: int = INTERPRETER_PROGRAMS) -> list[Launch]:
    """The kernel launches of `tritonmoe.moe(..., impl=impl)`, in order, with their bytes.

    `expert_counts[e]` is the number of routed slots of expert e (sum T*K); `config` is the layer
    config the call resolves (`tritonmoe.api.resolve_config`; `gpu_config` for a GPU's defaults).
    Peers (`PEER_IMPLS`) get their ideal-kernel model (`peer_launches`). `sms` is the program count of the
    persistent GEMMs (one per SM on a GPU; `gate_up.INTERPRETER_PROGRAMS` in the interpreter), which sets how often
    they read the used-row count."""
    if impl in PEER_IMPLS:
        return peer_launches(impl, shape, expert_counts)
    if impl not in TRITON_IMPLS:
        raise ValueError(f"impl: expected one of {TRITON_IMPLS + PEER_IMPLS}, got {impl!r}")
    blocks = Blocks.from_counts(shape, expert_counts, config["BLOCK_M"], tail_of(config))
    return _triton_launches(impl, shape, blocks, config, sms)


def _triton_launches(impl: str, shape: LayerShape, b: Blocks, config: dict,
                     sms: int = INTERPRETER_PROGRAMS) -> list[Launch]:
    if impl == "tritonmoe_fused" and config.get("expert"):  # the decode path (`api._experts_aligned`)
        return [
            *routing_launches(shape, b, config.get("ROUTE_SPLIT")),
            fused_expert_launch(shape, b, config["expert"]),
            combine_launch(shape, fused_expert_chunks(shape, config["expert"]), _F32),
        ]
    if selects_in_gemm(impl, shape, b, config):  # one token: the routing choice inside the first GEMM
        partials, partial = _router_partials_launch(shape, SPLIT_H, SPLIT_BLOCK_E)
        head = [partials, *_act_launches(impl, shape, b, config, sms, select_partial=partial)]
    else:
        head = [*routing_launches(shape, b, config.get("ROUTE_SPLIT")), *_act_launches(impl, shape, b, config, sms)]
    down_cfg = config["down"]
    if down_cfg.get("COMBINE"):  # few tokens: each token's choices summed by the down kernel
        return [*head, down_combine_launch(shape, b, down_cfg)]
    splits = down_splits(shape, down_cfg)
    return [*head, down_launch(shape, b, down_cfg), combine_launch(shape, splits, down_partial_bytes(shape, splits))]


# --- peers: ideal kernels of their designs --------------------------------------------------------

def _ideal(kernel: str, stage: str, *, weight_read: int = 0, read: int = 0, write: int = 0) -> Launch:
    acc = [_same("activations", read=read, write=write)]
    if weight_read:
        acc.append(_same("weights", weight=True, read=weight_read))
    return Launch(kernel, stage, tuple(acc))


def peer_launches(impl: str, s: LayerShape, expert_counts) -> list[Launch]:
    """Ideal-kernel models of the peers: no padding, each op reads its inputs once, writes once.

    Both: router GEMM + softmax/top-k (x and router weight in; ids and fp32 weights out), a sort
    of the N ids (ids in; sorted slot order and per-expert offsets out), a gather of x into
    expert order (T rows in, N rows out), grouped GEMMs over the hit experts' weights, SwiGLU in
    PyTorch as two elementwise ops (silu(gate), then times up), and a weighted scatter-combine
    (N rows and weights in, T rows out).
    - megablocks_grouped: separate gate (w1) and up (v1) GEMMs, each writing [N, F].
    - torch_grouped_mm: one GEMM over the concatenated gate|up weights writing [N, 2F].
    """
    if impl not in PEER_IMPLS:
        raise ValueError(f"impl: expected one of {PEER_IMPLS}, got {impl!r}")
    T, H, F, E, N, e = s.tokens, s.hidden, s.ffn, s.experts, s.routed, s.elem_bytes
    hit = sum(1 for c in expert_counts if int(c) > 0)
    if len(tuple(expert_counts)) != E or sum(int(c) for c in expert_counts) != N:
        raise ValueError(f"expert_counts: expected {E} counts summing to T*K = {N}")
    out = [
        _ideal("router", "routing", weight_read=E * H * e, read=T * H * e, write=N * (_F32 + _I32)),
        _ideal("sort", "routing", read=N * _I32, write=2 * N * _I32 + E * _I32),
        _ideal("gather", "gate_up", read=T * H * e + N * _I32, write=N * H * e),
    ]
    if impl == "megablocks_grouped":
        out += [_ideal("gmm_w1", "gate_up", weight_read=hit * F * H * e, read=N * H * e, write=N * F * e),
                _ideal("gmm_v1", "gate_up", weight_read=hit * F * H * e, read=N * H * e, write=N * F * e)]
    else:
        out += [_ideal("grouped_mm_gate_up", "gate_up", weight_read=hit * 2 * F * H * e, read=N * H * e,
                       write=N * 2 * F * e)]
    out += [
        _ideal("silu", "act", read=N * F * e, write=N * F * e),
        _ideal("mul", "act", read=2 * N * F * e, write=N * F * e),
        _ideal("grouped_mm_down", "down", weight_read=hit * H * F * e, read=N * F * e, write=N * H * e),
        _ideal("scatter_combine", "combine", read=N * H * e + N * (_F32 + _I32), write=T * H * e),
    ]
    return out


# --- sums ------------------------------------------------------------------------------------------

def stage_traffic(launch_list: list[Launch], flavour: str = "logical") -> dict[str, Traffic]:
    """Bytes per stage (`STAGES`, every one present, zero where no kernel runs) and 'total'."""
    _check_flavour(flavour)
    out = {stage: Traffic() for stage in STAGES}
    for launch in launch_list:
        out[launch.stage] = out[launch.stage] + launch.traffic(flavour)
    total = Traffic()
    for stage in STAGES:
        total = total + out[stage]
    out["total"] = total
    return out


def padding_bytes(impl: str, shape: LayerShape, expert_counts, config: dict, flavour: str = "unique") -> dict[str, int]:
    """Bytes per stage (and 'total') the BLOCK_M padding rows cost a Triton variant: its model minus
    the same model with num_post_padded = T*K (same blocks, no padding rows); 0 for peers."""
    if impl not in TRITON_IMPLS:
        return {stage: 0 for stage in (*STAGES, "total")}
    b = Blocks.from_counts(shape, expert_counts, config["BLOCK_M"], tail_of(config))
    unpadded = copy.copy(b)
    object.__setattr__(unpadded, "padded_rows", shape.routed)
    padded = stage_traffic(_triton_launches(impl, shape, b, config), flavour)
    bare = stage_traffic(_triton_launches(impl, shape, unpadded, config), flavour)
    return {stage: padded[stage].total - bare[stage].total for stage in padded}


def fewest_bytes(shape: LayerShape, expert_counts) -> int:
    """The floor's fewest bytes (CONTRACTS.md): the hit experts' weights + x read once + y written once."""
    hit = sum(1 for c in expert_counts if int(c) > 0)
    s = shape
    return (hit * 3 * s.ffn * s.hidden + 2 * s.tokens * s.hidden) * s.elem_bytes


def gpu_config(shape: LayerShape, backend: str = "cuda") -> dict:
    """The default launch config a GPU call of this shape resolves when no tuned file matches."""
    return default_config(backend, shape.routed, shape.experts, shape.hidden, shape.ffn)


def fusion_saving(shape: LayerShape, expert_counts, config: dict, *, baseline: str = "tritonmoe_unfused",
                  flavour: str = "unique", weights: bool = True) -> tuple[int, float]:
    """(bytes saved by `tritonmoe_fused` against `baseline`, share of the baseline's total).

    `weights=False` counts activations only (the preprint's accounting)."""
    base = stage_traffic(launches(baseline, shape, expert_counts, config), flavour)["total"]
    fused = stage_traffic(launches("tritonmoe_fused", shape, expert_counts, config), flavour)["total"]
    b, f = (base.total, fused.total) if weights else (base.act_total, fused.act_total)
    return b - f, (b - f) / b
