"""The emulator behaves as fal's docs say fal behaves (docs/emulator.md lists each behaviour).

Everything runs over real HTTPS: raw httpx where the HTTP shape is the point, the unmodified
fal_client where the client's own handling is (uploads, retries, status parsing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fal_client
import httpx
import pytest

from conftest import CLIENT_VARIABLES, EmulatorAdmin, emulator_stats, serve_emulator
from klingflow.emulator.options import EmulatorOptions
from klingflow.emulator.server import EmulatorServer
from klingflow.errors import ConfigError
from klingflow.media import probe

T2V = "fal-ai/kling-video/v1/standard/text-to-video"
TTS = "fal-ai/kling-video/v1/tts"
AVATAR = "fal-ai/kling-video/v1/standard/ai-avatar"


class Raw:
    """Raw HTTPS calls to an emulator, with its key."""

    def __init__(self, base: str, key: str, verify: ssl.SSLContext, run_base: str | None = None) -> None:
        self.base, self.run_base = base, run_base
        self.client = httpx.Client(
            verify=verify, headers={"Authorization": f"Key {key}"}, timeout=60, trust_env=False
        )

    def submit(self, endpoint: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return self.client.post(f"{self.base}/{endpoint}", json=body, **kwargs)

    def status(self, request_id: str) -> httpx.Response:
        return self.client.get(f"{self.base}/fal-ai/kling-video/requests/{request_id}/status?logs=1")

    def result(self, request_id: str) -> httpx.Response:
        return self.client.get(f"{self.base}/fal-ai/kling-video/requests/{request_id}")

    def cancel(self, request_id: str) -> httpx.Response:
        return self.client.put(f"{self.base}/fal-ai/kling-video/requests/{request_id}/cancel")

    def wait(self, request_id: str, timeout: float = 90) -> list[tuple[str, int]]:
        """Poll until COMPLETED; return every (status, HTTP code) seen."""
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.status(request_id)
            seen.append((response.json()["status"], response.status_code))
            if seen[-1][0] == "COMPLETED":
                return seen
            time.sleep(0.02)
        raise AssertionError(f"request {request_id} did not complete: {seen[-3:]}")

    def config(self, **changes: Any) -> dict[str, Any]:
        return self.client.post(f"{self.base}/_emulator/config", json=changes).raise_for_status().json()

    def faults(self, **plan: Any) -> None:
        self.client.post(f"{self.base}/_emulator/faults", json=plan).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self.client.get(f"{self.base}/_emulator/stats").raise_for_status().json()


@pytest.fixture
def raw(emulator: EmulatorAdmin) -> Iterator[Raw]:
    """Raw HTTP to the session emulator; its options are put back (reset) afterwards."""
    client = Raw(emulator.base, emulator.key, emulator.ssl, f"https://{emulator.server.run_host}")
    yield client
    emulator.reset()
    client.client.close()


def _download(url: str, verify: ssl.SSLContext) -> httpx.Response:
    return httpx.get(url, verify=verify, timeout=30, trust_env=False)


# --- storage: the unmodified fal_client uploads, through the tunnel `emulator env` configures ---------

UPLOADS = r"""
import asyncio, json, os, sys
import fal_client
from fal_client import client as fal_module

small, out = sys.argv[1], sys.argv[2]
urls = {"sync_file": fal_client.upload_file(small)}
urls["sync_gcs"] = fal_client.upload(
    b"storage fallback bytes", "text/plain", "fallback.txt", repository="fal"
)

async def async_uploads():
    client = fal_client.AsyncClient(key=os.environ["FAL_KEY"])
    return {
        "async_bytes": await client.upload(b"async upload bytes", "application/octet-stream"),
        "async_file": await client.upload_file(small),
    }

urls.update(asyncio.run(async_uploads()))
# Multipart is what fal_client does above 100 MB; shrinking its two size constants (not its code) makes
# the same calls (create, PUT parts, complete) happen for a 3 MB file.
fal_module.MULTIPART_THRESHOLD, fal_module.MULTIPART_CHUNK_SIZE = 1024 * 1024, 1024 * 1024
big = small + ".big"
with open(big, "wb") as handle:
    handle.write(os.urandom(3 * 1024 * 1024 + 17))
