"""The whole layer, every variant (`tritonmoe.IMPLS`), against the float64 reference.

Under the interpreter every block is 16 wide, so H=40, F=24 leave partial blocks in every GEMM
dimension; H=64, F=32 take the EVEN_K path; H=33, F=17 are odd.
"""
import pytest
import torch
import triton
import triton.language as tl

import tritonmoe
from tritonmoe._gemm_common import order_blocks, tile_of
from tritonmoe.config import with_expert_order
from helpers import assert_rel_close, layer_reference, make_layer, rel_err

DTYPES = [torch.float32, torch.float16]

# (T, E, K, H, F): each of E in {1, 3, 8, 64}, K in {1, 2, 4, 8}, T in {1, 2, 17, 64, 130}, and the
# hard corners (E=64 with K=8 and T=130; E=1; K=E; the EVEN_K path; odd sizes).
SHAPES = [
    (1, 1, 1, 40, 24),
    (130, 1, 1, 40, 24),
    (2, 3, 2, 40, 24),
    (17, 3, 1, 40, 24),
    (17, 8, 2, 40, 24),
    (64, 8, 4, 40, 24),
    (2, 64, 8, 40, 24),
    (130, 64, 8, 40, 24),
    (17, 8, 8, 64, 32),
    (9, 4, 2, 33, 17),
]


def shape_id(s):
    return "T{}-E{}-K{}-H{}-F{}".format(*s)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_moe_matches_reference(impl, shape, dtype, device):
    T, E, K, H, F = shape
    layer = make_layer(T, E, H, F, dtype, device, seed=hash(shape) % 2**31)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
    assert y.shape == (T, H) and y.dtype == dtype and y.device == layer.x.device
    ref = layer_reference(layer.x, *layer.weights, K)
    assert_rel_close(y, ref, dtype, f"{impl} {shape_id(shape)}")


@pytest.mark.parametrize("shape,dtype", [((17, 8, 2, 40, 24), torch.float32), ((9, 8, 8, 40, 24), torch.float32),
                                         ((20, 16, 4, 40, 24), torch.float16)], ids=["T17-E8-K2", "T9-E8-K8", "T20-E16-K4-fp16"])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_moe_without_renormalization(impl, shape, dtype, device):
    T, E, K, H, F = shape
    layer = make_layer(T, E, H, F, dtype, device, seed=11)
    y = tritonmoe.moe(layer.x, *layer.weights, K, renormalize=False, impl=impl)
    ref = layer_reference(layer.x, *layer.weights, K, renormalize=False)
    assert_rel_close(y, ref, dtype, impl)
    if K < E:  # the raw probabilities sum to < 1, so the two results must differ
        y_renorm = tritonmoe.moe(layer.x, *layer.weights, K, renormalize=True, impl=impl)
        assert (y - y_renorm).abs().max() > 1e-2


