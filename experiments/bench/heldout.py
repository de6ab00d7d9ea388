"""Configs for shapes without a tuned table: what `tritonmoe.tuned.borrowed` (the nearest tuned shape's bucket, `borrow_slug`, through the `skew_guard`) is worth, measured.

Two sets, every row a whole layer (`x` to `y`, routing included) as CUDA-graph replays, timed and checked like the
sweep (`latency.measure`: poisoned output, rel_err against the float64 reference):
- `heldout`: the shapes of `config/heldout_models.yaml`, which no table was tuned for: the layer on the configs it
  borrows from the nearest tuned shape (what `tritonmoe.moe` does by default), on the per-backend defaults
  (`tritonmoe.config.default_config`, what a card without any table gets), and `torch_grouped_mm` beside them;
- `loo` (leave-one-out): the tuned models of `config/models.yaml`, each on its own table, on the configs borrowed
  from the other tables (its own left out), and on the defaults.
Writes `<device-out>/heldout.csv` (rows of the same key replaced, others kept) and a run in `provenance.json`.

    python experiments/bench/heldout.py --device-out results/raw/h100-sxm --git-sha $(git rev-parse --short HEAD)
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe.config import backend_of, default_config  # noqa: E402
from tritonmoe.tuned import borrowed, table_entry  # noqa: E402
from device_info import atomic_write_text, merge_rows  # noqa: E402
from problems import (MODELS_FILE, ROUTINGS, fewest_bytes, layer_flops, load_models, make_tokens,  # noqa: E402
                      make_weights, zipf_router)

HELDOUT_FILE = MODELS_FILE.parent / "heldout_models.yaml"
TOKENS = (1, 4, 16, 64, 256, 1024, 4096)
COLUMNS = ["device", "set", "model", "experts", "hidden", "ffn", "top_k", "dtype", "routing", "tokens", "impl",
           "config", "config_source", "graph", "median_ms", "p20_ms", "p80_ms", "floor_ms", "rel_err", "git_sha",
           "timestamp", "note"]
KEY = ["set", "model", "dtype", "routing", "tokens", "impl", "config"]


def configs_for(slug: str, m, num_routed: int, heldout: bool) -> list[tuple[str, dict | None, str]]:
    """(name, config, where it came from) of the tritonmoe rows of one point. A `heldout` shape has no table:
    `borrowed` is what the layer resolves by default. A tuned model (leave-one-out): its `own` table and the
    configs it would borrow were its table missing. `default` is the per-backend default either way."""
    shape = (m.experts, m.hidden, m.ffn)
    out = []
    if not heldout:
        own = table_entry(slug, torch.bfloat16, num_routed, *shape)
        out.append(("own", *(own or (None, ""))))
    found = borrowed(slug, torch.bfloat16, num_routed, *shape, tokens=num_routed // m.top_k,
                     exclude=None if heldout else shape)
    out.append(("borrowed", None if found is None else found[0], "" if found is None else f"borrowed:{found[1]}"))
    out.append(("default", default_config(backend_of(torch.device("cuda")), num_routed, *shape), "default"))
    return out


def main(argv=None) -> int:
    tuned_models, heldout_models = load_models(), load_models(HELDOUT_FILE)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device-out", type=Path, required=True, help="results/raw/<device> folder")
    ap.add_argument("--sets", nargs="+", choices=["heldout", "loo"], default=["heldout", "loo"])
    ap.add_argument("--models", nargs="+", choices=[*heldout_models, *tuned_models],
                    help="models of the chosen sets to run (default: all of them)")
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    ap.add_argument("--routings", nargs="+", default=list(ROUTINGS), choices=list(ROUTINGS))
    ap.add_argument("--warmup-ms", type=float, default=10)
    ap.add_argument("--rep-ms", type=float, default=50)
    ap.add_argument("--git-sha", help="the commit of the code that runs (recorded in every row; needed to measure)")
    ap.add_argument("--git-dirty", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=540, help="stop cleanly (keeping rows so far) after this long")
    ap.add_argument("--merge-only", action="store_true",
                    help="measure nothing: rewrite <device-out>/heldout.csv keeping the last row of each key (what "
                         "every run's merge does; before 2be8a4e it kept a peer's earlier rows beside a rerun's)")
    args = ap.parse_args(argv)
    if args.merge_only:
        path = args.device_out / "heldout.csv"
        kept = merge_rows(path, pd.DataFrame(columns=COLUMNS), KEY)
        buf = io.StringIO()
        kept.to_csv(buf, index=False)
        atomic_write_text(path, buf.getvalue())
        print(f"# {path}: {len(kept)} rows kept", flush=True)
        return 0
    if not args.git_sha:
        ap.error("--git-sha is needed to measure")
    if not torch.cuda.is_available():
        print("heldout.py: no GPU here; nothing measured", file=sys.stderr)
        return 2
    from device_info import measure_bf16_tflops, measure_copy_gbps, provenance, update_provenance
    from latency import measure
    from providers import PROVIDERS
    from tune import warm

    t_start = time.time()
    slug = args.device_out.name
    copy_gbps, tflops = measure_copy_gbps(), measure_bf16_tflops()
    print(f"# {torch.cuda.get_device_name()}: copy {copy_gbps:.0f} GB/s, bf16 matmul {tflops:.0f} TFLOP/s", flush=True)
    cases = [(s, m) for s, models in (("heldout", heldout_models), ("loo", tuned_models)) if s in args.sets
             for m in models.values() if args.models is None or m.name in args.models]
    rows, stopped = [], False
    for set_name, m in cases:
        if stopped:
            break
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")
        routers = {"uniform": w.router_weight,
                   "zipf": zipf_router(w.router_weight.float(), w.routing_dir).to(torch.bfloat16)}
        for routing in args.routings:
            wr = routers[routing]
            grouped = PROVIDERS["torch_grouped_mm"].build(m, dataclasses.replace(w, router_weight=wr))
            for tokens in args.tokens:
                if time.time() - t_start > args.budget_s:
                    stopped = True
                    break
                x = make_tokens(m, tokens, w, routing, torch.bfloat16, "cuda", seed=3000 + tokens)
                ids = tritonmoe.route(x, wr, m.top_k)[1]
                ref = tritonmoe.reference_moe(x, wr, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)
                fb = fewest_bytes(m, tokens, int(torch.unique(ids).numel()), x.element_size())
                floor_ms = max(fb / (copy_gbps * 1e9), layer_flops(m, tokens) / (tflops * 1e12)) * 1e3
                cfgs = configs_for(slug, m, tokens * m.top_k, set_name == "heldout")

                def layer(c):
                    return lambda x_: tritonmoe.moe(x_, wr, w.w_gate_up, w.w_down, m.top_k, config=c)
                warm(lambda c: layer(c)(x), [c for _, c, _ in cfgs if c is not None])  # compiles in parallel
                entries = [("tritonmoe_fused", name, c, src) for name, c, src in cfgs]
                if set_name == "heldout":
                    entries.append(("torch_grouped_mm", "", None, ""))
                for impl, name, c, src in entries:
                    row = {"device": slug, "set": set_name, "model": m.name, "experts": m.experts, "hidden": m.hidden,
                           "ffn": m.ffn, "top_k": m.top_k, "dtype": "bf16", "routing": routing, "tokens": tokens,
                           "impl": impl, "config": name, "config_source": src, "graph": 1, "floor_ms": floor_ms,
                           "git_sha": args.git_sha, "note": ""}
                    if impl == "tritonmoe_fused" and c is None:
                        row["note"] = ("no table of this shape on this device" if name == "own" else
                                       "no table on this device or its siblings to borrow from")
                    else:
                        fn = grouped if impl == "torch_grouped_mm" else layer(c)
                        try:
                            row.update(measure(None, fn, x, ref, True, args))
                        except Exception as e:  # a row that could not run says why
                            row["note"] = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
                            torch.cuda.empty_cache()
                    row["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                    rows.append(row)
                    if "median_ms" in row:
                        print(f"{set_name} {m.name} {routing} T={tokens} {impl} {name}: {row['median_ms'] * 1e3:.1f} us "
                              f"({floor_ms / row['median_ms']:.2f} of floor) {src}", flush=True)
                del x, ref
            del grouped
        del w, routers
        torch.cuda.empty_cache()
    path = args.device_out / "heldout.csv"
    new = merge_rows(path, pd.DataFrame(rows, columns=COLUMNS), KEY)
    args.device_out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    new.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())
    update_provenance(args.device_out, provenance(args.git_sha, bool(args.git_dirty), copy_gbps, tflops))
    print(f"# {len(rows)} rows -> {path}{' (stopped at the budget)' if stopped else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
