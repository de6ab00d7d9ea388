"""Persistent-grid lab (perf notes v10): the grouped GEMMs as one program per SM looping over tiles.

Not part of the package. At large T on the many-expert models each GEMM tile has a short K loop (qwen3-30b-a3b's
down: F = 768, 12 steps of 64; olmoe-1b-7b's: 16), and a [128, 256] tile with four pipeline stages leaves room for
one program per SM, so every tile's pipeline fill and epilogue (the tile's stores) run with the tensor cores idle.
Here NUM_SMS programs walk the used tiles (`tl.range(..., flatten=True)` lets Triton's pipeliner issue the next
tile's first loads during this tile's last steps and epilogue), both operands through tensor descriptors, no tail
blocks. Timed beside the production kernels (`tritonmoe.gate_up` / `tritonmoe.down`, the tuned tile, no tail blocks)
as CUDA-graph replays (`tune.graph_time`); every output is checked against production's.

    python experiments/bench/persistent_lab.py --cases olmoe-1b-7b:2048 qwen3-30b-a3b:4096 --out $OUT/persistent.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe._gemm_common import grouped_pid  # noqa: E402
from tritonmoe.align import align_tokens  # noqa: E402
from tritonmoe.descriptors import descriptor  # noqa: E402
from tritonmoe.down import down  # noqa: E402
from tritonmoe.gate_up import gate_up, gather_rows  # noqa: E402
from problems import lab_main  # noqa: E402


@triton.jit
def _down_persistent_kernel(a_desc, w_desc, partial_ptr, topk_w_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
                            H, F, num_routed, stride_pm,
                            NUM_SMS: tl.constexpr, FLATTEN: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    num_pid_m = tl.load(num_post_ptr) // BLOCK_M
    num_pid_n = tl.cdiv(H, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(F, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = grouped_pid(tile, num_pid_m, num_pid_n, GROUP_M)
        expert = tl.load(expert_ids_ptr + pid_m)
        row0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([row0, ki * BLOCK_K])
            w = tl.reshape(w_desc.load([expert, n0, ki * BLOCK_K]), (BLOCK_N, BLOCK_K))
            acc = tl.dot(a, w.T, acc)
        slot = tl.load(sorted_ids_ptr + row0 + offs_m)
        ok = slot < num_routed
        acc = acc * tl.load(topk_w_ptr + slot, mask=ok, other=0.0)[:, None]
        cols = n0 + offs_n
        tl.store(partial_ptr + slot[:, None].to(tl.int64) * stride_pm + cols[None, :],
                 acc.to(partial_ptr.dtype.element_ty), mask=ok[:, None] & (cols < H)[None, :])


@triton.jit
def _gate_up_persistent_kernel(a_desc, w_desc, out_desc, out_ptr, expert_ids_ptr, num_post_ptr, F, H, stride_om,
                               NUM_SMS: tl.constexpr, FLATTEN: tl.constexpr, TMA_STORE: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               GROUP_M: tl.constexpr):
    num_pid_m = tl.load(num_post_ptr) // BLOCK_M
    num_pid_n = tl.cdiv(F, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(H, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = grouped_pid(tile, num_pid_m, num_pid_n, GROUP_M)
        expert = tl.load(expert_ids_ptr + pid_m)
        row0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, 2 * BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([row0, ki * BLOCK_K])
            b = tl.reshape(w_desc.load([2 * expert, n0, ki * BLOCK_K]), (2 * BLOCK_N, BLOCK_K))
            acc = tl.dot(a, b.T, acc)
        gate, up = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))
        out = (gate * tl.sigmoid(gate) * up).to(out_ptr.dtype.element_ty)
        if TMA_STORE:
            out_desc.store([row0, n0], out)
        else:
            rows = row0 + tl.arange(0, BLOCK_M)
            cols = n0 + tl.arange(0, BLOCK_N)
            tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :], out, mask=(cols < F)[None, :])


def down_persistent(act, w_down, align, topk_weights, cfg, flatten: bool, sms: int):
    E, H, F = w_down.shape
    bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    partial = torch.empty((1, align.num_routed, H), dtype=act.dtype, device=act.device)
    _down_persistent_kernel[(sms,)](
        descriptor(act, [bm, bk]), descriptor(w_down, [1, bn, bk]), partial, topk_weights.reshape(-1),
        align.sorted_ids, align.expert_ids, align.num_post_padded, H, F, align.num_routed, partial.stride(1),
        NUM_SMS=sms, FLATTEN=flatten, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
        num_warps=cfg.get("num_warps", 8), num_stages=cfg.get("num_stages", 3))
    return partial


def gate_up_persistent(x_sorted, w_gate_up, align, cfg, flatten: bool, tma_store: bool, sms: int):
    E, F2, H = w_gate_up.shape
    F = F2 // 2
    bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    out = torch.empty((x_sorted.shape[0], F), dtype=x_sorted.dtype, device=x_sorted.device)
    _gate_up_persistent_kernel[(sms,)](
        descriptor(x_sorted, [bm, bk]), descriptor(w_gate_up, [2, bn, bk], shape=[2 * E, F, H]),
        descriptor(out, [bm, bn]), out, align.expert_ids, align.num_post_padded, F, H, out.stride(0),
        NUM_SMS=sms, FLATTEN=flatten, TMA_STORE=tma_store, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        GROUP_M=cfg.get("GROUP_M", 1), num_warps=cfg.get("num_warps", 8), num_stages=cfg.get("num_stages", 3))
    return out


def run_case(name: str, T: int, rows: list[dict], gate_up_only: bool = False) -> None:
    from problems import load_models, make_tokens, make_weights
    from tune import graph_time
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    weights, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    cfg = tritonmoe.api.resolve_config(x, ids.numel(), m.experts, m.hidden, m.ffn, None)
    bm = cfg["BLOCK_M"]
    align = align_tokens(ids, m.experts, bm)  # no tail blocks: the lab kernels have one tile height
    used = int(align.num_post_padded)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    xs = gather_rows(x, align)

    def record(stage, kind, fn, ref, cfg_used):
        try:
            y = fn()
            torch.cuda.synchronize()
            err = float((y.float() - ref.float()).norm() / ref.float().norm())
            us = round(graph_time(fn) * 1e3, 1)
        except Exception as e:  # a tile that does not compile or fit: recorded, not fatal
            err, us = float("nan"), float("nan")
            print(f"  {stage} {kind}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        row = {"device": torch.cuda.get_device_name(), "model": name, "tokens": T, "BLOCK_M": bm, "stage": stage,
               "kind": kind, "us": us, "diff_vs_prod": err, "cfg": str(cfg_used)}
        rows.append(row)
        print(f"{name} T={T} {stage:8s} {kind:34s} {us:9.1f} us  diff {err:.1e}", flush=True)

    # gate/up: production (its tuned tile, pointers or descriptors; the descriptor path's gather is timed apart)
    gu = cfg["gate_up"]
    act_ref = gate_up(x, w.w_gate_up, align, gu, fuse_swiglu=True)
    record("gate_up", "prod", lambda: gate_up(x, w.w_gate_up, align, gu, fuse_swiglu=True)[:used], act_ref[:used], gu)
    record("gate_up", "gather", lambda: gather_rows(x, align), xs, {})
    gd = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": gu.get("GROUP_M", 8), "num_warps": 8, "num_stages": 4}
    record("gate_up", "prod_desc_given_gather",
           lambda: gate_up(x, w.w_gate_up, align, {**gd, "DESC": True}, fuse_swiglu=True, x_sorted=xs)[:used],
           act_ref[:used], {**gd, "DESC": True})
    for stages, flatten, tma in ((3, True, True), (3, True, False), (4, True, True), (4, True, False), (4, False, True)):
        c = {**gd, "num_stages": stages}
        record("gate_up", f"persistent_s{stages}_{'flat' if flatten else 'nest'}_{'tma' if tma else 'ptr'}",
               lambda: gate_up_persistent(xs, w.w_gate_up, align, c, flatten, tma, sms)[:used],
               act_ref[:used], c)
    for stages in (3, 4):
        c = {**gd, "num_stages": stages, "PERSISTENT": True}  # the package's kernel; run 11 timed the lab's copy
        record("gate_up", f"persistent_gather_inside_s{stages}",
               lambda: gate_up(x, w.w_gate_up, align, c, fuse_swiglu=True)[:used], act_ref[:used], c)
    if gate_up_only:
        del w
        torch.cuda.empty_cache()
        return
    # down: production with its tuned tile, the same tile through descriptors, and the persistent kernel
    dn = {**cfg["down"], "SPLIT_K": 1}
    dd = {"BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}
    part_ref = down(act_ref, w.w_down, align, weights, dn)
    record("down", "prod", lambda: down(act_ref, w.w_down, align, weights, dn), part_ref, dn)
    record("down", "prod_desc", lambda: down(act_ref, w.w_down, align, weights, {**dd, "DESC": True}), part_ref,
           {**dd, "DESC": True})
    for stages, flatten in ((3, True), (4, True), (4, False)):
        if True:
            c = {**dd, "num_stages": stages}
            record("down", f"persistent_s{stages}_{'flat' if flatten else 'nest'}",
                   lambda: down_persistent(act_ref, w.w_down, align, weights, c, flatten, sms), part_ref, c)
    del w
    torch.cuda.empty_cache()


def main(argv=None) -> int:
    return lab_main(argv, __doc__, "persistent_lab.py", "qwen3-30b-a3b:4096",
                    lambda name, T, rows, args: run_case(name, T, rows, args.gate_up_only),
                    lambda ap: ap.add_argument("--gate-up-only", action="store_true"))


if __name__ == "__main__":
    sys.exit(main())
