"""The claims check: each claim of config/claims.yaml against the results, with a verdict.

Writes `claims.tex` (macros `\\ClaimsTable` and, per claim id, `\\ClaimVerdict<Id>`,
`\\ClaimMeasured<Id>`, `\\ClaimEvidence<Id>`), `claims.json` (machine-readable: verdicts, values
and the source rows of every number) and `claims.md` (the README's section).

    python -m experiments.analysis.claims_check --claims config/claims.yaml --devices h100-sxm \\
        --latency results/raw/h100-sxm/latency.csv --out claims.tex --json claims.json --markdown claims.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .atomic import write_json, write_text
from .build import build_files
from .claims import Inputs, check_claims, tex_to_text
from .settings import git_repo, load_settings
from .sources import load_all, load_rows, read_yaml
from .trace import Tracer

SCRIPT = "experiments/analysis/claims_check.py"


def load_inputs(args, settings: dict) -> Inputs:
    repo = git_repo(settings)
    data = Inputs(settings)
    for path in args.latency:
        data.latency[path.parent.name] = load_rows(path, repo)
    for path in args.ncu:
        rows = load_rows(path, repo)
        data.ncu[path.parent.name] = rows[rows["tool"] == "ncu"]
    if args.model:
        data.model = load_rows(args.model[0], repo)
    if args.interpreter:
        data.interpreter = load_rows(args.interpreter[0], repo)
    if args.build:
        files = build_files(args.build[0])
        if files:
            data.build = load_all(files, repo)
    return data


def claims_table(records: list[dict]) -> str:
    # Column types L (ragged X) and N (narrow ragged) are defined in the paper's preamble.
    lines = [r"\begin{tabularx}{\linewidth}{LNNlL}",
             r"\toprule", r"claim & preprint & measured & verdict & evidence \\", r"\midrule"]
    for r in records:
        lines.append(" & ".join([r["short"], r["claimed"], r["measured"], r"\textbf{" + r["verdict"] + "}",
                                 r["evidence"]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabularx}"]
    return "\n".join(lines)


def markdown(records: list[dict]) -> str:
    lines = ["| claim (preprint) | preprint | measured | verdict | evidence |", "| --- | --- | --- | --- | --- |"]
    for r in records:
        cells = [tex_to_text(r["short"]), tex_to_text(r["claimed"]), tex_to_text(r["measured"]), f"**{r['verdict']}**",
                 tex_to_text(r["evidence"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=Path, required=True, help="config/claims.yaml")
    ap.add_argument("--devices", nargs="*", default=[], help="slugs of the devices with a results/raw/ folder")
    ap.add_argument("--latency", type=Path, nargs="*", default=[], help="results/raw/<device>/latency.csv files")
    ap.add_argument("--ncu", type=Path, nargs="*", default=[], help="results/raw/<device>/traffic.csv files")
    ap.add_argument("--model", type=Path, nargs="*", default=[], help="the traffic model's CSV (traffic_model.py)")
    ap.add_argument("--interpreter", type=Path, nargs="*", default=[], help="the interpreter's byte counts")
    ap.add_argument("--build", type=Path, nargs="*", default=[], help="the ahead-of-time build folder")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="claims.tex")
    ap.add_argument("--json", type=Path, required=True, help="claims.json")
    ap.add_argument("--markdown", type=Path, required=True, help="claims.md")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    claims = read_yaml(args.claims)["claims"]
    tr = Tracer(SCRIPT)
    records = check_claims(tr, claims, load_inputs(args, settings))
    body = "\\newcommand{\\ClaimsTable}{%\n" + claims_table(records) + "%\n}\n"
    for r in records:
        name = r["id"].capitalize()
        body += f"\\newcommand{{\\ClaimVerdict{name}}}{{{r['verdict']}}}\n"
        body += f"\\newcommand{{\\ClaimMeasured{name}}}{{{r['measured']}}}\n"
        body += f"\\newcommand{{\\ClaimPreprint{name}}}{{{r['claimed']}}}\n"
        body += f"\\newcommand{{\\ClaimEvidence{name}}}{{{r['evidence']}}}\n"
    tr.write(args.out, body)
    write_json(args.json, {"script": SCRIPT, "claims": [
        {**{k: r[k] for k in ("id", "quote", "verdict")},
         **{k: tex_to_text(r[k]) for k in ("short", "claimed", "measured", "evidence")}, "trace": r["trace"]}
        for r in records]})
    write_text(args.markdown, markdown(records))
    for r in records:
        print(f"{r['id']}: {r['verdict']}: {tex_to_text(r['measured'])}; {tex_to_text(r['evidence'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
