"""Table: the memory traffic the gate+up fusion saves, and how ncu's DRAM bytes compare with the
analytic model and with the floor. Per model, for each device with ncu rows:

- the token count from which the fusion saves the claimed share (config/claims.yaml, the claim
  tested by `traffic_saved`) of the baseline's bytes in the analytic model, with the weights counted
  and for activations only ("never up to <largest count>", with the largest share reached, if not);
- the share ncu measures at the claim's largest token count (activations only: ncu's bytes less
  the model's weight bytes, as in the traffic figure);
- ncu's total bytes over the model's for the headline impl, smallest to largest over the token
  counts from `AGREEMENT_FROM` on;
- ncu's bytes over the floor's fewest bytes for each Triton impl at the device's largest token
  count, with an upper bound on how many times each weight byte came from DRAM.

Defines `\\TrafficTable`, and `\\TrafficDifferences`: every total row from `AGREEMENT_FROM` tokens
on where ncu and the model differ by more than `AGREEMENT_TOLERANCE`, with the difference split into
DRAM reads beyond the model's unique reads (tile re-reads that L2 did not keep) and unique writes
still held in L2 when the kernels ended (a sentence when there is none). It does not measure.

    python -m experiments.analysis.tab_traffic --model traffic_model.csv --ncu results/raw/*/traffic.csv \\
        --out paper/generated/traffic.tex
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .settings import CLAIMS, CONFIG, git_repo, load_settings
from .sources import load_rows, read_yaml
from .trace import Tracer

SCRIPT = "experiments/analysis/tab_traffic.py"
# Where the model and ncu are compared (small launches are a few KB of activations beside the weights).
AGREEMENT_FROM = 64
# A difference beyond this share of the model's bytes is listed and explained ("a tenth" in the text).
AGREEMENT_TOLERANCE = 0.10
# Bases of the saving: the column of weight bytes subtracted for 'activations only', in the model's
# CSV and in traffic.csv.
BASES = {"weights": (None, None), "activations": ("weight_read_bytes", "model_weight_read_bytes")}


def traffic_claim() -> tuple[int, dict]:
    """The index and entry of the claim tested by `traffic_saved` in config/claims.yaml."""
    for i, claim in enumerate(read_yaml(CLAIMS)["claims"]):
        if claim["test"] == "traffic_saved":
            return i, claim
    raise ValueError(f"{CLAIMS}: expected a claim with test 'traffic_saved', found none")


def _totals(rows: pd.DataFrame, **equal) -> pd.DataFrame:
    picked = rows[rows["stage"] == "total"]
    for column, value in equal.items():
        picked = picked[picked[column].isin(value) if isinstance(value, (list, tuple)) else picked[column] == value]
    return picked


def model_cells(tr: Tracer, model_rows: pd.DataFrame, model: str, claim: dict) -> list[str]:
    """(a): the token count from which the model's saving reaches the claimed share, per basis."""
    pair = _totals(model_rows, model=model, impl=[claim["impl"], claim["baseline"]])
    if set(pair["impl"]) != {claim["impl"], claim["baseline"]}:
        return ["--", "--"]
    cells = []
    for basis, (weights, _) in BASES.items():
        params = dict(impl=claim["impl"], baseline=claim["baseline"], counter="model", weights=weights)
        reach = dict(params, share=claim["claimed"])
        if tr.value("tokens_reaching_saved", pair, **reach):
            cells.append(tr.number(f"reach.{basis}.{model}", "tokens_reaching_saved", pair, "int", **reach))
        else:
            cells.append(r"\shortstack[r]{never up to " + tr.number(f"reach_tokens.{model}", "max_of", pair, "int",
                                                                    column="tokens")
                         + r"\\(at most " + tr.number(f"reach_best.{basis}.{model}", "traffic_saved", pair, "pct",
                                                      extreme="max", **params) + r"\%)}")
    return cells


