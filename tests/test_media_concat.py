"""concat() on real clips: Kling-like emulator renders and short lavfi test sources.

Every test asserts probed or decoded properties of the output (packets, frames, samples), not
just that a file appeared.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import av
import av.logging
import numpy as np
import pysubs2
import pytest
from pydantic import ValidationError

from klingflow.emulator.render import placeholder_image, render_ai_avatar, render_text_to_video, render_tts
from klingflow.errors import MediaError
from klingflow.media import (
    ConcatResult,
    ConcatTarget,
    Transition,
    concat,
    ffmpeg_executable,
    probe,
    run_ffmpeg,
)

FRAME = 1 / 30


def _video_packets(path: Path) -> list[bytes]:
    """Every video packet's payload, in file order."""
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(container.streams.video[0]) if packet.size]


def _samples(path: Path) -> tuple[np.ndarray, int]:
    """All decoded audio as float (channels, samples), and the sample rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(chunks, axis=1), stream.codec_context.sample_rate


def _rms(samples: np.ndarray, rate: int, start: float, end: float) -> float:
    window = samples[:, int(start * rate) : int(end * rate)]
    return float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))


def _frame(path: Path, index: int) -> np.ndarray:
    """Decoded frame ``index`` as RGB."""
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number == index:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{path} has no frame {index}")


def _lavfi(
    out: Path,
    *,
    size: str = "320x180",
    rate: int = 30,
    seconds: float = 2,
    colour: str = "red",
    tone: int | None = None,
    tone_seconds: float | None = None,
    sample_rate: int = 48_000,
    channels: int = 2,
) -> Path:
    """A solid-colour H.264 clip, with an AAC sine tone (as long as the video unless told) when ``tone``."""
    args = ["-f", "lavfi", "-i", f"color=c={colour}:s={size}:r={rate}:d={seconds}"]
    if tone:
        length = tone_seconds or seconds
        args += ["-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate={sample_rate}:duration={length}"]
        args += ["-c:a", "aac", "-ac", str(channels)]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
    args += ["-y", str(out)]
    run_ffmpeg(args, context=str(out))
    return out


@pytest.fixture(scope="module")
def kling(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Kling-shaped emulator renders: 16:9 5 s twice, 9:16 10 s, 1:1 5 s, and an ai-avatar with speech."""
    folder = tmp_path_factory.mktemp("kling")
    clips: dict[str, Path] = {}
    for name, prompt, duration, aspect in [
        ("wide", "a fox at dusk", 5, "16:9"),
        ("wide_b", "a red boat on a lake", 5, "16:9"),
        ("tall", "a lighthouse in fog", 10, "9:16"),
        ("square", "a cup of tea", 5, "1:1"),
    ]:
        clips[name] = folder / f"{name}.mp4"
        render_text_to_video(
            prompt=prompt,
            duration=duration,
            aspect_ratio=aspect,
            camera_control=None,
            advanced_camera_control=None,
            out=clips[name],
        )
    face, voice = folder / "face.png", folder / "voice.mp3"
    placeholder_image(label="presenter", out=face, size=(1280, 720))
    render_tts(
        text="Welcome back. Here is the forecast for today.",
        voice_id="Calm_Woman",
        voice_speed=1.0,
        out=voice,
    )
    clips["avatar"] = folder / "avatar.mp4"
    render_ai_avatar(prompt="presenter speaking", image=face, audio=voice, out=clips["avatar"])
    return clips


