"""Input and output models of fal's Kling v1 endpoints, field by field as fal's schema defines them.

Sources: the seed's API reference and ``design/kling-schema.md`` (limits from fal's generated zod schema).
Inputs refuse unknown fields: fal would drop a misspelt ``negativ_prompt`` without a word and still bill
the run. Outputs keep unknown fields, because fal adds fields to its answers without notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from klingflow.endpoints._enums import EXTRA_ENUM_VALUES_ENV, FalEnum, load_values

__all__ = [
    "DUAL_IMAGE_SCENES",
    "EFFECT_SCENES",
    "IMAGE_LIMITS",
    "TTS_VOICES",
    "AiAvatarInput",
    "AiAvatarOutput",
    "CameraControl",
    "DynamicMask",
    "EffectsInput",
    "FalInput",
    "FalOutput",
    "File",
    "ImageLimits",
    "ImageToVideoInput",
    "TextToVideoInput",
    "Trajectory",
    "TtsInput",
    "TtsOutput",
    "VideoOutput",
    "scene_image_counts",
]

EFFECT_SCENES: tuple[str, ...] = load_values("effect-scenes.txt")
"""fal's ``effect_scene`` values (198, August 2026), in fal's order."""

TTS_VOICES: tuple[str, ...] = load_values("tts-voices.txt")
"""fal's ``voice_id`` values (46), in fal's order."""

DUAL_IMAGE_SCENES = frozenset(
    {"hug", "kiss", "heart_gesture", "kiss_pro", "fight_pro", "hug_pro", "cheers_2026", "heart_gesture_pro"}
)
"""Scenes that take two images (left person, right person); every other known scene takes one."""


@dataclass(frozen=True)
class ImageLimits:
    """What Kling accepts as an input image (``image_url``, ``tail_image_url``, ``input_image_urls``).

    From Kling's API docs (kling-schema.md §2, S6/S7): JPEG or PNG, at most 10 MB, each side at least
    300 pixels, aspect ratio between 1:2.5 and 2.5:1. fal's schema only says "URL", so these are checked
    where klingflow can see the image: local files, before anything is uploaded or paid for. Mask images
    are not held to them (Kling only asks that a mask match its image).
    """

    formats: tuple[str, ...] = ("JPEG", "PNG")
    max_bytes: int = 10 * 1024 * 1024
    min_side: int = 300
    max_aspect: float = 2.5
    """Longest side over shortest side."""


IMAGE_LIMITS = ImageLimits()
"""Kling's input image limits (see :class:`ImageLimits`)."""

_DEFAULT_NEGATIVE_PROMPT = "blur, distort, and low quality"

Duration = Annotated[str, FalEnum("duration", ("5", "10"), accept_int=True)]
AspectRatio = Annotated[str, FalEnum("aspect_ratio", ("16:9", "9:16", "1:1"))]
CameraPreset = Annotated[
    str, FalEnum("camera_control", ("down_back", "forward_up", "right_turn_forward", "left_turn_forward"))
]
MovementType = Annotated[
    str, FalEnum("movement_type", ("horizontal", "vertical", "pan", "tilt", "roll", "zoom"))
]
EffectScene = Annotated[str, FalEnum("effect_scene", EFFECT_SCENES)]
VoiceId = Annotated[str, FalEnum("voice_id", TTS_VOICES)]
Prompt = Annotated[str, Field(max_length=2500, description="What the video shows (at most 2500 characters).")]
NegativePrompt = Annotated[str, Field(max_length=2500, description="What the video should avoid.")]
CfgScale = Annotated[float, Field(ge=0, le=1, description="How closely to follow the prompt, 0 to 1.")]


def scene_image_counts(scene: str) -> tuple[int, ...]:
    """How many ``input_image_urls`` a scene takes: (2,) for a dual scene, (1,) for any other known
    scene, and (1, 2) for a scene added through the extension setting, whose count klingflow cannot know."""
    if scene in DUAL_IMAGE_SCENES:
        return (2,)
    return (1,) if scene in EFFECT_SCENES else (1, 2)


class FalInput(BaseModel):
    """Base of every input model: unknown fields are refused, naming the field."""

    model_config = ConfigDict(extra="forbid")


class FalOutput(BaseModel):
    """Base of every output model: unknown fields are kept, so a new fal field never breaks a run."""

    model_config = ConfigDict(extra="allow")


