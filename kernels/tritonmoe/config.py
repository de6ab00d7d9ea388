"""Launch configurations: block sizes, warps and pipeline depth per backend.

`layer_config(...)` returns one dict per layer call:
`{"BLOCK_M": .., "gate_up": {BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages}, "down": {..., SPLIT_K}}`.
BLOCK_M is shared by the alignment and both GEMMs. Tuned data files (`configs/`) take precedence
over the per-backend defaults here; see `tritonmoe.tuned`.

Optional keys: `"DESC": True` in `gate_up` or `down` feeds that GEMM through tensor descriptors (TMA boxes on
Hopper; other backends lower them to loads): the tokens are gathered once into aligned order and, in the fused
GEMM, the gate and up tiles come as one box (`tritonmoe.gate_up`). It applies where the tensors allow it
(contiguous weights, 16-byte rows), else the pointer kernel runs. The defaults leave it off; the tuner turns it
on per shape and token bucket where it wins (H100: the Mixtral shapes from ~512 tokens). An `"expert"` entry
sends `tritonmoe_fused` down the one-kernel decode path (`tritonmoe.fused_expert`). A top-level `"TAIL_M"`
(a power of two, 16 <= TAIL_M < BLOCK_M) gives each expert's rest tail blocks of TAIL_M rows instead of one more
BLOCK_M block (`tritonmoe.align`); both GEMMs then run their tile at both heights. The tuner sets it where it wins.
`"TAIL_M"` above BLOCK_M (BLOCK_M plus a power of two of at least 16 and below BLOCK_M; `with_ext`) instead extends an
expert's last full block by a rest of up to TAIL_M - BLOCK_M rows: both GEMMs compute that block as two token tiles
against each weight tile, and a persistent gate/up walks blocks of both heights (`_gate_up_persistent_ext_kernel`).
`"PERSISTENT": True` in `gate_up` runs that GEMM as a persistent grid (`tritonmoe.gate_up`; one program per SM,
descriptor store of each tile; alignments with tail blocks fall back to one program per tile): beside `"DESC"` on the
gathered copy of the tokens, without it gathering the tokens inside the loop (weights still by descriptor boxes).
`"EXPERT_ORDER": True` in `gate_up` or `down` runs that GEMM's tiles expert by expert, GROUP_M row blocks at a time
within each expert (`tritonmoe._gemm_common.tile_of`), instead of GROUP_M row blocks at a time over all experts.
`"COMBINE": True` in `down` (with BLOCK_N, BLOCK_K, num_warps, num_stages) computes the down projection and the combine
in one launch, a program per token and block of H (`tritonmoe.down.down_combine`; for few tokens). A top-level
`"ROUTE_SPLIT"` (bool) overrides `tritonmoe.routing.route_split`, the choice of reading the router through partial
logits over many programs then a selection launch instead of one kernel whose programs each read all of it.
A top-level `"SELECT_IN_GEMM"` (bool; by default true up to `route_align.SELECT_MAX_EXPERTS` experts) lets one token's
routing choice be made inside the first gate/up GEMM where that GEMM is the pointer kernel
(`tritonmoe.route_align.prepare_selection`); false keeps the separate routing-and-alignment launch.
"""
from __future__ import annotations

import torch

from ._host import cdiv
from ._validate import interpreter_active


def tail_of(cfg: dict) -> int | None:
    """The config's tail-block height (`TAIL_M`), or None: no tails (also on the one-kernel decode path)."""
    return None if cfg.get("expert") else cfg.get("TAIL_M")


def backend_of(device: torch.device) -> str:
    """'interpreter', 'cuda' or 'hip'."""
    if device.type == "cpu" or interpreter_active():
        return "interpreter"
    return "hip" if torch.version.hip else "cuda"


