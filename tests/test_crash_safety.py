"""Issue 12, items 2 and 5: ``kill -9`` of ``klingflow run`` at random moments loses nothing, pays
nothing twice, and leaves no process behind.

A 6-step pipeline with local inputs, so upload, submit, poll, download and local media work are all
in play: ``portrait`` (image-to-video of a local image), ``opening`` and ``closing``
(text-to-video), ``still`` (last_frame of the opening), ``sparkle`` (effects on that still: a local
file uploaded mid-run) and ``final_cut`` (concat of the four clips). It runs through the tests'
fault proxy in front of a dedicated emulator (benchmark rendering, 1 s latency, so kills land
mid-request); the proxy holds back every submit's answer 1.5 s *after* fal accepted it, the window
in which a kill leaves a paid request its journal does not know yet.

* 20 trials, each in a fresh klingflow home: start ``klingflow run``, SIGKILL it after a delay drawn
  by ``random.Random(SEED)`` between 0.5 s and the uninterrupted run's duration, look for processes
  it left behind, then run again to completion. The rerun's final output must be byte-identical
  (sha256) to the uninterrupted run's (the emulator's benchmark clips differ per request only in a
  top-level ``free`` box that the concat does not copy, so equal bytes mean intact clips), and the
  proxy must count exactly one accepted submit per generation step over kill + rerun. These runs use
  a Prefect server of the test's own (about a second of Prefect per run instead of several), two
  trials at a time, each through its own proxy.
* 2 trials as a user without a Prefect server runs them (klingflow's local server), killed once
  the flow has started submitting: only that deliberate server may outlive the killed run.

A process is "left behind" when, seconds after the kill, it still has the trial's own
``KLINGFLOW_HOME`` in its environment or command line (every process the run started inherits it).
The test then stops those processes itself, by pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import prefect_server, serve_emulator
from faultproxy import Fault, FaultProxy
from moneyhelpers import (
    accepted_by_endpoint,
    exchange_log,
    klingflow_run,
    run_env,
    start_klingflow_run,
    stop_processes,
    wait_for_leftovers,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the trials run in a module fixture

SEED = 20261128
TRIALS = 20
EPHEMERAL_TRIALS = 2
LANES = 2  # trials at once, each through its own proxy
GENERATIONS = Counter({"image-to-video": 1, "text-to-video": 2, "effects": 1})
SUBMIT_HELD = (
    1.5  # seconds each submit's answer is held back after fal accepted it (~1 kill in 4 lands there)
)

PIPELINE = """\
name: crashsafe
description: Six steps with local inputs, for kill -9 at random moments.
steps:
  - id: portrait
    uses: image-to-video
    with: {prompt: "the harbour wakes up", image_url: harbour.png, duration: 5}
  - id: opening
    uses: text-to-video
    with: {prompt: "a lighthouse at dawn", duration: 5}
  - id: closing
    uses: text-to-video
    with: {prompt: "the lighthouse at night", duration: 5}
  - id: still
    uses: last_frame
    with: {video: "${steps.opening.video}"}
  - id: sparkle
    uses: effects
    with: {effect_scene: bloombloom, input_image_urls: ["${steps.still.image}"]}
  - id: final_cut
    uses: concat
    with:
      inputs:
        - ${steps.portrait.video}
        - ${steps.opening.video}
        - ${steps.sparkle.video}
        - ${steps.closing.video}