def ncu_cells(tr: Tracer, rows: pd.DataFrame, device: str, model: str, claim: dict, largest: int,
              settings: dict) -> list[str]:
    """(b) the measured saving at the claim's token count, (c) ncu over the model for the headline
    impl, (d) ncu over the fewest bytes per Triton impl at `largest` tokens."""
    key = f"{device}.{model}"
    here = rows[rows["model"] == model]
    cells = []
    pair = _totals(here, tokens=claim["tokens_max"], impl=[claim["impl"], claim["baseline"]])
    for basis, (_, weights) in BASES.items():
        if set(pair["impl"]) != {claim["impl"], claim["baseline"]} or (weights and weights not in pair):
            cells.append("--")
            continue
        cells.append(tr.number(f"saved.{basis}.{key}", "traffic_saved", pair, "pct", impl=claim["impl"],
                               baseline=claim["baseline"], counter="dram", extreme="max", weights=weights) + r"\%")
    fused = _totals(here, impl=settings["headline_impl"])
    fused = fused[fused["tokens"] >= AGREEMENT_FROM]
    cells.append("--" if fused.empty else
                 tr.number(f"agree_min.{key}", "dram_over_model", fused, "ratio", extreme="min") + "--"
                 + tr.number(f"agree_max.{key}", "dram_over_model", fused, "ratio", extreme="max"))
    for impl in settings["triton_impls"]:
        one = _totals(here, impl=impl, tokens=largest)
        if one.empty:
            cells.append("--")
            continue
        floor = (tr.number(f"fewest.{impl}.{key}", "dram_over_fewest", one, "ratio")
                 if "fewest_bytes" in one else "--")
        reads = (tr.number(f"weight_reads.{impl}.{key}", "weight_read_factor", one, "ratio")
                 if "model_weight_read_bytes" in one else "--")
        cells.append(f"{floor} ({reads})")
    return cells


def difference_lines(tr: Tracer, rows: pd.DataFrame, device: str, settings: dict) -> list[str]:
    """One line per total row from AGREEMENT_FROM tokens on where ncu and the model differ by more than
    AGREEMENT_TOLERANCE, and why in MB."""
    lines = []
    totals = _totals(rows, impl=settings["triton_impls"])
    totals = totals[totals["tokens"] >= AGREEMENT_FROM]
    for model in [m for m in settings["models"] if m in set(totals["model"])]:
        for tokens in sorted(set(totals.loc[totals["model"] == model, "tokens"])):
            for impl in settings["triton_impls"]:
                one = _totals(totals, model=model, tokens=tokens, impl=impl)
                if one.empty or abs(tr.value("dram_over_model", one, extreme="max") - 1) <= AGREEMENT_TOLERANCE:
                    continue
                key = f"{device}.{model}.{tokens}.{impl}"
                share = (tr.number(f"diff_reread_share.{key}", "reread_share", one, "pct") + r"\%"
                         if {"logical_read_bytes", "unique_read_bytes"} <= set(one) else "--")
                lines.append(" & ".join([
                    _model_name(tr, model, settings),
                    tr.number(f"diff_tokens.{key}", "cell", one, "int", column="tokens"),
                    _impl_name(tr, impl, settings),
                    tr.number(f"diff_ratio.{key}", "dram_over_model", one, "ratio", extreme="max"),
                    tr.number(f"diff_total.{key}", "megabytes_beyond_model", one, "sig3", part="total"),
                    tr.number(f"diff_read.{key}", "megabytes_beyond_model", one, "sig3", part="read"),
                    share,
                    tr.number(f"diff_write.{key}", "megabytes_beyond_model", one, "sig3", part="write"),
                ]) + r" \\")
    return lines


def _model_name(tr: Tracer, model: str, settings: dict) -> str:
    return tr.document(f"model.{model}", CONFIG, ["models", settings["models"].index(model)])


def _impl_name(tr: Tracer, impl: str, settings: dict) -> str:
    return r"\impl{" + tr.document(f"impl.{impl}", CONFIG, ["triton_impls", settings["triton_impls"].index(impl)]) + "}"


def _device_name(tr: Tracer, device: str) -> str:
    return r"\emph{" + tr.document(f"device.{device}", CONFIG, ["devices", device]) + "}"


