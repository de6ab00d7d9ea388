"""Ahead-of-time builds of every Triton kernel of every impl for A100, H100, MI300X and MI250X,
on a machine without a GPU.

    python experiments/aot/build_all.py --out results/build          # everything
    python experiments/aot/build_all.py --out /tmp/build --small     # the CI subset

For each target of config/aot_targets.yaml, impl and scenario (decode, prefill) it records the
kernel launches of one layer call (`launches.py`), compiles each distinct specialisation once
(`compile_kernel.py`) and writes `<out>/<target>/<impl>.json`: per kernel and scenario the
registers, spills, shared memory / LDS, warps, matrix instructions in the machine code and compile
seconds, or the compiler's error. A kernel shared by several impls (e.g. routing) is compiled once
per target and its record, compile seconds included, appears in each impl's file.
"""
from __future__ import annotations

import os
import shutil
import tempfile

# Compile for real (the interpreter replaces @triton.jit) and in a fresh cache, so that the
# compile seconds are the compiler's and not a cache hit's. Both before triton is imported.
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_ALWAYS_COMPILE"] = "1"
os.environ["TRITON_CACHE_DIR"] = _CACHE = tempfile.mkdtemp(prefix="tritonmoe-aot-")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
import tritonmoe  # noqa: E402

from compile_kernel import Compiled, Specialized, compile_specialized, specialize  # noqa: E402
from inspect_amd import amd_metrics  # noqa: E402
from inspect_nvidia import nvidia_metrics  # noqa: E402
from launches import Launch, layer_launches  # noqa: E402
from layer_config import layer_config  # noqa: E402
from same_functions import check_same_functions  # noqa: E402
from targets import ROOT, Settings, Target, load_settings  # noqa: E402


@dataclass
class Job:
    target: Target
    impl: str
    scenario: str
    tokens: int
    config_source: str
    launch: Launch


def plan(settings: Settings, targets: list[str], impls: list[str], scenarios: list[str],
         kernels: list[str] | None = None) -> list[Job]:
    """Every (target, impl, scenario, launch) to build; `kernels` keeps only those names."""
    dtype = getattr(torch, settings.dtype)
    jobs = []
    for t in targets:
        target = settings.targets[t]
        for impl in impls:
            for scenario in scenarios:
                tokens = settings.scenarios[scenario]
                config, source = layer_config(target, settings.shape, dtype, tokens)
                if settings.overrides and scenario in settings.overrides:
                    config = {**config, **settings.overrides[scenario]}
                    source += f"+{','.join(settings.overrides[scenario])}"
                for launch in layer_launches(impl, settings.shape, dtype, tokens, config):
                    if kernels is None or launch.name in kernels:
                        jobs.append(Job(target, impl, scenario, tokens, source, launch))
    check_same_functions((j.target.name, j.launch.fn) for j in jobs)
    return jobs


METRICS = ("isa", "shared_bytes", "binary_bytes", "registers", "sgprs", "agprs", "stack_bytes",
           "spill_stores_bytes", "spill_loads_bytes", "vgpr_spills", "sgpr_spills", "spills", "spills_unit",
           "occupancy_waves_per_simd", "matrix_instructions", "scalar_fma", "instructions")


def metrics(compiled: Compiled, target: Target) -> dict:
    """What the compiled kernel uses; every metric is None when compilation failed."""
    k = compiled.kernel
    result = {"compiled": k is not None, "error": compiled.error, "compile_s": round(compiled.seconds, 3)}
    if k is None:
        return {**result, **dict.fromkeys(METRICS)}
    if target.backend == "cuda":
        found = nvidia_metrics(k.asm["cubin"], compiled.log)
        isa, binary = re.search(r"^\.target\s+(\S+)", k.asm["ptx"], re.M), k.asm["cubin"]
    else:
        found = amd_metrics(k.asm["amdgcn"])
        isa, binary = re.search(r'\.amdgcn_target\s+"([^"]+)"', k.asm["amdgcn"]), k.asm["hsaco"]
    return {**result, "isa": isa.group(1) if isa else None, "shared_bytes": k.metadata.shared,
            "binary_bytes": len(binary), **found}


def record(job: Job, spec: Specialized, count: int, result: dict) -> dict:
    fn = job.launch.fn
    sig = spec.source.signature
    constexprs = {fn.arg_names[path[0]]: _plain(v) for path, v in spec.source.constants.items()}
    return {
        "kernel": job.launch.name, "module": fn.module, "scenario": job.scenario, "tokens": job.tokens,
        "config_source": job.config_source, "launches": count,
        "source_key": fn.cache_key,
        "signature": {k: v for k, v in sig.items() if v != "constexpr"},
        "constexprs": constexprs,
        "num_warps": spec.options.num_warps, "num_stages": spec.options.num_stages,
        "options": job.target.options,
        **result,
    }


