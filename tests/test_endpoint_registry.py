"""The schema-driven registry: every vendored endpoint validates, prices and parses; the converter, the
price rules and the cross-field overlays each do what their docstrings say.

The models are built from ``klingflow/data/fal-endpoints.json`` (fal's schemas), so these tests hold
for whatever the snapshot holds: a minimal input is made from each endpoint's own schema.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from klingflow.endpoints import (
    ENDPOINTS,
    EndpointInfo,
    allow_enum_values,
    estimate_cost,
    get_endpoint,
    media_inputs,
    model_from_schema,
    output_files,
    parse_output,
    reset_enum_values,
    snapshot_ids,
    validate_input,
)
from klingflow.engine.plan import Plan, PlannedStep, check_budget
from klingflow.errors import BudgetError, SpecError
from klingflow.media import ffmpeg_executable
from klingflow.spec import check, load_pipeline, parse_pipeline

WITH_SCHEMA = [i for i in snapshot_ids() if ENDPOINTS[i].record.input is not None]


def sample(node: dict[str, Any], defs: dict[str, Any], name: str) -> Any:
    """A value of the schema ``node`` for a property called ``name`` (media fields get URLs)."""
    if "$ref" in node:
        node = defs[node["$ref"].removeprefix("#/$defs/")]
    if "anyOf" in node:
        return sample(next(o for o in node["anyOf"] if o.get("type") != "null"), defs, name)
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return node.get("default", node["enum"][0])
    kind = node.get("type")
    if kind == "array":
        return [sample(node.get("items", {"type": "string"}), defs, name)] * max(node.get("minItems", 1), 1)
    if kind == "object":
        return {
            p: sample(s, defs, p)
            for p, s in node.get("properties", {}).items()
            if p in node.get("required", [])
        }
    if kind in ("integer", "number"):
        return node.get("default", node.get("minimum", 1))
    if kind == "boolean":
        return node.get("default", False)
    if name.endswith(("_url", "_urls")) or "x-fal-file-input" in node:
        return (
            f"https://example.com/{name}.{'mp4' if 'video' in name else 'mp3' if 'audio' in name else 'png'}"
        )
    return node.get("default", f"a {name}")


def minimal_input(info: EndpointInfo) -> dict[str, Any]:
    """The required fields of ``info``'s input, plus a prompt where the schema needs one of two."""
    schema = info.record.input or {}
    defs = schema.get("$defs", {})
    given = {p: sample(schema["properties"][p], defs, p) for p in schema.get("required", [])}
    if "text-to-video" in info.id and "prompt" in info.fields and "prompt" not in given:
        given["prompt"] = "a lighthouse in a storm"
    return given


def minimal_output(info: EndpointInfo) -> dict[str, Any]:
    schema = info.record.output or {}
    defs = schema.get("$defs", {})
    return {p: sample(schema["properties"][p], defs, p) for p in schema.get("required", [])}


def test_the_snapshot_holds_every_collected_endpoint() -> None:
    assert len(snapshot_ids()) == 78
    assert len(WITH_SCHEMA) == 75
    assert sum(1 for i in snapshot_ids() if ENDPOINTS[i].price is not None) == 44
    for endpoint_id in WITH_SCHEMA:
        record = ENDPOINTS[endpoint_id].record
        assert record.sha256 and len(record.sha256) == 64 and record.source.get("repo"), endpoint_id
        text = str(record.input) + str(record.output)
        assert "'description'" not in text and "'examples'" not in text, f"{endpoint_id}: prose was vendored"


@pytest.mark.parametrize("endpoint_id", WITH_SCHEMA)
def test_every_vendored_endpoint_validates_prices_and_parses(endpoint_id: str) -> None:
    info = ENDPOINTS[endpoint_id]
    model = validate_input(endpoint_id, minimal_input(info))
    cost = estimate_cost(endpoint_id, model, output_seconds=5.0, input_seconds=5.0)
    if info.price is None:
        assert cost is None, "an endpoint without a known price must plan as unknown, never $0"
    else:
        assert cost is not None and cost > 0
    for path, _url, kind in media_inputs(endpoint_id, model):
        assert info.consumes[re.sub(r"\[\d+\]", "", path)] == kind
    output = parse_output(endpoint_id, minimal_output(info))
    names = [name for name, _, _ in output_files(endpoint_id, output)]
    assert names or info.values, "every endpoint gives a file or a value"
    assert {name.split("[")[0] for name in names} <= set(info.produces)


