"""Kernel launches with less host work than `kernel[grid](...)` (perf notes v17).

An eager layer call is 5-9 Triton launches, and on the GPU machine's host each `kernel[grid](...)` took ~32 us
(`experiments/bench/launch_lab.py`, H100 host, session 14): the binder (the arguments' specialization, ~8 us),
then `JITFunction.run`'s per-call bookkeeping (options parsed into a string key, the current device and stream
looked up, the kernel's global values re-checked, launch metadata built for the hooks and the hook chains called,
empty or not), then the launcher (~10 us). `launch` keeps the binder,
so the compiled kernel is chosen by exactly the specialization Triton would compute (pointer alignment, integer
values of 1 or multiples of 16, int32/int64 ranges, dtypes, constexprs), and replaces the bookkeeping with one
dictionary lookup keyed by that specialization. A key it has not seen, a launch hook (a profiler) or the
interpreter go through Triton's own path, which compiles and launches as usual and hands back the kernel.

It assumes what `JITFunction.run` re-checks on every call stays fixed while the process runs: the kernels'
global values (module constants) and Triton's debug/instrumentation knobs. `TRITONMOE_FAST_LAUNCH=0` turns it off.
"""
from __future__ import annotations

import os

import torch
from triton import knobs

_ENABLED = os.environ.get("TRITONMOE_FAST_LAUNCH", "1") != "0"
_KERNELS: dict = {}

try:
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except ImportError:  # pragma: no cover - a torch without CUDA
    _raw_stream = None


def _hooked() -> bool:
    """A launch hook is installed (a profiler): Triton's own path calls it. Triton 3.6 keeps the hooks as chains
    that are never None (and calls the empty chains on every launch); older releases use None for none."""
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


def launch(fn, grid: tuple, *args, **kwargs):
    """`fn[grid](*args, **kwargs)`, with the host's per-launch work cut to the binder, a lookup and the launcher."""
    caches = getattr(fn, "device_caches", None)
    if not _ENABLED or caches is None or _raw_stream is None or _hooked():
        return fn[grid](*args, **kwargs)
    device = torch.cuda.current_device()
    entry = caches.get(device)
    if entry is None:  # first launch of fn on this device: Triton builds its binder
        return fn[grid](*args, **kwargs)
    bound, specialization, options = entry[4](*args, **kwargs)
    key = (fn, device, *specialization, *options.items())
    try:
        kernel = _KERNELS.get(key)
    except TypeError:  # an unhashable constexpr
        return fn[grid](*args, **kwargs)
    if kernel is None:
        kernel = fn[grid](*args, **kwargs)
        if not hasattr(kernel, "result"):  # a compiled kernel, not a pending asynchronous compile
            _KERNELS[key] = kernel
        return kernel
    n = len(grid)
    kernel.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, _raw_stream(device), kernel.function,
               kernel.packed_metadata, None, None, None, *bound.values())
    return kernel


def clear() -> None:
    """Forgets the kernels `launch` has seen (Triton's own caches are untouched)."""
    _KERNELS.clear()
