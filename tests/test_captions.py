"""Captions: cues timed by the speech's pauses, a soft mov_text track over copied packets, burned-in
text in the shipped font, and the avatar preset's captions step run by the engine."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pysubs2
import pytest

from klingflow.engine import RunOptions, arun
from klingflow.errors import MediaError
from klingflow.media import add_captions, find_pauses, probe, run_ffmpeg
from klingflow.media._captions import PAUSE_NOISE_DB, PAUSE_SECONDS
from klingflow.spec import OPERATIONS, CaptionsSpec, OperationInfo, parse_pipeline

REPO = Path(__file__).resolve().parents[1]
SPOKEN = [(0.3, 1.5), (2.3, 5.1)]
"""Where the generated voice sounds (seconds); silence around and between the two sentences."""
SECONDS = 5.5
TEXT = (
    "Hello there, friends. "  # short: a character count puts its end far before the pause
    "This second sentence is much longer than the first one, so that it needs more than two lines."
)
_SOUNDING = "+".join(f"between(t\\,{a}\\,{b})" for a, b in SPOKEN)
VOICE = f"aevalsrc='({_SOUNDING})*0.4*sin(2*PI*220*t)*(1+0.5*sin(2*PI*3*t))':s=48000:d={SECONDS}"
"""Tone bursts at a speaking voice's loudness (lavfi), sounding during SPOKEN."""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A voice-like audio (tone bursts with pauses) and a video with that sound, in a folder whose
    name has a space, a colon and a quote (filter-graph syntax)."""
    folder = tmp_path_factory.mktemp("captions") / "a clip: it's here"
    folder.mkdir()
    audio, video = folder / "voice: take 1.m4a", folder / "talk 'one'.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", VOICE, "-c:a", "aac", "-y", str(audio)], context="voice")
    picture = f"color=c=0x336699:s=320x240:r=24:d={SECONDS}"
    run_ffmpeg(
        ["-f", "lavfi", "-i", picture, "-i", str(audio), "-c:v", "libx264", "-preset", "veryfast"]
        + ["-pix_fmt", "yuv420p", "-c:a", "copy", "-shortest", "-y", str(video)],
        context="video",
    )
    return audio, video


def _packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [bytes(packet) for packet in container.demux(stream) if packet.size]


def _frame(path: Path, at: float) -> np.ndarray:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= at:
                return frame.to_ndarray(format="rgb24").astype(np.int16)
    raise AssertionError(f"no frame at {at} s in {path}")


def test_cues_fit_the_lines_and_move_to_the_pauses(clip: tuple[Path, Path], tmp_path: Path) -> None:
    audio, video = clip
    done = add_captions(
        TEXT, audio, video, tmp_path / "out.mp4", tmp_path / "c: 1.srt", tmp_path / "c 1.vtt", context="t"
    )
    duration = probe(audio).audio_duration or 0.0
    pauses = find_pauses(audio)
    assert len(pauses) == 3, pauses  # before, between and after the two sentences
    for cue in done.cues:
        assert 0 <= cue.start < cue.end <= duration + 1e-6, cue
        assert 1 <= len(cue.lines) <= 2 and all(len(line) <= 42 for line in cue.lines), cue
    assert [" ".join(cue.lines) for cue in done.cues][0] == "Hello there, friends."
    assert len(done.cues) >= 3, "the long sentence needs more than one cue of two lines"
    boundary = done.cues[0].end
    gap = pauses[1]
    assert gap[0] <= boundary <= gap[1], (boundary, gap)
    assert SPOKEN[0][1] <= boundary <= SPOKEN[1][0], "inside the real pause between the sentences"
    assert done.cues[0].start >= SPOKEN[0][0] - 0.05 and done.cues[-1].end <= SPOKEN[1][1] + 0.05
    with pytest.raises(MediaError, match="no words to caption"):
        add_captions(" \n ", audio, video, tmp_path / "e.mp4", tmp_path / "e.srt", tmp_path / "e.vtt")
    for path in (done.srt, done.vtt):
        read = pysubs2.load(str(path))
        assert [(e.start, e.end) for e in read] == [
            (round(c.start * 1000), round(c.end * 1000)) for c in done.cues
        ]
        assert [e.plaintext.split("\n") for e in read] == [list(c.lines) for c in done.cues]


def _silencedetect(path: Path) -> list[tuple[float, float]]:
    """The pauses ffmpeg's own silencedetect prints for the file, at the settings captions use."""
    log = run_ffmpeg(
        ["-i", str(path), "-vn", "-af", f"silencedetect=noise={PAUSE_NOISE_DB}dB:d={PAUSE_SECONDS}"]
        + ["-f", "null", "-"],
        context="silencedetect",
        loglevel="info",
    )
    starts = [float(x) for x in re.findall(r"silence_start: (-?[\d.]+)", log)]
    ends = [float(x) for x in re.findall(r"silence_end: ([\d.]+)", log)]
    return [(max(0.0, a), b) for a, b in zip(starts, ends, strict=True)]


