"""What the notebooks need beyond the library: the repository as working directory, a layer shape
from a model name or typed numbers, the fused saving of any shape over a token sweep, and the
claims check run the way the pipeline runs it, into a temporary folder.

Every byte count, saving, verdict and derived number comes from `tritonmoe.traffic`,
`experiments/traffic` and `experiments/analysis`; nothing here computes one itself.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def enter_repo() -> Path:
    """The repository root as working directory and on `sys.path`: the pipeline's paths (config/,
    results/) are relative to it and `experiments` is imported from it."""
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return ROOT


def raw_files(raw_dir: str | Path, name: str, settings: dict) -> dict[str, Path]:
    """{device slug: raw_dir/<device>/<name>} for every measured device holding that file
    (`raw.device_folders` checks the folders against the config's devices)."""
    from experiments.analysis.raw import device_folders

    slugs = device_folders(raw_dir, list(settings["devices"]))
    return {d: Path(raw_dir) / d / name for d in slugs if (Path(raw_dir) / d / name).is_file()}


def layer_shape(model: str | None, tokens: int, dtype: str, *, hidden: int | None = None, ffn: int | None = None,
                experts: int | None = None, top_k: int | None = None):
    """(name, `tritonmoe.traffic.LayerShape`): a model of config/models.yaml with any of its numbers
    replaced by the arguments given, or, with `model=None`, the four numbers alone. The name is the
    model's when nothing was replaced (so raw rows of that model match it), else `H..-F..-E..-K..`."""
    from experiments.bench.problems import load_models
    from experiments.traffic.compare import ELEM_BYTES
    from tritonmoe.traffic import LayerShape

    if dtype not in ELEM_BYTES:
        raise ValueError(f"dtype: expected one of {', '.join(ELEM_BYTES)}, got {dtype!r}")
    given = {"hidden": hidden, "ffn": ffn, "experts": experts, "top_k": top_k}
    if model is None:
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"model: None needs hidden, ffn, experts and top_k; got no {', '.join(missing)}")
        numbers, replaced = given, True
    else:
        models = load_models()
        if model not in models:
            raise ValueError(f"model: expected one of {', '.join(models)} (config/models.yaml) or None, got {model!r}")
        numbers = {k: (getattr(models[model], k) if v is None else v) for k, v in given.items()}
        replaced = any(v != getattr(models[model], k) for k, v in numbers.items())
    shape = LayerShape(int(tokens), *(int(numbers[k]) for k in ("hidden", "ffn", "experts", "top_k")),
                       ELEM_BYTES[dtype])
    name = "H{hidden}-F{ffn}-E{experts}-K{top_k}".format(**numbers) if replaced else model
    return name, shape


def stage_frame(traffic_by_impl: dict) -> pd.DataFrame:
    """{impl: `stage_traffic(...)` result} as one row per (impl, stage) with the bytes of each kind."""
    rows = []
    for impl, stages in traffic_by_impl.items():
        for stage, t in stages.items():
            rows.append({"impl": impl, "stage": stage, "read": t.read, "write": t.write, "total": t.total,
                         "weights": t.weight_read + t.weight_write, "activations": t.act_total})
    return pd.DataFrame(rows)


def fusion_savings_of_shape(name: str, shape, tokens, *, baseline: str, flavour: str = "unique",
                            counts: str = "sampled") -> pd.DataFrame:
    """`tritonmoe.traffic.fusion_saving` of one shape (its tokens replaced by each of `tokens`), with
    weights counted and for activations only, in the columns `compare.tokens_reaching_share` reads
    (`compare.fusion_savings_model` does the same for the models of config/models.yaml only)."""
    from dataclasses import replace

    from experiments.traffic.compare import expert_counts
    from tritonmoe.traffic import fusion_saving, gpu_config

    rows = []
    for t in tokens:
        s = replace(shape, tokens=int(t))
        c = expert_counts(s.tokens, s.experts, s.top_k, counts)
        for basis, weights in (("with_weights", True), ("activations_only", False)):
            saved, share = fusion_saving(s, c, gpu_config(s), baseline=baseline, flavour=flavour, weights=weights)
            rows.append({"model": name, "tokens": s.tokens, "baseline": baseline, "basis": basis,
                         "saved_bytes": saved, "saved_share": share})
    return pd.DataFrame(rows)


def interpreter_layer(shape, *, hidden: int, ffn: int, tokens: int):
    """A small layer (`experiments.traffic.small_layers.SmallLayer`) with the shape's experts and
    top-k, small H and F, at most `tokens` tokens, in an element size of the shape's: fp16 for 2-byte
    dtypes (the interpreter multiplies bf16 wrongly in tl.dot), fp32 for 4."""
    import torch

    from experiments.traffic.small_layers import SmallLayer

    dtypes = {2: torch.float16, 4: torch.float32}
    if shape.elem_bytes not in dtypes:
        raise ValueError(f"shape.elem_bytes: expected 2 or 4, got {shape.elem_bytes}")
    return SmallLayer(tokens=min(shape.tokens, tokens), hidden=hidden, ffn=ffn, experts=shape.experts,
                      top_k=shape.top_k, dtype=dtypes[shape.elem_bytes])


