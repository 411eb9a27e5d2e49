"""Finding ffmpeg, running it, and writing its outputs so that no partial file is ever visible."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ffmpeg

from klingflow.errors import MediaError
from klingflow.settings import settings

__all__ = ["ffmpeg_executable", "run_ffmpeg", "where"]

_STDERR_TAIL_LINES = 12


@functools.cache
def ffmpeg_executable() -> str:
    """Return the ffmpeg binary to run: ``KLINGFLOW_FFMPEG``, else ffmpeg on PATH, else the bundled one."""
    explicit = settings().ffmpeg
    if explicit:
        return explicit
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _tail(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return "\n".join(text.strip().splitlines()[-_STDERR_TAIL_LINES:])


def run_ffmpeg(
    graph: Any | Sequence[str],
    *,
    context: str,
    input_bytes: bytes | None = None,
    cwd: Path | None = None,
    loglevel: str = "error",
) -> str:
    """Run an ffmpeg-python graph (or a ready argument list) and raise MediaError on failure.

    ``context`` says what was being made (e.g. the output path and step) so the error is useful.
    Returns ffmpeg's log (stderr), where filters report at the ``info`` ``loglevel`` (libass that it
    found no font, ``silencedetect`` its pauses). ``cwd`` lets a filter argument name its files
    relatively, so a path's colons and quotes never reach the filter graph's parser.
    """
    if isinstance(graph, Sequence) and not isinstance(graph, str):
        args = [ffmpeg_executable(), *graph]
    else:
        args = ffmpeg.compile(graph, cmd=ffmpeg_executable(), overwrite_output=True)
    args = [args[0], "-hide_banner", "-nostdin", "-loglevel", loglevel, *args[1:]]
    if input_bytes is not None:
        args.remove("-nostdin")
    try:
        done = subprocess.run(args, input=input_bytes, capture_output=True, check=False, cwd=cwd)
    except OSError as exc:
        raise MediaError(
            f"could not start ffmpeg ({args[0]})",
            context=context,
            hint="install the project again (imageio-ffmpeg bundles ffmpeg) or set KLINGFLOW_FFMPEG",
        ) from exc
    if done.returncode != 0:
        raise MediaError(
            f"ffmpeg exited with code {done.returncode}", context=context, stderr_tail=_tail(done.stderr)
        )
    return done.stderr.decode("utf-8", "replace")


def where(context: str, path: str | os.PathLike[str]) -> str:
    """The error context for one file: the caller's description (e.g. the step) and the path."""
    return f"{context}: {path}" if context else str(path)
