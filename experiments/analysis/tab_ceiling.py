"""Table: how far the floor is from the expert GEMMs themselves. Per measured device, model and token count of
its `ceiling.csv`: the floor, the headline impl's whole layer (the config's launch mode) and its fraction of
the floor, the dense reference (the vendor's batched GEMMs on the layer's two products with even rows per
expert, `experiments/bench/ceiling.py`) and its fraction of the floor, the drawn-rows reference's fraction of the
floor (cuBLAS, one GEMM per expert on the rows the sweep's draw gives it; measured for models with few experts,
a dash elsewhere), and the layer's speed relative to the dense reference.
Defines `\\CeilingTable` (a sentence when no device has a ceiling.csv).

    python -m experiments.analysis.tab_ceiling --latency results/raw/*/latency.csv \\
        --ceiling results/raw/*/ceiling.csv --out paper/generated/ceiling.tex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .latency_rows import shown_rows
from .settings import CONFIG, git_repo, load_settings
from .sources import load_all
from .trace import Tracer

SCRIPT = "experiments/analysis/tab_ceiling.py"
DENSE = "cublas_bmm"
DRAWN = "cublas_mm_drawn"


def ceiling_lines(tr: Tracer, layer: pd.DataFrame, dense: pd.DataFrame, settings: dict) -> tuple[list[str], list[str]]:
    """`layer`: the headline impl's shown latency rows; `dense`: ceiling rows of the config's dtype (both references).
    Returns the devices' header cells and one row per model and token count of the dense reference, each device a
    group of five columns (floor, the layer's, the dense reference's and the drawn-rows reference's fractions of it,
    the layer's speed over the dense reference; dashes where it lacks the point)."""
    impl = settings["headline_impl"]
    drawn = dense[dense["impl"] == DRAWN]
    dense = dense[dense["impl"] == DENSE]
    devices = list(dict.fromkeys(dense["device"]))
    heads = [tr.document(f"device.{device}", CONFIG, ["devices", device]) for device in devices]
    lines = []
    for model in [m for m in settings["models"] if m in set(dense["model"])]:
        for tokens in sorted(set(dense[dense["model"] == model]["tokens"])):
            cells, first = [], None
            for device in devices:
                def at(frame):
                    return frame[(frame["device"] == device) & (frame["model"] == model) & (frame["tokens"] == tokens)]
                own, pair, mine = at(layer), at(dense), at(drawn)
                if len(own) != 1 or len(pair) != 2:
                    cells += ["--"] * 5
                    continue
                first = own if first is None else first
                both = pd.concat([own, pair], ignore_index=True)
                key = f"{device}.{model}.{tokens}"
                cells += [
                    tr.number(f"floor.{key}", "cell", own, "sig3", column="floor_ms"),
                    tr.number(f"layer_floor.{key}", "floor_fraction", own, "pct") + r"\%",
                    tr.number(f"dense_floor.{key}", "dense_floor_fraction", both, "pct", dense=DENSE, impl=impl) + r"\%",
                    (tr.number(f"drawn_floor.{key}", "dense_floor_fraction", pd.concat([own, mine], ignore_index=True),
                               "pct", dense=DRAWN, impl=impl) + r"\%") if len(mine) == 2 else "--",
                    tr.number(f"over_dense.{key}", "over_dense", both, "ratio", dense=DENSE, impl=impl),
                ]
            if first is not None:
                lines.append(" & ".join([tr.document(f"model.{model}", CONFIG, ["models", settings["models"].index(model)]),
                                         tr.number(f"tokens.{model}.{tokens}", "cell", first, "int", column="tokens")]
                                        + cells) + r" \\")
    return heads, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=Path, nargs="*", default=[], help="results/raw/<device>/latency.csv files")
    ap.add_argument("--ceiling", type=Path, nargs="*", default=[], help="results/raw/<device>/ceiling.csv files")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="the .tex to write (its .trace.json goes beside it)")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    repo = git_repo(settings)
    tr = Tracer(SCRIPT)
    heads, lines = [], []
    if args.latency and args.ceiling:
        latency = load_all(args.latency, repo)
        layer = shown_rows(latency, settings)
        layer = layer[layer["impl"] == settings["headline_impl"]]
        dense = load_all(args.ceiling, repo)
        dense = dense[(dense["dtype"] == settings["dtype"]) & dense["impl"].isin([DENSE, DRAWN])]
        heads, lines = ceiling_lines(tr, layer, dense, settings)
    if lines:
        # `\DeviceGroup` (the paper's preamble) spans a device's five columns: no digit may appear outside `\tv` here.
        groups = " & ".join(rf"\DeviceGroup{{{h}}}" for h in heads)
        names = " & ".join([r"floor (ms) & layer / floor & dense / floor & drawn / floor & layer / dense"] * len(heads))
        table = "\n".join([
            r"\begin{tabular}{ll" + "rrrrr" * len(heads) + "}", r"\toprule",
            rf" & & {groups} \\",
            rf"model & tokens & {names} \\",
            r"\midrule", *lines, r"\bottomrule", r"\end{tabular}"])
    else:
        table = (r"\emph{No dense reference measured: no device folder under results/raw/ holds a ceiling.csv "
                 r"beside timed rows of the headline impl.}")
    tr.write(args.out, "\\newcommand{\\CeilingTable}{%\n" + table + "%\n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