class File(FalOutput):
    """A file fal produced; only ``url`` is always there."""

    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(None, description="The mime type of the file.")
    file_name: str | None = Field(None, description="The name of the file.")
    file_size: int | None = Field(None, description="The size of the file in bytes.")
    file_data: str | None = Field(None, description="Inline file data (rare; in fal's merged File type).")


class CameraControl(FalInput):
    """One camera movement along one axis (Kling's ``simple`` camera control)."""

    movement_type: MovementType
    movement_value: int = Field(ge=-10, le=10, description="Strength and sign of the movement, -10 to 10.")


class Trajectory(FalInput):
    """One point of a motion-brush path, in pixels of the input image."""

    x: int
    y: int


class DynamicMask(FalInput):
    """A motion-brush area and the path it moves along."""

    mask_url: str = Field(description="URL of the mask image of the area to move.")
    trajectories: list[Trajectory] | None = None


class TextToVideoInput(FalInput):
    """Input of ``fal-ai/kling-video/v1/standard/text-to-video``."""

    prompt: Prompt
    negative_prompt: NegativePrompt = _DEFAULT_NEGATIVE_PROMPT
    duration: Duration = "5"
    aspect_ratio: AspectRatio = "16:9"
    cfg_scale: CfgScale = 0.5
    camera_control: CameraPreset | None = None
    advanced_camera_control: CameraControl | None = None


class ImageToVideoInput(FalInput):
    """Input of ``fal-ai/kling-video/v1/standard/image-to-video``; the image sets the aspect ratio."""

    prompt: Prompt
    image_url: str = Field(description="URL of the image to be used for the video.")
    negative_prompt: NegativePrompt = _DEFAULT_NEGATIVE_PROMPT
    duration: Duration = "5"
    cfg_scale: CfgScale = 0.5
    tail_image_url: str | None = Field(None, description="URL of the image for the end of the video.")
    static_mask_url: str | None = Field(None, description="URL of the static-brush mask image.")
    dynamic_masks: list[DynamicMask] | None = None


class AiAvatarInput(FalInput):
    """Input of ``fal-ai/kling-video/v1/standard/ai-avatar``; the video is as long as the audio."""

    image_url: str = Field(description="URL of the image to use as the avatar.")
    audio_url: str = Field(description="URL of the audio the avatar speaks.")
    prompt: str = "."


class EffectsInput(FalInput):
    """Input of ``fal-ai/kling-video/v1/standard/effects``.

    Image count: ``hug``, ``kiss``, ``heart_gesture`` and the ``*_pro`` pair scenes in
    :data:`DUAL_IMAGE_SCENES` take exactly two images, every other known scene exactly one, and a scene
    added through the extension setting one or two. The rule applies only when ``input_image_urls`` is
    given (an empty list is refused): fal's schema marks the field optional and fal's own quick-start
    sends ``{"effect_scene": "hug"}`` with no images, so that request stays valid.
    """

    effect_scene: EffectScene
    input_image_urls: list[str] | None = Field(None, description="Image URLs: two for pair scenes, else one.")
    duration: Duration = "5"

    @field_validator("input_image_urls")
    @classmethod
    def _image_count_fits_scene(cls, urls: list[str] | None, info: ValidationInfo) -> list[str] | None:
        scene = info.data.get("effect_scene")
        if urls is None or scene is None:
            return urls
        counts = scene_image_counts(scene)
        if len(urls) not in counts:
            wanted = " or ".join(map(str, counts))
            origin = "" if scene in EFFECT_SCENES else f" (added through {EXTRA_ENUM_VALUES_ENV})"
            raise PydanticCustomError(
                "image_count",
                f"effect_scene {scene!r}{origin} takes {wanted} image(s) in input_image_urls,"
                f" got {len(urls)}",
            )
        return urls


class TtsInput(FalInput):
    """Input of ``fal-ai/kling-video/v1/tts``."""

    text: str = Field(max_length=500, description="The text to speak (at most 500 characters).")
    voice_id: VoiceId = "genshin_vindi2"
    voice_speed: float = Field(1.0, ge=0.8, le=2, description="Speaking speed, 0.8 to 2.")


class VideoOutput(FalOutput):
    """Output of text-to-video, image-to-video and effects."""

    video: File


class AiAvatarOutput(FalOutput):
    """Output of ai-avatar: the video and its length, which follows the input audio."""

    video: File
    duration: float = Field(description="Duration of the output video in seconds.")


class TtsOutput(FalOutput):
    """Output of TTS (an MP3)."""

    audio: File
