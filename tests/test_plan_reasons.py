"""``klingflow plan`` says why each step will run, and the ledger row of the step that ran says it too.

One test per reason, each on its own pipeline name (the ledger is the session's, and "the last
run" is the newest row of the same pipeline and step), run in-process on the real emulator:
new, arguments changed (which fields), upstream changed (a step that will run first; a step whose
cached output differs from last time), refresh (--refresh and the step's own), verification
failed (a stored clip cut short), recoverable (a submit whose answer was lost), and the cache key's
version (a row filed under an older version). Then the JSON form through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import CLIENT_VARIABLES, KLINGFLOW
from klingflow import ledger
from klingflow.cache import CACHE_VERSION, Journal
from klingflow.engine import RunOptions, arun, plan_pipeline
from klingflow.spec import parse_pipeline


def shots(name: str, prompt: str = "a paper boat", *, frame: bool = True, **first: Any) -> Any:
    steps: list[dict[str, Any]] = [
        {"id": "first", "uses": "text-to-video", "with": {"prompt": prompt}, **first}
    ]
    if frame:
        steps.append({"id": "handoff", "uses": "last_frame", "with": {"video": "${steps.first.video}"}})
    return parse_pipeline({"name": name, "steps": steps})


def why(spec: Any, options: RunOptions) -> dict[str, tuple[str, str | None, str | None]]:
    return {
        s.step_id: (s.status, s.reason, s.reason_detail) for s in plan_pipeline(spec, None, options).steps
    }


async def test_new_then_arguments_changed_and_the_ledger_row_says_why(options: RunOptions, emulator) -> None:
    first = why(shots("reason_args"), options)
    assert first["first"] == ("run", "new", "no earlier run of this step is in the ledger")
    assert first["handoff"] == ("run", "upstream_changed", "first will run first")
    ran = await arun(shots("reason_args"), None, options)
    rows = {r["step_id"]: r for r in ledger.to_records(ran.ledger)}
    assert (rows["first"]["run_reason"], rows["first"]["cache_version"]) == ("new", CACHE_VERSION)
    assert rows["handoff"]["run_reason"] == "upstream_changed"

    changed = shots("reason_args", "a paper boat at dusk")
    changed.steps[0].with_["aspect_ratio"] = "9:16"
    assert why(changed, options)["first"] == ("run", "arguments_changed", "aspect_ratio, prompt")
    again = await arun(changed, None, options)
    rows = {r["step_id"]: r for r in ledger.to_records(again.ledger)}
    assert (rows["first"]["run_reason"], rows["first"]["run_reason_detail"]) == (
        "arguments_changed",
        "aspect_ratio, prompt",
    )
    cached = await arun(changed, None, options)
    assert [(r.status, r.run_reason) for r in cached.records] == [("cached", None), ("cached", None)]


async def test_upstream_changed_names_the_step_whose_output_differs(options: RunOptions, emulator) -> None:
    await arun(shots("reason_upstream", "a red boat"), None, options)
    await arun(shots("reason_upstream", "a blue boat", frame=False), None, options)  # first alone, cached now
    planned = why(shots("reason_upstream", "a blue boat"), options)
    assert planned["first"][0] == "cached" and planned["first"][1] is None
    assert planned["handoff"] == ("run", "upstream_changed", "first made a different output than last time")


async def test_refresh_says_which_refresh(options: RunOptions, emulator) -> None:
    await arun(shots("reason_refresh", frame=False), None, options)
    assert why(shots("reason_refresh", frame=False), options.model_copy(update={"refresh": True}))[
        "first"
    ] == (
        "run",
        "refresh",
        "--refresh",
    )
    assert why(shots("reason_refresh", frame=False, refresh=True), options)["first"][1:] == (
        "refresh",
        "refresh: true",
    )
    assert why(shots("reason_refresh", frame=False, cache=False), options)["first"][1:] == (
        "refresh",
        "cache: false",
    )


async def test_a_cut_stored_clip_is_verification_failed(options: RunOptions, emulator) -> None:
    ran = await arun(shots("reason_verify", frame=False), None, options)
    (record,) = ran.records
    stored = options.store.path_for(record.sha256 or "", ".mp4")
    stored.write_bytes(stored.read_bytes()[:1000])  # cut short, as a full disk leaves it
    status, reason, detail = why(shots("reason_verify", frame=False), options)["first"]
    assert (status, reason) == ("recoverable", "verification_failed")
    assert detail == f"its stored file is missing or altered: request {record.request_id} fetched again"


async def test_a_lost_submit_is_recoverable(options: RunOptions, emulator) -> None:
    emulator.faults(script=["lost"])
    await arun(shots("reason_lost", frame=False, on_ambiguous_submit="fail"), None, options)
    status, reason, detail = why(shots("reason_lost", frame=False), options)["first"]
    assert (status, reason) == ("recoverable", "recoverable")
    assert detail == "a submit's answer was lost: looked up in fal's request history"


async def test_a_row_filed_under_an_older_cache_version_is_key_version(
    options: RunOptions, emulator, tmp_path: Path
) -> None:
    ran = await arun(shots("reason_version", frame=False), None, options)
    older = ledger.load(run=ran.run_id)
    older["cache_version"], older["cache_key"] = "0", "f" * 64  # as a klingflow of key version 0 filed it
    ledger.append(older)
    fresh = options.model_copy(update={"journal": Journal(tmp_path / "another-journal")})  # nothing cached
    assert why(shots("reason_version", frame=False), fresh)["first"] == (
        "run",
        "key_version",
        f"cache key version 0 -> {CACHE_VERSION}",
    )


def test_plan_format_json_gives_every_step_its_status_reason_and_cost(tmp_path: Path) -> None:
    pipeline = tmp_path / "reason_json.yaml"
    pipeline.write_text(
        "name: reason_json\nsteps:\n"
        "  - id: first\n    uses: text-to-video\n    with: {prompt: a boat, duration: 10}\n"
        "  - id: handoff\n    uses: last_frame\n    with: {video: '${steps.first.video}'}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env["KLINGFLOW_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [*KLINGFLOW, "plan", str(pipeline), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["pipeline"] == "reason_json" and plan["total_cost_usd"] == 0.45
    assert plan["generations"] == {"run": 1, "cached": 0, "recoverable": 0} and plan["operations"] == 1
    first, handoff = plan["steps"]
    assert (first["step_id"], first["status"], first["reason"], first["estimated_cost_usd"]) == (
        "first",
        "run",
        "new",
        0.45,
    )
    assert first["endpoint"] == "fal-ai/kling-video/v1/standard/text-to-video" and first["cache_key"]
    assert (handoff["reason"], handoff["reason_detail"]) == ("upstream_changed", "first will run first")
    wrong = subprocess.run(
        [*KLINGFLOW, "plan", str(pipeline), "--format", "yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode == 2 and "table or json" in wrong.stdout + wrong.stderr
