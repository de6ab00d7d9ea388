"""Latency rows as the figures and tables show them: the config's dtype and routing, timed rows
only (a row without timing has a note saying why, e.g. an impl that cannot be captured in a CUDA
graph), in the config's launch mode (`graph`), or in the mode of comparisons with the baseline
(`compare_graph`)."""
from __future__ import annotations

import pandas as pd

MODES = {1: "CUDA graph", 0: "eager"}


def timed_rows(rows: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Timed rows of the config's dtype and routing, in either launch mode."""
    keep = (rows["dtype"] == settings["dtype"]) & (rows["routing"] == settings["routing"]) & rows["median_ms"].notna()
    return rows[keep]


def shown_rows(rows: pd.DataFrame, settings: dict, graph: int | None = None) -> pd.DataFrame:
    """Timed rows in launch mode `graph` (default: the config's `graph`)."""
    timed = timed_rows(rows, settings)
    return timed[timed["graph"] == (settings["graph"] if graph is None else graph)]


def drawn_rows(rows: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """Each impl's timed rows in the config's launch mode, or, for an impl with none there, in the
    other mode; `fallback` marks the latter."""
    timed = timed_rows(rows, settings)
    primary = timed[timed["graph"] == settings["graph"]]
    others = timed[(timed["graph"] != settings["graph"]) & ~timed["impl"].isin(set(primary["impl"]))]
    return pd.concat([primary.assign(fallback=False), others.assign(fallback=True)], ignore_index=True)
