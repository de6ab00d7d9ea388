"""Kernel launches with less host work than `kernel[grid](...)`, and recorded layer calls (perf notes v17).

An eager layer call is 5-9 Triton launches and ~200 Python function calls of the package's own (validation, the
tuned-config lookup, tile arithmetic, allocations, descriptors). On the GPU machine's host each `kernel[grid](...)`
took 23-32 us (`experiments/bench/launch_lab.py`, H100 host, session 14) and the package's Python another ~200 us
a call, while the GPU, idle when an eager call starts, waits for the first launch.

`launch` keeps Triton's binder, so the compiled kernel is chosen by exactly the specialization Triton would compute
(pointer alignment, integers of 1 or multiples of 16, int32/int64 ranges, dtypes, constexprs), and replaces
`JITFunction.run`'s per-call bookkeeping (options parsed into a string key, the current device and stream looked
up, the kernel's global values re-checked, launch metadata built for the hooks, the hook chains called, empty or
not) with one dictionary lookup keyed by that specialization. A key it has not seen, a launch hook (a profiler)
or the interpreter go through Triton's own path, which compiles and launches as usual and hands back the kernel.

`Plan` goes further for a whole layer call. Everything the package's host code decides (configuration, tile
sizes, grids, every kernel argument) is a function of the inputs' metadata: shapes, strides, dtypes, devices,
16-byte alignment of the pointers, `top_k`, `renormalize`, `impl`. The first call with a given metadata key runs
the normal path under a recorder, which notes every allocation (`empty`) and every launch (the compiled kernel,
its grid and its arguments, pointers resolved to an input or an allocation plus an offset). Later calls with the
same key skip the Python: one allocation for all intermediates (each 256-byte aligned; intermediates whose launches
do not overlap share bytes, so it stays near the normal path's peak), one for the output, and the recorded
launches with the new pointers filled in. The kernels see the same arguments
Triton would have bound (same values, same specialization), so the results are bit-identical (`tests/test_launch.py`
checks it). A call that does anything the recorder cannot express (a launch outside `launch`, a tensor argument
that is neither an input nor an allocation of the call) is not recorded and always takes the normal path.

Both assume what `JITFunction.run` re-checks on every call stays fixed while the process runs: the kernels' global
values (module constants) and Triton's debug/instrumentation knobs; plans also assume the tuned tables do. Change
any of them and call `clear()`. `TRITONMOE_FAST_LAUNCH=0` turns both off.
"""
from __future__ import annotations

import os
import threading

import torch
from triton import knobs
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

_ENABLED = os.environ.get("TRITONMOE_FAST_LAUNCH", "1") != "0"
_KERNELS: dict = {}
_PLANS: dict = {}
_MAX_PLANS = 1024
_ALIGN = 256  # bytes: where each recorded intermediate starts in a plan's one allocation
_local = threading.local()

try:
    from torch._C import _cuda_getCurrentRawStream as _raw_stream
except ImportError:  # pragma: no cover - a torch without CUDA
    _raw_stream = None


_JIT_RUN = JITFunction.run


def _hooked() -> bool:
    """Triton's own launch path must see every launch: a launch hook is installed (a profiler), or a tool has
    replaced `JITFunction.run` (the AOT tooling's recorder, `host_lab.py`'s stubs). Triton 3.6 keeps the hooks as
    chains that are never None (and calls the empty chains on every launch); older releases use None for none."""
    if JITFunction.run is not _JIT_RUN:
        return True
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return any(h is not None and getattr(h, "calls", True) for h in hooks)


def _grid3(grid: tuple) -> tuple[int, int, int]:
    n = len(grid)
    return grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1


def _unrecorded():
    """The call being recorded (if any) did something a plan cannot replay: it stays unrecorded."""
    rec = getattr(_local, "recorder", None)
    if rec is not None:
        rec.failed = True


