"""The fault proxy itself works: it passes fal's protocol through, counts what the emulator accepted,
and injects each fault as specified. fal_client runs unmodified in fresh subprocesses (it reads its
hosts at import); raw httpx is used where the exact bytes on the wire matter."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import KLINGFLOW, EmulatorAdmin
from faultproxy import Fault, FaultProxy, classify, running_proxy
from klingflow.emulator.server import EmulatorServer

pytestmark = pytest.mark.slow

T2V = "fal-ai/kling-video/v1/standard/text-to-video"

# One fal_client call in a fresh process; prints one JSON line with what the caller saw.
CLIENT = r"""
import json, sys, time
import fal_client, httpx

mode, endpoint = sys.argv[1], sys.argv[2]
out = {}
try:
    if mode == "submit":
        out["request_id"] = fal_client.submit(endpoint, arguments={"prompt": "a red fox"}).request_id
    elif mode == "full":
        handle = fal_client.submit(endpoint, arguments={"prompt": "a red fox in the snow"})
        out["request_id"] = handle.request_id
        out["status_url"] = handle.status_url
        result = handle.get()
        out["video_url"] = url = result["video"]["url"]
        out["file_size"] = result["video"]["file_size"]
        out["downloaded"] = len(httpx.get(url, timeout=60).raise_for_status().content)
    elif mode == "status":
        handle = fal_client.submit(endpoint, arguments={"prompt": "a red fox"})
        out["request_id"] = handle.request_id
        out["status"] = type(handle.status()).__name__
except fal_client.client.FalClientHTTPError as exc:
    out.update(error="FalClientHTTPError", status_code=exc.status_code, headers=exc.response_headers)
except Exception as exc:
    out.update(error=type(exc).__name__, message=str(exc))
