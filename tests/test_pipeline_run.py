"""Running pipelines against the real emulator: caching, resume, retries, concurrency, budget, ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faultproxy import Fault, FaultProxy
from klingflow.cache import Journal, JournalEntry
from klingflow.endpoints import get_endpoint
from klingflow.engine import RetryPolicy, RunOptions, arun, plan_pipeline
from klingflow.errors import BudgetError
from klingflow.ledger import load_manifest
from klingflow.spec import parse_pipeline
from moneyhelpers import EngineProcess, exchange_log

REPO = Path(__file__).resolve().parents[1]
T2V = "fal-ai/kling-video/v1/standard/text-to-video"
TTS = "fal-ai/kling-video/v1/tts"


def fan_out(prompts: list[str], *, tts: bool = True) -> dict:
    steps = [
        {
            "id": "shots",
            "uses": "text-to-video",
            "foreach": "${inputs.prompts}",
            "with": {"prompt": "${item}"},
        }
    ]
    if tts:
        steps.append({"id": "voice", "uses": "tts", "with": {"text": "${inputs.line}"}})
    return {
        "name": "fan_out",
        "inputs": {
            "prompts": {"type": "list", "default": prompts},
            "line": {"type": "string", "default": "A line of narration."},
        },
        "steps": steps,
    }


async def test_fan_out_then_full_cache_hit(options: RunOptions, emulator) -> None:
    spec = parse_pipeline(fan_out(["one", "two", "three"]))
    first = await arun(spec, None, options)
    assert first.status == "completed"
    assert [r.status for r in first.records] == ["completed"] * 4
    assert len(first.outputs["shots"]["video"]) == 3
    assert emulator.stats()["submits"] == {T2V: 3, TTS: 1}
    emulator.reset()
    second = await arun(spec, None, options)
    assert [r.status for r in second.records] == ["cached"] * 4
    assert emulator.stats()["total_submits"] == 0, "a fully cached re-run submits nothing"
    assert second.outputs["shots"]["video"] == first.outputs["shots"]["video"]
    ledger = second.ledger
    assert list(ledger["status"]) == ["cached"] * 4
    assert ledger["estimated_cost_usd"].sum() == 0
    assert str(ledger["finished_at"].dtype) == "datetime64[us, UTC]"
    # each row names the schema its arguments were checked against; the manifest says which copy it was
    assert set(ledger["schema_sha256"]) == {get_endpoint(T2V).sha256, get_endpoint(TTS).sha256}
    schemas = load_manifest(second.run_id).schemas
    assert schemas[T2V] == f"snapshot (schema 2026-05-12, fal-ai/fal-js), sha256 {get_endpoint(T2V).sha256}"


VOICE = "fal-ai/kling-video/create-voice"
V26_I2V = "fal-ai/kling-video/v2.6/pro/image-to-video"


async def test_a_voice_id_output_feeds_the_next_step_and_a_rerun_pays_for_nothing(
    options: RunOptions, emulator
) -> None:
    """create-voice answers a value, no file: its cache entry is whole without one (it was refetched,
    and after fal's hour paid again), and its voice id reaches the step that speaks with it."""
    spec = parse_pipeline(
        {
            "name": "voiced",
            "steps": [
                {"id": "voice", "uses": VOICE, "with": {"voice_url": "https://example.com/narrator.mp3"}},
                {
                    "id": "scene",
                    "uses": V26_I2V,
                    "with": {
                        "prompt": "<<<voice_1>>> says: the tide is turning",
                        "start_image_url": "https://example.com/harbour.png",
                        "voice_ids": ["${steps.voice.voice_id}"],
                    },
                },
            ],
        }
    )
    first = await arun(spec, None, options)
    assert [r.status for r in first.records] == ["completed", "completed"]
    voice_id = first.outputs["voice"]["voice_id"]
    assert (
        isinstance(voice_id, str) and voice_id and f'"voice_ids":["{voice_id}"]' in first.records[1].arguments
    )
    assert first.records[1].estimated_cost_usd == pytest.approx(5 * 0.168), "audio with voice control"
    emulator.reset()
    plan = plan_pipeline(spec, None, options)
    assert [step.status for step in plan.steps] == ["cached", "cached"]
    second = await arun(spec, None, options)
    assert [r.status for r in second.records] == ["cached", "cached"]
    assert second.outputs["voice"]["voice_id"] == voice_id
    assert emulator.stats()["total_submits"] == 0


async def test_edit_reruns_only_the_changed_step_and_its_dependants(options: RunOptions, emulator) -> None:
    data = {
        "name": "chain",
        "steps": [
            {"id": "voice", "uses": "tts", "with": {"text": "First line."}},
            {"id": "other", "uses": "tts", "with": {"text": "Independent line."}},
            {"id": "face", "uses": "text-to-video", "with": {"prompt": "a portrait", "aspect_ratio": "9:16"}},
            {"id": "still", "uses": "last_frame", "with": {"video": "${steps.face.video}"}},
            {
                "id": "talk",
                "uses": "ai-avatar",
                "with": {"image_url": "${steps.still.image}", "audio_url": "${steps.voice.audio}"},
            },
        ],
    }
    await arun(parse_pipeline(data), None, options)
    emulator.reset()
    data["steps"][0]["with"]["text"] = "An edited first line."
    edited = await arun(parse_pipeline(data), None, options)
    statuses = {r.step_id: r.status for r in edited.records}
    assert statuses == {
        "voice": "completed",
        "other": "cached",
        "face": "cached",
        "still": "cached",
        "talk": "completed",
    }
    assert emulator.stats()["submits"] == {TTS: 1, "fal-ai/kling-video/v1/standard/ai-avatar": 1}


async def test_corrupt_or_missing_cache_file_is_fetched_again_not_paid(options: RunOptions, emulator) -> None:
    spec = parse_pipeline(fan_out(["corrupt me", "delete me"], tts=False))
    first = await arun(spec, None, options)
    corrupt, missing = first.outputs["shots"]["video"]
    corrupt.write_bytes(corrupt.read_bytes()[:-10] + b"0123456789")
    missing.unlink()
    emulator.reset()
    second = await arun(spec, None, options)
    assert [r.status for r in second.records] == ["cached", "cached"]
    assert all((r.billing_note or "").startswith("refetched") for r in second.records)
    assert [r.request_id for r in second.records] == [r.request_id for r in first.records]
    assert emulator.stats()["submits"] == {}, "fetched again from the paid requests, not submitted"
    assert all(options.store.verify(s) for s in [options.store.find(r.sha256) for r in second.records])


async def test_refresh_regenerates(options: RunOptions, emulator) -> None:
    spec = parse_pipeline(fan_out(["again"], tts=False))
    await arun(spec, None, options)
    emulator.reset()
    again = await arun(spec, None, options.model_copy(update={"refresh": True}))
    assert [r.status for r in again.records] == ["completed"]
    assert emulator.stats()["submits"] == {T2V: 1}


async def test_concurrency_cap_holds(options: RunOptions, emulator) -> None:
    spec = parse_pipeline(fan_out([f"capped shot {i}" for i in range(6)], tts=False))
    result = await arun(spec, None, options.model_copy(update={"concurrency": 2}))
    assert result.status == "completed"
    stats = emulator.stats()
    assert stats["submits"] == {T2V: 6}
    assert stats["max_open"] == 2, "never more than 2 requests in flight"


async def test_transient_faults_are_recovered(options: RunOptions, emulator) -> None:
    emulator.faults(script=["503", "500", "error", "truncated"])
    result = await arun(parse_pipeline(fan_out(["recovering"], tts=False)), None, options)
    assert result.status == "completed"
    record = result.records[0]
    assert record.attempts == 4, "two ambiguous submits, one failed request, one that worked"
    assert record.billing_note and record.billing_note.startswith("possible_duplicate")
    assert emulator.stats()["faults_injected"] == {"503": 1, "500": 1, "error": 1, "truncated": 1}


async def test_permanent_fault_fails_at_once_and_spares_independent_branches(options, emulator) -> None:
    data = {
        "name": "partial",
        "steps": [
            {"id": "bad", "uses": "text-to-video", "with": {"prompt": "file vanishes"}},
            {"id": "after_bad", "uses": "last_frame", "with": {"video": "${steps.bad.video}"}},
            {"id": "good", "uses": "tts", "with": {"text": "I still finish."}},
        ],
    }
    emulator.faults(script=["result_404@text-to-video"])
    result = await arun(parse_pipeline(data), None, options)
    statuses = {r.step_id: r.status for r in result.records}
    assert statuses == {"bad": "failed", "after_bad": "skipped", "good": "completed"}
    bad = next(r for r in result.records if r.step_id == "bad")
    assert bad.attempts == 1 and "404" in bad.error
    assert "bad" in result.failures["after_bad"]
    assert emulator.stats()["submits"] == {T2V: 1, TTS: 1}
    emulator.reset()
    rerun = await arun(parse_pipeline(data), None, options)
    assert {r.step_id: r.status for r in rerun.records} == {
        "bad": "completed",
        "after_bad": "completed",
        "good": "cached",
    }


async def test_step_timeout_cancels_the_request(options: RunOptions, emulator) -> None:
    data = {
        "name": "slow",
        "steps": [{"id": "stuck", "uses": "tts", "timeout": 0.5, "with": {"text": "stuck"}}],
    }
    emulator.faults(script=["stuck"])
    result = await arun(parse_pipeline(data), None, options)
    assert result.records[0].status == "failed" and "0.5 s" in result.records[0].error
    assert emulator.stats()["cancels"] == 1


async def test_budget_refuses_before_any_submit(options: RunOptions, emulator) -> None:
    spec = parse_pipeline(fan_out(["a", "b", "c"]))
    plan = plan_pipeline(spec, None, options)
    assert plan.total_cost_usd == pytest.approx(3 * 0.225 + 0.007)
    with pytest.raises(BudgetError) as info:
        await arun(spec, None, options.model_copy(update={"max_cost_usd": 0.5}))
    assert "0.682" in str(info.value) and "0.500" in str(info.value)
    assert emulator.stats()["total_submits"] == 0


async def test_plan_shows_cached_steps_after_a_run(options: RunOptions) -> None:
    spec = parse_pipeline(fan_out(["planned"]))
    await arun(spec, None, options)
    plan = plan_pipeline(spec, None, options)
    assert [s.status for s in plan.steps] == ["cached", "cached"]
    assert plan.total_cost_usd == 0


def _submitted(journal: Journal) -> JournalEntry | None:
    return next((e for e in journal.entries() if e.status == "submitted"), None)


@pytest.mark.slow
def test_resume_polls_the_journaled_request(fault_proxy: FaultProxy, emulator, tmp_path: Path) -> None:
    """A run killed after fal accepted its submit leaves the request id in the journal; the next run
    polls that request: the tests' own proxy sees no submit at all on the re-run.

    The engine runs in a process behind the proxy (fal_client's hosts are fixed when it is imported):
    ``moneyrun.py``, the engine ``klingflow run`` drives. Its first status poll is held back, so the
    kill lands with the request in flight, after the journal says ``submitted``."""
    pipeline = tmp_path / "resume.yaml"
    pipeline.write_text(
        "name: resume\nsteps:\n  - id: shot\n    uses: text-to-video\n    with: {prompt: resume me}\n"
    )
    home, env = tmp_path / "home", fault_proxy.environment()
    journal = Journal(home / "journal")
    fault_proxy.inject("status", Fault.SLOW, delay=30)
    with (tmp_path / "killed.log").open("w") as log:
        killed = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "moneyrun.py")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            start_new_session=True,
        )
    try:
        assert killed.stdin is not None
        killed.stdin.write(json.dumps({"pipeline": str(pipeline), "home": str(home)}) + "\n")
        killed.stdin.flush()
        deadline = time.monotonic() + 60
        while (entry := _submitted(journal)) is None and killed.poll() is None:
            assert time.monotonic() < deadline, "no submitted request in the journal within 60 s"
            time.sleep(0.02)
        os.killpg(killed.pid, signal.SIGKILL)  # the process dies with the request in flight
        killed.wait()
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    assert entry is not None and entry.request_id, (tmp_path / "killed.log").read_text()
    assert fault_proxy.accepted_submits == [entry.request_id], exchange_log(fault_proxy)
    assert not any(e.phase == "result" for e in fault_proxy.exchanges), "killed before its result"

    fault_proxy.reset()
    engine = EngineProcess(env, tmp_path / "rerun.log")
    try:
        rerun = engine.run(pipeline, home)
    finally:
        engine.close()
    assert rerun["status"] == "completed", rerun
    seen = exchange_log(fault_proxy)
    assert fault_proxy.counts["submit"]["seen"] == 0 and fault_proxy.accepted_submits == [], seen
    [row] = rerun["records"]
    assert (row["status"], row["request_id"]) == ("completed", entry.request_id)
    assert f"resuming request {entry.request_id}" in "\n".join(rerun["log"]), rerun["log"]
    polled = {
        e.path.split("/requests/")[1].split("/")[0] for e in fault_proxy.exchanges if e.phase == "status"
    }
    assert polled == {entry.request_id}, seen


