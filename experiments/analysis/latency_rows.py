"""Latency rows as the figures and tables show them: the config's dtype, routing and graph mode,
timed rows only (a row without timing has a note saying why, e.g. a baseline that cannot run)."""
from __future__ import annotations

import pandas as pd


def shown_rows(rows: pd.DataFrame, settings: dict) -> pd.DataFrame:
    keep = ((rows["dtype"] == settings["dtype"]) & (rows["routing"] == settings["routing"])
            & (rows["graph"] == settings["graph"]) & rows["median_ms"].notna())
    return rows[keep]
