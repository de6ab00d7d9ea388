"""Launch configurations: the defaults fit the GPU's shared memory for every dtype; tuned tables are found."""
import pytest

from tritonmoe.config import SMEM_BUDGET, default_config, fit_shared_memory


def _staged_bytes(cfg, stage, b_tiles, elem_bytes):
    c = cfg[stage]
    bn = c.get("BLOCK_N", c.get("BLOCK_F"))
    return c.get("num_stages", 2) * c["BLOCK_K"] * (cfg["BLOCK_M"] + b_tiles * bn) * elem_bytes


@pytest.mark.parametrize("elem_bytes", [2, 4])
@pytest.mark.parametrize("backend", ["cuda", "hip"])
@pytest.mark.parametrize("num_routed", [1, 16, 400, 4096, 65536])
def test_default_config_fits_shared_memory(backend, num_routed, elem_bytes):
    cfg = default_config(backend, num_routed, 64, 4096, 14336, elem_bytes)
    assert _staged_bytes(cfg, "gate_up", 2, elem_bytes) <= SMEM_BUDGET
    assert _staged_bytes(cfg, "down", 1, elem_bytes) <= SMEM_BUDGET


def test_fit_shared_memory_shrinks_only_what_does_not_fit():
    big = {"BLOCK_M": 128, "gate_up": {"BLOCK_N": 128, "BLOCK_K": 128, "num_stages": 4},
           "down": {"BLOCK_N": 16, "BLOCK_K": 64, "num_stages": 3}}
    out = fit_shared_memory(big, 4)
    assert _staged_bytes(out, "gate_up", 2, 4) <= SMEM_BUDGET
    assert out["gate_up"]["BLOCK_K"] < 128
    assert out["down"] == big["down"]


def test_fit_shared_memory_counts_the_persistent_output_tile():
    """The persistent gate/up stages its [BLOCK_M, BLOCK_N] output for the descriptor store: in fp32 the ridge tile
    (4 x 64 x (128 + 256) x 4 B = 384 KB of stages) needs fewer stages than without that tile."""
    gu = {"BLOCK_N": 128, "BLOCK_K": 64, "num_stages": 4, "DESC": True}
    plain = fit_shared_memory({"BLOCK_M": 128, "gate_up": gu, "down": {"BLOCK_N": 64, "BLOCK_K": 64}}, 4)["gate_up"]
    pers = fit_shared_memory({"BLOCK_M": 128, "gate_up": {**gu, "PERSISTENT": True},
                              "down": {"BLOCK_N": 64, "BLOCK_K": 64}}, 4)["gate_up"]
    staged = lambda c: c["num_stages"] * c["BLOCK_K"] * (128 + 256) * 4  # noqa: E731
    assert staged(plain) <= SMEM_BUDGET and staged(pers) + 128 * 128 * 4 <= SMEM_BUDGET
    assert staged(pers) < staged(plain)


def test_persistent_programs_without_a_device():
    """The persistent gate/up launches one program per SM, at most one per tile; without a device (the interpreter, the
    AOT build's meta tensors) a fixed few, so the tile loop is still walked."""
    import torch
    from tritonmoe.gate_up import INTERPRETER_PROGRAMS, persistent_programs
    for dev in ("cpu", "meta"):
        assert persistent_programs(torch.device(dev), 1000) == INTERPRETER_PROGRAMS
        assert persistent_programs(torch.device(dev), 2) == 2
        assert persistent_programs(torch.device(dev), 0) == 1


# --- configs borrowed by shapes without a table of their own (tritonmoe.tuned.borrow_slug) -------------------------

import json  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402

from tritonmoe import tuned  # noqa: E402
from tritonmoe.tuned import (CONFIG_DIR, borrow_slug, borrowed, load_distance, resolve_slug, shape_distance,  # noqa: E402
                             skew_guard, tuned_shapes)

from helpers import REL_TOL, make_layer, rel_err  # noqa: E402


def test_tuned_shapes_lists_every_table():
    files = sorted(p.name for p in (CONFIG_DIR / "h100-sxm").glob("*.json"))
    assert sorted(f"E{e}_H{h}_F{f}_{d}.json" for e, h, f, d in tuned_shapes("h100-sxm")) == files
    assert tuned_shapes("no-such-card") == ()


def test_a_tuned_shape_uses_its_own_table():
    cfg, src = resolve_slug("h100-sxm", torch.bfloat16, 2048, 8, 4096, 14336)
    assert src == "table:h100-sxm/E8_H4096_F14336_bfloat16.json"
    assert cfg == tuned.lookup_slug("h100-sxm", torch.bfloat16, 2048, 8, 4096, 14336)
    # fp16 is served by the bf16 table and says so.
    assert resolve_slug("h100-sxm", torch.float16, 2048, 8, 4096, 14336)[1] == src


