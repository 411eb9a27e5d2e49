"""What fal's schemas do not say, beside the registry: cross-field rules, newer enum values, image limits.

Each overlay names its source and has a test (``tests/test_endpoint_registry.py``). They are applied after
the schema's own model has validated an input (:func:`check_overlays`), and their errors are pydantic
errors with a ``loc`` like the schema's, so a pipeline's mistake is reported at its field either way.

- **prompt or multi_prompt** (v3, v3 turbo, O3): fal's field descriptions call the two mutually
  exclusive; a text-to-video request needs one of them. The schema marks both optional.
- **multi_prompt length**: the shots' durations add up to at most 15 s (fal's description of
  ``multi_prompt`` for v3 and O3).
- **Effect images** (v1, v1.5, v1.6 effects): pair scenes take exactly two ``input_image_urls``, other
  known scenes one (the seed's API reference). Checked only when the list is given: fal's own
  quick-start sends ``{"effect_scene": "hug"}`` alone.
- **Newer enum values** (:data:`NEWER_ENUM_VALUES`): values fal added after the vendored schema was
  published, from fal's later catalog (the fal-schemas README's drift notes) and klingflow's lists of
  effect scenes and TTS voices (August 2026).
- **Kling v1 image limits** (:data:`IMAGE_LIMITS`): the v1-era schemas carry no ``x-fal`` file limits
  on ``image_url``; Kling's own API docs give JPEG or PNG, at most 10 MB, sides of at least 300 px and an
  aspect ratio within 1:2.5..2.5:1 (design/kling-schema.md section 2). Endpoints whose schema carries
  ``x-fal`` limits are held to those instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from klingflow.endpoints._enums import EXTRA_ENUM_VALUES_ENV, load_values
from klingflow.endpoints._pricing import shots_seconds

__all__ = [
    "DUAL_IMAGE_SCENES",
    "EFFECT_SCENES",
    "IMAGE_LIMITS",
    "NEWER_ENUM_VALUES",
    "TTS_VOICES",
    "ImageLimits",
    "check_overlays",
    "overlay_names",
    "scene_image_counts",
]

EFFECT_SCENES: tuple[str, ...] = load_values("effect-scenes.txt")
"""fal's ``effect_scene`` values (198, August 2026), in fal's order."""

TTS_VOICES: tuple[str, ...] = load_values("tts-voices.txt")
"""fal's ``voice_id`` values of Kling TTS (46), in fal's order."""

DUAL_IMAGE_SCENES = frozenset(
    {"hug", "kiss", "heart_gesture", "kiss_pro", "fight_pro", "hug_pro", "cheers_2026", "heart_gesture_pro"}
)
"""Scenes that take two images (left person, right person); every other known scene takes one."""

NEWER_ENUM_VALUES: dict[str, tuple[str, ...]] = {
    "effect_scene": EFFECT_SCENES,
    "voice_id": TTS_VOICES,
    "shot_type": ("customize", "intelligent"),
}
"""Values an enum field of this name takes in addition to the vendored schema's (see the module doc)."""

MULTI_PROMPT_MAX_SECONDS = 15


@dataclass(frozen=True)
class ImageLimits:
    """What an input image must be: formats, size, sides and aspect ratio (longest over shortest side)."""

    formats: tuple[str, ...] = ("JPEG", "PNG")
    max_bytes: int | None = 10 * 1024 * 1024
    min_side: int | None = 300
    max_aspect: float | None = 2.5
    min_width: int | None = None
    min_height: int | None = None
    max_width: int | None = None
    max_height: int | None = None
    min_aspect_ratio: float | None = None
    """Width over height, as fal's ``x-fal`` gives it."""
    max_aspect_ratio: float | None = None

    @classmethod
    def from_fal(cls, limits: dict[str, Any]) -> ImageLimits:
        """The limits of a field's ``x-fal`` block (fal states no formats: any image Pillow reads)."""
        return cls(
            formats=(),
            max_bytes=limits.get("max_file_size"),
            min_side=None,
            max_aspect=None,
            min_width=limits.get("min_width"),
            min_height=limits.get("min_height"),
            max_width=limits.get("max_width"),
            max_height=limits.get("max_height"),
            min_aspect_ratio=limits.get("min_aspect_ratio"),
            max_aspect_ratio=limits.get("max_aspect_ratio"),
        )


IMAGE_LIMITS = ImageLimits()
"""Kling v1's input image limits (see the module docstring)."""


def scene_image_counts(scene: str) -> tuple[int, ...]:
    """How many ``input_image_urls`` a scene takes: (2,) for a dual scene, (1,) for any other known
    scene, and (1, 2) for a scene added through the extension setting, whose count klingflow cannot know."""
    if scene in DUAL_IMAGE_SCENES:
        return (2,)
    return (1,) if scene in EFFECT_SCENES else (1, 2)


Rule = Callable[[str, dict[str, Any]], list[InitErrorDetails]]


def _error(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> InitErrorDetails:
    return {"type": PydanticCustomError(kind, message), "loc": loc, "input": value}


def _prompt_or_multi_prompt(endpoint_id: str, data: dict[str, Any]) -> list[InitErrorDetails]:
    prompt, shots = data.get("prompt"), data.get("multi_prompt")
    if prompt is not None and shots is not None:
        return [_error(("multi_prompt",), "exclusive", "give prompt or multi_prompt, not both", shots)]
    if prompt is None and shots is None and "text-to-video" in endpoint_id:
        return [_error(("prompt",), "missing", "a prompt (or multi_prompt) is required", None)]
    total = shots_seconds(shots)
    if total is not None:
        if total > MULTI_PROMPT_MAX_SECONDS:
            return [
                _error(
                    ("multi_prompt",),
                    "too_long",
                    f"the shots last {total:g} s together; at most {MULTI_PROMPT_MAX_SECONDS} s",
                    shots,
                )
            ]
    return []


def _effect_images(endpoint_id: str, data: dict[str, Any]) -> list[InitErrorDetails]:
    urls, scene = data.get("input_image_urls"), data.get("effect_scene")
    if urls is None or scene is None:
        return []
    counts = scene_image_counts(scene)
    if len(urls) in counts:
        return []
    wanted = " or ".join(map(str, counts))
    origin = "" if scene in EFFECT_SCENES else f" (added through {EXTRA_ENUM_VALUES_ENV})"
    message = f"effect_scene {scene!r}{origin} takes {wanted} image(s) in input_image_urls, got {len(urls)}"
    return [_error(("input_image_urls",), "image_count", message, urls)]


def _rules(fields: frozenset[str], endpoint_id: str) -> list[tuple[str, Rule]]:
    rules: list[tuple[str, Rule]] = []
    if {"prompt", "multi_prompt"} <= fields:
        rules.append(("prompt-or-multi-prompt", _prompt_or_multi_prompt))
    if {"effect_scene", "input_image_urls"} <= fields:
        rules.append(("effect-image-count", _effect_images))
    return rules


def overlay_names(endpoint_id: str, fields: frozenset[str]) -> list[str]:
    """The names of the cross-field rules that apply to an endpoint with these input fields."""
    return [name for name, _ in _rules(fields, endpoint_id)]


def check_overlays(endpoint_id: str, title: str, fields: frozenset[str], data: dict[str, Any]) -> None:
    """Raise one ``ValidationError`` listing every cross-field rule ``data`` (fal's JSON) breaks."""
    errors = [error for _, rule in _rules(fields, endpoint_id) for error in rule(endpoint_id, data)]
    if errors:
        raise ValidationError.from_exception_data(title, errors)
