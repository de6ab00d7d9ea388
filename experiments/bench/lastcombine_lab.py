"""Last-arriver combine lab (perf notes v12): the combine done inside the down projection's epilogue.

Not part of the package. At large T on the K=8 models the combine is a launch of its own that reads the K bf16
partial rows of every token after the down projection has written them (qwen3-30b-a3b T=8192: 103 us of 1.27 ms,
deepseek-v3 T=8192: 354 us). Here each down tile, after storing its partial rows, counts its rows' arrivals per
(token, block of H columns) with an acq_rel atomic; the program whose arrival is a token's K-th sums the token's K
partial rows in the fixed order k = 0..K-1 (its own from registers, rounded as stored) and writes y. The sum is
the combine's, in the combine's order, so y is bit-identical to `down` + `combine` whichever program arrives last.
Counters: an int32 [T, H / BLOCK_N] tensor zeroed per call (a memset node in the graph), timed with the rest.

Timed against production `down` + `combine` (the tuned down tile, no tail blocks in either) as CUDA-graph replays
(`tune.graph_time`); every y is compared bit for bit with production's.

    python experiments/bench/lastcombine_lab.py --cases qwen3-30b-a3b:8192 deepseek-v3:8192 --out $OUT/lastcombine.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe._gemm_common import block_slots, dot_precision, grouped_pid  # noqa: E402
from tritonmoe.align import align_tokens  # noqa: E402
from tritonmoe.descriptors import descriptor  # noqa: E402
from tritonmoe.down import combine, down, uses_descriptors  # noqa: E402
from tritonmoe.gate_up import gate_up  # noqa: E402
from problems import lab_main  # noqa: E402


@triton.jit
def _last_arriver_epilogue(acc, partial_ptr, y_ptr, cnt_ptr, topk_weights_ptr, slot, row_ok, cols, col_ok, pid_n,
                           num_pid_n, stride_pm, stride_yt, TOP_K: tl.constexpr, MODE: tl.constexpr):
    # MODE (diagnostics, run 5): 0 as described; 1 counts only (no sums); 2 relaxed atomics; 3 no atomics (the
    # choice k = K-1 plays the last arriver: the same number of sums, no counting); 4 no barriers
    route_w = tl.load(topk_weights_ptr + slot, mask=row_ok, other=0.0)
    p = (acc * route_w[:, None]).to(partial_ptr.dtype.element_ty)
    tl.store(partial_ptr + slot[:, None].to(tl.int64) * stride_pm + cols[None, :], p,
             mask=row_ok[:, None] & col_ok[None, :])
    if MODE != 4:
        tl.debug_barrier()  # every thread's partial stores before this program's releases (CUTLASS's semaphore order)
    token = slot // TOP_K
    own_k = slot % TOP_K
    if MODE == 3:
        last = row_ok & (own_k == TOP_K - 1)
    elif MODE == 2:
        old = tl.atomic_add(cnt_ptr + token.to(tl.int64) * num_pid_n + pid_n, 1, mask=row_ok, sem="relaxed",
                            scope="gpu")
        last = row_ok & (old == TOP_K - 1)
    else:
        old = tl.atomic_add(cnt_ptr + token.to(tl.int64) * num_pid_n + pid_n, 1, mask=row_ok, sem="acq_rel",
                            scope="gpu")
        last = row_ok & (old == TOP_K - 1)
    if MODE == 1:
        last = last & (own_k > TOP_K)
    if MODE != 4:
        tl.debug_barrier()  # the acquiring threads' view before any thread loads the other programs' rows
    if tl.sum(last.to(tl.int32), axis=0) > 0:
        acc2 = tl.zeros(acc.shape, dtype=tl.float32)
        for k in tl.static_range(TOP_K):
            rows = (token * TOP_K + k).to(tl.int64)
            v = tl.load(partial_ptr + rows[:, None] * stride_pm + cols[None, :],
                        mask=(last & (own_k != k))[:, None] & col_ok[None, :], other=0.0, cache_modifier=".cg")
            acc2 += tl.where((own_k == k)[:, None], p, v).to(tl.float32)
        tl.store(y_ptr + token[:, None].to(tl.int64) * stride_yt + cols[None, :], acc2.to(y_ptr.dtype.element_ty),
                 mask=last[:, None] & col_ok[None, :])


@triton.jit
def _down_last_kernel(a_ptr, w_ptr, partial_ptr, y_ptr, cnt_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr,
                      num_post_ptr, H, F, num_routed, num_pid_m,
                      stride_am, stride_af, stride_we, stride_wh, stride_wf, stride_pm, stride_yt,
                      TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, MODE: tl.constexpr, PRECISION: tl.constexpr):
    num_pid_n = tl.cdiv(H, BLOCK_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    row0 = pid_m * BLOCK_M
    if row0 < tl.load(num_post_ptr):
        expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < H
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rows[:, None].to(tl.int64) * stride_am + ks[None, :] * stride_af
        w_ptrs = w_ptr + expert * stride_we + cols[None, :].to(tl.int64) * stride_wh + ks[:, None] * stride_wf
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, F, BLOCK_K):
            a = tl.load(a_ptrs)
            w = tl.load(w_ptrs, mask=col_ok[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
            a_ptrs += BLOCK_K * stride_af
            w_ptrs += BLOCK_K * stride_wf
        _last_arriver_epilogue(acc, partial_ptr, y_ptr, cnt_ptr, topk_weights_ptr, slot, row_ok, cols, col_ok, pid_n,
                               num_pid_n, stride_pm, stride_yt, TOP_K, MODE)


@triton.jit
def _down_last_desc_kernel(a_desc, w_desc, partial_ptr, y_ptr, cnt_ptr, topk_weights_ptr, sorted_ids_ptr,
                           expert_ids_ptr, num_post_ptr, H, F, num_routed, num_pid_m, stride_pm, stride_yt,
                           TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr, MODE: tl.constexpr, PRECISION: tl.constexpr):
    num_pid_n = tl.cdiv(H, BLOCK_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    row0 = pid_m * BLOCK_M
    if row0 < tl.load(num_post_ptr):
        expert, rows, slot, row_ok = block_slots(sorted_ids_ptr, expert_ids_ptr, pid_m, row0, num_routed, BLOCK_M)
        n0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, F, BLOCK_K):
            a = a_desc.load([row0, k0])
            w = tl.reshape(w_desc.load([expert.to(tl.int32), n0, k0]), (BLOCK_N, BLOCK_K))
            acc = tl.dot(a, w.T, acc, input_precision=PRECISION)
        cols = n0 + tl.arange(0, BLOCK_N)
        _last_arriver_epilogue(acc, partial_ptr, y_ptr, cnt_ptr, topk_weights_ptr, slot, row_ok, cols, cols < H,
                               pid_n, num_pid_n, stride_pm, stride_yt, TOP_K, MODE)


def down_last(act, w_down, align, topk_weights, T: int, K: int, cfg: dict, desc: bool, mode: int = 0) -> torch.Tensor:
    E, H, F = w_down.shape
    bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    partial = torch.empty((align.num_routed, H), dtype=act.dtype, device=act.device)
    y = torch.empty((T, H), dtype=act.dtype, device=act.device)
    cnt = torch.zeros((T, triton.cdiv(H, bn)), dtype=torch.int32, device=act.device)
    num_pid_m = align.max_blocks
    grid = (num_pid_m * triton.cdiv(H, bn),)
    common = dict(TOP_K=K, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1), MODE=mode,
                  PRECISION=dot_precision(act.dtype),
                  num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))
    if desc:
        _down_last_desc_kernel[grid](descriptor(act, [bm, bk]), descriptor(w_down, [1, bn, bk]), partial, y, cnt,
                                     topk_weights.reshape(-1), align.sorted_ids, align.expert_ids,
                                     align.num_post_padded, H, F, align.num_routed, num_pid_m, partial.stride(0),
                                     y.stride(0), **common)
    else:
        assert F % bk == 0
        _down_last_kernel[grid](act, w_down, partial, y, cnt, topk_weights.reshape(-1), align.sorted_ids,
                                align.expert_ids, align.num_post_padded, H, F, align.num_routed, num_pid_m,
                                act.stride(0), act.stride(1), w_down.stride(0), w_down.stride(1), w_down.stride(2),
                                partial.stride(0), y.stride(0), **common)
    return y


MODES = (0, 1, 2, 3, 4)


def run_case(name: str, T: int, rows: list[dict]) -> None:
    from problems import load_models, make_tokens, make_weights
    from tune import graph_time
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    weights, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    cfg = tritonmoe.api.resolve_config(x, ids.numel(), m.experts, m.hidden, m.ffn, None)
    align = align_tokens(ids, m.experts, cfg["BLOCK_M"])  # no tail blocks: the lab kernels have one tile height
    act = gate_up(x, w.w_gate_up, align, {k: v for k, v in cfg["gate_up"].items() if k != "PERSISTENT"},
                  fuse_swiglu=True)
    dn = {**cfg["down"], "SPLIT_K": 1}
    dn.pop("COMBINE", None)

    def prod():
        return combine(down(act, w.w_down, align, weights, dn), T, m.top_k, x.dtype)

    y_ref = prod()
    torch.cuda.synchronize()

    def record(kind, fn, cfg_used, check=True):
        try:
            y = fn()
            torch.cuda.synchronize()
            same = bool(torch.equal(y, y_ref)) if check else None
            err = float((y.float() - y_ref.float()).norm() / y_ref.float().norm()) if check else float("nan")
            us = round(graph_time(fn) * 1e3, 1)
            again = bool(torch.equal(fn(), y)) if check else None
        except Exception as e:  # a tile that does not compile or fit: recorded, not fatal
            same, again, err, us = False, False, float("nan"), float("nan")
            print(f"  {kind}: {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
        rows.append({"device": torch.cuda.get_device_name(), "model": name, "tokens": T, "BLOCK_M": align.block_m,
                     "kind": kind, "us": us, "bit_identical_to_prod": same, "repeat_identical": again,
                     "rel_diff": err, "cfg": str(cfg_used)})
        print(f"{name} T={T} {kind:28s} {us:9.1f} us  identical {same} repeat {again} diff {err:.1e}", flush=True)

    record("prod_down_combine", prod, dn)
    record("prod_down_only", lambda: down(act, w.w_down, align, weights, dn), dn, check=False)
    desc = uses_descriptors(dn, act, w.w_down)
    for mode in MODES:
        record(f"last_arriver_{'desc' if desc else 'ptr'}_mode{mode}",
               lambda mode=mode: down_last(act, w.w_down, align, weights, T, m.top_k, dn, desc, mode), dn,
               check=mode in (0, 2, 4))


def main(argv=None) -> int:
    return lab_main(argv, __doc__, "lastcombine_lab.py", "qwen3-30b-a3b:8192", lambda name, T, rows, args: run_case(name, T, rows))


if __name__ == "__main__":
    sys.exit(main())
