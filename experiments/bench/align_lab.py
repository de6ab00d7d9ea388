"""Lab (perf notes v21): how many slots one program aligns (`tritonmoe.align.MAX_CHUNK`).

Up to CHUNK slots the alignment is one program (`_align_small_kernel`: a [CHUNK, BLOCK_E] one-hot tile, its
cumulative sum down the slots, the block layout); past it, chunks of CHUNK slots are counted, laid out and scattered
by three or four launches of many programs. CHUNK is at most `MAX_CHUNK` slots and `_TILE_ELEMS` / BLOCK_E, so
only the few-expert models reach the cap. At a cap of 1024 (the package's until session 21) Mixtral (8 experts) at
T=512 ran one program that took 24 us of a 1.18 ms layer (session 20, `breakdown.py`), and at T=1024 the two
1024-slot chunks' scatter 7.4 us; a smaller cap moves Mixtral's T=256-512 to the chunked path and splits every
chunk's tile. The package's cap is 256 since this lab's run (NOTES v22).

For each case and each cap: the alignment alone (`align_tokens` on the layer's own BLOCK_M/TAIL_M, its tables
compared with the first cap's entry for entry) and the whole fused layer, each as CUDA-graph replays
(`tune.graph_time`), the layer's output checked against the float64 reference; the caps interleaved over
`--repeat` rounds. Changing the cap clears `align_meta`'s memo and the recorded launch plans.

    python experiments/bench/align_lab.py --cases mixtral-8x7b:512 mixtral-8x22b:512 --caps 1024 256 --out $OUT/align.csv
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe import _launch, align  # noqa: E402
from problems import against_first, lab_main, lab_weights, load_models, make_tokens, rounds_by  # noqa: E402

TABLES = ("expert_ids", "block_rows", "num_post_padded", "expert_counts", "slot_rows")


def set_cap(cap: int) -> None:
    """Makes `cap` the alignment's MAX_CHUNK for the calls that follow."""
    align.MAX_CHUNK = cap
    align.align_meta.cache_clear()
    _launch.clear()


def tables(a: align.Alignment) -> dict[str, torch.Tensor]:
    """The alignment's outputs that a layer reads: the used rows of `sorted_ids` (rows past them are never read) and
    the other tables whole."""
    used = int(a.num_post_padded.item())
    return {"sorted_ids": a.sorted_ids[:used].clone(), **{k: getattr(a, k).clone() for k in TABLES}}


def summarize(rows: list[dict], caps) -> list[str]:
    """Per (model, tokens): each cap's median alignment and layer time over its rounds and, against the first cap, the
    layer's ratio of medians and the rounds in which it was faster (round by round, same round's timings)."""
    out = []
    for key, mine, layer in rounds_by(rows, ("model", "tokens"), "cap", caps, "layer_us"):
        line = [f"{key[0]} T={key[1]}:"]
        for c, st in against_first(layer, caps).items():
            align_us = statistics.median(r["align_us"] for r in mine if r["cap"] == c)
            line.append(f"cap {c} align {align_us:.2f} us, layer {st['median']:.1f} us")
            if "ratio" in st:
                line.append(f"({st['ratio']:.4f}x of cap {caps[0]}, faster in {st['faster']}/{st['rounds']} rounds)")
        out.append(" ".join(line))
    return out


def run_case(name: str, T: int, rows: list[dict], args) -> None:
    from latency import rel_err
    from tune import graph_time
    m = load_models()[name]
    w = lab_weights(m)
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=T)
    cfg = tritonmoe.api.resolve_config(x, T * m.top_k, m.experts, m.hidden, m.ffn, None)
    _, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    ref = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)
    bm, tail = cfg["BLOCK_M"], cfg.get("TAIL_M")
    first, before = None, align.MAX_CHUNK
    try:
        for r in range(args.repeat):
            for cap in args.caps:
                set_cap(cap)
                a = align.align_tokens(ids, m.experts, bm, tail)
                got = tables(a)
                first = first or got
                same = all(torch.equal(got[k], first[k]) for k in first)
                y = torch.full_like(x, float("nan"))

                def layer():
                    y.copy_(tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, config=cfg))
                layer()
                err = rel_err(y, ref)
                align_us = graph_time(lambda: align.align_tokens(ids, m.experts, bm, tail)) * 1e3
                layer_us = graph_time(layer) * 1e3
                chunk = align.align_meta(ids.numel(), m.experts, bm, tail)["CHUNK"]
                rows.append({"device": torch.cuda.get_device_name(), "model": name, "tokens": T, "cap": cap,
                             "chunk": chunk, "one_program": ids.numel() <= chunk, "round": r,
                             "align_us": round(align_us, 2), "layer_us": round(layer_us, 1),
                             "same_tables": same, "rel_err": err})
                print(f"{name} T={T} cap {cap:5d} (chunk {chunk}) round {r}: align {align_us:7.2f} us, layer "
                      f"{layer_us:9.1f} us, tables {'equal' if same else 'DIFFER'}, rel_err {err:.2e}", flush=True)
    finally:
        set_cap(before)
    for line in summarize([r for r in rows if r["model"] == name and r["tokens"] == T], args.caps):
        print(line, flush=True)


def main(argv=None) -> int:
    def add(ap):
        ap.add_argument("--caps", nargs="+", type=int, default=[1024, 512, 256, 128])
        ap.add_argument("--repeat", type=int, default=3)
    return lab_main(argv, __doc__, "align_lab.py", "mixtral-8x7b:512", run_case, add)


if __name__ == "__main__":
    sys.exit(main())
