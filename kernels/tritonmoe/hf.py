"""Hugging Face transformers' sparse MoE blocks (Mixtral, Qwen2-MoE, Qwen3-MoE) on TritonMoE's kernels.

    model = patch_model(model)          # every supported block's experts run as `tritonmoe::fused_experts`
    layer = from_hf(model.model.layers[0].mlp)   # a routed-experts `FusedMoE` from one block's weights

Routing stays the block's own. `patch_model` keeps the block's router and passes its choice to
`fused_experts`, rather than calling `moe` with the router weight: transformers computes router
logits in the model's dtype and picks experts with `torch.topk`, TritonMoE's routing kernel computes
the logits in fp32, and in bf16 the two can pick different experts on near-ties, which moves a
token's output by O(1). Keeping the block's router makes the choice identical; the cost is the
block's few small routing ops. (`from_hf` uses TritonMoE's routing; see there.)

Two layouts of transformers are handled, the expert weights converted once at patch time:
- transformers >= 5: `block.gate` is a router module returning (logits, top-k weights, top-k ids)
  and `block.experts` holds `gate_up_proj [E, 2F, H]` (gate rows then up rows) and
  `down_proj [E, H, F]`, TritonMoE's layout. Only `block.experts` is replaced, by `TritonMoeExperts`,
  which keeps those parameters (no copy) and their names, so the state dict is unchanged; the
  router, the recording of router logits, Qwen2-MoE's shared expert and its gate, and the block's
  return value are the model's own.
- transformers 4.x: `block.gate` is an `nn.Linear`, `block.experts` a list of per-expert MLPs
  (`w1`/`w3`/`w2` for Mixtral, `gate_proj`/`up_proj`/`down_proj` for Qwen) and the block returns
  `(hidden_states, router_logits)`. The whole block is replaced by a `TritonMoeBlock`, which routes
  as the block did (logits in the model dtype, softmax in fp32, top-k, renormalisation as the block
  does, weights cast to the model dtype), keeps the router and the shared expert modules, stacks the
  expert weights once and returns the same pair. It is also an instance of the block's class, so
  that transformers' recording of router logits, which finds blocks by class, still finds it.

Not handled: training (the op has no backward; Mixtral's router jitter applies only in training),
activations other than SiLU, expert biases.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .api import _check_impl
from .module import FusedMoE


@dataclass(frozen=True)
class _Family:
    name: str
    expert_linears: tuple[str, str, str]  # 4.x per-expert gate, up and down Linear names
    renormalize: Callable[[nn.Module], bool]
    shared_expert: bool


def _norm_topk_prob(block: nn.Module) -> bool:
    # 4.x keeps the flag on the block, 5.x on its router.
    flag = getattr(block, "norm_topk_prob", None)
    return bool(block.gate.norm_topk_prob if flag is None else flag)


FAMILIES = {
    "MixtralSparseMoeBlock": _Family("Mixtral", ("w1", "w3", "w2"), lambda block: True, shared_expert=False),
    "Qwen2MoeSparseMoeBlock": _Family("Qwen2-MoE", ("gate_proj", "up_proj", "down_proj"), _norm_topk_prob,
                                      shared_expert=True),
    "Qwen3MoeSparseMoeBlock": _Family("Qwen3-MoE", ("gate_proj", "up_proj", "down_proj"), _norm_topk_prob,
                                      shared_expert=False),
}


def family_of(block: nn.Module) -> _Family:
    name = type(block).__name__
    if name not in FAMILIES:
        raise TypeError(f"block: expected one of {', '.join(FAMILIES)}, got {name}")
    return FAMILIES[name]


def _is_fused_layout(block: nn.Module) -> bool:
    return not isinstance(block.experts, nn.ModuleList)


def _check_silu(act_fn, where: str) -> None:
    probe = torch.linspace(-4.0, 4.0, 9)
    if not torch.allclose(act_fn(probe), F.silu(probe)):
        raise ValueError(f"{where}: expected the SiLU activation (TritonMoE's experts are SwiGLU), got {act_fn!r}")


def _check_no_bias(module: nn.Module, where: str) -> None:
    if getattr(module, "bias", None) is not None:
        raise ValueError(f"{where}: expected no bias (TritonMoE's experts and router have none), got one")


def top_k_of(block: nn.Module) -> int:
    top_k = getattr(block, "top_k", None)
    return int(block.gate.top_k if top_k is None else top_k)


def expert_weights(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's experts as `(w_gate_up [E, 2F, H], w_down [E, H, F])`: the block's own parameters
    in transformers >= 5, stacked copies of the 4.x per-expert weights."""
    family = family_of(block)
    experts = block.experts
    if _is_fused_layout(block):
        for attr, expected in (("is_transposed", False), ("is_concatenated", True), ("has_bias", False)):
            if getattr(experts, attr, expected) != expected:
                raise ValueError(f"block.experts.{attr}: expected {expected}, got {getattr(experts, attr)}")
        _check_silu(experts.act_fn, "block.experts.act_fn")
        return experts.gate_up_proj, experts.down_proj
    gate, up, down = family.expert_linears
    for i, expert in enumerate(experts):
        _check_silu(expert.act_fn, f"block.experts[{i}].act_fn")
        for name in (gate, up, down):
            _check_no_bias(getattr(expert, name), f"block.experts[{i}].{name}")
    w_gate_up = torch.stack([torch.cat([getattr(e, gate).weight, getattr(e, up).weight], dim=0) for e in experts])
    w_down = torch.stack([getattr(e, down).weight for e in experts])
    return w_gate_up, w_down


