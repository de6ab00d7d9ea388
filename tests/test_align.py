"""`tritonmoe.align_tokens` against a plain PyTorch alignment, exactly.

The routed slots (slot i = token i // K, choice i % K) are grouped by expert in ascending slot order,
each expert's group padded to a multiple of BLOCK_M with the sentinel N = T*K. Ids are given directly
(no routing), so every distribution of slots over experts can be tried.
"""
import pytest
import torch

import tritonmoe


def align_reference(topk_ids: torch.Tensor, num_experts: int, block_m: int, tail_m: int | None = None) -> dict:
    """The alignment written out expert by expert. Ids outside [0, E) are left out (as documented). With
    tails, an expert's rows are full blocks, then tail blocks for the rest unless the rest needs as many
    rows as a full block."""
    tail = tail_m or block_m
    ids = topk_ids.reshape(-1).long().cpu()
    N = ids.numel()
    sorted_ids, expert_ids, block_rows, counts = [], [], [], []
    for e in range(num_experts):
        slots = torch.nonzero(ids == e).flatten().tolist()  # ascending: the stable order
        full, rest = divmod(len(slots), block_m)
        if tail > block_m:  # extended last blocks: a rest of at most tail - block_m rows joins the last full block
            if rest == 0:
                heights = [block_m] * full
            elif full >= 1 and rest <= tail - block_m:
                heights = [block_m] * (full - 1) + [tail]
            else:
                heights = [block_m] * (full + 1)
        else:
            tails = -(-rest // tail)
            if tails * tail == block_m:
                full, tails = full + 1, 0
            heights = [block_m] * full + [tail] * tails
        row = len(sorted_ids)
        for height in heights:
            block_rows.append(row)
            expert_ids.append(e)
            row += height
        padded = sum(heights)
        sorted_ids += slots + [N] * (padded - len(slots))
        counts.append(len(slots))
    max_blocks = tritonmoe.align.max_blocks(N, num_experts, block_m, tail_m)
    if tail == block_m:
        assert max_blocks == N // block_m + min(num_experts, N)
    assert len(expert_ids) <= max_blocks
    block_rows += [len(sorted_ids)] * (max_blocks + 1 - len(block_rows))
    expert_ids += [-1] * (max_blocks - len(expert_ids))
    max_padded = tritonmoe.align.max_rows(N, num_experts, block_m, tail_m)
    if tail == block_m:
        assert max_padded == max_blocks * block_m
    assert len(sorted_ids) <= max_padded
    return {
        "sorted_ids": torch.tensor(sorted_ids, dtype=torch.int32),
        "expert_ids": torch.tensor(expert_ids, dtype=torch.int32),
        "block_rows": torch.tensor(block_rows, dtype=torch.int32),
        "num_post_padded": len(sorted_ids),
        "expert_counts": torch.tensor(counts, dtype=torch.int32),
        "max_padded": max_padded,
    }


def check_alignment(topk_ids: torch.Tensor, num_experts: int, block_m: int, tail_m: int | None = None) -> None:
    got = tritonmoe.align_tokens(topk_ids, num_experts, block_m, tail_m)
    check_against_reference(got, topk_ids, num_experts, block_m, tail_m)


def check_against_reference(got, topk_ids, num_experts, block_m, tail_m=None) -> None:
    want = align_reference(topk_ids, num_experts, block_m, tail_m)
    used = int(got.num_post_padded.item())
    assert used == want["num_post_padded"]
    assert got.block_m == block_m and got.num_routed == topk_ids.numel()
    assert got.tail_m == (tail_m or block_m)
    assert got.sorted_ids.shape == (want["max_padded"],), "sorted_ids must have the static size"
    assert torch.equal(got.sorted_ids[:used].cpu(), want["sorted_ids"])
    assert torch.equal(got.expert_ids.cpu(), want["expert_ids"])
    assert torch.equal(got.block_rows.cpu(), want["block_rows"])
    assert torch.equal(got.expert_counts.cpu(), want["expert_counts"])
    # slot_rows inverts sorted_ids for every slot with a valid expert id (others are left unwritten).
    ids = topk_ids.reshape(-1).cpu()
    valid = ((ids >= 0) & (ids < num_experts)).nonzero().flatten()
    rows = got.slot_rows.cpu()[valid].long()
    assert got.slot_rows.shape == (topk_ids.numel(),)
    assert torch.equal(want["sorted_ids"][rows], valid.to(torch.int32))


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
    a = tritonmoe.align_tokens(ids.to(device), 8, 16)
    used = int(a.num_post_padded)
    assert used == 256
    # No padding sentinel among the used rows (rows past them are allocated but never written: not inspected).
    assert not (a.sorted_ids[:used] == 256).any()


def test_out_of_range_ids_are_left_out(device):
    """Documented: ids outside [0, E) are ignored (counted nowhere, placed nowhere)."""
    ids = uniform_ids(500, 8, seed=2)
    ids[::7] = -1
    ids[3::11] = 8
    check_alignment(ids.to(device), 8, 16)


@pytest.mark.parametrize("block_m,tail_m", [(16, None), (64, None), (64, 16)])
@pytest.mark.parametrize("T,E,K", [(1, 1, 1), (5, 8, 2), (17, 64, 4), (32, 8, 8), (8, 256, 8), (33, 8, 2)])
def test_route_and_align(T, E, K, block_m, tail_m, device):
    """The decode path routes and aligns in one program: same routing as `route`, same alignment."""
    from tritonmoe.route_align import route_and_align
    from helpers import make_layer
    layer = make_layer(T, E, 40, 1, torch.float32, device, seed=T + E + K)
    weights, ids, got = route_and_align(layer.x, layer.router_weight, K, True, block_m, tail_m)
    ref_weights, ref_ids = tritonmoe.route(layer.x, layer.router_weight, K)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=1e-7)
    check_against_reference(got, ids, E, block_m, tail_m)


