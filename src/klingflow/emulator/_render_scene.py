"""Pillow pictures the renderer moves a camera over: procedural scenes, fitted inputs, backdrops.

Text-to-video has no input image, so it draws a landscape seeded by the prompt: a sky, mountains, a
perspective grid on the ground and scattered objects. The canvas is larger than the frame so a
camera can slide, zoom and roll over it, and the grid and objects make that motion easy to see.
A few words in the prompt (night, sunset, sea, forest, snow, desert, city) steer the palette so
different prompts look different in a recognisable way.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from klingflow.emulator.labels import seed_of
from klingflow.errors import MediaError

__all__ = ["effect_backdrop", "fitted_image", "image_size", "marker_image", "scene_canvas"]

_RGB = tuple[int, int, int]

_SKIES: dict[str, tuple[_RGB, _RGB]] = {
    "night": ((8, 12, 36), (44, 52, 104)),
    "sunset": ((58, 40, 112), (255, 150, 84)),
    "day": ((70, 130, 210), (196, 226, 250)),
}
_GROUNDS: dict[str, tuple[_RGB, _RGB]] = {
    "city": ((130, 130, 138), (60, 60, 68)),
    "snow": ((220, 228, 240), (170, 185, 210)),
    "sand": ((232, 200, 140), (190, 140, 80)),
    "water": ((70, 150, 200), (16, 66, 120)),
    "grass": ((110, 160, 80), (34, 90, 40)),
}
"""Ground colours (far, near), in priority order when a prompt mentions several."""
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "night": ("night", "moon", "star", "dark", "midnight"),
    "sunset": ("sunset", "sunrise", "dusk", "dawn", "golden"),
    "water": ("ocean", "sea", "beach", "water", "lake", "river", "wave", "boat"),
    "grass": ("forest", "tree", "jungle", "garden", "park", "grass", "meadow", "field"),
    "snow": ("snow", "winter", "ice", "frozen", "mountain"),
    "sand": ("desert", "sand", "dune", "canyon"),
    "city": ("city", "street", "building", "car", "road", "town", "neon"),
}


def _mentions(prompt: str, key: str) -> bool:
    """Whether a word of the prompt starts with one of the key's words ("snowy" mentions snow)."""
    return any(
        word.startswith(stem) for word in re.findall(r"[a-z]+", prompt.lower()) for stem in _KEYWORDS[key]
    )


def _mix(a: _RGB, b: _RGB, t: float) -> _RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _gradient(width: int, height: int, top: _RGB, bottom: _RGB) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, max(1, height), dtype=np.float32)[:, None, None]
    rows = np.asarray(top, np.float32) * (1 - ramp) + np.asarray(bottom, np.float32) * ramp
    return np.broadcast_to(rows.round().astype(np.uint8), (max(1, height), width, 3))


def scene_canvas(prompt: str, size: tuple[int, int]) -> Image.Image:
    """Draw the prompt's landscape at ``size``; the same prompt always gives the same picture."""
    width, height = size
    rng = random.Random(seed_of("scene", prompt))
    time_of_day = next((key for key in ("night", "sunset") if _mentions(prompt, key)), "day")
    terrain = next((key for key in _GROUNDS if _mentions(prompt, key)), None)
    sky_top, sky_low = _SKIES[time_of_day]
    if terrain is None:
        hue_shift = rng.random()
        near = (round(90 + 100 * hue_shift), round(150 - 60 * hue_shift), round(70 + 60 * rng.random()))
        far, near = _mix(near, sky_low, 0.35), _mix(near, (20, 20, 20), 0.5)
    else:
        far, near = _GROUNDS[terrain]
    if time_of_day != "day":
        far, near = _mix(far, sky_top, 0.45), _mix(near, sky_top, 0.45)
    horizon = round(height * (0.46 + 0.08 * rng.random()))
    pixels = np.concatenate(
        [_gradient(width, horizon, sky_top, sky_low), _gradient(width, height - horizon, far, near)]
    )
    canvas = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    draw = ImageDraw.Draw(canvas)
    unit = min(width, height)
    if time_of_day == "night":
        for _ in range(160):
            x, y, r = rng.random() * width, rng.random() * horizon * 0.9, 1 + 2 * rng.random()
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(240, 240, 255))
    orb_x, orb_y, orb_r = (
        width * (0.15 + 0.7 * rng.random()),
        horizon * (0.2 + 0.4 * rng.random()),
        unit * 0.07,
    )
    orb = (236, 236, 220) if time_of_day == "night" else (255, 226, 120)
    draw.ellipse(
        [orb_x - orb_r * 1.6, orb_y - orb_r * 1.6, orb_x + orb_r * 1.6, orb_y + orb_r * 1.6],
        fill=_mix(orb, sky_low, 0.6),
    )
    draw.ellipse([orb_x - orb_r, orb_y - orb_r, orb_x + orb_r, orb_y + orb_r], fill=orb)
    for _ in range(7):
        cx, cy, spread = (
            rng.random() * width,
            horizon * (0.1 + 0.5 * rng.random()),
            unit * (0.05 + 0.06 * rng.random()),
        )
        shade = _mix((250, 250, 250), sky_low, 0.25 if time_of_day == "day" else 0.7)
        for _ in range(5):
            dx, dy = (rng.random() - 0.5) * spread * 3, (rng.random() - 0.5) * spread * 0.6
            draw.ellipse(
                [cx + dx - spread, cy + dy - spread * 0.55, cx + dx + spread, cy + dy + spread * 0.55],
                fill=shade,
            )
    for layer in range(3):
        _ridge(draw, rng, width, horizon, unit, layer, _mix(near, sky_low, 0.75 - 0.25 * layer))
    _ground_grid(draw, rng, width, height, horizon, _mix(near, (255, 255, 255), 0.35))
    _objects(draw, rng, width, height, horizon, terrain == "city", near)
    return canvas


