"""`FusedMoE`: the layer as an `nn.Module` over the weight layout of `tritonmoe.api`."""
from __future__ import annotations

import torch
from torch import nn

from .api import IMPLS, _check_impl


class FusedMoE(nn.Module):
    """A routed-experts MoE layer: router, E SwiGLU experts, top-k combine.

    Parameters have the layout documented in `tritonmoe.api`. Inputs of any leading shape `[..., H]`
    are flattened to tokens and reshaped back.
    """

    def __init__(self, hidden_size: int, ffn_size: int, num_experts: int, top_k: int, *,
                 renormalize: bool = True, impl: str = "tritonmoe_fused",
                 device=None, dtype=None):
        super().__init__()
        _check_impl(impl)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k: expected 1 <= top_k <= {num_experts}, got {top_k}")
        kw = {"device": device, "dtype": dtype}
        self.hidden_size, self.ffn_size, self.num_experts, self.top_k = hidden_size, ffn_size, num_experts, top_k
        self.renormalize, self.impl = renormalize, impl
        self.router_weight = nn.Parameter(torch.empty(num_experts, hidden_size, **kw))
        self.w_gate_up = nn.Parameter(torch.empty(num_experts, 2 * ffn_size, hidden_size, **kw))
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden_size, ffn_size, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p, fan_in in ((self.router_weight, self.hidden_size), (self.w_gate_up, self.hidden_size),
                          (self.w_down, self.ffn_size)):
            nn.init.uniform_(p, -fan_in ** -0.5, fan_in ** -0.5)

    @classmethod
    def from_gate_up(cls, router_weight: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                     w_down: torch.Tensor, top_k: int, **kw) -> "FusedMoE":
        """Builds the layer from separate gate `[E, F, H]` and up `[E, F, H]` weights (concatenated once)."""
        E, F, H = w_gate.shape
        if tuple(w_up.shape) != (E, F, H):
            raise ValueError(f"w_up: expected the shape of w_gate {(E, F, H)}, got {tuple(w_up.shape)}")
        layer = cls(H, F, E, top_k, device="meta", dtype=w_gate.dtype, **kw)
        layer.router_weight = nn.Parameter(router_weight.detach().contiguous(), requires_grad=False)
        layer.w_gate_up = nn.Parameter(torch.cat([w_gate, w_up], dim=1).detach().contiguous(), requires_grad=False)
        layer.w_down = nn.Parameter(w_down.detach().contiguous(), requires_grad=False)
        return layer

    @classmethod
    def from_hf(cls, block: nn.Module, impl: str = "tritonmoe_fused") -> "FusedMoE":
        """A routed-experts layer from a Hugging Face Mixtral or Qwen3-MoE sparse MoE block (see `tritonmoe.hf.from_hf`)."""
        from .hf import from_hf
        return from_hf(block, impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Through the custom op, so that torch.compile(fullgraph=True) traces the layer as one node.
        from . import ops
        shape = x.shape
        y = ops.moe(x.reshape(-1, shape[-1]), self.router_weight, self.w_gate_up, self.w_down, self.top_k,
                    renormalize=self.renormalize, impl=self.impl)
        return y.reshape(shape)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, ffn_size={self.ffn_size}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, renormalize={self.renormalize}, impl={self.impl!r}")


__all__ = ["FusedMoE", "IMPLS"]
