"""Media in the report: which element a file needs, and a link to it that works from disk.

Links are relative to the report's folder, so Chromium opens them from ``file://`` with no
server, and a folder moved together with the klingflow home keeps working; only where no
relative path exists (another drive on Windows) is an absolute ``file://`` URI used. A missing
file gets a visible placeholder, never an element that can only fail.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from urllib.parse import quote

__all__ = ["media_element", "media_kind", "media_url"]

_VIDEO = {".mp4", ".mov", ".webm", ".mkv", ".m4v"}
_AUDIO = {".mp3", ".wav", ".m4a", ".aac", ".ogg", ".flac", ".opus"}
_IMAGE = {".png", ".jpg", ".jpeg", ".webp", ".gif"}


def media_kind(path: str | Path) -> str | None:
    """``video``, ``audio`` or ``image`` from a file's suffix (the store keeps the output's suffix)."""
    suffix = Path(path).suffix.lower()
    for kind, suffixes in (("video", _VIDEO), ("audio", _AUDIO), ("image", _IMAGE)):
        if suffix in suffixes:
            return kind
    return None


def media_url(path: str | Path, folder: Path) -> str:
    """A URL for ``path`` as seen from a page in ``folder``: relative when possible, else file://."""
    target = Path(path).resolve()
    try:
        relative = os.path.relpath(target, folder.resolve())
    except ValueError:
        return target.as_uri()
    return quote(relative.replace(os.sep, "/"))


def media_element(path: str | None, folder: Path, *, label: str, badge: str) -> str:
    """A ``<video>``, ``<audio>`` or ``<img>`` for the file, with a playability badge; or a placeholder.

    Video and audio carry ``data-check``: the report's script marks each ``data-playable="yes"``
    once the browser has decoded it (first frame, then a seek to the middle), or ``"no"`` with
    the browser's reason, and shows that on the badge (``badge`` is its element id, unique per page).
    """
    if not path:
        return ""
    kind = media_kind(path)
    if kind is None:
        return f'<p class="muted">output: <code>{escape(str(path))}</code></p>'
    if not Path(path).is_file():
        return f'<div class="missing">file missing: <code>{escape(str(path))}</code></div>'
    url = escape(media_url(path, folder))
    name = escape(label)
    if kind == "image":
        return f'<img class="media" src="{url}" alt="{name}" loading="lazy">'
    element = (
        f'<video class="media" controls preload="auto" playsinline src="{url}" data-check="{badge}" '
        f'aria-label="{name}"></video>'
        if kind == "video"
        else f'<audio class="media" controls preload="auto" src="{url}" data-check="{badge}" '
        f'aria-label="{name}"></audio>'
    )
    return f'{element}<span class="check" id="{badge}">checking…</span>'