print(json.dumps(out))
"""


def run_client(proxy: FaultProxy, mode: str, endpoint: str = T2V) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, mode, endpoint],
        env=proxy.environment(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def raw_client(proxy: FaultProxy, **options: Any) -> httpx.Client:
    """httpx straight at the proxy, trusting only the bundle a client process would get."""
    return httpx.Client(
        base_url=f"https://{proxy.host}",
        verify=ssl.create_default_context(cafile=str(proxy.ca_bundle)),
        headers={"Authorization": f"Key {proxy.key}"},
        trust_env=False,
        **options,
    )


def wait_completed(client: httpx.Client, status_url: str) -> None:
    deadline = time.monotonic() + 120
    while client.get(status_url).raise_for_status().json()["status"] != "COMPLETED":
        assert time.monotonic() < deadline, "request did not complete"
        time.sleep(0.2)


def test_phases_are_classified_from_method_and_path() -> None:
    base = "/fal-ai/kling-video/requests/abc"
    assert classify("POST", f"/{T2V}") == "submit"
    assert classify("POST", f"/{T2V}", run_host=True) == "run"
    assert classify("GET", f"{base}/status") == "status"
    assert classify("GET", f"{base}/status/stream") == "status"
    assert classify("GET", base) == "result"
    assert classify("PUT", f"{base}/cancel") == "cancel"
    assert classify("GET", "/files/abc/output.mp4") == "download"
    for method, path in [
        ("POST", "/storage/upload"),
        ("POST", "/storage/auth/token"),
        ("POST", "/storage/upload/initiate"),
        ("PUT", "/files/uploads/x.png"),
        ("POST", "/files/upload"),
    ]:
        assert classify(method, path) == "upload", path
    assert classify("GET", "/_emulator/stats") == "other"
    # fal's request history lives under /v1/: it must not be taken for a result fetch
    assert classify("GET", "/v1/models/requests/by-endpoint") == "platform"
    assert classify("GET", "/v1/models/pricing") == "platform"


def test_pass_through_rewrites_hosts_so_every_call_goes_through_the_proxy(
    fault_proxy: FaultProxy, emulator: EmulatorAdmin
) -> None:
    seen = run_client(fault_proxy, "full")

    assert "error" not in seen, seen
    assert seen["status_url"].startswith(f"https://{fault_proxy.host}/")
    assert seen["video_url"].startswith(f"https://{fault_proxy.host}/files/")
    assert seen["downloaded"] == seen["file_size"] > 0
    counts = fault_proxy.counts
    assert fault_proxy.accepted_submits == [seen["request_id"]]
    assert counts["submit"] == {"seen": 1, "forwarded": 1, "faulted": 0, "accepted": 1}
    assert counts["status"]["seen"] >= 1 and counts["result"]["seen"] == 1
    assert counts["download"] == {"seen": 1, "forwarded": 1, "faulted": 0}
    assert emulator.stats()["total_submits"] == 1
    downloads = [e for e in fault_proxy.exchanges if e.phase == "download"]
    assert downloads[0].endpoint == T2V and downloads[0].outcome == "answered 200"


def test_drop_after_forward_shows_fal_client_resending_the_submit_by_itself(
    fault_proxy: FaultProxy, emulator: EmulatorAdmin
) -> None:
    fault_proxy.inject("submit", Fault.DROP_AFTER)

    seen = run_client(fault_proxy, "submit")

    # One submit() call, no error for the caller, and yet two accepted (paid) submits.
    assert "error" not in seen, seen
    first, second = fault_proxy.accepted_submits
    assert seen["request_id"] == second != first
    assert fault_proxy.counts["submit"] == {"seen": 2, "forwarded": 2, "faulted": 1, "accepted": 2}
    assert emulator.stats()["total_submits"] == 2
    assert [e.outcome for e in fault_proxy.exchanges] == ["dropped", "answered 200"]


def test_500_after_forward_reaches_the_caller_though_the_submit_was_accepted(
    fault_proxy: FaultProxy, emulator: EmulatorAdmin
) -> None:
    fault_proxy.inject("submit", Fault.ERROR_500_AFTER)

    seen = run_client(fault_proxy, "submit")

    assert seen["error"] == "FalClientHTTPError" and seen["status_code"] == 500
    assert len(fault_proxy.accepted_submits) == 1
    assert fault_proxy.counts["submit"]["seen"] == 1
    assert emulator.stats()["total_submits"] == 1


def test_500_before_forward_is_not_accepted(fault_proxy: FaultProxy, emulator: EmulatorAdmin) -> None:
    fault_proxy.inject("submit", Fault.ERROR_500_BEFORE)

    seen = run_client(fault_proxy, "submit")

    assert seen["status_code"] == 500
    assert fault_proxy.accepted_submits == [] and emulator.stats()["total_submits"] == 0


@pytest.mark.parametrize(
    ("fault", "seen_submits", "accepted"),
    [
        (Fault.INGRESS_502_BEFORE, 2, 1),  # resent by fal_client, paid once
        (Fault.INGRESS_503_AFTER, 2, 2),  # resent by fal_client after an accepted submit: paid twice
    ],
)
def test_ingress_5xx_without_request_id_is_resent_by_fal_client(
    fault_proxy: FaultProxy, emulator: EmulatorAdmin, fault: Fault, seen_submits: int, accepted: int
) -> None:
    fault_proxy.inject("submit", fault)

    seen = run_client(fault_proxy, "submit")

    assert "error" not in seen, seen
    assert fault_proxy.counts["submit"]["seen"] == seen_submits
    assert len(fault_proxy.accepted_submits) == accepted == emulator.stats()["total_submits"]
    assert fault_proxy.accepted_submits[-1] == seen["request_id"]


@pytest.mark.parametrize(("fault", "accepted"), [(Fault.APP_502_BEFORE, 0), (Fault.APP_502_AFTER, 1)])
def test_app_502_with_request_id_reaches_the_caller(
    fault_proxy: FaultProxy, emulator: EmulatorAdmin, fault: Fault, accepted: int
) -> None:
    fault_proxy.inject("submit", fault)

    seen = run_client(fault_proxy, "submit")

    assert seen["error"] == "FalClientHTTPError" and seen["status_code"] == 502
    assert "x-fal-request-id" in seen["headers"]
    assert fault_proxy.counts["submit"]["seen"] == 1
    assert len(fault_proxy.accepted_submits) == accepted == emulator.stats()["total_submits"]


def test_drop_before_forward_is_resent_and_paid_once(
    fault_proxy: FaultProxy, emulator: EmulatorAdmin
) -> None:
    fault_proxy.inject("submit", Fault.DROP_BEFORE, times=2)

    seen = run_client(fault_proxy, "submit")

    assert "error" not in seen, seen
    assert fault_proxy.counts["submit"] == {"seen": 3, "forwarded": 1, "faulted": 2, "accepted": 1}
    assert emulator.stats()["total_submits"] == 1


def test_429_on_a_status_poll_carries_retry_after_and_is_not_forwarded(fault_proxy: FaultProxy) -> None:
    with raw_client(fault_proxy, timeout=30) as client:
        status_url = (
            client.post(f"/{T2V}", json={"prompt": "a red fox"}).raise_for_status().json()["status_url"]
        )
        fault_proxy.inject("status", Fault.RATE_LIMIT, retry_after=7)

        limited = client.get(status_url)
        after = client.get(status_url)

    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert after.status_code in (200, 202), "forwarded: 202 while pending, 200 once completed"
    assert fault_proxy.counts["status"] == {"seen": 2, "forwarded": 1, "faulted": 1}


def test_fal_client_retries_a_429_status_poll_by_itself(fault_proxy: FaultProxy) -> None:
    fault_proxy.inject("status", Fault.RATE_LIMIT, retry_after=0)

    seen = run_client(fault_proxy, "status")

    assert "error" not in seen, seen
    assert fault_proxy.counts["status"] == {"seen": 2, "forwarded": 1, "faulted": 1}


def test_truncate_on_a_download_delivers_half_the_promised_bytes(fault_proxy: FaultProxy) -> None:
    with raw_client(fault_proxy, timeout=30) as client:
        submitted = client.post(f"/{T2V}", json={"prompt": "a red fox"}).raise_for_status().json()
        wait_completed(client, submitted["status_url"])
        url = client.get(submitted["response_url"]).raise_for_status().json()["video"]["url"]
        assert url.startswith(f"https://{fault_proxy.host}/files/")
        fault_proxy.inject("download", Fault.TRUNCATE, endpoint="text-to-video")

        received = 0
        with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", url) as response:
            promised = int(response.headers["content-length"])
            for chunk in response.iter_raw():
                received += len(chunk)
        whole = client.get(url).raise_for_status().content

    assert promised == len(whole) > 0
    assert received == promised // 2
    assert [e.outcome for e in fault_proxy.exchanges if e.phase == "download"] == [
        "truncated",
        "answered 200",
    ]


def _read_stream(client: httpx.Client, status_url: str, arrivals: list[tuple[float, dict[str, Any]]]) -> None:
    """Each ``data:`` event of a request's status stream, added to ``arrivals`` with its arrival time."""
    with client.stream("GET", f"{status_url}/stream", params={"logs": "1"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream"), response.headers
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.time(), json.loads(line.removeprefix("data:"))))