def _config(block_m, bn, bk, group_m, split_k):
    return {"BLOCK_M": block_m,
            "gate_up": {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
            "down": {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m, "SPLIT_K": split_k}}


def _decode_config(block_m, bf, bk, bh):
    return {**_config(block_m, 16, 16, 1, 1), "expert": {"BLOCK_F": bf, "BLOCK_K": bk, "BLOCK_H": bh}}


def _combine_config(block_m, bn, bk, **gate_up):
    """The down projection that sums each token's choices itself (`down.down_combine`)."""
    cfg = _config(block_m, 16, 16, 1, 1)
    return {**cfg, "gate_up": {**cfg["gate_up"], **gate_up}, "down": {"BLOCK_N": bn, "BLOCK_K": bk, "COMBINE": True}}


def _desc_config(block_m, bn, bk, group_m, split_k, gate_up=True, down=True):
    cfg = _config(block_m, bn, bk, group_m, split_k)
    return {**cfg, "gate_up": {**cfg["gate_up"], "DESC": gate_up}, "down": {**cfg["down"], "DESC": down}}


@pytest.mark.parametrize("config", [
    _config(16, 16, 16, 1, 1),
    _config(32, 32, 16, 4, 3),
    _config(64, 16, 32, 8, 4),
    _decode_config(16, 16, 16, 16),
    _decode_config(32, 32, 16, 32),
    _desc_config(16, 16, 16, 1, 1),
    _desc_config(32, 32, 16, 4, 3),
    _desc_config(64, 16, 32, 8, 2, down=False),
    _desc_config(16, 32, 16, 2, 1, gate_up=False),
    {**_config(64, 16, 32, 8, 4), "TAIL_M": 16},
    {**_config(32, 32, 16, 1, 1), "TAIL_M": 16},
    {**_desc_config(64, 16, 16, 2, 2), "TAIL_M": 32},
    {**_decode_config(16, 16, 16, 16), "BLOCK_M": 32, "TAIL_M": 16},
    {**_desc_config(16, 16, 16, 2, 1), "gate_up": {**_desc_config(16, 16, 16, 2, 1)["gate_up"], "PERSISTENT": True}},
    {**_desc_config(32, 16, 16, 2, 1), "gate_up": {**_desc_config(32, 16, 16, 2, 1)["gate_up"], "PERSISTENT": True},
     "TAIL_M": 16},
    _combine_config(16, 16, 16),
    _combine_config(32, 8, 32),
    {**_combine_config(64, 32, 16, DESC=True), "TAIL_M": 16},
    {**_config(32, 32, 16, 4, 1), "ROUTE_SPLIT": True},
    with_expert_order({**_config(32, 16, 16, 2, 2), "TAIL_M": 16}),
    with_expert_order(_desc_config(16, 32, 16, 1, 1)),
    with_expert_order({**_desc_config(32, 16, 16, 4, 1), "TAIL_M": 16}),
    with_expert_order({**_desc_config(16, 16, 16, 2, 1), "gate_up": {**_desc_config(16, 16, 16, 2, 1)["gate_up"],
                                                                  "PERSISTENT": True}}),
    with_expert_order({**_config(16, 16, 16, 3, 1), "gate_up": {**_config(16, 16, 16, 3, 1)["gate_up"],
                                                            "PERSISTENT": True}}),
], ids=["bm16-split1", "bm32-split3", "bm64-split4", "expert-bm16", "expert-bm32", "desc-bm16", "desc-bm32-split3",
        "desc-gate-up-only", "desc-down-only", "tail16-bm64-split4", "tail16-bm32", "desc-tail32-bm64",
        "expert-ignores-tail", "persistent-bm16", "persistent-falls-back-with-tails", "combine-bm16", "combine-bm32-uneven-f", "combine-desc-tail16",
        "route-split", "expert-order-tail16", "expert-order-desc", "expert-order-desc-tail16",
        "expert-order-persistent", "expert-order-persistent-gather"])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_moe_launch_configs(impl, config, device):
    """Any block sizes, program grouping and split of the down projection give the same layer; an
    `expert` entry sends tritonmoe_fused down the one-kernel decode path (others ignore it) at any T;
    `DESC` feeds the GEMMs through tensor descriptors (tokens gathered first), per GEMM; `TAIL_M` gives each
    expert's rest shorter tail blocks (the decode path ignores it); `COMBINE` in the down config sums each token's
    choices in the down kernel (no partial rows, no combine launch); `ROUTE_SPLIT` routes through split partial
    logits and a selection launch; `EXPERT_ORDER` walks the tiles expert by expert."""
    T, E, K, H, F = 70, 8, 2, 40, 56
    layer = make_layer(T, E, H, F, torch.float32, device, seed=7)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=config)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.float32, impl)


@pytest.mark.parametrize("desc", [False, True], ids=["pointers", "desc"])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_tail_blocks(impl, desc, device):
    """Full blocks and tail blocks in the same launches (zipf routing: hot experts over several 64-row blocks,
    cold ones in 16-row tails only), every variant, through the pointer and the descriptor kernels."""
    T, E, K, H, F = 150, 8, 2, 64, 48
    layer = make_layer(T, E, H, F, torch.float32, device, seed=5, routing="zipf")
    _, ids = tritonmoe.route(layer.x, layer.router_weight, K)
    a = tritonmoe.align_tokens(ids, E, 64, 16)
    heights = (a.block_rows[1:] - a.block_rows[:-1]).tolist()
    assert heights.count(64) >= 2 and heights.count(16) >= 2, heights
    cfg = {**(_desc_config if desc else _config)(64, 16, 16, 2, 2), "TAIL_M": 16}
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.float32, impl)


