"""Read the ahead-of-time compile results, `results/build/<target>/<impl>.json`
(written by experiments/aot/build_all.py), as one row per kernel record."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .raw import RawDataError

KERNEL_KEYS = ("kernel", "scenario", "compiled")
COLUMNS = ["target", "impl", "kernel", "scenario", "tokens", "compiled", "registers", "spills", "shared_bytes",
           "num_warps", "matrix_instructions", "matrix_kinds", "matrix_families", "compile_s", "error"]


def matrix_family(kind: str) -> str:
    """HMMA.16816.F32.BF16 -> HMMA, HGMMA.64x128x16.F32.BF16 -> HGMMA, v_mfma_f32_16x16x16_bf16 -> MFMA."""
    if kind.startswith("v_"):
        return kind.split("_")[1].upper()
    return kind.split(".")[0]


def matrix_kernels(rows: pd.DataFrame) -> list[str]:
    """Kernels with matrix instructions on some target, or a failed build: the ones a compile table shows."""
    keep = rows.loc[(rows["matrix_instructions"] > 0) | ~rows["compiled"], "kernel"]
    return list(dict.fromkeys(keep))


def _last_line(text) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def read_build_file(path: str | Path) -> pd.DataFrame:
    """One row per kernel of one `<target>/<impl>.json`; `matrix_instructions` is the count of matrix
    instructions (HMMA/HGMMA/MFMA) in the machine code, `matrix_kinds` their names."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RawDataError(f"{path}: not a readable JSON file ({e})") from None
    for key in ("target", "impl", "kernels"):
        if key not in doc:
            raise RawDataError(f"{path}: missing key {key!r}; expected target, impl and kernels")
    if doc["target"] != path.parent.name or doc["impl"] != path.stem:
        raise RawDataError(f"{path}: holds target {doc['target']!r}, impl {doc['impl']!r}; expected "
                           f"{path.parent.name!r}, {path.stem!r} (its folder and file name)")
    rows = []
    for i, k in enumerate(doc["kernels"]):
        missing = [key for key in KERNEL_KEYS if key not in k]
        if missing:
            raise RawDataError(f"{path}: kernels[{i}] lacks {', '.join(missing)}")
        mma = k.get("matrix_instructions") or {}
        rows.append({
            "target": doc["target"], "impl": doc["impl"], "kernel": k["kernel"], "scenario": k["scenario"],
            "tokens": k.get("tokens"), "compiled": bool(k["compiled"]), "registers": k.get("registers"),
            "spills": k.get("spills"), "shared_bytes": k.get("shared_bytes"), "num_warps": k.get("num_warps"),
            "matrix_instructions": int(sum(mma.values())), "matrix_kinds": " ".join(sorted(mma)),
            "matrix_families": " ".join(sorted({matrix_family(kind) for kind in mma})),
            "compile_s": k.get("compile_s"), "error": _last_line(k.get("error")),
        })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["source_row"] = range(len(frame))
    return frame


def build_files(build_dir: str | Path) -> list[Path]:
    """Every `<target>/<impl>.json` under `build_dir`, sorted."""
    return sorted(Path(build_dir).glob("*/*.json"))