def test_the_five_aliases_are_the_seeds_v1_standard_endpoints() -> None:
    assert {
        alias: get_endpoint(alias).id
        for alias in ("text-to-video", "image-to-video", "ai-avatar", "effects", "tts")
    } == {
        "text-to-video": "fal-ai/kling-video/v1/standard/text-to-video",
        "image-to-video": "fal-ai/kling-video/v1/standard/image-to-video",
        "ai-avatar": "fal-ai/kling-video/v1/standard/ai-avatar",
        "effects": "fal-ai/kling-video/v1/standard/effects",
        "tts": "fal-ai/kling-video/v1/tts",
    }


def test_endpoints_without_a_schema_say_how_to_get_one() -> None:
    info = get_endpoint("fal-ai/kling-video/v3/pro/elements")
    with pytest.raises(SpecError, match="no schema is known") as caught:
        validate_input(info.id, {})
    assert "klingflow endpoints refresh fal-ai/kling-video/v3/pro/elements" in caught.value.hint


# --- the converter ---------------------------------------------------------------------------------

SYNTHETIC = {
    "type": "object",
    "required": ["name", "shots"],
    "x-fal-order-properties": ["name", "shots", "strength", "mode", "tag", "class"],
    "properties": {
        "name": {"type": "string", "maxLength": 5},
        "shots": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"$ref": "#/$defs/Shot"}},
        "strength": {"anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": 1}, {"type": "null"}]},
        "mode": {"const": "fast", "default": "fast", "type": "string"},
        "tag": {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]},
        "class": {"type": "boolean", "default": False},
    },
    "$defs": {
        "Shot": {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}
    },
}


def test_the_converter_keeps_every_constraint_it_reads() -> None:
    model = model_from_schema("Synthetic", SYNTHETIC)
    good = model.model_validate(
        {"name": "abc", "shots": [{"prompt": "x"}], "strength": 0.5, "tag": 3, "class": True}
    )
    assert good.model_dump(mode="json", exclude_none=True, by_alias=True) == {
        "name": "abc",
        "shots": [{"prompt": "x"}],
        "strength": 0.5,
        "mode": "fast",
        "tag": 3,
        "class": True,
    }
    assert (
        model.model_validate({"name": "a", "shots": [{"prompt": "y"}], "tag": "t"}).model_dump()["tag"] == "t"
    )
    for bad, kind in (
        ({"name": "toolong", "shots": [{"prompt": "x"}]}, "string_too_long"),
        ({"name": "a", "shots": []}, "too_short"),
        ({"name": "a", "shots": [{"prompt": "x"}] * 3}, "too_long"),
        ({"name": "a", "shots": [{"prompt": "x"}], "strength": 1}, "less_than"),
        ({"name": "a", "shots": [{"prompt": "x"}], "mode": "slow"}, "enum"),
        ({"name": "a", "shots": [{}]}, "missing"),
        ({"name": "a", "shots": [{"prompt": "x", "seed": 1}]}, "extra_forbidden"),
        ({"shots": [{"prompt": "x"}]}, "missing"),
    ):
        with pytest.raises(ValidationError) as caught:
            model.model_validate(bad)
        assert caught.value.errors()[0]["type"] == kind, (bad, caught.value.errors())


def test_openapi_forms_a_refresh_may_bring_are_read_not_ignored() -> None:
    schema = {
        "type": "object",
        "properties": {
            "camera": {"allOf": [{"$ref": "#/$defs/Camera"}], "default": None, "nullable": True},
            "seed": {"type": "integer", "nullable": True},
            "code": {"type": "string", "pattern": "^[a-z]{3}$"},
        },
        "$defs": {
            "Camera": {"type": "object", "required": ["pan"], "properties": {"pan": {"type": "integer"}}}
        },
    }
    model = model_from_schema("Forms", schema)
    assert model.model_validate({"camera": {"pan": 2}, "seed": None, "code": "abc"})
    for bad in ({"camera": {"tilt": 1}}, {"code": "ABCD"}, {"seed": "many"}):
        with pytest.raises(ValidationError):
            model.model_validate(bad)