def launch(fn, grid: tuple, *args, **kwargs):
    """`fn[grid](*args, **kwargs)`, with the host's per-launch work cut to the binder, a lookup and the launcher."""
    caches = getattr(fn, "device_caches", None)
    if not _ENABLED or caches is None or _raw_stream is None or _hooked() or fn.pre_run_hooks:
        _unrecorded()
        return fn[grid](*args, **kwargs)
    device = torch.cuda.current_device()
    entry = caches.get(device)
    # The first launch of fn on this device goes through Triton, which builds the binder (and compiles).
    kernel = fn[grid](*args, **kwargs) if entry is None else None
    if entry is None and kernel is not None:
        entry = caches[device]
    if entry is not None:
        bound, specialization, options = entry[4](*args, **kwargs)
        # Triton keys on str(specialization), where True, 1 and 1.0 differ; equal tuples would not tell them apart,
        # so the key adds the types of the keyword arguments (the package passes every constexpr by keyword).
        key = (fn, device, *specialization, *options.items(), *map(type, kwargs.values()))
        try:
            cached = _KERNELS.get(key)
        except TypeError:  # an unhashable constexpr: never cached
            cached, key = None, None
        if kernel is None and cached is not None:
            cached.run(*_grid3(grid), _raw_stream(device), cached.function, cached.packed_metadata, None, None, None,
                       *bound.values())
            kernel = cached
        elif kernel is None:
            kernel = fn[grid](*args, **kwargs)
        if kernel is not None and kernel is not cached and key is not None and not hasattr(kernel, "result"):
            _KERNELS[key] = kernel  # compiled, not a pending asynchronous compile
    if kernel is None:  # nothing launched (a JIT cache hook took the compile)
        _unrecorded()
        return None
    rec = getattr(_local, "recorder", None)
    if rec is not None:
        rec.launch(kernel, grid, bound)
    return kernel


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """`torch.empty` for the package's intermediates and outputs (a recorded call notes each one)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    rec = getattr(_local, "recorder", None)
    if rec is not None:
        rec.alloc(t)
    return t


class _Ptr:
    """A pointer for a tensor descriptor's base (the launcher asks it for `data_ptr()`)."""
    __slots__ = ("p", "dtype")

    def __init__(self, p: int, dtype: torch.dtype):
        self.p, self.dtype = p, dtype

    def data_ptr(self) -> int:
        return self.p


class _Desc:
    """What the launcher reads of a `TensorDescriptor`: base, shape, strides, block shape, padding."""
    __slots__ = ("base", "shape", "strides", "block_shape", "padding")

    def __init__(self, base, shape, strides, block_shape, padding):
        self.base, self.shape, self.strides, self.block_shape, self.padding = base, shape, strides, block_shape, padding


class _Recorder:
    """Notes a layer call's allocations and launches, resolving each pointer argument when it is launched (so it
    holds no tensor: intermediates are freed as in the normal path, and an address the allocator hands out again
    within the call resolves to the newest allocation, the one alive at that launch)."""

    def __init__(self, inputs: tuple[torch.Tensor, ...]):
        spans = sorted((t.untyped_storage().data_ptr(), t.untyped_storage().data_ptr() + t.untyped_storage().nbytes())
                       for t in inputs)
        # Inputs sharing memory would make a pointer's source ambiguous: not recorded.
        self.failed = any(a[1] > b[0] for a, b in zip(spans, spans[1:]))
        # An input's pointers are taken from its first element to its storage's end.
        self.inputs = [(t.data_ptr(), t.untyped_storage().data_ptr() + t.untyped_storage().nbytes()) for t in inputs]
        self.allocs: list[tuple[int, int]] = []  # (start, end) of each allocation, in order
        self.launches: list = []  # (kernel, grid, template, [(position, kind, index, offset, geometry)])

    def alloc(self, t: torch.Tensor) -> None:
        self.allocs.append((t.data_ptr(), t.data_ptr() + t.untyped_storage().nbytes()))

    def locate(self, p: int):
        for i, (start, end) in enumerate(self.inputs):
            if start <= p < end or p == start:
                return "in", i, p - start
        for i in range(len(self.allocs) - 1, -1, -1):
            start, end = self.allocs[i]
            if start <= p < end or p == start:
                return "al", i, p - start
        return None

    def launch(self, kernel, grid, bound) -> None:
        if self.failed:
            return
        if hasattr(kernel, "result") or kernel is None:
            self.failed = True
            return
        template, args = list(bound.values()), []
        for pos, v in enumerate(template):
            if isinstance(v, TensorDescriptor):
                where = self.locate(v.base.data_ptr())
                geometry = (v.base.dtype, list(v.shape), list(v.strides), list(v.block_shape), v.padding)
            elif isinstance(v, torch.Tensor):
                where, geometry = self.locate(v.data_ptr()), None
            else:
                continue
            if where is None:  # a tensor that is neither an input nor an allocation of the call
                self.failed = True
                return
            args.append((pos, *where, geometry))
            template[pos] = None  # the plan keeps no tensor alive (inputs, weights, intermediates)
        self.launches.append((kernel, _grid3(grid), template, args))

    def build(self, out: torch.Tensor) -> "Plan | None":
        if self.failed or not self.launches or not out.is_contiguous():
            return None
        found = [i for i, (start, _) in enumerate(self.allocs) if start == out.data_ptr()]
        if not found:
            return None
        out_idx = found[-1]
        live: dict[int, list[int]] = {}  # intermediate -> [first launch, last launch] receiving it
        for n, (_, _, _, args) in enumerate(self.launches):
            for _, kind, idx, _, _ in args:
                if kind == "al" and idx != out_idx:
                    live.setdefault(idx, [n, n])[1] = n
        sizes = {i: max(1, self.allocs[i][1] - self.allocs[i][0]) for i in live}
        offsets = _pack({i: (sizes[i], *live[i]) for i in live})
        launches = []
        for kernel, grid, template, args in self.launches:
            subs = []
            for pos, kind, idx, off, geometry in args:
                if kind == "in":
                    subs.append((pos, idx, off, geometry))
                elif idx == out_idx:
                    subs.append((pos, 5, off, geometry))
                else:
                    subs.append((pos, 4, offsets[idx] + off, geometry))
            launches.append((kernel, grid, template, tuple(subs)))
        arena = max((offsets[i] + _round(sizes[i]) for i in offsets), default=0)
        return Plan(launches, arena, tuple(out.shape), out.dtype)