@pytest.mark.parametrize("kernels", ["pointers", "desc", "persistent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_extended_blocks(impl, dtype, kernels, device):
    """Extended last blocks (BLOCK_M 32, TAIL_M 48) beside full and padded ones and an empty expert, every variant,
    through the pointer, the descriptor and the persistent gate/up kernels (each with both down kernels' ext tiles)."""
    T, E, K, H, F = 75, 5, 2, 64, 48
    layer = make_layer(T, E, H, F, dtype, device, seed=12)
    g = torch.Generator().manual_seed(12)
    ids = torch.stack([torch.randperm(E - 1, generator=g)[:K] for _ in range(T)])  # expert E-1 empty
    ids[:20, 0] = 0  # expert 0 hot: several blocks
    weights = torch.rand(T, K, generator=g) + 0.1
    ids, weights = ids.to(device), weights.to(device)
    a = tritonmoe.align_tokens(ids, E, 32, 48)
    heights = (a.block_rows[1:] - a.block_rows[:-1]).tolist()
    assert heights.count(48) >= 1 and heights.count(32) >= 2 and a.expert_counts.tolist()[-1] == 0, heights
    base = (_desc_config if kernels == "desc" else _config)(32, 16, 16, 2, 1)
    if kernels == "persistent":
        base = {**base, "gate_up": {**base["gate_up"], "PERSISTENT": True}}
    for cfg in ({**base, "TAIL_M": 48}, with_expert_order({**base, "TAIL_M": 48})):
        y = tritonmoe.fused_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down, impl=impl, config=cfg)
        ref = tritonmoe.reference_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down)
        assert_rel_close(y, ref, dtype, f"{impl} {kernels}")


@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_moe_zipf_routing(impl, device):
    T, E, K, H, F = 64, 64, 4, 40, 24
    layer = make_layer(T, E, H, F, torch.float32, device, seed=3, routing="zipf")
    _, ids = tritonmoe.route(layer.x, layer.router_weight, K)
    counts = torch.bincount(ids.flatten().long(), minlength=E)
    assert counts.max() > 4 * counts.float().mean() and (counts == 0).any()
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.float32, impl)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_fused_experts_matches_reference(impl, dtype, device):
    """A routing made elsewhere: random ids (an expert left empty, one hot) and unnormalized weights."""
    T, E, K, H, F = 40, 8, 3, 40, 24
    layer = make_layer(T, E, H, F, dtype, device, seed=9)
    g = torch.Generator().manual_seed(9)
    ids = torch.stack([torch.randperm(E - 1, generator=g)[:K] for _ in range(T)])  # expert E-1 empty
    ids[: T // 2, 0] = 2
    weights = torch.rand(T, K, generator=g) + 0.1
    ids, weights = ids.to(device), weights.to(device)
    y = tritonmoe.fused_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down, impl=impl)
    ref = tritonmoe.reference_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down)
    assert y.shape == (T, H) and y.dtype == dtype
    assert_rel_close(y, ref, dtype, impl)


@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_module_flattens_leading_dims(impl, device):
    """`FusedMoE` on [B, S, H] equals `moe` on the [B*S, H] tokens, reshaped back."""
    B, S, H, F, E, K = 3, 5, 40, 24, 8, 2
    torch.manual_seed(0)
    layer = tritonmoe.FusedMoE(H, F, E, K, impl=impl, device=device, dtype=torch.float32)
    x = torch.randn(B, S, H, device=device)
    with torch.no_grad():
        y = layer(x)
        flat = tritonmoe.moe(x.reshape(B * S, H), layer.router_weight, layer.w_gate_up, layer.w_down, K, impl=impl)
    assert y.shape == (B, S, H)
    assert torch.equal(y, flat.reshape(B, S, H))
    assert_rel_close(flat, layer_reference(x.reshape(B * S, H), layer.router_weight, layer.w_gate_up,
                                           layer.w_down, K), torch.float32, impl)


