"""Every vendored endpoint with a schema is served by the emulator, its output as the registry says.

For each id in ``klingflow.endpoints.ENDPOINTS`` that has a schema, the smallest valid input is built
from the schema alone (its required fields, plus any a cross-field rule of the registry asks for),
media inputs pointing at files the unmodified ``fal_client`` uploaded to the emulator; it is submitted
through ``fal_client`` over HTTPS, its result fetched and every output file downloaded and decoded:
a video lasts the requested ``duration`` (or its input's length), has the requested aspect (image-to-
video: its image's) and an audio track exactly when the endpoint generates audio; pictures come
``num_images`` at a time in ``output_format``; ``x-fal-billable-units`` counts what the price rule does.

Speed: every endpoint runs in benchmark mode (``render=prerendered``, stock clips) and all requests are
in flight at once; one endpoint per renderer runs again with full rendering, at its shortest duration.
One invalid input per family (a duration out of range, an enum typo, or a missing field) shows the
emulator answers fal's 422.
"""

from __future__ import annotations

import asyncio
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fal_client
import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from conftest import EmulatorAdmin
from klingflow.emulator import render
from klingflow.emulator.server import EmulatorServer
from klingflow.endpoints import ENDPOINTS, EndpointInfo, output_files, parse_output, validate_input
from klingflow.media import probe

FRAME = 1 / 30
PORTRAIT = (540, 960)
"""The input image's size: 9:16, so following it is told apart from the 16:9 default."""
CLIP = (480, 480)
"""The input video's size: square, told apart from both."""
CLIP_SECONDS = 3.0
"""fal's shortest video input; lipsync bills it rounded up to 5 s."""
LONG_SECONDS = 12.0
VOICE_SECONDS = 2.4
TEXT = "a lighthouse on a cliff at dusk"

SERVED = [endpoint_id for endpoint_id in ENDPOINTS if ENDPOINTS[endpoint_id].record.input is not None]
"""Every known endpoint with a schema (the three without one are refused like unknown ids)."""
UNSERVED = [endpoint_id for endpoint_id in ENDPOINTS if ENDPOINTS[endpoint_id].record.input is None]


# --- inputs -------------------------------------------------------------------------------------------


