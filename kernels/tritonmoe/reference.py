"""The float64 PyTorch reference of the whole layer, which every variant is tested against.

Follows `../shared/CONTRACTS.md`: logits `x @ Wr^T`, softmax, top-k (ties to the lower expert id),
optional renormalisation, then `y[t] = sum_k w[t,k] * W2[e] @ (silu(Wg[e] x[t]) * (Wu[e] x[t]))`.
Everything is computed in float64 on the inputs' device, one expert at a time to bound memory.
"""
from __future__ import annotations

import torch


def reference_routing(x: torch.Tensor, router_weight: torch.Tensor, top_k: int,
                      renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (weights float64 [T, K], ids int64 [T, K])."""
    logits = x.double() @ router_weight.double().T
    probs = torch.softmax(logits, dim=-1)
    weights, ids = _topk_low_index(probs, top_k)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def _topk_low_index(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # A stable descending sort breaks ties towards the lower index, as the kernel does.
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]
    return probs.gather(1, order), order


def reference_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                      w_gate_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """The expert computation for a given routing, in float64."""
    T, H = x.shape
    E, two_f, _ = w_gate_up.shape
    F = two_f // 2
    x64 = x.double()
    w64 = topk_weights.double()
    y = torch.zeros((T, H), dtype=torch.float64, device=x.device)
    for e in range(E):
        tok, k = torch.nonzero(topk_ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        wgu = w_gate_up[e].double()
        h = x64[tok] @ wgu.T
        act = torch.nn.functional.silu(h[:, :F]) * h[:, F:]
        out = act @ w_down[e].double().T
        y.index_add_(0, tok, out * w64[tok, k][:, None])
    return y


def reference_moe(x: torch.Tensor, router_weight: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
                  top_k: int, renormalize: bool = True, topk_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The whole layer in float64. With `topk_ids`, the given expert choice is used (the weights are still
    computed in float64): a benchmark passes the kernel's ids so that a near-tie decided differently
    in fp32 and fp64 does not count as an error of the experts' arithmetic."""
    logits = x.double() @ router_weight.double().T
    probs = torch.softmax(logits, dim=-1)
    if topk_ids is None:
        weights, ids = _topk_low_index(probs, top_k)
    else:
        ids = topk_ids.long()
        weights = probs.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return reference_experts(x, weights, ids, w_gate_up, w_down)
