"""Latency sweep: every impl over models, token counts and routings, as the whole layer from x to y.

Writes `<device-out>/latency.csv` (columns of ../shared/CONTRACTS.md plus `note`) and
`provenance.json`. Rows for the same (model, dtype, routing, tokens, impl, graph) are replaced,
others kept, so a sweep can run in parts. Run on a GPU:

    python experiments/bench/latency.py --device-out results/raw/h100-sxm --git-sha $(git rev-parse HEAD)
"""
from __future__ import annotations

import argparse
import gc
import io
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import tritonmoe  # noqa: E402
from device_info import (atomic_write_text, measure_bf16_tflops, measure_copy_gbps, merge_rows, provenance,  # noqa: E402
                         update_provenance)
from problems import ROUTINGS, TOKENS, fewest_bytes, layer_flops, load_models, make_tokens, make_weights  # noqa: E402
from providers import PROVIDERS  # noqa: E402
from timing import bench  # noqa: E402

COLUMNS = ["device", "model", "dtype", "routing", "tokens", "impl", "graph", "median_ms", "p20_ms", "p80_ms",
           "floor_ms", "rel_err", "git_sha", "timestamp", "note"]
KEY = ["model", "dtype", "routing", "tokens", "impl", "graph"]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def time_fn(fn, warmup_ms: float, rep_ms: float, eager: bool = False) -> tuple[float, float, float]:
    """Graph replays: device time of the replay. Eager calls: from an idle GPU, so the host's launch work counts."""
    med, p20, p80 = bench(fn, warmup_ms, rep_ms, quantiles=(0.5, 0.2, 0.8), sync_each=eager)
    return med, p20, p80


def capture(fn, x):
    """Captures fn(x) into a CUDA graph; returns (graph, static output)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fn(x)
    return g, y


def measure(provider, fn, x, ref, graph: bool, args) -> dict:
    if graph:
        g, y = capture(fn, x)
        y.fill_(float("nan"))  # poison: every element must be written by the replay
        g.replay()
        torch.cuda.synchronize()
        err = rel_err(y, ref)
        med, p20, p80 = time_fn(g.replay, args.warmup_ms, args.rep_ms)
        del g
    else:
        y = fn(x)
        torch.cuda.synchronize()
        err = rel_err(y, ref)
        med, p20, p80 = time_fn(lambda: fn(x), args.warmup_ms, args.rep_ms, eager=True)
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80, "rel_err": err}


def main(argv=None) -> int:
    models = load_models()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device-out", type=Path, help="results/raw/<device> folder (default: <results-root>/<slug of this GPU>)")
    ap.add_argument("--results-root", type=Path, default=Path("results/raw"))
    ap.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    ap.add_argument("--impls", nargs="+", default=list(PROVIDERS), choices=list(PROVIDERS))
    ap.add_argument("--routings", nargs="+", default=["uniform"], choices=list(ROUTINGS))
    ap.add_argument("--graph", choices=["0", "1", "both"], default="both")
    ap.add_argument("--warmup-ms", type=float, default=20)
    ap.add_argument("--rep-ms", type=float, default=80)
    ap.add_argument("--git-sha", required=True)
    ap.add_argument("--git-dirty", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=540, help="stop cleanly (keeping rows so far) after this long")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("latency.py: no GPU here; nothing measured", file=sys.stderr)
        return 2
    t_start = time.time()
    if args.device_out is None:
        from tritonmoe.tuned import device_slug
        args.device_out = args.results_root / device_slug(torch.device("cuda"))
    dtype = torch.bfloat16
    copy_gbps, tflops = measure_copy_gbps(), measure_bf16_tflops()
    print(f"# {torch.cuda.get_device_name()}: copy {copy_gbps:.0f} GB/s, bf16 matmul {tflops:.0f} TFLOP/s", flush=True)
    slug = args.device_out.name
    graphs = {"0": [False], "1": [True], "both": [False, True]}[args.graph]
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience
        tqdm = None
    jobs = [(m, r, t) for m in args.models for r in args.routings for t in args.tokens]
    bar = tqdm(total=len(jobs), file=sys.stderr, mininterval=5) if tqdm else None
    stopped = False
    for mname in args.models:
        m = models[mname]
        for routing in args.routings:
            if stopped:
                break
            w = make_weights(m, dtype, "cuda", routing)
            built, build_err, own_ids = {}, {}, {}
            for name in args.impls:
                try:
                    built[name] = PROVIDERS[name].build(m, w)
                    if hasattr(built[name], "expert_ids"):
                        own_ids[name] = built[name].expert_ids
                except Exception as e:  # a baseline that cannot run says why in its rows
                    build_err[name] = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            for tokens in args.tokens:
                if time.time() - t_start > args.budget_s:
                    stopped = True
                    break
                x = make_tokens(m, tokens, w, routing, dtype, "cuda", seed=tokens)
                _, ids = tritonmoe.route(x, w.router_weight, m.top_k)
                ref = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)
                hit = int(torch.unique(ids).numel())
                fb = fewest_bytes(m, tokens, hit, x.element_size())
                floor_ms = max(fb / (copy_gbps * 1e9), layer_flops(m, tokens) / (tflops * 1e12)) * 1e3
                for name in args.impls:
                    p = PROVIDERS[name]
                    ref_p = ref
                    if name in own_ids and name in built:
                        ref_p = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k,
                                                        topk_ids=own_ids[name](x))
                    for graph in graphs:
                        row = {"device": slug, "model": mname, "dtype": "bf16", "routing": routing, "tokens": tokens,
                               "impl": name, "graph": int(graph), "floor_ms": floor_ms,
                               "git_sha": args.git_sha, "note": ""}
                        if name in build_err:
                            row["note"] = build_err[name]
                        elif graph and not p.capturable:
                            row["note"] = f"not capturable: {p.why_not_capturable}"
                        else:
                            try:
                                row.update(measure(p, built[name], x, ref_p, graph, args))
                            except Exception as e:
                                row["note"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
                                torch.cuda.empty_cache()
                        row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                        rows.append(row)
                del x, ref, ref_p
                if bar:
                    bar.update(1)
            del built, own_ids, w
            gc.collect()  # Megablocks' modules hold reference cycles: free its weight copy before the next set
            torch.cuda.empty_cache()
    if bar:
        bar.close()
    path = args.device_out / "latency.csv"
    new = merge_rows(path, pd.DataFrame(rows, columns=COLUMNS), KEY)
    buf = io.StringIO()
    new.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())
    update_provenance(args.device_out, provenance(args.git_sha, bool(args.git_dirty), copy_gbps, tflops))
    show = pd.DataFrame(rows)
    if len(show):
        show["frac_floor"] = show["floor_ms"] / show["median_ms"]
        cols = ["model", "routing", "tokens", "impl", "graph", "median_ms", "floor_ms", "frac_floor", "rel_err", "note"]
        with pd.option_context("display.width", 250, "display.max_rows", 500, "display.max_colwidth", 60):
            print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if stopped:
        print("# stopped at the time budget; rerun with the remaining models/tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
