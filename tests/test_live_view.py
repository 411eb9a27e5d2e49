"""What ``klingflow run`` shows: a live view on a terminal, a plain line per change elsewhere.

Real runs of the story preset on the embedded emulator (one fal worker, so requests really wait in
its queue), reporting to the session's Prefect server:

* in a pseudo-terminal, its output fed to a terminal emulator (pyte): the final screen holds the
  view's last frame (a row per step, the foreach step as one row with its count, the total line)
  and the summary, and no Prefect or fal log line ever reached the screen;
* through a pipe: one whole line per change of state (starting, queued, running, done), still no
  log line, and the run's log file holds Prefect's task-run lines and fal's model logs;
* ``--verbose`` through a pipe: Prefect's lines are on the console as well.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pyte
import pytest

from conftest import CLIENT_VARIABLES, KLINGFLOW, REPO

STORY = REPO / "deployments" / "pipelines" / "story.yaml"
COLUMNS, ROWS = 100, 50
PREFECT_LINE = re.compile(r"\| (INFO|WARNING|ERROR) +\| ")
"""The shape of a line of Prefect's console handler: ``12:00:00.000 | INFO    | Task run ...``."""

pytestmark = pytest.mark.slow


def _environment(home: Path, session_prefect: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*CLIENT_VARIABLES, "CURL_CA_BUNDLE", "COLUMNS")}
    env.update(session_prefect, KLINGFLOW_HOME=str(home), KLINGFLOW_EMULATOR_WORKERS="1")
    return env


def _in_a_terminal(command: list[str], env: dict[str, str], cwd: Path) -> tuple[int, pyte.Screen, bytes]:
    """Run ``command`` on a pseudo-terminal of COLUMNS x ROWS; its exit status, final screen and output."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen(
        command,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "TERM": "xterm-256color"},
        cwd=cwd,
        start_new_session=True,
    )
    os.close(follower)
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    output = b""
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            output += chunk
            stream.feed(chunk)
        return process.wait(timeout=30), screen, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


def _log_file(stdout: str) -> Path:
    found = re.search(r"^  log: (.+)$", stdout, re.M)
    assert found, stdout
    return Path(found[1].strip())


def test_a_live_view_on_a_terminal_plain_lines_elsewhere_log_lines_with_verbose(
    tmp_path: Path, session_prefect: dict[str, str]
) -> None:
    """The terminal run and the piped one side by side (each its own home and embedded emulator)."""
    piped_env = _environment(tmp_path / "piped", session_prefect)
    command = [*KLINGFLOW, "run", str(STORY), "--backend", "emulator"]
    with open(tmp_path / "piped.out", "wb") as out, open(tmp_path / "piped.err", "wb") as err:
        piped = subprocess.Popen(command, env=piped_env, cwd=tmp_path, stdout=out, stderr=err)
    try:
        _check_the_terminal_run(tmp_path, _environment(tmp_path / "tty", session_prefect), command)
        assert piped.wait(timeout=300) == 0, (tmp_path / "piped.err").read_text()
    finally:
        if piped.poll() is None:
            piped.kill()
            piped.wait()
    _check_the_piped_run((tmp_path / "piped.out").read_text(), (tmp_path / "piped.err").read_text())

    verbose = subprocess.run(
        [*command, "--verbose"], env=piped_env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert verbose.returncode == 0, verbose.stdout + verbose.stderr
    assert PREFECT_LINE.search(verbose.stdout + verbose.stderr), verbose.stdout + verbose.stderr
    assert re.search(r" opening +cached", verbose.stdout), verbose.stdout


def _check_the_terminal_run(tmp_path: Path, env: dict[str, str], command: list[str]) -> None:
    status, screen, output = _in_a_terminal(command, env, tmp_path)
    lines = [line.rstrip() for line in screen.display]
    shown = "\n".join(line for line in lines if line)
    assert status == 0, shown
    header = next(i for i, line in enumerate(lines) if re.match(r"step +state +time +cost$", line))
    rows = lines[header + 1 : header + 6]
    for step, row in zip(("opening", "beats ×2", "keyframe", "flourish", "final_cut"), rows, strict=True):
        assert re.match(rf"{re.escape(step)} +(2 )?done +\d:\d\d", row), shown
    assert re.match(r"opening +done +\d:\d\d +\$0\.225$", rows[0]), shown
    assert re.match(r"beats ×2 +2 done +\d:\d\d +\$0\.450$", rows[1]), shown
    total = lines[header + 6]
    assert re.match(r"6 done; spent \$0\.900, about \$0\.000 to go; \d:\d\d elapsed$", total), shown
    assert any(line.startswith("story: completed, estimated spend $0.900") for line in lines), shown
    assert all(len(line) <= COLUMNS for line in lines)
    # what was drawn on the way, not only the last frame: a step waited in fal's queue, and no log line
    text = output.decode(errors="replace")
    assert "queued" in text and "running" in text, text[-3000:]
    assert not PREFECT_LINE.search(text) and "Generating:" not in text, text[-3000:]
    (log,) = (tmp_path / "tty" / "runs").glob("*/run.log")  # its line on the screen may wrap
    assert any(line.startswith("  log: ") for line in lines) and "prefect.task_runs" in log.read_text()


def _check_the_piped_run(stdout: str, stderr: str) -> None:
    console = stdout + stderr
    changes = [line for line in stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d \S", line)]
    for state in ("starting", "running", "done"):
        assert any(re.match(rf"\S+ opening +{state}\b", line) for line in changes), console
    assert any(re.search(r" queued, \d+ ahead", line) for line in changes), console
    assert re.search(r" final_cut +done [\d.]+ s \(6 done; spent \$0\.900", stdout), console
    assert "\x1b[" not in stdout, "no terminal, no escape codes"
    assert not PREFECT_LINE.search(console) and "Generating:" not in console, console
    logged = _log_file(stdout).read_text()
    assert "prefect.task_runs 'beats[1]'" in logged and "Generating: 25%" in logged, logged