# Tail blocks: (BLOCK_M, TAIL_M) pairs with one, two and seven tails an expert at most.
TAILS = [(32, 16), (64, 16), (128, 64), (128, 16)]


@pytest.mark.parametrize("block_m,tail_m", TAILS)
@pytest.mark.parametrize("N,E", [(1, 1), (5, 3), (100, 8), (1025, 8), (1000, 64), (3000, 256), (5000, 256)])
def test_tails_uniform(N, E, block_m, tail_m, device):
    """Both paths (one program, chunked) with tails, on counts that are and are not multiples of a block."""
    check_alignment(uniform_ids(N, E, seed=N + E + block_m + tail_m).to(device), E, block_m, tail_m)


@pytest.mark.parametrize("block_m,tail_m", TAILS)
def test_tails_zipf_and_one_expert(block_m, tail_m, device):
    check_alignment(zipf_ids(3000, 64, seed=7).to(device), 64, block_m, tail_m)
    check_alignment(torch.full((2000,), 5, dtype=torch.int32, device=device), 8, block_m, tail_m)


def test_tails_geometry(device):
    """135 slots on one expert: one 128-row block and one 16-row tail (144 rows), not 256 rows; 250 slots
    with 64-row tails: the rest (122) would need two tails, as many rows as a full block, so it takes one."""
    a = tritonmoe.align_tokens(torch.zeros(135, dtype=torch.int32, device=device), 2, 128, 16)
    assert int(a.num_post_padded) == 144
    assert a.block_rows[:3].tolist() == [0, 128, 144] and a.expert_ids[:2].tolist() == [0, 0]
    a = tritonmoe.align_tokens(torch.zeros(250, dtype=torch.int32, device=device), 2, 128, 64)
    assert int(a.num_post_padded) == 256 and a.block_rows[:3].tolist() == [0, 128, 256]


# Extended last blocks: (BLOCK_M, TAIL_M) with TAIL_M - BLOCK_M rows folded into an expert's last full block.
EXTS = [(32, 48), (64, 96), (128, 192), (128, 144)]


@pytest.mark.parametrize("block_m,tail_m", EXTS)
@pytest.mark.parametrize("N,E", [(1, 1), (5, 3), (100, 2), (1025, 8), (2048, 8), (1000, 64), (32768, 128),
                                 (5000, 256)])
def test_extended_uniform(N, E, block_m, tail_m, device):
    """Both paths (one program, chunked) with extended last blocks, at ~256 slots per expert (2048 on 8, 32768 on
    128) among others."""
    check_alignment(uniform_ids(N, E, seed=N + E + tail_m).to(device), E, block_m, tail_m)


@pytest.mark.parametrize("block_m,tail_m", EXTS)
def test_extended_zipf_and_one_expert(block_m, tail_m, device):
    check_alignment(zipf_ids(3000, 64, seed=8).to(device), 64, block_m, tail_m)
    check_alignment(torch.full((2000,), 5, dtype=torch.int32, device=device), 8, block_m, tail_m)


def test_extended_geometry(device):
    """269 slots, 128-row blocks extended by 64: a 128-row and a 192-row block (320 rows), not three blocks (384);
    321 slots (65 past 256): three full blocks; 100 slots (no full block to extend): one padded block; 256: two."""
    for n, rows, starts in ((269, 320, [0, 128, 320]), (321, 384, [0, 128, 256, 384]), (100, 128, [0, 128, 128]),
                            (256, 256, [0, 128, 256])):
        a = tritonmoe.align_tokens(torch.zeros(n, dtype=torch.int32, device=device), 2, 128, 192)
        assert int(a.num_post_padded) == rows and a.block_rows[:len(starts)].tolist() == starts, n
        assert a.has_ext and not a.has_tails and not a.uniform


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "one-program"])
@pytest.mark.parametrize("case", [("uniform", 32768, 128, 128, 192), ("uniform", 2049, 8, 128, 192),
                                  ("zipf", 3000, 64, 64, 96), ("exact", 2048, 16, 64, 80)],
                         ids=lambda c: "{}-N{}-E{}-bm{}-tail{}".format(*c))
