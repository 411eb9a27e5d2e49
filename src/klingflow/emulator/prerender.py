"""Benchmark mode (``render="prerendered"``): outputs that cost a file copy, not an ffmpeg render.

A benchmark of 200 requests should measure klingflow's orchestration, not the emulator's ffmpeg.
In this mode each (endpoint, output size, length) is rendered once, as a still scene with the
emulator banner (:func:`~klingflow.emulator.render.render_stock_clip`), and cached; clips are named by
the kind of render (``text-to-video``, ``image-to-video``, ``effects``, ``ai-avatar``, as the seed's
endpoints are; ``kling`` for video-to-video and the rest), so endpoints of one kind share them. Every
request then gets its own copy with a unique tail, so two requests never share bytes (a
content-addressed store must see distinct files) and each file is still valid media of the right
length, size and sound:

* MP4: a top-level ``free`` box appended after the last box ("KLING EMULATOR RENDER ... request
  <id>"). ISO BMFF allows free boxes anywhere at the top level; players and probes skip them.
* MP3 (TTS, generated audio): an ID3v1 tag appended (title "KLING EMULATOR RENDER", comment = the
  request id).
* Pictures: the stock picture of that size saved in the requested format with the request id in the
  file's comment.

A video whose input carries its sound (ai-avatar, lipsync) keeps that audio: the cached silent clip of
that many frames is muxed with it (video stream copied, audio encoded), which takes a fraction of a
second. A video with generated sound gets a stock soundtrack of its length, muxed in once per clip.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

from PIL import Image

from klingflow._files import atomic_path
from klingflow.emulator import render
from klingflow.emulator._render_audio import TTS_CHARS_PER_SECOND, speech_seconds
from klingflow.emulator._render_pictures import picture_for, save_picture
from klingflow.emulator.render import FPS
from klingflow.media import mux_audio

__all__ = ["Prerendered", "tag_mp3", "tag_mp4"]

_STOCK_TEXT = "klingflow emulator prerendered speech"


def tag_mp4(path: Path, request_id: str) -> None:
    """Append a top-level ``free`` box naming the request: distinct bytes, same media."""
    payload = f"KLING EMULATOR RENDER (prerendered benchmark clip) request {request_id}".encode()
    with path.open("ab") as handle:
        handle.write((8 + len(payload)).to_bytes(4, "big") + b"free" + payload)


def tag_mp3(path: Path, request_id: str) -> None:
    """Append an ID3v1 tag (128 bytes) whose comment names the request."""

    def field(text: str, size: int) -> bytes:
        return text.encode("latin-1", "replace")[:size].ljust(size, b"\0")

    tag = (
        b"TAG"
        + field("KLING EMULATOR RENDER", 30)
        + field("klingflow emulator", 30)
        + field("prerendered benchmark", 30)
        + b"0000"
        + field(request_id.replace("-", "")[:30], 30)
        + b"\xff"
    )
    with path.open("ab") as handle:
        handle.write(tag)


class Prerendered:
    """Stock clips under ``cache_dir``, rendered once each, copied and tagged per request."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.renders = 0

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def stock_clip(self, alias: str, size: tuple[int, int], frames: int) -> Path:
        """The cached silent clip for (endpoint, size, frames), rendered on first use."""
        path = self.cache_dir / f"stock-{alias}-{size[0]}x{size[1]}-{frames}f.mp4"
        with self._lock(path.name):
            if not path.is_file():
                render.render_stock_clip(
                    title=f"{alias} (prerendered)",
                    prompt=f"prerendered benchmark clip: {alias}, {size[0]}x{size[1]}, {frames} frames",
                    size=size,
                    frames=frames,
                    out=path,
                )
                self.renders += 1
        return path

    def video(self, alias: str, size: tuple[int, int], frames: int, out: Path, request_id: str) -> None:
        """Write a distinct copy of the stock clip to ``out``."""
        with atomic_path(out) as partial:
            shutil.copyfile(self.stock_clip(alias, size, frames), partial)
            tag_mp4(partial, request_id)

    def with_audio(
        self, alias: str, size: tuple[int, int], frames: int, audio: Path, out: Path, request_id: str
    ) -> None:
        """The stock clip with the request's audio muxed in (video copied, audio encoded)."""
        silent = self.stock_clip(alias, size, frames)
        mux_audio(silent, audio, out, fit="trim", context=f"prerendered {alias} {out}")
        tag_mp4(out, request_id)

    def soundtrack_clip(self, frames: int) -> Path:
        """The cached stock soundtrack (MP3) lasting ``frames`` frames, rendered on first use."""
        path = self.cache_dir / f"stock-sound-{frames}f.mp3"
        with self._lock(path.name):
            if not path.is_file():
                render.render_soundtrack(
                    text=_STOCK_TEXT, voice_id="emulator", seconds=frames / FPS, out=path
                )
                self.renders += 1
        return path

    def soundtrack(self, frames: int, out: Path, request_id: str) -> None:
        """Write a distinct copy of the stock soundtrack to ``out``."""
        with atomic_path(out) as partial:
            shutil.copyfile(self.soundtrack_clip(frames), partial)
            tag_mp3(partial, request_id)

    def with_sound(self, alias: str, size: tuple[int, int], frames: int, out: Path, request_id: str) -> None:
        """A distinct copy of the stock clip with the stock soundtrack (muxed once per clip)."""
        path = self.cache_dir / f"stock-{alias}-{size[0]}x{size[1]}-{frames}f-sound.mp4"
        with self._lock(path.name):
            if not path.is_file():
                silent = self.stock_clip(alias, size, frames)
                mux_audio(silent, self.soundtrack_clip(frames), path, context=f"prerendered {alias} {path}")
        with atomic_path(out) as partial:
            shutil.copyfile(path, partial)
            tag_mp4(partial, request_id)

    def picture(self, size: tuple[int, int], out: Path, request_id: str) -> None:
        """The stock picture of ``size`` in ``out``'s format, its comment naming the request."""
        path = self.cache_dir / f"stock-picture-{size[0]}x{size[1]}.png"
        with self._lock(path.name):
            if not path.is_file():
                prompt = f"prerendered benchmark picture, {size[0]}x{size[1]}"
                save_picture(
                    picture_for(title="kling (prerendered)", prompt=prompt, size=size, index=0), path
                )
                self.renders += 1
        with Image.open(path) as stock:
            note = f"KLING EMULATOR RENDER (prerendered benchmark picture) request {request_id}"
            save_picture(stock.convert("RGB"), out, note=note)

    def tts(self, text: str, voice_id: str, voice_speed: float, out: Path, request_id: str) -> float:
        """A stock speech clip as long as ``text`` would be, copied and tagged; returns its seconds."""
        seconds = round(speech_seconds(text, voice_speed), 3)
        key = hashlib.sha256(f"{voice_id}:{seconds}".encode()).hexdigest()[:16]
        path = self.cache_dir / f"stock-tts-{key}.mp3"
        meta = path.with_suffix(".seconds")
        with self._lock(path.name):
            if not (path.is_file() and meta.is_file()):
                speed = len(_STOCK_TEXT) / (TTS_CHARS_PER_SECOND * seconds)
                probed = render.render_tts(text=_STOCK_TEXT, voice_id=voice_id, voice_speed=speed, out=path)
                meta.write_text(repr(probed))
                self.renders += 1
        with atomic_path(out) as partial:
            shutil.copyfile(path, partial)
            tag_mp3(partial, request_id)
        return float(meta.read_text())
