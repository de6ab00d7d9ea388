"""One token's routing choice made inside the first gate/up GEMM (`tritonmoe.route_align.prepare_selection`,
`tritonmoe.gate_up._gate_up_select_kernel`, the layer config's `SELECT_IN_GEMM`).

The contract: the same routing, alignment tables and output, bit for bit, as the separate routing-and-alignment
launch (`route_and_align`) followed by the usual GEMMs, for every variant; and the float64 reference within the
dtype's tolerance. Runs in the interpreter (fp32/fp16) and on the GPU (bf16 too)."""
import pytest
import torch

import tritonmoe
from tritonmoe import api
from tritonmoe.align import align_tokens
from tritonmoe.gate_up import gate_up
from tritonmoe.route_align import prepare_selection, route_and_align
from helpers import assert_rel_close, layer_reference, make_layer

# (E, K, H, F, BLOCK_M, TAIL_M): 3-64 experts, K from 1 to E, H and F on and off the blocks, tail blocks, K > BLOCK_KK
# of a power of two (K=3, 6), H over several 256-column router splits (H=600: 3 splits).
CASES = [
    (8, 2, 40, 24, 16, None),
    (3, 3, 33, 17, 16, None),
    (64, 8, 64, 32, 16, None),
    (12, 3, 600, 24, 32, 16),
    (16, 6, 48, 40, 64, 32),
    (1, 1, 40, 24, 16, None),
]


def _cfg(block_m, tail_m, select=True):
    cfg = {"BLOCK_M": block_m, "gate_up": {"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4},
           "down": {"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "SPLIT_K": 1, "num_warps": 4}}
    if tail_m:
        cfg["TAIL_M"] = tail_m
    if not select:
        cfg["SELECT_IN_GEMM"] = False
    return cfg


def _dtypes(device):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


def _case_id(c):
    return "E{}-K{}-H{}-F{}-BM{}-T{}".format(*c)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_selection_in_gemm_is_bit_identical_to_the_separate_launch(impl, case, device):
    E, K, H, F, bm, tail = case
    for dtype in _dtypes(device):
        layer = make_layer(1, E, H, F, dtype, device, seed=E * 100 + K)
        on, off = _cfg(bm, tail), _cfg(bm, tail, select=False)
        assert api.selects_in_gemm(layer.x, layer.weights[1], K, impl, on)
        assert not api.selects_in_gemm(layer.x, layer.weights[1], K, impl, off)
        y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=on)
        y_sep = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=off)
        assert torch.equal(y, y_sep), f"{impl} {_case_id(case)} {dtype}"
        assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), dtype, f"{impl} {_case_id(case)}")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "plain"])
def test_selection_writes_the_routing_and_the_alignment(case, fuse, device):
    """The tables program 0 stores equal `route_and_align`'s (every entry, past the used blocks too), the weights
    and ids too, and the GEMM's rows those of the pointer kernel on that alignment. Outputs poisoned first."""
    E, K, H, F, bm, tail = case
    layer = make_layer(1, E, H, F, torch.float32, device, seed=7 + K)
    x, wr, wgu, _ = layer.x, *layer.weights
    cfg = _cfg(bm, tail)
    sel = prepare_selection(x, wr, K, True, bm, tail)
    for t in (sel.align.sorted_ids, sel.align.expert_ids, sel.align.block_rows, sel.align.num_post_padded,
              sel.align.expert_counts, sel.align.slot_rows, sel.ids):
        t.fill_(-7)
    sel.weights.fill_(float("nan"))
    n = F if fuse else 2 * F
    out = torch.full((sel.align.sorted_ids.shape[0], n), float("nan"), device=device)
    gate_up(x, wgu, sel.align, cfg["gate_up"], fuse_swiglu=fuse, out=out, select=sel)
    weights, ids, ref = route_and_align(x, wr, K, True, bm, tail)
    assert torch.equal(sel.ids, ids) and torch.equal(sel.weights, weights)
    used = int(ref.num_post_padded)
    assert int(sel.align.num_post_padded) == used
    assert torch.equal(sel.align.sorted_ids[:used], ref.sorted_ids[:used])
    for name in ("expert_ids", "block_rows", "expert_counts", "slot_rows"):
        assert torch.equal(getattr(sel.align, name), getattr(ref, name)), name
    want = torch.full_like(out, float("nan"))
    gate_up(x, wgu, ref, cfg["gate_up"], fuse_swiglu=fuse, out=want)
    assert torch.equal(out[:used], want[:used])


