"""`tritonmoe.ops`: the custom ops under `torch.library.opcheck` and `torch.compile(fullgraph=True)`.

Where the kernels run (CPU under the interpreter, or the GPU): the ops' schema, fake implementation
and dispatch (`opcheck`); Dynamo traces the layer and whole patched Hugging Face models into one
graph holding the op. GPU only (marked `gpu`): `mode="reduce-overhead"` captures the compiled layer
and model into CUDA graphs (no cudagraph skips) and matches eager; an explicit
`torch.cuda.CUDAGraph` capture of a patched eager model replays to the eager result.
"""
import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode

import tritonmoe
from helpers import assert_rel_close, make_layer, rel_err
from tritonmoe import ops

T, E, K, H, F = 9, 4, 2, 32, 24


class RecordingBackend:
    """A torch.compile backend that keeps the Dynamo graphs and runs them through aot_eager (which
    traces the fake implementations again, with AOTAutograd)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    def op_calls(self, name: str) -> int:
        return sum(gm.code.count(f"torch.ops.tritonmoe.{name}") for gm in self.graphs)


def routing_of(layer, top_k):
    probs = torch.softmax(layer.x @ layer.router_weight.T, dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), ids


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_opcheck_moe(device):
    layer = make_layer(T, E, H, F, device=device)
    for renormalize in (True, False):
        torch.library.opcheck(torch.ops.tritonmoe.moe.default,
                              (layer.x, *layer.weights, K, renormalize, "tritonmoe_fused"))


def test_opcheck_fused_experts(device):
    layer = make_layer(T, E, H, F, device=device)
    weights, ids = routing_of(layer, K)
    torch.library.opcheck(torch.ops.tritonmoe.fused_experts.default,
                          (layer.x, weights, ids, layer.w_gate_up, layer.w_down, "tritonmoe_fused"))


def test_ops_match_the_public_calls(device):
    layer = make_layer(T, E, H, F, device=device)
    weights, ids = routing_of(layer, K)
    torch.testing.assert_close(ops.moe(layer.x, *layer.weights, K), tritonmoe.moe(layer.x, *layer.weights, K),
                               rtol=0, atol=0)
    torch.testing.assert_close(ops.fused_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down),
                               tritonmoe.fused_experts(layer.x, weights, ids, layer.w_gate_up, layer.w_down),
                               rtol=0, atol=0)


def test_fake_implementations_check_inputs(device):
    """Shapes, dtypes and impls are checked at trace time, with the real call's messages."""
    layer = make_layer(T, E, H, F, device=device)
    weights, ids = routing_of(layer, K)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x, wr, wgu, wd, w, i = (mode.from_tensor(t) for t in (layer.x, *layer.weights, weights, ids))
        y = ops.moe(x, wr, wgu, wd, K)
        assert y.shape == (T, H) and y.dtype == layer.x.dtype
        assert ops.fused_experts(x, w, i, wgu, wd).shape == (T, H)
        with pytest.raises(ValueError, match=r"^w_down: expected shape \[4, 32, 24\]"):
            ops.moe(x, wr, wgu, wd[:, :, :-1], K)
        with pytest.raises(ValueError, match="^top_k: expected 1 <= top_k <= 4"):
            ops.moe(x, wr, wgu, wd, 5)
        with pytest.raises(ValueError, match="^impl: expected one of"):
            ops.fused_experts(x, w, i, wgu, wd, impl="no_such_impl")
        with pytest.raises(TypeError, match="^topk_ids: expected dtype int32 or int64"):
            ops.fused_experts(x, w, i.float(), wgu, wd)


