"""Gluon lab (perf notes v15): the grouped GEMMs written in Gluon, Triton 3.6's explicit Hopper dialect.

Not part of the package. Every remaining miss of the H100 targets is a grouped GEMM at 400-600 TFLOP/s where
cuBLAS's `bmm` on the same rows reaches 550-760 (NOTES v9, `ceiling.csv`); Triton's own tile pipeline decides the
order of the TMA waits and the tensor-core groups itself. Gluon (`triton.experimental.gluon`, shipped with Triton
3.6) lets the kernel say it: an explicit ring of shared-memory buffers filled by TMA and released by
`warpgroup_mma_wait`, the loads for the next tile issued during this tile's last steps (one flattened loop over
the program's tiles), gate and up as two asynchronous wgmma groups from one load of the tokens, the epilogue
(`silu(gate) * up`) in registers and out through a TMA store.

Both GEMMs here read tokens already in aligned order (`gather_rows`, as the package's descriptor path) and write
rows in aligned order (the down projection without production's weighted scatter to routed slots: the lab times
the main loop). Timed beside the package's kernels on the same inputs (its tuned config, the persistent descriptor
kernel) and cuBLAS `bmm` on even rows, as CUDA-graph replays (`tune.graph_time`); every Gluon output is checked
against production's (gate/up) or a float32 reference of the same GEMM (down).

    python experiments/bench/gluon_lab.py --cases mixtral-8x7b:1024 deepseek-v3:8192 --out $OUT/gluon.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402

from problems import lab_main  # noqa: E402


@gluon.jit
def _grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
    """`tritonmoe._gemm_common.grouped_pid` in Gluon: GROUP_M row blocks at a time. (A Gluon kernel compiles a call to
    the `triton.jit` original on the GPU, but not where TRITON_INTERPRET has turned it into an interpreted function,
    as in the tests that compile these kernels without a GPU.)"""
    width = GROUP_M * num_pid_n
    group = tile // width
    first_m = group * GROUP_M
    size_m = gl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % width) % size_m
    pid_n = (tile % width) // size_m
    return pid_m, pid_n


@gluon.jit
def _program_tiles(num_post_ptr, N, K, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
                   NUM_PROGRAMS: gl.constexpr):
    """This program's share of the persistent grid over the used row blocks: (pid, row blocks, column blocks,
    K steps a tile, tiles of this program)."""
    pid = gl.program_id(0)
    num_pid_m = gl.load(num_post_ptr) // BM
    num_pid_n = gl.cdiv(N, BN)
    my_tiles = gl.cdiv(gl.maximum(num_pid_m * num_pid_n - pid, 0), NUM_PROGRAMS)
    return pid, num_pid_m, num_pid_n, gl.cdiv(K, BK), my_tiles


@gluon.jit
def _store_tile(out, out_desc, out_smem, row0, n0):
    """A finished tile through the output's descriptor (TMA store), once the previous tile's store has left out_smem."""
    tma.store_wait(pendings=0)
    out_smem.store(out.to(out_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(out_desc, [row0, n0], out_smem)


@gluon.jit
def _issue_loads(step, total, k_tiles, pid, num_pid_m, num_pid_n, expert_ids_ptr, a_desc, w_desc, a_bufs, w_bufs,
                 bars, w_rows, second_row, NUM_PROGRAMS: gl.constexpr, NUM_BUF: gl.constexpr, TWO: gl.constexpr,
                 GROUP_M: gl.constexpr):
    """TMA loads of the program's `step`-th K step (over all its tiles) into ring slot step % NUM_BUF: the tokens'
    [BM, BK] box and one (plain) or two (gate and up) [BN, BK] weight boxes. Past the last step: predicated off."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    pred = step < total
    s = gl.minimum(step, total - 1)
    tile = pid + (s // k_tiles) * NUM_PROGRAMS
    k0 = (s % k_tiles) * BK
    pid_m, pid_n = _grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)
    # a program without tiles (total == 0) has no valid block: read block 0's expert, load nothing
    expert = gl.load(expert_ids_ptr + gl.where(pred, pid_m, 0))
    slot = step % NUM_BUF
    bar = bars.index(slot)
    if TWO:
        mbarrier.expect(bar, a_desc.block_type.nbytes + 2 * w_desc.block_type.nbytes, pred=pred)
    else:
        mbarrier.expect(bar, a_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(a_desc, [pid_m * BM, k0], bar, a_bufs.index(slot), pred)
    w_row = expert * w_rows + pid_n * BN
    tma.async_copy_global_to_shared(w_desc, [w_row, k0], bar, w_bufs.index((1 + TWO) * slot), pred)
    if TWO:
        tma.async_copy_global_to_shared(w_desc, [w_row + second_row, k0], bar, w_bufs.index(2 * slot + 1), pred)


@gluon.jit
def _grouped_gemm_kernel(a_desc, w_desc, out_desc, expert_ids_ptr, num_post_ptr, N, K, w_rows, second_row,
                         NUM_PROGRAMS: gl.constexpr, SWIGLU: gl.constexpr, NUM_BUF: gl.constexpr,
                         GROUP_M: gl.constexpr, num_warps: gl.constexpr):
    """Persistent grouped GEMM over aligned row blocks. Block m of BM rows belongs to expert `expert_ids[m]`; its
    weights are rows `expert * w_rows + n0 ...` of the 2-D weight view (`w_desc`, box [BN, BK], K-major).
    SWIGLU: the second box at `+ second_row` is the up tile; out = silu(x Wg^T) * (x Wu^T). Else out = x W^T."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    dtype: gl.constexpr = a_desc.dtype
    gl.static_assert(BM == 16 * num_warps, "one 16-row wgmma slice per warp")
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BN, 16])

    pid, num_pid_m, num_pid_n, k_tiles, my_tiles = _program_tiles(num_post_ptr, N, K, BM, BN, BK, NUM_PROGRAMS)
    total = my_tiles * k_tiles

    a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + a_desc.block_type.shape, a_desc.layout)
    w_bufs = gl.allocate_shared_memory(dtype, [(1 + SWIGLU) * NUM_BUF] + w_desc.block_type.shape, w_desc.layout)
    out_smem = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape, out_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(bars.index(i), count=1)

    for i in gl.static_range(NUM_BUF - 1):
        _issue_loads(i, total, k_tiles, pid, num_pid_m, num_pid_n, expert_ids_ptr, a_desc, w_desc, a_bufs, w_bufs,
                     bars, w_rows, second_row, NUM_PROGRAMS, NUM_BUF, SWIGLU, GROUP_M)

    acc_g = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    acc_u = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    for step in range(total):
        slot = step % NUM_BUF
        kk = step % k_tiles
        mbarrier.wait(bars.index(slot), (step // NUM_BUF) & 1)
        first = kk > 0
        acc_g = warpgroup_mma(a_bufs.index(slot), w_bufs.index((1 + SWIGLU) * slot).permute((1, 0)), acc_g,
                              use_acc=first, is_async=True)
        if SWIGLU:
            acc_u = warpgroup_mma(a_bufs.index(slot), w_bufs.index(2 * slot + 1).permute((1, 0)), acc_u,
                                  use_acc=first, is_async=True)
            # this step's two groups may run on; the previous step's are done, so its ring slot is free
            acc_g, acc_u = warpgroup_mma_wait(num_outstanding=2, deps=(acc_g, acc_u))
        else:
            acc_g = warpgroup_mma_wait(num_outstanding=1, deps=(acc_g, ))
        _issue_loads(step + NUM_BUF - 1, total, k_tiles, pid, num_pid_m, num_pid_n, expert_ids_ptr, a_desc, w_desc,
                     a_bufs, w_bufs, bars, w_rows, second_row, NUM_PROGRAMS, NUM_BUF, SWIGLU, GROUP_M)
        if kk == k_tiles - 1:
            tile = pid + (step // k_tiles) * NUM_PROGRAMS
            pid_m, pid_n = _grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)
            if SWIGLU:
                acc_g, acc_u = warpgroup_mma_wait(num_outstanding=0, deps=(acc_g, acc_u))
                out = acc_g / (1.0 + gl.exp(-acc_g)) * acc_u
            else:
                acc_g = warpgroup_mma_wait(num_outstanding=0, deps=(acc_g, ))
                out = acc_g
            _store_tile(out, out_desc, out_smem, pid_m * BM, pid_n * BN)
    tma.store_wait(pendings=0)
    for i in gl.static_range(NUM_BUF):
        mbarrier.invalidate(bars.index(i))


@gluon.jit
def _ws_loader(a_desc, w_desc, a_bufs, w_bufs, ready, empty, expert_ids_ptr, pid, num_pid_m, num_pid_n, my_tiles,
               k_tiles, w_rows, second_row, NUM_PROGRAMS: gl.constexpr, NUM_BUF: gl.constexpr, TWO: gl.constexpr,
               GROUP_M: gl.constexpr):
    """Warp-specialised producer (one warp): waits for a free ring slot, then TMA-loads the step's boxes into it."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    step = 0
    for t in range(my_tiles):
        pid_m, pid_n = _grouped_tile(pid + t * NUM_PROGRAMS, num_pid_m, num_pid_n, GROUP_M)
        w_row = gl.load(expert_ids_ptr + pid_m) * w_rows + pid_n * BN
        for kk in range(k_tiles):
            slot = step % NUM_BUF
            mbarrier.wait(empty.index(slot), ((step // NUM_BUF) & 1) ^ 1)  # the first round passes at once
            bar = ready.index(slot)
            mbarrier.expect(bar, a_desc.block_type.nbytes + (1 + TWO) * w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [pid_m * BM, kk * BK], bar, a_bufs.index(slot))
            tma.async_copy_global_to_shared(w_desc, [w_row, kk * BK], bar, w_bufs.index((1 + TWO) * slot))
            if TWO:
                tma.async_copy_global_to_shared(w_desc, [w_row + second_row, kk * BK], bar, w_bufs.index(2 * slot + 1))
            step += 1


@gluon.jit
def _ws_consumer(a_bufs, w_bufs, ready, empty, out_desc, out_smem, pid, num_pid_m, num_pid_n, my_tiles, k_tiles,
                 NUM_PROGRAMS: gl.constexpr, NUM_BUF: gl.constexpr, SWIGLU: gl.constexpr, GROUP_M: gl.constexpr,
                 num_warps: gl.constexpr):
    """Warp-specialised consumer (the default partition): wgmma groups on ready slots, each slot released once the
    group after it is issued and it has completed; the epilogue of each tile through a TMA store."""
    BM: gl.constexpr = out_desc.block_type.shape[0]
    BN: gl.constexpr = out_desc.block_type.shape[1]
    mma_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BN, 16])
    acc_g = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    acc_u = gl.zeros((BM, BN), dtype=gl.float32, layout=mma_layout)
    step = 0
    for t in range(my_tiles):
        for kk in range(k_tiles):
            slot = step % NUM_BUF
            mbarrier.wait(ready.index(slot), (step // NUM_BUF) & 1)
            acc_g = warpgroup_mma(a_bufs.index(slot), w_bufs.index((1 + SWIGLU) * slot).permute((1, 0)), acc_g,
                                  use_acc=kk > 0, is_async=True)
            if SWIGLU:
                acc_u = warpgroup_mma(a_bufs.index(slot), w_bufs.index(2 * slot + 1).permute((1, 0)), acc_u,
                                      use_acc=kk > 0, is_async=True)
                acc_g, acc_u = warpgroup_mma_wait(num_outstanding=2, deps=(acc_g, acc_u))
            else:
                acc_g = warpgroup_mma_wait(num_outstanding=1, deps=(acc_g, ))
            if kk > 0:
                mbarrier.arrive(empty.index((step + NUM_BUF - 1) % NUM_BUF), count=1)
            step += 1
        if SWIGLU:
            acc_g, acc_u = warpgroup_mma_wait(num_outstanding=0, deps=(acc_g, acc_u))
            out = acc_g / (1.0 + gl.exp(-acc_g)) * acc_u
        else:
            acc_g = warpgroup_mma_wait(num_outstanding=0, deps=(acc_g, ))
            out = acc_g
        mbarrier.arrive(empty.index((step + NUM_BUF - 1) % NUM_BUF), count=1)
        pid_m, pid_n = _grouped_tile(pid + t * NUM_PROGRAMS, num_pid_m, num_pid_n, GROUP_M)
        _store_tile(out, out_desc, out_smem, pid_m * BM, pid_n * BN)
    tma.store_wait(pendings=0)


@gluon.jit
def _grouped_gemm_ws_kernel(a_desc, w_desc, out_desc, expert_ids_ptr, num_post_ptr, N, K, w_rows, second_row,
                            NUM_PROGRAMS: gl.constexpr, SWIGLU: gl.constexpr, NUM_BUF: gl.constexpr,
                            GROUP_M: gl.constexpr, LOADER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """`_grouped_gemm_kernel` warp-specialised (`gl.warp_specialize`): one producer warp issues the TMA loads against
    empty/ready barrier pairs; the num_warps default warps run the wgmma groups and the epilogue."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    dtype: gl.constexpr = a_desc.dtype
    gl.static_assert(BM == 16 * num_warps, "one 16-row wgmma slice per warp")
    pid, num_pid_m, num_pid_n, k_tiles, my_tiles = _program_tiles(num_post_ptr, N, K, BM, BN, BK, NUM_PROGRAMS)
    a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + a_desc.block_type.shape, a_desc.layout)
    w_bufs = gl.allocate_shared_memory(dtype, [(1 + SWIGLU) * NUM_BUF] + w_desc.block_type.shape, w_desc.layout)
    out_smem = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape, out_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    gl.warp_specialize(
        [(_ws_consumer, (a_bufs, w_bufs, ready, empty, out_desc, out_smem, pid, num_pid_m, num_pid_n, my_tiles,
                         k_tiles, NUM_PROGRAMS, NUM_BUF, SWIGLU, GROUP_M, num_warps)),
         (_ws_loader, (a_desc, w_desc, a_bufs, w_bufs, ready, empty, expert_ids_ptr, pid, num_pid_m, num_pid_n,
                       my_tiles, k_tiles, w_rows, second_row, NUM_PROGRAMS, NUM_BUF, SWIGLU, GROUP_M))],
        [1], [LOADER_REGS])


_POISON = [False]  # set while `record` makes its checked call: outputs start as NaN, so unwritten rows show


def _output(shape, like: torch.Tensor) -> torch.Tensor:
    if _POISON[0]:
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _desc(t: torch.Tensor, block: list[int]) -> TensorDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16)
    return TensorDescriptor.from_tensor(t, block, layout)


def gluon_gate_up(xs: torch.Tensor, w_gate_up: torch.Tensor, align, *, block_n=128, block_k=64, num_buf=4,
                  group_m=8, ws=False, loader_regs=40, programs=None, num_warps=8) -> torch.Tensor:
    """silu(x Wg^T) * (x Wu^T) for tokens in aligned order `xs` [rows, H]; weights [E, 2F, H] with F % block_n == 0.
    `ws`: the warp-specialised kernel."""
    E, F2, H = w_gate_up.shape
    F = F2 // 2
    bm = align.block_m
    assert F % block_n == 0, "the lab's 2-D weight view needs whole boxes per expert"
    out = _output((xs.shape[0], F), xs)
    tiles = align.max_blocks * (F // block_n)
    programs = programs or min(torch.cuda.get_device_properties(xs.device).multi_processor_count, tiles)
    args = (_desc(xs, [bm, block_k]), _desc(w_gate_up.view(E * F2, H), [block_n, block_k]), _desc(out, [bm, block_n]),
            align.expert_ids, align.num_post_padded, F, H, F2, F)
    meta = dict(NUM_PROGRAMS=programs, SWIGLU=True, NUM_BUF=num_buf, GROUP_M=group_m, num_warps=num_warps)
    if ws:
        _grouped_gemm_ws_kernel[(programs,)](*args, LOADER_REGS=loader_regs, **meta)
    else:
        _grouped_gemm_kernel[(programs,)](*args, **meta)
    return out


def gluon_down(act: torch.Tensor, w_down: torch.Tensor, align, *, block_n=256, block_k=64, num_buf=3, group_m=8,
               ws=False, loader_regs=40, programs=None, num_warps=8) -> torch.Tensor:
    """act [rows, F] (aligned order) times each block's expert's W_down^T [F, H], rows in aligned order."""
    E, H, F = w_down.shape
    bm = align.block_m
    assert H % block_n == 0, "the lab's 2-D weight view needs whole boxes per expert"
    out = _output((act.shape[0], H), act)
    tiles = align.max_blocks * (H // block_n)
    programs = programs or min(torch.cuda.get_device_properties(act.device).multi_processor_count, tiles)
    args = (_desc(act, [bm, block_k]), _desc(w_down.view(E * H, F), [block_n, block_k]), _desc(out, [bm, block_n]),
            align.expert_ids, align.num_post_padded, H, F, H, 0)
    meta = dict(NUM_PROGRAMS=programs, SWIGLU=False, NUM_BUF=num_buf, GROUP_M=group_m, num_warps=num_warps)
    if ws:
        _grouped_gemm_ws_kernel[(programs,)](*args, LOADER_REGS=loader_regs, **meta)
    else:
        _grouped_gemm_kernel[(programs,)](*args, **meta)
    return out


def down_reference(act: torch.Tensor, w_down: torch.Tensor, align) -> torch.Tensor:
    """The aligned-order down product in float32, block by block (the Gluon down kernel's reference)."""
    used = int(align.num_post_padded)
    bm = align.block_m
    ids = align.expert_ids[: used // bm].tolist()
    out = torch.empty((used, w_down.shape[1]), dtype=torch.float32, device=act.device)
    for b, e in enumerate(ids):
        out[b * bm:(b + 1) * bm] = act[b * bm:(b + 1) * bm].float() @ w_down[e].float().T
    return out


def run_case(name: str, T: int, rows: list[dict], args) -> None:
    import tritonmoe
    from problems import load_models, make_tokens, make_weights
    from tritonmoe.align import align_tokens
    from tritonmoe.down import down
    from tritonmoe.gate_up import gate_up, gather_rows
    from tune import graph_time
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    weights, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    cfg = tritonmoe.api.resolve_config(x, ids.numel(), m.experts, m.hidden, m.ffn, None)
    E, H, F = m.experts, m.hidden, m.ffn
    dev = torch.cuda.get_device_name()

    def record(stage, kind, bm, fn, ref, cfg_used, flops, used=None):
        try:
            _POISON[0] = True
            try:
                y = fn()
            finally:
                _POISON[0] = False
            torch.cuda.synchronize()
            if ref is not None:  # rows past the used blocks are never written: compared up to `used`
                y, r = (y[:used], ref[:used]) if used is not None else (y, ref)
                err = float((y.float() - r.float()).norm() / r.float().norm())
            else:
                err = float("nan")
            us = round(graph_time(fn) * 1e3, 1)
        except Exception as e:  # a variant that does not compile or fit: recorded, not fatal
            err, us = float("nan"), float("nan")
            print(f"  {stage} {kind}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}",
                  flush=True)
        tf = flops / (us * 1e-6) / 1e12 if us == us else float("nan")
        rows.append({"device": dev, "model": name, "tokens": T, "BLOCK_M": bm, "stage": stage, "kind": kind,
                     "us": us, "tflops": round(tf, 1), "rel_diff": err, "cfg": str(cfg_used)})
        print(f"{name} T={T} BM={bm} {stage:8s} {kind:34s} {us:9.1f} us {tf:6.1f} TF/s diff {err:.1e}", flush=True)

    for bm in args.block_m:
        align = align_tokens(ids, E, bm)  # no tail blocks: one tile height
        used = int(align.num_post_padded)
        gu_flops = 2.0 * used * H * 2 * F
        dn_flops = 2.0 * used * F * H
        xs = gather_rows(x, align)
        # production: its tuned gate/up (pointers or descriptors), and its persistent descriptor kernel given xs
        gu = {**cfg["gate_up"], "BLOCK_M": bm}
        act_ref = gate_up(x, w.w_gate_up, align, gu, fuse_swiglu=True)
        record("gate_up", "prod_tuned", bm, lambda: gate_up(x, w.w_gate_up, align, gu, fuse_swiglu=True), act_ref,
               gu, gu_flops, used)
        pd = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4, "DESC": True,
              "PERSISTENT": True}
        record("gate_up", "prod_persistent_desc(xs given)", bm,
               lambda: gate_up(x, w.w_gate_up, align, pd, fuse_swiglu=True, x_sorted=xs), act_ref, pd, gu_flops, used)
        for ws in args.ws:
            for nb in args.num_buf:
                for gm in args.group_m:
                    c = {"block_n": 128, "num_buf": nb, "group_m": gm, "ws": ws}
                    record("gate_up", f"gluon{'_ws' if ws else ''}_b{nb}_g{gm}", bm,
                           lambda: gluon_gate_up(xs, w.w_gate_up, align, **c), act_ref, c, gu_flops, used)
        # down: production (weighted scatter to slots), the Gluon GEMM (aligned rows), both on act_ref
        dn = {**cfg["down"], "SPLIT_K": 1}
        record("down", "prod_tuned", bm, lambda: down(act_ref, w.w_down, align, weights, dn), None, dn, dn_flops)
        dref = down_reference(act_ref, w.w_down, align)
        for ws in args.ws:
            for bn, nb in ((256, 3), (128, 4)):
                for gm in args.group_m:
                    c = {"block_n": bn, "num_buf": nb, "group_m": gm, "ws": ws}
                    record("down", f"gluon{'_ws' if ws else ''}_n{bn}_b{nb}_g{gm}", bm,
                           lambda: gluon_down(act_ref, w.w_down, align, **c), dref, c, dn_flops, used)
        del dref
    # cuBLAS on even rows per expert (the dense reference of ceiling.py)
    rows_e = -(-T * m.top_k // E)
    xe = torch.randn((E, rows_e, H), dtype=torch.bfloat16, device="cuda")
    record("gate_up", "cublas_bmm_even_rows", 0, lambda: torch.bmm(xe, w.w_gate_up.transpose(1, 2)), None, {},
           2.0 * E * rows_e * H * 2 * F)
    ae = torch.randn((E, rows_e, F), dtype=torch.bfloat16, device="cuda")
    record("down", "cublas_bmm_even_rows", 0, lambda: torch.bmm(ae, w.w_down.transpose(1, 2)), None, {},
           2.0 * E * rows_e * F * H)
    del w, xe, ae
    torch.cuda.empty_cache()


def profile_case(name: str, T: int, bm: int = 128) -> None:
    """One call of each GEMM for Nsight Compute (`--profile model:tokens`): production's persistent descriptor
    gate/up and its tuned down, the warp-specialised Gluon gate/up and down, and cuBLAS `bmm` on even rows.

        ncu --clock-control none --kernel-name regex:"_gate_up_persistent_kernel|_down|_grouped_gemm_ws|nvjet|xmma" \\
            --section SpeedOfLight --section MemoryWorkloadAnalysis --csv \\
            python experiments/bench/gluon_lab.py --profile mixtral-8x7b:1024
    """
    import tritonmoe
    from problems import load_models, make_tokens, make_weights
    from tritonmoe.align import align_tokens
    from tritonmoe.down import down
    from tritonmoe.gate_up import gate_up, gather_rows
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    weights, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    cfg = tritonmoe.api.resolve_config(x, ids.numel(), m.experts, m.hidden, m.ffn, None)
    align = align_tokens(ids, m.experts, bm)
    xs = gather_rows(x, align)
    pd = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4, "DESC": True,
          "PERSISTENT": True}
    act = gate_up(x, w.w_gate_up, align, pd, fuse_swiglu=True, x_sorted=xs)
    down(act, w.w_down, align, weights, {**cfg["down"], "SPLIT_K": 1})
    act_g = gluon_gate_up(xs, w.w_gate_up, align, ws=True)
    gluon_down(act_g, w.w_down, align, ws=True)
    rows_e = -(-T * m.top_k // m.experts)
    torch.bmm(torch.randn((m.experts, rows_e, m.hidden), dtype=torch.bfloat16, device="cuda"),
              w.w_gate_up.transpose(1, 2))
    torch.cuda.synchronize()


def main(argv=None) -> int:
    if argv is None and "--profile" in sys.argv:
        name, tokens = sys.argv[sys.argv.index("--profile") + 1].split(":")
        profile_case(name, int(tokens))
        return 0

    def extra(ap):
        ap.add_argument("--block-m", type=int, nargs="+", default=[128])
        ap.add_argument("--num-buf", type=int, nargs="+", default=[3, 4])
        ap.add_argument("--group-m", type=int, nargs="+", default=[8])
        ap.add_argument("--ws", type=int, nargs="+", default=[0, 1], help="1: the warp-specialised kernel")
    return lab_main(argv, __doc__, "gluon_lab.py", "mixtral-8x7b:1024", run_case, extra)


if __name__ == "__main__":
    sys.exit(main())
