"""Raw results that break the contract stop the pipeline with a message naming file, line and
column; writes are atomic; every number of a generated .tex traces to raw rows.

Each test breaks one thing in a copy of the synthetic fixtures (tests/fixtures/raw/) and checks
that the protection catches it (and names where)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from experiments.analysis import atomic  # noqa: E402
from experiments.analysis.check_tracing import Recomputer, check_generated, check_prose  # noqa: E402
from experiments.analysis.raw import (RawDataError, device_folders, read_latency, read_provenance,  # noqa: E402
                                      read_traffic)
from experiments.analysis.sources import load_rows  # noqa: E402
from experiments.analysis.trace import Tracer  # noqa: E402
from fixtures.raw_fixtures import install_raw, make_repo  # noqa: E402

DEVICES = ["h100-sxm", "h200", "a100-sxm4", "mi300x"]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository holding the fixture raw results; the working directory is its root."""
    sha = make_repo(tmp_path)
    install_raw(tmp_path / "results" / "raw", sha)
    monkeypatch.chdir(tmp_path)
    return tmp_path


LATENCY = Path("results/raw/h100-sxm/latency.csv")
TRAFFIC = Path("results/raw/h100-sxm/traffic.csv")


def edit_csv(path: Path, row: int, column: str, value: str) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


# --- raw results ---------------------------------------------------------------------------------

def test_fixture_reads_typed(repo):
    rows = read_latency(LATENCY, device="h100-sxm")
    assert rows["tokens"].dtype.kind == "i" and rows["median_ms"].dtype.kind == "f"
    assert list(rows["source_row"]) == list(range(len(rows)))
    untimed = rows[rows["note"] != ""]
    assert len(untimed) and untimed["median_ms"].isna().all()  # not measured, and the note says why
    assert len(read_traffic(TRAFFIC, device="h100-sxm")) > 0


def test_missing_column_names_file_and_column(repo):
    pd.read_csv(LATENCY).drop(columns=["floor_ms"]).to_csv(LATENCY, index=False)
    with pytest.raises(RawDataError, match=r"latency\.csv.*missing column.*'floor_ms'"):
        read_latency(LATENCY, device="h100-sxm")


@pytest.mark.parametrize("column,value,expected", [
    ("tokens", "1.5", "positive integer"),
    ("graph", "yes", "0 or 1"),
    ("median_ms", "fast", "expected a number"),
    ("timestamp", "yesterday", "ISO 8601"),
    ("git_sha", "not-a-sha", "git commit SHA"),
])
def test_wrong_type_names_file_line_and_column(repo, column, value, expected):
    edit_csv(LATENCY, 7, column, value)
    with pytest.raises(RawDataError) as e:
        read_latency(LATENCY, device="h100-sxm")
    assert str(LATENCY) in str(e.value) and "line 9 (data row 7)" in str(e.value)
    assert repr(column) in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf"])
def test_nan_timing_stops(repo, value):
    edit_csv(LATENCY, 3, "median_ms", value)
    with pytest.raises(RawDataError, match=r"line 5 \(data row 3\), column 'median_ms'.*finite"):
        read_latency(LATENCY, device="h100-sxm")


def test_empty_timing_needs_a_note(repo):
    edit_csv(LATENCY, 3, "median_ms", "")
    with pytest.raises(RawDataError, match=r"line 5 .*'median_ms': empty timing without a note"):
        read_latency(LATENCY, device="h100-sxm")
    edit_csv(LATENCY, 3, "note", "megablocks not installed")
    edit_csv(LATENCY, 3, "p20_ms", "")
    edit_csv(LATENCY, 3, "p80_ms", "")
    assert pd.isna(read_latency(LATENCY, device="h100-sxm")["median_ms"][3])


def test_quantiles_out_of_order_stop(repo):
    edit_csv(LATENCY, 2, "p20_ms", "99")
    with pytest.raises(RawDataError, match=r"line 4 .*p20_ms <= median_ms <= p80_ms"):
        read_latency(LATENCY, device="h100-sxm")


def test_device_column_must_match_folder(repo):
    edit_csv(LATENCY, 4, "device", "h200")
    with pytest.raises(RawDataError, match=r"line 6 .*'device' = 'h200': expected 'h100-sxm'"):
        read_latency(LATENCY, device="h100-sxm")


def test_repeated_measurement_stops(repo):
    frame = pd.read_csv(LATENCY, dtype=str, keep_default_na=False)
    pd.concat([frame, frame.iloc[[0]]]).to_csv(LATENCY, index=False)
    with pytest.raises(RawDataError, match=rf"line {len(frame) + 2} .*repeats the measurement of data row 0"):
        read_latency(LATENCY, device="h100-sxm")