def _nearest_by_hand(slug, num_routed, E, H, F, exclude=None):
    shapes = [(e, h, f) for e, h, f, d in tuned_shapes(slug) if d == "bfloat16" and (e, h, f) != exclude]
    # The distance written out: |log2| ratios of H and F, half that of E.
    dist = {s: abs(math.log2(H / s[1])) + abs(math.log2(F / s[2])) + 0.5 * abs(math.log2(E / s[0])) for s in shapes}
    e, h, f = min(shapes, key=lambda s: (dist[s], s))
    with open(CONFIG_DIR / slug / f"E{e}_H{h}_F{f}_bfloat16.json") as fh:
        table = {int(k): v for k, v in json.load(fh).items()}

    def rows(n, experts):  # rows per hit expert, and experts hit
        return n / min(n, experts), min(n, experts)
    r, g = rows(num_routed, E)
    bucket = min(table, key=lambda b: (abs(math.log2(r / rows(b, e)[0])) + 0.5 * abs(math.log2(g / rows(b, e)[1])), b))
    return (e, h, f), bucket, table[bucket]


def _guard_by_hand(cfg, num_routed, E, H, F, tokens):
    """The skew guard's rule written out: (BLOCK_M, TAIL_M) a borrowed config without tails runs at."""
    bm, tail = cfg["BLOCK_M"], cfg.get("TAIL_M", cfg["BLOCK_M"])
    if cfg.get("expert") or tail < bm:
        return bm, tail
    if bm < 64 and tokens >= 64:  # an expert can receive a 64-row block
        return 64, bm
    # an even load fills a block per expert, and an expert's bf16 weights are 128 MiB or more
    if bm >= 64 and num_routed / min(E, num_routed) >= bm and 3 * H * F * 2 >= 128 * 2 ** 20:
        return bm, bm // 2
    return bm, bm


@pytest.mark.parametrize("shape", [(16, 6144, 10752), (60, 2048, 1408), (32, 2880, 2880), (16, 5120, 8192),
                                   (128, 4096, 1536), (3, 96, 200), (192, 7168, 2048)])