def test_the_status_stream_passes_through_event_by_event(tmp_path: Path) -> None:
    """fal's status stream is not held until it ends: its first event arrives while the request still
    runs (2 s of latency), and COMPLETED within a fifth of a second of the emulator ending the request."""
    server = EmulatorServer(
        port=0, latency=2.0, workers=1, fetch_remote=False, home=tmp_path, render="prerendered"
    ).start_in_thread()
    try:
        with running_proxy(server) as proxy, raw_client(proxy, timeout=30) as client:
            submitted = client.post(f"/{T2V}", json={"prompt": "streamed through"}).raise_for_status().json()
            arrivals: list[tuple[float, dict[str, Any]]] = []
            _read_stream(client, submitted["status_url"], arrivals)
            history = client.get("/v1/models/requests/by-endpoint", params={"endpoint_id": T2V})
            [item] = history.raise_for_status().json()["items"]
            streams = [e for e in proxy.exchanges if "/status/stream" in e.path]
    finally:
        server.stop()
    ended = datetime.fromisoformat(item["ended_at"].replace("Z", "+00:00")).timestamp()
    (first_at, first), (last_at, last) = arrivals[0], arrivals[-1]
    assert first["status"] in ("IN_QUEUE", "IN_PROGRESS") and ended - first_at > 1.0, (ended, arrivals)
    assert last["status"] == "COMPLETED" and -0.01 <= last_at - ended < 0.2, (ended, arrivals)
    assert all(e["response_url"].startswith(f"https://{proxy.host}/") for _, e in arrivals), arrivals
    assert [e.outcome for e in streams] == ["answered 200"], streams


