"""Running the media operations of a pipeline (concat, last_frame, mux_audio, contact_sheet).

They run locally with ffmpeg on stored files, and are cached exactly like generations: the key is
the operation, its parameters and the content sha256 of every input file; the result goes into
the content-addressed store and the journal, and a hit is verified by re-hashing. Their ledger
rows say backend "local" and cost 0.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from klingflow import media
from klingflow.cache import OutputRecord, media_digest, operation_key
from klingflow.engine.context import Logger, StepContext, describe_output, shown_arguments
from klingflow.errors import KlingflowError, StepFailed
from klingflow.ledger import Status, StepRecord
from klingflow.spec import OPERATIONS

__all__ = ["operation_key_for", "operation_output", "run_operation"]

_SUFFIXES = {"video": ".mp4", "image": ".png", "audio": ".m4a"}
"""The file format each operation writes, by the kind of media it produces."""


def operation_output(operation: str) -> str:
    """The kind of media an operation produces (from the spec's operation table)."""
    return next(iter(OPERATIONS[operation].produces.values()))


def _keyed(value: Any, ctx: StepContext) -> Any:
    if isinstance(value, Path):
        return media_digest(value, ctx.store)
    if isinstance(value, dict):
        return {k: _keyed(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_keyed(v, ctx) for v in value]
    return value


def operation_key_for(ctx: StepContext, operation: str, arguments: dict[str, Any]) -> str:
    """Cache key of a media operation: its parameters with every input file keyed by content."""
    return operation_key(operation, _keyed(arguments, ctx))


def _flatten(values: Any) -> list[Path]:
    items = values if isinstance(values, list) else [values]
    flat: list[Path] = []
    for item in items:
        flat.extend(_flatten(item) if isinstance(item, list) else [Path(item)])
    return flat


def _execute(operation: str, arguments: dict[str, Any], labels: list[str], out: Path, context: str) -> None:
    if operation == "concat":
        target = media.ConcatTarget(**arguments["target"]) if arguments.get("target") else None
        transition = media.Transition(**arguments["transition"]) if arguments.get("transition") else None
        media.concat(
            _flatten(arguments["inputs"]), out, target=target, transition=transition, context=context
        )
    elif operation == "last_frame":
        media.last_frame(Path(arguments["video"]), out, context=context)
    elif operation == "mux_audio":
        media.mux_audio(
            Path(arguments["video"]),
            Path(arguments["audio"]),
            out,
            mode=arguments.get("mode", "replace"),
            fit=arguments.get("fit", "trim"),
            context=context,
        )
    else:
        videos = _flatten(arguments["inputs"])
        names = labels if len(labels) == len(videos) else [f"clip {i + 1}" for i in range(len(videos))]
        media.contact_sheet(list(zip(names, videos, strict=True)), out, context=context)


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
    kind = operation_output(operation)
    suffix = _SUFFIXES[kind]
    record = StepRecord(
        step_id=step_id,
        item_index=item_index,
        kind="operation",
        endpoint=operation,
        backend="local",
        arguments=shown_arguments(_keyed(arguments, ctx)),
        started_at=datetime.now(UTC),
        attempts=1,
    )
    context = f"step '{step_id}'"
    try:
        key = record.cache_key = operation_key_for(ctx, operation, arguments)
    except OSError as exc:
        record.status, record.error = Status.FAILED, f"cannot read an input of {context}: {exc}"
        raise StepFailed(record) from exc
    regenerate = refresh or ctx.refresh or not use_cache
    lookup = await ctx.alook_up(key, regenerate=regenerate)
    if lookup.state == "cached":
        await asyncio.to_thread(ctx.fill_cached, lookup, record, {kind: kind})
        record.finished_at = datetime.now(UTC)
        return record
    if lookup.entry is not None:
        if not regenerate:
            log(f"{step_id}: stored output is missing or corrupt; making it again (local, free)")
        ctx.journal.forget(key)
    with tempfile.TemporaryDirectory(dir=ctx.store.tmp) as scratch:
        out = Path(scratch) / f"{step_id}{suffix}"
        try:
            await asyncio.to_thread(_execute, operation, arguments, labels or [], out, context)
            stored = ctx.store.put_file(out)
        except KlingflowError as exc:
            record.status, record.error = Status.FAILED, str(exc)
            raise StepFailed(record) from exc
    describe_output(record, stored, kind)
    ctx.journal.record_done(
        key,
        endpoint=operation,
        backend="local",
        request_id=None,
        outputs={kind: OutputRecord(sha256=stored.sha256, suffix=suffix, bytes=stored.bytes)},
        values={"duration": record.duration_s},
    )
    record.finished_at = datetime.now(UTC)
    return record