urls["sync_multipart"] = fal_client.upload_file(big)
urls["async_multipart"] = asyncio.run(fal_client.AsyncClient(key=os.environ["FAL_KEY"]).upload_file(big))

import httpx  # the Platform API, at its real host name, through the same tunnel
pricing = httpx.get(
    "https://api.fal.ai/v1/models/pricing",
    params={"endpoint_id": "fal-ai/kling-video/v1/tts"},
    headers={"Authorization": f"Key {os.environ['FAL_KEY']}"},
).json()
with open(out, "w") as handle:
    json.dump({"urls": urls, "pricing": pricing}, handle)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with serve_emulator(tmp_path_factory.mktemp("fidelity-home"), "--latency", "0.2") as env:
        yield env


@pytest.mark.slow
def test_env_points_https_proxy_at_the_tunnel(served: dict[str, str]) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", served["HTTPS_PROXY"])
    assert {"127.0.0.1", "localhost", "::1"} <= set(served["NO_PROXY"].split(","))


@pytest.mark.slow
def test_unmodified_fal_client_uploads_are_served_byte_identical(
    served: dict[str, str], tmp_path: Path
) -> None:
    verify = ssl.create_default_context(cafile=served["SSL_CERT_FILE"])
    admin = Raw(f"https://{served['FAL_QUEUE_RUN_HOST']}", served["FAL_KEY"], verify)
    admin.faults(script=["429@upload"], retry_after=0)
    small = tmp_path / "face.png"
    small.write_bytes(os.urandom(20_000))
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", UPLOADS, str(small), str(report)],
        env=served,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(report.read_text())
    urls = outcome["urls"]
    expected = {
        "sync_file": small.read_bytes(),
        "async_file": small.read_bytes(),
        "sync_gcs": b"storage fallback bytes",
        "async_bytes": b"async upload bytes",
        "sync_multipart": Path(f"{small}.big").read_bytes(),
        "async_multipart": Path(f"{small}.big").read_bytes(),
    }
    for name, data in expected.items():
        response = _download(urls[name], verify)
        assert response.status_code == 200, name
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest(), name
    assert urls["sync_file"].endswith("/face.png")
    stats = emulator_stats(served)
    assert stats["uploads"] == 6
    assert stats["storage_tokens"] >= 2  # one per client's token manager
    assert stats["upload_initiates"] == 3  # the storage fallback's initiate + two multipart creates
    assert stats["upload_parts"] == 8  # 3 MB + 17 bytes in 1 MB parts, twice
    assert stats["faults_injected"] == {"429": 1}, "the 429 on an upload was retried by fal_client"
    assert outcome["pricing"]["prices"] == [
        {"endpoint_id": TTS, "unit_price": 0.007, "unit": "request", "currency": "USD"}
    ]
    assert stats["platform_requests"] == 1, "api.fal.ai reached the emulator through the tunnel"


def test_upload_lifecycle_header_expires_the_file(emulator: EmulatorAdmin, raw: Raw) -> None:
    token = raw.client.post(f"{raw.base}/storage/auth/token?storage_type=fal-cdn-v3", json={}).json()
    headers = {
        "Authorization": f"{token['token_type']} {token['token']}",
        "Content-Type": "text/plain",
        "X-Fal-File-Name": "short-lived.txt",
        "X-Fal-Object-Lifecycle": json.dumps({"expiration_duration_seconds": 1}),
    }
    response = httpx.post(
        f"{token['base_url']}/files/upload", content=b"gone soon", headers=headers, verify=emulator.ssl
    )
    url = response.raise_for_status().json()["access_url"]
    assert _download(url, emulator.ssl).content == b"gone soon"
    time.sleep(1.3)
    assert _download(url, emulator.ssl).status_code == 404


# --- the queue: status codes, model-side validation, retention, billing -----------------------------


