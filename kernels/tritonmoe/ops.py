"""The layer as `torch.library` custom ops, so that `torch.compile` sees it as one node.

    y = tritonmoe.ops.moe(x, router_weight, w_gate_up, w_down, top_k, renormalize=True, impl="tritonmoe_fused")
    y = tritonmoe.ops.fused_experts(x, topk_weights, topk_ids, w_gate_up, w_down, impl="tritonmoe_fused")

They register `torch.ops.tritonmoe.moe` and `torch.ops.tritonmoe.fused_experts` over the public calls
of `tritonmoe.api` (same arguments, less `config`). Dynamo does not trace into the launchers (their
Python picks configs, allocates and launches); the fake implementations give it the output's shape,
dtype and device, after the same shape, dtype and device checks as the real call, so a wrong input
fails at trace time with the same message. The ids check of `fused_experts` reads values (a host
synchronisation) and so runs only in the real call, which skips it during a CUDA graph capture.

No autograd formula is registered: the ops are for inference. Eagerly, a backward through them
raises; under `torch.compile`, inputs that require grad (a model's parameters, outside
`torch.no_grad()` or `torch.inference_mode()`) make AOTAutograd trace a backward and fail at compile
time, so compile and run under one of those (as `generate` does).
"""
from __future__ import annotations

import torch

from . import api
from ._validate import check_expert_weights, check_kernel_device, check_layer_inputs, check_routing, check_tensor


@torch.library.custom_op("tritonmoe::moe", mutates_args=())
def _moe(x: torch.Tensor, router_weight: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
         top_k: int, renormalize: bool, impl: str) -> torch.Tensor:
    return api.moe(x, router_weight, w_gate_up, w_down, top_k, renormalize=renormalize, impl=impl)


@_moe.register_fake
def _moe_fake(x, router_weight, w_gate_up, w_down, top_k, renormalize, impl):
    api._check_impl(impl)
    check_layer_inputs(x, router_weight, w_gate_up, w_down, top_k)
    return x.new_empty(x.shape)


@torch.library.custom_op("tritonmoe::fused_experts", mutates_args=())
def _fused_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                   w_gate_up: torch.Tensor, w_down: torch.Tensor, impl: str) -> torch.Tensor:
    return api.fused_experts(x, topk_weights, topk_ids, w_gate_up, w_down, impl=impl)


@_fused_experts.register_fake
def _fused_experts_fake(x, topk_weights, topk_ids, w_gate_up, w_down, impl):
    api._check_impl(impl)
    check_tensor("x", x, 2)
    check_kernel_device(x.device)
    E, _, _ = check_expert_weights(x, w_gate_up, w_down)
    if isinstance(topk_ids.shape[-1], int):  # a symbolic top_k is left to the real call's check
        check_routing(x, topk_weights, topk_ids, E)
    return x.new_empty(x.shape)


def moe(x: torch.Tensor, router_weight: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
        top_k: int, *, renormalize: bool = True, impl: str = "tritonmoe_fused") -> torch.Tensor:
    """`tritonmoe.moe` as the custom op `torch.ops.tritonmoe.moe`."""
    return torch.ops.tritonmoe.moe(x, router_weight, w_gate_up, w_down, top_k, renormalize, impl)


def fused_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  w_gate_up: torch.Tensor, w_down: torch.Tensor, *, impl: str = "tritonmoe_fused") -> torch.Tensor:
    """`tritonmoe.fused_experts` as the custom op `torch.ops.tritonmoe.fused_experts`."""
    return torch.ops.tritonmoe.fused_experts(x, topk_weights, topk_ids, w_gate_up, w_down, impl)


__all__ = ["fused_experts", "moe"]
