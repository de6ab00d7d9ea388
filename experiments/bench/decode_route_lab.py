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
  or on.

`ident` and `inside` now run the package's pieces (`route_align.one_token_choices`, `write_one_token`,
`gate_up._gate_up_select_kernel`), into which this lab's own kernels moved at 687a53c; runs 3-4 of session 15 timed
the lab's copies (the same code, its split tile then 2048 elements), run 5 these.

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

import tritonmoe  # noqa: E402
from problems import lab_main, load_models, make_tokens, make_weights  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.down import combine, down, down_combine  # noqa: E402
from tritonmoe.gate_up import gate_up, uses_descriptors  # noqa: E402
from tritonmoe.route_align import (one_token_choices, prepare_selection, route_and_align,  # noqa: E402
                                   write_one_token)
from tritonmoe.variants import act_fused  # noqa: E402


@triton.jit
def _route_ident_kernel(partial_ptr, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                        block_rows_ptr, num_post_ptr, expert_counts_ptr, E, num_splits, max_blocks,
                        TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr, BLOCK_E: tl.constexpr,
                        BLOCK_KK: tl.constexpr, BLOCK_S: tl.constexpr, HEIGHT: tl.constexpr, BLOCK_B: tl.constexpr):
    """The second launch of `ident`: the package's one-token selection and alignment writes, in one program."""
    w, ids, rank = one_token_choices(partial_ptr, E, num_splits, TOP_K, RENORMALIZE, BLOCK_E, BLOCK_KK, BLOCK_S)
    write_one_token(w, ids, rank, weights_ptr, ids_ptr, sorted_ids_ptr, slot_rows_ptr, expert_ids_ptr,
                    block_rows_ptr, num_post_ptr, expert_counts_ptr, E, max_blocks,
                    TOP_K, BLOCK_E, BLOCK_KK, HEIGHT, BLOCK_B)


def route_ident(x, wr, top_k, renormalize, block_m, tail_m):
    sel = prepare_selection(x, wr, top_k, renormalize, block_m, tail_m)
    al = sel.align
    _route_ident_kernel[(1,)](sel.partial, sel.weights, sel.ids, al.sorted_ids, al.slot_rows, al.expert_ids,
                              al.block_rows, al.num_post_padded, al.expert_counts, wr.shape[0], sel.partial.shape[0],
                              al.max_blocks, **sel.meta, num_warps=4)
    return sel.weights, sel.ids, al


def gate_up_route(x, wr, wgu, top_k, renormalize, cfg):
    """`inside`: the package's selecting gate/up (`gate_up(..., select=...)`)."""
    sel = prepare_selection(x, wr, top_k, renormalize, cfg["BLOCK_M"], tail_of(cfg))
    act = gate_up(x, wgu, sel.align, cfg["gate_up"], fuse_swiglu=True, select=sel)
    return sel.weights, sel.ids, sel.align, act


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