def test_growing_enums_take_values_fal_added_after_the_snapshot() -> None:
    o3 = "fal-ai/kling-video/o3/pro/text-to-video"
    # the 2026-05 schema says const "customize"; fal's later catalog lists "intelligent" too
    assert validate_input(o3, {"prompt": "x", "shot_type": "intelligent"})
    with pytest.raises(ValidationError, match="did you mean 'customize'"):
        validate_input(o3, {"prompt": "x", "shot_type": "customise"})
    try:
        allow_enum_values("shot_type", ["cinematic"])
        assert validate_input(o3, {"prompt": "x", "shot_type": "cinematic"})
    finally:
        reset_enum_values()


# --- prices ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint_id", "arguments", "lengths", "usd"),
    [
        # per second, audio on by default (fal's schema default) and off
        ("fal-ai/kling-video/v2.6/pro/text-to-video", {"prompt": "x"}, {}, 0.70),
        ("fal-ai/kling-video/v2.6/pro/text-to-video", {"prompt": "x", "generate_audio": False}, {}, 0.35),
        # voice control: audio with voice ids
        (
            "fal-ai/kling-video/v2.6/pro/image-to-video",
            {"prompt": "x", "start_image_url": "https://e/a.png", "duration": "10", "voice_ids": ["v1"]},
            {},
            1.68,
        ),
        # O3 makes no sound unless asked (its schema defaults generate_audio to false)
        (
            "fal-ai/kling-video/o3/pro/text-to-video",
            {"prompt": "x", "duration": 8, "generate_audio": True},
            {},
            1.12,
        ),
        (
            "fal-ai/kling-video/o3/pro/text-to-video",
            {"prompt": "x", "duration": 8, "generate_audio": False},
            {},
            0.896,
        ),
        # a multi-shot video: the larger of its duration and its shots' total (5 + 8 s here)
        (
            "fal-ai/kling-video/v3/standard/text-to-video",
            {"multi_prompt": [{"prompt": "a", "duration": "5"}, {"prompt": "b", "duration": "8"}]},
            {},
            13 * 0.126,
        ),
        # 4K: one rate with or without audio
        ("fal-ai/kling-video/v3/4k/text-to-video", {"prompt": "x", "duration": 3}, {}, 1.26),
        # v3 voice control: a voice on one of its elements (fal's example: 5 s with audio and voice, $0.98)
        (
            "fal-ai/kling-video/v3/pro/image-to-video",
            {
                "start_image_url": "https://e/a.png",
                "elements": [{"frontal_image_url": "https://e/f.png", "voice_id": "v1"}],
            },
            {},
            0.98,
        ),
        # the first five seconds as a base, then per second
        ("fal-ai/kling-video/v2.1/master/text-to-video", {"prompt": "x", "duration": 10}, {}, 2.80),
        ("fal-ai/kling-video/v2.1/master/text-to-video", {"prompt": "x"}, {}, 1.40),
        # per input second, rounded up to 5 s
        (
            "fal-ai/kling-video/lipsync/audio-to-video",
            {"video_url": "https://e/v.mp4", "audio_url": "https://e/a.mp3"},
            {"input_seconds": 7.2},
            0.14,
        ),
        # per image, 4K at twice the price
        ("fal-ai/kling-image/o3/text-to-image", {"prompt": "x", "num_images": 2}, {}, 0.056),
        ("fal-ai/kling-image/o3/text-to-image", {"prompt": "x", "resolution": "4K"}, {}, 0.056),
        # a series of related images is priced per image of the series
        (
            "fal-ai/kling-image/o3/text-to-image",
            {"prompt": "x", "result_type": "series", "series_amount": 9},
            {},
            0.252,
        ),
        # per request
        ("fal-ai/kling-video/video-to-audio", {"video_url": "https://e/v.mp4"}, {}, 0.035),
        # the seed's v1 prices
        ("text-to-video", {"prompt": "x", "duration": 10}, {}, 0.45),
        (
            "ai-avatar",
            {"image_url": "https://e/a.png", "audio_url": "https://e/a.mp3"},
            {"output_seconds": 4.0},
            0.2248,
        ),
        ("tts", {"text": "hello"}, {}, 0.007),
    ],
)
def test_every_kind_of_price_rule(endpoint_id: str, arguments: dict, lengths: dict, usd: float) -> None:
    assert estimate_cost(endpoint_id, arguments, **lengths) == pytest.approx(usd)


