"""Lab (perf notes v23): what the draw's uneven rows per expert cost the expert GEMMs at the ridge.

The dense reference of the paper's ceiling table (`ceiling.py`) gives every expert the same rows; the layer runs on the
uniform draw, where mixtral-8x7b at T=1024 gives its 8 experts 256 +- 14 rows. In 128-row blocks with 64-row tails an
expert of 245 rows is two blocks, but one of 270 is two blocks and a tail, and each block streams all of its expert's
weight tiles from the L2 again (v9: the ridge is bound by the L2's throughput, not by DRAM or the tensor cores). This
lab times the expert computation alone (`tritonmoe.fused_experts`: alignment, gate/up, down, combine; no router) on
the same tokens with two routings:

- `drawn`: the ids and weights the layer's router gives these tokens (the sweep's uniform draw);
- `even`: token t's j-th choice is expert (t*K + j) mod E, the same weights, so every expert gets T*K/E rows when E
  divides T*K (the rows the dense reference has);

both at the table's config for the point, and beside them cuBLAS `bmm` on the even rows (`ceiling.products`, gate|up
then down, nothing else). Whether the draw's rows cost the vendor's GEMMs as much (NOTES v24) is asked of two more
references, the two products alone again on random operands of the right rows: `gmm_drawn` and `gmm_even`,
`torch._grouped_mm` (the `torch_grouped_mm` peer's GEMMs) with the drawn and the even rows per expert, and `mm_drawn`,
one cuBLAS `mm` per expert and product on the drawn rows (`ceiling.drawn_products`; models of at most `MM_EXPERTS`
experts: the launches of a graph of 2E GEMMs would weigh on more). Each variant is a CUDA-graph replay
(`tune.graph_time`); our outputs are poisoned before their first call and checked against the float64 reference of the
same routing, the references' products checked finite and not all zeros; the variants rotate over `--repeat` rounds.
Each row also gives the blocks the alignment makes and `l2_rows`, the rows of x and weight tiles the gate/up GEMM
moves from the L2 (`l2_rows`: for each block, its height plus the gate|up tile's rows, for each of the 2F/(2*BLOCK_N)
column tiles); the ratio drawn/even of `l2_rows` is what an L2-bound GEMM would pay for the draw.

    python experiments/bench/rows_lab.py --cases mixtral-8x7b:1024 mixtral-8x7b:512 --repeat 3 --out $OUT/rows.csv
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe.align import expert_blocks  # noqa: E402
from tritonmoe.config import tail_of  # noqa: E402
from tritonmoe.reference import reference_experts  # noqa: E402
from problems import against_first, lab_main, lab_weights, load_models, make_tokens, rotated, rounds_by  # noqa: E402

VARIANTS = ("drawn", "even", "dense", "gmm_drawn", "gmm_even", "mm_drawn")
MM_EXPERTS = 16


def expert_offsets(counts) -> list[int]:
    """The end of each expert's rows in rows sorted by expert (what grouped_mm's `offs` holds)."""
    out, total = [], 0
    for c in counts:
        if c < 0:
            raise ValueError(f"counts: expected non-negative rows per expert, got {list(counts)}")
        total += int(c)
        out.append(total)
    return out


def grouped_products(counts, w_gate_up: torch.Tensor, w_down: torch.Tensor, gen: torch.Generator):
    """A callable running the layer's two expert products through `torch._grouped_mm` (one call per product over all
    experts), on random operands with `counts[e]` rows for expert e: gate|up ([rows, H] x [H, 2F]) then down
    ([rows, F] x [F, H]), nothing else; it returns the pair of products. (The per-expert cuBLAS reference on the same
    rows is `ceiling.drawn_products`.)"""
    E, two_f, H = w_gate_up.shape
    if len(counts) != E:
        raise ValueError(f"counts: expected {E} entries (one per expert), got {len(counts)}")
    offs = expert_offsets(counts)
    n, dev = offs[-1], w_gate_up.device
    a = torch.randn((n, H), generator=gen, device=dev).to(w_gate_up.dtype)
    act = torch.randn((n, two_f // 2), generator=gen, device=dev).to(w_gate_up.dtype)
    wgu, wd = w_gate_up.transpose(1, 2), w_down.transpose(1, 2)
    gm = getattr(torch.nn.functional, "grouped_mm", None) or torch._grouped_mm
    o = torch.tensor(offs, dtype=torch.int32, device=dev)
    return lambda: (gm(a, wgu, offs=o), gm(act, wd, offs=o))


def checked(fn, what: str):
    """`fn`, after one call whose products are finite and not all zeros (`ceiling.usable`); else RuntimeError."""
    from ceiling import usable
    if not usable(fn()):
        raise RuntimeError(f"{what}: a product is not finite or is all zeros")
    return fn


def even_ids(T: int, E: int, K: int, device=None) -> torch.Tensor:
    """[T, K] int32 expert ids: token t's j-th choice is (t*K + j) mod E. A token's K ids are distinct (K <= E) and
    expert e gets floor or ceil of T*K/E slots (exactly T*K/E when E divides it)."""
    if not 1 <= K <= E:
        raise ValueError(f"K: expected 1 <= K <= E={E}, got {K}")
    t = torch.arange(T, device=device, dtype=torch.int64)[:, None]
    j = torch.arange(K, device=device, dtype=torch.int64)[None, :]
    return ((t * K + j) % E).to(torch.int32)


def block_stats(counts, block_m: int, tail_m: int | None, gate_up_n: int, two_f: int) -> dict:
    """The alignment's blocks for per-expert slot counts (`expert_blocks`, as on the device), their padded rows, and
    the gate/up GEMM's L2 rows: every block reads its rows of x and every [gate_up_n, H] tile of its expert's 2F weight
    rows once for each of the two_f / gate_up_n column tiles, i.e. (height + gate_up_n) * two_f / gate_up_n rows."""
    tail = tail_m or block_m
    blocks = tails = padded = l2 = 0
    tiles = two_f // gate_up_n
    for c in counts:
        full, t = expert_blocks(int(c), block_m, tail_m)
        blocks += full + t
        tails += t
        padded += full * block_m + t * tail
        l2 += tiles * (full * (block_m + gate_up_n) + t * (tail + gate_up_n))
    return {"blocks": blocks, "tail_blocks": tails, "padded_rows": padded, "l2_rows": l2}


def summarize(rows: list[dict], variants=VARIANTS) -> list[str]:
    """Per (model, tokens): each variant's median over its rounds and, against `drawn`, the ratio of medians and the
    rounds in which it was faster; with the modelled L2 ratio (drawn/even `l2_rows`) and, for ours and for each
    vendor reference that ran, the ratio of medians drawn/even (cuBLAS: `mm_drawn` over `dense`, the `bmm` on even rows)."""
    out = []
    for key, mine, by in rounds_by(rows, ("model", "tokens"), "variant", variants, "us"):
        line = [f"{key[0]} T={key[1]}:"]
        stats = against_first(by, variants)
        for v, st in stats.items():
            line.append(f"{v} {st['median']:.1f} us")
            if "ratio" in st:
                line.append(f"({st['ratio']:.4f}x of {variants[0]}, faster in {st['faster']}/{st['rounds']} rounds)")
        l2 = {v: statistics.median(r["l2_rows"] for r in mine if r["variant"] == v) for v in ("drawn", "even")
              if any(r["variant"] == v for r in mine)}
        if len(l2) == 2:
            line.append(f"modelled L2 rows drawn/even {l2['drawn'] / l2['even']:.3f}")
        med = {v: st["median"] for v, st in stats.items()}
        for name, (num, den) in {"ours": ("drawn", "even"), "grouped_mm": ("gmm_drawn", "gmm_even"),
                                 "cuBLAS": ("mm_drawn", "dense")}.items():
            if num in med and den in med:
                line.append(f"| {name} drawn/even {med[num] / med[den]:.3f}")
        out.append(" ".join(line))
    return out


def run_case(name: str, T: int, rows: list[dict], args) -> None:
    from ceiling import drawn_products, products
    from latency import rel_err
    from tune import graph_time
    m = load_models()[name]
    w = lab_weights(m)
    E, K = m.experts, m.top_k
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=T)
    cfg = tritonmoe.api.resolve_config(x, T * K, E, m.hidden, m.ffn, None)
    tw, drawn = tritonmoe.route(x, w.router_weight, K)
    routings = {"drawn": drawn, "even": even_ids(T, E, K, x.device)}
    # The one-kernel decode path (an "expert" entry) has no gate/up column tiles: its blocks count the whole 2F.
    gate_up_n = 2 * m.ffn if cfg.get("expert") else 2 * cfg["gate_up"]["BLOCK_N"]
    counts = {v: torch.bincount(ids.flatten().long(), minlength=E).tolist() for v, ids in routings.items()}
    calls, meta = {}, {}
    for v, ids in routings.items():
        ref = reference_experts(x, tw, ids, w.w_gate_up, w.w_down)
        y = torch.full_like(x, float("nan"))

        def call(ids=ids, y=y):
            y.copy_(tritonmoe.fused_experts(x, tw, ids, w.w_gate_up, w.w_down, config=cfg, check_ids=False))
        call()
        torch.cuda.synchronize()
        err = rel_err(y, ref)
        if not err <= 1e-2:
            print(f"{name} T={T} {v}: rel_err {err:.2e} above 1e-2 (or NaN): its timings are not a result", flush=True)
        calls[v] = call
        meta[v] = {"rel_err": err, "min_rows": min(counts[v]), "max_rows": max(counts[v]),
                   **block_stats(counts[v], cfg["BLOCK_M"], tail_of(cfg), gate_up_n, 2 * m.ffn)}
    gen = torch.Generator(device="cuda").manual_seed(T)
    dense = products(m, T, w.w_gate_up, w.w_down, gen)
    calls["dense"] = lambda: [fn() for _, _, fn in dense]
    meta["dense"] = {"rel_err": float("nan"), "min_rows": dense[0][1], "max_rows": dense[0][1]}
    for v, routing, per_expert in (("gmm_drawn", "drawn", False), ("gmm_even", "even", False),
                                   ("mm_drawn", "drawn", True)):
        if per_expert and E > MM_EXPERTS:
            continue
        rows_of = counts[routing]
        try:
            if per_expert:
                mm = drawn_products(rows_of, w.w_gate_up, w.w_down, gen)
                calls[v] = checked(lambda mm=mm: [fn() for _, _, fn in mm], f"{name} T={T} {v}")
            else:
                calls[v] = checked(grouped_products(rows_of, w.w_gate_up, w.w_down, gen), f"{name} T={T} {v}")
        except Exception as e:  # a reference that cannot run says why and the lab goes on
            print(f"{name} T={T} {v}: {type(e).__name__}: {e}", flush=True)
            continue
        meta[v] = {"rel_err": float("nan"), "min_rows": min(rows_of), "max_rows": max(rows_of)}
    variants = [v for v in VARIANTS if v in calls]
    for r in range(args.repeat):
        for v in rotated(variants, r):
            us = graph_time(calls[v]) * 1e3
            rows.append({"device": torch.cuda.get_device_name(), "model": name, "tokens": T, "variant": v,
                         "round": r, "us": round(us, 1), "BLOCK_M": cfg["BLOCK_M"], "TAIL_M": tail_of(cfg) or "",
                         **meta[v]})
            print(f"{name} T={T} {v:5s} round {r}: {us:9.1f} us  {meta[v]}", flush=True)
    for line in summarize([r for r in rows if r["model"] == name and r["tokens"] == T], variants):
        print(line, flush=True)


def main(argv=None) -> int:
    def add(ap):
        ap.add_argument("--repeat", type=int, default=3)
    return lab_main(argv, __doc__, "rows_lab.py", "mixtral-8x7b:1024", run_case, add)


if __name__ == "__main__":
    sys.exit(main())
