"""Running the media operations of a pipeline (concat, last_frame, mux_audio, captions, contact_sheet).

They run locally with ffmpeg on stored files, and are cached exactly like generations: the key is
the operation, the outputs it writes, its parameters and the content sha256 of every input file;
the result goes into the content-addressed store and the journal, and a hit is verified by
re-hashing. Their ledger rows say backend "local" and cost 0.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from klingflow import media
from klingflow.cache import CACHE_VERSION, OutputRecord, StoredFile, media_digest, operation_key
from klingflow.engine.context import Logger, StepContext, describe_output, shown_arguments
from klingflow.errors import KlingflowError, StepFailed
from klingflow.ledger import Status, StepRecord
from klingflow.spec import OPERATIONS

__all__ = ["operation_key_for", "operation_outputs", "run_operation", "shown_operation_arguments"]

_SUFFIXES = {"video": ".mp4", "image": ".png", "audio": ".m4a", "subtitles": ".srt"}
"""The file format each operation writes, by the kind of media it produces..."""

_NAMED_SUFFIXES = {"webvtt": ".vtt"}
"""...unless the output's name says another (captions write one kind in two formats)."""


def _suffix(name: str, kind: str) -> str:
    return _NAMED_SUFFIXES.get(name, _SUFFIXES[kind])


def operation_outputs(files: dict[str, StoredFile], values: dict[str, Any]) -> dict[str, Any]:
    """What an operation gives the steps after it: each stored file by output name, and its duration."""
    return {**{name: stored.path for name, stored in files.items()}, "duration": values.get("duration")}


def _keyed(value: Any, ctx: StepContext) -> Any:
    if isinstance(value, Path):
        return media_digest(value, ctx.store)
    if isinstance(value, dict):
        return {k: _keyed(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_keyed(v, ctx) for v in value]
    return value


def shown_operation_arguments(ctx: StepContext, arguments: dict[str, Any]) -> str:
    """An operation's arguments as its ledger row shows them: every input file by its content digest."""
    return shown_arguments(_keyed(arguments, ctx))


def operation_key_for(ctx: StepContext, operation: str, arguments: dict[str, Any]) -> str:
    """Cache key of a media operation: its parameters with every input file keyed by content, and
    the names of its outputs, so a result stored before the operation wrote another output (concat's
    subtitles) is made again instead of reused without it."""
    writes = sorted(OPERATIONS[operation].produces)
    return operation_key(operation, {"with": _keyed(arguments, ctx), "writes": writes})


def _flatten(values: Any) -> list[Path]:
    items = values if isinstance(values, list) else [values]
    flat: list[Path] = []
    for item in items:
        flat.extend(_flatten(item) if isinstance(item, list) else [Path(item)])
    return flat


def _execute(
    operation: str, arguments: dict[str, Any], labels: list[str], outs: dict[str, Path], context: str
) -> None:
    """Write every output of ``operation`` to its path in ``outs`` (by output name)."""
    if operation == "concat":
        target = media.ConcatTarget(**arguments["target"]) if arguments.get("target") else None
        transition = media.Transition(**arguments["transition"]) if arguments.get("transition") else None
        videos = _flatten(arguments["inputs"])
        media.concat(
            videos,
            outs["video"],
            target=target,
            transition=transition,
            srt=outs["subtitles"],
            vtt=outs["webvtt"],
            context=context,
        )
    elif operation == "last_frame":
        media.last_frame(Path(arguments["video"]), outs["image"], context=context)
    elif operation == "mux_audio":
        media.mux_audio(
            Path(arguments["video"]),
            Path(arguments["audio"]),
            outs["video"],
            mode=arguments.get("mode", "replace"),
            fit=arguments.get("fit", "trim"),
            context=context,
        )
    elif operation == "captions":
        media.add_captions(
            arguments["text"],
            Path(arguments["audio"]),
            Path(arguments["video"]),
            outs["video"],
            outs["subtitles"],
            outs["webvtt"],
            burn=bool(arguments.get("burn", False)),
            context=context,
        )
    elif operation == "contact_sheet":
        videos = _flatten(arguments["inputs"])
        names = labels if len(labels) == len(videos) else [f"clip {i + 1}" for i in range(len(videos))]
        media.contact_sheet(list(zip(names, videos, strict=True)), outs["image"], context=context)
    else:
        # The spec refuses unknown names, so this is an operation of the table that nobody taught
        # the engine: say so instead of making some other operation's output.
        raise KlingflowError(
            f"operation {operation!r} has no implementation in klingflow.engine.operation", context=context
        )


async def run_operation(
    ctx: StepContext,
    *,
    step_id: str,
    operation: str,
    arguments: dict[str, Any],
    labels: list[str] | None = None,
    item_index: int | None = None,
    use_cache: bool = True,
    refresh: bool = False,
    log: Logger = print,
) -> StepRecord:
    """Run (or reuse) one media operation on local files; raise StepFailed on error."""
    produces, optional = OPERATIONS[operation].produces, OPERATIONS[operation].optional
    record = StepRecord(
        step_id=step_id,
        item_index=item_index,
        kind="operation",
        endpoint=operation,
        backend="local",
        arguments=shown_operation_arguments(ctx, arguments),
        started_at=datetime.now(UTC),
        attempts=1,
    )
    context = f"step '{step_id}'"
    try:
        key = record.cache_key = operation_key_for(ctx, operation, arguments)
        record.cache_version = CACHE_VERSION
    except OSError as exc:
        record.status, record.error = Status.FAILED, f"cannot read an input of {context}: {exc}"
        raise StepFailed(record) from exc
    regenerate = refresh or ctx.refresh or not use_cache
    lookup = await ctx.alook_up(key, regenerate=regenerate)
    if lookup.state == "cached":
        await asyncio.to_thread(ctx.fill_cached, lookup, record, produces)
        record.finished_at = datetime.now(UTC)
        return record
    if lookup.entry is not None:
        if not regenerate:
            log(f"{step_id}: stored output is missing or corrupt; making it again (local, free)")
        ctx.journal.forget(key)
    with tempfile.TemporaryDirectory(dir=ctx.store.tmp) as scratch:
        outs = {name: Path(scratch) / f"{step_id}{_suffix(name, kind)}" for name, kind in produces.items()}
        try:
            await asyncio.to_thread(_execute, operation, arguments, labels or [], outs, context)
            files = {
                name: ctx.store.put_file(out)
                for name, out in outs.items()
                if name not in optional or out.is_file()
            }
        except KlingflowError as exc:
            record.status, record.error = Status.FAILED, str(exc)
            raise StepFailed(record) from exc
    for name, stored in files.items():
        await asyncio.to_thread(describe_output, record, stored, produces[name])
    values = {"duration": record.duration_s}
    record.outputs = {**record.outputs, **operation_outputs(files, values)}
    ctx.journal.record_done(
        key,
        endpoint=operation,
        backend="local",
        request_id=None,
        outputs={
            name: OutputRecord(sha256=stored.sha256, suffix=_suffix(name, produces[name]), bytes=stored.bytes)
            for name, stored in files.items()
        },
        values=values,
    )
    record.finished_at = datetime.now(UTC)
    return record
