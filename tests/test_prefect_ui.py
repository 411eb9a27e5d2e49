"""What a Prefect user sees, on a real `prefect server start` (SQLite on loopback) and the emulator.

The story pipeline runs twice from Python with PREFECT_API_URL pointing at the server:

1. on the second run every step is a cache hit, and its task run is in the **Cached** state
   (type COMPLETED, name "Cached", ``state_details.cache_key`` the ledger row's cache key);
2. the flow run carries a progress artifact (100 at the end, every step execution counted), the
   contact sheet and a thumbnail as image artifacts (small JPEG ``data:`` URIs), and links to the
   exported output and the report;
3. the flow run's page in headless Chromium lists the steps as Cached and shows the pictures
   (with KLINGFLOW_UPDATE_DOCS=1 the test refreshes docs/prefect-ui-cached.png).
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

import pytest
from PIL import Image, ImageStat
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import ArtifactSort, TaskRunSort
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import REPO, EmulatorAdmin, prefect_server
from klingflow import RunOptions, run_pipeline
from klingflow.cache import Journal, Store
from klingflow.engine import RetryPolicy, RunHooks, RunResult
from klingflow.flows.artifacts import SHEET_SIDE, THUMBNAIL_SIDE, ProgressPublisher
from klingflow.ledger import Status, StepRecord, step_label
from klingflow.tasks import step_state
from test_report import chromium_page, evaluate

pytestmark = pytest.mark.slow

STORY = REPO / "deployments/pipelines/story.yaml"
INPUTS = {"subject": "a fox in the snow", "beats": ["it sniffs the air", "it leaps"]}
LABELS = ["opening", "beats[0]", "beats[1]", "keyframe", "flourish", "final_cut"]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `prefect server start` with its own PREFECT_HOME; stopped (its process group) at the end."""
    with prefect_server(tmp_path_factory.mktemp("prefect-ui") / "prefect") as variables:
        url = variables["PREFECT_API_URL"]
        with temporary_settings(updates={PREFECT_API_URL: url}):  # this process's client, for the module
            yield url
            # Send the logs and events still queued while the server is up, not at interpreter exit.
            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="module")
def runs(
    prefect_api: str, emulator_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, RunResult, list[int]]:
    """The story run twice against the server, with one cache; and the totals ``on_steps`` saw."""
    admin = EmulatorAdmin(emulator_server)
    admin.faults()
    root = tmp_path_factory.mktemp("story")
    options = RunOptions(
        backend="fal",
        key=admin.key,
        store=Store(root / "store"),
        journal=Journal(root / "journal"),
        retry=RetryPolicy(retries=4, base_delay=0.05),
        out_dir=root / "out",
    )
    totals: list[int] = []
    hooks = RunHooks(on_steps=lambda _name, count: totals.append(count))
    first = run_pipeline(STORY, INPUTS, options=options, hooks=hooks)
    second = run_pipeline(STORY, INPUTS, options=options, hooks=hooks)
    return first, second, totals


async def _task_runs(flow_run_id: str) -> list[Any]:
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=100,
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )


async def _artifacts(flow_run_id: str) -> dict[str, Any]:
    async with get_client() as client:
        found = await client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=100,
            sort=ArtifactSort.CREATED_DESC,
        )
    return {a.key: a for a in found if a.key}


def test_a_cache_hit_is_a_cached_task_run(prefect_api: str, runs: Any) -> None:
    first, second, totals = runs
    assert totals == [len(LABELS), len(LABELS)], "on_steps counts each foreach item"
    assert set(first.ledger["status"]) == {Status.COMPLETED}
    rows = {step_label(row): row for row in second.rows()}
    assert list(rows) == LABELS and {r["status"] for r in rows.values()} == {Status.CACHED}
    before = {t.name: t.state for t in asyncio.run(_task_runs(str(first.flow_run_id)))}
    task_runs = asyncio.run(_task_runs(str(second.flow_run_id)))
    after = {t.name: t.state for t in task_runs}
    assert set(before) == set(after) == set(LABELS)
    # No made-up edges: beats[1] does not depend on beats[0] (see quote() in run_step_as_task); the
    # only task inputs are the pipeline's own edges (in `arguments`, tests/test_prefect_graph.py).
    assert not any(refs for t in task_runs for key, refs in t.task_inputs.items() if key != "arguments")
    assert not any(t.task_inputs.get("arguments") for t in task_runs if t.name.startswith("beats"))
    assert {(s.type.value, s.name) for s in before.values()} == {("COMPLETED", "Completed")}
    for label, state in after.items():
        assert (state.type.value, state.name) == ("COMPLETED", "Cached"), label
        assert state.state_details.cache_key == rows[label]["cache_key"], label
        assert rows[label]["cache_key"] and rows[label]["cache_key"] in (state.message or "")


