"""Tables: what a shape without a tuned table gets (`experiments/bench/heldout.py`, `heldout.csv` per device).

`\\HeldoutTable`: per device and held-out shape (config/heldout_models.yaml): the tuned shape whose configs it
borrows, the borrowed configs' speed over the per-backend defaults and over torch._grouped_mm (geometric mean over
the routings and token counts, with the smallest in parentheses), the points where torch._grouped_mm was faster,
and the layer's fraction of the floor (smallest to largest). `\\LooTable`: per device and tuned model, leave-one-out:
the tuned shape it borrows from with its own table left out, and its own table's speed over the borrowed configs
and over the defaults. `\\HeldoutSummary`: one sentence per device over all held-out points. A sentence in each
when no device has a heldout.csv.

    python -m experiments.analysis.tab_heldout --heldout results/raw/*/heldout.csv --out paper/generated/heldout.tex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .settings import CONFIG, git_repo, load_settings
from .sources import load_all
from .trace import Tracer

SCRIPT = "experiments/analysis/tab_heldout.py"
HELDOUT_MODELS = "config/heldout_models.yaml"
PEER = "torch_grouped_mm"


def _geo_min(tr: Tracer, key: str, rows: pd.DataFrame, variant: str, baseline: str, worst: str = "min") -> str:
    """`geomean (worst)` of `variant`'s speed over `baseline`."""
    geo = tr.number(f"{key}.geomean", "variant_speedup", rows, "ratio", variant=variant, baseline=baseline,
                    stat="geomean")
    ext = tr.number(f"{key}.{worst}", "variant_speedup", rows, "ratio", variant=variant, baseline=baseline, stat=worst)
    return f"{geo} ({ext})"


def heldout_lines(tr: Tracer, rows: pd.DataFrame, settings: dict) -> list[str]:
    lines = []
    for device in dict.fromkeys(rows["device"]):
        on = rows[(rows["device"] == device) & (rows["set"] == "heldout")]
        for model in dict.fromkeys(on["model"]):
            m = on[on["model"] == model]
            key = f"heldout.{device}.{model}"
            lines.append(" & ".join([
                tr.document(f"device.{device}", CONFIG, ["devices", device]),
                tr.number(f"{key}.model", "distinct_text", m, "text", column="model"),
                "/".join(tr.document(f"shape.{model}.{k}", HELDOUT_MODELS, [model, k], fmt="int")
                         for k in ("experts", "top_k", "hidden", "ffn")),
                tr.number(f"{key}.source", "borrowed_shape", m, "text"),
                _geo_min(tr, f"{key}.over_default", m, "borrowed", "default"),
                _geo_min(tr, f"{key}.over_peer", m, "borrowed", PEER),
                tr.number(f"{key}.slower", "variant_slower_count", m, "int", variant="borrowed", baseline=PEER)
                + " / " + tr.number(f"{key}.points", "variant_points", m, "int", variant="borrowed", baseline=PEER),
                tr.number(f"{key}.floor_min", "floor_fraction_extreme", m[m["variant"] == "borrowed"], "pct",
                          extreme="min") + "--"
                + tr.number(f"{key}.floor_max", "floor_fraction_extreme", m[m["variant"] == "borrowed"], "pct",
                            extreme="max") + r"\%",
            ]) + r" \\")
    return lines


def loo_lines(tr: Tracer, rows: pd.DataFrame, settings: dict) -> list[str]:
    lines = []
    for device in dict.fromkeys(rows["device"]):
        on = rows[(rows["device"] == device) & (rows["set"] == "loo")]
        for model in [m for m in settings["models"] if m in set(on["model"])]:
            m = on[on["model"] == model]
            if "own" not in set(m["variant"]):
                continue
            key = f"loo.{device}.{model}"
            lines.append(" & ".join([
                tr.document(f"device.{device}", CONFIG, ["devices", device]),
                tr.document(f"model.{model}", CONFIG, ["models", settings["models"].index(model)]),
                tr.number(f"{key}.source", "borrowed_shape", m, "text"),
                _geo_min(tr, f"{key}.over_borrowed", m, "own", "borrowed", worst="max"),
                _geo_min(tr, f"{key}.over_default", m, "own", "default", worst="max"),
            ]) + r" \\")
    return lines


def summary(tr: Tracer, rows: pd.DataFrame) -> str:
    sentences = []
    for device in dict.fromkeys(rows["device"]):
        held = rows[(rows["device"] == device) & (rows["set"] == "heldout")]
        loo = rows[(rows["device"] == device) & (rows["set"] == "loo") & rows["model"].isin(
            rows.loc[rows["variant"] == "own", "model"])]
        if held.empty:
            continue
        key = f"summary.{device}"
        text = (f"On the {tr.document(f'device.{device}', CONFIG, ['devices', device])}, over the "
                f"{tr.number(f'{key}.points', 'variant_points', held, 'int', variant='borrowed', baseline=PEER)} "
                f"held-out points the borrowed configs run "
                f"{tr.number(f'{key}.over_default', 'variant_speedup', held, 'ratio', variant='borrowed', baseline='default', stat='geomean')}"
                f" times as fast as the defaults (geometric mean) and "
                f"{tr.number(f'{key}.over_peer', 'variant_speedup', held, 'ratio', variant='borrowed', baseline=PEER, stat='geomean')}"
                f" times as fast as torch.\\_grouped\\_mm, which is faster at "
                f"{tr.number(f'{key}.slower', 'variant_slower_count', held, 'int', variant='borrowed', baseline=PEER)}"
                f" of them")
        if not loo.empty:
            text += (f"; on the tuned models a model's own table is "
                     f"{tr.number(f'{key}.loo', 'variant_speedup', loo, 'ratio', variant='own', baseline='borrowed', stat='geomean')}"
                     f" times as fast as the configs it borrows with its table left out")
        sentences.append(text + ".")
    return " ".join(sentences)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heldout", type=Path, nargs="*", default=[], help="results/raw/<device>/heldout.csv files")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="the .tex to write (its .trace.json goes beside it)")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    repo = git_repo(settings)
    tr = Tracer(SCRIPT)
    rows = load_all(args.heldout, repo)
    if not rows.empty:
        rows = rows[(rows["dtype"] == settings["dtype"]) & (rows["graph"] == 1)]
    none = (r"\emph{No device folder under results/raw/ holds a heldout.csv "
            r"(\texttt{experiments/bench/heldout.py}).}")
    held = heldout_lines(tr, rows, settings) if len(rows) else []
    loo = loo_lines(tr, rows, settings) if len(rows) else []
    held_table = "\n".join([
        r"\begin{tabular}{lllllllr}", r"\toprule",
        r"device & shape & E/K/H/F & borrows from & over defaults & over torch.\_grouped\_mm & peer faster at & "
        r"of floor \\", r"\midrule", *held, r"\bottomrule", r"\end{tabular}"]) if held else none
    loo_table = "\n".join([
        r"\begin{tabular}{lllll}", r"\toprule",
        r"device & model & borrows from (own table left out) & own over borrowed & own over defaults \\",
        r"\midrule", *loo, r"\bottomrule", r"\end{tabular}"]) if loo else none
    body = ("\\newcommand{\\HeldoutTable}{%\n" + held_table + "%\n}\n"
            "\\newcommand{\\LooTable}{%\n" + loo_table + "%\n}\n"
            "\\newcommand{\\HeldoutSummary}{%\n" + (summary(tr, rows) if held else "") + "%\n}\n")
    tr.write(args.out, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
