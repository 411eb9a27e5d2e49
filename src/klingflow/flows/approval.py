"""Approval gates in Prefect: the flow run pauses with a typed form until someone decides.

Where no person sits at this process's terminal (a deployment on a worker, a run started from
the Prefect UI, a Python call without a terminal), a step that waits for approval pauses its flow
run with Prefect's own ``pause_flow_run(wait_for_input=ApprovalInput)``. Prefect stores the form's
JSON Schema with the pause; its UI draws the form on the flow run's Resume button, and its server
validates every resume against it, so a resume that does not say ``approved`` (true or false: the
field has no default) is refused. ``klingflow approve RUN_ID`` sends the same form from a shell
(:func:`resume`). Before pausing, the flow run gets an artifact with what to decide on (the
pictures of what the step reads, its prompt, its cost) and the tags ``klingflow-approval``,
``klingflow-batch:<id>`` and ``klingflow-row:<key>`` (for a batch's row), which is how
``klingflow approve --batch`` finds every row that waits. A batch's rows pause in the batch's own
process, so each row that pauses also publishes ``klingflow-<pipeline>-approvals``: one picture
of every row of the batch waiting at that moment, a tile each (its first picture, under its flow
run's name), so a person can look at them all before ``klingflow approve --batch ID --all``.

The wait's timeout is klingflow's own (the gate's ``timeout``); Prefect's pause is given a minute
more, so it is klingflow that ends it: on a timeout the flow run is set Running again (the
steps of other branches wait while it is Paused), and the gate's ``on_timeout`` decides.
"""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import Any
from uuid import UUID

from PIL import Image, ImageDraw, ImageFont
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.context import FlowRunContext
from prefect.flow_runs import apause_flow_run
from prefect.input import RunInput
from prefect.states import Running
from pydantic import Field

from klingflow.engine import ApprovalDecision, ApprovalRequest, Asker, has_terminal
from klingflow.engine.approval import now
from klingflow.errors import ConfigError
from klingflow.flows.artifacts import artifact_key, jpeg_data_uri, picture_data_uri, picture_of

__all__ = [
    "APPROVAL_TAG",
    "ApprovalInput",
    "batch_tag",
    "flow_asker",
    "pause_for_approval",
    "resume",
    "waiting_flow_runs",
]

APPROVAL_TAG = "klingflow-approval"
"""The tag of a flow run that paused (now or once) for an approval."""

POLL_SECONDS = 2
"""How often a paused run asks the server whether it was resumed (Prefect's default is 10 s)."""

_PREFECT_MARGIN = 60
_PICTURES = 6
_PICTURE_SIDE = 320
_TILE, _LABEL, _COLUMNS = 240, 28, 5
_PAGE = 200

_WAITING: dict[str, dict[str, tuple[str, Path | None]]] = {}
"""Per batch id, the rows of this process waiting now: row key -> (flow run name, first picture)."""


class ApprovalInput(RunInput):
    """The form of a paused approval: the Prefect UI's Resume form and ``klingflow approve``'s answer.

    ``approved`` has no default, so the server refuses a resume that does not decide. The texts
    default to "" rather than None: the UI draws a plain text box for a string, where an optional
    one becomes a choice between "str" and "None" before anyone can type.
    """

    approved: bool = Field(
        title="Approve",
        description="On: the step runs and is paid for. Off: it and the steps after it are skipped.",
    )
    note: str = Field("", description="Why (kept in the ledger).")
    prompt: str = Field("", description="Send this prompt instead of the pipeline's (when approving).")
    approver: str = Field("", description="Who decides (kept in the ledger).")


def batch_tag(batch_id: str) -> str:
    """The tag of every row flow run of batch ``batch_id`` that paused for an approval."""
    return f"klingflow-batch:{batch_id}"


def _markdown(request: ApprovalRequest) -> str:
    lines = [f"## {request.lines()[0]}", ""]
    lines += [f"- {line.strip()}" for line in request.lines()[1:]]
    lines += ["", "Resume this flow run with **Approve** on or off, or from a shell:", ""]
    run = request.run_id or "RUN_ID"
    lines += ["```", f"klingflow approve {run}", f"klingflow approve {run} --reject --note '...'", "```", ""]
    for name, path in request.inputs[:_PICTURES]:
        try:
            uri = picture_data_uri(path, _PICTURE_SIDE)
        except Exception:  # cosmetic: an input that is not a picture (audio) is named above
            continue
        lines += [f"**{name}** `{path.name}`", "", f"![{name}]({uri})", ""]
    return "\n".join(lines)


