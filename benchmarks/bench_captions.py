"""Benchmark: what captions cost on a 1080p 10 s clip, beside what the same clip costs without them.

Three pairs, each timed side by side (A, B, A, B ... in one run, so a busy machine slows both):

1. **burned**: ``add_captions(..., burn=True)`` (pauses found, cues written, the video re-encoded
   with the libass ``ass`` filter) against re-encoding the same clip with the same encoder
   settings (``VIDEO_ENCODE``, audio copied) and no captions. Goal: at most 1.5x.
2. **soft**: ``add_captions(..., burn=False)`` (pauses, cues, a ``mov_text`` track beside the
   copied packets) against a plain stream copy of the clip (``-c copy``). Goal: about the copy.
3. **cut**: ``concat`` of two soft-captioned copies of the clip (their tracks read, moved and
   joined) against ``concat`` of the same two clips without captions; both take the stream-copy
   path, so the difference is the caption track alone.

The clip is 1920x1080 at 30 fps (lavfi ``testsrc2``, moving, so the encoder has real work) with
a voice-like AAC track: tone bursts separated by pauses, like two sentences of speech. Not a
test: it prints the machine and a Markdown table of medians for docs/benchmarks.md. The CPU
columns count ffmpeg's own seconds (the children of this process), which a busy machine moves
far less than the wall times.

Usage::

    .venv/bin/python benchmarks/bench_captions.py [--pairs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from klingflow.media import add_captions, concat, ffmpeg_executable, probe, run_ffmpeg
from klingflow.media._concat import VIDEO_ENCODE

SECONDS = 10
SPOKEN = [(0.4, 3.6), (4.3, 9.4)]
TEXT = (
    "Good evening, and welcome to the coast. "
    "Tonight the wind turns to the west, the sea calms down, and by the morning the fog that "
    "has covered the harbour all week lifts at last, just in time for the boats to go out."
)


@dataclass
class Pair:
    """One race: the captioned side (A) and the side without captions (B), timed in turns."""

    name: str
    goal: str
    a_label: str
    b_label: str
    a: Callable[[], object]
    b: Callable[[], object]
    a_wall: list[float] = field(default_factory=list)
    b_wall: list[float] = field(default_factory=list)
    a_cpu: list[float] = field(default_factory=list)
    b_cpu: list[float] = field(default_factory=list)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(job: Callable[[], object], wall: list[float], cpu: list[float]) -> None:
    spent, started = _children_cpu(), time.perf_counter()
    job()
    wall.append(time.perf_counter() - started)
    cpu.append(_children_cpu() - spent)


def make_clip(folder: Path) -> tuple[Path, Path]:
    """The voice (m4a) and the 1080p clip carrying it."""
    sounding = "+".join(f"between(t\\,{a}\\,{b})" for a, b in SPOKEN)
    voice = f"aevalsrc='({sounding})*0.4*sin(2*PI*220*t)*(1+0.5*sin(2*PI*3*t))':s=48000:d={SECONDS}"
    audio, video = folder / "voice.m4a", folder / "clip.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", voice, "-c:a", "aac", "-y", str(audio)], context="voice")
    picture = f"testsrc2=s=1920x1080:r=30:d={SECONDS}"
    run_ffmpeg(
        ["-f", "lavfi", "-i", picture, "-i", str(audio), "-c:v", "libx264", "-preset", "veryfast"]
        + ["-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "copy", "-shortest", "-y", str(video)],
        context="clip",
    )
    return audio, video


def _encode_options() -> list[str]:
    return [part for key, value in VIDEO_ENCODE.items() for part in (f"-{key}", str(value))]


def pairs(folder: Path) -> list[Pair]:
    audio, video = make_clip(folder)
    sides = {name: folder / name for name in ("srt", "vtt")}

    def captions(out: str, burn: bool) -> Callable[[], object]:
        return lambda: add_captions(
            TEXT, audio, video, folder / out, sides["srt"], sides["vtt"], burn=burn, context="benchmark"
        )

    def reencode() -> None:
        run_ffmpeg(
            ["-i", str(video), "-map", "0:v:0", "-map", "0:a?", *_encode_options(), "-c:a", "copy"]
            + ["-f", "mp4", "-movflags", "+faststart", "-y", str(folder / "reencoded.mp4")],
            context="re-encode",
        )

    def copy() -> None:
        run_ffmpeg(
            ["-i", str(video), "-map", "0:v", "-map", "0:a?", "-c", "copy"]
            + ["-f", "mp4", "-movflags", "+faststart", "-y", str(folder / "copied.mp4")],
            context="copy",
        )

    soft = folder / "soft.mp4"
    captions("soft.mp4", False)()
    return [
        Pair(
            "burned in vs re-encoded without captions",
            "<= 1.5",
            "add_captions(burn=True)",
            "re-encode (same settings)",
            captions("burned.mp4", True),
            reencode,
        ),
        Pair(
            "soft track vs stream copy",
            "about 1",
            "add_captions(burn=False)",
            "ffmpeg -c copy",
            captions("soft-again.mp4", False),
            copy,
        ),
        Pair(
            "cut of two clips, captioned vs plain",
            "",
            "concat, soft-captioned clips",
            "concat, same clips without",
            lambda: concat([soft, soft], folder / "cut-captioned.mp4", context="benchmark"),
            lambda: concat([video, video], folder / "cut-plain.mp4", context="benchmark"),
        ),
    ]


def race(pair: Pair, count: int) -> None:
    pair.a(), pair.b()  # warm: the page cache holds the clip, the interpreter its imports
    for _ in range(count):
        _timed(pair.a, pair.a_wall, pair.a_cpu)
        _timed(pair.b, pair.b_wall, pair.b_cpu)
        print(f"  {pair.name}: {pair.a_wall[-1]:.3f} / {pair.b_wall[-1]:.3f} s", file=sys.stderr)


def _spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _ffmpeg_version() -> str:
    shown = subprocess.run([ffmpeg_executable(), "-version"], capture_output=True, text=True).stdout.split()
    return f"ffmpeg {shown[2]}" if len(shown) > 2 else "ffmpeg of unknown version"


def report(races: list[Pair], clip: Path, count: int) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    info = probe(clip)
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"{memory:.1f} GiB, Python {platform.python_version()}, load average before "
        f"{os.getloadavg()[0]:.1f}; {_ffmpeg_version()}.",
        f"Clip: {info.width}x{info.height}, {info.fps:g} fps, {info.video_duration:.1f} s, "
        f"{info.bytes / 1e6:.1f} MB, AAC. {count} alternating pairs per race, median (min-max).",
        "",
        "| race | A | B | A wall s | B wall s | A/B wall (pair by pair) | goal | A / B CPU s (ffmpeg) "
        "| A/B CPU |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for pair in races:
        ratios = [a / b for a, b in zip(pair.a_wall, pair.b_wall, strict=True)]
        cpu_ratios = [a / b for a, b in zip(pair.a_cpu, pair.b_cpu, strict=True) if b > 0]
        cpu = f"{statistics.median(pair.a_cpu):.2f} / {statistics.median(pair.b_cpu):.2f}"
        lines.append(
            f"| {pair.name} | {pair.a_label} | {pair.b_label} | {_spread(pair.a_wall, 3)} | "
            f"{_spread(pair.b_wall, 3)} | {_spread(ratios, 2)} | {pair.goal} | {cpu} | "
            f"{_spread(cpu_ratios, 2) if cpu_ratios else '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="alternating runs of each side per race")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klingflow-bench-captions-") as scratch:
        folder = Path(scratch)
        races = pairs(folder)
        for pair in races:
            race(pair, arguments.pairs)
        print(report(races, folder / "clip.mp4", arguments.pairs))


if __name__ == "__main__":
    main()
