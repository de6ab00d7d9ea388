"""Table: the headline numbers per measured device, model and token count: the headline impl's
median latency (the config's launch mode), its speed-up over the baseline impl (compared in
`compare_graph` mode), the fraction of the floor it reaches and the fastest impl in either mode. Writes `headline.tex` defining `\\HeadlineTable` (a sentence when no device was measured).

    python -m experiments.analysis.tab_headline --latency results/raw/*/latency.csv --out paper/generated/headline.tex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .latency_rows import MODES, drawn_rows, shown_rows, timed_rows
from .settings import CONFIG, git_repo, load_settings
from .sources import load_rows
from .trace import Tracer, latex_escape

SCRIPT = "experiments/analysis/tab_headline.py"


def headline_rows(tr: Tracer, rows: pd.DataFrame, settings: dict) -> list[str]:
    """`rows`: timed rows of every measured device, both launch modes."""
    impl, baseline = settings["headline_impl"], settings["baseline_impl"]
    drawn, compared = drawn_rows(rows, settings), shown_rows(rows, settings, settings["compare_graph"])
    lines = []
    for device in dict.fromkeys(rows["device"]):
        for model in settings["headline_models"]:
            for tokens in settings["headline_tokens"]:
                def at(frame):
                    return frame[(frame["device"] == device) & (frame["model"] == model) & (frame["tokens"] == tokens)]
                own = at(drawn)[at(drawn)["impl"] == impl]
                if own.empty:
                    continue
                key = f"{device}.{model}.{tokens}"
                pair = at(compared)[at(compared)["impl"].isin([impl, baseline])]
                cells = [
                    tr.document(f"device.{device}", CONFIG, ["devices", device]),
                    tr.document(f"model.{model}", CONFIG, ["models", settings["models"].index(model)]),
                    tr.number(f"tokens.{key}", "cell", own, "int", column="tokens"),
                    tr.number(f"median.{key}", "cell", own, "sig3", column="median_ms"),
                    tr.number(f"speedup.{key}", "speedup", pair, "ratio", impl=impl, baseline=baseline)
                    if len(pair) == 2 else "--",
                    tr.number(f"floor.{key}", "floor_fraction", own, "pct") + r"\%",
                    tr.number(f"fastest.{key}", "fastest_impl", at(rows), "text"),
                ]
                lines.append(" & ".join(cells) + r" \\")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=Path, nargs="*", default=[], help="results/raw/<device>/latency.csv files")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="the .tex to write (its .trace.json goes beside it)")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    tr = Tracer(SCRIPT)
    frames = [timed_rows(load_rows(p, git_repo(settings)), settings) for p in args.latency]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    lines = headline_rows(tr, rows, settings) if not rows.empty else []
    if lines:
        impl, baseline = latex_escape(settings["headline_impl"]), latex_escape(settings["baseline_impl"])
        table = "\n".join([
            r"\begin{tabular}{llrrrrl}", r"\toprule",
            rf"device & model & tokens & {impl} (ms, {MODES[settings['graph']]}) & speed-up over {baseline} "
            rf"({MODES[settings['compare_graph']]}) & of floor & fastest \\",
            r"\midrule", *lines, r"\bottomrule", r"\end{tabular}"])
    else:
        table = (r"\emph{No latency measured: no device folder under results/raw/ holds timed rows, "
                 r"so there are no headline numbers yet.}")
    tr.write(args.out, "\\newcommand{\\HeadlineTable}{%\n" + table + "%\n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
