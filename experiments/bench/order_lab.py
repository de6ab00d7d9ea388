"""Lab (perf notes v16): the grouped GEMMs' tiles in expert order (`EXPERT_ORDER`, `tritonmoe._gemm_common.tile_of`).

Nsight Compute's DRAM counters (`results/raw/h100-sxm/traffic.csv`) put mixtral-8x7b's gate/up at T=1024 at 2.51 GB
of DRAM reads for 1.91 GB of unique bytes (down: 1.26 for 1.00): a third more than the weights once. The tiles run
in `grouped_pid` order, GROUP_M row blocks at a time over all column blocks; a group's edge cuts through an expert's
blocks (2-3 per expert at T=1024, tails included), whose weights are then streamed once per group. In expert order
every expert's tiles come one after the other (its blocks in groups of GROUP_M within it), so the programs running at
once share each weight tile.

Each case's tuned config, the same with `EXPERT_ORDER` on both GEMMs, and that with GROUP_M=32, timed `--repeat`
times each, interleaved, as whole layers on the uniform and the zipf draw (`tune.layer_times`: CUDA graphs, each call
checked against the float64 reference).

    python experiments/bench/order_lab.py --cases mixtral-8x7b:1024 --repeat 2 --out $OUT/order.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe.config import with_expert_order  # noqa: E402
from problems import lab_main, lab_weights, load_models, make_tokens  # noqa: E402



def ordered(cfg: dict, group_m: int | None = None) -> dict:
    """`cfg` with both GEMMs in expert order (and GROUP_M set, if given); the one-kernel decode path is left as is."""
    return cfg if cfg.get("expert") else with_expert_order(cfg, group_m=group_m)


def run_case(name: str, T: int, rows: list[dict], args) -> None:
    from tune import layer_times
    m = load_models()[name]
    w = lab_weights(m)
    x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=1000 + T)
    cfg = tritonmoe.api.resolve_config(x, T * m.top_k, m.experts, m.hidden, m.ffn, None)
    named = {"tuned": cfg, "expert_order": ordered(cfg), "expert_order_g32": ordered(cfg, 32)}
    names = {id(c): n for n, c in named.items()}
    variants = list(named.values()) * args.repeat
    for c, times, errs in layer_times(m, w, T, variants, describe=lambda c: names[id(c)]):
        row = {"device": torch.cuda.get_device_name(), "model": name, "tokens": T, "variant": names[id(c)],
               "uniform_us": round(times[0] * 1e3, 1), "zipf_us": round(times[1] * 1e3, 1),
               "rel_err_uniform": errs[0], "rel_err_zipf": errs[1], "cfg": str(c)}
        rows.append(row)
        print(f"{name} T={T} {row['variant']:18s} uniform {row['uniform_us']:9.1f} us  zipf {row['zipf_us']:9.1f} us",
              flush=True)


def main(argv=None) -> int:
    return lab_main(argv, __doc__, "order_lab.py", "mixtral-8x7b:1024", run_case,
                    lambda ap: ap.add_argument("--repeat", type=int, default=2))


if __name__ == "__main__":
    sys.exit(main())
