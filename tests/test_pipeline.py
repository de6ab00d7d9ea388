"""The Snakemake workflow on synthetic raw results (tests/fixtures/raw/), in a copy of the
repository under a temporary folder: it builds every product, rebuilds exactly what a deleted
file or a touched raw CSV needs, stops on bad raw data before any job, needs no GPU for `all`,
and is lint-clean. The PDF (TeX) is built by the CI step after the tests (.ci/run)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.raw_fixtures import copy_tree, install_raw, make_repo  # noqa: E402

# The CPU stages that take minutes (ahead-of-time builds, interpreter runs) have their own tests.
QUICK = ["aot=False", "interpreter=False"]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


def planned(workdir: Path, target: str = "generated", *config: str) -> set[tuple[str, str]]:
    """(rule, first output) of every job a dry run of `target` would run, targets themselves left out."""
    out = snakemake(workdir, "-n", "--cores", "1", target, "--config", *QUICK, *config).stdout
    jobs, rule = set(), None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = m.group(1)
        elif (m := re.match(r"^\s+output: ([^,\s]+)", line)) and rule:
            jobs.add((rule, m.group(1)))
            rule = None
    return jobs


def workflow_copy(dst: Path) -> Path:
    """The workflow's files (and the scripts its rules name) in a fresh git repository at `dst`."""
    for name in ("Snakefile", "environment.yml"):
        shutil.copy(ROOT / name, dst / name)
    for folder in ("config", "experiments", "kernels", "paper"):
        copy_tree(ROOT / folder, dst / folder)
    return dst


@pytest.fixture
def workflow(tmp_path):
    path = workflow_copy(tmp_path)
    sha = make_repo(path)
    install_raw(path / "results" / "raw", sha)
    return path


def test_products_and_exact_reruns(workflow):
    w = workflow
    snakemake(w, "--cores", "2", "generated", "--config", *QUICK)

    # Devices with data get figures; the others are named as not measured and drawn nowhere.
    figures = {p.name for p in (w / "paper/figures").iterdir()}
    for name in ("latency", "speedup", "floor_fraction"):
        for device in ("h100-sxm", "a100-sxm4"):
            assert {f"{name}_{device}.pdf", f"{name}_{device}.png"} <= figures
    assert not [f for f in figures if "h200" in f or "mi300x" in f]
    setup = (w / "paper/generated/setup.tex").read_text()
    not_measured = setup.split("\\newcommand{\\DevicesNotMeasured}")[1].split("\\newcommand")[0]
    assert "NVIDIA H200" in not_measured and "MI300X" in not_measured and "H100" not in not_measured
    verdicts = {c["id"]: c["verdict"] for c in json.loads((w / "paper/generated/claims.json").read_text())["claims"]}
    assert verdicts == {"traffic": "not reproduced", "speed": "reproduced", "portability": "not testable here"}
    assert "traced values recomputed" in (w / "paper/generated/tracing_report.txt").read_text()
    assert planned(w) == set()

    # A deleted figure is redrawn alone.
    (w / "paper/figures/latency_h100-sxm.png").unlink()
    assert planned(w) == {("fig_latency", "paper/figures/latency_h100-sxm.png")}

    # A deleted generated .tex is rewritten, and only what reads it follows (the tracing check).
    (w / "paper/generated/headline.tex").unlink()
    assert planned(w) == {("fig_latency", "paper/figures/latency_h100-sxm.png"),
                          ("tab_headline", "paper/generated/headline.tex"),
                          ("check_tracing", "paper/generated/tracing_report.txt")}
    snakemake(w, "--cores", "2", "generated", "--config", *QUICK)
    assert planned(w) == set()

    # Touching a raw CSV without changing it reruns nothing (Snakemake compares the checksum it
    # recorded); a changed one reruns exactly its dependants: the A100's figures, the tables that
    # read it, the claims check, the figure list (its PDFs change) and the tracing check.
    raw = w / "results/raw/a100-sxm4/latency.csv"
    later = time.time() + 5
    os.utime(raw, (later, later))
    assert planned(w) == set()
    frame = pd.read_csv(raw, dtype=str, keep_default_na=False)
    for column in ("p20_ms", "median_ms", "p80_ms"):  # a re-measurement of one row, a little slower
        frame.loc[1, column] = str(1.01 * float(frame.loc[1, column]))
    frame.to_csv(raw, index=False)
    os.utime(raw, (later + 1, later + 1))
    figures_a100 = {(rule, f"paper/figures/{name}_a100-sxm4.{ext}")
                    for rule, name in (("fig_latency", "latency"), ("fig_speedup", "speedup"),
                                       ("fig_speedup", "floor_fraction")) for ext in ("pdf", "png")}
    assert planned(w) == figures_a100 | {("tab_headline", "paper/generated/headline.tex"),
                                         ("claims_check", "paper/generated/claims.tex"),
                                         ("tex_figures", "paper/generated/figures.tex"),
                                         ("check_tracing", "paper/generated/tracing_report.txt")}


