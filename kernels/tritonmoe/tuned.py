"""Tuned launch configurations as data files, keyed by device, expert shape and token bucket.

Files live in `tritonmoe/configs/<device>/E<E>_H<H>_F<F>_<dtype>.json` and map a token
bucket (number of routed slots T*K, as a string) to a layer config (see `tritonmoe.config`). A call
uses the bucket nearest its T*K on a log scale. `experiments/tune.py` writes them.
"""
from __future__ import annotations

import functools
import math
import json
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"

_DEVICE_SLUGS = (("H200", "h200"), ("H100", "h100-sxm"), ("A100", "a100-sxm4"), ("MI300X", "mi300x"),
                 ("MI250X", "mi250x"))


def device_slug(device: torch.device) -> str | None:
    """The contract's device slug for a GPU, or None (CPU, or a GPU we have no name for)."""
    if device.type != "cuda":
        return None
    return _slug_of(torch.cuda.get_device_name(device))


@functools.lru_cache(maxsize=16)
def _slug_of(name: str) -> str:
    for key, slug in _DEVICE_SLUGS:
        if key in name:
            return slug
    return name.replace(" ", "_").lower()


def config_path(slug: str, E: int, H: int, F: int, dtype: torch.dtype) -> Path:
    return CONFIG_DIR / slug / f"E{E}_H{H}_F{F}_{str(dtype).removeprefix('torch.')}.json"


@functools.lru_cache(maxsize=256)
def _load(path: Path) -> dict[int, dict] | None:
    if not path.exists():
        return None
    with open(path) as f:
        return {int(k): v for k, v in json.load(f).items()}


# Memoised, as the files are (`_load`): a layer call looks its config up on the host every time (session 10 run 23:
# the path building, hashing and bucket search were ~50 of an eager call's ~520 host microseconds).
@functools.lru_cache(maxsize=4096)
def lookup_slug(slug: str, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int) -> dict | None:
    """The tuned config of device `slug` for this shape and T*K, or None (no file)."""
    # fp16 tiles have bf16's size: a card tuned in bf16 serves both.
    table = _load(config_path(slug, E, H, F, dtype))
    if table is None and dtype == torch.float16:
        table = _load(config_path(slug, E, H, F, torch.bfloat16))
    if not table:
        return None
    bucket = min(table, key=lambda b: (abs(math.log2(b) - math.log2(max(1, num_routed))), b))
    return table[bucket]


def lookup(device: torch.device, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int) -> dict | None:
    slug = device_slug(device)
    return None if slug is None else lookup_slug(slug, dtype, num_routed, E, H, F)
