"""Lab (perf notes v17): what one launch costs the host on the GPU machine.

The eager rows carry 0.2-0.6 ms of host work per layer call (v12, v14). Here the host microseconds per call of the
pieces a layer call is made of, each in a loop of calls while the GPU is kept busy (so that no call waits for it):
Triton launches of a kernel with few and with many arguments, with and without tensor-descriptor arguments, the
binder alone, the compiled kernel's own `run` (no binder, no cache key), a `TensorDescriptor` built in Python,
`torch.empty`, a small torch op, and `tritonmoe._launch.launch` (the package's launch path).

    python experiments/bench/launch_lab.py --out $OUT/launch.txt
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

import host_lab  # noqa: E402


@triton.jit
def _few(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n, other=0) + 1, mask=offs < n)


@triton.jit
def _many(a_ptr, b_ptr, c_ptr, d_ptr, e_ptr, f_ptr, g_ptr, n0, n1, n2, n3, s0, s1, s2, s3, s4, s5,
          A: tl.constexpr, B: tl.constexpr, C: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(a_ptr + offs, tl.load(b_ptr + offs, mask=offs < n0, other=0), mask=offs < n0)


@triton.jit
def _desc(a_desc, b_desc, c_ptr, n0, n1, s0, BM: tl.constexpr, BK: tl.constexpr):
    a = a_desc.load([0, 0])
    b_desc.store([0, 0], a)


def host_us(fn, calls=200, repeat=5):
    """Median of `repeat` loops of `host_lab.host_us` (host microseconds per call, the GPU kept busy)."""
    return statistics.median(host_lab.host_us(fn, calls) for _ in range(repeat))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("launch_lab.py: no GPU here", file=sys.stderr)
        return 2
    x = torch.zeros(4096, device="cuda", dtype=torch.float32)
    ys = [torch.zeros(4096, device="cuda", dtype=torch.bfloat16) for _ in range(7)]
    m = torch.zeros(256, 256, device="cuda", dtype=torch.bfloat16)
    m2 = torch.zeros(256, 256, device="cuda", dtype=torch.bfloat16)
    few = lambda: _few[(4,)](x, 4096, BLOCK=1024)
    many = lambda: _many[(4,)](*ys, 4096, 17, 33, 5, 4096, 1, 64, 128, 7, 9, A=1, B=2, C=3, D=4, BLOCK=1024,
                               num_warps=4, num_stages=2)
    da, db = TensorDescriptor.from_tensor(m, [64, 64]), TensorDescriptor.from_tensor(m2, [64, 64])
    desc = lambda: _desc[(1,)](da, db, x, 256, 256, 256, BM=64, BK=64)
    desc_new = lambda: _desc[(1,)](TensorDescriptor.from_tensor(m, [64, 64]), TensorDescriptor.from_tensor(m2, [64, 64]),
                                   x, 256, 256, 256, BM=64, BK=64)
    rows = []
    for name, fn in [("triton launch, 2 args", few), ("triton launch, 16 args + 5 constexpr", many),
                     ("triton launch, 2 descriptors + 4 args", desc), ("same, descriptors built per call", desc_new)]:
        fn()
        torch.cuda.synchronize()
        rows.append((name, host_us(fn)))
    # The binder alone and the compiled kernel's own run, for the many-argument kernel.
    binder = _many.device_caches[torch.cuda.current_device()][4]
    kw = dict(A=1, B=2, C=3, D=4, BLOCK=1024, num_warps=4, num_stages=2)
    argv_ = (*ys, 4096, 17, 33, 5, 4096, 1, 64, 128, 7, 9)
    rows.append(("binder alone, 16 args", host_us(lambda: binder(*argv_, **kw))))
    k = _many[(4,)](*argv_, **kw)
    bound, _, _ = binder(*argv_, **kw)
    vals = tuple(bound.values())
    stream = torch.cuda.current_stream().cuda_stream
    direct = lambda: k.run(4, 1, 1, stream, k.function, k.packed_metadata, None, None, None, *vals)
    rows.append(("compiled kernel run(), 16 args", host_us(direct)))
    from tritonmoe._launch import launch
    fast = lambda: launch(_many, (4,), *argv_, **kw)
    fast()
    rows.append(("tritonmoe._launch.launch, 16 args", host_us(fast)))
    fast_desc = lambda: launch(_desc, (1,), da, db, x, 256, 256, 256, BM=64, BK=64)
    fast_desc()
    rows.append(("tritonmoe._launch.launch, 2 descriptors + 4 args", host_us(fast_desc)))
    rows.append(("current stream handle", host_us(lambda: torch.cuda.current_stream().cuda_stream)))
    rows.append(("TensorDescriptor.from_tensor", host_us(lambda: TensorDescriptor.from_tensor(m, [64, 64]))))
    rows.append(("torch.empty 1 MB cuda", host_us(lambda: torch.empty(1 << 19, device="cuda", dtype=torch.bfloat16))))
    rows.append(("torch add (small)", host_us(lambda: torch.add(x, 1.0))))
    rows.append(("x.stride() + x.data_ptr()", host_us(lambda: (x.stride(), x.data_ptr()))))
    lines = [torch.cuda.get_device_name()] + [f"{n}: {us:.2f} us" for n, us in rows]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
