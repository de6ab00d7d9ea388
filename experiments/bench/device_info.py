"""The device's measured ceilings and the run's provenance, shared by the GPU scripts."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton

# The repository root, so that the one atomic-write helper (experiments/analysis/atomic.py) serves these scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.analysis.atomic import write_text as atomic_write_text  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import bench  # noqa: E402


def measure_copy_gbps(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), 50, 300, quantiles=(0.5,))[0]
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure_bf16_tflops(n: int = 8192) -> float:
    """Dense bf16 matrix rate through cuBLAS on random data."""
    a = torch.randn((n, n), device="cuda", dtype=torch.bfloat16)
    b = torch.randn((n, n), device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: a @ b, 100, 500, quantiles=(0.5,))[0]
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:
        return None


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except Exception:
        return None


# The card itself and the state its clocks are in: two runs at the same commit on two cards of one model differ by a
# few percent (session 20), which the name alone cannot tell apart.
GPU_QUERY = ("uuid", "pci.bus_id", "vbios_version", "power.limit", "clocks.max.sm", "clocks.max.mem", "clocks.sm",
             "temperature.gpu", "clocks_throttle_reasons.active")


def gpu_state() -> dict | None:
    """`GPU_QUERY` of the current CUDA device from nvidia-smi, or None where there is none (ROCm, no nvidia-smi)."""
    try:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        # nvidia-smi numbers cards without CUDA_VISIBLE_DEVICES: name this one by its PCI address.
        bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        out = subprocess.run(["nvidia-smi", f"--id={bus}", f"--query-gpu={','.join(GPU_QUERY)}",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            return None
        values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
        return dict(zip(GPU_QUERY, values)) if len(values) == len(GPU_QUERY) else None
    except Exception:
        return None


def provenance(git_sha: str, git_dirty: bool, copy_gbps: float, bf16_tflops: float) -> dict:
    return {
        "device_name": torch.cuda.get_device_name(),
        "driver": driver_version(),
        "gpu": gpu_state(),
        "cuda": torch.version.cuda,
        "rocm": torch.version.hip,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "megablocks": _version("megablocks"),
        "git_sha": git_sha,
        "git_dirty": git_dirty,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "copy_gbps": round(copy_gbps, 1),
        "bf16_tflops": round(bf16_tflops, 1),
        "timing": ("CUDA events per call, L2 evicted before each by reading 256 MB; eager calls timed from an idle GPU "
                   "(experiments/bench/timing.py)"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
    }


def merge_rows(path: Path, new: "pd.DataFrame", key: list[str]) -> "pd.DataFrame":
    """The rows of the CSV file `path` with those of `new` replacing every row of the same `key`, new rows last; of
    rows of the file repeating a key, the last one (the later run: runs append) is kept. The file is read as text,
    so values pass through unchanged (read as numbers, a SHA such as 58697e7 came back as 586970000000.0)."""
    import pandas as pd

    def keys(frame):
        return [tuple(r) for r in frame[key].astype(object).where(frame[key].notna(), "").astype(str).values]
    if not path.exists():
        return new
    old = pd.read_csv(path, dtype=str, keep_default_na=False)
    old = old[~pd.Series(keys(old), index=old.index).duplicated(keep="last")]
    replaced = set(keys(new))
    old = old[[k not in replaced for k in keys(old)]]
    return pd.concat([old, new], ignore_index=True) if len(new) else old.reset_index(drop=True)


def update_provenance(folder: Path, run: dict) -> None:
    """provenance.json holds the latest run's fields at top level and every run under `runs`."""
    path = folder / "provenance.json"
    runs = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    runs.append(run)
    atomic_write_text(path, json.dumps({**run, "runs": runs}, indent=2) + "\n")