def _round(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _pack(buffers: dict[int, tuple[int, int, int]]) -> dict[int, int]:
    """Byte offsets in one allocation for intermediates {index: (bytes, first launch, last launch)}: buffers whose
    launches overlap get disjoint bytes, the others may share (the launches run in stream order, so a buffer's last
    reader has finished before a later buffer's first writer starts). First fit in order of first use, largest
    first among equals: the allocation stays near the normal path's peak (it frees intermediates as it goes)."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets = {}
    for i in sorted(buffers, key=lambda i: (buffers[i][1], -buffers[i][0], i)):
        size, first, last = buffers[i]
        size = _round(size)
        busy = sorted((o, e) for o, e, f, l in placed if f <= last and first <= l)
        at = 0
        for o, e in busy:
            if at + size <= o:
                break
            at = max(at, e)
        offsets[i] = at
        placed.append((at, at + size, first, last))
    return offsets


class Plan:
    """A recorded layer call: its launches, replayed on new pointers (see the module docstring)."""

    def __init__(self, launches, arena_bytes: int, out_shape: tuple, out_dtype: torch.dtype):
        self.launches, self.arena_bytes, self.out_shape, self.out_dtype = launches, arena_bytes, out_shape, out_dtype

    def run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        device = inputs[0].device
        arena = torch.empty((self.arena_bytes,), dtype=torch.uint8, device=device) if self.arena_bytes else None
        out = torch.empty(self.out_shape, dtype=self.out_dtype, device=device)
        bases = [t.data_ptr() for t in inputs] + [arena.data_ptr() if arena is not None else 0, out.data_ptr()]
        stream = _raw_stream(torch.cuda.current_device())
        for kernel, grid, template, subs in self.launches:
            vals = template.copy()
            for pos, src, off, desc in subs:
                if desc is None:
                    vals[pos] = bases[src] + off
                else:
                    dtype, shape, strides, block, padding = desc
                    vals[pos] = _Desc(_Ptr(bases[src] + off, dtype), shape, strides, block, padding)
            kernel.run(grid[0], grid[1], grid[2], stream, kernel.function, kernel.packed_metadata, None, None, None,
                       *vals)
        return out


def plan_key(inputs: tuple, *extra):
    """The metadata a layer call's host code depends on (None when an input is not a CUDA tensor: no plan)."""
    key = list(extra)
    for t in inputs:
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return None
        if t.device.type != "cuda":
            return None
        key += (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16)
    key.append(torch.cuda.current_device())
    return tuple(key)


def planned(key, inputs: tuple, fn, *args, **kwargs) -> torch.Tensor:
    """`fn(*args, **kwargs)` (a layer call on `inputs`, returning a fresh output tensor): replayed from the plan
    recorded for `key`, or run and recorded."""
    if key is None or not _ENABLED or _raw_stream is None or _hooked():
        return fn(*args, **kwargs)
    plan = _PLANS.get(key)
    if plan:
        return plan.run(inputs)
    if plan is False or getattr(_local, "recorder", None) is not None or torch.cuda.is_current_stream_capturing():
        return fn(*args, **kwargs)
    rec = _local.recorder = _Recorder(inputs)
    try:
        out = fn(*args, **kwargs)
    finally:
        _local.recorder = None
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = rec.build(out) or False
    return out


def clear() -> None:
    """Forgets the kernels `launch` has seen and the recorded plans (Triton's own caches are untouched)."""
    _KERNELS.clear()
    _PLANS.clear()
