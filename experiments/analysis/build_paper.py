"""Build the paper with latexmk, or say how to install TeX when it is missing.

    python -m experiments.analysis.build_paper --main paper/tritonmoe.tex --out paper/build/tritonmoe.pdf
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

INSTALL = ("latexmk not found on PATH; the paper needs TeX Live. On Debian or Ubuntu:\n"
           "    sudo apt-get update && sudo apt-get install -y latexmk texlive-latex-recommended "
           "texlive-fonts-recommended texlive-latex-extra texlive-science\n"
           "(about 35 s); with conda: conda install -c conda-forge texlive-core latexmk. Then rerun "
           "`snakemake --cores 1 all`; every other product is already built.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main", type=Path, required=True, help="the paper's main .tex")
    ap.add_argument("--out", type=Path, required=True, help="the PDF to produce (in the main file's build/ folder)")
    ap.add_argument("--log", type=Path, required=True, help="latexmk's output")
    args = ap.parse_args(argv)
    latexmk = shutil.which("latexmk")
    if latexmk is None:
        print(f"paper: {INSTALL}", file=sys.stderr)
        return 1
    outdir = args.out.parent.resolve()
    expected = outdir / (args.main.stem + ".pdf")
    if expected != args.out.resolve():
        print(f"paper: --out: expected {expected} (latexmk names the PDF after {args.main.name}), got {args.out}",
              file=sys.stderr)
        return 2
    args.log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [latexmk, "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
           f"-outdir={outdir}", args.main.name]
    with open(args.log, "w") as log:
        done = subprocess.run(cmd, cwd=args.main.parent, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tex_log = outdir / (args.main.stem + ".log")
        errors = [line for line in (tex_log.read_text(errors="replace").splitlines() if tex_log.exists() else [])
                  if re.match(r"^(\S+:\d+: |! )", line)]
        shown = errors[:10] or args.log.read_text().splitlines()[-30:]
        print(f"paper: latexmk failed (exit {done.returncode}); see {tex_log} and {args.log}:", *shown, sep="\n  ",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
