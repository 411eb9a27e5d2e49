"""fal's money signals and the money path, in-process against the real emulator.

What fal bills (``x-fal-billable-units`` times the pricing API's unit price) lands in the ledger
beside klingflow's estimate; a submit whose answer is lost is found in fal's request history and
adopted instead of paid again; a 422 on the result fetch fails the step at once, flagged as
possibly billed; a local file goes up through fal_client's own upload.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import KLINGFLOW, REPO, emulator_stats, serve_emulator
from klingflow import ledger
from klingflow.engine import RunOptions, arun
from klingflow.spec import parse_pipeline

T2V = "fal-ai/kling-video/v1/standard/text-to-video"
I2V = "fal-ai/kling-video/v1/standard/image-to-video"
TTS = "fal-ai/kling-video/v1/tts"


def _pipeline(*steps: dict) -> object:
    return parse_pipeline({"name": "money", "steps": list(steps)})


async def test_every_generation_row_carries_fal_billable_units_and_cost(
    options: RunOptions, emulator
) -> None:
    spec = _pipeline(
        {"id": "shot", "uses": "text-to-video", "with": {"prompt": "billed by the second", "duration": "10"}},
        {"id": "line", "uses": "tts", "with": {"text": "Billed per generation."}},
        {"id": "still", "uses": "last_frame", "with": {"video": "${steps.shot.video}"}},
    )
    result = await arun(spec, None, options)
    rows = {row["step_id"]: row for row in ledger.to_records(result.ledger)}
    assert rows["shot"]["billable_units"] == 10.0 and rows["shot"]["cost_usd"] == pytest.approx(0.45)
    assert rows["line"]["billable_units"] == 1.0 and rows["line"]["cost_usd"] == pytest.approx(0.007)
    assert rows["shot"]["cost_usd"] == pytest.approx(rows["shot"]["estimated_cost_usd"])
    assert rows["still"]["billable_units"] is None, "a local operation bills nothing"
    assert emulator.stats()["platform_requests"] >= 1, "unit prices came from fal's pricing API"
    runs, _ = ledger.summary(result.ledger)
    assert runs.loc[0, "billed_usd"] == pytest.approx(0.457) and runs.loc[0, "spend_usd"] == pytest.approx(
        0.457
    )


async def test_a_lost_submit_is_found_in_fal_history_and_adopted(options: RunOptions, emulator) -> None:
    """fal accepted the submit, the answer never arrived: klingflow polls that request, pays once."""
    emulator.faults(script=["lost"])
    result = await arun(
        _pipeline({"id": "shot", "uses": "tts", "with": {"text": "Accepted, answer lost."}}), None, options
    )
    record = result.records[0]
    assert result.status == "completed" and record.billing_note is None
    stats = emulator.stats()
    assert stats["submits"] == {TTS: 1} and stats["faults_injected"] == {"lost": 1}
    assert stats["platform_requests"] >= 1, "the request history was asked"


async def test_an_ambiguous_submit_fails_when_the_policy_says_so(options: RunOptions, emulator) -> None:
    emulator.faults(script=["lost"])
    spec = _pipeline(
        {"id": "shot", "uses": "tts", "with": {"text": "Fail, do not guess."}, "on_ambiguous_submit": "fail"}
    )
    result = await arun(spec, None, options)
    record = result.records[0]
    assert record.status == "failed" and "on_ambiguous_submit: fail" in (record.error or "")
    entry = options.journal.get(record.cache_key)
    assert entry is not None and entry.status == "interrupted", "kept for a re-run or `klingflow recover`"
    again = await arun(
        _pipeline({"id": "shot", "uses": "tts", "with": {"text": "Fail, do not guess."}}), None, options
    )
    assert again.status == "completed"
    assert emulator.stats()["submits"] == {TTS: 1}, "the re-run reconciled the interrupted submit: paid once"


async def test_a_local_image_goes_up_through_fal_client_storage(
    options: RunOptions, emulator, tmp_path
) -> None:
    image = tmp_path / "face.png"
    shutil.copyfile(REPO / "tests" / "specs" / "valid" / "face.png", image)
    spec = parse_pipeline(
        {
            "name": "local",
            "steps": [
                {
                    "id": "move",
                    "uses": "image-to-video",
                    "with": {"prompt": "a slow smile", "image_url": "face.png"},
                }
            ],
        },
        source=tmp_path / "local.yaml",
    )
    emulator.faults(script=["429@upload"], retry_after=1)
    result = await arun(spec, None, options)
    assert result.status == "completed", result.failures
    stats = emulator.stats()
    assert stats["storage_tokens"] + stats["upload_initiates"] >= 1, "fal's storage protocol was spoken"
    assert stats["uploads"] == 1 and stats["faults_injected"] == {"429": 1}, "a 429 on the upload was retried"
    backends = REPO / "src" / "klingflow" / "backends"
    assert not any("storage/upload" in p.read_text() for p in backends.glob("*.py")), (
        "no upload code of our own"
    )


def test_a_422_on_the_result_fails_at_once_flagged_possibly_billed(
    tmp_path: Path, session_prefect: dict[str, str]
) -> None:
    """A value klingflow was told to allow but fal's model refuses: COMPLETED, then 422 on the result."""
    home = tmp_path / "home"
    with serve_emulator(home, "--latency", "0.2") as env:
        pipeline = tmp_path / "refused.yaml"
        pipeline.write_text(
            "name: refused\nsteps:\n  - id: fx\n    uses: effects\n"
            "    with: {effect_scene: brand_new_scene}\n"
        )
        client = {**env, "KLINGFLOW_EXTRA_ENUM_VALUES": "effect_scene=brand_new_scene"}
        client.update(session_prefect)
        done = subprocess.run(
            [*KLINGFLOW, "run", str(pipeline), "--backend", "fal"],
            env=client,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "422" in done.stderr and "effect_scene" in done.stderr
        assert emulator_stats(env)["submits"] == {"fal-ai/kling-video/v1/standard/effects": 1}, (
            "never retried"
        )
    rows = ledger.to_records(ledger.load(root=home / "ledger"))
    assert len(rows) == 1 and rows[0]["status"] == "failed" and rows[0]["attempts"] == 1
    assert rows[0]["billing_note"].startswith("possibly_billed")


async def test_a_result_fal_no_longer_keeps_is_said_plainly_and_paid_again_only_if_allowed(
    options: RunOptions, emulator
) -> None:
    """A run crashed long ago (its journal says submitted); fal's result retention has passed."""
    spec = _pipeline({"id": "line", "uses": "tts", "with": {"text": "Collected too late."}})
    first = await arun(spec, None, options)
    record = first.records[0]
    emulator._client.post(
        f"{emulator.base}/_emulator/config", json={"result_retention": 1}
    ).raise_for_status()
    for policy, expected in (("fail", "failed"), ("reconcile", "completed")):
        options.journal.record_submitted(
            record.cache_key, endpoint=TTS, backend=record.backend, request_id=record.request_id
        )
        await asyncio.sleep(1.5)
        step = {
            "id": "line",
            "uses": "tts",
            "with": {"text": "Collected too late."},
            "on_ambiguous_submit": policy,
        }
        again = (await arun(_pipeline(step), None, options)).records[0]
        assert again.status == expected, again.error
        if policy == "fail":
            assert "fal no longer keeps its result" in (again.error or "")
        else:
            assert again.billing_note and again.billing_note.startswith("result_gone")
            assert again.request_id != record.request_id


async def test_one_key_wanted_twice_at_once_in_one_process_is_paid_once(options: RunOptions, emulator) -> None:
    """Two executions of one run (or two rows of a batch) with the same cache key at the same time:
    the process's claim is its own, so only the in-process wait keeps the second from submitting."""
    same = {"uses": "tts", "with": {"text": "Said once, wanted twice."}}
    result = await arun(_pipeline({"id": "one", **same}, {"id": "two", **same}), None, options)
    assert result.status == "completed", result.failures
    assert emulator.stats()["submits"] == {TTS: 1}, "the second execution reused the first one's request"
    assert sorted(r.status for r in result.records) == ["cached", "completed"]
