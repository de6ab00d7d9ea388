"""The down projection of a decode layer launched early, its weights loaded before its inputs exist (perf notes v19).
Not part of the package.

At T=1-2 on the many-expert models the layer is three or four launches (router partials, [routing and alignment,]
gate/up, down with the combine), each streaming weights at 2.3-2.5 TB/s and each ramping and draining on its own
(v8, v10, v18). Session 5 launched every kernel of the chain with programmatic dependent launch (PDL) but made each
program wait first (`griddepcontrol.wait`): only launch latency could overlap, and nothing moved beyond the spread
(v7). Here the down projection's programs do real work before they wait. What they need of the gate/up launch is
only `act`; which experts they multiply is known before it: at T=1 with the selection in the GEMM they redo the
selection from the router's partial logits (written two launches earlier, complete before the gate/up began), at
T>=2 they read the routing tables (written by the routing launch, complete likewise). So a program loads its
experts' first `PRE_K` columns of W_down into registers, then waits for the gate/up launch, then reads `act`.
The gate/up programs let the down launch start as soon as all of them are running (`griddepcontrol.launch_dependents`
at their top); the down is launched with `launch_pdl`.

Variants (whole layers as CUDA-graph replays, interleaved rounds):
- `pkg`: the package's layer (`tritonmoe.moe`, the table's config);
- `lab`: this lab's chain without PDL (the lab down kernel at PRE_K 0: the package's sums; at T=1 it still redoes the
  selection, the cost that PDL is meant to hide);
- `pdl<P>`: the gate/up triggering, the down launched with PDL, P = PRE_K columns of W_down loaded before the wait;
- `late<P>`: the same down launched with PDL, the gate/up not triggering (the down starts when the gate/up ends);
- a suffix `w<W>` runs the down kernel at W warps instead of the config's (`pdl256w4`);
- `pipe<S>[w<W>][n<N>]`: no PDL; the package's routing and gate/up, then the down projection with its loop as
  `tl.range(num_stages=S)` (`_down_pipe_kernel`: the loads pipelined through shared memory), at W warps and
  BLOCK_N N if given.

y is compared with `pkg`'s (the lab's sums over a PRE_K tile are ordered differently: close, not bit-identical).

    python experiments/bench/pdl_lab.py --cases qwen3-30b-a3b:1 olmoe-1b-7b:1 --out $OUT/pdl.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import tritonmoe  # noqa: E402
import tritonmoe.gate_up as gu_mod  # noqa: E402
from problems import lab_main, load_models, make_tokens, make_weights  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe._gemm_common import dot_precision, gate_up_accumulate  # noqa: E402
from tritonmoe._host import cdiv, next_power_of_2  # noqa: E402
from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.gate_up import (_gate_up_kernel, _gate_up_select_kernel, _store_pointer_tile,  # noqa: E402
                               uses_descriptors)
from tritonmoe.align import alloc_alignment  # noqa: E402
from tritonmoe.route_align import (SPLIT_BLOCK_E, SPLIT_H, Selection, one_token_choices, prepare_selection,  # noqa: E402
                                   route_and_align, write_one_token)
from tritonmoe.routing import PARTIALS_BLOCK_T, _router_partials_kernel  # noqa: E402
from tritonmoe.variants import act_fused  # noqa: E402


@triton.jit
def _gate_up_select_trigger_kernel(
    x_ptr, w_ptr, out_ptr, partial_ptr, weights_ptr, ids_ptr,
    sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr, expert_counts_ptr,
    N, H, E, num_splits, max_blocks, row_offset, up_offset,
    stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_KK: tl.constexpr,
    BLOCK_S: tl.constexpr, HEIGHT: tl.constexpr, BLOCK_B: tl.constexpr,
    FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The package's selecting gate/up kernel, first letting its dependent launch start."""
    tl.extra.cuda.gdc_launch_dependents()
    _gate_up_select_kernel(
        x_ptr, w_ptr, out_ptr, partial_ptr, weights_ptr, ids_ptr,
        sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr, expert_counts_ptr,
        N, H, E, num_splits, max_blocks, row_offset, up_offset,
        stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
        TOP_K, RENORMALIZE, BLOCK_E, BLOCK_KK, BLOCK_S, HEIGHT, BLOCK_B, FUSE_SWIGLU, EVEN_K, PRECISION,
        BLOCK_N, BLOCK_K)