def _ridge(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    width: int,
    horizon: int,
    unit: int,
    layer: int,
    colour: _RGB,
) -> None:
    """One mountain range: a random walk of peaks, nearer ranges lower and darker."""
    step = max(8, unit // 24)
    level = horizon - unit * (0.18 - 0.05 * layer)
    points = [(0.0, float(horizon))]
    for x in range(0, width + step, step):
        level += (rng.random() - 0.5) * unit * 0.06
        level = min(horizon - unit * 0.02, max(horizon - unit * 0.3, level))
        points.append((float(x), level))
    points.append((float(width), float(horizon)))
    draw.polygon(points, fill=colour)


def _ground_grid(
    draw: ImageDraw.ImageDraw, rng: random.Random, width: int, height: int, horizon: int, colour: _RGB
) -> None:
    """Lines converging at a vanishing point, so any camera move shows clear parallax-like motion."""
    vanish_x = width * (0.4 + 0.2 * rng.random())
    depth = height - horizon
    line = max(1, min(width, height) // 300)
    for k in range(1, 13):
        y = horizon + depth * (k / 12) ** 2
        draw.line([(0, y), (width, y)], fill=colour, width=line)
    for k in range(-24, 25):
        draw.line([(vanish_x, horizon), (vanish_x + k * width / 8, height + depth)], fill=colour, width=line)


def _objects(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    width: int,
    height: int,
    horizon: int,
    buildings: bool,
    ground: _RGB,
) -> None:
    """Trees or buildings scattered over the ground, drawn far to near."""
    unit = min(width, height)
    placed = sorted((0.08 + 0.92 * rng.random(), rng.random() * width, rng.random()) for _ in range(18))
    for nearness, x, pick in placed:
        base = horizon + (height - horizon) * nearness
        scale = unit * (0.05 + 0.22 * nearness)
        body = _mix(ground, (0, 0, 0), 0.55 - 0.2 * pick)
        if buildings:
            w, h = scale * (0.5 + 0.4 * pick), scale * (1.2 + 1.5 * pick)
            draw.rectangle([x - w / 2, base - h, x + w / 2, base], fill=body)
            lit = (255, 220, 120)
            for row in range(1, int(h // (scale * 0.25))):
                for col in (-1, 1):
                    wx, wy = x + col * w * 0.22, base - row * scale * 0.25
                    draw.rectangle([wx - w * 0.08, wy - scale * 0.07, wx + w * 0.08, wy], fill=lit)
        else:
            trunk = scale * 0.08
            draw.rectangle([x - trunk, base - scale * 0.4, x + trunk, base], fill=(90, 60, 40))
            leaf = _mix((40, 120, 60), (200, 160, 40), pick * 0.6)
            draw.polygon(
                [
                    (x - scale * 0.35, base - scale * 0.3),
                    (x + scale * 0.35, base - scale * 0.3),
                    (x, base - scale * 1.3),
                ],
                fill=leaf,
            )


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as raw:
            return ImageOps.exif_transpose(raw).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise MediaError(f"not a readable image ({exc})", context=str(path)) from exc


def image_size(path: Path) -> tuple[int, int]:
    """Width and height as displayed (EXIF orientation applied), to pick the output aspect."""
    return _open(path).size


def fitted_image(path: Path, size: tuple[int, int]) -> Image.Image:
    """The image scaled and centre-cropped to fill ``size`` exactly, as Kling fills its frame."""
    return ImageOps.fit(_open(path), size, Image.Resampling.LANCZOS)


def marker_image(diameter: int, colour: _RGB) -> Image.Image:
    """A ringed dot (RGBA) that travels along a motion-brush trajectory."""
    marker = Image.new("RGBA", (diameter, diameter), (0, 0, 0, 0))
    draw = ImageDraw.Draw(marker)
    ring = max(2, diameter // 8)
    draw.ellipse([0, 0, diameter - 1, diameter - 1], fill=(255, 255, 255, 230))
    draw.ellipse([ring, ring, diameter - 1 - ring, diameter - 1 - ring], fill=(*colour, 255))
    return marker


def effect_backdrop(effect_scene: str, size: tuple[int, int]) -> Image.Image:
    """The background behind two-person effect scenes; a heart for the affectionate ones."""
    width, height = size
    rng = random.Random(seed_of("effect", effect_scene))
    top = (round(60 + 120 * rng.random()), round(40 + 60 * rng.random()), round(90 + 120 * rng.random()))
    backdrop = Image.fromarray(np.ascontiguousarray(_gradient(width, height, top, _mix(top, (0, 0, 0), 0.6))))
    if any(word in effect_scene for word in ("hug", "kiss", "heart", "love", "marry")):
        draw = ImageDraw.Draw(backdrop)
        radius = min(width, height) * 0.022
        points = [
            (
                width / 2 + radius * 16 * math.sin(a) ** 3,
                height * 0.45
                - radius * (13 * math.cos(a) - 5 * math.cos(2 * a) - 2 * math.cos(3 * a) - math.cos(4 * a)),
            )
            for a in (2 * math.pi * k / 120 for k in range(120))
        ]
        draw.polygon(points, fill=(232, 60, 96))
    return backdrop
