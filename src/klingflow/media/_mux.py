"""Putting an audio track under a video: replacing its sound or mixing into it.

The video is the master: its frames are copied untouched unless ``fit="pad"`` must hold the last
frame while longer audio finishes. The audio is always fitted to the output's length to the
sample, and written as 48 kHz stereo AAC, the same layout :func:`concat` produces by default, so a
muxed clip can later be joined to others without a surprise.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Literal

import ffmpeg

from klingflow._files import atomic_path
from klingflow.errors import MediaError
from klingflow.media._audio import AUDIO_ENCODE, OUTPUT_CHANNELS, OUTPUT_RATE, fitted_audio
from klingflow.media._concat import MP4_OPTIONS, VIDEO_ENCODE
from klingflow.media._probe import inspect_video, probe
from klingflow.media._run import run_ffmpeg, where

__all__ = ["mux_audio"]

_SYNC_SECONDS = 0.05


def mux_audio(
    video: Path,
    audio: Path,
    out: Path,
    *,
    mode: Literal["replace", "mix"] = "replace",
    fit: Literal["trim", "pad", "loop"] = "trim",
    context: str = "",
) -> Path:
    """Write ``video`` with ``audio`` as its sound track to ``out`` (mp4, H.264 + AAC).

    ``mode``: ``"replace"`` drops the video's own sound; ``"mix"`` mixes the two, each at half
    amplitude so the sum cannot clip (a video without sound is then simply given ``audio``).

    ``fit`` says what happens when the lengths differ; the video's length wins unless noted:

    * ``"trim"``: longer audio is cut at the video's end; shorter audio is followed by silence.
    * ``"pad"``: longer audio plays to its end while the video holds its last frame (the video
      is then re-encoded); shorter audio is followed by silence.
    * ``"loop"``: the audio repeats until the video ends, cut there.

    Example:
        >>> mux_audio(Path("shot.mp4"), Path("voice.mp3"), Path("shot-voiced.mp4"),
        ...           fit="pad", context="step 'voice_over'")  # doctest: +SKIP
    """
    clip = inspect_video(video, context=context)
    sound = probe(audio, context=context)
    if not sound.has_audio:
        raise MediaError("file has no audio stream to mux", context=where(context, audio))
    sound_seconds = Fraction(sound.audio_duration or sound.duration)
    frames = round(clip.duration * clip.rate)
    hold = fit == "pad" and sound_seconds > clip.duration
    if hold:
        frames = math.ceil(sound_seconds * clip.rate)
    seconds = Fraction(frames) / clip.rate
    samples = round(seconds * OUTPUT_RATE)
    picture = ffmpeg.input(str(video))
    loops = {"stream_loop": -1} if fit == "loop" else {}
    track = fitted_audio(
        ffmpeg.input(str(audio), **loops)["a:0"], samples=samples, rate=OUTPUT_RATE, channels=OUTPUT_CHANNELS
    )
    if mode == "mix" and clip.has_audio:
        own = fitted_audio(
            picture["a:0"],
            samples=samples,
            rate=OUTPUT_RATE,
            channels=OUTPUT_CHANNELS,
            offset=clip.audio_start - clip.start,
        )
        track = ffmpeg.filter([own, track], "amix", inputs=2, duration="first", dropout_transition=0)
    if hold:
        extra = frames - round(clip.duration * clip.rate)
        moving = picture["v:0"].filter("tpad", stop_mode="clone", stop=extra).filter("trim", end_frame=frames)
        options = {**VIDEO_ENCODE, **AUDIO_ENCODE, **MP4_OPTIONS}
    else:
        moving = picture["v:0"]
        options = {"c:v": "copy", **AUDIO_ENCODE, **MP4_OPTIONS}
    doing = where(context, out) + f" (muxing {audio} into {video}, {mode}, fit {fit})"
    with atomic_path(out) as partial:
        run_ffmpeg(ffmpeg.output(moving, track, str(partial), **options), context=doing)
        info = probe(partial, context=doing)
        frame = float(1 / clip.rate)
        if info.video_duration is None or abs(info.video_duration - float(seconds)) > frame + 1e-6:
            raise MediaError(
                f"the video came out {info.video_duration} s long, expected {float(seconds):.3f} s",
                context=doing,
            )
        if info.audio_duration is None or abs(info.audio_duration - info.video_duration) > _SYNC_SECONDS:
            raise MediaError(
                f"the audio came out {info.audio_duration} s long, expected {float(seconds):.3f} s",
                context=doing,
            )
    return out
