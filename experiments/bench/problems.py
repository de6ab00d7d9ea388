"""Model shapes and input generation shared by every benchmark: one generator, every provider."""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

MODELS_FILE = Path(__file__).resolve().parents[2] / "config" / "models.yaml"
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
ROUTINGS = ("uniform", "zipf")


@dataclass(frozen=True)
class Model:
    name: str
    hidden: int
    ffn: int
    experts: int
    top_k: int

    def weight_bytes_per_expert(self, elem_bytes: int) -> int:
        return 3 * self.hidden * self.ffn * elem_bytes


def load_models(path: Path = MODELS_FILE) -> dict[str, Model]:
    with open(path) as f:
        raw = yaml.safe_load(f)
    return {name: Model(name, v["hidden"], v["ffn"], v["experts"], v["top_k"]) for name, v in raw.items()}


def lab_case(spec: str) -> tuple[str, int]:
    """A lab's `--cases` item, `model:tokens`, as (model name, tokens); as an argparse type a bad item is a usage
    error that names it."""
    name, sep, tokens = spec.partition(":")
    models = load_models()
    if not sep or name not in models or not tokens.isdigit() or int(tokens) < 1:
        raise argparse.ArgumentTypeError(f"expected model:tokens with a model of {sorted(models)} and "
                                         f"tokens >= 1, got {spec!r}")
    return name, int(tokens)


def add_cases_argument(ap: argparse.ArgumentParser, *defaults: str, required: bool = False) -> None:
    """The labs' `--cases model:tokens ...` (parsed by `lab_case`; `defaults` likewise)."""
    ap.add_argument("--cases", nargs="+", type=lab_case, required=required,
                    default=None if required else [lab_case(d) for d in defaults], help="model:tokens ...")


def lab_main(argv, doc: str, prog: str, default_case: str, run_case, add_arguments=None) -> int:
    """The labs' command line: `--cases model:tokens ...` (default `default_case`), `--out` CSV, the lab's own
    arguments (`add_arguments(parser)`); `run_case(name, tokens, rows, args)` appends rows, written after every case."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cases_argument(ap, default_case)
    ap.add_argument("--out", type=Path, required=True)
    if add_arguments is not None:
        add_arguments(ap)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{prog}: no GPU here", file=sys.stderr)
        return 2
    rows: list[dict] = []
    for name, tokens in args.cases:
        run_case(name, tokens, rows, args)
        torch.cuda.empty_cache()
        write_lab_csv(rows, args.out)
    return 0


def rotated(items, k: int) -> list:
    """`items` starting at position k (mod len): round k's order in a lab's interleaved rounds."""
    items = list(items)
    k %= len(items)
    return items[k:] + items[:k]


def rounds_by(rows: list[dict], keys, field: str, variants, value: str):
    """A lab's rows grouped for its summary: for each distinct tuple of the `keys` columns (sorted), the tuple, that
    group's rows and, for each of `variants`, the map round -> `value` of its rows whose `field` is that variant (the
    `by` that `against_first` takes)."""
    for key in sorted({tuple(r[k] for k in keys) for r in rows}):
        mine = [r for r in rows if tuple(r[k] for k in keys) == key]
        yield key, mine, {v: {r["round"]: r[value] for r in mine if r[field] == v} for v in variants}


def against_first(by: dict, variants) -> dict:
    """Interleaved lab rounds: `by[v]` maps round -> time for each variant `v` of `variants`. For each variant with
    rounds: its median and, against the first variant (if that has rounds), the ratio of medians and, over the rounds
    both ran, how many were slower and how many faster than the first's timing of the same round."""
    base = variants[0]
    out = {}
    for v in variants:
        if not by[v]:
            continue
        med = statistics.median(by[v].values())
        out[v] = {"median": med}
        if v != base and by[base]:
            both = set(by[v]) & set(by[base])
            out[v].update(ratio=med / statistics.median(by[base].values()), rounds=len(both),
                          slower=sum(by[v][k] > by[base][k] for k in both),
                          faster=sum(by[v][k] < by[base][k] for k in both))
    return out


def write_lab_csv(rows: list[dict], out: Path) -> None:
    """A lab's rows so far, rewritten after every case (a timeout keeps what ran)."""
    import pandas as pd
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)


@dataclass
class Weights:
    router_weight: torch.Tensor  # [E, H]
    w_gate_up: torch.Tensor      # [E, 2F, H]
    w_down: torch.Tensor         # [E, H, F]
    routing_dir: torch.Tensor    # [H] unit vector the zipf routing skews along


def make_weights(m: Model, dtype: torch.dtype, device, routing: str, seed: int = 0) -> Weights:
    """Random weights scaled so activations stay O(1). `zipf` routing adds to each router row a multiple of a
    shared direction u, proportional to log((e+1)^-1.2): tokens carrying u then favour low expert ids."""
    g = torch.Generator(device=device).manual_seed(seed)
    H, F, E = m.hidden, m.ffn, m.experts
    wgu = torch.empty((E, 2 * F, H), dtype=dtype, device=device)
    wd = torch.empty((E, H, F), dtype=dtype, device=device)
    for e in range(E):  # one expert at a time: no fp32 copy of the whole weight set
        wgu[e] = (torch.randn((2 * F, H), generator=g, device=device) / math.sqrt(H)).to(dtype)
        wd[e] = (torch.randn((H, F), generator=g, device=device) / math.sqrt(F)).to(dtype)
    wr = torch.randn((E, H), generator=g, device=device) / math.sqrt(H)
    u = torch.randn((H,), generator=g, device=device)
    u = u / u.norm()
    if routing == "zipf":
        wr = zipf_router(wr, u)
    elif routing != "uniform":
        raise ValueError(f"routing: expected one of {ROUTINGS}, got {routing!r}")
    return Weights(wr.to(dtype), wgu, wd, u)


_LAB_WEIGHTS: dict[str, Weights] = {}


def lab_weights(m: Model) -> Weights:
    """The labs' weights of `m` (bf16, on the GPU, uniform routing), made once for all of its cases: a lab's cases
    come model by model, and only one model's weights are kept at a time (the previous model's are dropped and the
    allocator's cache emptied before the next are made)."""
    if m.name not in _LAB_WEIGHTS:
        _LAB_WEIGHTS.clear()
        torch.cuda.empty_cache()
        _LAB_WEIGHTS[m.name] = make_weights(m, torch.bfloat16, "cuda", "uniform")
    return _LAB_WEIGHTS[m.name]


def zipf_router(wr: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The zipf draw's router: row e of `wr` plus a multiple of `u` proportional to log((e+1)^-1.2)."""
    E = wr.shape[0]
    log_p = -1.2 * torch.log(torch.arange(1, E + 1, device=wr.device, dtype=torch.float32))
    return wr + (log_p - log_p.mean())[:, None] * u[None, :]


def make_tokens(m: Model, tokens: int, w: Weights, routing: str, dtype, device, seed: int) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((tokens, m.hidden), generator=g, device=device)
    if routing == "zipf":
        x = x + 4.0 * w.routing_dir[None, :]
    return x.to(dtype)


def fewest_bytes(m: Model, tokens: int, experts_hit: int, elem_bytes: int) -> int:
    """The floor's bytes: weights of the experts actually hit, x read once, y written once."""
    return experts_hit * m.weight_bytes_per_expert(elem_bytes) + 2 * tokens * m.hidden * elem_bytes


def layer_flops(m: Model, tokens: int) -> int:
    return 2 * tokens * m.top_k * 3 * m.hidden * m.ffn
