"""Split-tail lab (perf notes v9): the down projection's last partial wave split along F.

Not part of the package. At the Mixtral ridge the down GEMM has few tiles of a long K (mixtral-8x7b T=512: 192
tiles of F=14336 on 132 SMs, 1.45 waves; ncu: SMs active 80% of the kernel). Here the tiles that fill whole waves run
as they are, and each tile of the last partial wave is computed by `split = min(NUM_SMS // rem, MAX_SPLIT)` programs
(`rem` tiles in that wave; none when it is more than half full), one per slice of F: each but the last stores its
fp32 tile in a workspace and raises a flag (release); the last, launched after them, waits for each flag
(acquire), sums the slices in their order and its own last, resets the flags for the next call, and writes the
routed rows as the production kernel does. The sum is the same whatever the timing (no atomics on data), so the
result is deterministic. Assumes programs start in launch order (the first half of a pair is resident before the
second waits), as stream-K GEMMs do.

Checked against the production kernel (`tritonmoe.down`, same config, no tail blocks) and timed beside it as
CUDA-graph replays (`tune.graph_time`).

    python experiments/bench/splittail_lab.py --cases mixtral-8x7b:512 mixtral-8x7b:1024 --out $OUT/splittail.csv
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
from tritonmoe.down import combine, down  # noqa: E402
from tritonmoe.gate_up import gate_up  # noqa: E402
from problems import lab_main  # noqa: E402


@triton.jit
def _down_split_tail_kernel(a_desc, w_desc, partial_ptr, topk_w_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
                            work_ptr, flag_ptr, H, F, num_routed, stride_pm,
                            NUM_SMS: tl.constexpr, MAX_SPLIT: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.load(num_post_ptr) // BLOCK_M
    num_pid_n = tl.cdiv(H, BLOCK_N)
    tiles = num_pid_m * num_pid_n
    full = tiles
    if tiles >= NUM_SMS:
        full = (tiles // NUM_SMS) * NUM_SMS
    rem = tiles - full
    split = 1
    if rem > 0:
        split = tl.minimum(NUM_SMS // rem, MAX_SPLIT)
    if split < 2:  # the last wave is more than half full: nothing to gain
        full = tiles
        rem = 0
    if pid < full + split * rem:
        tile = pid
        piece = -1  # a whole tile
        r = 0
        k_start = 0
        k_end = F
        if pid >= full:
            r = (pid - full) // split
            piece = (pid - full) % split
            tile = full + r
            k_per = tl.cdiv(tl.cdiv(F, split), BLOCK_K) * BLOCK_K
            k_start = piece * k_per
            k_end = tl.minimum(k_start + k_per, F)
        pid_m, pid_n = grouped_pid(tile, num_pid_m, num_pid_n, GROUP_M)
        expert = tl.load(expert_ids_ptr + pid_m)
        row0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            a = a_desc.load([row0, k0])
            w = tl.reshape(w_desc.load([expert, n0, k0]), (BLOCK_N, BLOCK_K))
            acc = tl.dot(a, w.T, acc)
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        tile_offs = offs_m[:, None] * BLOCK_N + offs_n[None, :]
        first = r * (split - 1)  # this tile's workspace entries and flags: first .. first + split - 2
        if piece >= 0 and piece < split - 1:
            tl.store(work_ptr + (first + piece) * (BLOCK_M * BLOCK_N) + tile_offs, acc)
            tl.atomic_xchg(flag_ptr + first + piece, 1, sem="release")
        else:
            if piece == split - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for j in range(0, split - 1):  # the earlier pieces, always in this order, then this one
                    ready = tl.atomic_add(flag_ptr + first + j, 0, sem="acquire")
                    while ready == 0:
                        ready = tl.atomic_add(flag_ptr + first + j, 0, sem="acquire")
                    total += tl.load(work_ptr + (first + j) * (BLOCK_M * BLOCK_N) + tile_offs, cache_modifier=".cg")
                    tl.atomic_xchg(flag_ptr + first + j, 0)  # ready for the next call
                acc = total + acc
            rows = row0 + offs_m
            slot = tl.load(sorted_ids_ptr + rows)
            ok = slot < num_routed
            acc = acc * tl.load(topk_w_ptr + slot, mask=ok, other=0.0)[:, None]
            cols = n0 + offs_n
            tl.store(partial_ptr + slot[:, None].to(tl.int64) * stride_pm + cols[None, :],
                     acc.to(partial_ptr.dtype.element_ty), mask=ok[:, None] & (cols < H)[None, :])


class SplitTail:
    """The split-tail down projection with its workspace and flags (kept between calls, as a layer would)."""

    def __init__(self, device, bm: int, bn: int, num_sms: int | None = None, max_split: int = 4):
        self.max_split = max_split
        self.sms = num_sms or torch.cuda.get_device_properties(device).multi_processor_count
        self.work = torch.empty((self.sms, bm, bn), dtype=torch.float32, device=device)
        self.flags = torch.zeros((self.sms,), dtype=torch.int32, device=device)

    def __call__(self, act, w_down, align, topk_weights, cfg):
        E, H, F = w_down.shape
        bm, bn, bk = align.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
        partial = torch.empty((1, align.num_routed, H), dtype=act.dtype, device=act.device)
        grid = (align.max_blocks * triton.cdiv(H, bn) + self.sms,)  # whole tiles, then at most NUM_SMS pieces
        _down_split_tail_kernel[grid](
            descriptor(act, [bm, bk]), descriptor(w_down, [1, bn, bk]), partial, topk_weights.reshape(-1),
            align.sorted_ids, align.expert_ids, align.num_post_padded, self.work, self.flags,
            H, F, align.num_routed, partial.stride(1),
            NUM_SMS=self.sms, MAX_SPLIT=self.max_split, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
            num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))
        return partial


def run_case(name: str, T: int, rows: list[dict]) -> None:
    from problems import load_models, make_tokens, make_weights
    from tune import graph_time
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    weights, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    cfg = tritonmoe.api.resolve_config(x, ids.numel(), m.experts, m.hidden, m.ffn, None)
    bm = cfg["BLOCK_M"]
    align = align_tokens(ids, m.experts, bm)  # no tail blocks: the lab kernel has one tile height
    act = gate_up(x, w.w_gate_up, align, cfg["gate_up"], fuse_swiglu=True)
    ref = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)
    for bn in sorted({cfg["down"]["BLOCK_N"], 128, 256}):
        dcfg = {**cfg["down"], "BLOCK_N": bn, "SPLIT_K": 1, "DESC": True}
        if bn == 256:  # the tuned tile of the ridge (fits the shared memory at BLOCK_K 64)
            dcfg.update(BLOCK_K=64, num_warps=8, num_stages=4)
        st = SplitTail(x.device, bm, bn)
        runs = {"prod": lambda: down(act, w.w_down, align, weights, dcfg),
                "split_tail": lambda: st(act, w.w_down, align, weights, dcfg)}
        outs = {}
        for kind, fn in runs.items():
            y = combine(fn(), T, m.top_k, x.dtype)
            y2 = combine(fn(), T, m.top_k, x.dtype)
            outs[kind] = y
            err = float((y.double() - ref).norm() / ref.norm())
            ms = graph_time(fn)
            tiles = int(align.num_post_padded) // bm * triton.cdiv(m.hidden, bn)
            row = {"device": torch.cuda.get_device_name(), "model": name, "tokens": T, "BLOCK_M": bm, "BLOCK_N": bn,
                   "kind": kind, "tiles": tiles, "us": round(ms * 1e3, 1), "rel_err": err,
                   "repeat_identical": bool(torch.equal(y, y2)), "cfg": str(dcfg)}
            rows.append(row)
            print(row, flush=True)
        assert (outs["prod"].float() - outs["split_tail"].float()).norm() <= 1e-2 * outs["prod"].float().norm()


def main(argv=None) -> int:
    return lab_main(argv, __doc__, "splittail_lab.py", "mixtral-8x7b:512", lambda name, T, rows, args: run_case(name, T, rows))


if __name__ == "__main__":
    sys.exit(main())
