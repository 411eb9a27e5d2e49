"""The fal backend against the real emulator over HTTPS: round trips, errors, faults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import fal_client
import pytest

from klingflow._files import file_sha256
from klingflow.backends import resolve_backend
from klingflow.backends.fal import EndpointResult, FalBackend, QueueEvent
from klingflow.backends.handles import is_loopback
from klingflow.cache import Store
from klingflow.errors import (
    ConfigError,
    ConnectionLost,
    InvalidInput,
    RateLimited,
    RequestCancelled,
    RequestFailed,
    ResultLost,
    ResultTimeout,
    SubmitAmbiguous,
    Unauthorized,
    is_transient,
)
from klingflow.media import probe

T2V = "fal-ai/kling-video/v1/standard/text-to-video"


@pytest.fixture
def backend(emulator, tmp_path: Path) -> FalBackend:
    return FalBackend(
        resolve_backend("fal", key=emulator.key), Store(tmp_path / "store"), poll_interval=(0.05, 0.05)
    )


async def generate(backend: FalBackend, endpoint: str, arguments: dict, *, on_event=None) -> EndpointResult:
    """One generation through the backend's calls in the engine's order (engine.generation: upload,
    submit once, wait, fetch the result, download), without the engine's journal, claims and retries."""
    body = await backend.prepare(endpoint, arguments)
    handle = await backend.submit(endpoint, body)
    await backend.wait(handle, on_event=on_event)
    fetched = await backend.fetch_result(handle)
    return await backend.download(handle, fetched.raw)