def test_module_from_gate_up(device):
    """Separate gate and up weights are concatenated once into the [E, 2F, H] layout (gate rows first)."""
    T, E, K, H, F = 17, 8, 2, 40, 24
    layer = make_layer(T, E, H, F, torch.float32, device, seed=12)
    w_gate, w_up = layer.w_gate_up[:, :F], layer.w_gate_up[:, F:]
    module = tritonmoe.FusedMoE.from_gate_up(layer.router_weight, w_gate, w_up, layer.w_down, K)
    assert torch.equal(module.w_gate_up, layer.w_gate_up)
    with torch.no_grad():
        y = module(layer.x)
    assert torch.equal(y, tritonmoe.moe(layer.x, *layer.weights, K))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_descriptor_path_taken_and_exact(impl, dtype, device, monkeypatch):
    """With `DESC` the descriptor kernels (and the row gather) run, and only they: the pointer kernels are
    made to fail. The result matches the reference, with experts left without tokens (E=8, T=5, K=1)."""
    from tritonmoe import down as down_mod, gate_up as gate_up_mod
    T, E, K, H, F = 5, 8, 1, 64, 48
    layer = make_layer(T, E, H, F, dtype, device, seed=11)

    def boom(*a, **k):
        raise AssertionError("pointer kernel launched on the descriptor path")
    monkeypatch.setattr(gate_up_mod, "_gate_up_kernel", type("K", (), {"__getitem__": lambda s, g: boom})())
    monkeypatch.setattr(down_mod, "_down_kernel", type("K", (), {"__getitem__": lambda s, g: boom})())
    assert gate_up_mod.uses_descriptors({"DESC": True}, layer.x, layer.w_gate_up)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=_desc_config(16, 16, 16, 1, 2))
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), dtype, impl)


def test_descriptor_path_falls_back_on_unaligned_rows(device):
    """Rows of x that are not a multiple of 16 bytes (H=33 in fp32) cannot be descriptor boxes: the pointer
    kernels run instead and the layer is still right."""
    from tritonmoe.gate_up import uses_descriptors
    T, E, K, H, F = 9, 4, 2, 33, 17
    layer = make_layer(T, E, H, F, torch.float32, device, seed=5)
    assert not uses_descriptors({"DESC": True}, layer.x, layer.w_gate_up)
    y = tritonmoe.moe(layer.x, *layer.weights, K, config=_desc_config(16, 16, 16, 1, 1))
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.float32, "tritonmoe_fused")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 8, 2, 40, 24), (1, 64, 8, 64, 32), (3, 8, 3, 33, 17), (5, 4, 4, 40, 56),
                                   (2, 16, 6, 40, 24)], ids=shape_id)
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_down_combine_decode(impl, shape, dtype, device, monkeypatch):
    """The one-launch down+combine at decode sizes: K not a power of two (3, 6: padded choices masked), odd H and F,
    several tokens sharing experts (E=4, K=4: every token on every expert), fp16 and fp32; and the same y from
    `fused_experts` (a routing made elsewhere, its ids given)."""
    T, E, K, H, F = shape
    layer = make_layer(T, E, H, F, dtype, device, seed=T * 100 + E + K)
    cfg = _combine_config(16, 16, 16)

    def no_combine(*args, **kwargs):
        raise AssertionError("COMBINE must not launch the separate combine")
    monkeypatch.setattr(tritonmoe.api, "combine", no_combine)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), dtype, impl)
    weights, ids = tritonmoe.route(layer.x, layer.router_weight, K)
    y2 = tritonmoe.fused_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down, impl=impl, config=cfg)
    # Not bit for bit: `moe` routes T=1 in the program that also aligns, `route` in its own kernel, and in the
    # interpreter their softmaxes may round a weight one ulp apart (numpy's vector exp differs with the row's
    # layout on some CPUs); y within a few ulps is the contract.
    assert rel_err(y2, y) <= (1e-6 if dtype == torch.float32 else 1e-3), impl


