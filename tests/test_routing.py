"""`tritonmoe.route` (top-k softmax kernel) against `tritonmoe.reference_routing` (float64 PyTorch)."""
import pytest
import torch

import tritonmoe
from helpers import make_layer, near_ties, strided_view

DTYPES = [torch.float32, torch.float16]


def check_routing(x, router_weight, top_k, renormalize, max_tied=0.1, split=None):
    """ids exactly, except where a near-tie lets fp32 and float64 choose (or order) differently;
    weights to fp32 accuracy, matched by expert id. More than `max_tied` of the tokens at a near-tie
    would make the check vacuous, so it fails. `split` as in `tritonmoe.route`."""
    weights, ids = tritonmoe.route(x, router_weight, top_k, renormalize, split=split)
    ref_w, ref_ids = tritonmoe.reference_routing(x, router_weight, top_k, renormalize)
    T, E = x.shape[0], router_weight.shape[0]
    assert weights.shape == (T, top_k) and weights.dtype == torch.float32
    assert ids.shape == (T, top_k) and ids.dtype == torch.int32
    ids = ids.long()
    boundary, order = near_ties(x, router_weight, top_k)
    assert boundary.float().mean() <= max_tied, "too many near-ties: the test inputs are degenerate"
    same_order = ~order
    assert torch.equal(ids[same_order], ref_ids[same_order])
    clear = ~boundary
    by_id, perm = ids.sort(-1)
    ref_by_id, ref_perm = ref_ids.sort(-1)
    assert torch.equal(by_id[clear], ref_by_id[clear])
    torch.testing.assert_close(weights.gather(1, perm)[clear].double(), ref_w.gather(1, ref_perm)[clear],
                               rtol=1e-5, atol=1e-6)
    # Every token, tied or not: K distinct valid experts.
    assert ((ids >= 0) & (ids < E)).all()
    assert (by_id[:, 1:] != by_id[:, :-1]).all()
    return weights, ids


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,E,K", [
    (1, 1, 1), (2, 3, 2), (17, 8, 1), (17, 8, 2), (64, 8, 8), (130, 64, 8), (33, 256, 8), (20, 64, 4),
])
def test_route_matches_reference(T, E, K, dtype, renormalize, device):
    layer = make_layer(T, E, 40, 1, dtype, device, seed=T * 1000 + E * 10 + K)
    weights, _ = check_routing(layer.x, layer.router_weight, K, renormalize)
    if renormalize:
        torch.testing.assert_close(weights.sum(-1), torch.ones(T, device=device), rtol=0, atol=1e-6)


@pytest.mark.parametrize("H", [1, 16, 40, 300])
def test_route_hidden_sizes(H, device):
    """H below, at and above the kernel's H block (and several H blocks)."""
    layer = make_layer(19, 8, H, 1, torch.float32, device, seed=H)
    check_routing(layer.x, layer.router_weight, 2, True)


def test_route_zipf(device):
    layer = make_layer(130, 64, 40, 1, torch.float32, device, seed=3, routing="zipf")
    _, ids = check_routing(layer.x, layer.router_weight, 4, True)
    counts = torch.bincount(ids.flatten(), minlength=64)
    assert counts.max() > 4 * counts.float().mean(), "zipf routing should make some experts hot"


@pytest.mark.parametrize("layout", ["wide", "every_other"])
def test_route_strided(layout, device):
    layer = make_layer(21, 8, 40, 1, torch.float32, device, seed=5)
    x = strided_view(layer.x, layout)
    router = strided_view(layer.router_weight, layout)
    w, ids = check_routing(x, router, 2, True)
    w_c, ids_c = tritonmoe.route(layer.x, layer.router_weight, 2, True)
    assert torch.equal(ids, ids_c.long()) and torch.equal(w, w_c)


@pytest.mark.parametrize("renormalize", [True, False])
def test_exact_ties_go_to_the_lower_expert(renormalize, device):
    """All router rows equal: every expert ties, so the ids are 0..K-1 and the weights 1/K (or 1/E)."""
    E, K, H = 8, 3, 40
    layer = make_layer(18, E, H, 1, torch.float32, device, seed=1)
    router = layer.router_weight[:1].expand(E, H).contiguous()
    weights, ids = tritonmoe.route(layer.x, router, K, renormalize)
    assert torch.equal(ids.long().cpu(), torch.arange(K).expand(18, K))
    expected = 1 / K if renormalize else 1 / E
    torch.testing.assert_close(weights, torch.full_like(weights, expected))


def test_duplicated_expert_loses_to_the_lower_index(device):
    """Experts 2 and 5 have the same router row, which dominates: top-1 is 2, top-2 is (2, 5)."""
    E, H = 8, 40
    layer = make_layer(9, E, H, 1, torch.float32, device, seed=2)
    router = layer.router_weight.clone()
    direction = layer.x.mean(0) / layer.x.mean(0).norm()
    x = layer.x + 6 * direction
    router[2] = router[5] = 2 * direction
    _, ids1 = tritonmoe.route(x, router, 1)
    assert (ids1 == 2).all()
    w2, ids2 = tritonmoe.route(x, router, 2)
    assert (ids2[:, 0] == 2).all() and (ids2[:, 1] == 5).all()
    assert torch.equal(w2[:, 0], w2[:, 1])


