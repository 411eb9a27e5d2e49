"""What a local media file really holds, judged by its content, not its name.

A ``portrait.png`` that is a saved error page, a ``voice.mp3`` that is a PDF or a ``clip.mp4`` that is
a JSON error body would otherwise be uploaded and paid for, and fail on fal's side (or worse, not
fail). :func:`sniff` reads the first bytes of the file and matches the signatures of the image, audio
and video containers; for an image it also reads the header with Pillow (lazily: no pixels are
decoded) to learn the format and size. That is cheap (one small read per file, no libav, no
decoding), deterministic, and enough to refuse a file that is not media at all or is another kind of
media. Whether a real container holds a decodable stream is left to the run.

Example::

    content = sniff(Path("portrait.png"))
    content.kinds    # frozenset({'image'})
    content.label    # 'a PNG image'
    content.size     # (720, 1280)
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Content", "sniff"]

_HEAD = 4096

# ISO base media (ftyp) brands that are still images or audio only; every other brand is a movie.
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "}
_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_AV = frozenset({"video", "audio"})
_SRT_CUE = re.compile(rb"\s*\d+\r?\n\d{2}:\d{2}:\d{2},\d{3} --> ")


@dataclass(frozen=True)
class Content:
    """What :func:`sniff` found.

    ``kinds`` are the media kinds the file can serve as (``image``, ``audio``, ``video``,
    ``subtitles``; a movie container counts as both video and audio, since either may be what it
    carries), empty when it is not media. ``label`` says what it is in words ("a PNG image", "JSON
    text"). ``format`` and ``size`` (width, height) are Pillow's, for images only.
    """

    kinds: frozenset[str]
    label: str
    format: str | None = None
    size: tuple[int, int] | None = None


def _container(head: bytes) -> tuple[frozenset[str], str] | None:
    """The media kinds and label of a known image, audio or video signature, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return frozenset({"image"}), "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return frozenset({"image"}), "a JPEG image"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return frozenset({"image"}), "a GIF image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return frozenset({"image"}), "a TIFF image"
    if head.startswith(b"BM") and len(head) > 14 and head[6:10] == b"\x00\x00\x00\x00":
        return frozenset({"image"}), "a BMP image"
    if head.startswith(b"RIFF") and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return frozenset({"image"}), "a WebP image"
        if form == b"WAVE":
            return frozenset({"audio"}), "a WAV audio file"
        if form == b"AVI ":
            return _AV, "an AVI video"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return frozenset({"image"}), f"a {'AVIF' if brand.startswith(b'avi') else 'HEIF'} image"
        if brand in _AUDIO_BRANDS:
            return frozenset({"audio"}), "an M4A audio file"
        return _AV, "a QuickTime (MOV) video" if brand == b"qt  " else "an MP4 video"
    if head[4:8] in _QUICKTIME_ATOMS:
        return _AV, "a QuickTime (MOV) video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _AV, "a Matroska/WebM video"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return _AV, "a Windows Media (ASF) file"
    if head.startswith(b"FLV\x01"):
        return _AV, "an FLV video"
    if head.startswith(b"\x00\x00\x01\xba"):
        return _AV, "an MPEG program stream"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return _AV, "an MPEG transport stream"
    if head.startswith(b"OggS"):
        return _AV, "an Ogg file"
    if head.startswith(b"ID3"):
        return frozenset({"audio"}), "an MP3 audio file"
    if head.startswith(b"fLaC"):
        return frozenset({"audio"}), "a FLAC audio file"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return frozenset({"audio"}), "an AIFF audio file"
    if head.startswith(b"#!AMR"):
        return frozenset({"audio"}), "an AMR audio file"
    if head.startswith(b"caff"):
        return frozenset({"audio"}), "a CAF audio file"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # An MPEG audio frame sync (MP3 without an ID3 tag) or an AAC ADTS header.
        return frozenset({"audio"}), "an MP3/AAC audio file"
    text = head.removeprefix(b"\xef\xbb\xbf")
    if text.startswith(b"WEBVTT"):
        return frozenset({"subtitles"}), "WebVTT subtitles"
    if _SRT_CUE.match(text):
        return frozenset({"subtitles"}), "SRT subtitles"
    return None


def _not_media(head: bytes) -> str:
    """Words for what a file that is not media holds, quoting its start when it is text."""
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive"
    if b"\x00" not in head:
        text = head.decode("utf-8", errors="ignore").lstrip("\ufeff")
        if text.strip() and sum(ch.isprintable() or ch.isspace() for ch in text) >= 0.95 * len(text):
            start = " ".join(text.split())
            quoted = repr(start if len(start) <= 40 else start[:37] + "...")
            lower = start.lower()
            if start.startswith(("{", "[")):
                what = "JSON text"
            elif lower.startswith(("<!doctype html", "<html")):
                what = "an HTML page"
            elif "<svg" in lower[:200]:
                what = "an SVG drawing (text)"
            elif lower.startswith("<?xml"):
                what = "XML text"
            else:
                what = "plain text"
            return f"{what}, starting {quoted}"
    return "unrecognised binary data"


def _image_header(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """Pillow's format and size for ``path``, from its header only; (None, None) if it cannot say."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: only the header is read
            with Image.open(path) as image:
                return image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, None


def sniff(path: Path) -> Content:
    """What ``path`` holds, from its first bytes (and, for an image, its header). Never raises for
    content; an unreadable file (permissions) raises ``OSError``."""
    with path.open("rb") as stream:
        head = stream.read(_HEAD)
    if not head:
        return Content(frozenset(), "an empty file (0 bytes)")
    found = _container(head)
    if found is None:
        return Content(frozenset(), _not_media(head))
    kinds, label = found
    if kinds != {"image"}:
        return Content(kinds, label)
    image_format, size = _image_header(path)
    if size is None and not label.endswith(("HEIF image", "AVIF image")):
        # The signature says image but Pillow cannot read a size: a truncated or damaged file.
        return Content(frozenset(), f"{label} whose header cannot be read (truncated or damaged)")
    return Content(kinds, label, image_format, size)
