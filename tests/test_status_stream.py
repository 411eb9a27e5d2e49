"""fal's status stream, as the emulator serves it (what fal-js's streaming mode reads)."""

from __future__ import annotations

import json

import httpx

TTS = "fal-ai/kling-video/v1/tts"


def _client(emulator) -> httpx.Client:
    """A plain HTTPS client of the emulator with its key: fal's routes seen from outside klingflow."""
    return httpx.Client(verify=emulator.ssl, headers={"Authorization": f"Key {emulator.key}"}, timeout=30)


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
