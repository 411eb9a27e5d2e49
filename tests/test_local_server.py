"""The local Prefect server klingflow manages: real ``prefect server start`` processes, one home per test.

Every test gets its own KLINGFLOW_HOME and preferred port (and KLINGFLOW_PREFECT=local, which
conftest turns off for every other test); its teardown SIGKILLs every supervisor and server process
of that home (found through /proc, so even ones the test lost track of), so nothing outlives the
test. Homes start from a migrated Prefect database, made once per module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import KLINGFLOW, REPO, EmulatorAdmin, server_processes
from klingflow import ledger
from klingflow import prefect_server as ps
from klingflow.cli import app
from klingflow.engine import FLOW_RUN_PARAMETERS
from klingflow.errors import ConfigError
from klingflow.ledger import load_manifest
from klingflow.prefect_server import _manager, _supervisor
from moneyhelpers import leftover_processes
from test_sqlite_server import create_flow_runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc"),
]

_ENV_TO_CLEAR = ("PREFECT_API_URL", "KLINGFLOW_LOCAL_PREFECT_API_URL", "KLINGFLOW_SERVER_IDLE_MINUTES")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _healthy(server: ps.LocalServer) -> bool:
    return httpx.get(f"{server.api_url}/health", timeout=5).status_code == 200


def _kill_all(root: Path) -> None:
    supervisors, servers = server_processes(root)
    for pid in supervisors:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in servers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait_for(lambda: server_processes(root) == ([], []), 10, "the test's processes to be gone")


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Prefect home whose database is migrated (a fresh one costs seconds of migrations per start)."""
    template = tmp_path_factory.mktemp("template-home")
    env = {k: v for k, v in os.environ.items() if k not in _ENV_TO_CLEAR}
    env.update(
        KLINGFLOW_HOME=str(template), KLINGFLOW_SERVER_PORT=str(_free_port()), KLINGFLOW_PREFECT="local"
    )
    code = "from klingflow.prefect_server import ensure_server, stop_server; ensure_server(); stop_server()"
    try:
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=180)
    finally:
        _kill_all(template / "prefect-server")
    return template / "prefect-server" / "home"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_db: Path) -> Iterator[Path]:
    """A fresh KLINGFLOW_HOME and preferred port; afterwards no process of that home is left."""
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("KLINGFLOW_HOME", str(home))
    monkeypatch.setenv("KLINGFLOW_PREFECT", "local")
    monkeypatch.setenv("KLINGFLOW_SERVER_PORT", str(_free_port()))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "client-prefect-home"))
    root = ps.server_paths(home).root
    shutil.copytree(migrated_db, root / "home")
    yield home
    _kill_all(root)


