"""`klingflow validate | plan | run` as a user runs them: real processes, real Prefect, a served emulator.

The crash test kills `klingflow run` with SIGKILL while the emulator holds its requests in progress,
runs again, and reads the emulator's counters: exactly one submit per step.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import KLINGFLOW, REPO, emulator_stats, serve_emulator
from klingflow.emulator.faults import FaultPlan
from klingflow.media import probe

pytestmark = pytest.mark.slow

PIPELINES = REPO / "deployments" / "pipelines"
T2V = "fal-ai/kling-video/v1/standard/text-to-video"


@pytest.fixture(scope="module")
def served(tmp_path_factory, session_prefect: dict[str, str]) -> Iterator[dict[str, str]]:
    """An emulator slow enough (1.5 s per request, 2 workers) to be killed mid-flight; runs report
    to the session's Prefect server."""
    home = tmp_path_factory.mktemp("cli-home")
    with serve_emulator(home, "--latency", "1.5", "--workers", "2") as env:
        env.update(session_prefect)
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
    # which copy of the schemas and prices the plan used: here the vendored snapshot
    assert "schemas and prices: snapshot (schema 2026-05-12, fal-ai/fal-js)" in " ".join(done.stdout.split())


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
    final = tmp_path / "out" / "captioned.mp4"
    assert str(final) in output.replace("\n", "")
    assert probe(final).has_audio
    for suffix in (".srt", ".vtt"):  # the captions step's subtitles beside its video, named as it is
        subtitles = final.with_suffix(suffix)
        assert (
            str(subtitles) in output.replace("\n", "") and "Hello from a CLI test." in subtitles.read_text()
        )
    again = klingflow(
        served,
        "run",
        str(PIPELINES / "avatar.yaml"),
        "--set",
        "line=Hello from a CLI test.",
        "--out",
        str(tmp_path / "out"),
    )
    assert again.returncode == 0 and "3 cached" in again.stdout


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
    while _submitted(journal) < 3:
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
    logged = re.search(r"^  log: (.+)$", again.stdout, re.M)  # step messages are in the run's log file
    assert logged and "resuming request" in Path(logged[1]).read_text(), again.stdout
    assert emulator_stats(served)["submits"][T2V] - before == 3, "exactly one submit per step"
    exported = sorted(p.name for p in (tmp_path / "klingflow-out" / "crashy").iterdir())
    assert exported == ["report.html", "shots-0.mp4", "shots-1.mp4", "shots-2.mp4"]


def _submitted(journal: Path) -> int:
    """Journal entries of requests fal accepted (the journal says so before polling them)."""
    count = 0
    for path in journal.rglob("*.json"):
        with contextlib.suppress(OSError):
            count += '"status": "submitted"' in path.read_text()
    return count


def test_kill_9_then_recover_collects_what_was_paid(served, tmp_path: Path) -> None:
    """`klingflow plan` shows the paid requests as recoverable, `klingflow recover` stores them."""
    pipeline = fan_out(tmp_path, "recoverable", 2)
    env = {**served, "KLINGFLOW_HOME": str(tmp_path / "home")}
    before = emulator_stats(served)["submits"].get(T2V, 0)
    run = subprocess.Popen(
        [*KLINGFLOW, "run", str(pipeline)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _submitted(tmp_path / "home" / "journal") < 2:
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before submitting"
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    planned = klingflow(env, "plan", str(pipeline))
    assert "recoverable" in planned.stdout and "to spend: $0.000" in planned.stdout, planned.stdout
    time.sleep(2)  # the emulator finishes the paid requests (latency 1.5 s)
    recovered = klingflow(env, "recover")
    assert recovered.returncode == 0 and "2 recovered, 0 lost for good" in recovered.stdout, recovered.stdout
    again = klingflow(env, "run", str(pipeline), cwd=tmp_path)
    assert again.returncode == 0 and "2 cached" in again.stdout, again.stdout + again.stderr
    assert emulator_stats(served)["submits"][T2V] - before == 2, "paid once, collected by recover"


def _script_faults(env: dict[str, str], *script: str) -> None:
    """Script the next faults of the emulator ``env`` points at (its admin route)."""
    response = httpx.post(
        f"https://{env['FAL_QUEUE_RUN_HOST']}/_emulator/faults",
        json=FaultPlan(script=list(script)).model_dump(),
        headers={"Authorization": f"Key {env['FAL_KEY']}"},
        verify=ssl.create_default_context(cafile=env["SSL_CERT_FILE"]),
    )
    response.raise_for_status()


def test_a_failing_step_prints_one_clear_summary_and_no_traceback(served, tmp_path: Path) -> None:
    """Output captured (not a terminal, as in CI or `| tee`): klingflow's message, whole lines, no trace."""
    pipeline = tmp_path / "failing.yaml"
    pipeline.write_text(
        "name: failing\n"
        "steps:\n"
        "  - id: doomed\n    uses: text-to-video\n    with: {prompt: a clip whose file vanishes}\n"
        "  - id: fine\n    uses: tts\n    with: {text: This one is fine.}\n"
    )
    _script_faults(served, "result_404@text-to-video")
    try:
        done = klingflow(served, "run", str(pipeline), "--out", str(tmp_path / "out"))
    finally:
        _script_faults(served)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and 'File "' not in output
    lines = done.stderr.splitlines()
    cause = [line for line in lines if line.strip().startswith("doomed:")]
    assert len(cause) == 1, done.stderr
    assert "downloading the result file failed" in cause[0] and "request " in cause[0] and T2V in cause[0]
    assert any(line.strip() == "where: pipeline 'failing'" for line in lines), done.stderr
    assert "  hint: fix the cause and run again: completed steps are cached and not paid twice" in lines
    assert (tmp_path / "out" / "fine.mp3").is_file(), "the independent step finished and was exported"


def test_two_runs_of_one_pipeline_at_once_pay_once_and_both_finish(
    tmp_path: Path, session_prefect: dict[str, str]
) -> None:
    """Two terminals, one home, one emulator: the second run joins the first one's requests.

    Both report to one Prefect server (two ephemeral servers migrating one fresh PREFECT_HOME
    database at once can collide; the local server's own race is tests/test_local_server.py's).
    """
    home = tmp_path / "home"
    with serve_emulator(home, "--latency", "8", "--workers", "4") as env:
        env.update(session_prefect)
        pipeline = fan_out(tmp_path, "together", 2)
        runs = []
        for name in ("first", "second"):
            runs.append(
                subprocess.Popen(
                    [*KLINGFLOW, "run", str(pipeline), "--out", str(tmp_path / name)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            time.sleep(1)
        outputs = [run.communicate(timeout=240) for run in runs]
        for run, (stdout, stderr) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, stdout + stderr
            assert "Traceback" not in stdout + stderr and "KeyError" not in stdout + stderr
            assert "shots-0: " in stdout and "shots-1: " in stdout
        assert emulator_stats(env)["submits"] == {T2V: 2}, "one submit per step across both runs"
        assert "joined" in outputs[0][0] + outputs[1][0]
        for name in ("first", "second"):
            assert probe(tmp_path / name / "shots-0.mp4").duration > 4
