"""Probing media with PyAV: the public :class:`MediaInfo`, and the exact facts concat decides on.

PyAV reads the streams with its own libav, so no ffprobe binary is needed and durations are exact
stream durations, not the container's rounded header. Nothing is decoded: probing a clip costs a
few milliseconds, cheap enough for every step output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from pydantic import BaseModel

from klingflow.errors import MediaError
from klingflow.media._run import where

__all__ = ["MediaInfo", "VideoFacts", "existing", "inspect_video", "open_video", "probe", "unreadable"]

_AV_ERRORS = (av.error.FFmpegError, ValueError, ZeroDivisionError)
_TEXT_SUBTITLES = frozenset({"mov_text", "subrip", "srt", "ass", "ssa", "webvtt", "text"})
"""Subtitle codecs whose cues are text, which ffmpeg can write out as SRT (bitmap ones it cannot)."""


class MediaInfo(BaseModel):
    """What a media file holds, as probed from its streams."""

    path: str
    format: str
    duration: float
    bytes: int
    bitrate: int | None = None
    has_video: bool
    width: int | None = None
    height: int | None = None
    display_aspect: str | None = None
    fps: float | None = None
    video_codec: str | None = None
    pixel_format: str | None = None
    video_duration: float | None = None
    frames: int | None = None
    has_audio: bool
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    audio_duration: float | None = None


def _stream_duration(stream: Any, container_duration: float) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container_duration


def _aspect(width: int, height: int, sar: Fraction | None) -> str:
    ratio = Fraction(width, height) * (sar if sar else 1)
    return f"{ratio.numerator}:{ratio.denominator}"


def existing(path: str | os.PathLike[str], context: str) -> Path:
    """``path`` as a Path, or MediaError naming it (and the caller) when no such file exists."""
    source = Path(path)
    if not source.is_file():
        raise MediaError("file does not exist", context=where(context, source))
    return source


def unreadable(source: Path, context: str, exc: Exception) -> MediaError:
    """The MediaError for a file libav cannot read, carrying libav's own message."""
    return MediaError(
        "not a readable media file",
        context=where(context, source),
        stderr_tail=str(exc),
        hint="check that the file is a complete video, image or audio file (a failed download?)",
    )


def probe(path: str | os.PathLike[str], *, context: str = "") -> MediaInfo:
    """Probe a video, image or audio file; raise MediaError if it is missing or not media.

    ``context`` (e.g. "step 'final_cut'") is put in front of the path in any error.
    """
    source = existing(path, context)
    try:
        with av.open(str(source)) as container:
            duration = float(container.duration / av.time_base) if container.duration else 0.0
            info: dict[str, Any] = {
                "path": str(source),
                "format": container.format.name,
                "duration": duration,
                "bytes": source.stat().st_size,
                "bitrate": container.bit_rate or None,
                "has_video": False,
                "has_audio": False,
            }
            video_streams = [v for v in container.streams.video if v.codec_context.width]
            if video_streams:
                video = video_streams[0]
                ctx = video.codec_context
                rate = video.average_rate or video.guessed_rate
                info.update(
                    has_video=True,
                    width=ctx.width,
                    height=ctx.height,
                    display_aspect=_aspect(ctx.width, ctx.height, video.sample_aspect_ratio),
                    fps=float(rate) if rate else None,
                    video_codec=ctx.codec.canonical_name,
                    pixel_format=ctx.pix_fmt,
                    video_duration=_stream_duration(video, duration),
                    frames=video.frames or None,
                )
            if container.streams.audio:
                audio = container.streams.audio[0]
                actx = audio.codec_context
                info.update(
                    has_audio=True,
                    audio_codec=actx.codec.canonical_name,
                    sample_rate=actx.sample_rate,
                    channels=actx.channels,
                    audio_duration=_stream_duration(audio, duration),
                )
    except _AV_ERRORS as exc:
        raise unreadable(source, context, exc) from exc
    if not info["has_video"] and not info["has_audio"]:
        raise MediaError("file has neither a video nor an audio stream", context=where(context, source))
    return MediaInfo(**info)


@dataclass(frozen=True)
class VideoFacts:
    """The exact (rational) properties of a clip's first video stream that joining depends on.

    ``copy_key`` holds everything that must be equal for packets of two clips to be joined without
    re-encoding: codec, profile, size, pixel format and aspect, frame rate, time base, colour tags
    and the codec's extradata (H.264 SPS/PPS), which one mp4 track can hold only once.
    ``captions`` is the index of the clip's first text subtitle stream (the captions operation's
    soft track), which a cut carries over; None when it has none.
    """

    path: Path
    width: int
    height: int
    sar: Fraction
    rate: Fraction
    duration: Fraction
    start: Fraction
    codec: str
    pixel_format: str
    has_audio: bool
    audio_start: Fraction
    copy_key: tuple[Any, ...]
    captions: int | None = None

    @property
    def display_aspect(self) -> Fraction:
        return Fraction(self.width, self.height) * self.sar


def _seconds(value: int | None, time_base: Fraction | None) -> Fraction | None:
    if value is None or time_base is None:
        return None
    return Fraction(value) * Fraction(time_base)


@contextmanager
def open_video(path: str | os.PathLike[str], context: str) -> Iterator[tuple[Any, Any, Path]]:
    """Open a file's first real video stream: (container, stream, path); PyAV errors become MediaError."""
    source = existing(path, context)
    try:
        with av.open(str(source)) as container:
            streams = [v for v in container.streams.video if v.codec_context.width]
            if not streams:
                raise MediaError("file has no video stream", context=where(context, source))
            yield container, streams[0], source
    except _AV_ERRORS as exc:
        raise unreadable(source, context, exc) from exc


def inspect_video(path: str | os.PathLike[str], *, context: str) -> VideoFacts:
    """Read the exact facts of a clip's first video stream; MediaError if it has none."""
    with open_video(path, context) as (container, video, source):
        ctx = video.codec_context
        rate = Fraction(video.average_rate or video.guessed_rate or 0)
        if rate <= 0:
            raise MediaError("video stream has no frame rate", context=where(context, source))
        container_seconds = Fraction(container.duration or 0, av.time_base)
        duration = _seconds(video.duration, video.time_base) or container_seconds
        if video.frames and abs(Fraction(video.frames) / rate - duration) < 1 / (2 * rate):
            duration = Fraction(video.frames) / rate
        audio = container.streams.audio[0] if container.streams.audio else None
        texts = [s.index for s in container.streams.subtitles if s.codec_context.name in _TEXT_SUBTITLES]
        sar = Fraction(video.sample_aspect_ratio or 1)
        colour = (ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc)
        copy_key = (
            ctx.codec.canonical_name,
            ctx.profile,
            ctx.width,
            ctx.height,
            ctx.pix_fmt,
            sar,
            rate,
            Fraction(video.time_base),
            colour,
            bytes(ctx.extradata or b""),
        )
        return VideoFacts(
            path=source,
            width=ctx.width,
            height=ctx.height,
            sar=sar,
            rate=rate,
            duration=duration,
            start=_seconds(video.start_time, video.time_base) or Fraction(0),
            codec=ctx.codec.canonical_name,
            pixel_format=ctx.pix_fmt or "",
            has_audio=audio is not None,
            audio_start=(_seconds(audio.start_time, audio.time_base) or Fraction(0))
            if audio
            else Fraction(0),
            copy_key=copy_key,
            captions=texts[0] if texts else None,
        )