def test_traffic_stage_must_be_known(repo):
    edit_csv(TRAFFIC, 1, "stage", "gateup")
    with pytest.raises(RawDataError, match=r"traffic\.csv, line 3 .*'stage' = 'gateup': expected one of"):
        read_traffic(TRAFFIC, device="h100-sxm")


def test_device_folder_without_provenance_stops(repo):
    (repo / "results/raw/h100-sxm/provenance.json").unlink()
    with pytest.raises(RawDataError, match=r"h100-sxm/provenance\.json: missing"):
        device_folders("results/raw", DEVICES)
    with pytest.raises(RawDataError, match=r"provenance\.json: missing"):
        read_provenance("results/raw/h100-sxm")


def test_unknown_device_folder_stops(repo):
    (repo / "results/raw/tpu-v5").mkdir()
    with pytest.raises(RawDataError, match=r"unknown device folder 'tpu-v5'"):
        device_folders("results/raw", DEVICES)


def test_git_sha_unknown_to_repository_stops(repo):
    edit_csv(LATENCY, 5, "git_sha", "0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(RawDataError, match=r"line 7 .*'git_sha'.*not a commit of this repository"):
        read_latency(LATENCY, device="h100-sxm")


def test_git_sha_dirty_suffix_is_the_commit(repo):
    sha = read_latency(LATENCY)["git_sha"][0]
    edit_csv(LATENCY, 5, "git_sha", sha + "-dirty")
    assert read_latency(LATENCY)["git_sha"][5] == sha + "-dirty"
    edit_csv(LATENCY, 5, "git_sha", "f" * 40 + "-dirty")
    with pytest.raises(RawDataError, match="not a commit"):
        read_latency(LATENCY)


def test_provenance_git_sha_checked(repo):
    path = repo / "results/raw/h100-sxm/provenance.json"
    prov = json.loads(path.read_text())
    path.write_text(json.dumps({**prov, "git_sha": "f" * 40}))
    with pytest.raises(RawDataError, match=r"provenance\.json, key 'git_sha'.*not a commit"):
        read_provenance("results/raw/h100-sxm")


def test_not_a_repository_stops(tmp_path, monkeypatch):
    install_raw(tmp_path / "results" / "raw", "a" * 40)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RawDataError, match="not a git repository"):
        read_latency(LATENCY, repo=str(tmp_path))
    assert len(read_latency(LATENCY, repo=None))  # check_git_sha: false skips it


# --- atomic writes -------------------------------------------------------------------------------

def test_failed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "latency.csv"
    path.write_text("old contents\n")
    with pytest.raises(RuntimeError):
        with atomic.atomic_write(path) as f:
            f.write("half of the new")
            raise RuntimeError("measurement failed")
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["latency.csv"]  # no temporary left behind


def test_killed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "latency.csv"
    path.write_text("old contents\n")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from experiments.analysis.atomic import atomic_write
        with atomic_write({str(path)!r}) as f:
            f.write("half of the new"); f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert path.read_text() == "old contents\n"


def test_atomic_helpers_write_and_keep_mode(tmp_path):
    path = tmp_path / "sub" / "provenance.json"
    atomic.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and oct(path.stat().st_mode & 0o777) == "0o644"
    atomic.write_csv(tmp_path / "t.csv", pd.DataFrame({"x": [1, 2]}))
    assert (tmp_path / "t.csv").read_text() == "x\n1\n2\n"
    with pytest.raises(ValueError, match="mode"):
        with atomic.atomic_write(path, "a"):
            pass


# --- every number traces to raw rows -------------------------------------------------------------

def traced_tex(repo: Path) -> Path:
    """A generated .tex with a speed-up and a latency traced to the fixture rows."""
    rows = load_rows(LATENCY)
    pair = rows[(rows["model"] == "mixtral-8x7b") & (rows["tokens"] == 512) & (rows["graph"] == 0)
                & rows["impl"].isin(["tritonmoe_fused", "megablocks_grouped"])]
    tr = Tracer("experiments/analysis/tab_headline.py")
    (repo / "experiments/analysis").mkdir(parents=True)
    (repo / "experiments/analysis/tab_headline.py").write_text("")
    speedup = tr.number("speedup", "speedup", pair, "ratio", impl="tritonmoe_fused", baseline="megablocks_grouped")
    median = tr.number("median", "cell", pair[pair["impl"] == "tritonmoe_fused"], "sig3", column="median_ms")
    tex = repo / "generated" / "t.tex"
    tr.write(tex, f"\\newcommand{{\\X}}{{speed-up {speedup} at {median} ms}}\n")
    return tex