@triton.jit
def _gate_up_trigger_kernel(
    x_ptr, w_ptr, out_ptr,
    sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
    N, H, num_routed, row_offset, up_offset, num_pid_m,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    ORDER_BLOCKS: tl.constexpr,
):
    """The package's pointer gate/up kernel, first letting its dependent launch start."""
    tl.extra.cuda.gdc_launch_dependents()
    _gate_up_kernel(
        x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
        N, H, num_routed, row_offset, up_offset, num_pid_m,
        stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
        TOP_K, FUSE_SWIGLU, EVEN_K, PRECISION, BLOCK_M, TAIL_M, BLOCK_N, BLOCK_K, GROUP_M, ORDER_BLOCKS)


@triton.jit
def _partials_reset_kernel(
    x_ptr, wr_ptr, partial_ptr, flag_ptr, T, H, E,
    stride_xt, stride_xh, stride_re, stride_rh,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, SPLIT_H: tl.constexpr,
):
    """The package's router partial logits; program (0, 0) also clears the call's table flag (`flag` modes)."""
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        tl.store(flag_ptr, 0)
    _router_partials_kernel(x_ptr, wr_ptr, partial_ptr, T, H, E, stride_xt, stride_xh, stride_re, stride_rh,
                            BLOCK_T, BLOCK_H, BLOCK_E, SPLIT_H)


@triton.jit
def _gate_up_select_flag_kernel(
    x_ptr, w_ptr, out_ptr, partial_ptr, weights_ptr, ids_ptr,
    sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr, expert_counts_ptr, flag_ptr,
    N, H, E, num_splits, max_blocks, row_offset, up_offset,
    stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_KK: tl.constexpr,
    BLOCK_S: tl.constexpr, HEIGHT: tl.constexpr, BLOCK_B: tl.constexpr,
    FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TRIGGER: tl.constexpr,
):
    """The package's `_gate_up_select_kernel` (the same tiles), its program 0 raising the call's flag (a release
    after the tables' stores) so that the down projection may read the tables before the launch has completed."""
    if TRIGGER:
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    w, ids, rank = one_token_choices(partial_ptr, E, num_splits, TOP_K, RENORMALIZE, BLOCK_E, BLOCK_KK, BLOCK_S)
    if pid == 0:
        write_one_token(w, ids, rank, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                        block_rows_ptr, num_post_ptr, expert_counts_ptr, E, max_blocks,
                        TOP_K, BLOCK_E, BLOCK_KK, HEIGHT, BLOCK_B)
        tl.debug_barrier()
        tl.atomic_xchg(flag_ptr, 1, sem="release", scope="gpu")
    kk = tl.arange(0, BLOCK_KK)
    expert = tl.sum(tl.where((rank == pid_m) & (kk < TOP_K), ids, 0), axis=0).to(tl.int64)
    r = tl.arange(0, HEIGHT)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc_g, acc_u = gate_up_accumulate(
        x_ptr, w_ptr, tl.zeros((HEIGHT,), dtype=tl.int64), r == 0, expert, cols, col_ok, row_offset, up_offset, H,
        0, stride_xh, stride_we, stride_wn, stride_wh,
        FUSE_SWIGLU, EVEN_K, PRECISION, HEIGHT, BLOCK_N, BLOCK_K)
    _store_pointer_tile(acc_g, acc_u, out_ptr, pid_m * HEIGHT + r, cols, col_ok, stride_om, stride_on, FUSE_SWIGLU)


