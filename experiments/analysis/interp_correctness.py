"""The Triton impls in Triton's CPU interpreter on small shapes, against the float64 reference.

One row per (impl, dtype, shape): ||y - ref|| / ||ref|| and the tolerance it must meet (the same as
the test suite's). bf16 is left out: the interpreter multiplies bf16 wrongly in tl.dot. Needs
TRITON_INTERPRET=1 in the environment (the workflow's rule sets it).

    TRITON_INTERPRET=1 python -m experiments.analysis.interp_correctness --out interp_correctness.csv
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import torch

from .atomic import write_csv

# (tokens, hidden, ffn, experts, top_k): a single token, a ragged count, more experts than tiles.
SHAPES = [(1, 32, 64, 8, 2), (17, 64, 32, 8, 2), (40, 32, 32, 16, 4)]
DTYPES = {"fp32": (torch.float32, 1e-5), "fp16": (torch.float16, 5e-3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise SystemExit("interp_correctness: set TRITON_INTERPRET=1 (runs the kernels on CPU in Triton's interpreter)")
    import tritonmoe

    rows = []
    for dtype_name, (dtype, tol) in DTYPES.items():
        for tokens, hidden, ffn, experts, top_k in SHAPES:
            g = torch.Generator().manual_seed(tokens)
            x = torch.randn(tokens, hidden, generator=g).to(dtype)
            router = (torch.randn(experts, hidden, generator=g) / hidden ** 0.5).to(dtype)
            w_gate_up = (torch.randn(experts, 2 * ffn, hidden, generator=g) / hidden ** 0.5).to(dtype)
            w_down = (torch.randn(experts, hidden, ffn, generator=g) / ffn ** 0.5).to(dtype)
            _, ids = tritonmoe.route(x, router, top_k)
            ref = tritonmoe.reference_moe(x, router, w_gate_up, w_down, top_k, topk_ids=ids)
            for impl in tritonmoe.IMPLS:
                y = tritonmoe.moe(x, router, w_gate_up, w_down, top_k, impl=impl)
                err = float((y.double() - ref).norm() / ref.norm())
                rows.append({"impl": impl, "dtype": dtype_name, "tokens": tokens, "hidden": hidden, "ffn": ffn,
                             "experts": experts, "top_k": top_k, "rel_err": err, "tolerance": tol})
                print(rows[-1], flush=True)
    write_csv(args.out, pd.DataFrame(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
