"""Ahead-of-time builds (experiments/aot): one source compiled for sm80, sm90, gfx942 and gfx90a.

The builds run in a subprocess with TRITON_INTERPRET unset (under the interpreter `@triton.jit`
returns no compilable function). The parsers and the static checks run in this process.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from helpers import compiling_env

ROOT = Path(__file__).resolve().parents[1]
AOT = ROOT / "experiments" / "aot"
PACKAGE = ROOT / "kernels" / "tritonmoe"
SETTINGS = yaml.safe_load((ROOT / "config" / "aot_targets.yaml").read_text())
TARGETS = list(SETTINGS["targets"])
MATRIX_OPS = {"sm80": "HMMA", "sm90": "MMA", "gfx942": "v_mfma", "gfx90a": "v_mfma"}


def _load(name: str):
    """A module of experiments/aot that imports no sibling (the parsers, the identity check)."""
    spec = importlib.util.spec_from_file_location(f"aot_{name}", AOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], env=compiling_env(AOT), cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{' '.join(args)[:200]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# --- the CI subset, compiled for real -------------------------------------------------------------

def test_small_build_compiles_the_same_kernels_for_every_target(tmp_path):
    done = _run([str(AOT / "build_all.py"), "--small", "--out", str(tmp_path)])
    small = SETTINGS["small"]
    source_keys: dict[str, set] = {}
    for target in TARGETS:
        for impl in small["impls"]:
            path = tmp_path / target / f"{impl}.json"
            assert path.exists(), f"{path}: expected a build result, got no file\n{done.stderr[-2000:]}"
            doc = json.loads(path.read_text())
            assert doc["target"] == target and doc["impl"] == impl
            prov = doc["provenance"]
            assert prov["triton"] and prov["date"] and re.fullmatch(r"[0-9a-f]{40}", prov["git_sha"] or "")
            assert "--small" in prov["command"]
            rows = doc["kernels"]
            assert {r["kernel"] for r in rows} == set(small["kernels"])
            assert {r["scenario"] for r in rows} == set(small["scenarios"])
            for r in rows:
                where = f"{target}/{impl}/{r['kernel']}/{r['scenario']}"
                assert r["compiled"], f"{where}: expected a compiled kernel, got the error {r['error']}"
                assert r["registers"] > 0 and r["spills"] is not None and r["shared_bytes"] >= 0, where
                assert r["compile_s"] > 0, where
                ops = r["matrix_instructions"]
                assert any(MATRIX_OPS[target] in op for op in ops), f"{where}: expected {MATRIX_OPS[target]}, got {ops}"
                source_keys.setdefault(r["kernel"], set()).add(r["source_key"])
    for kernel, keys in source_keys.items():
        assert len(keys) == 1, f"{kernel}: expected one source for every target, got {len(keys)} source keys"


# --- which kernels the layer launches, and that every target gets the same objects ------------------

_COVERAGE = """
import json, sys, torch, tritonmoe, yaml
import build_all
from launches import layer_launches
from layer_config import layer_config
from targets import ROOT
s = build_all.load_settings()
dtype = getattr(torch, s.dtype)
tokens = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["tokens"]
swept = {}
for t in s.targets.values():
    for impl in tritonmoe.IMPLS:
        for n in tokens:
            config, _ = layer_config(t, s.shape, dtype, n)
            for launch in layer_launches(impl, s.shape, dtype, n, config):
                swept.setdefault(launch.name, set()).add(n)
                assert list(launch.fn.arg_names) == [p.name for p in launch.fn.params]
# Paths that only some tuned configs select (the scenarios' overrides), or only token counts past the sweep's (a
# scenario's tokens: the parallel alignment layout of the 8-expert model), count as reached too.
for t in s.targets.values():
    for name, n in s.scenarios.items():
        override = (s.overrides or {}).get(name, {})
        config = {**layer_config(t, s.shape, dtype, n)[0], **override}
        for impl in tritonmoe.IMPLS:
            for launch in layer_launches(impl, s.shape, dtype, n, config):
                swept.setdefault(launch.name, set()).add(n)
jobs = build_all.plan(s, list(s.targets), list(tritonmoe.IMPLS), list(s.scenarios))
built = sorted({j.launch.name for j in jobs})
ids = {}
for j in jobs:
    ids.setdefault(j.launch.name, set()).add(id(j.launch.fn))