def test_status_answers_202_while_pending_and_200_once_completed(emulator: EmulatorAdmin, raw: Raw) -> None:
    raw.faults(script=["stuck"])
    stuck = raw.submit(T2V, {"prompt": "never starts"}).json()["request_id"]
    response = raw.status(stuck)
    assert (response.status_code, response.json()["status"]) == (202, "IN_QUEUE")
    parsed = asyncio.run(fal_client.AsyncClient(key=emulator.key).status(T2V, stuck))
    assert isinstance(parsed, fal_client.Queued), "fal_client parses a 202 status"
    raw.cancel(stuck)

    request_id = raw.submit(TTS, {"text": "status codes"}).json()["request_id"]
    seen = raw.wait(request_id)
    assert all(code == 202 for status, code in seen if status != "COMPLETED")
    assert seen[-1] == ("COMPLETED", 200)


def test_invalid_input_completes_and_its_result_answers_422(emulator: EmulatorAdmin, raw: Raw) -> None:
    bad = {"prompt": "x", "cfg_scale": 3}
    submitted = raw.submit(T2V, bad)
    assert submitted.status_code == 200, "fal accepts the submit; the model refuses the input"
    request_id = submitted.json()["request_id"]
    assert raw.wait(request_id)[-1] == ("COMPLETED", 200)
    assert "error" not in raw.status(request_id).json()
    result = raw.result(request_id)
    assert result.status_code == 422
    assert result.json()["detail"][0]["loc"] == ["body", "cfg_scale"]
    assert {"msg", "type"} <= set(result.json()["detail"][0])
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        asyncio.run(fal_client.AsyncClient(key=emulator.key).result(T2V, request_id))
    assert info.value.status_code == 422

    direct = raw.client.post(f"{raw.run_base}/{T2V}", json=bad)
    assert direct.status_code == 422 and direct.json()["detail"][0]["loc"] == ["body", "cfg_scale"]

    assert raw.config(validation="submit")["validation"] == "submit"
    refused = raw.submit(T2V, bad)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "cfg_scale"]


def test_results_expire_after_the_retention(emulator: EmulatorAdmin, raw: Raw) -> None:
    raw.config(result_retention=2)
    request_id = raw.submit(TTS, {"text": "kept for two seconds"}).json()["request_id"]
    raw.wait(request_id)
    assert raw.result(request_id).status_code == 200
    time.sleep(3)
    assert raw.result(request_id).status_code == 404
    assert raw.status(request_id).status_code == 404
    assert raw.cancel(request_id).json() == {"status": "NOT_FOUND"}


def test_output_files_expire_per_lifecycle_header(emulator: EmulatorAdmin, raw: Raw) -> None:
    lifecycle = {"X-Fal-Object-Lifecycle-Preference": json.dumps({"expiration_duration_seconds": 1})}
    request_id = raw.submit(TTS, {"text": "a short-lived file"}, headers=lifecycle).json()["request_id"]
    raw.wait(request_id)
    url = raw.result(request_id).json()["audio"]["url"]
    assert _download(url, emulator.ssl).status_code == 200
    time.sleep(1.3)
    assert _download(url, emulator.ssl).status_code == 404


def test_results_carry_billable_units(emulator: EmulatorAdmin, raw: Raw) -> None:
    video = raw.submit(T2V, {"prompt": "billable lighthouse", "duration": "5"}).json()["request_id"]
    speech = raw.submit(TTS, {"text": "billed per generation"}).json()["request_id"]
    raw.wait(video)
    raw.wait(speech)
    assert raw.result(video).headers["x-fal-billable-units"] == "5"
    assert raw.result(speech).headers["x-fal-billable-units"] == "1"
    direct = raw.client.post(f"{raw.run_base}/{TTS}", json={"text": "billed per generation"})
    assert direct.status_code == 200 and direct.headers["x-fal-billable-units"] == "1"


