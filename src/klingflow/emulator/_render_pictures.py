"""Pictures for the image endpoints (kling-image text-to-image and image-to-image, kolors try-on).

Pure Pillow, deterministic like the video renders: a text-to-image picture is the prompt's scene
(:func:`~klingflow.emulator._render_scene.scene_canvas`, a different variation per image of the
request), an edit is the first input image filling the frame with its colours turned, a try-on is the
person as they are with the garment pinned beside them. Each carries the emulator banner along the
bottom, as every video frame does, so it is recognisable as fake at a glance.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from klingflow._files import atomic_path
from klingflow.emulator._render_scene import fitted_image, scene_canvas
from klingflow.emulator.labels import banner_image, seed_of

__all__ = ["CONTENT_TYPES", "SUFFIXES", "picture_for", "save_picture"]

SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
"""File suffix per ``output_format``."""
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}


def _bannered(picture: Image.Image, *, title: str, prompt: str) -> Image.Image:
    band = banner_image(*picture.size, title=title, prompt=prompt)
    picture = picture.convert("RGB")
    picture.paste(band, (0, picture.height - band.height), band)
    return picture


def _turned(picture: Image.Image, degrees: int) -> Image.Image:
    """The picture with its hues rotated by ``degrees`` (an edit that is visibly not the input)."""
    hue, saturation, value = picture.convert("HSV").split()
    hue = hue.point(lambda h: (h + degrees * 256 // 360) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def picture_for(
    *,
    title: str,
    prompt: str,
    size: tuple[int, int],
    index: int,
    source: Path | None = None,
    garment: Path | None = None,
) -> Image.Image:
    """The ``index``-th picture of a request: the prompt's scene, or ``source`` edited; with ``garment``
    the garment is pinned at the right of the person (virtual try-on)."""
    if source is None:
        picture = scene_canvas(f"{prompt} #{index}" if index else prompt, size)
    elif garment is None:
        picture = _turned(fitted_image(source, size), seed_of("edit", prompt, index) % 300 + 30)
    else:  # the person stays who they are; only the garment is new
        picture = fitted_image(source, size)
    if garment is not None:
        side = max(16, min(size) // 3)
        card = ImageOps.expand(fitted_image(garment, (side, side)), border=max(2, side // 40), fill="white")
        picture.paste(card, (size[0] - card.width - 8, 8))
    return _bannered(picture, title=title, prompt=prompt)


def save_picture(picture: Image.Image, out: Path, *, note: str = "") -> None:
    """Write ``picture`` at ``out`` in the format its suffix names (atomically); ``note`` goes into the
    file's own comment (PNG text chunk, JPEG comment, WebP XMP), which makes two files' bytes differ
    without changing a pixel."""
    suffix = out.suffix.lower()
    with atomic_path(out) as partial:
        if suffix == ".png":
            info = PngInfo()
            if note:
                info.add_text("Comment", note)
            picture.save(partial, format="PNG", compress_level=1, pnginfo=info)
        elif suffix == ".jpg":
            picture.save(partial, format="JPEG", quality=90, comment=note.encode())
        else:
            picture.save(partial, format="WEBP", quality=80, xmp=note.encode())
