"""What a finished run leaves behind: ledger rows, a manifest, a contact sheet and an HTML report.

The ledger holds one row per step execution, but a report (or a person, weeks later) also needs
the run's shape: the DAG, the final outputs, what failed. :class:`RunManifest` keeps that, as
``<home>/runs/<run id>.json``, so ``klingflow report RUN_ID`` can redraw a run from disk alone.

:func:`record_run` is the one call at the end of every run. By then the money is spent, so only
the ledger (the record of what was paid for) may fail loudly; the contact sheet and the report
are cosmetic and only log a warning when they cannot be made. Media in the report point at the
content-addressed store, which never changes, so an old run's report still shows its own clips
after a later run overwrote the exported copies in the same output folder.

Example::

    manifest = record_run(result, validated, out_dir=Path("klingflow-out/story"))
    print(manifest.report)  # klingflow-out/story/report.html
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, SecretStr

from klingflow import ledger
from klingflow.home import klingflow_home
from klingflow.ledger import LedgerError, redact, step_label
from klingflow.media import contact_sheet
from klingflow.report import media_kind, write_report
from klingflow.runner import RunResult
from klingflow.spec import ValidatedPipeline

__all__ = [
    "CONTACT_SHEET_NAME",
    "REPORT_NAME",
    "RunManifest",
    "list_manifests",
    "load_manifest",
    "record_run",
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
    kinds: dict[str, str]
    uses: dict[str, str] = {}
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
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
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


def _sheet(rows: list[dict[str, Any]], out: Path, run_id: str) -> str | None:
    """The contact sheet of every video the run produced, or None when it has none or it fails."""
    videos = [
        (step_label(row), Path(row["output_path"]))
        for row in rows
        if row["status"] in ("completed", "cached")
        and row["output_path"]
        and media_kind(row["output_path"]) == "video"
        and Path(row["output_path"]).is_file()
    ]
    if not videos:
        return None
    try:
        return str(contact_sheet(videos, out, context=f"run {run_id} contact sheet"))
    except Exception:  # cosmetic: the run is paid for and recorded; a missing picture must not fail it
        logger.warning("could not make the contact sheet for run %s", run_id, exc_info=True)
        return None


def _times(frame: pd.DataFrame) -> tuple[datetime | None, datetime]:
    """When the run's first step started, and when its last one finished (now, if none did)."""
    started, finished = frame["started_at"].min(), frame["finished_at"].max()
    start = None if pd.isna(started) else started.to_pydatetime()
    end = datetime.now(UTC) if pd.isna(finished) else finished.to_pydatetime()
    return start, end


def _sources(result: RunResult) -> dict[str, str]:
    """The store file behind each final output (the exported copy may be overwritten by a later run)."""
    sources: dict[str, str] = {}
    for name in result.final:
        step_id, _, index = (name, "", "") if name in result.outputs else name.rpartition("-")
        outputs = result.outputs.get(step_id, {})
        for kind in ("video", "audio", "image"):
            value = outputs.get(kind)
            if isinstance(value, list) and index.isdigit() and int(index) < len(value):
                value = value[int(index)]
            if isinstance(value, Path):
                sources[name] = str(value)
                break
    return sources


def _reveal(secret: SecretStr | str) -> str:
    """The text to search for when redacting (the ledger must never hold a key given in code)."""
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def record_run(
    result: RunResult,
    pipeline: ValidatedPipeline,
    *,
    out_dir: Path | None,
    secrets: Iterable[SecretStr | str] = (),
) -> RunManifest:
    """Record a finished run: ledger rows, contact sheet, manifest, HTML report; return the manifest.

    Order matters: the ledger is appended first and its failure raises :class:`LedgerError` (the
    money is spent, the record must not silently go missing). The contact sheet goes to
    ``<home>/runs/<run id>/``; the report to ``out_dir/report.html`` (next to the exported
    outputs) or, without an out dir, beside the contact sheet. Either of those failing only logs
    a warning. ``secrets`` (e.g. the key given in code) are removed from every text recorded.
    """
    hidden = [_reveal(s) for s in secrets]
    frame = ledger.to_frame(ledger.to_records(result.ledger), secrets=hidden)
    if not frame.empty:
        ledger.append(frame)
    rows = ledger.to_records(frame)
    started, finished = _times(frame)
    folder = run_dir(result.run_id)
    manifest = RunManifest(
        run_id=result.run_id,
        flow_run_id=result.flow_run_id,
        pipeline=result.pipeline,
        pipeline_file=str(pipeline.spec.source) if pipeline.spec.source else None,
        status=result.status,
        started_at=started,
        finished_at=finished,
        order=list(pipeline.order),
        dependencies={step: sorted(pipeline.dependencies.get(step, ())) for step in pipeline.order},
        kinds={step: pipeline.kind(step) for step in pipeline.order},
        uses={step: pipeline.step(step).uses for step in pipeline.order},
        final={name: str(path) for name, path in result.final.items()},
        final_sources=_sources(result),
        failures={step: redact(reason, hidden) or "" for step, reason in result.failures.items()},
        contact_sheet=_sheet(rows, folder / CONTACT_SHEET_NAME, result.run_id),
        out_dir=str(out_dir) if out_dir is not None else None,
    )
    target = (out_dir if out_dir is not None else folder) / REPORT_NAME
    try:
        manifest.report = str(write_report(manifest, frame, target))
    except Exception:  # cosmetic, like the contact sheet: `klingflow report RUN_ID` can redo it
        logger.warning("could not write the report for run %s at %s", result.run_id, target, exc_info=True)
    save_manifest(manifest)
    return manifest
