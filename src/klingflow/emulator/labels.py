"""The visible labels on emulator output: the banner on every frame and the placeholder pictures.

Every emulator render must be recognisable as fake at a glance, so each frame carries a banner
("KLING EMULATOR RENDER", the endpoint, the start of the prompt), and every input the emulator could
not fetch is replaced by a picture that says "PLACEHOLDER" and what it stands for. The text is drawn
with Pillow, not ffmpeg's drawtext, because drawtext needs a font file that users' machines may
lack: DejaVu Sans is used when the system has it, Pillow's built-in font otherwise.

Everything here is pure Pillow and deterministic: the same arguments give the same pixels.

Example:
    >>> banner_image(1280, 720, title="text-to-video", prompt="a red fox").size[0]
    1280
"""

from __future__ import annotations

import colorsys
import hashlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["BANNER_TITLE", "banner_image", "font", "placeholder_picture", "seed_of"]

BANNER_TITLE = "KLING EMULATOR RENDER"
_PROMPT_CHARS = 60
_DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def seed_of(*parts: object) -> int:
    """Return a 64-bit seed from a sha256 of ``parts``, so randomness follows the arguments only."""
    digest = hashlib.sha256("\x1f".join(repr(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def font(size: int, *, bold: bool = False) -> _Font:
    """DejaVu Sans at ``size`` pixels when installed, else Pillow's built-in scalable font.

    Not cached: renders run in several threads, and a FreeType face is not safe to share.
    """
    path = _DEJAVU_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _line_height(face: _Font) -> int:
    left, top, right, bottom = face.getbbox("Hg|")
    return int(bottom - top)


def _wrap(text: str, face: _Font, width: int, max_lines: int) -> list[str]:
    """Wrap by measured pixel width, breaking at spaces when it can (URLs have none).

    At most ``max_lines`` lines; when text is left over the last line ends in "...".
    """
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))

    def fits(candidate: str) -> bool:
        return measure.textlength(candidate, font=face) <= width

    lines: list[str] = []
    rest = " ".join(text.split())
    while rest and len(lines) < max_lines:
        low, high = 1, len(rest)
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(rest[:middle]) else (low, middle - 1)
        cut = low
        if cut < len(rest) and rest.rfind(" ", 0, cut + 1) > 0:
            cut = rest.rfind(" ", 0, cut + 1)
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest and lines:
        last = lines[-1]
        while last and not fits(f"{last}..."):
            last = last[:-1]
        lines[-1] = f"{last.rstrip()}..."
    return lines


def banner_image(frame_width: int, frame_height: int, *, title: str, prompt: str) -> Image.Image:
    """The RGBA band laid over the bottom of every frame: emulator title, endpoint, prompt start.

    Sizes follow the frame's shorter side so the text reads the same in 16:9, 9:16 and 1:1. The
    background is semi-opaque black so the text stays readable over any scene.
    """
    unit = min(frame_width, frame_height)
    pad = max(6, round(unit * 0.02))
    stripe = max(4, pad // 2)
    head_face = font(max(12, round(unit * 0.036)), bold=True)
    body_face = font(max(10, round(unit * 0.029)))
    text_width = frame_width - 2 * pad - stripe
    snippet = " ".join(prompt.split())
    if len(snippet) > _PROMPT_CHARS:
        snippet = snippet[:_PROMPT_CHARS].rstrip() + "..."
    prompt_lines = _wrap(snippet, body_face, text_width, max_lines=2) if snippet else []
    head_lines = _wrap(f"{BANNER_TITLE}  |  {title}", head_face, text_width, max_lines=2)
    head_h, body_h = _line_height(head_face), _line_height(body_face)
    gap = max(2, pad // 3)
    height = 2 * pad + len(head_lines) * (head_h + gap) + len(prompt_lines) * (body_h + gap) - gap
    band = Image.new("RGBA", (frame_width, height), (0, 0, 0, 172))
    draw = ImageDraw.Draw(band)
    draw.rectangle([0, 0, stripe - 1, height], fill=(255, 196, 0, 255))
    y = pad
    for line in head_lines:
        draw.text((stripe + pad, y), line, font=head_face, fill=(255, 214, 64, 255), anchor="lt")
        y += head_h + gap
    for line in prompt_lines:
        draw.text((stripe + pad, y), line, font=body_face, fill=(236, 236, 236, 255), anchor="lt")
        y += body_h + gap
    return band


def _fitting_font(text: str, width: float, largest: int) -> _Font:
    """The largest bold font, up to ``largest`` pixels, in which ``text`` fits in ``width``."""
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    size = largest
    while size > 10 and measure.textlength(text, font=font(size, bold=True)) > width:
        size -= 2
    return font(size, bold=True)


def placeholder_picture(label: str, size: tuple[int, int]) -> Image.Image:
    """A labelled stand-in for an image that could not be fetched: a person-like silhouette.

    The silhouette (head and shoulders) makes effect scenes and avatars that expect a person look
    sensible; the colours follow the label so two placeholders side by side differ. The text sits in
    the central half of the picture, so it survives the crop to any Kling aspect ratio.
    """
    width, height = size
    hue = (seed_of("placeholder", label) % 360) / 360
    top, bottom = _rgb(hue, 0.35, 0.78), _rgb((hue + 0.12) % 1, 0.45, 0.45)
    picture = Image.new("RGB", size)
    draw = ImageDraw.Draw(picture)
    for row in range(height):
        mix = row / max(1, height - 1)
        shade = tuple(round(a + (b - a) * mix) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, row), (width, row)], fill=shade)
    unit = min(width, height)
    step = max(8, unit // 12)
    for offset in range(-height, width, step * 2):
        draw.line([(offset, height), (offset + height, 0)], fill=_rgb(hue, 0.3, 0.7), width=max(1, step // 6))
    cx, head_y, head_r = width / 2, height * 0.36, unit * 0.13
    shoulders = [
        cx - unit * 0.3,
        head_y + head_r * 1.05,
        cx + unit * 0.3,
        head_y + head_r * 1.05 + unit * 0.5,
    ]
    draw.ellipse(shoulders, fill=_rgb((hue + 0.5) % 1, 0.25, 0.25))
    draw.ellipse([cx - head_r, head_y - head_r, cx + head_r, head_y + head_r], fill=_rgb(0.07, 0.35, 0.85))
    text_width = min(width * 0.54, unit * 0.9)
    big = _fitting_font("PLACEHOLDER", text_width, round(unit * 0.09))
    small = font(max(10, round(unit * 0.03)))
    band_top = round(height * 0.56)
    draw.rectangle([0, band_top, width, height], fill=(20, 20, 20))
    y = band_top + unit * 0.02
    draw.text((cx, y), "PLACEHOLDER", font=big, fill=(255, 214, 64), anchor="mt")
    y += _line_height(big) + unit * 0.02
    for line in [*_wrap(label, small, round(text_width), max_lines=3), BANNER_TITLE]:
        draw.text((cx, y), line, font=small, fill=(230, 230, 230), anchor="mt")
        y += _line_height(small) * 1.25
    return picture


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)
