"""L2 lab (perf notes v9): how fast the SMs can read data that sits in the L2, beside the DRAM rate.

Not part of the sweep. The ridge GEMMs re-read their token tiles (once per N tile) and their weight tiles (once
per row block) from the L2; whether that traffic, not DRAM or the tensor cores, sets their time needs the L2's
own read rate, measured here on the card. A kernel of `programs` programs reads a buffer of `mb` MB `passes`
times, block `b` of pass `p` by program `(b + p) % programs` (so no program re-reads its own blocks and the L1
cannot serve them; the loads also bypass it, `.cg`), and sums what it reads. The first pass is outside the
timing (it brings the buffer into the L2); a buffer larger than the L2 gives the DRAM read rate for comparison.

    python experiments/bench/l2_lab.py --out $OUT/l2.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _read_kernel(x_ptr, out_ptr, n_blocks, passes, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    acc = tl.zeros([BLOCK], tl.float32)
    for p in range(passes):
        start = (pid + p * 7) % G
        for b in range(start, n_blocks, G):
            acc += tl.load(x_ptr + b * BLOCK + tl.arange(0, BLOCK), cache_modifier=".cg").to(tl.float32)
    tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)


def read_rate(mb: int, passes: int, programs: int, block: int = 4096, warps: int = 8) -> tuple[float, bool]:
    n = mb * 1024 * 1024 // 2
    n_blocks = n // block
    x = torch.rand(n_blocks * block, device="cuda").to(torch.bfloat16)  # positive: the sum check is tight
    out = torch.empty(programs * block, device="cuda")

    def run(p):
        _read_kernel[(programs,)](x, out, n_blocks, p, BLOCK=block, num_warps=warps)
    run(1)
    torch.cuda.synchronize()
    # One pass, then passes + 1: the difference is `passes` passes over data already in the L2 (or not, if larger).
    times = {}
    for p in (1, passes + 1):
        ts = []
        for _ in range(5):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run(p)
            e.record()
            torch.cuda.synchronize()
            ts.append(s.elapsed_time(e))
        times[p] = sorted(ts)[2]
    secs = (times[passes + 1] - times[1]) * 1e-3
    ref = x.float().sum() * (passes + 1)
    ok = bool(torch.isclose(out.sum(), ref, rtol=1e-3))
    return n_blocks * block * 2 * passes / secs / 1e9, ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("l2_lab.py: no GPU here", file=sys.stderr)
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for mb, passes in ((8, 40), (16, 20), (24, 14), (32, 10), (40, 8), (2048, 2)):
        for per_sm in (2, 4, 8):
            gbps, ok = read_rate(mb, passes, sms * per_sm)
            row = {"device": torch.cuda.get_device_name(), "buffer_mb": mb, "passes": passes,
                   "programs": sms * per_sm, "read_GBps": round(gbps, 1), "sum_ok": ok}
            rows.append(row)
            print(row, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
