"""Lab kernel (not in the package): the whole layer in one persistent launch for decode, with grid barriers.

Measured in session 6 (runs 1-5, `decode_lab.py`, H100) against the tuned two-GEMM path and not kept: it ties or
loses at T=1-2 on qwen3-30b-a3b, olmoe-1b-7b, mixtral-8x7b, deepseek-v3 and qwen2-moe-57b (experiments/NOTES.md, v8).

At one or two tokens the layer streams the hit experts' weights (25 us on qwen3-30b-a3b) and the rest is
overhead: the five launches of the two-GEMM path each ramp up and drain (session 5 measured ~12 us of the
52 us qwen3 T=1 layer between its kernels), and routing plus alignment took 8 us in two launches. Here one
grid of `programs` (one per SM) runs three phases separated by grid-wide barriers:

0. router logits: (expert block, H split) items, partial logits written to `logits [S, T, E]` (fp32);
1. every program sums the splits in one fixed order and runs the top-k itself (the same inputs and code in
   every program give the same choice, so nobody waits for a broadcast); then (slot, F block) items compute
   `silu(x Wg^T) * (x Wu^T)` from one load of x per K step (the fusion) into `act [T*K, F]`;
2. (H block, slot) items compute `act @ Wd^T` into fp32 `part [T*K, H]`; the last item of each H block to finish
   (a counter per block) sums that block's top-k rows with the routing weights, in the fixed order k = 0..K-1,
   and writes `y`. Results do not depend on which program finishes last: the output is deterministic.

No alignment is built: at these sizes the slot list is the work list. An expert chosen by several tokens is
read once: the item of its first slot computes the rows of every token that chose it (a 16-row dot), the items
of its other slots only check in at the counter.

The barriers spin on counters in `sync` (global atomics, acquire/release at GPU scope), so every program must be
resident at once: the grid is at most one program per SM and the launch is cooperative (the driver refuses a grid
that cannot be co-resident instead of letting it hang). Counters are left at zero and the generation counter only
grows, so a call needs no reset. Triton's interpreter runs programs one after another, where a spinning barrier
would never return: there each phase is its own launch (`PHASE` 0, 1, 2), which runs the same item code; the GPU
tests compare the barrier launch with the phased one.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from tritonmoe._gemm_common import dot_precision, gate_up_accumulate
from tritonmoe._validate import interpreter_active
from tritonmoe.routing import router_logits, topk_softmax

# Largest T this path takes: the top-k runs in every program, on [next_pow2(T), E] tiles.
MAX_TOKENS = 8
# Router work items: SPLIT_BLOCK_E experts x SPLIT_H columns of H.
SPLIT_H = 256
SPLIT_BLOCK_E = 16
# Elements of the [BLOCK_S, BLOCK_T, BLOCK_E] tile of split logits summed at once.
_SPLIT_TILE = 2048


@triton.jit
def _grid_sync(sync_ptr, gen, num_programs):
    """Barrier of all programs (all resident): arrive on sync[0]; the last to arrive resets it and advances the
    generation sync[1]; the others wait until the generation moves past `gen` (the value it had when the
    barrier began, read by each program before it arrived)."""
    tl.debug_barrier()
    old = tl.atomic_add(sync_ptr, 1, sem="acq_rel", scope="gpu")
    if old == num_programs - 1:
        tl.atomic_xchg(sync_ptr, 0, sem="relaxed", scope="gpu")
        tl.atomic_add(sync_ptr + 1, 1, sem="release", scope="gpu")
    else:
        cur = tl.atomic_add(sync_ptr + 1, 0, sem="acquire", scope="gpu")
        while cur == gen:
            cur = tl.atomic_add(sync_ptr + 1, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _stamp(timing_ptr, pid, i: tl.constexpr, TIMING: tl.constexpr):
    """Lab instrumentation (`TIMING`, GPU only): the global nanosecond timer at point i of program pid."""
    if TIMING:
        tl.debug_barrier()
        now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
        tl.store(timing_ptr + pid * 8 + i, now)


@triton.jit
def _slot_rows(ids, slot_ok, s, TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
    """For slot s (token s // TOP_K, choice s % TOP_K): its expert, whether s is that expert's first slot, and
    per dot row r (token r) whether token r chose the expert and the slot holding that choice."""
    ts = tl.arange(0, BLOCK_T)
    ks = tl.arange(0, BLOCK_K)
    flat = ts[:, None] * TOP_K + ks[None, :]
    expert = tl.sum(tl.where(slot_ok & (flat == s), ids, 0))
    match = slot_ok & (ids == expert)
    first = tl.min(tl.where(match, flat, 1 << 30)) == s
    chose = tl.max(match.to(tl.int32), axis=1)
    slot_t = ts * TOP_K + tl.sum(tl.where(match, ks[None, :], 0), axis=1)
    rows = tl.arange(0, 16)
    same = rows[:, None] == ts[None, :]
    row_ok = tl.sum(tl.where(same, chose[None, :], 0), axis=1) > 0
    row_slot = tl.sum(tl.where(same, slot_t[None, :], 0), axis=1)
    return expert.to(tl.int64), first, row_ok, row_slot


@triton.jit
def _decode_layer_kernel(
    x_ptr, wr_ptr, wgu_ptr, wd_ptr, logit_ptr, act_ptr, part_ptr, y_ptr, w_out_ptr, id_out_ptr, sync_ptr,
    timing_ptr, T, H, E, F, num_splits,
    stride_xt, stride_xh, stride_re, stride_rh, stride_ge, stride_gn, stride_gh,
    stride_de, stride_dh, stride_df, stride_yt, stride_yh,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, PHASE: tl.constexpr, PRECISION: tl.constexpr,
    EVEN_H: tl.constexpr, EVEN_F: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
    SPLIT_H: tl.constexpr, SPLIT_BLOCK_E: tl.constexpr, BLOCK_RH: tl.constexpr,
    BLOCK_F: tl.constexpr, BLOCK_KG: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_KD: tl.constexpr,
    PRELOAD: tl.constexpr, TIMING: tl.constexpr = False,
):
    pid = tl.program_id(0)
    _stamp(timing_ptr, pid, 0, TIMING)
    num_programs = tl.num_programs(0)
    rows16 = tl.arange(0, 16)
    if PHASE == -1:
        gen = tl.atomic_add(sync_ptr + 1, 0, sem="acquire", scope="gpu")

    # Phase 0: partial router logits, logit[s, t, e] over H columns [s*SPLIT_H, (s+1)*SPLIT_H).
    if PHASE == -1 or PHASE == 0:
        num_eb = tl.cdiv(E, SPLIT_BLOCK_E)
        for item in range(pid, num_eb * num_splits, num_programs):
            s = item // num_eb
            cols = (item % num_eb) * SPLIT_BLOCK_E + tl.arange(0, SPLIT_BLOCK_E)
            h_start = s * SPLIT_H
            logits = router_logits(x_ptr, wr_ptr, rows16, cols, T, E, h_start, tl.minimum(h_start + SPLIT_H, H),
                                   stride_xt, stride_xh, stride_re, stride_rh, 16, BLOCK_RH, SPLIT_BLOCK_E)
            offs = (s * T + rows16[:, None]).to(tl.int64) * E + cols[None, :]
            tl.store(logit_ptr + offs, logits, mask=(rows16[:, None] < T) & (cols[None, :] < E))
    _stamp(timing_ptr, pid, 1, TIMING)
    if PHASE == -1:
        _grid_sync(sync_ptr, gen, num_programs)
    _stamp(timing_ptr, pid, 2, TIMING)

    if PHASE != 0:
        # Every program: the splits summed in one fixed order, then the top-k (identical in every program).
        ts = tl.arange(0, BLOCK_T)
        es = tl.arange(0, BLOCK_E)
        ss = tl.arange(0, BLOCK_S)
        logits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
        for s0 in range(0, num_splits, BLOCK_S):
            s = s0 + ss
            mask = (s[:, None, None] < num_splits) & (ts[None, :, None] < T) & (es[None, None, :] < E)
            offs = (s[:, None, None] * T + ts[None, :, None]).to(tl.int64) * E + es[None, None, :]
            logits += tl.sum(tl.load(logit_ptr + offs, mask=mask, other=0.0, cache_modifier=".cg"), axis=0)
        route_w, ids = topk_softmax(logits, ts, T, E, TOP_K, RENORMALIZE, BLOCK_T, BLOCK_E, BLOCK_K)
        ks = tl.arange(0, BLOCK_K)
        slot_ok = (ts[:, None] < T) & (ks[None, :] < TOP_K)
        num_slots = T * TOP_K
        if pid == 0:
            offs = ts[:, None] * TOP_K + ks[None, :]
            tl.store(w_out_ptr + offs, route_w, mask=slot_ok)
            tl.store(id_out_ptr + offs, ids, mask=slot_ok)
        _stamp(timing_ptr, pid, 3, TIMING)

    # Phase 1: (slot, F block) items; the first slot of each expert computes the rows of all its tokens.
    if PHASE == -1 or PHASE == 1:
        num_fb = tl.cdiv(F, BLOCK_F)
        for item in range(pid, num_slots * num_fb, num_programs):
            s = item // num_fb
            expert, first, row_ok, row_slot = _slot_rows(ids, slot_ok, s, TOP_K, BLOCK_T, BLOCK_K)
            if first:
                fs = (item % num_fb) * BLOCK_F + tl.arange(0, BLOCK_F)
                f_ok = fs < F
                acc_g, acc_u = gate_up_accumulate(
                    x_ptr, wgu_ptr, rows16.to(tl.int64), row_ok, expert, fs, f_ok, 0, F, H,
                    stride_xt, stride_xh, stride_ge, stride_gn, stride_gh,
                    True, EVEN_H, PRECISION, 16, BLOCK_F, BLOCK_KG)
                act = (acc_g * tl.sigmoid(acc_g) * acc_u).to(act_ptr.dtype.element_ty)
                tl.store(act_ptr + row_slot[:, None].to(tl.int64) * F + fs[None, :], act,
                         mask=row_ok[:, None] & f_ok[None, :])
        if PRELOAD:
            # Bring this program's phase-2 down tiles into the L2 now (kept "evict_last"), so the weight stream
            # does not stop at the barrier. (Run 5: twice as slow; the loads wait for their data.)
            warm = tl.zeros((BLOCK_KD, BLOCK_H), dtype=tl.float32)
            for item in range(pid, tl.cdiv(H, BLOCK_H) * num_slots, num_programs):
                expert, first, row_ok, row_slot = _slot_rows(ids, slot_ok, item % num_slots, TOP_K, BLOCK_T, BLOCK_K)
                if first:
                    hs = (item // num_slots) * BLOCK_H + tl.arange(0, BLOCK_H)
                    fk = tl.arange(0, BLOCK_KD)
                    w_ptrs = (wd_ptr + expert * stride_de + hs[None, :].to(tl.int64) * stride_dh
                              + fk[:, None] * stride_df)
                    for f0 in range(0, F, BLOCK_KD):
                        w = tl.load(w_ptrs, mask=(hs < H)[None, :] & (fk < F - f0)[:, None], other=0.0,
                                    eviction_policy="evict_last")
                        warm += w.to(tl.float32)
                        w_ptrs += BLOCK_KD * stride_df
            # A store the compiler cannot drop (the loads would go with it) and that never happens in practice.
            total = tl.sum(warm)
            # (`part` is written in phase 2 before anything reads it.)
            tl.store(part_ptr + pid, total, mask=(total == -1.2345e-30) & (pid < num_slots * H))
    _stamp(timing_ptr, pid, 4, TIMING)
    if PHASE == -1:
        _grid_sync(sync_ptr, gen + 1, num_programs)
    _stamp(timing_ptr, pid, 5, TIMING)

    # Phase 2: (H block, slot) items: act @ Wd^T into fp32 rows of `part`; the last item of an H block combines it.
    if PHASE == -1 or PHASE == 2:
        for item in range(pid, tl.cdiv(H, BLOCK_H) * num_slots, num_programs):
            hb = item // num_slots
            s = item % num_slots
            expert, first, row_ok, row_slot = _slot_rows(ids, slot_ok, s, TOP_K, BLOCK_T, BLOCK_K)
            hs = hb * BLOCK_H + tl.arange(0, BLOCK_H)
            h_ok = hs < H
            if first:
                fk = tl.arange(0, BLOCK_KD)
                a_ptrs = act_ptr + row_slot[:, None].to(tl.int64) * F + fk[None, :]
                w_ptrs = wd_ptr + expert * stride_de + hs[None, :].to(tl.int64) * stride_dh + fk[:, None] * stride_df
                acc = tl.zeros((16, BLOCK_H), dtype=tl.float32)
                for f0 in range(0, F, BLOCK_KD):
                    if EVEN_F:
                        a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
                        w = tl.load(w_ptrs, mask=h_ok[None, :], other=0.0)
                    else:
                        f_ok = fk < F - f0
                        a = tl.load(a_ptrs, mask=row_ok[:, None] & f_ok[None, :], other=0.0, cache_modifier=".cg")
                        w = tl.load(w_ptrs, mask=h_ok[None, :] & f_ok[:, None], other=0.0)
                    acc = tl.dot(a, w, acc, input_precision=PRECISION)
                    a_ptrs += BLOCK_KD
                    w_ptrs += BLOCK_KD * stride_df
                tl.store(part_ptr + row_slot[:, None].to(tl.int64) * H + hs[None, :], acc,
                         mask=row_ok[:, None] & h_ok[None, :])
            # Check in; the last of the block's num_slots items sums its rows (every part row is written by then).
            tl.debug_barrier()
            done = tl.atomic_add(sync_ptr + 2 + hb, 1, sem="acq_rel", scope="gpu")
            if done == num_slots - 1:
                tl.debug_barrier()
                y = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
                for k in tl.static_range(TOP_K):
                    w_k = tl.sum(tl.where(ks[None, :] == k, route_w, 0.0), axis=1)
                    p = tl.load(part_ptr + (ts * TOP_K + k)[:, None].to(tl.int64) * H + hs[None, :],
                                mask=(ts[:, None] < T) & h_ok[None, :], other=0.0, cache_modifier=".cg")
                    y += w_k[:, None] * p
                tl.store(y_ptr + ts[:, None].to(tl.int64) * stride_yt + hs[None, :] * stride_yh,
                         y.to(y_ptr.dtype.element_ty), mask=(ts[:, None] < T) & h_ok[None, :])
                tl.atomic_xchg(sync_ptr + 2 + hb, 0, sem="relaxed", scope="gpu")
    _stamp(timing_ptr, pid, 6, TIMING)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def default_programs(device: torch.device) -> int:
    """One program per SM on a GPU; a few in the interpreter (enough to exercise the round-robin items)."""
    if device.type == "cuda" and not interpreter_active():
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 3


def layer_meta(T: int, H: int, E: int, top_k: int) -> dict:
    """Routing constexprs of the decode layer: selection tile and how many splits are summed per load."""
    block_t = triton.next_power_of_2(T)
    block_e = max(16, triton.next_power_of_2(E))
    splits = triton.cdiv(H, SPLIT_H)
    block_s = max(1, min(triton.next_power_of_2(splits), _SPLIT_TILE // (block_t * block_e)))
    return dict(BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(top_k), BLOCK_S=block_s,
                SPLIT_H=SPLIT_H, SPLIT_BLOCK_E=SPLIT_BLOCK_E, BLOCK_RH=min(128, SPLIT_H)), splits


def decode_layer(x: torch.Tensor, router_weight: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                 top_k: int, renormalize: bool, cfg: dict, *, sync: torch.Tensor | None = None,
                 timing: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer for T <= MAX_TOKENS tokens in one launch. Inputs are assumed checked (`tritonmoe.api.moe`).
    `cfg`: BLOCK_F, BLOCK_K (gate/up K step), BLOCK_H, BLOCK_KD (down K step), num_warps, num_stages and optionally
    `programs` (default: one per SM). `sync` (lab): an int32 counter buffer of 2 + cdiv(H, BLOCK_H), zeroed once and
    reused across calls instead of a fresh one per call (the kernel leaves the arrival and per-block counters at
    zero; the generation counter, sync[1], grows by 2 a call); `timing` (lab, GPU): an int64 [programs, 8] buffer that
    receives each program's timer at the phase boundaries. Returns (y [T, H], topk_weights [T, K] fp32, topk_ids [T, K] int32)."""
    T, H = x.shape
    E = router_weight.shape[0]
    F = w_down.shape[2]
    if T > MAX_TOKENS:
        raise ValueError(f"x: the decode layer takes at most {MAX_TOKENS} tokens, got {T}")
    meta, splits = layer_meta(T, H, E, top_k)
    dev = x.device
    num_slots = T * top_k
    logits = torch.empty((splits, T, E), dtype=torch.float32, device=dev)
    act = torch.empty((num_slots, F), dtype=x.dtype, device=dev)
    part = torch.empty((num_slots, H), dtype=torch.float32, device=dev)
    y = torch.empty((T, H), dtype=x.dtype, device=dev)
    weights = torch.empty((T, top_k), dtype=torch.float32, device=dev)
    ids = torch.empty((T, top_k), dtype=torch.int32, device=dev)
    # [arrivals, generation, one counter per H block]; between calls the arrival and block counters are zero.
    counters = 2 + triton.cdiv(H, cfg["BLOCK_H"])
    if sync is None:
        sync = torch.zeros(counters, dtype=torch.int32, device=dev)
    elif sync.numel() < counters or sync.dtype != torch.int32:
        raise ValueError(f"sync: expected an int32 buffer of at least {counters} counters, got {sync.numel()} {sync.dtype}")
    programs = cfg.get("programs") or default_programs(dev)
    args = (x, router_weight, w_gate_up, w_down, logits, act, part, y, weights, ids, sync,
            timing if timing is not None else sync, T, H, E, F, splits,
            x.stride(0), x.stride(1), router_weight.stride(0), router_weight.stride(1),
            w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2),
            w_down.stride(0), w_down.stride(1), w_down.stride(2), y.stride(0), y.stride(1))
    const = dict(TOP_K=top_k, RENORMALIZE=renormalize, PRECISION=dot_precision(x.dtype),
                 EVEN_H=(H % cfg["BLOCK_K"] == 0), EVEN_F=(F % cfg["BLOCK_KD"] == 0), **meta,
                 PRELOAD=cfg.get("PRELOAD", False), BLOCK_F=cfg["BLOCK_F"], BLOCK_KG=cfg["BLOCK_K"], BLOCK_H=cfg["BLOCK_H"], BLOCK_KD=cfg["BLOCK_KD"],
                 num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 3))
    if cfg.get("phased") or dev.type != "cuda" or interpreter_active():
        # One launch per phase: the interpreter runs programs in turn (a barrier would never return); on a GPU
        # this is the reference the barrier launch is tested against.
        for phase in (0, 1, 2):
            _decode_layer_kernel[(programs,)](*args, PHASE=phase, **const)
    else:
        _decode_layer_kernel[(programs,)](*args, PHASE=-1, TIMING=timing is not None,
                                          launch_cooperative_grid=cfg.get("cooperative", True), **const)
    return y, weights, ids
