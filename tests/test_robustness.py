"""Edge cases of the routing distribution and of the input values, the NaN/Inf policy of
`tritonmoe.api`, and run-to-run determinism, for every impl."""
import pytest
import torch

import tritonmoe
from helpers import assert_rel_close, layer_reference, make_layer

IMPLS = tritonmoe.IMPLS


def experts_reference(layer, weights, ids):
    return tritonmoe.reference_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down)


def routing_for(ids_rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(ids_rows)
    return torch.rand(ids.shape, generator=g) + 0.1, ids


# Routings given directly, through fused_experts: (name, E, K, ids per token as a function of t).
ROUTINGS = {
    "one_expert_empty": (8, 2, lambda t: [t % 3, 4 + t % 4]),  # expert 3 gets nothing
    "all_on_one_expert": (8, 1, lambda t: [5]),
    "all_on_two_experts": (8, 2, lambda t: [6, 1]),
    "half_the_experts_empty": (8, 2, lambda t: [2 * (t % 4) + 1, 2 * ((t + 1) % 4) + 1]),
    "hot_expert_and_cold_tail": (16, 4, lambda t: [0, 1 + t % 15, 1 + (t + 5) % 15, 1 + (t + 10) % 15]),
}


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("impl", IMPLS)
def test_skewed_routings(impl, routing, device):
    E, K, ids_of = ROUTINGS[routing]
    T, H, F = 40, 40, 24
    layer = make_layer(T, E, H, F, torch.float32, device, seed=len(routing))
    weights, ids = routing_for([ids_of(t) for t in range(T)])
    weights, ids = weights.to(device), ids.to(device)
    y = tritonmoe.fused_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down, impl=impl)
    assert_rel_close(y, experts_reference(layer, weights, ids), torch.float32, f"{impl} {routing}")


@pytest.mark.parametrize("impl", IMPLS)
def test_router_sends_every_token_to_one_expert(impl, device):
    """Through the layer's own routing: expert 5's router row dominates every token's logits."""
    T, E, K, H, F = 64, 8, 2, 40, 24
    layer = make_layer(T, E, H, F, torch.float32, device, seed=5)
    direction = layer.x.mean(0) / layer.x.mean(0).norm()
    layer.x += 5 * direction
    layer.router_weight[5] = 3 * direction
    _, ids = tritonmoe.route(layer.x, layer.router_weight, K)
    assert (ids[:, 0] == 5).all()
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.float32, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_one_token_many_experts(impl, device):
    T, E, K, H, F = 1, 64, 8, 40, 24
    layer = make_layer(T, E, H, F, torch.float16, device, seed=1)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.float16, impl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_no_tokens(impl, dtype, device):
    layer = make_layer(0, 8, 40, 24, dtype, device)
    y = tritonmoe.moe(layer.x, *layer.weights, 2, impl=impl)
    assert y.shape == (0, 40) and y.dtype == dtype and y.device == layer.x.device
    ids = torch.zeros((0, 2), dtype=torch.int64, device=device)
    y = tritonmoe.fused_experts(layer.x, ids.float(), ids, layer.w_gate_up, layer.w_down, impl=impl)
    assert y.shape == (0, 40) and y.dtype == dtype


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_row_stays_in_its_row(impl, bad, device):
    """NaN/Inf in token 7's row of x: row 7 of y is all NaN; every other row equals the reference
    computed without token 7 (no kernel mixes rows, even within a block of the same expert)."""
    T, E, K, H, F = 40, 4, 2, 40, 24
    layer = make_layer(T, E, H, F, torch.float32, device, seed=8)
    x = layer.x.clone()
    x[7, 11] = bad
    y = tritonmoe.moe(x, *layer.weights, K, impl=impl)
    assert torch.isnan(y[7]).all(), f"row 7 should be all NaN, got {y[7]}"
    keep = torch.arange(T, device=device) != 7
    ref = layer_reference(layer.x[keep], *layer.weights, K)
    assert_rel_close(y[keep], ref, torch.float32, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_in_an_expert_reaches_only_its_tokens(impl, device):
    """Documented: NaN in expert e's weights reaches exactly the tokens routed to e."""
    T, E, K, H, F = 40, 8, 2, 40, 24
    layer = make_layer(T, E, H, F, torch.float32, device, seed=6)
    weights, ids = routing_for([[t % E, (t + 3) % E] for t in range(T)])
    weights, ids = weights.to(device), ids.to(device)
    layer.w_gate_up[2, F + 5, 17] = float("nan")  # an up row of expert 2
    layer.w_down[6, 3, 20] = float("nan")  # one output column of expert 6
    y = tritonmoe.fused_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down, impl=impl)
    on_2 = (ids == 2).any(1)
    on_6 = (ids == 6).any(1)
    assert torch.isnan(y[on_2]).all()
    assert torch.isnan(y[on_6 & ~on_2][:, 3]).all()
    clean = ~on_2 & ~on_6
    assert clean.sum() >= T // 4
    assert_rel_close(y[clean], experts_reference(layer, weights, ids)[clean], torch.float32, impl)
    assert not torch.isnan(y[on_6 & ~on_2][:, [c for c in range(H) if c != 3]]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_repeated_calls_are_bit_identical(impl, dtype, device):
    """(The interpreter runs programs one after another; on a GPU this is the test that catches atomics
    or races. tests/test_gpu.py repeats it at GPU sizes.)"""
    T, E, K, H, F = 40, 4, 2, 40, 40  # several blocks per expert and an uneven split of the down projection
    layer = make_layer(T, E, H, F, dtype, device, seed=4)
    first = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
    assert torch.equal(tritonmoe.moe(layer.x, *layer.weights, K, impl=impl), first)


def test_impls_agree_closely(device):
    """The variants differ only in where gate/up are rounded: in fp32 they agree to ~1e-6."""
    T, E, K, H, F = 33, 8, 2, 40, 24
    layer = make_layer(T, E, H, F, torch.float32, device, seed=10)
    ys = [tritonmoe.moe(layer.x, *layer.weights, K, impl=impl) for impl in IMPLS]
    for impl, y in zip(IMPLS[1:], ys[1:]):
        torch.testing.assert_close(y, ys[0], rtol=1e-5, atol=1e-6, msg=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_broadcast_rows_of_x(impl, device):
    """x = one row expanded to T rows (row stride 0, legal: the last dim is unit-stride)."""
    T, E, K, H, F = 20, 8, 2, 40, 24
    layer = make_layer(1, E, H, F, torch.float32, device, seed=13)
    x = layer.x.expand(T, H)
    assert x.stride() == (0, 1)
    y = tritonmoe.moe(x, *layer.weights, K, impl=impl)
    assert_rel_close(y, layer_reference(x.contiguous(), *layer.weights, K), torch.float32, impl)
    torch.testing.assert_close(y, y[:1].expand(T, H), rtol=1e-6, atol=1e-6)
