"""What an AMD kernel uses, from the AMDGCN assembly Triton keeps (`kernel.asm["amdgcn"]`): VGPRs,
AGPRs, SGPRs, spills, scratch and occupancy from the kernel descriptor, and its instructions."""
from __future__ import annotations

import re
from collections import Counter

_FIELDS = {
    "registers": r"^[\s-]*\.vgpr_count:\s+(\d+)",
    "agprs": r"^[\s-]*\.agpr_count:\s+(\d+)",
    "sgprs": r"^[\s-]*\.sgpr_count:\s+(\d+)",
    "vgpr_spills": r"^[\s-]*\.vgpr_spill_count:\s+(\d+)",
    "sgpr_spills": r"^[\s-]*\.sgpr_spill_count:\s+(\d+)",
    "stack_bytes": r"^[\s-]*\.private_segment_fixed_size:\s+(\d+)",
    "occupancy_waves_per_simd": r"^\s*; Occupancy:\s+(\d+)",
}
# An indented lower-case word not followed by ":" (metadata keys) is an instruction.
_OP = re.compile(r"^\s+([a-z][a-z0-9_]*)(?=[ \t]|$)", re.M)
SCALAR_FMA = re.compile(r"^v_(pk_)?fmac?_f32")


def opcode_counts(amdgcn: str) -> Counter:
    return Counter(_OP.findall(amdgcn))


def amd_metrics(amdgcn: str) -> dict:
    found = {}
    for name, pattern in _FIELDS.items():
        m = re.search(pattern, amdgcn, re.M)
        found[name] = int(m.group(1)) if m else None
    ops = opcode_counts(amdgcn)
    vs, ss = found["vgpr_spills"], found["sgpr_spills"]
    return {
        **found,
        "spill_stores_bytes": None, "spill_loads_bytes": None,
        "spills": None if vs is None or ss is None else vs + ss, "spills_unit": "registers",
        "matrix_instructions": {op: n for op, n in sorted(ops.items()) if "mfma" in op},
        "scalar_fma": sum(n for op, n in ops.items() if SCALAR_FMA.match(op)),
        "instructions": sum(ops.values()),
    }