def flag_selection(x, wr, top_k, block_m, tail_m, flag):
    """`prepare_selection` with the partial-logits launch clearing `flag`."""
    T, H = x.shape
    E = wr.shape[0]
    splits = cdiv(H, SPLIT_H)
    partial = torch.empty((splits, T, E), dtype=torch.float32, device=x.device)
    _partials_reset_kernel[(cdiv(E, SPLIT_BLOCK_E), splits)](
        x, wr, partial, flag, T, H, E, x.stride(0), x.stride(1), wr.stride(0), wr.stride(1),
        BLOCK_T=PARTIALS_BLOCK_T, BLOCK_H=min(128, SPLIT_H), BLOCK_E=SPLIT_BLOCK_E, SPLIT_H=SPLIT_H, num_warps=4)
    weights = torch.empty((1, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((1, top_k), dtype=torch.int32, device=x.device)
    return Selection(partial, weights, ids, alloc_alignment(top_k, E, block_m, x.device, tail_m), True)


def gate_up_flag(x, wgu, sel, cfg, flag, trigger: bool):
    """The fused selecting gate/up through `_gate_up_select_flag_kernel` (the package's launch arguments)."""
    a, meta = sel.align, sel.meta
    E, F2, H = wgu.shape
    n = F2 // 2
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    out = torch.empty((a.sorted_ids.shape[0], n), dtype=x.dtype, device=x.device)
    _gate_up_select_flag_kernel[(meta["TOP_K"] * cdiv(n, bn),)](
        x, wgu, out, sel.partial, sel.weights, sel.ids,
        a.sorted_ids, a.slot_rows, a.expert_ids, a.block_rows, a.num_post_padded, a.expert_counts, flag,
        n, H, E, sel.partial.shape[0], a.max_blocks, 0, n,
        x.stride(1), wgu.stride(0), wgu.stride(1), wgu.stride(2), out.stride(0), out.stride(1),
        **meta, FUSE_SWIGLU=True, EVEN_K=(H % bk == 0), PRECISION=dot_precision(x.dtype),
        BLOCK_N=bn, BLOCK_K=bk, TRIGGER=trigger, num_warps=cfg.get("num_warps", 4),
        num_stages=cfg.get("num_stages", 2))
    return out


@triton.jit
def _down_early_kernel(
    act_ptr, w_ptr, y_ptr, topk_weights_ptr, topk_ids_ptr, slot_rows_ptr, partial_ptr, flag_ptr,
    H, F, E, num_splits, stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_yt,
    TOP_K: tl.constexpr, BLOCK_KK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SELECT: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_S: tl.constexpr,
    HEIGHT: tl.constexpr, PRE_K: tl.constexpr, WAIT: tl.constexpr, FLAG: tl.constexpr,
):
    """`down._down_combine_kernel` with the experts found and the first PRE_K columns of their W_down slices loaded
    before `griddepcontrol.wait` (WAIT); act, the routing weights and the slot rows are read after it. With FLAG
    the experts are read from the tables once the flag the selecting gate/up raises is seen (an acquire)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    ks = tl.arange(0, BLOCK_KK)
    k_ok = ks < TOP_K
    slot = t * TOP_K + ks
    if SELECT:  # one token, chosen inside the gate/up launch: the same choice again, from the partial logits
        sel_w, sel_ids, rank = one_token_choices(partial_ptr, E, num_splits, TOP_K, RENORMALIZE, BLOCK_E, BLOCK_KK,
                                                 BLOCK_S)
        expert = sel_ids.to(tl.int64)
    else:
        if FLAG:
            seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="gpu")
            while seen == 0:
                seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="gpu")
            tl.debug_barrier()
        expert = tl.load(topk_ids_ptr + slot, mask=k_ok, other=0).to(tl.int64)
    w_base = w_ptr + expert[:, None, None] * stride_we + cols[None, :, None].to(tl.int64) * stride_wh
    w_mask = k_ok[:, None, None] & col_ok[None, :, None]
    if PRE_K > 0:
        fp = tl.arange(0, PRE_K)
        w_pre = tl.load(w_base + fp[None, None, :] * stride_wf, mask=w_mask & (fp < F)[None, None, :], other=0.0)
    fs = tl.arange(0, BLOCK_K)
    w_ptrs = w_base + (PRE_K + fs)[None, None, :] * stride_wf
    w_next = tl.load(w_ptrs, mask=w_mask & (PRE_K + fs < F)[None, None, :], other=0.0)
    if WAIT:
        tl.extra.cuda.gdc_wait()
    if SELECT:
        route_w = sel_w
        row = (rank * HEIGHT).to(tl.int64)
    else:
        route_w = tl.load(topk_weights_ptr + slot, mask=k_ok, other=0.0)
        row = tl.load(slot_rows_ptr + slot, mask=k_ok, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_KK, BLOCK_N), dtype=tl.float32)
    if PRE_K > 0:
        a_pre = tl.load(act_ptr + row[:, None] * stride_am + fp[None, :] * stride_af,
                        mask=k_ok[:, None] & (fp < F)[None, :], other=0.0)
        acc += tl.sum(w_pre.to(tl.float32) * a_pre.to(tl.float32)[:, None, :], axis=2)
    a_ptrs = act_ptr + row[:, None] * stride_am + (PRE_K + fs)[None, :] * stride_af
    for f0 in range(PRE_K, F, BLOCK_K):
        w = w_next
        a = tl.load(a_ptrs, mask=k_ok[:, None] & (fs < F - f0)[None, :], other=0.0)
        w_ptrs += BLOCK_K * stride_wf
        w_next = tl.load(w_ptrs, mask=w_mask & (fs < F - f0 - BLOCK_K)[None, None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a.to(tl.float32)[:, None, :], axis=2)
        a_ptrs += BLOCK_K * stride_af
    out = tl.sum(acc * route_w[:, None], axis=0)
    tl.store(y_ptr + t * stride_yt + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _down_pipe_kernel(
    act_ptr, w_ptr, y_ptr, topk_weights_ptr, topk_ids_ptr, slot_rows_ptr,
    H, F, stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_yt,
    TOP_K: tl.constexpr, BLOCK_KK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
):
    """`down._down_combine_kernel` with its loop as `tl.range(num_stages=STAGES)` and no weights held one step ahead
    in registers: Triton 3.6 then pipelines the loads through shared memory (cp.async, STAGES - 1 tiles in flight),
    which it does not do for the package's plain `range` loop."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < H
    ks = tl.arange(0, BLOCK_KK)
    k_ok = ks < TOP_K
    slot = t * TOP_K + ks
    expert = tl.load(topk_ids_ptr + slot, mask=k_ok, other=0).to(tl.int64)
    row = tl.load(slot_rows_ptr + slot, mask=k_ok, other=0).to(tl.int64)
    route_w = tl.load(topk_weights_ptr + slot, mask=k_ok, other=0.0)
    fs = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert[:, None, None] * stride_we + cols[None, :, None].to(tl.int64) * stride_wh
    w_mask = k_ok[:, None, None] & col_ok[None, :, None]
    acc = tl.zeros((BLOCK_KK, BLOCK_N), dtype=tl.float32)
    for f0 in tl.range(0, F, BLOCK_K, num_stages=STAGES):
        f_ok = f0 + fs < F
        w = tl.load(w_base + (f0 + fs)[None, None, :] * stride_wf, mask=w_mask & f_ok[None, None, :], other=0.0)
        a = tl.load(act_ptr + row[:, None] * stride_am + (f0 + fs)[None, :] * stride_af,
                    mask=k_ok[:, None] & f_ok[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a.to(tl.float32)[:, None, :], axis=2)
    out = tl.sum(acc * route_w[:, None], axis=0)
    tl.store(y_ptr + t * stride_yt + cols, out.to(y_ptr.dtype.element_ty), mask=col_ok)


def down_pipe(act, w_down, tw, ids, align, cfg, stages: int):
    """The lab's pipelined down projection with the combine (`_down_pipe_kernel`)."""
    E, H, F = w_down.shape
    T, K = ids.shape
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    y = torch.empty((T, H), dtype=act.dtype, device=act.device)
    _down_pipe_kernel[(T, cdiv(H, bn))](
        act, w_down, y, tw.reshape(-1), ids.reshape(-1), align.slot_rows,
        H, F, act.stride(0), act.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2), y.stride(0),
        TOP_K=K, BLOCK_KK=next_power_of_2(K), BLOCK_N=bn, BLOCK_K=bk, STAGES=stages,
        num_warps=cfg.get("num_warps", 4), num_stages=stages)
    return y


def down_early(act, w_down, tw, ids, align, cfg, sel, pre_k: int, pdl: bool, flag=None):
    """The lab down projection (with the combine): `sel` the one-token Selection (its choice redone) or None;
    `flag` (with sel None) the flag the selecting gate/up raises."""
    E, H, F = w_down.shape
    T, K = ids.shape
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    y = torch.empty((T, H), dtype=act.dtype, device=act.device)
    meta = sel.meta if sel is not None else dict(RENORMALIZE=True, BLOCK_E=16, BLOCK_S=1, HEIGHT=1)
    partial = sel.partial if sel is not None else tw
    splits = sel.partial.shape[0] if sel is not None else 1
    kw = dict(launch_pdl=True) if pdl else {}
    _down_early_kernel[(T, cdiv(H, bn))](
        act, w_down, y, tw.reshape(-1), ids.reshape(-1), align.slot_rows, partial, flag if flag is not None else ids,
        H, F, E, splits, act.stride(0), act.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2),
        y.stride(0),
        TOP_K=K, BLOCK_KK=next_power_of_2(K), BLOCK_N=bn, BLOCK_K=bk, SELECT=sel is not None,
        RENORMALIZE=meta["RENORMALIZE"], BLOCK_E=meta["BLOCK_E"], BLOCK_S=meta["BLOCK_S"], HEIGHT=meta["HEIGHT"],
        PRE_K=pre_k, WAIT=pdl, FLAG=flag is not None, num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2), **kw)
    return y


