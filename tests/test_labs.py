"""Lab code that experiments/NOTES.md reports on: the one-launch decode layer (`decode_layer_lab.py`, not in the
package), the last-arriver combine (`lastcombine_lab.py`), the block-and-tail pair (`pair_lab.py`) and the benchmarks'
timing function (`timing.py`), what the borrowed-config lab (`borrow_lab.py`) times, and the Gluon GEMMs of
`gluon_lab.py` (compiled for sm90 without a GPU; checked against float64 on a Hopper GPU), and the early and pipelined
decode down projections of `pdl_lab.py`, the interleaved impl timings of `impl_ab_lab.py`, the alignment chunk
cap of `align_lab.py`, and the even routing and block model of `rows_lab.py`.

The decode layer's barrier launch spins on global counters, which Triton's interpreter (one program after
another) cannot run; here it runs as three phased launches of the same kernel, and on the GPU the barrier
launch is compared with the phased one bit for bit.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench"
sys.path.insert(0, str(BENCH))

from decode_layer_lab import MAX_TOKENS, decode_layer  # noqa: E402
from helpers import assert_rel_close, compiling_env, make_layer  # noqa: E402
import tritonmoe  # noqa: E402
from tritonmoe.reference import reference_moe, reference_routing  # noqa: E402

SMALL = dict(BLOCK_F=16, BLOCK_K=16, BLOCK_H=16, BLOCK_KD=16)

# (T, E, K, H, F): one token; every expert chosen by every token (T=3, E=K=8: each expert's weights are read by
# its first slot's item only); odd sizes; K=1; the largest T.
SHAPES = [(1, 8, 2, 64, 32), (3, 8, 8, 64, 32), (5, 3, 3, 40, 24), (2, 64, 8, 40, 24), (MAX_TOKENS, 4, 2, 33, 17),
          (1, 1, 1, 40, 24)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-E{}-K{}-H{}-F{}".format(*s))
def test_decode_layer_lab_matches_reference(shape, dtype, device):
    T, E, K, H, F = shape
    layer = make_layer(T, E, H, F, dtype, device, seed=T * 131 + E)
    y, weights, ids = decode_layer(layer.x, *layer.weights, K, True, {**SMALL, "phased": True})
    ref_w, ref_ids = reference_routing(layer.x, layer.weights[0], K)
    assert torch.equal(ids.long().cpu(), ref_ids.cpu())
    assert_rel_close(weights, ref_w, torch.float32, "routing weights")
    assert_rel_close(y, reference_moe(layer.x, *layer.weights, K, topk_ids=ids), dtype, "decode layer")


def test_decode_layer_lab_refuses_too_many_tokens(device):
    layer = make_layer(MAX_TOKENS + 1, 4, 32, 16, torch.float32, device)
    with pytest.raises(ValueError, match="x: the decode layer takes at most"):
        decode_layer(layer.x, *layer.weights, 2, True, SMALL)


@pytest.mark.gpu
@pytest.mark.parametrize("T,E,K", [(1, 128, 8), (2, 8, 2), (4, 64, 8)])
def test_decode_layer_lab_barrier_equals_phased_on_gpu(T, E, K):
    layer = make_layer(T, E, 2048, 768, torch.bfloat16, "cuda", seed=T + E)
    cfg = dict(BLOCK_F=64, BLOCK_K=256, BLOCK_H=128, BLOCK_KD=256, num_warps=4, num_stages=3)
    y_phased, _, ids_phased = decode_layer(layer.x, *layer.weights, K, True, {**cfg, "phased": True})
    sync = torch.zeros(2 + -(-2048 // cfg["BLOCK_H"]), dtype=torch.int32, device="cuda")
    for call in range(3):  # one counter buffer for every call: the kernel must leave it ready for the next
        y, _, ids = decode_layer(layer.x, *layer.weights, K, True, cfg, sync=sync)
        assert torch.equal(ids, ids_phased) and torch.equal(y, y_phased)
        assert int(sync[0]) == 0 and int(sync[2:].abs().sum()) == 0 and int(sync[1]) == 2 * (call + 1)
    assert_rel_close(y, reference_moe(layer.x, *layer.weights, K, topk_ids=ids), torch.bfloat16, "decode layer")
    with pytest.raises(ValueError, match="sync: expected"):
        decode_layer(layer.x, *layer.weights, K, True, cfg, sync=sync[:2])


@pytest.mark.gpu
def test_timing_bench_quantiles_and_host_work():
    """Quantiles in order; with `sync_each` (eager calls) the host's work before the launch is inside the interval:
    a call that sleeps 3 ms on the host before a tiny kernel measures at least that."""
    import time

    import timing
    a = torch.randn(1 << 20, device="cuda")
    q = timing.bench(lambda: a.mul_(1.0), 2, 10, quantiles=(0.2, 0.5, 0.8))
    assert 0 < q[0] <= q[1] <= q[2] < 1.0

    def slow_host():
        time.sleep(3e-3)
        a.mul_(1.0)
    assert timing.bench(slow_host, 10, 60, quantiles=(0.5,), sync_each=True)[0] >= 2.5


# The split-tail down projection (`splittail_lab.py`): programs of a split tile wait on flags that earlier programs
# raise; the interpreter runs programs in launch order, so no wait spins. NUM_SMS is set small so that the
# [40 tokens, K=2, E=4, BLOCK_M=16] case (24-32 tiles of 16 columns, by the draw) has every kind of last wave:
# whole waves only, a last wave more than half full (not split), split in two, split in four, fewer tiles than SMs.
@pytest.mark.parametrize("num_sms", [4, 5, 7, 9, 10, 11, 13, 40])
def test_splittail_lab_matches_down(num_sms, device):
    from splittail_lab import SplitTail
    from tritonmoe.align import align_tokens
    from tritonmoe.down import combine, down
    from tritonmoe.routing import route
    torch.manual_seed(0)
    T, E, K, H, F = 40, 4, 2, 64, 96
    x = torch.randn(T, H, dtype=torch.float16, device=device)
    wd = (torch.randn(E, H, F, device=device) / F ** 0.5).to(torch.float16)
    weights, ids = route(x, torch.randn(E, H, dtype=torch.float16, device=device), K)
    align = align_tokens(ids, E, 16)
    act = torch.randn(align.sorted_ids.shape[0], F, dtype=torch.float16, device=device)
    cfg = {"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "SPLIT_K": 1, "DESC": True}
    ref = combine(down(act, wd, align, weights, cfg), T, K, torch.float16)
    st = SplitTail(device, 16, 16, num_sms=num_sms)
    st.work.fill_(float("nan"))  # an entry the kernel reads without having written it would show
    tiles = int(align.num_post_padded) // 16 * (H // 16)
    rem = tiles % num_sms if tiles >= num_sms else 0
    split = min(num_sms // rem, 4) if rem else 1
    for _ in range(2):  # the flags are reset for the next call
        y = combine(st(act, wd, align, weights, cfg), T, K, torch.float16)
        assert_rel_close(y, ref.float(), torch.float16, "split-tail down")
        assert not st.flags.any()
    written = int(torch.isfinite(st.work.flatten(1)).all(1).sum())
    assert written == (rem * (split - 1) if split > 1 else 0), (tiles, rem, split)


# --- the last-arriver combine lab (NOTES v12): y from the down projection's epilogue, the combine's order -----------

@pytest.mark.parametrize("T,E,K,H,F", [(37, 8, 2, 96, 64), (50, 16, 8, 64, 32), (5, 4, 4, 128, 32)],
                         ids=lambda v: str(v))
def test_last_arriver_combine_lab_is_bit_identical_to_down_and_combine(T, E, K, H, F, device):
    """Whichever program counts a token's K-th arrival sums its K partial rows in the order k = 0..K-1, its own
    row as stored: bit-identical to `down` + `combine`, also with H off the column block (H = 96, BLOCK_N = 32)."""
    from lastcombine_lab import down_last
    from tritonmoe.align import align_tokens
    from tritonmoe.down import combine, down
    g = torch.Generator().manual_seed(T * 7 + E)
    x = torch.randn(T, H, generator=g)
    weights, ids = tritonmoe.route(x.to(device), torch.randn(E, H, generator=g).to(device), K)
    align = align_tokens(ids, E, 16)
    act = torch.randn(int(align.max_blocks) * 16, F, generator=g).to(device)
    w_down = (torch.randn(E, H, F, generator=g) / F ** 0.5).to(device)
    cfg = {"BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 2, "SPLIT_K": 1}
    ref = combine(down(act, w_down, align, weights, cfg), T, K, act.dtype)
    assert torch.equal(down_last(act, w_down, align, weights, T, K, cfg, desc=False), ref)


# --- the block-and-tail pair lab (NOTES v12): a full block and its expert's tail in one gate/up program ------------

@pytest.mark.parametrize("T,E,K,bm,tm", [(100, 2, 2, 64, 16), (70, 3, 2, 32, 16), (9, 4, 2, 32, 16), (150, 3, 2, 64, 32)],
                         ids=lambda v: str(v))
def test_pair_lab_matches_gate_up(T, E, K, bm, tm, device):
    """Paired blocks (a full block and its expert's first tail), later tails and tail-only experts: the used rows of
    `gate_up` exactly (the same products in the same order). T=100, E=2: each expert a 64-row block and three tails;
    T=9: tails only."""
    from pair_lab import gate_up_pair
    from tritonmoe.align import align_tokens
    from tritonmoe.gate_up import gate_up
    g = torch.Generator().manual_seed(T + E)
    H, F = 32, 24
    x = torch.randn(T, H, generator=g).to(device)
    wr = torch.randn(E, H, generator=g).to(device)
    w_gate_up = (torch.randn(E, 2 * F, H, generator=g) / H ** 0.5).to(device)
    _, ids = tritonmoe.route(x, wr, K)
    align = align_tokens(ids, E, bm, tail_m=tm)
    cfg = {"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
    used = int(align.num_post_padded)
    ref = gate_up(x, w_gate_up, align, cfg, fuse_swiglu=True)
    assert torch.equal(gate_up_pair(x, w_gate_up, align, K, cfg)[:used], ref[:used])


# The borrowed-config lab (`borrow_lab.py`): what it times beside a borrowed config.
def test_borrow_lab_variants():
    from borrow_lab import variants_of
    small = {"BLOCK_M": 16, "gate_up": {"BLOCK_N": 64, "BLOCK_K": 128, "num_stages": 3},
             "down": {"BLOCK_N": 128, "BLOCK_K": 128, "num_stages": 3}}
    named = variants_of(small)
    assert named[0] == ("borrowed", small)
    shapes = {(c["BLOCK_M"], c.get("TAIL_M"), c["gate_up"]["BLOCK_N"]) for _, c in named[1:]}
    assert shapes == {(16, None, 32), (64, 16, 64), (64, 16, 32), (128, 16, 64), (128, 16, 32)}
    pers = {"BLOCK_M": 128, "gate_up": {"BLOCK_N": 128, "BLOCK_K": 64, "PERSISTENT": True, "DESC": True},
            "down": {"BLOCK_N": 256, "BLOCK_K": 64}}
    named = dict(variants_of(pers))
    assert "PERSISTENT" not in named["no_persistent"]["gate_up"] and named["no_persistent"]["gate_up"]["DESC"]
    assert named["no_persistent/T64"]["TAIL_M"] == 64 and named["no_persistent/T32"]["TAIL_M"] == 32
    assert len({json.dumps(c, sort_keys=True) for c in named.values()}) == len(named)


# The interleaved impl lab (`impl_ab_lab.py`, NOTES v20): the order rotates by round; the summary compares rounds.
def test_impl_ab_lab_rotates_and_summarizes():
    from impl_ab_lab import rotated, summarize
    impls = ["a", "b", "c"]
    assert [rotated(impls, k) for k in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]
    rows = [{"model": "m", "tokens": 8, "routing": "uniform", "impl": i, "round": k, "median_ms": t}
            for k, (ta, tb) in enumerate([(1.0, 1.1), (1.0, 0.9), (1.2, 1.3)]) for i, t in (("a", ta), ("b", tb))]
    (line,) = summarize(rows, ["a", "b"])
    # medians 1.0 and 1.1; b slower than a in rounds 0 and 2
    assert "a 1.0000 ms" in line and "b 1.1000 ms" in line and "1.1000x of a, slower in 2/3 rounds" in line


# The labs' interleaved-round comparison (`problems.against_first`, used by both summaries): medians, the ratio to the
# first variant, and the common rounds slower and faster (a tie is neither); no comparison without the first's rounds.
def test_against_first():
    from problems import against_first
    by = {"a": {0: 1.0, 1: 2.0, 2: 3.0}, "b": {0: 1.5, 1: 2.0, 3: 9.0}, "c": {}}
    got = against_first(by, ["a", "b", "c"])
    assert got == {"a": {"median": 2.0},
                   "b": {"median": 2.0, "ratio": 1.0, "rounds": 2, "slower": 1, "faster": 0}}
    assert against_first({"a": {}, "b": {0: 1.0}}, ["a", "b"]) == {"b": {"median": 1.0}}


# The alignment chunk lab's summary: medians per cap over the rounds, the layer against the first cap round by round.
def test_align_lab_summarizes():
    from align_lab import summarize
    rows = [{"model": "m", "tokens": 512, "cap": c, "round": k, "align_us": a, "layer_us": t}
            for k, (t1024, t256) in enumerate([(1000.0, 990.0), (1010.0, 1012.0), (1004.0, 980.0)])
            for c, a, t in ((1024, 24.0 + k, t1024), (256, 8.0, t256))]
    (line,) = summarize(rows, [1024, 256])
    # layer medians 1004 and 990; cap 256 faster in rounds 0 and 2; alignment medians 25 and 8 us
    assert "cap 1024 align 25.00 us, layer 1004.0 us" in line and "cap 256 align 8.00 us, layer 990.0 us" in line
    assert f"({990 / 1004:.4f}x of cap 1024, faster in 2/3 rounds)" in line


# The alignment chunk lab (`align_lab.py`, NOTES v21): its cap switch reaches the alignment (memo and plans cleared,
# the previous cap restored by the caller) and the tables it compares are the ones a layer reads.
def test_align_lab_cap_switch(device):
    import align_lab
    from tritonmoe import align
    before = align.MAX_CHUNK
    ids = torch.randint(0, 8, (600,), generator=torch.Generator().manual_seed(5), dtype=torch.int32).to(device)
    got = {}
    try:
        for cap in (1024, 128):
            align_lab.set_cap(cap)
            assert align.MAX_CHUNK == cap and align.align_meta(600, 8, 64, 16)["CHUNK"] == min(cap, 1024)
            got[cap] = align_lab.tables(align.align_tokens(ids, 8, 64, 16))
    finally:
        align_lab.set_cap(before)
    assert align.MAX_CHUNK == before and align.align_meta(600, 8, 64, 16)["CHUNK"] == min(before, 1024)
    assert set(got[128]) == {"sorted_ids", *align_lab.TABLES}
    assert got[128]["sorted_ids"].numel() == int(got[128]["num_post_padded"].item())
    for k in got[1024]:
        assert torch.equal(got[1024][k], got[128][k]), k


# The Gluon lab (`gluon_lab.py`, NOTES v15): Hopper-only kernels (wgmma, TMA, mbarriers, `gl.warp_specialize`), which
# Triton's interpreter cannot run. Without a GPU they are compiled for sm90; on a Hopper GPU checked against float64.
# Compiled in a subprocess without TRITON_INTERPRET. Triton 3.6's interpreter patches `triton.language.core`'s builtins
# for a `@triton.jit` helper's call (`InterpretedFunction.__call__` -> `_patch_lang`) without restoring them (seen
# between tests: after `test_align`'s kernels they stay patched), and in CI (session 17) an xdist worker that had run
# interpreted kernels failed the in-process compile in `gl.cdiv` ("'block_argument' object has no attribute 'dtype'",
# the interpreter's semantics on a compiler value); alone, or after other tests, it passed. A fresh process does not
# depend on which tests its worker ran before.
_GLUON_COMPILE = r"""
import json, re, sys
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
import triton
import gluon_lab

ws, swiglu = sys.argv[1] == "1", sys.argv[2] == "1"
defaults = (gluon_lab.gluon_gate_up if swiglu else gluon_lab.gluon_down).__kwdefaults__
bn, nb = defaults["block_n"], defaults["num_buf"]

def desc(block):
    return f"tensordesc<bf16{block},{gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)!r}>"
sig = {"a_desc": desc([128, 64]), "w_desc": desc([bn, 64]), "out_desc": desc([128, bn]),
       "expert_ids_ptr": "*i32", "num_post_ptr": "*i32", "N": "i32", "K": "i32", "w_rows": "i32",
       "second_row": "i32", "NUM_PROGRAMS": "constexpr", "SWIGLU": "constexpr", "NUM_BUF": "constexpr",
       "GROUP_M": "constexpr", "num_warps": "constexpr"}
consts = {"NUM_PROGRAMS": 132, "SWIGLU": swiglu, "NUM_BUF": nb, "GROUP_M": 8, "num_warps": 8}
kernel = gluon_lab._grouped_gemm_kernel
if ws:
    kernel = gluon_lab._grouped_gemm_ws_kernel
    sig = {**sig, "LOADER_REGS": "constexpr"}
    sig["num_warps"] = sig.pop("num_warps")  # the kernel's parameter order
    consts["LOADER_REGS"] = 40
compiled = triton.compile(GluonASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 8})
ptx = compiled.asm["ptx"]
print(json.dumps({"bn": bn, "shapes": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
                  "tma": "cp.async.bulk.tensor" in ptx, "shared": compiled.metadata.shared,
                  "setmaxnreg": "setmaxnreg" in ptx}))
