"""The kernel launches of one layer call, captured from the package's own launchers.

`layer_launches(...)` runs `tritonmoe.moe` on meta tensors (shapes and dtypes, no memory) with
`JITFunction.run` replaced by a recorder, so every kernel, argument, constexpr and launch option
comes from the launchers themselves: when a kernel or launcher changes, the build follows it.
Tensors are recorded as `TensorArg`s that carry what Triton specialises on: dtype, the address's
alignment (a fresh allocation is 256-byte aligned; a view adds its offset) and the buffer's size
(AMD's buffer-load specialisation).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import tritonmoe
from triton.runtime.jit import JITFunction

from targets import Shape

_ALLOCATION_ALIGN = 256


@dataclass(frozen=True)
class TensorArg:
    dtype: torch.dtype
    offset_bytes: int
    storage_bytes: int

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorArg":
        return cls(t.dtype, t.storage_offset() * t.element_size(), t.untyped_storage().nbytes())

    def data_ptr(self) -> int:
        return _ALLOCATION_ALIGN + self.offset_bytes

    def ptr_range(self) -> int:
        return self.storage_bytes


@dataclass(frozen=True)
class Launch:
    fn: JITFunction
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.fn.__name__


def _as_arg(a):
    return TensorArg.of(a) if isinstance(a, torch.Tensor) else a


@contextlib.contextmanager
def recording():
    """Within the block, kernel launches are recorded into the yielded list instead of run."""
    launches: list[Launch] = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, tuple(_as_arg(a) for a in args), {k: _as_arg(v) for k, v in kwargs.items()}))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def layer_launches(impl: str, shape: Shape, dtype: torch.dtype, tokens: int, config: dict) -> list[Launch]:
    """Every kernel launch of `tritonmoe.moe(..., impl=impl, config=config)` for `tokens` tokens."""
    meta = dict(dtype=dtype, device="meta")
    x = torch.empty((tokens, shape.hidden), **meta)
    router_weight = torch.empty((shape.experts, shape.hidden), **meta)
    w_gate_up = torch.empty((shape.experts, 2 * shape.ffn, shape.hidden), **meta)
    w_down = torch.empty((shape.experts, shape.hidden, shape.ffn), **meta)
    with recording() as launches:
        tritonmoe.moe(x, router_weight, w_gate_up, w_down, shape.top_k, impl=impl, config=config)
    if not launches:
        raise RuntimeError(f"impl {impl!r}: expected kernel launches from tritonmoe.moe, recorded none")
    return launches
