"""What one request's output is, read from its endpoint's schema facts rather than a list of names.

Every endpoint the registry knows a schema for is emulated from what :mod:`klingflow.endpoints` says of
it, so an endpoint vendored or refreshed later is served without a change here:

* **Files and values**: the output schema's ``File`` fields (``info.produces``; a field in
  ``info.many`` is a list, ``num_images`` long) and its other fields (``info.values``): a ``duration``
  is the video's seconds, a text value (create-voice's ``voice_id``) a fake id derived from the input,
  so the same voice always gets the same id.
* **Renderer** (:data:`Recipe`), from the media the input carries (``info.consumes``): a video input is
  re-shot (video-to-video, lipsync, video-to-audio) or, for motion-control, drives the character image;
  an image with an audio makes a talking avatar; images start an image-to-video clip (or an effect);
  without media the prompt's scene is drawn. Image outputs are pictures; an audio-only output is TTS.
* **Length**: the requested ``duration``; else the input audio's (ai-avatar) or the input video's
  (lipsync, video-to-video, video-to-audio, motion-control: at most 10 s when the character keeps the
  image's orientation, Kling's limit); else 5 s. Always whole frames at 30 fps.
* **Size**: image-to-video follows its start image (Kling's nearest size, as for v1); else the
  requested ``aspect_ratio``; else the first picture or video input; else 16:9 (effects without
  images: fal's square placeholder portraits). Videos are drawn at Kling v1's 720p sizes whatever the
  tier: a 1080p or 4K frame would multiply render time, and what pipelines rely on is length, aspect and
  sound. Pictures take the requested aspect (``auto``: the first input image's) at 1024 px on the long
  side for ``1K`` and 2048 px for ``2K`` and ``4K`` (kept modest).
* **Sound**: a video has an audio track exactly when ``info.generates_audio(arguments)`` says so: the
  input audio where there is one (ai-avatar, lipsync audio-to-video), else speech-like sound spoken from
  the input's text or prompt, as long as the clip.
* **Billable units** (``x-fal-billable-units``): what the price rule counts
  (``PriceRule.units``: requested or output seconds, input video seconds rounded up, images, one per
  request). An endpoint without a price rule reports the output video's seconds, or 1 when it makes
  no video (a choice: fal publishes no unit for those).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from klingflow.emulator import render
from klingflow.emulator._render_pictures import CONTENT_TYPES, SUFFIXES
from klingflow.emulator._render_scene import image_size
from klingflow.emulator.render import FPS
from klingflow.endpoints import EndpointInfo, MediaKind
from klingflow.media import probe

__all__ = ["Media", "OutputFile", "OutputPlan", "Recipe", "billable_units", "plan_output"]

Recipe = Literal["text", "image", "effects", "avatar", "video", "motion", "speech", "pictures", "values"]
"""How the output is made: a prompt's scene, from a start image, an effect, a talking avatar, from an
input video, a character moved by a video, TTS speech, pictures, or values only."""

_DEFAULT_SECONDS = 5.0
_MOTION_IMAGE_MAX_SECONDS = 10.0
_PICTURE_SIDES = {"1K": 1024, "2K": 2048, "4K": 2048}
_KLING_ASPECTS = ("16:9", "9:16", "1:1")
_SUFFIXES: dict[str, str] = {"video": ".mp4", "audio": ".mp3"}
_CONTENT_TYPES = {".mp4": "video/mp4", ".mp3": "audio/mpeg", **CONTENT_TYPES}


def _role(slot: str) -> str:
    """What an image input is for, by its field name: a mask, the last frame, a garment, or the picture."""
    name = slot.rsplit(".", 1)[-1]
    if "mask" in name:
        return "mask"
    if "tail" in name or name.startswith("end_"):
        return "tail"
    return "garment" if "garment" in name else "main"


@dataclass(frozen=True)
class Media:
    """A request's fetched input files by field path without list indexes (``input_image_urls``,
    ``elements.frontal_image_url``), in the endpoint's ``consumes`` order."""

    files: Mapping[str, list[Path]]
    kinds: Mapping[str, MediaKind]

    def all(self, kind: MediaKind, role: str = "main", *, nested: bool = True) -> list[Path]:
        """Every file of ``kind`` (for images, of ``role``): top-level fields first, then nested ones
        unless ``nested`` is False (an element's reference video is not the video a request re-shoots)."""
        slots = sorted(self.files, key=lambda slot: "." in slot)  # stable: consumes order kept
        return [
            path
            for slot in slots
            if self.kinds[slot] == kind
            and (kind != "image" or _role(slot) == role)
            and (nested or "." not in slot)
            for path in self.files[slot]
        ]

    def first(self, kind: MediaKind, role: str = "main", *, nested: bool = True) -> Path | None:
        """The first file :meth:`all` lists, or None."""
        return next(iter(self.all(kind, role, nested=nested)), None)


