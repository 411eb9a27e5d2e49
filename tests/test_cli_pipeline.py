"""`klingflow validate | plan | run` as a user runs them: real processes, real Prefect, a served emulator.

The crash test kills `klingflow run` with SIGKILL while the emulator holds its requests in progress,
runs again, and reads the emulator's counters: exactly one submit per step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import KLINGFLOW, REPO, emulator_stats, serve_emulator
from klingflow.media import probe

pytestmark = pytest.mark.slow

PIPELINES = REPO / "deployments" / "pipelines"
T2V = "fal-ai/kling-video/v1/standard/text-to-video"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict[str, str]]:
    """An emulator slow enough (1.5 s per request, 2 workers) to be killed mid-flight."""
    home = tmp_path_factory.mktemp("cli-home")
    with serve_emulator(home, "--latency", "1.5", "--workers", "2") as env:
        env["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
        yield env


def klingflow(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KLINGFLOW, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def fan_out(tmp_path: Path, name: str, count: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    shots = "".join(f"      - shot number {i} of {name}\n" for i in range(count))
    path.write_text(f"""name: {name}
inputs:
  shots:
    type: list
    default:
{shots}steps:
  - id: shots
    uses: text-to-video
    foreach: ${{inputs.shots}}
    with:
      prompt: ${{item}}
""")
    return path


def test_validate_ok_and_errors_name_file_line_step_field(served) -> None:
    ok = klingflow(served, "validate", str(PIPELINES / "story.yaml"))
    assert ok.returncode == 0 and "5 steps" in ok.stdout
    bad = klingflow(served, "validate", str(REPO / "tests" / "specs" / "invalid" / "bad_enum.yaml"))
    assert bad.returncode == 1
    assert "bad_enum.yaml:" in bad.stderr and "step '" in bad.stderr and "Traceback" not in bad.stderr


def test_plan_prints_costs_and_totals(served) -> None:
    done = klingflow(served, "plan", str(PIPELINES / "story.yaml"), "--set", "aspect_ratio=9:16")
    assert done.returncode == 0, done.stderr
    assert "to spend: $0.900" in done.stdout and "4 generations to run" in done.stdout
    assert "beats[1]" in done.stdout


def test_run_prints_progress_and_final_paths_without_tracebacks(served, tmp_path: Path) -> None:
    done = klingflow(
        served,
        "run",
        str(PIPELINES / "avatar.yaml"),
        "--set",
        "line=Hello from a CLI test.",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "CancelledError" not in output and "database is locked" not in output
    final = tmp_path / "out" / "presenter.mp4"
    assert str(final) in output.replace("\n", "")
    assert probe(final).has_audio
    again = klingflow(
        served,
        "run",
        str(PIPELINES / "avatar.yaml"),
        "--set",
        "line=Hello from a CLI test.",
        "--out",
        str(tmp_path / "out"),
    )
    assert again.returncode == 0 and "2 cached" in again.stdout


def test_budget_refusal_submits_nothing(served, tmp_path: Path) -> None:
    before = emulator_stats(served)["total_submits"]
    done = klingflow(served, "run", str(fan_out(tmp_path, "pricey", 3)), "--max-cost", "0.5")
    assert done.returncode == 1
    assert "over the limit" in done.stderr and "$0.675" in done.stderr
    assert emulator_stats(served)["total_submits"] == before


def test_kill_9_then_rerun_submits_each_step_once(served, tmp_path: Path) -> None:
    pipeline = fan_out(tmp_path, "crashy", 3)
    env = {**served, "KLINGFLOW_HOME": str(tmp_path / "client-home")}
    before = emulator_stats(served)["submits"].get(T2V, 0)
    run = subprocess.Popen(
        [*KLINGFLOW, "run", str(pipeline)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = tmp_path / "client-home" / "journal"
    deadline = time.monotonic() + 120
    while len(list(journal.rglob("*.json"))) < 3:
        assert run.poll() is None, "the run ended before all requests were submitted"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    stats = emulator_stats(served)
    assert stats["submits"][T2V] - before == 3 and stats["open"] > 0, "requests were in flight at the kill"
    again = subprocess.run(
        [*KLINGFLOW, "run", str(pipeline)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "resuming request" in again.stdout + again.stderr
    assert emulator_stats(served)["submits"][T2V] - before == 3, "exactly one submit per step"
    exported = sorted(p.name for p in (tmp_path / "klingflow-out" / "crashy").iterdir())
    assert exported == ["report.html", "shots-0.mp4", "shots-1.mp4", "shots-2.mp4"]