"""


@dataclass
class World:
    root: Path
    pipeline: Path
    proxies: list[FaultProxy]  # one per lane: each counts its own trial's submits
    prefect: dict[str, str]
    baseline_seconds: float = 0.0
    baseline_sha256: str = ""
    baseline_accepted: Counter[str] = field(default_factory=Counter)
    baseline_output: str = ""

    def env(self, proxy: FaultProxy, home: Path, *, ephemeral: bool = False) -> dict[str, str]:
        """``ephemeral``: the user's default, no Prefect API configured: klingflow's local server."""
        prefect_home = self.root / ("prefect-local" if ephemeral else "prefect-client")
        env = run_env(proxy, home, None if ephemeral else self.prefect, prefect_home)
        if ephemeral:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                env.update(KLINGFLOW_PREFECT="local", KLINGFLOW_SERVER_PORT=str(sock.getsockname()[1]))
        return env


def arm(proxy: FaultProxy) -> None:
    """Forget the last trial's counts; hold back every submit's answer after fal accepted it."""
    proxy.reset()
    proxy.inject("submit", Fault.SLOW, times=1000, delay=SUBMIT_HELD)


@dataclass
class Trial:
    number: int
    delay: float
    killed: bool = False  # False: the run had finished before its kill moment
    left_behind: dict[int, str] = field(default_factory=dict)
    rerun_code: int | None = None
    rerun_output: str = ""
    rerun_seconds: float = 0.0
    sha256: str | None = None
    accepted: Counter[str] = field(default_factory=Counter)
    exchanges: str = ""
    left_after_rerun: dict[int, str] = field(default_factory=dict)
    error: str = ""  # the trial itself broke (a traceback)

    def __repr__(self) -> str:
        return f"Trial({self.number}, delay={self.delay:.2f}, killed={self.killed})"


class Trials(list[Trial]):
    def __repr__(self) -> str:
        return f"<{len(self)} trials>"


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def harbour_png(path: Path) -> None:
    """A 16:9 local image (640x360, Kling's minimum is 300 a side): every clip is then 1280x720,
    so the concat copies packets and its output depends only on the clips' media."""
    image = Image.new("RGB", (640, 360), (30, 60, 120))
    ImageDraw.Draw(image).ellipse((280, 120, 360, 240), fill=(230, 200, 150))
    image.save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("crash")
    folder = root / "pipeline"
    folder.mkdir()
    harbour_png(folder / "harbour.png")
    (folder / "crash.yaml").write_text(PIPELINE)
    with contextlib.ExitStack() as stack:
        fal = stack.enter_context(
            serve_emulator(
                root / "emulator", "--latency", "1", "--render-mode", "prerendered", "--workers", "8"
            )
        )
        proxies = [
            stack.enter_context(
                FaultProxy(
                    fal["FAL_QUEUE_RUN_HOST"],
                    run_host=fal["FAL_RUN_HOST"],
                    ca_bundle=fal["SSL_CERT_FILE"],
                    key=fal["FAL_KEY"],
                )
            )
            for _ in range(LANES)
        ]
        prefect = stack.enter_context(prefect_server(root / "prefect-server"))
        world = World(root, folder / "crash.yaml", proxies, prefect)
        proxy = proxies[0]
        arm(proxy)
        started = time.monotonic()
        code, output = klingflow_run(
            world.pipeline, world.env(proxy, root / "baseline-home"), root / "baseline-out"
        )
        world.baseline_seconds = time.monotonic() - started
        assert code == 0, f"the uninterrupted run failed:\n{output}"
        world.baseline_sha256 = sha256(root / "baseline-out" / "final_cut.mp4") or ""
        world.baseline_accepted = accepted_by_endpoint(proxy)
        world.baseline_output = output
        yield world


def kill_then_rerun(world: World, proxy: FaultProxy, trial: Trial, *, ephemeral: bool = False) -> Trial:
    """One trial: a run killed with SIGKILL at its moment, the processes it left, a rerun to the end."""
    home = world.root / f"{'ephemeral' if ephemeral else 'trial'}-{trial.number:02d}"
    marker = str(home)
    # Each trial's own prompts: trials run side by side on one emulator and one fal key, and fal's
    # request history (which a rerun asks about a lost submit) must not show one trial another's.
    pipeline = home / "pipeline" / "crash.yaml"
    pipeline.parent.mkdir(parents=True)
    shutil.copyfile(world.pipeline.parent / "harbour.png", pipeline.parent / "harbour.png")
    tag = f" (trial {'e' if ephemeral else ''}{trial.number})"
    pipeline.write_text(PIPELINE.replace('", duration', f'{tag}", duration'))
    arm(proxy)
    process = start_klingflow_run(pipeline, world.env(proxy, home, ephemeral=ephemeral), home / "killed")
    try:
        if ephemeral:  # the temporary server is up once the flow submits: kill a moment after that
            deadline = time.monotonic() + 120
            while proxy.counts["submit"]["seen"] == 0 and process.poll() is None:
                assert time.monotonic() < deadline, "the ephemeral run never submitted"
                time.sleep(0.05)
        time.sleep(trial.delay)
        trial.killed = process.poll() is None
        if trial.killed:
            os.kill(process.pid, signal.SIGKILL)  # the run's own process only, as `kill -9 PID` would
    finally:
        process.wait()
    left = wait_for_leftovers(marker, grace=3.0)
    # klingflow's local Prefect server is a deliberate background service (its supervisor and the
    # server it runs), reused by the rerun and stopped below; anything else is an orphan.
    trial.left_behind = {pid: cmd for pid, cmd in left.items() if not _managed_server(cmd)}
    stop_processes(list(trial.left_behind))  # ours to stop: the test started them

    started = time.monotonic()
    trial.rerun_code, trial.rerun_output = klingflow_run(pipeline, world.env(proxy, home), home / "out")
    trial.rerun_seconds = time.monotonic() - started
    trial.sha256 = sha256(home / "out" / "final_cut.mp4")
    trial.accepted = accepted_by_endpoint(proxy)
    trial.exchanges = exchange_log(proxy)
    if ephemeral:
        subprocess.run(
            [sys.executable, "-m", "klingflow.cli", "server", "stop"],
            env=world.env(proxy, home),
            capture_output=True,
            timeout=60,
        )
    trial.left_after_rerun = wait_for_leftovers(marker, grace=2.0)
    stop_processes(list(trial.left_after_rerun))
    return trial


def _managed_server(command: str) -> bool:
    """klingflow's local Prefect server: its supervisor, or the Prefect server it runs (sqlite_server.py)."""
    return "_supervisor.py" in command or "prefect server start" in command or "sqlite_server.py" in command


def run_trials(world: World, trials: list[Trial], *, ephemeral: bool = False) -> Trials:
    """The trials, LANES at a time (each lane its own proxy, so each trial's count is its own)."""

    def lane(index: int) -> None:
        for trial in trials[index::LANES]:
            try:
                kill_then_rerun(world, world.proxies[index], trial, ephemeral=ephemeral)
            except Exception:
                trial.error = traceback.format_exc()

    with ThreadPoolExecutor(LANES) as pool:
        list(pool.map(lane, range(LANES)))
    return Trials(trials)


@pytest.fixture(scope="module")
def trials(world: World) -> Trials:
    rng = random.Random(SEED)
    delays = [rng.uniform(0.5, world.baseline_seconds) for _ in range(TRIALS)]
    return run_trials(world, [Trial(number, delay) for number, delay in enumerate(delays)])


@pytest.fixture(scope="module")
def ephemeral_trials(world: World) -> Trials:
    rng = random.Random(SEED + 1)
    return run_trials(
        world, [Trial(number, rng.uniform(0.0, 1.5)) for number in range(EPHEMERAL_TRIALS)], ephemeral=True
    )


def describe(trial: Trial) -> str:
    return (
        f"trial {trial.number} (killed at {trial.delay:.2f} s{'' if trial.killed else ', had already ended'})"
    )


def test_the_uninterrupted_run_pays_each_generation_once(world: World) -> None:
    assert world.baseline_sha256, world.baseline_output
    assert world.baseline_accepted == GENERATIONS, exchange_log(world.proxies[0])


def test_a_rerun_after_kill_9_finishes_with_the_uninterrupted_output(world: World, trials: Trials) -> None:
    assert sum(t.killed for t in trials) >= TRIALS // 2, (
        f"too few runs were still running at their kill: {trials}"
    )
    problems = [f"{describe(t)}: the trial broke:\n{t.error}" for t in trials if t.error]
    for trial in trials:
        if trial.error:
            continue
        if trial.rerun_code != 0:
            tail = "\n    ".join(trial.rerun_output.strip().splitlines()[-12:])
            problems.append(f"{describe(trial)}: the rerun exited {trial.rerun_code}:\n    {tail}")
        elif trial.sha256 != world.baseline_sha256:
            problems.append(
                f"{describe(trial)}: final_cut.mp4 sha256 {trial.sha256} != {world.baseline_sha256}"
            )
    assert not problems, "\n".join(problems)