@dataclass(frozen=True)
class OutputFile:
    """One file of the output: its field, its position in a list field (else None), kind and name."""

    field: str
    index: int | None
    kind: MediaKind
    name: str

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[Path(self.name).suffix]


@dataclass(frozen=True)
class OutputPlan:
    """Everything the renderers need to know about one request's output (see the module docstring)."""

    recipe: Recipe
    files: tuple[OutputFile, ...]
    seconds: float | None = None
    """The video's (or generated audio's) length in whole frames; None where the renderer decides (TTS)."""
    size: tuple[int, int] | None = None
    sound: bool = False
    prompt: str = ""
    voice: str = "emulator"
    start: Path | None = None
    tail: Path | None = None
    garment: Path | None = None
    video: Path | None = None
    audio: Path | None = None
    images: tuple[Path, ...] = ()
    input_seconds: float | None = None
    """The input video's length, what lipsync is billed by."""

    @property
    def aspect_ratio(self) -> str:
        """The Kling aspect ratio of a video's size (one of 16:9, 9:16, 1:1)."""
        assert self.size is not None
        return next(a for a in _KLING_ASPECTS if render.output_size(a) == self.size)

    def file(self, kind: MediaKind) -> OutputFile | None:
        """The first output file of ``kind``."""
        return next((item for item in self.files if item.kind == kind), None)


def _prompt(arguments: Mapping[str, Any]) -> str:
    """The text a render is labelled with and its scene drawn from."""
    prompt = arguments.get("prompt")
    if isinstance(prompt, str):
        return prompt
    shots = arguments.get("multi_prompt") or []
    joined = " / ".join(str(shot.get("prompt", "")) for shot in shots if isinstance(shot, dict))
    for value in (
        arguments.get("prompt"),
        joined,
        arguments.get("text"),
        arguments.get("sound_effect_prompt"),
    ):
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _ratio(aspect: Any) -> tuple[int, int] | None:
    match = re.fullmatch(r"(\d+):(\d+)", aspect) if isinstance(aspect, str) else None
    return (int(match[1]), int(match[2])) if match and int(match[1]) and int(match[2]) else None


def _visual_size(path: Path, kind: MediaKind) -> tuple[int, int]:
    if kind == "image":
        return image_size(path)
    info = probe(path, context="emulator input")
    return (info.width or 16, info.height or 9)


def _video_seconds(path: Path) -> float:
    info = probe(path, context="emulator input")
    return float(info.video_duration or info.duration)


def _whole_frames(seconds: float) -> float:
    return max(1, round(seconds * FPS)) / FPS


def _recipe(info: EndpointInfo, media: Media) -> Recipe:
    kinds = set(info.produces.values())
    if not kinds:
        return "values"
    if "image" in kinds:
        return "pictures"
    if "video" not in kinds:
        return "speech"
    if media.first("video", nested=False) is not None:
        return "motion" if info.record.mode == "motion-control" else "video"
    start = media.first("image")
    if start is not None and media.first("audio") is not None:
        return "avatar"
    if info.record.mode == "effects":
        return "effects"
    return "image" if start is not None else "text"


def _seconds(recipe: Recipe, arguments: Mapping[str, Any], media: Media) -> float:
    duration = arguments.get("duration")
    if duration is not None:
        return _whole_frames(float(duration))
    if recipe == "avatar":
        heard = probe(media.first("audio"), context="emulator input")  # type: ignore[arg-type]
        return _whole_frames(max(heard.audio_duration or heard.duration, 1 / FPS))
    video = media.first("video", nested=False)
    if video is None:
        return _DEFAULT_SECONDS
    seconds = _video_seconds(video)
    if recipe == "motion" and arguments.get("character_orientation") == "image":
        seconds = min(seconds, _MOTION_IMAGE_MAX_SECONDS)
    return _whole_frames(seconds)


