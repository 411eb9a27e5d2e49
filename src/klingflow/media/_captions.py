"""Captions for a narrated clip: SRT and WebVTT from the words and their audio, on the video or in it.

The pauses are found in this process: PyAV decodes the audio and numpy looks for quiet stretches by
the rule of ffmpeg's ``silencedetect``, which run as a second ffmpeg process was most of what a soft
track cost beyond the stream copy. The cues come from :mod:`._cues`; the files are written by
pysubs2. A soft track is the SRT converted to ``mov_text`` beside the video's own packets, copied
as they are. Burning draws the cues with libass (``ass`` filter) from an
ASS script laid out on the video's own pixels, with a font size at which a full line fits the
width (SRT's default canvas is 384x288, which makes captions on a portrait clip far too large and
wraps them again), in the font shipped with klingflow: libass draws nothing, and ffmpeg still
succeeds, when it finds no font, and a machine without fontconfig fonts is common in containers.
ffmpeg runs in a scratch folder holding the script and the font under fixed names, so the filter
graph never sees the caller's paths (a colon or quote in a file name would be parsed as filter
syntax).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import av
import numpy as np
import pysubs2

from klingflow._files import atomic_path
from klingflow.errors import MediaError
from klingflow.media._concat import VIDEO_ENCODE
from klingflow.media._cues import MAX_LINE, Cue, cue_lines, timed_cues
from klingflow.media._probe import existing, inspect_video, probe, unreadable
from klingflow.media._run import run_ffmpeg, where

__all__ = ["CAPTION_FONT", "CaptionsResult", "add_captions", "find_pauses"]

CAPTION_FONT = "DejaVu Sans"
"""The family of the shipped font (``data/fonts``), the one burned captions are drawn in."""

PAUSE_NOISE_DB = -35
PAUSE_SECONDS = 0.2
"""A pause is at least this long and quieter than PAUSE_NOISE_DB: the gap between spoken sentences."""

_BATCH = 1 << 16
"""Sample instants looked through at once: numpy's per-call cost, paid for each ~1024-sample frame,
would double the decoding time, and a clip of any length still needs only this much at a time."""
_LINE_WIDTH_EM = 0.45 * MAX_LINE
"""A full line's width in font sizes: DejaVu Sans sets text at about 0.4 em a character, spaces included."""
_LINE_HEIGHT = 0.055
"""The largest font size as a share of the picture's height (about 59 px at 1080p, as broadcasters use)."""


@dataclass(frozen=True)
class CaptionsResult:
    """What :func:`add_captions` wrote: the captioned video, the SRT and WebVTT files, and the cues."""

    video: Path
    srt: Path
    vtt: Path
    cues: list[Cue]


def _quiet(samples: np.ndarray, planar: bool, channels: int) -> np.ndarray:
    """Which instants of decoded audio (PyAV's arrays: channels x samples when planar, else one row
    of interleaved samples) are quiet: every channel's amplitude below PAUSE_NOISE_DB, compared as
    ``silencedetect`` compares (integers against the threshold times the format's largest value,
    unsigned 8-bit around its midpoint, as ffmpeg converts it)."""
    if not planar:
        samples = samples.reshape(-1, channels).T
    quiet = 10 ** (PAUSE_NOISE_DB / 20)
    if samples.dtype == np.uint8:
        samples, limit = samples.astype(np.int16) - 128, quiet * 128
    elif samples.dtype.kind == "i":
        limit = quiet * np.iinfo(samples.dtype).max
    else:
        limit = quiet
    # two comparisons, not abs(): abs of the most negative integer overflows to itself
    return np.asarray(((samples < limit) & (samples > -limit)).all(axis=0))


