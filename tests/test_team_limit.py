"""The team's fal cap: a Prefect global concurrency limit every process's requests share.

Three ``klingflow run`` processes (separate homes, each allowed 4 requests at once) against one
emulator and one real Prefect server, with ``KLINGFLOW_TEAM_LIMIT`` naming a limit of 2: the
emulator, which counts requests in flight itself, never sees more than 2. A run naming a limit
that does not exist is refused before it pays anything. A holder killed with SIGKILL while it holds
the only slot gives it back when its lease runs out (``KLINGFLOW_TEAM_LEASE`` plus the server's
15 s check), and the next run then goes ahead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import KLINGFLOW, emulator_stats, prefect_server, serve_emulator
from klingflow.flows.team import read_team_limit
from moneyhelpers import ledger_rows

pytestmark = pytest.mark.slow

LEASE = 60.0  # the shortest lease Prefect's server grants


class _NONE:
    active_slots = 0


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server and an emulator (2 s a request, 12 at once) that every process here shares."""
    root = tmp_path_factory.mktemp("team-limit")
    with prefect_server(root / "prefect") as prefect:
        with serve_emulator(root / "emulator", "--latency", "2", "--workers", "12") as fal:
            yield {
                **{k: v for k, v in fal.items() if not k.startswith("PREFECT_")},
                **prefect,
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "KLINGFLOW_TEAM_LEASE": str(LEASE),
            }


def _pipeline(folder: Path, name: str, lines: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    steps = "".join(
        f"  - id: line_{i}\n    uses: tts\n    with: {{text: '{name} says line {i}'}}\n" for i in range(lines)
    )
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nsteps:\n{steps}")
    return path


def _start(env: dict[str, str], pipeline: Path, home: Path, concurrency: int = 4) -> subprocess.Popen[bytes]:
    log = open(home.with_suffix(".log"), "wb")  # noqa: SIM115 (closed when the process is reaped)
    return subprocess.Popen(
        [*KLINGFLOW, "run", str(pipeline), "--concurrency", str(concurrency), "--out", str(home / "out")],
        env={**env, "KLINGFLOW_HOME": str(home)},
        cwd=pipeline.parent,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _limit(env: dict[str, str], name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLINGFLOW, "team-limit", name, *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_three_processes_never_have_more_than_the_team_limit_at_fal(
    team: dict[str, str], tmp_path: Path
) -> None:
    made = _limit(team, "fal-account", "--slots", "2")
    assert made.returncode == 0 and "fal-account: 0 of 2 slots in use" in made.stdout, (
        made.stdout + made.stderr
    )
    env = {**team, "KLINGFLOW_TEAM_LIMIT": "fal-account"}
    before = emulator_stats(env)["submits"]
    runs = [
        _start(env, _pipeline(tmp_path / f"p{i}", f"voice{i}", 3), tmp_path / f"home{i}") for i in range(3)
    ]
    codes = [run.wait(timeout=240) for run in runs]
    logs = [(tmp_path / f"home{i}.log").read_text(errors="replace")[-2000:] for i in range(3)]
    assert codes == [0, 0, 0], logs
    stats = emulator_stats(env)
    paid = sum(stats["submits"].values()) - sum(before.values())
    assert paid == 9, stats
    assert stats["max_open"] == 2, f"in flight at once, across the three processes: {stats['max_open']}"
    assert "0 of 2 slots in use" in _limit(team, "fal-account").stdout, "every slot was given back"


def test_a_run_naming_a_missing_limit_is_refused_before_it_pays(team: dict[str, str], tmp_path: Path) -> None:
    env = {**team, "KLINGFLOW_TEAM_LIMIT": "nobody-made-this"}
    before = emulator_stats(env)["submits"]
    run = _start(env, _pipeline(tmp_path / "p", "missing", 1), tmp_path / "home")
    assert run.wait(timeout=120) == 2, "a configuration error"
    output = (tmp_path / "home.log").read_text()
    assert "the team limit 'nobody-made-this' (KLINGFLOW_TEAM_LIMIT) does not exist" in output, output[-2000:]
    assert emulator_stats(env)["submits"] == before, "nothing was submitted"


def test_a_killed_holder_s_slot_comes_back_when_its_lease_runs_out(
    team: dict[str, str], tmp_path: Path
) -> None:
    assert _limit(team, "one-slot", "--slots", "1").returncode == 0
    env = {**team, "KLINGFLOW_TEAM_LIMIT": "one-slot"}
    holder = _start(env, _pipeline(tmp_path / "a", "holder", 3), tmp_path / "holder", concurrency=1)
    deadline = time.monotonic() + 120
    with temporary_settings(updates={PREFECT_API_URL: team["PREFECT_API_URL"]}):
        while (asyncio.run(read_team_limit("one-slot")) or _NONE).active_slots < 1:
            assert holder.poll() is None and time.monotonic() < deadline, (
                tmp_path / "holder.log"
            ).read_text()
            time.sleep(0.05)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    killed = datetime.now(UTC)
    follower = _start(env, _pipeline(tmp_path / "b", "follower", 1), tmp_path / "follower")
    assert follower.wait(timeout=120) == 0, (tmp_path / "follower.log").read_text()[-2000:]
    (row,) = ledger_rows(tmp_path / "follower")
    waited = (row["submitted_at"] - killed).total_seconds()
    assert LEASE - 1 <= waited <= LEASE + 15 + 10, f"the follower's submit came {waited:.1f} s after the kill"
