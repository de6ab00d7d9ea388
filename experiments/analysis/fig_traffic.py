"""Figures of global-memory traffic, fused against unfused.

`--view stages`: bytes per stage of each Triton impl: the analytic model (unique bytes, the
headline model at `traffic_stage_tokens` tokens), Triton's interpreter counts summed over the
small layers (with the model's logical bytes as black ticks), and ncu's DRAM bytes per measured
device (with the model's unique bytes as ticks).
`--view saved`: the share of bytes the fused impl saves against the unfused one, against token
count, per model: with the weights counted and for activations only (ncu: its bytes less the
model's weight bytes), with the preprint's claimed share (config/claims.yaml) as a dashed line and
ncu's measurements as points.

    python -m experiments.analysis.fig_traffic --view saved --model traffic_model.csv --out traffic_saved.pdf
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import plotting
from .settings import CLAIMS, git_repo, load_settings
from .sources import load_rows, read_yaml

STAGE_ORDER = ["routing", "gate_up", "act", "down", "combine"]


def _bars(ax, frame: pd.DataFrame, measured: str, model: str | None, impls: list[str], styles: dict, title: str):
    """Grouped bars of `measured` bytes per stage and impl; black ticks at `model` bytes."""
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        here = frame[frame["impl"] == impl].set_index("stage").reindex(STAGE_ORDER)
        x = np.arange(len(STAGE_ORDER)) + (j - (len(impls) - 1) / 2) * width
        ax.bar(x, here[measured] / 1e6, width, label=impl, color=styles[impl]["color"])
        if model is not None:
            ax.scatter(x, here[model] / 1e6, marker="_", color="black", s=60, zorder=3,
                       label="model" if j == 0 else None)
    ax.set_xticks(range(len(STAGE_ORDER)), STAGE_ORDER)
    ax.set_yscale("log")
    ax.set_ylabel("MB moved")
    ax.set_title(title)


def view_stages(args, settings, impls, styles):
    model_name, tokens = settings["headline_models"][0], settings["traffic_stage_tokens"]
    panels = []
    model = load_rows(args.model, None)
    m = model[(model["model"] == model_name) & (model["tokens"] == tokens) & model["impl"].isin(impls)]
    m = m.assign(moved=m["model_read_bytes"] + m["model_write_bytes"])
    panels.append((m, "moved", None, f"model: {model_name}, {tokens} tokens"))
    for path in args.interpreter:
        rows = load_rows(path, None)
        rows = rows[rows["impl"].isin(impls)].assign(moved=lambda r: r["dram_read_bytes"] + r["dram_write_bytes"],
                                                     modelled=lambda r: r["model_read_bytes"] + r["model_write_bytes"])
        summed = rows.groupby(["impl", "stage"], as_index=False)[["moved", "modelled"]].sum()
        panels.append((summed, "moved", "modelled", f"interpreter: {rows['model'].nunique()} small layers"))
    for path in args.ncu:
        rows = load_rows(path, git_repo(settings))
        rows = rows[(rows["tool"] == "ncu") & (rows["model"] == model_name) & rows["impl"].isin(impls)]
        if rows.empty:
            continue
        at = rows["tokens"].iloc[(rows["tokens"] - tokens).abs().argmin()]
        rows = rows[rows["tokens"] == at].assign(moved=lambda r: r["dram_read_bytes"] + r["dram_write_bytes"],
                                                 modelled=lambda r: r["model_read_bytes"] + r["model_write_bytes"])
        panels.append((rows, "moved", "modelled", f"ncu on {path.parent.name}: {model_name}, {at} tokens"))
    fig, axes = plotting.plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (frame, measured, modelled, title) in zip(axes.flat, panels):
        _bars(ax, frame, measured, modelled, impls, styles, title)
    plotting.figure_legend(fig, list(axes.flat))
    return fig


def _saved(frame: pd.DataFrame, read: str, write: str, fused: str, unfused: str, minus: str | None = None):
    total = frame[frame["stage"] == "total"].assign(moved=lambda r: r[read] + r[write] - (r[minus] if minus else 0))
    wide = total.pivot_table(index=["model", "tokens"], columns="impl", values="moved")
    return (1 - wide[fused] / wide[unfused]).rename("saved").reset_index()


def view_saved(args, settings, impls, styles):
    fused, unfused = settings["headline_impl"], settings["unfused_impl"]
    claimed = [c for c in read_yaml(CLAIMS)["claims"] if c["test"] == "traffic_saved"]
    model = load_rows(args.model, None)
    fig, axes = plotting.plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    palette = plotting.sns.color_palette("colorblind", len(settings["models"]))
    for ax, (title, minus) in zip(axes, [("weights counted", None), ("activations only", "weight_read_bytes")]):
        saved = _saved(model, "model_read_bytes", "model_write_bytes", fused, unfused, minus)
        for colour, name in zip(palette, settings["models"]):
            line = saved[saved["model"] == name].sort_values("tokens")
            ax.plot(line["tokens"], line["saved"] * 100, color=colour, linewidth=1, label=f"model: {name}")
        for c in claimed:
            ax.axhline(c["claimed"] * 100, color="black", linestyle="--", linewidth=1, label="preprint's claim")
        plotting.log2_tokens_axis(ax)
        ax.set_ylabel(f"bytes saved by {fused} (%)")
        ax.set_title(title)
    for path in args.ncu:
        rows = load_rows(path, git_repo(settings))
        rows = rows[rows["tool"] == "ncu"]
        if rows.empty:
            continue
        panels = [(axes[0], None)]
        if "model_weight_read_bytes" in rows and rows["model_weight_read_bytes"].notna().all():
            panels.append((axes[1], "model_weight_read_bytes"))  # measured bytes less the model's weights
        for ax, minus in panels:
            saved = _saved(rows, "dram_read_bytes", "dram_write_bytes", fused, unfused, minus)
            for colour, name in zip(palette, settings["models"]):
                pts = saved[saved["model"] == name]
                if not pts.empty:
                    ax.scatter(pts["tokens"], pts["saved"] * 100, color=colour, marker="o", s=14, zorder=3,
                               label=f"ncu on {path.parent.name}" if name == settings["models"][0] else None)
    # Where the activations are a few KB (decode), their share swings by hundreds of percent and would
    # flatten the rest: the axis shows -50..100% and says how many points lie below it.
    low = -50
    for ax in axes:
        hidden = sum(int((c.get_offsets()[:, 1] < low).sum()) for c in ax.collections)
        hidden += sum(int((np.asarray(ln.get_ydata(), dtype=float) < low).sum()) for ln in ax.get_lines())
        ax.set_ylim(low, 100)
        if hidden:
            ax.text(0.02, 0.03, f"{hidden} points below {low}% not shown", transform=ax.transAxes, fontsize=7)
    plotting.figure_legend(fig, list(axes), ncol=4)
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--view", choices=["stages", "saved"], required=True)
    ap.add_argument("--model", type=Path, required=True, help="the traffic model's CSV (traffic_model.py)")
    ap.add_argument("--interpreter", type=Path, nargs="*", default=[], help="the interpreter's byte counts")
    ap.add_argument("--ncu", type=Path, nargs="*", default=[], help="results/raw/<device>/traffic.csv files")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="figure path, .pdf or .png")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    impls = [i for i in settings["triton_impls"]]
    styles = plotting.impl_styles(settings["impls"])
    plotting.setup()
    fig = (view_stages if args.view == "stages" else view_saved)(args, settings, impls, styles)
    plotting.save(fig, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