print(json.dumps({"swept": {k: sorted(v) for k, v in swept.items()}, "built": built,
                  "objects": {k: len(v) for k, v in ids.items()}}))
"""


def _jit_functions(tree: ast.Module) -> set[str]:
    def is_jit(d):
        d = d.func if isinstance(d, ast.Call) else d
        return (isinstance(d, ast.Attribute) and d.attr == "jit") or (isinstance(d, ast.Name) and d.id == "jit")
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and any(map(is_jit, n.decorator_list))}


def _package_kernels() -> dict[str, set[str]]:
    """Per module of the package: the @triton.jit functions launched with `kernel[grid](...)` or through
    `tritonmoe._launch.launch(kernel, grid, ...)`."""
    trees = {p.name: ast.parse(p.read_text()) for p in sorted(PACKAGE.glob("*.py"))}
    jit = set().union(*(_jit_functions(t) for t in trees.values()))

    def launched_name(n):
        if not isinstance(n, ast.Call):
            return None
        if isinstance(n.func, ast.Subscript) and isinstance(n.func.value, ast.Name):
            return n.func.value.id
        if isinstance(n.func, ast.Name) and n.func.id == "launch" and n.args and isinstance(n.args[0], ast.Name):
            return n.args[0].id
        return None

    launched = {}
    for name, tree in trees.items():
        found = {k for k in map(launched_name, ast.walk(tree)) if k in jit}
        if found:
            launched[name] = found
    return launched


def test_every_launched_kernel_is_built_and_one_object_serves_every_target():
    out = json.loads(_run(["-c", _COVERAGE]).stdout.splitlines()[-1])
    swept, built = out["swept"], set(out["built"])
    launched = set().union(*_package_kernels().values())
    missing = {k: v for k, v in swept.items() if k not in built}
    assert not missing, (f"kernels launched at these token counts but built by no scenario of "
                         f"config/aot_targets.yaml: {missing}")
    assert launched == set(swept), (f"kernels launched in kernels/tritonmoe: {sorted(launched)}; "
                                    f"reached by tritonmoe.moe over config/config.yaml's tokens and the scenarios': {sorted(swept)}")
    assert all(n == 1 for n in out["objects"].values()), f"function objects per kernel: {out['objects']}"


# --- zero code changes: nothing in a kernel module asks which GPU it is on --------------------------

_TARGET_NAMES = {"hip", "is_hip", "is_cuda", "get_current_target", "GPUTarget", "backend_of", "warp_size", "arch",
                 "target", "get_device_capability", "get_device_name"}
_TARGET_STRINGS = re.compile(r"^(hip|rocm|cuda|amd|nvidia|gfx\w*|sm_?\d+\w*)$", re.I)


def test_no_kernel_module_branches_on_the_target():
    modules = _package_kernels()
    assert modules, "expected modules that launch @triton.jit kernels under kernels/tritonmoe"
    for name in list(modules) + [p.name for p in PACKAGE.glob("*.py") if _jit_functions(ast.parse(p.read_text()))]:
        tree = ast.parse((PACKAGE / name).read_text())
        for node in ast.walk(tree):
            ident = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            assert ident not in _TARGET_NAMES, f"{name}:{node.lineno}: refers to the target ({ident})"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not _TARGET_STRINGS.match(node.value), f"{name}:{node.lineno}: names a target ({node.value!r})"


def test_check_same_functions_rejects_a_forked_kernel():
    check = _load("same_functions").check_same_functions
    module = types.ModuleType("fake_kernels")

    def make():
        def f():
            pass
        f.__name__, f.module = "kernel", "fake_kernels"
        return f

    kernel, fork = make(), make()
    module.kernel = kernel
    sys.modules["fake_kernels"] = module
    try:
        check([("sm80", kernel), ("gfx942", kernel)])
        with pytest.raises(RuntimeError, match="kernel on gfx942: expected the function fake_kernels.kernel"):
            check([("sm80", kernel), ("gfx942", fork)])

        def reloaded_between_targets():  # the module's kernel is replaced after the first target
            yield "sm80", kernel
            module.kernel = fork
            yield "gfx942", fork

        with pytest.raises(RuntimeError, match="expected one function object for every target, got 2"):
            check(reloaded_between_targets())
    finally:
        del sys.modules["fake_kernels"]


# --- the parsers, on excerpts of real compiler output --------------------------------------------------

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_gate_up_kernel' for 'sm_80'
ptxas info    : Function properties for _gate_up_kernel
    112 bytes stack frame, 204 bytes spill stores, 112 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 112 bytes cumulative stack size, 456 bytes cmem[0]
"""

