"""Tuned launch configurations as data files, keyed by device, expert shape and token bucket.

Files live in `tritonmoe/configs/<device>/E<E>_H<H>_F<F>_<dtype>.json` and map a token
bucket (number of routed slots T*K, as a string) to a layer config (see `tritonmoe.config`). A call
uses the bucket nearest its T*K on a log scale. `experiments/tune.py` writes them.

A shape with no file of its own borrows the configs of the nearest tuned shape (`borrow_slug`): the file whose
hidden size, FFN size and expert count are nearest on a log scale (a sibling card's file of the same shape counts
as nearby: the H100 and H200 share the SM and its 132-SM grid), at the bucket with the nearest rows per hit expert.
A borrowed bucket without tail blocks gets them where the call's own load could use them (`skew_guard`): the
source table's robust pick saw its own shape's skewed draw, not this one's. Only where the device has no file at
all do the per-backend defaults of `tritonmoe.config` apply.
`experiments/bench/heldout.py` measures what this is worth: leave-one-out on the tuned models and shapes no table
was tuned for (paper, Table "heldout").
"""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import torch

from .config import tail_of, with_tails

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


def _own_table(slug: str, dtype: torch.dtype, E: int, H: int, F: int) -> tuple[Path, dict[int, dict]] | None:
    # fp16 tiles have bf16's size: a card tuned in bf16 serves both.
    for dt in (dtype, torch.bfloat16) if dtype == torch.float16 else (dtype,):
        path = config_path(slug, E, H, F, dt)
        table = _load(path)
        if table:
            return path, table
    return None


# Memoised, as the files are (`_load`): a layer call looks its config up on the host every time (session 10 run 23:
# the path building, hashing and bucket search were ~50 of an eager call's ~520 host microseconds).
@functools.lru_cache(maxsize=4096)
def table_entry(slug: str, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int) -> tuple[dict, str] | None:
    """The tuned config of device `slug` for this shape and T*K from the shape's own table, with where it came from
    ("table:<device>/<file>"), or None (no file)."""
    found = _own_table(slug, dtype, E, H, F)
    if found is None:
        return None
    path, table = found
    return table[nearest_bucket(table, num_routed)], f"table:{slug}/{path.name}"


def nearest_bucket(buckets, num_routed: int) -> int:
    """The bucket (a number of routed slots) whose config a call with `num_routed` slots takes: the nearest on a log
    scale, the smaller of two equally near."""
    return min(buckets, key=lambda b: (abs(math.log2(b) - math.log2(max(1, num_routed))), b))


def lookup_slug(slug: str, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int) -> dict | None:
    """The tuned config of device `slug` for this shape and T*K, or None (no file)."""
    found = table_entry(slug, dtype, num_routed, E, H, F)
    return None if found is None else found[0]


# Cards whose tables serve each other's shapes when their own has none (same SM, same number of SMs), and how far
# such a table counts (in the units of `shape_distance`: a table of the same shape on a sibling is preferred to one
# of a shape more than this far on the card itself).
SIBLINGS = {"h100-sxm": ("h200",), "h200": ("h100-sxm",)}
SIBLING_DISTANCE = 0.5
_FILE = re.compile(r"E(\d+)_H(\d+)_F(\d+)_(\w+)\.json")


@functools.lru_cache(maxsize=16)
def tuned_shapes(slug: str) -> tuple[tuple[int, int, int, str], ...]:
    """(E, H, F, dtype name) of every table of device `slug`."""
    folder = CONFIG_DIR / slug
    found = (_FILE.fullmatch(p.name) for p in folder.glob("*.json")) if folder.is_dir() else ()
    return tuple(sorted((int(m[1]), int(m[2]), int(m[3]), m[4]) for m in found if m))


def shape_distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """How far apart two expert shapes (E, H, F) are for a config: |log2| ratios of the GEMMs' sizes (H, F) and,
    at half weight, of the expert count (which sets how many experts a token count spreads over)."""
    (ea, ha, fa), (eb, hb, fb) = a, b
    return abs(math.log2(ha / hb)) + abs(math.log2(fa / fb)) + 0.5 * abs(math.log2(ea / eb))


def load_distance(num_routed: int, E: int, bucket: int, E_bucket: int) -> float:
    """How far apart two token loads are: |log2| ratio of the rows per hit expert (the GEMMs' height) plus, at half
    weight, that of the number of experts hit (the grid's width)."""
    hit, hit_b = min(num_routed, E), min(bucket, E_bucket)
    return abs(math.log2((num_routed / hit) / (bucket / hit_b))) + 0.5 * abs(math.log2(hit / hit_b))


@functools.lru_cache(maxsize=4096)
def borrow_slug(slug: str, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int,
                exclude: tuple[int, int, int] | None = None) -> tuple[dict, str] | None:
    """The config of the nearest tuned shape for a shape with no table of its own: the table of device `slug` or a
    sibling (`SIBLINGS`) nearest by `shape_distance` (a sibling's counted `SIBLING_DISTANCE` further), then its
    bucket nearest by `load_distance`. Returns (config, "<device>/<file>@<bucket>") or None (no table, or a dtype
    whose tiles no table was tuned for). `exclude` leaves one shape (E, H, F) out, as the leave-one-out check does."""
    names = ("bfloat16", "float16") if dtype in (torch.bfloat16, torch.float16) else (str(dtype).removeprefix("torch."),)
    best = None
    for i, s in enumerate((slug, *SIBLINGS.get(slug, ()))):
        for e, h, f, name in tuned_shapes(s):
            if name not in names or (e, h, f) == exclude:
                continue
            d = shape_distance((E, H, F), (e, h, f)) + (SIBLING_DISTANCE if i else 0.0)
            key = (d, i, names.index(name), e, h, f)
            if best is None or key < best[0]:
                best = (key, s, e, h, f, name)
    if best is None:
        return None
    _, s, e, h, f, name = best
    path = CONFIG_DIR / s / f"E{e}_H{h}_F{f}_{name}.json"
    table = _load(path)
    if not table:
        return None
    bucket = min(table, key=lambda b: (load_distance(num_routed, E, b, e), b))
    return table[bucket], f"{s}/{path.name}@{bucket}"


