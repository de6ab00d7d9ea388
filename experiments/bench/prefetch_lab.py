"""L2 prefetch of the down weights during the gate/up GEMM at decode (perf notes v18). Not part of the package.

At one token the layer streams the K hit experts' weights through two kernels: gate/up (2/3 of the bytes), then the
down projection. Each kernel ramps up and drains on its own, and the down kernel's weights are known as soon as the
routing has run. Here the hit experts' down rows (all of each row, or its first `frac`) are prefetched into the L2
with Hopper's bulk prefetch (`cp.async.bulk.prefetch.L2`: fire-and-forget, no registers or shared memory wait for
it), so the down kernel reads them from the L2 and the DRAM stays busy across the boundary. Where the prefetch runs:

- `serial`: a prefetch launch between the routing and the gate/up GEMM;
- `fork`: the same launch on a second stream, beside the gate/up GEMM in the graph;
- `inside`: extra programs of the gate/up launch itself (program ids 0..PF-1 prefetch, the rest are the tiles).

Each variant's y is compared with the baseline's (bit-identical: a prefetch changes no value). Whole layers as CUDA
graph replays with the sweep's timing (`timing.bench`: L2 evicted before every replay), the variants interleaved,
`--repeats` rounds.

    python experiments/bench/prefetch_lab.py --cases qwen3-30b-a3b:1 olmoe-1b-7b:1 --out $OUT/prefetch.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from problems import lab_main, make_tokens, make_weights, load_models  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe._gemm_common import block_extent, dot_precision, order_blocks, tile_of  # noqa: E402
from tritonmoe._host import cdiv  # noqa: E402
from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.down import combine, down, down_combine  # noqa: E402
from tritonmoe.gate_up import _gate_up_tile, uses_descriptors, uses_persistent_gather  # noqa: E402
from tritonmoe.route_align import route_and_align  # noqa: E402
from tritonmoe.variants import act_fused  # noqa: E402

# One bulk prefetch per lane, predicated off where the size is 0. The output register is a dummy (the op has none).
_PF_NORMAL = tl.constexpr("{ .reg .pred p; setp.ne.u32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; }"
              " mov.u32 $0, 0;")
_PF_LAST = tl.constexpr("{ .reg .pred p; .reg .b64 pol; setp.ne.u32 p, $2, 0; "
            "createpolicy.fractional.L2::evict_last.b64 pol, 1.0; "
            "@p cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, pol; } mov.u32 $0, 0;")

LANES = 128  # rows a prefetch item covers (one bulk prefetch each)


@triton.jit
def _prefetch_rows(w_ptr, expert_ids_ptr, item, H, stride_we, stride_wh, row_bytes,
                   EVICT_LAST: tl.constexpr, LANES: tl.constexpr):
    """Item = (block b, rows group g): the first `row_bytes` of rows g*LANES.. of block b's expert's [H, F] down
    weights, one bulk prefetch per row. Unused blocks (expert id < 0) prefetch nothing."""
    groups = tl.cdiv(H, LANES)
    b = item // groups
    g = item % groups
    expert = tl.load(expert_ids_ptr + b).to(tl.int64)
    rows = g * LANES + tl.arange(0, LANES)
    ok = (rows < H) & (expert >= 0)
    addr = (w_ptr + tl.maximum(expert, 0) * stride_we + rows.to(tl.int64) * stride_wh).to(tl.int64, bitcast=True)
    size = tl.where(ok, row_bytes, 0).to(tl.int32)
    if EVICT_LAST:
        tl.inline_asm_elementwise(_PF_LAST, "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.inline_asm_elementwise(_PF_NORMAL, "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _prefetch_kernel(w_ptr, expert_ids_ptr, num_items, H, stride_we, stride_wh, row_bytes,
                     NUM_PROGRAMS: tl.constexpr, EVICT_LAST: tl.constexpr, LANES: tl.constexpr):
    for item in range(tl.program_id(0), num_items, NUM_PROGRAMS):
        _prefetch_rows(w_ptr, expert_ids_ptr, item, H, stride_we, stride_wh, row_bytes, EVICT_LAST, LANES)


@triton.jit
def _gate_up_pf_kernel(
    x_ptr, w_ptr, out_ptr, wd_ptr,
    sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, num_post_ptr,
    N, H, num_routed, row_offset, up_offset, num_pid_m,
    stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    HD, stride_wde, stride_wdh, row_bytes, num_items,
    TOP_K: tl.constexpr, FUSE_SWIGLU: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, TAIL_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, ORDER_BLOCKS: tl.constexpr,
    PF: tl.constexpr, EVICT_LAST: tl.constexpr, LANES: tl.constexpr,
):
    """`tritonmoe.gate_up._gate_up_kernel` with PF prefetch programs in front (program ids 0..PF-1)."""
    pid = tl.program_id(0)
    if pid < PF:
        for item in range(pid, num_items, PF):
            _prefetch_rows(wd_ptr, expert_ids_ptr, item, HD, stride_wde, stride_wdh, row_bytes, EVICT_LAST, LANES)
    else:
        num_pid_n = tl.cdiv(N, BLOCK_N)
        pid_m, pid_n = tile_of(pid - PF, expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
        row0, height = block_extent(block_rows_ptr, num_post_ptr, pid_m, BLOCK_M, TAIL_M)
        if height == BLOCK_M:
            _gate_up_tile(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
                          N, H, num_routed, row_offset, up_offset,
                          stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
                          TOP_K, FUSE_SWIGLU, EVEN_K, PRECISION, BLOCK_M, 0, BLOCK_N, BLOCK_K)
        if TAIL_M < BLOCK_M:
            if height == TAIL_M:
                _gate_up_tile(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, pid_m, row0, pid_n,
                              N, H, num_routed, row_offset, up_offset,
                              stride_xt, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
                              TOP_K, FUSE_SWIGLU, EVEN_K, PRECISION, TAIL_M, 0, BLOCK_N, BLOCK_K)


def _row_bytes(w_down: torch.Tensor, frac: float) -> int:
    F = w_down.shape[2]
    full = F * w_down.element_size()
    return max(16, min(full, int(full * frac) // 16 * 16))


def prefetch(w_down, al, frac: float, programs: int, evict_last: bool = False) -> None:
    E, H, F = w_down.shape
    items = al.max_blocks * cdiv(H, LANES)
    programs = min(programs, items)
    triton_grid = (programs,)
    _prefetch_kernel[triton_grid](w_down, al.expert_ids, items, H, w_down.stride(0), w_down.stride(1),
                                  _row_bytes(w_down, frac), NUM_PROGRAMS=programs, EVICT_LAST=evict_last,
                                  LANES=LANES, num_warps=4)


def gate_up_inside(x, w_gate_up, w_down, al, cfg, frac: float, programs: int, evict_last: bool = False):
    """The fused gate/up (pointer kernel) with `programs` prefetch programs in front."""
    g = cfg["gate_up"]
    E, F2, H = w_gate_up.shape
    F = F2 // 2
    bm, bn, bk = al.block_m, g["BLOCK_N"], g["BLOCK_K"]
    out = torch.empty((al.sorted_ids.shape[0], F), dtype=x.dtype, device=x.device)
    items = al.max_blocks * cdiv(w_down.shape[1], LANES)
    grid = (programs + al.max_blocks * cdiv(F, bn),)
    _gate_up_pf_kernel[grid](
        x, w_gate_up, out, w_down,
        al.sorted_ids, al.expert_ids, al.block_rows, al.num_post_padded,
        F, H, al.num_routed, 0, F, al.max_blocks,
        x.stride(0), x.stride(1), w_gate_up.stride(0), w_gate_up.stride(1), w_gate_up.stride(2),
        out.stride(0), out.stride(1),
        w_down.shape[1], w_down.stride(0), w_down.stride(1), _row_bytes(w_down, frac), items,
        TOP_K=al.num_routed // x.shape[0], FUSE_SWIGLU=True, EVEN_K=(H % bk == 0), PRECISION=dot_precision(x.dtype),
        BLOCK_M=bm, TAIL_M=al.tail_m, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=g.get("GROUP_M", 1),
        ORDER_BLOCKS=order_blocks(g, al), PF=programs, EVICT_LAST=evict_last, LANES=LANES,
        num_warps=g.get("num_warps", 4), num_stages=g.get("num_stages", 2),
    )
    return out


def layer(x, w, m, cfg, mode: str = "base", frac: float = 1.0, programs: int = 32, evict_last: bool = False,
          side: torch.cuda.Stream | None = None):
    wr, wgu, wd = w.router_weight, w.w_gate_up, w.w_down
    tw, ids, al = route_and_align(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
    if mode == "serial":
        prefetch(wd, al, frac, programs, evict_last)
    if mode == "fork":
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            prefetch(wd, al, frac, programs, evict_last)
    if mode == "inside":
        act = gate_up_inside(x, wgu, wd, al, cfg, frac, programs, evict_last)
    else:
        act = act_fused(x, wgu, al, cfg)
    if mode == "fork":
        torch.cuda.current_stream().wait_stream(side)
    if cfg["down"].get("COMBINE"):
        return down_combine(act, wd, al, tw, ids, cfg["down"])
    return combine(down(act, wd, al, tw, cfg["down"]), x.shape[0], m.top_k, x.dtype)


VARIANTS = [
    ("base", dict(mode="base")),
    ("serial_1.0", dict(mode="serial", frac=1.0, programs=64)),
    ("fork_1.0", dict(mode="fork", frac=1.0, programs=16)),
    ("inside_1.0_pf16", dict(mode="inside", frac=1.0, programs=16)),
    ("inside_1.0_pf64", dict(mode="inside", frac=1.0, programs=64)),
    ("inside_0.5_pf16", dict(mode="inside", frac=0.5, programs=16)),
    ("inside_0.25_pf16", dict(mode="inside", frac=0.25, programs=16)),
    ("inside_1.0_pf16_last", dict(mode="inside", frac=1.0, programs=16, evict_last=True)),
]


def run_case(name, t, rows, args):
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
    cfg = resolve_config(x, t * m.top_k, m.experts, m.hidden, m.ffn, None)
    pointer_gate_up = not (cfg.get("expert") or uses_descriptors(cfg["gate_up"], x, w.w_gate_up)
                           or cfg["gate_up"].get("PERSISTENT"))
    side = torch.cuda.Stream()
    graphs, outs = {}, {}
    for label, kw in VARIANTS:
        if kw["mode"] == "inside" and not pointer_gate_up:
            continue
        fn = lambda kw=kw: layer(x, w, m, cfg, side=side, **kw)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = fn()
        y.fill_(float("nan"))  # poisoned: the replay must write every element
        g.replay()
        torch.cuda.synchronize()
        graphs[label], outs[label] = g, y.clone()
    ref = outs["base"]
    assert torch.isfinite(ref).all(), "base layer wrote non-finite values"
    for r in range(args.repeats):
        for label, g in graphs.items():
            q = bench(g.replay, 10, 60)
            rows.append({"model": name, "tokens": t, "variant": label, "round": r, "median_us": q[0] * 1e3,
                         "p20_us": q[1] * 1e3, "p80_us": q[2] * 1e3,
                         "identical": bool(torch.equal(outs[label], ref)),
                         "down_mb": m.top_k * t and min(m.experts, t * m.top_k) * m.hidden * m.ffn * 2 / 1e6,
                         "device_name": torch.cuda.get_device_name()})
            print(rows[-1], flush=True)
    del graphs, w
    torch.cuda.empty_cache()


def add_arguments(ap):
    ap.add_argument("--repeats", type=int, default=2)


def main(argv=None):
    return lab_main(argv, __doc__, "prefetch_lab.py", "qwen3-30b-a3b:1", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
