"""GEMM lab (perf notes v6): candidate gate_up / down kernels timed beside the production ones.

Not part of the sweep. One GPU call builds, checks and times, per (model, tokens):
- `prod`: the package's kernels with the tuned (or given) configuration;
- `tma_w`: weights through tensor descriptors (TMA on sm90), tokens gathered through pointers;
- `tma`: tokens gathered once into expert order (`x_sorted`), then both operands through descriptors;
- `pers`: `tma` on a persistent grid (one program per SM, tiles in a flattened loop so that the next
  tile's loads overlap this tile's epilogue);
- `ws`: `tma` with Triton's automatic warp specialisation of the K loop (may not compile on sm90);
- `cublas`: torch.bmm on the same number of rows per expert (uniform split), the dense ceiling.
Every candidate's output is compared with the production kernel's (itself checked against float64 by
the tests); each row gives the kernel median (`timing.bench`, the sweep's L2 flush; sessions 4-6 used
triton.testing.do_bench) and TFLOP/s. `--kinds` keeps only some candidates (`cublas prod` gives the dense
ceiling beside the package's kernels in a minute); rows are written to the CSV as they come.

    python experiments/bench/gemm_lab.py --cases mixtral-8x7b:1024 --out $OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe._gemm_common import grouped_pid  # noqa: E402
from tritonmoe.down import down as prod_down  # noqa: E402
from tritonmoe.gate_up import gate_up as prod_gate_up, gather_rows  # noqa: E402
from tritonmoe.routing import route  # noqa: E402
from tritonmoe.align import align_tokens  # noqa: E402
from timing import bench as timed_bench  # noqa: E402
from problems import add_cases_argument  # noqa: E402


@triton.jit
def _gu_tile(a_desc, x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, pid_n, F, H, num_routed,
             stride_xt, stride_om, TOP_K: tl.constexpr, A_TMA: tl.constexpr, WS: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    expert = tl.load(expert_ids_ptr + pid_m)
    row0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    g_row = expert * 2 * F + n0
    u_row = g_row + F
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if not A_TMA:
        rows = row0 + tl.arange(0, BLOCK_M)
        slot = tl.load(sorted_ids_ptr + rows)
        row_ok = slot < num_routed
        token = (slot // TOP_K).to(tl.int64)
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = x_ptr + token[:, None] * stride_xt + ks[None, :]
    for k0 in tl.range(0, H, BLOCK_K, warp_specialize=WS):
        if A_TMA:
            a = a_desc.load([row0, k0])
        else:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            a_ptrs += BLOCK_K
        g = w_desc.load([g_row, k0])
        u = w_desc.load([u_row, k0])
        acc_g = tl.dot(a, g.T, acc_g)
        acc_u = tl.dot(a, u.T, acc_u)
    out = acc_g * tl.sigmoid(acc_g) * acc_u
    rows_o = row0 + tl.arange(0, BLOCK_M)
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + rows_o[:, None].to(tl.int64) * stride_om + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(cols < F)[None, :])


@triton.jit
def _gu_kernel(a_desc, x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
               F, H, num_routed, num_pid_m, stride_xt, stride_om,
               TOP_K: tl.constexpr, A_TMA: tl.constexpr, WS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_pid_n = tl.cdiv(F, BLOCK_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_post_ptr):
        return
    _gu_tile(a_desc, x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, pid_n, F, H, num_routed,
             stride_xt, stride_om, TOP_K, A_TMA, WS, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _gu_persistent_kernel(a_desc, w_desc, out_ptr, expert_ids_ptr, num_post_ptr,
                          F, H, stride_om, NUM_SMS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          GROUP_M: tl.constexpr):
    num_pid_m = tl.load(num_post_ptr) // BLOCK_M
    num_pid_n = tl.cdiv(F, BLOCK_N)
    k_tiles = tl.cdiv(H, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    tile = tl.program_id(0) - NUM_SMS
    ki = -1
    pid_m = 0
    pid_n = 0
    g_row = 0
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    my_tiles = tl.cdiv(num_tiles - tl.program_id(0), NUM_SMS)
    for _ in tl.range(0, k_tiles * my_tiles):
        ki = tl.where(ki == k_tiles - 1, 0, ki + 1)
        if ki == 0:
            tile += NUM_SMS
            pid_m, pid_n = grouped_pid(tile, num_pid_m, num_pid_n, GROUP_M)
            g_row = tl.load(expert_ids_ptr + pid_m) * 2 * F + pid_n * BLOCK_N
        k0 = ki * BLOCK_K
        a = a_desc.load([pid_m * BLOCK_M, k0])
        g = w_desc.load([g_row, k0])
        u = w_desc.load([g_row + F, k0])
        acc_g = tl.dot(a, g.T, acc_g)
        acc_u = tl.dot(a, u.T, acc_u)
        if ki == k_tiles - 1:
            out = acc_g * tl.sigmoid(acc_g) * acc_u
            rows_o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            tl.store(out_ptr + rows_o[:, None].to(tl.int64) * stride_om + cols[None, :],
                     out.to(out_ptr.dtype.element_ty), mask=(cols < F)[None, :])
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)


def gu_candidate(kind, x, x_sorted, w, align, c):
    E, F2, H = w.shape
    F = F2 // 2
    bm, bn, bk = align.block_m, c["BLOCK_N"], c["BLOCK_K"]
    out = _alloc((align.sorted_ids.shape[0], F), x.dtype, x.device)
    w_desc = TensorDescriptor(w, [E * F2, H], [H, 1], [bn, bk])
    a_src = x_sorted if x_sorted is not None else x
    a_desc = TensorDescriptor(a_src, list(a_src.shape), [a_src.stride(0), 1], [bm, bk])
    kw = dict(num_warps=c["num_warps"], num_stages=c["num_stages"])
    if kind == "pers":
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        _gu_persistent_kernel[(sms,)](a_desc, w_desc, out, align.expert_ids, align.num_post_padded, F, H,
                                      out.stride(0), NUM_SMS=sms, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                      GROUP_M=c["GROUP_M"], **kw)
        return out
    grid = (align.max_blocks * triton.cdiv(F, bn),)
    _gu_kernel[grid](a_desc, x, w_desc, out, align.sorted_ids, align.expert_ids, align.num_post_padded,
                     F, H, align.num_routed, align.max_blocks, x.stride(0), out.stride(0),
                     TOP_K=align.num_routed // x.shape[0], A_TMA=(kind != "tma_w"), WS=(kind == "ws"),
                     BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=c["GROUP_M"], **kw)
    return out


@triton.jit
def _dn_kernel(a_desc, w_desc, partial_ptr, topk_w_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
               H, F, num_routed, num_pid_m, stride_pm, WS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_pid_n = tl.cdiv(H, BLOCK_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_post_ptr):
        return
    expert = tl.load(expert_ids_ptr + pid_m)
    row0 = pid_m * BLOCK_M
    w_row = expert * H + pid_n * BLOCK_N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in tl.range(0, F, BLOCK_K, warp_specialize=WS):
        a = a_desc.load([row0, k0])
        w = w_desc.load([w_row, k0])
        acc = tl.dot(a, w.T, acc)
    rows = row0 + tl.arange(0, BLOCK_M)
    slot = tl.load(sorted_ids_ptr + rows)
    ok = slot < num_routed
    acc = acc * tl.load(topk_w_ptr + slot, mask=ok, other=0.0)[:, None]
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(partial_ptr + slot[:, None].to(tl.int64) * stride_pm + cols[None, :], acc.to(partial_ptr.dtype.element_ty),
             mask=ok[:, None] & (cols < H)[None, :])


@triton.jit
def _dn_persistent_kernel(a_desc, w_desc, partial_ptr, topk_w_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
                          H, F, num_routed, stride_pm, NUM_SMS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          GROUP_M: tl.constexpr):
    num_pid_m = tl.load(num_post_ptr) // BLOCK_M
    num_pid_n = tl.cdiv(H, BLOCK_N)
    k_tiles = tl.cdiv(F, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    tile = tl.program_id(0) - NUM_SMS
    ki = -1
    pid_m = 0
    pid_n = 0
    w_row = 0
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    my_tiles = tl.cdiv(num_tiles - tl.program_id(0), NUM_SMS)
    for _ in tl.range(0, k_tiles * my_tiles):
        ki = tl.where(ki == k_tiles - 1, 0, ki + 1)
        if ki == 0:
            tile += NUM_SMS
            pid_m, pid_n = grouped_pid(tile, num_pid_m, num_pid_n, GROUP_M)
            w_row = tl.load(expert_ids_ptr + pid_m) * H + pid_n * BLOCK_N
        k0 = ki * BLOCK_K
        a = a_desc.load([pid_m * BLOCK_M, k0])
        w = w_desc.load([w_row, k0])
        acc = tl.dot(a, w.T, acc)
        if ki == k_tiles - 1:
            rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            slot = tl.load(sorted_ids_ptr + rows)
            ok = slot < num_routed
            acc = acc * tl.load(topk_w_ptr + slot, mask=ok, other=0.0)[:, None]
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            tl.store(partial_ptr + slot[:, None].to(tl.int64) * stride_pm + cols[None, :],
                     acc.to(partial_ptr.dtype.element_ty), mask=ok[:, None] & (cols < H)[None, :])
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)


def dn_candidate(kind, act, w_down, align, topk_weights, c):
    E, H, F = w_down.shape
    bm, bn, bk = align.block_m, c["BLOCK_N"], c["BLOCK_K"]
    partial = _alloc((1, align.num_routed, H), act.dtype, act.device)
    a_desc = TensorDescriptor(act, list(act.shape), [act.stride(0), 1], [bm, bk])
    w_desc = TensorDescriptor(w_down, [E * H, F], [F, 1], [bn, bk])
    kw = dict(num_warps=c["num_warps"], num_stages=c["num_stages"])
    tw = topk_weights.reshape(-1)
    if kind == "pers":
        sms = torch.cuda.get_device_properties(act.device).multi_processor_count
        _dn_persistent_kernel[(sms,)](a_desc, w_desc, partial, tw, align.sorted_ids, align.expert_ids,
                                      align.num_post_padded, H, F, align.num_routed, partial.stride(1),
                                      NUM_SMS=sms, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=c["GROUP_M"], **kw)
        return partial
    grid = (align.max_blocks * triton.cdiv(H, bn),)
    _dn_kernel[grid](a_desc, w_desc, partial, tw, align.sorted_ids, align.expert_ids, align.num_post_padded,
                     H, F, align.num_routed, align.max_blocks, partial.stride(1), WS=(kind == "ws"),
                     BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=c["GROUP_M"], **kw)
    return partial

@triton.jit
def _gu1_tile(a_desc, w_desc, out_ptr, expert, row0, n0, k_end, F, stride_om, row_limit, WS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One dot: the gate and up tiles of the expert come as one [2, BLOCK_N, BLOCK_K] box of the weights
    viewed as [2E, F, H], so the tensor cores see a single [BLOCK_M, 2*BLOCK_N] product."""
    acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
    for k0 in tl.range(0, k_end, BLOCK_K, warp_specialize=WS):
        a = a_desc.load([row0, k0])
        b = tl.reshape(w_desc.load([2 * expert, n0, k0]), (2 * BLOCK_N, BLOCK_K))
        acc = tl.dot(a, b.T, acc)
    g, u = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
    out = g * tl.sigmoid(g) * u
    rows_o = row0 + tl.arange(0, BLOCK_M)
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + rows_o[:, None].to(tl.int64) * stride_om + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=(rows_o < row_limit)[:, None] & (cols < F)[None, :])


