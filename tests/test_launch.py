"""`tritonmoe._launch.launch`: the fast launch path picks the kernel Triton would and launches it right.

The fast path (a compiled kernel looked up by the binder's specialization and launched directly) needs CUDA; its
GPU tests change one argument at a time in a way that changes Triton's specialization (a pointer off 16-byte
alignment, an integer of 1, of a multiple of 16, past int32, a constexpr, the number of warps) and check every
launch's output against torch. Without CUDA only the fall-through to `kernel[grid]` runs (interpreter).
"""
import pytest
import torch
import triton
import triton.language as tl

import tritonmoe
from helpers import assert_rel_close, layer_reference, make_layer
from tritonmoe import _launch


@triton.jit
def _axpb_kernel(x_ptr, y_ptr, n, a, b, BLOCK: tl.constexpr, SQUARE: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if SQUARE:
        v = v * v
    tl.store(y_ptr + offs, v * a + b, mask=mask)


def _run(x, n, a, b, block=128, square=False, **opts):
    y = torch.full_like(x, float("nan"))
    _launch.launch(_axpb_kernel, (triton.cdiv(n, block),), x, y, n, a, b, BLOCK=block, SQUARE=square, **opts)
    return y


def _expected(x, n, a, b, square=False):
    v = x.double()
    v = v * v if square else v
    out = torch.full_like(v, float("nan"))
    out[:n] = v[:n] * a + b
    return out


def test_fall_through_without_fast_path(device):
    """On the CPU (interpreter) the kernel has no device caches: `launch` is `kernel[grid]`."""
    if device != "cpu":
        pytest.skip("the interpreter's fall-through")
    x = torch.randn(300)
    y = _run(x, 300, 2, 1)
    assert torch.allclose(y.double(), _expected(x, 300, 2, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_fast_path_follows_specialization():
    _launch.clear()
    base = torch.randn(4096 + 64, device="cuda", dtype=torch.float32)
    cases = [
        (base[:4096], 4096, 3, 0.5, {}),
        (base[:4096], 4096, 3, 0.5, {}),  # the same specialization again: the cached kernel
        (base[1:4097], 4096, 3, 0.5, {}),  # pointer 4 bytes off 16-byte alignment
        (base[:4096], 1, 3, 0.5, {}),  # n == 1
        (base[:4096], 4001, 1, 0.5, {}),  # a == 1, n not a multiple of 16
        (base[:4096], 4096, 2 ** 33 + 3, 0.5, {}),  # an int64 argument
        (base[:4096], 4096, 3, 0.5, {"square": True}),  # a constexpr
        (base[:4096], 4096, 3, 0.5, {"block": 256, "num_warps": 8}),
        (base[1:4097], 4096, 3, 0.5, {}),  # back to an earlier specialization
    ]
    for x, n, a, b, kw in cases:
        square = kw.get("square", False)
        y = _run(x, n, a, b, **kw)
        want = _expected(x, n, a, b, square)
        assert torch.allclose(y.double()[:n], want[:n], rtol=1e-6, atol=1e-6 * abs(a)), (n, a, kw)
        assert torch.isnan(y[n:]).all(), "wrote past n"
    # One cached kernel per distinct specialization (the repeats add none).
    keys = [k for k in _launch._KERNELS if k[0] is _axpb_kernel]
    assert len(keys) == 7


@pytest.mark.gpu
def test_fast_path_under_graph_capture():
    """Launches captured into a CUDA graph (the stream is the capture stream) replay on new inputs."""
    x = torch.randn(1000, device="cuda")
    _run(x, 1000, 2, 1)  # compile and cache outside the capture
    y = torch.empty_like(x)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        _launch.launch(_axpb_kernel, (8,), x, y, 1000, 2, 1, BLOCK=128, SQUARE=False)
    x.copy_(torch.randn_like(x))
    y.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert torch.allclose(y.double(), x.double() * 2 + 1, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_switched_off(monkeypatch):
    monkeypatch.setattr(_launch, "_ENABLED", False)
    _launch.clear()
    x = torch.randn(333, device="cuda")
    y = _run(x, 333, 2, 1)
    assert torch.allclose(y.double(), _expected(x, 333, 2, 1), rtol=1e-6, atol=1e-6)
    assert not _launch._KERNELS


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 200])
def test_layer_through_fast_path_matches_slow(monkeypatch, T):
    """The layer's launches go through the fast path (the first call caches their kernels and records a plan, the
    next replays it) and give the bits of Triton's own launches."""
    layer = make_layer(T, 8, 256, 384, torch.bfloat16, "cuda", seed=T)
    _launch.clear()
    for _ in range(2):
        fast = tritonmoe.moe(layer.x, *layer.weights, 2)
    assert _launch._KERNELS, "no launch took the fast path"
    assert any(_launch._PLANS.values()), "no plan recorded"
    monkeypatch.setattr(_launch, "_ENABLED", False)
    slow = tritonmoe.moe(layer.x, *layer.weights, 2)
    assert torch.equal(fast, slow)


def _moe_slow(monkeypatch, layer, K, impl):
    with monkeypatch.context() as m:
        m.setattr(_launch, "_ENABLED", False)
        return tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)


@pytest.mark.gpu
@pytest.mark.parametrize("T,E,K,H,F", [(1, 8, 2, 256, 384), (7, 8, 2, 1024, 1536), (300, 8, 2, 1024, 1536),
                                       (33, 64, 8, 256, 384), (600, 64, 8, 512, 256), (2048, 16, 4, 1024, 1536)])
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_plan_replay_is_bit_identical(monkeypatch, impl, T, E, K, H, F):
    """The first call records a plan, later calls with new inputs of the same metadata replay it; each output equals
    Triton's own launches on the same inputs, bit for bit, and the float64 reference within tolerance."""
    first = make_layer(T, E, H, F, torch.bfloat16, "cuda", seed=T + E)
    y0 = tritonmoe.moe(first.x, *first.weights, K, impl=impl)
    assert any(_launch._PLANS.values()), "the first call recorded no plan"
    assert torch.equal(y0, _moe_slow(monkeypatch, first, K, impl))
    for seed in (1, 2):
        layer = make_layer(T, E, H, F, torch.bfloat16, "cuda", seed=1000 * seed + T)  # new tensors, new pointers
        y = tritonmoe.moe(layer.x, *layer.weights, K, impl=impl)
        assert torch.equal(y, _moe_slow(monkeypatch, layer, K, impl)), f"replay {seed}"
        assert_rel_close(y, layer_reference(layer.x, *layer.weights, K), torch.bfloat16, f"{impl} T={T} replay")


@pytest.mark.gpu
def test_plan_keys_on_alignment_and_strides(monkeypatch):
    """An input 2 bytes off 16-byte alignment, or with other strides, gets a plan of its own (Triton specializes on
    both); every call still matches the normal path."""
    layer = make_layer(64, 8, 256, 384, torch.bfloat16, "cuda", seed=3)
    tritonmoe.moe(layer.x, *layer.weights, 2)
    buf = torch.empty(64 * 256 + 1, dtype=torch.bfloat16, device="cuda")
    x_off = buf[1:].view(64, 256)
    x_off.copy_(layer.x)
    wide = torch.empty(64, 512, dtype=torch.bfloat16, device="cuda")
    x_strided = wide[:, :256]
    x_strided.copy_(layer.x)
    want = _moe_slow(monkeypatch, layer, 2, "tritonmoe_fused")
    for x in (x_off, x_strided, layer.x):
        y = tritonmoe.moe(x, *layer.weights, 2)
        assert torch.equal(y, want)
    assert sum(1 for p in _launch._PLANS.values() if p) == 3


@pytest.mark.gpu
def test_plan_replay_inside_graph_capture():
    """A replay captured into a CUDA graph reads the inputs the graph was captured on; recording is skipped while
    capturing (the normal path is captured instead)."""
    layer = make_layer(16, 8, 256, 384, torch.bfloat16, "cuda", seed=5)
    x = layer.x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        tritonmoe.moe(x, *layer.weights, 2)  # records
        tritonmoe.moe(x, *layer.weights, 2)  # replays
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = tritonmoe.moe(x, *layer.weights, 2)
    new = make_layer(16, 8, 256, 384, torch.bfloat16, "cuda", seed=6).x
    x.copy_(new)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, tritonmoe.moe(new, *layer.weights, 2))


