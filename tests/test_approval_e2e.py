"""Approval gates end to end: on a terminal, as a deployment, and for a batch's rows at once.

Every run goes through the tests' own fault proxy in front of the session emulator, and the paid
submits are counted there, not by klingflow:

1. ``klingflow run`` on a pseudo-terminal: the question shows the keyframe, the prompt and the
   cost; "r" ends the run with exit 0, the step and its dependant skipped and no image-to-video
   submit; the same run again with "a" pays for the image-to-video, not again for the first shot.
2. ``klingflow serve`` on a real Prefect server, a deployment run: the flow run reads Paused; a
   resume without ``approved`` is refused by the server; ``klingflow approve`` resumes it and it
   completes; nothing paid before the pause is paid again; a gate's timeout ends it rejected.
3. A batch without a terminal: every row pauses; ``klingflow approve --batch ID`` lists them,
   ``--row`` answers one and ``--all`` the rest; the waiting rows' picture is an artifact.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import KLINGFLOW, REPO, stop_group
from faultproxy import FaultProxy
from moneyhelpers import accepted_by_endpoint, ledger_rows, run_env

pytestmark = pytest.mark.slow

GATED = """\
name: {name}
steps:
  - id: first_shot
    uses: text-to-video
    with: {{prompt: "a paper boat on a rainy street", duration: 5}}
  - id: handoff
    uses: last_frame
    with: {{video: "${{steps.first_shot.video}}"}}
  - id: second_shot
    uses: image-to-video
    approve: {approve}
    with: {{prompt: "${{inputs.next}}", image_url: "${{steps.handoff.image}}"}}
  - id: final_cut
    uses: concat
    with: {{inputs: ["${{steps.first_shot.video}}", "${{steps.second_shot.video}}"]}}
inputs:
  next: {{type: string, default: "the boat spins in a puddle"}}
"""


def gated(folder: Path, name: str = "gated", approve: str = "true") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(GATED.format(name=name, approve=approve))
    return path


def by_step(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["step_id"]: row for row in rows}


def in_background(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``klingflow ARGS`` without a terminal, in its own session, its output in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*KLINGFLOW, *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# ---- 1. on a terminal ---------------------------------------------------------------------------


def on_a_terminal(
    command: list[str], env: dict[str, str], cwd: Path, answers: list[tuple[str, str]]
) -> tuple[int, str]:
    """Run ``command`` on a pseudo-terminal; type each answer once its question has appeared."""
    leader, follower = os.openpty()
    process = subprocess.Popen(
        command,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "120"},
        cwd=cwd,
        start_new_session=True,
    )
    os.close(follower)
    output, pending = "", list(answers)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # every writer of the terminal is gone
                break
            if not chunk:
                break
            output += chunk.decode(errors="replace")
            if pending and pending[0][0] in output.rsplit("\n", 1)[-1]:
                os.write(leader, pending.pop(0)[1].encode() + b"\r")
        return process.wait(timeout=30), output
    finally:
        if process.poll() is None:
            stop_group(process)
        os.close(leader)


def test_on_a_terminal_a_rejection_pays_nothing_and_an_approval_runs_the_step(
    tmp_path: Path, fault_proxy: FaultProxy, session_prefect: dict[str, str]
) -> None:
    pipeline = gated(tmp_path)
    home = tmp_path / "home"
    env = run_env(fault_proxy, home, session_prefect, tmp_path / "prefect-home")
    command = [*KLINGFLOW, "run", str(pipeline), "--backend", "fal", "--out", str(tmp_path / "out")]
    code, shown = on_a_terminal(command, env, tmp_path, [("[a/r/e]", "r"), ("note (optional)", "too dark")])
    assert code == 0, shown[-3000:]
    assert "step 'second_shot' (image-to-video) of gated waits for approval" in shown, shown[-3000:]
    assert re.search(r"input image_url: \S+\.png", shown) and "prompt: the boat spins in a puddle" in shown
    assert "cost of this step: $0.225" in shown and "with the steps after it (final_cut)" in shown
    rows = by_step(ledger_rows(home))
    assert [rows[s]["status"] for s in ("first_shot", "handoff", "second_shot", "final_cut")] == [
        "completed",
        "completed",
        "skipped",
        "skipped",
    ]
    assert (
        rows["second_shot"]["approval"] == "rejected" and rows["second_shot"]["approval_note"] == "too dark"
    )
    assert rows["second_shot"]["approval_by"].endswith("(terminal)")
    assert accepted_by_endpoint(fault_proxy) == {"text-to-video": 1}, (
        "nothing submitted for the rejected step"
    )

    code, shown = on_a_terminal(command, env, tmp_path, [("[a/r/e]", "a")])
    assert code == 0, shown[-3000:]
    latest = newest_run(home)
    assert latest["second_shot"]["status"] == "completed" and latest["second_shot"]["approval"] == "approved"
    assert latest["first_shot"]["status"] == "cached" and latest["final_cut"]["status"] == "completed"
    assert accepted_by_endpoint(fault_proxy) == {"text-to-video": 1, "image-to-video": 1}, "paid once each"

    edited = [*command, "--set", "next=the boat drifts under a bridge"]
    code, shown = on_a_terminal(edited, env, tmp_path, [("[a/r/e]", "e"), ("new prompt", "the boat sinks")])
    assert code == 0, shown[-3000:]
    latest = newest_run(home)
    assert (
        latest["second_shot"]["prompt"] == "the boat sinks" and latest["second_shot"]["status"] == "completed"
    )
    assert latest["second_shot"]["approval_note"] == "prompt edited"
    assert accepted_by_endpoint(fault_proxy) == {"text-to-video": 1, "image-to-video": 2}


def newest_run(home: Path) -> dict[str, dict[str, Any]]:
    """The rows of the run that finished last, by step."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in ledger_rows(home):
        runs.setdefault(row["run_id"], []).append(row)
    return by_step(
        max(runs.values(), key=lambda rows: max(r["finished_at"] or r["started_at"] for r in rows))
    )