def _plain(v):
    return v if isinstance(v, (bool, int, float, str)) or v is None else str(v)


def provenance(argv: list[str]) -> dict:
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    from triton import knobs
    ptxas = subprocess.run([knobs.nvidia.ptxas.path, "--version"], capture_output=True, text=True).stdout
    return {
        "triton": triton.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "ptxas": ptxas.strip().splitlines()[-1] if ptxas else None,
        "git_sha": git("rev-parse", "HEAD"),
        # Dirty: a change in what the build reads (the kernels, this script, its settings).
        "git_dirty": bool(git("status", "--porcelain", "--", "kernels", "experiments/aot", "config/aot_targets.yaml",
                              "config/models.yaml")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", os.path.relpath(__file__, ROOT), *argv]),
        "host": platform.node(),
    }


def build(jobs: list[Job]) -> dict[tuple[str, str], list[dict]]:
    """Compiles each distinct (target, specialisation) once; returns records per (target, impl)."""
    done: dict[tuple, dict] = {}
    grouped: dict[tuple, list] = {}  # (target, impl, scenario, spec key) -> [job, spec, count]
    for job in jobs:
        spec = specialize(job.launch, job.target)
        key = (job.target.name, job.impl, job.scenario, spec.key)
        if key in grouped:
            grouped[key][2] += 1
        else:
            grouped[key] = [job, spec, 1]
    out = defaultdict(list)
    for (target, impl, _, spec_key), (job, spec, count) in grouped.items():
        if (target, spec_key) not in done:
            done[(target, spec_key)] = metrics(compile_specialized(spec, job.target), job.target)
            r = done[(target, spec_key)]
            status = "ok" if r["compiled"] else "FAILED"
            print(f"{target:7s} {job.launch.name:16s} {job.scenario:8s} {status} {r['compile_s']:.2f}s", flush=True)
        out[(target, impl)].append(record(job, spec, count, done[(target, spec_key)]))
    return out


def write(out_dir: Path, settings: Settings, records: dict, prov: dict, replace: bool) -> list[Path]:
    """Writes one file per (target, impl); `replace` first removes the built targets' old files
    (so that a removed impl leaves no stale result behind)."""
    if replace:
        for t in {t for t, _ in records}:
            for old in (out_dir / t).glob("*.json"):
                old.unlink()
    written = []
    for (t, impl), rows in sorted(records.items()):
        target = settings.targets[t]
        doc = {
            "target": t, "backend": target.backend, "arch": target.arch, "warp_size": target.warp_size,
            "device": target.device, "impl": impl, "model": settings.shape.model,
            "shape": {"hidden": settings.shape.hidden, "ffn": settings.shape.ffn,
                      "experts": settings.shape.experts, "top_k": settings.shape.top_k},
            "dtype": settings.dtype, "provenance": prov, "kernels": rows,
        }
        path = out_dir / t / f"{impl}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
        written.append(path)
    return written


def summary(records: dict) -> str:
    lines = [f"{'target':7s} {'impl':18s} {'kernel':16s} {'scenario':8s} {'regs':>5s} {'spills':>6s} {'smem':>7s} matrix"]
    for (t, impl), rows in sorted(records.items()):
        for r in rows:
            if not r["compiled"]:
                lines.append(f"{t:7s} {impl:18s} {r['kernel']:16s} {r['scenario']:8s} FAILED: {r['error'].splitlines()[-1]}")
                continue
            mma = ",".join(f"{k}x{v}" for k, v in r["matrix_instructions"].items()) or "-"
            lines.append(f"{t:7s} {impl:18s} {r['kernel']:16s} {r['scenario']:8s} {r['registers']!s:>5s} "
                         f"{r['spills']!s:>6s} {r['shared_bytes']:>7d} {mma}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = load_settings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "build")
    ap.add_argument("--small", action="store_true", help="the CI subset of config/aot_targets.yaml")
    ap.add_argument("--targets", nargs="+", choices=list(settings.targets), default=list(settings.targets))
    args = ap.parse_args(argv)
    if args.small:
        impls, scenarios, kernels = settings.small["impls"], settings.small["scenarios"], settings.small["kernels"]
    else:
        impls, scenarios, kernels = list(tritonmoe.IMPLS), list(settings.scenarios), None
    try:
        jobs = plan(settings, args.targets, impls, scenarios, kernels)
        records = build(jobs)
    finally:
        shutil.rmtree(_CACHE, ignore_errors=True)
    written = write(args.out, settings, records, provenance(argv), replace=not args.small)
    print(summary(records))
    failed = sum(not r["compiled"] for rows in records.values() for r in rows)
    print(f"wrote {len(written)} files under {args.out}; {failed} kernel builds failed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