@pytest.mark.parametrize(
    ("endpoint_id", "arguments", "usd"),
    [
        # per second: it takes a duration (10 s at the override's $0.084), never once per call
        (
            "fal-ai/kling-video/o1/standard/image-to-video",
            {"prompt": "x", "start_image_url": "https://e/a.png", "duration": "10"},
            0.84,
        ),
        # an avatar: per second of output, assumed 10 s before its audio is known
        (
            "fal-ai/kling-video/ai-avatar/v2/pro",
            {"image_url": "https://e/a.png", "audio_url": "https://e/a.mp3"},
            0.84,
        ),
        # an image model: per image
        ("fal-ai/kling-image/v3/text-to-image", {"prompt": "x", "num_images": 3}, 0.252),
    ],
)
def test_an_override_of_an_unpriced_endpoint_takes_the_unit_its_schema_implies(
    endpoint_id: str, arguments: dict, usd: float
) -> None:
    assert get_endpoint(endpoint_id).price is None
    assert estimate_cost(endpoint_id, arguments) is None
    assert estimate_cost(endpoint_id, arguments, prices={endpoint_id: 0.084}) == pytest.approx(usd)


def test_an_unknown_price_is_unknown_and_a_budget_refuses_it() -> None:
    v16 = "fal-ai/kling-video/v1.6/standard/text-to-video"
    assert get_endpoint(v16).price is None
    assert estimate_cost(v16, {"prompt": "x"}) is None
    assert (
        estimate_cost(
            "fal-ai/kling-video/lipsync/audio-to-video",
            {"video_url": "https://e/v.mp4", "audio_url": "https://e/a.mp3"},
        )
        is None
    ), "input length not known yet"
    plan = Plan(
        pipeline="p",
        steps=[
            PlannedStep(step_id="a", uses="text-to-video", status="run", estimated_cost_usd=0.225),
            PlannedStep(step_id="b", uses=v16, endpoint=v16, status="run", estimated_cost_usd=None),
        ],
    )
    assert plan.total_cost_usd == 0.225 and [s.step_id for s in plan.unknown_cost] == ["b"]
    with pytest.raises(BudgetError, match="knows no price for: b") as caught:
        check_budget(plan, 5.0)
    assert "--allow-unknown-cost" in caught.value.hint
    check_budget(plan, 5.0, allow_unknown=True)
    check_budget(plan, None)  # no budget, nothing to refuse
    with pytest.raises(BudgetError, match="over the limit"):
        check_budget(plan, 0.1, allow_unknown=True)


# --- overlays and file limits ----------------------------------------------------------------------

V3 = "fal-ai/kling-video/v3/standard/text-to-video"
SHOT = {"prompt": "the door opens", "duration": "5"}


