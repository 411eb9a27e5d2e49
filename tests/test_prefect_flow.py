"""The Prefect layer: a real flow run per pipeline, a task run per step, Failed when steps fail."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.testing.utilities import prefect_test_harness

from conftest import REPO
from klingflow import PipelineFailed, RunOptions, RunResult, run_pipeline
from klingflow.engine import RetryPolicy
from klingflow.media import probe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """One temporary Prefect server for these tests, stopped when they end (not at interpreter exit)."""
    with prefect_test_harness(server_startup_timeout=60):
        yield


async def _task_runs(flow_run_id: str) -> dict[str, str]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=100,
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
        flow_run = await client.read_flow_run(flow_run_id)
    return {"__flow__": flow_run.state_name, **{run.name: run.state_name for run in runs}}


def test_python_call_runs_the_story_preset(options: RunOptions, emulator, tmp_path: Path) -> None:
    result = run_pipeline(
        REPO / "deployments/pipelines/story.yaml",
        inputs={"subject": "a fox in the snow", "beats": ["it sniffs the air"]},
        options=options,
        out_dir=tmp_path / "out",
    )
    assert result.status == "completed"
    final = result.final["final_cut"]
    assert final == tmp_path / "out" / "final_cut.mp4"
    assert abs(probe(final).duration - 15.0) < 0.1, "opening + one beat + flourish, 5 s each"
    ledger = result.ledger
    assert list(ledger["step_id"]) == ["opening", "beats", "keyframe", "flourish", "final_cut"]
    assert (ledger["pipeline"] == "story").all() and (ledger["flow_run_id"] == result.flow_run_id).all()
    assert ledger.loc[ledger["kind"] == "operation", "backend"].eq("local").all()
    assert ledger["estimated_cost_usd"].sum() == pytest.approx(3 * 0.225)
    states = asyncio.run(_task_runs(result.flow_run_id))
    assert states["__flow__"] == "Completed"
    assert {name for name in states if name != "__flow__"} == {
        "opening",
        "beats[0]",
        "keyframe",
        "flourish",
        "final_cut",
    }


def test_failed_steps_end_the_flow_failed_with_a_summary(
    options: RunOptions, emulator, tmp_path: Path
) -> None:
    pipeline = tmp_path / "fails.yaml"
    pipeline.write_text("""name: fails
steps:
  - id: doomed
    uses: text-to-video
    with: {prompt: "this request fails"}
  - id: fine
    uses: tts
    with: {text: "this one is fine"}
""")
    emulator.faults(script=["error@text-to-video", "error@text-to-video"])
    with pytest.raises(PipelineFailed) as info:
        run_pipeline(
            pipeline, options=options.model_copy(update={"retry": RetryPolicy(retries=1, base_delay=0.05)})
        )
    result = info.value.result
    assert {r.step_id: r.status for r in result.records} == {"doomed": "failed", "fine": "completed"}
    assert "doomed" in str(info.value) and "Emulated model failure" in str(info.value)
    states = asyncio.run(_task_runs(result.flow_run_id))
    assert states == {"__flow__": "Failed", "doomed": "Failed", "fine": "Completed"}


def test_run_pipeline_inside_a_running_event_loop_returns_its_result(
    options: RunOptions, emulator, tmp_path: Path
) -> None:
    """As in a Jupyter cell, or sync code called from ``asyncio.run``: a loop already runs here."""
    pipeline = tmp_path / "in_loop.yaml"
    pipeline.write_text("""name: in-loop
steps:
  - id: voice
    uses: tts
    with: {text: "said while an event loop runs"}
""")

    async def cell() -> RunResult:
        return run_pipeline(pipeline, options=options, out_dir=tmp_path / "out")

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        result = asyncio.run(cell())
    assert result.status == "completed"
    assert result.final["voice"] == tmp_path / "out" / "voice.mp3" and probe(result.final["voice"]).has_audio
    assert asyncio.run(_task_runs(result.flow_run_id)) == {"__flow__": "Completed", "voice": "Completed"}


def test_the_core_never_imports_prefect() -> None:
    code = (
        "import sys\n"
        "import klingflow, klingflow.spec, klingflow.endpoints, klingflow.backends, klingflow.backends.fal\n"
        "import klingflow.emulator.server, klingflow.media, klingflow.ledger, klingflow.report\n"
        "import klingflow.cache, klingflow.engine, klingflow.settings, klingflow.errors\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
