"""The traffic table (experiments/analysis/tab_traffic.py) and its derivations, on the synthetic ncu
rows of tests/fixtures/raw/h100-sxm/traffic.csv and a hand-made traffic-model CSV: the token count
at which the saving reaches the claimed share (or "never"), ncu against the model and the floor
(checked against experiments/traffic/compare.py), the listed differences whose parts add up, and
every printed number recomputed by check_tracing (a changed raw byte is caught)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.analysis import check_tracing, raw, tab_traffic  # noqa: E402
from experiments.analysis.derive import DERIVATIONS  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "raw" / "h100-sxm" / "traffic.csv"
EXTENSIONS = ("logical_read_bytes", "logical_write_bytes", "unique_read_bytes", "unique_write_bytes",
              "padding_bytes", "fewest_bytes", "model_weight_read_bytes")
TOKENS = (1, 64, 512, 1024, 8192)
# mixtral-8x7b: the fused impl saves 0.2, 0.3, 0.35, 0.4, 0.4 of the unfused bytes (weights counted);
# deepseek-v3: 0.1 at every count. Activations only (less 600 weight bytes): mixtral-8x7b saves 0.5
# and more at every count, deepseek-v3 0.25.
SAVED = {"mixtral-8x7b": (0.2, 0.3, 0.35, 0.4, 0.4), "deepseek-v3": (0.1,) * 5}


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the scripts read config/ relative to the repository


def model_csv(path: Path) -> Path:
    rows = []
    for model, saved in SAVED.items():
        for tokens, share in zip(TOKENS, saved):
            for impl, moved in (("tritonmoe_unfused", 1000), ("tritonmoe_fused", round(1000 * (1 - share)))):
                rows.append({"model": model, "dtype": "bf16", "tokens": tokens, "impl": impl, "stage": "total",
                             "model_read_bytes": moved - 100, "model_write_bytes": 100, "weight_read_bytes": 600})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def ncu_csv(path: Path, *, scale_read: dict | None = None, extensions: bool = False) -> Path:
    """The fixture's ncu rows; `scale_read[(tokens, impl)]` multiplies that total's DRAM reads;
    `extensions`: add the measuring script's extension columns (unique = model, logical = 4x unique
    reads, fewest = 0.8 x the model's total, weights = 0.9 x the model's reads)."""
    frame = pd.read_csv(FIXTURE)
    for (tokens, impl), factor in (scale_read or {}).items():
        at = (frame["tokens"] == tokens) & (frame["impl"] == impl) & (frame["stage"] == "total")
        assert at.sum() == 1, (tokens, impl)
        frame.loc[at, "dram_read_bytes"] = (frame.loc[at, "dram_read_bytes"] * factor).round().astype("int64")
    if extensions:
        frame["unique_read_bytes"], frame["unique_write_bytes"] = frame["model_read_bytes"], frame["model_write_bytes"]
        frame["logical_read_bytes"], frame["logical_write_bytes"] = 4 * frame["model_read_bytes"], frame["model_write_bytes"]
        frame["padding_bytes"] = 0
        frame["fewest_bytes"] = (0.8 * (frame["model_read_bytes"] + frame["model_write_bytes"])).astype("int64")
        frame["model_weight_read_bytes"] = (0.9 * frame["model_read_bytes"]).astype("int64")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def with_extensions(monkeypatch):
    """Keep the extension columns when loading traffic.csv (whatever schema.TRAFFIC_OPTIONAL holds)."""
    monkeypatch.setattr(raw, "TRAFFIC_OPTIONAL", {**raw.TRAFFIC_OPTIONAL, **{c: "bytes" for c in EXTENSIONS}})


def build(tmp_path: Path, ncu: Path) -> tuple[str, dict]:
    out = tmp_path / "generated" / "traffic.tex"
    assert tab_traffic.main(["--model", str(model_csv(tmp_path / "data" / "traffic_model.csv")),
                             "--ncu", str(ncu), "--out", str(out)]) == 0
    entries = {e["id"]: e for e in json.loads(out.with_name("traffic.trace.json").read_text())["entries"]}
    return out.read_text(), entries


def problems(tmp_path: Path) -> list[str]:
    return check_tracing.check_generated(tmp_path / "generated" / "traffic.tex", ROOT / "paper",
                                         check_tracing.Recomputer(None))


# --- derivations ----------------------------------------------------------------------------------

def test_tokens_reaching_saved_first_count_or_zero(tmp_path):
    rows = pd.read_csv(model_csv(tmp_path / "m.csv"))
    reach = DERIVATIONS["tokens_reaching_saved"]
    mixtral, deepseek = rows[rows["model"] == "mixtral-8x7b"], rows[rows["model"] == "deepseek-v3"]
    common = dict(impl="tritonmoe_fused", baseline="tritonmoe_unfused", counter="model")
    assert reach(mixtral, share=0.35, **common) == 512
    assert reach(mixtral, share=0.25, **common) == 64
    assert reach(deepseek, share=0.35, **common) == 0
    assert reach(deepseek, share=0.35, weights="weight_read_bytes", **common) == 0
    assert reach(deepseek, share=0.25, weights="weight_read_bytes", **common) == 1
    with pytest.raises(ValueError, match="tritonmoe_w13"):
        reach(mixtral, impl="tritonmoe_w13", baseline="tritonmoe_unfused", counter="model", share=0.35)


def one_total(**values) -> pd.DataFrame:
    base = {"stage": "total", "dram_read_bytes": 1300, "dram_write_bytes": 150, "model_read_bytes": 1000,
            "model_write_bytes": 200, "model_weight_read_bytes": 800, "fewest_bytes": 500,
            "unique_read_bytes": 1000, "logical_read_bytes": 4000}
    return pd.DataFrame([{**base, **values}])


def test_ncu_against_model_and_floor():
    row = one_total()
    assert DERIVATIONS["dram_over_model"](row, extreme="max") == pytest.approx(1450 / 1200)
    assert DERIVATIONS["dram_over_fewest"](row) == pytest.approx(1450 / 500)
    assert DERIVATIONS["weight_read_factor"](row) == pytest.approx((800 + 300) / 800)
    assert DERIVATIONS["weight_read_factor"](one_total(dram_read_bytes=900)) == 1  # fewer reads: no re-reads
    assert DERIVATIONS["reread_share"](row) == pytest.approx(300 / 3000)
    parts = {p: DERIVATIONS["megabytes_beyond_model"](row, part=p) for p in ("total", "read", "write")}
    assert parts == pytest.approx({"total": 250e-6, "read": 300e-6, "write": 50e-6})
    assert parts["total"] == pytest.approx(parts["read"] - parts["write"])
    with pytest.raises(ValueError, match="part"):
        DERIVATIONS["megabytes_beyond_model"](row, part="padding")
    with pytest.raises(ValueError, match="exactly one row"):
        DERIVATIONS["dram_over_fewest"](pd.concat([row, row]))


def test_derivations_match_compare(tmp_path):
    """The table's numbers are those of experiments/traffic/compare.py on the same rows."""
    from experiments.traffic.compare import excess_over_fewest, load_traffic, model_vs_measured

    frame = load_traffic(ncu_csv(tmp_path / "h100-sxm" / "traffic.csv", scale_read={(512, "tritonmoe_fused"): 1.5},
                                 extensions=True))
    totals = frame[frame["stage"] == "total"].reset_index(drop=True)
    excess = excess_over_fewest(frame)
    compared = model_vs_measured(totals)
    for i in range(len(totals)):
        one = totals.iloc[[i]]
        assert DERIVATIONS["dram_over_fewest"](one) == pytest.approx(excess["over_fewest"][i])
        assert DERIVATIONS["weight_read_factor"](one) == pytest.approx(excess["weight_read_factor"][i])
        assert DERIVATIONS["dram_over_model"](one, extreme="max") == pytest.approx(compared["ratio"][i])
        assert DERIVATIONS["megabytes_beyond_model"](one, part="read") * 1e6 == pytest.approx(
            compared["rereads_reached_dram"][i])
        assert DERIVATIONS["reread_share"](one) == pytest.approx(
            compared["rereads_reached_dram"][i] / compared["rereads_possible"][i])