class _trigger:
    """The package's gate/up launches go through the triggering kernels while active."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        if self.on:
            gu_mod._gate_up_select_kernel = _gate_up_select_trigger_kernel
            gu_mod._gate_up_kernel = _gate_up_trigger_kernel

    def __exit__(self, *exc):
        gu_mod._gate_up_select_kernel = _gate_up_select_kernel
        gu_mod._gate_up_kernel = _gate_up_kernel


def parse_mode(mode: str) -> tuple[bool, bool, int, int | None, bool]:
    """(pdl, trigger, PRE_K, num_warps or None for the config's, flag) of a lab mode: lab, pdl<P>[w<W>],
    late<P>[w<W>], flag<P>[w<W>] (one token: the tables read once the gate/up's flag is up), flaglab (no PDL)."""
    mode, _, warps = mode.partition("w")
    warps = int(warps) if warps else None
    if mode == "lab":
        return False, False, 0, warps, False
    if mode == "flaglab":
        return False, False, 0, warps, True
    for prefix, trig, flag in (("pdl", True, False), ("late", False, False), ("flag", True, True)):
        if mode.startswith(prefix):
            return True, trig, int(mode[len(prefix):] or 0), warps, flag
    raise ValueError(mode)


_FLAG: dict = {}  # one int32 flag per device: cleared by each call's partial logits, raised by its gate/up


def layer(x, w, m, cfg, mode):
    wr, wgu, wd = w.router_weight, w.w_gate_up, w.w_down
    if mode == "pkg":
        return tritonmoe.moe(x, wr, wgu, wd, m.top_k, config=cfg)
    if mode.startswith("pipe"):  # pipe<S>[w<W>][n<N>]: the package's routing and gate/up, the pipelined down
        spec = mode[4:]
        spec, _, bn = spec.partition("n")
        st, _, warps = spec.partition("w")
        dcfg = {**cfg["down"], **({"num_warps": int(warps)} if warps else {}), **({"BLOCK_N": int(bn)} if bn else {})}
        T = x.shape[0]
        if T == 1 and cfg.get("SELECT_IN_GEMM", True):
            sel = prepare_selection(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
            tw, ids, al = sel.weights, sel.ids, sel.align
            act = act_fused(x, wgu, al, cfg, select=sel)
        else:
            tw, ids, al = route_and_align(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
            act = act_fused(x, wgu, al, cfg)
        return down_pipe(act, wd, tw, ids, al, dcfg, int(st))
    pdl, trig, pre_k, warps, use_flag = parse_mode(mode)
    dcfg = cfg["down"] if warps is None else {**cfg["down"], "num_warps": warps}
    T = x.shape[0]
    select = T == 1 and cfg.get("SELECT_IN_GEMM", True)
    if use_flag:
        if not select:
            raise ValueError("flag modes: one token with the selection in the GEMM")
        flag = _FLAG.setdefault(x.device, torch.zeros(1, dtype=torch.int32, device=x.device))
        sel = flag_selection(x, wr, m.top_k, cfg["BLOCK_M"], tail_of(cfg), flag)
        act = gate_up_flag(x, wgu, sel, cfg["gate_up"], flag, trig)
        return down_early(act, wd, sel.weights, sel.ids, sel.align, dcfg, None, pre_k, pdl, flag=flag)
    with _trigger(trig):
        if select:
            sel = prepare_selection(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
            tw, ids, al = sel.weights, sel.ids, sel.align
            act = act_fused(x, wgu, al, cfg, select=sel)
        else:
            sel = None
            tw, ids, al = route_and_align(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
            act = act_fused(x, wgu, al, cfg)
    return down_early(act, wd, tw, ids, al, dcfg, sel, pre_k, pdl)


def run_case(name, t, rows, args):
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
    cfg = resolve_config(x, t * m.top_k, m.experts, m.hidden, m.ffn, None)
    if (cfg.get("expert") or not cfg["down"].get("COMBINE") or uses_descriptors(cfg["gate_up"], x, w.w_gate_up)
            or cfg["gate_up"].get("PERSISTENT")):
        print(f"{name} T={t}: config outside this lab's paths, skipped", flush=True)
        return
    graphs, ys = {}, {}
    for mode in args.modes:
        try:
            layer(x, w, m, cfg, mode)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                y = layer(x, w, m, cfg, mode)
            y.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a row, not a stop
            print(f"{name} T={t} {mode}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            rows.append({"model": name, "tokens": t, "variant": mode, "error": f"{type(exc).__name__}"})
            continue
        graphs[mode], ys[mode] = g, y.clone()
    ref = ys.get("pkg")
    for r in range(args.repeats):
        for mode, g in graphs.items():
            q = bench(g.replay, 10, 60)
            diff = (float(((ys[mode].float() - ref.float()).norm() / ref.float().norm()).item())
                    if ref is not None else float("nan"))
            rows.append({"model": name, "tokens": t, "variant": mode, "round": r, "median_us": q[0] * 1e3,
                         "p20_us": q[1] * 1e3, "p80_us": q[2] * 1e3, "rel_diff_pkg": diff,
                         "y_identical_pkg": bool(ref is not None and torch.equal(ys[mode], ref)),
                         "finite": bool(torch.isfinite(ys[mode]).all()), "device_name": torch.cuda.get_device_name()})
            print(rows[-1], flush=True)
    del graphs, w
    torch.cuda.empty_cache()


def add_arguments(ap):
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["pkg", "lab", "pdl0", "pdl256", "pdl512", "late512"])


def main(argv=None):
    return lab_main(argv, __doc__, "pdl_lab.py", "qwen3-30b-a3b:1", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
