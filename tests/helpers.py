"""Inputs, references and tolerances shared by the tests.

Inputs are scaled so that every output is O(1): x ~ N(0, 1), weights ~ N(0, 1) / sqrt(fan_in).

bf16 is tested only on the GPU (tests/test_gpu.py): Triton's interpreter multiplies bf16 wrongly in
`tl.dot` (triton issues #4972 and #11584; a bf16 layer on CPU gives relative errors ~1e10), and a CPU
"bf16" test that upcasts to fp32 first would run the fp32 kernels again and prove nothing about bf16.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

import tritonmoe

# ||y - ref|| / ||ref|| against the float64 reference on the same (rounded) inputs.
REL_TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}

# Tokens whose K-th and (K+1)-th router probabilities are closer than this may be routed differently
# in fp32 (the kernel) and float64 (the reference) without either being wrong.
TIE_GAP = 1e-5


@dataclass
class Layer:
    x: torch.Tensor
    router_weight: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor

    @property
    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.router_weight, self.w_gate_up, self.w_down


def make_layer(T: int, E: int, H: int, F: int, dtype=torch.float32, device="cpu", seed: int = 0,
               routing: str = "uniform") -> Layer:
    """Random layer inputs. `routing='zipf'` skews the router so that a few experts get most tokens:
    every token shares a direction u, and expert e's router row leans on u by -2 log(rank_e + 1).
    On a GPU the values are drawn there, in fp32 (GPU-sized weights would take seconds on the CPU)."""
    on_gpu = torch.device(device).type == "cuda"
    g = torch.Generator(device=device if on_gpu else "cpu").manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float32 if on_gpu else torch.float64, "device": device if on_gpu else "cpu"}
    x = torch.randn(T, H, **kw)
    router = torch.randn(E, H, **kw) / H ** 0.5
    if routing == "zipf":
        u = torch.randn(H, **kw)
        u /= u.norm()
        rank = torch.randperm(E, generator=g, device=kw["device"]).to(kw["dtype"])
        x += 4.0 * u
        router += (-0.5 * torch.log1p(rank))[:, None] * u[None, :]
    elif routing != "uniform":
        raise ValueError(f"routing: expected 'uniform' or 'zipf', got {routing!r}")
    w_gate_up = torch.randn(E, 2 * F, H, **kw) / H ** 0.5
    w_down = torch.randn(E, H, F, **kw) / F ** 0.5
    return Layer(*(t.to(device=device, dtype=dtype) for t in (x, router, w_gate_up, w_down)))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


def assert_rel_close(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert torch.isfinite(y).all(), f"{what}: non-finite values in the output"
    assert ref.double().norm() > 0, f"{what}: the reference is zero, the test would prove nothing"
    err = rel_err(y, ref)
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3e} > {REL_TOL[dtype]:.0e} ({dtype})"


def near_ties(x: torch.Tensor, router_weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (boundary, order). `boundary`: the K-th and (K+1)-th float64 probabilities are within
    TIE_GAP (the chosen set may differ). `order`: two of the top K+1 are within TIE_GAP (the order may)."""
    probs = torch.softmax(x.double() @ router_weight.double().T, dim=-1)
    top = torch.sort(probs, dim=-1, descending=True).values[:, : top_k + 1]
    gaps = top[:, :-1] - top[:, 1:]
    if top.shape[1] == top_k:  # K == E: there is no (K+1)-th
        boundary = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    else:
        boundary = gaps[:, top_k - 1] < TIE_GAP
    order = (gaps < TIE_GAP).any(dim=-1) if gaps.numel() else boundary
    return boundary, order


def layer_reference(x: torch.Tensor, router_weight: torch.Tensor, w_gate_up: torch.Tensor,
                    w_down: torch.Tensor, top_k: int, renormalize: bool = True) -> torch.Tensor:
    """`tritonmoe.reference_moe`, except that a token at a near-tie keeps the kernel's expert choice
    (`tritonmoe.route`); every other token must be routed identically, which is asserted here."""
    ref_w, ref_ids = tritonmoe.reference_routing(x, router_weight, top_k, renormalize)
    boundary, _ = near_ties(x, router_weight, top_k)
    if x.shape[0] == 0 or not boundary.any():
        return tritonmoe.reference_moe(x, router_weight, w_gate_up, w_down, top_k, renormalize)
    _, ids = tritonmoe.route(x, router_weight, top_k, renormalize)
    ids = ids.long()
    same_set = (ids.sort(-1).values == ref_ids.sort(-1).values).all(-1)
    assert (same_set | boundary).all(), "the kernel routed a token away from a clear (non-tied) top-k"
    merged = torch.where(boundary[:, None], ids, ref_ids)
    return tritonmoe.reference_moe(x, router_weight, w_gate_up, w_down, top_k, renormalize, topk_ids=merged)


def strided_view(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `t`, laid out as `layout`:
    'contiguous'; 'wide' (t is t_wide[..., :n] of a tensor 7 wider in its last dim); 'every_other'
    (t is t_big[::2] of a tensor with twice the rows). The last dimension stays unit-stride."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "wide":
        wide = torch.randn(*t.shape[:-1], t.shape[-1] + 7, dtype=t.dtype, device=t.device)
        wide[..., : t.shape[-1]] = t
        view = wide[..., : t.shape[-1]]
    elif layout == "every_other":
        big = torch.randn(2 * t.shape[0], *t.shape[1:], dtype=t.dtype, device=t.device)
        big[::2] = t
        view = big[::2]
    else:
        raise ValueError(f"layout: expected 'contiguous', 'wide' or 'every_other', got {layout!r}")
    assert view.shape[0] <= 1 or not view.is_contiguous()
    return view


def compiling_env(*paths) -> dict:
    """The environment for a compile in a subprocess: TRITON_INTERPRET unset (under it `@triton.jit` makes
    interpreted functions, and an interpreted run leaves `triton.language` patched in its process) and `paths`
    first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env.get("PYTHONPATH", "")])
    return env
