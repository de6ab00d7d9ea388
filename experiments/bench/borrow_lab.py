"""Lab (perf notes v14): variants of a borrowed config on shapes without a table of their own.

`tritonmoe.tuned.borrow_slug` gives a shape the config of the nearest tuned shape's bucket. The source table's
robust pick (`tune.pick_robust`) saw its own shape's skewed draw, not the target's: on the zipf draw the borrowed
16-row blocks of the many-expert shapes lost to the defaults (v13). Here each point's borrowed config is timed beside
the variants the tuner's robust pick offers (`tune.tail_variants`, `tune.skew_variants`), the same with a persistent
gate/up switched off, and the per-backend defaults; the variant that the skew guard picks (`tuned.skew_guard`, the
layer's default since session 12) is marked "(guarded)", or added as `guarded` where it is none of them. Whole
layers on the tuner's uniform and zipf draws (`tune.layer_times`: CUDA graphs, every call checked against the
float64 reference), `--repeat` times interleaved.

A case is `model:tokens` over `config/heldout_models.yaml` (the nearest tuned shape's bucket) or over
`config/models.yaml` prefixed `loo/` (borrowed with the model's own table left out; its own config timed too).

    python experiments/bench/borrow_lab.py --cases qwen3-235b-a22b:64 loo/qwen2-moe-57b:256 --out $OUT/borrow.csv
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from problems import MODELS_FILE, load_models, make_weights, write_lab_csv  # noqa: E402

HELDOUT_FILE = MODELS_FILE.parent / "heldout_models.yaml"


def variants_of(cfg: dict) -> list[tuple[str, dict]]:
    """(name, config): the borrowed config, its tail and skew variants, and a persistent gate/up switched off."""
    from tune import skew_variants, tail_variants
    out, seen = [], set()

    def add(name, c):
        key = json.dumps(c, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append((name, c))
    add("borrowed", cfg)
    for c in skew_variants(tail_variants(cfg))[1:]:
        add(f"BM{c['BLOCK_M']}/T{c.get('TAIL_M', '-')}/BN{c.get('gate_up', {}).get('BLOCK_N')}", c)
    if cfg.get("gate_up", {}).get("PERSISTENT"):
        gu = {k: v for k, v in cfg["gate_up"].items() if k != "PERSISTENT"}
        add("no_persistent", {**cfg, "gate_up": gu})
        for c in tail_variants({**cfg, "gate_up": gu})[1:]:
            add(f"no_persistent/T{c.get('TAIL_M')}", c)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", required=True, help="model:tokens or loo/model:tokens")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("borrow_lab.py: no GPU here", file=sys.stderr)
        return 2
    from tritonmoe.config import backend_of, default_config
    from tritonmoe.tuned import borrow_slug, borrowed, device_slug, table_entry
    from tune import layer_times
    heldout, tuned = load_models(HELDOUT_FILE), load_models()
    slug = device_slug(torch.device("cuda"))
    rows, cur, w = [], None, None
    for case in args.cases:
        name, _, tokens = case.partition(":")
        loo = name.startswith("loo/")
        m = (tuned if loo else heldout)[name.removeprefix("loo/")]
        T = int(tokens)
        shape = (m.experts, m.hidden, m.ffn)
        if cur != m.name:  # one model's weights at a time
            w = None
            torch.cuda.empty_cache()
            w, cur = make_weights(m, torch.bfloat16, "cuda", "uniform"), m.name
        found = borrow_slug(slug, torch.bfloat16, T * m.top_k, *shape, exclude=shape if loo else None)
        if found is None:
            print(f"{case}: nothing to borrow on {slug}", flush=True)
            continue
        named = variants_of(found[0])
        guarded = borrowed(slug, torch.bfloat16, T * m.top_k, *shape, tokens=T, exclude=shape if loo else None)[0]
        same = [i for i, (_, c) in enumerate(named) if c == guarded]
        if same:
            named[same[0]] = (f"{named[same[0]][0]} (guarded)", guarded)
        else:
            named.append(("guarded", guarded))
        if loo:
            own = table_entry(slug, torch.bfloat16, T * m.top_k, *shape)
            if own is not None:
                named.append(("own", own[0]))
        named.append(("default", default_config(backend_of(torch.device("cuda")), T * m.top_k, *shape)))
        cfgs = [c for _, c in named] * args.repeat
        keys = {json.dumps(c, sort_keys=True): n for n, c in named}
        for c, times, errs in layer_times(m, w, T, cfgs):
            n = keys[json.dumps(c, sort_keys=True)]
            rows.append({"device": slug, "case": case, "model": m.name, "tokens": T, "variant": n,
                         "source": found[1], "uniform_us": round(times[0] * 1e3, 2),
                         "zipf_us": round(times[1] * 1e3, 2),
                         "rel_err_max": max(errs), "config": json.dumps(c, sort_keys=True)})
            print(f"{case} {n}: uniform {times[0] * 1e3:.1f} us, zipf {times[1] * 1e3:.1f} us", flush=True)
        write_lab_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
