"""Figure: against token count, one panel per model, either the speed-up of every impl over the
baseline impl (`--metric speedup`: baseline median_ms / impl median_ms; above 1 is faster) or the
fraction of the physical floor each impl reaches (`--metric floor_fraction`: floor_ms / median_ms).
Speed-ups compare rows of the `compare_graph` launch mode; the floor fraction uses the drawn mode
(latency_rows.drawn_rows).

    python -m experiments.analysis.fig_speedup --metric speedup --latency results/raw/h100-sxm/latency.csv --out s.pdf
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import plotting
from .latency_rows import MODES, drawn_rows, shown_rows
from .settings import git_repo, load_settings
from .sources import load_rows

KEY = ["model", "tokens"]


def with_metric(rows, metric: str, baseline: str):
    """`rows` with a `value` column holding the metric (rows without a baseline timing dropped)."""
    if metric == "floor_fraction":
        return rows.assign(value=rows["floor_ms"] / rows["median_ms"])
    base = rows[rows["impl"] == baseline].set_index(KEY)["median_ms"].rename("baseline_ms")
    joined = rows.join(base, on=KEY, how="inner")
    return joined.assign(value=joined["baseline_ms"] / joined["median_ms"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metric", choices=["speedup", "floor_fraction"], required=True)
    ap.add_argument("--latency", type=Path, required=True, help="results/raw/<device>/latency.csv")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="figure path, .pdf or .png")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    baseline = settings["baseline_impl"]
    raw = load_rows(args.latency, git_repo(settings))
    # Compared with the baseline like for like, in compare_graph mode; the floor in the drawn mode.
    picked = shown_rows(raw, settings, settings["compare_graph"]) if args.metric == "speedup" else drawn_rows(raw, settings)
    rows = with_metric(picked, args.metric, baseline)
    if rows.empty:
        raise SystemExit(f"{args.latency}: no rows to plot for --metric {args.metric}"
                         + (f" (no timed {baseline} rows)" if args.metric == "speedup" else ""))
    fig, axes, models, impls, styles = plotting.model_grid(rows, settings, sharey=True)
    for ax, model in zip(axes.flat, models):
        here = rows[rows["model"] == model]
        for impl, line, fallback in plotting.impl_lines(here, impls):
            ax.plot(line["tokens"], line["value"], label=f"{impl} ({MODES[1 - settings['graph']]})" if fallback else impl,
                    markersize=3, linewidth=1, linestyle="--" if fallback else "-", **styles[impl])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        plotting.log2_tokens_axis(ax)
        ax.set_ylabel("speed-up" if args.metric == "speedup" else "floor / latency")
        ax.set_title(model)
    if args.metric == "speedup":
        fig.suptitle(f"speed-up over {baseline}: its median latency / each impl's ({MODES[settings['compare_graph']]})",
                     fontsize="medium")
    plotting.finish_grid(fig, axes, models, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
