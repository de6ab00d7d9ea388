"""Compiles one recorded launch for one target, exactly as Triton's JIT would on that GPU.

The launch's arguments are bound and specialised by Triton's own binder for the target's backend
(divisibility by 16, integers equal to 1, AMD's 32-bit buffer ranges), then compiled with
`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=...)`. The target is the only
thing that varies between targets: the Python function object compiled is the launch's own.
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass

import triton
from triton import knobs
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from launches import Launch
from targets import Target


@dataclass
class Specialized:
    source: ASTSource
    options: object  # the backend's options (CUDAOptions / HIPOptions)

    @property
    def key(self) -> tuple:
        return (self.source.hash(), self.options.hash())


@dataclass
class Compiled:
    kernel: object | None  # triton.compiler.CompiledKernel, None when compilation failed
    seconds: float
    log: str  # what the compiler printed (ptxas -v on NVIDIA)
    error: str | None


def specialize(launch: Launch, target: Target) -> Specialized:
    backend = make_backend(target.gpu_target())
    kwargs = {**launch.kwargs, **target.options}
    binder = create_function_from_signature(launch.fn.signature, launch.fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = launch.fn._pack_args(backend, kwargs, bound, specialization, options)
    return Specialized(ASTSource(launch.fn, signature, constexprs, attrs), options)


def compile_specialized(spec: Specialized, target: Target) -> Compiled:
    out = io.StringIO()
    start = time.perf_counter()
    # ptxas's resource report (registers, spills) is printed, not returned.
    with knobs.nvidia.scope(), contextlib.redirect_stdout(out):
        knobs.nvidia.dump_ptxas_log = True
        try:
            kernel = triton.compile(spec.source, target=target.gpu_target(), options=spec.options.__dict__)
            error = None
        except Exception as e:  # every compiler failure is a result to record, not to hide
            kernel, error = None, f"{type(e).__name__}: {e}"
    return Compiled(kernel, time.perf_counter() - start, out.getvalue(), error)


def compile_launch(launch: Launch, target: Target) -> Compiled:
    return compile_specialized(specialize(launch, target), target)
