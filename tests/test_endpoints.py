"""klingflow.endpoints: fal's Kling v1 schemas, enum suggestions and extension, registry, media, prices."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from klingflow.cache import generation_key
from klingflow.endpoints import (
    DUAL_IMAGE_SCENES,
    EFFECT_SCENES,
    ENDPOINTS,
    TTS_VOICES,
    allow_enum_values,
    canonical_arguments,
    estimate_cost,
    estimate_seconds,
    get_endpoint,
    media_inputs,
    parse_output,
    reset_enum_values,
    scene_image_counts,
    unit_price,
    validate_input,
)
from klingflow.errors import ConfigError, SpecError

# The seed's five endpoints' models, generated from fal's schemas (the hand-written ones they replace
# had these names; every test below ran against those first).
EffectsInput = get_endpoint("effects").input_model
TextToVideoInput = get_endpoint("text-to-video").input_model
TtsInput = get_endpoint("tts").input_model
VideoOutput = get_endpoint("effects").output_model
AiAvatarOutput = get_endpoint("ai-avatar").output_model

T2V = "fal-ai/kling-video/v1/standard/text-to-video"
I2V = "fal-ai/kling-video/v1/standard/image-to-video"
AVATAR = "fal-ai/kling-video/v1/standard/ai-avatar"
EFFECTS = "fal-ai/kling-video/v1/standard/effects"
TTS = "fal-ai/kling-video/v1/tts"

# Input examples copied from the seed (fal's API reference).
SEED_T2V = {
    "prompt": "A stylish woman walks down a Tokyo street filled with warm glowing neon and animated "
    "city signage. She wears a black leather jacket, a long red dress, and black boots, and carries a "
    "black purse.",
    "duration": "5",
    "aspect_ratio": "16:9",
    "negative_prompt": "blur, distort, and low quality",
    "cfg_scale": 0.5,
}
SEED_I2V = {
    "prompt": "Snowflakes fall as a car moves forward along the road.",
    "image_url": "https://storage.googleapis.com/falserverless/kling/kling_input.jpeg",
    "duration": "5",
    "negative_prompt": "blur, distort, and low quality",
    "cfg_scale": 0.5,
    "static_mask_url": "https://storage.googleapis.com/falserverless/kling/new_static_mask.png",
    "dynamic_masks": [
        {
            "mask_url": "https://storage.googleapis.com/falserverless/kling/new_dynamic_mask.png",
            "trajectories": [{"x": 279, "y": 219}, {"x": 417, "y": 65}],
        }
    ],
}
SEED_AVATAR = {
    "image_url": "https://storage.googleapis.com/falserverless/example_inputs/kling_ai_avatar_input.jpg",
    "audio_url": "https://v3.fal.media/files/rabbit/9_0ZG_geiWjZOmn9yscO6_output.mp3",
    "prompt": ".",
}
SEED_EFFECTS = {
    "input_image_urls": [
        "https://storage.googleapis.com/falserverless/juggernaut_examples/VHXMavzPyI27zi6JseyL4.png",
        "https://storage.googleapis.com/falserverless/juggernaut_examples/QEW5VrzccxGva7mPfEXjf.png",
    ],
    "effect_scene": "hug",
    "duration": "5",
}
# TTS is not in the seed; this follows fal's TTS page as summarised in design/kling-schema.md §1.
SEED_TTS = {"text": "Hello, this is Kling speaking.", "voice_id": "genshin_vindi2", "voice_speed": 1}


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("KLINGFLOW_EXTRA_ENUM_VALUES", raising=False)
    monkeypatch.delenv("KLINGFLOW_PRICES", raising=False)
    reset_enum_values()
    yield
    reset_enum_values()


def only_error(exc: pytest.ExceptionInfo[ValidationError]) -> dict:
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return errors[0]


# --- seed examples and defaults -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "arguments"),
    [(T2V, SEED_T2V), (I2V, SEED_I2V), (AVATAR, SEED_AVATAR), (EFFECTS, SEED_EFFECTS), (TTS, SEED_TTS)],
)
def test_seed_examples_validate_and_round_trip(endpoint: str, arguments: dict) -> None:
    model = validate_input(endpoint, arguments)
    assert isinstance(model, ENDPOINTS[endpoint].input_model)
    assert canonical_arguments(model) == {**arguments, **({"voice_speed": 1.0} if endpoint == TTS else {})}


def test_seed_quick_starts_validate() -> None:
    assert validate_input(EFFECTS, {"effect_scene": "hug"}).input_image_urls is None
    assert (
        validate_input(I2V, {"prompt": SEED_I2V["prompt"], "image_url": SEED_I2V["image_url"]}).duration
        == "5"
    )
    assert validate_input(AVATAR, {k: SEED_AVATAR[k] for k in ("image_url", "audio_url")}).prompt == "."


def test_defaults_are_filled() -> None:
    assert canonical_arguments(validate_input("text-to-video", {"prompt": "a fox"})) == {
        "prompt": "a fox",
        "negative_prompt": "blur, distort, and low quality",
        "duration": "5",
        "aspect_ratio": "16:9",
        "cfg_scale": 0.5,
    }
    assert canonical_arguments(validate_input("tts", {"text": "hi"})) == {
        "text": "hi",
        "voice_id": "genshin_vindi2",
        "voice_speed": 1.0,
    }
    assert canonical_arguments(validate_input("effects", {"effect_scene": "squish"})) == {
        "effect_scene": "squish",
        "duration": "5",
    }


def test_same_meaning_gives_same_canonical_arguments() -> None:
    a = validate_input("text-to-video", {"prompt": "a fox", "duration": 10, "cfg_scale": 1})
    b = validate_input(T2V, {"prompt": "a fox", "duration": "10", "cfg_scale": 1.0, "camera_control": None})
    assert canonical_arguments(a) == canonical_arguments(b)


def test_advanced_camera_control_validates() -> None:
    model = validate_input(
        "text-to-video",
        {
            "prompt": "x",
            "camera_control": "down_back",
            "advanced_camera_control": {"movement_type": "zoom", "movement_value": -10},
        },
    )
    assert canonical_arguments(model)["advanced_camera_control"] == {
        "movement_type": "zoom",
        "movement_value": -10,
    }
    assert canonical_arguments(model)["camera_control"] == "down_back"


# --- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "arguments", "loc", "error_type"),
    [
        ("text-to-video", {"prompt": "x" * 2501}, ("prompt",), "string_too_long"),
        (
            "image-to-video",
            {"prompt": "x", "image_url": "u", "negative_prompt": "n" * 2501},
            ("negative_prompt",),
            "string_too_long",
        ),
        ("tts", {"text": "x" * 501}, ("text",), "string_too_long"),
        ("text-to-video", {"prompt": "x", "cfg_scale": 1.1}, ("cfg_scale",), "less_than_equal"),
        ("text-to-video", {"prompt": "x", "cfg_scale": -0.1}, ("cfg_scale",), "greater_than_equal"),
        ("tts", {"text": "x", "voice_speed": 0.7}, ("voice_speed",), "greater_than_equal"),
        ("tts", {"text": "x", "voice_speed": 2.1}, ("voice_speed",), "less_than_equal"),
        (
            "text-to-video",
            {"prompt": "x", "advanced_camera_control": {"movement_type": "pan", "movement_value": 11}},
            ("advanced_camera_control", "movement_value"),
            "less_than_equal",
        ),
        (
            "text-to-video",
            {"prompt": "x", "advanced_camera_control": {"movement_type": "pan"}},
            ("advanced_camera_control", "movement_value"),
            "missing",
        ),
        (
            "image-to-video",
            {
                "prompt": "x",
                "image_url": "u",
                "dynamic_masks": [{"mask_url": "m", "trajectories": [{"x": 1.5, "y": 2}]}],
            },
            ("dynamic_masks", 0, "trajectories", 0, "x"),
            "int_from_float",
        ),
        (
            "image-to-video",
            {"prompt": "x", "image_url": "u", "dynamic_masks": [{"trajectories": []}]},
            ("dynamic_masks", 0, "mask_url"),
            "missing",
        ),
        ("image-to-video", {"prompt": "x"}, ("image_url",), "missing"),
        ("ai-avatar", {"image_url": "i"}, ("audio_url",), "missing"),
        ("effects", {"duration": "5"}, ("effect_scene",), "missing"),
        ("tts", {"voice_id": "AOT"}, ("text",), "missing"),
    ],
)
def test_limits_are_refused(endpoint: str, arguments: dict, loc: tuple, error_type: str) -> None:
    with pytest.raises(ValidationError) as exc:
        validate_input(endpoint, arguments)
    error = only_error(exc)
    assert (error["loc"], error["type"]) == (loc, error_type)


def test_limits_themselves_are_accepted() -> None:
    assert validate_input("text-to-video", {"prompt": "x" * 2500, "cfg_scale": 1}).cfg_scale == 1.0
    assert validate_input("tts", {"text": "x" * 500, "voice_speed": 0.8}).voice_speed == 0.8
    assert validate_input("tts", {"text": "x", "voice_speed": 2}).voice_speed == 2.0


@pytest.mark.parametrize("endpoint", ["text-to-video", "effects", "tts", "ai-avatar"])
def test_extra_field_is_refused_naming_it(endpoint: str) -> None:
    arguments = {
        "text-to-video": {"prompt": "x"},
        "effects": {"effect_scene": "hug"},
        "tts": {"text": "x"},
        "ai-avatar": {"image_url": "i", "audio_url": "a"},
    }[endpoint]
    with pytest.raises(ValidationError) as exc:
        validate_input(endpoint, {**arguments, "negativ_prompt": "blur"})
    error = only_error(exc)
    assert (error["loc"], error["type"]) == (("negativ_prompt",), "extra_forbidden")


def test_extra_field_in_nested_input_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        validate_input(
            "image-to-video", {"prompt": "x", "image_url": "u", "dynamic_masks": [{"mask_url": "m", "z": 1}]}
        )
    assert only_error(exc)["loc"] == ("dynamic_masks", 0, "z")


# --- enums ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "arguments", "field", "message"),
    [
        (
            "effects",
            {"effect_scene": "hugg"},
            "effect_scene",
            "'hugg' is not a known effect_scene; did you mean 'hug'?",
        ),
        (
            "tts",
            {"text": "x", "voice_id": "genshin_vindi"},
            "voice_id",
            "'genshin_vindi' is not a known voice_id; did you mean 'genshin_vindi2'?",
        ),
        (
            "tts",
            {"text": "x", "voice_id": "aot"},
            "voice_id",
            "'aot' is not a known voice_id; did you mean 'AOT'?",
        ),
        (
            "text-to-video",
            {"prompt": "x", "aspect_ratio": "16:10"},
            "aspect_ratio",
            "'16:10' is not a known aspect_ratio; did you mean '16:9'?"
            " Allowed values: '16:9', '9:16', '1:1'.",
        ),
        (
            "text-to-video",
            {"prompt": "x", "camera_control": "down_bak"},
            "camera_control",
            "'down_bak' is not a known camera_control; did you mean 'down_back'?",
        ),
        (
            "text-to-video",
            {"prompt": "x", "duration": "50"},
            "duration",
            "'50' is not a known duration; did you mean '5'?",
        ),
    ],
)
def test_unknown_enum_value_suggests_the_closest(
    endpoint: str, arguments: dict, field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        validate_input(endpoint, arguments)
    error = only_error(exc)
    assert error["loc"] == (field,)
    assert error["type"] == "enum"
    assert error["msg"].startswith(message)


def test_unknown_nested_enum_value_suggests_the_closest() -> None:
    with pytest.raises(ValidationError) as exc:
        validate_input(
            "text-to-video",
            {"prompt": "x", "advanced_camera_control": {"movement_type": "zom", "movement_value": 1}},
        )
    error = only_error(exc)
    assert error["loc"] == ("advanced_camera_control", "movement_type")
    assert error["msg"].startswith("'zom' is not a known movement_type; did you mean 'zoom'?")


def test_growing_enum_error_names_the_extension_setting() -> None:
    with pytest.raises(ValidationError) as exc:
        validate_input("effects", {"effect_scene": "brand_new_scene"})
    assert "KLINGFLOW_EXTRA_ENUM_VALUES='effect_scene=brand_new_scene'" in only_error(exc)["msg"]


@pytest.mark.parametrize(("given", "sent"), [(5, "5"), (10, "10"), ("5", "5"), ("10", "10")])
def test_duration_accepts_ints_and_sends_strings(given: object, sent: str) -> None:
    for endpoint, base in (("text-to-video", {"prompt": "x"}), ("effects", {"effect_scene": "squish"})):
        assert canonical_arguments(validate_input(endpoint, {**base, "duration": given}))["duration"] == sent


@pytest.mark.parametrize("bad", [7, "7", True, 5.0])
def test_duration_refuses_other_values(bad: object) -> None:
    with pytest.raises(ValidationError) as exc:
        validate_input("text-to-video", {"prompt": "x", "duration": bad})
    error = only_error(exc)
    assert error["loc"] == ("duration",)
    if bad in (7, "7"):
        assert error["msg"] == "'7' is not a known duration. Allowed values: '5', '10'."
    else:
        assert error["type"] == "string_type"


def test_enum_json_schema_lists_the_values() -> None:
    schema = EffectsInput.model_json_schema()["properties"]
    assert schema["effect_scene"]["enum"] == list(EFFECT_SCENES)
    assert len(schema["effect_scene"]["enum"]) == 198
    assert schema["effect_scene"]["enum"][:3] == ["hug", "kiss", "heart_gesture"]
    assert schema["duration"] == {"default": "5", "enum": ["5", "10"], "title": "Duration", "type": "string"}
    tts = TtsInput.model_json_schema()["properties"]["voice_id"]
    assert (len(tts["enum"]), tts["default"]) == (46, "genshin_vindi2")
    t2v = TextToVideoInput.model_json_schema()
    assert t2v["properties"]["aspect_ratio"]["enum"] == ["16:9", "9:16", "1:1"]
    assert t2v["$defs"]["CameraControl"]["properties"]["movement_type"]["enum"] == [
        "horizontal",
        "vertical",
        "pan",
        "tilt",
        "roll",
        "zoom",
    ]
    assert {
        "enum": ["down_back", "forward_up", "right_turn_forward", "left_turn_forward"],
        "type": "string",
    } in t2v["properties"]["camera_control"]["anyOf"]
    assert t2v["additionalProperties"] is False


def test_package_data_lists() -> None:
    assert len(EFFECT_SCENES) == len(set(EFFECT_SCENES)) == 198
    assert len(TTS_VOICES) == len(set(TTS_VOICES)) == 46
    assert "let's_ride" in EFFECT_SCENES
    assert DUAL_IMAGE_SCENES <= set(EFFECT_SCENES)


# --- effects image count --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scene", "count", "ok"),
    [
        ("hug", 2, True),
        ("hug", 1, False),
        ("hug", 3, False),
        ("hug", 0, False),
        ("heart_gesture_pro", 2, True),
        ("cheers_2026", 1, False),
        ("squish", 1, True),
        ("squish", 2, False),
        ("squish", 0, False),
        ("splashsplash", 1, True),
    ],
)
def test_effects_image_count(scene: str, count: int, ok: bool) -> None:
    arguments = {"effect_scene": scene, "input_image_urls": [f"https://x/{i}.png" for i in range(count)]}
    if ok:
        assert len(validate_input("effects", arguments).input_image_urls) == count
        return
    with pytest.raises(ValidationError) as exc:
        validate_input("effects", arguments)
    error = only_error(exc)
    assert (error["loc"], error["type"]) == (("input_image_urls",), "image_count")
    wanted = scene_image_counts(scene)[0]
    assert error["msg"] == f"effect_scene {scene!r} takes {wanted} image(s) in input_image_urls, got {count}"


def test_effects_without_images_is_accepted_as_in_fals_quick_start() -> None:
    for scene in ("hug", "squish"):
        assert canonical_arguments(validate_input("effects", {"effect_scene": scene})) == {
            "effect_scene": scene,
            "duration": "5",
        }


def test_scene_image_counts() -> None:
    assert [scene_image_counts(s) for s in ("kiss", "fight_pro", "emoji", "not_listed")] == [
        (2,),
        (2,),
        (1,),
        (1, 2),
    ]


# --- growing enums: extension ---------------------------------------------------------------------


def test_extension_through_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        validate_input("effects", {"effect_scene": "new_scene"})
    monkeypatch.setenv(
        "KLINGFLOW_EXTRA_ENUM_VALUES", " effect_scene = new_scene, other_scene ; voice_id=new_voice"
    )
    for count in (1, 2):
        urls = [f"https://x/{i}.png" for i in range(count)]
        model = validate_input("effects", {"effect_scene": "new_scene", "input_image_urls": urls})
        assert (model.effect_scene, len(model.input_image_urls)) == ("new_scene", count)
    assert validate_input("effects", {"effect_scene": "other_scene"}).effect_scene == "other_scene"
    assert validate_input("tts", {"text": "x", "voice_id": "new_voice"}).voice_id == "new_voice"
    with pytest.raises(ValidationError) as exc:
        validate_input("effects", {"effect_scene": "new_scene", "input_image_urls": ["a", "b", "c"]})
    assert only_error(exc)["msg"] == (
        "effect_scene 'new_scene' (added through KLINGFLOW_EXTRA_ENUM_VALUES) takes 1 or 2 image(s)"
        " in input_image_urls, got 3"
    )
    with pytest.raises(ValidationError) as exc:
        validate_input("effects", {"effect_scene": "still_unknown"})
    assert only_error(exc)["loc"] == ("effect_scene",)
    # The known scenes keep their own count rule.
    with pytest.raises(ValidationError):
        validate_input("effects", {"effect_scene": "squish", "input_image_urls": ["a", "b"]})
    schema_enum = EffectsInput.model_json_schema()["properties"]["effect_scene"]["enum"]
    assert schema_enum[-2:] == ["new_scene", "other_scene"] and len(schema_enum) == 200


def test_extension_through_function() -> None:
    allow_enum_values("effect_scene", ["fresh_scene"])
    allow_enum_values("voice_id", "fresh_voice")
    for urls in (["a"], ["a", "b"]):
        model = validate_input("effects", {"effect_scene": "fresh_scene", "input_image_urls": urls})
        assert (model.effect_scene, model.input_image_urls) == ("fresh_scene", urls)
    assert validate_input("tts", {"text": "x", "voice_id": "fresh_voice"}).voice_id == "fresh_voice"
    with pytest.raises(ValidationError):
        validate_input("effects", {"effect_scene": "still_unknown"})
    reset_enum_values()
    with pytest.raises(ValidationError):
        validate_input("effects", {"effect_scene": "fresh_scene"})


def test_extension_refuses_fixed_enums(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="'effect_scen' is not an enum that can be extended; did you mean"):
        allow_enum_values("effect_scen", ["x"])
    with pytest.raises(ConfigError):
        allow_enum_values("duration", ["7"])
    monkeypatch.setenv("KLINGFLOW_EXTRA_ENUM_VALUES", "aspect_ratio=4:3")
    with pytest.raises(ConfigError, match="KLINGFLOW_EXTRA_ENUM_VALUES"):
        validate_input("effects", {"effect_scene": "hug"})
    monkeypatch.setenv("KLINGFLOW_EXTRA_ENUM_VALUES", "new_scene")
    with pytest.raises(ConfigError, match="has no '='"):
        validate_input("effects", {"effect_scene": "hug"})


# --- registry and media ---------------------------------------------------------------------------


def test_registry_lookups() -> None:
    assert len(ENDPOINTS) == 78  # the vendored snapshot
    assert sorted(info.alias for info in ENDPOINTS.values() if info.alias != info.id) == [
        "ai-avatar",
        "effects",
        "image-to-video",
        "text-to-video",
        "tts",
    ]
    for endpoint_id, info in ENDPOINTS.items():
        assert info.id == endpoint_id
        assert get_endpoint(info.alias) is info is get_endpoint(endpoint_id)
        assert hash(info) == hash(get_endpoint(info.alias))
    assert get_endpoint("tts").id == TTS
    assert get_endpoint("effects").produces == {"video": "video"}
    assert get_endpoint("tts").produces == {"audio": "audio"}
    assert get_endpoint("ai-avatar").consumes == {"image_url": "image", "audio_url": "audio"}
    assert get_endpoint("image-to-video").consumes["tail_image_url"] == "image"
    assert get_endpoint("ai-avatar").output_model is AiAvatarOutput


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("text-to-vido", "text-to-video"), ("fal-ai/kling-video/v1/standard/effect", EFFECTS), ("tts2", "tts")],
)
def test_unknown_endpoint_suggests(name: str, suggestion: str) -> None:
    with pytest.raises(SpecError) as exc:
        get_endpoint(name)
    assert exc.value.message == f"unknown endpoint {name!r}; did you mean {suggestion!r}?"
    assert "text-to-video, image-to-video, ai-avatar, effects, tts" in exc.value.hint
    with pytest.raises(SpecError):
        validate_input(name, {})


def test_media_inputs_lists_every_url_including_nested() -> None:
    arguments = {
        **SEED_I2V,
        "tail_image_url": "https://x/tail.png",
        "dynamic_masks": [*SEED_I2V["dynamic_masks"], {"mask_url": "https://x/m2.png"}],
    }
    assert media_inputs("image-to-video", validate_input("image-to-video", arguments)) == [
        ("image_url", SEED_I2V["image_url"], "image"),
        ("tail_image_url", "https://x/tail.png", "image"),
        ("static_mask_url", SEED_I2V["static_mask_url"], "image"),
        ("dynamic_masks[0].mask_url", SEED_I2V["dynamic_masks"][0]["mask_url"], "image"),
        ("dynamic_masks[1].mask_url", "https://x/m2.png", "image"),
    ]
    assert media_inputs("effects", SEED_EFFECTS) == [
        ("input_image_urls[0]", SEED_EFFECTS["input_image_urls"][0], "image"),
        ("input_image_urls[1]", SEED_EFFECTS["input_image_urls"][1], "image"),
    ]
    assert media_inputs("ai-avatar", SEED_AVATAR) == [
        ("image_url", SEED_AVATAR["image_url"], "image"),
        ("audio_url", SEED_AVATAR["audio_url"], "audio"),
    ]
    assert media_inputs("text-to-video", {"prompt": "x"}) == []
    assert media_inputs("effects", {"effect_scene": "hug"}) == []


def test_media_inputs_refuses_another_endpoints_model() -> None:
    with pytest.raises(
        TypeError, match="effects takes KlingVideoV1StandardEffectsInput, not KlingVideoV1TtsInput"
    ):
        media_inputs("effects", validate_input("tts", {"text": "x"}))


# --- outputs --------------------------------------------------------------------------------------


def test_outputs_parse_seed_examples_and_tolerate_extra_fields() -> None:
    effects = parse_output(
        "effects",
        {"video": {"content_type": "video/mp4", "file_name": "output.mp4", "url": "https://x/kling_ex.mp4"}},
    )
    assert isinstance(effects, VideoOutput)
    assert (effects.video.url, effects.video.content_type, effects.video.file_size) == (
        "https://x/kling_ex.mp4",
        "video/mp4",
        None,
    )
    extra = parse_output(
        "text-to-video",
        {
            "video": {"url": "u", "file_data": "AAAA", "width": 1280},
            "seed": 42,
            "timings": {"inference": 60.1},
        },
    )
    assert extra.video.file_data == "AAAA"
    assert extra.model_dump()["seed"] == 42
    assert extra.video.model_dump()["width"] == 1280
    avatar = parse_output("ai-avatar", {"video": {"url": "u", "file_size": 1234}, "duration": 8.04})
    assert (avatar.duration, avatar.video.file_size) == (8.04, 1234)
    assert parse_output("tts", {"audio": {"url": "https://x/output.mp3"}}).audio.url == "https://x/output.mp3"


@pytest.mark.parametrize(
    ("endpoint", "data", "loc"),
    [
        ("ai-avatar", {"video": {"url": "u"}}, ("duration",)),
        ("tts", {"audio": {}}, ("audio", "url")),
        ("effects", {"audio": {"url": "u"}}, ("video",)),
    ],
)
def test_outputs_require_their_fields(endpoint: str, data: dict, loc: tuple) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_output(endpoint, data)
    assert only_error(exc)["loc"] == loc


# --- prices ---------------------------------------------------------------------------------------


def test_prices() -> None:
    ten_seconds = validate_input("text-to-video", {"prompt": "x", "duration": 10})
    assert estimate_cost("text-to-video", ten_seconds) == 0.45
    assert estimate_cost("image-to-video", SEED_I2V) == 0.225
    assert estimate_cost("effects", {"effect_scene": "hug", "duration": "10"}) == 0.45
    assert estimate_cost("tts", SEED_TTS) == 0.007
    assert estimate_cost("ai-avatar", SEED_AVATAR, output_seconds=8) == 0.4496
    assert estimate_cost("ai-avatar", SEED_AVATAR) == 0.562
    assert estimate_cost("ai-avatar", SEED_AVATAR, assumed_seconds=4) == 0.2248
    # The requested duration is what fal bills, not the measured length.
    assert estimate_cost("text-to-video", ten_seconds, output_seconds=10.04) == 0.45


def test_estimate_seconds() -> None:
    assert estimate_seconds("text-to-video", {"prompt": "x", "duration": 10}) == 10.0
    assert estimate_seconds("effects", SEED_EFFECTS) == 5.0
    assert estimate_seconds("ai-avatar", SEED_AVATAR) is None
    assert estimate_seconds("tts", SEED_TTS) is None


def test_price_override_through_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    call = validate_input("text-to-video", {"prompt": "x", "duration": 10})
    assert estimate_cost("text-to-video", call, prices={"text-to-video": 0.05}) == 0.5
    assert estimate_cost(T2V, call, prices={T2V: 0.1}) == 1.0
    assert estimate_cost("tts", SEED_TTS, prices={"text-to-video": 0.05}) == 0.007
    monkeypatch.setenv("KLINGFLOW_PRICES", '{"text-to-video": 0.06, "fal-ai/kling-video/v1/tts": 0.01}')
    assert estimate_cost("text-to-video", call) == 0.6
    assert estimate_cost("tts", SEED_TTS) == 0.01
    assert unit_price("tts") == 0.01
    # The argument wins over the environment.
    assert estimate_cost("text-to-video", call, prices={"text-to-video": 0.05}) == 0.5


@pytest.mark.parametrize(
    ("env", "prices", "message"),
    [
        ('{"text-to-vido": 0.05}', None, "unknown endpoint 'text-to-vido'; did you mean 'text-to-video'?"),
        ("not json", None, "not valid JSON"),
        ("[0.05]", None, "must be a JSON object"),
        ('{"tts": "cheap"}', None, "must be a number >= 0"),
        ("", {"tts": -1}, "must be a number >= 0"),
    ],
)
def test_bad_price_overrides_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, prices: dict | None, message: str
) -> None:
    monkeypatch.setenv("KLINGFLOW_PRICES", env)
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        estimate_cost("tts", SEED_TTS, prices=prices)


# Cache keys computed by klingflow before its models were generated from fal's schemas (the
# hand-written v1 models, commit 069ea16): a cache a user filled then must still be hit now, or every
# cached clip would be paid for again.
KEYS_BEFORE_THE_SCHEMA_REGISTRY = [
    ("text-to-video", {"prompt": "a fox", "duration": 10}, "1ce176300ed0f6475f2bd378952fff79"),
    (
        "text-to-video",
        {
            "prompt": "a fox",
            "camera_control": "down_back",
            "advanced_camera_control": {"movement_type": "pan", "movement_value": 3},
        },
        "a73da2b598f580e27d1acdcc53011942",
    ),
    (
        "image-to-video",
        {
            "prompt": "x",
            "image_url": "https://a/b.png",
            "tail_image_url": "https://a/c.png",
            "dynamic_masks": [{"mask_url": "https://m", "trajectories": [{"x": 1, "y": 2}]}],
        },
        "6eea8bb89045c9b611640524fbfafb78",
    ),
    (
        "ai-avatar",
        {"image_url": "https://a/b.png", "audio_url": "https://a/c.mp3"},
        "fb4ddef6186d240add987f5325f9957f",
    ),
    (
        "effects",
        {"effect_scene": "hug", "input_image_urls": ["https://a", "https://b"]},
        "0f2d9130c28718486d0cf8e8dec6339e",
    ),
    ("tts", {"text": "hello", "voice_speed": 1.5}, "050d2eb4ff289461bd94d78cfcce32e1"),
    ("tts", {"text": "hello"}, "f1f45bafe2af0e7a15d3fa3365c7b808"),
]


@pytest.mark.parametrize(("endpoint", "arguments", "key"), KEYS_BEFORE_THE_SCHEMA_REGISTRY)
def test_cache_keys_of_the_seeds_endpoints_did_not_change(endpoint: str, arguments: dict, key: str) -> None:
    keyed = canonical_arguments(validate_input(endpoint, arguments))
    assert generation_key(get_endpoint(endpoint).id, keyed, "emulator").startswith(key)
