"""Tile lab (perf notes v9): four-warpgroup tiles through tensor descriptors, beside the tuned configs.

Not part of the sweep. The tuner's descriptor candidates stop at 8 warps, and its 16-warp candidates (v4, run 9)
load through pointers; this lab asks whether a [256, 2x128] or [128, 2x256] fused gate/up tile and a
[256, 128] / [256, 256] down tile, both operands as TMA boxes, beat the tuned tiles where the layer is bound by
the L2->SM traffic of the GEMMs (the Mixtral ridge) or by their issue rate (large T on every model).

Per case (model:tokens, uniform draw, the tuner's seed): for each alignment (BLOCK_M, TAIL_M) the tuned config's
and the candidates' gate_up (gather included where descriptors are used) and down+combine are timed as CUDA-graph
replays (`tune.graph_time`, the sweep's flush); every output is compared with the tuned config's (rel 1e-2);
then the whole layer with the best pair of each alignment is timed and checked against the float64 reference.

    python experiments/bench/tile_lab.py --cases mixtral-8x7b:1024 qwen3-30b-a3b:4096 --out $OUT/tile.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe.align import align_tokens  # noqa: E402
from tritonmoe.down import combine, down  # noqa: E402
from tritonmoe.gate_up import gate_up  # noqa: E402
from tritonmoe.tuned import lookup  # noqa: E402
from problems import add_cases_argument, layer_flops, load_models, make_tokens, make_weights, write_lab_csv  # noqa: E402
from tune import graph_time, warm  # noqa: E402


def gate_up_extra(bm: int) -> list[dict]:
    out = []
    for s in (2, 3):
        if bm == 256:
            out.append({"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 16, "num_stages": s, "DESC": True})
            out.append({"BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": s + 1, "DESC": True})
        if bm == 128:
            out.append({"BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 16, "num_stages": s, "DESC": True})
            out.append({"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 16, "num_stages": s + 1, "DESC": True})
    return out


def down_extra(bm: int) -> list[dict]:
    out = []
    for s in (3, 4):
        if bm == 256:
            out.append({"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": s, "SPLIT_K": 1,
                        "DESC": True})
            out.append({"BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 16, "num_stages": s - 1,
                        "SPLIT_K": 1, "DESC": True})
            out.append({"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 16, "num_stages": s,
                        "SPLIT_K": 1, "DESC": True})
        if bm == 128:
            out.append({"BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 16, "num_stages": s, "SPLIT_K": 1,
                        "DESC": True})
            out.append({"BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": s, "SPLIT_K": 1,
                        "DESC": True})
    return out


# A pointer down tile that compiles at every BLOCK_M here: checks each gate_up candidate's output end to end.
SAFE_DOWN = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3, "SPLIT_K": 1}


def alignments(tuned: dict) -> list[tuple[int, int | None]]:
    bm, tail = tuned["BLOCK_M"], tuned.get("TAIL_M")
    out = [(bm, tail)]
    for a in ((128, 64), (128, None), (256, 64), (256, 32), (256, None)):
        if a not in out and (bm >= 64 or a[0] == 128):
            out.append(a)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def run_case(m, T: int, rows: list[dict]) -> None:
    w = make_weights(m, torch.bfloat16, "cuda", "uniform")
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    weights, ids = tritonmoe.route(x, w.router_weight, m.top_k)
    tuned = lookup(x.device, x.dtype, ids.numel(), m.experts, m.hidden, m.ffn)
    ref = tritonmoe.reference_moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, topk_ids=ids)
    flops = layer_flops(m, T)
    base = {"model": m.name, "tokens": T, "device": torch.cuda.get_device_name()}
    y_ref = None
    layer_best = []
    for bm, tail in alignments(tuned):
        align = align_tokens(ids, m.experts, bm, tail_m=tail)
        is_tuned = bm == tuned["BLOCK_M"] and tail == tuned.get("TAIL_M")
        gu = ([("tuned", tuned["gate_up"])] if is_tuned else []) + [("new", c) for c in gate_up_extra(bm)]
        dn = ([("tuned", tuned["down"])] if is_tuned else []) + [("new", c) for c in down_extra(bm)]
        if not is_tuned and bm == 128:
            gu.append(("t8", tuned["gate_up"] if tuned["BLOCK_M"] == 128 else
                       {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4, "DESC": True}))
        warm(lambda c: gate_up(x, w.w_gate_up, align, c, fuse_swiglu=True), [c for _, c in gu])
        best_gu = None
        for kind, c in gu:
            row = {**base, "stage": "gate_up", "BLOCK_M": bm, "TAIL_M": tail or "", "kind": kind, "cfg": str(c)}
            try:
                act = gate_up(x, w.w_gate_up, align, c, fuse_swiglu=True)
                torch.cuda.synchronize()
                # Compare per routed slot: the aligned row order differs between alignments.
                y = combine(down(act, w.w_down, align, weights, SAFE_DOWN), T, m.top_k, x.dtype)
                if y_ref is None:
                    y_ref = y
                row["rel_vs_tuned"] = rel(y, y_ref)
                if not row["rel_vs_tuned"] <= 1e-2:
                    raise RuntimeError(f"differs from the tuned path: {row['rel_vs_tuned']:.3g}")
                ms = graph_time(lambda c=c: gate_up(x, w.w_gate_up, align, c, fuse_swiglu=True))
                row["us"] = ms * 1e3
                row["tflops"] = flops * 2 / 3 / (ms * 1e-3) / 1e12
                if best_gu is None or ms < best_gu[0]:
                    best_gu = (ms, c)
            except Exception as e:  # noqa: BLE001 (out of resources, compile failure: recorded, not fatal)
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
            print({k: v for k, v in row.items() if k not in ("device",)}, flush=True)
        if best_gu is None:
            continue
        act = gate_up(x, w.w_gate_up, align, best_gu[1], fuse_swiglu=True)
        warm(lambda c: down(act, w.w_down, align, weights, c), [c for _, c in dn])
        best_dn = None
        for kind, c in dn:
            row = {**base, "stage": "down", "BLOCK_M": bm, "TAIL_M": tail or "", "kind": kind, "cfg": str(c)}
            try:
                y = combine(down(act, w.w_down, align, weights, c), T, m.top_k, x.dtype)
                torch.cuda.synchronize()
                row["rel_vs_tuned"] = rel(y, y_ref)
                if not row["rel_vs_tuned"] <= 1e-2:
                    raise RuntimeError(f"differs from the tuned path: {row['rel_vs_tuned']:.3g}")
                ms = graph_time(lambda c=c: combine(down(act, w.w_down, align, weights, c), T, m.top_k, x.dtype))
                row["us"] = ms * 1e3
                row["tflops"] = flops / 3 / (ms * 1e-3) / 1e12
                if best_dn is None or ms < best_dn[0]:
                    best_dn = (ms, c)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
            print({k: v for k, v in row.items() if k not in ("device",)}, flush=True)
        if best_dn is None:
            continue
        cfg = {"BLOCK_M": bm, "gate_up": best_gu[1], "down": best_dn[1], **({"TAIL_M": tail} if tail else {})}
        layer_best.append(cfg)
    for cfg in [tuned] + layer_best:
        row = {**base, "stage": "layer", "BLOCK_M": cfg["BLOCK_M"], "TAIL_M": cfg.get("TAIL_M", ""),
               "kind": "tuned" if cfg is tuned else "best", "cfg": str(cfg)}
        try:
            y = tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, config=cfg)
            row["rel_err"] = float((y.double() - ref).norm() / ref.norm())
            if not row["rel_err"] <= 1e-2:
                raise RuntimeError(f"rel_err {row['rel_err']:.3g}")
            ms = graph_time(lambda: tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k, config=cfg))
            row["us"] = ms * 1e3
            row["tflops"] = flops / (ms * 1e-3) / 1e12
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("device",)}, flush=True)
    del w
    torch.cuda.empty_cache()


def main(argv=None) -> int:
    models = load_models()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cases_argument(ap, "mixtral-8x7b:1024")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-s", type=float, default=500)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tile_lab.py: no GPU here", file=sys.stderr)
        return 2
    rows: list[dict] = []
    t0 = time.time()
    for name, T in args.cases:
        if time.time() - t0 > args.budget_s:
            print(f"# time budget reached before {name}:{T}", flush=True)
            break
        run_case(models[name], T, rows)
        write_lab_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