SASS = """        /*0a40*/                   HMMA.16816.F32.BF16 R24, R84, R100, R24 ;          /* 0x000000641c18723c */
                                                                                   /* 0x000fe20000041818 */
        /*0a50*/              @!P1 FFMA R5, R5, R10, RZ ;                               /* 0x8000000a05059210 */
        /*0a60*/               @P0 HGMMA.64x128x16.F32.BF16 gdesc[UR4], R24, gsb0 ;   /* 0x0000000104040810 */
        /*0a70*/                   FFMA.FTZ R1, R2, R3, R4 ;                            /* 0x0000000104040810 */
"""

AMDGCN = """\tv_mfma_f32_32x32x8_bf16 v[0:15], v[16:17], v[18:19], v[0:15]
\tv_fmac_f32_e32 v1, v2, v3
\tv_pk_fma_f32 v[4:5], v[6:7], v[8:9], v[4:5]
\tbuffer_load_dwordx4 v[20:23], v24, s[0:3], 0 offen
; NumAgprs: 0
; Occupancy: 2
amdhsa.kernels:
  - .agpr_count:     4
    .name:           _gate_up_kernel
    .private_segment_fixed_size: 16
    .sgpr_count:     44
    .sgpr_spill_count: 1
    .vgpr_count:     204
    .vgpr_spill_count: 3
"""


def test_ptxas_report_reads_registers_and_spills():
    report = _load("inspect_nvidia").ptxas_report(PTXAS_LOG)
    assert report == {"registers": 255, "stack_bytes": 112, "spill_stores_bytes": 204, "spill_loads_bytes": 112}
    assert _load("inspect_nvidia").ptxas_report("") == dict.fromkeys(report)  # unknown, never a silent 0


def test_sass_opcodes_count_predicated_instructions_once():
    counts = _load("inspect_nvidia").opcode_counts(SASS)
    assert counts == {"HMMA.16816.F32.BF16": 1, "FFMA": 1, "HGMMA.64x128x16.F32.BF16": 1, "FFMA.FTZ": 1}


def test_amd_metrics_read_the_kernel_descriptor_and_instructions():
    m = _load("inspect_amd").amd_metrics(AMDGCN)
    assert (m["registers"], m["agprs"], m["sgprs"]) == (204, 4, 44)
    assert (m["vgpr_spills"], m["sgpr_spills"], m["spills"]) == (3, 1, 4)
    assert (m["stack_bytes"], m["occupancy_waves_per_simd"]) == (16, 2)
    assert m["matrix_instructions"] == {"v_mfma_f32_32x32x8_bf16": 1}
    assert m["scalar_fma"] == 2 and m["instructions"] == 4


# --- the committed results ----------------------------------------------------------------------------

def test_committed_results_cover_every_target_and_impl():
    import tritonmoe
    build = ROOT / "results" / "build"
    for target in TARGETS:
        for impl in tritonmoe.IMPLS:
            path = build / target / f"{impl}.json"
            assert path.exists(), f"{path}: expected (python experiments/aot/build_all.py --out results/build)"
            doc = json.loads(path.read_text())
            assert "--small" not in doc["provenance"]["command"], f"{path}: expected the full build"
            for r in doc["kernels"]:
                assert r["compiled"] or r["error"], f"{path}: {r['kernel']} failed without the compiler's error"
    for target in ("sm80", "gfx942"):
        doc = json.loads((build / target / "tritonmoe_fused.json").read_text())
        fused = [r for r in doc["kernels"] if r["kernel"] == "_gate_up_kernel"]
        assert fused and all(any(MATRIX_OPS[target] in op for op in r["matrix_instructions"] or {}) for r in fused), \
            f"{target}: expected the fused gate+up kernel to use {MATRIX_OPS[target]}, got {fused}"