def _video_size(
    info: EndpointInfo, recipe: Recipe, arguments: Mapping[str, Any], media: Media
) -> tuple[int, int]:
    start, video = media.first("image"), media.first("video", nested=False)
    if info.record.mode == "image-to-video" and start is not None:
        return render.nearest_size(*image_size(start))
    ratio = _ratio(arguments.get("aspect_ratio"))
    if ratio is not None:
        return render.nearest_size(*ratio)
    if recipe == "video" and video is not None:
        return render.nearest_size(*_visual_size(video, "video"))
    if start is not None:
        return render.nearest_size(*image_size(start))
    if video is not None:
        return render.nearest_size(*_visual_size(video, "video"))
    return (960, 960) if recipe == "effects" else render.output_size("16:9")


def _picture_size(arguments: Mapping[str, Any], source: Path | None) -> tuple[int, int]:
    side = _PICTURE_SIDES.get(str(arguments.get("resolution")), 1024)
    width, height = _ratio(arguments.get("aspect_ratio")) or (image_size(source) if source else (1, 1))
    if width >= height:
        return side, max(1, round(side * height / width))
    return max(1, round(side * width / height)), side


def _files(info: EndpointInfo, arguments: Mapping[str, Any]) -> tuple[OutputFile, ...]:
    picture_suffix = SUFFIXES.get(str(arguments.get("output_format", "png")), ".png")
    wanted: list[tuple[str, int | None, MediaKind]] = []
    for field, kind in info.produces.items():
        if field in info.many:
            count = int(arguments.get("num_images") or 1) if kind == "image" else 1
            wanted.extend((field, index, kind) for index in range(count))
        else:
            wanted.append((field, None, kind))

    def name(field: str, index: int | None, kind: MediaKind) -> str:
        suffix = picture_suffix if kind == "image" else _SUFFIXES[kind]
        if len(wanted) == 1:
            return f"output{suffix}"
        return f"{field}{suffix}" if index is None else f"{field}-{index}{suffix}"

    return tuple(OutputFile(field, index, kind, name(field, index, kind)) for field, index, kind in wanted)


def plan_output(info: EndpointInfo, arguments: Mapping[str, Any], media: Media) -> OutputPlan:
    """Decide what the request's output is (renderer, files, length, size, sound) from the endpoint's
    schema facts, its (validated, defaults-filled) arguments and its fetched media."""
    recipe = _recipe(info, media)
    files = _files(info, arguments)
    voice = arguments.get("voice_id")
    common: dict[str, Any] = {
        "recipe": recipe,
        "files": files,
        "prompt": _prompt(arguments),
        "voice": voice if isinstance(voice, str) else "emulator",
        "start": media.first("image"),
        "garment": media.first("image", "garment"),
    }
    if recipe in ("values", "speech"):
        return OutputPlan(**common)
    if recipe == "pictures":
        return OutputPlan(**common, size=_picture_size(arguments, media.first("image")))
    video = media.first("video", nested=False)
    return OutputPlan(
        **common,
        seconds=_seconds(recipe, arguments, media),
        size=_video_size(info, recipe, arguments, media),
        sound=info.generates_audio(arguments),
        tail=media.first("image", "tail"),
        video=video,
        audio=media.first("audio"),
        images=tuple(media.all("image")),
        input_seconds=None if video is None else _video_seconds(video),
    )


def billable_units(
    info: EndpointInfo, arguments: Mapping[str, Any], plan: OutputPlan, seconds: float | None
) -> float:
    """``x-fal-billable-units`` for a request that produced ``seconds`` of video (None: no video)."""
    units = None
    if info.price is not None:
        units = info.price.units(dict(arguments), output_seconds=seconds, input_seconds=plan.input_seconds)
    if units is None:
        units = seconds if seconds is not None else 1.0
    return round(float(units), 3)