def _as_parameter(t: torch.Tensor) -> nn.Parameter:
    """`t` as a contiguous parameter; an already contiguous parameter is kept as is (no copy)."""
    if isinstance(t, nn.Parameter) and t.is_contiguous():
        return t
    return nn.Parameter(t.detach().contiguous(), requires_grad=False)


class TritonMoeExperts(nn.Module):
    """Drop-in for the experts module of transformers >= 5: called as `(hidden_states [T, H],
    top_k_index [T, K], top_k_weights [T, K]) -> [T, H]`, with the same parameter names."""

    def __init__(self, gate_up_proj: torch.Tensor, down_proj: torch.Tensor, impl: str = "tritonmoe_fused"):
        super().__init__()
        _check_impl(impl)
        self.gate_up_proj = _as_parameter(gate_up_proj)
        self.down_proj = _as_parameter(down_proj)
        self.num_experts, self.hidden_dim, self.intermediate_dim = down_proj.shape
        self.impl = impl

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        return ops.fused_experts(hidden_states, top_k_weights, top_k_index, self.gate_up_proj, self.down_proj,
                                 impl=self.impl)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, "
                f"intermediate_dim={self.intermediate_dim}, impl={self.impl!r}")


class TritonMoeBlock(nn.Module):
    """Drop-in for a transformers 4.x sparse MoE block: `[B, S, H] -> ([B, S, H], router_logits [B*S, E])`.
    `patch_block` builds it as a subclass of the block's class too (`_block_class`)."""

    def __init__(self, block: nn.Module, impl: str = "tritonmoe_fused"):
        nn.Module.__init__(self)  # not the transformers class's __init__, which would build new weights
        _check_impl(impl)
        family = family_of(block)
        _check_no_bias(block.gate, "block.gate")
        w_gate_up, w_down = expert_weights(block)
        self.family, self.impl = family.name, impl
        self.top_k, self.renormalize = top_k_of(block), family.renormalize(block)
        self.gate = block.gate
        self.w_gate_up = _as_parameter(w_gate_up)
        self.w_down = _as_parameter(w_down)
        if family.shared_expert:
            self.shared_expert = block.shared_expert
            self.shared_expert_gate = block.shared_expert_gate
        else:
            self.shared_expert = self.shared_expert_gate = None

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        x = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(x)
        weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        weights, ids = torch.topk(weights, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        y = ops.fused_experts(x, weights, ids, self.w_gate_up, self.w_down, impl=self.impl)
        if self.shared_expert is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return y.reshape(batch_size, sequence_length, hidden_dim), router_logits

    def extra_repr(self) -> str:
        E, H, F_ = self.w_down.shape
        return (f"family={self.family}, num_experts={E}, hidden_size={H}, ffn_size={F_}, top_k={self.top_k}, "
                f"renormalize={self.renormalize}, impl={self.impl!r}")


@functools.cache
def _block_class(hf_class: type) -> type:
    return type(f"TritonMoe{hf_class.__name__}", (TritonMoeBlock, hf_class), {"__module__": __name__})


def patch_block(block: nn.Module, impl: str = "tritonmoe_fused") -> nn.Module:
    """The module that should stand where `block` stood: `block` itself with its experts replaced
    (transformers >= 5), or a `TritonMoeBlock` (4.x). A block patched before gets the new `impl`."""
    _check_impl(impl)
    if isinstance(block, TritonMoeBlock) or isinstance(block.experts, TritonMoeExperts):
        (block if isinstance(block, TritonMoeBlock) else block.experts).impl = impl
        return block
    if _is_fused_layout(block):
        family_of(block)
        w_gate_up, w_down = expert_weights(block)
        block.experts = TritonMoeExperts(w_gate_up, w_down, impl)
        return block
    return _block_class(type(block))(block, impl)


def patch_model(model: nn.Module, impl: str = "tritonmoe_fused") -> nn.Module:
    """Replaces, in place, the experts of every Mixtral, Qwen2-MoE and Qwen3-MoE sparse MoE block of
    `model` by TritonMoE's `impl`; returns `model`. Patch after moving the model to its device and
    dtype or before: the converted weights are parameters of the model either way."""
    _check_impl(impl)
    found = [(name, module) for name, module in model.named_modules()
             if type(module).__name__ in FAMILIES or isinstance(module, TritonMoeBlock)]
    if not found:
        raise ValueError(f"model: expected at least one {', '.join(FAMILIES)}, got none in {type(model).__name__}")
    for name, block in found:
        patched = patch_block(block, impl)
        if patched is not block:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, patched)
    return model


def from_hf(block: nn.Module, impl: str = "tritonmoe_fused") -> FusedMoE:
    """A `FusedMoE` with the block's router and experts (weights copied once, renormalisation as the block).

    Unlike `patch_model`, the layer routes with TritonMoE's kernel (router logits in fp32), so in bf16 a
    near-tie can pick a different expert than the block; in fp32 the two agree to rounding. A
    Qwen2-MoE block is refused: its shared expert and gate have no place in the routed-experts layer.
    """
    family = family_of(block)
    if family.shared_expert:
        raise ValueError(f"block: expected a block without a shared expert, got {family.name}'s; "
                         "use patch_model(model), which keeps the shared expert with the model")
    _check_no_bias(block.gate, "block.gate")
    w_gate_up, w_down = expert_weights(block)
    F_ = w_gate_up.shape[1] // 2
    return FusedMoE.from_gate_up(block.gate.weight, w_gate_up[:, :F_], w_gate_up[:, F_:], w_down, top_k_of(block),
                                 renormalize=family.renormalize(block), impl=impl)


__all__ = ["FAMILIES", "TritonMoeBlock", "TritonMoeExperts", "expert_weights", "family_of", "from_hf",
           "patch_block", "patch_model", "top_k_of"]
