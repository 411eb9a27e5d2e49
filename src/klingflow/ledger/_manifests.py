"""Run manifests: a run's shape and where its results are, kept beside the ledger.

The ledger holds one row per step execution, but a report (or a person, weeks later) also needs
the run's shape: the DAG, the final outputs, what failed. :class:`RunManifest` keeps that, as
``<home>/runs/<run id>.json``, so ``klingflow report RUN_ID`` can redraw a run from disk alone.
"""

from __future__ import annotations

import glob
import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from klingflow._files import atomic_write
from klingflow.errors import LedgerError
from klingflow.settings import klingflow_home

__all__ = [
    "CONTACT_SHEET_NAME",
    "REPORT_NAME",
    "RunManifest",
    "list_manifests",
    "load_manifest",
    "run_dir",
    "runs_root",
    "save_manifest",
]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
CONTACT_SHEET_NAME = "contact-sheet.png"


class RunManifest(BaseModel):
    """A run's shape and where its results are: enough, with its ledger rows, to redraw its report."""

    run_id: str
    flow_run_id: str | None = None
    pipeline: str
    pipeline_file: str | None = None
    status: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    order: list[str]
    dependencies: dict[str, list[str]]
    # foreach steps whose item i reads only item i of the step they run over (engine.runner.item_by_item)
    item_by_item: dict[str, str] = {}
    kinds: dict[str, str]
    uses: dict[str, str] = {}
    schemas: dict[str, str] = {}
    """Per endpoint id the run called: which copy of its schema and price it used (snapshot or refresh)."""
    final: dict[str, str] = {}
    final_sources: dict[str, str] = {}
    failures: dict[str, str] = {}
    contact_sheet: str | None = None
    report: str | None = None
    out_dir: str | None = None


def runs_root() -> Path:
    """``<klingflow home>/runs``: one manifest per run, and a folder per run for its pictures."""
    return klingflow_home() / "runs"


def run_dir(run_id: str) -> Path:
    """``<klingflow home>/runs/<run id>/``: the contact sheet, and the report when there is no out dir."""
    return runs_root() / run_id


def save_manifest(manifest: RunManifest) -> Path:
    """Write ``<home>/runs/<run id>.json`` atomically (a crash leaves the old manifest or none)."""
    target = runs_root() / f"{manifest.run_id}.json"
    text = manifest.model_dump_json(indent=2)
    try:
        atomic_write(target, text)
    except OSError as exc:
        raise LedgerError(f"could not write the run manifest: {exc}", context=str(target)) from exc
    return target


def list_manifests() -> list[RunManifest]:
    """Every saved run manifest, newest first (unreadable ones are skipped)."""
    found = []
    for path in runs_root().glob("*.json"):
        try:
            found.append(RunManifest.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            logger.warning("skipping unreadable run manifest %s", path)
    oldest = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda m: m.started_at or oldest, reverse=True)


def _recent_hint() -> str:
    recent = list_manifests()[:5]
    if not recent:
        return "no runs are recorded yet under this klingflow home; run a pipeline first"
    lines = [
        f"{m.run_id}  {m.pipeline}  {m.status}  "
        + (f"{m.started_at:%Y-%m-%d %H:%M} UTC" if m.started_at else "start unknown")
        for m in recent
    ]
    return "recent runs:\n    " + "\n    ".join(lines)


def load_manifest(run_id: str) -> RunManifest:
    """The manifest of the run with this id, or with the only id starting with it."""
    root = runs_root()
    exact = root / f"{run_id}.json"
    matches = (
        [exact] if exact.is_file() else sorted(root.glob(f"{glob.escape(run_id)}*.json")) if run_id else []
    )
    if not matches:
        raise LedgerError(f"no recorded run with id {run_id!r}", context=str(root), hint=_recent_hint())
    if len(matches) > 1:
        names = ", ".join(p.stem for p in matches[:10])
        raise LedgerError(
            f"run id prefix {run_id!r} is ambiguous: {names}", hint="give more characters of the id"
        )
    try:
        return RunManifest.model_validate_json(matches[0].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LedgerError(f"cannot read the run manifest: {exc}", context=str(matches[0])) from exc
