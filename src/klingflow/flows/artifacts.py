"""The run in the Prefect UI: a table artifact of its ledger rows and a markdown summary.

Keys are stable per pipeline (``klingflow-<pipeline>-ledger`` and ``klingflow-<pipeline>-summary``),
so the UI's Artifacts page shows each pipeline's history run after run. The table keeps the
columns a person scans (step, status, cost, timings, error), not all thirty; the full row set is
in the ledger (``klingflow ledger --run ID``). Texts come from the recorded run, whose secrets
were already removed, and are redacted once more before they leave the process.

Example::

    result = await arun("story.yaml")
    await publish_artifacts(result.manifest, result.ledger)  # inside a flow run
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import pandas as pd
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from klingflow.ledger import RunManifest, Status, redact, step_label, to_records

__all__ = ["ArtifactIds", "artifact_key", "publish_artifacts", "summary_markdown", "table_rows"]


class ArtifactIds(NamedTuple):
    """The ids of the two artifacts one run created."""

    table: UUID
    markdown: UUID


def artifact_key(pipeline: str, kind: str) -> str:
    """``klingflow-<pipeline>-<kind>`` in the only alphabet Prefect accepts: a-z, 0-9 and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", pipeline.lower()).strip("-") or "pipeline"
    return f"klingflow-{slug}-{kind}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def table_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The columns a person needs from each ledger row, JSON-ready."""
    return [
        {
            "step": step_label(row),
            "status": row["status"],
            "endpoint": (row["endpoint"] or "").removeprefix("fal-ai/kling-video/"),
            "estimated_usd": _round(row["estimated_cost_usd"], 4),
            "billed_usd": _round(row["cost_usd"], 4),
            "queue_s": _round(row["queue_seconds"], 2),
            "run_s": _round(row["run_seconds"], 2),
            "attempts": row["attempts"],
            "duration_s": _round(row["duration_s"], 2),
            "size": f"{row['width']}x{row['height']}" if row["width"] and row["height"] else None,
            "request_id": row["request_id"],
            "output": row["output_path"],
            "error": redact((row["error"] or "").splitlines()[0][:300]) if row["error"] else None,
        }
        for row in to_records(frame)
    ]


def _cell(text: object) -> str:
    """Text safe inside a markdown table cell (pipes and newlines would break the row)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _location(path: str | None) -> str:
    return f"`{Path(path).resolve().as_uri()}`" if path else "none"


def summary_markdown(manifest: RunManifest, frame: pd.DataFrame) -> str:
    """The run at a glance: status, spend, cache hits, outputs, contact sheet, report, failures."""
    rows = to_records(frame)
    spend = sum(r["estimated_cost_usd"] or 0.0 for r in rows)
    billed = sum(r["cost_usd"] or 0.0 for r in rows)
    cached = sum(r["status"] == Status.CACHED for r in rows)
    counts = " · ".join(f"{s} {sum(r['status'] == s for r in rows)}" for s in Status)
    queues = frame["queue_seconds"].dropna()
    lines = [
        f"# {manifest.pipeline}: {manifest.status}",
        "",
        f"Run `{manifest.run_id}` · {len(rows)} step runs · estimated spend **${spend:.3f}** · "
        f"billed by fal **${billed:.3f}** · "
        f"cache hits {cached}/{len(rows)}"
        + (f" · queue p50 {queues.median():.1f} s" if not queues.empty else ""),
        "",
        f"Steps: {counts}",
        "",
        "## Outputs",
        "",
    ]
    if manifest.final:
        lines += ["| output | file |", "| --- | --- |"]
        lines += [f"| {_cell(name)} | `{_cell(path)}` |" for name, path in manifest.final.items()]
    else:
        lines.append("No final output.")
    lines += [
        "",
        f"- Contact sheet: {_location(manifest.contact_sheet)}",
        f"- Report: {_location(manifest.report)} (regenerate: `klingflow report {manifest.run_id}`)",
    ]
    if manifest.failures:
        lines += ["", "## Failures", ""]
        for step, reason in manifest.failures.items():
            lines += [f"**{step}**", "", "```text", reason.replace("```", "'''"), "```", ""]
    return redact("\n".join(lines)) or ""


async def publish_artifacts(manifest: RunManifest, frame: pd.DataFrame) -> ArtifactIds:
    """Create the run's table and markdown artifacts in the current flow run; return their ids.

    ``manifest`` and ``frame`` are what the run returned (its manifest and ledger rows). Call it
    inside a flow run, so the artifacts attach to it.
    """
    table = await acreate_table_artifact(
        table=table_rows(frame),
        key=artifact_key(manifest.pipeline, "ledger"),
        description=f"Ledger rows of run {manifest.run_id} ({manifest.status})",
    )
    markdown = await acreate_markdown_artifact(
        markdown=summary_markdown(manifest, frame),
        key=artifact_key(manifest.pipeline, "summary"),
        description=f"Summary of run {manifest.run_id} ({manifest.status})",
    )
    return ArtifactIds(table=table, markdown=markdown)