def test_traced_values_recompute(repo):
    tex = traced_tex(repo)
    assert check_generated(tex, repo, Recomputer(".")) == []
    assert "\\tv{speedup}{1.05}" in tex.read_text()


def test_typed_number_is_caught(repo):
    tex = traced_tex(repo)
    tex.write_text(tex.read_text().replace("speed-up", "speed-up of about 1.3, exactly"))
    problems = check_generated(tex, repo, Recomputer("."))
    assert len(problems) == 1 and "number outside \\tv" in problems[0] and "t.tex:2" in problems[0]


def test_edited_value_is_caught(repo):
    tex = traced_tex(repo)
    tex.write_text(tex.read_text().replace("\\tv{speedup}{1.05}", "\\tv{speedup}{1.50}"))
    problems = check_generated(tex, repo, Recomputer("."))
    assert any("differs from the recorded '1.05'" in p for p in problems)


def test_value_not_matching_its_rows_is_caught(repo):
    tex = traced_tex(repo)
    frame = pd.read_csv(LATENCY, dtype=str, keep_default_na=False)
    row = frame.index[(frame["model"] == "mixtral-8x7b") & (frame["tokens"] == "512") & (frame["graph"] == "0")
                      & (frame["impl"] == "megablocks_grouped")][0]
    for column in ("p20_ms", "median_ms", "p80_ms"):  # Megablocks twice as slow as when the tex was written
        edit_csv(LATENCY, row, column, str(2 * float(frame.loc[row, column])))
    problems = check_generated(tex, repo, Recomputer("."))
    assert any("speedup: recorded '1.05'" in p and "sources give" in p for p in problems), problems


def test_untraced_id_and_missing_sidecar_are_caught(repo):
    tex = traced_tex(repo)
    tex.write_text(tex.read_text() + "\\tv{invented}{42}\n")
    assert any("\\tv{invented} has no entry" in p for p in check_generated(tex, repo, Recomputer(".")))
    (tex.parent / "t.trace.json").unlink()
    assert "no t.trace.json" in check_generated(tex, repo, Recomputer("."))[0]


def test_constant_derivation_is_rejected(repo):
    tex = traced_tex(repo)
    sidecar = tex.parent / "t.trace.json"
    record = json.loads(sidecar.read_text())
    record["entries"][0]["fn"] = "the_answer"  # not a function of derive.py
    sidecar.write_text(json.dumps(record))
    assert any("is not a derivation" in p for p in check_generated(tex, repo, Recomputer(".")))


def test_typed_number_in_handwritten_prose_is_caught(tmp_path):
    tex = tmp_path / "results.tex"
    tex.write_text("\\documentclass[11pt]{article}\n\\begin{document}\nOn Mixtral-8x7B with \\impl{tritonmoe\\_w13}, "
                   "$W_2$ and \\ref{fig:3} in bf16,\nthe fused kernel is 1.3 times faster.\n\\end{document}\n")
    allowed = ["Mixtral-8x7B", "bf16", "tritonmoe_w13"]
    problems = check_prose(tex, allowed)
    assert len(problems) == 2 and all(":4:" in p for p in problems)  # the 1 and the 3 of 1.3, nothing else


# --- heldout.csv (experiments/bench/heldout.py) and its derivations ------------------------------------------------

HELDOUT = Path("results/raw/h100-sxm/heldout.csv")


def _write_heldout(sha: str) -> None:
    """Two held-out points of one shape (borrowed, default, the peer) and one leave-one-out point."""
    rows = []
    for tokens, (borrowed, default, peer) in ((1, (0.10, 0.12, 0.20)), (64, (0.50, 0.40, 0.45))):
        for impl, config, ms in (("tritonmoe_fused", "borrowed", borrowed), ("tritonmoe_fused", "default", default),
                                 ("torch_grouped_mm", "", peer)):
            rows.append({"device": "h100-sxm", "set": "heldout", "model": "dbrx", "experts": 16, "hidden": 6144,
                         "ffn": 10752, "top_k": 4, "dtype": "bf16", "routing": "uniform", "tokens": tokens,
                         "impl": impl, "config": config,
                         # the second point's source as the skew guard marks it (a '/' after the '@')
                         "config_source": ("borrowed:h100-sxm/E8_H6144_F16384_bfloat16.json@8"
                                           + ("+tails:128/64" if tokens == 64 else "")) if config == "borrowed"
                         else "default" if config else "", "graph": 1, "median_ms": ms, "p20_ms": ms * 0.99,
                         "p80_ms": ms * 1.01, "floor_ms": 0.09, "rel_err": 3e-3, "git_sha": sha,
                         "timestamp": "2026-11-27T11:00:00+00:00", "note": ""})
    for config, ms in (("own", 1.0), ("borrowed", 1.25), ("default", 2.0)):
        rows.append({**rows[0], "set": "loo", "model": "mixtral-8x7b", "config": config, "median_ms": ms,
                     "p20_ms": ms, "p80_ms": ms, "config_source": "x" if config != "borrowed"
                     else "borrowed:h100-sxm/E8_H6144_F16384_bfloat16.json@2"})
    pd.DataFrame(rows).to_csv(HELDOUT, index=False)


