"""Table: the ahead-of-time compile results of the headline impl per target for its matrix kernels
(those with matrix instructions on some target, or a failed build), the largest over the build's
scenarios: builds that succeeded, registers (VGPRs on AMD), spills, shared memory or LDS, and the
families of matrix instructions in the machine code (HMMA/HGMMA on NVIDIA, MFMA on AMD).
Defines `\\CompileTable` (a sentence when nothing was built).

    python -m experiments.analysis.tab_compile --build results/build --out paper/generated/compile.tex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .build import build_files, matrix_kernels
from .settings import CONFIG, load_settings
from .sources import load_all
from .trace import Tracer, latex_escape

SCRIPT = "experiments/analysis/tab_compile.py"


def table_lines(tr: Tracer, rows: pd.DataFrame, settings: dict) -> tuple[list[str], list[str]]:
    """Table rows, and one line per failed build giving the compiler's last error line."""
    lines, failures = [], []
    targets = [t for t in settings["targets"] if t in set(rows["target"])]
    kernels = matrix_kernels(rows)
    for target in targets:
        here = rows[rows["target"] == target]
        for kernel in [k for k in kernels if k in set(here["kernel"])]:
            k = here[here["kernel"] == kernel]
            key = f"{target}.{kernel}"
            ok = k[k["compiled"]]
            slug = tr.number(f"target.{key}", "cell", k.head(1), "text", column="target")
            cells = [slug, latex_escape(kernel),
                     tr.number(f"built.{key}", "count_where", k, "int", column="compiled", equals=True) + "/"
                     + tr.number(f"builds.{key}", "count_rows", k, "int")]
            if ok.empty:
                cells += ["failed", "--", "--", "--"]
            else:
                cells += [tr.number(f"regs.{key}", "max_of", ok, "int", column="registers"),
                          tr.number(f"spills.{key}", "max_of", ok, "int", column="spills"),
                          tr.number(f"smem.{key}", "max_of", ok, "int", column="shared_bytes"),
                          tr.number(f"mma.{key}", "distinct_text", ok, "text", column="matrix_families")
                          if (ok["matrix_families"] != "").any() else "none"]
            lines.append(" & ".join(cells) + r" \\")
            bad = k[~k["compiled"]]
            if not bad.empty:
                failures.append(f"{slug} {latex_escape(kernel)}: "
                                + tr.number(f"error.{key}", "cell", bad.head(1), "text", column="error"))
    return lines, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, nargs="*", default=[], help="the build folder (results/build)")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    tr = Tracer(SCRIPT)
    files = [p for p in (build_files(args.build[0]) if args.build else []) if p.stem == settings["headline_impl"]]
    rows = load_all(files)
    lines, failures = table_lines(tr, rows, settings) if not rows.empty else ([], [])
    if lines:
        table = "\n".join([r"\begin{tabular}{llrrrrl}", r"\toprule",
                           r"target & kernel & built & registers & spills & shared bytes & matrix instructions \\",
                           r"\midrule", *lines, r"\bottomrule", r"\end{tabular}"])
        if failures:
            table += "\n\\par\\smallskip\\raggedright Failed builds: " + "; ".join(failures) + "."
    else:
        table = r"\emph{No ahead-of-time build results (the aot stage is off in config/config.yaml).}"
    tr.write(args.out, "\\newcommand{\\CompileTable}{%\n" + table + "%\n}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