async def test_continue_preset_cuts_a_continuous_scene(options: RunOptions, emulator) -> None:
    from klingflow.media import first_frame, probe

    result = await arun(REPO / "deployments/pipelines/continue.yaml", None, options)
    assert result.status == "completed"
    final = result.final["final_cut"]
    assert abs(probe(final).duration - 10.0) < 1 / 30 + 1e-6, "two 5 s shots, back to back"
    handoff, second = result.outputs["handoff"]["image"], result.outputs["second_shot"]["video"]
    start = first_frame(second, options.store.tmp / "second-start.png")
    from PIL import Image, ImageChops, ImageStat

    with Image.open(handoff) as a, Image.open(start) as b:
        difference = ImageStat.Stat(
            ImageChops.difference(a.convert("L"), b.convert("L").resize(a.size))
        ).mean[0]
    assert difference < 40, "the second shot starts from the first shot's last frame"
    assert emulator.stats()["submits"] == {T2V: 1, "fal-ai/kling-video/v1/standard/image-to-video": 1}


def test_retry_delay_backs_off_and_never_undercuts_retry_after() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.25)
    assert 0.75 <= policy.delay(1) <= 1.25
    assert 3.0 <= policy.delay(3) <= 5.0
    assert 6.0 <= policy.delay(10) <= 10.0, "capped"
    assert policy.delay(1, retry_after=7.0) == 7.0, "Retry-After wins over a shorter backoff"
