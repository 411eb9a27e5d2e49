"""Shared test set-up: an isolated klingflow home and one real emulator for the session.

fal_client reads its hosts when it is imported, so the emulator's sockets are bound and
``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST`` / ``SSL_CERT_FILE`` are set here, at conftest import,
before any test module imports fal_client. Tests reach it over real HTTPS with the unmodified
client, exactly as a user's process pointed at ``klingflow emulator serve`` would.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="klingflow-test-home-"))
os.environ["KLINGFLOW_HOME"] = str(_SESSION_HOME)
# A submit whose answer is lost is looked for in fal's history for 15 minutes by default; the
# emulator lists a request as soon as it ended, so the tests (and their subprocesses) look briefly.
os.environ.setdefault("KLINGFLOW_RECONCILE_GRACE", "3")
os.environ.setdefault("KLINGFLOW_RECONCILE_POLL", "0.2")
# Prefect's ephemeral server gets 20 s to start; on 2 busy cores (the suite runs servers, ffmpeg and
# Chromium side by side) that is not always enough, and a run that cannot reach it fails.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
for _name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "HTTPS_PROXY", "https_proxy"):
    os.environ.pop(_name, None)
# Runs use Prefect's ephemeral server unless a test opts in to klingflow's local one
# (tests/test_local_server.py), so the suite never leaves a background server behind.
os.environ["KLINGFLOW_PREFECT"] = "ephemeral"
os.environ.pop("KLINGFLOW_LOCAL_PREFECT_API_URL", None)

from faultproxy import fault_proxy  # noqa: E402, F401  (the fault-injecting proxy fixture)
from klingflow.cache import Journal, Store  # noqa: E402
from klingflow.emulator.faults import FaultPlan  # noqa: E402
from klingflow.emulator.server import EmulatorServer  # noqa: E402
from klingflow.engine import RetryPolicy, RunOptions  # noqa: E402
from klingflow.prefect_server._supervisor import SERVER_SCRIPT  # noqa: E402

_SERVER = EmulatorServer(port=0, latency=0.2, workers=4, fetch_remote=False)
os.environ.update({k: v for k, v in _SERVER.environment().items() if k != "FAL_KEY"})

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow tests first, each module's tests together and in their own order.

    ``scripts/test`` runs two pytest-xdist workers that take whole modules in collection order:
    the long end-to-end modules then start at once and the quick ones fill in after them, instead
    of the longest module starting last on one worker while the other waits idle.
    """

    def module(item: pytest.Item) -> str:
        return str(getattr(getattr(item, "module", None), "__name__", ""))

    slow = {module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: module(item) not in slow)  # stable: each module's order is kept


PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def prefect_server(root: Path) -> Iterator[dict[str, str]]:
    """A real ``prefect server start`` (SQLite under ``root``), stopped with its process group at the end.

    Started as klingflow's local server starts it (``klingflow/flows/sqlite_server.py``: SQLite
    transactions begun IMMEDIATE), not as the stock command, whose 503s on concurrent writes made
    Prefect's client sleep for seconds and, after its retries, fail a batch's row.
    Yields the ``PREFECT_*`` variables a client needs (API and UI addresses, home, analytics off).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    variables = {
        "PREFECT_HOME": str(root),
        "PREFECT_API_URL": url,
        "PREFECT_UI_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | variables
    server = subprocess.Popen(
        [sys.executable, "-P", str(SERVER_SCRIPT), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert server.poll() is None and time.monotonic() < deadline, "prefect server did not start"
            time.sleep(0.3)
        yield variables
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen[Any]) -> None:
    """Stop a process started with ``start_new_session=True``, and the processes it started (its group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def session_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One real Prefect server for the session's ``klingflow run`` subprocesses, given to them as a
    user's ``PREFECT_API_URL``: a run then costs about a second of Prefect instead of the
    ephemeral server's 8 s (28 s in a new PREFECT_HOME, whose database it first migrates)."""
    with prefect_server(tmp_path_factory.mktemp("session-prefect")) as variables:
        yield variables


class EmulatorAdmin:
    """The session emulator plus its admin routes (counters, faults)."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.key = server.identity.key
        self.base = f"https://{server.queue_host}"
        self.ssl = ssl.create_default_context(cafile=str(server.identity.ca_bundle))
        self._client = httpx.Client(verify=self.ssl, headers={"Authorization": f"Key {self.key}"}, timeout=30)

    def stats(self) -> dict[str, Any]:
        return self._client.get(f"{self.base}/_emulator/stats").raise_for_status().json()

    def reset(self) -> None:
        self._client.post(f"{self.base}/_emulator/reset").raise_for_status()

    def faults(self, **plan: Any) -> None:
        self._client.post(
            f"{self.base}/_emulator/faults", json=FaultPlan(**plan).model_dump()
        ).raise_for_status()

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.server.environment()}


def server_processes(root: Path) -> tuple[list[int], list[int]]:
    """(supervisors, prefect servers) of the local server whose folder is ``root`` (or under it), alive."""
    supervisors, servers = [], []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state in ("Z", "X"):
            continue
        text = b" ".join(cmd).decode(errors="replace")
        if "_supervisor.py supervise" in text and f"--dir {root}" in text:
            supervisors.append(int(entry))
        elif ("prefect server start" in text or SERVER_SCRIPT.name in text) and any(
            e.startswith(b"PREFECT_HOME=") and e.decode(errors="replace")[13:].startswith(str(root))
            for e in environ
        ):
            servers.append(int(entry))
    return supervisors, servers


_SESSION_MARK = ("PYTEST_KLINGFLOW_SESSION", f"{os.getpid()}-{os.urandom(4).hex()}")
os.environ[_SESSION_MARK[0]] = _SESSION_MARK[1]  # every process this session starts inherits it


def _ancestors() -> set[int]:
    """This process and its ancestors (an xdist worker's controller, the shell that ran pytest)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(re.search(r"^PPid:\s*(\d+)", status, re.M)[1])  # type: ignore[index]
    return found


def session_processes(roots: list[Path]) -> dict[int, str]:
    """pid -> command line of every live process this test session started, found in /proc.

    A process is the session's when its environment carries this session's mark (set at conftest
    import, after the interpreter started: so never this process, its xdist siblings or their
    controller, whose environment was fixed before), or its ``KLINGFLOW_HOME`` / ``PREFECT_HOME``
    or an argument lies under one of ``roots`` (the session's home and temporary folders, which
    each xdist worker has of its own). This process and its ancestors are never counted.
    """
    mine, mark = _ancestors(), "=".join(_SESSION_MARK).encode()
    prefixes = [f"{root.resolve()}{os.sep}" for root in roots]

    def under(value: str) -> bool:
        return any(f"{value}{os.sep}".startswith(prefix) for prefix in prefixes)

    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X"):  # already dead; its parent has not reaped it yet
            continue
        homes = [
            e.decode(errors="replace").partition("=")[2]
            for e in environ
            if e.startswith((b"KLINGFLOW_HOME=", b"PREFECT_HOME="))
        ]
        args = [a.decode(errors="replace") for a in cmd]
        if (
            mark in environ
            or any(under(v) for v in homes)
            or any(under(a.partition("=")[2] or a) for a in args)
        ):
            found[int(entry)] = " ".join(args).strip()
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last test, fail the session if a process it started still runs (and kill it).

    Prefect servers and their supervisors, recorders, emulators, workers: a test stops what it
    starts, and a detached process it causes (a recorder) must be gone by the end. Each xdist
    worker checks its own session's processes; a few seconds are given to ones on their way out.
    """
    yield
    if not sys.platform.startswith("linux"):
        return
    roots = [_SESSION_HOME, tmp_path_factory.getbasetemp()]
    deadline = time.monotonic() + 5
    while (left := session_processes(roots)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:
        lines = "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in sorted(left.items()))
        pytest.fail(f"{len(left)} process(es) started by the tests were still running (now killed):\n{lines}",
                    pytrace=False)  # fmt: skip


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    _SERVER.start_in_thread()
    yield _SERVER
    _SERVER.stop()


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[EmulatorAdmin]:
    """The running session emulator, with counters reset and no faults, before and after a test."""
    admin = EmulatorAdmin(emulator_server)
    admin.faults()
    admin.reset()
    yield admin
    admin.faults()


@pytest.fixture
def options(emulator: EmulatorAdmin, tmp_path: Path) -> RunOptions:
    """Run options with a private cache (store + journal) and the session emulator as backend."""
    return RunOptions(
        backend="fal",
        key=emulator.key,
        store=Store(tmp_path / "store"),
        journal=Journal(tmp_path / "journal"),
        retry=RetryPolicy(retries=4, base_delay=0.05),
    )


@pytest.fixture
def home() -> Path:
    return _SESSION_HOME


KLINGFLOW = [sys.executable, "-m", "klingflow.cli"]
CLIENT_VARIABLES = ("FAL_KEY", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE", "HTTPS_PROXY")


@contextlib.contextmanager
def serve_emulator(home: Path, *options: str) -> Iterator[dict[str, str]]:
    """`klingflow emulator serve --port 0 ...` in its own process and home.

    Yields the environment a user gets from `eval "$(klingflow emulator env)"`, plus KLINGFLOW_HOME.
    """
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env["KLINGFLOW_HOME"] = str(home)
    server = subprocess.Popen(
        [*KLINGFLOW, "emulator", "serve", "--port", "0", "--offline", *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (home / "emulator" / "server.json").exists():
            assert server.poll() is None, server.stdout.read() if server.stdout else "emulator exited"
            assert time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
        printed = subprocess.run(
            [*KLINGFLOW, "emulator", "env"], env=env, capture_output=True, text=True, check=True
        ).stdout
        lines = dict(re.findall(r"^export (\w+)=(.*)$", printed, re.M))
        yield {**env, **{k: v.strip("'") for k, v in lines.items()}}
    finally:
        server.terminate()
        server.wait(timeout=20)


def emulator_stats(env: dict[str, str]) -> dict[str, Any]:
    """The counters of the emulator that `env` points at."""
    context = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    response = httpx.get(
        f"https://{env['FAL_QUEUE_RUN_HOST']}/_emulator/stats",
        headers={"Authorization": f"Key {env['FAL_KEY']}"},
        verify=context,
    )
    return response.raise_for_status().json()
