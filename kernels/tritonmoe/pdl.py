"""Programmatic dependent launch (PDL) for the small-token chain of kernels, on Hopper and later.

At decode sizes each kernel of the layer is a few microseconds of work, and the GPU idles between two
of them while the next is launched. With PDL a kernel is launched before its predecessor has finished:
each program of it starts with `griddepcontrol.wait` (nothing is read or written before the predecessor
has completed and its memory is visible, so no reuse of a freed buffer can race either) and then lets its
own successor launch (`griddepcontrol.launch_dependents`). Only launch latency is overlapped, never work.

`pdl_enabled(device, num_routed)` decides per call: CUDA (not the interpreter, not ROCm), compute
capability >= 9.0, at most `PDL_MAX_ROUTED` routed slots (a single wave of programs: a waiting successor
would otherwise hold SM resources that the predecessor's later waves need), and `TRITONMOE_PDL` not "0".
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._validate import interpreter_active

PDL_MAX_ROUTED = 256


@functools.lru_cache(maxsize=16)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(device: torch.device, num_routed: int) -> bool:
    if device.type != "cuda" or torch.version.hip or interpreter_active() or num_routed > PDL_MAX_ROUTED:
        return False
    if os.environ.get("TRITONMOE_PDL", "1") == "0":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """First statement of a kernel in the chain: wait for the predecessor, then let the successor launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