def _interpreter_config(num_routed: int, E: int, H: int, F: int) -> dict:
    # Small tiles: every program is Python; masks on every edge get exercised. Few slots take the
    # one-kernel decode path of tritonmoe_fused, so both paths are tested.
    cfg = {
        "BLOCK_M": 16,
        "gate_up": {"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2},
        "down": {"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "SPLIT_K": 2},
    }
    if num_routed <= DECODE_MAX_ROUTED:
        cfg["expert"] = {"BLOCK_F": 16, "BLOCK_K": 16, "BLOCK_H": 16}
    return cfg


# Routed slots (T*K) up to which the interpreter defaults take the one-kernel decode path of tritonmoe_fused
# (on GPUs only tuned files select it).
DECODE_MAX_ROUTED = 16


def _gpu_config(num_routed: int, E: int, H: int, F: int, backend: str) -> dict:
    per_expert = num_routed / max(1, min(E, num_routed))
    stages = 2 if backend == "hip" else 4
    if per_expert <= 16:
        bm = 16
    elif per_expert <= 64:
        bm = 32
    elif per_expert <= 256:
        bm = 64
    else:
        bm = 128
    if bm <= 32:
        gu = {"BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": stages}
        dn = {"BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": stages}
    elif bm == 64:
        gu = {"BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": stages}
        dn = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": stages}
    else:
        gu = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3 if backend == "cuda" else 2}
        dn = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3 if backend == "cuda" else 2}
    # Split the down projection's F so that the used blocks fill the machine.
    blocks = max(1, num_routed // bm + min(E, num_routed))
    tiles = blocks * cdiv(H, dn["BLOCK_N"])
    split = 1
    while tiles * split < 264 and F // (split * 2) >= 4 * dn["BLOCK_K"] and split < 16:
        split *= 2
    dn["SPLIT_K"] = split
    # The one-kernel decode path is left to the tuner (tuned files): it wins on some shapes only.
    return {"BLOCK_M": bm, "gate_up": gu, "down": dn}


# Shared memory the pipelined tiles may take (H100: 227 KB a block; MI300X: 64 KB LDS, where 2 stages fit).
SMEM_BUDGET = 200 * 1024


def fit_shared_memory(cfg: dict, elem_bytes: int, budget: int = SMEM_BUDGET, stages_first: bool = False) -> dict:
    """Halves BLOCK_K, then drops pipeline stages, until each GEMM's staged tiles (and the persistent gate/up's output
    tile) fit `budget` bytes (the defaults are sized for 2-byte inputs; fp32 needs twice the room). `stages_first`:
    drops stages down to two before halving BLOCK_K (for a tile that grew taller, whose K step the tuner chose)."""
    bm = cfg["BLOCK_M"]
    ext = cfg.get("TAIL_M", bm) > bm  # extended last blocks: their tile stages TAIL_M token rows, stores by pointers
    rows = cfg["TAIL_M"] if ext else bm
    out = {**cfg}
    for stage, b_tiles in (("gate_up", 2), ("down", 1), ("expert", 2)):
        if stage not in cfg:
            continue
        c = {**cfg[stage]}
        bn = c.get("BLOCK_N", c.get("BLOCK_F"))

        def need(c):
            # The persistent gate/up also stages its output tile for the descriptor store.
            store = bm * bn * elem_bytes if c.get("PERSISTENT") and not ext else 0
            return c.get("num_stages", 2) * c["BLOCK_K"] * (rows + b_tiles * bn) * elem_bytes + store
        while stages_first and need(c) > budget and c.get("num_stages", 2) > 2:
            c["num_stages"] = c.get("num_stages", 2) - 1
        while need(c) > budget and c["BLOCK_K"] > 32:
            c["BLOCK_K"] //= 2
        while need(c) > budget and c.get("num_stages", 2) > 1:
            c["num_stages"] = c.get("num_stages", 2) - 1
        out[stage] = c
    return out


def with_tails(cfg: dict, tail_m: int, block_m: int | None = None, elem_bytes: int = 2) -> dict:
    """`cfg` with tail blocks of `tail_m` rows (see `tritonmoe.align`) and, given `block_m`, blocks of that height;
    a new block height refits the tiles to shared memory (`fit_shared_memory`), a tail alone changes no tile. The
    one rule behind the tuner's tail variants (`experiments/bench/tune.py`) and the borrowed configs' guard
    (`tritonmoe.tuned.skew_guard`)."""
    if block_m is None or block_m == cfg["BLOCK_M"]:
        return {**cfg, "TAIL_M": tail_m}
    return fit_shared_memory({**cfg, "BLOCK_M": block_m, "TAIL_M": tail_m}, elem_bytes)


def with_ext(cfg: dict, ext_m: int, elem_bytes: int = 2) -> dict:
    """`cfg` with extended last blocks of BLOCK_M + `ext_m` rows (`TAIL_M`, see `tritonmoe.align`), its tiles refit to
    shared memory for the taller token tile (`fit_shared_memory`, fewer stages before a shorter K step)."""
    return fit_shared_memory({**cfg, "TAIL_M": cfg["BLOCK_M"] + ext_m}, elem_bytes, stages_first=True)


def with_expert_order(cfg: dict, gemms: tuple[str, ...] = ("gate_up", "down"), group_m: int | None = None) -> dict:
    """`cfg` with the tiles of the named GEMMs in expert order (`EXPERT_ORDER`) and, given `group_m`, their GROUP_M
    set. The one rule behind the tuner's order variants (`experiments/bench/tune.py`), its lab and the tests."""
    extra = {"EXPERT_ORDER": True, **({} if group_m is None else {"GROUP_M": group_m})}
    return {**cfg, **{g: {**cfg[g], **extra} for g in gemms}}


def default_config(backend: str, num_routed: int, E: int, H: int, F: int, elem_bytes: int = 2) -> dict:
    if backend == "interpreter":
        return _interpreter_config(num_routed, E, H, F)
    return fit_shared_memory(_gpu_config(num_routed, E, H, F, backend), elem_bytes)