def _picture(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    picture = Image.new("RGB", size, colour)
    ImageDraw.Draw(picture).ellipse(
        [size[0] * 0.2, size[1] * 0.2, size[0] * 0.8, size[1] * 0.6], fill=(240, 200, 160)
    )
    picture.save(path)
    return path


def _voice(path: Path, seconds: float) -> Path:
    rate = 24_000
    t = np.arange(round(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())
    return path


@pytest.fixture(scope="module")
def uploaded(emulator_server: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Input files uploaded with the unmodified fal_client: their URLs by role."""
    folder = tmp_path_factory.mktemp("inputs")
    clip, long = folder / "clip.mp4", folder / "long.mp4"
    render.render_stock_clip(
        title="input", prompt="input clip", size=CLIP, frames=round(CLIP_SECONDS * 30), out=clip
    )
    render.render_stock_clip(
        title="input", prompt="long clip", size=(320, 320), frames=round(LONG_SECONDS * 30), out=long
    )
    files = {
        "image": _picture(folder / "portrait.png", PORTRAIT, (40, 90, 160)),
        "garment": _picture(folder / "garment.png", (600, 600), (200, 40, 60)),
        "audio": _voice(folder / "voice.wav", VOICE_SECONDS),
        "video": clip,
        "long": long,
    }

    async def upload() -> dict[str, str]:
        client = fal_client.AsyncClient(key=emulator_server.identity.key)
        urls = await asyncio.gather(*(client.upload_file(path) for path in files.values()))
        return dict(zip(files, urls, strict=True))

    return asyncio.run(upload())


def _value(info: EndpointInfo, name: str, node: dict[str, Any], urls: dict[str, str]) -> Any:
    """A valid value for one input field, from its schema node."""
    options = [option for option in node.get("anyOf", [node]) if option.get("type") != "null"]
    node = {**node, **options[0]} if options else node
    if name in info.media:
        url = urls["garment" if "garment" in name else info.media[name].kind]
        return [url] if node.get("type") == "array" else url
    if node.get("enum"):
        return node["enum"][0]
    if node.get("type") == "string":
        return TEXT[: node.get("maxLength", len(TEXT))]
    if node.get("type") in ("number", "integer"):
        return node.get("default", node.get("minimum", 1))
    if node.get("type") == "boolean":
        return node.get("default", False)
    raise AssertionError(f"{info.id}: no value for required field {name} ({node})")


def minimal_input(endpoint_id: str, urls: dict[str, str]) -> dict[str, Any]:
    """The schema's required fields; then any field the registry's cross-field rules say is missing
    (v3 text-to-video needs a prompt or a multi_prompt, which the schema marks optional)."""
    info = ENDPOINTS[endpoint_id]
    properties = info.record.input["properties"]  # type: ignore[index]
    body = {name: _value(info, name, properties[name], urls) for name in sorted(info.required)}
    try:
        validate_input(endpoint_id, body)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0])
            assert error["type"] == "missing" and name in properties, f"{endpoint_id}: {error}"
            body[name] = _value(info, name, properties[name], urls)
    validate_input(endpoint_id, body)
    return body


# --- running requests ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as the client saw it: what was sent, the result, its billable units, the files."""

    endpoint_id: str
    sent: dict[str, Any]
    label: str = ""
    status_code: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    units: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    submit_error: int | None = None

    @property
    def arguments(self) -> dict[str, Any]:
        """The input as the model sees it, defaults filled."""
        return validate_input(self.endpoint_id, self.sent).model_dump(mode="json", exclude_none=True)


async def _run(client: fal_client.AsyncClient, outcome: Outcome, folder: Path, admin: EmulatorAdmin) -> None:
    try:
        handle = await client.submit(outcome.endpoint_id, arguments=outcome.sent)
    except fal_client.client.FalClientHTTPError as exc:
        outcome.submit_error = exc.status_code
        return
    while not isinstance(await handle.status(), fal_client.Completed):
        await asyncio.sleep(0.25)  # 80 requests polled at once: a gentle pace leaves the CPU to the renders
    response = await handle.client.get(handle.response_url)  # fal_client's own client, as the backend does
    outcome.status_code = response.status_code
    outcome.result = response.json()
    outcome.units = response.headers.get("x-fal-billable-units")
    if response.status_code != 200:
        return
    async with httpx.AsyncClient(verify=admin.ssl, trust_env=False, timeout=30) as download:
        for name, _, file in output_files(
            outcome.endpoint_id, parse_output(outcome.endpoint_id, outcome.result)
        ):
            data = (await download.get(file.url)).raise_for_status().content
            assert len(data) == file.file_size, f"{outcome.endpoint_id} {name}"
            path = folder / f"{handle.request_id}-{name}{Path(file.file_name).suffix}"
            path.write_bytes(data)
            outcome.files[name] = path


def run_all(admin: EmulatorAdmin, outcomes: list[Outcome], folder: Path, **config: Any) -> dict[str, Outcome]:
    """Submit every outcome's input at once (with the emulator's ``config`` set), wait, fetch, download."""
    admin._client.post(f"{admin.base}/_emulator/config", json=config).raise_for_status()

    async def everything() -> None:
        client = fal_client.AsyncClient(key=admin.key)
        await asyncio.gather(*(_run(client, outcome, folder, admin) for outcome in outcomes))

    try:
        asyncio.run(everything())
    finally:
        admin.reset()
    return {outcome.label or outcome.endpoint_id: outcome for outcome in outcomes}


@pytest.fixture(scope="module")
def admin(emulator_server: EmulatorServer) -> Iterator[EmulatorAdmin]:
    admin = EmulatorAdmin(emulator_server)
    admin.faults()
    admin.reset()
    yield admin
    admin.reset()


@pytest.fixture(scope="module")
def prerendered(
    admin: EmulatorAdmin, uploaded: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome]:
    """Every served endpoint's minimal request, in benchmark mode."""
    outcomes = [Outcome(endpoint_id, minimal_input(endpoint_id, uploaded)) for endpoint_id in SERVED]
    motion = "fal-ai/kling-video/v2.6/standard/motion-control"
    body = {
        **minimal_input(motion, uploaded),
        "video_url": uploaded["long"],
        "character_orientation": "image",
    }
    outcomes.append(Outcome(motion, body, label="motion-control, long video"))  # 12 s: the image keeps 10
    outcomes += [Outcome(endpoint_id, {}, label=f"unserved {endpoint_id}") for endpoint_id in UNSERVED]
    edit = "fal-ai/kling-video/o3/standard/video-to-video/edit"
    body = {**minimal_input(edit, uploaded), "video_url": "https://example.invalid/dance.mp4"}
    outcomes.append(Outcome(edit, body, label="unreachable video"))
    return run_all(admin, outcomes, tmp_path_factory.mktemp("prerendered"), render="prerendered")


def _shortest(endpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the endpoint's shortest duration, if it takes one."""
    node = ENDPOINTS[endpoint_id].record.input["properties"].get("duration", {})  # type: ignore[index]
    values = [option.get("enum") for option in node.get("anyOf", [node]) if option.get("enum")]
    return {**body, "duration": min(values[0], key=float)} if values else body


def _shortest_seconds(endpoint_id: str) -> float:
    durations = _shortest(endpoint_id, {}).get("duration")
    return float(durations) if durations else math.inf


def renderer_choices() -> list[str]:
    """One endpoint per way of making an output (the kind of mode, output kinds, required media kinds):
    one that generates audio if any does (its sound is muxed in), else the one with the shortest duration."""
    stub = {"image": "https://x/i.png", "garment": "https://x/g.png", "audio": "https://x/a.wav"}
    ranked: dict[tuple[Any, ...], tuple[bool, float, str]] = {}
    for endpoint_id in SERVED:
        info = ENDPOINTS[endpoint_id]
        arguments = validate_input(
            endpoint_id, minimal_input(endpoint_id, {**stub, "video": "https://x/v.mp4"})
        )
        kind = (
            info.record.mode.split("/")[0],
            tuple(sorted(set(info.produces.values()))),
            tuple(sorted({media.kind for name, media in info.media.items() if name in info.required})),
        )
        rank = (not info.generates_audio(arguments.model_dump()), _shortest_seconds(endpoint_id), endpoint_id)
        ranked[kind] = min(ranked.get(kind, rank), rank)
    return sorted(rank[2] for rank in ranked.values())


@pytest.fixture(scope="module")
def rendered(
    admin: EmulatorAdmin, uploaded: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome]:
    """One endpoint per renderer, fully rendered, at its shortest duration."""
    outcomes = [
        Outcome(endpoint_id, _shortest(endpoint_id, minimal_input(endpoint_id, uploaded)))
        for endpoint_id in renderer_choices()
    ]
    return run_all(admin, outcomes, tmp_path_factory.mktemp("rendered"), render="full")


# --- what each output must be ---------------------------------------------------------------------------


def _ratio(text: Any) -> float | None:
    if not isinstance(text, str) or ":" not in text:
        return None
    width, height = text.split(":")
    return int(width) / int(height)


def expected_seconds(outcome: Outcome) -> float:
    """The requested duration; else the input audio's (ai-avatar) or the input video's length, at most
    10 s for a motion-control character in the image's orientation; else 5 s."""
    info, args = ENDPOINTS[outcome.endpoint_id], outcome.arguments
    if args.get("duration") is not None:
        return float(args["duration"])
    if "video_url" in outcome.sent:
        seconds = LONG_SECONDS if outcome.sent["video_url"].endswith("long.mp4") else CLIP_SECONDS
        return min(seconds, 10.0) if args.get("character_orientation") == "image" else seconds
    return VOICE_SECONDS if "audio_url" in outcome.sent and info.record.mode == "ai-avatar" else 5.0


def expected_video_aspect(outcome: Outcome) -> float:
    """Image-to-video: its image's; else the requested aspect_ratio; else the input picture's (motion-
    control, avatar: the image; video-to-video, lipsync: the video); else 16:9 (effects: square)."""
    info, args = ENDPOINTS[outcome.endpoint_id], outcome.arguments
    image = PORTRAIT[0] / PORTRAIT[1]
    if info.record.mode == "image-to-video":
        return image
    if _ratio(args.get("aspect_ratio")):
        return _ratio(args["aspect_ratio"])  # type: ignore[return-value]
    sent_image = any(name in outcome.sent for name in info.media if info.media[name].kind == "image")
    if "video_url" in outcome.sent and info.record.mode != "motion-control":
        return CLIP[0] / CLIP[1]
    if sent_image:
        return image
    return 1.0 if info.record.mode == "effects" else 16 / 9


def expected_units(outcome: Outcome) -> float:
    """The price rule's count, stated here on its own terms; without a rule the video's seconds, or 1."""
    info, args = ENDPOINTS[outcome.endpoint_id], outcome.arguments
    video_seconds = expected_seconds(outcome) if "video" in info.produces.values() else None
    rule = info.price
    if rule is None:
        return video_seconds or 1.0
    if rule.unit == "second":
        return max(float(args.get("duration") or video_seconds or 0), rule.minimum_units)
    if rule.unit == "output-second":
        return video_seconds  # type: ignore[return-value]
    if rule.unit == "input-second":
        step = rule.round_up_to or 1
        return math.ceil(expected_seconds(outcome) / step) * step
    if rule.unit == "image":
        return float(args.get("num_images") or 1)
    return 1.0


def check_outcome(outcome: Outcome) -> None:
    """Everything one served request must satisfy (see the module docstring)."""
    info, args = ENDPOINTS[outcome.endpoint_id], outcome.arguments
    assert outcome.status_code == 200, outcome.result
    parse_output(outcome.endpoint_id, outcome.result)  # the output schema's own model accepts it
    assert set(info.produces) | set(info.values) <= set(outcome.result)
    sound = info.generates_audio(args)
    for name, path in outcome.files.items():
        field_name = name.split("[")[0]
        kind = info.produces[field_name]
        media = probe(path)
        if kind == "video":
            assert media.has_video and media.fps == pytest.approx(30)
            assert media.video_duration == pytest.approx(expected_seconds(outcome), abs=FRAME + 1e-6), name
            assert media.width / media.height == pytest.approx(expected_video_aspect(outcome), rel=0.02), name
            assert media.has_audio is sound, f"{name}: audio track {media.has_audio}, generates_audio {sound}"
            if sound:
                assert media.audio_duration == pytest.approx(media.video_duration, abs=0.05)
        elif kind == "audio":
            assert media.has_audio and not media.has_video
            if "video" in info.produces.values():  # video-to-audio: the sound of the input video
                assert media.duration == pytest.approx(expected_seconds(outcome), abs=0.1)
            else:
                assert media.duration >= 1.0
        else:
            with Image.open(path) as picture:
                picture.load()
                wanted = str(args.get("output_format", "png")).upper()
                assert picture.format == wanted, name
                ratio = _ratio(args.get("aspect_ratio")) or PORTRAIT[0] / PORTRAIT[1]
                assert picture.width / picture.height == pytest.approx(ratio, rel=0.01), name
                entry = outcome.result[field_name]
                entry = entry[int(name.split("[")[1][:-1])] if "[" in name else entry
                assert (entry["width"], entry["height"]) == picture.size
    for field_name in info.many:
        assert len(outcome.result[field_name]) == int(args.get("num_images") or 1)
    if "duration" in info.values:
        assert outcome.result["duration"] == pytest.approx(expected_seconds(outcome), abs=FRAME + 1e-6)
    for name, kind in info.values.items():
        if kind == "text":
            assert isinstance(outcome.result[name], str) and outcome.result[name]
    assert outcome.units is not None
    assert float(outcome.units) == pytest.approx(expected_units(outcome), abs=1e-3), outcome.units


@pytest.mark.parametrize("endpoint_id", SERVED)
def test_every_endpoint_is_served_in_benchmark_mode(
    endpoint_id: str, prerendered: dict[str, Outcome]
) -> None:
    outcome = prerendered[endpoint_id]
    check_outcome(outcome)
    for path in outcome.files.values():
        assert b"KLING EMULATOR RENDER" in path.read_bytes()[-300:] or path.suffix != ".mp4"


def test_every_renderer_renders_fully(rendered: dict[str, Outcome]) -> None:
    failures = []
    for outcome in rendered.values():
        try:
            check_outcome(outcome)
        except AssertionError as exc:
            failures.append(f"{outcome.endpoint_id}: {exc}")
    assert not failures, "\n".join(failures)


def test_motion_control_in_the_image_orientation_keeps_ten_seconds_of_a_longer_video(
    prerendered: dict[str, Outcome],
) -> None:
    outcome = prerendered["motion-control, long video"]
    check_outcome(outcome)
    assert probe(outcome.files["video"]).video_duration == pytest.approx(10.0, abs=FRAME + 1e-6)


def test_an_unreachable_video_input_becomes_a_labelled_placeholder(prerendered: dict[str, Outcome]) -> None:
    """The emulator has no internet (the suite runs it offline): the input is a 5 s 16:9 placeholder clip,
    which the edit follows, billed by its seconds as the endpoint's per-second rule says."""
    outcome = prerendered["unreachable video"]
    assert outcome.status_code == 200, outcome.result
    video = probe(outcome.files["video"])
    assert video.video_duration == pytest.approx(5.0, abs=FRAME + 1e-6)
    assert (video.width, video.height) == (1280, 720)
    assert outcome.units == "5"


def test_endpoints_without_a_schema_are_not_found(prerendered: dict[str, Outcome]) -> None:
    assert UNSERVED, "the snapshot keeps retired ids without a schema"
    for endpoint_id in UNSERVED:
        assert prerendered[f"unserved {endpoint_id}"].submit_error == 404


def test_billable_units_by_price_rule(prerendered: dict[str, Outcome]) -> None:
    """A few counts written out: the rules' own arithmetic, not restated from them."""
    units = {
        endpoint_id: prerendered[endpoint_id].units for endpoint_id in prerendered if endpoint_id in ENDPOINTS
    }
    assert units["fal-ai/kling-video/lipsync/audio-to-video"] == "5", "3 s of input video, rounded up to 5"
    assert units["fal-ai/kling-video/v1/tts"] == "1", "per request"
    assert units["fal-ai/kling-image/o3/text-to-image"] == "1", "one image"
    assert units["fal-ai/kling-video/v1/standard/ai-avatar"] == "2.4", (
        "seconds of output, as long as the audio"
    )
    assert units["fal-ai/kling-video/v3/pro/text-to-video"] == "5", "the requested (default) 5 s"
    assert units["fal-ai/kling-video/o1/video-to-video/edit"] == "3", "no price rule: seconds of output video"
    assert units["fal-ai/kling/v1-5/kolors-virtual-try-on"] == "1", "no price rule, no video: 1"


def test_a_voice_gets_the_same_id_each_time(
    prerendered: dict[str, Outcome], rendered: dict[str, Outcome]
) -> None:
    voice = "fal-ai/kling-video/create-voice"
    assert prerendered[voice].result["voice_id"] == rendered[voice].result["voice_id"]


# --- refused inputs: fal's 422 -----------------------------------------------------------------------------


def _enum(node: dict[str, Any]) -> list[Any]:
    return next((option["enum"] for option in node.get("anyOf", [node]) if option.get("enum")), [])


def _typo_able(values: list[Any]) -> bool:
    return bool(values) and str(values[0])[:1].isalpha() and len(str(values[0])) >= 4


def bad_input(endpoint_id: str, urls: dict[str, str]) -> tuple[dict[str, Any], str, str]:
    """The minimal input with one mistake: a duration out of range, else an enum value with its last
    letter lost, else a required field left out. Returns (body, field, pydantic error type)."""
    info = ENDPOINTS[endpoint_id]
    properties: dict[str, Any] = info.record.input["properties"]  # type: ignore[index]
    body = minimal_input(endpoint_id, urls)
    if _enum(properties.get("duration", {})):
        return {**body, "duration": "20"}, "duration", "enum"
    enums = [
        name for name in sorted(properties) if name not in info.media and _typo_able(_enum(properties[name]))
    ]
    if enums:
        return {**body, enums[0]: str(_enum(properties[enums[0]])[0])[:-1]}, enums[0], "enum"
    missing = sorted(info.required)[0]
    return {name: value for name, value in body.items() if name != missing}, missing, "missing"


def family_cases() -> dict[str, str]:
    """One endpoint per family: one with a duration enum if the family has one, else one with an enum."""
    ranked: dict[str, tuple[int, str]] = {}
    for endpoint_id in SERVED:
        properties = ENDPOINTS[endpoint_id].record.input["properties"]  # type: ignore[index]
        rank = (
            0 if _enum(properties.get("duration", {})) else 1 if any(map(_enum, properties.values())) else 2
        )
        family = ENDPOINTS[endpoint_id].record.family
        ranked[family] = min(ranked.get(family, (rank, endpoint_id)), (rank, endpoint_id))
    return {family: endpoint_id for family, (_, endpoint_id) in sorted(ranked.items())}


def test_one_mistake_per_family_is_refused_as_fal_refuses_it(
    admin: EmulatorAdmin, uploaded: dict[str, str]
) -> None:
    cases = {
        family: (endpoint_id, *bad_input(endpoint_id, uploaded))
        for family, endpoint_id in family_cases().items()
    }
    assert len(cases) >= 10 and {mistake for *_, mistake in cases.values()} >= {"enum", "missing"}

    async def refused(endpoint_id: str, body: dict[str, Any]) -> tuple[Any, httpx.Response, Any]:
        client = fal_client.AsyncClient(key=admin.key)
        handle = await client.submit(endpoint_id, arguments=body)  # accepted: the model refuses it later
        with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
            await handle.get()
        status = await handle.status()
        return raised.value, await handle.client.get(handle.response_url), status

    async def everything() -> list[tuple[Any, httpx.Response, Any]]:
        return await asyncio.gather(*(refused(endpoint_id, body) for endpoint_id, body, *_ in cases.values()))

    for (family, (endpoint_id, _, name, mistake)), (raised, result, status) in zip(
        cases.items(), asyncio.run(everything()), strict=True
    ):
        where = f"{family} ({endpoint_id}, {name})"
        assert raised.status_code == 422 and result.status_code == 422, where
        assert isinstance(status, fal_client.Completed) and status.error is None, where
        (detail,) = result.json()["detail"]
        assert set(detail) == {"loc", "msg", "type"} and detail["loc"] == ["body", name], where
        assert detail["type"] == mistake, where
        if name != "duration" and mistake == "enum":
            wanted = _enum(ENDPOINTS[endpoint_id].record.input["properties"][name])[0]  # type: ignore[index]
            assert f"did you mean '{wanted}'" in detail["msg"], detail["msg"]
