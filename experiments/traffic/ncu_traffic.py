"""DRAM bytes per stage of every impl, measured with Nsight Compute, beside the unique-bytes model.

    python experiments/traffic/ncu_traffic.py --out results/raw/h100-sxm            # on the GPU machine
    python experiments/traffic/ncu_traffic.py --out results/raw/h100-sxm --dry-run  # print the commands

For each model, one `ncu` process runs `ncu_worker.py`, which profiles one layer call per
(tokens, impl) after a warm-up; ncu reads `dram__bytes_read.sum` and `dram__bytes_write.sum` of each
kernel with `--cache-control all` (caches flushed before each kernel: no reuse between kernels)
and `--clock-control none`. The launches are summed per stage (`tritonmoe.traffic.KERNEL_STAGES`)
and written to `<out>/traffic.csv` (`tool=ncu`; rows of an earlier run with the same key are
replaced) with `model_*` from the unique-bytes model of exactly the call that ran (its expert
counts and config come back in the worker's manifest); the run is added to `<out>/provenance.json`.
Peers (megablocks_grouped, torch_grouped_mm) get a `total` row only: their kernels have no stages.
Exits 2 with a message when there is no GPU or no ncu, 1 when a model failed (the others' rows are
written). The first run also compiles the Triton kernels (cached for later runs); `--budget-s`
stops starting models once spent, `--models`/`--tokens` pick a subset.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "bench"))
sys.path.insert(0, str(ROOT))

from tritonmoe.traffic import KERNEL_STAGES, PEER_IMPLS, TRITON_IMPLS, LayerShape, launches  # noqa: E402

from experiments.traffic.ncu_parse import MARKER_KERNEL, METRICS, parse_ncu_csv, split_calls, stage_bytes  # noqa: E402
from experiments.traffic.traffic_csv import stage_rows, write_rows  # noqa: E402
from problems import load_models  # noqa: E402

WORKER = Path(__file__).resolve().parent / "ncu_worker.py"
TOKENS = (1, 16, 64, 256, 512, 1024, 4096)
ELEM_BYTES = {"bf16": 2, "fp16": 2}
KERNEL_REGEX = "regex:^(" + "|".join(sorted([*KERNEL_STAGES, MARKER_KERNEL])) + ")$"


def ncu_command(ncu: str, *, model: str, tokens, impls, dtype: str, log: Path, manifest: Path,
                kernel_regex: str | None) -> list[str]:
    cmd = [ncu, "--csv", "--log-file", str(log), "--print-units", "base", "--metrics", ",".join(METRICS),
           "--clock-control", "none", "--cache-control", "all", "--profile-from-start", "off",
           "--print-kernel-base", "function"]
    if kernel_regex:
        cmd += ["--kernel-name", kernel_regex]
    return cmd + [sys.executable, str(WORKER), "--model", model, "--tokens", *map(str, tokens),
                  "--impls", *impls, "--dtype", dtype, "--manifest", str(manifest)]


def rows_for_model(log_text: str, manifest: dict, device: str, models: dict) -> list[dict]:
    """traffic.csv rows of one ncu run: its CSV log and the worker's manifest."""
    calls = split_calls(parse_ncu_csv(log_text))
    if len(calls) != len(manifest["calls"]):
        raise ValueError(f"ncu output: expected {len(manifest['calls'])} profiled calls (the manifest's), "
                         f"found {len(calls)} markers")
    m = models[manifest["model"]]
    rows = []
    for measured, call in zip(calls, manifest["calls"]):
        impl, counts, cfg = call["impl"], call["expert_counts"], call["config"]
        shape = LayerShape(call["tokens"], m.hidden, m.ffn, m.experts, m.top_k, ELEM_BYTES[manifest["dtype"]])
        modelled = launches(impl, shape, counts, cfg, **({"sms": manifest["sms"]} if "sms" in manifest else {}))
        if impl in TRITON_IMPLS:
            got, want = [k.kernel for k in measured], [x.kernel for x in modelled]
            if got != want:
                raise ValueError(f"{manifest['model']} T={shape.tokens} {impl}: ncu saw kernels {got}, the model "
                                 f"lists {want}; tritonmoe/traffic.py is out of step with the kernels")
        new = stage_rows(device=device, model=manifest["model"], dtype=manifest["dtype"], impl=impl, tool="ncu",
                         shape=shape, expert_counts=counts, launch_list=modelled,
                         config=cfg, measured=stage_bytes(measured))
        rows += new if impl in TRITON_IMPLS else [r for r in new if r["stage"] == "total"]
    return rows


def git_state() -> tuple[str | None, bool]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, False


