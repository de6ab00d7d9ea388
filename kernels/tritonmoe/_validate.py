"""Input checks for the public entry points.

Every check raises before any kernel runs, with a message that names the argument, what was
expected and what came. Values (NaN/Inf) are not inspected: that would need a host
synchronisation; the NaN policy is documented in `tritonmoe.api`.
"""
from __future__ import annotations

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_tensor(name: str, t, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16 or float32, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: expected unit stride in the last dimension, got strides {tuple(t.stride())}; "
            "pass a .contiguous() tensor"
        )


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise TypeError(f"{name}: expected a tensor on {device} (the device of x), got {t.device}")


def check_kernel_device(device: torch.device) -> None:
    if device.type == "cpu" and not interpreter_active():
        raise TypeError(
            "x: expected a CUDA or ROCm tensor, got a CPU tensor; CPU runs need Triton's "
            "interpreter (set TRITON_INTERPRET=1 before importing triton)"
        )


def check_top_k(top_k, num_experts: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, torch.SymInt)):
        raise TypeError(f"top_k: expected an int, got {type(top_k).__name__}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k: expected 1 <= top_k <= {num_experts} (the number of experts), got {top_k}")
    return top_k


def check_expert_weights(x: torch.Tensor, w_gate_up, w_down) -> tuple[int, int, int]:
    """Checks the expert weights against x; returns (E, H, F)."""
    check_tensor("w_gate_up", w_gate_up, 3)
    check_tensor("w_down", w_down, 3)
    H = x.shape[1]
    E, two_f, h_gu = w_gate_up.shape
    if h_gu != H:
        raise ValueError(f"w_gate_up: expected shape [E, 2F, {H}] (H from x), got {tuple(w_gate_up.shape)}")
    if two_f == 0 or two_f % 2:
        raise ValueError(f"w_gate_up: expected an even, non-zero middle dimension 2F, got {tuple(w_gate_up.shape)}")
    if E == 0:
        raise ValueError(f"w_gate_up: expected at least one expert, got shape {tuple(w_gate_up.shape)}")
    F = two_f // 2
    if tuple(w_down.shape) != (E, H, F):
        raise ValueError(f"w_down: expected shape [{E}, {H}, {F}] ([E, H, F]), got {tuple(w_down.shape)}")
    for name, t in (("w_gate_up", w_gate_up), ("w_down", w_down)):
        if t.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
        check_device(name, t, x.device)
    return E, H, F


def check_layer_inputs(x, router_weight, w_gate_up, w_down, top_k) -> tuple[int, int, int, int]:
    """Checks the inputs of `tritonmoe.moe`; returns (E, H, F, top_k)."""
    check_tensor("x", x, 2)
    check_kernel_device(x.device)
    check_tensor("router_weight", router_weight, 2)
    E, H, F = check_expert_weights(x, w_gate_up, w_down)
    if tuple(router_weight.shape) != (E, H):
        raise ValueError(f"router_weight: expected shape [{E}, {H}] ([E, H]), got {tuple(router_weight.shape)}")
    if router_weight.dtype != x.dtype:
        raise TypeError(f"router_weight: expected dtype {x.dtype} (the dtype of x), got {router_weight.dtype}")
    check_device("router_weight", router_weight, x.device)
    return E, H, F, check_top_k(top_k, E)


def check_routing(x: torch.Tensor, topk_weights, topk_ids, num_experts: int) -> int:
    """Checks a routing given from outside (e.g. by a Hugging Face block); returns top_k."""
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2 or t.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: expected shape [{x.shape[0]}, top_k], got {tuple(t.shape)}")
        check_device(name, t, x.device)
    if topk_ids.shape != topk_weights.shape:
        raise ValueError(
            f"topk_ids: expected the shape of topk_weights {tuple(topk_weights.shape)}, got {tuple(topk_ids.shape)}"
        )
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"topk_ids: expected dtype int32 or int64, got {topk_ids.dtype}")
    if not topk_weights.is_floating_point():
        raise TypeError(f"topk_weights: expected a floating dtype, got {topk_weights.dtype}")
    return check_top_k(topk_ids.shape[1], num_experts)
