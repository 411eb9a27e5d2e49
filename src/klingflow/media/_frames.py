"""Single frames as PNG: the first, the last, or the one shown at a given time.

Frames are decoded with PyAV, never taken from a seek approximation: decoding starts at a keyframe
at or before the wanted time and runs forward to it (or, for the last frame, to the end of the
stream), so the picture is exactly the decoded frame. That matters for image-to-video
continuation, where the next shot must start on the very frame the previous one ended on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image

from klingflow._files import atomic_path
from klingflow.errors import MediaError
from klingflow.media._probe import open_video
from klingflow.media._run import where

__all__ = ["first_frame", "frame_at", "frames_at", "last_frame", "save_png", "thumbnail", "video_seconds"]

_AV_ERRORS = (av.error.FFmpegError, ValueError, ZeroDivisionError)
# Decoding from this far before the end costs at most a GOP more than needed, and spares decoding
# a long cut from its start just to reach its final frame.
_TAIL_SECONDS = 2
_EPSILON = Fraction(1, 1_000_000)


@contextmanager
def _video(path: str | os.PathLike[str], context: str) -> Iterator[tuple[Any, Any]]:
    """Open a file's first video stream for (threaded) decoding."""
    with open_video(path, context) as (container, stream, _source):
        stream.thread_type = "AUTO"
        yield container, stream


def _start(stream: Any) -> Fraction:
    return Fraction(stream.start_time or 0) * Fraction(stream.time_base)


def _stream_seconds(container: Any, stream: Any) -> Fraction:
    if stream.duration is not None:
        return Fraction(stream.duration) * Fraction(stream.time_base)
    return Fraction(container.duration or 0, av.time_base)


def video_seconds(video: Path, *, context: str) -> float:
    """The video stream's duration in seconds."""
    with _video(video, context) as (container, stream):
        return float(_stream_seconds(container, stream))


def _seek(container: Any, stream: Any, seconds: Fraction) -> None:
    """Jump to the keyframe at or before ``seconds`` (absolute stream time)."""
    container.seek(int(seconds / Fraction(stream.time_base)), stream=stream, backward=True)


def _decoded_at(container: Any, stream: Any, seconds: Fraction | None) -> Any:
    """The frame on screen at ``seconds`` (absolute), or the last frame when ``seconds`` is None."""
    chosen = None
    for frame in container.decode(stream):
        if seconds is not None and chosen is not None and frame.time is not None:
            if Fraction(frame.time) > seconds + _EPSILON:
                break
        chosen = frame
    return chosen


def frame_at(video: Path, seconds: float | None, *, context: str) -> Image.Image:
    """Decode the frame shown ``seconds`` after the video starts (None: the last frame) as RGB."""
    with _video(video, context) as (container, stream):
        start = _start(stream)
        if seconds is None:
            jump = start + _stream_seconds(container, stream) - _TAIL_SECONDS
            wanted = None
        else:
            jump = wanted = start + Fraction(seconds)
        sought = jump > start
        if sought:
            _seek(container, stream, jump)
        frame = _decoded_at(container, stream, wanted)
        landed_late = (
            frame is not None and wanted is not None and Fraction(frame.time or 0) > wanted + _EPSILON
        )
        if sought and (frame is None or landed_late):
            # The index put the keyframe after the wanted time: decode from the start instead.
            container.seek(0, stream=stream, backward=True)
            frame = _decoded_at(container, stream, wanted)
        if frame is None:
            raise MediaError("no video frame could be decoded", context=where(context, video))
        return frame.to_image()


def frames_at(
    video: Path,
    seconds: Sequence[float],
    *,
    context: str,
    size: tuple[int, int] | None = None,
    exact: bool = True,
) -> list[Image.Image]:
    """The frames on screen at each of the ascending ``seconds``, in one forward decoding pass.

    One pass beats a seek per frame here: generated clips are often a single GOP, so every seek
    would decode from the first frame again. With ``size`` (width, height) each picture is scaled
    while it is converted (ffmpeg's area scaler), far cheaper than converting the full frame and
    resizing it in Pillow. ``exact=False`` (thumbnails) skips decoding frames no other frame
    refers to, about half of an H.264 clip: a picture may then be the reference frame a frame or
    two before the wanted time.
    """
    scale = {} if size is None else {"width": size[0], "height": size[1], "interpolation": "AREA"}
    with _video(video, context) as (container, stream):
        if not exact:
            stream.codec_context.skip_frame = "NONREF"
        start = _start(stream)
        decoded = container.decode(stream)
        current, upcoming = next(decoded, None), next(decoded, None)
        if current is None:
            raise MediaError("no video frame could be decoded", context=where(context, video))
        pictures = []
        for wanted in sorted(start + Fraction(value) for value in seconds):
            while upcoming is not None and Fraction(upcoming.time or 0) <= wanted + _EPSILON:
                current, upcoming = upcoming, next(decoded, None)
            pictures.append(current.to_image(**scale))
        return pictures


def save_png(picture: Image.Image, out: Path) -> Path:
    """Write ``picture`` as PNG at ``out`` atomically and return ``out``."""
    with atomic_path(out) as partial:
        picture.save(partial, format="PNG")
    return out


def last_frame(video: Path, out: Path, *, context: str = "") -> Path:
    """Write the video's last decoded frame as PNG at ``out``, for image-to-video continuation.

    Exact: decoding runs to the end of the stream from a keyframe before it, and the final
    decoded frame is kept; it is not the nearest keyframe or a time-based seek.

    Example:
        >>> last_frame(Path("shot1.mp4"), Path("shot1-end.png"), context="step 'shot1'")  # doctest: +SKIP
    """
    return save_png(frame_at(video, None, context=context), out)


def first_frame(video: Path, out: Path, *, context: str = "") -> Path:
    """Write the video's first decoded frame as PNG at ``out``."""
    return save_png(frame_at(video, 0.0, context=context), out)


def thumbnail(video: Path, out: Path, *, at: float = 0.0, context: str = "") -> Path:
    """Write the frame on screen ``at`` seconds into the video as PNG at ``out``.

    ``at`` must lie within the video (0 to its duration; the duration gives the last frame).
    """
    length = video_seconds(video, context=context)
    if not 0 <= at <= length:
        raise MediaError(
            f"no frame at {at:g} s: the video lasts {length:.3f} s",
            context=where(context, video),
            hint="choose a time between 0 and the video's duration",
        )
    return save_png(frame_at(video, at, context=context), out)


def preview(video: Path, max_side: int, *, context: str = "") -> Image.Image:
    """A small picture of the video's middle frame, at most ``max_side`` pixels on its longer side.

    Decoded scaled and without the non-reference frames (:func:`frames_at`), straight to a
    picture: about a third of the time of writing the full frame as PNG and shrinking that.
    """
    length = video_seconds(video, context=context)
    with _video(video, context) as (_container, stream):
        width, height = stream.codec_context.width, stream.codec_context.height
    ratio = min(1.0, max_side / max(width, height, 1))
    size = (max(2, round(width * ratio)), max(2, round(height * ratio)))
    return frames_at(video, [length / 2], context=context, size=size, exact=False)[0]
