"""probe() on real files made by the bundled ffmpeg, and its errors on non-media."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from klingflow.errors import MediaError
from klingflow.media import ffmpeg_executable, probe, run_ffmpeg


def test_bundled_or_system_ffmpeg_is_found() -> None:
    assert Path(ffmpeg_executable()).is_file()


def test_probe_reads_streams(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25:duration=2",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000:duration=2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(out),
        ],
        context=str(out),
    )
    info = probe(out)
    assert (info.width, info.height, info.fps, info.display_aspect) == (640, 360, 25.0, "16:9")
    assert info.video_codec == "h264" and info.pixel_format == "yuv420p" and info.frames == 50
    assert info.has_audio and info.audio_codec == "aac" and info.sample_rate == 48000
    assert abs(info.video_duration - 2.0) < 0.041


def test_probe_refuses_a_text_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video at all\n" * 20)
    with pytest.raises(MediaError) as info:
        probe(notes)
    assert str(notes) in str(info.value)


def test_probe_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="does not exist"):
        probe(tmp_path / "missing.mp4")


def test_ffmpeg_failure_carries_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as info:
        run_ffmpeg(["-i", str(tmp_path / "nope.mp4"), str(tmp_path / "out.mp4")], context="converting nope")
    assert "converting nope" in str(info.value) and "No such file" in info.value.stderr_tail


def test_probe_errors_carry_the_callers_context(tmp_path: Path) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video at all\n" * 20)
    with pytest.raises(MediaError) as info:
        probe(notes, context="step 'shot1'")
    assert str(info.value).startswith(f"step 'shot1': {notes}: not a readable media file")
    assert info.value.stderr_tail  # libav's reason, as ffmpeg would print it


def test_probe_is_cheap_enough_for_every_step_output(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    run_ffmpeg(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=30:duration=5",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            str(out),
        ],
        context=str(out),
    )
    started = time.perf_counter()
    for _ in range(20):
        probe(out)
    # Header reads only, no decoding: a few milliseconds each even on a busy 2-core machine.
    assert (time.perf_counter() - started) / 20 < 0.05
