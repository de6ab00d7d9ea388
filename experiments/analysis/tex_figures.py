"""Generated TeX: the figure environments of the figures the pipeline drew, each caption naming
the script that drew it. Defines `\\LatencyFigures` (per measured device; a sentence when none),
`\\TrafficFigures` and `\\CompileFigures`.

    python -m experiments.analysis.tex_figures --figures latency_h100-sxm traffic_saved --out figures.tex
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .settings import CONFIG, load_settings
from .latency_rows import MODES
from .trace import Tracer, latex_escape

SCRIPT = "experiments/analysis/tex_figures.py"
SCRIPTS = {"latency": "fig_latency.py", "speedup": "fig_speedup.py", "floor_fraction": "fig_speedup.py",
           "traffic": "fig_traffic.py", "compile": "fig_compile.py"}


def kind_of(name: str) -> tuple[str, str | None]:
    """(figure kind, device slug or None) of a figure name such as `floor_fraction_h100-sxm`."""
    for kind in ("floor_fraction", "latency", "speedup"):
        if name.startswith(kind + "_"):
            return kind, name.removeprefix(kind + "_")
    return ("traffic", None) if name.startswith("traffic_") else (name, None)


def caption(tr: Tracer, name: str, settings: dict) -> str:
    kind, device = kind_of(name)
    on = tr.document(f"device.{device}", CONFIG, ["devices", device]) if device else ""
    dtype = tr.document("dtype", CONFIG, ["dtype"]) + ", " + latex_escape(settings["routing"]) + " routing"
    mode, other = MODES[settings["graph"]], MODES[1 - settings["graph"]]
    rows = f"{dtype}, {mode} launches; an impl that cannot run so is drawn from its {other} launches (dashed)"
    compared = f"{dtype}, {MODES[settings['compare_graph']]} launches of both"
    baseline = latex_escape(settings["baseline_impl"])
    text = {
        "latency": f"Latency of the whole MoE layer against token count on {on}, every impl (median; bars: the spread "
                   f"of the repeats, see the set-up), and the physical floor (dashed); {rows}.",
        "speedup": f"Speed-up over {baseline} (its median latency over each impl's) on {on}; {compared}. "
                   f"Above the dashed line an impl is faster than {baseline}.",
        "floor_fraction": f"Fraction of the physical floor each impl reaches (floor over median latency) on {on}; {rows}.",
        "compile": "Ahead-of-time compile results per target: registers and shared memory (LDS on AMD) of every "
                   "impl's matrix kernels, the largest over the build's scenarios; a cross marks a failed build.",
    }
    if name == "traffic_stages":
        text["traffic"] = ("Global-memory bytes per stage, fused against unfused: the analytic model, Triton's "
                           "interpreter counts (ticks: the model) and, where measured, ncu's DRAM bytes (ticks: the model).")
    elif name == "traffic_saved":
        text["traffic"] = ("Share of global-memory bytes the fusion saves against the unfused pipeline, with the "
                           "weights counted and for activations only (analytic model; points: ncu), and the "
                           "preprint's claimed share (dashed).")
    script = latex_escape(f"experiments/analysis/{SCRIPTS[kind]}")
    return text[kind] + f" Drawn by \\texttt{{{script}}}."


def environment(tr: Tracer, name: str, path: str, settings: dict) -> str:
    return "\n".join([r"\begin{figure}[tbp]", r"\centering",
                      rf"\includegraphics[width=\linewidth]{{{path}}}",
                      rf"\caption{{{caption(tr, name, settings)}}}", r"\end{figure}"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--figures", type=Path, nargs="*", default=[], help="the figures drawn (paper/figures/<name>.pdf)")
    ap.add_argument("--paper", type=Path, default=Path("paper"), help="the paper's folder (paths are relative to it)")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    tr = Tracer(SCRIPT)
    paths = {p.stem: p.relative_to(args.paper).as_posix() for p in args.figures}
    groups = {"LatencyFigures": [n for n in paths if re.match(r"(latency|speedup|floor_fraction)_", n)],
              "TrafficFigures": [n for n in paths if n.startswith("traffic_")],
              "CompileFigures": [n for n in paths if n == "compile"]}
    empty = {"LatencyFigures": r"\emph{No latency figures: no device has been measured yet.}",
             "TrafficFigures": r"\emph{No traffic figures: the analytic traffic model is not available.}",
             "CompileFigures": r"\emph{No compile figure: the ahead-of-time stage is off in the configuration.}"}
    body = ""
    for macro, names in groups.items():
        content = "\n".join(environment(tr, n, paths[n], settings) for n in names) or empty[macro]
        body += f"\\newcommand{{\\{macro}}}{{%\n{content}%\n}}\n"
    tr.write(args.out, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
