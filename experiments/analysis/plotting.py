"""What every figure shares: the seaborn theme, one colour and marker per impl, saving by suffix.

Figures carry no numbers that the paper quotes: those enter the TeX through `trace.py`."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from .atomic import atomic_write  # noqa: E402


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
    plt.rcParams["pdf.fonttype"] = 42  # embed TrueType: text stays selectable in the PDF


def impl_styles(impls: list[str]) -> dict[str, dict]:
    """A fixed colour and marker per impl, in the config's order, so every figure agrees."""
    colours = sns.color_palette("colorblind", len(impls))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    return {impl: {"color": colours[i], "marker": markers[i % len(markers)]} for i, impl in enumerate(impls)}


def save(fig, out: str | Path) -> None:
    """Writes `fig` as PDF or PNG (by `out`'s suffix) through a temporary file, then closes it."""
    out = Path(out)
    fmt = out.suffix.lstrip(".")
    if fmt not in ("pdf", "png"):
        raise ValueError(f"out: expected a .pdf or .png path, got {str(out)!r}")
    metadata = {"CreationDate": None} if fmt == "pdf" else {}  # reproducible PDFs: no timestamp
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format=fmt, dpi=200, bbox_inches="tight", metadata=metadata)
    plt.close(fig)


def log2_tokens_axis(ax) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens")


def figure_legend(fig, axes, ncol: int = 4) -> None:
    """One legend below the panels with every label any panel drew, in first-seen order."""
    seen = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(ncol, len(seen)), frameon=False)
    rows = -(-len(seen) // ncol)
    legend_inches = 0.22 * rows + 0.15
    fig.tight_layout(rect=(0, min(0.5, legend_inches / fig.get_figheight()), 1, 1))


def model_grid(rows, settings: dict, *, sharey: bool = False):
    """One panel per model present in `rows` (in the config's order), up to three a row; also returns the
    models, the impls present and every impl's style. Returns (fig, axes, models, impls, styles)."""
    models = [m for m in settings["models"] if m in set(rows["model"])]
    impls = [i for i in settings["impls"] if i in set(rows["impl"])]
    styles = impl_styles(settings["impls"])
    setup()
    cols = min(3, len(models))
    nrows = -(-len(models) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False, sharey=sharey)
    return fig, axes, models, impls, styles


def impl_lines(here, impls):
    """Each impl's rows of one panel (`here`: one model's rows), by token count, skipping impls without rows.
    Yields (impl, line, fallback): fallback when the rows were timed in the other launch mode."""
    for impl in impls:
        line = here[here["impl"] == impl].sort_values("tokens")
        if not line.empty:
            yield impl, line, bool(line["fallback"].iloc[0]) if "fallback" in line else False


def finish_grid(fig, axes, models, out: str | Path) -> None:
    """Hides the panels past the last model, adds the shared legend and saves the figure."""
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    figure_legend(fig, list(axes.flat)[:len(models)])
    save(fig, out)
