"""GPU-only tests: bf16 numerics, CUDA-graph capture and replay, and int64 addressing of large weights.

Skipped without CUDA and while TRITON_INTERPRET is set (see conftest.py). Run on a GPU machine with

    TRITON_INTERPRET=0 python -m pytest -q -m gpu tests/test_gpu.py

The large-offset test needs ~23 GB of GPU memory and skips when less than 40 GB is free.
"""
import pytest
import torch

import tritonmoe
from helpers import REL_TOL, assert_rel_close, layer_reference, make_layer, rel_err

pytestmark = pytest.mark.gpu

MID = dict(H=1024, F=1536)


def gpu_layer(T, E, H, F, dtype, seed=0):
    return make_layer(T, E, H, F, dtype, "cuda", seed=seed)


@pytest.mark.parametrize("T,E,K", [(1, 8, 2), (7, 8, 2), (256, 8, 2), (1, 64, 8), (7, 64, 8), (256, 64, 8)])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_bf16_matches_reference(impl, T, E, K):
    layer = gpu_layer(T, E, MID["H"], MID["F"], torch.bfloat16, seed=T + E)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
    assert y.dtype == torch.bfloat16
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.bfloat16, f"{impl} T={T} E={E} K={K}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("T", [3, 200])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_fp32_fp16_at_gpu_sizes(impl, T, dtype):
    """The tuned GPU tiles (BLOCK_K 64-128, split down projection) at mid sizes, in fp32 and fp16."""
    layer = gpu_layer(T, 8, MID["H"], MID["F"], dtype, seed=T)
    y = tritonmoe.moe(layer.x, *layer.weights, 2, impl=impl)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, 2), dtype, f"{impl} T={T}")


@pytest.mark.parametrize("T", [1, 7, 256])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_bf16_repeated_calls_are_bit_identical(impl, T):
    layer = gpu_layer(T, 64, MID["H"], MID["F"], torch.bfloat16, seed=T)
    first = tritonmoe.moe(layer.x, *layer.weights, 8, impl=impl)
    for _ in range(5):
        assert torch.equal(tritonmoe.moe(layer.x, *layer.weights, 8, impl=impl), first)


