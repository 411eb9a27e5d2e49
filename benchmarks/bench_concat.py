"""Benchmark: joining 20 Kling-shaped clips (5 s, 1280x720, 30 fps H.264) four ways.

1. klingflow's stream-copy path (what identical clips get);
2. klingflow's normalising path on the same clips (what mixed clips get: decode, scale, encode);
   and, with a speech track muxed into every clip, the stream-copy path (video copied, audio
   rebuilt) beside a plain ``ffmpeg -f concat -c copy``, to show the audio drift it avoids;
3. 19 of the clips and one 1:1 clip among them through ``concat`` (the conformed path: the odd
   clip re-encoded to match, every packet copied), in pairs with the same work done by hand: one
   ffmpeg encode of that clip with the same settings, then ``ffmpeg -f concat -c copy``;
4. MoviePy 2 (``concatenate_videoclips`` + ``write_videofile``) with the same encoder settings,
   run with another interpreter because MoviePy is not a klingflow dependency.

Not a test: it prints wall and CPU seconds and the probed output of each run as a Markdown table
for docs/benchmarks.md. Clips are rendered by the emulator, as fal would deliver them.

Usage::

    .venv/bin/python benchmarks/bench_concat.py [--repeat 3] [--moviepy-python /path/to/python]
    .venv/bin/python benchmarks/bench_concat.py --conformed-only --repeat 5

``--moviepy-python`` names an interpreter with moviepy installed (for example a separate venv
made with ``python -m venv /tmp/mp && /tmp/mp/bin/pip install moviepy``); without it the MoviePy
row is left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import av

from klingflow.emulator.render import render_text_to_video, render_tts
from klingflow.media import ConcatTarget, concat, ffmpeg_executable, mux_audio, probe, run_ffmpeg
from klingflow.media._concat import VIDEO_ENCODE, write_concat
from klingflow.media._concat_conform import matching_encoder
from klingflow.media._concat_plan import plan_concat
from klingflow.media._probe import inspect_video

CLIPS = 20
ODD_AT = 12
"""Where the 1:1 clip goes among the 20 of the conformed case."""
CONFORMED = "klingflow concat, 19 clips + one 1:1 (conformed)"
BY_HAND = "by hand: encode the 1:1 clip alone, `-f concat -c copy`"
PROMPTS = [f"shot {index}: a coastline at golden hour, seen from a drone" for index in range(CLIPS)]

MOVIEPY_JOB = """
import sys, time
from moviepy import VideoFileClip, concatenate_videoclips
out, *paths = sys.argv[1:]
started = time.perf_counter()
clips = [VideoFileClip(path, audio=False) for path in paths]
joined = concatenate_videoclips(clips)
joined.write_videofile(out, codec="libx264", preset="{preset}", ffmpeg_params=["-crf", "{crf}"],
                       audio=False, logger=None)
print(time.perf_counter() - started)
"""


@dataclasses.dataclass
class Row:
    name: str
    wall: list[float]
    cpu: list[float]
    output: Path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(name: str, repeat: int, output: Path, job: Callable[[], None]) -> Row:
    row = Row(name, [], [], output)
    for _ in range(repeat):
        output.unlink(missing_ok=True)
        cpu, started = _children_cpu(), time.perf_counter()
        job()
        row.wall.append(time.perf_counter() - started)
        row.cpu.append(_children_cpu() - cpu)
        print(f"  {name}: {row.wall[-1]:.2f} s", file=sys.stderr)
    return row


def _paired(
    names: tuple[str, str],
    repeat: int,
    outputs: tuple[Path, Path],
    jobs: tuple[Callable[[], None], Callable[[], None]],
) -> list[Row]:
    """Two jobs timed in alternation, so a change in the machine's load touches both alike."""
    rows = [Row(name, [], [], output) for name, output in zip(names, outputs, strict=True)]
    for _ in range(repeat):
        for row, job in zip(rows, jobs, strict=True):
            row.output.unlink(missing_ok=True)
            cpu, started = _children_cpu(), time.perf_counter()
            job()
            row.wall.append(time.perf_counter() - started)
            row.cpu.append(_children_cpu() - cpu)
            print(f"  {row.name}: {row.wall[-1]:.2f} s", file=sys.stderr)
    return rows


def render_clips(folder: Path) -> list[Path]:
    clips = []
    for index, prompt in enumerate(PROMPTS):
        clip = folder / f"clip{index:02d}.mp4"
        render_text_to_video(
            prompt=prompt,
            duration=5,
            aspect_ratio="16:9",
            camera_control=None,
            advanced_camera_control=None,
            out=clip,
        )
        clips.append(clip)
    return clips


