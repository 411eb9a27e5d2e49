"""Camera moves as ffmpeg filters: Kling's camera controls mapped to zoompan and rotate.

A move is described once, as a :class:`CameraMotion` (how far the camera zooms, travels and rolls
over the whole clip), and turned into per-frame ffmpeg expressions. Moves are spread over the
clip's length, so a 10 s clip moves as far as a 5 s one, only slower. Signs follow Kling's docs:
horizontal and tilt -left/+right, vertical and pan -down/+up, roll -counter-clockwise/+clockwise,
zoom -narrower/+wider field of view (so a positive zoom value zooms *out*).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CANVAS_SCALE", "FPS", "CameraMotion", "camera_motion", "loop_still", "roll_over", "zoom_over"]

FPS = 30
"""Kling v1 delivers 30 frames a second."""

CANVAS_SCALE = 1.6
"""The text-to-video canvas is this many frames wide and high, so the camera has room to move."""

_TRAVEL_PER_STEP = 0.05
_ROLL_DEGREES_PER_STEP = 1.5

_PRESETS: dict[str, tuple[float, float, float]] = {
    "down_back": (0.8, 0.0, 0.25),
    "forward_up": (1.35, 0.0, -0.3),
    "right_turn_forward": (1.25, 0.3, 0.0),
    "left_turn_forward": (1.25, -0.3, 0.0),
}
_DRIFT = (1.08, 0.08, -0.03)


@dataclass(frozen=True)
class CameraMotion:
    """What the camera does between the first and the last frame.

    ``zoom`` is the magnification at the end relative to the start (above 1 zooms in); ``travel_x``
    and ``travel_y`` are how far the camera travels, in frame widths and heights (+ is right and
    down in the picture); ``roll`` is the clockwise camera roll at the end, in degrees.
    """

    zoom: float = 1.0
    travel_x: float = 0.0
    travel_y: float = 0.0
    roll: float = 0.0


def camera_motion(
    camera_control: str | None, advanced_camera_control: Mapping[str, Any] | None
) -> CameraMotion:
    """Map fal's ``camera_control`` preset or ``advanced_camera_control`` axis to a motion.

    With neither, the camera drifts gently so the clip is never a still picture. When both are
    given the advanced control wins: it is the more specific request.
    """
    if advanced_camera_control:
        kind = str(advanced_camera_control["movement_type"])
        value = float(advanced_camera_control["movement_value"])
        travel = _TRAVEL_PER_STEP * value
        moves = {
            "horizontal": CameraMotion(travel_x=travel),
            "tilt": CameraMotion(travel_x=0.8 * travel),
            "vertical": CameraMotion(travel_y=-travel),
            "pan": CameraMotion(travel_y=-0.8 * travel),
            "roll": CameraMotion(roll=_ROLL_DEGREES_PER_STEP * value),
            "zoom": CameraMotion(zoom=CANVAS_SCALE ** (-value / 10)),
        }
        if kind not in moves:
            raise ValueError(f"movement_type {kind!r} is not one of {sorted(moves)}")
        return moves[kind]
    if camera_control:
        if camera_control not in _PRESETS:
            raise ValueError(f"camera_control {camera_control!r} is not one of {sorted(_PRESETS)}")
        zoom, travel_x, travel_y = _PRESETS[camera_control]
        return CameraMotion(zoom=zoom, travel_x=travel_x, travel_y=travel_y)
    zoom, travel_x, travel_y = _DRIFT
    return CameraMotion(zoom=zoom, travel_x=travel_x, travel_y=travel_y)


def _progress(frames: int, counter: str = "on") -> str:
    return f"({counter}/{max(1, frames - 1)})"


def zoom_over(
    stream: Any,
    *,
    frames: int,
    size: tuple[int, int],
    start_zoom: float,
    motion: CameraMotion,
    single_frame: bool = True,
) -> Any:
    """Zoom and travel over a picture with zoompan: ``start_zoom`` times ``motion.zoom`` at the end.

    zoompan's zoom is relative to the input picture (1 shows all of it), its window is clamped
    inside the picture, and travel is measured in window sizes so it reads the same at any zoom.
    With ``single_frame`` the input is one still picture that zoompan holds for ``frames`` frames;
    otherwise the input already has one frame per output frame (for example a moving marker).
    """
    p = _progress(frames)
    zoom = f"{start_zoom:.6f}*pow({motion.zoom:.6f},{p})"
    x = f"iw/2-iw/zoom/2+{motion.travel_x:.6f}*iw/zoom*({p}-0.5)"
    y = f"ih/2-ih/zoom/2+{motion.travel_y:.6f}*ih/zoom*({p}-0.5)"
    width, height = size
    return stream.filter(
        "zoompan", z=zoom, x=x, y=y, d=frames if single_frame else 1, s=f"{width}x{height}", fps=FPS
    )


def roll_over(stream: Any, *, frames: int, size: tuple[int, int], motion: CameraMotion) -> Any:
    """Roll the camera over a still picture: the centre crop of the rotating picture, at 1:1 scale.

    A clockwise camera roll turns the scene counter-clockwise, hence the negative angle (ffmpeg's
    rotate turns its input clockwise for positive angles). rotate is slow per pixel, so it runs at
    half size and the result is scaled up: a softer picture, at a third of the render time.
    """
    width, height = size
    angle = -math.radians(motion.roll)
    half = stream.filter("scale", "iw/2", "ih/2").filter("format", "yuv420p")
    turning = loop_still(half, frames).filter(
        "rotate", a=f"{angle:.6f}*{_progress(frames, 'n')}", ow=width // 2, oh=height // 2, c="black"
    )
    return turning.filter("scale", width, height, flags="bilinear")


def loop_still(stream: Any, frames: int) -> Any:
    """Repeat a one-frame input ``frames`` times at 30 fps.

    The frame is looped in memory rather than re-read by the demuxer, which would decode the PNG
    once per frame.
    """
    return stream.filter("loop", loop=frames - 1, size=1, start=0).filter("setpts", f"N/({FPS}*TB)")
