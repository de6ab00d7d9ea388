"""The layer config a target would run with: its device's tuned file where one exists, else the
package's per-backend default (`tritonmoe.config.default_config`)."""
from __future__ import annotations

import os

import torch
from tritonmoe import tuned
from tritonmoe.config import default_config

from targets import ROOT, Shape, Target


def layer_config(target: Target, shape: Shape, dtype: torch.dtype, tokens: int) -> tuple[dict, str]:
    """Returns (config, source); source says where the config came from, for the record."""
    num_routed = tokens * shape.top_k
    found = tuned.lookup_slug(target.device, dtype, num_routed, shape.experts, shape.hidden, shape.ffn)
    if found is not None:
        path = tuned.config_path(target.device, shape.experts, shape.hidden, shape.ffn, dtype)
        return found, f"tuned:{os.path.relpath(path, ROOT)}"
    return default_config(target.backend, num_routed, shape.experts, shape.hidden, shape.ffn), f"default:{target.backend}"