def test_a_joined_step_is_completed_and_says_whose_request_it_polled() -> None:
    record = StepRecord(step_id="shot", kind="endpoint", endpoint="t2v", backend="fal",
                        status=Status.JOINED, request_id="req-123", cache_key="k1")  # fmt: skip
    state = step_state(record)
    assert state.type.value == "COMPLETED" and state.name == "Completed"
    assert "req-123" in (state.message or "") and state.data is record
    completed = record.model_copy(update={"status": Status.COMPLETED})
    assert step_state(completed) is completed, "a generated step returns its row: Completed"
    cached = step_state(record.model_copy(update={"status": Status.CACHED}))
    assert cached.name == "Cached" and cached.state_details.cache_key == "k1"


@flow(name="klingflow-progress-test", persist_result=False)
async def progress_flow() -> list[tuple[float, str]]:
    """Four step executions: two finish, then two more at once (sent together), then the run ends."""
    seen: list[tuple[float, str]] = []
    progress = ProgressPublisher()
    record = StepRecord(step_id="a", kind="endpoint", endpoint="e", backend="fal", status=Status.CACHED)

    async def observe(percent: float) -> None:
        deadline = time.monotonic() + 30
        while True:
            found = await _artifacts(str(flow_run.id))
            artifact = found.get("klingflow-progress-test-progress")
            if artifact is not None and float(artifact.data) == percent:
                seen.append((percent, artifact.description))
                return
            assert time.monotonic() < deadline, f"progress never reached {percent}"
            await asyncio.sleep(0.1)

    progress.start("Progress Test", 4)
    await observe(0.0)
    progress.finished(record)
    progress.finished(record.model_copy(update={"status": Status.FAILED}))
    await observe(50.0)
    progress.finished(record)
    progress.finished(record)
    await progress.close()
    await observe(100.0)
    return seen


def test_the_progress_artifact_follows_the_steps(prefect_api: str) -> None:
    seen = asyncio.run(progress_flow())
    assert seen == [
        (0.0, "0 of 4 step runs done (0 cached, 0 failed)"),
        (50.0, "2 of 4 step runs done (1 cached, 1 failed)"),
        (100.0, "Run over: 4 of 4 step runs done (3 cached, 1 failed)"),
    ]