def main(argv=None) -> int:
    models = load_models()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results/raw/<device slug> folder")
    ap.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS))
    ap.add_argument("--impls", nargs="+", default=list(TRITON_IMPLS), choices=[*TRITON_IMPLS, *PEER_IMPLS])
    ap.add_argument("--dtype", default="bf16", choices=list(ELEM_BYTES))
    ap.add_argument("--ncu", default=os.environ.get("NCU", "ncu"), help="the ncu binary (default: ncu on PATH, or $NCU)")
    ap.add_argument("--kernel-regex", default=None,
                    help=f"ncu --kernel-name filter (default {KERNEL_REGEX} for Triton impls; none with peers)")
    ap.add_argument("--timeout-s", type=float, default=420, help="per model (its ncu run is abandoned after this)")
    ap.add_argument("--budget-s", type=float, default=540,
                    help="start no further model after this long (rows so far are written)")
    ap.add_argument("--git-sha", default=None, help="default: git rev-parse HEAD")
    ap.add_argument("--git-dirty", type=int, default=None, help="default: from git status")
    ap.add_argument("--keep-logs", type=Path, default=None, help="copy ncu's CSV logs and manifests here")
    ap.add_argument("--dry-run", action="store_true", help="print the ncu commands and exit")
    args = ap.parse_args(argv)
    regex = args.kernel_regex or (None if set(args.impls) & set(PEER_IMPLS) else KERNEL_REGEX)
    ncu = shutil.which(args.ncu) or args.ncu
    work = Path(tempfile.gettempdir()) / "ncu_traffic" if args.dry_run else Path(tempfile.mkdtemp(prefix="ncu_traffic_"))
    commands = {m: ncu_command(ncu, model=m, tokens=args.tokens, impls=args.impls, dtype=args.dtype,
                               log=work / f"{m}.csv", manifest=work / f"{m}.json", kernel_regex=regex)
                for m in args.models}
    if args.dry_run:
        for cmd in commands.values():
            print(shlex.join(cmd))
        return 0
    import torch
    if not torch.cuda.is_available():
        print("ncu_traffic.py: no CUDA GPU here; nothing measured", file=sys.stderr)
        return 2
    if shutil.which(args.ncu) is None:
        print(f"ncu_traffic.py: Nsight Compute ({args.ncu!r}) not found; put ncu on PATH or pass --ncu; "
              "nothing measured", file=sys.stderr)
        return 2
    from device_info import measure_bf16_tflops, measure_copy_gbps, provenance, update_provenance
    from tritonmoe.tuned import device_slug
    slug = device_slug(torch.device("cuda"))
    if args.out.name != slug:
        print(f"--out: expected a folder named after this GPU's slug {slug!r}, got {args.out}", file=sys.stderr)
        return 2
    sha, dirty = git_state()
    sha = args.git_sha or sha
    dirty = bool(args.git_dirty) if args.git_dirty is not None else dirty
    if sha is None:
        print("--git-sha: no git repository here; pass the commit the tree is at", file=sys.stderr)
        return 2
    copy_gbps, tflops = measure_copy_gbps(), measure_bf16_tflops()
    torch.cuda.empty_cache()
    rows, failed, t0 = [], [], time.time()
    for m, cmd in commands.items():
        if time.time() - t0 > args.budget_s:
            failed.append(f"{m}: not run, the {args.budget_s:.0f} s budget is spent; rerun with --models {m} ...")
            continue
        weights_gb = models[m].experts * models[m].weight_bytes_per_expert(ELEM_BYTES[args.dtype]) / 1e9
        free_gb = torch.cuda.mem_get_info()[0] / 1e9
        if weights_gb > 0.85 * free_gb:
            failed.append(f"{m}: weights {weights_gb:.1f} GB do not fit the {free_gb:.1f} GB free")
            continue
        t = time.time()
        env = {**os.environ, "LC_ALL": "C", "TRITON_INTERPRET": "0"}
        log, manifest = work / f"{m}.csv", work / f"{m}.json"
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            failed.append(f"{m}: ncu ran past --timeout-s {args.timeout_s:.0f}; fewer --tokens, or a longer timeout")
            continue
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for p in (log, manifest):
                if p.exists():
                    shutil.copy(p, args.keep_logs / p.name)
        if proc.returncode != 0 or not manifest.exists():
            failed.append(f"{m}: ncu exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
            continue
        man = json.loads(manifest.read_text())
        try:
            new = rows_for_model(log.read_text(), man, slug, models)
        except ValueError as e:
            failed.append(f"{m}: {e}")
            continue
        rows += new
        for s in man["skipped"]:
            print(f"# {m}: {s['impl']} skipped (tokens {s.get('tokens', 'all')}): {s['why']}", file=sys.stderr)
        print(f"# {m}: {len(man['calls'])} calls profiled in {time.time() - t:.0f} s", flush=True)
    if rows:
        write_rows(args.out / "traffic.csv", rows)
        run = provenance(sha, dirty, copy_gbps, tflops)
        run.update({"script": "experiments/traffic/ncu_traffic.py", "ncu": _ncu_version(args.ncu),
                    "ncu_options": "--cache-control all --clock-control none", "l2_bytes":
                    torch.cuda.get_device_properties(0).L2_cache_size})
        update_provenance(args.out, run)
        _print_totals(rows)
    print(f"# {len(rows)} rows to {args.out / 'traffic.csv'} in {time.time() - t0:.0f} s")
    for f in failed:
        print(f"FAILED {f}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def _ncu_version(ncu: str) -> str | None:
    try:
        out = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _print_totals(rows: list[dict]) -> None:
    print(f"{'model':16} {'tokens':>6} {'impl':18} {'ncu MB':>10} {'model MB':>10} {'ncu/model':>9}")
    for r in rows:
        if r["stage"] != "total":
            continue
        got = r["dram_read_bytes"] + r["dram_write_bytes"]
        want = r["model_read_bytes"] + r["model_write_bytes"]
        print(f"{r['model']:16} {r['tokens']:>6} {r['impl']:18} {got / 1e6:10.2f} {want / 1e6:10.2f} "
              f"{got / want:9.3f}")


if __name__ == "__main__":
    sys.exit(main())