# --- the Platform API ---------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_request_history_lists_accepted_requests_with_payloads(emulator: EmulatorAdmin, raw: Raw) -> None:
    deadline = time.monotonic() + 30
    while raw.stats()["open"]:  # earlier tests' requests must end before the window opens
        assert time.monotonic() < deadline
        time.sleep(0.1)
    start = datetime.now(UTC)
    texts = [f"history {n} {uuid.uuid4().hex[:6]}" for n in range(3)]
    known = [raw.submit(TTS, {"text": texts[0]}).json()["request_id"]]
    raw.faults(script=["lost"])
    with pytest.raises(httpx.TransportError):
        raw.submit(TTS, {"text": texts[1]})  # accepted, but its answer never arrives
    known.append(raw.submit(TTS, {"text": texts[2]}).json()["request_id"])
    other = raw.submit(T2V, {"prompt": "x", "cfg_scale": 3}).json()["request_id"]  # another endpoint
    for request_id in [*known, other]:
        raw.wait(request_id)
    time.sleep(0.5)  # the lost one, queued between the two others, has ended too
    end = datetime.now(UTC) + timedelta(seconds=1)

    def page(**params: Any) -> dict[str, Any]:
        query = {"endpoint_id": TTS, "start": _iso(start), "end": _iso(end), "expand": "payloads", **params}
        url = f"{raw.base}/v1/models/requests/by-endpoint"
        return raw.client.get(url, params=query).raise_for_status().json()

    first = page(limit=2)
    assert len(first["items"]) == 2 and first["has_more"] and first["next_cursor"]
    second = page(limit=2, cursor=first["next_cursor"])
    assert len(second["items"]) == 1 and not second["has_more"] and second["next_cursor"] is None
    items = first["items"] + second["items"]
    ended = [item["ended_at"] for item in items]
    assert ended == sorted(ended, reverse=True), "newest first"
    assert {item["json_input"]["text"] for item in items} == set(texts)
    assert set(known) < {item["request_id"] for item in items}
    lost = next(item for item in items if item["json_input"]["text"] == texts[1])
    assert lost["request_id"] not in known and lost["status_code"] == 200
    assert lost["json_output"]["audio"]["url"].endswith(".mp3")
    assert set(lost) == {
        "request_id",
        "endpoint_id",
        "sent_at",
        "started_at",
        "ended_at",
        "status_code",
        "duration",
        "json_input",
        "json_output",
    }
    assert all(item["endpoint_id"] == TTS for item in items)
    bare = raw.client.get(
        f"{raw.base}/v1/models/requests/by-endpoint", params={"endpoint_id": T2V, "start": _iso(start)}
    ).json()
    refused = next(item for item in bare["items"] if item["request_id"] == other)
    assert refused["status_code"] == 422 and "json_input" not in refused
    before = page(end=_iso(start))
    assert before["items"] == [], "the time window filters"


def test_pricing_lists_unit_prices(raw: Raw) -> None:
    answer = raw.client.get(f"{raw.base}/v1/models/pricing", params={"endpoint_id": f"{T2V},{TTS}"}).json()
    assert answer == {
        "prices": [
            {"endpoint_id": T2V, "unit_price": 0.045, "unit": "second", "currency": "USD"},
            {"endpoint_id": TTS, "unit_price": 0.007, "unit": "request", "currency": "USD"},
        ],
        "next_cursor": None,
        "has_more": False,
    }
    assert (
        raw.client.get(f"{raw.base}/v1/models/pricing", params={"endpoint_id": "fal-ai/nope"}).status_code
        == 404
    )


# --- errors and cancellation ------------------------------------------------------------------------


def test_infrastructure_errors_carry_error_type(emulator: EmulatorAdmin, raw: Raw) -> None:
    raw.faults(script=["runner_disconnected"])
    request_id = raw.submit(TTS, {"text": "runner goes away"}).json()["request_id"]
    raw.wait(request_id)
    status = raw.status(request_id).json()
    assert status["error_type"] == "runner_disconnected" and status["error"]
    result = raw.result(request_id)
    assert result.status_code == 503
    assert result.headers["x-fal-error-type"] == "runner_disconnected"
    assert result.json() == {"detail": status["error"], "error_type": "runner_disconnected"}


async def test_ingress_errors_are_retried_by_fal_client_and_app_errors_are_not(
    emulator: EmulatorAdmin, raw: Raw
) -> None:
    client = fal_client.AsyncClient(key=emulator.key)
    raw.faults(script=["ingress-503"])
    handle = await client.submit(TTS, {"text": "through a flaky ingress"})
    assert handle.request_id
    assert raw.stats()["submits"][TTS] == 2, "fal_client resent the submit itself"
    raw.faults(script=["503"])
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        await client.submit(TTS, {"text": "the app failed"})
    assert info.value.status_code == 503 and "x-fal-request-id" in info.value.response_headers
    assert raw.stats()["faults_injected"] == {"ingress-503": 1, "503": 1}


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[Raw]:
    """A private emulator whose requests run for seconds, so one can be caught IN_PROGRESS."""
    server = EmulatorServer(port=0, latency=4, workers=1, fetch_remote=False, home=tmp_path)
    server.start_in_thread()
    verify = ssl.create_default_context(cafile=str(server.identity.ca_bundle))
    try:
        yield Raw(f"https://{server.queue_host}", server.identity.key, verify)
    finally:
        server.stop()


