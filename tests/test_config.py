"""Launch configurations: the defaults fit the GPU's shared memory for every dtype; tuned tables are found."""
import pytest

from tritonmoe.config import SMEM_BUDGET, default_config, fit_shared_memory


def _staged_bytes(cfg, stage, b_tiles, elem_bytes):
    c = cfg[stage]
    bn = c.get("BLOCK_N", c.get("BLOCK_F"))
    return c.get("num_stages", 2) * c["BLOCK_K"] * (cfg["BLOCK_M"] + b_tiles * bn) * elem_bytes


@pytest.mark.parametrize("elem_bytes", [2, 4])
@pytest.mark.parametrize("backend", ["cuda", "hip"])
@pytest.mark.parametrize("num_routed", [1, 16, 400, 4096, 65536])
def test_default_config_fits_shared_memory(backend, num_routed, elem_bytes):
    cfg = default_config(backend, num_routed, 64, 4096, 14336, elem_bytes)
    assert _staged_bytes(cfg, "gate_up", 2, elem_bytes) <= SMEM_BUDGET
    assert _staged_bytes(cfg, "down", 1, elem_bytes) <= SMEM_BUDGET


def test_fit_shared_memory_shrinks_only_what_does_not_fit():
    big = {"BLOCK_M": 128, "gate_up": {"BLOCK_N": 128, "BLOCK_K": 128, "num_stages": 4},
           "down": {"BLOCK_N": 16, "BLOCK_K": 64, "num_stages": 3}}
    out = fit_shared_memory(big, 4)
    assert _staged_bytes(out, "gate_up", 2, 4) <= SMEM_BUDGET
    assert out["gate_up"]["BLOCK_K"] < 128
    assert out["down"] == big["down"]


def test_fit_shared_memory_counts_the_persistent_output_tile():
    """The persistent gate/up stages its [BLOCK_M, BLOCK_N] output for the descriptor store: in fp32 the ridge tile
    (4 x 64 x (128 + 256) x 4 B = 384 KB of stages) needs fewer stages than without that tile."""
    gu = {"BLOCK_N": 128, "BLOCK_K": 64, "num_stages": 4, "DESC": True}
    plain = fit_shared_memory({"BLOCK_M": 128, "gate_up": gu, "down": {"BLOCK_N": 64, "BLOCK_K": 64}}, 4)["gate_up"]
    pers = fit_shared_memory({"BLOCK_M": 128, "gate_up": {**gu, "PERSISTENT": True},
                              "down": {"BLOCK_N": 64, "BLOCK_K": 64}}, 4)["gate_up"]
    staged = lambda c: c["num_stages"] * c["BLOCK_K"] * (128 + 256) * 4  # noqa: E731
    assert staged(plain) <= SMEM_BUDGET and staged(pers) + 128 * 128 * 4 <= SMEM_BUDGET
    assert staged(pers) < staged(plain)


def test_persistent_programs_without_a_device():
    """The persistent gate/up launches one program per SM, at most one per tile; without a device (the interpreter, the
    AOT build's meta tensors) a fixed few, so the tile loop is still walked."""
    import torch
    from tritonmoe.gate_up import INTERPRETER_PROGRAMS, persistent_programs
    for dev in ("cpu", "meta"):
        assert persistent_programs(torch.device(dev), 1000) == INTERPRETER_PROGRAMS
        assert persistent_programs(torch.device(dev), 2) == 2
        assert persistent_programs(torch.device(dev), 0) == 1
