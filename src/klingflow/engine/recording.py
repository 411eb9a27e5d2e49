"""What a finished run leaves behind: ledger rows, a manifest, a contact sheet and an HTML report.

:func:`record_run` is the one call at the end of every run. By then the money is spent, so only
the ledger (the record of what was paid for) may fail loudly; the contact sheet and the report
are cosmetic and only log a warning when they cannot be made. Media in the report point at the
content-addressed store, which never changes, so an old run's report still shows its own clips
after a later run overwrote the exported copies in the same output folder.

A run made without Prefect (a fully cached CLI run, see :mod:`klingflow.flows.record`) is read
back with :func:`recorded_run` and, once a flow run shows it, named there by
:func:`link_flow_run`, so its ledger rows, manifest and report point at the flow run like any
other run's.

Example::

    manifest, rows = record_run(result, validated, out_dir=Path("klingflow-out/story"))
    print(manifest.report)  # klingflow-out/story/report.html
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from pydantic import SecretStr

from klingflow import ledger
from klingflow._files import atomic_path
from klingflow.engine.runner import RunResult, item_by_item
from klingflow.ledger import (
    CONTACT_SHEET_NAME,
    REPORT_NAME,
    RunManifest,
    Status,
    StepRecord,
    load_manifest,
    redact,
    run_dir,
    runs_root,
    save_manifest,
    step_label,
)
from klingflow.media import contact_sheet, contact_sheet_row
from klingflow.report import media_kind, write_report
from klingflow.spec import ValidatedPipeline, step_endpoint

__all__ = ["FLOW_RUN_PARAMETERS", "SHEET_ROWS", "SheetRows", "link_flow_run", "record_run", "recorded_run"]

logger = logging.getLogger(__name__)


FLOW_RUN_PARAMETERS = "flow-run-parameters.json"
"""In a run's folder while the run, made without Prefect, waits to be recorded as a flow run:
that flow run's parameters (see :func:`link_flow_run`)."""

SHEET_ROWS = 20
"""A run's contact sheet shows its first clips; the report shows every one."""
_SHEET_VERSION = "contact-sheet-2"  # part of a sheet's cache key: bump when the picture changes


def _on_sheet(status: str, output_path: str | None) -> bool:
    """Whether a ledger row's output gets a row on the run's contact sheet."""
    return bool(
        Status(status).produced
        and output_path
        and media_kind(output_path) == "video"
        and Path(output_path).is_file()
    )


