"""What a cubin uses: registers and spills (ptxas's report), and the instructions of its SASS
(disassembled with the cuobjdump that ships in the Triton wheel)."""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter

_USED = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RES_REG = re.compile(r"\bREG:(\d+)")
_RES_STACK = re.compile(r"\bSTACK:(\d+)")
# "/*0a40*/  @!P0 HMMA.16816.F32.BF16 R24, ..." -> "HMMA.16816.F32.BF16"
_SASS_OP = re.compile(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)")
MATRIX_OPS = ("HMMA", "HGMMA", "IMMA", "IGMMA", "UTCHMMA", "UTCQMMA")
SCALAR_FMA_OPS = ("FFMA", "HFMA2")


def ptxas_report(log: str) -> dict:
    """Registers, stack frame and spill bytes from `ptxas -v`; None where the log does not say."""
    used = _USED.search(log)
    frame = _FRAME.search(log)
    return {
        "registers": int(used.group(1)) if used else None,
        "stack_bytes": int(frame.group(1)) if frame else None,
        "spill_stores_bytes": int(frame.group(2)) if frame else None,
        "spill_loads_bytes": int(frame.group(3)) if frame else None,
    }


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    from triton import knobs
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([knobs.nvidia.cuobjdump.path, *flags, f.name], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(flags)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def opcode_counts(sass: str) -> Counter:
    return Counter(_SASS_OP.findall(sass))


def base_op(opcode: str) -> str:
    return opcode.split(".", 1)[0]


def nvidia_metrics(cubin: bytes, ptxas_log: str) -> dict:
    report = ptxas_report(ptxas_log)
    resources = _cuobjdump(cubin, "--dump-resource-usage")
    reg, stack = _RES_REG.search(resources), _RES_STACK.search(resources)
    if reg:  # the cubin's own record wins over the log
        report["registers"] = int(reg.group(1))
    if stack and report["stack_bytes"] is None:
        report["stack_bytes"] = int(stack.group(1))
    ops = opcode_counts(_cuobjdump(cubin, "-sass"))
    spills = report["spill_stores_bytes"]
    return {
        **report,
        "sgprs": None, "agprs": None, "vgpr_spills": None, "sgpr_spills": None, "occupancy_waves_per_simd": None,
        "spills": spills, "spills_unit": "bytes stored",
        "matrix_instructions": {op: n for op, n in sorted(ops.items()) if base_op(op) in MATRIX_OPS},
        "scalar_fma": sum(n for op, n in ops.items() if base_op(op) in SCALAR_FMA_OPS),
        "instructions": sum(ops.values()),
    }
