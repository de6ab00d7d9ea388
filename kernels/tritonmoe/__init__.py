"""TritonMoE: Mixture-of-Experts inference kernels in pure Triton.

    y = tritonmoe.moe(x, router_weight, w_gate_up, w_down, top_k, renormalize=True, impl="tritonmoe_fused")

Stages, one module each: `routing` (top-k softmax), `align` (tokens grouped by expert on the device),
`gate_up` (the fused gate+up+SwiGLU grouped GEMM and its plain sibling), `swiglu`, `down` (down
projection and deterministic combine). `variants` composes them; `reference` is the float64 layer;
`_launch` launches them (and records and replays whole layer calls).
"""
from .api import IMPLS, fused_experts, moe
from ._launch import clear as clear_launch_cache
from .module import FusedMoE
from .reference import reference_experts, reference_moe, reference_routing
from .routing import route
from .align import align_tokens
from . import ops
from .hf import from_hf, patch_model

__all__ = ["IMPLS", "FusedMoE", "align_tokens", "clear_launch_cache", "from_hf", "fused_experts", "moe", "ops", "patch_model",
           "reference_experts", "reference_moe", "reference_routing", "route"]
__version__ = "0.1.0"
