"""Deployments on a real Prefect server (SQLite on loopback), as a team runs them.

1. `klingflow serve` serves prefect.yaml's deployments; `story-nightly` is started with parameters
   through `run_deployment` (what the UI's "Quick run" does) and completes on the emulator.
2. The multi-machine path of the README: a process work pool, `prefect deploy --all`, two
   `prefect worker start` processes sharing KLINGFLOW_HOME; the same fan-out pipeline started twice
   at once (one request at a time each) runs on both workers, each worker generates part of the
   fan-out and joins the rest, and the emulator counts one submit per step.
3. A worker is killed (SIGKILL) while it holds claims on in-flight requests; a run on the other
   worker takes the claims over and finishes by polling the recorded request ids: no second submit.
4. The Prefect UI in headless Chromium shows the completed run and its klingflow artifacts
   (with KLINGFLOW_UPDATE_DOCS=1 the test refreshes docs/prefect-ui.png).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId
from prefect.client.schemas.sorting import ArtifactSort
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import KLINGFLOW, PREFECT, REPO, emulator_stats, prefect_server, serve_emulator, stop_group
from klingflow import ledger
from klingflow.media import probe
from test_report import chromium_page, evaluate

pytestmark = pytest.mark.slow

T2V = "fal-ai/kling-video/v1/standard/text-to-video"


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A Prefect server + an emulator + a shared klingflow home: the environment every worker gets."""
    root = tmp_path_factory.mktemp("team")
    with prefect_server(root / "prefect") as variables:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | variables
        with serve_emulator(root / "emulator-home", "--latency", "1.5", "--workers", "8") as fal_env:
            fal = {
                k: fal_env[k]
                for k in (
                    "FAL_KEY",
                    "FAL_RUN_HOST",
                    "FAL_QUEUE_RUN_HOST",
                    "SSL_CERT_FILE",
                    "NO_PROXY",
                    "HTTPS_PROXY",
                )
            }
            env.update(fal, KLINGFLOW_HOME=str(root / "shared-home"), KLINGFLOW_PROJECT_DIR=str(REPO))
            yield env


def _api(env: dict[str, str]):  # type: ignore[no-untyped-def]
    return temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]})


async def _wait_for_deployment(name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            try:
                await client.read_deployment_by_name(name)
                return
            except Exception:
                assert time.monotonic() < deadline, f"deployment {name} never appeared"
                await asyncio.sleep(0.5)


def _worker(env: dict[str, str], name: str, *, log: Path) -> subprocess.Popen[Any]:
    """`prefect worker start` on the klingflow pool, taking one flow run at a time."""
    return _start(
        env, *PREFECT, "worker", "start", "--pool", "klingflow", "--name", name, "--limit", "1", log=log
    )


def _start(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[Any]:
    handle = log.open("w")
    return subprocess.Popen(
        list(args), env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def test_serve_then_run_story_nightly_with_parameters(team: dict[str, str], tmp_path: Path) -> None:
    registered = subprocess.run([*KLINGFLOW, "blocks", "register"], env=team, capture_output=True, text=True)
    assert registered.returncode == 0 and "fal-credentials" in registered.stdout, registered.stderr
    served = _start(team, *KLINGFLOW, "serve", log=tmp_path / "serve.log")
    try:
        with _api(team):
            asyncio.run(_wait_for_deployment("klingflow-story/story-nightly"))
            run = run_deployment(
                "klingflow-story/story-nightly",
                timeout=300,
                parameters={
                    "inputs": {
                        "subject": "a robot gardener",
                        "aspect_ratio": "9:16",
                        "beats": ["it waters a rose"],
                    },
                    "out_dir": str(tmp_path / "out"),
                },
            )
        log = (tmp_path / "serve.log").read_text()
        assert run.state is not None and run.state.is_completed(), log[-3000:]
        final = probe(tmp_path / "out" / "final_cut.mp4")
        assert (final.width, final.height) == (720, 1280) and abs(final.duration - 15.0) < 0.1
        rows = ledger.load(run=str(run.id), root=Path(team["KLINGFLOW_HOME"]) / "ledger")
        assert list(rows["step_id"]) == ["opening", "beats", "keyframe", "flourish", "final_cut"]
        assert (rows["flow_run_id"] == str(run.id)).all()
        with _api(team):
            keys = asyncio.run(_artifact_keys(str(run.id)))
        assert {"klingflow-story-ledger", "klingflow-story-summary"} <= keys
        _check_ui(team, str(run.id))
        _run_nightly_batch(team, tmp_path / "batch")
    finally:
        stop_group(served)


def _run_nightly_batch(team: dict[str, str], out: Path) -> None:
    """The scheduled batch deployment, with its own parameters: tonight's sheet, one child per row."""
    with _api(team):
        asyncio.run(_wait_for_deployment("klingflow-avatar-batch/avatar-lines-nightly"))
        run = run_deployment(
            "klingflow-avatar-batch/avatar-lines-nightly", timeout=300, parameters={"out_dir": str(out)}
        )
        assert run.state is not None and run.state.is_completed(), run.state
        children = asyncio.run(_children(run.id))
    assert sorted(child.name for child in children) == ["avatar-thanks", "avatar-welcome"]
    assert all(child.state is not None and child.state.is_completed() for child in children)
    assert probe(out / "welcome" / "captioned.mp4").has_video and (out / "thanks" / "captioned.srt").is_file()
    (table,) = out.glob("batch-*.csv")
    assert len(table.read_text().splitlines()) == 3


async def _children(parent_id: Any) -> list[Any]:
    """The child flow runs of a flow run (Prefect links each through a task run of the parent)."""
    async with get_client() as client:
        links = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent_id]))
        )
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[link.id for link in links])
            )
        )


