"""Tunes the launch configuration of the fused layer on this GPU and writes the data files that
`tritonmoe.tuned` reads: `kernels/tritonmoe/configs/<device>/E.._H.._F.._<dtype>.json`.

For each model and token bucket: for each BLOCK_M, the best gate_up config and the best
down(+combine) config are found separately (each candidate captured in a CUDA graph and timed by its
replays), then the BLOCK_M with the lowest sum wins; the winner is checked against the float64
reference. Then tail-block variants of the winner (`TAIL_M`, see `tritonmoe.align`) are timed as whole
layers on the uniform draw and on the skewed (zipf) one; among those within 5% of the fastest on the uniform
draw, the one with the smaller worst slowdown over the two draws is kept (`pick_robust`). Last, the same robust
pick decides the tiles' order per GEMM (`EXPERT_ORDER`, `order_point`), and the result replaces the config the
count ran with before (its bucket's, or the nearest bucket's where it had none) only where it is no slower on the
uniform draw and its worse slowdown over the two draws is 1% smaller (`incumbent_point`). One command tunes a new card:

    python experiments/bench/tune.py --models mixtral-8x7b qwen3-30b-a3b

`--tails-only` runs just the last step on the configs already in the tables. For up to COMBINE_MAX_ROUTED slots the
down step also tries the down projection that sums each token's choices itself (`down.down_combine`);
`--combine-only` makes just that choice on the configs already in the tables, decided on whole-layer times;
`--select-only` decides, at one token, whether the routing choice is made inside the first gate/up GEMM
(`SELECT_IN_GEMM`, on by default) or by its own launch, likewise;
`--persistent-only` likewise for the persistent gate/up (`PERSISTENT`, no tail blocks; tokens gathered first or inside
the loop) at `--tokens`; `--order-only` for the tiles' order (`EXPERT_ORDER`: expert by expert, per GEMM). `--seed-from SLUG` skips the search for a card like one already tuned: each bucket of device
SLUG's tables (those of `--tokens` where given) gets that config and its tail and skew variants timed here as whole
layers (the robust pick), seconds a bucket instead of minutes (an H200 from the H100's tables:
`tune.py --seed-from h100-sxm`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe.align import align_tokens  # noqa: E402
from tritonmoe.down import combine, down, down_combine  # noqa: E402
from tritonmoe.fused_expert import fused_expert  # noqa: E402
from tritonmoe.gate_up import gate_up  # noqa: E402
from tritonmoe.tuned import CONFIG_DIR, config_path, device_slug, nearest_bucket  # noqa: E402
from device_info import atomic_write_text  # noqa: E402
from problems import TOKENS, load_models, make_tokens, make_weights, zipf_router  # noqa: E402
from timing import bench  # noqa: E402
from tritonmoe.config import fit_shared_memory, with_expert_order, with_ext, with_tails  # noqa: E402
from tritonmoe.route_align import select_default  # noqa: E402

# Every token count of the sweep gets a bucket of its own: a count without one takes its nearest bucket's config
# (`tuned.table_entry`), decided at another count (session 17 run 9: the H200's qwen3 T=8 took T=4's down
# projection with the combine, 2.5% slower there). Counts between them (T=3, 100, ...) are within a factor of
# sqrt(2) of a bucket.
TUNE_TOKENS = TOKENS


def graph_time(fn, warmup_ms=5, rep_ms=25) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return bench(g.replay, warmup_ms, rep_ms, quantiles=(0.5,))[0]


def block_ms(num_routed: int, experts_hit: int) -> list[int]:
    per = num_routed / max(1, experts_hit)
    # Blocks far smaller than an expert's rows only re-read its weights (never won in run 4's table).
    return [bm for bm in (16, 32, 64, 128, 256) if bm <= max(16, 2 * per) and bm >= min(128, per / 8)]


def _fits_smem(bm: int, b_rows: int, bk: int, stages: int, budget: int = 220 * 1024) -> bool:
    return stages * bk * (bm + b_rows) * 2 <= budget


def gate_up_candidates(bm: int, backend: str):
    stages = (2, 3) if backend == "hip" else (3, 4)
    bns = (16, 32, 64, 128) if bm <= 32 else (64, 128) if bm <= 128 else (32, 64)
    bks = (128, 256) if bm <= 32 else (64, 128) if bm <= 128 else (64,)
    warps = (4,) if bm <= 32 else (4, 8) if bm <= 128 else (8,)
    for bn, bk, w, s in itertools.product(bns, bks, warps, stages):
        if bm * bk + 2 * bn * bk > 3 * 128 * 128 or (bm >= 128 and bn >= 128 and w < 8):
            continue
        yield {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w, "num_stages": s}
    if bm >= 128 and backend == "cuda":
        # Four warpgroups: a 128x512 or 256x256 fused tile, half the L2->SM traffic per FLOP of 128x256.
        for bn, s in itertools.product((128,) if bm == 256 else (128, 256), (2, 3)):
            yield {"BLOCK_N": bn, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 16, "num_stages": s}
    if bm >= 64 and backend == "cuda":
        # Tensor descriptors (TMA): tokens gathered once, gate|up as one [BLOCK_M, 2*BLOCK_N] product.
        for bn, bk, w, s in itertools.product((64, 128), (64, 128), (4, 8), (2, 3, 4)):
            if _fits_smem(bm, 2 * bn, bk, s) and not (bm * 2 * bn > 128 * 128 and w < 8):
                yield {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w, "num_stages": s, "DESC": True}
        # Program order for L2 reuse around the winning tile (128 x 2*128, 8 warps).
        for g, s in itertools.product((4, 16), (3, 4)):
            if bm == 128:
                yield {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": g, "num_warps": 8, "num_stages": s, "DESC": True}
        # The same tile as a persistent grid (one program per SM; no tail blocks), the tokens from the gathered copy
        # (DESC) or gathered inside the loop.
        for s, d in itertools.product((3, 4), (True, False)):
            if _fits_smem(bm, 2 * 128, 64, s):
                yield {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": s, "DESC": d,
                       "PERSISTENT": True}


def down_candidates(bm: int, backend: str, F: int, tiles_m: int, H: int):
    stages = (2, 3) if backend == "hip" else (3, 4)
    bns = (16, 32, 64, 128) if bm <= 32 else (64, 128, 256) if bm <= 128 else (64, 128)
    bks = (128, 256) if bm <= 32 else (64, 128) if bm <= 128 else (64,)
    warps = (4,) if bm <= 32 else (4, 8) if bm <= 128 else (8,)
    desc = (False, True) if bm >= 64 and backend == "cuda" else (False,)
    for bn, bk, w, s, d in itertools.product(bns, bks, warps, stages, desc):
        if bm * bk + bn * bk > 3 * 128 * 128 or (bm >= 128 and bn >= 256 and w < 8):
            continue
        tiles = tiles_m * triton.cdiv(H, bn)
        for split in (1, 2, 4, 8):
            # Splits that fill the last wave too (run 1: 300 tiles = 2.3 waves at mixtral T=1024).
            if split > 1 and (F // split < 2 * bk or tiles * split > 8 * 132):
                continue
            cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": w, "num_stages": s, "SPLIT_K": split}
            yield {**cfg, "DESC": True} if d else cfg


# Slots (T*K) up to which the down projection with the combine (`down.down_combine`) is tried: its programs do
# K * BLOCK_N * F multiply-adds per token on the FMA units, which only pays while the weights are the whole cost.
COMBINE_MAX_ROUTED = 64


def combine_candidates(top_k: int, backend: str):
    """`down_combine` tiles: [next_pow2(K), BLOCK_N, BLOCK_K] elements loaded per step, 2K to 16K of them."""
    kk = triton.next_power_of_2(top_k)
    for bn, bk, w in itertools.product((8, 16, 32, 64), (32, 64, 128, 256), (4, 8)):
        if 2048 <= kk * bn * bk <= 16384:
            yield {"BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": 2, "COMBINE": True}


def warm(call, cands) -> None:
    """Compiles the candidates from a thread pool (ptxas runs outside the GIL); results are discarded."""
    from concurrent.futures import ThreadPoolExecutor

    def one(cfg):
        try:
            call(cfg)
        except Exception:
            pass
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(one, cands))
    torch.cuda.synchronize()


def fastest(name: str, cands: list[dict], run, best=None, ref=None):
    """Runs each candidate once, checks it against the first candidate's result (rel. 1e-2), times it as
    CUDA-graph replays and keeps the fastest. `best` is (ms, key, cfg) to beat; each candidate is a
    (key, cfg) pair. Returns (best, ref)."""
    for key, cfg in cands:
        try:
            y = run(key, cfg)
            torch.cuda.synchronize()
            if ref is None:
                ref = y.float()
            elif (y.float() - ref).norm() > 1e-2 * ref.norm():
                print(f"  skip wrong {name} {cfg}", flush=True)
                continue
            ms = graph_time(lambda: run(key, cfg))
        except Exception as e:  # out of resources etc.: not a candidate on this card
            print(f"  skip {name} {cfg}: {type(e).__name__}", flush=True)
            continue
        if best is None or ms < best[0]:
            best = (ms, key, cfg)
    return best, ref


def expert_candidates(backend: str):
    stages = (2, 3) if backend == "hip" else (3, 4)
    for bf, bk, bh, s in itertools.product((16, 32, 64), (128, 256), (64, 128), stages):
        yield {"BLOCK_F": bf, "BLOCK_K": bk, "BLOCK_H": bh, "num_warps": 4, "num_stages": s}


# The smallest BLOCK_M whose time is within 3% of the fastest is kept.
LARGER_BLOCK_MARGIN = 0.97

# Slots (T*K) up to which the one-kernel decode path is tried.
EXPERT_MAX_ROUTED = 256


def tune_expert(m, x, w, weights, ids, backend, bms) -> tuple[float, int, dict] | None:
    best, y_ref = None, None
    for bm in bms:
        align = align_tokens(ids, m.experts, bm)
        cands = list(expert_candidates(backend))
        warm(lambda cfg: fused_expert(x, w.w_gate_up, w.w_down, align, weights, cfg), cands)

        def run(bm, cfg, align=align):
            return combine(fused_expert(x, w.w_gate_up, w.w_down, align, weights, cfg), x.shape[0], m.top_k, x.dtype)
        best, y_ref = fastest("expert", [(bm, c) for c in cands], run, best, y_ref)
    return best


def pick_block_m(per_bm: list[tuple[dict, float]]) -> tuple[dict, float]:
    """The smallest BLOCK_M whose time is within 3% of the fastest. Larger blocks pad more, and a routing
    less even than the tuning draw's costs them most (run 6: BM=256 won by 1% in tuning on mixtral-8x7b
    T=512 and lost 9% in the sweep). `per_bm` holds (config, ms) pairs."""
    if not per_bm:
        raise ValueError("pick_block_m: no BLOCK_M had a working candidate")
    fastest = min(t for _, t in per_bm)
    return min(((c, t) for c, t in per_bm if t <= fastest / LARGER_BLOCK_MARGIN), key=lambda ct: ct[0]["BLOCK_M"])


def tail_variants(cfg: dict) -> list[dict]:
    """The config and its tail-block variants: tails of BLOCK_M/2 and BLOCK_M/4 rows under BLOCK_M >= 64 (an
    expert's rest padded to them, not to a full block) and last blocks extended by as many rows; for BLOCK_M <= 32 (few rows per expert on even
    loads), 64- and 128-row blocks with tails of the old BLOCK_M, same tiles: on even loads every block is a
    tail, while a hot expert's rows go through tall blocks that share its weight tiles."""
    if cfg.get("expert"):
        return [cfg]
    bm = cfg["BLOCK_M"]
    out = [cfg]
    if bm >= 64:
        out += [with_tails(cfg, t) for t in (bm // 2, bm // 4) if t >= 16]
        # Extended last blocks (perf notes v25): a rest of up to BLOCK_M/2 or /4 rows joins the last full block.
        out += [with_ext(cfg, e) for e in (bm // 2, bm // 4) if e >= 16]
    else:
        out += [with_tails(cfg, bm, big) for big in (64, 128)]
    return out


def skew_variants(variants: list[dict]) -> list[dict]:
    """The variants and, for each, the same with gate_up's BLOCK_N halved (down to 32; not for the one-kernel
    decode path nor a persistent gate/up): a skewed draw hits few experts, and the fused gate/up's [BM, 2*BN] tiles
    then make too few programs to stream the hot experts' weights from every SM (deepseek-v3 on the zipf draw at
    T=32-256: 15-18 of 256 experts hit, and the unfused layer's separate gate and up tiles ran 2-4% faster,
    session 10 run 10). Duplicates are dropped, in order."""
    out, seen = [], set()
    for c in variants:
        extra = []
        gu = c.get("gate_up", {})
        if not c.get("expert") and not gu.get("PERSISTENT") and gu.get("BLOCK_N", 0) >= 64:
            extra.append(fit_shared_memory({**c, "gate_up": {**gu, "BLOCK_N": gu["BLOCK_N"] // 2}}, 2))
        for v in (c, *extra):
            key = json.dumps(v, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(v)
    return out


# A tail variant may cost up to 5% on the uniform draw, and only for a larger saving on the skewed one (run 2 of
# session 5: 64-row blocks with 16-row tails cost deepseek-v3 3-4% on even loads at T=256-512 and saved 29-30%
# on the zipf draw, where its hot experts were split into 16-row blocks).
UNIFORM_MARGIN = 1.05


def pick_robust(results: list[tuple[dict, float, float]]) -> tuple[dict, float, float]:
    """(config, uniform ms, skewed ms) triples. Among those within 5% of the fastest on the uniform draw (which
    carries the targets), the one whose worse relative slowdown over the two draws is smallest: a variant costs
    on even loads only what it saves, and more, on skewed ones (not 0.9% for 0.3%, run 1 of session 5)."""
    if not results:
        raise ValueError("pick_robust: no variant ran")
    best_u = min(u for _, u, _ in results)
    best_z = min(z for _, _, z in results)
    return min((r for r in results if r[1] <= best_u * UNIFORM_MARGIN),
               key=lambda r: (max(r[1] / best_u, r[2] / best_z), r[1]))


def layer_times(m, w, tokens: int, variants: list[dict], draws=("uniform", "zipf"),
                describe=lambda c: str(c)) -> list[tuple[dict, list[float], list[float]]]:
    """Times each config of `variants` as whole layers (CUDA graph of `tritonmoe.moe`) on the named draws (uniform:
    the tuner's tokens, seed 1000 + T; zipf: the skewed router, seed 2000 + T), each call first checked against the
    float64 reference. Returns (config, ms per draw, rel_err per draw) for those that ran and were right, in order;
    the others are printed as skipped (`describe` names them)."""
    inputs = {}
    if "uniform" in draws:
        inputs["uniform"] = (make_tokens(m, tokens, w, "uniform", torch.bfloat16, "cuda", seed=1000 + tokens),
                             w.router_weight)
    if "zipf" in draws:
        wr_zipf = zipf_router(w.router_weight.float(), w.routing_dir).to(w.router_weight.dtype)
        inputs["zipf"] = (make_tokens(m, tokens, w, "zipf", torch.bfloat16, "cuda", seed=2000 + tokens), wr_zipf)

    def layer(c, draw):
        x, wr = inputs[draw]
        return lambda: tritonmoe.moe(x, wr, w.w_gate_up, w.w_down, m.top_k, config=c)
    # One reference per draw, on the kernel's expert choice (a near-tie decided differently in fp64 is not an
    # error of the experts' arithmetic).
    refs = {d: tritonmoe.reference_moe(x, wr, w.w_gate_up, w.w_down, m.top_k,
                                       topk_ids=tritonmoe.route(x, wr, m.top_k)[1]) for d, (x, wr) in inputs.items()}
    warm(lambda c: [layer(c, d)() for d in inputs], variants)
    results = []
    for c in variants:
        try:
            times, errs = [], []
            for d, ref in refs.items():
                y = layer(c, d)()
                err = float((y.double() - ref).norm() / ref.norm())
                if not err <= 1e-2:
                    raise RuntimeError(f"rel_err {err:.3g} on the {d} draw")
                errs.append(err)
                times.append(graph_time(layer(c, d)))
        except Exception as e:  # out of resources, wrong: not a candidate
            print(f"  skip {describe(c)}: {type(e).__name__}: {e}", flush=True)
            continue
        results.append((c, times, errs))
    return results


def median_times(m, w, tokens: int, cands: list[dict], repeat: int, draws=("uniform", "zipf"),
                 describe=lambda c: str(c), on_time=None) -> list[tuple]:
    """`layer_times` of every candidate `repeat` times, interleaved (all of them, then all again, so that drift
    between timings falls on every candidate alike): (config, median ms per draw...) for those that ran and were
    right every time, in the order of `cands`. `on_time(config, ms per draw, rel_err per draw)` sees each timing."""
    runs: dict[int, list] = {}
    for c, times, errs in layer_times(m, w, tokens, list(cands) * repeat, draws=draws, describe=describe):
        runs.setdefault(id(c), [c, []])[1].append(times)
        if on_time is not None:
            on_time(c, times, errs)
    return [(c, *(statistics.median(t[i] for t in ts) for i in range(len(draws))))
            for c, ts in runs.values() if len(ts) == repeat]


def robust_point(m, w, tokens: int, cfg: dict, log: list) -> dict:
    """Times `cfg`, its tail variants and their narrower gate/up tiles (`skew_variants`) as whole layers
    (`layer_times`) on the uniform and the zipf draw; returns the `pick_robust` choice."""
    variants = skew_variants(tail_variants(cfg))
    if len(variants) == 1:
        return cfg
    results = []
    for c, times, _ in layer_times(m, w, tokens, variants,
                                   describe=lambda c: f"tail variant {c.get('BLOCK_M')}/{c.get('TAIL_M')}"):
        results.append((c, *times))
        gu_bn = c.get("gate_up", {}).get("BLOCK_N", "")
        log.append({"model": m.name, "tokens": tokens, "BLOCK_M": c["BLOCK_M"], "TAIL_M": c.get("TAIL_M", ""),
                    "gate_up_BLOCK_N": gu_bn,
                    "uniform_us": round(times[0] * 1e3, 2), "zipf_us": round(times[1] * 1e3, 2)})
        print(f"  T={tokens} BM={c['BLOCK_M']} TAIL={c.get('TAIL_M', '-')} gate_up BN={gu_bn}: "
              f"uniform {times[0]*1e3:.1f} us, zipf {times[1]*1e3:.1f} us", flush=True)
    return pick_robust(results)[0] if results else cfg


def tune_point(m, w, tokens: int, backend: str) -> tuple[dict, float, dict]:
    x = make_tokens(m, tokens, w, "uniform", torch.bfloat16, "cuda", seed=1000 + tokens)
    weights, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    N, hit = ids.numel(), int(torch.unique(ids).numel())
    per_bm = []
    for bm in block_ms(N, hit):
        align = align_tokens(ids, m.experts, bm)
        tiles_m = min(align.max_blocks, N // bm + hit)
        used = int(align.num_post_padded)  # rows past it are never written: not compared
        gu_cands = list(gate_up_candidates(bm, backend))
        warm(lambda cfg: gate_up(x, w.w_gate_up, align, cfg, fuse_swiglu=True), gu_cands)
        (gu_ms, _, gu_cfg), _ = fastest("gate_up", [(None, c) for c in gu_cands],
                                        lambda _, cfg: gate_up(x, w.w_gate_up, align, cfg, fuse_swiglu=True)[:used])
        act = gate_up(x, w.w_gate_up, align, gu_cfg, fuse_swiglu=True)
        dn_cands = list(down_candidates(bm, backend, m.ffn, tiles_m, m.hidden))
        if N <= COMBINE_MAX_ROUTED:
            dn_cands += list(combine_candidates(m.top_k, backend))

        def run_down(_, cfg, act=act, align=align):
            if cfg.get("COMBINE"):
                return down_combine(act, w.w_down, align, weights, ids, cfg)
            return combine(down(act, w.w_down, align, weights, cfg), tokens, m.top_k, x.dtype)
        warm(lambda cfg: run_down(None, cfg), dn_cands)
        (dn_ms, _, dn_cfg), _ = fastest("down", [(None, c) for c in dn_cands], run_down)
        print(f"  T={tokens} BM={bm}: gate_up {gu_ms*1e3:.1f} us {gu_cfg}  down {dn_ms*1e3:.1f} us {dn_cfg}", flush=True)
        per_bm.append(({"BLOCK_M": bm, "gate_up": gu_cfg, "down": dn_cfg}, gu_ms + dn_ms))
    best = pick_block_m(per_bm)
    cfg = best[0]
    if N <= EXPERT_MAX_ROUTED:
        ex = tune_expert(m, x, w, weights, ids, backend, [bm for bm in block_ms(N, hit) if bm <= 32])
        if ex is not None:
            # Decided on the whole layer (routing, alignment, combine included), not on kernel sums: the
            # one-kernel path won its kernel sum on qwen2 T=1 and then lost 5% to tritonmoe_w13 in the sweep.
            cfg_ex = {**cfg, "BLOCK_M": ex[1], "expert": ex[2]}

            def layer(c):
                return lambda: tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, config=c)
            t_two, t_one = graph_time(layer(cfg)), graph_time(layer(cfg_ex))
            print(f"  T={tokens} layer: two kernels {t_two*1e3:.1f} us, one-kernel decode BM={ex[1]} "
                  f"{t_one*1e3:.1f} us {ex[2]}", flush=True)
            if t_one < t_two:
                cfg = cfg_ex
                best = (cfg, ex[0])
    y = tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, config=cfg)
    ref = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)
    err = float((y.double() - ref).norm() / ref.norm())
    if not err <= 1e-2:
        raise RuntimeError(f"tuned config for T={tokens} fails the reference check: rel_err {err:.3g} ({cfg})")
    return cfg, best[1], {"rel_err": err}


def combine_point(m, w, tokens: int, cfg: dict, log: list, repeat: int = 3) -> dict:
    """The table's config, or the same with another `down_combine` down config where one is faster as a whole layer
    (`layer_times`, the uniform draw, medians of `repeat` interleaved timings) by at least 1%; every candidate is checked
    against the float64 reference. If the table's own config does not run, it is kept (there is nothing to compare
    with). (Session 17 run 8 kept a candidate on one timing 1.4% faster that the sweep then found no faster.)"""
    if cfg.get("expert") or tokens * m.top_k > COMBINE_MAX_ROUTED:
        return cfg
    backend = "hip" if torch.version.hip else "cuda"
    cands = [cfg] + [{**cfg, "down": c} for c in combine_candidates(m.top_k, backend) if c != cfg["down"]]
    results = median_times(m, w, tokens, cands, repeat, draws=("uniform",), describe=lambda c: str(c["down"]),
                           on_time=lambda c, t, e: log.append({"model": m.name, "tokens": tokens,
                                                               "down": json.dumps(c["down"]),
                                                               "layer_us": t[0] * 1e3, "rel_err": e[0]}))
    if not results or results[0][0] is not cfg:
        return cfg
    base_ms = results[0][1]
    best, best_ms = min(results, key=lambda r: r[1])
    if best is not cfg and best_ms > 0.99 * base_ms:
        best, best_ms = cfg, base_ms
    print(f"{m.name} T={tokens}: table's down {base_ms*1e3:.1f} us, kept {best['down']} {best_ms*1e3:.1f} us",
          flush=True)
    return best


def select_point(m, w, tokens: int, cfg: dict, log: list, repeat: int = 3) -> dict:
    """At one token: the table's config with the routing choice inside the first gate/up GEMM (`SELECT_IN_GEMM`) or by
    the separate launch, as whole layers on the uniform draw, medians of `repeat` interleaved timings; the selection
    in the GEMM is kept unless the separate launch is at least 1% faster. The choice is written down only where it
    differs from the package's default for the shape (`route_align.select_default`)."""
    if tokens != 1:
        return cfg
    on = {**cfg, "SELECT_IN_GEMM": True}
    off = {**cfg, "SELECT_IN_GEMM": False}
    results = median_times(m, w, tokens, [on, off], repeat, draws=("uniform",),
                           describe=lambda c: f"SELECT_IN_GEMM={c['SELECT_IN_GEMM']}",
                           on_time=lambda c, t, e: log.append({"model": m.name, "tokens": tokens,
                                                               "select_in_gemm": c["SELECT_IN_GEMM"],
                                                               "layer_us": round(t[0] * 1e3, 3), "rel_err": e[0]}))
    if len(results) != 2:
        return cfg
    (_, t_on), (_, t_off) = results
    best = off if t_off <= 0.99 * t_on else on
    if best["SELECT_IN_GEMM"] == select_default(m.experts):
        best = {k: v for k, v in best.items() if k != "SELECT_IN_GEMM"}
    print(f"{m.name} T={tokens}: selection in the GEMM {t_on*1e3:.2f} us, separate {t_off*1e3:.2f} us, kept "
          f"{'separate' if t_off <= 0.99 * t_on else 'in the GEMM'}", flush=True)
    return best


def persistent_variants(cfg: dict) -> list[dict]:
    """The persistent gate/up (`PERSISTENT`, no tail blocks) at the ridge's [128, 2x128] tile, 3 and 4 stages, the
    tokens from a gathered copy (`DESC`) or gathered inside the loop, beside a table config of BLOCK_M >= 64 (its own
    gate/up tile where that is a descriptor one)."""
    if cfg.get("expert") or cfg["BLOCK_M"] < 64:
        return []
    gu = cfg["gate_up"]
    base = ({k: v for k, v in gu.items() if k not in ("PERSISTENT", "DESC")} if gu.get("DESC") else
            {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4})
    out = []
    for d, s in itertools.product((True, False), (3, 4)):
        c = {k: v for k, v in cfg.items() if k != "TAIL_M"}
        c["gate_up"] = {**base, "num_stages": s, "DESC": d, "PERSISTENT": True}
        if c["gate_up"] != gu or cfg.get("TAIL_M"):
            out.append(c)
    return out


def persistent_point(m, w, tokens: int, cfg: dict, log: list, repeat: int = 3) -> dict:
    """The table's config, or a `persistent_variants` one where it is at least 1% faster as a whole layer on the
    uniform draw and its worse slowdown over the uniform and zipf draws is the smallest (as `pick_robust`); medians
    of `repeat` interleaved timings."""
    variants = persistent_variants(cfg)
    if not variants:
        return cfg
    results = median_times(m, w, tokens, [cfg] + variants, repeat, describe=lambda c: str(c["gate_up"]),
                           on_time=lambda c, t, e: log.append({
                               "model": m.name, "tokens": tokens, "gate_up": json.dumps(c["gate_up"]),
                               "TAIL_M": c.get("TAIL_M", ""), "uniform_us": round(t[0] * 1e3, 2),
                               "zipf_us": round(t[1] * 1e3, 2)}))
    if not results or results[0][0] is not cfg:
        return cfg
    _, u0, z0 = results[0]
    better = [r for r in results[1:] if r[1] <= 0.99 * u0]
    best = min(better, key=lambda r: (max(r[1] / u0, r[2] / z0), r[1])) if better else results[0]
    print(f"{m.name} T={tokens}: table {u0*1e3:.1f}/{z0*1e3:.1f} us (uniform/zipf), kept {best[0]['gate_up']} "
          f"TAIL_M={best[0].get('TAIL_M', '-')} {best[1]*1e3:.1f}/{best[2]*1e3:.1f} us", flush=True)
    return best[0]


def order_variants(cfg: dict) -> list[dict]:
    """The config with its GEMMs' tiles in expert order (`EXPERT_ORDER`, `tritonmoe._gemm_common.tile_of`): both,
    and each alone. None for the one-kernel decode path or a config that has it already."""
    if cfg.get("expert") or cfg["gate_up"].get("EXPERT_ORDER") or cfg["down"].get("EXPERT_ORDER"):
        return []
    return [with_expert_order(cfg, g) for g in (("gate_up", "down"), ("gate_up",), ("down",))]


def order_point(m, w, tokens: int, cfg: dict, log: list, repeat: int = 3) -> dict:
    """The table's config, or an `order_variants` one: the robust pick (`pick_robust`) over the config and its
    variants as whole layers on the uniform and zipf draws (medians of `repeat` interleaved timings), taken only
    where it is at least 1% faster than the table's config on the uniform draw."""
    variants = order_variants(cfg)
    if not variants:
        return cfg

    def which(c):
        return "+".join(g for g in ("gate_up", "down") if c[g].get("EXPERT_ORDER")) or "grouped"
    results = median_times(m, w, tokens, [cfg] + variants, repeat, describe=which,
                           on_time=lambda c, t, e: log.append({"model": m.name, "tokens": tokens,
                                                               "expert_order": which(c),
                                                               "uniform_us": round(t[0] * 1e3, 2),
                                                               "zipf_us": round(t[1] * 1e3, 2)}))
    if not results or results[0][0] is not cfg:
        return cfg
    _, u0, z0 = results[0]
    best = pick_robust(results)
    if best[0] is not cfg and best[1] > 0.99 * u0:
        best = results[0]
    print(f"{m.name} T={tokens}: grouped {u0*1e3:.1f}/{z0*1e3:.1f} us (uniform/zipf), kept {which(best[0])} "
          f"{best[1]*1e3:.1f}/{best[2]*1e3:.1f} us", flush=True)
    return best[0]


def incumbent(table: dict, num_routed: int) -> dict | None:
    """The config that `num_routed` slots run with now: the table's own bucket, else the nearest one's
    (`tuned.nearest_bucket`, as a layer call resolves it); None for an empty table."""
    if not table:
        return None
    return table[str(nearest_bucket([int(k) for k in table], num_routed))]


# How much slower on the uniform draw (which carries the targets) a new config may time and still replace the
# incumbent: the spread of medians of three interleaved timings (session 19 run 1: 0.05-0.3% between ties).
UNIFORM_NOISE = 1.005


def incumbent_point(m, w, tokens: int, cfg: dict, old: dict | None, log: list, repeat: int = 3) -> dict:
    """A full search's config for a bucket against the config the count ran with before it (`incumbent`: the bucket's
    own, or a neighbour's that was decided at another count), as whole layers on the uniform and zipf draws, medians
    of `repeat` interleaved timings. The new config replaces the incumbent where it is no slower on the uniform draw
    than the timings' spread (`UNIFORM_NOISE`) and its worse slowdown over the two draws (`pick_robust`'s measure,
    against the faster of the two on each draw) is at least 1% smaller: faster on both, or as fast on uniform and
    faster on zipf. Otherwise the incumbent is written into the bucket (so the count has a bucket of its own either
    way, decided at that count). Session 19 run 1 (the first rule, 1% faster on uniform) kept incumbents that tied on
    uniform and were 4-19% slower on zipf."""
    if old is None or old == cfg:
        return cfg

    def which(c):
        return "new" if c is cfg else "incumbent"
    results = median_times(m, w, tokens, [old, cfg], repeat, describe=which,
                           on_time=lambda c, t, e: log.append({"model": m.name, "tokens": tokens,
                                                               "candidate": which(c), "config": json.dumps(c),
                                                               "uniform_us": round(t[0] * 1e3, 2),
                                                               "zipf_us": round(t[1] * 1e3, 2)}))
    by = {which(r[0]): r for r in results}
    if "new" not in by:
        return old
    if "incumbent" not in by:
        return cfg
    (_, u_old, z_old), (_, u_new, z_new) = by["incumbent"], by["new"]
    keep = cfg if new_replaces_incumbent(u_old, z_old, u_new, z_new) else old
    print(f"{m.name} T={tokens}: incumbent {u_old*1e3:.1f}/{z_old*1e3:.1f} us (uniform/zipf), new "
          f"{u_new*1e3:.1f}/{z_new*1e3:.1f} us, kept the {which(keep)}", flush=True)
    return keep


def new_replaces_incumbent(u_old: float, z_old: float, u_new: float, z_new: float) -> bool:
    """`incumbent_point`'s rule on the two configs' median times (uniform, zipf)."""
    if u_new > UNIFORM_NOISE * u_old:
        return False
    best_u, best_z = min(u_old, u_new), min(z_old, z_new)

    def worst(u, z):
        return max(u / best_u, z / best_z)
    return worst(u_new, z_new) <= 0.99 * worst(u_old, z_old)


def table_tokens(table: dict, top_k: int, tokens: list[int] | None = None) -> list[int]:
    """The token counts of a table's buckets (slots // top_k), ascending; only those in `tokens` where given."""
    out = sorted(int(b) // top_k for b in table)
    return out if tokens is None else [t for t in out if t in tokens]


def main(argv=None) -> int:
    models = load_models()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(models), choices=list(models))
    ap.add_argument("--tokens", nargs="+", type=int, default=None,
                    help=f"token counts to tune (default {' '.join(map(str, TUNE_TOKENS))}; with --tails-only, "
                         "--persistent-only or --seed-from: which of the tables' buckets)")
    ap.add_argument("--config-dir", type=Path, default=CONFIG_DIR)
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--tails-only", action="store_true",
                    help="only the tail-block step, on the configs already in the tables (their token buckets, "
                         "those of --tokens where given)")
    ap.add_argument("--combine-only", action="store_true",
                    help="only the down+combine choice, on the configs already in the tables (buckets up to "
                         f"{COMBINE_MAX_ROUTED} slots)")
    ap.add_argument("--select-only", action="store_true",
                    help="only the one-token choice of SELECT_IN_GEMM, on the configs already in the tables")
    ap.add_argument("--persistent-only", action="store_true",
                    help="only the persistent gate/up choice, on the configs already in the tables (--tokens filters)")
    ap.add_argument("--order-only", action="store_true",
                    help="only the tile order (`EXPERT_ORDER` per GEMM), on the configs already in the tables "
                         "(--tokens filters)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="the steps that compare whole layers against a 1%% threshold (--order-only, --combine-only, "
                         "--persistent-only, and the order step of a full tune): interleaved timings of each variant, "
                         "their medians compared")
    ap.add_argument("--seed-from", metavar="SLUG",
                    help="start from this device's tables (configs/SLUG/) instead of a full search: the robust pick "
                         "over each bucket's config and its tail and skew variants, timed here")
    ap.add_argument("--log", type=Path, help="CSV of every tail variant's (or down+combine candidate's) layer times")
    args = ap.parse_args(argv)
    tokens_given = args.tokens
    args.tokens = args.tokens or list(TUNE_TOKENS)
    if not torch.cuda.is_available():
        print("tune.py: no GPU here", file=sys.stderr)
        return 2
    backend = "hip" if torch.version.hip else "cuda"
    slug = device_slug(torch.device("cuda"))
    t0 = time.time()
    log: list[dict] = []
    for name in args.models:
        m = models[name]
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")
        path = config_path(slug, m.experts, m.hidden, m.ffn, torch.bfloat16)
        path = args.config_dir / path.relative_to(CONFIG_DIR)
        table = json.loads(path.read_text()) if path.exists() else {}
        seed = {}
        if args.seed_from:
            seed_path = args.config_dir / config_path(args.seed_from, m.experts, m.hidden, m.ffn,
                                                      torch.bfloat16).relative_to(CONFIG_DIR)
            if not seed_path.exists():
                print(f"{name}: no table of {args.seed_from} to start from ({seed_path}); skipped", flush=True)
                continue
            seed = json.loads(seed_path.read_text())
            tokens_list = table_tokens(seed, m.top_k, tokens_given)
        elif args.tails_only or args.combine_only or args.persistent_only or args.order_only or args.select_only:
            tokens_list = table_tokens(table, m.top_k, tokens_given if (args.tails_only or args.order_only) else None)
        else:
            tokens_list = args.tokens
        for tokens in tokens_list:
            if time.time() - t0 > args.budget_s:
                print("# time budget reached", flush=True)
                break
            if args.combine_only or args.persistent_only or args.order_only or args.select_only:
                key = str(tokens * m.top_k)
                if args.select_only:
                    table[key] = select_point(m, w, tokens, table[key], log)
                elif args.order_only:
                    table[key] = order_point(m, w, tokens, table[key], log, args.repeat)
                elif args.persistent_only:
                    if tokens not in args.tokens:
                        continue
                    table[key] = persistent_point(m, w, tokens, table[key], log, args.repeat)
                else:
                    table[key] = combine_point(m, w, tokens, table[key], log, args.repeat)
                atomic_write_text(path, json.dumps(dict(sorted(table.items(), key=lambda kv: int(kv[0]))), indent=1) + "\n")
                if args.log:
                    args.log.parent.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame(log).to_csv(args.log, index=False)
                continue
            if args.seed_from:
                cfg = seed[str(tokens * m.top_k)]
            elif args.tails_only:
                cfg = table[str(tokens * m.top_k)]
            else:
                cfg, ms, info = tune_point(m, w, tokens, backend)
                print(f"{name} T={tokens}: {ms*1e3:.1f} us (gate_up+down) rel_err {info['rel_err']:.2e} {cfg}", flush=True)
            cfg = robust_point(m, w, tokens, cfg, log)
            if not args.tails_only:  # the tile order on the kept config (as --order-only does on a table's)
                cfg = order_point(m, w, tokens, cfg, log, args.repeat)
                cfg = select_point(m, w, tokens, cfg, log)  # one token: the routing choice's launch
                if not args.seed_from:  # the search's pick against what the count ran with before
                    cfg = incumbent_point(m, w, tokens, cfg, incumbent(table, tokens * m.top_k), log,
                                          args.repeat)
            print(f"{name} T={tokens}: keeps BLOCK_M={cfg['BLOCK_M']} TAIL_M={cfg.get('TAIL_M', '-')}", flush=True)
            table[str(tokens * m.top_k)] = cfg
            atomic_write_text(path, json.dumps(dict(sorted(table.items(), key=lambda kv: int(kv[0]))), indent=1) + "\n")
            if args.log:
                args.log.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(log).to_csv(args.log, index=False)
        del w
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
