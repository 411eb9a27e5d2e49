"""Turning the media URLs a request carries into local files the renderer can read.

fal accepts http(s) URLs and ``data:`` URIs; the emulator accepts both, plus URLs of its own files
(uploads and earlier outputs). An http(s) input it cannot fetch (this machine has no internet, nor
has a user's offline laptop) becomes a labelled placeholder of the right kind, and the request's
log says so: the seed's examples point at public URLs and must still run here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import mimetypes
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from klingflow._files import atomic_write
from klingflow.emulator import render
from klingflow.emulator.queue import EmulatedRequest

__all__ = ["InputFetcher"]

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?),(?P<data>.*)$", re.S)
_FETCH_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class InputFetcher:
    """Resolves input URLs to files under ``data_dir/inputs`` (content-addressed, so reusable)."""

    def __init__(self, data_dir: Path, *, fetch_remote: bool = True) -> None:
        self.data_dir = data_dir
        self.inputs_dir = data_dir / "inputs"
        self.inputs_dir.mkdir(parents=True, exist_ok=True)
        self.fetch_remote = fetch_remote

    def _save(self, data: bytes, suffix: str) -> Path:
        path = self.inputs_dir / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        if not path.is_file():
            atomic_write(path, data, durable=False)
        return path

    def own_file(self, url: str) -> Path | None:
        """The local file behind one of the emulator's own ``/files/...`` URLs, if it exists."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.path.startswith("/files/"):
            return None
        relative = Path(unquote(parsed.path.removeprefix("/files/")))
        if ".." in relative.parts:
            return None
        candidate = self.data_dir / "files" / relative
        return candidate if candidate.is_file() else None

    def fetch(self, url: str, kind: str, request: EmulatedRequest) -> Path:
        """Return a local file for ``url`` (a placeholder when it cannot be had)."""
        if url.startswith("data:"):
            match = _DATA_URI.match(url)
            if match is None:
                raise ValueError(f"malformed data URI for {kind} input")
            payload = match.group("data")
            try:
                data = (
                    base64.b64decode(payload, validate=True)
                    if ";base64" in match.group("params")
                    else unquote(payload).encode()
                )
            except binascii.Error as exc:
                raise ValueError(f"data URI for {kind} input is not valid base64") from exc
            suffix = mimetypes.guess_extension(match.group("mime") or "") or ".bin"
            return self._save(data, suffix)
        own = self.own_file(url)
        if own is not None:
            return own
        if self.fetch_remote and url.startswith(("http://", "https://")):
            try:
                response = httpx.get(url, timeout=_FETCH_TIMEOUT, follow_redirects=True)
                response.raise_for_status()
                suffix = Path(urlparse(url).path).suffix or ".bin"
                return self._save(response.content, suffix)
            except httpx.HTTPError as exc:
                request.log(
                    f"Could not fetch {kind} input {url} ({type(exc).__name__}); "
                    f"using a labelled placeholder",
                    level="WARNING",
                )
        else:
            request.log(
                f"Not fetching {kind} input {url} (remote fetching is off); using a labelled placeholder",
                level="WARNING",
            )
        return self._placeholder(url, kind)

    def _placeholder(self, url: str, kind: str) -> Path:
        digest = hashlib.sha256(f"{kind}:{url}".encode()).hexdigest()
        if kind == "audio":
            path = self.inputs_dir / f"placeholder-{digest}.mp3"
            if not path.is_file():
                render.placeholder_audio(label=url, out=path)
        elif kind == "video":
            path = self.inputs_dir / f"placeholder-{digest}.mp4"
            if not path.is_file():
                render.placeholder_video(label=url, out=path)
        else:
            path = self.inputs_dir / f"placeholder-{digest}.png"
            if not path.is_file():
                render.placeholder_image(label=url, out=path)
        return path