def voice_clips(clips: list[Path], folder: Path) -> list[Path]:
    """The same clips, each given a looped speech track, as ai-avatar style clips carry."""
    speech = folder / "speech.mp3"
    render_tts(
        text="Here is the forecast for the coast today. " * 2,
        voice_id="Calm_Woman",
        voice_speed=1.1,
        out=speech,
    )
    return [mux_audio(clip, speech, folder / f"voiced-{clip.name}", fit="loop") for clip in clips]


def _naive_copy(clips: list[Path], out: Path, folder: Path) -> None:
    """What a plain ``ffmpeg -f concat -c copy`` does with AAC tracks (for the drift column)."""
    listing = folder / "naive.txt"
    listing.write_text("".join(f"file '{clip}'\n" for clip in clips))
    run_ffmpeg(
        ["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", "-y", str(out)], context="naive"
    )


def _by_hand(clips: list[Path], out: Path, folder: Path) -> None:
    """The conformed case without klingflow: the odd clip encoded alone, then a plain stream copy.

    The encode uses the settings klingflow chooses (the majority's, read from their x264 SEI), so
    the two sides differ only in what klingflow adds around the same two ffmpeg runs.
    """
    reference = inspect_video(clips[0], context="benchmark")
    encoder = matching_encoder(reference, VIDEO_ENCODE, context="benchmark")
    odd = folder / "by-hand-odd.mp4"
    fit = f"fps={reference.rate},scale=720:720,pad=1280:720:280:0:color=black,setsar={encoder.sar}"
    args = ["-i", str(clips[ODD_AT]), "-map", "0:v:0", "-vf", fit]
    for name, value in encoder.options.items():
        args += [f"-{name}", str(value)]
    run_ffmpeg(
        [*args, "-f", "mp4", "-fflags", "+bitexact", "-map_metadata", "-1", "-y", str(odd)], context="by hand"
    )
    listing = folder / "by-hand.txt"
    joined = [odd if index == ODD_AT else clip for index, clip in enumerate(clips)]
    listing.write_text("".join(f"file '{clip}'\n" for clip in joined))
    copy = ["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", "-movflags", "+faststart"]
    run_ffmpeg([*copy, "-y", str(out)], context="by hand")


def conformed_rows(clips: list[Path], repeat: int, folder: Path) -> list[Row]:
    """Case 3: 19 matching clips and a 1:1 one, through concat and by hand, in pairs."""
    odd = folder / "odd-square.mp4"
    render_text_to_video(
        prompt="a tea cup on a table",
        duration=5,
        aspect_ratio="1:1",
        camera_control=None,
        advanced_camera_control=None,
        out=odd,
    )
    inputs = [*clips[:ODD_AT], odd, *clips[ODD_AT + 1 :]]
    facts = tuple(inspect_video(clip, context="benchmark") for clip in inputs)
    plan = plan_concat(facts, ConcatTarget(), None, context="benchmark")
    assert plan.path_taken == "conformed" and plan.conform == (ODD_AT,), plan.reason
    outputs = (folder / "conformed.mp4", folder / "by-hand.mp4")
    return _paired(
        (CONFORMED, BY_HAND),
        repeat,
        outputs,
        (
            lambda: _expect_conformed(concat(inputs, outputs[0], context="benchmark").path_taken),
            lambda: _by_hand(inputs, outputs[1], folder),
        ),
    )


def _expect_conformed(path_taken: str) -> None:
    assert path_taken == "conformed", path_taken