# Experts whose weights are at least this large get tails of half a block from the guard (below): their extra padded
# block streams the weights from DRAM again. Smaller experts (up to ~55 MB here) mostly find them in the L2 (50 MB
# on the H100 and H200), and the tails there only cost the persistent gate/up that they switch off (heldout.py,
# session 12 run 2, H100: +2..+11% at T=4096 on the 32-128-expert shapes; dbrx, 396 MB an expert, -18% at T=1024).
GUARD_EXPERT_BYTES = 128 * 2 ** 20


def skew_guard(cfg: dict, num_routed: int, E: int, H: int, F: int, tokens: int,
               elem_bytes: int = 2) -> tuple[dict, str]:
    """A borrowed config made safe for the call's load, and a note of what changed ("" if nothing).

    A table's buckets went through the tuner's robust pick on its own shape's draws; a config borrowed by another
    shape never did. So, where the borrowed config has no tail blocks:
    - blocks under 64 rows become 64-row blocks with tails of the old height, once one expert can receive 64 rows
      (`tokens` >= 64: a token reaches an expert at most once); on even loads every block is still a tail, while a
      hot expert's rows no longer go through many small blocks that each stream its weights again (`borrow_lab.py`,
      session 12 run 1, H100: qwen2-moe-57b with its own table left out, zipf T=256: 568 us borrowed, 328 with
      64-row blocks and 16-row tails, 339 its own table);
    - blocks of 64 rows or more get tails of half their height where an even load fills a block per expert and an
      expert's weights (3 H F elements) reach `GUARD_EXPERT_BYTES`: each expert's rest is padded to half a block,
      not a whole one that streams the expert's weights once more (dbrx T=1024 uniform: 4.54 -> 3.70 ms).
    The uniform draw pays up to ~9% for the first (the robust pick allows 5% on a table's own draws); the
    one-kernel decode path and configs that have tails are returned as they are."""
    if cfg.get("expert") or tail_of(cfg) is not None:
        return cfg, ""
    bm = cfg["BLOCK_M"]
    if bm < 64 and tokens >= 64:
        return with_tails(cfg, bm, 64, elem_bytes), f"+tails:64/{bm}"
    if bm >= 64 and num_routed >= bm * min(E, num_routed) and 3 * H * F * elem_bytes >= GUARD_EXPERT_BYTES:
        return with_tails(cfg, bm // 2), f"+tails:{bm}/{bm // 2}"
    return cfg, ""


# Layer-config keys a table decided for its own shape that a borrowing shape leaves to its own default:
# `SELECT_IN_GEMM` weighs a top-k over the table's E experts in every program against one launch.
OWN_SHAPE_KEYS = ("SELECT_IN_GEMM",)


def borrowed(slug: str, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int, tokens: int | None = None,
             exclude: tuple[int, int, int] | None = None) -> tuple[dict, str] | None:
    """What a shape without a table of its own runs: the nearest tuned shape's bucket (`borrow_slug`), less its
    `OWN_SHAPE_KEYS`, through `skew_guard` for a call of `tokens` tokens (None: as many as `num_routed`, the most a top-1 call could have).
    Returns (config, "<device>/<file>@<bucket>" plus the guard's note) or None."""
    found = borrow_slug(slug, dtype, num_routed, E, H, F, exclude=exclude)
    if found is None:
        return None
    own = {k: v for k, v in found[0].items() if k not in OWN_SHAPE_KEYS}
    cfg, note = skew_guard(own, num_routed, E, H, F, num_routed if tokens is None else tokens, dtype.itemsize)
    return cfg, found[1] + note


@functools.lru_cache(maxsize=4096)
def resolve_slug(slug: str, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int,
                 tokens: int | None = None) -> tuple[dict, str] | None:
    """(config, where it came from): the shape's own table ("table:<device>/<file>"), else the nearest tuned shape's
    ("borrowed:<device>/<file>@<bucket>[+tails:..]", `borrowed`), else None (the per-backend defaults apply)."""
    own = table_entry(slug, dtype, num_routed, E, H, F)
    if own is not None:
        return own
    found = borrowed(slug, dtype, num_routed, E, H, F, tokens)
    return None if found is None else (found[0], f"borrowed:{found[1]}")


def lookup(device: torch.device, dtype: torch.dtype, num_routed: int, E: int, H: int, F: int,
           tokens: int | None = None) -> dict | None:
    """The config a call of `tokens` tokens on `device` uses: its shape's table, else the nearest tuned shape's
    (`resolve_slug`)."""
    slug = device_slug(device)
    found = None if slug is None else resolve_slug(slug, dtype, num_routed, E, H, F, tokens)
    return None if found is None else found[0]