def test_an_emulator_host_without_its_tunnel_is_refused_before_anything_is_sent(
    emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal_client's upload and platform hosts are fixed: without HTTPS_PROXY they would be the real fal."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        resolve_backend("fal", key=emulator.key)
    assert "HTTPS_PROXY is not set" in caught.value.message and "rest.fal.ai" in caught.value.message
    assert "klingflow emulator env" in caught.value.hint
    assert emulator.key not in str(caught.value)


def test_backend_points_at_the_emulator_without_leaking_the_key(backend: FalBackend, emulator) -> None:
    assert is_loopback(backend.config.queue_host)
    assert backend.identity == "emulator"
    assert emulator.key not in repr(backend.config)
    assert emulator.key not in backend.identity


@pytest.mark.parametrize(
    "aspect_ratio,size", [("16:9", (1280, 720)), ("9:16", (720, 1280)), ("1:1", (960, 960))]
)
async def test_text_to_video_round_trip(backend: FalBackend, emulator, aspect_ratio, size) -> None:
    events: list[QueueEvent] = []
    result = await generate(
        backend,
        "text-to-video",
        {"prompt": f"a lighthouse at dusk {aspect_ratio}", "aspect_ratio": aspect_ratio},
        on_event=events.append,
    )
    stored = result.files["video"]
    assert backend.store.verify(stored)
    info = probe(stored.path)
    assert (info.width, info.height) == size
    assert abs(info.duration - 5.0) < 1 / 30 + 1e-6
    assert not info.has_audio
    assert any(e.status == "IN_PROGRESS" and e.logs for e in events), "log lines reach the callback"
    assert events[-1].status == "COMPLETED"
    assert emulator.stats()["submits"] == {T2V: 1}


async def test_ten_second_clip_and_camera_control(backend: FalBackend) -> None:
    result = await generate(
        backend,
        "text-to-video",
        {
            "prompt": "zoom on a city",
            "duration": 10,
            "advanced_camera_control": {"movement_type": "zoom", "movement_value": 5},
        },
    )
    assert abs(probe(result.files["video"].path).duration - 10.0) < 1 / 30 + 1e-6


async def test_tts_then_avatar_chain_with_local_upload(backend: FalBackend, emulator, tmp_path: Path) -> None:
    speech = await generate(
        backend, "tts", {"text": "Hello from the klingflow emulator, this is a test.", "voice_speed": 1.5}
    )
    audio = probe(speech.files["audio"].path)
    assert audio.has_audio and not audio.has_video and audio.audio_codec == "mp3"
    from klingflow.emulator.render import placeholder_image

    face = tmp_path / "face.png"
    placeholder_image(label="a face", out=face, size=(720, 1280))
    avatar = await generate(
        backend, "ai-avatar", {"image_url": str(face), "audio_url": speech.output.audio.url}
    )
    video = probe(avatar.files["video"].path)
    assert video.has_audio and video.has_video
    assert abs(video.duration - audio.duration) < 0.1
    assert abs(avatar.output.duration - video.duration) < 0.1
    assert emulator.stats()["uploads"] == 1


async def test_image_to_video_and_effects_from_an_earlier_output(backend: FalBackend, tmp_path: Path) -> None:
    from klingflow.emulator.render import placeholder_image

    still = tmp_path / "still.png"
    placeholder_image(label="start", out=still, size=(1280, 720))
    moving = await generate(backend, "image-to-video", {"prompt": "snow falls", "image_url": str(still)})
    assert probe(moving.files["video"].path).width == 1280
    hug = await generate(
        backend, "effects", {"effect_scene": "hug", "input_image_urls": [str(still), str(still)]}
    )
    assert abs(probe(hug.files["video"].path).duration - 5.0) < 0.05


async def test_identical_requests_give_identical_bytes(backend: FalBackend) -> None:
    first = await generate(backend, "tts", {"text": "Same words, same bytes."})
    second = await generate(backend, "tts", {"text": "Same words, same bytes."})
    assert first.handle.request_id != second.handle.request_id
    assert first.files["audio"].sha256 == second.files["audio"].sha256
    assert file_sha256(second.files["audio"].path) == second.files["audio"].sha256


async def test_invalid_input_is_a_permanent_422_on_the_result_naming_the_field(backend: FalBackend) -> None:
    """As on fal: the queue accepts the submit, the request completes, the result fetch answers 422."""
    handle = await backend.submit(T2V, {"prompt": "x", "cfg_scale": 3})
    await backend.wait(handle)
    with pytest.raises(InvalidInput) as info:
        await backend.fetch_result(handle)
    assert info.value.status_code == 422 and info.value.phase == "result"
    assert not is_transient(info.value)
    assert "cfg_scale" in str(info.value) and handle.request_id in str(info.value)


async def test_unknown_effect_scene_is_refused_with_a_suggestion(backend: FalBackend) -> None:
    handle = await backend.submit("effects", {"effect_scene": "hugg"})
    await backend.wait(handle)
    with pytest.raises(InvalidInput) as info:
        await backend.fetch_result(handle)
    assert info.value.status_code == 422 and "did you mean 'hug'" in str(info.value)


async def test_wrong_key_is_a_permanent_401(emulator, tmp_path: Path) -> None:
    config = resolve_backend("fal", key="wrong:key")
    with pytest.raises(Unauthorized) as info:
        await FalBackend(config, Store(tmp_path)).submit(T2V, {"prompt": "x"})
    assert info.value.status_code == 401 and not is_transient(info.value)
    assert "wrong:key" not in str(info.value)


async def test_cancel_a_stuck_request(backend: FalBackend, emulator) -> None:
    emulator.faults(script=["stuck"])
    handle = await backend.submit(T2V, {"prompt": "never starts"})
    with pytest.raises(ResultTimeout):
        await backend.wait(handle, timeout=0.5)
    await backend.cancel(handle)
    with pytest.raises(RequestCancelled) as info:
        await backend.wait(handle)
    assert "cancelled" in str(info.value) and not is_transient(info.value)
    stats = emulator.stats()
    assert stats["cancels"] == 1 and stats["faults_injected"] == {"stuck": 1}


@pytest.mark.parametrize("kind", ["500", "502", "503"])
async def test_a_5xx_on_submit_is_ambiguous_never_resent(backend: FalBackend, emulator, kind: str) -> None:
    """fal may have accepted a submit answered with 5xx: the backend sends it once and says so."""
    emulator.faults(script=[kind])
    with pytest.raises(SubmitAmbiguous) as info:
        await backend.submit(T2V, {"prompt": "x"})
    assert info.value.status_code == int(kind) and not is_transient(info.value)
    assert emulator.stats()["faults_injected"] == {kind: 1}


@pytest.mark.parametrize(
    ("kind", "error"), [("429", RateLimited), ("drop", SubmitAmbiguous), ("lost", SubmitAmbiguous)]
)
async def test_fal_client_never_resends_a_submit_behind_our_back(backend, emulator, kind, error) -> None:
    """fal_client's own submit resends up to 10 times; klingflow's goes out once, whatever happens."""
    before = emulator.stats()
    emulator.faults(script=[kind])
    with pytest.raises(error):
        await backend.submit(T2V, {"prompt": f"one submit through a {kind}"})
    stats = emulator.stats()
    assert stats["faults_injected"] == {kind: 1} and stats["submits"] == {T2V: 1}, "sent exactly once"
    accepted = stats["open"] + stats["completed"] - before["open"] - before["completed"]
    assert accepted == (1 if kind == "lost" else 0), "accepted once (lost) or never"


def test_the_fal_client_internals_klingflow_relies_on_are_there() -> None:
    """klingflow posts submits itself through fal_client's configured HTTP client (public handle
    attribute) to its queue URL constant: this fails, on purpose, if a fal_client release moves them."""
    import dataclasses

    from fal_client.client import QUEUE_URL_FORMAT, AsyncRequestHandle

    assert QUEUE_URL_FORMAT.startswith("https://")
    fields = {f.name for f in dataclasses.fields(AsyncRequestHandle)}
    assert {"client", "response_url", "status_url", "cancel_url", "request_id"} <= fields


async def test_rate_limit_answer_carries_retry_after(emulator) -> None:
    import httpx

    emulator.faults(script=["429"], retry_after=7)
    async with httpx.AsyncClient(verify=emulator.ssl) as client:
        response = await client.post(
            f"{emulator.base}/{T2V}", json={"prompt": "x"}, headers={"Authorization": f"Key {emulator.key}"}
        )
    assert response.status_code == 429 and response.headers["retry-after"] == "7"


async def test_completed_with_error(backend: FalBackend, emulator) -> None:
    emulator.faults(script=["error"])
    with pytest.raises(RequestFailed) as info:
        await generate(backend, "tts", {"text": "this one fails"})
    assert "Emulated model failure" in str(info.value) and info.value.request_id
    assert f"request {info.value.request_id}" in str(info.value), "the printed error names the request"
    assert "fal-ai/kling-video/v1/tts" in str(info.value), "the printed error names the endpoint"


async def test_result_file_404_is_permanent(backend: FalBackend, emulator) -> None:
    emulator.faults(script=["result_404"])
    with pytest.raises(ResultLost) as info:
        await generate(backend, "tts", {"text": "file vanishes"})
    assert info.value.status_code == 404 and not is_transient(info.value)
    assert f"request {info.value.request_id}" in str(info.value), "the printed error names the request"
    assert not list(backend.store.tmp.iterdir()), "no partial download is left behind"


async def test_truncated_result_file_is_never_stored(backend: FalBackend, emulator) -> None:
    emulator.faults(script=["truncated"])
    with pytest.raises(ConnectionLost) as info:
        await generate(backend, "tts", {"text": "file cut short"})
    assert "truncated" in str(info.value) and is_transient(info.value)
    assert not list(backend.store.objects.rglob("*.mp3"))
    assert not list(backend.store.tmp.iterdir())


async def test_start_timeout_header_is_honoured(emulator) -> None:
    emulator.faults(script=["stuck"])
    client = fal_client.AsyncClient(key=emulator.key)
    handle = await client.submit(T2V, {"prompt": "waits too long"}, start_timeout=1.2)
    await asyncio.sleep(1.5)
    status = await handle.status()
    assert isinstance(status, fal_client.Completed) and status.error
    with pytest.raises(fal_client.client.FalClientHTTPError) as info:
        await handle.get()
    assert info.value.status_code == 504
    assert info.value.response_headers.get("x-fal-request-timeout-type") == "user"


async def test_queue_positions_are_reported(backend: FalBackend, emulator) -> None:
    emulator.faults(script=["stuck", "stuck", "stuck", "stuck", "stuck"])
    handles = [await backend.submit(T2V, {"prompt": f"queued {i}"}) for i in range(5)]
    client = fal_client.AsyncClient(key=emulator.key)
    status = await client.status(T2V, handles[-1].request_id)
    assert isinstance(status, fal_client.Queued)
    for handle in handles:
        await backend.cancel(handle)


async def test_direct_run_route(emulator) -> None:
    client = fal_client.AsyncClient(key=emulator.key)
    result = await client.run("fal-ai/kling-video/v1/tts", {"text": "direct run"})
    assert result["audio"]["url"].endswith(".mp3")
    assert emulator.stats()["runs"] == {"fal-ai/kling-video/v1/tts": 1}


async def test_scripted_fault_can_target_one_endpoint(backend: FalBackend, emulator) -> None:
    emulator.faults(script=["error@text-to-video"])
    speech = await generate(backend, "tts", {"text": "not the target"})
    assert speech.files["audio"].bytes > 0
    with pytest.raises(RequestFailed):
        await generate(backend, "text-to-video", {"prompt": "the target"})
    assert emulator.stats()["faults_injected"] == {"error": 1}
