"""Table: the ahead-of-time compile results of the headline impl per target and kernel (max over
the build's scenarios): builds that succeeded, registers (VGPRs on AMD), spills, shared memory or
LDS, and the matrix instructions found in the machine code (HMMA/HGMMA on NVIDIA, MFMA on AMD).
Defines `\\CompileTable` (a sentence when nothing was built).

    python -m experiments.analysis.tab_compile --build results/build --out paper/generated/compile.tex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .build import build_files
from .settings import CONFIG, load_settings
from .sources import load_rows
from .trace import Tracer, latex_escape

SCRIPT = "experiments/analysis/tab_compile.py"


def table_lines(tr: Tracer, rows: pd.DataFrame, settings: dict) -> list[str]:
    lines = []
    targets = [t for t in settings["targets"] if t in set(rows["target"])]
    for target in targets:
        here = rows[rows["target"] == target]
        for kernel in dict.fromkeys(here["kernel"]):
            k = here[here["kernel"] == kernel]
            key = f"{target}.{kernel}"
            ok = k[k["compiled"]]
            cells = [tr.document(f"target.{target}", CONFIG, ["targets", target]), latex_escape(kernel),
                     tr.number(f"built.{key}", "count_where", k, "int", column="compiled", equals=True) + "/"
                     + tr.number(f"builds.{key}", "count_rows", k, "int")]
            if ok.empty:
                cells += ["failed", "--", "--", tr.number(f"error.{key}", "cell", k.head(1), "text", column="error")]
            else:
                cells += [tr.number(f"regs.{key}", "max_of", ok, "int", column="registers"),
                          tr.number(f"spills.{key}", "max_of", ok, "int", column="spills"),
                          tr.number(f"smem.{key}", "max_of", ok, "int", column="shared_bytes"),
                          tr.number(f"mma.{key}", "distinct_text", ok, "text", column="matrix_kinds")
                          if (ok["matrix_kinds"] != "").any() else "none"]
            lines.append(" & ".join(cells) + r" \\")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, nargs="*", default=[], help="the build folder (results/build)")
    ap.add_argument("--settings", default=None, help="pipeline settings as JSON (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    tr = Tracer(SCRIPT)
    files = [p for p in (build_files(args.build[0]) if args.build else []) if p.stem == settings["headline_impl"]]
    rows = pd.concat([load_rows(p) for p in files], ignore_index=True) if files else pd.DataFrame()
    lines = table_lines(tr, rows, settings) if not rows.empty else []
    if lines:
        table = "\n".join([r"\begin{tabularx}{\linewidth}{llrrrrL}", r"\toprule",
                           r"target & kernel & built & registers & spills & shared bytes & matrix instructions \\",
                           r"\midrule", *lines, r"\bottomrule", r"\end{tabularx}"])
    else:
        table = r"\emph{No ahead-of-time build results (the aot stage is off in config/config.yaml).}"
    tr.write(args.out, "\\newcommand{\\CompileTable}{%\n" + table + "%\n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
