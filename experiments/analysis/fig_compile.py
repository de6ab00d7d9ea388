"""Figure: ahead-of-time compile results per target for the Triton impls' matrix kernels: registers
(VGPRs on AMD) and shared memory or LDS (KiB), the largest over the build's scenarios; a cross
marks a kernel whose build failed for that target.

    python -m experiments.analysis.fig_compile --build results/build --out compile.pdf
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import plotting
from .build import build_files, matrix_kernels
from .settings import load_settings
from .sources import load_all


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, required=True, help="the build folder (results/build)")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="figure path, .pdf or .png")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    files = build_files(args.build)
    if not files:
        raise SystemExit(f"{args.build}: no <target>/<impl>.json compile results; expected the aot_build rule's output")
    rows = load_all(files)
    rows = rows[rows["kernel"].isin(matrix_kernels(rows))]
    rows["label"] = rows["impl"].str.removeprefix("tritonmoe_") + ":" + rows["kernel"].str.strip("_").str.removesuffix("_kernel")
    per = rows.groupby(["target", "label"], as_index=False).agg(
        compiled=("compiled", "all"), registers=("registers", "max"), shared_kib=("shared_bytes", "max"))
    per["shared_kib"] = per["shared_kib"] / 1024
    targets = [t for t in settings["targets"] if t in set(per["target"])]
    labels = sorted(set(per["label"]))
    plotting.setup()
    colours = plotting.sns.color_palette("colorblind", len(targets))
    fig, axes = plotting.plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(labels)), 6.0), sharex=True)
    width = 0.8 / len(targets)
    for ax, (column, ylabel) in zip(axes, [("registers", "registers per thread"), ("shared_kib", "shared memory / LDS (KiB)")]):
        for j, target in enumerate(targets):
            here = per[per["target"] == target].set_index("label").reindex(labels)
            x = np.arange(len(labels)) + (j - (len(targets) - 1) / 2) * width
            ax.bar(x, here[column].fillna(0), width, color=colours[j], label=target)
            failed = here["compiled"].eq(False).to_numpy()
            ax.scatter(x[failed], np.zeros(failed.sum()), marker="x", color="black", zorder=3,
                       label="build failed" if j == 0 else None)
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right")
        ax.set_ylabel(ylabel)
    plotting.figure_legend(fig, list(axes), ncol=5)
    plotting.save(fig, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
