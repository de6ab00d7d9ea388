"""The public call: `moe(...)`, `fused_experts(...)` and the variant registry.

Weight layout (the one place it is defined; `FusedMoE` and every variant use it):
- `router_weight [E, H]`: router logits are `x @ router_weight^T`.
- `w_gate_up [E, 2F, H]`: rows 0..F-1 are expert e's gate projection, rows F..2F-1 its up projection
  (the layout of vLLM and of Hugging Face's fused checkpoints).
- `w_down [E, H, F]`: expert e's down projection, `y_e = w_down[e] @ act`.
Other layouts (separate gate and up, interleaved rows) are converted once at load time
(`tritonmoe.module.FusedMoE.from_gate_up`), never per call.

NaN/Inf policy: values are not inspected (that would need a host synchronisation). A NaN or Inf in
a token's row of `x` makes that token's routing weights and output row NaN; every other row is
computed as if it were absent (no kernel mixes rows). NaN in an expert's weights reaches exactly the
tokens routed to that expert.
"""
from __future__ import annotations

import torch

from ._launch import plan_key, planned
from ._validate import check_kernel_device, check_layer_inputs, check_routing, check_expert_weights, check_tensor
from .align import align_tokens
from .config import backend_of, default_config, tail_of
from .down import combine, down, down_combine
from .fused_expert import fused_expert
from .gate_up import selects_here
from .route_align import one_token_fits, prepare_selection, route_and_align, select_default
from .variants import VARIANTS

IMPLS = tuple(VARIANTS)


def _check_impl(impl: str) -> None:
    if impl not in VARIANTS:
        raise ValueError(f"impl: expected one of {', '.join(VARIANTS)}, got {impl!r}")


def resolve_config(x: torch.Tensor, num_routed: int, E: int, H: int, F: int, config: dict | None) -> dict:
    if config is not None:
        return config
    from .tuned import lookup
    found = lookup(x.device, x.dtype, num_routed, E, H, F, x.shape[0])
    if found is not None:
        return found
    return default_config(backend_of(x.device), num_routed, E, H, F, x.element_size())


def selects_in_gemm(x: torch.Tensor, w_gate_up: torch.Tensor, top_k: int, impl: str, cfg: dict) -> bool:
    """One token whose routing choice the variant's first gate/up GEMM makes (`route_align.prepare_selection`): the
    layer config's `SELECT_IN_GEMM` (default: up to `route_align.SELECT_MAX_EXPERTS` experts), that GEMM the pointer
    kernel, the slots within the one-program alignment, and not the one-kernel decode path."""
    E = w_gate_up.shape[0]
    return (x.shape[0] == 1 and cfg.get("SELECT_IN_GEMM", select_default(E))
            and not (impl == "tritonmoe_fused" and cfg.get("expert"))
            and selects_here(cfg["gate_up"], x, w_gate_up)
            and one_token_fits(top_k, w_gate_up.shape[0], cfg["BLOCK_M"], tail_of(cfg)))


def _experts_aligned(x, topk_weights, topk_ids, align, w_gate_up, w_down, impl, cfg, select=None):
    if impl == "tritonmoe_fused" and cfg.get("expert"):
        # Decode: gate+up+SwiGLU and down in one kernel per F chunk (see tritonmoe.fused_expert).
        partial = fused_expert(x, w_gate_up, w_down, align, topk_weights, cfg["expert"])
        return combine(partial, x.shape[0], topk_weights.shape[1], x.dtype)
    act = VARIANTS[impl](x, w_gate_up, align, cfg, select=select)
    if cfg["down"].get("COMBINE"):
        # Few tokens: each token's choices summed by the down kernel itself (see tritonmoe.down.down_combine).
        return down_combine(act, w_down, align, topk_weights, topk_ids, cfg["down"])
    partial = down(act, w_down, align, topk_weights, cfg["down"])
    return combine(partial, x.shape[0], topk_weights.shape[1], x.dtype)


def moe(x: torch.Tensor, router_weight: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
        top_k: int, *, renormalize: bool = True, impl: str = "tritonmoe_fused",
        config: dict | None = None) -> torch.Tensor:
    """The MoE layer from `x [T, H]` to `y [T, H]`, routing included; see the module docstring for
    the layout. `impl` picks the variant (`IMPLS`); `config` overrides the launch configuration.

    On a GPU, a call with the inputs' metadata of an earlier call (shapes, strides, dtypes, pointer alignment,
    `top_k`, `renormalize`, `impl`; no `config`) replays that call's recorded launches on the new pointers, without
    re-running the host code (`tritonmoe._launch.Plan`): the same kernels, arguments and results."""
    if config is None and type(top_k) is int and type(renormalize) is bool and type(impl) is str:
        inputs = (x, router_weight, w_gate_up, w_down)
        key = plan_key(inputs, top_k, renormalize, impl)
        return planned(key, inputs, _moe, x, router_weight, w_gate_up, w_down, top_k, renormalize, impl, None)
    return _moe(x, router_weight, w_gate_up, w_down, top_k, renormalize, impl, config)


def _moe(x, router_weight, w_gate_up, w_down, top_k, renormalize, impl, config) -> torch.Tensor:
    _check_impl(impl)
    E, H, F, top_k = check_layer_inputs(x, router_weight, w_gate_up, w_down, top_k)
    if x.shape[0] == 0:
        return x.new_empty((0, H))
    cfg = resolve_config(x, x.shape[0] * top_k, E, H, F, config)
    if selects_in_gemm(x, w_gate_up, top_k, impl, cfg):
        sel = prepare_selection(x, router_weight, top_k, renormalize, cfg["BLOCK_M"], tail_of(cfg))
        return _experts_aligned(x, sel.weights, sel.ids, sel.align, w_gate_up, w_down, impl, cfg, select=sel)
    topk_weights, topk_ids, align = route_and_align(x, router_weight, top_k, renormalize, cfg["BLOCK_M"], tail_of(cfg),
                                                    split=cfg.get("ROUTE_SPLIT"))
    return _experts_aligned(x, topk_weights, topk_ids, align, w_gate_up, w_down, impl, cfg)


def fused_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  w_gate_up: torch.Tensor, w_down: torch.Tensor, *, impl: str = "tritonmoe_fused",
                  config: dict | None = None, check_ids: bool = True) -> torch.Tensor:
    """The expert computation for a routing made elsewhere (e.g. by a Hugging Face block).

    `check_ids` verifies on the host that every id lies in [0, E) (a synchronisation); it is skipped
    while a CUDA graph is being captured, where the caller vouches for the ids."""
    _check_impl(impl)
    check_tensor("x", x, 2)
    check_kernel_device(x.device)
    E, H, F = check_expert_weights(x, w_gate_up, w_down)
    check_routing(x, topk_weights, topk_ids, E)
    if x.shape[0] == 0:
        return x.new_empty((0, H))
    capturing = x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    if check_ids and not capturing:
        lo, hi = int(topk_ids.min()), int(topk_ids.max())
        if lo < 0 or hi >= E:
            raise ValueError(f"topk_ids: expected expert ids in [0, {E}), got values in [{lo}, {hi}]")
    topk_weights = topk_weights.to(torch.float32).contiguous()
    topk_ids = topk_ids.to(torch.int32).contiguous()
    cfg = resolve_config(x, topk_ids.numel(), E, H, F, config)
    align = align_tokens(topk_ids, E, cfg["BLOCK_M"], tail_of(cfg))
    return _experts_aligned(x, topk_weights, topk_ids, align, w_gate_up, w_down, impl, cfg)
