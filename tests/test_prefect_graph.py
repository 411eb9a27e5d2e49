"""Edges in the Prefect graph: each step's task run names the task runs of the executions it reads.

On a real Prefect server (``conftest.session_prefect``) and the emulator:

1. the story preset runs as a flow run that generates, then again in the engine alone and is
   recorded afterwards (the replay of a fully cached ``klingflow run``, ``arecord_run``). In both
   flow runs every task run's ``task_inputs`` names exactly its pipeline dependencies' task runs
   (as ``TaskRunResult`` inputs of its ``arguments`` parameter, as Prefect's ``Task.map`` records
   the futures its items read), foreach items included, and the server's
   ``/flow_runs/{id}/graph-v2`` (what the UI draws) has those edges;
2. a pipeline whose foreach steps run over another foreach step's outputs: item ``i`` reads item
   ``i`` only, unless its arguments name the step whole;
3. the flow-run graph in headless Chromium (with KLINGFLOW_UPDATE_DOCS=1 the test refreshes
   docs/prefect-ui-graph.png).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import REPO, EmulatorAdmin
from klingflow import RunOptions, run_pipeline
from klingflow.cache import Journal, Store
from klingflow.engine import FLOW_RUN_PARAMETERS, RetryPolicy, RunResult, arun
from klingflow.flows.pipeline import arecord_run
from klingflow.ledger import Status, run_dir
from test_report import chromium_page, evaluate

pytestmark = pytest.mark.slow

STORY = REPO / "deployments/pipelines/story.yaml"
INPUTS = {"subject": "a heron at the river", "beats": ["it stands still", "it takes off"]}
STORY_EDGES = {
    "opening": set(),
    "beats[0]": set(),
    "beats[1]": set(),
    "keyframe": {"opening"},
    "flourish": {"keyframe"},
    "final_cut": {"opening", "beats[0]", "beats[1]", "flourish"},
}

CHAIN = """\
name: chain
inputs:
  beats: {type: list, default: [a heron stands still, a heron takes off]}
steps:
  - id: shots
    uses: text-to-video
    foreach: ${inputs.beats}
    with: {prompt: "${item}"}
  - id: frames                  # item i reads shots[i] only
    uses: last_frame
    foreach: ${steps.shots.video}
    with: {video: "${item}"}
  - id: moves                   # item i reads frames[i] only
    uses: image-to-video
    foreach: ${steps.frames.image}
    with: {prompt: "the heron moves", image_url: "${item}"}
  - id: recaps                  # item i reads its own shot, and every shot by name
    uses: concat
    foreach: ${steps.shots.video}
    with: {inputs: ["${item}", "${steps.shots.video}"]}
  - id: sheet
    uses: contact_sheet
    with: {inputs: ["${steps.shots.video}", "${steps.moves.video}"]}
"""
CHAIN_EDGES = {
    "shots[0]": set(),
    "shots[1]": set(),
    "frames[0]": {"shots[0]"},
    "frames[1]": {"shots[1]"},
    "moves[0]": {"frames[0]"},
    "moves[1]": {"frames[1]"},
    "recaps[0]": {"shots[0]", "shots[1]"},
    "recaps[1]": {"shots[0]", "shots[1]"},
    "sheet": {"shots[0]", "shots[1]", "moves[0]", "moves[1]"},
}


@pytest.fixture(scope="module")
def prefect_api(session_prefect: dict[str, str]) -> Iterator[str]:
    """The session's Prefect server, as this process's API for the module."""
    url = session_prefect["PREFECT_API_URL"]
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
        # Send the logs and events still queued while the server is up, not at interpreter exit.
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


def _options(root: Path, admin: EmulatorAdmin) -> RunOptions:
    return RunOptions(
        backend="fal",
        key=admin.key,
        store=Store(root / "store"),
        journal=Journal(root / "journal"),
        retry=RetryPolicy(retries=4, base_delay=0.05),
        out_dir=root / "out",
    )


@pytest.fixture(scope="module")
def story(
    prefect_api: str, emulator_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, RunResult]:
    """The story as a flow run that generates; then, all cached, run without Prefect and recorded."""
    admin = EmulatorAdmin(emulator_server)
    admin.faults()
    options = _options(tmp_path_factory.mktemp("story"), admin)
    generated = run_pipeline(STORY, INPUTS, options=options)
    cached = asyncio.run(arun(STORY, INPUTS, options))
    assert cached.flow_run_id is None and {r.status for r in cached.records} == {Status.CACHED}
    # what `klingflow run` leaves for its recorder after a fully cached run (cli/run.py)
    parameters = {"pipeline": str(STORY), "inputs": INPUTS, "backend": "fal", "concurrency": None,
                  "refresh": False, "max_cost_usd": None, "out_dir": str(options.out_dir)}  # fmt: skip
    (run_dir(cached.run_id) / FLOW_RUN_PARAMETERS).write_text(json.dumps(parameters))
    replayed = asyncio.run(arecord_run(cached.run_id))
    assert replayed.flow_run_id
    return generated, replayed


async def _read_task_runs(flow_run_id: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )


def _task_runs(flow_run_id: str, count: int) -> list[Any]:
    """The flow run's task runs once all ``count`` are recorded in a final state (the server's
    task-run recorder consumes events asynchronously)."""
    deadline = time.monotonic() + 60
    while True:
        runs = asyncio.run(_read_task_runs(flow_run_id))
        if len(runs) == count and all(r.state and r.state.is_final() for r in runs):
            return runs
        assert time.monotonic() < deadline, f"task runs not recorded: {[(r.name, r.state) for r in runs]}"
        time.sleep(0.3)


def _upstream_by_task_inputs(flow_run_id: str, count: int) -> dict[str, set[str]]:
    """Per task run name, the names of the task runs its ``task_inputs`` point to."""
    runs = _task_runs(flow_run_id, count)
    names = {run.id: run.name for run in runs}
    assert len(set(names.values())) == count
    upstream: dict[str, set[str]] = {}
    for run in runs:
        for key, inputs in run.task_inputs.items():
            # nothing else links (the parameters' values are quoted), nothing waits for anything
            assert key == "arguments" or not inputs, (run.name, key, inputs)
        reads = run.task_inputs.get("arguments", [])
        assert all(i.input_type == "task_run" and i.id in names for i in reads), (run.name, reads)
        upstream[run.name] = {names[i.id] for i in reads}
    return upstream


def _upstream_by_graph(api: str, flow_run_id: str) -> dict[str, set[str]]:
    """Per node of the server's flow-run graph (what the UI draws), the labels of its parents."""
    graph = httpx.get(f"{api}/flow_runs/{flow_run_id}/graph-v2", timeout=30).raise_for_status().json()
    nodes = dict(graph["nodes"])
    assert {node["kind"] for node in nodes.values()} == {"task-run"}
    label = {node_id: node["label"] for node_id, node in nodes.items()}
    for node_id, node in nodes.items():  # each edge is also the parent's child
        for parent in node["parents"]:
            assert {"id": node_id} in nodes[parent["id"]]["children"], (label[node_id], label[parent["id"]])
    return {node["label"]: {label[parent["id"]] for parent in node["parents"]} for node in nodes.values()}