@pytest.mark.parametrize("op", ["moe", "fused_experts"])
def test_layer_compiles_fullgraph_with_dynamic_tokens(op, device):
    """One graph for every token count (the fake implementation propagates a symbolic T)."""
    layer = make_layer(40, E, H, F, device=device)

    def f(x):
        if op == "moe":
            return ops.moe(x, *layer.weights, K)
        weights, ids = torch.topk(torch.softmax(x @ layer.router_weight.T, dim=-1), K, dim=-1)
        return ops.fused_experts(x, weights, ids, layer.w_gate_up, layer.w_down)

    backend = RecordingBackend()
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=backend)
    for tokens in (5, 17, 40):
        x = layer.x[:tokens]
        assert_rel_close(compiled(x), f(x), torch.float32, f"{op} T={tokens}")
    assert len(backend.graphs) == 1 and backend.op_calls(op) == 1


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])  # Qwen3-MoE's block is Mixtral's, less renormalisation
def test_patched_model_compiles_fullgraph(family, device):
    from test_hf import tiny_model, token_ids
    from tritonmoe.hf import patch_model

    model = patch_model(tiny_model(family, device=device))
    backend = RecordingBackend()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        for seed in (1, 2):
            ids = token_ids(2, 7, 64, device, seed=seed)
            assert_rel_close(compiled(ids, use_cache=False).logits, model(ids, use_cache=False).logits,
                             torch.float32, f"{family} seed={seed}")
    assert len(backend.graphs) == 1 and backend.op_calls("fused_experts") == 2, "one graph, one op per MoE layer"


# ---- GPU: CUDA graphs ---------------------------------------------------------------------------------

def cuda_graph_skips() -> int:
    return counters["inductor"]["cudagraph_skips"]


@pytest.mark.gpu
@pytest.mark.parametrize("impl", tritonmoe.IMPLS)
def test_reduce_overhead_layer_is_cuda_graphed(impl):
    layer = make_layer(64, 8, 256, 512, torch.bfloat16, "cuda")
    eager = ops.moe(layer.x, *layer.weights, 2, impl=impl)
    counters.clear()
    compiled = torch.compile(lambda x: ops.moe(x, *layer.weights, 2, impl=impl), mode="reduce-overhead",
                             fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        y = compiled(layer.x).clone()
        torch.testing.assert_close(y, eager, rtol=0, atol=0)
    assert cuda_graph_skips() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_reduce_overhead_model_is_cuda_graphed(family):
    """fp32, so that the compiled model's rounding (inductor fuses the norms) cannot flip an expert choice."""
    from test_hf import GPU_SHAPE, tiny_model, token_ids
    from tritonmoe.hf import patch_model

    model = patch_model(tiny_model(family, torch.float32, "cuda", **GPU_SHAPE))
    counters.clear()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for seed in range(3):  # warm-up, record, replay
            ids = token_ids(2, 16, GPU_SHAPE["vocab"], "cuda", seed=seed)
            out = compiled(ids, use_cache=False).logits.clone()
            err = rel_err(out, model(ids, use_cache=False).logits)
            assert err < 1e-4, f"{family} call {seed}: relative error {err:.2e} against eager"
    assert cuda_graph_skips() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_patched_model_captures_into_a_cuda_graph(family):
    """The eager patched model under `torch.cuda.graph`: no host synchronisation, and replays to the eager result."""
    from test_hf import GPU_SHAPE, tiny_model, token_ids
    from tritonmoe.hf import patch_model

    model = patch_model(tiny_model(family, torch.bfloat16, "cuda", **GPU_SHAPE))
    static_ids = token_ids(2, 16, GPU_SHAPE["vocab"], "cuda", seed=0)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles the kernels outside the capture
            for _ in range(2):
                model(static_ids, use_cache=False)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = model(static_ids, use_cache=False).logits
        for seed in (1, 2):
            ids = token_ids(2, 16, GPU_SHAPE["vocab"], "cuda", seed=seed)
            static_ids.copy_(ids)
            graph.replay()
            torch.cuda.synchronize()
            assert_rel_close(static_logits, model(ids, use_cache=False).logits, torch.bfloat16, f"{family} {seed}")
