"""Filter graphs for the effects endpoint and for image-to-video's motion-brush markers.

Effects are stand-ins, not imitations of Kling's scenes: one image pulses, swirls its colours or is
revealed by a zoom-out with flashes (chosen by a hash of the scene name, so a scene always looks
the same); two images are cards that slide toward each other over a backdrop, as the two people
of a hug or kiss scene come together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ffmpeg
from PIL import Image, ImageDraw, ImageOps

from klingflow.emulator._render_camera import FPS, CameraMotion, loop_still, zoom_over
from klingflow.emulator._render_scene import effect_backdrop, fitted_image, image_size, marker_image
from klingflow.emulator.labels import seed_of

__all__ = ["dual_effect", "single_effect", "trajectory_markers"]

_MAX_PATH_POINTS = 16
_MARKER_COLOURS = (
    (255, 64, 64),
    (64, 160, 255),
    (80, 220, 100),
    (255, 200, 40),
    (200, 90, 255),
    (0, 220, 220),
)


def single_effect(effect_scene: str, picture: Any, *, size: tuple[int, int], frames: int) -> Any:
    """One image with a procedural effect picked by the scene name: pulse, hue swirl or reveal."""
    seconds = frames / FPS
    style = ("pulse", "swirl", "reveal")[seed_of("effect-style", effect_scene) % 3]
    still = picture.filter("format", "yuv420p")
    if style == "pulse":
        return still.filter(
            "zoompan",
            z=f"1.1+0.07*sin(2*PI*on*1.2/{FPS})",
            x="iw/2-iw/zoom/2",
            y="ih/2-ih/zoom/2",
            d=frames,
            s=f"{size[0]}x{size[1]}",
            fps=FPS,
        )
    if style == "swirl":
        moving = zoom_over(still, frames=frames, size=size, start_zoom=1.0, motion=CameraMotion(zoom=1.2))
        return moving.filter("hue", h=f"360*t/{seconds:.6f}", s="1.3")
    moving = zoom_over(still, frames=frames, size=size, start_zoom=1.5, motion=CameraMotion(zoom=1 / 1.5))
    return moving.filter("eq", brightness="0.25*pow(sin(PI*t*1.5),8)", eval="frame")


def _card(image: Path, box: tuple[float, float]) -> Image.Image:
    """The whole image (not cropped) as a white-bordered card as large as fits in ``box``."""
    source_w, source_h = image_size(image)
    scale = min(box[0] / source_w, box[1] / source_h)
    border = max(2, round(min(box) / 60))
    inner = (max(2, round(source_w * scale) - 2 * border), max(2, round(source_h * scale) - 2 * border))
    return ImageOps.expand(fitted_image(image, inner), border=border, fill=(255, 255, 255))


def dual_effect(
    effect_scene: str, tmp: Path, images: list[Path], *, size: tuple[int, int], frames: int
) -> Any:
    """Two cards that slide in from the sides, overlap a little at 80% of the clip, and sway."""
    width, height = size
    backdrop_path = tmp / "backdrop.png"
    effect_backdrop(effect_scene, size).save(backdrop_path, compress_level=1)
    video = loop_still(ffmpeg.input(str(backdrop_path), framerate=FPS), frames).filter("format", "yuv420p")
    arrive = f"min(1,t/{frames / FPS * 0.8:.6f})"
    ease = f"({arrive})*({arrive})*(3-2*({arrive}))"
    for index, image in enumerate(images):
        card = _card(image, (width * 0.42, height * 0.66))
        path = tmp / f"card-{index}.png"
        card.save(path, compress_level=1)
        start, end = width * 0.03, width * 0.55 - card.width
        inset = f"({start:.3f}+({end - start:.3f})*{ease})"
        x = inset if index == 0 else f"{width - card.width}-{inset}"
        y = f"{(height - card.height) / 2:.3f}+{height * 0.012:.3f}*sin(2*PI*t*1.3+{index * 1.7})"
        video = ffmpeg.overlay(video, ffmpeg.input(str(path), framerate=FPS), x=x, y=y, eof_action="repeat")
    return video


def _frame_points(
    points: list[dict[str, Any]], source_size: tuple[int, int], size: tuple[int, int]
) -> list[tuple[float, float]]:
    """Map Kling trajectory points (image pixels, origin bottom-left) into the fitted frame."""
    source_w, source_h = source_size
    scale = max(size[0] / source_w, size[1] / source_h)
    offset_x, offset_y = (source_w * scale - size[0]) / 2, (source_h * scale - size[1]) / 2
    mapped = [
        (float(p["x"]) * scale - offset_x, (source_h - float(p["y"])) * scale - offset_y) for p in points
    ]
    if len(mapped) > _MAX_PATH_POINTS:
        step = (len(mapped) - 1) / (_MAX_PATH_POINTS - 1)
        mapped = [mapped[round(i * step)] for i in range(_MAX_PATH_POINTS)]
    return mapped


def _along(values: list[float], frames: int) -> str:
    """An ffmpeg expression for a value moving linearly through ``values`` over the clip (by frame n)."""
    segments = len(values) - 1
    if segments == 0:
        return f"{values[0]:.2f}"
    u = f"min(n*{segments}/{max(1, frames - 1)},{segments})"
    expression = f"{values[-1]:.2f}"
    for i in reversed(range(segments)):
        a, b = values[i], values[i + 1]
        expression = f"if(lt({u},{i + 1}),{a:.2f}+({b - a:.2f})*({u}-{i}),{expression})"
    return expression


def trajectory_markers(
    picture: Image.Image,
    tmp: Path,
    *,
    masks: list[dict[str, Any]],
    source_size: tuple[int, int],
    size: tuple[int, int],
    frames: int,
) -> Any:
    """The fitted picture with each mask's path drawn on it and a marker travelling along it.

    Returns one frame per output frame, so the camera moves over the markers as over the picture.
    """
    picture = picture.copy()
    draw = ImageDraw.Draw(picture)
    diameter = max(12, min(size) // 28)
    paths = []
    for index, mask in enumerate(masks):
        points = _frame_points(list(mask.get("trajectories") or []), source_size, size)
        if not points:
            continue
        colour = _MARKER_COLOURS[index % len(_MARKER_COLOURS)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=max(2, diameter // 6), joint="curve")
        paths.append((points, colour))
    base_path = tmp / "motion-brush.png"
    picture.save(base_path, compress_level=1)
    video = loop_still(ffmpeg.input(str(base_path), framerate=FPS), frames)
    for index, (points, colour) in enumerate(paths):
        marker_path = tmp / f"marker-{index}.png"
        marker_image(diameter, colour).save(marker_path)
        x = _along([px - diameter / 2 for px, _ in points], frames)
        y = _along([py - diameter / 2 for _, py in points], frames)
        video = ffmpeg.overlay(
            video, ffmpeg.input(str(marker_path), framerate=FPS), x=x, y=y, eof_action="repeat"
        )
    return video.filter("format", "yuv420p")
