"""The Triton variants of the expert computation, as compositions of the same stages.

Each variant is a function `act(x, w_gate_up, align, cfg, select=None) -> [max_padded, F]` computing
`silu(x Wg^T) * (x Wu^T)` over the aligned slots; routing, alignment, the down projection and the
combine are shared. At one token `select` (`tritonmoe.route_align.Selection`) goes to the variant's first GEMM,
which then makes the routing choice and fills `align` (`tritonmoe.gate_up.gate_up`). Adding a variant means adding
one function here and one registry entry.
"""
from __future__ import annotations

from typing import Callable

import torch

from .align import Alignment
from .gate_up import gate_up, gather_rows, uses_descriptors
from .swiglu import swiglu

ActFn = Callable[..., torch.Tensor]


def act_fused(x, w_gate_up, align, cfg, select=None):
    """One grouped GEMM: gate and up tiles from one load of x; only silu(gate)*up is written."""
    return gate_up(x, w_gate_up, align, cfg["gate_up"], fuse_swiglu=True, select=select)


def act_w13(x, w_gate_up, align, cfg, select=None):
    """vLLM's design: one concatenated gate|up GEMM writing [rows, 2F], then a SwiGLU kernel."""
    F = w_gate_up.shape[1] // 2
    gu = gate_up(x, w_gate_up, align, cfg["gate_up"], fuse_swiglu=False, select=select)
    return swiglu(gu[:, :F], gu[:, F:], align)


def act_unfused(x, w_gate_up, align, cfg, select=None):
    """The preprint's unfused pipeline: gate GEMM, up GEMM, SwiGLU kernel."""
    F = w_gate_up.shape[1] // 2
    # With descriptors the tokens are gathered once for both GEMMs.
    xs = gather_rows(x, align) if uses_descriptors(cfg["gate_up"], x, w_gate_up) else None
    g = gate_up(x, w_gate_up, align, cfg["gate_up"], fuse_swiglu=False, row_offset=0, rows=F, x_sorted=xs,
                select=select)
    u = gate_up(x, w_gate_up, align, cfg["gate_up"], fuse_swiglu=False, row_offset=F, rows=F, x_sorted=xs)
    return swiglu(g, u, align)


VARIANTS: dict[str, ActFn] = {
    "tritonmoe_fused": act_fused,
    "tritonmoe_w13": act_w13,
    "tritonmoe_unfused": act_unfused,
}