def test_nan_row_routes_to_valid_experts_with_nan_weights(device):
    """The NaN policy at the routing stage: K distinct valid ids, NaN weights, other rows untouched."""
    E, K = 8, 2
    layer = make_layer(20, E, 40, 1, torch.float32, device, seed=4)
    x = layer.x.clone()
    x[7, 3] = float("nan")
    weights, ids = tritonmoe.route(x, layer.router_weight, K)
    assert torch.isnan(weights[7]).all()
    assert ((ids[7] >= 0) & (ids[7] < E)).all() and ids[7, 0] != ids[7, 1]
    keep = torch.arange(20, device=device) != 7
    w_ref, ids_ref = tritonmoe.route(layer.x[keep], layer.router_weight, K)
    assert torch.equal(ids[keep], ids_ref)
    torch.testing.assert_close(weights[keep], w_ref, rtol=1e-6, atol=1e-7)


def test_route_no_tokens(device):
    layer = make_layer(0, 8, 40, 1, torch.float32, device)
    weights, ids = tritonmoe.route(layer.x, layer.router_weight, 2)
    assert weights.shape == (0, 2) and ids.shape == (0, 2)


def test_route_block_t_and_an_explicit_block_give_the_same_routing(device):
    """From BLOCK_T_LARGE_T tokens on each routing program takes 32 tokens (fewer reads of the router); the block is a
    launch choice only: 16 and 32 token programs route alike (masked last block: T = 50)."""
    from tritonmoe.routing import BLOCK_T_LARGE_T, route_block_t
    assert route_block_t(BLOCK_T_LARGE_T - 1) == 16 and route_block_t(BLOCK_T_LARGE_T) == 32
    layer = make_layer(50, 8, 40, 1, torch.float32, device, seed=9)
    w16, ids16 = tritonmoe.route(layer.x, layer.router_weight, 2, block_t=16)
    w32, ids32 = tritonmoe.route(layer.x, layer.router_weight, 2, block_t=32)
    assert torch.equal(ids16, ids32)
    torch.testing.assert_close(w16, w32, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T,E,K,H", [
    (1, 4, 2, 40), (17, 8, 2, 256), (40, 20, 3, 300), (33, 64, 8, 700), (5, 256, 8, 520),
])
def test_split_route_matches_reference(T, E, K, H, dtype, renormalize, device):
    """The router read through split partial logits (`routing.route_split`): H over one slice or several with a
    partial last one, experts over blocks with a partial last one, tokens off the selection block."""
    layer = make_layer(T, E, H, 1, dtype, device, seed=T * 1000 + E * 10 + K)
    weights, _ = check_routing(layer.x, layer.router_weight, K, renormalize, split=True)
    if renormalize:
        torch.testing.assert_close(weights.sum(-1), torch.ones(T, device=device), rtol=0, atol=1e-6)


@pytest.mark.parametrize("tile,block_s,block_t", [(64, 4, 1), (32, 1, 2)], ids=["one-token", "splits-tiled"])
def test_split_route_selection_tiles(tile, block_s, block_t, device, monkeypatch):
    """The selection tile holds all splits of as many tokens as fit (one token a program on deepseek-v3's 28 splits
    of 256 experts), else the splits a tile at a time: the same routing either way."""
    from tritonmoe import routing
    assert (routing.select_meta(28, 256, 8, True)["BLOCK_S"], routing.select_meta(28, 256, 8, True)["BLOCK_T"]) == (32, 1)
    layer = make_layer(19, 16, 600, 1, torch.float32, device, seed=11)
    w_one, ids_one = check_routing(layer.x, layer.router_weight, 4, True, split=True)
    monkeypatch.setattr(routing, "SELECT_TILE", tile)
    meta = routing.select_meta(3, 16, 4, True)
    assert (meta["BLOCK_S"], meta["BLOCK_T"]) == (block_s, block_t)
    w_tiled, ids_tiled = check_routing(layer.x, layer.router_weight, 4, True, split=True)
    assert torch.equal(ids_one, ids_tiled)
    torch.testing.assert_close(w_one, w_tiled, rtol=1e-6, atol=1e-7)


def test_split_route_ties_and_nan_rows(device):
    """The split routing keeps the policies of the one kernel: exact ties to the lower expert, a NaN row gets K
    distinct valid ids and NaN weights, other rows untouched."""
    E, K, H = 8, 3, 300
    layer = make_layer(18, E, H, 1, torch.float32, device, seed=1)
    router = layer.router_weight[:1].expand(E, H).contiguous()
    weights, ids = tritonmoe.route(layer.x, router, K, split=True)
    assert torch.equal(ids.long().cpu(), torch.arange(K).expand(18, K))
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / K))
    x = layer.x.clone()
    x[7, 250] = float("nan")
    weights, ids = tritonmoe.route(x, layer.router_weight, K, split=True)
    assert torch.isnan(weights[7]).all()
    assert ((ids[7] >= 0) & (ids[7] < E)).all() and len(set(ids[7].tolist())) == K
    keep = torch.arange(18, device=device) != 7
    w_one, ids_one = tritonmoe.route(layer.x, layer.router_weight, K, split=False)
    assert torch.equal(ids[keep], ids_one[keep])
    torch.testing.assert_close(weights[keep], w_one[keep], rtol=1e-5, atol=1e-6)


def test_route_split_policy():
    """Split where the one kernel would run few programs over a large router: deepseek-v3's 3.7 MB router up to
    256 tokens (16 programs); never the 64 KB-0.5 MB routers of the other models, nor 512 tokens."""
    from tritonmoe.routing import route_split
    assert route_split(1, 7168, 256) and route_split(256, 7168, 256)
    assert not route_split(257, 7168, 256) and not route_split(512, 7168, 256)
    assert not route_split(32, 2048, 128) and not route_split(32, 4096, 8) and not route_split(32, 3584, 64)