def test_extended_chunked_layout_both_ways(case, parallel, device, monkeypatch):
    kind, N, E, block_m, tail_m = case
    monkeypatch.setattr(tritonmoe.align, "PARALLEL_LAYOUT_STEPS", -1 if parallel else 1 << 30)
    assert tritonmoe.align.layout_plan(N, E, block_m, tail_m)["parallel"] == parallel
    check_alignment(_layout_ids(kind, N, E).to(device), E, block_m, tail_m)


@pytest.mark.parametrize("tail_m", [8, 24, 256, 136, 200])
def test_bad_tail_is_refused(tail_m, device):
    with pytest.raises(ValueError, match="TAIL_M"):
        tritonmoe.align_tokens(torch.zeros(4, dtype=torch.int32, device=device), 2, 128, tail_m)


# The chunked alignment's layout, one program or spread over programs (`align.layout_plan`): each case forced down
# both ways. E=256 and 5000 slots span 79 chunks; 64 experts with tails; every slot on one expert; half the experts
# empty; slot counts that are exact multiples of a block.
LAYOUT_CASES = [
    ("uniform", 1025, 8, 16, None), ("uniform", 5000, 256, 64, None), ("uniform", 3000, 256, 32, 16),
    ("zipf", 3000, 64, 128, 64), ("zipf", 3000, 64, 16, None), ("one", 2000, 8, 64, 16), ("half", 2100, 64, 32, None),
    ("exact", 2048, 16, 64, None),
    # More chunks than a slab program sums at once (157 > 128: its running totals carry over); 300 experts (the
    # last slab holds columns >= E).
    ("uniform", 10000, 256, 64, None), ("uniform", 3000, 300, 32, None),
]


def _layout_ids(kind, N, E):
    if kind == "uniform":
        return uniform_ids(N, E, seed=N + E)
    if kind == "zipf":
        return zipf_ids(N, E, seed=N)
    if kind == "one":
        return torch.full((N,), E - 1, dtype=torch.int32)
    if kind == "half":
        return 2 * uniform_ids(N, E // 2, seed=E) + 1
    return torch.arange(N, dtype=torch.int32) % E  # every expert gets N / E slots, a multiple of BLOCK_M


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "one-program"])
@pytest.mark.parametrize("case", LAYOUT_CASES, ids=lambda c: "{}-N{}-E{}-bm{}-tail{}".format(*c))
def test_chunked_layout_both_ways(case, parallel, device, monkeypatch):
    kind, N, E, block_m, tail_m = case
    monkeypatch.setattr(tritonmoe.align, "PARALLEL_LAYOUT_STEPS", -1 if parallel else 1 << 30)
    assert tritonmoe.align.layout_plan(N, E, block_m, tail_m)["parallel"] == parallel
    assert N > tritonmoe.align.align_meta(N, E, block_m, tail_m)["CHUNK"]  # the chunked path
    check_alignment(_layout_ids(kind, N, E).to(device), E, block_m, tail_m)


def test_layout_plan_goes_parallel_where_one_program_walks_far():
    plan = tritonmoe.align.layout_plan
    assert not plan(2048, 8, 128)["parallel"]            # mixtral T=1024: two chunks, 25 blocks
    assert plan(32768, 128, 128, 64)["parallel"]         # qwen3-30b-a3b T=4096
    assert plan(65536, 256, 128, 64)["parallel"]         # deepseek-v3 T=8192


@pytest.mark.parametrize("cap", [256, 64])
@pytest.mark.parametrize("N,E,block_m,tail_m", [(1000, 8, 64, None), (1024, 8, 64, 16), (513, 8, 16, None),
                                                 (300, 16, 32, 16)])
def test_max_chunk_cap(cap, N, E, block_m, tail_m, device, monkeypatch):
    """`align.MAX_CHUNK` (what `experiments/bench/align_lab.py` varies): a smaller cap sends N slots that one program
    would align through the chunked path, chunks of at most `cap` slots, with the same tables."""
    monkeypatch.setattr(tritonmoe.align, "MAX_CHUNK", cap)
    tritonmoe.align.align_meta.cache_clear()
    try:
        assert tritonmoe.align.align_meta(N, E, block_m, tail_m)["CHUNK"] == min(cap, 1024)
        check_alignment(uniform_ids(N, E, seed=N + cap).to(device), E, block_m, tail_m)
    finally:
        tritonmoe.align.align_meta.cache_clear()