def _python(code: str, env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """Run a script in a fresh interpreter (output captured: a server it starts must not hold it)."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ensure_twice_reuses_one_server_a_new_prefect_replaces_it_status_and_stop(home: Path) -> None:
    first = ps.ensure_server(home)
    second = ps.ensure_server(home)
    assert first.started and not second.started
    assert (second.pid, second.port, second.url) == (first.pid, first.port, first.url)
    assert first.port == int(os.environ["KLINGFLOW_SERVER_PORT"])  # its preferred port was free
    assert first.version == ps.installed_prefect_version()
    assert _healthy(first)
    root = ps.server_paths(home).root
    assert server_processes(root) == ([first.pid], [first.server_pid])
    state = json.loads((root / "server.json").read_text())
    assert state["pid"] == first.pid and state["pid_start"] == _supervisor.proc_start(first.pid)
    assert (root / "home" / "prefect.db").exists()  # its own PREFECT_HOME

    # A server of another Prefect version is replaced, and the caller is told in one line.
    state["version"] = "0.0.1"
    (root / "server.json").write_text(json.dumps(state))
    said: list[str] = []
    first = ps.ensure_server(home, echo=said.append)
    assert first.started and first.pid != second.pid
    assert said == [
        f"klingflow: the local Prefect server runs prefect 0.0.1, {first.version} is installed: restarting it"
    ]
    assert server_processes(root) == ([first.pid], [first.server_pid])

    status = ps.server_status(home)
    assert (status.state, status.server and status.server.pid) == ("running", first.pid)
    assert status.idle_for is not None and status.idle_for < 60

    runner = CliRunner()
    shown = runner.invoke(app, ["server", "status"])
    assert shown.exit_code == 0, shown.output
    assert f"pid: {first.pid}" in shown.output and "state: running" in shown.output

    again = runner.invoke(app, ["server", "start"])
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().splitlines()[-1] == first.url

    stopped = runner.invoke(app, ["server", "stop"])
    assert stopped.exit_code == 0, stopped.output
    assert server_processes(root) == ([], [])
    assert not (root / "server.json").exists()
    assert ps.server_status(home).state == "not running"
    assert runner.invoke(app, ["server", "status"]).exit_code == 3
    assert ps.stop_server(home) is None


def test_server_status_does_not_import_prefect(home: Path) -> None:
    code = """
        import json, sys
        from klingflow.cli import app
        try:
            app(["server", "status"])
        except SystemExit as exit:
            print(json.dumps({"code": exit.code, "prefect": "prefect" in sys.modules}))
    """
    assert _python(code, {**os.environ}) == {"code": 3, "prefect": False}


def test_two_processes_racing_to_start_share_one_server(home: Path) -> None:
    code = """
        import json
        from klingflow.prefect_server import ensure_server
        server = ensure_server()
        print(json.dumps({"url": server.api_url, "pid": server.pid, "started": server.started}))
    """
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            env={**os.environ},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)  # returns only because the server holds no pipe
        assert racer.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["url"] == results[1]["url"]
    assert results[0]["pid"] == results[1]["pid"]
    assert sorted(r["started"] for r in results) == [False, True]
    supervisors, servers = server_processes(ps.server_paths(home).root)
    assert supervisors == [results[0]["pid"]] and len(servers) == 1


def test_stale_state_and_killed_servers_are_replaced(home: Path) -> None:
    root = ps.server_paths(home).root
    port = int(os.environ["KLINGFLOW_SERVER_PORT"])
    # A pid file whose pid now belongs to another program (with that program's real start time).
    other = subprocess.Popen(["sleep", "60"])
    try:
        fake = {
            "pid": other.pid,
            "pid_start": _supervisor.proc_start(other.pid),
            "port": port,
            "version": ps.installed_prefect_version(),
        }
        (root / "server.json").write_text(json.dumps(fake))
        assert ps.server_status(home).state == "stale"
        first = ps.ensure_server(home)
        assert first.started and first.pid != other.pid
        assert other.poll() is None  # the unrelated program was left alone
        assert _healthy(first)
    finally:
        other.kill()
        other.wait()

    # kill -9 of the prefect server: its supervisor exits, the next ensure starts a new one.
    os.kill(first.server_pid, signal.SIGKILL)
    second = ps.ensure_server(home)
    assert second.started and second.server_pid != first.server_pid
    assert _healthy(second)
    assert _supervisor.proc_start(first.pid) is None

    # kill -9 of the supervisor: the server dies with it (PR_SET_PDEATHSIG), server.json is left stale.
    os.kill(second.pid, signal.SIGKILL)
    _wait_for(lambda: _supervisor.proc_start(second.server_pid) is None, 20, "the orphaned server to exit")
    assert json.loads((root / "server.json").read_text())["pid"] == second.pid
    assert ps.server_status(home).state == "stale"
    third = ps.ensure_server(home)
    assert third.started and third.pid != second.pid
    assert _healthy(third)
    assert server_processes(root) == ([third.pid], [third.server_pid])


def test_taken_port_falls_back_and_idle_server_stops_itself(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLINGFLOW_SERVER_IDLE_MINUTES", "0.05")  # 3 s
    preferred = int(os.environ["KLINGFLOW_SERVER_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", preferred))
        squatter.listen()
        assert _manager._choose_port(set()) != preferred
        # Even when the port is taken between the check and the server's bind, it retries elsewhere.
        monkeypatch.setattr(_manager, "_port_free", lambda port: True)
        server = ps.ensure_server(home)
        assert server.started and server.port != preferred
        assert _healthy(server)
        assert "already in use" in ps.server_paths(home).log.read_text()
    root = ps.server_paths(home).root
    _wait_for(lambda: server_processes(root) == ([], []), 40, "the idle server and its supervisor to stop")
    assert not (root / "server.json").exists()
    assert "idle for 0.05 min: stopping" in (root / "server.log").read_text()


def test_configured_api_url_or_ephemeral_mode_start_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from klingflow.flows.server import configured_api_url, use_local_server

    assert ps.use_local_server(None, home, mode="ephemeral") is None
    monkeypatch.setenv("KLINGFLOW_PREFECT", "ephemeral")
    assert ps.use_local_server(None, home) is None
    assert use_local_server(home) is None
    monkeypatch.setenv("KLINGFLOW_PREFECT", "local")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert configured_api_url() == "http://127.0.0.1:9/api"
    assert use_local_server(home) is None
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
    root = ps.server_paths(home).root
    assert not (root / "server.json").exists() and server_processes(root) == ([], [])
    # A PREFECT_API_URL klingflow itself set (and marked) is not the user's.
    monkeypatch.setenv("KLINGFLOW_LOCAL_PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert configured_api_url() is None
    monkeypatch.setenv("KLINGFLOW_PREFECT", "remote")
    with pytest.raises(ConfigError, match="KLINGFLOW_PREFECT"):
        ps.use_local_server(None, home)


_FLOW = """
    import json, os
    import prefect  # already imported when use_local_server runs: its settings must be refreshed
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from klingflow.flows.server import use_local_server

    server = use_local_server()
    api = get_client().api_url

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def trivial(x: int = 21) -> int:
        return double(x)

    state = trivial(return_state=True)
    clients = os.path.join(os.environ["KLINGFLOW_HOME"], "prefect-server", "clients")
    lease = os.path.exists(os.path.join(clients, str(os.getpid())))
    print(json.dumps({"ui": server.url, "api": str(api), "env": os.environ.get("PREFECT_API_URL"),
                      "lease": lease, "flow_run_id": str(state.state_details.flow_run_id),
                      "result": state.result()}))
"""


def test_a_flow_run_and_its_task_run_are_recorded_on_the_local_server(home: Path) -> None:
    server = ps.ensure_server(home)
    root = ps.server_paths(home).root
    used = (root / "last-used").stat().st_mtime
    out = _python(_FLOW, {**os.environ})
    assert out["ui"] == server.url and out["env"] == server.api_url
    assert out["api"].rstrip("/") == server.api_url
    assert out["result"] == 42 and out["lease"]
    assert list((root / "clients").iterdir()) == []  # released at exit
    assert (root / "last-used").stat().st_mtime >= used
    _wait_task_runs(server.api_url, out["flow_run_id"], 1)
    # the server klingflow starts takes concurrent writes without a 503 (SQLite IMMEDIATE)
    codes = asyncio.run(create_flow_runs(server.api_url, 120, 16))
    assert all(code in (200, 201) for code in codes), sorted(set(codes))


def _wait_task_runs(api_url: str, flow_run_id: str, count: int) -> list[dict[str, Any]]:
    """The flow run is completed on the server, and its task runs are recorded and completed."""
    flow_run = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=10).raise_for_status().json()
    assert flow_run["state"]["type"] == "COMPLETED"
    body = {"flow_runs": {"id": {"any_": [str(uuid.UUID(flow_run_id))]}}}
    deadline = time.monotonic() + 30
    while True:  # the server's task-run recorder consumes events asynchronously
        runs = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=10).raise_for_status().json()
        if len(runs) == count and all(r["state"]["type"] == "COMPLETED" for r in runs):
            return runs
        assert time.monotonic() < deadline, f"task runs not recorded: {runs}"
        time.sleep(0.5)


def test_a_server_that_cannot_start_fails_clearly_or_falls_back_to_ephemeral(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken" / "prefect"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("import sys\nsys.exit('this prefect is broken')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(broken.parent), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(ConfigError) as failed:
        ps.ensure_server(home)
    assert "this prefect is broken" in failed.value.hint
    said: list[str] = []
    assert ps.use_local_server(None, home, echo=said.append) is None
    assert len(said) == 1 and said[0].endswith("using Prefect's ephemeral mode")
    assert "PREFECT_API_URL" not in os.environ
    root = ps.server_paths(home).root
    assert not (root / "server.json").exists() and server_processes(root) == ([], [])


# --------------------------------------------------------------------------- `klingflow run`


def _pipeline(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nsteps:\n  - id: clip\n    uses: text-to-video\n    with:\n      prompt: {name}\n"
    )
    return path


def _run_env(emulator: EmulatorAdmin) -> dict[str, str]:
    return {**emulator.environment(), **{k: os.environ[k] for k in os.environ if k.startswith("KLINGFLOW_")}}


def _start_run(env: dict[str, str], pipeline: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*KLINGFLOW, "run", str(pipeline), "--backend", "fal", "--out", str(pipeline.with_suffix("")), *args],
        env=env,
        cwd=pipeline.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(run: subprocess.Popen[str]) -> tuple[str, str]:
    stdout, stderr = run.communicate(timeout=240)  # returns only because the server holds no pipe
    assert run.returncode == 0, stdout + stderr
    return stdout, stderr


def _cached_line(stdout: str) -> bool:
    """Whether the run's view said its one step, ``clip``, was a cache hit."""
    return re.search(r"^\S+ clip +cached ", stdout, re.M) is not None


def _ui_line(stdout: str) -> str:
    lines = [line.strip() for line in stdout.splitlines() if line.strip().startswith("Prefect UI: ")]
    assert len(lines) == 1, stdout
    return lines[0].removeprefix("Prefect UI: ")


def test_two_runs_at_once_start_one_server_and_a_killed_server_is_replaced(
    home: Path, emulator: EmulatorAdmin, tmp_path: Path
) -> None:
    env = _run_env(emulator)
    runs = [_start_run(env, _pipeline(tmp_path, name)) for name in ("left", "right")]
    outputs = [_finish(run) for run in runs]
    root = ps.server_paths(home).root
    (supervisor,), (server_pid,) = server_processes(root)
    server = ps.server_status(home).server
    assert server is not None and server.pid == supervisor
    started = [err for _out, err in outputs if "started a local Prefect server" in err]
    assert len(started) == 1 and f"UI at {server.url}" in started[0]
    for stdout, _err in outputs:
        page = _ui_line(stdout)
        assert page.startswith(f"{server.url}/runs/flow-run/")
        _wait_task_runs(server.api_url, page.rsplit("/", 1)[1], 1)

    status = subprocess.run([*KLINGFLOW, "server", "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "state: running" in status.stdout and f"pid: {supervisor} (server {server_pid})" in status.stdout

    os.kill(server_pid, signal.SIGKILL)  # kill -9 of the server: the next run starts a new one
    stdout, stderr = _finish(_start_run(env, _pipeline(tmp_path, "after")))
    (new_supervisor,), (new_server,) = server_processes(root)
    assert new_server != server_pid and new_supervisor != supervisor
    assert "started a local Prefect server" in stderr
    assert _ui_line(stdout).startswith(f"http://127.0.0.1:{os.environ['KLINGFLOW_SERVER_PORT']}/runs/")


def test_a_stale_pid_file_and_a_taken_port_do_not_break_a_run(
    home: Path, emulator: EmulatorAdmin, tmp_path: Path
) -> None:
    root = ps.server_paths(home).root
    preferred = int(os.environ["KLINGFLOW_SERVER_PORT"])
    other = subprocess.Popen(["sleep", "60"])  # the stale pid now belongs to another program
    stale = {
        "pid": other.pid,
        "pid_start": _supervisor.proc_start(other.pid),
        "port": preferred,
        "version": "x",
    }
    (root / "server.json").write_text(json.dumps(stale))
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", preferred))
            squatter.listen()
            stdout, _err = _finish(_start_run(_run_env(emulator), _pipeline(tmp_path, "stale")))
        assert other.poll() is None  # left alone
    finally:
        other.kill()
        other.wait()
    server = ps.server_status(home).server
    assert server is not None and server.port != preferred
    assert _ui_line(stdout).startswith(f"{server.url}/runs/flow-run/")
    assert len(server_processes(root)[0]) == 1


def test_a_configured_prefect_api_wins_and_ephemeral_starts_nothing(
    home: Path, emulator: EmulatorAdmin, tmp_path: Path
) -> None:
    own_home = tmp_path / "own"
    shutil.copytree(ps.server_paths(home).prefect_home, ps.server_paths(own_home).prefect_home)
    own = ps.ensure_server(own_home)  # the test's own server, as a user's `prefect server start`
    try:
        env = {**_run_env(emulator), "PREFECT_API_URL": own.api_url}
        stdout, stderr = _finish(_start_run(env, _pipeline(tmp_path, "configured")))
        assert "started a local Prefect server" not in stderr
        page = _ui_line(stdout)
        assert page.startswith(f"{own.url}/runs/flow-run/")
        _wait_task_runs(own.api_url, page.rsplit("/", 1)[1], 1)

        env.pop("PREFECT_API_URL")
        stdout, stderr = _finish(_start_run(env, _pipeline(tmp_path, "ephemeral"), "--ephemeral"))
        assert "Prefect UI:" not in stdout and "started a local Prefect server" not in stderr
    finally:
        ps.stop_server(own_home)
        _kill_all(ps.server_paths(own_home).root)
    root = ps.server_paths(home).root
    assert not (root / "server.json").exists() and server_processes(root) == ([], [])


def test_a_fully_cached_rerun_runs_without_prefect_and_is_recorded_right_after(
    home: Path, emulator: EmulatorAdmin, tmp_path: Path
) -> None:
    env = _run_env(emulator)
    pipeline = _pipeline(tmp_path, "twice")
    _finish(_start_run(env, pipeline))  # the ordinary run: pays once, starts the server
    server = ps.server_status(home).server
    assert server is not None
    paid = emulator.stats()["total_submits"]

    again = subprocess.run(  # -X importtime: every module the re-run imports, on stderr
        [sys.executable, "-X", "importtime", "-m", "klingflow.cli", "run", str(pipeline), "--backend", "fal",
         "--out", str(tmp_path / "again")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in again.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "klingflow.engine" in imported and not {m for m in imported if m.split(".")[0] == "prefect"}
    assert _cached_line(again.stdout) and emulator.stats()["total_submits"] == paid
    assert _ui_line(again.stdout).startswith(f"{server.url}/runs ")
    run_id = re.search(r"\(run (\w+)\)", again.stdout)[1]  # type: ignore[index]

    # the detached recorder (importing Prefect for a second or more) has no fal key in its environment
    recorder = leftover_processes(f"klingflow.flows.record {run_id}")
    assert len(recorder) == 1, "the recorder was started and still runs"
    environ = Path(f"/proc/{next(iter(recorder))}/environ").read_bytes().split(b"\0")
    assert env["FAL_KEY"] and not [v for v in environ if v.startswith(b"FAL_KEY")]
    # it makes the run a flow run of the same flow, its step a Cached task run, and exits
    pending = ledger.run_dir(run_id) / FLOW_RUN_PARAMETERS
    _wait_for(lambda: not leftover_processes(f"klingflow.flows.record {run_id}"), 60, "the recorder to exit")
    log = (ledger.run_dir(run_id) / "prefect-record.log").read_text()
    assert "recorded as flow run" in log and not list(pending.parent.glob(f"{FLOW_RUN_PARAMETERS}*")), log
    flow_run_id = str(load_manifest(run_id).flow_run_id)
    (task_run,) = _wait_task_runs(server.api_url, flow_run_id, 1)
    rows = ledger.load(run=run_id)
    assert task_run["name"] == "clip" and task_run["state"]["name"] == "Cached"
    assert task_run["state"]["state_details"]["cache_key"] == rows["cache_key"].iloc[0]
    flow_run = httpx.get(f"{server.api_url}/flow_runs/{flow_run_id}", timeout=10).json()
    assert flow_run["parameters"]["pipeline"] == str(pipeline) and flow_run["name"] == "twice"
    assert list(rows["flow_run_id"]) == [flow_run_id]
    assert flow_run_id in (tmp_path / "again" / "report.html").read_text()
    twice = subprocess.run(
        [sys.executable, "-m", "klingflow.flows.record", run_id], env=env, capture_output=True, text=True
    )
    assert twice.returncode == 1, twice.stdout + twice.stderr
    assert f"is already recorded in Prefect: it is flow run {flow_run_id}" in twice.stderr
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    artifacts = httpx.post(f"{server.api_url}/artifacts/filter", json=body, timeout=10).json()
    assert {"klingflow-twice-ledger", "klingflow-twice-progress"} <= {a["key"] for a in artifacts}

    # a Prefect API the user configured (here: the same server, named in the environment) is
    # Prefect's to honour: the same fully cached re-run is an ordinary flow run, with its page
    configured = {**env, "PREFECT_API_URL": server.api_url}
    configured.pop("KLINGFLOW_LOCAL_PREFECT_API_URL", None)
    stdout, _err = _finish(_start_run(configured, pipeline))
    page = _ui_line(stdout)
    assert page.startswith(f"{server.url}/runs/flow-run/") and _cached_line(stdout)
    (task_run,) = _wait_task_runs(server.api_url, page.rsplit("/", 1)[1], 1)
    assert task_run["state"]["name"] == "Cached" and emulator.stats()["total_submits"] == paid

    # with the server down (stopped, or after its idle shutdown) the re-run starts neither a server
    # nor a recorder: the run waits, and the next ordinary run, which starts the server, records it
    assert ps.stop_server(home) is not None
    stdout, stderr = _finish(_start_run(env, pipeline))
    assert _ui_line(stdout) == (
        "the local Prefect server is not running; this run is recorded there by the next run that "
        "starts it, or by `klingflow server start`"
    )
    assert "started a local Prefect server" not in stderr and _cached_line(stdout)
    run_id = re.search(r"\(run (\w+)\)", stdout)[1]  # type: ignore[index]
    assert not leftover_processes(f"klingflow.flows.record {run_id}"), "a recorder was started"
    root = ps.server_paths(home).root
    assert server_processes(root) == ([], []) and load_manifest(run_id).flow_run_id is None
    assert (ledger.run_dir(run_id) / FLOW_RUN_PARAMETERS).is_file()
    stdout, stderr = _finish(_start_run(env, _pipeline(tmp_path, "next")))  # generates: an ordinary run
    assert "started a local Prefect server" in stderr, stderr
    assert "recording 1 run(s) made while the local server was down" in stderr, stderr
    _wait_for(lambda: not leftover_processes(f"klingflow.flows.record {run_id}"), 120, "the recorder to exit")
    log = (ledger.runs_root() / "prefect-record.log").read_text()
    recorded = load_manifest(run_id).flow_run_id
    assert recorded and f"run {run_id} recorded as flow run {recorded}" in log, log
    restarted = ps.server_status(home).server
    assert restarted is not None and restarted.pid != server.pid
    (task_run,) = _wait_task_runs(restarted.api_url, recorded, 1)
    assert task_run["state"]["name"] == "Cached" and emulator.stats()["total_submits"] == paid + 1
    assert not (ledger.run_dir(run_id) / FLOW_RUN_PARAMETERS).exists()


def test_server_stop_right_after_a_cached_rerun_stays_stopped_and_server_start_records_it(
    home: Path, emulator: EmulatorAdmin, tmp_path: Path
) -> None:
    env = _run_env(emulator)
    pipeline = _pipeline(tmp_path, "stopped")
    _finish(_start_run(env, pipeline))  # the ordinary run: pays once, starts the server
    stdout, _err = _finish(_start_run(env, pipeline))  # fully cached, the server up: a recorder starts
    assert _ui_line(stdout).endswith("/runs (this run appears there within seconds)")
    run_id = re.search(r"\(run (\w+)\)", stdout)[1]  # type: ignore[index]
    assert leftover_processes(f"klingflow.flows.record {run_id}"), "the recorder was started"

    # `klingflow server stop` at once (in this process: before the recorder has imported Prefect)
    stopped = CliRunner().invoke(app, ["server", "stop"])
    assert stopped.exit_code == 0, stopped.output
    root = ps.server_paths(home).root
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the recorder must not bring a server back
        assert server_processes(root) == ([], []), "a Prefect server of this home runs again"
        time.sleep(0.25)
    assert not leftover_processes(f"klingflow.flows.record {run_id}"), "the recorder still runs"
    folder = ledger.run_dir(run_id)
    log = (folder / "prefect-record.log").read_text()
    assert f"run {run_id} waits to be recorded in Prefect: the local Prefect server is not running" in log, (
        log
    )
    assert (folder / FLOW_RUN_PARAMETERS).is_file() and load_manifest(run_id).flow_run_id is None

    # the next `klingflow server start` records it, on the server it started
    started = subprocess.run(
        [*KLINGFLOW, "server", "start"], env=env, capture_output=True, text=True, timeout=240
    )
    assert started.returncode == 0, started.stdout + started.stderr
    server = ps.server_status(home).server
    assert server is not None and started.stdout.strip().splitlines()[-1] == server.url
    flow_run_id = load_manifest(run_id).flow_run_id
    assert flow_run_id and f"run {run_id} recorded as flow run {flow_run_id}" in started.stderr, (
        started.stderr
    )
    (task_run,) = _wait_task_runs(server.api_url, flow_run_id, 1)
    assert task_run["name"] == "clip" and task_run["state"]["name"] == "Cached"
    assert not (folder / FLOW_RUN_PARAMETERS).exists()
    again = subprocess.run(
        [*KLINGFLOW, "server", "start"], env=env, capture_output=True, text=True, timeout=240
    )
    assert again.returncode == 0 and "recorded as flow run" not in again.stderr, again.stderr  # nothing waits


def test_server_stop_lets_the_recorders_using_it_finish_then_ends_them(home: Path) -> None:
    from klingflow.cache import claims_from_env
    from klingflow.engine.waiting import recorder_pids, recording_claim, waiting_runs

    server = ps.ensure_server(home)
    root = ps.server_paths(home).root
    (root / "clients").mkdir(exist_ok=True)
    # Three stand-ins for recorders, as a recorder is seen: the claim of a waiting run and, once it
    # uses the server, a lease. One finishes within the grace, one does not, one never attached.
    commands = {"quick": ["sleep", "8"], "slow": ["sleep", "120"], "unattached": ["sleep", "120"]}
    processes = {name: subprocess.Popen(command) for name, command in commands.items()}
    try:
        claims = claims_from_env()
        for name, process in processes.items():
            (ledger.run_dir(name)).mkdir(parents=True)
            (ledger.run_dir(name) / FLOW_RUN_PARAMETERS).write_text("{}")
            assert claims.acquire(
                recording_claim(name), f"{socket.gethostname()}:{process.pid}:test", ttl=300
            )
            if name != "unattached":
                (root / "clients" / str(process.pid)).write_text(_supervisor.proc_start(process.pid) or "")
        assert sorted(waiting_runs()) == sorted(processes)
        assert recorder_pids() == sorted(p.pid for p in processes.values())

        stopped = subprocess.run(
            [*KLINGFLOW, "server", "stop"], env={**os.environ}, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        quick, slow, unattached = processes["quick"], processes["slow"], processes["unattached"]
        waited = sorted([quick.pid, slow.pid])
        assert f"for the run recorder(s) using the server (pid {waited[0]}, {waited[1]})" in stopped.stderr
        assert f"ending the recorder(s) still running (pid {slow.pid})" in stopped.stderr, stopped.stderr
        assert f"stopped the local Prefect server (pid {server.pid}" in stopped.stderr
        assert quick.wait(timeout=5) == 0 and slow.wait(timeout=5) == -signal.SIGTERM
        assert unattached.poll() is None  # it finds no server when it gets to it: left alone
        assert server_processes(root) == ([], [])
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
