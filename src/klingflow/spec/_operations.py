"""The media operations a step can ``use`` besides Kling endpoints: they run with ffmpeg on local files.

Each operation's ``with`` is a small pydantic model, so a misspelt field or a bad choice is refused
before anything is generated, just as endpoint arguments are. :class:`OperationInfo` mirrors
:class:`klingflow.endpoints.EndpointInfo` (``consumes``/``produces``), so the spec treats both alike.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from klingflow.endpoints import FalEnum, MediaKind
from klingflow.spec._problems import model_at

__all__ = [
    "OPERATIONS",
    "CaptionsSpec",
    "ConcatSpec",
    "ContactSheetSpec",
    "LastFrameSpec",
    "MuxAudioSpec",
    "OperationInfo",
    "TargetSpec",
    "TransitionSpec",
    "takes_list",
]


class _WithSpec(BaseModel):
    """Base of every operation's ``with``: unknown fields are refused, naming the field."""

    model_config = ConfigDict(extra="forbid")


class TargetSpec(_WithSpec):
    """The common format clips are brought to before they are joined (mixed sizes cannot be cut)."""

    aspect_ratio: str | None = Field(
        None, pattern=r"^[1-9]\d*:[1-9]\d*$", description="Output aspect ratio, e.g. 16:9."
    )
    width: int | None = Field(None, gt=0, description="Output width in pixels.")
    height: int | None = Field(None, gt=0, description="Output height in pixels.")
    fit: Annotated[str, FalEnum("fit", ("pad", "crop"))] = "pad"
    fps: float | None = Field(None, gt=0, description="Output frames per second.")


class TransitionSpec(_WithSpec):
    """How one clip hands over to the next."""

    kind: Annotated[str, FalEnum("kind", ("crossfade",))] = "crossfade"
    duration: float = Field(gt=0, description="Seconds the two clips overlap.")


class ConcatSpec(_WithSpec):
    """``concat``: join videos in order."""

    inputs: list[str] = Field(min_length=1, description="The videos, in order.")
    target: TargetSpec | None = None
    transition: TransitionSpec | None = None


class LastFrameSpec(_WithSpec):
    """``last_frame``: the final frame of a video as an image, to continue a shot from it."""

    video: str


class MuxAudioSpec(_WithSpec):
    """``mux_audio``: put an audio track under a video."""

    video: str
    audio: str
    mode: Annotated[str, FalEnum("mode", ("replace", "mix"))] = "replace"
    fit: Annotated[str, FalEnum("fit", ("trim", "pad", "loop"))] = "trim"


class ContactSheetSpec(_WithSpec):
    """``contact_sheet``: one image of thumbnails from videos, to review a run at a glance."""

    inputs: list[str] = Field(min_length=1, description="The videos to show.")


class CaptionsSpec(_WithSpec):
    """``captions``: subtitles of a text as spoken in an audio, attached to (or burned into) a video."""

    text: str = Field(min_length=1, description="The words spoken, e.g. the TTS step's text.")
    audio: str = Field(description="The speech the captions are timed by.")
    video: str = Field(description="The video to caption.")
    burn: bool = Field(False, description="Draw the captions into the picture instead of a soft track.")


def takes_list(model: type[BaseModel], dotted: str) -> bool:
    """Whether the field ``dotted`` (``input_image_urls``, ``dynamic_masks.mask_url``) holds a list."""
    *parents, name = dotted.split(".")
    owner = model
    for parent in parents:
        found = model_at(owner, [parent])
        if found is None:
            return False
        owner = found
    info = owner.model_fields.get(name)
    if info is None:
        return False
    annotation: Any = info.annotation
    return any(typing.get_origin(arg) is list for arg in (annotation, *typing.get_args(annotation)))


@dataclass(frozen=True)
class OperationInfo:
    """What klingflow knows about one media operation.

    ``consumes`` maps ``with`` fields to the media kind they take; ``produces`` maps outputs to their
    kind, and ``optional`` names the outputs written only when there is something to write (a cut
    has subtitles only when its clips bring captions). Which fields are required and which take a
    list (:func:`takes_list`) come from ``with_model``, so they cannot disagree with it.
    """

    name: str
    summary: str
    with_model: type[BaseModel]
    consumes: dict[str, MediaKind] = field(hash=False)
    produces: dict[str, MediaKind] = field(hash=False)
    optional: frozenset[str] = frozenset()


OPERATIONS: dict[str, OperationInfo] = {
    info.name: info
    for info in (
        OperationInfo(
            name="concat",
            summary="join videos in order, optionally brought to one format and cross-faded, "
            "their soft captions carried over",
            with_model=ConcatSpec,
            consumes={"inputs": "video"},
            produces={"video": "video", "subtitles": "subtitles", "webvtt": "subtitles"},
            optional=frozenset({"subtitles", "webvtt"}),
        ),
        OperationInfo(
            name="last_frame",
            summary="the last frame of a video as an image",
            with_model=LastFrameSpec,
            consumes={"video": "video"},
            produces={"image": "image"},
        ),
        OperationInfo(
            name="mux_audio",
            summary="a video with an audio track replaced or mixed in",
            with_model=MuxAudioSpec,
            consumes={"video": "video", "audio": "audio"},
            produces={"video": "video"},
        ),
        OperationInfo(
            name="captions",
            summary="SRT and WebVTT of a text timed by its speech, on a video as a track or burned in",
            with_model=CaptionsSpec,
            consumes={"audio": "audio", "video": "video"},
            produces={"video": "video", "subtitles": "subtitles", "webvtt": "subtitles"},
        ),
        OperationInfo(
            name="contact_sheet",
            summary="one image of thumbnails of videos",
            with_model=ContactSheetSpec,
            consumes={"inputs": "video"},
            produces={"image": "image"},
        ),
    )
}
"""Every media operation a step can ``use``, keyed by name."""
