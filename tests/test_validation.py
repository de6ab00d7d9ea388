"""Bad input raises before any kernel runs: ValueError for values, shapes and top_k, TypeError for
dtypes and devices, with a message of the form "<argument>: expected ..., got ..."."""
import re

import pytest
import torch

import tritonmoe

T, E, H, F, K = 5, 4, 16, 12, 2  # 2F != H, so a transposed weight has the wrong shape


def raises(exc, argument):
    return pytest.raises(exc, match=re.compile(rf"^{re.escape(argument)}: expected .*\bgot\b", re.DOTALL))


def valid_inputs(device):
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(T, H, generator=g).to(device),
        "router_weight": (torch.randn(E, H, generator=g) / H ** 0.5).to(device),
        "w_gate_up": (torch.randn(E, 2 * F, H, generator=g) / H ** 0.5).to(device),
        "w_down": (torch.randn(E, H, F, generator=g) / F ** 0.5).to(device),
    }


def call_moe(inputs, top_k=K, **kw):
    return tritonmoe.moe(inputs["x"], inputs["router_weight"], inputs["w_gate_up"], inputs["w_down"], top_k, **kw)


def test_valid_inputs_pass(device):
    """The baseline every case below breaks in one place."""
    inputs = valid_inputs(device)
    assert call_moe(inputs).shape == (T, H)


