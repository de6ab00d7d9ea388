"""Extended last blocks at ~256 routed rows per expert (perf notes v25).

Every large-T miss left sits at R = T*K/E ~ 256 routed rows per expert (mixtral-8x7b and -8x22b T=1024, qwen3-30b-a3b
T=4096, olmoe-1b-7b T=2048, qwen2-moe-57b T=4096). On a uniform draw about half the experts get a few rows more than
256, and the alignment pads each of those to a third 128-row block: ~1.25x the routed rows are computed, and the
third block streams the expert's whole weight tile from the L2 for ~13 rows. Tail blocks (v7, v18) cut the padding
but not the weight bytes: a 16-64-row tile reads as many weight bytes as a full one, and at these points the L2 is
what binds (v9). `rows_lab.py` (v24) put the price of the draw's uneven rows at 11-16% of the expert path.

The package's extended last blocks (`TAIL_M > BLOCK_M`, `tritonmoe.align`, `tritonmoe.config.with_ext`) save both: an
expert whose rows pass a multiple of BLOCK_M by at most TAIL_M - BLOCK_M gets one block of TAIL_M rows instead of a
last full block and a mostly empty one, and the GEMMs run it as two token tiles against each weight tile. At R ~ 256
with 64 extra rows an expert of 269 rows computes 320 rows instead of 384 and reads its weight tiles twice, not three
times.

This lab times, on the sweep's uniform draw of each case, the table's config (`table`) against the same config with
last blocks extended by each `--ext` value, at the table's warps and at `--warps` (`ext<E>` / `ext<E>_w<W>`): the
whole layer (routing included, `tritonmoe.moe`), and its gate/up and down GEMMs alone on the routing's alignment, as
CUDA-graph replays with the sweep's timing (`timing.bench`), in interleaved rounds. Every variant's y is checked
against float64 (outputs poisoned before the replay).

    python experiments/bench/ext_lab.py --cases qwen3-30b-a3b:4096 mixtral-8x7b:1024 --out $OUT/ext.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from problems import against_first, lab_main, load_models, make_tokens, make_weights, rotated, rounds_by  # noqa: E402
from tritonmoe.config import with_ext  # noqa: E402


def ext_variants(cfg: dict, exts, warps) -> dict[str, dict]:
    """The table's config and, for each extension `e` of `exts`, the same with last blocks extended by e rows
    (`with_ext`), at the config's own warps and at each of `warps` (both GEMMs). Extensions that the config's
    BLOCK_M does not allow (16 <= e < BLOCK_M, a power of two) and the one-kernel decode path are left out."""
    out = {"table": cfg}
    bm = cfg["BLOCK_M"]
    if cfg.get("expert"):
        return out
    for e in exts:
        if not (16 <= e < bm and e & (e - 1) == 0):
            continue
        out[f"ext{e}"] = with_ext(cfg, e)
        for w in warps:
            if w != cfg["gate_up"].get("num_warps") or w != cfg["down"].get("num_warps"):
                out[f"ext{e}_w{w}"] = with_ext({**cfg, "gate_up": {**cfg["gate_up"], "num_warps": w},
                                                "down": {**cfg["down"], "num_warps": w}}, e)
    return out


def block_stats(align) -> dict:
    """Blocks, extended blocks and used rows of an alignment (host copies)."""
    br = align.block_rows.cpu()
    used = int(align.num_post_padded.item())
    heights = (br[1:] - br[:-1])[br[:-1] < used]
    return {"blocks": int(heights.numel()), "ext_blocks": int((heights > align.block_m).sum().item()),
            "padded_rows": used}


def run_case(name, t, rows, args):
    import tritonmoe
    from timing import bench
    from tritonmoe.align import align_tokens
    from tritonmoe.api import resolve_config
    from tritonmoe.config import tail_of
    from tritonmoe.down import down
    from tritonmoe.gate_up import gate_up

    m = load_models()[name]
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, t, w, "uniform", torch.bfloat16, "cuda", seed=t)
    cfg = resolve_config(x, t * m.top_k, m.experts, m.hidden, m.ffn, None)
    tw, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    ref = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)

    def graph_of(fn):
        fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = fn()
        return g, out

    runs = {}
    for label, c in ext_variants(cfg, args.ext, args.warps).items():
        try:
            al = align_tokens(ids, m.experts, c["BLOCK_M"], tail_of(c))
            act = torch.empty((al.sorted_ids.shape[0], m.ffn), dtype=x.dtype, device=x.device)
            g_layer, y = graph_of(lambda c=c: tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k,
                                                             config=c))
            y.fill_(float("nan"))
            g_layer.replay()
            torch.cuda.synchronize()
            err = float(((y.double() - ref).norm() / ref.norm()).item())
            g_gu, _ = graph_of(lambda c=c, al=al, act=act:
                               gate_up(x, w.w_gate_up, al, c["gate_up"], fuse_swiglu=True, out=act))
            g_dn, _ = graph_of(lambda c=c, al=al, act=act: down(act, w.w_down, al, tw, c["down"]))
        except Exception as exc:  # a config that does not compile or fit: say so in the rows
            rows.append({"model": name, "tokens": t, "variant": label, "round": -1,
                         "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            print(rows[-1], flush=True)
            continue
        runs[label] = (g_layer, g_gu, g_dn, err, block_stats(al), c)
    labels = list(runs)
    for r in range(args.rounds):
        for label in rotated(labels, r):
            g_layer, g_gu, g_dn, err, stats, c = runs[label]
            q = bench(g_layer.replay, 10, 100)
            rows.append({"model": name, "tokens": t, "variant": label, "round": r,
                         "layer_us": q[0] * 1e3, "layer_p20_us": q[1] * 1e3, "layer_p80_us": q[2] * 1e3,
                         "gate_up_us": bench(g_gu.replay, 10, 100)[0] * 1e3,
                         "down_us": bench(g_dn.replay, 10, 100)[0] * 1e3,
                         **stats, "routed": t * m.top_k, "rel_err": err, "config": repr(c),
                         "device_name": torch.cuda.get_device_name(), "error": ""})
            print({k: rows[-1][k] for k in ("model", "tokens", "variant", "round", "layer_us", "gate_up_us",
                                            "down_us", "padded_rows", "ext_blocks", "rel_err")}, flush=True)
    timed = [r for r in rows if r["model"] == name and r["tokens"] == t and r["round"] >= 0]
    for _key, _mine, by in rounds_by(timed, ("model", "tokens"), "variant", labels, "layer_us"):
        for v, s in against_first(by, labels).items():
            print(f"  {name} T={t} {v}: layer {s['median']:.1f} us" +
                  (f", {s['ratio']:.3f}x table ({s['faster']}/{s['rounds']} rounds faster)" if "ratio" in s else ""),
                  flush=True)
    del w, runs
    torch.cuda.empty_cache()


def add_arguments(ap):
    ap.add_argument("--ext", type=int, nargs="+", default=[64, 32], help="rows added to an expert's last full block")
    ap.add_argument("--warps", type=int, nargs="*", default=[16], help="num_warps also tried for both GEMMs")
    ap.add_argument("--rounds", type=int, default=3)


def main(argv=None):
    return lab_main(argv, __doc__, "ext_lab.py", "qwen3-30b-a3b:4096", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
