"""The build's settings: targets, model shape, scenarios and the CI subset, from config/aot_targets.yaml.

Only data lives here; nothing in this module knows how a kernel is compiled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "config" / "aot_targets.yaml"
MODELS = ROOT / "config" / "models.yaml"


@dataclass(frozen=True)
class Target:
    name: str  # the contract's target slug: sm80, sm90, gfx942, gfx90a
    backend: str  # Triton's backend: cuda or hip
    arch: int | str  # 80, 90, "gfx942", ...
    warp_size: int
    device: str  # the device slug whose tuned configs this target uses
    options: dict = field(default_factory=dict)

    def gpu_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget(self.backend, self.arch, self.warp_size)


@dataclass(frozen=True)
class Shape:
    model: str
    hidden: int
    ffn: int
    experts: int
    top_k: int


@dataclass(frozen=True)
class Settings:
    shape: Shape
    dtype: str
    scenarios: dict[str, int]  # name -> tokens
    targets: dict[str, Target]
    small: dict
    overrides: dict[str, dict] = None  # name -> layer-config entries the scenario sets (e.g. `expert`)


def load_settings(path: Path = SETTINGS, models_path: Path = MODELS) -> Settings:
    raw = yaml.safe_load(path.read_text())
    models = yaml.safe_load(models_path.read_text())
    if raw["model"] not in models:
        raise ValueError(f"model: expected one of {', '.join(models)} (config/models.yaml), got {raw['model']!r}")
    m = models[raw["model"]]
    shape = Shape(raw["model"], m["hidden"], m["ffn"], m["experts"], m["top_k"])
    targets = {}
    for name, t in raw["targets"].items():
        if t["backend"] not in ("cuda", "hip"):
            raise ValueError(f"targets.{name}.backend: expected 'cuda' or 'hip', got {t['backend']!r}")
        targets[name] = Target(name, t["backend"], t["arch"], int(t["warp_size"]), t["device"], dict(t.get("options") or {}))
    scenarios, overrides = {}, {}
    for name, v in raw["scenarios"].items():
        if isinstance(v, dict):  # {tokens: N, <config entry>: ...}: a path only some tuned configs select
            scenarios[name] = int(v["tokens"])
            overrides[name] = {k: val for k, val in v.items() if k != "tokens"}
        else:
            scenarios[name] = int(v)
    return Settings(shape, raw["dtype"], scenarios, targets, raw["small"], overrides)
