"""Procedural rendering of each emulated Kling endpoint's output, with real ffmpeg.

Nobody here can reach fal, so the emulator renders media that honours each request the way a
pipeline relies on: the clip length, Kling's output size for the aspect ratio, 30 fps H.264 with no
audio track (as Kling v1 delivers), image-to-video starting from the image and ending on the tail
image, ai-avatar as long as its audio with that audio muxed in, TTS length following the text and
the voice speed, a video input re-shot at the output size (video-to-video, lipsync, video-to-audio).
Every frame carries a banner saying it is an emulator render. Which function renders which endpoint,
and at what length and size, is decided from the endpoint's schema by :mod:`klingflow.emulator.outputs`.

The contract every function keeps:

* keyword arguments only; exactly one file is written, at ``out``, and it appears there whole
  (ffmpeg writes a partial name in the same directory that is then renamed over ``out``);
* deterministic: the same arguments and input files give byte-identical output (bitexact flags, no
  metadata, fixed encoder threads, seeds from a sha256 of the arguments), so the emulator's cache
  and content-addressed store see stable hashes;
* ffmpeg runs only through :func:`klingflow.media.run_ffmpeg`, and failures are ``MediaError``.

Example:
    >>> render_text_to_video(prompt="a fox at night", duration=5, aspect_ratio="16:9",
    ...                      camera_control=None, advanced_camera_control=None,
    ...                      out=Path("fox.mp4"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ffmpeg
from PIL import Image

from klingflow._files import atomic_path
from klingflow.emulator._render_audio import SPEECH_RATE, filled_speech_pcm, speech_pcm, tone_pcm
from klingflow.emulator._render_camera import (
    CANVAS_SCALE,
    FPS,
    CameraMotion,
    camera_motion,
    loop_still,
    roll_over,
    zoom_over,
)
from klingflow.emulator._render_effects import dual_effect, single_effect, trajectory_markers
from klingflow.emulator._render_scene import fitted_image, image_size, scene_canvas
from klingflow.emulator.labels import banner_image, placeholder_picture, seed_of
from klingflow.endpoints import DUAL_IMAGE_SCENES
from klingflow.errors import MediaError
from klingflow.media import probe, run_ffmpeg

__all__ = [
    "FPS",
    "nearest_size",
    "output_size",
    "placeholder_audio",
    "placeholder_image",
    "render_ai_avatar",
    "render_effects",
    "placeholder_video",
    "render_from_video",
    "render_image_to_video",
    "render_soundtrack",
    "render_stock_clip",
    "render_text_to_video",
    "render_tts",
]

_SIZES: dict[str, tuple[int, int]] = {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960)}
_AVATAR_AUDIO_RATE = 48_000
# veryfast at crf 33 keeps a 5 s 720p clip near a second of CPU and ~150 kB; bitexact flags, no
# metadata and a fixed encoder thread count make the bytes depend on the inputs only.
_VIDEO_OPTIONS: dict[str, Any] = {
    "c:v": "libx264",
    "preset": "veryfast",
    "crf": 33,
    "pix_fmt": "yuv420p",
    "threads": 2,
    "movflags": "+faststart",
    "map_metadata": -1,
    "fflags": "+bitexact",
    "flags:v": "+bitexact",
    "r": FPS,
    "f": "mp4",
}


def output_size(aspect_ratio: str) -> tuple[int, int]:
    """Kling v1 standard's output size (width, height) for an aspect ratio."""
    if aspect_ratio not in _SIZES:
        raise ValueError(f"aspect_ratio {aspect_ratio!r} is not one of {sorted(_SIZES)}")
    return _SIZES[aspect_ratio]


def nearest_size(width: int, height: int) -> tuple[int, int]:
    """The Kling output size whose aspect is closest (in log ratio) to a picture's."""
    aspect = math.log(width / height)
    return min(_SIZES.values(), key=lambda size: abs(math.log(size[0] / size[1]) - aspect))


def _frame_count(duration: float) -> int:
    """Whole frames for ``duration`` seconds, so probed durations are exact multiples of 1/30 s."""
    frames = round(duration * FPS)
    if frames < 1:
        raise ValueError(f"duration must be positive, got {duration!r}")
    return frames


def _still(picture: Image.Image, tmp: Path, name: str) -> Any:
    """Save a picture as PNG and return it as a one-frame ffmpeg input at 30 fps."""
    path = tmp / f"{name}.png"
    picture.save(path, compress_level=1)
    return ffmpeg.input(str(path), framerate=FPS)