# ---- 2. a deployment on a Prefect server ------------------------------------------------------


@pytest.fixture
def served(
    tmp_path: Path, fault_proxy: FaultProxy, session_prefect: dict[str, str]
) -> Iterator[dict[str, str]]:
    """`klingflow serve` of two gated pipelines (the second gives up after 3 s), through the proxy."""
    env = run_env(fault_proxy, tmp_path / "home", session_prefect, tmp_path / "prefect-home")
    files = [gated(tmp_path, "gated_deployed"), gated(tmp_path, "gated_impatient", "{timeout: 3}")]
    server = in_background(["serve", *map(str, files)], env, tmp_path, tmp_path / "serve.log")
    try:
        yield env
    finally:
        stop_group(server)


def _api(env: dict[str, str]) -> Any:
    return temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]})


async def _state_of(flow_run_id: Any) -> str:
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
    return run.state.type.value if run.state else "NONE"


def _until(flow_run_id: Any, states: set[str], timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while (state := asyncio.run(_state_of(flow_run_id))) not in states:
        assert time.monotonic() < deadline, f"flow run {flow_run_id} still {state}"
        time.sleep(0.5)
    return state


def _start_deployment(name: str, out: Path, **inputs: str) -> FlowRun:
    deadline = time.monotonic() + 120
    while True:
        try:
            return run_deployment(name, timeout=0, parameters={"out_dir": str(out), "inputs": inputs})
        except Exception:  # the served deployment is not registered yet
            assert time.monotonic() < deadline, f"deployment {name} never appeared"
            time.sleep(0.5)


async def _resume_without_approved(flow_run_id: Any) -> Any:
    async with get_client() as client:
        return await client.resume_flow_run(flow_run_id, run_input={"note": "no decision in it"})


def test_a_deployment_run_pauses_and_klingflow_approve_resumes_it(
    served: dict[str, str], tmp_path: Path, fault_proxy: FaultProxy
) -> None:
    home = Path(served["KLINGFLOW_HOME"])
    with _api(served):
        run = _start_deployment("klingflow/gated_deployed", tmp_path / "out")
        assert _until(run.id, {"PAUSED", "FAILED", "CRASHED", "COMPLETED"}) == "PAUSED"
        assert accepted_by_endpoint(fault_proxy) == {"text-to-video": 1}, "paid up to the gate, no further"
        refused = asyncio.run(_resume_without_approved(run.id))
        assert refused.status.value == "REJECT" and "approved" in str(refused.details), refused
        assert asyncio.run(_state_of(run.id)) == "PAUSED", "a resume without a decision changes nothing"
        answered = subprocess.run(
            [*KLINGFLOW, "approve", str(run.id), "--note", "keyframe is fine", "--by", "the producer"],
            env=served,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert answered.returncode == 0, answered.stdout + answered.stderr
        assert f"approved: gated_deployed ({run.id})" in answered.stdout
        assert _until(run.id, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED", (
            tmp_path / "serve.log"
        ).read_text()[-3000:]
        again = subprocess.run(
            [*KLINGFLOW, "approve", str(run.id)], env=served, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 2 and "is not waiting for an approval" in again.stdout + again.stderr

        impatient = _start_deployment(
            "klingflow/gated_impatient", tmp_path / "out-impatient", next="the boat waits for nobody"
        )
        assert _until(impatient.id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=240) == "COMPLETED"
    rows = by_step(ledger_rows(home, str(run.id)))
    assert rows["second_shot"]["status"] == "completed" and rows["final_cut"]["status"] == "completed"
    assert (rows["second_shot"]["approval_by"], rows["second_shot"]["approval_note"]) == (
        "the producer",
        "keyframe is fine",
    )
    timed_out = by_step(ledger_rows(home, str(impatient.id)))
    assert timed_out["first_shot"]["status"] == "cached"
    assert (
        timed_out["second_shot"]["status"] == "skipped"
        and timed_out["second_shot"]["approval_by"] == "timeout"
    )
    assert accepted_by_endpoint(fault_proxy) == {"text-to-video": 1, "image-to-video": 1}, (
        "after the pause nothing already paid was paid again, and the timeout paid nothing"
    )


# ---- 3. a batch's rows --------------------------------------------------------------------------


async def _paused_rows(tag_prefix: str = "klingflow-batch:") -> list[FlowRun]:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["klingflow-approval"])), limit=50
        )
    return [
        r for r in runs if r.state and r.state.is_paused() and any(t.startswith(tag_prefix) for t in r.tags)
    ]


