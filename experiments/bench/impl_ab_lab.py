"""Lab (perf notes v20): implementations of the layer timed side by side in interleaved rounds, to settle a tie.

The sweep (`latency.py`) times each impl once per point, one after the other; where two impls differ by less than the
run-to-run drift (deepseek-v3 T=128: fused 7.329 ms against w13 7.322, both at 0.99 of the floor) one timing each does
not say which is faster. Here every round captures each impl's whole layer (routing included, as in the sweep) in a
CUDA graph, poisons its output, checks it against the float64 reference and times its replays (the sweep's own
`latency.measure`); the impls' order rotates from round to round, so drift over the run falls on each alike. One row per
(case, routing, impl, round); the summary gives each impl's median over rounds and, for each impl against the first,
the rounds it was faster in.

    python experiments/bench/impl_ab_lab.py --cases deepseek-v3:128 --repeat 7 --out $OUT/impl_ab.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from latency import measure  # noqa: E402
from problems import (ROUTINGS, against_first, lab_main, load_models, make_tokens, make_weights,  # noqa: E402
                      rotated, rounds_by)
from providers import PROVIDERS  # noqa: E402

DEFAULT_IMPLS = ("tritonmoe_fused", "tritonmoe_w13", "tritonmoe_unfused")


def summarize(rows: list[dict], impls) -> list[str]:
    """Per (model, tokens, routing): each impl's median over its rounds, and against the first impl the ratio of
    medians and the rounds in which it was slower (round by round, same round's timings)."""
    out = []
    for key, _, by in rounds_by(rows, ("model", "tokens", "routing"), "impl", impls, "median_ms"):
        line = [f"{key[0]} T={key[1]} {key[2]}:"]
        for i, st in against_first(by, impls).items():
            line.append(f"{i} {st['median']:.4f} ms")
            if "ratio" in st:
                line.append(f"({st['ratio']:.4f}x of {impls[0]}, slower in {st['slower']}/{st['rounds']} rounds)")
        out.append(" ".join(line))
    return out


def main(argv=None) -> int:
    models = load_models()

    def add_arguments(ap):
        ap.add_argument("--impls", nargs="+", default=list(DEFAULT_IMPLS), choices=list(PROVIDERS))
        ap.add_argument("--routings", nargs="+", default=["uniform"], choices=list(ROUTINGS))
        ap.add_argument("--repeat", type=int, default=7)
        ap.add_argument("--warmup-ms", type=float, default=20)
        ap.add_argument("--rep-ms", type=float, default=80)

    def run_case(name, tokens, rows, args):
        bad = [i for i in args.impls if not PROVIDERS[i].capturable]
        if bad:
            raise SystemExit(f"impl_ab_lab.py: --impls {bad} cannot be captured in a CUDA graph")
        m = models[name]
        for routing in args.routings:
            w = make_weights(m, torch.bfloat16, "cuda", routing)
            x = make_tokens(m, tokens, w, routing, torch.bfloat16, "cuda", seed=tokens)  # the sweep's draw
            _, ids = tritonmoe.route(x, w.router_weight, m.top_k)
            ref = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)
            built = {i: PROVIDERS[i].build(m, w) for i in args.impls}
            # A provider with its own expert choice is checked against the reference on that choice (as the sweep).
            refs = {i: ref if not hasattr(fn, "expert_ids") else
                    tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k,
                                            topk_ids=fn.expert_ids(x)) for i, fn in built.items()}
            for k in range(args.repeat):
                for impl in rotated(args.impls, k):
                    # The sweep's graph measurement: capture, poison the output, replay, rel_err, time the replays.
                    r = measure(PROVIDERS[impl], built[impl], x, refs[impl], True, args)
                    med, p20, p80, err = r["median_ms"], r["p20_ms"], r["p80_ms"], r["rel_err"]
                    if not err <= 1e-2:
                        raise RuntimeError(f"{impl} {name} T={tokens} {routing}: rel_err {err:.3g}")
                    rows.append({"device": torch.cuda.get_device_name(), "model": name, "tokens": tokens,
                                 "routing": routing, "impl": impl, "round": k, "median_ms": med, "p20_ms": p20,
                                 "p80_ms": p80, "rel_err": err})
                    print(f"{name} T={tokens} {routing} round {k} {impl}: {med:.4f} ms (p20 {p20:.4f}, p80 {p80:.4f}) "
                          f"rel_err {err:.2e}", flush=True)
            del built, refs, w, x, ref
            torch.cuda.empty_cache()
        for line in summarize([r for r in rows if r["model"] == name and r["tokens"] == tokens], args.impls):
            print(line, flush=True)

    return lab_main(argv, __doc__, "impl_ab_lab.py", "deepseek-v3:128", run_case, add_arguments)


if __name__ == "__main__":
    sys.exit(main())
