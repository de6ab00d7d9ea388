"""Tensor descriptors for the GEMM operands (TMA boxes on Hopper; other targets lower them to loads).

A descriptor needs a 16-byte aligned base, a unit last stride and 16-byte aligned strides elsewhere;
`descriptor_ok` says whether a tensor qualifies, `descriptor` builds one, optionally over a reshaped
view of a contiguous tensor (e.g. the gate/up weights `[E, 2F, H]` seen as `[2E, F, H]`).
"""
from __future__ import annotations

import torch
from triton.tools.tensor_descriptor import TensorDescriptor


def wants_descriptors(cfg: dict, row_elems: int, elem_bytes: int) -> bool:
    """A GEMM config asks for descriptors (`DESC`) and its activation rows (`row_elems` elements) are whole
    16-byte multiples, as a descriptor box needs. The launchers add the checks on the tensors themselves;
    the traffic model, which has shapes only, uses this alone."""
    return bool(cfg.get("DESC")) and (row_elems * elem_bytes) % 16 == 0


def descriptor_ok(t: torch.Tensor) -> bool:
    eb = t.element_size()
    return (t.stride(-1) == 1 and all((s * eb) % 16 == 0 for s in t.stride()[:-1])
            and (t.data_ptr() % 16 == 0 or t.device.type == "meta"))


def descriptor(t: torch.Tensor, block: list[int], shape: list[int] | None = None) -> TensorDescriptor:
    """A descriptor over `t` (or over `t` viewed as `shape`, which must keep its last dimension and be a
    row-major reshape of its leading ones) with box `block`."""
    if shape is None:
        shape = list(t.shape)
        strides = list(t.stride())
    else:
        if shape[-1] != t.shape[-1] or not t.is_contiguous():
            raise ValueError(f"descriptor: cannot view a tensor of shape {tuple(t.shape)} as {shape}")
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
    return TensorDescriptor(t, shape, strides, block)