@pytest.mark.gpu
def test_plan_not_recorded_for_bad_input_and_errors_stay():
    """A call that raises records nothing, and the same bad call raises again (validation is not skipped)."""
    layer = make_layer(8, 8, 256, 384, torch.bfloat16, "cuda", seed=7)
    for _ in range(2):
        with pytest.raises(ValueError, match="top_k"):
            tritonmoe.moe(layer.x, *layer.weights, 9)
    assert not any(_launch._PLANS.values())


@pytest.mark.gpu
def test_plan_keeps_no_tensor_alive():
    """A recorded plan holds no reference to the call's inputs, weights or intermediates: their memory is freed
    when the caller drops them (a plan that kept a 20 GB model's weights would run the next model out of memory)."""
    import gc
    import weakref
    layer = make_layer(300, 8, 1024, 1536, torch.bfloat16, "cuda", seed=11)
    tritonmoe.moe(layer.x, *layer.weights, 2)
    assert any(_launch._PLANS.values())
    refs = [weakref.ref(t) for t in (layer.x, *layer.weights)]
    del layer
    gc.collect()
    assert all(r() is None for r in refs), "a plan keeps an input alive"
    for p in _launch._PLANS.values():
        for _, _, template, _ in p.launches:
            assert not any(isinstance(v, (torch.Tensor,)) for v in template)