@triton.jit
def _gu1_kernel(a_desc, w_desc, out_ptr, expert_ids_ptr, num_post_ptr, F, H, num_pid_m, stride_om,
                WS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr):
    num_pid_n = tl.cdiv(F, BLOCK_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    num_post = tl.load(num_post_ptr)
    # No early return (the sm90 warp specialiser rejects the branch): an unused block runs no K step
    # and stores nothing.
    k_end = tl.where(pid_m * BLOCK_M < num_post, H, 0)
    expert = tl.load(expert_ids_ptr + pid_m)
    _gu1_tile(a_desc, w_desc, out_ptr, expert, pid_m * BLOCK_M, pid_n * BLOCK_N, k_end, F, stride_om, num_post,
              WS, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _gu1_persistent_kernel(a_desc, w_desc, out_ptr, expert_ids_ptr, num_post_ptr, F, H, stride_om,
                           NUM_SMS: tl.constexpr, WS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_post = tl.load(num_post_ptr)
    num_pid_m = num_post // BLOCK_M
    num_pid_n = tl.cdiv(F, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=True):
        pid_m, pid_n = grouped_pid(tile, num_pid_m, num_pid_n, GROUP_M)
        expert = tl.load(expert_ids_ptr + pid_m)
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        for k0 in tl.range(0, H, BLOCK_K, warp_specialize=WS):
            a = a_desc.load([pid_m * BLOCK_M, k0])
            b = tl.reshape(w_desc.load([2 * expert, pid_n * BLOCK_N, k0]), (2 * BLOCK_N, BLOCK_K))
            acc = tl.dot(a, b.T, acc)
        g, u = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
        out = g * tl.sigmoid(g) * u
        rows_o = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + rows_o[:, None].to(tl.int64) * stride_om + cols[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=(cols < F)[None, :])


def gu1_candidate(kind, x, x_sorted, w, align, c):
    E, F2, H = w.shape
    F = F2 // 2
    bm, bn, bk = align.block_m, c["BLOCK_N"], c["BLOCK_K"]
    out = _alloc((align.sorted_ids.shape[0], F), x.dtype, x.device)
    w_desc = TensorDescriptor(w, [2 * E, F, H], [F * H, H, 1], [2, bn, bk])
    a_desc = TensorDescriptor(x_sorted, list(x_sorted.shape), [x_sorted.stride(0), 1], [bm, bk])
    kw = dict(num_warps=c["num_warps"], num_stages=c["num_stages"])
    ws = kind.endswith("ws")
    if kind.startswith("pers1"):
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        _gu1_persistent_kernel[(sms,)](a_desc, w_desc, out, align.expert_ids, align.num_post_padded, F, H,
                                       out.stride(0), NUM_SMS=sms, WS=ws, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                       GROUP_M=c["GROUP_M"], **kw)
        return out
    grid = (align.max_blocks * triton.cdiv(F, bn),)
    _gu1_kernel[grid](a_desc, w_desc, out, align.expert_ids, align.num_post_padded, F, H, align.max_blocks,
                      out.stride(0), WS=ws, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=c["GROUP_M"], **kw)
    return out


@triton.jit
def _dn2_kernel(a_desc, w_desc, partial_ptr, topk_w_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
                H, F, num_routed, num_pid_m, stride_pm, PERSISTENT: tl.constexpr, NUM_SMS: tl.constexpr,
                WS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr):
    num_post = tl.load(num_post_ptr)
    num_pid_n = tl.cdiv(H, BLOCK_N)
    if PERSISTENT:
        start = tl.program_id(0)
        num_tiles = (num_post // BLOCK_M) * num_pid_n
        step = NUM_SMS
        m_blocks = num_post // BLOCK_M
    else:
        start = tl.program_id(0)
        num_tiles = start + 1
        step = 1
        m_blocks = num_pid_m
    for tile in tl.range(start, num_tiles, step, flatten=True):
        pid_m, pid_n = grouped_pid(tile, m_blocks, num_pid_n, GROUP_M)
        k_end = tl.where(pid_m * BLOCK_M < num_post, F, 0)
        expert = tl.load(expert_ids_ptr + pid_m)
        row0 = pid_m * BLOCK_M
        w_row = expert * H + pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in tl.range(0, k_end, BLOCK_K, warp_specialize=WS):
            a = a_desc.load([row0, k0])
            w = w_desc.load([w_row, k0])
            acc = tl.dot(a, w.T, acc)
        rows = row0 + tl.arange(0, BLOCK_M)
        slot = tl.load(sorted_ids_ptr + rows)
        ok = (slot < num_routed) & (rows < num_post)
        acc = acc * tl.load(topk_w_ptr + slot, mask=ok, other=0.0)[:, None]
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(partial_ptr + slot[:, None].to(tl.int64) * stride_pm + cols[None, :],
                 acc.to(partial_ptr.dtype.element_ty), mask=ok[:, None] & (cols < H)[None, :])


def dn2_candidate(kind, act, w_down, align, topk_weights, c):
    E, H, F = w_down.shape
    bm, bn, bk = align.block_m, c["BLOCK_N"], c["BLOCK_K"]
    partial = _alloc((1, align.num_routed, H), act.dtype, act.device)
    a_desc = TensorDescriptor(act, list(act.shape), [act.stride(0), 1], [bm, bk])
    w_desc = TensorDescriptor(w_down, [E * H, F], [F, 1], [bn, bk])
    sms = torch.cuda.get_device_properties(act.device).multi_processor_count
    pers = kind.startswith("pers2")
    grid = (sms,) if pers else (align.max_blocks * triton.cdiv(H, bn),)
    _dn2_kernel[grid](a_desc, w_desc, partial, topk_weights.reshape(-1), align.sorted_ids, align.expert_ids,
                      align.num_post_padded, H, F, align.num_routed, align.max_blocks, partial.stride(1),
                      PERSISTENT=pers, NUM_SMS=sms, WS=kind.endswith("ws"), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                      GROUP_M=c["GROUP_M"], num_warps=c["num_warps"], num_stages=c["num_stages"])
    return partial



_POISON = [False]


def _alloc(shape, dtype, device):
    """NaN-filled while checking (an unwritten element fails the check), uninitialised while timing."""
    if _POISON[0]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def rel(a, b):
    a = a.double()
    b = b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def bench(fn):
    return timed_bench(fn, 20, 120, quantiles=(0.5,))[0]


KINDS: set | None = None  # None: every candidate
OUT_CSV: list = [None]


def wanted(kind: str) -> bool:
    return KINDS is None or kind in KINDS


B = dict(GROUP_M=8, BLOCK_K=64)
GU_CANDS = [
    # (kind, BLOCK_M, cfg)
    ("tma", 128, dict(B, BLOCK_N=128, num_warps=8, num_stages=3)),
    ("tma1", 128, dict(B, BLOCK_N=128, num_warps=8, num_stages=3)),
    ("tma1", 128, dict(B, BLOCK_N=128, num_warps=8, num_stages=4)),
    ("tma1", 128, dict(B, BLOCK_N=64, num_warps=4, num_stages=4)),
    ("tma1", 128, dict(B, BLOCK_N=64, num_warps=8, num_stages=4)),
    ("tma1", 64, dict(B, BLOCK_N=128, num_warps=4, num_stages=4)),
    ("tma1ws", 128, dict(B, BLOCK_N=128, num_warps=8, num_stages=3)),
    ("tma1ws", 128, dict(B, BLOCK_N=64, num_warps=4, num_stages=4)),
    ("pers1", 128, dict(B, BLOCK_N=128, num_warps=8, num_stages=3)),
    ("pers1", 128, dict(B, BLOCK_N=64, num_warps=4, num_stages=4)),
    ("pers1ws", 128, dict(B, BLOCK_N=128, num_warps=8, num_stages=3)),
    ("pers1ws", 128, dict(B, BLOCK_N=64, num_warps=4, num_stages=4)),
]
DN_CANDS = [
    ("tma", 128, dict(B, BLOCK_N=256, num_warps=8, num_stages=4)),
    ("tma2", 128, dict(B, BLOCK_N=256, num_warps=8, num_stages=4)),
    ("tma2ws", 128, dict(B, BLOCK_N=256, num_warps=8, num_stages=3)),
    ("tma2ws", 128, dict(B, BLOCK_N=128, num_warps=4, num_stages=4)),
    ("pers2", 128, dict(B, BLOCK_N=256, num_warps=8, num_stages=4)),
    ("pers2", 128, dict(B, BLOCK_N=128, num_warps=4, num_stages=4)),
    ("pers2ws", 128, dict(B, BLOCK_N=256, num_warps=8, num_stages=3)),
    ("pers2ws", 128, dict(B, BLOCK_N=128, num_warps=4, num_stages=4)),
]


def gu_any(kind, x, xs, w, a, c):
    if kind.startswith(("tma1", "pers1")):
        return gu1_candidate(kind, x, xs, w, a, c)
    return gu_candidate(kind, x, xs if kind != "tma_w" else None, w, a, c)


def dn_any(kind, act, w_down, a, tw, c):
    if kind.startswith(("tma2", "pers2")):
        return dn2_candidate(kind, act, w_down, a, tw, c)
    return dn_candidate(kind, act, w_down, a, tw, c)


def run_case(model, T, rows_out, routing="uniform"):
    from problems import load_models, make_tokens, make_weights
    m = load_models()[model]
    w = make_weights(m, torch.bfloat16, "cuda", routing)
    x = make_tokens(m, T, w, routing, torch.bfloat16, "cuda", seed=T)
    E, F2, H = w.w_gate_up.shape
    F = F2 // 2
    K = m.top_k
    cfg = tritonmoe.api.resolve_config(x, T * K, E, H, F, None)
    topk_weights, topk_ids = route(x, w.router_weight, K, True)
    flops_gu = 2 * T * K * H * F2
    flops_dn = 2 * T * K * H * F

    def record(stage, kind, bm, c, ms, err, note=""):
        tf = (flops_gu if stage == "gate_up" else flops_dn) / ms / 1e9
        rows_out.append(dict(model=model, routing=routing, tokens=T, stage=stage, kind=kind, BLOCK_M=bm,
                             cfg=json.dumps(c), ms=ms, tflops=tf, rel_err=err, note=note,
                             device=torch.cuda.get_device_name()))
        if OUT_CSV[0] is not None:  # every row as it comes: a job cut short keeps what it measured
            pd.DataFrame(rows_out).to_csv(OUT_CSV[0], index=False)
        print(f"{model:14s} T={T:5d} {stage:7s} {kind:6s} BM={bm:3d} {json.dumps(c):90s} {ms*1e3:9.1f} us "
              f"{tf:6.0f} TF/s err={err:.1e} {note}", flush=True)

    # cuBLAS ceiling: equal rows per expert, dense bmm.
    me = max(1, T * K // E)
    if wanted("cublas"):
        xa = torch.randn(E, me, H, dtype=torch.bfloat16, device="cuda")
        wg = w.w_gate_up.transpose(1, 2)
        ms = bench(lambda: torch.bmm(xa, wg))
        record("gate_up", "cublas", me, {}, ms, 0.0, "bmm, gate|up unfused, uniform rows")
        act_d = torch.randn(E, me, F, dtype=torch.bfloat16, device="cuda")
        wd = w.w_down.transpose(1, 2)
        ms = bench(lambda: torch.bmm(act_d, wd))
        record("down", "cublas", me, {}, ms, 0.0, "bmm, uniform rows")
        del xa, act_d

    aligns = {}

    def get_align(bm):
        if bm not in aligns:
            a = align_tokens(topk_ids, E, bm)
            aligns[bm] = (a, gather_rows(x, a))
        return aligns[bm]

    bm0 = cfg["BLOCK_M"]
    a0, _ = get_align(bm0)
    ref_act = prod_gate_up(x, w.w_gate_up, a0, cfg["gate_up"], fuse_swiglu=True)
    ms = bench(lambda: prod_gate_up(x, w.w_gate_up, a0, cfg["gate_up"], fuse_swiglu=True))
    record("gate_up", "prod", bm0, cfg["gate_up"], ms, 0.0)
    ref_part = prod_down(ref_act, w.w_down, a0, topk_weights, cfg["down"])
    ms = bench(lambda: prod_down(ref_act, w.w_down, a0, topk_weights, cfg["down"]))
    record("down", "prod", bm0, cfg["down"], ms, 0.0)
    ref_y = ref_part.float().sum(0).reshape(T, K, H).sum(1)
    a128, xs128 = get_align(128)
    if wanted("gather"):
        ms = bench(lambda: gather_rows(x, a128))
        record("gate_up", "gather", 128, {}, ms, 0.0, "x -> x_sorted")

    def slot_rows(act, a):
        # act rows in aligned order -> rows per routed slot, so that different BLOCK_M compare
        n = int(a.num_post_padded)  # positions past it hold no slot (never written by the alignment)
        ids = a.sorted_ids[:n].long()
        act = act[:n]
        ok = (ids >= 0) & (ids < a.num_routed)
        out = torch.zeros((a.num_routed, act.shape[1]), dtype=torch.float64, device=act.device)
        out[ids[ok]] = act[ok].double()
        return out

    ref_slots = slot_rows(ref_act, a0)
    for kind, bm, c in GU_CANDS:
        if not wanted(kind):
            continue
        a, xs = get_align(bm)
        try:
            _POISON[0] = True
            out = gu_any(kind, x, xs, w.w_gate_up, a, c)
            _POISON[0] = False
            err = rel(slot_rows(out, a), ref_slots)
            ms = bench(lambda: gu_any(kind, x, xs, w.w_gate_up, a, c))
            record("gate_up", kind, bm, c, ms, err)
        except Exception as e:  # noqa: BLE001 - a candidate that fails to build is a result too
            _POISON[0] = False
            record("gate_up", kind, bm, c, float("nan"), float("nan"), f"FAILED {type(e).__name__}: {str(e)[:160]}")
            traceback.print_exc(limit=2)
    for kind, bm, c in DN_CANDS:
        if not wanted(kind):
            continue
        a, _ = get_align(bm)
        try:
            act = prod_gate_up(x, w.w_gate_up, a, cfg["gate_up"] | {}, fuse_swiglu=True)
            _POISON[0] = True
            part = dn_any(kind, act, w.w_down, a, topk_weights, c)
            _POISON[0] = False
            err = rel(part.float().sum(0).reshape(T, K, H).sum(1), ref_y)
            ms = bench(lambda: dn_any(kind, act, w.w_down, a, topk_weights, c))
            record("down", kind, bm, c, ms, err)
        except Exception as e:  # noqa: BLE001
            _POISON[0] = False
            record("down", kind, bm, c, float("nan"), float("nan"), f"FAILED {type(e).__name__}: {str(e)[:160]}")
            traceback.print_exc(limit=2)


def main(argv=None):
    ap = argparse.ArgumentParser()
    add_cases_argument(ap, "mixtral-8x7b:1024")
    ap.add_argument("--routing", default="uniform", choices=["uniform", "zipf"],
                    help="zipf: the skewed draw, to see what larger BLOCK_M gives hot experts (NOTES, zipf)")
    ap.add_argument("--out", type=Path, default=None, help="folder for gemm_lab.csv")
    ap.add_argument("--kinds", nargs="+", default=None, help="only these candidate kinds (cublas, prod, gather, tma1, ...)")
    args = ap.parse_args(argv)
    global KINDS
    KINDS = set(args.kinds) if args.kinds else None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        OUT_CSV[0] = args.out / "gemm_lab.csv"
    rows = []
    for model, T in args.cases:
        run_case(model, T, rows, args.routing)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
