"""Generated TeX for the set-up section: which devices were measured (from their provenance.json)
and which were not, the model shapes, the token range, and the interpreter correctness check.

Defines `\\DevicesMeasured`, `\\DevicesNotMeasured`, `\\DeviceTable`, `\\ModelTable`, `\\TokensMin`,
`\\TokensMax`, `\\CorrectnessSummary`.

    python -m experiments.analysis.tex_setup --devices h100-sxm --correctness interp_correctness.csv --out setup.tex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .settings import CONFIG, MODELS, load_settings
from .sources import load_rows, read_document
from .trace import Tracer

SCRIPT = "experiments/analysis/tex_setup.py"
PROVENANCE_COLUMNS = [("device_name", "GPU"), ("driver", "driver"), ("cuda", "CUDA"), ("rocm", "ROCm"),
                      ("torch", "torch"), ("triton", "Triton"), ("megablocks", "Megablocks"),
                      ("copy_gbps", "copy GB/s"), ("bf16_tflops", "matrix TFLOP/s"), ("date", "date")]


def names(tr: Tracer, slugs: list[str]) -> str:
    return ", ".join(tr.document(f"device.{d}", CONFIG, ["devices", d]) for d in slugs)


def device_table(tr: Tracer, raw_dir: str, devices: list[str]) -> str:
    lines = [r"\begin{tabular}{ll}", r"\toprule"]
    for i, device in enumerate(devices):
        path = Path(raw_dir) / device / "provenance.json"
        prov = read_document(path)
        if i:
            lines.append(r"\midrule")
        lines.append(tr.document(f"device.{device}", CONFIG, ["devices", device]) + r" & \\")
        for key, label in PROVENANCE_COLUMNS:
            if prov.get(key) is None:
                continue
            fmt = "sig3" if isinstance(prov[key], float) else "text"
            lines.append(f"{label} & " + tr.document(f"prov.{device}.{key}", path, [key], fmt) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def model_table(tr: Tracer, settings: dict) -> str:
    lines = [r"\begin{tabular}{lrrrr}", r"\toprule", r"model & hidden $H$ & expert ffn $F$ & experts $E$ & top-$k$ \\",
             r"\midrule"]
    for model in settings["models"]:
        cells = [tr.document(f"model.{model}", CONFIG, ["models", settings["models"].index(model)])]
        cells += [tr.document(f"shape.{model}.{k}", MODELS, [model, k], "int") for k in ("hidden", "ffn", "experts", "top_k")]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def correctness(tr: Tracer, path: Path) -> str:
    rows = load_rows(path, None)
    passed = tr.number("correct.passed", "count_within_tolerance", rows, "int")
    total = tr.number("correct.total", "count_rows", rows, "int")
    worst = []
    for dtype in dict.fromkeys(rows["dtype"]):
        of = rows[rows["dtype"] == dtype]
        worst.append(tr.number(f"correct.worst.{dtype}", "max_of", of, "sci", column="rel_err") + " in "
                     + tr.number(f"correct.dtype.{dtype}", "distinct_text", of, "text", column="dtype"))
    return f"{passed} of {total} interpreter runs met their tolerance; largest relative error " + ", ".join(worst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="*", default=[], help="slugs of the devices with a results/raw/ folder")
    ap.add_argument("--correctness", type=Path, nargs="*", default=[], help="interp_correctness.csv (none: not run)")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    tr = Tracer(SCRIPT)
    missing = [d for d in settings["devices"] if d not in args.devices]
    macros = {
        "DevicesMeasured": names(tr, args.devices) if args.devices else "none",
        "DevicesNotMeasured": names(tr, missing) if missing else "none",
        "DeviceTable": device_table(tr, settings["raw_dir"], args.devices) if args.devices
        else r"\emph{No device measured yet: results/raw/ holds no device folder.}",
        "ModelTable": model_table(tr, settings),
        "TokensMin": tr.document("tokens.min", CONFIG, ["tokens", 0], "int"),
        "TokensMax": tr.document("tokens.max", CONFIG, ["tokens", len(settings["tokens"]) - 1], "int"),
        "CorrectnessSummary": correctness(tr, args.correctness[0]) if args.correctness
        else r"\emph{not run (the interpreter stage is off in the configuration)}",
    }
    body = "".join(f"\\newcommand{{\\{name}}}{{%\n{value}%\n}}\n" for name, value in macros.items())
    tr.write(args.out, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
