"""The sweep points whose tuned config differs between two config folders: what to re-measure after a retune.

Each point (model of `config/models.yaml`, token count of the sweep) is resolved in both folders as a layer call
resolves it (`tune.incumbent`: `tritonmoe.tuned.nearest_bucket` over the device's table for the model's shape), and printed as
`model:tokens` where the two configs differ (a table present in one folder only counts as a difference). Typical use on the GPU
machine, before and after `tune.py`:

    cp -r kernels/tritonmoe/configs /tmp/configs_before
    python experiments/bench/tune.py --models qwen3-30b-a3b --tokens 2 8 32
    for c in $(python experiments/bench/changed_points.py /tmp/configs_before kernels/tritonmoe/configs h200); do
        python experiments/bench/latency.py --models ${c%%:*} --tokens ${c##*:} --git-sha ...; done
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from problems import TOKENS, load_models  # noqa: E402
from tritonmoe.tuned import CONFIG_DIR, config_path  # noqa: E402
from tune import incumbent  # noqa: E402


def resolved(folder: Path, slug: str, m, tokens: int) -> dict | None:
    """The config a call of `tokens` tokens takes from the bf16 table of `m`'s shape in `folder` (`tune.incumbent`),
    or None without a table."""
    path = folder / config_path(slug, m.experts, m.hidden, m.ffn, torch.bfloat16).relative_to(CONFIG_DIR)
    return incumbent(json.loads(path.read_text()), tokens * m.top_k) if path.exists() else None


def changed_points(before: Path, after: Path, slug: str, tokens=TOKENS) -> list[str]:
    out = []
    for name, m in load_models().items():
        for t in tokens:
            a, b = resolved(before, slug, m, t), resolved(after, slug, m, t)
            if a != b:
                out.append(f"{name}:{t}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="a copy of kernels/tritonmoe/configs before the retune")
    ap.add_argument("after", type=Path, help="the configs folder after it")
    ap.add_argument("slug", help="device folder inside both (h100-sxm, h200, ...)")
    args = ap.parse_args(argv)
    for folder in (args.before, args.after):
        if not (folder / args.slug).is_dir():
            ap.error(f"{folder / args.slug} is not a folder")
    for point in changed_points(args.before, args.after, args.slug):
        print(point)
    return 0


if __name__ == "__main__":
    sys.exit(main())