def test_cancel_answers(slow_server: Raw) -> None:
    raw = slow_server
    running = raw.submit(TTS, {"text": "running"}).json()["request_id"]
    queued = raw.submit(TTS, {"text": "queued behind it"}).json()["request_id"]
    deadline = time.monotonic() + 10
    while raw.status(running).json()["status"] != "IN_PROGRESS":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answer = raw.cancel(queued)
    assert (answer.status_code, answer.json()) == (200, {"status": "OK"})
    answer = raw.cancel(running)
    assert (answer.status_code, answer.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    raw.wait(running)
    assert raw.status(running).json()["error_type"] == "client_cancelled"
    result = raw.result(running)
    assert result.status_code == 499 and result.headers["x-fal-error-type"] == "client_cancelled"
    answer = raw.cancel(running)
    assert (answer.status_code, answer.json()) == (400, {"status": "ALREADY_COMPLETED"})
    answer = raw.cancel(str(uuid.uuid4()))
    assert (answer.status_code, answer.json()) == (404, {"status": "NOT_FOUND"})


# --- webhooks -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that records JSON POSTs (answering 500 to the first ``fail_first``)."""
    received: list[dict[str, Any]] = []
    failures = [fail_first]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if failures[0] > 0:
                failures[0] -= 1
                self.send_response(500)
            else:
                received.append({"body": json.loads(body), "headers": dict(self.headers)})
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _wait_for(received: list[dict[str, Any]], count: int) -> None:
    deadline = time.monotonic() + 30
    while len(received) < count:
        assert time.monotonic() < deadline, f"only {len(received)} webhook(s) arrived"
        time.sleep(0.05)


def test_webhooks_deliver_fal_payloads(emulator: EmulatorAdmin, raw: Raw) -> None:
    raw.config(webhook_backoff=0.05)
    with webhook_receiver(fail_first=1) as (url, received):
        ok = raw.submit(TTS, {"text": "webhook success"}, params={"fal_webhook": url}).json()
        assert ok["gateway_request_id"] == ok["request_id"]
        _wait_for(received, 1)
        raw.faults(script=["error"])
        failed = raw.submit(TTS, {"text": "webhook failure"}, params={"fal_webhook": url}).json()
        invalid = raw.submit(T2V, {"prompt": "x", "cfg_scale": 3}, params={"fal_webhook": url}).json()
        _wait_for(received, 3)
    bodies = {item["body"]["request_id"]: item["body"] for item in received}
    success = bodies[ok["request_id"]]
    assert success["status"] == "OK" and success["error"] is None and success["payload_error"] is None
    assert success["gateway_request_id"] == ok["request_id"]
    assert success["payload"] == raw.result(ok["request_id"]).json()
    failure = bodies[failed["request_id"]]
    assert failure["status"] == "ERROR" and failure["error"] == "Invalid status code: 500"
    assert failure["payload"]["error_type"] == "runner_server_error"
    refused = bodies[invalid["request_id"]]
    assert refused["error"] == "Invalid status code: 422"
    assert refused["payload"]["detail"][0]["loc"] == ["body", "cfg_scale"]
    headers = {k.lower(): v for k, v in received[0]["headers"].items()}
    assert headers["x-fal-webhook-request-id"] == ok["request_id"]
    assert raw.stats()["webhooks"] == {"attempts": 4, "delivered": 3}, "the first delivery was retried"


# --- benchmark mode -----------------------------------------------------------------------------------


def _output(raw: Raw, request_id: str, field: str, tmp_path: Path, verify: ssl.SSLContext) -> Path:
    raw.wait(request_id)
    result = raw.result(request_id)
    assert result.status_code == 200, result.text
    file = result.json()[field]
    data = _download(file["url"], verify).content
    assert len(data) == file["file_size"]
    path = tmp_path / f"{request_id}{Path(file['file_name']).suffix}"
    path.write_bytes(data)
    return path


@pytest.mark.slow
def test_benchmark_mode_gives_distinct_valid_files(emulator: EmulatorAdmin, raw: Raw, tmp_path: Path) -> None:
    raw.config(render="prerendered")
    renders = raw.stats()["prerendered_stock_renders"]
    same = {"prompt": "benchmark fox", "duration": "10", "aspect_ratio": "9:16"}
    videos = [raw.submit(T2V, same).json()["request_id"] for _ in range(2)]
    speech = [raw.submit(TTS, {"text": "benchmark speech, twice"}).json()["request_id"] for _ in range(2)]
    clips = [_output(raw, request_id, "video", tmp_path, emulator.ssl) for request_id in videos]
    sounds = [_output(raw, request_id, "audio", tmp_path, emulator.ssl) for request_id in speech]
    for pair in (clips, sounds):
        assert pair[0].read_bytes() != pair[1].read_bytes(), "each request gets its own file"
    for clip in clips:
        info = probe(clip)
        assert info.has_video and (info.width, info.height) == (720, 1280)
        assert abs(info.duration - 10.0) < 1 / 30 + 1e-6
        assert b"KLING EMULATOR RENDER" in clip.read_bytes()[-200:]
    for sound in sounds:
        info = probe(sound)
        assert info.has_audio and not info.has_video and info.duration > 1
    avatar = raw.submit(
        AVATAR,
        {
            "image_url": "https://example.invalid/face.png",
            "audio_url": raw.result(speech[0]).json()["audio"]["url"],
        },
    ).json()["request_id"]
    talking = probe(_output(raw, avatar, "video", tmp_path, emulator.ssl))
    assert talking.has_video and talking.has_audio
    assert abs(talking.duration - probe(sounds[0]).duration) < 0.1
    assert raw.stats()["prerendered_stock_renders"] - renders <= 3, "one stock render per kind"


def test_render_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLINGFLOW_EMULATOR_RENDER", "prerendered")
    options = EmulatorOptions.from_env()
    assert options.render == "prerendered" and options.validation == "model"
    monkeypatch.setenv("KLINGFLOW_EMULATOR_VALIDATION", "submit")
    assert EmulatorOptions.from_env(validation="model").validation == "model"
    monkeypatch.setenv("KLINGFLOW_EMULATOR_RENDER", "sometimes")
    with pytest.raises(ConfigError, match="KLINGFLOW_EMULATOR_RENDER"):
        EmulatorOptions.from_env()


# --- the serve flags ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_flags_set_the_options(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env["KLINGFLOW_HOME"] = str(tmp_path)
    command = [sys.executable, "-m", "klingflow.cli", "emulator"]
    flags = ["--validation", "submit", "--result-retention", "7", "--large-result-retention", "3"]
    flags += ["--media-expiry", "60", "--render-mode", "prerendered"]
    server = subprocess.Popen(
        [*command, "serve", "--port", "0", "--offline", *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "emulator" / "server.json").exists():
            assert server.poll() is None, server.stdout.read() if server.stdout else "exited"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        printed = subprocess.run(
            [*command, "env"], env=env, capture_output=True, text=True, check=True
        ).stdout
        client_env = {k: v.strip("'") for k, v in re.findall(r"^export (\w+)=(.*)$", printed, re.M)}
        verify = ssl.create_default_context(cafile=client_env["SSL_CERT_FILE"])
        admin = Raw(f"https://{client_env['FAL_QUEUE_RUN_HOST']}", client_env["FAL_KEY"], verify)
        config = admin.client.get(f"{admin.base}/_emulator/config").json()
        assert config["validation"] == "submit" and config["render"] == "prerendered"
        assert (config["result_retention"], config["large_result_retention"], config["media_expiry"]) == (
            7,
            3,
            60,
        )
        assert client_env["HTTPS_PROXY"].startswith("http://127.0.0.1:")
    finally:
        server.terminate()
        server.wait(timeout=20)