def test_selection_of_a_nan_token_matches_the_separate_launch(device):
    """A NaN token still picks K valid, distinct experts (the lowest ids) and its row is NaN on both paths."""
    E, K, H, F = 8, 3, 40, 24
    layer = make_layer(1, E, H, F, torch.float32, device, seed=3)
    layer.x[0, 5] = float("nan")
    for impl in tritonmoe.IMPLS:
        y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=_cfg(16, None))
        y_sep = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=_cfg(16, None, select=False))
        assert torch.isnan(y).all() and torch.isnan(y_sep).all(), impl
    sel = prepare_selection(layer.x, layer.weights[0], K, True, 16)
    gate_up(layer.x, layer.weights[1], sel.align, _cfg(16, None)["gate_up"], fuse_swiglu=True, select=sel)
    assert sorted(sel.ids[0].tolist()) == [0, 1, 2]


def test_selection_is_not_taken_where_the_first_gemm_is_another_kernel(device):
    layer = make_layer(1, 8, 64, 32, torch.float32, device, seed=1)
    x, wgu = layer.x, layer.weights[1]
    cfg = _cfg(16, None)
    assert not api.selects_in_gemm(make_layer(2, 8, 64, 32, torch.float32, device).x, wgu, 2, "tritonmoe_fused", cfg)
    for change in ({"DESC": True}, {"PERSISTENT": True}):
        other = {**cfg, "gate_up": {**cfg["gate_up"], **change}}
        assert not api.selects_in_gemm(x, wgu, 2, "tritonmoe_fused", other), change
    expert = {**cfg, "expert": {"BLOCK_F": 16, "BLOCK_K": 16, "BLOCK_H": 16}}
    assert not api.selects_in_gemm(x, wgu, 2, "tritonmoe_fused", expert)  # the one-kernel decode path instead
    assert api.selects_in_gemm(x, wgu, 2, "tritonmoe_w13", expert)  # which only the fused variant takes
    many = make_layer(1, 130, 40, 24, torch.float32, device, seed=2)  # past SELECT_MAX_EXPERTS: off unless asked
    assert not api.selects_in_gemm(many.x, many.weights[1], 2, "tritonmoe_fused", cfg)
    assert api.selects_in_gemm(many.x, many.weights[1], 2, "tritonmoe_fused", {**cfg, "SELECT_IN_GEMM": True})
    sel = prepare_selection(x, layer.weights[0], 2, True, 16)
    with pytest.raises(ValueError, match="select"):
        gate_up(x, wgu, sel.align, {**cfg["gate_up"], "PERSISTENT": True}, fuse_swiglu=True, select=sel)
    with pytest.raises(ValueError, match="select"):
        gate_up(x, wgu, align_tokens(sel.ids, 8, 16), cfg["gate_up"], fuse_swiglu=True, select=sel)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_selection_with_the_tuned_tables_on_gpu(impl):
    """One token through each table's own T=1 config (bf16), where it takes the selection: bit-identical to the
    separate launch, and the float64 reference within bf16's tolerance; a recorded plan replays it."""
    for E, K, H, F in [(128, 8, 2048, 768), (64, 8, 2048, 1024), (8, 2, 4096, 1024)]:
        layer = make_layer(1, E, H, F, torch.bfloat16, "cuda", seed=E)
        cfg = api.resolve_config(layer.x, K, E, H, F, None)
        off = {**cfg, "SELECT_IN_GEMM": False}
        y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=cfg)
        y_sep = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=off)
        assert torch.equal(y, y_sep), (impl, E)
        assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.bfloat16, f"{impl} E{E}")
        y1 = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
        y2 = tritonmoe.moe(layer.x.clone(), *layer.weights, K, impl=impl)  # the plan's replay
        assert torch.equal(y1, y2)
