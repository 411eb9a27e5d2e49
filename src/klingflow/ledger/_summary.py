"""Summaries of ledger rows: spend, cache use, failures and p50/p95 timings, per run and per pipeline.

``spend_usd`` sums the known estimates; ``unknown_price`` counts the generations whose price klingflow
does not know, so they are never read as free.

A column per :class:`~klingflow.ledger.Status` is derived from the enum, so a new status shows in
``klingflow ledger summary`` without anyone remembering to add it.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from klingflow.ledger._dataset import typed
from klingflow.ledger._record import Status

__all__ = ["LedgerSummary", "summary"]


class LedgerSummary(NamedTuple):
    """Spend, cache use, failures and p50/p95 timings, per run and per pipeline."""

    runs: pd.DataFrame
    pipelines: pd.DataFrame


def _metrics(frame: pd.DataFrame, keys: list[str], **extra: tuple[str, str]) -> pd.DataFrame:
    marked = frame.assign(
        **{f"_{status}": frame["status"].eq(status).fillna(False).astype(int) for status in Status},
        # spend_usd sums the known estimates; these generations' prices are not known (not $0)
        _unknown_price=(frame["kind"].eq("endpoint") & frame["estimated_cost_usd"].isna()).astype(int),
    )
    groups = marked.groupby(keys, sort=False, dropna=False)
    out = groups.agg(
        **extra,
        started_at=("started_at", "min"),
        steps=("step_id", "size"),
        **{str(status): (f"_{status}", "sum") for status in Status},
        spend_usd=("estimated_cost_usd", "sum"),
        unknown_price=("_unknown_price", "sum"),
        billed_usd=("cost_usd", "sum"),
    )
    out["cached_share"] = (out[Status.CACHED] / out["steps"]).astype("Float64")
    for column, name in (("queue_seconds", "queue"), ("run_seconds", "run")):
        out[f"{name}_p50"] = groups[column].quantile(0.5).astype("Float64")
        out[f"{name}_p95"] = groups[column].quantile(0.95).astype("Float64")
    return out.reset_index()


def summary(frame: pd.DataFrame) -> LedgerSummary:
    """Per run and per pipeline: steps, a count per status, cached share, estimated spend
    (``spend_usd``) beside what fal billed (``billed_usd``: its billable units at its unit price),
    and p50/p95 of queue and run seconds (over the rows that have them).

    ``cached_share`` is cached rows over all rows. Runs come newest first; pipelines by name.
    """
    frame = typed(frame)
    runs = _metrics(frame, ["run_id", "pipeline"]).sort_values("started_at", ascending=False)
    pipelines = _metrics(
        frame, ["pipeline"], runs=("run_id", "nunique"), last_run_at=("started_at", "max")
    ).rename(columns={"started_at": "first_run_at"})
    return LedgerSummary(
        runs=runs.reset_index(drop=True), pipelines=pipelines.sort_values("pipeline").reset_index(drop=True)
    )
