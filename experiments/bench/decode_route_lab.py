"""The routing stage of a one-token layer (perf notes v18). Not part of the package.

At T=1 the fused layer is four launches: router partial logits (many programs), one program that sums them, picks
the top k and lays out the alignment (`route_align._route_align_partials_kernel`), the gate/up GEMM and the down
projection. At one token the alignment is trivial (K distinct experts, one slot each), but the package runs the
general one-program alignment (one-hot tiles over all experts, prefix sums, block ranges). Variants:

- `base`: the package's path;
- `ident`: the second launch writes the same alignment directly: each choice's block is its expert's rank among the
  K chosen ids (blocks in expert order, as the general alignment has them), one slot row and padding rows;
- `inside`: no second launch: every gate/up program sums the partial logits and picks the top k itself, finds the
  expert of its block the same way, and program 0 writes the weights, ids and alignment tables the down projection
  reads;
- `pkg_separate`, `pkg_select`: the package's layer (`tritonmoe.moe`) with the table's config and `SELECT_IN_GEMM` off
  or on (the package's form of `inside`, after this lab).

Each variant's alignment tables and y are compared with `base`'s (bit-identical expected). Whole layers as CUDA-graph
replays with the sweep's timing, variants interleaved, `--repeats` rounds.

    python experiments/bench/decode_route_lab.py --cases qwen3-30b-a3b:1 --out $OUT/decode_route.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from problems import lab_main, load_models, make_tokens, make_weights  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe._gemm_common import dot_precision, gate_up_accumulate  # noqa: E402
from tritonmoe._host import cdiv, next_power_of_2  # noqa: E402
from tritonmoe.align import alloc_alignment  # noqa: E402
from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.down import combine, down, down_combine  # noqa: E402
from tritonmoe.gate_up import uses_descriptors  # noqa: E402
import tritonmoe  # noqa: E402
from tritonmoe.route_align import SPLIT_BLOCK_E, SPLIT_H, route_and_align, split_block  # noqa: E402
from tritonmoe.routing import router_partials, sum_split_logits, topk_softmax  # noqa: E402
from tritonmoe.variants import act_fused  # noqa: E402


@triton.jit
def _one_token_choices(partial_ptr, E, num_splits, TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
                       BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    """The token's top-k weights and ids ([BLOCK_K] each) and each choice's rank among the chosen ids."""
    rows = tl.arange(0, 1)
    logits = sum_split_logits(partial_ptr, rows, 1, E, num_splits, 1, BLOCK_E, BLOCK_S)
    out_w, out_i = topk_softmax(logits, rows, 1, E, TOP_K, RENORMALIZE, 1, BLOCK_E, BLOCK_K)
    w = tl.sum(out_w, axis=0)
    ids = tl.sum(out_i, axis=0)
    kk = tl.arange(0, BLOCK_K)
    valid = kk < TOP_K
    smaller = valid[None, :] & (ids[None, :] < ids[:, None])
    rank = tl.sum(smaller.to(tl.int32), axis=1)
    return w, ids, rank


@triton.jit
def _write_one_token(w, ids, rank, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                     block_rows_ptr, num_post_ptr, expert_counts_ptr, E, max_blocks,
                     TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, HEIGHT: tl.constexpr,
                     BLOCK_B: tl.constexpr):
    """The routing outputs and the alignment of one token's TOP_K slots: block rank(k) holds slot k (HEIGHT rows:
    the slot, then the sentinel TOP_K), the blocks in expert order; as `align.align_one_chunk` lays them out."""
    kk = tl.arange(0, BLOCK_K)
    valid = kk < TOP_K
    tl.store(weights_ptr + kk, w, mask=valid)
    tl.store(ids_ptr + kk, ids, mask=valid)
    r = tl.arange(0, HEIGHT)
    p = rank[:, None] * HEIGHT + r[None, :]
    tl.store(sorted_ids_ptr + p, tl.where(r[None, :] == 0, kk[:, None], TOP_K), mask=valid[:, None])
    tl.store(slot_rows_ptr + kk, rank * HEIGHT, mask=valid)
    b = tl.arange(0, BLOCK_B)
    owner = tl.sum(tl.where((rank[None, :] == b[:, None]) & valid[None, :], ids[None, :], 0), axis=1)
    tl.store(expert_ids_ptr + b, tl.where(b < TOP_K, owner, -1), mask=b < max_blocks)
    tl.store(block_rows_ptr + b, tl.minimum(b, TOP_K) * HEIGHT, mask=b <= max_blocks)
    tl.store(num_post_ptr, TOP_K * HEIGHT)
    e = tl.arange(0, BLOCK_E)
    counts = tl.sum(((ids[None, :] == e[:, None]) & valid[None, :]).to(tl.int32), axis=1)
    tl.store(expert_counts_ptr + e, counts, mask=e < E)


@triton.jit
def _route_ident_kernel(partial_ptr, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                        block_rows_ptr, num_post_ptr, expert_counts_ptr, E, num_splits, max_blocks,
                        TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, HEIGHT: tl.constexpr, BLOCK_B: tl.constexpr):
    w, ids, rank = _one_token_choices(partial_ptr, E, num_splits, TOP_K, RENORMALIZE, BLOCK_E, BLOCK_K, BLOCK_S)
    _write_one_token(w, ids, rank, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                     block_rows_ptr, num_post_ptr, expert_counts_ptr, E, max_blocks,
                     TOP_K, BLOCK_E, BLOCK_K, HEIGHT, BLOCK_B)


@triton.jit
def _gate_up_route_kernel(
    x_ptr, w_ptr, out_ptr, partial_ptr, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
    block_rows_ptr, num_post_ptr, expert_counts_ptr, E, num_splits, max_blocks,
    N, H, stride_xh, stride_we, stride_wn, stride_wh, stride_om, stride_on,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr, HEIGHT: tl.constexpr, BLOCK_B: tl.constexpr,
    EVEN_K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr,
):
    """One token's fused gate/up, each program choosing the experts itself: block pid_m = pid // (N blocks)."""
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    w, ids, rank = _one_token_choices(partial_ptr, E, num_splits, TOP_K, RENORMALIZE, BLOCK_E, BLOCK_K, BLOCK_S)
    if pid == 0:
        _write_one_token(w, ids, rank, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                         block_rows_ptr, num_post_ptr, expert_counts_ptr, E, max_blocks,
                         TOP_K, BLOCK_E, BLOCK_K, HEIGHT, BLOCK_B)
    kk = tl.arange(0, BLOCK_K)
    expert = tl.sum(tl.where((rank == pid_m) & (kk < TOP_K), ids, 0), axis=0).to(tl.int64)
    r = tl.arange(0, HEIGHT)
    token = tl.zeros((HEIGHT,), dtype=tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc_g, acc_u = gate_up_accumulate(x_ptr, w_ptr, token, r == 0, expert, cols, col_ok, 0, N, H,
                                      0, stride_xh, stride_we, stride_wn, stride_wh,
                                      True, EVEN_K, PRECISION, HEIGHT, BLOCK_N, BLOCK_KH)
    out = acc_g * tl.sigmoid(acc_g) * acc_u
    rows = pid_m * HEIGHT + r
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on,
             out.to(out_ptr.dtype.element_ty), mask=col_ok[None, :])