def claims_check_argv(*, claims_file: str, raw_dir: str, build_dir: str, settings_file: str, model_csv: str,
                      interpreter_csv: str | None, out_dir: str | Path, settings: dict) -> list[str]:
    """The arguments of `python -m experiments.analysis.claims_check` as the pipeline's claims_check
    rule gives them: every measured device's latency.csv and traffic.csv, the traffic model, the
    interpreter counts where present, and the ahead-of-time build folder."""
    from experiments.analysis.raw import device_folders

    out_dir = Path(out_dir)
    argv = ["--claims", claims_file, "--devices", *device_folders(raw_dir, list(settings["devices"])),
            "--latency", *map(str, raw_files(raw_dir, "latency.csv", settings).values()),
            "--ncu", *map(str, raw_files(raw_dir, "traffic.csv", settings).values()),
            "--model", model_csv]
    if interpreter_csv and Path(interpreter_csv).is_file():
        argv += ["--interpreter", interpreter_csv]
    if Path(build_dir).is_dir():
        argv += ["--build", build_dir]
    return argv + ["--settings", settings_file, "--out", str(out_dir / "claims.tex"),
                   "--json", str(out_dir / "claims.json"), "--markdown", str(out_dir / "claims.md")]


def run_claims_check(*, claims_file: str, raw_dir: str, build_dir: str, settings: dict,
                     interpreter_csv: str | None = None) -> tuple[dict, list[str], Path]:
    """Runs the pipeline's traffic model and claims check (their `main`s) into a temporary folder;
    returns (claims.json as a dict, the claims check's arguments, the folder)."""
    from experiments.analysis import claims_check, traffic_model

    out = Path(tempfile.mkdtemp(prefix="claims_review_"))
    settings_file = out / "settings.json"
    settings_file.write_text(json.dumps(settings))
    model_csv = out / "traffic_model.csv"
    if traffic_model.main(["--settings", str(settings_file), "--out", str(model_csv)]) != 0:
        raise RuntimeError("experiments.analysis.traffic_model failed")
    argv = claims_check_argv(claims_file=claims_file, raw_dir=raw_dir, build_dir=build_dir,
                             settings_file=str(settings_file), model_csv=str(model_csv),
                             interpreter_csv=interpreter_csv, out_dir=out, settings=settings)
    if claims_check.main(argv) != 0:
        raise RuntimeError(f"experiments.analysis.claims_check {' '.join(argv)} failed")
    return json.loads((out / "claims.json").read_text()), argv, out


# How each kind of input is made again: the pipeline target, and for raw results the GPU run.
REGENERATE = {
    "latency.csv": "snakemake --cores 1 measure --config measure={device}   # on that GPU; writes results/raw/{device}/",
    "traffic.csv": "snakemake --cores 1 measure --config measure={device}   # on that GPU (ncu); writes results/raw/{device}/",
    "provenance.json": "snakemake --cores 1 measure --config measure={device}   # on that GPU",
    "traffic_model.csv": "snakemake --cores 1 paper/generated/data/traffic_model.csv",
    "traffic_interpreter.csv": "snakemake --cores 1 paper/generated/data/traffic_interpreter.csv",
    "build": "python experiments/aot/build_all.py --out results/build   # CPU, ahead-of-time; the pipeline's aot_build rule",
    "claims": "snakemake --cores 1 paper/generated/claims.json",
}


def regenerate_command(path: str | Path) -> str:
    """The command that makes the file at `path` again (see `REGENERATE`)."""
    p = Path(path)
    if p.suffix == ".json" and p.name != "provenance.json" and p.parent.parent.name == "build":
        return REGENERATE["build"]
    if p.name in REGENERATE:
        return REGENERATE[p.name].format(device=p.parent.name)
    if p.name.startswith("claims."):
        return REGENERATE["claims"]
    raise ValueError(f"path: expected a raw result, a build record or a pipeline product, got {str(p)!r}")


def provenance_runs(device_dir: str | Path, repo) -> pd.DataFrame:
    """The runs recorded in a device's provenance.json (checked by `raw.read_provenance`): one row
    per run with its date, commit, command and measured rates."""
    from experiments.analysis.raw import read_provenance

    prov = read_provenance(device_dir, repo=repo)
    keys = ["date", "git_sha", "git_dirty", "command", "copy_gbps", "bf16_tflops", "torch", "triton"]
    return pd.DataFrame([{k: run.get(k) for k in keys} for run in prov.get("runs", [prov])])