# --- the generated table --------------------------------------------------------------------------

def test_table_answers_and_traces(tmp_path):
    text, entries = build(tmp_path, ncu_csv(tmp_path / "raw" / "h100-sxm" / "traffic.csv"))
    assert r"\newcommand{\TrafficTable}" in text and r"\newcommand{\TrafficDifferences}" in text
    # (a) the model: mixtral-8x7b reaches the claimed 35% at 512 tokens, deepseek-v3 never (at most 10%).
    assert entries["claim.share"]["text"] == "35"
    assert entries["reach.weights.mixtral-8x7b"]["value"] == 512
    assert entries["reach.activations.mixtral-8x7b"]["value"] == 1
    assert r"never up to \tv{reach_tokens.deepseek-v3}{8192}\\(at most \tv{reach_best.weights.deepseek-v3}{10}" in text
    # (b) ncu at the claim's 512 tokens: 1 - fused / unfused of the fixture's totals.
    fixture = pd.read_csv(FIXTURE)
    total = fixture[(fixture["stage"] == "total") & (fixture["tokens"] == 512)].set_index("impl")
    moved = total["dram_read_bytes"] + total["dram_write_bytes"]
    assert entries["saved.weights.h100-sxm.mixtral-8x7b"]["value"] == pytest.approx(
        1 - moved["tritonmoe_fused"] / moved["tritonmoe_unfused"])
    # No weight split or floor in the fixture: those cells say so instead of guessing.
    assert "saved.activations.h100-sxm.mixtral-8x7b" not in entries
    assert not [i for i in entries if i.startswith("fewest.")]
    # (c) the fixture's ncu reads are 1.01x the model's: within a tenth, so no differences table.
    assert 1 < entries["agree_max.h100-sxm.mixtral-8x7b"]["value"] < 1.01
    assert "within a tenth" in text and not [i for i in entries if i.startswith("diff_")]
    assert problems(tmp_path) == []