@pytest.mark.parametrize("num_routed", [1, 6, 64, 1000, 16384])
@pytest.mark.parametrize("top_k", [1, 8])
def test_an_untuned_shape_borrows_the_nearest_tuned_shape(shape, num_routed, top_k):
    (e, h, f), bucket, cfg = _nearest_by_hand("h100-sxm", num_routed, *shape)
    tokens = max(1, num_routed // top_k)
    got, src = resolve_slug("h100-sxm", torch.bfloat16, num_routed, *shape, tokens)
    assert src.startswith(f"borrowed:h100-sxm/E{e}_H{h}_F{f}_bfloat16.json@{bucket}")
    bm, tail = _guard_by_hand(cfg, num_routed, *shape, tokens)
    assert (got["BLOCK_M"], got.get("TAIL_M", got["BLOCK_M"])) == (bm, tail)
    assert "SELECT_IN_GEMM" not in got  # decided for the table's own expert count, not borrowed
    cfg = {k: v for k, v in cfg.items() if k != "SELECT_IN_GEMM"}
    if (bm, tail) == (cfg["BLOCK_M"], cfg.get("TAIL_M", cfg["BLOCK_M"])):
        assert got == cfg and src == f"borrowed:h100-sxm/E{e}_H{h}_F{f}_bfloat16.json@{bucket}"
    else:  # the tiles stay the borrowed ones (BLOCK_K and stages only as the larger blocks' shared memory needs)
        assert src.endswith(f"+tails:{bm}/{tail}")
        for stage in ("gate_up", "down"):
            assert got[stage]["BLOCK_N"] == cfg[stage]["BLOCK_N"]
            assert got[stage]["BLOCK_K"] <= cfg[stage]["BLOCK_K"]


def test_the_skew_guard():
    small = {"BLOCK_M": 16, "gate_up": {"BLOCK_N": 128, "BLOCK_K": 256, "num_stages": 4},
             "down": {"BLOCK_N": 64, "BLOCK_K": 256, "num_stages": 4}}
    # Up to 63 tokens no expert can fill a 64-row block: unchanged.
    assert skew_guard(small, 63 * 8, 128, 4096, 1536, 63) == (small, "")
    cfg, note = skew_guard(small, 64 * 8, 128, 4096, 1536, 64)
    assert (cfg["BLOCK_M"], cfg["TAIL_M"], note) == (64, 16, "+tails:64/16")
    # The 64-row tiles' pipeline must fit in shared memory (bf16): BLOCK_K or stages come down.
    for stage, b_tiles in (("gate_up", 2), ("down", 1)):
        c = cfg[stage]
        assert c["num_stages"] * c["BLOCK_K"] * (64 + b_tiles * c["BLOCK_N"]) * 2 <= SMEM_BUDGET
    big = {"BLOCK_M": 128, "gate_up": {"BLOCK_N": 128, "BLOCK_K": 64, "PERSISTENT": True, "DESC": True},
           "down": {"BLOCK_N": 256, "BLOCK_K": 64}}
    dbrx = (6144, 10752)  # 396 MB of bf16 weights an expert
    assert skew_guard(big, 127 * 16, 16, *dbrx, 1000) == (big, "")  # 127 rows per expert: under one block
    assert skew_guard(big, 128 * 16, 16, *dbrx, 1000) == ({**big, "TAIL_M": 64}, "+tails:128/64")
    # Experts whose weights the L2 nearly holds keep the borrowed blocks (and a persistent gate/up).
    assert skew_guard(big, 256 * 64, 64, 3584, 2560, 4096) == (big, "")
    # Configs with tails, and the one-kernel decode path, are left as they are.
    with_tails = {**small, "BLOCK_M": 64, "TAIL_M": 16}
    assert skew_guard(with_tails, 10 ** 6, 8, *dbrx, 10 ** 5) == (with_tails, "")
    decode = {**small, "expert": {"BLOCK_F": 64, "BLOCK_K": 64}}
    assert skew_guard(decode, 10 ** 6, 8, *dbrx, 10 ** 5) == (decode, "")


def test_a_call_borrows_for_its_own_token_count():
    # qwen3-235b-a22b's shape at 64 tokens (512 routed slots) borrows a 16-row bucket; one expert can take 64 rows.
    shape = (128, 4096, 1536)
    plain = borrow_slug("h100-sxm", torch.bfloat16, 512, *shape)
    assert plain[0]["BLOCK_M"] < 64 and "TAIL_M" not in plain[0]
    cfg, src = borrowed("h100-sxm", torch.bfloat16, 512, *shape, tokens=64)
    assert (cfg["BLOCK_M"], cfg["TAIL_M"]) == (64, plain[0]["BLOCK_M"])
    assert src == plain[1] + f"+tails:64/{cfg['TAIL_M']}"
    assert borrowed("h100-sxm", torch.bfloat16, 512, *shape, tokens=32) == plain  # 32 tokens x top-16
    x = torch.empty(64, 4096, dtype=torch.bfloat16, device="meta")
    assert tuned.lookup(x.device, x.dtype, 512, *shape, 64) is None  # no table for a meta device


def test_borrowing_follows_the_rows_per_expert():
    # qwen1.5-moe's shape (60 experts) borrows olmoe-1b-7b's table (64 experts, same H); 16 rows per expert
    # there is the bucket of 64 * 16 slots.
    cfg, src = borrow_slug("h100-sxm", torch.bfloat16, 60 * 16, 60, 2048, 1408)
    assert src.endswith("E64_H2048_F1024_bfloat16.json@1024")
    assert load_distance(60 * 16, 60, 1024, 64) == pytest.approx(0.5 * abs(math.log2(60 / 64)))
    assert shape_distance((60, 2048, 1408), (64, 2048, 1024)) < shape_distance((60, 2048, 1408), (128, 2048, 768))


def test_leave_one_out_never_returns_the_left_out_shape():
    for e, h, f, _ in tuned_shapes("h100-sxm"):
        cfg, src = borrow_slug("h100-sxm", torch.bfloat16, 64, e, h, f, exclude=(e, h, f))
        assert f"E{e}_H{h}_F{f}_" not in src
        assert src.split("/")[1].split("@")[0] == "E{}_H{}_F{}_bfloat16.json".format(
            *_nearest_by_hand("h100-sxm", 64, e, h, f, exclude=(e, h, f))[0])


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A configs/ folder of the test's own (the memoised lookups cleared before and after)."""
    def clear():
        for f in (tuned._load, tuned.tuned_shapes, tuned.table_entry, tuned.borrow_slug, tuned.resolve_slug):
            f.cache_clear()
    monkeypatch.setattr(tuned, "CONFIG_DIR", tmp_path)
    clear()
    yield tmp_path
    clear()


def _write_table(folder, E, H, F, marker):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"BLOCK_M": 16, "gate_up": {"BLOCK_N": 32, "BLOCK_K": 64, "marker": marker},
           "down": {"BLOCK_N": 32, "BLOCK_K": 64}}
    (folder / f"E{E}_H{H}_F{F}_bfloat16.json").write_text(json.dumps({"64": cfg}))


