"""Every run option is a flow-run parameter, and each one set as a parameter reaches the engine.

The flows' parameters are derived from :data:`klingflow.engine.FLOW_OPTIONS` (one definition), so
a deployment, a schedule and the Prefect UI can set every option the command line can. Each case
starts the generic flow with one option as a parameter, exactly as a deployment run passes its
parameters, and checks what the engine did with it (against a real Prefect server and the
session emulator). ``cancel_queued`` acts only when a run is stopped: the command line's
``--cancel-queued`` travels as this same flow parameter, proven in ``test_interrupts.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.testing.utilities import prefect_test_harness

from conftest import EmulatorAdmin
from klingflow.engine import FLOW_OPTIONS, RunResult
from klingflow.flows.approval import resume
from klingflow.flows.pipeline import pipeline_flow
from klingflow.flows.presets import pipeline_flow_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


def test_every_option_is_a_parameter_of_every_flow() -> None:
    fixed = {"pipeline", "inputs", "credentials", "defaults"}
    assert set(pipeline_flow.parameters.properties) == fixed | set(FLOW_OPTIONS)
    for path in sorted((REPO / "deployments" / "pipelines").glob("*.yaml")):
        preset = pipeline_flow_for(path)
        assert set(preset.parameters.properties) == (fixed - {"pipeline"}) | set(FLOW_OPTIONS), path.name


def _pipeline(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nsteps:\n"
        f"  - id: one\n    uses: tts\n    with: {{text: 'first line of {name}'}}\n"
        f"  - id: two\n    uses: tts\n    with: {{text: 'second line of {name}'}}\n"
    )
    return path


def _run(path: Path, **parameters: Any) -> tuple[str, Any]:
    async def run() -> tuple[str, Any]:
        state = await pipeline_flow(str(path), None, return_state=True, **parameters)
        return state.type.value, await state.aresult(raise_on_failure=False)

    return asyncio.run(run())


def _message(value: Any) -> str:
    return str(value)


CASES: dict[str, tuple[Any, Callable[[Path, EmulatorAdmin, str, Any, Path], None]]] = {}


def case(name: str, value: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(check: Callable[..., None]) -> Callable[..., None]:
        CASES[name] = (value, check)
        return check

    return register


@case("backend", "fal")
def _backend(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    # without a key the default is the embedded emulator; "fal" must refuse to fall back to it
    assert state == "FAILED" and "no fal key is configured" in _message(value), value


@case("concurrency", 1)
def _concurrency(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    assert state == "COMPLETED" and emulator.stats()["max_open"] == 1, emulator.stats()


@case("refresh", True)
def _refresh(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    assert state == "COMPLETED" and isinstance(value, RunResult)
    assert [r.status for r in value.records] == ["completed", "completed"], "regenerated, not cached"


@case("max_cost_usd", 0.001)
def _budget(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    assert state == "FAILED" and "over the limit of $0.001" in _message(value), value
    assert emulator.stats()["total_submits"] == 0


UNPRICED = "fal-ai/kling-video/v1.6/standard/text-to-video"  # fal's catalog states no price for it


@case("allow_unknown_cost", True)
def _unknown_cost(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    # the pipeline sets a budget and calls an endpoint without a known price: refused without the option
    assert state == "COMPLETED" and isinstance(value, RunResult), value
    assert [(r.endpoint, r.estimated_cost_usd) for r in value.records] == [(UNPRICED, None)]


@case("out_dir", "exported")
def _out_dir(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    assert state == "COMPLETED" and (tmp_path / "exported" / "one.mp3").is_file()


@case("on_ambiguous_submit", "fail")
def _ambiguous(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    assert state == "FAILED" and "on_ambiguous_submit: fail" in _message(value), value


@case("approve", ["two"])
def _approve(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    # no terminal here: the flow run paused at step two, and the test's resumer rejected it
    assert state == "COMPLETED" and isinstance(value, RunResult), value
    assert [(r.status, r.approval, r.approval_by) for r in value.records] == [
        ("completed", None, None),
        ("skipped", "rejected", "option test"),
    ]
    assert emulator.stats()["total_submits"] == 1


@case("yes", True)
def _yes(path: Path, emulator: EmulatorAdmin, state: str, value: Any, tmp_path: Path) -> None:
    # the pipeline file marks step two approve: true; --yes approves it without asking
    assert state == "COMPLETED" and isinstance(value, RunResult), value
    assert [(r.status, r.approval_by) for r in value.records] == [("completed", None), ("completed", "--yes")]


def _reject_when_paused(stop: threading.Event) -> None:
    """Resume the first flow run that pauses for approval, rejecting (as `klingflow approve --reject`)."""

    async def watch() -> None:
        async with get_client() as client:
            while not stop.is_set():
                paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["PAUSED"])))
                for run in await client.read_flow_runs(flow_run_filter=paused, limit=5):
                    await resume(run.id, approved=False, approver="option test")
                    return
                await asyncio.sleep(0.5)

    asyncio.run(watch())


def test_the_cases_cover_every_option() -> None:
    assert set(CASES) | {"cancel_queued"} == set(FLOW_OPTIONS)


@pytest.mark.parametrize("option", sorted(CASES))
def test_an_option_given_as_a_flow_parameter_reaches_the_engine(
    option: str, emulator: EmulatorAdmin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if option == "backend":
        monkeypatch.delenv("FAL_KEY", raising=False)
    else:
        monkeypatch.setenv("FAL_KEY", emulator.key)  # the session emulator, whose counters and faults we read
    monkeypatch.chdir(tmp_path)
    value, check = CASES[option]
    path = _pipeline(tmp_path, f"option_{option}")
    if option == "refresh":
        _run(path)  # cached first, so refresh has something to regenerate
    emulator.reset()
    if option == "allow_unknown_cost":
        path.write_text(
            f"name: unpriced\nmax_cost_usd: 1\nsteps:\n  - id: one\n    uses: {UNPRICED}\n"
            "    with: {prompt: 'a price nobody published', duration: 5}\n"
        )
        state, result = _run(path)
        assert state == "FAILED" and "knows no price for: one" in _message(result), result
        assert emulator.stats()["total_submits"] == 0
    if option == "on_ambiguous_submit":
        emulator.faults(script=["lost"])
    if option == "yes":
        path.write_text(path.read_text().replace("  - id: two\n", "  - id: two\n    approve: true\n"))
    parameter = str(tmp_path / value) if option == "out_dir" else value
    stop = threading.Event()
    resumer = threading.Thread(target=_reject_when_paused, args=(stop,))
    if option == "approve":
        resumer.start()
    try:
        state, result = _run(path, **{option: parameter})
    finally:
        stop.set()
        if resumer.is_alive():
            resumer.join(timeout=30)
    check(path, emulator, state, result, tmp_path)
