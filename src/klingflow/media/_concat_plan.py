"""What a concat will do, decided from probed facts before ffmpeg runs.

The plan fixes the output size, frame rate and every clip's length in frames and samples, and it
chooses the path: stream copy when the probes prove every clip's video packets can share one mp4
track; "conformed" when more than half of the clips can, and already have the output's size and
rate, so only the others are re-encoded to match them and every packet is then copied; otherwise a
normalising re-encode of every clip. The reason for the choice is kept, so logs and the ledger can
say why a cut was (or was not) fast.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from klingflow.errors import MediaError
from klingflow.media._probe import MediaInfo, VideoFacts
from klingflow.media._run import where

__all__ = ["ConcatPlan", "ConcatResult", "ConcatTarget", "Transition", "copy_key_difference", "plan_concat"]

PathTaken = Literal["stream_copy", "conformed", "normalised"]

_COPY_KEY_FIELDS = (
    "codec",
    "profile",
    "width",
    "height",
    "pixel format",
    "sample aspect ratio",
    "frame rate",
    "time base",
    "colour tags",
    "codec extradata (SPS/PPS)",
)


class ConcatTarget(BaseModel):
    """The output a concat must produce; unset fields follow the first clip.

    Size: ``width`` and ``height`` together fix it. ``aspect_ratio`` with one of them derives the
    other; ``aspect_ratio`` alone keeps the first clip's pixel count (so a 1280x720 first clip
    gives 720x1280 for "9:16" and 960x960 for "1:1", Kling's own sizes). Nothing set: the first
    clip's display size. Clips of another aspect are letterboxed or pillarboxed (``fit="pad"``)
    or cropped to fill the frame (``fit="crop"``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    aspect_ratio: str | None = Field(None, pattern=r"^[1-9]\d*:[1-9]\d*$", description='e.g. "16:9".')
    width: int | None = Field(None, gt=0, description="Output width in pixels (even).")
    height: int | None = Field(None, gt=0, description="Output height in pixels (even).")
    fit: Literal["pad", "crop"] = Field("pad", description="How clips of another aspect fill the frame.")
    fps: float | None = Field(None, gt=0, description="Output frame rate; None keeps the first clip's.")
    sample_rate: int = Field(48_000, ge=8_000, le=96_000, description="Audio sample rate in Hz.")
    channels: int = Field(2, ge=1, le=8, description="Audio channels (1 mono, 2 stereo, ...).")

    @model_validator(mode="after")
    def _consistent(self) -> ConcatTarget:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and value % 2:
                raise ValueError(f"{name} must be even for H.264 yuv420p, got {value}")
        if self.width and self.height and self.aspect_ratio:
            if abs(self.width / self.height - float(_ratio(self.aspect_ratio))) > 2 / self.height:
                raise ValueError(
                    f"{self.width}x{self.height} is not {self.aspect_ratio}; give the size or the aspect"
                )
        return self


class Transition(BaseModel):
    """A transition between every two consecutive clips; each overlaps them by ``duration``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["crossfade"] = Field("crossfade", description="Video and audio crossfade.")
    duration: float = Field(gt=0, description="Seconds of overlap; shorter than the shortest clip.")


class ConcatResult(BaseModel):
    """The joined file, which path made it (and why), its probe, and the captions it carries."""

    path: Path
    path_taken: PathTaken
    reason: str = ""
    info: MediaInfo
    captions: int = Field(0, description="Cues in the cut's caption track (0: the cut has no track).")
    srt: Path | None = Field(None, description="The cut's cues as SRT, when asked for and there are some.")
    vtt: Path | None = Field(None, description="The same cues as WebVTT.")


def _ratio(aspect_ratio: str) -> Fraction:
    width, height = aspect_ratio.split(":")
    return Fraction(int(width), int(height))


def _even(value: float | Fraction) -> int:
    return max(2, round(value / 2) * 2)


def _target_size(target: ConcatTarget, first: VideoFacts) -> tuple[int, int]:
    if target.width and target.height:
        return target.width, target.height
    aspect = _ratio(target.aspect_ratio) if target.aspect_ratio else first.display_aspect
    if target.width:
        return target.width, _even(target.width / aspect)
    if target.height:
        return _even(target.height * aspect), target.height
    display_width = first.height * first.display_aspect
    if target.aspect_ratio is None:
        return _even(display_width), _even(first.height)
    area = display_width * first.height
    return _even(math.sqrt(area * aspect)), _even(math.sqrt(area / aspect))


@dataclass(frozen=True)
class ConcatPlan:
    """Everything ffmpeg needs: per-clip frames and samples, overlaps, and the path to take.

    On the conformed path, ``conform`` lists the clips (by index) to re-encode so that they match
    clip ``reference``, one of the majority whose packets are copied.
    """

    clips: tuple[VideoFacts, ...]
    size: tuple[int, int]
    rate: Fraction
    frames: tuple[int, ...]
    overlap_frames: int
    with_audio: bool
    sample_rate: int
    channels: int
    fit: Literal["pad", "crop"]
    path_taken: PathTaken
    reason: str
    conform: tuple[int, ...] = ()
    reference: int = 0

    @property
    def samples(self) -> tuple[int, ...]:
        """Samples per clip, from cumulative frame boundaries so rounding never accumulates."""
        bounds = [0]
        for count in self.frames:
            bounds.append(bounds[-1] + count)
        edges = [round(Fraction(b) / self.rate * self.sample_rate) for b in bounds]
        return tuple(after - before for before, after in zip(edges, edges[1:], strict=False))

    @property
    def overlap_samples(self) -> int:
        return round(Fraction(self.overlap_frames) / self.rate * self.sample_rate)

    @property
    def starts(self) -> tuple[Fraction, ...]:
        """When each clip's first frame shows in the cut: the frames before it less one overlap per join."""
        starts, elapsed = [], 0
        for index, count in enumerate(self.frames):
            starts.append(Fraction(elapsed - index * self.overlap_frames) / self.rate)
            elapsed += count
        return tuple(starts)

    @property
    def video_seconds(self) -> Fraction:
        """The output's expected video duration: all frames less one overlap per join."""
        total = sum(self.frames) - self.overlap_frames * (len(self.frames) - 1)
        return Fraction(total) / self.rate


def copy_key_difference(first: VideoFacts, other: VideoFacts) -> str | None:
    """Name the first copy-key property in which two clips differ (with both values, when short).

    None when their packets could share one track.
    """
    return next(
        (
            name if isinstance(mine, bytes) else f"{name} ({theirs} vs {mine})"
            for name, mine, theirs in zip(_COPY_KEY_FIELDS, first.copy_key, other.copy_key, strict=True)
            if mine != theirs
        ),
        None,
    )


def _copy_refusal(
    clips: tuple[VideoFacts, ...], size: tuple[int, int], rate: Fraction, *, crossfade: bool
) -> str | None:
    """Why the packets cannot simply be joined, or None when the probes prove they can."""
    first = clips[0]
    if crossfade:
        return "a crossfade needs the frames re-encoded"
    if (first.codec, first.pixel_format) != ("h264", "yuv420p"):
        return f"clip 1 ({first.path}) is {first.codec} {first.pixel_format}, the output is h264 yuv420p"
    for index, clip in enumerate(clips[1:], start=2):
        if clip.copy_key != first.copy_key:
            return f"clip {index} ({clip.path}) differs from clip 1 in {copy_key_difference(first, clip)}"
    if size != (first.width, first.height) or first.sar != 1:
        return f"the target is {size[0]}x{size[1]}, the clips are {first.width}x{first.height}"
    if rate != first.rate:
        return f"the target is {float(rate):g} fps, the clips are {float(first.rate):g} fps"
    return None


def _odd_ones(
    clips: tuple[VideoFacts, ...], size: tuple[int, int], rate: Fraction
) -> tuple[int, tuple[int, ...]] | None:
    """The majority's first clip and the clips outside it, when re-encoding only those can work.

    That needs more than half of the clips to share one copy key, an H.264 yuv420p one already at
    the output's size, square pixels and rate (the packets copied are the output's frames).
    """
    key, count = Counter(clip.copy_key for clip in clips).most_common(1)[0]
    if 2 * count <= len(clips):
        return None
    reference = next(index for index, clip in enumerate(clips) if clip.copy_key == key)
    model = clips[reference]
    if (model.codec, model.pixel_format, model.width, model.height) != ("h264", "yuv420p", *size):
        return None
    if model.sar != 1 or model.rate != rate:
        return None
    return reference, tuple(index for index, clip in enumerate(clips) if clip.copy_key != key)


def _conform_reason(clips: tuple[VideoFacts, ...], reference: int, odd: tuple[int, ...]) -> str:
    model = clips[reference]
    named = "; ".join(
        f"clip {index + 1} ({clips[index].path}) differs in {copy_key_difference(model, clips[index])}"
        for index in odd
    )
    return (
        f"{len(clips) - len(odd)} of {len(clips)} clips share codec parameters (as clip {reference + 1}); "
        f"{named}: re-encoding {len(odd)} to match, copying the rest"
    )


def plan_concat(
    clips: tuple[VideoFacts, ...],
    target: ConcatTarget,
    transition: Transition | None,
    *,
    context: str,
) -> ConcatPlan:
    """Fix the output's size, rate and per-clip lengths, check the transition, choose the path."""
    first = clips[0]
    size = _target_size(target, first)
    rate = Fraction(target.fps).limit_denominator(1001) if target.fps else first.rate
    frames = tuple(max(1, round(clip.duration * rate)) for clip in clips)
    overlap = 0
    if transition is not None and len(clips) > 1:
        overlap = max(1, round(Fraction(transition.duration) * rate))
        shortest = min(range(len(clips)), key=frames.__getitem__)
        if overlap >= frames[shortest]:
            raise MediaError(
                f"a {transition.duration:g} s crossfade is not shorter than clip {shortest + 1} "
                f"({float(clips[shortest].duration):.3f} s)",
                context=where(context, clips[shortest].path),
                hint="use a transition shorter than the shortest clip",
            )
    refusal = _copy_refusal(clips, size, rate, crossfade=overlap > 0)
    odd = None if refusal is None or overlap else _odd_ones(clips, size, rate)
    reference, conform = odd or (0, ())
    path_taken: PathTaken
    if refusal is None:
        path_taken = "stream_copy"
        reason = (
            f"all {len(clips)} clips share codec, profile, size, pixel format, aspect, frame rate, "
            "time base, colour tags and SPS/PPS"
        )
    elif odd is not None:
        path_taken, reason = "conformed", _conform_reason(clips, reference, conform)
    else:
        path_taken, reason = "normalised", refusal
    return ConcatPlan(
        clips=clips,
        size=size,
        rate=rate,
        frames=frames,
        overlap_frames=overlap,
        with_audio=any(clip.has_audio for clip in clips),
        sample_rate=target.sample_rate,
        channels=target.channels,
        fit=target.fit,
        path_taken=path_taken,
        reason=reason,
        conform=conform,
        reference=reference,
    )
