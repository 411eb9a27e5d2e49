"""The Prefect layer: a real flow run per pipeline, a task run per step, Failed when steps fail."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.testing.utilities import prefect_test_harness

from conftest import REPO
from klingflow import PipelineFailed, RunOptions, RunResult, run_pipeline
from klingflow.emulator._render_audio import speech_seconds
from klingflow.endpoints import get_endpoint
from klingflow.engine import RetryPolicy
from klingflow.media import first_frame, probe

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


@dataclass(frozen=True)
class Preset:
    """What one preset run with ``inputs`` must leave: its final cut, its rows, its task runs."""

    inputs: dict[str, Any]
    final: str
    seconds: float
    audio: bool
    steps: list[str]
    generations: dict[str, str]
    """Each generation step's endpoint id, as its ledger row must name it."""
    cost: float
    task_runs: set[str] | None = None
    """Default: the steps (a foreach step's items have their own names)."""
    handoff: tuple[str, str] | None = None
    """(last_frame step, step continued from that frame): the second must start on the image."""


V1 = "fal-ai/kling-video/v1/standard"
AVATAR_LINE = "A presenter reads this line. The captions come from it."
V26 = "fal-ai/kling-video/v2.6/pro"
PRESETS = {
    "story": Preset(
        inputs={"subject": "a fox in the snow", "beats": ["it sniffs the air"]},
        final="final_cut",
        seconds=15.0,  # opening + one beat + flourish, 5 s each
        audio=False,
        steps=["opening", "beats", "keyframe", "flourish", "final_cut"],
        generations={
            "opening": f"{V1}/text-to-video",
            "beats": f"{V1}/text-to-video",
            "flourish": f"{V1}/effects",
        },
        cost=3 * 0.225,
        task_runs={"opening", "beats[0]", "keyframe", "flourish", "final_cut"},
    ),
    "story-v26": Preset(
        inputs={"subject": "a fox in the snow"},
        final="final_cut",
        seconds=10.0,  # two 5 s shots, each with its own soundtrack kept by the cut
        audio=True,
        steps=["first_shot", "handoff", "second_shot", "final_cut"],
        generations={"first_shot": f"{V26}/text-to-video", "second_shot": f"{V26}/image-to-video"},
        cost=2 * 5 * 0.14,  # native audio's rate
        handoff=("handoff", "second_shot"),
    ),
    "avatar": Preset(
        inputs={"line": AVATAR_LINE},
        final="captioned",
        seconds=speech_seconds(AVATAR_LINE, 1.0),  # the avatar and its captioned copy last as long
        audio=True,
        steps=["voice", "presenter", "captioned"],
        generations={"voice": "fal-ai/kling-video/v1/tts", "presenter": f"{V1}/ai-avatar"},
        cost=round(0.007 + 0.0562 * 3.933333, 6),  # TTS per request; the avatar per second of speech
    ),
    "character": Preset(
        inputs={"character": "a fox in a red scarf"},
        final="scene",
        seconds=10.0,  # the two shots of multi_prompt, 5 s each
        audio=True,
        steps=["design", "scene"],
        generations={
            "design": "fal-ai/kling-image/o3/text-to-image",
            "scene": "fal-ai/kling-video/o3/standard/reference-to-video",
        },
        cost=0.028 + 10 * 0.112,
    ),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_python_call_runs_a_preset(name: str, options: RunOptions, emulator, tmp_path: Path) -> None:
    preset = PRESETS[name]
    result = run_pipeline(
        REPO / f"deployments/pipelines/{name}.yaml",
        inputs=preset.inputs,
        options=options,
        out_dir=tmp_path / "out",
    )
    assert result.status == "completed"
    final = result.final[preset.final]
    assert final == tmp_path / "out" / f"{preset.final}.mp4"
    info = probe(final)
    assert abs(info.duration - preset.seconds) < 0.1 and info.has_audio is preset.audio, info
    ledger = result.ledger
    clips = ledger[ledger["duration_s"].notna()]  # every video, generated or cut
    assert clips["has_audio"].eq(preset.audio).all(), clips[["step_id", "has_audio"]]
    assert list(ledger["step_id"]) == preset.steps
    assert (ledger["pipeline"] == name).all() and (ledger["flow_run_id"] == result.flow_run_id).all()
    assert ledger.loc[ledger["kind"] == "operation", "backend"].eq("local").all()
    assert ledger["estimated_cost_usd"].sum() == pytest.approx(preset.cost)
    generated = ledger[ledger["kind"] == "endpoint"].set_index("step_id")
    assert generated["endpoint"].to_dict() == preset.generations
    assert generated["schema_sha256"].to_dict() == {
        step: get_endpoint(endpoint).sha256 for step, endpoint in preset.generations.items()
    }
    assert emulator.stats()["submits"] == dict(Counter(preset.generations.values())), "each one once"
    if preset.handoff:
        still, continued = preset.handoff
        start = first_frame(result.outputs[continued]["video"], tmp_path / "start.png")
        assert _mean_difference(result.outputs[still]["image"], start) < 40, "continues from the last frame"
    states = asyncio.run(_task_runs(result.flow_run_id))
    assert states["__flow__"] == "Completed"
    assert {run for run in states if run != "__flow__"} == (preset.task_runs or set(preset.steps))


def _mean_difference(one: Path, other: Path) -> float:
    """Mean absolute difference of two images' grey levels (0-255), the second scaled to the first."""
    with Image.open(one) as a, Image.open(other) as b:
        return ImageStat.Stat(ImageChops.difference(a.convert("L"), b.convert("L").resize(a.size))).mean[0]


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
