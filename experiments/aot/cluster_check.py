"""Check (perf notes v14): does Triton 3.6 share tiles across a CTA cluster on sm90?

cuBLAS reaches the Mixtral ridge by sharing an operand tile between the CTAs of a cluster (TMA multicast); the
ridge of our layer is bound by the L2's reads (NOTES v9). Triton 3.6 accepts `num_ctas > 1` on sm90. This compiles a
plain TMA-descriptor matmul tile ([128, 256] of bf16, the production tile's shape) for sm90 with one and with two CTAs
a cluster, no GPU needed, and reports whether the PTX has a multicast TMA load (`.multicast::cluster`).

    python experiments/aot/cluster_check.py
"""
from __future__ import annotations

import re
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


@triton.jit
def _tile(a_desc, b_desc, c_ptr, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, K, BK, num_stages=4):
        acc = tl.dot(a_desc.load([pid_m * BM, k]), b_desc.load([pid_n * BN, k]).T, acc)
    rows, cols = pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], acc.to(tl.bfloat16))


def main() -> int:
    sig = {"a_desc": "tensordesc<bf16[128, 64]>", "b_desc": "tensordesc<bf16[256, 64]>", "c_ptr": "*bf16",
           "N": "i32", "K": "i32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr"}
    for num_ctas in (1, 2):
        k = triton.compile(ASTSource(_tile, sig, {"BM": 128, "BN": 256, "BK": 64}), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": 8, "num_ctas": num_ctas, "num_stages": 4})
        ptx = k.asm["ptx"]
        loads = sorted(set(re.findall(r"cp\.async\.bulk\.tensor\S*", ptx)))
        print(f"triton {triton.__version__}, sm90, num_ctas={num_ctas}: TMA loads {loads}; "
              f"multicast: {'multicast::cluster' in ptx}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
