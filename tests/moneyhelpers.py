"""Helpers shared by the money tests (test_money_faults.py, test_crash_safety.py).

* :class:`EngineProcess`: one long-lived engine process (``moneyrun.py``) behind the fault proxy;
* :func:`klingflow_run` / :func:`start_klingflow_run`: the CLI as a user runs it;
* :func:`ledger_rows` and :func:`lost_outputs`: what the ledger and the store say after a run;
* :func:`leftover_processes` / :func:`stop_processes`: processes a killed run left behind, found by
  the run's own ``KLINGFLOW_HOME`` / ``PREFECT_HOME`` in their environment or command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from faultproxy import FaultProxy

TESTS = Path(__file__).resolve().parent
KLINGFLOW = [sys.executable, "-m", "klingflow.cli"]
QUIET_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def accepted_by_endpoint(proxy: FaultProxy) -> Counter[str]:
    """Accepted (paid) queue submits per endpoint alias (the last part of the endpoint id)."""
    return Counter(a.endpoint.rsplit("/", 1)[-1] for a in proxy.accepted if a.phase == "submit")


def exchange_log(proxy: FaultProxy) -> str:
    """The proxy's exchanges, one line each, for assertion messages."""
    return "\n".join(
        f"  #{e.number} {e.phase}#{e.phase_number} {e.method} {e.path.split('?')[0][-60:]}"
        f" fault={e.fault.value if e.fault else '-'} up={e.upstream_status} -> {e.outcome}"
        for e in proxy.exchanges
    )


# ---- the engine process -------------------------------------------------------------------------


class EngineProcess:
    """``moneyrun.py`` started with the proxy's environment; :meth:`run` runs one pipeline in it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log_path = env, log
        self.process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> subprocess.Popen[str]:
        self._log = self.log_path.open("a")
        process = subprocess.Popen(
            [sys.executable, str(TESTS / "moneyrun.py")],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        replies: queue.Queue[str | None] = queue.Queue()

        def read(stream: Any = process.stdout) -> None:
            for line in stream:
                replies.put(line)
            replies.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.process, self._replies = process, replies
        return process

    def run(
        self,
        pipeline: Path,
        home: Path,
        *,
        concurrency: int | None = None,
        retries: int = 3,
        timeout: float = 120,
    ) -> dict[str, Any]:
        process = self.process if self.process and self.process.poll() is None else self._start()
        assert process.stdin is not None
        request = {
            "pipeline": str(pipeline),
            "home": str(home),
            "concurrency": concurrency,
            "retries": retries,
        }
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.close()  # a hung run: the next cell gets a fresh process
            return {"status": "hung", "error": f"no answer within {timeout:g} s", "log": []}
        if line is None:
            self.close()
            return {"status": "crashed", "error": f"engine process exited; see {self.log_path}", "log": []}
        return json.loads(line)

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(Exception):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._log.close()


# ---- Prefect and the CLI ------------------------------------------------------------------------


def run_env(
    proxy: FaultProxy, home: Path, prefect: dict[str, str] | None, prefect_home: Path
) -> dict[str, str]:
    """The environment of a ``klingflow run`` through ``proxy`` with its own klingflow home.

    ``prefect`` (from ``conftest.prefect_server``) points it at a running server; None runs Prefect in
    ephemeral mode (a temporary server per process, as a user without a server gets it)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = proxy.environment(base)
    env.update(QUIET_PREFECT, KLINGFLOW_HOME=str(home), PREFECT_HOME=str(prefect_home))
    if prefect is not None:
        env.update(prefect)
    return env


def start_klingflow_run(pipeline: Path, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    """``klingflow run PIPELINE --backend fal --out OUT`` in its own session (so it can be killed alone).

    Its output goes to ``OUT.log``, a file, not a pipe: a process it leaves behind must not die of a
    closed pipe before the test has looked for it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [*KLINGFLOW, "run", str(pipeline), "--backend", "fal", "--out", str(out)],
            env=env,
            cwd=pipeline.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def klingflow_run(pipeline: Path, env: dict[str, str], out: Path, timeout: float = 240) -> tuple[int, str]:
    """Run ``klingflow run`` to the end; (exit code, output)."""
    process = start_klingflow_run(pipeline, env, out)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code = -9
    output = out.with_suffix(".log").read_text(errors="replace")
    return code, output + (f"\n[test: killed after {timeout:g} s]" if code == -9 else "")


# ---- ledger and store ---------------------------------------------------------------------------


def ledger_rows(home: Path, run: str | None = None) -> list[dict[str, Any]]:
    """The ledger rows under ``home`` (one run's, when given), as plain dicts."""
    from klingflow import ledger

    frame = ledger.load(root=home / "ledger", run=run)
    return [
        {k: (None if v is None or v != v else v) for k, v in row.items()} for row in frame.to_dict("records")
    ]


def lost_outputs(home: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Completed rows whose output is not intact in the store under ``home`` (should be none)."""
    from klingflow.cache import Store

    store = Store(home / "store")
    lost = []
    for row in rows:
        if row["status"] != "completed":
            continue
        if not row.get("sha256") or store.find(row["sha256"]) is None:
            lost.append(f"{row['step_id']}: sha256 {row.get('sha256')} not intact in the store")
    return lost


# ---- processes ----------------------------------------------------------------------------------


def leftover_processes(*markers: str, exclude: frozenset[int] = frozenset()) -> dict[int, str]:
    """pid -> command line of every process whose environment or command line contains a marker."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":  # a zombie is already dead; its parent just has not reaped it
            continue
        if any(m in cmdline or m in environ for m in markers):
            found[int(entry.name)] = cmdline.strip()
    return found


def wait_for_leftovers(*markers: str, grace: float = 3.0) -> dict[int, str]:
    """Processes still matching ``markers`` after ``grace`` seconds (children may exit on their own)."""
    deadline = time.monotonic() + grace
    while True:
        found = leftover_processes(*markers)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def stop_processes(pids: list[int]) -> None:
    """SIGKILL exactly these pids (leftovers of a run this test started), and wait until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
