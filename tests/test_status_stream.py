"""fal's status stream: COMPLETED seen at once, a cut stream falls back to polling, the cap's slot
is freed before the download. Times come from the emulator's own clock (fal's request history)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from klingflow.backends import resolve_backend
from klingflow.backends.fal import FalBackend, QueueEvent
from klingflow.cache import Store
from klingflow.emulator.faults import SLOW_FILE_SECONDS
from klingflow.engine import RunOptions, arun
from klingflow.spec import parse_pipeline

T2V = "fal-ai/kling-video/v1/standard/text-to-video"
TTS = "fal-ai/kling-video/v1/tts"


def _client(emulator) -> httpx.Client:
    """A plain HTTPS client of the emulator with its key: fal's routes seen from outside klingflow."""
    return httpx.Client(verify=emulator.ssl, headers={"Authorization": f"Key {emulator.key}"}, timeout=30)


def _history(emulator, endpoint: str) -> dict[str, dict]:
    """fal's request history of ``endpoint``, by request id (sent_at and ended_at: the emulator's clock)."""
    with _client(emulator) as client:
        answer = client.get(
            f"{emulator.base}/v1/models/requests/by-endpoint", params={"endpoint_id": endpoint, "limit": 100}
        )
    return {item["request_id"]: item for item in answer.raise_for_status().json()["items"]}


def _moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def prerendered(emulator):
    """Benchmark renders (about 0.05 s a request), so completion time is the emulator's latency."""
    with _client(emulator) as client:
        client.post(f"{emulator.base}/_emulator/config", json={"render": "prerendered"}).raise_for_status()
    yield emulator


async def test_completed_is_seen_within_a_fifth_of_a_second_of_fal_completing(prerendered, tmp_path: Path):
    """Polls 2 s apart could not do it: only the stream can tell the moment fal completes."""
    backend = FalBackend(
        resolve_backend("fal", key=prerendered.key), Store(tmp_path / "store"), poll_interval=(2.0, 2.0)
    )
    seen: dict[str, float] = {}

    def on_event(event: QueueEvent) -> None:
        if event.status == "COMPLETED":
            seen[event.request_id] = time.time()

    async def one(n: int) -> str:
        handle = await backend.submit(T2V, await backend.prepare(T2V, {"prompt": f"seen at once {n}"}))
        await backend.wait(handle, on_event=on_event)
        return handle.request_id

    try:
        ids = await asyncio.gather(*(one(n) for n in range(3)))
    finally:
        await backend.aclose()
    history = _history(prerendered, T2V)
    late = {rid: seen[rid] - _moment(history[rid]["ended_at"]) for rid in ids}
    assert all(-0.01 <= s < 0.2 for s in late.values()), late
    stats = prerendered.stats()
    assert stats["status_streams"] == 3 and stats["status_polls"] == 0, stats


async def test_a_stream_cut_mid_request_falls_back_to_polling_and_the_step_completes(
    options: RunOptions, emulator
) -> None:
    emulator.faults(script=["stream_cut"])
    spec = parse_pipeline(
        {"name": "cut", "steps": [{"id": "line", "uses": "tts", "with": {"text": "cut mid stream"}}]}
    )
    result = await arun(spec, None, options)
    [row] = result.records
    assert row.status == "completed" and row.outputs, row
    stats = emulator.stats()
    assert stats["status_streams_cut"] == 1 and stats["status_polls"] >= 1, stats
    assert stats["total_submits"] == 1 and stats["submits"] == {TTS: 1}, "no extra submit"


async def test_the_next_submit_does_not_wait_for_the_download(options: RunOptions, emulator) -> None:
    """Cap 1, two steps; the first one's output file is slow to arrive. The second request reaches
    fal before that download ends, i.e. the cap's slot was freed when fal completed the first."""
    emulator.faults(script=[f"slow_file@{TTS}"])
    steps = [{"id": f"line{n}", "uses": "tts", "with": {"text": f"slot freed {n}"}} for n in range(2)]
    result = await arun(
        parse_pipeline({"name": "slot", "steps": steps}), None, options.model_copy(update={"concurrency": 1})
    )
    assert [r.status for r in result.records] == ["completed", "completed"], result.records
    first, second = sorted(_history(emulator, TTS).values(), key=lambda item: item["sent_at"])[-2:]
    gap = _moment(second["sent_at"]) - _moment(first["ended_at"])
    assert gap < SLOW_FILE_SECONDS / 2, (gap, first, second)
    assert emulator.stats()["faults_injected"] == {"slow_file": 1}


async def test_more_streams_than_an_httpx_pool_holds_keep_nothing_else_waiting(emulator, tmp_path: Path):
    """A stream holds its connection for its request's whole life, and httpx's default pool has 100.
    With 101 requests followed at once (stuck at fal), every stream is open, and one more request
    is still submitted, followed and seen COMPLETED at once: no call waits for a connection."""
    held = 101
    emulator.faults(script=["stuck"] * held)
    backend = FalBackend(resolve_backend("fal", key=emulator.key), Store(tmp_path / "store"))
    waits: list[asyncio.Task] = []
    try:

        async def submitted(n: int):
            return await backend.submit(T2V, await backend.prepare(T2V, {"prompt": f"held {n}"}))

        handles = await asyncio.gather(*(submitted(n) for n in range(held)))
        waits += [asyncio.create_task(backend.wait(handle)) for handle in handles]
        deadline = time.monotonic() + 30
        while emulator.stats()["status_streams"] < held:
            assert time.monotonic() < deadline, f"{emulator.stats()['status_streams']} of {held} streams open"
            await asyncio.sleep(0.2)
        seen: list[float] = []

        def on_event(event: QueueEvent) -> None:
            if event.status == "COMPLETED":
                seen.append(time.time())

        async def one_more() -> str:
            handle = await backend.submit(T2V, await backend.prepare(T2V, {"prompt": "not held back"}))
            await backend.wait(handle, on_event=on_event)
            return handle.request_id

        request_id = await asyncio.wait_for(one_more(), timeout=20)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await backend.aclose()
    late = seen[0] - _moment(_history(emulator, T2V)[request_id]["ended_at"])
    assert -0.01 <= late < 0.2, late
    assert emulator.stats()["status_polls"] == 0


def test_the_stream_answers_the_status_json_as_server_sent_events(emulator) -> None:
    """What fal-js's streamStatus reads: text/event-stream, one ``data:`` JSON per change, ending with
    COMPLETED, each event's log lines new; a new GET of a completed request is one COMPLETED event."""
    with _client(emulator) as client:
        submitted = client.post(f"{emulator.base}/{TTS}", json={"text": "streamed"}).raise_for_status()
        url = f"{emulator.base}/fal-ai/kling-video/requests/{submitted.json()['request_id']}/status/stream"

        def events() -> list[dict]:
            with client.stream("GET", url, params={"logs": "1"}) as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
            return [json.loads(line.removeprefix("data: ")) for line in lines]

        first, again = events(), events()
    assert first[-1]["status"] == "COMPLETED", first
    assert {e["status"] for e in first[:-1]} <= {"IN_QUEUE", "IN_PROGRESS"}, first
    lines = [line["message"] for e in first for line in e.get("logs") or []]
    assert len(lines) == len(set(lines)) and lines[-1] == "Done: output uploaded", lines
    assert [e["status"] for e in again] == ["COMPLETED"] and len(again[0]["logs"]) == len(lines), again
