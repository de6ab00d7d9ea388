"""The program `ncu_traffic.py` runs under Nsight Compute: one model, its token counts, each impl.

For every (tokens, impl) it warms the call up (compiles, fills the allocator), then profiles one
call between `cudaProfilerStart` and `cudaProfilerStop` (ncu runs with `--profile-from-start off`),
right after a marker kernel that separates the calls in ncu's output. It writes a manifest (JSON):
the calls in profiled order with the expert counts and the layer config each call used, so the
driver can model exactly what ran. Inputs come from `experiments/bench/problems.py`, as for the
latency sweep, so the routings are the same. Not meant to be run by hand (it needs ncu around it
to measure anything); `ncu_traffic.py --dry-run` prints the full command.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "bench"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from tritonmoe.api import resolve_config  # noqa: E402
from tritonmoe.route_align import route_and_align  # noqa: E402

from experiments.analysis.atomic import write_json  # noqa: E402
from problems import load_models, make_tokens, make_weights  # noqa: E402
from providers import PROVIDERS  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@triton.jit
def _traffic_marker_kernel(flag_ptr):
    tl.store(flag_ptr, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", nargs="+", type=int, required=True)
    ap.add_argument("--impls", nargs="+", required=True, choices=list(PROVIDERS))
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    ap.add_argument("--routing", default="uniform")
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--warmup", type=int, default=2, help="unprofiled calls before the profiled one")
    args = ap.parse_args(argv)
    m = load_models()[args.model]
    dtype = DTYPES[args.dtype]
    w = make_weights(m, dtype, "cuda", args.routing)
    flag = torch.zeros(1, dtype=torch.int32, device="cuda")
    _traffic_marker_kernel[(1,)](flag)  # compiled outside the profiled ranges
    calls, skipped = [], []
    fns = {}
    for impl in args.impls:
        try:
            fns[impl] = PROVIDERS[impl].build(m, w)
        except Exception as e:  # a peer that is not installed says why in the manifest
            skipped.append({"impl": impl, "why": f"{type(e).__name__}: {e}"[:300]})
    for tokens in args.tokens:
        x = make_tokens(m, tokens, w, args.routing, dtype, "cuda", seed=tokens)
        cfg = resolve_config(x, tokens * m.top_k, m.experts, m.hidden, m.ffn, None)
        _, _, align = route_and_align(x, w.router_weight, m.top_k, True, cfg["BLOCK_M"])
        counts = align.expert_counts.tolist()
        for impl, fn in fns.items():
            try:  # a failure here, before the profiled range, leaves markers and manifest in step
                for _ in range(max(1, args.warmup)):
                    fn(x)
                torch.cuda.synchronize()
            except Exception as e:
                skipped.append({"impl": impl, "tokens": tokens, "why": f"{type(e).__name__}: {e}"[:300]})
                torch.cuda.empty_cache()
                continue
            torch.cuda.profiler.start()
            _traffic_marker_kernel[(1,)](flag)
            fn(x)
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            calls.append({"tokens": tokens, "impl": impl, "expert_counts": counts, "config": cfg})
        del x
    write_json(args.manifest, {
        "model": args.model, "dtype": args.dtype, "routing": args.routing, "calls": calls, "skipped": skipped,
        "device_name": torch.cuda.get_device_name(),
        "l2_bytes": torch.cuda.get_device_properties(0).L2_cache_size,
        "sms": torch.cuda.get_device_properties(0).multi_processor_count,  # the persistent GEMMs' programs
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