async def pause_for_approval(request: ApprovalRequest) -> ApprovalDecision:
    """Pause the current flow run until its form is sent; the decision it carries."""
    from prefect.artifacts import acreate_markdown_artifact

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise ConfigError(
            f"step '{request.step_id}' waits for approval, but there is no terminal and no flow run to pause",
            hint="--yes approves unattended",
        )
    flow_run_id = context.flow_run.id
    tags = {APPROVAL_TAG, *context.flow_run.tags}
    if request.batch_id:
        tags.add(batch_tag(request.batch_id))
    if request.row_key:
        tags.add(f"klingflow-row:{request.row_key}")
    markdown = await asyncio.to_thread(_markdown, request)
    async with get_client() as client:
        await client.update_flow_run(flow_run_id, tags=sorted(tags))
    await acreate_markdown_artifact(
        markdown=markdown,
        key=artifact_key(request.pipeline, "approval"),
        description=f"What step '{request.step_id}' waits for",
    )
    if request.batch_id:
        first = next((path for _, path in request.inputs if path.suffix.lower() != ".mp3"), None)
        waiting = _WAITING.setdefault(request.batch_id, {})
        waiting[request.row_key or str(flow_run_id)] = (context.flow_run.name, first)
        await _publish_waiting(request.pipeline, request.batch_id)
    try:
        answer = await apause_flow_run(
            wait_for_input=ApprovalInput,
            timeout=int(request.spec.timeout) + _PREFECT_MARGIN,
            poll_interval=POLL_SECONDS,
            key=f"approve-{request.step_id.replace('_', '-')}",  # Prefect's keys: a-z, 0-9 and dashes
        )
    except asyncio.CancelledError:
        await asyncio.shield(_running_again(flow_run_id))  # a timeout or a stop: not Paused any more
        raise
    finally:
        _WAITING.get(request.batch_id or "", {}).pop(request.row_key or str(flow_run_id), None)
    return ApprovalDecision(
        approved=answer.approved,
        by=answer.approver or "the Prefect UI or API",
        at=now(),
        note=answer.note or None,
        prompt=(answer.prompt or None) if answer.approved else None,
    )


def _waiting_sheet(rows: list[tuple[str, Path | None]]) -> Image.Image:
    """A tile per waiting row: its first picture (blank if it reads none) over its name."""
    columns = min(_COLUMNS, len(rows))
    lines = -(-len(rows) // columns)
    sheet = Image.new("RGB", (columns * _TILE, lines * (_TILE + _LABEL)), (24, 24, 24))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=14)
    for index, (name, path) in enumerate(rows):
        x, y = (index % columns) * _TILE, (index // columns) * (_TILE + _LABEL)
        if path is not None:
            try:
                picture = picture_of(path, _TILE - 8)
                sheet.paste(picture, (x + (_TILE - picture.width) // 2, y + (_TILE - picture.height) // 2))
            except Exception:  # cosmetic: the tile stays blank, its name still says which row
                pass
        draw.text((x + 4, y + _TILE + 6), name[-32:], font=font, fill=(230, 230, 230))
    return sheet


async def _publish_waiting(pipeline: str, batch_id: str) -> None:
    """The picture of every row of the batch that waits now, as the batch's approvals artifact."""
    from prefect.artifacts import acreate_image_artifact

    rows = sorted(_WAITING.get(batch_id, {}).values(), key=lambda row: row[0])
    if not rows:
        return
    uri = jpeg_data_uri(await asyncio.to_thread(_waiting_sheet, rows))
    await acreate_image_artifact(
        image_url=uri,
        key=artifact_key(pipeline, "approvals"),
        description=f"{len(rows)} row(s) of batch {batch_id} waiting for approval: "
        f"`klingflow approve --batch {batch_id} --all`",
    )


async def _running_again(flow_run_id: UUID) -> None:
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_paused():
            await client.set_flow_run_state(flow_run_id, Running(), force=True)


def flow_asker(given: Asker | None) -> Asker | None:
    """Who a flow run's gates ask: the caller's asker; else, on a terminal outside a deployment,
    the engine's terminal prompt (None); else the paused flow run's form."""
    if given is not None:
        return given
    context = FlowRunContext.get()
    deployed = context is not None and context.flow_run is not None and context.flow_run.deployment_id
    if has_terminal() and not deployed:
        return None
    return pause_for_approval


async def waiting_flow_runs(*, batch: str | None = None, flow_run: str | None = None) -> list[FlowRun]:
    """The Paused flow runs that wait for an approval: one by id, or a batch's rows.

    ``batch`` is a klingflow batch id (its rows are tagged with it) or the batch's own flow run id
    (its rows are its child flow runs).
    """
    paused = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    filters: list[FlowRunFilter] = []
    if flow_run is not None:
        filters.append(FlowRunFilter(id=FlowRunFilterId(any_=[_uuid(flow_run)]), state=paused))
    if batch is not None:
        filters.append(FlowRunFilter(tags=FlowRunFilterTags(all_=[batch_tag(batch)]), state=paused))
        parent = _maybe_uuid(batch)
        if parent is not None:
            filters.append(
                FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]), state=paused)
            )
    found: dict[UUID, FlowRun] = {}
    async with get_client() as client:
        for one in filters:
            offset = 0
            while True:  # the server answers at most 200 at a time
                page = await client.read_flow_runs(flow_run_filter=one, limit=_PAGE, offset=offset)
                for run in page:
                    found.setdefault(run.id, run)
                if len(page) < _PAGE:
                    break
                offset += _PAGE
    return sorted(found.values(), key=lambda run: run.name)


def _maybe_uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _uuid(text: str) -> UUID:
    value = _maybe_uuid(text)
    if value is None:
        raise ConfigError(f"{text!r} is not a flow run id", hint="a run's id, as `klingflow run` prints it")
    return value


async def resume(
    flow_run_id: UUID,
    *,
    approved: bool,
    note: str | None = None,
    prompt: str | None = None,
    approver: str | None = None,
) -> None:
    """Send a paused flow run its approval form; a refusal is a ConfigError with the server's reason."""
    answer: dict[str, Any] = {"approved": approved, "approver": approver or getpass.getuser()}
    if note:
        answer["note"] = note
    if prompt:
        answer["prompt"] = prompt
    async with get_client() as client:
        result = await client.resume_flow_run(flow_run_id, run_input=answer)
    if result.status != SetStateStatus.ACCEPT:
        reason = getattr(result.details, "reason", None) or result.status.value
        raise ConfigError(f"flow run {flow_run_id} was not resumed: {reason}", context=str(flow_run_id))
