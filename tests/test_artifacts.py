"""Prefect artifacts of a run, created in a real flow run and read back through the Prefect client."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort
from prefect.runtime import flow_run
from prefect.testing.utilities import prefect_test_harness

from klingflow.cache import Journal, Store
from klingflow.engine import RetryPolicy, RunOptions, arun
from klingflow.engine.recording import record_run
from klingflow.flows.artifacts import artifact_key, publish_artifacts
from klingflow.spec import check, parse_pipeline

pytestmark = pytest.mark.slow


def reel(broken: Path) -> dict[str, Any]:
    """A shot, its last frame, and a step that fails for good (its input is not a video)."""
    # An MP4 signature over garbage: it passes validation's content check and fails when decoded.
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"this is not a video " * 50)
    return {
        "name": "Promo Reel!",
        "steps": [
            {"id": "shot", "uses": "text-to-video", "with": {"prompt": "a red kite over the dunes"}},
            {"id": "still", "uses": "last_frame", "with": {"video": "${steps.shot.video}"}},
            {"id": "broken", "uses": "last_frame", "with": {"video": str(broken)}},
        ],
    }


@pytest.fixture(scope="module", autouse=True)
def prefect_server() -> Any:
    """One temporary Prefect server for these tests."""
    with prefect_test_harness(server_startup_timeout=60):
        yield


@flow(name="klingflow-artifacts-test", persist_result=False)
async def recorded_flow(data: dict[str, Any], key: str, home: str, out_dir: str) -> dict[str, Any]:
    """What ``pipeline_flow`` does once wired: run, record, publish; returns the ids to look up."""
    spec = parse_pipeline(data)
    options = RunOptions(
        backend="fal",
        key=key,
        store=Store(Path(home) / "store"),
        journal=Journal(Path(home) / "journal"),
        retry=RetryPolicy(retries=0, base_delay=0.05),
        out_dir=Path(out_dir),
    )
    run_id = str(flow_run.id)
    result = await arun(spec, None, options, run_id=run_id)
    result.flow_run_id = run_id
    manifest, frame = record_run(result, check(spec, {}), out_dir=Path(out_dir), secrets=[options.key])
    ids = await publish_artifacts(manifest, frame)
    return {
        "run_id": result.run_id,
        "flow_run_id": run_id,
        "table": str(ids.table),
        "markdown": str(ids.markdown),
        "images": sorted(ids.images),
        "links": sorted(ids.links),
    }


async def read_artifacts(artifact_filter: ArtifactFilter) -> list[Any]:
    """Artifacts matching the filter, newest first, through the Prefect client.

    ``limit``, ``sort`` and a flow run filter are given: with the fastapi this project pins, Prefect
    3.8.8's server answers 422 to the nulls its client sends for them when omitted. (An empty task
    run filter would join on task runs and drop flow-level artifacts, so there is none.)
    """
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=artifact_filter,
            flow_run_filter=FlowRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=100,
        )


def artifacts_of(flow_run_id: str) -> dict[str, Any]:
    """The artifacts of one flow run, by key."""
    found = asyncio.run(
        read_artifacts(ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    )
    return {artifact.key: artifact for artifact in found}


def test_keys_are_slugs_prefect_accepts() -> None:
    assert artifact_key("Promo Reel!", "ledger") == "klingflow-promo-reel-ledger"
    assert artifact_key("story_v2", "summary") == "klingflow-story-v2-summary"
    assert artifact_key("!!!", "ledger") == "klingflow-pipeline-ledger"


def test_a_run_publishes_a_table_and_a_summary_with_stable_keys(
    emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    data = reel(tmp_path / "broken.mp4")
    first = asyncio.run(recorded_flow(data, emulator.key, str(tmp_path / "home"), str(out)))
    artifacts = artifacts_of(first["flow_run_id"])
    assert set(artifacts) == {
        "klingflow-promo-reel-ledger",
        "klingflow-promo-reel-summary",
        "klingflow-promo-reel-contact-sheet",  # an image (the shot's frames)
        "klingflow-promo-reel-thumbnail-still",  # an image (the final output)
        "klingflow-promo-reel-output-still",  # a link to the exported still
        "klingflow-promo-reel-report",  # a link to report.html
    }
    assert {artifacts[k].type for k in first["images"]} == {"image"}
    assert set(first["images"]) == {
        "klingflow-promo-reel-contact-sheet",
        "klingflow-promo-reel-thumbnail-still",
    }
    assert artifacts["klingflow-promo-reel-thumbnail-still"].data.startswith("data:image/jpeg;base64,")
    assert set(first["links"]) == {"klingflow-promo-reel-output-still", "klingflow-promo-reel-report"}
    assert (
        f"[still.png]({(out / 'still.png').resolve().as_uri()})"
        in artifacts["klingflow-promo-reel-output-still"].data
    )

    table = artifacts["klingflow-promo-reel-ledger"]
    assert table.type == "table" and str(table.id) == first["table"]
    rows = json.loads(table.data)
    assert [row["step"] for row in rows] == ["shot", "still", "broken"]
    assert [row["status"] for row in rows] == ["completed", "completed", "failed"]
    assert set(rows[0]) == {
        "step", "status", "endpoint", "estimated_usd", "billed_usd", "queue_s", "run_s", "attempts",
        "duration_s", "size", "request_id", "output", "error",
    }  # fmt: skip
    assert (
        rows[0]["estimated_usd"] == pytest.approx(0.225)
        and rows[0]["billed_usd"] == pytest.approx(0.225)
        and rows[0]["size"] == "1280x720"
    )
    assert "not a readable media file" in rows[2]["error"]

    summary = artifacts["klingflow-promo-reel-summary"]
    assert summary.type == "markdown" and first["run_id"] in summary.description
    text = summary.data
    assert text.startswith("# Promo Reel!: failed")
    assert "estimated spend **$0.225**" in text and "cache hits 0/3" in text
    assert f"`{out / 'still.png'}`" in text, "the final output's path"
    assert (out / "report.html").resolve().as_uri() in text
    assert "contact-sheet.png" in text
    assert "**broken**" in text and "not a readable media file" in text

    second = asyncio.run(recorded_flow(data, emulator.key, str(tmp_path / "home"), str(out)))
    history = asyncio.run(
        read_artifacts(ArtifactFilter(key=ArtifactFilterKey(any_=["klingflow-promo-reel-ledger"])))
    )
    assert {str(a.flow_run_id) for a in history} >= {first["flow_run_id"], second["flow_run_id"]}
    cached = json.loads(artifacts_of(second["flow_run_id"])["klingflow-promo-reel-ledger"].data)
    assert [row["status"] for row in cached] == ["cached", "cached", "failed"]
