"""Every implementation of the layer behind one interface: `build(model, weights) -> fn(x) -> y`.

Each provider times the whole layer from x (and the router weight) to y, routing included. A provider
whose routing differs from the contract's fp32 routing (Megablocks computes bf16 logits) gives its
built function an `expert_ids(x)` attribute, so that rel_err is taken against the reference evaluated
with the provider's own expert choice: it measures the arithmetic, not a near-tie decided differently.
`capturable` says whether the provider can be captured in a CUDA graph (no host synchronisation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import tritonmoe

from problems import Model, Weights


@dataclass(frozen=True)
class Provider:
    name: str
    build: Callable[[Model, Weights], Callable[[torch.Tensor], torch.Tensor]]
    capturable: bool
    why_not_capturable: str = ""


def _tritonmoe(impl: str):
    def build(m: Model, w: Weights):
        def fn(x):
            return tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, impl=impl)
        return fn
    return build


def _torch_routing(x, router_weight, top_k):
    logits = x.float() @ router_weight.float().T  # fp32 logits, as the contract routes
    probs = torch.softmax(logits, dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids


def _build_grouped_mm(m: Model, w: Weights):
    grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm
    E, K, Fd = m.experts, m.top_k, m.ffn
    b_gate_up = w.w_gate_up.transpose(1, 2)  # [E, H, 2F], column-major as grouped_mm wants
    b_down = w.w_down.transpose(1, 2)        # [E, F, H]

    def fn(x):
        T = x.shape[0]
        weights, ids = _torch_routing(x, w.router_weight, K)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int32, device=x.device).index_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        xs = x[order // K]
        h = grouped_mm(xs, b_gate_up, offs=offs)
        act = F.silu(h[:, :Fd]) * h[:, Fd:]
        out = grouped_mm(act, b_down, offs=offs)
        out = out * weights.reshape(-1)[order, None].to(out.dtype)
        y = torch.zeros((T, m.hidden), dtype=torch.float32, device=x.device)
        y.index_add_(0, order // K, out.float())
        return y.to(x.dtype)
    return fn


def _build_torch_loop(m: Model, w: Weights):
    """Hugging Face transformers' Mixtral block: loop over the experts that were hit."""
    Fd = m.ffn

    def fn(x):
        weights, ids = _torch_routing(x, w.router_weight, m.top_k)
        y = torch.zeros_like(x)
        mask = torch.nn.functional.one_hot(ids, m.experts).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit.flatten().tolist():
            k, tok = torch.where(mask[e])
            h = x[tok] @ w.w_gate_up[e].T
            out = (F.silu(h[:, :Fd]) * h[:, Fd:]) @ w.w_down[e].T
            y.index_add_(0, tok, (out * weights[tok, k, None]).to(x.dtype))
        return y
    return fn


def _build_megablocks(m: Model, w: Weights):
    from megablocks.layers.arguments import Arguments
    from megablocks.layers.dmoe import dMoE

    args = Arguments(
        hidden_size=m.hidden, ffn_hidden_size=m.ffn, moe_num_experts=m.experts, moe_top_k=m.top_k,
        mlp_impl="grouped", mlp_type="glu", activation_fn=F.silu, bf16=True, fp16=False, bias=False,
        return_bias=False, moe_normalize_expert_weights=1, device=w.w_gate_up.device,
        init_method=lambda t: t, output_layer_init_method=lambda t: t,
    )
    layer = dMoE(args).eval()
    Fd, E, H = m.ffn, m.experts, m.hidden
    with torch.no_grad():
        layer.router.layer.weight.copy_(w.router_weight)
        layer.experts.mlp.w1.copy_(w.w_gate_up[:, :Fd, :].reshape(E * Fd, H))
        layer.experts.mlp.v1.copy_(w.w_gate_up[:, Fd:, :].reshape(E * Fd, H))
        layer.experts.mlp.w2.copy_(w.w_down.transpose(1, 2).reshape(E * Fd, H))

    @torch.no_grad()
    def fn(x):
        out = layer(x[:, None, :])  # megablocks wants [sequence, batch, hidden]
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(x.shape)

    @torch.no_grad()
    def expert_ids(x):
        """Megablocks' own choice (its router computes bf16 logits)."""
        _, _, ids = layer.router(x[:, None, :])
        return ids.reshape(x.shape[0], m.top_k)
    fn.expert_ids = expert_ids
    return fn


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("tritonmoe_fused", _tritonmoe("tritonmoe_fused"), True),
    Provider("tritonmoe_w13", _tritonmoe("tritonmoe_w13"), True),
    Provider("tritonmoe_unfused", _tritonmoe("tritonmoe_unfused"), True),
    Provider("megablocks_grouped", _build_megablocks, False,
             "grouped_gemm reads the per-expert batch sizes on the host"),
    Provider("torch_grouped_mm", _build_grouped_mm, True),
    Provider("torch_loop", _build_torch_loop, False, "loops over the hit experts on the host"),
)}
