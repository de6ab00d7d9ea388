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
    """The layer's launches go through the fast path (it caches their kernels) and give the bits of Triton's own
    launches."""
    import tritonmoe
    from helpers import make_layer
    layer = make_layer(T, 8, 256, 384, torch.bfloat16, "cuda", seed=T)
    _launch.clear()
    for _ in range(2):
        fast = tritonmoe.moe(layer.x, *layer.weights, 2)
    assert _launch._KERNELS, "no launch took the fast path"
    monkeypatch.setattr(_launch, "_ENABLED", False)
    slow = tritonmoe.moe(layer.x, *layer.weights, 2)
    assert torch.equal(fast, slow)
