"""Lab (perf notes v12): the host's share of an eager layer call.

The sweep's eager rows carry 0.2-0.6 ms more than the graph replays of the same call (v8, v11): the host's work to
launch the layer. Here: the host time per call (a loop of eager calls that only enqueue, the GPU kept ahead by one
long kernel first, so the host is timed alone), and a cProfile of those calls (the top functions by cumulative time).
`--modes` adds the same host time with every Triton launch replaced by a no-op (`stub`: the package's own Python)
and with a leaner `JITFunction.run` (`lean`: the compiled kernel found by the binder's specialization alone and
launched directly, without Triton's per-call option parsing, hooks and global checks; its output is compared
with the normal launch's, bit for bit).

    python experiments/bench/host_lab.py --cases mixtral-8x7b:64 qwen3-30b-a3b:64 --out $OUT/host.txt
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import tritonmoe  # noqa: E402
from tritonmoe import _launch  # noqa: E402
from problems import add_cases_argument, load_models, make_tokens, make_weights  # noqa: E402


def host_us(fn, calls: int) -> float:
    """Host microseconds per call while the GPU is busy (a long matmul queued first), so no call waits for it."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    for _ in range(20):
        a @ a  # ~30 ms of queued GPU work
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


_LEAN: dict = {}


def lean_run(orig):
    """A `JITFunction.run` that launches a kernel it has seen through its binder's specialization alone."""
    def run(self, *args, grid, warmup, **kwargs):
        device = torch.cuda.current_device()
        binder = self.device_caches[device][4]
        bound_args, specialization, options = binder(*args, **kwargs)
        key = (id(self), device, tuple(specialization), tuple(options.items()))
        k = _LEAN.get(key)
        if k is None or warmup:
            k = orig(self, *args, grid=grid, warmup=warmup, **kwargs)
            if k is not None and not warmup:
                _LEAN[key] = k
            return k
        g = grid(bound_args) if callable(grid) else grid
        k.run(g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, torch.cuda.current_stream().cuda_stream,
              k.function, k.packed_metadata, None, None, None, *bound_args.values())
        return k
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cases_argument(ap, "mixtral-8x7b:64")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=1, help="median of this many loops of --calls calls")
    ap.add_argument("--modes", nargs="+", choices=["stub", "lean", "slow"], default=[],
                    help="stub: launches replaced by no-ops; lean: session 12's leaner JITFunction.run; slow: "
                         "tritonmoe._launch's fast path switched off (every launch through kernel[grid])")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--sort", nargs="+", default=["cumulative"], help="cProfile orders to print (e.g. tottime)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("host_lab.py: no GPU here", file=sys.stderr)
        return 2
    models, lines = load_models(), [torch.cuda.get_device_name()]
    for name, T in args.cases:
        m = models[name]
        w = make_weights(m, torch.bfloat16, "cuda", "uniform")
        x = make_tokens(m, T, w, "uniform", torch.bfloat16, "cuda", seed=T)

        def fn():
            return tritonmoe.moe(x, w.router_weight, w.w_gate_up, w.w_down, m.top_k)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        def med_us():
            return statistics.median(host_us(fn, args.calls) for _ in range(args.repeat))
        us = med_us()
        from triton.runtime.jit import JITFunction
        orig = JITFunction.run
        extra = []
        for mode in args.modes:
            y0 = fn().clone()
            if mode == "stub":
                JITFunction.run = lambda self, *a, grid, warmup, **k: None
            elif mode == "lean":
                JITFunction.run = lean_run(orig)
            # The fast path launches compiled kernels itself: off for every mode, so they all go through run.
            _launch._ENABLED = False
            try:
                if mode in ("lean", "slow"):
                    for _ in range(3):
                        fn()
                    same = bool(torch.equal(fn(), y0))
                extra.append(f"{mode} {med_us():.1f} us" + (f" (output bit-identical: {same})"
                                                                             if mode in ("lean", "slow") else ""))
            finally:
                JITFunction.run = orig
                _launch._ENABLED = True
        lines.append(f"## {name} T={T}: host {us:.1f} us per eager call (median of {args.repeat} x {args.calls} calls); "
                     + "; ".join(extra))
        print(lines[-1], flush=True)
        if args.no_profile:
            continue
        prof = cProfile.Profile()
        prof.enable()
        host_us(fn, args.calls)
        prof.disable()
        for order in args.sort:
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(order).print_stats(35)
            lines.append(s.getvalue())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
