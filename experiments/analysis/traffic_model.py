"""The analytic traffic model (`tritonmoe.traffic`) over the sweep: bytes per stage of every impl
for every model and token count of the config, in the `unique` flavour (each distinct element
once per kernel: what DRAM sees when caches hold re-reads within a kernel, and what ncu measures
with its caches flushed between kernels), with the weights' share of the reads apart.

Expert counts come from a uniform routing sample (random logits, top-k), seeded per token count;
the launch config is the GPU default (`tritonmoe.traffic.gpu_config`).

    python -m experiments.analysis.traffic_model --out traffic_model.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from tritonmoe.traffic import PEER_IMPLS, STAGES, TRITON_IMPLS, LayerShape, gpu_config, launches, stage_traffic

from .atomic import write_csv
from .settings import load_models, load_settings

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def uniform_counts(tokens: int, experts: int, top_k: int) -> list[int]:
    """Routed slots per expert of one uniform routing sample (seeded by the token count)."""
    g = torch.Generator().manual_seed(tokens)
    ids = torch.randn(tokens, experts, generator=g).topk(top_k, dim=1).indices
    return torch.bincount(ids.flatten(), minlength=experts).tolist()


def rows_for(model: str, shape_of: dict, dtype: str, tokens: int, impls: list[str]) -> list[dict]:
    shape = LayerShape.of(tokens, shape_of["hidden"], shape_of["ffn"], shape_of["experts"], shape_of["top_k"],
                          DTYPES[dtype])
    counts = uniform_counts(tokens, shape.experts, shape.top_k)
    config = gpu_config(shape)
    rows = []
    for impl in impls:
        per_stage = stage_traffic(launches(impl, shape, counts, config), "unique")
        for stage in (*STAGES, "total"):
            t = per_stage[stage]
            rows.append({"model": model, "dtype": dtype, "tokens": tokens, "impl": impl, "stage": stage,
                         "model_read_bytes": t.read, "model_write_bytes": t.write, "weight_read_bytes": t.weight_read,
                         "flavour": "unique"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=None, help="settings file (default: config/config.yaml)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    settings = load_settings(args.settings)
    models = load_models()
    impls = [i for i in settings["impls"] if i in TRITON_IMPLS + PEER_IMPLS]
    rows = []
    for model in settings["models"]:
        for tokens in settings["tokens"]:
            rows += rows_for(model, models[model], settings["dtype"], tokens, impls)
    write_csv(args.out, pd.DataFrame(rows))
    print(f"traffic_model: {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