@pytest.mark.parametrize(
    ("name", "encode"),
    [
        ("voice.m4a", ["-c:a", "aac"]),  # float planar; priming samples cut by the edit list
        ("voice.mp3", ["-ar", "44100", "-ac", "2", "-c:a", "libmp3lame"]),  # starts at 0.025 s, stereo
        ("voice.wav", ["-c:a", "pcm_s16le"]),  # integers, packed
        ("voice-u8.wav", ["-ac", "2", "-c:a", "pcm_u8"]),  # unsigned, around 128
    ],
)
def test_pauses_agree_with_ffmpeg_silencedetect(tmp_path: Path, name: str, encode: list[str]) -> None:
    audio = tmp_path / name
    # then a faint tone above the threshold (0.0178; 0.021 once -ac 2 takes 3 dB), no pause, and a hum below
    faint, hum = (
        f"aevalsrc='{level}*sin(2*PI*220*t)':s=48000:d={d}" for level, d in ((0.03, 1), (0.01, 0.5))
    )
    graph = f"{VOICE}[a];{faint}[b];{hum}[c];[a][b][c]concat=n=3:v=0:a=1"
    run_ffmpeg(["-f", "lavfi", "-i", graph, *encode, "-y", str(audio)], context=name)
    expected, found = _silencedetect(audio), find_pauses(audio)
    assert [round(a, 1) for pause in expected for a in pause] == [0, 0.3, 1.5, 2.3, 5.1, 5.5, 6.5, 7]
    assert len(found) == len(expected), (found, expected)
    for (a, b), (x, y) in zip(found, expected, strict=True):
        assert abs(a - x) <= 0.010 and abs(b - y) <= 0.010, (found, expected)


def test_soft_track_keeps_the_packets(clip: tuple[Path, Path], tmp_path: Path) -> None:
    audio, video = clip
    out = tmp_path / "soft: track.mp4"
    add_captions(TEXT, audio, video, out, tmp_path / "c.srt", tmp_path / "c.vtt")
    with av.open(str(out)) as container:
        assert [s.codec_context.name for s in container.streams.subtitles] == ["mov_text"]
    assert _packets(out, "video") == _packets(video, "video"), "video stream copied bit for bit"
    assert _packets(out, "audio") == _packets(video, "audio")