def run(repeat: int, moviepy_python: str | None, folder: Path, *, conformed_only: bool) -> list[Row]:
    print(f"rendering {CLIPS} clips ...", file=sys.stderr)
    clips = render_clips(folder)
    if conformed_only:
        return conformed_rows(clips, repeat, folder)
    voiced = voice_clips(clips, folder)
    facts = tuple(inspect_video(clip, context="benchmark") for clip in clips)
    plan = plan_concat(facts, ConcatTarget(), None, context="benchmark")
    assert plan.path_taken == "stream_copy", plan.reason
    forced = dataclasses.replace(plan, path_taken="normalised", reason="forced by the benchmark")
    voiced_facts = tuple(inspect_video(clip, context="benchmark") for clip in voiced)
    voiced_plan = plan_concat(voiced_facts, ConcatTarget(), None, context="benchmark")
    assert voiced_plan.path_taken == "stream_copy", voiced_plan.reason
    rows = [
        _timed(
            "klingflow stream copy",
            repeat,
            folder / "copy.mp4",
            lambda: write_concat(plan, folder / "copy.mp4", context="benchmark"),
        ),
        _timed(
            "klingflow normalising (re-encode)",
            repeat,
            folder / "normalised.mp4",
            lambda: write_concat(forced, folder / "normalised.mp4", context="benchmark"),
        ),
        _timed(
            "klingflow stream copy, clips with AAC (audio rebuilt)",
            repeat,
            folder / "voiced.mp4",
            lambda: write_concat(voiced_plan, folder / "voiced.mp4", context="benchmark"),
        ),
        _timed(
            "plain `ffmpeg -f concat -c copy`, clips with AAC",
            repeat,
            folder / "naive.mp4",
            lambda: _naive_copy(voiced, folder / "naive.mp4", folder),
        ),
    ]
    rows += conformed_rows(clips, repeat, folder)
    if moviepy_python:
        script = MOVIEPY_JOB.format(preset=VIDEO_ENCODE["preset"], crf=VIDEO_ENCODE["crf"])
        out = folder / "moviepy.mp4"
        command = [moviepy_python, "-c", script, str(out), *map(str, clips)]
        moviepy = "MoviePy 2 concatenate_videoclips"
        rows.append(_timed(moviepy, repeat, out, lambda: subprocess.run(command, check=True)))
    return rows


def _ffmpeg_version() -> str:
    first = subprocess.run([ffmpeg_executable(), "-version"], capture_output=True, text=True).stdout
    return first.splitlines()[0] if first else "unknown"


def _moviepy_version(moviepy_python: str | None) -> str:
    if not moviepy_python:
        return "not run"
    shown = subprocess.run(
        [moviepy_python, "-c", "import importlib.metadata as m; print(m.version('moviepy'))"],
        capture_output=True,
        text=True,
    )
    return shown.stdout.strip() or "unknown"


def _decoded_seconds(path: Path) -> float:
    """How long the audio really plays: every decoded sample, whatever the container claims.

    Container durations hide drift (ffmpeg rewrites the clashing timestamps at each join), but a
    player plays every sample, so the count is what matters. The last AAC frame's padding (under
    21 ms) is counted too.
    """
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate


def report(rows: list[Row], moviepy_python: str | None) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {memory:.1f} GiB"
    lines = [
        f"Run on {date.today().isoformat()}: {machine}, Python {platform.python_version()},",
        f"{_ffmpeg_version()}, MoviePy {_moviepy_version(moviepy_python)}.",
        f"Best of {len(rows[0].wall)} run(s).",
        "",
        "| path | wall s | CPU s (ffmpeg) | output | decoded audio − video | size |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in rows:
        info = probe(row.output)
        output = f"{info.width}x{info.height}, {info.frames} frames, {info.video_duration:.3f} s"
        cpu = f"{min(row.cpu):.1f}" if "MoviePy" not in row.name else f"{min(row.cpu):.1f} (incl. Python)"
        best = min(row.wall)
        spread = f" (median {statistics.median(row.wall):.2f})" if len(row.wall) > 2 else ""
        size = f"{info.bytes / 1e6:.1f} MB"
        drift = (
            f"{_decoded_seconds(row.output) - info.video_duration:+.3f} s" if info.has_audio else "no audio"
        )
        lines.append(f"| {row.name} | {best:.2f}{spread} | {cpu} | {output} | {drift} | {size} |")
    pair = [row for row in rows if row.name in (CONFORMED, BY_HAND)]
    if len(pair) == 2:
        ratios = sorted(ours / theirs for ours, theirs in zip(pair[0].wall, pair[1].wall, strict=True))
        cpu_ratio = min(pair[0].cpu) / min(pair[1].cpu)
        lines += [
            "",
            f"Conformed vs by hand, wall time per pair: median {statistics.median(ratios):.2f}x "
            f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}); CPU {cpu_ratio:.2f}x (best of each).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per path; the best is reported")
    parser.add_argument("--moviepy-python", help="an interpreter that has moviepy installed")
    parser.add_argument("--conformed-only", action="store_true", help="only case 3 (19 clips + one odd one)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klingflow-bench-") as folder:
        rows = run(
            arguments.repeat, arguments.moviepy_python, Path(folder), conformed_only=arguments.conformed_only
        )
        print(report(rows, arguments.moviepy_python))


if __name__ == "__main__":
    main()
