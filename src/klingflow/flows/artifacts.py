"""The run in the Prefect UI: its ledger rows, a summary, its progress, pictures and links.

Every key is stable per pipeline, so the UI's Artifacts page shows each pipeline's history run
after run:

* ``klingflow-<pipeline>-ledger``: a table of the ledger rows; ``-summary``: markdown;
* ``klingflow-<pipeline>-progress``: the share of step executions finished, created when the
  steps start and updated as they finish (:class:`ProgressPublisher`), 100 when the run ends;
* ``klingflow-<pipeline>-contact-sheet`` and ``klingflow-<pipeline>-thumbnail-<output>``: images;
* ``klingflow-<pipeline>-report`` and ``klingflow-<pipeline>-output-<output>``: links (``file://``)
  to ``report.html`` and to each exported final output.

An image artifact is an URL the UI puts in an ``<img>``; a page served over http may not load
``file://`` pictures, so images travel as ``data:`` URIs of small JPEGs (at most
:data:`THUMBNAIL_SIDE` / :data:`SHEET_SIDE` pixels a side, tens of kilobytes). Links stay
``file://``: the UI shows and copies them; browsers do not open them from an http page.
Pictures and links are cosmetic: one that cannot be made is left out with a warning, never
failing a run that is paid for. The table keeps the
columns a person scans (step, status, cost, timings, error), not all thirty; the full row set is
in the ledger (``klingflow ledger --run ID``). Texts come from the recorded run, whose secrets
were already removed, and are redacted once more before they leave the process.

Example::

    result = await arun("story.yaml")
    await publish_artifacts(result.manifest, result.ledger)  # inside a flow run
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import pandas as pd
from PIL import Image
from prefect.artifacts import (
    acreate_image_artifact,
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)

from klingflow.batch import BatchResult
from klingflow.ledger import RunManifest, Status, StepRecord, redact, spend_label, step_label, to_records
from klingflow.media import preview
from klingflow.report import media_kind

__all__ = [
    "MAX_PICTURES",
    "SHEET_SIDE",
    "THUMBNAIL_SIDE",
    "ArtifactIds",
    "ProgressPublisher",
    "artifact_key",
    "jpeg_data_uri",
    "picture_data_uri",
    "picture_of",
    "batch_rows",
    "publish_artifacts",
    "publish_row_summary",
    "publish_batch_artifacts",
    "summary_markdown",
    "table_rows",
]

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 320
"""The longest side of a final output's thumbnail, in pixels."""
SHEET_SIDE = 1024
"""The longest side of the contact sheet's picture in the UI, in pixels."""
MAX_PICTURES = 12
"""At most this many thumbnails and output links per run (the summary lists every output)."""


