"""Tail blocks beside the persistent gate/up (perf notes v18). Not part of the package.

At ~256 routed rows per expert (qwen3-30b-a3b T=4096, olmoe-1b-7b T=2048, deepseek-v3 T=8192) the tables run the
persistent gate/up, which takes no tail blocks (one tile height per flattened loop), so each expert pads to a
multiple of 128 rows: ~23% of the rows computed are padding there (uniform routing). Tail blocks (TAIL_M rows for
each expert's rest) cut that to 6-12%, but only the one-program-per-tile kernels take them.

This lab measures a layout that lets both meet: the alignment's blocks reordered so that all full blocks come first
(expert order) and all tail blocks after them (done on the host here, from the package's own alignment, before the
graphs are captured). The persistent kernel then walks the full region only (its rows start at 0 and are whole
blocks), and a second launch (the pointer kernel, `_gate_up_kernel`) computes the tail region; the down projection
takes the reordered tails as they are (its kernels find each block's rows in `block_rows`). Timed as CUDA-graph
replays with the sweep's timing, against the table's config (persistent, no tails) and against the package's tails
path (one program per tile, no persistence); y from each is compared with the table path's.

    python experiments/bench/tailpersist_lab.py --cases qwen3-30b-a3b:4096 olmoe-1b-7b:2048 --out $OUT/tp.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from problems import lab_main, load_models, make_tokens, make_weights  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe._gemm_common import dot_precision, order_blocks  # noqa: E402
from tritonmoe._host import cdiv  # noqa: E402
from tritonmoe.align import Alignment, align_tokens  # noqa: E402
from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.descriptors import descriptor, descriptor_ok  # noqa: E402
from tritonmoe.down import combine, down  # noqa: E402
from tritonmoe.gate_up import (_gate_up_kernel, _gate_up_persistent_gather_kernel, gate_up,  # noqa: E402
                               persistent_programs)
from tritonmoe.routing import route  # noqa: E402


def tails_last(al: Alignment) -> tuple[Alignment, int, int]:
    """The alignment with its full blocks first and its tail blocks after them (each region in expert order);
    returns (alignment, full blocks, tail blocks)."""
    br = al.block_rows.cpu().long()
    eid = al.expert_ids.cpu()
    sid = al.sorted_ids.cpu()
    nb = al.max_blocks
    heights = br[1:nb + 1] - br[:nb]
    full = [b for b in range(nb) if heights[b] == al.block_m]
    tail = [b for b in range(nb) if 0 < heights[b] < al.block_m]
    rows, starts, ids = [], [], []
    pos = 0
    for b in full + tail:
        starts.append(pos)
        rows.append(sid[br[b]:br[b] + heights[b]])
        ids.append(int(eid[b]))
        pos += int(heights[b])
    new_sid = torch.full_like(sid, al.num_routed)
    new_sid[:pos] = torch.cat(rows)
    new_br = torch.full((nb + 1,), pos, dtype=torch.int32)
    new_br[:len(starts)] = torch.tensor(starts, dtype=torch.int32)
    new_eid = torch.full((nb,), -1, dtype=torch.int32)
    new_eid[:len(ids)] = torch.tensor(ids, dtype=torch.int32)
    slot_rows = torch.empty(al.num_routed, dtype=torch.int32)
    used = new_sid[:pos]
    ok = used < al.num_routed
    slot_rows[used[ok].long()] = torch.arange(pos, dtype=torch.int32)[ok]
    dev = al.sorted_ids.device
    out = Alignment(sorted_ids=new_sid.to(dev), expert_ids=new_eid.to(dev), block_rows=new_br.to(dev),
                    num_post_padded=torch.tensor([pos], dtype=torch.int32, device=dev),
                    expert_counts=al.expert_counts, slot_rows=slot_rows.to(dev), block_m=al.block_m,
                    num_routed=al.num_routed, tail_m=al.tail_m)
    return out, len(full), len(tail)


_FULL_ROWS: dict = {}  # the full region's row count as a device tensor (made before any capture)


def gate_up_split(x, wgu, al, n_full, n_tail, cfg, tail_cfg, out):
    """Persistent gate/up over the full region, then the pointer kernel over the tail region."""
    E, F2, H = wgu.shape
    F = F2 // 2
    bm, bn, bk = al.block_m, cfg["BLOCK_N"], cfg["BLOCK_K"]
    w_desc = descriptor(wgu, [2, bn, bk], shape=[2 * E, F, H])
    programs = persistent_programs(x.device, max(1, n_full) * cdiv(F, bn))
    tma_store = descriptor_ok(out)
    key = (n_full * bm, x.device)
    if key not in _FULL_ROWS:
        _FULL_ROWS[key] = torch.tensor([n_full * bm], dtype=torch.int32, device=x.device)
    full_rows = _FULL_ROWS[key]
    top_k = al.num_routed // x.shape[0]
    if n_full:
        _gate_up_persistent_gather_kernel[(programs,)](
            x, w_desc, descriptor(out, [bm, bn]) if tma_store else out, out,
            al.sorted_ids, al.expert_ids, full_rows,
            F, H, al.num_routed, 0, x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            TOP_K=top_k, NUM_PROGRAMS=programs, FUSE_SWIGLU=True, TMA_STORE=tma_store,
            PRECISION=dot_precision(x.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.get("GROUP_M", 1),
            ORDER_BLOCKS=order_blocks(cfg, al), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if n_tail:
        tbn, tbk, tw, ts = tail_cfg
        _gate_up_kernel[(n_tail * cdiv(F, tbn),)](
            x, wgu, out, al.sorted_ids, al.expert_ids[n_full:], al.block_rows[n_full:], al.num_post_padded,
            F, H, al.num_routed, 0, F, n_tail,
            x.stride(0), x.stride(1), wgu.stride(0), wgu.stride(1), wgu.stride(2), out.stride(0), out.stride(1),
            TOP_K=top_k, FUSE_SWIGLU=True, EVEN_K=(H % tbk == 0), PRECISION=dot_precision(x.dtype),
            BLOCK_M=bm, TAIL_M=al.tail_m, BLOCK_N=tbn, BLOCK_K=tbk, GROUP_M=8, ORDER_BLOCKS=0,
            num_warps=tw, num_stages=ts)
    return out


def graph_of(fn):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def run_case(name, t, rows, args):
    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
    E, F = m.experts, m.ffn
    cfg = resolve_config(x, t * m.top_k, E, m.hidden, F, None)
    tw, ids = route(x, w.router_weight, m.top_k, True)
    bm = cfg["BLOCK_M"]
    base_al = align_tokens(ids, E, bm, cfg.get("TAIL_M"))

    def record(label, stage, fn):
        g, _ = graph_of(fn)
        return bench(g.replay, 10, 100)

    def layer_rows(label, al, gu_fn, down_cfg):
        act = torch.empty((al.sorted_ids.shape[0], F), dtype=x.dtype, device=x.device)
        q_gu = record(label, "gate_up", lambda: gu_fn(act))
        q_dn = record(label, "down", lambda: down(act, w.w_down, al, tw, down_cfg))

        def layer():
            gu_fn(act)
            return combine(down(act, w.w_down, al, tw, down_cfg), t, m.top_k, x.dtype)
        g, y = graph_of(layer)
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        q_l = bench(g.replay, 10, 100)
        return q_gu, q_dn, q_l, y.clone()

    variants = [("table", base_al, lambda a: gate_up(x, w.w_gate_up, base_al, cfg["gate_up"], fuse_swiglu=True, out=a),
                 cfg["down"])]
    for tail in args.tails:
        tal = align_tokens(ids, E, bm, tail)
        no_persist = {k: v for k, v in cfg["gate_up"].items() if k != "PERSISTENT"}
        variants.append((f"tails{tail}_pointer", tal,
                         lambda a, tal=tal, c=no_persist: gate_up(x, w.w_gate_up, tal, c, fuse_swiglu=True, out=a),
                         cfg["down"]))
        if cfg["gate_up"].get("PERSISTENT") and not cfg["gate_up"].get("DESC"):
            ral, n_full, n_tail = tails_last(tal)
            # An expert's full and tail blocks are apart in this layout: the down runs in grouped order.
            down_cfg = {k: v for k, v in cfg["down"].items() if k != "EXPERT_ORDER"}
            for tc in args.tail_cfgs:
                tcfg = tuple(int(v) for v in tc.split(","))
                variants.append((f"tails{tail}_split_{tc.replace(',', '-')}", ral,
                                 lambda a, ral=ral, nf=n_full, nt=n_tail, tcfg=tcfg:
                                 gate_up_split(x, w.w_gate_up, ral, nf, nt, cfg["gate_up"], tcfg, a), down_cfg))
    ref = None
    for label, al, fn, dcfg in variants:
        q_gu, q_dn, q_l, y = layer_rows(label, al, fn, dcfg)
        if ref is None:
            ref = y
            assert torch.isfinite(ref).all(), "table path wrote non-finite values"
        diff = float(((y.float() - ref.float()).norm() / ref.float().norm()).item())
        padded = int(al.num_post_padded.item())
        rows.append({"model": name, "tokens": t, "variant": label, "gate_up_us": q_gu[0] * 1e3, "down_us": q_dn[0] * 1e3,
                     "layer_us": q_l[0] * 1e3, "layer_p20_us": q_l[1] * 1e3, "layer_p80_us": q_l[2] * 1e3,
                     "padded_rows": padded, "routed": t * m.top_k, "rel_diff_vs_table": diff,
                     "device_name": torch.cuda.get_device_name()})
        print(rows[-1], flush=True)
    del w
    torch.cuda.empty_cache()


def add_arguments(ap):
    ap.add_argument("--tails", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--tail-cfgs", nargs="+", default=["128,64,4,4", "64,128,4,3"],
                    help="BLOCK_N,BLOCK_K,num_warps,num_stages of the tail launch")


def main(argv=None):
    return lab_main(argv, __doc__, "tailpersist_lab.py", "qwen3-30b-a3b:4096", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
