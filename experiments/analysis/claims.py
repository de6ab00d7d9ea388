"""The claims check: for each claim of config/claims.yaml, the rows that test it, the measured
value and a verdict computed from them.

Verdicts: `reproduced`, `not reproduced` (the measured value says by how much), or `not testable
here` (why: the claimed device was not measured, or the tool did not run), with what was checked
instead (another GPU, the analytic model, an ahead-of-time compile). Every number in the
fragments is a `\\tv` of `trace.Tracer`, so the check_tracing step recomputes it from its rows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from .settings import CLAIMS, CONFIG
from .trace import Tracer, latex_escape

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable here"


@dataclass
class Inputs:
    """Everything a claim may be tested against (frames from sources.load_rows)."""
    settings: dict
    latency: dict[str, pd.DataFrame] = field(default_factory=dict)  # device -> rows
    ncu: dict[str, pd.DataFrame] = field(default_factory=dict)  # device -> tool=ncu rows
    model: pd.DataFrame | None = None  # analytic traffic model over the sweep
    interpreter: pd.DataFrame | None = None  # interpreter byte counts on small layers
    build: pd.DataFrame | None = None  # ahead-of-time compile records


@dataclass
class Outcome:
    verdict: str
    measured: str  # TeX
    evidence: str  # TeX: what was measured where, or why it could not be and what was checked instead


def _device(tr: Tracer, slug: str) -> str:
    return tr.document(f"device.{slug}", CONFIG, ["devices", slug])


def _model(tr: Tracer, data: "Inputs", name: str) -> str:
    models = data.settings["models"]
    if name not in models:
        raise ValueError(f"model: expected one of {', '.join(models)} (config/config.yaml), got {name!r}")
    return tr.document(f"model.{name}", CONFIG, ["models", models.index(name)])


def _claimed(tr: Tracer, i: int, claim: dict, key: str, fmt: str) -> str:
    return tr.document(f"claim.{claim['id']}.{key}", CLAIMS, ["claims", i, key], fmt)


def _range(tr: Tracer, id: str, fn: str, rows: pd.DataFrame, fmt: str, unit: str = "", **params) -> str:
    lo = tr.number(f"{id}.min", fn, rows, fmt, extreme="min", **params)
    hi = tr.number(f"{id}.max", fn, rows, fmt, extreme="max", **params)
    return f"{lo}{unit}--{hi}{unit}"


def _pair_rows(rows: pd.DataFrame, claim: dict, extra=None) -> pd.DataFrame:
    keep = (rows["model"] == claim["model"]) & (rows["tokens"] <= claim["tokens_max"]) \
        & rows["impl"].isin([claim["impl"], claim["baseline"]])
    if extra is not None:
        keep &= extra(rows)
    picked = rows[keep]
    both = picked.groupby("tokens")["impl"].nunique()
    return picked[picked["tokens"].isin(both.index[both == 2])]


def check_traffic_saved(tr: Tracer, i: int, claim: dict, data: Inputs) -> Outcome:
    """Share of DRAM bytes the fused impl saves against the unfused one, per ncu-measured device."""
    lo_ok, hi_ok = claim["claimed"] - claim["tolerance"], claim["claimed"] + claim["tolerance"]
    tokens_max = _claimed(tr, i, claim, "tokens_max", "int")
    measured, verdicts, activations = [], [], []
    for device, rows in data.ncu.items():
        picked = _pair_rows(rows, claim, lambda r: (r["dtype"] == claim["dtype"]) & (r["stage"] == "total"))
        if picked.empty:
            continue
        params = dict(impl=claim["impl"], baseline=claim["baseline"], counter="dram")
        lo = tr.value("traffic_saved", picked, extreme="min", **params)
        hi = tr.value("traffic_saved", picked, extreme="max", **params)
        verdicts.append(lo_ok <= lo and hi <= hi_ok)
        text = _range(tr, f"claim.{claim['id']}.ncu.{device}", "traffic_saved", picked, "pct", r"\%", **params)
        measured.append(f"{text} on {_device(tr, device)}")
        if "model_weight_read_bytes" in picked and picked["model_weight_read_bytes"].notna().all():
            acts = _range(tr, f"claim.{claim['id']}.ncu.{device}.activations", "traffic_saved", picked, "pct",
                          r"\%", weights="model_weight_read_bytes", **params)
            activations.append(f"{acts} on {_device(tr, device)}")
    if measured:
        also = (f"; of activation bytes only (ncu bytes less the model's weight bytes): {'; '.join(activations)}"
                if activations else "")
        return Outcome(REPRODUCED if all(verdicts) else NOT_REPRODUCED, "; ".join(measured),
                       f"ncu DRAM bytes with the weights counted, {_model(tr, data, claim['model'])}, up to "
                       f"{tokens_max} tokens{also}")
    instead = []
    if data.model is not None:
        picked = _pair_rows(data.model, claim, lambda r: (r["dtype"] == claim["dtype"]) & (r["stage"] == "total"))
        params = dict(impl=claim["impl"], baseline=claim["baseline"], counter="model")
        weights = _range(tr, f"claim.{claim['id']}.model.weights", "traffic_saved", picked, "pct", r"\%", **params)
        acts = _range(tr, f"claim.{claim['id']}.model.activations", "traffic_saved", picked, "pct", r"\%",
                      weights="weight_read_bytes", **params)
        instead.append(f"the analytic model gives {weights} with weights counted and {acts} of activation "
                       f"bytes only ({_model(tr, data, claim['model'])}, up to {tokens_max} tokens)")
    if data.interpreter is not None:
        err = tr.number(f"claim.{claim['id']}.interpreter.error", "model_error_max", data.interpreter, "pct1")
        n = tr.number(f"claim.{claim['id']}.interpreter.layers", "count_distinct", data.interpreter, "int",
                      column="model")
        instead.append(f"the model's per-kernel bytes match Triton's interpreter counts within {err}\\% on "
                       f"{n} small layers")
    why = "no ncu measurement on any device"
    return Outcome(NOT_TESTABLE, "--", why + ("; checked instead: " + "; ".join(instead) if instead else ""))


def check_speed_range(tr: Tracer, i: int, claim: dict, data: Inputs) -> Outcome:
    """Speed-up of the impl over the baseline at every token count up to tokens_max."""
    from .latency_rows import MODES, shown_rows

    tokens_max = _claimed(tr, i, claim, "tokens_max", "int")
    params = dict(impl=claim["impl"], baseline=claim["baseline"])

    def measure(device: str) -> tuple[str, float, float] | None:
        rows = shown_rows(data.latency[device], data.settings, data.settings["compare_graph"])
        picked = _pair_rows(rows, claim)
        if picked.empty:
            return None
        text = _range(tr, f"claim.{claim['id']}.{device}", "speedup_extreme", picked, "ratio", **params)
        return (text, tr.value("speedup_extreme", picked, extreme="min", **params),
                tr.value("speedup_extreme", picked, extreme="max", **params))

    where = (f"{_model(tr, data, claim['model'])}, up to {tokens_max} tokens, "
             f"{MODES[data.settings['compare_graph']]} launches")
    device = claim["device"]
    got = measure(device) if device in data.latency else None
    if got is not None:
        text, lo, hi = got
        ok = claim["claimed_min"] <= lo and hi <= claim["claimed_max"]
        return Outcome(REPRODUCED if ok else NOT_REPRODUCED, text, f"{_device(tr, device)}, {where}")
    if device in data.latency:
        why = f"{latex_escape(claim['baseline'])} or {latex_escape(claim['impl'])} has no timed rows on {_device(tr, device)}"
    else:
        why = f"no {_device(tr, device)} measured"
    instead = []
    for other in claim.get("instead_devices", []):
        if other in data.latency and (got := measure(other)) is not None:
            instead.append(f"{got[0]} on {_device(tr, other)}")
    return Outcome(NOT_TESTABLE, "--", why + (f"; checked instead ({where}): " + "; ".join(instead)
                                              if instead else "; no other device measured instead"))


def check_runs_on_device(tr: Tracer, i: int, claim: dict, data: Inputs) -> Outcome:
    """Every timed row of the impl on the device is correct (rel_err within the claim's bound)."""
    device = claim["device"]
    rows = data.latency.get(device)
    if rows is not None:
        timed = rows[(rows["impl"] == claim["impl"]) & rows["median_ms"].notna()]
        if not timed.empty:
            good = tr.value("count_where", timed, column="rel_err", at_most=claim["rel_err_max"])
            k = tr.number(f"claim.{claim['id']}.correct", "count_where", timed, "int", column="rel_err",
                          at_most=claim["rel_err_max"])
            n = tr.number(f"claim.{claim['id']}.timed", "count_rows", timed, "int")
            bound = _claimed(tr, i, claim, "rel_err_max", "text")
            return Outcome(REPRODUCED if good == len(timed) else NOT_REPRODUCED,
                           f"{k} of {n} timed rows correct",
                           f"{latex_escape(claim['impl'])} on {_device(tr, device)}, relative error at most {bound}")
    why = f"no {_device(tr, device)} measured"
    build = data.build
    target = claim.get("instead_target")
    if build is None or target is None or build[build["target"] == target].empty:
        return Outcome(NOT_TESTABLE, "--", why + "; no ahead-of-time build for its target either")
    rows = build[build["target"] == target]
    ok = tr.number(f"claim.{claim['id']}.{target}.compiled", "count_where", rows, "int", column="compiled", equals=True)
    n = tr.number(f"claim.{claim['id']}.{target}.kernels", "count_rows", rows, "int")
    mma = tr.number(f"claim.{claim['id']}.{target}.matrix", "count_positive", rows, "int", column="matrix_instructions")
    name = tr.document(f"target.{target}", CONFIG, ["targets", target])
    return Outcome(NOT_TESTABLE, "--", f"{why}; checked instead: the unchanged kernels compile ahead of time for "
                                       f"{name}: {ok} of {n} kernel builds succeed, {mma} with matrix (MFMA) instructions")


CHECKS = {"traffic_saved": check_traffic_saved, "speed_range": check_speed_range,
          "runs_on_device": check_runs_on_device}


def check_claims(tr: Tracer, claims: list[dict], data: Inputs) -> list[dict]:
    """One record per claim: id, short, quote, verdict, claimed/measured/evidence (TeX), and the
    trace entries (with their source rows) that its numbers came from."""
    out = []
    for i, claim in enumerate(claims):
        if not re.fullmatch(r"[a-z]+", claim["id"]):
            raise ValueError(f"claims[{i}].id: expected lower-case letters only (it names TeX macros), got {claim['id']!r}")
        if claim["test"] not in CHECKS:
            raise ValueError(f"claims[{i}].test: expected one of {', '.join(CHECKS)}, got {claim['test']!r}")
        before = set(tr.entries)
        outcome = CHECKS[claim["test"]](tr, i, claim, data)
        claimed = claimed_text(tr, i, claim)
        short = tr.document(f"claim.{claim['id']}.short", CLAIMS, ["claims", i, "short"])
        out.append({"id": claim["id"], "short": short, "quote": claim["quote"], "verdict": outcome.verdict,
                    "claimed": claimed, "measured": outcome.measured, "evidence": outcome.evidence,
                    "trace": [tr.entries[k] for k in tr.entries if k not in before]})
    return out


def claimed_text(tr: Tracer, i: int, claim: dict) -> str:
    if claim["test"] == "traffic_saved":
        return _claimed(tr, i, claim, "claimed", "pct") + r"\%"
    if claim["test"] == "speed_range":
        return (_claimed(tr, i, claim, "claimed_min", "ratio") + "--" + _claimed(tr, i, claim, "claimed_max", "ratio")
                + " on " + _device(tr, claim["device"]))
    return "runs on " + _device(tr, claim["device"])


def tex_to_text(tex: str) -> str:
    """Plain text of a claims fragment, for the README and the notebook."""
    out, i = [], 0
    from .check_tracing import traced_spans
    for start, end, _, text in traced_spans(tex):
        out.append(tex[i:start] + text)
        i = end
    out.append(tex[i:])
    text = "".join(out).replace("--", "–")
    text = re.sub(r"\\emph\{([^}]*)\}", r"\1", text)
    return re.sub(r"\\([%_&#$])", r"\1", text)