def _stretches(quiet: np.ndarray, position: int, runs: list[list[int]]) -> int:
    """Add the quiet stretches of ``quiet`` (instants from ``position`` on) to ``runs``, joining one
    that goes on from the stretch before; returns the position after them."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], quiet, [False])).astype(np.int8)))
    for first, end in (edges + position).reshape(-1, 2).tolist():
        if runs and runs[-1][1] == first:
            runs[-1][1] = end
        else:
            runs.append([first, end])
    return position + len(quiet)


def find_pauses(audio: Path, *, context: str = "") -> list[tuple[float, float]]:
    """The pauses (start, end in seconds) in a file's first audio: at least PAUSE_SECONDS in which no
    channel is louder than PAUSE_NOISE_DB.

    The rule and the clock are ffmpeg's ``silencedetect`` (``noise``/``d`` set to those constants) as
    the ffmpeg command line runs it: times from the file's start time, the last pause ending where the
    stream does. Decoding in this process takes about a quarter of the time an ffmpeg process takes
    for the same pass (8 ms against 33 ms for 10 s of AAC).
    """
    source = existing(audio, context)
    runs: list[list[int]] = []  # [first, end) sample index of each quiet stretch
    position, rate, origin, last = 0, 0, 0.0, float("inf")
    try:
        with av.open(str(source)) as container:
            if not container.streams.audio:
                raise MediaError("file has no audio stream to find pauses in", context=where(context, source))
            stream = container.streams.audio[0]
            start = container.start_time / av.time_base if container.start_time is not None else 0.0
            if stream.duration is not None and stream.time_base is not None:
                last = float((stream.start_time or 0) + stream.duration) * float(stream.time_base) - start
            pending: list[np.ndarray] = []  # decoded frames of one layout, not looked through yet
            layout, waiting = (False, 0), 0
            for frame in container.decode(stream):
                if not rate:
                    rate, origin = frame.sample_rate, float(frame.time or 0.0) - start
                this = (frame.format.is_planar, frame.layout.nb_channels)
                if pending and (this != layout or waiting >= _BATCH):
                    position = _stretches(_quiet(np.concatenate(pending, axis=1), *layout), position, runs)
                    pending, waiting = [], 0
                pending.append(frame.to_ndarray())
                layout, waiting = this, waiting + frame.samples
            if pending:
                _stretches(_quiet(np.concatenate(pending, axis=1), *layout), position, runs)
    except av.error.FFmpegError as exc:
        raise unreadable(source, context, exc) from exc
    shortest = round(PAUSE_SECONDS * rate)
    return [
        (max(0.0, origin + first / rate), min(origin + end / rate, last))
        for first, end in runs
        if end - first >= shortest
    ]


def _font_folder() -> resources.abc.Traversable:
    return resources.files("klingflow") / "data" / "fonts"


def _write(cues: list[Cue], srt: Path, vtt: Path) -> None:
    subs = pysubs2.SSAFile()
    for cue in cues:
        text = r"\N".join(cue.lines).replace("{", "(").replace("}", ")")  # braces are ASS tags
        subs.events.append(
            pysubs2.SSAEvent(start=round(cue.start * 1000), end=round(cue.end * 1000), text=text)
        )
    for path, form in ((srt, "srt"), (vtt, "vtt")):
        with atomic_path(path) as partial:
            subs.save(str(partial), format_=form)


def _soft(video: Path, srt: Path, out: Path, doing: str) -> None:
    with atomic_path(out) as partial:
        run_ffmpeg(
            [
                "-i",
                str(video.absolute()),
                "-i",
                str(srt.absolute()),
                "-map",
                "0:v",
                "-map",
                "0:a?",
                "-map",
                "1:0",
                "-c",
                "copy",
                "-c:s",
                "mov_text",
                "-metadata:s:s:0",
                "handler_name=Captions",
                "-f",
                "mp4",
                "-movflags",
                "+faststart",
                str(partial),
            ],
            context=doing,
        )


def _script(srt: Path, width: int, height: int, out: Path) -> None:
    """An ASS script of the cues on a ``width`` x ``height`` canvas, in the shipped font, sized so a
    line of MAX_LINE characters fits the width, set above the bottom twelfth (where players and
    platforms put their controls)."""
    subs = pysubs2.load(str(srt))
    size = max(8, round(min(0.9 * width / _LINE_WIDTH_EM, _LINE_HEIGHT * height)))
    subs.info.update({"PlayResX": str(width), "PlayResY": str(height), "WrapStyle": "0"})
    subs.styles["Default"] = pysubs2.SSAStyle(
        fontname=CAPTION_FONT,
        fontsize=size,
        outline=max(1, size / 14),
        shadow=max(0.5, size / 28),
        marginl=width // 20,
        marginr=width // 20,
        marginv=max(8, height // 12),
    )
    subs.save(str(out), format_="ass")


def _burned(video: Path, srt: Path, out: Path, doing: str) -> None:
    facts = inspect_video(video, context=doing)
    encode = [f"-{key}" for key in VIDEO_ENCODE]
    options = [
        part for key, value in zip(encode, VIDEO_ENCODE.values(), strict=True) for part in (key, str(value))
    ]
    with tempfile.TemporaryDirectory(prefix="klingflow-captions-") as scratch, atomic_path(out) as partial:
        folder = Path(scratch)
        _script(srt, facts.width, facts.height, folder / "captions.ass")
        (folder / "fonts").mkdir()
        for font in _font_folder().iterdir():
            if font.name.endswith(".ttf"):
                (folder / "fonts" / font.name).write_bytes(font.read_bytes())
        log = run_ffmpeg(
            [
                "-i",
                str(video.absolute()),
                "-map",
                "0:v:0",
                "-map",
                "0:a?",
                "-vf",
                "ass=captions.ass:fontsdir=fonts",
                *options,
                "-c:a",
                "copy",
                "-f",
                "mp4",
                "-movflags",
                "+faststart",
                str(partial.absolute()),
            ],
            context=doing,
            cwd=folder,
            loglevel="info",
        )
        if "failed to find any fallback" in log or "no usable fonts" in log.lower():
            raise MediaError("libass found no font to draw the captions with", context=doing)


def add_captions(
    text: str,
    audio: Path,
    video: Path,
    out: Path,
    srt: Path,
    vtt: Path,
    *,
    burn: bool = False,
    context: str = "",
) -> CaptionsResult:
    """Caption ``video`` with ``text`` as spoken in ``audio``: write ``srt``, ``vtt`` and ``out``.

    ``out`` is the video with the captions as a soft ``mov_text`` track (its video and audio packets
    copied unchanged) or, with ``burn``, drawn into its frames (the video re-encoded, the audio copied).

    Example:
        >>> add_captions("Hello there. Welcome!", Path("voice.mp3"), Path("talk.mp4"),
        ...              Path("talk-captioned.mp4"), Path("talk.srt"), Path("talk.vtt"))  # doctest: +SKIP
    """
    blocks = cue_lines(text)
    if not blocks:
        raise MediaError("no words to caption: the text is empty", context=context)
    inspect_video(video, context=context)
    sound = probe(audio, context=context)
    if not sound.has_audio:
        raise MediaError("file has no audio stream to time the captions by", context=where(context, audio))
    duration = sound.audio_duration or sound.duration
    pauses = [(start, min(end, duration)) for start, end in find_pauses(audio, context=context)]
    cues = timed_cues(blocks, duration, pauses)
    _write(cues, srt, vtt)
    doing = where(context, out) + f" (captioning {video}{', burned in' if burn else ''})"
    (_burned if burn else _soft)(Path(video), srt, out, doing)
    return CaptionsResult(video=out, srt=srt, vtt=vtt, cues=cues)