class _Refuse:
    def __getitem__(self, grid):
        raise AssertionError("the persistent config must launch neither the per-tile kernels nor (without DESC) a gather")


@pytest.mark.parametrize("shape,dtype", [((70, 8, 2, 40, 56), torch.float32), ((33, 4, 3, 32, 52), torch.float16),
                                         ((5, 8, 2, 40, 24), torch.float32)],
                         ids=["fp32-tma-store", "fp16-pointer-store", "few-tiles"])
@pytest.mark.parametrize("desc", [True, False], ids=["desc", "gather-inside"])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_persistent_gate_up(impl, shape, dtype, desc, device, monkeypatch):
    """`PERSISTENT` gate/up: a few programs walk every tile (more tiles than programs, and fewer), the tile stored
    through a descriptor where the output's rows allow it (else by pointers); fused, concatenated and separate; the
    tokens from a gathered copy (with `DESC`) or gathered inside the loop (without)."""
    import tritonmoe.gate_up as gu
    T, E, K, H, F = shape
    layer = make_layer(T, E, H, F, dtype, device, seed=T + F)
    cfg = _desc_config(16, 16, 16, 2, 1)
    cfg = {**cfg, "gate_up": {**cfg["gate_up"], "PERSISTENT": True, "DESC": desc}}
    monkeypatch.setattr(gu, "_gate_up_desc_kernel", _Refuse())
    monkeypatch.setattr(gu, "_gate_up_kernel", _Refuse())
    if not desc:
        monkeypatch.setattr(gu, "gather_rows", _Refuse().__getitem__)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), dtype, impl)


@triton.jit
def _tile_order_kernel(expert_ids_ptr, out_m_ptr, out_n_ptr, num_pid_m, num_pid_n, GROUP_M: tl.constexpr,
                       ORDER_BLOCKS: tl.constexpr):
    pid = tl.program_id(0)
    pid_m, pid_n = tile_of(pid, expert_ids_ptr, num_pid_m, num_pid_n, GROUP_M, ORDER_BLOCKS)
    tl.store(out_m_ptr + pid, pid_m)
    tl.store(out_n_ptr + pid, pid_n)


@pytest.mark.parametrize("group_m", [1, 2, 8])
@pytest.mark.parametrize("routing", ["uniform", "zipf"])
def test_expert_order_visits_every_tile_once(routing, group_m, device):
    """`tile_of` in expert order: the programs over the used blocks' tiles visit each (block, column block) exactly
    once, an expert's tiles one after the other (no program between two of them belongs to another expert), and
    programs past them land on unused blocks; grouped order is the same permutation property over all blocks."""
    T, E, K, H = 90, 8, 2, 32
    layer = make_layer(T, E, H, 16, torch.float32, device, seed=3, routing=routing)
    _, ids = tritonmoe.route(layer.x, layer.router_weight, K)
    align = tritonmoe.align_tokens(ids, E, 16, 16)
    used_blocks = int(align.num_post_padded) // 16
    num_pid_m, num_pid_n = align.max_blocks, 3
    total = num_pid_m * num_pid_n
    out_m = torch.full((total,), -7, dtype=torch.int32, device=device)
    out_n = torch.full((total,), -7, dtype=torch.int32, device=device)
    order = order_blocks({"EXPERT_ORDER": True}, align)
    assert order >= num_pid_m
    _tile_order_kernel[(total,)](align.expert_ids, out_m, out_n, num_pid_m, num_pid_n, GROUP_M=group_m,
                                 ORDER_BLOCKS=order)
    m, n = out_m.cpu(), out_n.cpu()
    used = used_blocks * num_pid_n
    pairs = {(int(a), int(b)) for a, b in zip(m[:used], n[:used])}
    assert pairs == {(b, c) for b in range(used_blocks) for c in range(num_pid_n)}  # each used tile exactly once
    assert (m[used:] >= used_blocks).all()  # the rest: unused blocks, no work
    experts = align.expert_ids.cpu()[m[:used].long()]
    changes = int((experts[1:] != experts[:-1]).sum())
    assert changes == len(set(experts.tolist())) - 1  # one run of tiles per expert
