"""Property-based tests (hypothesis): random shapes, seeds, top_k, dtypes, renormalisation and memory
layouts (non-contiguous rows of x and of the weights), for the layer, the routing and the alignment.

Example counts are small because every example runs Triton's interpreter; `deadline=None` because a
single layer call takes seconds there.
"""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tritonmoe
from helpers import assert_rel_close, layer_reference, make_layer, strided_view
from test_align import check_alignment
from test_routing import check_routing

SLOW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                print_blob=True)
FAST = settings(max_examples=40, deadline=None, print_blob=True)

DTYPES = st.sampled_from([torch.float32, torch.float16])
LAYOUTS = st.sampled_from(["contiguous", "wide", "every_other"])


@st.composite
def layer_shapes(draw):
    E = draw(st.integers(1, 16))
    K = draw(st.integers(1, min(E, 4)))
    T = draw(st.integers(1, 40))
    H = draw(st.integers(8, 48))  # >= 8 output columns: a relative error over fewer is noise-dominated
    F = draw(st.integers(1, 40))
    return T, E, K, H, F


@SLOW
@given(shape=layer_shapes(), dtype=DTYPES, seed=st.integers(0, 2**31 - 1), renormalize=st.booleans(),
       impl=st.sampled_from(tritonmoe.IMPLS), x_layout=LAYOUTS, w_layout=LAYOUTS)
def test_layer(shape, dtype, seed, renormalize, impl, x_layout, w_layout, device):
    T, E, K, H, F = shape
    layer = make_layer(T, E, H, F, dtype, device, seed=seed)
    x = strided_view(layer.x, x_layout)
    weights = [strided_view(w, w_layout) for w in layer.weights]
    y = tritonmoe.moe(x, *weights, K, renormalize=renormalize, impl=impl)
    assert y.shape == (T, H) and y.dtype == dtype and y.is_contiguous()
    ref = layer_reference(layer.x, *layer.weights, K, renormalize)
    assert_rel_close(y, ref, dtype, f"{impl} T={T} E={E} K={K} H={H} F={F}")


@FAST
@given(T=st.integers(1, 70), E=st.integers(1, 128), H=st.integers(1, 80), k_frac=st.floats(0, 1),
       dtype=DTYPES, seed=st.integers(0, 2**31 - 1), renormalize=st.booleans(), x_layout=LAYOUTS)
def test_routing(T, E, H, k_frac, dtype, seed, renormalize, x_layout, device):
    K = 1 + int(k_frac * (min(E, 8) - 1))
    layer = make_layer(T, E, H, 1, dtype, device, seed=seed)
    # With a few hidden units, near-ties are common (H=1: two close router values tie half the tokens).
    check_routing(strided_view(layer.x, x_layout), layer.router_weight, K, renormalize, max_tied=1.0)


@st.composite
def routed_ids(draw):
    E = draw(st.integers(1, 300))
    N = draw(st.integers(1, 3000))
    used = draw(st.integers(1, E))  # how many experts get slots: from one hot expert to all
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    experts = torch.randperm(E, generator=g)[:used]
    skew = draw(st.floats(0, 2))  # 0: uniform over the used experts; 2: strongly zipf
    probs = 1.0 / torch.arange(1, used + 1, dtype=torch.float64) ** skew
    return experts[torch.multinomial(probs, N, replacement=True, generator=g)].to(torch.int32), E


@FAST
@given(ids_e=routed_ids(), block_m=st.sampled_from([16, 32, 64]))
def test_alignment(ids_e, block_m, device):
    ids, E = ids_e
    check_alignment(ids.to(device), E, block_m)