def _labelled(video: Any, tmp: Path, size: tuple[int, int], *, title: str, prompt: str) -> Any:
    """Overlay the emulator banner along the bottom of every frame.

    The banner is a one-frame input that overlay repeats, so it is decoded once, not per frame.
    """
    band = banner_image(*size, title=title, prompt=prompt)
    banner = _still(band, tmp, "banner")
    return ffmpeg.overlay(video, banner, x=0, y=size[1] - band.height, eof_action="repeat")


def _write_video(video: Any, *, frames: int, out: Path, context: str, audio: Any = None) -> None:
    """Encode H.264 (+ AAC when ``audio`` is given) into an mp4 at ``out``, atomically."""
    options = dict(_VIDEO_OPTIONS, **{"frames:v": frames})
    if audio is None:
        options["an"] = None
        streams = [video]
    else:
        options.update({"c:a": "aac", "b:a": "128k", "ar": _AVATAR_AUDIO_RATE, "flags:a": "+bitexact"})
        streams = [video, audio]
    with atomic_path(out) as partial:
        run_ffmpeg(ffmpeg.output(*streams, str(partial), **options), context=context)


def render_text_to_video(
    *,
    prompt: str,
    duration: float,
    aspect_ratio: str,
    camera_control: str | None,
    advanced_camera_control: Mapping[str, Any] | None,
    out: Path,
) -> None:
    """A silent clip over a procedural landscape drawn from the prompt, moved by the camera controls.

    The canvas is larger than the frame (see ``CANVAS_SCALE``) so slides, zooms and rolls stay
    inside the picture; with no camera control the camera drifts gently.
    """
    size = output_size(aspect_ratio)
    frames = _frame_count(duration)
    motion = camera_motion(camera_control, advanced_camera_control)
    canvas_size = (round(size[0] * CANVAS_SCALE / 2) * 2, round(size[1] * CANVAS_SCALE / 2) * 2)
    with tempfile.TemporaryDirectory(prefix="klingflow-render-") as tmp_name:
        tmp = Path(tmp_name)
        scene = _still(scene_canvas(prompt, canvas_size), tmp, "scene")
        if motion.roll:
            video = roll_over(scene, frames=frames, size=size, motion=motion)
        else:
            video = zoom_over(
                scene.filter("format", "yuv420p"),
                frames=frames,
                size=size,
                start_zoom=CANVAS_SCALE,
                motion=motion,
            )
        video = _labelled(video, tmp, size, title="text-to-video", prompt=prompt)
        _write_video(video, frames=frames, out=out, context=f"text-to-video render {out}")