class SheetRows:
    """Makes contact-sheet rows in a worker thread as steps finish, so the sheet at the end is mostly
    an assembly: decoding a clip's frames then overlaps with waiting for the other requests.

    Feed it every finished record (:meth:`add`, an ``on_finish`` hook); cached records are left
    for the end, where a cached re-run's sheet is copied whole. :meth:`close` drops what is left.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="klingflow-sheet")
        self._rows: dict[tuple[str, str], Future[Image.Image]] = {}

    def add(self, record: StepRecord) -> None:
        if (
            len(self._rows) < SHEET_ROWS
            and record.status != Status.CACHED
            and _on_sheet(record.status, record.output_path)
        ):
            key = (record.step_label, str(record.output_path))
            self._rows[key] = self._pool.submit(contact_sheet_row, key[0], Path(key[1]), context=key[0])

    def get(self, label: str, video: Path) -> Image.Image | None:
        """The row made ahead for this clip, or None (it is then made by the caller)."""
        future = self._rows.get((label, str(video)))
        try:
            return future.result() if future is not None else None
        except Exception:  # made again by the caller, which reports the failure properly
            return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _sheet(
    rows: list[dict[str, Any]], out: Path, run_id: str, prepared: SheetRows | None = None
) -> str | None:
    """The contact sheet of the videos the run produced, or None when it has none or it fails.

    A sheet is a function of its clips' labels and contents, so it is kept by that key under
    ``<home>/runs/sheets/`` and a re-run that produced the same clips (a cached re-run) copies it
    instead of decoding every clip again.
    """
    rows = [row for row in rows if _on_sheet(row["status"], row["output_path"])]
    if not rows:
        return None
    videos = [(step_label(row), Path(row["output_path"])) for row in rows]
    identity = [
        _SHEET_VERSION,
        SHEET_ROWS,
        *[[label, row["sha256"]] for (label, _), row in zip(videos, rows, strict=True)],
    ]
    kept = runs_root() / "sheets" / f"{hashlib.sha256(json.dumps(identity).encode()).hexdigest()}.png"
    try:
        if all(row["sha256"] for row in rows) and kept.is_file():
            with atomic_path(out) as partial:
                shutil.copyfile(kept, partial)
            return str(out)
        contact_sheet(
            videos,
            out,
            context=f"run {run_id} contact sheet",
            max_rows=SHEET_ROWS,
            prepared=prepared.get if prepared is not None else None,
        )
        if all(row["sha256"] for row in rows):
            kept.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(kept) as partial:
                shutil.copyfile(out, partial)
        return str(out)
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
        item, _, output = name.partition(".")  # a subtitles file: captioned.subtitles, cut-2.webvtt
        step_id, _, index = (item, "", "") if item in result.outputs else item.rpartition("-")
        outputs = result.outputs.get(step_id, {})
        for field in (output,) if output else ("video", "audio", "image"):
            value = outputs.get(field)
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
    sheet_rows: SheetRows | None = None,
    contact_sheet: bool = True,
) -> tuple[RunManifest, pd.DataFrame]:
    """Record a finished run: ledger rows, contact sheet, manifest, HTML report.

    Returns the manifest and the ledger rows as stored (secrets removed).

    Order matters: the ledger is appended first and its failure raises :class:`LedgerError` (the
    money is spent, the record must not silently go missing). The contact sheet goes to
    ``<home>/runs/<run id>/``; the report to ``out_dir/report.html`` (next to the exported
    outputs) or, without an out dir, beside the contact sheet. Either of those failing only logs
    a warning. ``secrets`` (e.g. the key given in code) are removed from every text recorded.
    ``sheet_rows`` holds contact-sheet rows made while the run went on; ``contact_sheet=False``
    makes none (a batch's row, shown on the batch's sheet).
    """
    hidden = [_reveal(s) for s in secrets]
    frame = ledger.to_frame(result.rows(), secrets=hidden)
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
        item_by_item=item_by_item(pipeline),
        kinds={step: pipeline.kind(step) for step in pipeline.order},
        uses={step: pipeline.step(step).uses for step in pipeline.order},
        schemas={
            info.id: f"{info.record.provenance()}, sha256 {info.sha256}"
            for step in pipeline.order
            if (info := step_endpoint(pipeline.spec, step)) is not None
        },
        final={name: str(path) for name, path in result.final.items()},
        final_sources=_sources(result),
        failures={step: redact(reason, hidden) or "" for step, reason in result.failures.items()},
        contact_sheet=_sheet(rows, folder / CONTACT_SHEET_NAME, result.run_id, sheet_rows)
        if contact_sheet
        else None,
        out_dir=str(out_dir) if out_dir is not None else None,
    )
    target = (out_dir if out_dir is not None else folder) / REPORT_NAME
    try:
        manifest.report = str(write_report(manifest, frame, target))
    except Exception:  # cosmetic, like the contact sheet: `klingflow report RUN_ID` can redo it
        logger.warning("could not write the report for run %s at %s", result.run_id, target, exc_info=True)
    save_manifest(manifest)
    return manifest, frame


def recorded_run(run_id: str) -> RunResult:
    """A recorded run read back from the home: its manifest, and its ledger rows as step records."""
    manifest = load_manifest(run_id)
    frame = ledger.load(run=manifest.run_id)
    frame = frame[frame["run_id"] == manifest.run_id].reset_index(drop=True)
    result = RunResult(
        run_id=manifest.run_id,
        pipeline=manifest.pipeline,
        status=Status(manifest.status),
        outputs={},
        records=[StepRecord(**row) for row in ledger.to_records(frame)],
        failures=dict(manifest.failures),
        final={name: Path(path) for name, path in manifest.final.items()},
        flow_run_id=manifest.flow_run_id,
    )
    result.recorded(manifest, frame)
    return result


def link_flow_run(result: RunResult, flow_run_id: str) -> None:
    """Name the flow run that shows a run recorded without one, in its ledger rows, manifest and report.

    A fully cached ``klingflow run`` runs without Prefect and is recorded as a flow run afterwards
    (:mod:`klingflow.flows.record`); its rows are then rewritten whole with the flow run's id
    (:func:`klingflow.ledger.append` replaces a run's file), like any run's rows.
    """
    if result.manifest is None:
        raise ValueError(f"run {result.run_id} has no manifest: it was not recorded")
    manifest = result.manifest.model_copy(update={"flow_run_id": flow_run_id})
    frame = result.ledger.assign(flow_run_id=flow_run_id)
    if not frame.empty:
        ledger.append(frame)
    report = Path(manifest.report) if manifest.report else None
    try:
        # an output folder's report.html is the latest run's: a later run may have replaced it
        if report is not None and result.run_id in report.read_text(encoding="utf-8"):
            write_report(manifest, frame, report)
    except Exception:  # cosmetic, as in record_run
        logger.warning("could not redraw the report of run %s", result.run_id, exc_info=True)
    save_manifest(manifest)
    result.flow_run_id = flow_run_id
    result.records = [r.model_copy(update={"flow_run_id": flow_run_id}) for r in result.records]
    result.recorded(manifest, frame)