def _meta(x, wr, top_k, renormalize, al):
    E = wr.shape[0]
    splits = cdiv(x.shape[1], SPLIT_H)
    block_e = max(16, next_power_of_2(E))
    return dict(TOP_K=top_k, RENORMALIZE=renormalize, BLOCK_E=block_e, BLOCK_K=next_power_of_2(top_k),
                BLOCK_S=split_block(splits, 1, block_e), HEIGHT=al.tail_m,
                BLOCK_B=next_power_of_2(al.max_blocks + 1)), splits


def route_ident(x, wr, top_k, renormalize, block_m, tail_m):
    al = alloc_alignment(top_k, wr.shape[0], block_m, x.device, tail_m)
    weights = torch.empty((1, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((1, top_k), dtype=torch.int32, device=x.device)
    partial = router_partials(x, wr, SPLIT_H, SPLIT_BLOCK_E)
    meta, splits = _meta(x, wr, top_k, renormalize, al)
    _route_ident_kernel[(1,)](partial, weights, ids, al.sorted_ids, al.slot_rows, al.expert_ids, al.block_rows,
                              al.num_post_padded, al.expert_counts, wr.shape[0], splits, al.max_blocks, **meta,
                              num_warps=4)
    return weights, ids, al


def gate_up_route(x, wr, wgu, top_k, renormalize, cfg):
    g = cfg["gate_up"]
    al = alloc_alignment(top_k, wr.shape[0], cfg["BLOCK_M"], x.device, tail_of(cfg))
    weights = torch.empty((1, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((1, top_k), dtype=torch.int32, device=x.device)
    partial = router_partials(x, wr, SPLIT_H, SPLIT_BLOCK_E)
    meta, splits = _meta(x, wr, top_k, renormalize, al)
    E, F2, H = wgu.shape
    F = F2 // 2
    act = torch.empty((al.sorted_ids.shape[0], F), dtype=x.dtype, device=x.device)
    bn, bk = g["BLOCK_N"], g["BLOCK_K"]
    _gate_up_route_kernel[(top_k * cdiv(F, bn),)](
        x, wgu, act, partial, weights, ids, al.sorted_ids, al.slot_rows, al.expert_ids, al.block_rows,
        al.num_post_padded, al.expert_counts, E, splits, al.max_blocks,
        F, H, x.stride(1), wgu.stride(0), wgu.stride(1), wgu.stride(2), act.stride(0), act.stride(1),
        **meta, EVEN_K=(H % bk == 0), PRECISION=dot_precision(x.dtype), BLOCK_N=bn, BLOCK_KH=bk,
        num_warps=g.get("num_warps", 4), num_stages=g.get("num_stages", 2))
    return weights, ids, al, act


def layer(x, w, m, cfg, mode):
    wr, wgu, wd = w.router_weight, w.w_gate_up, w.w_down
    if mode.startswith("pkg_"):  # the package's layer: the selection in the GEMM (its default) or the separate launch
        c = {k: v for k, v in cfg.items() if k != "SELECT_IN_GEMM"}
        if mode == "pkg_separate":
            c["SELECT_IN_GEMM"] = False
        return tritonmoe.moe(x, wr, wgu, wd, m.top_k, config=c), None
    if mode == "base":
        tw, ids, al = route_and_align(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
        act = act_fused(x, wgu, al, cfg)
    elif mode == "ident":
        tw, ids, al = route_ident(x, wr, m.top_k, True, cfg["BLOCK_M"], tail_of(cfg))
        act = act_fused(x, wgu, al, cfg)
    else:
        tw, ids, al, act = gate_up_route(x, wr, wgu, m.top_k, True, cfg)
    if cfg["down"].get("COMBINE"):
        y = down_combine(act, wd, al, tw, ids, cfg["down"])
    else:
        y = combine(down(act, wd, al, tw, cfg["down"]), x.shape[0], m.top_k, x.dtype)
    return y, (tw, ids, al)


def _tables(out):
    tw, ids, al = out
    n = int(al.num_post_padded.item())
    return (tw, ids, al.sorted_ids[:n], al.expert_ids, al.block_rows, al.num_post_padded, al.expert_counts,
            al.slot_rows)


def run_case(name, t, rows, args):
    if t != 1:
        raise SystemExit("decode_route_lab: one token only")
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
    cfg = resolve_config(x, t * m.top_k, m.experts, m.hidden, m.ffn, None)
    if cfg.get("expert") or uses_descriptors(cfg["gate_up"], x, w.w_gate_up) or cfg["gate_up"].get("PERSISTENT"):
        print(f"{name}: config outside this lab's paths, skipped", flush=True)
        return
    graphs, ys, tables = {}, {}, {}
    for mode in args.modes:
        layer(x, w, m, cfg, mode)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y, out = layer(x, w, m, cfg, mode)
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        graphs[mode], ys[mode] = g, y.clone()
        tables[mode] = None if out is None else [v.clone() for v in _tables(out)]
    if args.profile:
        profile_kernels(name, graphs)
    for r in range(args.repeats):
        for mode, g in graphs.items():
            q = bench(g.replay, 10, 60)
            same_tables = (None if tables[mode] is None or tables.get("base") is None else
                           all(torch.equal(a, b) for a, b in zip(tables[mode], tables["base"])))
            rows.append({"model": name, "tokens": t, "variant": mode, "round": r, "median_us": q[0] * 1e3,
                         "p20_us": q[1] * 1e3, "p80_us": q[2] * 1e3, "y_identical": bool(torch.equal(ys[mode], ys[args.modes[0]])),
                         "tables_identical": same_tables, "device_name": torch.cuda.get_device_name()})
            print(rows[-1], flush=True)
    del graphs, w
    torch.cuda.empty_cache()


def profile_kernels(name, graphs, calls: int = 20):
    """Per-kernel device time of each variant's replay (torch profiler, L2 warm: the kernels' own durations)."""
    from torch.profiler import ProfilerActivity, profile
    for mode, g in graphs.items():
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                g.replay()
            torch.cuda.synchronize()
        times: dict[str, list[float]] = {}
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                times.setdefault(ev.name, []).append(ev.device_time)
        parts = ", ".join(f"{k} {sum(v) / len(v):.2f} us" for k, v in times.items())
        print(f"profile {name} {mode}: {parts}", flush=True)


def add_arguments(ap):
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print each variant's per-kernel device times")
    ap.add_argument("--modes", nargs="+", default=["base", "ident", "inside"])


def main(argv=None):
    return lab_main(argv, __doc__, "decode_route_lab.py", "qwen3-30b-a3b:1", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