def test_heldout_reads_typed_with_variants(repo):
    from experiments.analysis.raw import read_heldout
    sha = read_latency(LATENCY, device="h100-sxm")["git_sha"].iloc[0]
    _write_heldout(sha)
    rows = read_heldout(HELDOUT, device="h100-sxm")
    assert list(rows["variant"][:3]) == ["borrowed", "default", "torch_grouped_mm"]
    edit_csv(HELDOUT, 1, "config", "tuned")
    with pytest.raises(RawDataError, match=r"heldout\.csv, line 3 .*'config' = 'tuned': expected one of own"):
        read_heldout(HELDOUT, device="h100-sxm")
    _write_heldout(sha)
    frame = pd.read_csv(HELDOUT, dtype=str, keep_default_na=False)
    pd.concat([frame, frame.iloc[[2]]]).to_csv(HELDOUT, index=False)  # the peer's row again
    with pytest.raises(RawDataError, match=r"repeats the measurement of data row 2"):
        read_heldout(HELDOUT, device="h100-sxm")


def test_heldout_derivations(repo):
    from experiments.analysis.derive import DERIVATIONS as D
    sha = read_latency(LATENCY, device="h100-sxm")["git_sha"].iloc[0]
    _write_heldout(sha)
    rows = load_rows(HELDOUT)
    held = rows[rows["set"] == "heldout"]
    # borrowed over default: 0.12/0.10 = 1.2 and 0.40/0.50 = 0.8; over the peer: 2.0 and 0.9.
    assert D["variant_speedup"](held, variant="borrowed", baseline="default", stat="geomean") == \
        pytest.approx((1.2 * 0.8) ** 0.5)
    assert D["variant_speedup"](held, variant="borrowed", baseline="torch_grouped_mm", stat="min") == pytest.approx(0.9)
    assert D["variant_slower_count"](held, variant="borrowed", baseline="torch_grouped_mm") == 1
    assert D["variant_points"](held, variant="borrowed", baseline="default") == 2
    assert D["floor_fraction_extreme"](held[held["variant"] == "borrowed"], extreme="min") == pytest.approx(0.18)
    assert D["borrowed_shape"](held) == "E8_H6144_F16384"
    loo = rows[rows["set"] == "loo"]
    assert D["variant_speedup"](loo, variant="own", baseline="borrowed", stat="max") == pytest.approx(1.25)
    with pytest.raises(ValueError, match="expected rows of 'own'"):
        D["variant_speedup"](held, variant="own", baseline="default", stat="geomean")


def test_heldout_tables_trace_to_their_rows(repo):
    """`tab_heldout.py` on the rows above: every number of the tables and the summary recomputes from them, and a
    device without a heldout.csv gets the sentence saying so."""
    import shutil

    from experiments.analysis import tab_heldout
    sha = read_latency(LATENCY, device="h100-sxm")["git_sha"].iloc[0]
    _write_heldout(sha)
    for name in ("config/config.yaml", "config/heldout_models.yaml", "experiments/analysis/tab_heldout.py"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    tex = repo / "generated" / "heldout.tex"
    assert tab_heldout.main(["--heldout", str(HELDOUT), "--out", str(tex)]) == 0
    text = tex.read_text()
    assert check_generated(tex, repo, Recomputer(".")) == []
    assert "\\tv{heldout.h100-sxm.dbrx.over_peer.min}{0.90}" in text
    assert "\\tv{loo.h100-sxm.mixtral-8x7b.over_borrowed.geomean}{1.25}" in text
    assert tab_heldout.main(["--out", str(tex)]) == 0
    assert "No device folder under results/raw/ holds a heldout.csv" in tex.read_text()