def test_identical_clips_are_joined_by_stream_copy(
    kling: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = [kling["wide"], kling["wide_b"], kling["wide"]]
    with caplog.at_level(logging.INFO, logger="klingflow.media"):
        result = concat(inputs, tmp_path / "cut.mp4", context="step 'final_cut'")
    assert result.path_taken == "stream_copy"
    assert "stream_copy" in caplog.text and "share codec" in caplog.text
    # Proof of the path, independent of timing: every output packet is an input packet, bit for bit.
    assert _video_packets(result.path) == [packet for clip in inputs for packet in _video_packets(clip)]
    info = probe(result.path)
    assert (info.width, info.height, info.fps, info.video_codec, info.pixel_format) == (
        1280,
        720,
        30.0,
        "h264",
        "yuv420p",
    )
    assert info.frames == 450 and abs(info.video_duration - 15.0) <= FRAME
    assert not info.has_audio
    assert result.info == info


def test_clips_with_and_without_audio_keep_sync_on_the_copy_path(
    kling: dict[str, Path], tmp_path: Path
) -> None:
    avatar = probe(kling["avatar"])
    inputs = [kling["avatar"], kling["wide"], kling["avatar"]]
    result = concat(inputs, tmp_path / "cut.mp4")
    assert result.path_taken == "stream_copy", result.reason
    assert _video_packets(result.path) == [packet for clip in inputs for packet in _video_packets(clip)]
    info = result.info
    expected = 2 * avatar.video_duration + 5.0
    assert abs(info.video_duration - expected) <= FRAME
    assert info.has_audio and (info.audio_codec, info.sample_rate, info.channels) == ("aac", 48_000, 2)
    assert abs(info.audio_duration - info.video_duration) <= 0.05
    samples, rate = _samples(result.path)
    speech_end = avatar.video_duration
    # The silent clip got a silent track exactly where its frames are; speech resumes after it.
    assert _rms(samples, rate, speech_end + 0.05, speech_end + 4.95) < 1e-4
    assert _rms(samples, rate, 0.1, speech_end - 0.1) > 0.01
    assert _rms(samples, rate, speech_end + 5.1, expected - 0.1) > 0.01


@pytest.fixture(scope="module")
def mixed_cut(kling: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> ConcatResult:
    """16:9 5 s + 9:16 10 s + 1:1 5 s + avatar (speech): needs the normalising path."""
    out = tmp_path_factory.mktemp("mixed") / "cut.mp4"
    return concat([kling["wide"], kling["tall"], kling["square"], kling["avatar"]], out)


def test_mixed_aspects_normalise_to_the_first_clips_size(mixed_cut: ConcatResult) -> None:
    assert mixed_cut.path_taken == "normalised"
    assert "differs from clip 1 in" in mixed_cut.reason
    info = probe(mixed_cut.path)
    assert (info.width, info.height, info.display_aspect, info.fps) == (1280, 720, "16:9", 30.0)
    assert (info.video_codec, info.pixel_format) == ("h264", "yuv420p")


def test_mixed_lengths_add_up_and_audio_agrees(kling: dict[str, Path], mixed_cut: ConcatResult) -> None:
    expected = 5.0 + 10.0 + 5.0 + probe(kling["avatar"]).video_duration
    info = probe(mixed_cut.path)
    assert abs(info.video_duration - expected) <= FRAME
    assert info.has_audio and (info.sample_rate, info.channels) == (48_000, 2)
    assert abs(info.audio_duration - info.video_duration) <= 0.05
    samples, rate = _samples(mixed_cut.path)
    assert _rms(samples, rate, 0.1, 19.9) < 1e-4  # three silent text-to-video clips
    assert _rms(samples, rate, 20.1, expected - 0.1) > 0.01  # the avatar's speech


def test_other_aspects_are_pillarboxed_into_the_frame(mixed_cut: ConcatResult) -> None:
    wide = _frame(mixed_cut.path, 75)  # middle of the 16:9 clip
    tall = _frame(mixed_cut.path, 300)  # middle of the 9:16 clip
    square = _frame(mixed_cut.path, 525)  # middle of the 1:1 clip
    assert wide[:, :100].mean() > 40 and wide[:, -100:].mean() > 40
    # 720x1280 scaled to 405x720 leaves 437 black columns each side; 960x960 to 720 leaves 280.
    assert tall[:, :430].max() < 24 and tall[:, -430:].max() < 24 and tall[:, 500:780].mean() > 40
    assert square[:, :270].max() < 24 and square[:, -270:].max() < 24 and square[:, 300:980].mean() > 40


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two-second lavfi clips where only the property under test varies."""
    folder = tmp_path_factory.mktemp("small")
    return {
        "red_wide": _lavfi(folder / "red_wide.mp4", colour="red", tone=440),
        "blue_wide": _lavfi(folder / "blue_wide.mp4", colour="blue"),
        "green_wide": _lavfi(folder / "green_wide.mp4", colour="lime", tone=880),
        "white_square": _lavfi(folder / "white_square.mp4", size="240x240", colour="white"),
        "red_long_tone": _lavfi(folder / "red_long_tone.mp4", colour="red", tone=440, tone_seconds=2.6),
        "blue_short_tone": _lavfi(folder / "blue_short_tone.mp4", colour="blue", tone=660, tone_seconds=1.2),
        "red_25fps_mono": _lavfi(
            folder / "red_25.mp4", rate=25, colour="red", tone=440, sample_rate=44_100, channels=1
        ),
    }


def test_each_clips_audio_is_cut_or_padded_to_its_video(small: dict[str, Path], tmp_path: Path) -> None:
    # Video 2 s each; sound 2.6 s, none, 1.2 s. Sound must not spill into the next clip's frames.
    inputs = [small["red_long_tone"], small["blue_wide"], small["blue_short_tone"]]
    result = concat(inputs, tmp_path / "cut.mp4")
    assert result.path_taken == "stream_copy", result.reason
    info = result.info
    assert abs(info.video_duration - 6.0) <= FRAME and abs(info.audio_duration - info.video_duration) <= 0.05
    samples, rate = _samples(result.path)
    assert samples.shape[1] / rate == pytest.approx(6.0, abs=0.03)  # every sample a player will play
    assert _rms(samples, rate, 0.1, 1.95) > 0.05
    assert _rms(samples, rate, 2.03, 3.97) < 1e-4  # the long tone stopped with its clip
    assert _rms(samples, rate, 4.05, 5.15) > 0.05
    assert _rms(samples, rate, 5.25, 5.97) < 1e-4  # the short tone was followed by silence


def test_target_aspect_letterboxes_with_pad(small: dict[str, Path], tmp_path: Path) -> None:
    result = concat(
        [small["red_wide"], small["white_square"]],
        tmp_path / "square.mp4",
        target=ConcatTarget(aspect_ratio="1:1"),
    )
    info = result.info
    # The first clip's pixel count (320x180) at 1:1 is 240x240, as 1280x720 gives Kling's 960x960.
    assert result.path_taken == "normalised" and (info.width, info.height) == (240, 240)
    red = _frame(result.path, 30)
    assert red[:25].max() < 24 and red[-25:].max() < 24  # letterbox bars above and below
    assert red[120, 120, 0] > 200 and red[120, 120, 2] < 60
    assert _frame(result.path, 90)[5:-5, 5:-5].min() > 200  # the square clip fills the square frame


def test_target_aspect_crops_to_fill(small: dict[str, Path], tmp_path: Path) -> None:
    target = ConcatTarget(aspect_ratio="9:16", fit="crop")
    result = concat([small["red_wide"], small["white_square"]], tmp_path / "tall.mp4", target=target)
    assert (result.info.width, result.info.height) == (180, 320)
    red = _frame(result.path, 30)
    assert red[..., 0].min() > 200  # cropped, so no black bars anywhere
    assert _frame(result.path, 90).min() > 200


def test_mixed_frame_rates_and_audio_layouts_are_unified(small: dict[str, Path], tmp_path: Path) -> None:
    inputs = [small["red_25fps_mono"], small["green_wide"]]
    first_rate = concat(inputs, tmp_path / "at25.mp4")
    assert first_rate.path_taken == "normalised" and "frame rate" in first_rate.reason
    assert first_rate.info.fps == 25.0 and first_rate.info.frames == 100
    at30 = concat(inputs, tmp_path / "at30.mp4", target=ConcatTarget(fps=30, sample_rate=44_100, channels=1))
    info = at30.info
    assert info.fps == 30.0 and info.frames == 120 and abs(info.video_duration - 4.0) <= FRAME
    assert (info.sample_rate, info.channels) == (44_100, 1)
    assert abs(info.audio_duration - info.video_duration) <= 0.05


def test_crossfade_overlaps_video_and_audio(small: dict[str, Path], tmp_path: Path) -> None:
    inputs = [small["red_wide"], small["blue_wide"], small["green_wide"]]
    result = concat(inputs, tmp_path / "faded.mp4", transition=Transition(duration=0.5))
    assert result.path_taken == "normalised" and "crossfade" in result.reason
    info = probe(result.path)
    assert abs(info.video_duration - (6.0 - 2 * 0.5)) <= FRAME and info.frames == 150
    assert abs(info.audio_duration - info.video_duration) <= 0.05
    red, blue = _frame(result.path, 30)[90, 160], _frame(result.path, 60)[90, 160]
    midway = _frame(result.path, 52)[90, 160]  # 1.5 s + 7 of 15 fade frames
    assert red[0] > 200 > red[2] + 150 and blue[2] > 200 > blue[0] + 150
    assert 60 < midway[0] < 190 and 60 < midway[2] < 190  # a blend of red and blue
    samples, rate = _samples(result.path)
    assert _rms(samples, rate, 0.1, 1.4) > 0.05  # red's tone (lavfi sine: amplitude 1/8)
    assert _rms(samples, rate, 2.05, 2.45) < 1e-4  # blue is silent once the fades are over
    assert _rms(samples, rate, 1.6, 1.9) < _rms(samples, rate, 0.1, 1.4)  # the tone fading out


def test_a_transition_longer_than_a_clip_is_refused(small: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not shorter than clip 1") as caught:
        concat(
            [small["red_wide"], small["blue_wide"]],
            tmp_path / "x.mp4",
            transition=Transition(duration=2.5),
            context="step 'reel'",
        )
    assert "step 'reel'" in str(caught.value) and str(small["red_wide"]) in str(caught.value)
    assert not (tmp_path / "x.mp4").exists()


def test_target_is_validated() -> None:
    with pytest.raises(ValidationError, match="even"):
        ConcatTarget(width=1279, height=720)
    with pytest.raises(ValidationError, match="is not 9:16"):
        ConcatTarget(aspect_ratio="9:16", width=1280, height=720)
    with pytest.raises(ValidationError):
        Transition(duration=0)


def test_missing_and_non_media_inputs_name_step_and_file(small: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "gone.mp4"
    with pytest.raises(MediaError, match="does not exist") as caught:
        concat([small["red_wide"], missing], tmp_path / "out" / "cut.mp4", context="step 'final_cut'")
    assert "step 'final_cut'" in str(caught.value) and str(missing) in str(caught.value)
    notes = tmp_path / "notes.mp4"
    notes.write_text("this is not a video\n" * 50)
    with pytest.raises(MediaError, match="not a readable media file") as caught:
        concat([notes], tmp_path / "out" / "cut.mp4", context="step 'final_cut'")
    assert "step 'final_cut'" in str(caught.value) and str(notes) in str(caught.value)
    assert caught.value.stderr_tail  # libav's own reason
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _damaged(clip: Path, out: Path) -> Path:
    """The clip with its header intact and its media data overwritten: probes fine, decodes to garbage."""
    data = bytearray(clip.read_bytes())
    start = data.find(b"mdat") + 64
    data[start:] = bytes((7 * index + 13) % 256 for index in range(len(data) - start))
    out.write_bytes(bytes(data))
    return out


def test_ffmpeg_failure_names_step_and_file_and_leaves_nothing(
    small: dict[str, Path], tmp_path: Path
) -> None:
    broken = _damaged(small["red_wide"], tmp_path / "broken.mp4")
    out_dir = tmp_path / "out"
    with pytest.raises(MediaError, match="ffmpeg exited") as caught:
        concat(
            [small["blue_wide"], broken],
            out_dir / "cut.mp4",
            target=ConcatTarget(fps=25),
            context="step 'final_cut'",
        )
    message = str(caught.value)
    assert "step 'final_cut'" in message and str(out_dir / "cut.mp4") in message
    assert "ffmpeg said:" in message and caught.value.stderr_tail
    assert list(out_dir.iterdir()) == []  # no partial file where a cache could find it


def test_a_truncated_input_is_refused_on_the_copy_path(kling: dict[str, Path], tmp_path: Path) -> None:
    data = kling["wide"].read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # the index is whole, half the frames are gone
    out = tmp_path / "cut.mp4"
    with pytest.raises(MediaError, match="came out wrong") as caught:
        concat([kling["wide"], truncated], out, context="step 'final_cut'")
    assert "step 'final_cut'" in str(caught.value) and str(truncated) in caught.value.hint
    assert [p.name for p in tmp_path.iterdir()] == ["truncated.mp4"]


def _captioned(clip: Path, cues: list[tuple[float, float, str]], out: Path) -> Path:
    """The clip with ``cues`` (start, end in seconds, text) as a mov_text track, as the captions step
    attaches them (packets copied)."""
    subs = pysubs2.SSAFile()
    for start, end, text in cues:
        subs.events.append(pysubs2.SSAEvent(start=round(start * 1000), end=round(end * 1000), text=text))
    srt = out.with_suffix(".srt")
    subs.save(str(srt))
    run_ffmpeg(
        ["-i", str(clip), "-i", str(srt), "-map", "0:v", "-map", "0:a?", "-map", "1:0", "-c", "copy"]
        + ["-c:s", "mov_text", "-y", str(out)],
        context=str(out),
    )
    return out


def _track(path: Path) -> list[tuple[float, float, str]]:
    """The cues of the file's one subtitle stream, read back from the mp4 (not from any side file)."""
    with av.open(str(path)) as container:
        assert [s.codec_context.name for s in container.streams.subtitles] == ["mov_text"]
    srt = path.with_name(path.stem + "-track.srt")
    run_ffmpeg(["-i", str(path), "-map", "0:s:0", "-f", "srt", "-y", str(srt)], context=str(path))
    return [(e.start / 1000, e.end / 1000, e.plaintext) for e in pysubs2.load(str(srt))]


FIRST = [(0.2, 0.9, "First clip, first cue."), (1.0, 1.9, "First clip, last cue.")]
SECOND = [(0.1, 0.8, "Second clip."), (1.2, 2.6, "Said as the clip ends.")]
"""Cues of two 2 s clips; the second clip's last cue runs past its end."""


@pytest.fixture(scope="module")
def captioned(small: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("captioned")
    return {
        "first": _captioned(small["red_wide"], FIRST, folder / "first.mp4"),
        "second": _captioned(small["blue_wide"], SECOND, folder / "second.mp4"),
    }


def _shifted(cues: list[tuple[float, float, str]], by: float, until: float) -> list[tuple[float, float, str]]:
    return [(start + by, min(end + by, until), text) for start, end, text in cues if start + by < until]


def _assert_cues(got: list[tuple[float, float, str]], expected: list[tuple[float, float, str]]) -> None:
    assert [text for *_, text in got] == [text for *_, text in expected], got
    for (start, end, _), (want_start, want_end, _) in zip(got, expected, strict=True):
        assert abs(start - want_start) <= FRAME and abs(end - want_end) <= FRAME, (got, expected)


def test_captioned_clips_give_the_cut_one_track_in_their_time(
    captioned: dict[str, Path], small: dict[str, Path], tmp_path: Path
) -> None:
    inputs = [captioned["first"], captioned["second"]]
    srt, vtt = tmp_path / "cut.srt", tmp_path / "cut.vtt"
    result = concat(inputs, tmp_path / "cut.mp4", srt=srt, vtt=vtt)
    assert result.path_taken == "stream_copy", result.reason
    assert _video_packets(result.path) == [packet for clip in inputs for packet in _video_packets(clip)]
    expected = FIRST + _shifted(SECOND, 2.0, until=4.0)  # the last cue ends with the cut
    _assert_cues(_track(result.path), expected)
    assert result.captions == 4 and (result.srt, result.vtt) == (srt, vtt)
    for side in (srt, vtt):
        _assert_cues([(e.start / 1000, e.end / 1000, e.plaintext) for e in pysubs2.load(str(side))], expected)
    plain = concat([small["red_wide"], small["blue_wide"]], tmp_path / "plain.mp4", srt=tmp_path / "p.srt")
    with av.open(str(plain.path)) as container:
        assert not container.streams.subtitles, "a cut of clips without captions has no subtitle track"
    assert plain.captions == 0 and plain.srt is None and not (tmp_path / "p.srt").exists()


def test_captions_follow_their_clips_through_a_normalising_cut(
    captioned: dict[str, Path], small: dict[str, Path], tmp_path: Path
) -> None:
    at25 = concat(
        [captioned["first"], captioned["second"]], tmp_path / "at25.mp4", target=ConcatTarget(fps=25)
    )
    assert at25.path_taken == "normalised" and at25.info.frames == 100
    _assert_cues(_track(at25.path), FIRST + _shifted(SECOND, 2.0, until=4.0))
    # Crossfades of 0.5 s: the clips start at 0, 1.5 and 3 s; a clip's cues end when the next one
    # begins (one cue at a time), and an uncaptioned clip between them adds its length all the same.
    inputs = [captioned["first"], small["green_wide"], captioned["second"]]
    faded = concat(inputs, tmp_path / "faded.mp4", transition=Transition(duration=0.5))
    assert faded.path_taken == "normalised" and abs(faded.info.video_duration - 5.0) <= FRAME
    _assert_cues(_track(faded.path), _shifted(FIRST, 0.0, until=1.5) + _shifted(SECOND, 3.0, until=5.0))


@pytest.fixture
def ffmpeg_runs(tmp_path: Path) -> Iterator[Path]:
    """Every ffmpeg run klingflow makes while the test runs, one argument line each, in the returned file.

    klingflow is pointed (``KLINGFLOW_FFMPEG``) at a script that writes its arguments down and runs
    the real ffmpeg, so the count is taken from outside klingflow.
    """
    real = ffmpeg_executable()
    log = tmp_path / "ffmpeg-runs.txt"
    log.touch()
    wrapper = tmp_path / "ffmpeg"
    wrapper.write_text(
        f'#!/bin/sh\nprintf \'%s\\n\' "$*" >> {shlex.quote(str(log))}\nexec {shlex.quote(real)} "$@"\n'
    )
    wrapper.chmod(0o755)
    before = os.environ.get("KLINGFLOW_FFMPEG")
    os.environ["KLINGFLOW_FFMPEG"] = str(wrapper)
    ffmpeg_executable.cache_clear()
    try:
        yield log
    finally:
        if before is None:
            del os.environ["KLINGFLOW_FFMPEG"]
        else:
            os.environ["KLINGFLOW_FFMPEG"] = before
        ffmpeg_executable.cache_clear()


def _video_encodes(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "libx264" in line]


@pytest.fixture(scope="module")
def one_odd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Five different 1 s 16:9 text-to-video clips, one 1 s 1:1 clip, and the five without x264's SEI."""
    folder = tmp_path_factory.mktemp("one_odd")
    clips: dict[str, Path] = {}
    for name, aspect in [*((f"wide{index}", "16:9") for index in range(5)), ("odd", "1:1")]:
        clips[name] = folder / f"{name}.mp4"
        render_text_to_video(
            prompt=f"{name}: a harbour at dawn",
            duration=1,
            aspect_ratio=aspect,
            camera_control=None,
            advanced_camera_control=None,
            out=clips[name],
        )
    for index in range(5):
        # The same packets with the SEI NAL units (where libx264 records its settings) removed.
        clips[f"bare{index}"] = folder / f"bare{index}.mp4"
        run_ffmpeg(
            ["-i", str(clips[f"wide{index}"]), "-c", "copy", "-bsf:v", "filter_units=remove_types=6"]
            + ["-y", str(clips[f"bare{index}"])],
            context="strip SEI",
        )
    return clips


ODD_AT = 12
"""Where the odd clip sits among the 20 (0-based): a join on each side of it."""


def _decoded(path: Path, pictures: frozenset[int] = frozenset()) -> list[tuple[int, str, np.ndarray | None]]:
    """Every frame, decoded one by one, with no libav error or warning: (pts, a hash of its pixels,
    the frame as RGB when its index is in ``pictures``)."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture() as logs, av.open(str(path)) as container:
            container.streams.video[0].thread_type = "AUTO"
            decoded = [
                (
                    frame.pts,
                    hashlib.sha256(frame.to_ndarray().tobytes()).hexdigest(),
                    frame.to_ndarray(format="rgb24") if index in pictures else None,
                )
                for index, frame in enumerate(container.decode(video=0))
            ]
    finally:
        av.logging.set_level(level)
    assert not [entry for entry in logs if entry[0] <= av.logging.WARNING], logs
    return decoded


def test_one_odd_clip_among_twenty_is_the_only_one_re_encoded(
    one_odd: dict[str, Path], tmp_path: Path, ffmpeg_runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inputs = [one_odd[f"wide{index % 5}"] for index in range(19)]
    inputs.insert(ODD_AT, one_odd["odd"])
    with caplog.at_level(logging.INFO, logger="klingflow.media"):
        result = concat(inputs, tmp_path / "cut.mp4", context="step 'reel'")
    assert result.path_taken == "conformed", result.reason
    assert "19 of 20 clips share" in result.reason and f"clip {ODD_AT + 1} " in result.reason
    assert "conformed" in caplog.text and "width (960 vs 1280)" in caplog.text
    encodes = _video_encodes(ffmpeg_runs)
    assert len(encodes) == 1 and str(one_odd["odd"]) in encodes[0], encodes
    # The other 19 clips' packets are in the cut bit for bit, so they were copied, not re-encoded.
    packets = _video_packets(result.path)
    copied = [_video_packets(clip) for clip in inputs]
    assert packets[: 30 * ODD_AT] == [p for clip in copied[:ODD_AT] for p in clip]
    assert packets[30 * (ODD_AT + 1) :] == [p for clip in copied[ODD_AT + 1 :] for p in clip]
    assert len(packets) == 600

    odd_frames = range(30 * ODD_AT, 30 * (ODD_AT + 1))
    frames = _decoded(result.path, frozenset([*range(0, 600, 30), *odd_frames]))
    assert len(frames) == 600 and result.info.frames == 600
    steps = {after[0] - before[0] for before, after in zip(frames, frames[1:], strict=False)}
    assert frames[0][0] == 0 and len(steps) == 1 and steps.pop() > 0, "timestamps not one constant step"
    wide = {path: [digest for _, digest, _ in _decoded(path)] for path in set(inputs) - {one_odd["odd"]}}
    for index, clip in enumerate(inputs):
        segment = frames[30 * index : 30 * (index + 1)]
        if clip != one_odd["odd"]:
            # Exactly this clip's 30 frames, pixel for pixel, between its two joins.
            assert [digest for _, digest, _ in segment] == wide[clip], f"clip {index + 1}"
            first = segment[0][2]
            assert first is not None and first[:, :270].mean() > 40
        else:
            # The square clip, pillarboxed into the 16:9 frame: 280 black columns on each side.
            for _, _, picture in segment:
                assert picture is not None and picture[:, :270].max() < 24 and picture[:, -270:].max() < 24
                assert picture[:, 300:980].mean() > 40
    info = probe(result.path)
    assert (info.width, info.height, info.fps, info.frames) == (1280, 720, 30.0, 600)
    assert abs(info.video_duration - 20.0) <= FRAME


def test_an_odd_clip_that_cannot_be_matched_makes_the_cut_normalise(
    one_odd: dict[str, Path], tmp_path: Path, ffmpeg_runs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the SEI the majority's encoder settings are unknown: the odd clip is encoded at the
    # cut's own quality, its PPS (initial QP) differs, and the probe catches it.
    inputs = [one_odd["bare0"], one_odd["bare1"], one_odd["odd"], one_odd["bare2"]]
    with caplog.at_level(logging.INFO, logger="klingflow.media"):
        result = concat(inputs, tmp_path / "cut.mp4")
    assert result.path_taken == "normalised"
    assert "3 of 4 clips share" in result.reason and "still differs in codec extradata" in result.reason
    assert "normalising every clip instead" in caplog.text
    assert len(_video_encodes(ffmpeg_runs)) == 2  # the attempt, then the whole cut
    assert result.info.frames == 120 and len(_decoded(result.path)) == 120