def test_differences_are_listed_and_split(tmp_path, monkeypatch):
    with_extensions(monkeypatch)
    ncu = ncu_csv(tmp_path / "raw" / "h100-sxm" / "traffic.csv", scale_read={(512, "tritonmoe_fused"): 1.5},
                  extensions=True)
    text, entries = build(tmp_path, ncu)
    key = "h100-sxm.mixtral-8x7b.512.tritonmoe_fused"
    listed = {i.split(".", 1)[1] for i in entries if i.startswith("diff_ratio.")}
    assert listed == {key}, listed  # only the scaled total; the others stay within a tenth
    assert entries[f"diff_ratio.{key}"]["value"] > 1.1
    total, read, write = (entries[f"diff_{p}.{key}"]["value"] for p in ("total", "read", "write"))
    assert total == pytest.approx(read - write)
    assert entries[f"diff_reread_share.{key}"]["value"] == pytest.approx(read * 1e6 / (3 * _model_read(key)))
    # (d) with the floor's fewest bytes: 0.8 x the model's total, so the ratio is ncu / model / 0.8.
    for impl, read_factor in (("tritonmoe_fused", 1.5), ("tritonmoe_unfused", 1.0)):
        assert entries[f"fewest.{impl}.h100-sxm.mixtral-8x7b"]["value"] == pytest.approx(
            _dram_over_model(impl, 512, read_factor) / 0.8, rel=1e-6)
    assert "fewest.tritonmoe_w13.h100-sxm.mixtral-8x7b" not in entries  # not in the fixture: "--"
    assert entries["largest_tokens.h100-sxm"]["value"] == 512
    assert problems(tmp_path) == []


def _model_read(key: str) -> int:
    _, model, tokens, impl = key.split(".")
    f = pd.read_csv(FIXTURE)
    at = (f["model"] == model) & (f["tokens"] == int(tokens)) & (f["impl"] == impl) & (f["stage"] == "total")
    return int(f.loc[at, "model_read_bytes"].iloc[0])


def _dram_over_model(impl: str, tokens: int, read_factor: float = 1.0) -> float:
    f = pd.read_csv(FIXTURE)
    r = f[(f["impl"] == impl) & (f["tokens"] == tokens) & (f["stage"] == "total")].iloc[0]
    return (r["dram_read_bytes"] * read_factor + r["dram_write_bytes"]) / (r["model_read_bytes"] + r["model_write_bytes"])


def test_a_changed_raw_byte_is_caught(tmp_path):
    ncu = ncu_csv(tmp_path / "raw" / "h100-sxm" / "traffic.csv")
    build(tmp_path, ncu)
    assert problems(tmp_path) == []
    frame = pd.read_csv(ncu)
    at = (frame["tokens"] == 512) & (frame["impl"] == "tritonmoe_fused") & (frame["stage"] == "total")
    frame.loc[at, "dram_read_bytes"] = frame.loc[at, "dram_read_bytes"] // 2
    frame.to_csv(ncu, index=False)
    found = problems(tmp_path)
    assert any("saved.weights.h100-sxm.mixtral-8x7b" in p for p in found), found


def test_without_ncu_rows_the_table_keeps_the_model(tmp_path):
    out = tmp_path / "generated" / "traffic.tex"
    assert tab_traffic.main(["--model", str(model_csv(tmp_path / "data" / "traffic_model.csv")),
                             "--out", str(out)]) == 0
    text = out.read_text()
    assert "reach.weights.mixtral-8x7b" in text and "ncu: saved" not in text
    assert "No device has ncu traffic rows" in text
    assert problems(tmp_path) == []
