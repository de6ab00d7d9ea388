"""Test setup: Triton's interpreter on machines without a GPU, the `gpu` marker and the `device` fixture.

Without CUDA, TRITON_INTERPRET=1 is set here, before `tritonmoe` (and so any `@triton.jit`) is
imported, so the kernels run on CPU tensors in Triton's interpreter. On a GPU machine with the
interpreter off, the same tests run on the GPU; tests marked `gpu` (tests/test_gpu.py) run only there:

    TRITON_INTERPRET=0 python -m pytest -q -m gpu tests/test_gpu.py
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def gpu_active() -> bool:
    """A GPU is present and the kernels are compiled for it (not interpreted)."""
    return torch.cuda.is_available() and not interpreter_active()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA or ROCm GPU with TRITON_INTERPRET unset (skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    if gpu_active():
        return
    reason = ("no CUDA device" if not torch.cuda.is_available()
              else "TRITON_INTERPRET is set; run the gpu tests with TRITON_INTERPRET=0")
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> str:
    """Where the kernels run: 'cuda' when compiled for a GPU, else 'cpu' under the interpreter."""
    return "cuda" if gpu_active() else "cpu"


@pytest.fixture(autouse=True)
def _fresh_plans():
    """Each test records its own layer plans (`tritonmoe._launch`): tests that patch module constants, kernels or
    tuned tables must not replay a plan recorded by another test."""
    from tritonmoe import _launch
    _launch._PLANS.clear()
    yield