async def _artifact(key: str) -> Any:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.UPDATED_DESC,
            limit=1,
        )
    return found[0] if found else None


def test_a_batch_s_waiting_rows_are_answered_by_row_and_all_at_once(
    tmp_path: Path, fault_proxy: FaultProxy, session_prefect: dict[str, str]
) -> None:
    pipeline = gated(tmp_path, "gated_batch")
    table = tmp_path / "rows.csv"
    table.write_text("shot,next\nalpha,the boat spins\nbeta,the boat sinks\ngamma,the boat flies\n")
    env = run_env(fault_proxy, tmp_path / "home", session_prefect, tmp_path / "prefect-home")
    args = ["run", str(pipeline), "--batch", str(table), "--key-column", "shot", "--ignore-extra"]
    batch = in_background(
        [*args, "--backend", "fal", "--out", str(tmp_path / "out")], env, tmp_path, tmp_path / "batch.log"
    )
    try:
        with _api(env):
            deadline = time.monotonic() + 180
            while len(waiting := asyncio.run(_paused_rows())) < 3:
                assert batch.poll() is None, (tmp_path / "batch.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "batch.log").read_text()[-3000:]
                time.sleep(0.5)
            (batch_id,) = {
                t.removeprefix("klingflow-batch:")
                for r in waiting
                for t in r.tags
                if t.startswith("klingflow-batch:")
            }
            said = f"klingflow approve --batch {batch_id} --all"
            while said not in (printed := (tmp_path / "batch.log").read_text()):
                assert time.monotonic() < deadline, printed[-3000:]
                time.sleep(0.3)
            sheet = asyncio.run(_artifact("klingflow-gated-batch-approvals"))
            assert sheet is not None and str(sheet.data).startswith("data:image/jpeg;base64,")
            assert f"of batch {batch_id} waiting" in (sheet.description or "")

            def approve(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [*KLINGFLOW, "approve", "--batch", batch_id, *args],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )

            listed = approve()
            assert listed.returncode == 0 and all(
                name in listed.stdout for name in ("alpha", "beta", "gamma")
            ), listed.stdout
            one = approve("--row", "beta", "--reject", "--note", "not this one")
            assert one.returncode == 0 and "rejected: gated_batch-beta" in one.stdout, one.stdout + one.stderr
            unknown = approve("--row", "delta")
            assert unknown.returncode == 2 and "delta" in unknown.stdout + unknown.stderr
            rest = approve("--all")
            assert rest.returncode == 0 and rest.stdout.count("approved: ") == 2, rest.stdout + rest.stderr
        assert batch.wait(timeout=240) == 0, (tmp_path / "batch.log").read_text()[-3000:]
    finally:
        if batch.poll() is None:
            stop_group(batch)
    rows = ledger_rows(tmp_path / "home")
    gates = {row["row_key"]: row for row in rows if row["step_id"] == "second_shot"}
    assert sorted((g["status"], g["approval"]) for g in gates.values()) == [
        ("completed", "approved"),
        ("completed", "approved"),
        ("skipped", "rejected"),
    ]
    assert accepted_by_endpoint(fault_proxy) == {"text-to-video": 1, "image-to-video": 2}, (
        "one first shot (the rows share it), two approved rows; nothing for the rejected one"
    )


# ---- 4. the Prefect UI's Resume form ------------------------------------------------------------


CLICK = (
    "((selector, text) => { const found = Array.from(document.querySelectorAll(selector))"
    ".find(e => e.innerText.trim() === text); if (found) found.click(); return Boolean(found); })"
)
"""A JavaScript function: click the element of ``selector`` whose text is ``text``; whether one was."""
SWITCH = "document.querySelector('[role=dialog] label.p-toggle__control').getAttribute('aria-checked')"


def test_the_prefect_ui_resume_form_approves_a_paused_run(
    tmp_path: Path, fault_proxy: FaultProxy, session_prefect: dict[str, str]
) -> None:
    from test_report import chromium_page, evaluate

    pipeline = gated(tmp_path, "gated_ui")
    env = run_env(fault_proxy, tmp_path / "home", session_prefect, tmp_path / "prefect-home")
    run = in_background(
        ["run", str(pipeline), "--backend", "fal", "--out", str(tmp_path / "out")],
        env,
        tmp_path,
        tmp_path / "run.log",
    )
    try:
        deadline = time.monotonic() + 180
        while not (
            found := re.search(r"klingflow approve (\S+) \[--reject\]", (tmp_path / "run.log").read_text())
        ):
            assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "run.log").read_text()[
                -3000:
            ]
            time.sleep(0.3)
        flow_run_id = found[1]
        with _api(env):
            _until(flow_run_id, {"PAUSED"})
        ui = env["PREFECT_API_URL"].removesuffix("/api")

        def wait_for(call: Any, text: str) -> str:
            deadline = time.monotonic() + 60
            while True:
                body = evaluate(call, "document.body ? document.body.innerText : ''") or ""
                if text in body:
                    return body
                assert time.monotonic() < deadline, f"{text!r} never appeared in the UI: {body[:3000]}"
                time.sleep(0.5)

        with chromium_page(f"{ui}/runs/flow-run/{flow_run_id}") as call:
            wait_for(call, "Paused")
            assert evaluate(call, CLICK + "('button', 'Resume')"), "no Resume button"
            wait_for(call, "Approve")
            evaluate(call, "document.querySelector('[role=dialog] label.p-toggle__control').click()")
            deadline = time.monotonic() + 10
            while evaluate(call, SWITCH) != "true":
                assert time.monotonic() < deadline, "the Approve switch did not turn on"
                time.sleep(0.2)
            if os.environ.get("KLINGFLOW_UPDATE_DOCS"):
                shot = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
                (REPO / "docs" / "prefect-ui-approval.png").write_bytes(shot)
            assert evaluate(call, CLICK + "('[role=dialog] button', 'Submit')"), "no Submit button"
            with _api(env):
                assert _until(flow_run_id, {"COMPLETED", "FAILED", "CRASHED"}) == "COMPLETED"
        assert run.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()[-3000:]
        rows = by_step(ledger_rows(tmp_path / "home"))
        assert rows["second_shot"]["status"] == "completed"
        assert (rows["second_shot"]["approval"], rows["second_shot"]["approval_by"]) == (
            "approved",
            "the Prefect UI or API",
        )
        assert accepted_by_endpoint(fault_proxy) == {"text-to-video": 1, "image-to-video": 1}
    finally:
        if run.poll() is None:
            stop_group(run)
