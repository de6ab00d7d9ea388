"""Device-event timing with a clean L2 flush: every number of the sweep (`latency.py`), the tuner and the measured
ceilings comes from `bench` (the labs say what they use: `gemm_lab.py` predates it; `flush_lab.py` passes other flushes).

Like `triton.testing.do_bench` (warm-up and repetitions sized in milliseconds, one CUDA-event pair per call,
quantiles of the per-call times), except for the flush before each call. do_bench zeroes a 256 MB buffer, and
the last ~50 MB of those zeros stay in the L2 as dirty lines that the timed call's own reads evict, so the call
pays their write-back: +8.5 us on a 75 MB read, +9 us on qwen3-30b-a3b at one token (session 6, run 4,
`flush_lab.py`, H100). Here the flush *reads* the buffer: the weights are still cold (evicted), but nothing is
left to write back, as when a layer follows attention and norms whose outputs are a few KB.
"""
from __future__ import annotations

import torch

FLUSH_BYTES = 256 * 1024 * 1024
_FLUSH: dict = {}


def flush_l2() -> None:
    """Evicts the L2 by reading FLUSH_BYTES (clean lines only; the buffer is written once, outside timing)."""
    dev = torch.cuda.current_device()
    if dev not in _FLUSH:
        buf = torch.ones(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
        _FLUSH[dev] = (buf, torch.empty((), dtype=torch.int64, device="cuda"))
        torch.cuda.synchronize()
    buf, sink = _FLUSH[dev]
    torch.sum(buf, dim=0, out=sink)


def bench(fn, warmup_ms: float = 25, rep_ms: float = 100, quantiles=(0.5, 0.2, 0.8),
          sync_each: bool = False, flush=flush_l2) -> list[float]:
    """Quantiles (ms) of fn's per-call device time, the L2 flushed by `flush` (`flush_l2`) before every call.

    `sync_each`: wait for the flush to finish before each call, so the interval also holds the host's work of
    launching fn (eager calls: Python, checks, launches), instead of letting the host run ahead while the GPU
    flushes and hiding as much of it as the flush lasts."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        flush()
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 5, 1e-3)  # includes the flush: conservative counts
    n_warm = max(1, int(warmup_ms / est))
    n_rep = max(5, int(rep_ms / est))
    for _ in range(n_warm):
        flush()
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for s, e in zip(starts, ends):
        flush()
        if sync_each:
            torch.cuda.synchronize()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = torch.tensor([s.elapsed_time(e) for s, e in zip(starts, ends)], dtype=torch.float64)
    return [float(torch.quantile(times, q)) for q in quantiles]