def _jpeg(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    picture = Image.open(io.BytesIO(base64.b64decode(uri.removeprefix(prefix))))
    assert picture.format == "JPEG"
    return picture


def test_progress_pictures_and_links_are_artifacts_of_the_flow_run(prefect_api: str, runs: Any) -> None:
    _, second, _ = runs
    artifacts = asyncio.run(_artifacts(str(second.flow_run_id)))
    assert set(artifacts) == {
        "klingflow-story-ledger",
        "klingflow-story-summary",
        "klingflow-story-progress",
        "klingflow-story-contact-sheet",
        "klingflow-story-thumbnail-final-cut",
        "klingflow-story-output-final-cut",
        "klingflow-story-report",
    }
    progress = artifacts["klingflow-story-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert progress.description == "Run over: 6 of 6 step runs done (6 cached, 0 failed)"

    sheet, thumb = (
        artifacts["klingflow-story-contact-sheet"],
        artifacts["klingflow-story-thumbnail-final-cut"],
    )
    assert sheet.type == thumb.type == "image"
    assert max(_jpeg(sheet.data).size) <= SHEET_SIDE and len(sheet.data) < 300_000
    assert max(_jpeg(thumb.data).size) == THUMBNAIL_SIDE and len(thumb.data) < 60_000
    final = second.final["final_cut"]
    assert final.resolve().as_uri() in thumb.description

    link = artifacts["klingflow-story-output-final-cut"]
    assert link.type == "markdown"  # Prefect stores a link as markdown: [text](url)
    assert f"[final_cut.mp4]({final.resolve().as_uri()})" in link.data
    report = Path(second.manifest.report)
    assert f"({report.resolve().as_uri()})" in artifacts["klingflow-story-report"].data


def _wait_for(call: Any, test: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while not evaluate(call, test):
        body = evaluate(call, "document.body ? document.body.innerText : ''") or ""
        assert time.monotonic() < deadline, f"{what} never appeared in the UI: {body[:2000]}"
        time.sleep(0.3)


_SCROLL_TABS_TO_230PX = """(() => {
  const tab = document.querySelector('li.p-tab#task-runs');
  let box = tab.parentElement;
  while (box && box.scrollHeight <= box.clientHeight) box = box.parentElement;
  (box || document.scrollingElement).scrollBy(0, tab.getBoundingClientRect().top - 230);
})()"""
"""Scroll the page's scrolling box so the tabs sit 230 px from the top: the six task runs then fit
in a 900 px high window, under the end of the run graph."""


def _screenshot(call: Any) -> Image.Image:
    """The page as Chromium paints it (a PNG), decoded."""
    shot = Image.open(io.BytesIO(base64.b64decode(call("Page.captureScreenshot", format="png")["data"])))
    assert shot.format == "PNG"
    return shot.convert("RGB")


_VISIBLE_TEXT = """((texts) => {
  const found = Object.fromEntries(texts.map(text => [text, []]));
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent.trim();
    if (!(text in found)) continue;
    const range = document.createRange();
    range.selectNodeContents(walker.currentNode);
    const r = range.getBoundingClientRect();
    const inside = r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight;
    if (r.width > 0 && r.height > 0 && inside)
      found[text].push([r.left, r.top, r.right, r.bottom].map(Math.round));
  }
  return found;
})(%s)"""
"""Where in the window (CSS pixels, the screenshot's at scale 1) each text node equal to one of
``texts`` is drawn; only nodes wholly inside the window count."""


def _flow_run_names(flow_run_id: str) -> tuple[str, str]:
    async def read() -> tuple[str, str]:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            return (await client.read_flow(run.flow_id)).name, run.name

    return asyncio.run(read())


def test_the_flow_run_page_shows_cached_task_runs(prefect_api: str, runs: Any, tmp_path: Path) -> None:
    _, second, _ = runs
    flow_name, run_name = _flow_run_names(str(second.flow_run_id))
    ui = prefect_api.removesuffix("/api")
    with chromium_page(f"{ui}/runs/flow-run/{second.flow_run_id}") as call:
        call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        _wait_for(call, "document.querySelector('li.p-tab#task-runs') !== null", "the Task Runs tab")
        evaluate(call, "document.querySelector('li.p-tab#task-runs').click()")
        # Each task run's card: its name (the step label), then its state badge.
        every = " && ".join(f"document.body.innerText.includes('{label}\\nCached')" for label in LABELS)
        _wait_for(call, every, "six Cached task runs")
        # The run's header: its name and final state, its flow, the count of its task runs.
        header = [f"Runs\n{run_name}\nCompleted\n", f"{len(LABELS)} Task runs\nFlow\n{flow_name}\n"]
        shown = " && ".join(f"document.body.innerText.includes({json.dumps(text)})" for text in header)
        _wait_for(call, shown, f"the header of flow run {run_name!r} of flow {flow_name!r}")
        time.sleep(1.5)  # the run graph animates its zoom once its data is in
        evaluate(call, _SCROLL_TABS_TO_230PX)
        time.sleep(0.3)
        shot = _screenshot(call)
        drawn = evaluate(call, _VISIBLE_TEXT % json.dumps([*LABELS, "Cached"]))
    shot.save(tmp_path / "prefect-ui-cached.png")
    if os.environ.get("KLINGFLOW_UPDATE_DOCS"):
        shot.save(REPO / "docs" / "prefect-ui-cached.png")
    # The picture is the window, painted: not one colour, and what the DOM says it shows is in it.
    assert shot.size == (1400, 900)
    assert len(shot.getcolors(1400 * 900) or []) > 200 and max(ImageStat.Stat(shot).stddev) > 10
    for label in LABELS:
        assert drawn[label], f"{label} is not in the window: {drawn}"
        box = shot.crop(drawn[label][-1]).convert("L")  # the task run card's (the graph's are a canvas)
        low, high = box.getextrema()
        assert high - low > 80, f"{label}'s name is not painted where the page says (contrast {high - low})"
    assert len(drawn["Cached"]) >= len(LABELS), drawn["Cached"]
    for left, top, right, bottom in drawn["Cached"]:
        red, green, blue = ImageStat.Stat(shot.crop((left - 20, top - 2, right + 4, bottom + 2))).mean
        assert green > red + 30 and green > blue + 30, (
            f"no green Cached badge at {(left, top)}: {(red, green, blue)}"
        )


def test_the_image_artifacts_render_in_the_ui(prefect_api: str, runs: Any) -> None:
    _, second, _ = runs
    artifacts = asyncio.run(_artifacts(str(second.flow_run_id)))
    ui = prefect_api.removesuffix("/api")
    thumb = artifacts["klingflow-story-thumbnail-final-cut"]
    with chromium_page(f"{ui}/artifacts/artifact/{thumb.id}") as call:
        drawn = (
            "[...document.images].some(i => i.src.startsWith('data:image/jpeg') && i.naturalWidth === 320)"
        )
        _wait_for(call, drawn, "the thumbnail, decoded")
