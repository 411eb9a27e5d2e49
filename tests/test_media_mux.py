"""mux_audio(): replace or mix, and trim, pad or loop, on real clips with recognisable tones."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from klingflow.errors import MediaError
from klingflow.media import mux_audio, probe, run_ffmpeg

FRAME = 1 / 30


def _clip(out: Path, *, seconds: float, tone: int | None = None) -> Path:
    """A 320x180 30 fps H.264 clip, with a sine tone of ``tone`` Hz as AAC when given."""
    args = ["-f", "lavfi", "-i", f"testsrc2=s=320x180:r=30:d={seconds}"]
    if tone:
        args += [
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={tone}:sample_rate=44100:duration={seconds}",
            "-c:a",
            "aac",
        ]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-y", str(out)]
    run_ffmpeg(args, context=str(out))
    return out


def _tone(out: Path, *, seconds: float, frequency: int) -> Path:
    source = f"sine=frequency={frequency}:sample_rate=24000:duration={seconds}"
    run_ffmpeg(["-f", "lavfi", "-i", source, "-c:a", "libmp3lame", "-y", str(out)], context=str(out))
    return out


def _mono(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
        return samples.mean(axis=0), stream.codec_context.sample_rate


def _level(path: Path, start: float, end: float, frequency: int) -> float:
    """How strongly ``frequency`` sounds between ``start`` and ``end`` seconds (spectrum magnitude)."""
    samples, rate = _mono(path)
    window = samples[int(start * rate) : int(end * rate)]
    spectrum = np.abs(np.fft.rfft(window)) / max(len(window), 1)
    bins = np.fft.rfftfreq(len(window), 1 / rate)
    return float(spectrum[np.abs(bins - frequency) < 15].max(initial=0.0))


def _video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(container.streams.video[0]) if packet.size]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mux")
    return {
        "hum": _clip(folder / "hum.mp4", seconds=2, tone=440),  # video with its own 440 Hz sound
        "mute": _clip(folder / "mute.mp4", seconds=2),
        "short": _tone(folder / "short.mp3", seconds=1, frequency=880),
        "long": _tone(folder / "long.mp3", seconds=3, frequency=880),
    }


def _assert_synced(info_path: Path, seconds: float) -> None:
    info = probe(info_path)
    assert abs(info.video_duration - seconds) <= FRAME
    assert (info.audio_codec, info.sample_rate, info.channels) == ("aac", 48_000, 2)
    assert abs(info.audio_duration - info.video_duration) <= 0.05


def test_replace_trim_cuts_long_audio_and_copies_the_video(media: dict[str, Path], tmp_path: Path) -> None:
    out = mux_audio(media["hum"], media["long"], tmp_path / "out.mp4", context="step 'voice'")
    _assert_synced(out, 2.0)
    assert _video_packets(out) == _video_packets(media["hum"])  # the frames were not re-encoded
    assert _level(out, 0.2, 1.8, 880) > 0.02 and _level(out, 0.2, 1.8, 440) < 0.002


def test_replace_trim_follows_short_audio_with_silence(media: dict[str, Path], tmp_path: Path) -> None:
    out = mux_audio(media["mute"], media["short"], tmp_path / "out.mp4", fit="trim")
    _assert_synced(out, 2.0)
    assert _level(out, 0.1, 0.9, 880) > 0.02 and _level(out, 1.1, 1.9, 880) < 0.001


def test_pad_holds_the_last_frame_until_long_audio_ends(media: dict[str, Path], tmp_path: Path) -> None:
    out = mux_audio(media["mute"], media["long"], tmp_path / "out.mp4", fit="pad")
    _assert_synced(out, 3.0)
    assert probe(out).frames == 90
    assert _level(out, 2.2, 2.9, 880) > 0.02
    with av.open(str(out)) as container:
        frames = [frame.to_ndarray(format="rgb24").astype(int) for frame in container.decode(video=0)]
    assert np.abs(frames[-1] - frames[61]).mean() < 2  # held: frame 60 was the clip's last
    assert np.abs(frames[59] - frames[30]).mean() > 2  # before that, the picture moved


def test_loop_repeats_short_audio_to_the_end(media: dict[str, Path], tmp_path: Path) -> None:
    out = mux_audio(media["mute"], media["short"], tmp_path / "out.mp4", fit="loop")
    _assert_synced(out, 2.0)
    assert _level(out, 1.1, 1.9, 880) > 0.02


def test_mix_keeps_both_sounds(media: dict[str, Path], tmp_path: Path) -> None:
    out = mux_audio(media["hum"], media["short"], tmp_path / "out.mp4", mode="mix", fit="loop")
    _assert_synced(out, 2.0)
    assert _video_packets(out) == _video_packets(media["hum"])
    assert _level(out, 0.2, 1.8, 440) > 0.005 and _level(out, 0.2, 1.8, 880) > 0.005  # absent: < 1e-6
    silent_video = mux_audio(media["mute"], media["short"], tmp_path / "mixed-into-mute.mp4", mode="mix")
    assert _level(silent_video, 0.1, 0.9, 880) > 0.02


def test_mux_errors_name_step_and_file(media: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no audio stream") as caught:
        mux_audio(media["hum"], media["mute"], tmp_path / "out.mp4", context="step 'voice'")
    assert "step 'voice'" in str(caught.value) and str(media["mute"]) in str(caught.value)
    missing = tmp_path / "voice.mp3"
    with pytest.raises(MediaError, match="does not exist") as caught:
        mux_audio(media["hum"], missing, tmp_path / "out.mp4", context="step 'voice'")
    assert str(missing) in str(caught.value)
    with pytest.raises(MediaError, match="no video stream"):
        mux_audio(media["short"], media["long"], tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
