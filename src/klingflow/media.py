"""The one module that runs ffmpeg: locating it, running graphs, and probing files.

ffmpeg comes with the install: ``imageio-ffmpeg`` bundles a static build (libx264, aac,
libmp3lame, xfade). A system ffmpeg on PATH wins when there is one, and ``KLINGFLOW_FFMPEG``
names a binary explicitly. Probing uses PyAV (its own libav), so no ffprobe binary is needed and
durations are exact stream durations, not the container's rounded header.

Every failure is a :class:`~klingflow.errors.MediaError` naming the file and carrying the tail of
ffmpeg's stderr.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import ffmpeg
from pydantic import BaseModel

from klingflow.errors import MediaError

__all__ = ["MediaInfo", "ffmpeg_executable", "probe", "run_ffmpeg"]

_STDERR_TAIL_LINES = 12


@functools.cache
def ffmpeg_executable() -> str:
    """Return the ffmpeg binary to run: ``KLINGFLOW_FFMPEG``, else ffmpeg on PATH, else the bundled one."""
    explicit = os.environ.get("KLINGFLOW_FFMPEG")
    if explicit:
        return explicit
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _tail(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return "\n".join(text.strip().splitlines()[-_STDERR_TAIL_LINES:])


def run_ffmpeg(
    graph: Any | Sequence[str],
    *,
    context: str,
    input_bytes: bytes | None = None,
) -> None:
    """Run an ffmpeg-python graph (or a ready argument list) and raise MediaError on failure.

    ``context`` says what was being made (e.g. the output path and step) so the error is useful.
    """
    if isinstance(graph, Sequence) and not isinstance(graph, str):
        args = [ffmpeg_executable(), *graph]
    else:
        args = ffmpeg.compile(graph, cmd=ffmpeg_executable(), overwrite_output=True)
    args = [args[0], "-hide_banner", "-nostdin", "-loglevel", "error", *args[1:]]
    if input_bytes is not None:
        args.remove("-nostdin")
    try:
        done = subprocess.run(args, input=input_bytes, capture_output=True, check=False)
    except OSError as exc:
        raise MediaError(
            f"could not start ffmpeg ({args[0]})",
            context=context,
            hint="install the project again (imageio-ffmpeg bundles ffmpeg) or set KLINGFLOW_FFMPEG",
        ) from exc
    if done.returncode != 0:
        raise MediaError(
            f"ffmpeg exited with code {done.returncode}", context=context, stderr_tail=_tail(done.stderr)
        )


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


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Probe a video, image or audio file; raise MediaError if it is missing or not media."""
    source = Path(path)
    if not source.is_file():
        raise MediaError("file does not exist", context=str(source))
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
    except (av.error.FFmpegError, ValueError, ZeroDivisionError) as exc:
        raise MediaError(f"not a readable media file ({exc})", context=str(source)) from exc
    if not info["has_video"] and not info["has_audio"]:
        raise MediaError("file has neither a video nor an audio stream", context=str(source))
    return MediaInfo(**info)