def test_without_raw_results_the_paper_says_nothing_was_measured(tmp_path):
    w = workflow_copy(tmp_path)
    make_repo(w)
    snakemake(w, "--cores", "2", "generated", "--config", *QUICK)
    setup = (w / "paper/generated/setup.tex").read_text()
    assert "\\newcommand{\\DevicesMeasured}{%\nnone%\n}" in setup
    assert "No latency figures" in (w / "paper/generated/figures.tex").read_text()
    claims = json.loads((w / "paper/generated/claims.json").read_text())["claims"]
    assert {c["verdict"] for c in claims} == {"not testable here"}
    assert not list((w / "paper/figures").glob("latency_*"))
    if shutil.which("latexmk"):
        snakemake(w, "--cores", "2", "all", "--config", *QUICK)
        assert (w / "paper/build/tritonmoe.pdf").stat().st_size > 0


def test_bad_raw_results_stop_before_any_job(workflow):
    path = workflow / "results/raw/h100-sxm/latency.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[4, "median_ms"] = "nan"
    frame.to_csv(path, index=False)
    done = snakemake(workflow, "-n", "--cores", "1", "generated", check=False)
    assert done.returncode != 0
    assert "results/raw/h100-sxm/latency.csv, line 6 (data row 4), column 'median_ms'" in done.stdout + done.stderr


def test_all_never_needs_a_gpu_and_measure_must_be_asked_for(workflow):
    rules = {rule for rule, _ in planned(workflow, "all", "measure=h100-sxm")}
    assert rules and not [r for r in rules if r.startswith(("measure", "tune"))]
    done = snakemake(workflow, "-n", "--cores", "1", "measure", check=False)
    assert done.returncode != 0 and "name the device to measure" in done.stdout + done.stderr


def test_slurm_profile_asks_gpu_jobs_for_a_gpu(workflow):
    out = snakemake(workflow, "-n", "--workflow-profile", "config/slurm", "measure",
                    "--config", "measure=a100-sxm4").stdout
    blocks = re.split(r"\n(?=\[)", out)
    gpu = [b for b in blocks if re.search(r"^rule measure_(latency|traffic):", b, re.M)]
    assert len(gpu) == 3  # the uniform and the zipf sweep, and ncu
    assert all("gpu=1" in b and "gpu_model=a100" in b and "slurm_partition=gpu" in b for b in gpu)


def test_lint_clean():
    done = snakemake(ROOT, "--lint", check=False)
    assert done.returncode == 0 and "Lints for" not in done.stdout + done.stderr, done.stdout[-3000:]


def test_paper_rule_says_how_to_install_tex(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no latexmk here
    done = subprocess.run([sys.executable, "-m", "experiments.analysis.build_paper", "--main", "paper/tritonmoe.tex",
                           "--out", "paper/build/tritonmoe.pdf", "--log", str(tmp_path / "log")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "latexmk not found" in done.stderr and "apt-get install -y latexmk texlive-latex-recommended" in done.stderr


def test_measure_runs_its_gpu_jobs_one_after_another(workflow):
    """uniform sweep -> zipf sweep -> ncu: each GPU job waits for the one before (by its inputs), so that
    with any --cores no two time or profile the GPU at once or merge rows into latency.csv at once."""
    out = snakemake(workflow, "-n", "--cores", "4", "measure", "--config", "measure=h100-sxm").stdout
    jobs, rule, job_input = {}, None, None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            rule, job_input = m.group(1), ""
        elif (m := re.match(r"^\s+input: (.*)$", line)) and rule:
            job_input = m.group(1)
        elif (m := re.match(r"^\s+output: ([^,\s]+)", line)) and rule:
            jobs[m.group(1)] = (rule, job_input)
            rule = None
    by_name = {re.sub(r"-\w+\.done$", "", Path(out_file).name): job for out_file, job in jobs.items()}
    assert {"latency-uniform", "latency-zipf", "traffic"} <= set(by_name)
    assert by_name["latency-uniform"][0] == by_name["latency-zipf"][0] == "measure_latency"
    assert re.search(r"results/logs/h100-sxm/latency-uniform-\w+\.done", by_name["latency-zipf"][1])
    assert re.search(r"results/logs/h100-sxm/latency-zipf-\w+\.done", by_name["traffic"][1])
    assert re.search(r"results/logs/h100-sxm/ceiling-\w+\.done", by_name["heldout"][1])
    assert "latency-" not in by_name["latency-uniform"][1].replace("latency.py", "")