@pytest.mark.parametrize(
    ("arguments", "loc", "words"),
    [
        ({"prompt": "x", "multi_prompt": [SHOT]}, ("multi_prompt",), "not both"),
        ({}, ("prompt",), "prompt (or multi_prompt) is required"),
        (
            {"multi_prompt": [{**SHOT, "duration": "10"}, {**SHOT, "duration": "8"}]},
            ("multi_prompt",),
            "18 s",
        ),
    ],
)
def test_prompt_or_multi_prompt(arguments: dict, loc: tuple, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_input(V3, arguments)
    (error,) = caught.value.errors()
    assert error["loc"] == loc and words in error["msg"]
    assert validate_input(V3, {"multi_prompt": [SHOT, SHOT]})
    # an image-to-video request may leave both out: the start frame is enough
    assert validate_input(
        "fal-ai/kling-video/v3/standard/image-to-video", {"start_image_url": "https://e/a.png"}
    )


def _pipeline(tmp_path: Path, uses: str, field: str, image: Path) -> Any:
    text = (
        f"name: limits\nsteps:\n  - id: still\n    uses: {uses}\n"
        f"    with:\n      prompt: a cat\n      {field}: {image.name}\n"
    )
    (tmp_path / "p.yaml").write_text(text)
    return load_pipeline(tmp_path / "p.yaml")


def test_a_local_image_over_fals_size_limit_is_refused_before_upload(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.frombytes("RGB", (2000, 2000), os.urandom(2000 * 2000 * 3)).save(big)  # noise: ~12 MB as PNG
    assert big.stat().st_size > 10 * 2**20
    with pytest.raises(SpecError) as caught:
        check(_pipeline(tmp_path, "fal-ai/kling-video/v2.6/pro/image-to-video", "start_image_url", big))
    (problem,) = caught.value.problems
    assert "p.yaml:7 step 'still' field 'start_image_url'" in problem and "takes at most 10 MB" in problem


def test_fals_aspect_limits_apply_where_the_schema_states_them(tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1600, 400)).save(wide)  # 4:1; v2.6 takes width/height between 0.4 and 2.5
    with pytest.raises(SpecError, match="width/height ratio between 0.4 and 2.5"):
        check(_pipeline(tmp_path, "fal-ai/kling-video/v2.6/pro/image-to-video", "start_image_url", wide))


def test_models_are_built_only_for_the_endpoints_used(tmp_path: Path) -> None:
    """A fresh process that checks a one-step pipeline builds one endpoint's models, not 75."""
    program = (
        "from klingflow.endpoints import _registry\n"
        "from klingflow.spec import check, parse_pipeline\n"
        "check(parse_pipeline({'name': 'one', 'steps': [{'id': 'a', 'uses': "
        "'fal-ai/kling-video/v2.5-turbo/pro/text-to-video', 'with': {'prompt': 'a fox'}}]}))\n"
        "print([i.id for i in _registry._infos.values() if 'input_model' in vars(i)])\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['fal-ai/kling-video/v2.5-turbo/pro/text-to-video']", done.stderr


def test_a_local_video_outside_fals_length_and_size_limits_is_refused(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    subprocess.run(
        [
            ffmpeg_executable(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25:duration=1",
            "-pix_fmt",
            "yuv420p",
            str(clip),
        ],
        check=True,
    )
    (tmp_path / "p.yaml").write_text(
        "name: edit\nsteps:\n  - id: restyle\n    uses: fal-ai/kling-video/o3/pro/video-to-video/edit\n"
        "    with:\n      prompt: make it winter\n      video_url: clip.mp4\n"
    )
    with pytest.raises(SpecError) as caught:
        check(load_pipeline(tmp_path / "p.yaml"))
    problems = " | ".join(caught.value.problems)
    # O3's video edit takes 3 to 10 s of video of at least 720 pixels a side (fal's x-fal limits)
    assert "field 'video_url': local video" in problems and "has a duration of 1 s" in problems
    assert "takes at least 3 s" in problems and "a width of 320 pixels" in problems, problems


def test_an_endpoint_that_cannot_be_fetched_is_reported_with_the_files_other_problems(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KLINGFLOW_OFFLINE", "1")
    spec = parse_pipeline(
        {
            "name": "two",
            "steps": [
                {"id": "new", "uses": "fal-ai/kling-video/v9/pro/text-to-video", "with": {"prompt": "x"}},
                {"id": "old", "uses": "text-to-video", "with": {"prompt": "x", "aspect_ratio": "4:3"}},
            ],
        }
    )
    with pytest.raises(SpecError) as caught:
        check(spec)
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert "step 'new' field 'uses'" in problems[0] and "offline mode fetches nothing" in problems[0]
    assert "step 'old' field 'aspect_ratio'" in problems[1]
