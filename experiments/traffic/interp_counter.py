"""Counts the bytes every `tl.load` and `tl.store` moves in Triton's CPU interpreter, per launch.

    with InterpreterCounter(weights=(router_weight, w_gate_up, w_down)) as counter:
        tritonmoe.moe(...)
    counter.launches  # one LaunchCount per kernel launch, in order

Masked-off lanes are excluded: a load or store moves `mask.sum() * element size` bytes. Each
active lane's address is attributed to the kernel argument (tensor view) it falls in, so the
counts come per parameter name, as `tritonmoe.traffic.Launch.by_buffer` models them; arguments
whose storage is one of `weights` count as weights. Needs TRITON_INTERPRET=1 before triton is
imported. Atomics are refused (no kernel of the package uses them; a count would be a guess).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from triton.runtime import interpreter as _interp
from triton.tools.tensor_descriptor import TensorDescriptor

from tritonmoe.traffic import KERNEL_STAGES, Traffic


@dataclass
class _View:
    """A tensor argument of a launch: which addresses are its elements."""
    name: str
    weight: bool
    data_ptr: int
    elem_bytes: int
    dims: list[tuple[int, int]]  # (stride, size) in elements, largest stride first, size-1 dims dropped

    @classmethod
    def of(cls, name: str, t: torch.Tensor, weight: bool) -> "_View":
        dims = sorted(((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1 and st > 0), reverse=True)
        return cls(name, weight, t.data_ptr(), t.element_size(), dims)

    def contains(self, addrs: np.ndarray) -> np.ndarray:
        off = addrs.astype(np.int64) - self.data_ptr
        ok = off % self.elem_bytes == 0
        o = off // self.elem_bytes
        for stride, size in self.dims:
            idx = o // stride
            ok &= (idx >= 0) & (idx < size)
            o = o - idx * stride
        return ok & (o == 0)


@dataclass
class LaunchCount:
    """The bytes one kernel launch moved, per argument (parameter name) and in total."""
    kernel: str
    buffers: dict[str, list[int]] = field(default_factory=dict)  # name -> [read bytes, write bytes]
    traffic: Traffic = field(default_factory=Traffic)
    unattributed: int = 0  # bytes at addresses of no tensor argument (a kernel bug, or a counter bug)

    @property
    def stage(self) -> str:
        return KERNEL_STAGES.get(self.kernel, "other")

    def by_buffer(self) -> dict[str, tuple[int, int]]:
        return {k: (r, w) for k, (r, w) in self.buffers.items() if r or w}


class InterpreterCounter:
    """Context manager that patches the interpreter's memory ops and launch setup while active."""

    def __init__(self, weights=()):
        self._weight_storages = {w.untyped_storage().data_ptr() for w in weights}
        self.launches: list[LaunchCount] = []
        self._views: list[_View] = []
        self._saved: list[tuple[object, str, object]] = []

    # -- patching --
    def __enter__(self) -> "InterpreterCounter":
        if not hasattr(_interp, "GridExecutor"):
            raise RuntimeError("triton.runtime.interpreter: expected GridExecutor; this Triton's interpreter "
                               "is laid out differently, update InterpreterCounter")
        B, G = _interp.InterpreterBuilder, _interp.GridExecutor
        counter = self
        load, store, init_args = B.create_masked_load, B.create_masked_store, G._init_args_hst

        def create_masked_load(builder, ptrs, mask, other, *args, **kwargs):
            counter._record(ptrs, mask, write=False)
            return load(builder, ptrs, mask, other, *args, **kwargs)

        def create_masked_store(builder, ptrs, value, mask, *args, **kwargs):
            counter._record(ptrs, mask, write=True)
            return store(builder, ptrs, value, mask, *args, **kwargs)

        def refuse_atomic(*args, **kwargs):
            raise NotImplementedError("InterpreterCounter: atomics are not counted; a kernel used one")

        def _init_args_hst(executor, args_dev, kwargs):
            args_hst, kwargs_hst = init_args(executor, args_dev, kwargs)
            counter._begin(executor.fn.__name__, dict(zip(executor.arg_names, args_hst)) | kwargs_hst)
            return args_hst, kwargs_hst

        for owner, name, new in ((B, "create_masked_load", create_masked_load),
                                 (B, "create_masked_store", create_masked_store),
                                 (B, "create_atomic_rmw", refuse_atomic), (B, "create_atomic_cas", refuse_atomic),
                                 (G, "_init_args_hst", _init_args_hst)):
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, new)
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, old in reversed(self._saved):
            setattr(owner, name, old)
        self._saved.clear()

    # -- counting --
    def _begin(self, kernel: str, args: dict) -> None:
        # A tensor descriptor's bytes are its base tensor's (the interpreter turns its boxes into masked loads).
        tensors = {n: (t.base if isinstance(t, TensorDescriptor) else t) for n, t in args.items()}
        self._views = [_View.of(n, t, t.untyped_storage().data_ptr() in self._weight_storages)
                       for n, t in tensors.items() if isinstance(t, torch.Tensor)]
        self.launches.append(LaunchCount(kernel, {v.name: [0, 0] for v in self._views}))

    def _record(self, ptrs, mask, *, write: bool) -> None:
        if not self.launches:
            raise RuntimeError("InterpreterCounter: a load or store ran outside a kernel launch")
        launch = self.launches[-1]
        bits = ptrs.get_element_ty().primitive_bitwidth
        nbytes = max(1, bits // 8)
        # Descriptor boxes come with a plain numpy mask (`TensorDescHandle.materialize_pointers`).
        mask_data = mask if isinstance(mask, np.ndarray) else mask.data
        active = np.broadcast_to(mask_data.astype(bool), ptrs.data.shape)
        addrs = ptrs.data[active]
        left = np.ones(addrs.shape, dtype=bool)
        t = launch.traffic
        for v in self._views:
            inside = v.contains(addrs) & left
            n = int(inside.sum())
            if not n:
                continue
            left &= ~inside
            launch.buffers[v.name][int(write)] += n * nbytes
            if v.weight:
                t = t + (Traffic(0, n * nbytes) if write else Traffic(n * nbytes, 0))
            else:
                t = t + (Traffic(0, 0, 0, n * nbytes) if write else Traffic(0, 0, n * nbytes, 0))
            if not left.any():
                break
        launch.traffic = t
        launch.unattributed += int(left.sum()) * nbytes