def test_a_sibling_cards_table_of_the_same_shape_comes_before_another_shape(config_dir):
    _write_table(config_dir / "h200", 128, 2048, 768, "h200 qwen3")
    _write_table(config_dir / "h100-sxm", 64, 3584, 2560, "h100 qwen2")
    _write_table(config_dir / "h100-sxm", 128, 2048, 768, "h100 qwen3")
    # The H200 has no table of qwen2-moe-57b's shape: the H100's table of that shape, not the H200's nearest other.
    cfg, src = resolve_slug("h200", torch.bfloat16, 256, 64, 3584, 2560, 16)  # 16 tokens: no skew guard
    assert src == "borrowed:h100-sxm/E64_H3584_F2560_bfloat16.json@64"
    assert cfg["gate_up"]["marker"] == "h100 qwen2"
    # A card's own table of the same shape comes first ...
    assert resolve_slug("h200", torch.bfloat16, 256, 128, 2048, 768)[0]["gate_up"]["marker"] == "h200 qwen3"
    # ... and a near shape on the card itself before a sibling's table of a shape as far.
    assert resolve_slug("h200", torch.bfloat16, 256, 128, 2048, 1024)[1].startswith("borrowed:h200/")
    # A sibling's table is SIBLING_DISTANCE further: a shape farther than that on the card loses to it.
    far = (128, 2048, int(768 * 2 ** (tuned.SIBLING_DISTANCE + 0.25)))
    _write_table(config_dir / "h100-sxm", *far, "h100 far-shape twin")
    for f in (tuned.tuned_shapes, tuned.borrow_slug, tuned.resolve_slug):
        f.cache_clear()
    assert resolve_slug("h200", torch.bfloat16, 256, *far)[0]["gate_up"]["marker"] == "h100 far-shape twin"


def test_nothing_to_borrow_leaves_the_defaults():
    assert resolve_slug("h100-sxm", torch.float32, 64, 16, 6144, 10752) is None  # no fp32 tables
    assert resolve_slug("a100-sxm4", torch.bfloat16, 64, 16, 6144, 10752) is None  # no tables on that card
    assert tuned.lookup(torch.device("cpu"), torch.bfloat16, 64, 16, 6144, 10752) is None


def _distinct_table_configs():
    seen = {}
    for path in sorted(CONFIG_DIR.glob("*/*.json")):
        with open(path) as fh:
            for bucket, cfg in json.load(fh).items():
                seen.setdefault(json.dumps(cfg, sort_keys=True), f"{path.parent.name}/{path.stem}@{bucket}")
    return [(json.loads(k), v) for k, v in seen.items()]


def _guarded_table_configs():
    """What the skew guard makes of the distinct table entries that it changes (on a load that triggers both rules)."""
    out = {}
    for cfg, where in _distinct_table_configs():
        got, note = skew_guard(cfg, 10 ** 6, 8, 6144, 10752, 10 ** 5)
        if note:
            out.setdefault(json.dumps(got, sort_keys=True), where + note)
    return [(json.loads(k), v) for k, v in out.items()]


@pytest.mark.parametrize("cfg,where", _distinct_table_configs() + _guarded_table_configs(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_tuned_config_is_right_on_a_shape_it_was_not_tuned_for(cfg, where, device):
    """Whatever a shape borrows must compute the layer on any shape: every distinct table entry, on a small odd shape
    (7 experts, H = 40, F = 24: tiles far larger than the GEMMs) and a token count that is no multiple of its blocks.
    In the interpreter in fp32 (descriptors and persistent loops run as loads); on a GPU in bf16, the dtype the
    tables serve. The decode configs' down projection with the combine (a program per token and 8 columns) gets a
    decode's few tokens."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    T = 5 if cfg["down"].get("COMBINE") else 19
    layer = make_layer(T=T, E=7, H=40, F=24, dtype=dtype, device=device, seed=11)
    from tritonmoe import moe, reference_moe, route
    y = moe(layer.x, *layer.weights, 3, config=cfg)
    ref = reference_moe(layer.x, *layer.weights, 3, topk_ids=route(layer.x, layer.router_weight, 3)[1])
    assert rel_err(y, ref) <= REL_TOL[dtype], where