def test_truncate_on_a_status_stream_cuts_it_after_its_first_event(fault_proxy: FaultProxy) -> None:
    with raw_client(fault_proxy, timeout=30) as client:
        submitted = client.post(f"/{T2V}", json={"prompt": "a cut stream"}).raise_for_status().json()
        fault_proxy.inject("status", Fault.TRUNCATE)
        cut: list[tuple[float, dict[str, Any]]] = []
        again: list[tuple[float, dict[str, Any]]] = []
        with pytest.raises(httpx.RemoteProtocolError):
            _read_stream(client, submitted["status_url"], cut)
        _read_stream(client, submitted["status_url"], again)
    assert len(cut) == 1, cut
    assert again[-1][1]["status"] == "COMPLETED", again
    streams = [e.outcome for e in fault_proxy.exchanges if "/status/stream" in e.path]
    assert streams == ["truncated", "answered 200"], streams


def test_slow_answer_outlasts_the_client_timeout(fault_proxy: FaultProxy) -> None:
    with raw_client(fault_proxy, timeout=30) as client:
        status_url = (
            client.post(f"/{T2V}", json={"prompt": "a red fox"}).raise_for_status().json()["status_url"]
        )
        fault_proxy.inject("status", Fault.SLOW, delay=3)
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client.get(status_url, timeout=0.5)
        assert time.monotonic() - started < 2.5
        assert client.get(status_url).status_code == 200

    status = fault_proxy.counts["status"]
    assert status == {"seen": 2, "forwarded": 2, "faulted": 1}


def test_faults_target_an_endpoint_and_a_request_number(fault_proxy: FaultProxy) -> None:
    other = "fal-ai/kling-video/v1/standard/image-to-video"
    fault_proxy.inject("submit", Fault.ERROR_500_BEFORE, endpoint="text-to-video")
    fault_proxy.inject("status", Fault.APP_503_BEFORE, at=2)
    with raw_client(fault_proxy, timeout=30) as client:
        untouched = client.post(f"/{other}", json={"prompt": "x", "image_url": "https://example.com/a.png"})
        hit = client.post(f"/{T2V}", json={"prompt": "a red fox"})
        status_url = client.post(f"/{T2V}", json={"prompt": "a red fox"}).json()["status_url"]
        polls = [client.get(status_url).status_code for _ in range(3)]

    assert untouched.status_code == 200 and hit.status_code == 500
    assert [code if code == 503 else "ok" for code in polls] == ["ok", 503, "ok"]
    assert all(code in (200, 202, 503) for code in polls), polls
    assert fault_proxy.pending() == []
    assert len(fault_proxy.accepted_submits) == 2


