"""Figure: latency of the whole MoE layer against token count, one panel per model, every impl,
with the physical floor drawn (floor_ms of the rows: fewest bytes / copy rate or FLOPs / matrix rate).
Impls are drawn in the config's launch mode; one that cannot run in it is drawn from its rows of
the other mode, dashed and labelled.

    python -m experiments.analysis.fig_latency --latency results/raw/h100-sxm/latency.csv --out latency_h100-sxm.pdf
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import plotting
from .latency_rows import MODES, drawn_rows
from .settings import git_repo, load_settings
from .sources import load_rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=Path, required=True, help="results/raw/<device>/latency.csv")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="figure path, .pdf or .png")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    rows = drawn_rows(load_rows(args.latency, git_repo(settings)), settings)
    if rows.empty:
        raise SystemExit(f"{args.latency}: no timed rows of dtype={settings['dtype']}, routing={settings['routing']}; "
                         f"expected at least one")
    other = MODES[1 - settings["graph"]]
    fig, axes, models, impls, styles = plotting.model_grid(rows, settings)
    for ax, model in zip(axes.flat, models):
        here = rows[rows["model"] == model]
        for impl, line, fallback in plotting.impl_lines(here, impls):
            err = [line["median_ms"] - line["p20_ms"], line["p80_ms"] - line["median_ms"]]
            ax.errorbar(line["tokens"], line["median_ms"], yerr=err, label=f"{impl} ({other})" if fallback else impl,
                        markersize=3, linewidth=1, capsize=0, linestyle="--" if fallback else "-", **styles[impl])
        floor = here.groupby("tokens")["floor_ms"].median()  # the same inputs give every impl the same floor
        ax.plot(floor.index, floor.values, color="black", linestyle="--", linewidth=1, label="floor")
        plotting.log2_tokens_axis(ax)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(model)
    plotting.finish_grid(fig, axes, models, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