async def _artifact_keys(flow_run_id: str) -> set[str]:
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=50,
            sort=ArtifactSort.CREATED_DESC,
        )
    return {a.key for a in artifacts if a.key}


def _check_ui(team: dict[str, str], flow_run_id: str) -> None:
    """The Prefect UI, in headless Chromium, shows the run Completed and its klingflow artifacts."""
    ui = team["PREFECT_API_URL"].removesuffix("/api")

    def wait_for(call, text: str) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 60
        while True:
            body = evaluate(call, "document.body ? document.body.innerText : ''") or ""
            if text in body:
                return body
            assert time.monotonic() < deadline, f"{text!r} never appeared in the UI: {body[:1500]}"
            time.sleep(0.5)

    with chromium_page(f"{ui}/runs/flow-run/{flow_run_id}") as call:
        wait_for(call, "Completed")
        wait_for(call, "final_cut")  # the task runs are listed by step id
        evaluate(call, "document.querySelector('li.p-tab#artifacts').click()")
        wait_for(call, "klingflow-story-summary")
        shot = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
    if os.environ.get("KLINGFLOW_UPDATE_DOCS"):
        (REPO / "docs" / "prefect-ui.png").write_bytes(shot)


async def _flow_runs(ids: list[str]) -> list[Any]:
    async with get_client() as client:
        return [await client.read_flow_run(i) for i in ids]


