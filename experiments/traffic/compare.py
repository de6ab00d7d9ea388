"""Model against measurement, and the bytes the gate+up fusion saves: functions for the pipeline
and the notebooks. Nothing here measures; inputs are traffic.csv frames and `tritonmoe.traffic`.

- `model_vs_measured(frame)`: per row, measured and modelled bytes, their ratio, and the known
  causes of a difference in numbers (tile re-reads that reached DRAM, writes still in L2 when the
  kernel ended, padding rows), with a one-line `why`.
- `excess_over_fewest(frame)`: per call, measured DRAM bytes against the floor's fewest bytes, and
  how many times over the weights were read.
- `fusion_savings_model(...)` / `fusion_savings_measured(frame)`: bytes saved by `tritonmoe_fused`
  against a baseline, absolute and as a share of the baseline's total, with weights counted and
  for activations only; `tokens_reaching_share(savings, 0.35)`: the first token count per model at
  which the share reaches 35%, if any.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tritonmoe.traffic import LayerShape, fusion_saving, gpu_config, launches, stage_traffic

from experiments.bench.problems import load_models

BYTE_COLUMNS = ("dram_read_bytes", "dram_write_bytes", "model_read_bytes", "model_write_bytes",
                "model_weight_read_bytes", "logical_read_bytes", "logical_write_bytes", "unique_read_bytes",
                "unique_write_bytes", "padding_bytes", "routed_rows", "padded_rows", "hit_experts", "fewest_bytes")
ELEM_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
H100_L2_BYTES = 50 * 2 ** 20


def load_traffic(path_or_frame) -> pd.DataFrame:
    """traffic.csv as a frame with integer byte columns (extension columns optional)."""
    frame = path_or_frame if isinstance(path_or_frame, pd.DataFrame) else pd.read_csv(path_or_frame)
    frame = frame.copy()
    for c in BYTE_COLUMNS:
        if c in frame:
            frame[c] = pd.to_numeric(frame[c]).astype("int64")
    return frame


def model_vs_measured(frame: pd.DataFrame, *, l2_bytes: int = H100_L2_BYTES) -> pd.DataFrame:
    """Per row: `measured`, `model_bytes` (read + write; `model` stays the model's name), `ratio` =
    measured / model_bytes, and in bytes:
    - `rereads_reached_dram`: measured reads beyond the unique reads, and `rereads_possible`, the
      logical reads beyond them (weight tiles re-read by every M block, x tiles by every N block);
    - `writes_held_in_l2`: unique writes the DRAM counter had not seen when the kernel ended
      (dirty lines still in L2, written back later, outside the kernel's count);
    - `padding`: unique bytes of the padding rows (the `padding_bytes` column; in the model, so a
      cause of the distance to the floor, not to the model);
    and `why`, one line naming the causes that account for the difference."""
    f = load_traffic(frame)
    out = f[["device", "model", "dtype", "tokens", "impl", "stage", "tool"]].copy()
    out["measured_read"], out["measured_write"] = f["dram_read_bytes"], f["dram_write_bytes"]
    out["model_read"], out["model_write"] = f["model_read_bytes"], f["model_write_bytes"]
    out["measured"] = out["measured_read"] + out["measured_write"]
    out["model_bytes"] = out["model_read"] + out["model_write"]
    out["ratio"] = out["measured"] / out["model_bytes"].where(out["model_bytes"] > 0)
    out["rereads_reached_dram"] = (f["dram_read_bytes"] - f["unique_read_bytes"]).clip(lower=0)
    out["rereads_possible"] = f["logical_read_bytes"] - f["unique_read_bytes"]
    out["unique_write"] = f["unique_write_bytes"]
    out["writes_held_in_l2"] = (f["unique_write_bytes"] - f["dram_write_bytes"]).clip(lower=0)
    out["padding"] = f["padding_bytes"] if "padding_bytes" in f else np.nan
    out["why"] = [_why(r, l2_bytes) for r in out.itertuples()]
    return out


def _why(r, l2_bytes: int) -> str:
    if r.tool == "interpreter":
        return ("exact" if r.measured == r.model_bytes
                else f"interpreter count differs from the model by {r.measured - r.model_bytes} B")
    if not r.model_bytes:
        return ""
    parts, small = [], 0.02 * r.model_bytes
    rereads = min(r.rereads_reached_dram, r.rereads_possible)
    if rereads > small:
        parts.append(f"{_mb(rereads)} re-read from DRAM ({rereads / r.rereads_possible:.0%} of "
                     f"{_mb(r.rereads_possible)} of tile re-reads; L2 kept the rest)")
    beyond = r.rereads_reached_dram - r.rereads_possible
    if beyond > small:
        parts.append(f"{_mb(beyond)} read beyond even the logical bytes (not modelled)")
    if r.writes_held_in_l2 > small:
        fits = "fits" if r.unique_write <= l2_bytes else "exceeds"
        parts.append(f"{_mb(r.writes_held_in_l2)} of {_mb(r.unique_write)} written still in L2 at kernel end "
                     f"(output {fits} the {_mb(l2_bytes)} L2)")
    if not parts:
        return "within 2% per cause" if abs(r.measured - r.model_bytes) <= 0.1 * r.model_bytes else \
            f"{_mb(r.measured - r.model_bytes)} unexplained"
    return "; ".join(parts)


def _mb(n: float) -> str:
    return f"{n / 1e6:.3g} MB"


def excess_over_fewest(frame: pd.DataFrame) -> pd.DataFrame:
    """Per call (total rows): DRAM bytes against the floor's fewest bytes, and what the excess is:
    - `padding`: the padding rows' bytes;
    - `beyond_floor_in_model`: the rest of the unique model beyond the floor (intermediates such as
      gate/up/act and the fp32 partial sums, routing and alignment arrays, the router weight);
    - `rereads`: measured reads beyond the unique reads (weight tiles re-read by several M blocks,
      x tiles by several N blocks), and `weight_read_factor` = (hit weights + rereads) / hit weights,
      an upper bound on how many times each weight byte came from DRAM;
    - `writes_held_in_l2`: unique writes not seen by the counters (negative to the excess)."""
    f = load_traffic(frame)
    t = f[f["stage"] == "total"].reset_index(drop=True)
    pad = model_vs_measured(t)["padding"]
    out = t[["device", "model", "dtype", "tokens", "impl", "tool", "fewest_bytes"]].copy()
    out["measured"] = t["dram_read_bytes"] + t["dram_write_bytes"]
    out["over_fewest"] = out["measured"] / t["fewest_bytes"]
    out["excess_bytes"] = out["measured"] - t["fewest_bytes"]
    out["padding"] = pad
    out["beyond_floor_in_model"] = t["unique_read_bytes"] + t["unique_write_bytes"] - t["fewest_bytes"] - pad.fillna(0)
    out["rereads"] = (t["dram_read_bytes"] - t["unique_read_bytes"]).clip(lower=0)
    out["writes_held_in_l2"] = (t["unique_write_bytes"] - t["dram_write_bytes"]).clip(lower=0)
    out["weight_read_factor"] = (t["model_weight_read_bytes"] + out["rereads"]) / t["model_weight_read_bytes"]
    return out


# --- the fusion's savings -------------------------------------------------------------------------

def expert_counts(tokens: int, experts: int, top_k: int, how: str = "sampled", seed: int | None = None) -> list[int]:
    """Slots per expert for a uniform routing: `sampled` takes the top-k of random logits per token
    (seeded by the token count unless `seed` is given: the sample of
    `experiments.analysis.traffic_model.uniform_counts`), `balanced` spreads the T*K slots as evenly
    as the experts allow."""
    if how == "balanced":
        n = tokens * top_k
        return [n // experts + (1 if e < n % experts else 0) for e in range(experts)]
    if how != "sampled":
        raise ValueError(f"how: expected 'sampled' or 'balanced', got {how!r}")
    g = torch.Generator().manual_seed(tokens if seed is None else seed)
    ids = torch.randn(tokens, experts, generator=g).topk(top_k, dim=1).indices
    return torch.bincount(ids.flatten(), minlength=experts).tolist()


def fusion_savings_model(model_names=None, tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192), *,
                         dtype: str = "bf16", baselines=("tritonmoe_unfused", "tritonmoe_w13"),
                         counts: str = "sampled", flavour: str = "unique", config_fn=gpu_config) -> pd.DataFrame:
    """The modelled saving of `tritonmoe_fused` against each baseline, per model and token count.

    Columns: model, tokens, baseline, basis ('with_weights' or 'activations_only'), baseline_bytes,
    fused_bytes, saved_bytes, saved_share (of the baseline's bytes on that basis). `config_fn(shape)`
    gives the launch config (default: the GPU defaults of `tritonmoe.config`)."""
    models = load_models()
    rows = []
    for name in model_names or list(models):
        m = models[name]
        for t in tokens:
            shape = LayerShape(t, m.hidden, m.ffn, m.experts, m.top_k, ELEM_BYTES[dtype])
            c = expert_counts(t, m.experts, m.top_k, counts)
            cfg = config_fn(shape)
            fused = stage_traffic(launches("tritonmoe_fused", shape, c, cfg), flavour)["total"]
            for base in baselines:
                b = stage_traffic(launches(base, shape, c, cfg), flavour)["total"]
                for basis, bb, fb in (("with_weights", b.total, fused.total),
                                      ("activations_only", b.act_total, fused.act_total)):
                    rows.append({"model": name, "tokens": t, "baseline": base, "basis": basis, "baseline_bytes": bb,
                                 "fused_bytes": fb, "saved_bytes": bb - fb, "saved_share": (bb - fb) / bb})
    return pd.DataFrame(rows)


def fusion_savings_measured(frame: pd.DataFrame, baselines=("tritonmoe_unfused", "tritonmoe_w13")) -> pd.DataFrame:
    """The measured saving (ncu totals), same columns as `fusion_savings_model` plus device.
    DRAM counters do not tell weights from activations: 'activations_only' subtracts the modelled
    unique weight bytes from each measured total (an estimate, marked in `basis`)."""
    f = load_traffic(frame)
    t = f[(f["stage"] == "total") & (f["tool"] == "ncu")].copy()
    t["with_weights"] = t["dram_read_bytes"] + t["dram_write_bytes"]
    t["activations_only_est"] = t["with_weights"] - t["model_weight_read_bytes"]
    key = ["device", "model", "dtype", "tokens"]
    fused = t[t["impl"] == "tritonmoe_fused"].set_index(key)
    rows = []
    for base in baselines:
        b = t[t["impl"] == base].set_index(key)
        both = b.join(fused, how="inner", lsuffix="_b", rsuffix="_f")
        for basis in ("with_weights", "activations_only_est"):
            bb, fb = both[f"{basis}_b"], both[f"{basis}_f"]
            part = pd.DataFrame({"baseline": base, "basis": basis, "baseline_bytes": bb, "fused_bytes": fb,
                                 "saved_bytes": bb - fb, "saved_share": (bb - fb) / bb}).reset_index()
            rows.append(part)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def tokens_reaching_share(savings: pd.DataFrame, share: float = 0.35) -> pd.DataFrame:
    """Per (model, baseline, basis[, device]): the smallest token count whose saved_share >= share
    (NaN if none), whether it stays there at every larger count, and the largest share seen."""
    keys = [k for k in ("device", "model", "baseline", "basis") if k in savings]
    rows = []
    for key, g in savings.sort_values("tokens").groupby(keys):
        reached = g[g["saved_share"] >= share]
        first = int(reached["tokens"].iloc[0]) if len(reached) else np.nan
        stays = bool(len(reached)) and bool((g[g["tokens"] >= first]["saved_share"] >= share).all())
        best = g.loc[g["saved_share"].idxmax()]
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), "share": share,
                     "first_tokens": first, "stays_above": stays, "max_share": float(best["saved_share"]),
                     "max_share_tokens": int(best["tokens"])})
    return pd.DataFrame(rows)


def fusion_saving_one(model: str, tokens: int, *, dtype: str = "bf16", baseline: str = "tritonmoe_unfused",
                      counts: str = "sampled", weights: bool = True) -> tuple[int, float]:
    """(saved bytes, share) for one model and token count; see `tritonmoe.traffic.fusion_saving`."""
    m = load_models()[model]
    shape = LayerShape(tokens, m.hidden, m.ffn, m.experts, m.top_k, ELEM_BYTES[dtype])
    c = expert_counts(tokens, m.experts, m.top_k, counts)
    return fusion_saving(shape, c, gpu_config(shape), baseline=baseline, weights=weights)


__all__ = ["excess_over_fewest", "expert_counts", "fusion_saving_one", "fusion_savings_measured",
           "fusion_savings_model", "load_traffic", "model_vs_measured", "tokens_reaching_share"]