def traffic_table(tr: Tracer, model_rows: pd.DataFrame, ncu: dict[str, pd.DataFrame], settings: dict) -> str:
    index, claim = traffic_claim()
    share = tr.document("claim.share", CLAIMS, ["claims", index, "claimed"], "pct") + r"\%"
    models = [m for m in settings["models"] if m in set(model_rows["model"])]
    head = ["model", rf"\shortstack{{model: {share}\\saved from,\\weights}}",
            rf"\shortstack{{model: {share}\\saved from,\\activations}}"]
    blocks = []
    if not ncu:
        blocks.append([" & ".join([_model_name(tr, m, settings), *model_cells(tr, model_rows, m, claim)]) + r" \\"
                       for m in models])
    else:
        at = tr.document("claim.tokens", CLAIMS, ["claims", index, "tokens_max"], "int")
        compared = pd.concat([_totals(r, impl=settings["headline_impl"]) for r in ncu.values()])
        start = tr.number("agreement_from", "min_of", compared[compared["tokens"] >= AGREEMENT_FROM], "int",
                          column="tokens")
        head += [rf"\shortstack{{ncu: saved\\at {at} tokens,\\weights}}",
                 rf"\shortstack{{ncu: saved\\at {at} tokens,\\activations}}",
                 rf"\shortstack{{ncu / model,\\{_impl_name(tr, settings['headline_impl'], settings)},\\{start}+ tokens}}"]
        head += [rf"\shortstack{{ncu / fewest\\(weight reads),\\{_impl_name(tr, i, settings)}}}"
                 for i in settings["triton_impls"]]
        for device, rows in ncu.items():
            totals = _totals(rows)
            largest = int(totals["tokens"].max())
            at_largest = ("at " + tr.number(f"largest_tokens.{device}", "max_of", totals, "int", column="tokens")
                          + " tokens:")
            lines = [" & ".join([_device_name(tr, device), *[""] * 5, at_largest, "", ""]) + r" \\"]
            for m in models:
                cells = [_model_name(tr, m, settings), *model_cells(tr, model_rows, m, claim),
                         *ncu_cells(tr, rows, device, m, claim, largest, settings)]
                lines.append(" & ".join(cells) + r" \\")
            blocks.append(lines)
    body = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule", " & ".join(head) + r" \\"]
    for lines in blocks:
        body += [r"\midrule", *lines]
    return _scaled(body)


def _scaled(body: list[str]) -> str:
    """A tabular's lines closed, and shrunk to the line width if wider."""
    return "\n".join([r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%", *body, r"\bottomrule",
                      r"\end{tabular}}"])


def differences(tr: Tracer, ncu: dict[str, pd.DataFrame], settings: dict) -> str:
    if not ncu:
        return r"\emph{No device has ncu traffic rows: nothing to compare the model with.}"
    blocks = {d: difference_lines(tr, rows, d, settings) for d, rows in ncu.items()}
    if not any(blocks.values()):
        compared = pd.concat([_totals(r, impl=settings["triton_impls"]) for r in ncu.values()])
        start = tr.number("differences_from", "min_of", compared[compared["tokens"] >= AGREEMENT_FROM], "int",
                          column="tokens")
        return (rf"\emph{{From {start} tokens on, ncu's total bytes are within a tenth of the model's for every "
                r"Triton impl and model measured.}")
    cache = tr.document("name.l2", CONFIG, ["prose_names", settings["prose_names"].index("L2")])
    body = [r"\begin{tabular}{lrlrrrrr}", r"\toprule",
            r"model & tokens & impl & ncu / model & \shortstack{ncu $-$ model\\(MB)} & "
            r"\shortstack{reads beyond\\unique (MB)} & \shortstack{of possible\\tile re-reads} & "
            rf"\shortstack{{writes held\\in {cache} (MB)}} \\"]
    for device, lines in blocks.items():
        if lines:
            body += [r"\midrule", " & ".join([_device_name(tr, device), *[""] * 7]) + r" \\", *lines]
    return _scaled(body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, nargs="*", default=[],
                    help="the traffic model's CSV (traffic_model.py); none without the package's traffic model")
    ap.add_argument("--ncu", type=Path, nargs="*", default=[], help="results/raw/<device>/traffic.csv files")
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="the .tex to write (its .trace.json goes beside it)")
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    tr = Tracer(SCRIPT)
    if len(args.model) > 1:
        raise ValueError(f"--model: expected at most one traffic model CSV, got {len(args.model)}")
    model_rows = load_rows(args.model[0], None) if args.model else None
    ncu = {}
    for path in args.ncu:
        rows = load_rows(path, git_repo(settings))
        rows = rows[rows["tool"] == "ncu"]
        if not rows.empty:
            ncu[path.parent.name] = rows
    table = (traffic_table(tr, model_rows, ncu, settings) if model_rows is not None else
             r"\emph{No analytic traffic model (kernels/tritonmoe/traffic.py): no savings to tabulate.}")
    body = ("\\newcommand{\\TrafficTable}{%\n" + table + "%\n}\n"
            + "\\newcommand{\\TrafficDifferences}{%\n" + differences(tr, ncu, settings) + "%\n}\n")
    tr.write(args.out, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