def render_image_to_video(
    *,
    prompt: str,
    duration: float,
    image: Path,
    tail_image: Path | None,
    dynamic_masks: list[dict[str, Any]] | None,
    out: Path,
    size: tuple[int, int] | None = None,
) -> None:
    """A slow Ken Burns move over the image, at the Kling size nearest the image's aspect.

    With ``tail_image`` the clip crossfades into the tail image, which zooms out to land exactly
    on its full frame at the end, so the last frame is the tail image (as Kling's end frame is).
    Motion-brush trajectories are drawn as markers travelling along their paths. ``size`` overrides
    the image's aspect where the endpoint takes an ``aspect_ratio`` (elements, reference-to-video).
    """
    source_size = image_size(image)
    size = size or nearest_size(*source_size)
    frames = _frame_count(duration)
    seed = seed_of("image-to-video", prompt, duration)
    drift = CameraMotion(
        zoom=1.15, travel_x=((seed % 200) - 100) / 1000, travel_y=((seed >> 8) % 100 - 50) / 1000
    )
    with tempfile.TemporaryDirectory(prefix="klingflow-render-") as tmp_name:
        tmp = Path(tmp_name)
        picture = fitted_image(image, size)
        if dynamic_masks:
            moving = trajectory_markers(
                picture, tmp, masks=dynamic_masks, source_size=source_size, size=size, frames=frames
            )
            video = zoom_over(
                moving, frames=frames, size=size, start_zoom=1.0, motion=drift, single_frame=False
            )
        else:
            start = _still(picture, tmp, "start").filter("format", "yuv420p")
            video = zoom_over(start, frames=frames, size=size, start_zoom=1.0, motion=drift)
        if tail_image is not None:
            hold = max(1, frames // 5)
            tail_frames = frames - hold
            tail = _still(fitted_image(tail_image, size), tmp, "tail").filter("format", "yuv420p")
            landing = zoom_over(
                tail, frames=tail_frames, size=size, start_zoom=1.15, motion=CameraMotion(zoom=1 / 1.15)
            )
            fade = (tail_frames - hold) / FPS
            video = ffmpeg.filter(
                [video, landing],
                "xfade",
                transition="fade",
                duration=f"{fade:.6f}",
                offset=f"{hold / FPS:.6f}",
            )
        video = _labelled(video, tmp, size, title="image-to-video", prompt=prompt)
        _write_video(video, frames=frames, out=out, context=f"image-to-video render {out}")


def render_stock_clip(*, title: str, prompt: str, size: tuple[int, int], frames: int, out: Path) -> None:
    """A still procedural scene held for ``frames`` frames, with the emulator banner: the cheap clip
    the benchmark mode renders once per (endpoint, size, length) and hands out to every request."""
    with tempfile.TemporaryDirectory(prefix="klingflow-render-") as tmp_name:
        tmp = Path(tmp_name)
        scene = _still(scene_canvas(prompt, size), tmp, "scene").filter("format", "yuv420p")
        video = _labelled(loop_still(scene, frames), tmp, size, title=title, prompt=prompt)
        _write_video(video, frames=frames, out=out, context=f"{title} stock render {out}")


def render_from_video(
    *, title: str, prompt: str, video: Path, size: tuple[int, int], frames: int, restyle: bool, out: Path
) -> None:
    """The input video's frames at ``size`` (scaled to fill, centre-cropped), 30 fps, ``frames`` long.

    A shorter input holds its last frame; a longer one is cut. ``restyle`` shifts the colours, so an
    edit or a new shot in the input's style (video-to-video) is visibly not the input, while lipsync
    and video-to-audio keep the picture as it was. The result is silent: sound is muxed in after.
    """
    with tempfile.TemporaryDirectory(prefix="klingflow-render-") as tmp_name:
        tmp = Path(tmp_name)
        width, height = size
        moving = (
            ffmpeg.input(str(video))
            .video.filter("fps", FPS)
            .filter("scale", width, height, force_original_aspect_ratio="increase")
            .filter("crop", width, height)
            .filter("setsar", 1)
            .filter("tpad", stop_mode="clone", stop=frames)
            .filter("format", "yuv420p")
        )
        if restyle:
            moving = moving.filter("hue", h=seed_of("restyle", prompt) % 300 + 30, s=1.25)
        moving = _labelled(moving, tmp, size, title=title, prompt=prompt)
        _write_video(moving, frames=frames, out=out, context=f"{title} render {out}")


def render_effects(*, effect_scene: str, duration: float, images: list[Path], out: Path) -> None:
    """The image(s) with a procedural effect: one image pulses or swirls, two move toward each other.

    The size is the Kling size nearest the first image's aspect. With no images (fal's quick start
    sends only ``effect_scene``) labelled placeholder portraits stand in: two for the two-person
    scenes (hug, kiss, ...), one otherwise. Images beyond the second are ignored.
    """
    frames = _frame_count(duration)
    with tempfile.TemporaryDirectory(prefix="klingflow-render-") as tmp_name:
        tmp = Path(tmp_name)
        pictures = list(images[:2])
        if not pictures:
            for index in range(2 if effect_scene in DUAL_IMAGE_SCENES else 1):
                stand_in = tmp / f"placeholder-{index}.png"
                placeholder_picture(f"effects: {effect_scene} #{index + 1}", (1024, 1024)).save(stand_in)
                pictures.append(stand_in)
        size = nearest_size(*image_size(pictures[0]))
        if len(pictures) == 2:
            video = dual_effect(effect_scene, tmp, pictures, size=size, frames=frames)
        else:
            picture = _still(fitted_image(pictures[0], size), tmp, "picture")
            video = single_effect(effect_scene, picture, size=size, frames=frames)
        noun = "image" if len(pictures) == 1 else "images"
        summary = f"effect_scene={effect_scene}, {len(pictures)} {noun}"
        video = _labelled(video, tmp, size, title=f"effects: {effect_scene}", prompt=summary)
        _write_video(video, frames=frames, out=out, context=f"effects render {out}")


def render_ai_avatar(*, prompt: str, image: Path, audio: Path, out: Path) -> float:
    """The image with a subtle talking bounce, as long as the audio, with that audio as AAC.

    The clip has a whole number of frames, and the audio is padded or trimmed to exactly that
    length, so the video and audio durations agree. Returns the clip's duration in seconds.
    """
    heard = probe(audio)
    if not heard.has_audio:
        raise MediaError("the avatar's audio input has no audio stream", context=str(audio))
    frames = _frame_count(max(heard.audio_duration or heard.duration, 1 / FPS))
    samples = frames * _AVATAR_AUDIO_RATE // FPS
    size = nearest_size(*image_size(image))
    with tempfile.TemporaryDirectory(prefix="klingflow-render-") as tmp_name:
        tmp = Path(tmp_name)
        face = _still(fitted_image(image, size), tmp, "face").filter("format", "yuv420p")
        beat = f"abs(sin(2*PI*on*1.9/{FPS}))*abs(sin(2*PI*on*0.37/{FPS}))"
        video = face.filter(
            "zoompan",
            z=f"1.06+0.015*{beat}",
            x=f"iw/2-iw/zoom/2+4*sin(2*PI*on*0.23/{FPS})",
            y=f"ih/2-ih/zoom/2-ih*0.012*{beat}",
            d=frames,
            s=f"{size[0]}x{size[1]}",
            fps=FPS,
        )
        video = _labelled(video, tmp, size, title="ai-avatar", prompt=prompt)
        voice = (
            ffmpeg.input(str(audio))
            .audio.filter("aresample", _AVATAR_AUDIO_RATE)
            .filter("apad", whole_len=samples)
            .filter("atrim", end_sample=samples)
        )
        _write_video(video, frames=frames, out=out, context=f"ai-avatar render {out}", audio=voice)
    return frames / FPS


def _write_mp3(pcm: bytes, *, rate: int, title: str, out: Path, context: str) -> None:
    """Encode mono s16le samples to MP3 (libmp3lame, bitexact, only a title tag) at ``out``."""
    with atomic_path(out) as partial:
        arguments = [
            *f"-f s16le -ar {rate} -ac 1 -i pipe:0 -c:a libmp3lame -b:a 64k".split(),
            *"-map_metadata -1 -fflags +bitexact -flags:a +bitexact".split(),
            *["-metadata", f"title={title}", "-f", "mp3", "-y", str(partial)],
        ]
        run_ffmpeg(arguments, context=context, input_bytes=pcm)


def render_tts(*, text: str, voice_id: str, voice_speed: float, out: Path) -> float:
    """Speech-like MP3 for ``text``: voice-dependent pitch, about 14 characters a second at speed 1.

    Returns the probed duration of the written file.
    """
    _write_mp3(
        speech_pcm(text, voice_id, voice_speed),
        rate=SPEECH_RATE,
        title=f"KLING EMULATOR RENDER: tts {voice_id}",
        out=out,
        context=f"tts render {out}",
    )
    return probe(out).duration


def render_soundtrack(*, text: str, voice_id: str, seconds: float, out: Path) -> None:
    """Speech-like MP3 spoken from ``text`` at whatever pace fills ``seconds``: the sound of a video
    whose endpoint generates audio (a prompt's dialogue, lipsync's text, video-to-audio's effects)."""
    _write_mp3(
        filled_speech_pcm(text, voice_id, seconds),
        rate=SPEECH_RATE,
        title=f"KLING EMULATOR RENDER: generated audio {voice_id}",
        out=out,
        context=f"soundtrack render {out}",
    )


def placeholder_image(*, label: str, out: Path, size: tuple[int, int] = (1024, 1024)) -> None:
    """A PNG standing in for an image input that could not be fetched, labelled PLACEHOLDER + label."""
    with atomic_path(out) as partial:
        placeholder_picture(label, size).save(partial, format="PNG")


def placeholder_video(*, label: str, out: Path, seconds: float = 5.0) -> None:
    """A silent 360p clip of the placeholder picture, standing in for a video input that could not be
    fetched; the picture says PLACEHOLDER and what it stands for."""
    frames = _frame_count(seconds)
    size = (640, 360)
    with tempfile.TemporaryDirectory(prefix="klingflow-render-") as tmp_name:
        still = _still(placeholder_picture(label, size), Path(tmp_name), "placeholder")
        video = loop_still(still.filter("format", "yuv420p"), frames)
        _write_video(video, frames=frames, out=out, context=f"placeholder video {out}")


def placeholder_audio(*, label: str, out: Path, seconds: float = 3.0) -> None:
    """An MP3 soft tone standing in for an audio input that could not be fetched.

    Audio cannot be visibly labelled, so the label is in its title tag ("PLACEHOLDER: <label>").
    """
    rate = 44_100
    _write_mp3(
        tone_pcm(label, seconds, rate),
        rate=rate,
        title=f"PLACEHOLDER: {label}",
        out=out,
        context=f"placeholder audio {out}",
    )