def test_kill_and_rerun_pay_each_generation_exactly_once(world: World, trials: Trials) -> None:
    problems = [
        f"{describe(trial)}: proxy counted {sum(trial.accepted.values())} accepted submits for "
        f"{sum(GENERATIONS.values())} generation steps: {dict(trial.accepted)}\n{trial.exchanges}"
        for trial in trials
        if trial.accepted != GENERATIONS and not trial.error
    ]
    total = sum(sum(t.accepted.values()) for t in trials)
    assert not problems, (
        f"{total} accepted over {len(trials)} trials (want {4 * len(trials)}):\n" + "\n".join(problems)
    )


def test_a_killed_run_leaves_no_process_behind(trials: Trials) -> None:
    problems = [f"{describe(t)}: left {t.left_behind}" for t in trials if t.left_behind]
    problems += [f"{describe(t)}: its rerun left {t.left_after_rerun}" for t in trials if t.left_after_rerun]
    assert not problems, "\n".join(problems)


def test_a_killed_run_leaves_no_orphan_behind(world: World, ephemeral_trials: Trials) -> None:
    """Issue 12 item 5: with no Prefect API configured, ``klingflow run`` used to start Prefect's
    temporary server, which a ``kill -9`` of the run left orphaned (~200 MB, holding any concurrency
    slot it granted). Now it uses klingflow's local server, a deliberate background service that the
    rerun reuses; nothing else of klingflow's or Prefect's may outlive the killed run."""
    problems = [f"{describe(t)}: the trial broke:\n{t.error}" for t in ephemeral_trials if t.error]
    problems += [
        f"{describe(t)}: was not running any more at its kill" for t in ephemeral_trials if not t.killed
    ]
    problems += [f"{describe(t)}: left {t.left_behind}" for t in ephemeral_trials if t.left_behind]
    for trial in ephemeral_trials:
        if trial.rerun_code != 0 or trial.sha256 != world.baseline_sha256:
            problems.append(f"{describe(trial)}: rerun exit {trial.rerun_code}, sha256 {trial.sha256}")
        if trial.accepted != GENERATIONS:
            problems.append(f"{describe(trial)}: accepted {dict(trial.accepted)}")
    assert not problems, "\n".join(problems)