"""


@pytest.mark.parametrize("ws", [False, True], ids=["pipelined", "warp_specialised"])
@pytest.mark.parametrize("swiglu", [True, False], ids=["gate_up", "down"])
def test_gluon_lab_kernels_compile_for_sm90(ws, swiglu):
    """Each launcher's default tile (`gluon_gate_up`, `gluon_down`), compiled as it launches."""
    import subprocess
    done = subprocess.run([sys.executable, "-c", _GLUON_COMPILE, str(int(ws)), str(int(swiglu))],
                          env=compiling_env(BENCH), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["shapes"] == [f"m64n{got['bn']}k16"]
    assert got["tma"]  # TMA loads
    assert got["shared"] <= 232448  # fits an H100's shared memory
    assert got["setmaxnreg"] == ws


@pytest.mark.gpu
@pytest.mark.parametrize("ws", [False, True], ids=["pipelined", "warp_specialised"])
@pytest.mark.parametrize("T,E,K", [(1, 4, 2), (200, 4, 2), (300, 8, 8)])
def test_gluon_lab_matches_reference_on_gpu(T, E, K, ws):
    """Both Gluon GEMMs against float64 on an aligned layout with padding rows, an expert without tokens (T=1) and
    several tiles per program (T=300, K=8: 2400 rows over 8 experts, 1 program)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon lab kernels are written for Hopper (sm90)")
    import gluon_lab
    from tritonmoe.align import align_tokens
    from tritonmoe.gate_up import gather_rows
    H, F = 352, 256  # H: gate/up's K steps end in a partial box (zero-filled by TMA)
    layer = make_layer(T, E, H, F, torch.bfloat16, "cuda", seed=T + E)
    _, ids = tritonmoe.route(layer.x, layer.weights[0], K)
    align = align_tokens(ids, E, 128)
    used = int(align.num_post_padded)
    xs = gather_rows(layer.x, align)
    w_gate_up = layer.weights[1]
    # the lab's down view needs whole [256, BK] boxes per expert: an output width of 512
    w_down = (torch.randn(E, 512, F, device="cuda") / F ** 0.5).to(torch.bfloat16)
    rows_x = xs[:used].double()
    experts = align.expert_ids[: used // 128].repeat_interleave(128).long()
    gate = torch.einsum("rh,rfh->rf", rows_x, w_gate_up[experts, :F].double())
    up = torch.einsum("rh,rfh->rf", rows_x, w_gate_up[experts, F:].double())
    act_ref = torch.nn.functional.silu(gate) * up
    gluon_lab._POISON[0] = True  # outputs start as NaN: a row the kernel misses fails the check
    try:
        act = gluon_lab.gluon_gate_up(xs, w_gate_up, align, ws=ws, programs=1 if T == 300 else None)
        out = gluon_lab.gluon_down(act, w_down, align, ws=ws, programs=1 if T == 300 else None)
    finally:
        gluon_lab._POISON[0] = False
    assert_rel_close(act[:used], act_ref, torch.bfloat16, "gluon gate/up")
    out_ref = torch.einsum("rf,rhf->rh", act[:used].double(), w_down[experts].double())
    assert_rel_close(out[:used], out_ref, torch.bfloat16, "gluon down")


# The early down projection of `pdl_lab.py` (NOTES v19): its experts found before `griddepcontrol.wait` (redone from
# the partial logits at one token, read from the routing tables otherwise) and PRE_K columns of W_down loaded then.
# The interpreter runs it without the wait (WAIT off; the PDL launch itself is GPU-only).
@pytest.mark.parametrize("pre_k", [0, 16, 64])
@pytest.mark.parametrize("T,E,K,H,F", [(1, 8, 2, 40, 24), (1, 64, 8, 64, 48), (2, 12, 3, 600, 40), (3, 6, 6, 33, 17)])
def test_pdl_lab_down_matches_reference(T, E, K, H, F, pre_k, device):
    import pdl_lab
    from tritonmoe.route_align import prepare_selection, route_and_align
    from tritonmoe.variants import act_fused
    from helpers import layer_reference
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    layer = make_layer(T, E, H, F, dtype, device, seed=T * 31 + E)
    x, wr, wgu, wd = layer.x, *layer.weights
    cfg = {"BLOCK_M": 16, "gate_up": {"BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4},
           "down": {"BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4}}
    if T == 1:
        sel = prepare_selection(x, wr, K, True, 16)
        tw, ids, al = sel.weights, sel.ids, sel.align
        act = act_fused(x, wgu, al, cfg, select=sel)
    else:
        sel = None
        tw, ids, al = route_and_align(x, wr, K, True, 16)
        act = act_fused(x, wgu, al, cfg)
    y = pdl_lab.down_early(act, wd, tw, ids, al, cfg["down"], sel, pre_k, pdl=False)
    assert_rel_close(y, layer_reference(x, wr, wgu, wd, K), dtype, f"pdl lab T={T} PRE_K={pre_k}")
    y_pkg = tritonmoe.moe(x, wr, wgu, wd, K, config={**cfg, "down": {**cfg["down"], "COMBINE": True}})
    if pre_k == 0:  # the package's sums in the package's order
        assert torch.equal(y, y_pkg)
    for stages in (1, 3):
        y_p = pdl_lab.down_pipe(act, wd, tw, ids, al, cfg["down"], stages)
        assert_rel_close(y_p, layer_reference(x, wr, wgu, wd, K), dtype, f"pipelined down T={T} stages={stages}")
    if T == 1:  # the tables read behind the flag the selecting gate/up raises (program 0 runs first here)
        flag = torch.full((1,), 5, dtype=torch.int32, device=device)
        fsel = pdl_lab.flag_selection(x, wr, K, 16, None, flag)
        assert int(flag) == 0
        act_f = pdl_lab.gate_up_flag(x, wgu, fsel, cfg["gate_up"], flag, trigger=False)
        assert int(flag) == 1
        y_f = pdl_lab.down_early(act_f, wd, fsel.weights, fsel.ids, fsel.align, cfg["down"], None, pre_k, pdl=False,
                                 flag=flag)
        assert torch.equal(act_f[: K * 16], act[: K * 16])
        assert torch.equal(y_f, y)


def test_lab_weights_keeps_one_model_at_a_time(monkeypatch):
    """`problems.lab_weights`: a model's weights are made once for all its cases, and a new model's replace them."""
    from types import SimpleNamespace

    import problems
    made = []
    monkeypatch.setattr(problems, "make_weights", lambda m, *a: made.append((m.name, *a)) or object())
    monkeypatch.setattr(problems.torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(problems, "_LAB_WEIGHTS", {})
    a, b = SimpleNamespace(name="a"), SimpleNamespace(name="b")
    wa = problems.lab_weights(a)
    assert problems.lab_weights(a) is wa
    wb = problems.lab_weights(b)
    assert wb is not wa and list(problems._LAB_WEIGHTS) == ["b"]
    assert problems.lab_weights(a) is not wa
    assert made == [(n, torch.bfloat16, "cuda", "uniform") for n in "aba"]


# The rows lab (`rows_lab.py`, NOTES v23): its even routing, the blocks and L2 rows it models, its summary.
def test_rows_lab_even_ids():
    from rows_lab import even_ids
    for T, E, K in ((1024, 8, 2), (37, 8, 2), (64, 64, 8), (5, 3, 3), (3, 1, 1)):
        ids = even_ids(T, E, K)
        assert ids.shape == (T, K) and ids.dtype == torch.int32
        assert all(len(set(row)) == K for row in ids.tolist())  # distinct choices per token
        counts = torch.bincount(ids.flatten().long(), minlength=E)
        assert counts.sum() == T * K and counts.max() - counts.min() <= 1
        if T * K % E == 0:
            assert (counts == T * K // E).all()
    with pytest.raises(ValueError, match="K"):
        even_ids(4, 2, 3)


def test_rows_lab_block_stats():
    from rows_lab import block_stats
    # 245 rows: two 128-row blocks (a 117-row rest needs two 64-row tails, as many rows as a full block);
    # 270: two blocks and one tail; 330: a 74-row rest, two tails, so three full blocks. Two column tiles of 256 rows.
    got = block_stats([245, 270, 330], 128, 64, 256, 512)
    assert got == {"blocks": 8, "tail_blocks": 1, "padded_rows": 256 + 320 + 384,
                   "l2_rows": 2 * (2 * 384) + 2 * (2 * 384 + 320) + 2 * (3 * 384)}
    # without tails every block is full height; an expert without rows costs nothing
    assert block_stats([0, 129], 128, None, 256, 512) == {"blocks": 2, "tail_blocks": 0, "padded_rows": 256,
                                                          "l2_rows": 2 * 2 * 384}


def test_rows_lab_even_routing_through_the_layer(device):
    """The lab's even ids go through the package's expert computation: equal counts in the alignment, the output
    within the dtype's tolerance of the float64 reference of the same routing."""
    from rows_lab import even_ids
    T, E, K, H, F = 24, 4, 2, 32, 48
    layer = make_layer(T, E, H, F, torch.float32, device, seed=23)
    ids = even_ids(T, E, K, device)
    w = torch.rand(T, K, generator=torch.Generator().manual_seed(2)).to(device)
    w = w / w.sum(1, keepdim=True)
    a = tritonmoe.align_tokens(ids, E, 16)
    assert a.expert_counts.tolist() == [T * K // E] * E
    y = tritonmoe.fused_experts(layer.x, w, ids, layer.w_gate_up, layer.w_down)
    ref = tritonmoe.reference_experts(layer.x, w, ids, layer.w_gate_up, layer.w_down)
    assert_rel_close(y, ref, torch.float32, "even routing")


def test_rows_lab_summarizes():
    from rows_lab import summarize
    rows = [{"model": "m", "tokens": 1024, "variant": v, "round": k, "us": t, "l2_rows": l2}
            for k, ts in enumerate([(1400.0, 1200.0, 1100.0), (1410.0, 1420.0, 1110.0), (1390.0, 1190.0, 1090.0)])
            for v, t, l2 in zip(("drawn", "even", "dense"), ts, (119, 100, 0))]
    (line,) = summarize(rows)
    assert "drawn 1400.0 us" in line and "even 1200.0 us" in line and "dense 1100.0 us" in line
    assert f"({1200 / 1400:.4f}x of drawn, faster in 2/3 rounds)" in line
    assert "modelled L2 rows drawn/even 1.190" in line


def test_rows_lab_expert_offsets():
    from rows_lab import expert_offsets
    assert expert_offsets([3, 0, 5, 1]) == [3, 3, 8, 9]
    with pytest.raises(ValueError, match="counts"):
        expert_offsets([2, -1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_lab_grouped_products(dtype):
    """The grouped reference computes each expert's products on its rows, an expert without rows included, against
    float64 on the same operands (grouped_mm is torch's own: it runs on the CPU too). The per-expert cuBLAS reference,
    `ceiling.drawn_products`, is tested in test_ceiling.py."""
    from rows_lab import grouped_products
    E, H, Fd, counts = 4, 32, 16, [3, 0, 7, 2]
    g = torch.Generator().manual_seed(1)
    w13 = torch.randn((E, 2 * Fd, H), generator=g).to(dtype)
    w2 = torch.randn((E, H, Fd), generator=g).to(dtype)
    h, out = grouped_products(counts, w13, w2, torch.Generator().manual_seed(7))()
    assert h.shape == (12, 2 * Fd) and out.shape == (12, H)
    g7 = torch.Generator().manual_seed(7)  # the operands, drawn again from the same seed
    a, act = torch.randn((12, H), generator=g7).to(dtype), torch.randn((12, Fd), generator=g7).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for k, (s, e) in enumerate([(0, 3), (3, 3), (3, 10), (10, 12)]):
        torch.testing.assert_close(h[s:e].double(), a[s:e].double() @ w13[k].double().T, rtol=tol, atol=tol * 8)
        torch.testing.assert_close(out[s:e].double(), act[s:e].double() @ w2[k].double().T, rtol=tol, atol=tol * 8)


def test_rows_lab_references_refuse():
    """Bad counts are refused by name; a reference whose products are all zeros (or not finite) is refused before it
    is timed, the grouped one and the per-expert one alike."""
    import ceiling
    from rows_lab import checked, grouped_products
    w13, w2 = torch.randn(2, 8, 4), torch.randn(2, 4, 4)
    with pytest.raises(ValueError, match="counts"):
        grouped_products([1, 2, 3], w13, w2, torch.Generator())
    with pytest.raises(RuntimeError, match="all zeros"):
        checked(grouped_products([1, 2], torch.zeros(2, 8, 4), w2, torch.Generator()), "grouped")
    mm = ceiling.drawn_products([1, 2], torch.zeros(2, 8, 4), w2, torch.Generator())
    with pytest.raises(RuntimeError, match="all zeros"):
        checked(lambda: [fn() for _, _, fn in mm], "per expert")
    nan = torch.full((2, 4, 4), float("nan"))
    with pytest.raises(RuntimeError, match="not finite"):
        checked(grouped_products([1, 2], w13, nan, torch.Generator()), "grouped")
    assert checked(grouped_products([1, 2], w13, w2, torch.Generator()), "grouped")()[0].shape == (3, 8)


def test_rows_lab_summarizes_the_vendors():
    from rows_lab import summarize
    times = {"drawn": 1400.0, "even": 1200.0, "dense": 1100.0, "gmm_drawn": 1500.0, "gmm_even": 1250.0,
             "mm_drawn": 1320.0}
    rows = [{"model": "m", "tokens": 1024, "variant": v, "round": k, "us": t + k, "l2_rows": 1}
            for k in range(3) for v, t in times.items()]
    (line,) = summarize(rows)
    assert f"| ours drawn/even {1401 / 1201:.3f}" in line
    assert f"| grouped_mm drawn/even {1501 / 1251:.3f}" in line
    assert f"| cuBLAS drawn/even {1321 / 1101:.3f}" in line


def test_cublas_rows_lab_reads_tiles():
    from cublas_rows_lab import tile_of
    name = ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_cluster2x1x1_warpgroupsize2x1x1_"
            "execute_segment_k_off_kernel__5x_cublas")
    assert tile_of(name) == {"tile": "128x256x64", "cluster": "2x1x1"}
    assert tile_of("nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_NNT") == {"tile": "256x128x64", "cluster": "2x1x1"}
    assert tile_of("nvjet_sm90_tst_256x144_64x4_1x2_h_bz_coopA_NNT") == {"tile": "256x144x64", "cluster": "1x2x1"}
    assert tile_of("void at::native::elementwise_kernel<128, 4>") == {"tile": "", "cluster": ""}


def test_cublas_rows_lab_main_kernel():
    from cublas_rows_lab import main_kernel
    reduce = "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, false>"
    gemm = "nvjet_sm90_tst_64x120_64x9_2x1_v_bz_NNT"
    assert main_kernel([gemm, reduce]) == gemm and main_kernel([reduce, gemm]) == gemm
    assert main_kernel([reduce]) == reduce and main_kernel([]) == ""



def test_ext_lab_variants():
    """The table's config, then each allowed extension at the config's warps and at 16: the extended configs carry
    TAIL_M = BLOCK_M + e with their stages refitted; extensions BLOCK_M does not allow and the decode path are left
    out."""
    from ext_lab import ext_variants
    cfg = {"BLOCK_M": 128, "gate_up": {"BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4},
           "down": {"BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4, "SPLIT_K": 1}}
    vs = ext_variants(cfg, [64, 32, 128, 24], [16, 8])
    assert list(vs) == ["table", "ext64", "ext64_w16", "ext32", "ext32_w16"]
    assert vs["table"] is cfg and vs["ext64"]["TAIL_M"] == 192 and vs["ext32_w16"]["TAIL_M"] == 160
    assert vs["ext64_w16"]["gate_up"]["num_warps"] == 16 and vs["ext64_w16"]["down"]["num_warps"] == 16
    assert vs["ext64"]["gate_up"]["num_stages"] == 3 and vs["ext64"]["gate_up"]["BLOCK_K"] == 64
    assert list(ext_variants({**cfg, "expert": {"BLOCK_F": 16}}, [64], [16])) == ["table"]
    assert list(ext_variants({**cfg, "BLOCK_M": 16}, [64, 32, 16], [])) == ["table"]


def test_ext_lab_block_stats(device):
    """Blocks, extended blocks and used rows as the lab reports them, from the package's alignment."""
    from ext_lab import block_stats
    ids = torch.tensor([0] * 269 + [1] * 256 + [2] * 100, dtype=torch.int32, device=device)
    stats = block_stats(tritonmoe.align_tokens(ids, 4, 128, 192))
    assert stats == {"blocks": 2 + 2 + 1, "ext_blocks": 1, "padded_rows": 320 + 256 + 128}
