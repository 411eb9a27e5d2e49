"""A contact sheet: one PNG with a row per clip, a few frames each, labelled with its step id.

Reports use it to show a whole run at a glance. Frames are taken at the middle of equal slices of
each clip (so a 4-frame row shows 1/8, 3/8, 5/8 and 7/8 of the way through), scaled to one row
height whatever the clip's aspect, so 16:9, 9:16 and 1:1 clips sit side by side undistorted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from klingflow.errors import MediaError
from klingflow.media._frames import frames_at, save_png
from klingflow.media._probe import MediaInfo, probe
from klingflow.media._run import where

__all__ = ["contact_sheet", "contact_sheet_row"]

_THUMB_HEIGHT = 180
_LABEL_WIDTH = 240
_GAP = 8
_CAPTION = 22
_BACKGROUND = (24, 24, 27)
_TEXT = (240, 240, 240)
_MUTED = (160, 160, 170)


def _fitted_text(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> str:
    """``text`` shortened with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _summary(info: MediaInfo) -> list[str]:
    sound = f"audio {info.sample_rate} Hz" if info.has_audio else "no audio"
    return [
        f"{info.video_duration or info.duration:.2f} s · {info.fps or 0:g} fps",
        f"{info.width}x{info.height}",
        sound,
    ]


def contact_sheet_row(label: str, video: Path, *, frames_per_clip: int = 4, context: str = "") -> Image.Image:
    """One row of a contact sheet (see :func:`contact_sheet`), e.g. made ahead, while a run goes on."""
    return _row(label, video, frames_per_clip, context)


def _row(label: str, video: Path, frames_per_clip: int, context: str) -> Image.Image:
    info = probe(video, context=context)
    if not info.has_video or not info.width or not info.height:
        raise MediaError("file has no video stream", context=where(context, video))
    length = Fraction(info.video_duration or info.duration)
    aspect = Fraction(*map(int, (info.display_aspect or f"{info.width}:{info.height}").split(":")))
    thumb_size = (max(1, round(_THUMB_HEIGHT * aspect)), _THUMB_HEIGHT)
    width = _LABEL_WIDTH + frames_per_clip * (thumb_size[0] + _GAP) + _GAP
    row = Image.new("RGB", (width, _GAP + _THUMB_HEIGHT + _CAPTION + _GAP), _BACKGROUND)
    draw = ImageDraw.Draw(row)
    title, small = ImageFont.load_default(size=20), ImageFont.load_default(size=14)
    draw.text((_GAP, _GAP), _fitted_text(draw, label, title, _LABEL_WIDTH - 2 * _GAP), font=title, fill=_TEXT)
    for line, text in enumerate(_summary(info)):
        draw.text((_GAP, _GAP + 34 + 20 * line), text, font=small, fill=_MUTED)
    times = [float(length * (2 * index + 1) / (2 * frames_per_clip)) for index in range(frames_per_clip)]
    for index, (seconds, picture) in enumerate(
        zip(times, frames_at(video, times, context=context, size=thumb_size, exact=False), strict=True)
    ):
        x = _LABEL_WIDTH + index * (thumb_size[0] + _GAP)
        row.paste(picture, (x, _GAP))
        draw.text((x, _GAP + _THUMB_HEIGHT + 3), f"{seconds:.2f} s", font=small, fill=_MUTED)
    return row


def _more(count: int, width: int) -> Image.Image:
    """The last row of a capped sheet: how many clips it leaves out."""
    row = Image.new("RGB", (width, 2 * _GAP + _CAPTION + 12), _BACKGROUND)
    text = f"… and {count} more clip{'s' if count != 1 else ''} (every clip is in the run's report)"
    ImageDraw.Draw(row).text((_GAP, _GAP), text, font=ImageFont.load_default(size=20), fill=_MUTED)
    return row


def contact_sheet(
    videos: Sequence[tuple[str, Path]],
    out: Path,
    *,
    frames_per_clip: int = 4,
    context: str = "",
    max_rows: int | None = None,
    prepared: Callable[[str, Path], Image.Image | None] | None = None,
) -> Path:
    """Write a PNG grid at ``out``: one row per ``(label, video)``, ``frames_per_clip`` frames each.

    Every row has the same height, in the order given; the label (e.g. the step id) and the clip's
    length, rate, size and audio are written at its left, and each frame's time below it. With
    ``max_rows``, only the first ``max_rows`` clips get a row, and a last line says how many more
    there are (a sheet of 200 rows is no glance, and decoding them takes a while). ``prepared``
    may return a row made ahead by :func:`contact_sheet_row` with the same ``frames_per_clip``
    (None: make it now).

    Example:
        >>> contact_sheet([("shot1", Path("shot1.mp4")), ("shot2", Path("shot2.mp4"))],
        ...               Path("report/sheet.png"), context="report")  # doctest: +SKIP
    """
    if not videos:
        raise MediaError("a contact sheet needs at least one video", context=where(context, out))
    if frames_per_clip < 1:
        raise MediaError(
            f"frames_per_clip must be at least 1, got {frames_per_clip}", context=where(context, out)
        )
    shown = videos if max_rows is None else videos[: max(max_rows, 1)]
    rows = [
        (prepared and prepared(label, Path(video))) or _row(label, Path(video), frames_per_clip, context)
        for label, video in shown
    ]
    if len(shown) < len(videos):
        rows.append(_more(len(videos) - len(shown), max(row.width for row in rows)))
    sheet = Image.new("RGB", (max(row.width for row in rows), sum(row.height for row in rows)), _BACKGROUND)
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    return save_png(sheet, out)