def test_each_task_run_names_the_task_runs_of_its_dependencies(prefect_api: str, story: Any) -> None:
    generated, replayed = story
    for result, state in ((generated, Status.COMPLETED), (replayed, Status.CACHED)):
        assert {r.status for r in result.records} == {state}
        flow_run_id = str(result.flow_run_id)
        assert _upstream_by_task_inputs(flow_run_id, len(STORY_EDGES)) == STORY_EDGES, state
        assert _upstream_by_graph(prefect_api, flow_run_id) == STORY_EDGES, state


def test_a_foreach_item_reads_the_same_item_of_the_step_it_runs_over(
    prefect_api: str, emulator_server: Any, tmp_path: Path
) -> None:
    admin = EmulatorAdmin(emulator_server)
    admin.faults()
    pipeline = tmp_path / "chain.yaml"
    pipeline.write_text(CHAIN)
    result = run_pipeline(pipeline, options=_options(tmp_path, admin))
    assert [r.status for r in result.records] == [Status.COMPLETED] * len(CHAIN_EDGES)
    flow_run_id = str(result.flow_run_id)
    assert _upstream_by_task_inputs(flow_run_id, len(CHAIN_EDGES)) == CHAIN_EDGES
    assert _upstream_by_graph(prefect_api, flow_run_id) == CHAIN_EDGES


_GRAPH_BOX = """(() => {
  const canvases = document.querySelectorAll('canvas');
  if (canvases.length !== 1) return null;
  const box = canvases[0].getBoundingClientRect();
  return box.height > 100 ? [box.left, box.top, box.width, box.height] : null;
})()"""
"""Where the flow-run graph's one canvas is drawn, once it has its size."""

COMPLETED_GREEN = (33, 157, 75)
"""The colour the Prefect UI fills a Completed task run's bar with."""


def _picture(call: Any, box: list[float]) -> tuple[bytes, int]:
    """The page down to the graph's bottom edge, and how many of the graph's pixels are bars."""
    clip = {"x": 0, "y": 0, "width": 1400, "height": box[1] + box[3] + 8, "scale": 1}
    shot = base64.b64decode(call("Page.captureScreenshot", format="png", clip=clip)["data"])
    left, top, width, height = (int(v) for v in box)
    graph = Image.open(io.BytesIO(shot)).convert("RGB").crop((left, top, left + width, top + height))
    return shot, {colour: n for n, colour in graph.getcolors(width * height)}.get(COMPLETED_GREEN, 0)


def test_the_flow_run_graph_draws_the_edges(prefect_api: str, story: Any, tmp_path: Path) -> None:
    generated, _ = story
    _task_runs(str(generated.flow_run_id), len(STORY_EDGES))
    ui = prefect_api.removesuffix("/api")
    with chromium_page(f"{ui}/runs/flow-run/{generated.flow_run_id}") as call:
        call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        fetched = "performance.getEntriesByType('resource').some(e => e.name.includes('/graph-v2'))"
        deadline = time.monotonic() + 60
        while not (evaluate(call, fetched) and (box := evaluate(call, _GRAPH_BOX))):
            assert time.monotonic() < deadline, "the UI never drew the flow run's graph"
            time.sleep(0.3)
        # The graph animates into place: done when its bars are drawn and two pictures in a row agree.
        previous, (shot, bars) = b"", _picture(call, box)
        while shot != previous or bars < 5000:
            assert time.monotonic() < deadline, f"the flow-run graph never settled ({bars} pixels of bars)"
            time.sleep(0.5)
            previous, (shot, bars) = shot, _picture(call, box)
    (tmp_path / "prefect-ui-graph.png").write_bytes(shot)
    if os.environ.get("KLINGFLOW_UPDATE_DOCS"):
        (REPO / "docs" / "prefect-ui-graph.png").write_bytes(shot)
