"""`tritonmoe.align_tokens` against a plain PyTorch alignment, exactly.

The routed slots (slot i = token i // K, choice i % K) are grouped by expert in ascending slot order,
each expert's group padded to a multiple of BLOCK_M with the sentinel N = T*K. Ids are given directly
(no routing), so every distribution of slots over experts can be tried.
"""
import pytest
import torch

import tritonmoe


def align_reference(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> dict:
    """The alignment written out expert by expert. Ids outside [0, E) are left out (as documented)."""
    ids = topk_ids.reshape(-1).long().cpu()
    N = ids.numel()
    sorted_ids, expert_ids, counts = [], [], []
    for e in range(num_experts):
        slots = torch.nonzero(ids == e).flatten().tolist()  # ascending: the stable order
        padded = -(-len(slots) // block_m) * block_m
        sorted_ids += slots + [N] * (padded - len(slots))
        expert_ids += [e] * (padded // block_m)
        counts.append(len(slots))
    max_blocks = N // block_m + min(num_experts, N)
    assert len(expert_ids) <= max_blocks
    expert_ids += [-1] * (max_blocks - len(expert_ids))
    return {
        "sorted_ids": torch.tensor(sorted_ids, dtype=torch.int32),
        "expert_ids": torch.tensor(expert_ids, dtype=torch.int32),
        "num_post_padded": len(sorted_ids),
        "expert_counts": torch.tensor(counts, dtype=torch.int32),
        "max_padded": max_blocks * block_m,
    }


def check_alignment(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> None:
    got = tritonmoe.align_tokens(topk_ids, num_experts, block_m)
    want = align_reference(topk_ids, num_experts, block_m)
    used = int(got.num_post_padded.item())
    assert used == want["num_post_padded"]
    assert got.block_m == block_m and got.num_routed == topk_ids.numel()
    assert got.sorted_ids.shape == (want["max_padded"],), "sorted_ids must have the static size"
    assert torch.equal(got.sorted_ids[:used].cpu(), want["sorted_ids"])
    assert torch.equal(got.expert_ids.cpu(), want["expert_ids"])
    assert torch.equal(got.expert_counts.cpu(), want["expert_counts"])


def uniform_ids(N, E, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, E, (N,), generator=g, dtype=torch.int32)


def zipf_ids(N, E, seed, exponent=1.2):
    g = torch.Generator().manual_seed(seed)
    probs = 1.0 / torch.arange(1, E + 1, dtype=torch.float64) ** exponent
    hot_first = torch.multinomial(probs, N, replacement=True, generator=g)
    return torch.randperm(E, generator=g)[hot_first].to(torch.int32)


@pytest.mark.parametrize("block_m", [16, 32, 64])
@pytest.mark.parametrize("N,E", [(1, 1), (5, 3), (100, 8), (1024, 8), (1025, 8), (1000, 64), (2500, 16),
                                 (64, 256), (65, 256), (3000, 256), (4096, 256), (5000, 256)])
def test_uniform(N, E, block_m, device):
    """Both paths: one program while N fits one chunk (up to 1024 slots, 64 at E=256), else chunked;
    E=256 and N=5000 span 79 chunks, more than one pass of the offsets loop."""
    check_alignment(uniform_ids(N, E, seed=N + E + block_m).to(device), E, block_m)


@pytest.mark.parametrize("block_m", [16, 64])
@pytest.mark.parametrize("N,E", [(300, 64), (3000, 256)])
def test_zipf(N, E, block_m, device):
    ids = zipf_ids(N, E, seed=N + E)
    assert torch.bincount(ids.long(), minlength=E).max() > 8 * N / E
    check_alignment(ids.to(device), E, block_m)


@pytest.mark.parametrize("block_m", [16, 32])
def test_topk_shaped_int64_ids(block_m, device):
    """ids as `route` gives them, [T, K], here as int64; slots are numbered row-major."""
    ids = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(t))[:8] for t in range(130)])
    check_alignment(ids.to(device), 64, block_m)


@pytest.mark.parametrize("E", [8, 256])
def test_one_expert_has_no_tokens(E, device):
    ids = uniform_ids(1500, E, seed=1)
    ids[ids == 3] = 4
    check_alignment(ids.to(device), E, 16)


@pytest.mark.parametrize("block_m", [16, 64])
@pytest.mark.parametrize("E", [1, 8, 256])
def test_every_slot_on_one_expert(E, block_m, device):
    ids = torch.full((2000,), E - 1, dtype=torch.int32)
    check_alignment(ids.to(device), E, block_m)


@pytest.mark.parametrize("E", [8, 64, 256])
def test_half_the_experts_empty(E, device):
    ids = 2 * uniform_ids(2100, E // 2, seed=E) + 1  # odd experts only
    check_alignment(ids.to(device), E, 32)


@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("E", [1, 64, 256])
def test_few_slots(N, E, device):
    check_alignment(torch.tensor([E - 1, 0][:N], dtype=torch.int32, device=device), E, 16)


def test_exact_multiples_of_block_m_need_no_padding(device):
    ids = torch.arange(8, dtype=torch.int32).repeat_interleave(32)[torch.randperm(256)]
    check_alignment(ids.to(device), 8, 16)
    assert not (tritonmoe.align_tokens(ids.to(device), 8, 16).sorted_ids == 256).any()


def test_out_of_range_ids_are_left_out(device):
    """Documented: ids outside [0, E) are ignored (counted nowhere, placed nowhere)."""
    ids = uniform_ids(500, 8, seed=2)
    ids[::7] = -1
    ids[3::11] = 8
    check_alignment(ids.to(device), 8, 16)


@pytest.mark.parametrize("block_m", [16, 64])
@pytest.mark.parametrize("T,E,K", [(1, 1, 1), (5, 8, 2), (17, 64, 4), (32, 8, 8), (8, 256, 8), (33, 8, 2)])
def test_route_and_align(T, E, K, block_m, device):
    """The decode path routes and aligns in one program: same routing as `route`, same alignment."""
    from tritonmoe.route_align import route_and_align
    from helpers import make_layer
    layer = make_layer(T, E, 40, 1, torch.float32, device, seed=T + E + K)
    weights, ids, got = route_and_align(layer.x, layer.router_weight, K, True, block_m)
    ref_weights, ref_ids = tritonmoe.route(layer.x, layer.router_weight, K)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=1e-7)
    want = align_reference(ids, E, block_m)
    used = int(got.num_post_padded.item())
    assert used == want["num_post_padded"]
    assert torch.equal(got.sorted_ids[:used].cpu(), want["sorted_ids"])
    assert torch.equal(got.expert_ids.cpu(), want["expert_ids"])
    assert torch.equal(got.expert_counts.cpu(), want["expert_counts"])
