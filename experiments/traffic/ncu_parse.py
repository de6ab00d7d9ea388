"""Parsing Nsight Compute's CSV into DRAM bytes per kernel, per layer call and per stage.

`ncu --csv` prints one row per (kernel launch, metric) on its default `details` page (columns
"ID", "Kernel Name", ..., "Metric Name", "Metric Unit", "Metric Value"), or one row per launch
with a column per metric and a row of units on the `raw` page; both are read. Values may carry
thousands separators and scaled units (Kbyte, Mbyte, ...); `--print-units base` avoids the latter.
Lines that are not CSV (`==PROF==`, `==WARNING==`, the program's own output) are skipped.

The worker (`ncu_worker.py`) launches `MARKER_KERNEL` right before each profiled layer call, so
the launches between two markers are one call.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass

from tritonmoe.traffic import KERNEL_STAGES, STAGES

READ_METRIC = "dram__bytes_read.sum"
WRITE_METRIC = "dram__bytes_write.sum"
METRICS = (READ_METRIC, WRITE_METRIC)
MARKER_KERNEL = "_traffic_marker_kernel"

_UNIT = re.compile(r"^(?P<prefix>[KMGTP]?)(?P<binary>i?)(?:byte|B)$")
_PREFIX = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


@dataclass(frozen=True)
class KernelBytes:
    launch_id: int
    kernel: str
    read: int
    write: int


def to_bytes(value: str, unit: str) -> int:
    """'53,261,312' 'byte' -> 53261312; '1.5' 'Mbyte' -> 1500000 (ncu's prefixes are decimal)."""
    u = _UNIT.match(unit.strip() or "byte")
    if u is None:
        raise ValueError(f"unit: expected byte, Kbyte, Mbyte, ... , got {unit!r}")
    text = value.strip().replace(",", "")
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"value: expected a number of {unit or 'bytes'}, got {value!r}") from None
    base = 1024 if u["binary"] else 1000
    return round(number * base ** _PREFIX[u["prefix"]])


def _csv_lines(text: str) -> list[str]:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith('"ID",'):
            return [ln for ln in lines[i:] if ln.startswith('"')]
    raise ValueError("ncu output: expected a CSV header starting with \"ID\", found none "
                     "(did ncu profile any kernel? see its log)")


def parse_ncu_csv(text: str) -> list[KernelBytes]:
    """The launches in the order ncu profiled them, with their DRAM read and write bytes."""
    rows = list(csv.DictReader(_csv_lines(text)))
    if not rows:
        return []
    if "Metric Name" in rows[0]:
        return _parse_details(rows)
    return _parse_raw(rows)


def _parse_details(rows: list[dict]) -> list[KernelBytes]:
    found: dict[int, dict] = {}
    for r in rows:
        if r["Metric Name"] not in METRICS:
            continue
        k = found.setdefault(int(r["ID"]), {"kernel": r["Kernel Name"]})
        k[r["Metric Name"]] = to_bytes(r["Metric Value"], r.get("Metric Unit", ""))
    return [_kernel_bytes(i, k) for i, k in found.items()]


def _parse_raw(rows: list[dict]) -> list[KernelBytes]:
    units = rows[0] if not rows[0]["ID"].strip() else {}
    out = []
    for r in rows[1:] if units else rows:
        out.append(_kernel_bytes(int(r["ID"]), {"kernel": r["Kernel Name"],
                                                **{m: to_bytes(r[m], units.get(m, "")) for m in METRICS if m in r}}))
    return out


def _kernel_bytes(launch_id: int, k: dict) -> KernelBytes:
    missing = [m for m in METRICS if m not in k]
    if missing:
        raise ValueError(f"ncu output: launch {launch_id} ({k['kernel']}): expected metrics {METRICS}, "
                         f"missing {missing}")
    return KernelBytes(launch_id, k["kernel"], k[READ_METRIC], k[WRITE_METRIC])


def split_calls(kernels: list[KernelBytes], marker: str = MARKER_KERNEL) -> list[list[KernelBytes]]:
    """The launches of each layer call: those after each marker up to the next (markers dropped)."""
    calls: list[list[KernelBytes]] = []
    for k in kernels:
        if k.kernel == marker:
            calls.append([])
        elif not calls:
            raise ValueError(f"ncu output: launch {k.launch_id} ({k.kernel}) comes before the first "
                             f"{marker}; expected every profiled call to start with one")
        else:
            calls[-1].append(k)
    return calls


def stage_bytes(call: list[KernelBytes], kernel_stages: dict[str, str] = KERNEL_STAGES) -> dict[str, tuple[int, int]]:
    """(read, write) per stage of `STAGES` that ran, 'other' for kernels of no known stage, and 'total'."""
    out: dict[str, tuple[int, int]] = {}
    for k in call:
        stage = kernel_stages.get(k.kernel, "other")
        r, w = out.get(stage, (0, 0))
        out[stage] = (r + k.read, w + k.write)
    out["total"] = (sum(k.read for k in call), sum(k.write for k in call))
    assert set(out) <= {*STAGES, "other", "total"}
    return out
