"""Extended last blocks at ~256 routed rows per expert (perf notes v25). Not part of the package.

Every large-T miss left sits at R = T*K/E ~ 256 routed rows per expert (mixtral-8x7b and -8x22b T=1024, qwen3-30b-a3b
T=4096, olmoe-1b-7b T=2048, qwen2-moe-57b T=4096). On a uniform draw about half the experts get a few rows more than
256, and the alignment pads each of those to a third 128-row block: ~1.25x the routed rows are computed, and the
third block streams the expert's whole weight tile from the L2 for ~13 rows. Tail blocks (v7, v18) cut the padding
but not the weight bytes: a 16-64-row tile reads as many weight bytes as a full one, and at these points the L2 is
what binds (v9). `rows_lab.py` (v24) put the price of the draw's uneven rows at 11-16% of the expert path.

This lab tries a block shape that saves both: an expert whose rows pass a multiple of BLOCK_M by at most EXT_M
rows gets, instead of a last full block plus a mostly empty one, one *extended* block of BLOCK_M + EXT_M rows. Its
tile runs two products per K step from one weight box: [BLOCK_M, BK] and [EXT_M, BK] token tiles against the same
[BK, BN] weights, two accumulators, so the extra rows cost tensor-core time but no weight bytes. At R ~ 256 with
EXT_M = 64 an expert of 269 rows computes 320 rows instead of 384 and reads its weight tile twice, not three times.

Kernels here (gate/up fused with SwiGLU, down with the routing weight into each slot's partial row; the package's
combine after it): one program per tile (`grid`) or one per SM walking the tiles (`persist`, gate/up only), in the
tables' expert order, tokens gathered by pointers and weights through descriptor boxes, as the package's persistent
gate/up and descriptor down do. Variants per case: the package's own path at the table config (`table`), these
kernels on the package's alignment (`reg`: the kernels' own cost), and on the extended layout (`ext<EXT_M>`), built
on the host from the package's alignment before the graphs are captured. Timed as CUDA-graph replays with the sweep's
timing in interleaved rounds; every variant's y is compared with the table path's, and that one with float64.

    python experiments/bench/ext_lab.py --cases qwen3-30b-a3b:4096 mixtral-8x7b:1024 --out $OUT/ext.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from problems import against_first, lab_main, load_models, make_tokens, make_weights, rotated, rounds_by  # noqa: E402
from tritonmoe._gemm_common import order_blocks, tile_of  # noqa: E402
from tritonmoe._host import cdiv  # noqa: E402
from tritonmoe.align import Alignment  # noqa: E402
from tritonmoe.descriptors import descriptor  # noqa: E402
from tritonmoe.down import combine  # noqa: E402
from tritonmoe.gate_up import _swiglu_of_pairs, persistent_programs  # noqa: E402


# --- the extended layout (host) --------------------------------------------------------------------------------

def block_heights(count: int, block_m: int, ext_m: int) -> list[int]:
    """An expert's block heights for `count` routed rows: BLOCK_M blocks, the last one extended by EXT_M rows when the
    rest past a multiple of BLOCK_M is at most EXT_M and a full block precedes it; else a padded last block."""
    if count <= 0:
        return []
    q, s = divmod(count, block_m)
    if s == 0:
        return [block_m] * q
    if ext_m and q >= 1 and s <= ext_m:
        return [block_m] * (q - 1) + [block_m + ext_m]
    return [block_m] * (q + 1)


def expert_slots(al: Alignment) -> dict[int, list[int]]:
    """Each expert's routed slots in the package's aligned order (blocks without tails)."""
    sid = al.sorted_ids.cpu().tolist()
    eid = al.expert_ids.cpu().tolist()
    br = al.block_rows.cpu().tolist()
    out: dict[int, list[int]] = {}
    for b, e in enumerate(eid):
        if e < 0:
            continue
        out.setdefault(int(e), []).extend(s for s in sid[br[b]:br[b + 1]] if s < al.num_routed)
    return out


def extended(al: Alignment, ext_m: int) -> tuple[Alignment, torch.Tensor]:
    """The package's alignment (no tails) laid out with extended last blocks (`block_heights`); the same slots in
    the same order within each expert, experts in the same order. Returns it and the used block count (a device
    scalar, for the persistent launch)."""
    if al.has_tails:
        raise ValueError("extended: needs an alignment without tail blocks")
    bm, n = al.block_m, al.num_routed
    slots = expert_slots(al)
    sid = torch.full((al.sorted_ids.shape[0],), n, dtype=torch.int32)
    starts, ids = [], []
    pos = 0
    for e in sorted(slots):
        rows = slots[e]
        sid[pos:pos + len(rows)] = torch.tensor(rows, dtype=torch.int32)
        for h in block_heights(len(rows), bm, ext_m):
            starts.append(pos)
            ids.append(e)
            pos += h
    nb = al.max_blocks
    if len(starts) > nb or pos > sid.shape[0]:
        raise ValueError("extended: the layout does not fit the alignment's tables")
    br = torch.full((nb + 1,), pos, dtype=torch.int32)
    br[:len(starts)] = torch.tensor(starts, dtype=torch.int32)
    eid = torch.full((nb,), -1, dtype=torch.int32)
    eid[:len(ids)] = torch.tensor(ids, dtype=torch.int32)
    slot_rows = torch.zeros(n, dtype=torch.int32)
    used = sid[:pos]
    ok = used < n
    slot_rows[used[ok].long()] = torch.arange(pos, dtype=torch.int32)[ok]
    dev = al.sorted_ids.device
    out = Alignment(sorted_ids=sid.to(dev), expert_ids=eid.to(dev), block_rows=br.to(dev),
                    num_post_padded=torch.tensor([pos], dtype=torch.int32, device=dev),
                    expert_counts=al.expert_counts, slot_rows=slot_rows.to(dev), block_m=bm, num_routed=n)
    return out, torch.tensor([len(starts)], dtype=torch.int32, device=dev)


def used_blocks(al: Alignment) -> torch.Tensor:
    """The package alignment's used block count as a device scalar (its blocks are all BLOCK_M rows)."""
    return (al.num_post_padded // al.block_m).to(torch.int32)


# --- kernels ---------------------------------------------------------------------------------------------------

@triton.jit
def _token_ptrs(x_ptr, sorted_ids_ptr, row0, num_routed, stride_xt, stride_xh,
                TOP_K: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    slot = tl.load(sorted_ids_ptr + row0 + tl.arange(0, ROWS))
    ks = tl.arange(0, BLOCK_K)
    return x_ptr + (slot // TOP_K).to(tl.int64)[:, None] * stride_xt + ks[None, :] * stride_xh, slot < num_routed


@triton.jit
def _store_act(acc, out_ptr, row0, n0, F, stride_om, stride_on, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    out = _swiglu_of_pairs(acc, ROWS, BLOCK_N)
    rows = row0 + tl.arange(0, ROWS)
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on,
             out.to(out_ptr.dtype.element_ty), mask=(cols < F)[None, :])


@triton.jit
def _gate_up_tile(x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, tile,
                  F, H, num_routed, num_pid_m, stride_xt, stride_xh, stride_om, stride_on,
                  TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, ORDER_BLOCKS: tl.constexpr):
    W_ROWS: tl.constexpr = 2 * BLOCK_N
    num_pid_n = tl.cdiv(F, BLOCK_N)
    pid_m, pid_n = tile_of(tile, expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
    row0 = tl.load(block_rows_ptr + pid_m)
    height = tl.load(block_rows_ptr + pid_m + 1) - row0
    n0 = pid_n * BLOCK_N
    ks = tl.arange(0, BLOCK_K)
    if height == BLOCK_M:
        box_e = 2 * tl.load(expert_ids_ptr + pid_m)
        a_ptrs, ok = _token_ptrs(x_ptr, sorted_ids_ptr, row0, num_routed, stride_xt, stride_xh, TOP_K, BLOCK_M, BLOCK_K)
        acc = tl.zeros((BLOCK_M, W_ROWS), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            a = tl.load(a_ptrs + k0 * stride_xh, mask=ok[:, None] & (ks < H - k0)[None, :], other=0.0)
            b = tl.reshape(w_desc.load([box_e, n0, k0]), (W_ROWS, BLOCK_K))
            acc = tl.dot(a, b.T, acc)
        _store_act(acc, out_ptr, row0, n0, F, stride_om, stride_on, BLOCK_M, BLOCK_N)
    if EXT_M > 0:
        if height == BLOCK_M + EXT_M:  # an extended block: two token tiles against one weight box per K step
            box_e = 2 * tl.load(expert_ids_ptr + pid_m)
            a_ptrs, ok = _token_ptrs(x_ptr, sorted_ids_ptr, row0, num_routed, stride_xt, stride_xh,
                                     TOP_K, BLOCK_M, BLOCK_K)
            e_ptrs, e_ok = _token_ptrs(x_ptr, sorted_ids_ptr, row0 + BLOCK_M, num_routed, stride_xt, stride_xh,
                                       TOP_K, EXT_M, BLOCK_K)
            acc = tl.zeros((BLOCK_M, W_ROWS), dtype=tl.float32)
            acc_e = tl.zeros((EXT_M, W_ROWS), dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                k_ok = (ks < H - k0)[None, :]
                a = tl.load(a_ptrs + k0 * stride_xh, mask=ok[:, None] & k_ok, other=0.0)
                a_e = tl.load(e_ptrs + k0 * stride_xh, mask=e_ok[:, None] & k_ok, other=0.0)
                b = tl.reshape(w_desc.load([box_e, n0, k0]), (W_ROWS, BLOCK_K))
                acc = tl.dot(a, b.T, acc)
                acc_e = tl.dot(a_e, b.T, acc_e)
            _store_act(acc, out_ptr, row0, n0, F, stride_om, stride_on, BLOCK_M, BLOCK_N)
            _store_act(acc_e, out_ptr, row0 + BLOCK_M, n0, F, stride_om, stride_on, EXT_M, BLOCK_N)


@triton.jit
def _ext_gate_up_kernel(x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, used_ptr,
                        F, H, num_routed, num_pid_m, stride_xt, stride_xh, stride_om, stride_on,
                        TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, ORDER_BLOCKS: tl.constexpr,
                        NUM_PROGRAMS: tl.constexpr):
    """Fused gate/up over blocks of BLOCK_M or BLOCK_M + EXT_M rows (`block_rows`). NUM_PROGRAMS == 0: one program per
    tile of the grid; else NUM_PROGRAMS programs walk the used tiles (`used_ptr` blocks times the column blocks)."""
    if NUM_PROGRAMS == 0:
        _gate_up_tile(x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, tl.program_id(0),
                      F, H, num_routed, num_pid_m, stride_xt, stride_xh, stride_om, stride_on,
                      TOP_K, BLOCK_M, EXT_M, BLOCK_N, BLOCK_K, GROUP_M, ORDER_BLOCKS)
    else:
        num_tiles = tl.load(used_ptr) * tl.cdiv(F, BLOCK_N)
        for tile in range(tl.program_id(0), num_tiles, NUM_PROGRAMS):
            _gate_up_tile(x_ptr, w_desc, out_ptr, sorted_ids_ptr, expert_ids_ptr, block_rows_ptr, tile,
                          F, H, num_routed, num_pid_m, stride_xt, stride_xh, stride_om, stride_on,
                          TOP_K, BLOCK_M, EXT_M, BLOCK_N, BLOCK_K, GROUP_M, ORDER_BLOCKS)


@triton.jit
def _store_partial(acc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, row0, n0, H, num_routed,
                   stride_pm, stride_pn, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    slot = tl.load(sorted_ids_ptr + row0 + tl.arange(0, ROWS))
    ok = slot < num_routed
    cols = n0 + tl.arange(0, BLOCK_N)
    acc = acc * tl.load(topk_weights_ptr + slot, mask=ok, other=0.0)[:, None]
    tl.store(partial_ptr + slot[:, None].to(tl.int64) * stride_pm + cols[None, :] * stride_pn,
             acc.to(partial_ptr.dtype.element_ty), mask=ok[:, None] & (cols < H)[None, :])


@triton.jit
def _ext_down_kernel(a_desc, a_ext_desc, w_desc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, expert_ids_ptr,
                     block_rows_ptr, H, F, num_routed, num_pid_m, stride_pm, stride_pn,
                     BLOCK_M: tl.constexpr, EXT_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, ORDER_BLOCKS: tl.constexpr):
    """The down projection over blocks of BLOCK_M or BLOCK_M + EXT_M rows of act (descriptor boxes of BLOCK_M and
    EXT_M rows), each slot's row weighted and stored to `partial [T*K, H]`."""
    num_pid_n = tl.cdiv(H, BLOCK_N)
    pid_m, pid_n = tile_of(tl.program_id(0), expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
    row0 = tl.load(block_rows_ptr + pid_m)
    height = tl.load(block_rows_ptr + pid_m + 1) - row0
    n0 = pid_n * BLOCK_N
    if height == BLOCK_M:
        expert = tl.load(expert_ids_ptr + pid_m)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, F, BLOCK_K):
            a = a_desc.load([row0, k0])
            w = tl.reshape(w_desc.load([expert, n0, k0]), (BLOCK_N, BLOCK_K))
            acc = tl.dot(a, w.T, acc)
        _store_partial(acc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, row0, n0, H, num_routed,
                       stride_pm, stride_pn, BLOCK_M, BLOCK_N)
    if EXT_M > 0:
        if height == BLOCK_M + EXT_M:
            expert = tl.load(expert_ids_ptr + pid_m)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            acc_e = tl.zeros((EXT_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, F, BLOCK_K):
                a = a_desc.load([row0, k0])
                a_e = a_ext_desc.load([row0 + BLOCK_M, k0])
                w = tl.reshape(w_desc.load([expert, n0, k0]), (BLOCK_N, BLOCK_K))
                acc = tl.dot(a, w.T, acc)
                acc_e = tl.dot(a_e, w.T, acc_e)
            _store_partial(acc, partial_ptr, topk_weights_ptr, sorted_ids_ptr, row0, n0, H, num_routed,
                           stride_pm, stride_pn, BLOCK_M, BLOCK_N)
            _store_partial(acc_e, partial_ptr, topk_weights_ptr, sorted_ids_ptr, row0 + BLOCK_M, n0, H, num_routed,
                           stride_pm, stride_pn, EXT_M, BLOCK_N)


# --- launchers -------------------------------------------------------------------------------------------------

def lab_gate_up(x, w_gate_up, al, used, ext_m, cfg, out, persistent):
    """`cfg`: (BLOCK_N, BLOCK_K, num_warps, num_stages). Returns `out` ([rows, F] act in aligned order) and the kernel."""
    E, F2, H = w_gate_up.shape
    F = F2 // 2
    bn, bk, w, s = cfg
    w_desc = descriptor(w_gate_up, [2, bn, bk], shape=[2 * E, F, H])
    tiles = al.max_blocks * cdiv(F, bn)
    programs = persistent_programs(x.device, tiles) if persistent else 0
    k = _ext_gate_up_kernel[(programs or tiles,)](
        x, w_desc, out, al.sorted_ids, al.expert_ids, al.block_rows, used,
        F, H, al.num_routed, al.max_blocks, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        TOP_K=al.num_routed // x.shape[0], BLOCK_M=al.block_m, EXT_M=ext_m, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        ORDER_BLOCKS=max(256, triton.next_power_of_2(al.max_blocks)), NUM_PROGRAMS=programs,
        num_warps=w, num_stages=s)
    return out, k


def lab_down(act, w_down, al, ext_m, topk_weights, cfg):
    """Returns `partial [1, T*K, H]` (for the package's `combine`) and the kernel."""
    E, H, F = w_down.shape
    bn, bk, w, s = cfg
    partial = torch.empty((1, al.num_routed, H), dtype=act.dtype, device=act.device)
    k = _ext_down_kernel[(al.max_blocks * cdiv(H, bn),)](
        descriptor(act, [al.block_m, bk]), descriptor(act, [max(ext_m, 16), bk]), descriptor(w_down, [1, bn, bk]),
        partial, topk_weights.reshape(-1), al.sorted_ids, al.expert_ids, al.block_rows,
        H, F, al.num_routed, al.max_blocks, partial.stride(1), partial.stride(2),
        BLOCK_M=al.block_m, EXT_M=ext_m, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
        ORDER_BLOCKS=max(256, triton.next_power_of_2(al.max_blocks)), num_warps=w, num_stages=s)
    return partial, k


def lab_layer(x, w, al, used, ext_m, tw, gu_cfg, dn_cfg, persistent, act):
    """Gate/up, down and the package's combine over the slots of `al` (routing done): y [T, H]."""
    lab_gate_up(x, w.w_gate_up, al, used, ext_m, gu_cfg, act, persistent)
    partial, _ = lab_down(act, w.w_down, al, ext_m, tw, dn_cfg)
    return combine(partial, x.shape[0], al.num_routed // x.shape[0], x.dtype)


def kernel_regs(k) -> str:
    """`n_regs/n_spills` of a compiled kernel (from the launch's return), or '' where the launcher gives none."""
    try:
        return f"{k.n_regs}/{k.n_spills}"
    except AttributeError:
        return ""


# --- the lab ---------------------------------------------------------------------------------------------------

def parse_cfg(text: str) -> tuple[int, int, int, int]:
    vals = tuple(int(v) for v in text.split(","))
    if len(vals) != 4:
        raise ValueError(f"expected BLOCK_N,BLOCK_K,num_warps,num_stages, got {text!r}")
    return vals


def run_case(name, t, rows, args):
    from timing import bench
    from tritonmoe.align import align_tokens
    from tritonmoe.api import resolve_config
    from tritonmoe.down import down
    from tritonmoe.gate_up import gate_up
    from tritonmoe.reference import reference_moe
    from tritonmoe.routing import route

    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
    E, F = m.experts, m.ffn
    cfg = resolve_config(x, t * m.top_k, E, m.hidden, F, None)
    tw, ids = route(x, w.router_weight, m.top_k, True)
    bm = cfg["BLOCK_M"]
    base = align_tokens(ids, E, bm, None)
    max_rows = base.sorted_ids.shape[0]

    def graph_of(fn):
        fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        return g, out

    variants = {}  # label -> (layer fn, gate/up fn, down fn, padded rows, blocks, regs)

    def table_layer(act):
        gate_up(x, w.w_gate_up, base, cfg["gate_up"], fuse_swiglu=True, out=act)
        return combine(down(act, w.w_down, base, tw, cfg["down"]), t, m.top_k, x.dtype)

    act_t = torch.empty((max_rows, F), dtype=x.dtype, device=x.device)
    variants["table"] = (lambda: table_layer(act_t),
                         lambda: gate_up(x, w.w_gate_up, base, cfg["gate_up"], fuse_swiglu=True, out=act_t),
                         lambda: down(act_t, w.w_down, base, tw, cfg["down"]),
                         int(base.num_post_padded.item()), int(used_blocks(base).item()), "")
    layouts = {0: (base, used_blocks(base))}
    for e in args.ext:
        layouts[e] = extended(base, e)
    for pair in args.pairs:
        gu_text, dn_text = pair.split("/")
        gu_cfg, dn_cfg = parse_cfg(gu_text), parse_cfg(dn_text)
        for e, (al, used) in layouts.items():
            for persistent in args.launch:
                label = f"{'reg' if e == 0 else f'ext{e}'}_{persistent}_{gu_text.replace(',', '-')}_" \
                        f"{dn_text.replace(',', '-')}"
                act = torch.empty((max_rows, F), dtype=x.dtype, device=x.device)
                try:
                    _, kg = lab_gate_up(x, w.w_gate_up, al, used, e, gu_cfg, act, persistent == "persist")
                    _, kd = lab_down(act, w.w_down, al, e, tw, dn_cfg)
                    torch.cuda.synchronize()
                except Exception as exc:  # a config that does not compile or fit: say so in the rows
                    rows.append({"model": name, "tokens": t, "variant": label, "round": -1,
                                 "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                    print(rows[-1], flush=True)
                    continue
                p = persistent == "persist"
                variants[label] = (
                    lambda al=al, used=used, e=e, g=gu_cfg, d=dn_cfg, p=p, act=act:
                        lab_layer(x, w, al, used, e, tw, g, d, p, act),
                    lambda al=al, used=used, e=e, g=gu_cfg, p=p, act=act:
                        lab_gate_up(x, w.w_gate_up, al, used, e, g, act, p)[0],
                    lambda al=al, e=e, d=dn_cfg, act=act: lab_down(act, w.w_down, al, e, tw, d)[0],
                    int(al.num_post_padded.item()), int(used.item()), f"{kernel_regs(kg)} {kernel_regs(kd)}")

    # Correctness first: every variant's y (outputs poisoned before the replay) against the table path's, and the
    # table path's against float64.
    graphs, ys = {}, {}
    for label, (layer, gu, dn, *_rest) in variants.items():
        g, y = graph_of(layer)
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        graphs[label] = (g, graph_of(gu)[0], graph_of(dn)[0])
        ys[label] = y.clone()
    ref = (reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, renormalize=True, topk_ids=ids)
           if args.reference else None)
    table_err = (float(((ys["table"].double() - ref).norm() / ref.norm()).item()) if ref is not None else float("nan"))
    diffs = {label: float(((y.float() - ys["table"].float()).norm() / ys["table"].float().norm()).item())
             for label, y in ys.items()}
    labels = list(variants)
    for r in range(args.rounds):
        for label in rotated(labels, r):
            g_l, g_gu, g_dn = graphs[label]
            q_l = bench(g_l.replay, 10, 100)
            q_gu = bench(g_gu.replay, 10, 100)
            q_dn = bench(g_dn.replay, 10, 100)
            *_fns, padded, blocks, regs = variants[label]
            rows.append({"model": name, "tokens": t, "variant": label, "round": r,
                         "layer_us": q_l[0] * 1e3, "layer_p20_us": q_l[1] * 1e3, "layer_p80_us": q_l[2] * 1e3,
                         "gate_up_us": q_gu[0] * 1e3, "down_us": q_dn[0] * 1e3, "padded_rows": padded,
                         "blocks": blocks, "routed": t * m.top_k, "regs_spills": regs,
                         "rel_diff_vs_table": diffs[label], "table_rel_err_f64": table_err,
                         "device_name": torch.cuda.get_device_name(), "error": ""})
            print({k: rows[-1][k] for k in ("model", "tokens", "variant", "round", "layer_us", "gate_up_us",
                                            "down_us", "padded_rows", "regs_spills", "rel_diff_vs_table")}, flush=True)
    timed = [r for r in rows if r["model"] == name and r["tokens"] == t and r["round"] >= 0]
    for _key, _mine, by in rounds_by(timed, ("model", "tokens"), "variant", labels, "layer_us"):
        for v, s in against_first(by, labels).items():
            print(f"  {name} T={t} {v}: layer {s['median']:.1f} us" +
                  (f", {s['ratio']:.3f}x table ({s['faster']}/{s['rounds']} rounds faster)" if "ratio" in s else ""),
                  flush=True)
    del w, graphs
    torch.cuda.empty_cache()


def add_arguments(ap):
    ap.add_argument("--ext", type=int, nargs="+", default=[64, 32], help="EXT_M values (rows added to a last block)")
    ap.add_argument("--pairs", nargs="+", default=["128,64,8,3/256,64,8,3", "128,64,16,3/256,64,16,3"],
                    help="gate/up and down configs, BLOCK_N,BLOCK_K,num_warps,num_stages each, as GU/DOWN")
    ap.add_argument("--launch", nargs="+", default=["grid", "persist"], choices=["grid", "persist"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the float64 reference of the table path")


def main(argv=None):
    return lab_main(argv, __doc__, "ext_lab.py", "qwen3-30b-a3b:4096", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