def capture(fn):
    """Warms `fn` up on a side stream (Triton compiles there, not during capture), then captures it.
    Capture fails if `fn` synchronises with the host (`.item()`, `.cpu()`, a data-dependent shape)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.parametrize("T,E,K", [(1, 8, 2), (7, 64, 8), (256, 8, 2)])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_cuda_graph_replays_match_eager(impl, T, E, K):
    """The whole layer (routing included) captured once, replayed on new inputs copied into the static
    input: bit-identical to eager each time, and identical across repeated replays."""
    layer = gpu_layer(T, E, MID["H"], MID["F"], torch.bfloat16, seed=1)
    static_x = layer.x.clone()
    graph, static_y = capture(lambda: tritonmoe.moe(static_x, *layer.weights, K, impl=impl))
    for seed in range(2, 5):
        x = gpu_layer(T, E, MID["H"], 1, torch.bfloat16, seed=seed).x
        static_x.copy_(x)
        graph.replay()
        replayed = static_y.clone()
        graph.replay()
        assert torch.equal(static_y, replayed), "two replays on the same input differ"
        eager = tritonmoe.moe(x, *layer.weights, K, impl=impl)
        assert torch.equal(replayed, eager), f"replay differs from eager (seed {seed})"
        assert_rel_close(replayed, layer_reference(x, *layer.weights, K), torch.bfloat16, impl)


@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_cuda_graph_fused_experts(impl):
    """`fused_experts` skips its host-side id check while capturing, so it can be captured too."""
    T, E, K = 16, 8, 2
    layer = gpu_layer(T, E, MID["H"], MID["F"], torch.bfloat16, seed=2)
    weights, ids = tritonmoe.route(layer.x, layer.router_weight, K)
    graph, static_y = capture(lambda: tritonmoe.fused_experts(layer.x, weights, ids, layer.w_gate_up,
                                                                layer.w_down, impl=impl))
    new_weights, new_ids = tritonmoe.route(layer.x.flip(0), layer.router_weight, K)
    weights.copy_(new_weights)
    ids.copy_(new_ids)
    graph.replay()
    eager = tritonmoe.fused_experts(layer.x, new_weights, new_ids, layer.w_gate_up, layer.w_down, impl=impl)
    assert torch.equal(static_y, eager)


# deepseek-v3's routed experts: w_gate_up holds E*2F*H = 7.5e9 elements and w_down 3.8e9, both past
# 2^31, so expert e's weights start past int32 range from e = 74 (gate_up) and e = 147 (down) on.
DEEPSEEK = dict(E=256, H=7168, F=2048, K=8)
INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def deepseek_weights():
    free, _ = torch.cuda.mem_get_info()
    if free < 40e9:
        pytest.skip(f"needs 40 GB of free GPU memory, {free / 1e9:.1f} GB free")
    E, H, F = DEEPSEEK["E"], DEEPSEEK["H"], DEEPSEEK["F"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    router = torch.randn(E, H, device="cuda", dtype=torch.bfloat16, generator=gen).mul_(H ** -0.5)
    w_gate_up = torch.randn(E, 2 * F, H, device="cuda", dtype=torch.bfloat16, generator=gen).mul_(H ** -0.5)
    w_down = torch.randn(E, H, F, device="cuda", dtype=torch.bfloat16, generator=gen).mul_(F ** -0.5)
    yield router, w_gate_up, w_down
    del router, w_gate_up, w_down
    torch.cuda.empty_cache()


def check_rows(y, x, weights, ids, w_gate_up, w_down, rows):
    """Reference on a few token rows only (the float64 reference per expert is the costly part)."""
    ref = tritonmoe.reference_experts(x[rows], weights[rows], ids[rows], w_gate_up, w_down)
    err = rel_err(y[rows], ref)
    assert err <= REL_TOL[torch.bfloat16], f"relative error {err:.3e} on rows {rows}"


@pytest.mark.parametrize("T", [2, 16], ids=["decode-T2", "grouped-T16"])  # T*K <= 16 takes the one-kernel path
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_weight_offsets_past_int32(impl, T, deepseek_weights):
    router, w_gate_up, w_down = deepseek_weights
    E, H, K = DEEPSEEK["E"], DEEPSEEK["H"], DEEPSEEK["K"]
    assert w_gate_up.numel() > INT32_MAX and w_down.numel() > INT32_MAX
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=torch.Generator(device="cuda").manual_seed(T))
    # Given routing: every token uses the last experts, whose weights lie past 2^31 elements.
    ids = torch.stack([torch.arange(E - 1, E - 1 - K, -1, device="cuda").roll(t) for t in range(T)])
    ids[:, -1] = torch.arange(T, device="cuda")  # and some low experts beside them
    weights = torch.rand(T, K, device="cuda") + 0.1
    assert (E - K) * w_down.stride(0) > INT32_MAX and (E - K) * w_gate_up.stride(0) > INT32_MAX
    y = tritonmoe.fused_experts(x, weights, ids, w_gate_up, w_down, impl=impl)
    check_rows(y, x, weights, ids, w_gate_up, w_down, [0, T - 1])
    # The layer's own routing over 256 experts reaches high experts too.
    y = tritonmoe.moe(x, router, w_gate_up, w_down, K, impl=impl)
    topk_weights, topk_ids = tritonmoe.route(x, router, K)
    assert int(topk_ids.max()) * w_down.stride(0) > INT32_MAX, "routing did not reach past 2^31; pick another seed"
    check_rows(y, x, topk_weights, topk_ids, w_gate_up, w_down, [0, T - 1])


def _desc_config(bm, split_k, desc=True):
    return {"BLOCK_M": bm,
            "gate_up": {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "DESC": desc},
            "down": {"BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "DESC": desc,
                     "SPLIT_K": split_k}}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("T,bm,split_k", [(1000, 128, 1), (77, 64, 2)])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_descriptor_path_on_gpu(impl, T, bm, split_k, dtype):
    """The tensor-descriptor (TMA) GEMMs at GPU tiles, every dtype, checked against float64, and as a CUDA
    graph (the descriptors are built on the host at capture and replayed unchanged)."""
    layer = gpu_layer(T, 8, MID["H"], MID["F"], dtype, seed=T)
    cfg = _desc_config(bm, split_k)
    if dtype == torch.float32:  # 4-byte tiles: the same shapes need half the stages' room
        cfg = tritonmoe.config.fit_shared_memory(cfg, 4)
    y = tritonmoe.moe(layer.x, *layer.weights, 2, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, 2), dtype, f"{impl} T={T} desc")
    static_x = layer.x.clone()
    graph, static_y = capture(lambda: tritonmoe.moe(static_x, *layer.weights, 2, impl=impl, config=cfg))
    x = gpu_layer(T, 8, MID["H"], 1, dtype, seed=T + 1).x
    static_x.copy_(x)
    graph.replay()
    assert torch.equal(static_y, tritonmoe.moe(x, *layer.weights, 2, impl=impl, config=cfg))


@pytest.mark.parametrize("desc", [False, True], ids=["pointers", "desc"])
@pytest.mark.parametrize("bm,tail", [(128, 64), (128, 16), (64, 16)])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_tail_blocks_on_gpu(impl, bm, tail, desc):
    """Tail blocks at GPU tiles in bf16 (both tile heights compiled into one kernel), pointer and descriptor
    kernels, checked against float64 and replayed as a CUDA graph."""
    T = 600  # ~150 slots an expert: one or two full blocks and a rest of ~22 rows
    layer = gpu_layer(T, 8, MID["H"], MID["F"], torch.bfloat16, seed=T + bm + tail)
    cfg = {**_desc_config(bm, 1, desc=desc), "TAIL_M": tail}
    _, ids = tritonmoe.route(layer.x, layer.router_weight, 2)
    a = tritonmoe.align_tokens(ids, 8, bm, tail)
    heights = (a.block_rows[1:] - a.block_rows[:-1]).tolist()
    assert bm in heights and tail in heights, heights
    y = tritonmoe.moe(layer.x, *layer.weights, 2, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, 2), torch.bfloat16, f"{impl} tail {bm}/{tail}")
    static_x = layer.x.clone()
    graph, static_y = capture(lambda: tritonmoe.moe(static_x, *layer.weights, 2, impl=impl, config=cfg))
    static_x.copy_(gpu_layer(T, 8, MID["H"], 1, torch.bfloat16, seed=T + 1).x)
    graph.replay()
    assert torch.equal(static_y, tritonmoe.moe(static_x, *layer.weights, 2, impl=impl, config=cfg))


@pytest.mark.parametrize("warps", [8, 16])
@pytest.mark.parametrize("kernels", ["pointers", "desc", "persistent"])
@pytest.mark.parametrize("ext", [64, 32])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_extended_blocks_on_gpu(impl, ext, kernels, warps):
    """Extended last blocks (TAIL_M = 128 + ext) at GPU tiles in bf16, ~256 rows per expert (T=1024, E=8, K=2: about
    half the experts take a 128 + ext-row block), through the pointer, descriptor and persistent gate/up kernels at 8
    and 16 warps, against float64 and replayed as a CUDA graph."""
    from tritonmoe.config import with_ext
    T = 1024
    layer = gpu_layer(T, 8, MID["H"], MID["F"], torch.bfloat16, seed=T + ext)
    base = _desc_config(128, 1, desc=kernels == "desc")
    if kernels == "persistent":
        base = {**base, "gate_up": {**base["gate_up"], "PERSISTENT": True}}
    base = {**base, "gate_up": {**base["gate_up"], "num_warps": warps}, "down": {**base["down"], "num_warps": warps}}
    cfg = with_ext(base, ext)
    _, ids = tritonmoe.route(layer.x, layer.router_weight, 2)
    a = tritonmoe.align_tokens(ids, 8, 128, 128 + ext)
    heights = (a.block_rows[1:] - a.block_rows[:-1]).tolist()
    assert 128 + ext in heights, heights
    y = tritonmoe.moe(layer.x, *layer.weights, 2, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, 2), torch.bfloat16, f"{impl} ext {ext} {kernels}")
    static_x = layer.x.clone()
    graph, static_y = capture(lambda: tritonmoe.moe(static_x, *layer.weights, 2, impl=impl, config=cfg))
    static_x.copy_(gpu_layer(T, 8, MID["H"], 1, torch.bfloat16, seed=T + 1).x)
    graph.replay()
    assert torch.equal(static_y, tritonmoe.moe(static_x, *layer.weights, 2, impl=impl, config=cfg))


@pytest.mark.parametrize("E,K", [(8, 2), (32, 8), (64, 4), (64, 8), (128, 8), (256, 8)])
@pytest.mark.parametrize("T", [1, 2, 7, 16, 32])
def test_decode_route_and_align_exact_on_gpu(T, E, K):
    """The decode routing program (`route_align`) at every decode shape against the plain alignment: with one
    warp it left every other block's padding rows unwritten at E=64 (Triton 3.6, H100), which only the GPU shows."""
    from tritonmoe.route_align import route_and_align
    from test_align import check_against_reference
    for block_m, tail in ((16, None), (64, 16)):
        layer = gpu_layer(T, E, 1024, 64, torch.bfloat16, seed=T + E + K)
        _, ids, got = route_and_align(layer.x, layer.router_weight, K, True, block_m, tail)
        check_against_reference(got, ids, E, block_m, tail)