def test_recorder_resolves_pointers():
    """The recorder's bookkeeping, without a GPU: each tensor argument becomes (source, byte offset) against the
    inputs (0-3), the intermediates' one allocation (4, each 256-byte aligned in it, sharing bytes once a buffer's
    launches are over) or the output (5); descriptors keep their geometry; the template keeps no tensor; an unknown
    pointer or inputs sharing memory give no plan."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    def bound(*values):
        return {f"a{i}": v for i, v in enumerate(values)}

    inputs = tuple(torch.zeros(n, dtype=torch.float32) for n in (64, 32, 128, 96))
    rec = _launch._Recorder(inputs)
    a = torch.zeros(10, dtype=torch.int32)  # 40 bytes -> 256 in the arena
    b = torch.zeros(4, 8, dtype=torch.float32)  # 128 bytes -> 256
    out = torch.zeros(3, 5, dtype=torch.float32)
    for t in (a, b, out):
        rec.alloc(t)
    kernel = object()
    desc = TensorDescriptor(inputs[2].view(8, 16), [8, 16], [16, 1], [8, 16])
    rec.launch(kernel, (2,), bound(inputs[0][4:], 7, a[3:], b, desc, out, None, "c"))
    plan = rec.build(out)
    (k, grid, template, subs), = plan.launches
    assert k is kernel and grid == (2, 1, 1) and plan.arena_bytes == 256 + 256
    assert template == [None, 7, None, None, None, None, None, "c"]
    assert subs[0] == (0, 0, 16, None)  # inputs[0] + 4 floats
    assert subs[1] == (2, 4, 256 + 12, None)  # a + 3 ints; a (live with b) after b, the larger, in the arena
    assert subs[2] == (3, 4, 0, None)
    assert subs[3][:3] == (4, 2, 0) and subs[3][3][1:] == ([8, 16], [16, 1], [8, 16], "zero")
    assert subs[4] == (5, 5, 0, None)
    # A later launch's intermediate shares bytes with those whose launches are over.
    c = torch.zeros(64, dtype=torch.float32)
    rec2 = _launch._Recorder(inputs)
    for t in (a, b, c, out):
        rec2.alloc(t)
    for values in ((a, b), (b, out), (c, out)):
        rec2.launch(kernel, (1,), bound(*values))
    plan2 = rec2.build(out)
    assert [sub[2] for sub in plan2.launches[2][3]] == [0, 0] and plan2.arena_bytes == 512
    # An address handed out again within the call resolves to the newest allocation.
    rec3 = _launch._Recorder(inputs)
    rec3.alloc(a)
    rec3.launch(kernel, (1,), bound(a))
    rec3.alloc(a[:4])  # "freed and reused": same start address, a later allocation
    rec3.alloc(out)
    rec3.launch(kernel, (1,), bound(a[:4], out))
    plan3 = rec3.build(out)
    assert plan3.launches[0][3][0] == (0, 4, 0, None) and plan3.launches[1][3][0] == (0, 4, 0, None)
    stray = _launch._Recorder(inputs)
    stray.alloc(out)
    stray.launch(kernel, (1,), bound(torch.zeros(4)))
    assert stray.build(out) is None
    base = torch.zeros(256)
    shared = _launch._Recorder((base[:64], base[64:96], base[32:160], torch.zeros(4)))
    shared.alloc(out)
    shared.launch(kernel, (1,), bound(out))
    assert shared.build(out) is None


def test_pack_shares_bytes_only_between_disjoint_lifetimes():
    bufs = {0: (1000, 0, 1), 1: (300, 1, 2), 2: (5000, 2, 3), 3: (10, 4, 4), 4: (700, 0, 4)}
    off = _launch._pack(bufs)
    r = _launch._round
    for i in bufs:
        for j in bufs:
            if i < j and bufs[i][1] <= bufs[j][2] and bufs[j][1] <= bufs[i][2]:  # lifetimes overlap
                a, b = (off[i], off[i] + r(bufs[i][0])), (off[j], off[j] + r(bufs[j][0]))
                assert a[1] <= b[0] or b[1] <= a[0], (i, j, off)
    assert all(o % 256 == 0 for o in off.values())
    peak = max(off[i] + r(bufs[i][0]) for i in bufs)
    assert peak < sum(r(b[0]) for b in bufs.values())  # buffer 0 and 2 (and 3) reuse bytes


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 64, 2048])
def test_plan_holds_every_launch_of_the_normal_path(T):
    """A launch hook counts the kernels a normal call launches (with a hook installed, nothing is recorded or
    replayed); the plan recorded without the hook replays exactly as many."""
    from triton import knobs
    layer = make_layer(T, 16, 512, 768, torch.bfloat16, "cuda", seed=T)
    names = []
    hook = lambda metadata: names.append(metadata.get()["name"])  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        tritonmoe.moe(layer.x, *layer.weights, 4)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert names and not any(_launch._PLANS.values())
    tritonmoe.moe(layer.x, *layer.weights, 4)
    plan, = [p for p in _launch._PLANS.values() if p]
    assert [k.name for k, *_ in plan.launches] == names