def test_burned_captions_are_drawn_in_the_shipped_font(
    clip: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio, video = clip
    # No fonts known to fontconfig, as in a bare container: only the shipped font can draw anything.
    empty = tmp_path / "fonts.conf"
    empty.write_text("<?xml version='1.0'?><fontconfig></fontconfig>\n")
    monkeypatch.setenv("FONTCONFIG_FILE", str(empty))
    out = tmp_path / "burned: in.mp4"
    done = add_captions(TEXT, audio, video, out, tmp_path / "c.srt", tmp_path / "c.vtt", burn=True)
    at = (done.cues[0].start + done.cues[0].end) / 2
    plain, burned = _frame(video, at), _frame(out, at)
    height = plain.shape[0]
    bottom = np.abs(burned[height * 2 // 3 :] - plain[height * 2 // 3 :]).max(axis=2)
    top = np.abs(burned[: height // 3] - plain[: height // 3]).max(axis=2)
    assert (bottom > 100).mean() > 0.01, "white caption text on the blue picture, low in the frame"
    assert (top > 100).mean() == 0, "nothing drawn where no caption is"
    assert probe(out).has_audio and _packets(out, "audio") == _packets(video, "audio")


async def test_avatar_preset_captions_its_line(options: RunOptions, emulator, tmp_path: Path) -> None:
    line = "Hello from the captions test. The words come from the line the voice speaks."
    pipeline = REPO / "deployments/pipelines/avatar.yaml"
    out = tmp_path / "out"
    result = await arun(pipeline, {"line": line}, options.model_copy(update={"out_dir": out}))
    assert result.status == "completed", result.failures
    captioned = result.outputs["captioned"]
    # the subtitles reach --out beside the video, under its name (players load them with it)
    assert result.final == {
        "captioned": out / "captioned.mp4",
        "captioned.subtitles": out / "captioned.srt",
        "captioned.webvtt": out / "captioned.vtt",
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "captioned.mp4",
        "captioned.srt",
        "captioned.vtt",
        "report.html",
    ]
    for name, output in (
        ("captioned", "video"),
        ("captioned.subtitles", "subtitles"),
        ("captioned.webvtt", "webvtt"),
    ):
        assert result.final[name].read_bytes() == captioned[output].read_bytes()
        assert result.manifest is not None and result.manifest.final_sources[name] == str(captioned[output])
    assert captioned["subtitles"].suffix == ".srt" and captioned["webvtt"].suffix == ".vtt"
    with av.open(str(captioned["video"])) as container:
        assert [s.codec_context.name for s in container.streams.subtitles] == ["mov_text"]
    assert _packets(captioned["video"], "video") == _packets(result.outputs["presenter"]["video"], "video")
    spoken = " ".join(
        event.plaintext.replace("\n", " ") for event in pysubs2.load(str(captioned["subtitles"]))
    )
    assert spoken == line
    assert pysubs2.load(str(captioned["webvtt"]))[-1].end <= 1000 * (
        probe(captioned["video"]).duration + 0.01
    )
    again = await arun(pipeline, {"line": line}, options)
    assert {r.step_id: r.status for r in again.records} == dict.fromkeys(
        ("voice", "presenter", "captioned"), "cached"
    )
    assert again.outputs["captioned"]["subtitles"] == captioned["subtitles"]


async def test_an_operation_without_an_implementation_fails_its_step(
    options: RunOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = tmp_path / "v.mp4"
    run_ffmpeg(
        ["-f", "lavfi", "-i", "color=s=64x64:d=1", "-pix_fmt", "yuv420p", "-y", str(video)], context="v"
    )
    unknown = OperationInfo(
        "subtitle_only", "not taught to the engine", CaptionsSpec, {"video": "video"}, {"video": "video"}
    )
    monkeypatch.setitem(OPERATIONS, unknown.name, unknown)
    spec = parse_pipeline(
        {
            "name": "x",
            "steps": [
                {
                    "id": "s",
                    "uses": unknown.name,
                    "with": {"text": "a", "audio": str(video), "video": str(video)},
                }
            ],
        }
    )
    result = await arun(spec, None, options)
    assert (
        result.status == "failed"
        and "operation 'subtitle_only' has no implementation" in result.failures["s"]
    )
    assert not result.final, "no other operation's output stands in for it"


def _cues(path: Path) -> list[tuple[int, int, str]]:
    return [(e.start, e.end, e.plaintext) for e in pysubs2.load(str(path))]


def _track(video: Path, scratch: Path) -> list[tuple[int, int, str]]:
    """The cues of the video's one subtitle stream, as the mp4 itself holds them."""
    with av.open(str(video)) as container:
        assert [s.codec_context.name for s in container.streams.subtitles] == ["mov_text"]
    srt = scratch / f"{video.stem}-track.srt"
    run_ffmpeg(["-i", str(video), "-map", "0:s:0", "-f", "srt", "-y", str(srt)], context=str(video))
    return _cues(srt)


def _narrated(number: int, line: str) -> list[dict[str, object]]:
    return [
        {"id": f"voice{number}", "uses": "tts", "with": {"text": line}},
        {
            "id": f"presenter{number}",
            "uses": "ai-avatar",
            "with": {
                "image_url": str(REPO / "deployments/pipelines/assets/presenter.png"),
                "audio_url": f"${{steps.voice{number}.audio}}",
                "prompt": "A presenter talking",
            },
        },
        {
            "id": f"captioned{number}",
            "uses": "captions",
            "with": {
                "text": line,
                "audio": f"${{steps.voice{number}.audio}}",
                "video": f"${{steps.presenter{number}.video}}",
            },
        },
    ]


async def test_a_story_of_captioned_clips_gets_one_caption_file_for_its_cut(
    options: RunOptions, emulator, tmp_path: Path
) -> None:
    lines = ["The first clip says this. Then it stops.", "A second clip, later in the cut, says that."]
    spec = parse_pipeline(
        {
            "name": "narrated",
            "steps": [
                *_narrated(1, lines[0]),
                *_narrated(2, lines[1]),
                {
                    "id": "final_cut",
                    "uses": "concat",
                    "with": {"inputs": ["${steps.captioned1.video}", "${steps.captioned2.video}"]},
                },
                {
                    "id": "plain_cut",
                    "uses": "concat",
                    "with": {"inputs": ["${steps.presenter1.video}", "${steps.presenter2.video}"]},
                },
            ],
        }
    )
    out = tmp_path / "out"
    result = await arun(spec, None, options.model_copy(update={"out_dir": out}))
    assert result.status == "completed", result.failures
    assert result.final == {
        "final_cut": out / "final_cut.mp4",
        "final_cut.subtitles": out / "final_cut.srt",
        "final_cut.webvtt": out / "final_cut.vtt",
        "plain_cut": out / "plain_cut.mp4",
    }, "one caption file for the cut of captioned clips, none for the cut of plain ones"
    first, second = (result.outputs[f"captioned{n}"] for n in (1, 2))
    offset = round(1000 * (probe(first["video"]).video_duration or 0.0))
    expected = _cues(first["subtitles"]) + [
        (a + offset, b + offset, t) for a, b, t in _cues(second["subtitles"])
    ]
    frame = 1000 / (probe(first["video"]).fps or 1)
    for got in (
        _track(out / "final_cut.mp4", tmp_path),
        _cues(out / "final_cut.srt"),
        _cues(out / "final_cut.vtt"),
    ):
        assert [t for *_, t in got] == [t for *_, t in expected]
        assert all(
            abs(a - x) <= frame and abs(b - y) <= frame
            for (a, b, _), (x, y, _) in zip(got, expected, strict=True)
        )
    with av.open(str(out / "plain_cut.mp4")) as container:
        assert not container.streams.subtitles
    assert "subtitles" not in result.outputs["plain_cut"]
    again = await arun(spec, None, options.model_copy(update={"out_dir": out}))
    assert all(r.status == "cached" for r in again.records)
    assert again.outputs["final_cut"]["subtitles"] == result.outputs["final_cut"]["subtitles"]
