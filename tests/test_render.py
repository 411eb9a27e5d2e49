"""The emulator's renderer, on real ffmpeg: probed sizes, durations, codecs, motion, labels, bytes.

Clips are 5 s, as most Kling requests are; each test renders what it needs into its own temp dir,
and the few clips several tests look at are rendered once per module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from klingflow.emulator import render
from klingflow.emulator._render_audio import speech_seconds
from klingflow.emulator._render_camera import camera_motion
from klingflow.emulator.labels import banner_image
from klingflow.errors import MediaError
from klingflow.media import probe

FRAME = 1 / render.FPS
PROMPT = "A red fox trots through a snowy forest at night, cinematic"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_and_last(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first and last decoded frames as RGB arrays (float, for differences)."""
    first = last = None
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            array = frame.to_ndarray(format="rgb24")
            first = array if first is None else first
            last = array
    assert first is not None and last is not None
    return first.astype(np.float64), last.astype(np.float64)


def _assert_silent_clip(path: Path, size: tuple[int, int], seconds: float) -> None:
    info = probe(path)
    assert (info.width, info.height) == size
    assert info.fps == pytest.approx(30)
    assert info.video_codec == "h264"
    assert info.pixel_format == "yuv420p"
    assert info.video_duration == pytest.approx(seconds, abs=FRAME)
    assert not info.has_audio


