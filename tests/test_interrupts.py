"""Ctrl-C and SIGTERM stop a run at once, keep every paid request, and a re-run collects them.

Each test starts ``klingflow run`` as a user does (its own process group, as a shell job), through
the tests' own TLS proxy in front of a slow emulator of this module's (requests take several
seconds, so the signal lands while they run), and sends the signal to the whole group, as a
terminal's Ctrl-C does. The proxy counts the submits fal accepted; the flow run's final state is
read back from a real Prefect server.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import KLINGFLOW
from faultproxy import FaultProxy, running_proxy
from klingflow.cache import Journal
from klingflow.emulator.server import EmulatorServer
from moneyhelpers import accepted_by_endpoint, klingflow_run, ledger_rows, run_env

pytestmark = pytest.mark.slow

STEPS = ("north", "south", "east")
PIPELINE = "name: stop\nsteps:\n" + "".join(
    f"  - id: {step}\n    uses: text-to-video\n    with: {{prompt: 'a slow shot looking {step}'}}\n"
    for step in STEPS
)


@pytest.fixture
def slow_emulator() -> Iterator[EmulatorServer]:
    """An emulator of the test's own whose requests take about 8 s, with one runner: a second
    request waits queued (a new one per test: what an earlier test left running never delays it)."""
    server = EmulatorServer(port=0, latency=8.0, workers=1, fetch_remote=False).start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def proxy(slow_emulator: EmulatorServer) -> Iterator[FaultProxy]:
    with running_proxy(slow_emulator) as proxy:
        yield proxy


def _start(tmp_path: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    spec = tmp_path / "stop.yaml"
    spec.write_text(PIPELINE)
    log = tmp_path / "run.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*KLINGFLOW, "run", str(spec), "--backend", "fal", "--out", str(tmp_path / "out"), *extra],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell job: the signal goes to the group
        )
    return process, log


def _wait_for_submits(proxy: FaultProxy, count: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while len([a for a in proxy.accepted if a.phase == "submit"]) < count:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the run never submitted\n" + log.read_text()
        time.sleep(0.1)


def _signal_and_wait(process: subprocess.Popen[bytes], signum: int) -> tuple[int, float]:
    sent = time.monotonic()
    os.killpg(process.pid, signum)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return code, time.monotonic() - sent


def _flow_run_state(prefect: dict[str, str], flow_run_id: str) -> str:
    response = httpx.get(f"{prefect['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=30)
    return str(response.raise_for_status().json()["state"]["type"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_at_once_and_a_rerun_pays_nothing_more(
    proxy: FaultProxy, session_prefect: dict[str, str], tmp_path: Path, signum: int
) -> None:
    env = run_env(proxy, tmp_path / "home", session_prefect, tmp_path / "prefect")
    process, log = _start(tmp_path, env)
    _wait_for_submits(proxy, 1, process, log)
    time.sleep(1.0)  # the case: one second after the first submits

    code, seconds = _signal_and_wait(process, signum)

    output = log.read_text()
    assert code == 128 + signum, output
    assert seconds < 8, f"took {seconds:.1f} s to stop\n{output}"  # goal 2 s; bound for a loaded CI
    assert "Traceback" not in output, output
    assert f"interrupted by {signal.Signals(signum).name}" in output and "no new request was sent" in output
    assert "still running at fal" in output and "run the same command again" in output
    paid = accepted_by_endpoint(proxy)["text-to-video"]
    for accepted in (a for a in proxy.accepted if a.phase == "submit"):
        assert accepted.request_id in output, f"the message names {accepted.request_id}\n{output}"
    rows = ledger_rows(tmp_path / "home")
    assert {r["status"] for r in rows} <= {"interrupted", "completed"}, rows
    assert sum(r["status"] == "interrupted" for r in rows) >= 1
    flow_run_id = rows[0]["flow_run_id"]
    assert flow_run_id and _flow_run_state(session_prefect, flow_run_id) == "CANCELLED"
    journal = Journal(tmp_path / "home" / "journal")
    assert sum(e.status == "submitted" for e in journal.entries()) == paid, "every paid request journaled"

    again, output = klingflow_run(tmp_path / "stop.yaml", env, tmp_path / "out2", timeout=240)

    assert again == 0, output
    assert accepted_by_endpoint(proxy)["text-to-video"] == len(STEPS), "one accepted submit per step"
    second = [r for r in ledger_rows(tmp_path / "home") if r["flow_run_id"] != flow_run_id]
    assert sorted(r["status"] for r in second) == ["completed"] * len(STEPS), second


def test_ctrl_c_with_prefects_temporary_server_stops_as_fast(proxy: FaultProxy, tmp_path: Path) -> None:
    """``--ephemeral``: Prefect's temporary server is a child in the same process group, and Ctrl-C
    must not kill it under the stopping run (which then retried its API calls for minutes)."""
    env = run_env(proxy, tmp_path / "home", None, tmp_path / "prefect")
    process, log = _start(tmp_path, env, "--ephemeral")
    _wait_for_submits(proxy, 1, process, log)
    time.sleep(1.0)

    code, seconds = _signal_and_wait(process, signal.SIGINT)

    output = log.read_text()
    assert code == 130, output
    assert seconds < 8, f"took {seconds:.1f} s to stop\n{output}"
    assert "Traceback" not in output and "All connection attempts failed" not in output, output
    assert "still running at fal" in output, output
    rows = ledger_rows(tmp_path / "home")
    assert rows and {r["status"] for r in rows} <= {"interrupted", "completed"}, rows


def test_a_second_ctrl_c_exits_at_once_with_the_journal_intact(
    proxy: FaultProxy, session_prefect: dict[str, str], tmp_path: Path
) -> None:
    env = run_env(proxy, tmp_path / "home", session_prefect, tmp_path / "prefect")
    process, log = _start(tmp_path, env)
    _wait_for_submits(proxy, 1, process, log)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.05)
    code, seconds = _signal_and_wait(process, signal.SIGINT)

    output = log.read_text()
    assert code == 130, output
    assert seconds < 2, output
    assert "Traceback" not in output, output
    journal = Journal(tmp_path / "home" / "journal")
    accepted = {a.request_id for a in proxy.accepted if a.phase == "submit"}
    kept = {e.request_id for e in journal.entries() if e.status == "submitted"}
    assert accepted <= kept | {None}, f"accepted {accepted}, journaled {kept}"
    for path in (tmp_path / "home" / "journal").rglob("*.json"):
        json.loads(path.read_text())  # every record whole


def test_cancel_queued_cancels_what_waits_in_fal_queue_and_nothing_is_billed_for_it(
    proxy: FaultProxy, session_prefect: dict[str, str], slow_emulator: EmulatorServer, tmp_path: Path
) -> None:
    env = run_env(proxy, tmp_path / "home", session_prefect, tmp_path / "prefect")
    admin = httpx.Client(
        verify=ssl.create_default_context(cafile=str(slow_emulator.identity.ca_bundle)),
        headers={"Authorization": f"Key {slow_emulator.identity.key}"},
    )
    base = f"https://{slow_emulator.queue_host}/_emulator"
    before = admin.get(f"{base}/stats").raise_for_status().json()["cancels"]
    process, log = _start(tmp_path, env, "--cancel-queued")
    _wait_for_submits(proxy, len(STEPS), process, log)  # one runner: one runs, two wait in the queue
    time.sleep(0.5)

    code, _seconds = _signal_and_wait(process, signal.SIGINT)

    output = log.read_text()
    assert code == 130, output
    assert "2 queued request(s) cancelled at fal (nothing billed)" in output, output
    assert admin.get(f"{base}/stats").raise_for_status().json()["cancels"] - before == 2
    journal = Journal(tmp_path / "home" / "journal")
    assert [e.status for e in journal.entries()] == ["submitted"], "only the running request is kept"
    rows = {r["step_id"]: r for r in ledger_rows(tmp_path / "home")}
    assert sum("was cancelled at fal" in (r["error"] or "") for r in rows.values()) == 2, rows


SCRIPT = """
import sys
from klingflow import run_pipeline
try:
    run_pipeline(sys.argv[1], backend="fal", out_dir=sys.argv[2])
except KeyboardInterrupt as stopped:
    cause = stopped.__cause__
    print("KeyboardInterrupt", type(cause).__name__, cause.result.status, len(cause.still_running))
    sys.exit(0)
print("not interrupted")
"""


def test_run_pipeline_raises_keyboard_interrupt_after_the_same_bookkeeping(
    proxy: FaultProxy, session_prefect: dict[str, str], tmp_path: Path
) -> None:
    env = run_env(proxy, tmp_path / "home", session_prefect, tmp_path / "prefect")
    spec = tmp_path / "stop.yaml"
    spec.write_text(PIPELINE)
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(spec), str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not proxy.accepted:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "KeyboardInterrupt RunInterrupted interrupted" in output, output
    rows = ledger_rows(tmp_path / "home")
    assert "interrupted" in {r["status"] for r in rows}, "recorded in the ledger before raising"
