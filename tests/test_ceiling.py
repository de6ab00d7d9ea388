"""The dense reference (results/raw/<device>/ceiling.csv): its reader stops on bad rows, naming where; the
derivations compute what they say; the table's every value recomputes from the rows (check_tracing)."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "experiments" / "bench"))

from experiments.analysis import tab_ceiling  # noqa: E402
from experiments.analysis.check_tracing import Recomputer, check_generated  # noqa: E402
from experiments.analysis.derive import dense_floor_fraction, dense_ms, over_dense  # noqa: E402
from experiments.analysis.raw import RawDataError, read_ceiling  # noqa: E402
from experiments.analysis.sources import load_rows  # noqa: E402
from fixtures.raw_fixtures import install_raw, make_repo  # noqa: E402

CEILING = Path("results/raw/h100-sxm/ceiling.csv")
LATENCY = Path("results/raw/h100-sxm/latency.csv")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    sha = make_repo(tmp_path)
    install_raw(tmp_path / "results" / "raw", sha)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edit(row: int, column: str, value: str) -> None:
    frame = pd.read_csv(CEILING, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(CEILING, index=False)


def test_fixture_reads(repo):
    rows = read_ceiling(CEILING, device="h100-sxm")
    assert set(rows["stage"]) == {"gate_up", "down"} and rows["median_ms"].dtype.kind == "f"
    assert len(load_rows(CEILING)) == len(rows)  # the pipeline's loader picks the reader by the file's name


@pytest.mark.parametrize("column,value,expected", [
    ("stage", "combine", "expected one of gate_up, down"),
    ("median_ms", "0", "expected a positive"),
    ("p20_ms", "9", "expected p20_ms <= median_ms <= p80_ms"),
    ("rows_per_expert", "-3", "rows_per_expert"),
    ("device", "h200", "expected 'h100-sxm'"),
])
def test_bad_row_stops_naming_line(repo, column, value, expected):
    edit(1, column, value)
    with pytest.raises(RawDataError) as e:
        read_ceiling(CEILING, device="h100-sxm")
    assert "line 3" in str(e.value) and expected in str(e.value)


def test_repeated_product_stops(repo):
    frame = pd.read_csv(CEILING, dtype=str, keep_default_na=False)
    pd.concat([frame, frame.iloc[[0]]]).to_csv(CEILING, index=False)
    with pytest.raises(RawDataError, match="repeats the measurement"):
        read_ceiling(CEILING, device="h100-sxm")


def frame(rows):
    out = pd.DataFrame(rows)
    out["source_file"], out["source_row"] = "x.csv", range(len(out))
    return out


def test_derivations():
    pair = [{"impl": "cublas_bmm", "stage": "gate_up", "median_ms": 2.0},
            {"impl": "cublas_bmm", "stage": "down", "median_ms": 1.0}]
    layer = {"impl": "tritonmoe_fused", "stage": None, "median_ms": 4.0, "floor_ms": 1.5}
    assert dense_ms(frame(pair), dense="cublas_bmm") == 3.0
    assert dense_floor_fraction(frame(pair + [layer]), dense="cublas_bmm", impl="tritonmoe_fused") == 0.5
    assert over_dense(frame(pair + [layer]), dense="cublas_bmm", impl="tritonmoe_fused") == 0.75
    with pytest.raises(ValueError, match="one gate_up and one down"):
        dense_ms(frame(pair[:1]), dense="cublas_bmm")
    with pytest.raises(ValueError, match="exactly one row"):
        over_dense(frame(pair), dense="cublas_bmm", impl="tritonmoe_fused")


def test_table_traces_to_rows(repo):
    (repo / "experiments/analysis").mkdir(parents=True)
    (repo / tab_ceiling.SCRIPT).write_text("")
    (repo / "config").mkdir()
    (repo / "config/config.yaml").write_text((ROOT / "config/config.yaml").read_text())
    out = repo / "generated" / "ceiling.tex"
    assert tab_ceiling.main(["--latency", str(LATENCY), "--ceiling", str(CEILING),
                             "--settings", str(repo / "config/config.yaml"), "--out", str(out)]) == 0
    text = out.read_text()
    # Fixture: dense = 0.8 of the fused graph time; floor = 0.7 of it.
    assert "\\tv{over_dense.h100-sxm.mixtral-8x7b.512}{0.80}" in text
    assert "\\tv{dense_floor.h100-sxm.mixtral-8x7b.512}{87}" in text  # 0.7 / 0.8 = 0.875, just under in binary
    assert text.count("\\\\") == 2 + 4  # two header lines, then one row per model and token count
    assert check_generated(out, repo, Recomputer(".")) == []
    # A ceiling row edited after the table was written is caught.
    edit(0, "median_ms", "9"), edit(0, "p80_ms", "10")
    assert any("dense" in p for p in check_generated(out, repo, Recomputer(".")))


def test_no_ceiling_says_so(repo):
    out = repo / "generated" / "ceiling.tex"
    assert tab_ceiling.main(["--latency", str(LATENCY), "--settings", str(ROOT / "config/config.yaml"),
                             "--out", str(out)]) == 0
    assert "No dense reference measured" in out.read_text()


def test_merge_replaces_same_key(tmp_path):
    import ceiling
    row = {"device": "h100-sxm", "model": "m", "dtype": "bf16", "tokens": 512, "stage": "down", "impl": "cublas_bmm",
           "rows_per_expert": 4, "median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1, "git_sha": "abc1234",
           "timestamp": "2026-11-26T10:00:00+00:00"}
    path = tmp_path / "ceiling.csv"
    ceiling.merge(path, [row, {**row, "tokens": 1024}]).to_csv(path, index=False)
    merged = ceiling.merge(path, [{**row, "median_ms": 2.0}])
    # The file's rows come back as written (text), the new row as measured; the rerun at 512 replaced the old one.
    assert len(merged) == 2 and sorted(float(v) for v in merged["median_ms"]) == [1.0, 2.0]
    assert [int(t) for t in merged["tokens"]] == [512, 1024]


def test_drawn_products_per_expert():
    """The drawn-rows reference: one product per expert with rows, of that expert's rows and weights; bad counts are
    refused by name (runs on the CPU: torch.mm)."""
    import ceiling
    E, H, Fd, counts = 3, 16, 8, [4, 0, 5]
    g = torch.Generator().manual_seed(0)
    w13, w2 = torch.randn((E, 2 * Fd, H), generator=g), torch.randn((E, H, Fd), generator=g)
    (s1, r1, gate_up), (s2, r2, down) = ceiling.drawn_products(counts, w13, w2, torch.Generator().manual_seed(1))
    assert (s1, r1, s2, r2) == ("gate_up", 5, "down", 5)
    ys, zs = gate_up(), down()
    assert [tuple(y.shape) for y in ys] == [(4, 2 * Fd), (5, 2 * Fd)]
    assert [tuple(z.shape) for z in zs] == [(4, H), (5, H)]
    # expert 2's operand is the second drawn after expert 0's: rebuild both from the same seed and check the product
    g1 = torch.Generator().manual_seed(1)
    a0, a2 = torch.randn((4, H), generator=g1), torch.randn((5, H), generator=g1)
    torch.testing.assert_close(ys[1], (a2.double() @ w13[2].double().T).float())  # float32 tolerances
    for bad in ([1, 2], [1, -1, 2], [0, 0, 0]):
        with pytest.raises(ValueError, match="counts"):
            ceiling.drawn_products(bad, w13, w2, torch.Generator())


def test_table_drawn_column(repo):
    """Drawn-rows rows at one point fill that point's drawn column (traced to them); other points get a dash."""
    (repo / "experiments/analysis").mkdir(parents=True)
    (repo / tab_ceiling.SCRIPT).write_text("")
    (repo / "config").mkdir()
    (repo / "config/config.yaml").write_text((ROOT / "config/config.yaml").read_text())
    frame = pd.read_csv(CEILING, dtype=str, keep_default_na=False)
    point = frame[(frame["model"] == "mixtral-8x7b") & (frame["tokens"] == "512")]
    assert len(point) == 2
    drawn = point.assign(impl=tab_ceiling.DRAWN, rows_per_expert="140",
                         median_ms=[f"{1.25 * float(v):.6g}" for v in point["median_ms"]],
                         p20_ms=[f"{1.2 * float(v):.6g}" for v in point["median_ms"]],
                         p80_ms=[f"{1.3 * float(v):.6g}" for v in point["median_ms"]])
    pd.concat([frame, drawn]).to_csv(CEILING, index=False)
    out = repo / "generated" / "ceiling.tex"
    assert tab_ceiling.main(["--latency", str(LATENCY), "--ceiling", str(CEILING),
                             "--settings", str(repo / "config/config.yaml"), "--out", str(out)]) == 0
    text = out.read_text()
    # floor = 0.7 of the fused time, dense = 0.8 of it, drawn = 1.25 x dense: 0.7 / 1.0 = 70%
    assert "\\tv{drawn_floor.h100-sxm.mixtral-8x7b.512}{70}" in text
    assert "drawn_floor.h100-sxm.mixtral-8x7b.4096" not in text and "--" in text
    assert "\\tv{over_dense.h100-sxm.mixtral-8x7b.512}{0.80}" in text  # the dense reference's columns unchanged
    assert check_generated(out, repo, Recomputer(".")) == []