def test_connect_listener_intercepts_fal_hosts(fault_proxy: FaultProxy) -> None:
    """An unmodified client whose upload host is fal's constant still goes through the proxy."""
    env = fault_proxy.variables()
    with httpx.Client(
        proxy=env["HTTPS_PROXY"],
        verify=ssl.create_default_context(cafile=env["SSL_CERT_FILE"]),
        trust_env=False,
        timeout=30,
    ) as client:
        token = client.post(
            "https://rest.fal.ai/storage/auth/token",
            params={"storage_type": "fal-cdn-v3"},
            headers={"Authorization": f"Key {fault_proxy.key}"},
        )

        history = client.get(
            "https://api.fal.ai/v1/models/requests/by-endpoint",
            params={"endpoint_id": T2V},
            headers={"Authorization": f"Key {fault_proxy.key}"},
        )

    assert token.status_code == 200 and token.json()["token_type"] == "Bearer"
    assert fault_proxy.counts["upload"] == {"seen": 1, "forwarded": 1, "faulted": 0}
    assert history.status_code == 200 and "items" in history.json(), "api.fal.ai reaches the emulator"
    assert fault_proxy.counts["platform"] == {"seen": 1, "forwarded": 1, "faulted": 0}


def test_reset_forgets_counts_and_faults(fault_proxy: FaultProxy) -> None:
    fault_proxy.inject("submit", Fault.DROP_AFTER)
    with raw_client(fault_proxy, timeout=30) as client:
        client.get("/_emulator/health").raise_for_status()
    fault_proxy.reset()

    assert fault_proxy.pending() == [] and fault_proxy.exchanges == []
    assert all(v == 0 for phase in fault_proxy.counts.values() for v in phase.values())


def test_close_frees_every_port_and_thread(emulator: EmulatorAdmin) -> None:
    threads = {t.ident for t in threading.enumerate()}
    with running_proxy(emulator.server) as proxy:
        proxy.inject("status", Fault.SLOW, delay=60)  # an answer still held back at close
        with raw_client(proxy, timeout=30) as client:
            status_url = client.post(f"/{T2V}", json={"prompt": "a red fox"}).json()["status_url"]
            with pytest.raises(httpx.ReadTimeout):
                client.get(status_url, timeout=0.3)
        ports = proxy.ports
        directory = proxy.ca_bundle.parent
    assert not directory.exists()
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= threads
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if anything still listens there


def test_a_klingflow_run_subprocess_goes_through_the_proxy(
    fault_proxy: FaultProxy, emulator: EmulatorAdmin, tmp_path: Path, session_prefect: dict[str, str]
) -> None:
    pipeline = tmp_path / "one.yaml"
    pipeline.write_text(
        "name: one\nsteps:\n  - id: clip\n    uses: text-to-video\n    with:\n      prompt: a fox\n"
    )
    env = fault_proxy.environment()
    env.update(session_prefect, KLINGFLOW_HOME=str(tmp_path / "home"))
    fault_proxy.inject("status", Fault.APP_503_BEFORE, at=1)  # the status stream: refused

    done = subprocess.run(
        [*KLINGFLOW, "run", str(pipeline)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert len(fault_proxy.accepted_submits) == 1 == emulator.stats()["total_submits"]
    counts = fault_proxy.counts
    assert counts["result"]["seen"] == counts["download"]["forwarded"] == 1
    # klingflow follows fal's status stream; refused (the 503 injected above), it polls instead. fal
    # answers a poll with logs with every line so far, so klingflow asks for them on its first poll,
    # then about once a second, and on the poll that sees the request done; the polls in between
    # (every 0.1 s at first) are small, as fal_client's own handle.get() sends.
    stream, *polls = [exchange.path for exchange in fault_proxy.exchanges if exchange.phase == "status"]
    assert "/status/stream?logs=1" in stream and polls, (stream, polls)
    asked = [index for index, path in enumerate(polls) if "logs=true" in path]
    assert asked[0] == 0 and asked[-1] == len(polls) - 1, polls
    assert all("logs=false" in path for index, path in enumerate(polls) if index not in asked), polls
    assert len(asked) <= 2 + len(polls) // 3, f"logs asked on {len(asked)} of {len(polls)} polls"