@pytest.fixture(scope="module")
def deployed(team: dict[str, str]) -> dict[str, str]:
    """The README's multi-machine set-up: a process work pool and `prefect deploy --all`."""
    subprocess.run(
        [*PREFECT, "work-pool", "create", "klingflow", "--type", "process", "--overwrite"],
        env=team,
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [*PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
        env=team,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return team


def _until_final(ids: list[str], timeout: float = 300) -> list[Any]:
    """Poll the flow runs until every one is in a final state; return them."""
    deadline = time.monotonic() + timeout
    while True:
        states = asyncio.run(_flow_runs(ids))
        if all(s.state and s.state.is_final() for s in states):
            return states
        assert time.monotonic() < deadline, [s.state_name for s in states]
        time.sleep(1)


def test_two_workers_share_the_work_and_pay_once(deployed: dict[str, str], tmp_path: Path) -> None:
    team = deployed
    workers = [_worker(team, f"w{i}", log=tmp_path / f"worker{i}.log") for i in (1, 2)]
    before = emulator_stats(team)["submits"].get(T2V, 0)
    # Five beats at concurrency 1 (about 9 s of generation for one worker alone): long enough that
    # the second worker, whose flow-run process starts a few seconds after the first's, finds keys
    # nobody has claimed yet.
    beats = ["one", "two", "three", "four", "five"]
    parameters = {"inputs": {"subject": "two workers", "beats": beats}, "concurrency": 1}
    try:
        with _api(team):
            runs = [
                run_deployment("klingflow-story/story", parameters=parameters, timeout=0) for _ in range(2)
            ]
            states = _until_final([str(r.id) for r in runs])
        assert [s.state_name for s in states] == ["Completed", "Completed"], (
            tmp_path / "worker1.log"
        ).read_text()[-2000:] + (tmp_path / "worker2.log").read_text()[-2000:]
        pids = {s.infrastructure_pid for s in states}
        assert len(pids) == 2, "each run ran in its own worker process"
        submitted = emulator_stats(team)["submits"].get(T2V, 0) - before
        assert submitted == 1 + len(beats), "opening + the beats, each generated once across both workers"
        home = Path(team["KLINGFLOW_HOME"]) / "ledger"
        frames = [ledger.load(run=str(r.id), root=home) for r in runs]
        generated = [
            set(rows.loc[(rows["status"] == "completed") & (rows["kind"] == "endpoint"), "step_id"])
            for rows in frames
        ]
        rows = [f[["step_id", "item_index", "status", "started_at"]].to_dict("records") for f in frames]
        assert all(generated), f"both workers generated part of the fan-out: {generated}; rows: {rows}"
    finally:
        for worker in workers:
            stop_group(worker)


def _journal_requests(home: Path) -> int:
    return sum(
        '"status":"submitted"' in p.read_text().replace(" ", "") for p in (home / "journal").rglob("*.json")
    )


def test_a_killed_worker_is_taken_over_without_a_second_submit(
    deployed: dict[str, str], tmp_path: Path
) -> None:
    team = deployed
    parameters = {"inputs": {"subject": "a worker that dies", "beats": ["first", "second"]}}
    before = emulator_stats(team)["submits"].get(T2V, 0)
    doomed = _worker(team, "doomed", log=tmp_path / "doomed.log")
    with _api(team):
        first = run_deployment("klingflow-story/story", parameters=parameters, timeout=0)
        deadline = time.monotonic() + 120
        while _journal_requests(Path(team["KLINGFLOW_HOME"])) < 3:  # opening + 2 beats in flight
            assert time.monotonic() < deadline, (tmp_path / "doomed.log").read_text()[-2000:]
            time.sleep(0.1)
        (state,) = asyncio.run(_flow_runs([str(first.id)]))
        os.kill(int(str(state.infrastructure_pid).rsplit(":", 1)[-1]), signal.SIGKILL)  # the flow-run process
        os.killpg(doomed.pid, signal.SIGKILL)  # and its worker
        doomed.wait()
        assert emulator_stats(team)["open"] > 0, "the requests were still in flight when the worker died"
        survivor = _worker(team, "survivor", log=tmp_path / "survivor.log")
        try:
            second = run_deployment("klingflow-story/story", parameters=parameters, timeout=0)
            (state,) = _until_final([str(second.id)])
            assert state.state_name == "Completed", (tmp_path / "survivor.log").read_text()[-3000:]
            log = (tmp_path / "survivor.log").read_text()
            assert "resuming request" in log or "joining request" in log
        finally:
            stop_group(survivor)
    assert emulator_stats(team)["submits"].get(T2V, 0) - before == 3, "no step was submitted twice"


def test_cancelling_a_deployment_run_on_a_worker_stops_it_and_keeps_what_was_paid(
    deployed: dict[str, str], tmp_path: Path
) -> None:
    """The UI's (or API's) Cancel on a flow run a worker runs: the worker sends the flow-run process
    SIGTERM; klingflow stops submitting at once, keeps the accepted requests journaled, records the
    unfinished steps as interrupted, and the flow run ends Cancelled within seconds."""
    from prefect.states import Cancelling

    team = deployed
    home = Path(team["KLINGFLOW_HOME"])
    parameters = {"inputs": {"subject": "a run someone cancels", "beats": ["a", "b", "c"]}, "concurrency": 2}
    worker = _worker(team, "cancelled", log=tmp_path / "worker.log")
    try:
        with _api(team):
            run = run_deployment("klingflow-story/story", parameters=parameters, timeout=0)
            deadline = time.monotonic() + 120
            before = _journal_requests(home)
            while _journal_requests(home) < before + 2:
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(0.1)

            async def cancel() -> None:
                async with get_client() as client:
                    await client.set_flow_run_state(run.id, Cancelling(), force=True)

            asyncio.run(cancel())
            cancelled_at = time.monotonic()
            (state,) = _until_final([str(run.id)], timeout=60)
            stopped_in = time.monotonic() - cancelled_at
        log = (tmp_path / "worker.log").read_text()
        assert state.state_name == "Cancelled", log[-3000:]
        assert stopped_in < 30, f"{stopped_in:.1f} s\n{log[-3000:]}"  # the goal: 10 s
        assert _journal_requests(home) >= before + 2, "the accepted requests stay journaled"
        rows = ledger.load(run=str(run.id), root=home / "ledger")
        assert "interrupted" in set(rows["status"]), "the run was stopped by klingflow and recorded"
    finally:
        stop_group(worker)