def transposed(t):
    """Same shape, last-dim stride != 1."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# (argument, replacement built from the valid tensor, exception)
BAD_TENSORS = {
    "x 1-D": ("x", lambda t: t[0], ValueError),
    "x 3-D": ("x", lambda t: t[None], ValueError),
    "x float64": ("x", lambda t: t.double(), TypeError),
    "x int32": ("x", lambda t: t.int(), TypeError),
    "x not a tensor": ("x", lambda t: t.tolist(), TypeError),
    "x last stride": ("x", transposed, ValueError),
    "router_weight 1-D": ("router_weight", lambda t: t[0], ValueError),
    "router_weight E+1 rows": ("router_weight", lambda t: torch.cat([t, t[:1]]), ValueError),
    "router_weight H-1 cols": ("router_weight", lambda t: t[:, :-1].contiguous(), ValueError),
    "router_weight fp16": ("router_weight", lambda t: t.half(), TypeError),
    "router_weight int64": ("router_weight", lambda t: t.long(), TypeError),
    "router_weight meta": ("router_weight", lambda t: t.to("meta"), TypeError),
    "router_weight last stride": ("router_weight", transposed, ValueError),
    "w_gate_up 2-D": ("w_gate_up", lambda t: t[0], ValueError),
    "w_gate_up 4-D": ("w_gate_up", lambda t: t[None], ValueError),
    "w_gate_up odd 2F": ("w_gate_up", lambda t: t[:, :-1].contiguous(), ValueError),
    "w_gate_up 2F=0": ("w_gate_up", lambda t: t[:, :0].contiguous(), ValueError),
    "w_gate_up wrong H": ("w_gate_up", lambda t: t[:, :, :-1].contiguous(), ValueError),
    "w_gate_up [E, H, 2F]": ("w_gate_up", lambda t: t.transpose(1, 2).contiguous(), ValueError),
    "w_gate_up fp16": ("w_gate_up", lambda t: t.half(), TypeError),
    "w_gate_up float64": ("w_gate_up", lambda t: t.double(), TypeError),
    "w_gate_up meta": ("w_gate_up", lambda t: t.to("meta"), TypeError),
    "w_gate_up last stride": ("w_gate_up", transposed, ValueError),
    "w_down 2-D": ("w_down", lambda t: t[0], ValueError),
    "w_down wrong F": ("w_down", lambda t: torch.cat([t, t[:, :, :1]], dim=2), ValueError),
    "w_down wrong E": ("w_down", lambda t: t[:-1].contiguous(), ValueError),
    "w_down [E, F, H]": ("w_down", lambda t: t.transpose(1, 2).contiguous(), ValueError),
    "w_down fp16": ("w_down", lambda t: t.half(), TypeError),
    "w_down int32": ("w_down", lambda t: t.int(), TypeError),
    "w_down meta": ("w_down", lambda t: t.to("meta"), TypeError),
    "w_down last stride": ("w_down", transposed, ValueError),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensor(case, device):
    argument, bad, exc = BAD_TENSORS[case]
    inputs = valid_inputs(device)
    inputs[argument] = bad(inputs[argument])
    with raises(exc, argument):
        call_moe(inputs)


def test_all_float64_is_unsupported(device):
    inputs = {k: v.double() for k, v in valid_inputs(device).items()}
    with raises(TypeError, "x"):
        call_moe(inputs)


def test_zero_experts(device):
    inputs = valid_inputs(device)
    inputs.update(router_weight=inputs["router_weight"][:0], w_gate_up=inputs["w_gate_up"][:0],
                  w_down=inputs["w_down"][:0])
    with raises(ValueError, "w_gate_up"):
        call_moe(inputs, top_k=1)


@pytest.mark.parametrize("top_k,exc", [(0, ValueError), (-1, ValueError), (E + 1, ValueError),
                                       (2.0, TypeError), (True, TypeError), ("2", TypeError), (None, TypeError)])
def test_bad_top_k(top_k, exc, device):
    with raises(exc, "top_k"):
        call_moe(valid_inputs(device), top_k=top_k)


def test_unknown_impl(device):
    with raises(ValueError, "impl"):
        call_moe(valid_inputs(device), impl="tritonmoe_fast")


def test_cpu_tensor_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with raises(TypeError, "x"):
        call_moe(valid_inputs("cpu"))


# fused_experts: a routing made elsewhere.

def valid_routing(device):
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).to(device)
    return torch.rand(T, K, generator=g).to(device), ids


def call_fused_experts(inputs, weights, ids, **kw):
    return tritonmoe.fused_experts(inputs["x"], weights, ids, inputs["w_gate_up"], inputs["w_down"], **kw)


def test_fused_experts_valid_inputs_pass(device):
    assert call_fused_experts(valid_inputs(device), *valid_routing(device)).shape == (T, H)


BAD_ROUTINGS = {
    "id = E": ("topk_ids", lambda w, i: (w, torch.where(i == 0, E, i)), ValueError),
    "id = -1": ("topk_ids", lambda w, i: (w, torch.where(i == 0, -1, i)), ValueError),
    "ids float": ("topk_ids", lambda w, i: (w, i.float()), TypeError),
    "ids K+1 cols": ("topk_ids", lambda w, i: (w, torch.cat([i, i[:, :1]], 1)), ValueError),
    "ids T-1 rows": ("topk_ids", lambda w, i: (w, i[:-1]), ValueError),
    "ids 1-D": ("topk_ids", lambda w, i: (w, i[:, 0]), ValueError),
    "ids meta": ("topk_ids", lambda w, i: (w, i.to("meta")), TypeError),
    "ids not a tensor": ("topk_ids", lambda w, i: (w, i.tolist()), TypeError),
    "weights int": ("topk_weights", lambda w, i: (w.long(), i), TypeError),
    "weights T+1 rows": ("topk_weights", lambda w, i: (torch.cat([w, w[:1]]), i), ValueError),
    "weights meta": ("topk_weights", lambda w, i: (w.to("meta"), i), TypeError),
    "K > E": ("top_k", lambda w, i: (w.repeat(1, 3), i.repeat(1, 3)), ValueError),
}


@pytest.mark.parametrize("case", list(BAD_ROUTINGS))
def test_fused_experts_bad_routing(case, device):
    argument, bad, exc = BAD_ROUTINGS[case]
    weights, ids = bad(*valid_routing(device))
    with raises(exc, argument):
        call_fused_experts(valid_inputs(device), weights, ids)


def test_fused_experts_bad_weights_and_impl(device):
    inputs = valid_inputs(device)
    routing = valid_routing(device)
    with raises(ValueError, "impl"):
        call_fused_experts(inputs, *routing, impl="vllm")
    inputs["w_down"] = inputs["w_down"].half()
    with raises(TypeError, "w_down"):
        call_fused_experts(inputs, *routing)


def test_module_rejects_bad_arguments(device):
    with raises(ValueError, "impl"):
        tritonmoe.FusedMoE(H, F, E, K, impl="tritonmoe_fast", device=device)
    with pytest.raises(ValueError, match="^top_k: expected"):
        tritonmoe.FusedMoE(H, F, E, 0, device=device)
    with pytest.raises(ValueError, match="^top_k: expected"):
        tritonmoe.FusedMoE(H, F, E, E + 1, device=device)