class ArtifactIds(NamedTuple):
    """The ids of the artifacts one run created (pictures and links only when there were any)."""

    table: UUID
    markdown: UUID
    images: dict[str, UUID] = {}
    links: dict[str, UUID] = {}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def artifact_key(pipeline: str, kind: str) -> str:
    """``klingflow-<pipeline>-<kind>`` in the only alphabet Prefect accepts: a-z, 0-9 and dashes."""
    return f"klingflow-{_slug(pipeline) or 'pipeline'}-{_slug(kind) or 'artifact'}"


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
    spend = spend_label(r["estimated_cost_usd"] for r in rows)
    billed = sum(r["cost_usd"] or 0.0 for r in rows)
    cached = sum(r["status"] == Status.CACHED for r in rows)
    counts = " · ".join(f"{s} {sum(r['status'] == s for r in rows)}" for s in Status)
    queues = frame["queue_seconds"].dropna()
    lines = [
        f"# {manifest.pipeline}: {manifest.status}",
        "",
        f"Run `{manifest.run_id}` · {len(rows)} step runs · estimated spend **{spend}** · "
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


def picture_of(path: Path, max_side: int) -> Image.Image:
    """A small RGB picture of ``path``: an image, or a video's middle frame."""
    if media_kind(path) == "video":
        return preview(path, max_side, context=f"thumbnail of {path}").convert("RGB")
    with Image.open(path) as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((max_side, max_side))
    return picture


def jpeg_data_uri(picture: Image.Image) -> str:
    """A picture as a ``data:`` URI of a JPEG (what an image artifact's URL can be)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def picture_data_uri(path: Path, max_side: int) -> str:
    """A ``data:`` URI of a small JPEG of ``path``: an image, or a video's middle frame."""
    return jpeg_data_uri(picture_of(path, max_side))


async def _picture(path: Path, max_side: int) -> str | None:
    try:
        return await asyncio.to_thread(picture_data_uri, path, max_side)
    except Exception:  # cosmetic: a picture that cannot be made is left out
        logger.warning("could not make a picture of %s for the Prefect UI", path, exc_info=True)
        return None


async def _publish_media(manifest: RunManifest) -> tuple[dict[str, UUID], dict[str, UUID]]:
    """The contact sheet and thumbnails as image artifacts; report and final outputs as links.

    Pictures are made in threads and every artifact is sent at once (a 200-step run's end was
    3.3 s of these one after the other, while the server was still recording the steps).
    """
    run = f"run {manifest.run_id} ({manifest.status})"

    async def image(key: str, path: Path, side: int, description: str) -> tuple[str, UUID] | None:
        uri = await _picture(path, side)
        if uri is None:
            return None
        return key, await acreate_image_artifact(image_url=uri, key=key, description=description)

    async def link(key: str, path: Path, text: str, description: str) -> tuple[str, UUID]:
        uri = path.resolve().as_uri()
        return key, await acreate_link_artifact(link=uri, link_text=text, key=key, description=description)

    images: list[Awaitable[tuple[str, UUID] | None]] = []
    links: list[Awaitable[tuple[str, UUID]]] = []
    sheet = Path(manifest.contact_sheet) if manifest.contact_sheet else None
    if sheet is not None and sheet.is_file():
        key = artifact_key(manifest.pipeline, "contact-sheet")
        images.append(image(key, sheet, SHEET_SIDE, f"Contact sheet of {run}: `{sheet.resolve().as_uri()}`"))
    outputs = [(name, Path(path)) for name, path in manifest.final.items()][:MAX_PICTURES]
    for name, path in outputs:
        if not path.is_file():
            continue
        if media_kind(path) in ("video", "image"):
            key = artifact_key(manifest.pipeline, f"thumbnail-{name}")
            images.append(image(key, path, THUMBNAIL_SIDE, f"{name} of {run}: `{path.resolve().as_uri()}`"))
        key = artifact_key(manifest.pipeline, f"output-{name}")
        links.append(link(key, path, path.name, f"{name} of {run}"))
    report = Path(manifest.report) if manifest.report else None
    if report is not None and report.is_file():
        key = artifact_key(manifest.pipeline, "report")
        description = f"Report of {run} (regenerate: `klingflow report {manifest.run_id}`)"
        links.append(link(key, report, "report.html", description))
    made_images, made_links = await asyncio.gather(asyncio.gather(*images), asyncio.gather(*links))
    return dict(item for item in made_images if item is not None), dict(made_links)


async def publish_artifacts(manifest: RunManifest, frame: pd.DataFrame) -> ArtifactIds:
    """Create the run's table, markdown, image and link artifacts in the current flow run.

    ``manifest`` and ``frame`` are what the run returned (its manifest and ledger rows). Call it
    inside a flow run, so the artifacts attach to it.
    """
    table, markdown, (images, links) = await asyncio.gather(
        acreate_table_artifact(
            table=table_rows(frame),
            key=artifact_key(manifest.pipeline, "ledger"),
            description=f"Ledger rows of run {manifest.run_id} ({manifest.status})",
        ),
        acreate_markdown_artifact(
            markdown=summary_markdown(manifest, frame),
            key=artifact_key(manifest.pipeline, "summary"),
            description=f"Summary of run {manifest.run_id} ({manifest.status})",
        ),
        _publish_media(manifest),
    )
    return ArtifactIds(table=table, markdown=markdown, images=images, links=links)


async def publish_row_summary(manifest: RunManifest, frame: pd.DataFrame) -> UUID:
    """A batch row's one artifact: its summary (status, spend, outputs, report, failures).

    The batch's own table links every row's flow run and output and its contact sheet shows every
    row's cut, so a row leaves out the run's ledger table, pictures and links: each artifact is a
    write to the server's database, and at 200 rows those were a fifth of the server's work.
    """
    return await acreate_markdown_artifact(
        markdown=summary_markdown(manifest, frame),
        key=artifact_key(manifest.pipeline, "summary"),
        description=f"Summary of run {manifest.run_id} ({manifest.status})",
    )


def batch_rows(batch: BatchResult, ui: str | None) -> list[dict[str, Any]]:
    """The result table's rows as a person scans them: status, cost, links to the flow run and output."""
    rows = []
    for row in batch.table.to_dict("records"):
        flow_run_id = row["flow_run_id"] if isinstance(row["flow_run_id"], str) else None
        output = row["output_path"] if isinstance(row["output_path"], str) else None
        error = row["error"] if isinstance(row["error"], str) else None
        rows.append(
            {
                "row": int(row["row"]),
                "name": row["name"],
                "status": row["status"],
                "failed_step": row["failed_step"] if isinstance(row["failed_step"], str) else None,
                "billed_usd": _round(float(row["cost_usd"]), 4),
                "cache_hits": f"{row['cache_hits']}/{row['steps']}",
                "flow_run": f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"
                if ui and flow_run_id
                else flow_run_id,
                "output": Path(output).resolve().as_uri() if output else None,
                "error": redact(error.splitlines()[0][:300]) if error else None,
            }
        )
    return rows


async def publish_batch_artifacts(batch: BatchResult) -> None:
    """The batch's table (a row per input row, with links) and its contact sheet, in the current flow run."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url if get_current_settings().api.url else None
    done = int((batch.table["status"] == str(Status.COMPLETED)).sum())
    about = f"batch {batch.batch_id}: {done} of {len(batch.table)} rows completed"
    work = [
        acreate_table_artifact(
            table=batch_rows(batch, ui),
            key=artifact_key(batch.pipeline, "batch"),
            description=f"Rows of {about}",
        )
    ]
    sheet = batch.contact_sheet
    if sheet is not None and sheet.is_file():
        uri = await _picture(sheet, SHEET_SIDE)
        if uri is not None:
            key = artifact_key(batch.pipeline, "batch-contact-sheet")
            work.append(acreate_image_artifact(image_url=uri, key=key, description=f"Final cuts of {about}"))
    await asyncio.gather(*work)


class ProgressPublisher:
    """The run's progress artifact: created when its steps start, updated as they finish.

    Give :meth:`start` and :meth:`finished` to the engine as ``RunHooks.on_steps`` /
    ``on_finish`` (they are plain callbacks, called on the flow's event loop) and await
    :meth:`close` when the run is over. At most one API call is in flight and calls are at least
    ``interval`` seconds apart (the end of the run is sent at once): step executions that finish
    meanwhile are sent together in the next, so a 200-step run at full speed makes a handful of
    calls, not 200 the local server must write. A failing call is logged, never raised.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._closing = asyncio.Event()
        self.key: str | None = None
        self.artifact_id: UUID | None = None
        self.total = 0
        self.done = 0
        self.cached = 0
        self.failed = 0
        self._sent: tuple[float, str] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._final = False

    @property
    def percent(self) -> float:
        """The share of step executions finished, 0 to 100 (100 once the run has ended)."""
        if self._final:
            return 100.0
        return round(min(100.0, 100.0 * self.done / self.total), 1) if self.total else 0.0

    @property
    def description(self) -> str:
        counts = f"{self.done} of {self.total} step runs done ({self.cached} cached, {self.failed} failed)"
        return f"Run over: {counts}" if self._final else counts

    def start(self, pipeline: str, total: int) -> None:
        """The steps are about to start: create the artifact (``RunHooks.on_steps``)."""
        self.key, self.total = artifact_key(pipeline, "progress"), total
        self._wake()

    def finished(self, record: StepRecord) -> None:
        """One step execution ended (``RunHooks.on_finish``)."""
        self.done += 1
        self.cached += record.status == Status.CACHED
        self.failed += record.status in (Status.FAILED, Status.SKIPPED, Status.INTERRUPTED)
        self._wake()

    async def close(self) -> None:
        """The run is over: send 100 and wait for the last call (nothing is left running)."""
        if self.key is None:
            return
        self._final = True
        self._closing.set()
        self._wake()
        if self._sender is not None:
            await self._sender

    def _wake(self) -> None:
        if self.key is not None and (self._sender is None or self._sender.done()):
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while (wanted := (self.percent, self.description)) != self._sent:
            try:
                if self.artifact_id is None:
                    self.artifact_id = await acreate_progress_artifact(
                        wanted[0], key=self.key, description=wanted[1]
                    )
                else:
                    await aupdate_progress_artifact(self.artifact_id, wanted[0], description=wanted[1])
            except Exception:  # cosmetic: the run goes on without its progress bar
                logger.warning("could not publish the run's progress to Prefect", exc_info=True)
                self.key = None
                return
            self._sent = wanted
            if not self._final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.interval)