def _combine_config(bn=16, bk=128, bm=16):
    return {"BLOCK_M": bm,
            "gate_up": {"BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 3},
            "down": {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": 4, "num_stages": 2, "COMBINE": True}}


@pytest.mark.parametrize("T,E,K,bn,bk", [(1, 8, 2, 16, 128), (1, 64, 8, 8, 256), (3, 64, 6, 32, 64), (8, 16, 8, 16, 64)])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_down_combine_on_gpu(impl, T, E, K, bn, bk):
    """The down projection with the combine (`down.down_combine`) in bf16 at GPU tiles: against float64, bit-identical
    call after call, and as a CUDA graph."""
    layer = gpu_layer(T, E, MID["H"], MID["F"], torch.bfloat16, seed=T + E + K)
    cfg = _combine_config(bn, bk)
    y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.bfloat16, f"{impl} T={T} combine")
    for _ in range(3):
        assert torch.equal(tritonmoe.moe(layer.x, *layer.weights, K, impl=impl, config=cfg), y)
    static_x = layer.x.clone()
    graph, static_y = capture(lambda: tritonmoe.moe(static_x, *layer.weights, K, impl=impl, config=cfg))
    static_x.copy_(gpu_layer(T, E, MID["H"], 1, torch.bfloat16, seed=T + 1).x)
    graph.replay()
    assert torch.equal(static_y, tritonmoe.moe(static_x, *layer.weights, K, impl=impl, config=cfg))


def test_down_combine_weight_offsets_past_int32(deepseek_weights):
    """`down_combine` addresses experts past 2^31 elements of w_down (int64 offsets)."""
    router, w_gate_up, w_down = deepseek_weights
    E, H, K, T = DEEPSEEK["E"], DEEPSEEK["H"], DEEPSEEK["K"], 2
    x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16, generator=torch.Generator(device="cuda").manual_seed(5))
    ids = torch.stack([torch.arange(E - 1, E - 1 - K, -1, device="cuda").roll(t) for t in range(T)])
    weights = torch.rand(T, K, device="cuda") + 0.1
    assert (E - K) * w_down.stride(0) > INT32_MAX
    y = tritonmoe.fused_experts(x, weights, ids, w_gate_up, w_down, config=_combine_config())
    check_rows(y, x, weights, ids, w_gate_up, w_down, [0, T - 1])


@pytest.mark.parametrize("desc", [True, False], ids=["desc", "gather-inside"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("T,bm", [(1000, 128), (77, 64)])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_persistent_gate_up_on_gpu(impl, T, bm, dtype, desc):
    """The persistent gate/up kernels (`PERSISTENT`: one program per SM, TMA store; tokens from a gathered copy with
    `DESC`, gathered inside the loop without) at GPU tiles, every dtype, against float64 and as a CUDA graph."""
    layer = gpu_layer(T, 8, MID["H"], MID["F"], dtype, seed=T + 3)
    cfg = _desc_config(bm, 1)
    cfg = {**cfg, "gate_up": {**cfg["gate_up"], "PERSISTENT": True, "num_stages": 4, "DESC": desc}}
    if dtype == torch.float32:
        cfg = tritonmoe.config.fit_shared_memory(cfg, 4)
    y = tritonmoe.moe(layer.x, *layer.weights, 2, impl=impl, config=cfg)
    assert_rel_close(y, layer_reference(layer.x, *layer.weights, 2), dtype, f"{impl} T={T} persistent")
    static_x = layer.x.clone()
    graph, static_y = capture(lambda: tritonmoe.moe(static_x, *layer.weights, 2, impl=impl, config=cfg))
    static_x.copy_(gpu_layer(T, 8, MID["H"], 1, dtype, seed=T + 4).x)
    graph.replay()
    assert torch.equal(static_y, tritonmoe.moe(static_x, *layer.weights, 2, impl=impl, config=cfg))