def _pattern(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    """A test picture: a flat colour with a white grid and a dark disc, so frames can be compared."""
    picture = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(picture)
    for x in range(0, size[0], 80):
        draw.line([(x, 0), (x, size[1])], fill=(255, 255, 255), width=4)
    draw.ellipse([size[0] * 0.3, size[1] * 0.2, size[0] * 0.6, size[1] * 0.6], fill=(20, 20, 60))
    picture.save(path)
    return path


def _scene_rows(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The rows above the banner, where the picture itself shows."""
    band = banner_image(*size, title="image-to-video", prompt="x").height
    return frame[: size[1] - band - 4]


@pytest.fixture(scope="module")
def t2v_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("t2v") / "clip.mp4"
    render.render_text_to_video(
        prompt=PROMPT,
        duration=5,
        aspect_ratio="16:9",
        camera_control=None,
        advanced_camera_control=None,
        out=out,
    )
    return out


def test_output_sizes_are_klings() -> None:
    assert render.output_size("16:9") == (1280, 720)
    assert render.output_size("9:16") == (720, 1280)
    assert render.output_size("1:1") == (960, 960)
    with pytest.raises(ValueError, match="4:3"):
        render.output_size("4:3")


def test_camera_controls_map_to_kling_directions() -> None:
    assert camera_motion(None, {"movement_type": "horizontal", "movement_value": 5}).travel_x > 0
    assert camera_motion(None, {"movement_type": "vertical", "movement_value": 5}).travel_y < 0
    assert camera_motion(None, {"movement_type": "zoom", "movement_value": 5}).zoom < 1
    assert camera_motion(None, {"movement_type": "zoom", "movement_value": -5}).zoom > 1
    assert camera_motion(None, {"movement_type": "roll", "movement_value": -3}).roll < 0
    assert camera_motion("down_back", None).zoom < 1 and camera_motion("down_back", None).travel_y > 0
    assert camera_motion("left_turn_forward", None).travel_x < 0
    drift = camera_motion(None, None)
    assert drift.zoom != 1 or drift.travel_x != 0
    with pytest.raises(ValueError, match="movement_type"):
        camera_motion(None, {"movement_type": "dolly", "movement_value": 1})


def test_text_to_video_default_clip_is_silent_5s_720p_with_drift(t2v_clip: Path) -> None:
    _assert_silent_clip(t2v_clip, (1280, 720), 5.0)
    assert probe(t2v_clip).frames == 150
    first, last = _first_and_last(t2v_clip)
    assert np.abs(first[:600] - last[:600]).mean() > 3


@pytest.mark.parametrize(
    ("aspect_ratio", "camera_control", "advanced"),
    [
        ("9:16", "forward_up", None),
        ("1:1", None, {"movement_type": "zoom", "movement_value": -8}),
        ("16:9", None, {"movement_type": "horizontal", "movement_value": 6}),
        ("16:9", None, {"movement_type": "roll", "movement_value": 10}),
    ],
)
def test_text_to_video_sizes_and_camera_motion(
    tmp_path: Path, aspect_ratio: str, camera_control: str | None, advanced: dict[str, int] | None
) -> None:
    out = tmp_path / "clip.mp4"
    render.render_text_to_video(
        prompt=PROMPT,
        duration=5,
        aspect_ratio=aspect_ratio,
        camera_control=camera_control,
        advanced_camera_control=advanced,
        out=out,
    )
    size = render.output_size(aspect_ratio)
    _assert_silent_clip(out, size, 5.0)
    first, last = _first_and_last(out)
    assert np.abs(_scene_rows(first, size) - _scene_rows(last, size)).mean() > 8
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"], "no partial or temporary files are left"


def test_text_to_video_is_deterministic_and_follows_the_prompt(tmp_path: Path, t2v_clip: Path) -> None:
    again, other = tmp_path / "again.mp4", tmp_path / "other.mp4"
    arguments = {
        "duration": 5,
        "aspect_ratio": "16:9",
        "camera_control": None,
        "advanced_camera_control": None,
    }
    render.render_text_to_video(prompt=PROMPT, out=again, **arguments)
    render.render_text_to_video(prompt="A sunny beach with boats on the sea", out=other, **arguments)
    assert _sha(again) == _sha(t2v_clip)
    assert _sha(other) != _sha(t2v_clip)
    assert np.abs(_first_and_last(other)[0] - _first_and_last(t2v_clip)[0]).mean() > 10


def test_every_frame_carries_the_banner(t2v_clip: Path) -> None:
    band = banner_image(1280, 720, title="text-to-video", prompt=PROMPT)
    stripe = np.asarray(band)[:, 1:4, :3].astype(np.float64).mean(axis=(0, 1))
    for frame in _first_and_last(t2v_clip):
        rows = frame[720 - band.height + 3 : 716]
        assert np.abs(rows[:, 1:4].mean(axis=(0, 1)) - stripe).max() < 30, (
            "the banner's yellow stripe is there"
        )
        yellow = (rows[:, :, 0] > 200) & (rows[:, :, 1] > 160) & (rows[:, :, 2] < 120)
        assert yellow[:, 20:].mean() > 0.005, "the banner's title text is there"
        assert rows[:, 20:].mean() < frame[: 720 - band.height].mean(), "the band darkens the scene"


def test_image_to_video_starts_on_the_image_and_draws_trajectories(tmp_path: Path) -> None:
    image = _pattern(tmp_path / "start.png", (1200, 800), (120, 120, 120))
    out = tmp_path / "clip.mp4"
    render.render_image_to_video(
        prompt="the disc drifts",
        duration=5,
        image=image,
        tail_image=None,
        dynamic_masks=[
            {"mask_url": "mask.png", "trajectories": [{"x": 300, "y": 600}, {"x": 900, "y": 200}]}
        ],
        out=out,
    )
    _assert_silent_clip(out, (1280, 720), 5.0)
    first, last = _first_and_last(out)
    fitted = np.asarray(ImageOps.fit(Image.open(image), (1280, 720))).astype(np.float64)
    assert np.abs(_scene_rows(first, (1280, 720)) - _scene_rows(fitted, (1280, 720))).mean() < 8
    scale = 1280 / 1200
    x, y = round(300 * scale), round((800 - 600) * scale - (800 * scale - 720) / 2)
    red, green, blue = first[y - 2 : y + 3, x - 2 : x + 3].mean(axis=(0, 1))
    assert red > 180 and green < 140 and blue < 140, "the marker sits on the trajectory's first point"
    assert np.abs(first - last).mean() > 3


def test_image_to_video_ends_on_the_tail_image(tmp_path: Path) -> None:
    start = _pattern(tmp_path / "start.png", (1000, 1000), (40, 140, 60))
    tail = _pattern(tmp_path / "tail.png", (1100, 1000), (200, 120, 40))
    out = tmp_path / "clip.mp4"
    render.render_image_to_video(
        prompt="turns orange", duration=5, image=start, tail_image=tail, dynamic_masks=None, out=out
    )
    _assert_silent_clip(out, (960, 960), 5.0)
    first, last = _first_and_last(out)
    tail_fitted = np.asarray(ImageOps.fit(Image.open(tail), (960, 960))).astype(np.float64)
    start_fitted = np.asarray(ImageOps.fit(Image.open(start), (960, 960))).astype(np.float64)
    size = (960, 960)
    assert np.abs(_scene_rows(last, size) - _scene_rows(tail_fitted, size)).mean() < 8
    assert np.abs(_scene_rows(first, size) - _scene_rows(start_fitted, size)).mean() < 8
    assert np.abs(_scene_rows(last, size) - _scene_rows(start_fitted, size)).mean() > 40


def test_effects_on_one_image_use_its_aspect_and_move(tmp_path: Path) -> None:
    image = _pattern(tmp_path / "portrait.png", (700, 1200), (90, 60, 160))
    out = tmp_path / "clip.mp4"
    render.render_effects(effect_scene="squish", duration=5, images=[image], out=out)
    _assert_silent_clip(out, (720, 1280), 5.0)
    first, last = _first_and_last(out)
    assert np.abs(_scene_rows(first, (720, 1280)) - _scene_rows(last, (720, 1280))).mean() > 3


def test_effects_without_images_render_placeholder_people(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    render.render_effects(effect_scene="hug", duration=5, images=[], out=out)
    _assert_silent_clip(out, (960, 960), 5.0)
    first, last = _first_and_last(out)
    assert np.abs(first - last).mean() > 3


def test_ai_avatar_lasts_as_long_as_its_audio(tmp_path: Path) -> None:
    audio, face = tmp_path / "voice.mp3", _pattern(tmp_path / "face.png", (900, 900), (180, 150, 120))
    render.placeholder_audio(label="voice", out=audio, seconds=2.3)
    heard = probe(audio).audio_duration
    out = tmp_path / "avatar.mp4"
    reported = render.render_ai_avatar(prompt="talks", image=face, audio=audio, out=out)
    info = probe(out)
    assert (info.width, info.height, info.video_codec) == (960, 960, "h264")
    assert info.has_audio and info.audio_codec == "aac" and info.sample_rate in (44_100, 48_000)
    assert info.video_duration == pytest.approx(heard, abs=FRAME)
    assert info.audio_duration == pytest.approx(info.video_duration, abs=0.05)
    assert reported == pytest.approx(info.video_duration, abs=1e-3)
    first, last = _first_and_last(out)
    assert np.abs(first - last).mean() > 0.5, "the face bounces"


def test_tts_length_follows_text_and_speed_and_is_deterministic(tmp_path: Path) -> None:
    text = "Hello from the Kling emulator. This sentence is long enough to last a few seconds!"
    paths = [tmp_path / f"{name}.mp3" for name in ("a", "b", "fast", "voice")]
    normal = render.render_tts(text=text, voice_id="genshin_vindi2", voice_speed=1.0, out=paths[0])
    render.render_tts(text=text, voice_id="genshin_vindi2", voice_speed=1.0, out=paths[1])
    fast = render.render_tts(text=text, voice_id="genshin_vindi2", voice_speed=2.0, out=paths[2])
    render.render_tts(text=text, voice_id="uk_man2", voice_speed=1.0, out=paths[3])
    info = probe(paths[0])
    assert info.format == "mp3" and info.audio_codec.startswith("mp3") and not info.has_video
    assert normal == pytest.approx(len(text) / 14, abs=0.15)
    assert fast == pytest.approx(speech_seconds(text, 2.0), abs=0.15) and fast < normal * 0.6
    assert _sha(paths[0]) == _sha(paths[1])
    assert _sha(paths[0]) != _sha(paths[3])
    short = render.render_tts(text="Hi.", voice_id="AOT", voice_speed=1.0, out=tmp_path / "short.mp3")
    assert short == pytest.approx(1.0, abs=0.15)


def test_placeholders_are_labelled_media(tmp_path: Path) -> None:
    render.placeholder_image(label="https://example.com/a.png", out=tmp_path / "a.png", size=(640, 480))
    render.placeholder_image(label="https://example.com/b.png", out=tmp_path / "b.png")
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert (a.format, a.size, b.size) == ("PNG", (640, 480), (1024, 1024))
        assert (
            np.abs(np.asarray(a.resize((64, 64)), float) - np.asarray(b.resize((64, 64)), float)).mean() > 5
        )
    render.placeholder_audio(label="https://example.com/a.mp3", out=tmp_path / "a.mp3")
    info = probe(tmp_path / "a.mp3")
    assert info.audio_codec.startswith("mp3") and info.duration == pytest.approx(3.0, abs=0.1)
    with av.open(str(tmp_path / "a.mp3")) as container:
        assert container.metadata.get("title") == "PLACEHOLDER: https://example.com/a.mp3"


def test_unreadable_input_fails_without_leaving_output(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "clip.mp4"
    with pytest.raises(MediaError, match="broken.png"):
        render.render_image_to_video(
            prompt="x", duration=5, image=broken, tail_image=None, dynamic_masks=None, out=out
        )
    audio = tmp_path / "voice.mp3"
    render.placeholder_audio(label="voice", out=audio, seconds=1.0)
    with pytest.raises(MediaError, match="broken.png"):
        render.render_ai_avatar(prompt="x", image=broken, audio=audio, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "voice.mp3"]
