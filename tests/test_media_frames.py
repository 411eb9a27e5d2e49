"""first_frame, last_frame, thumbnail and contact_sheet, checked against frames ffmpeg decodes itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from klingflow.emulator.render import render_text_to_video
from klingflow.errors import MediaError
from klingflow.media import (
    contact_sheet,
    ffmpeg_executable,
    first_frame,
    last_frame,
    preview,
    probe,
    run_ffmpeg,
    thumbnail,
)


def _encode(out: Path, source: str, *extra: str) -> Path:
    args = ["-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    run_ffmpeg([*args, *extra, "-movflags", "+faststart", "-y", str(out)], context=str(out))
    return out


def _reference(video: Path, index: int) -> np.ndarray:
    """Frame ``index`` as RGB, decoded by the ffmpeg binary (select by frame number), not by PyAV."""
    info = probe(video)
    raw = subprocess.run(
        [ffmpeg_executable(), "-v", "error", "-i", str(video), "-vf", f"select=eq(n\\,{index})"]
        + ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(info.height, info.width, 3)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


@pytest.fixture(scope="module")
def strobe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s at 30 fps where each frame's brightness differs from its neighbours' by 8 levels.

    A keyframe every 10 frames and B-frames, so a seek lands on a keyframe and decoding (with
    reordering) has to run forward to reach the exact frame.
    """
    out = tmp_path_factory.mktemp("strobe") / "strobe.mp4"
    return _encode(
        out, "color=c=black:s=320x240:r=30:d=3,geq=lum='mod(N*8,240)':cb=128:cr=128", "-g", "10", "-bf", "2"
    )


@pytest.fixture(scope="module")
def kling_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kling") / "fox.mp4"
    render_text_to_video(
        prompt="a fox in the snow",
        duration=5,
        aspect_ratio="16:9",
        camera_control="forward_up",
        advanced_camera_control=None,
        out=out,
    )
    return out


def test_last_frame_is_the_final_decoded_frame(strobe: Path, tmp_path: Path) -> None:
    png = last_frame(strobe, tmp_path / "end.png", context="step 'shot1'")
    got, final, before = _png(png).astype(int), _reference(strobe, 89).astype(int), _reference(strobe, 88)
    assert got.shape == (240, 320, 3)
    assert np.array_equal(got, final)
    assert np.abs(got - before.astype(int)).mean() > 5  # a seek approximation would land here or earlier


def test_last_frame_of_a_kling_clip_matches_ffmpeg(kling_clip: Path, tmp_path: Path) -> None:
    frames = probe(kling_clip).frames
    assert frames == 150
    got = _png(last_frame(kling_clip, tmp_path / "end.png")).astype(int)
    assert got.shape == (720, 1280, 3)
    assert np.array_equal(got, _reference(kling_clip, frames - 1))
    assert np.abs(got - _reference(kling_clip, frames - 2).astype(int)).mean() > 0.1  # the camera moves


def test_first_frame_and_thumbnail_pick_exact_frames(strobe: Path, tmp_path: Path) -> None:
    assert np.array_equal(_png(first_frame(strobe, tmp_path / "a.png")), _reference(strobe, 0))
    # At 1.0 s frame 30 is on screen, and still is 10 ms later.
    for at in (1.0, 1.01):
        assert np.array_equal(_png(thumbnail(strobe, tmp_path / f"t{at}.png", at=at)), _reference(strobe, 30))
    assert np.array_equal(_png(thumbnail(strobe, tmp_path / "end.png", at=3.0)), _reference(strobe, 89))


def test_preview_is_the_middle_frame_scaled_to_fit(kling_clip: Path) -> None:
    """The Prefect UI's thumbnails: the middle of the clip (give or take the reference frame before
    it), 320 pixels on the long side, aspect kept."""
    picture = preview(kling_clip, 320)
    assert picture.size == (320, 180)
    got = np.asarray(picture.convert("RGB")).astype(int)
    scaled = {
        index: np.asarray(
            Image.fromarray(_reference(kling_clip, index)).resize((320, 180), Image.BOX)
        ).astype(int)
        for index in (0, 72, 73, 74, 75, 149)
    }
    closest = min(scaled, key=lambda index: np.abs(got - scaled[index]).mean())
    assert closest in (72, 73, 74, 75), f"frame {closest} is not the middle of the clip"
    assert np.abs(got - scaled[closest]).mean() < 4


def test_thumbnail_outside_the_video_is_refused(strobe: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no frame at 4 s") as caught:
        thumbnail(strobe, tmp_path / "t.png", at=4.0, context="step 'report'")
    assert "step 'report'" in str(caught.value) and str(strobe) in str(caught.value)
    assert not (tmp_path / "t.png").exists()


def test_frames_of_a_file_without_video_are_refused(tmp_path: Path) -> None:
    tone = tmp_path / "tone.m4a"
    run_ffmpeg(["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", "-y", str(tone)], context=str(tone))
    with pytest.raises(MediaError, match="no video stream") as caught:
        last_frame(tone, tmp_path / "x.png", context="step 'continue'")
    assert "step 'continue'" in str(caught.value) and str(tone) in str(caught.value)
    with pytest.raises(MediaError, match="does not exist"):
        first_frame(tmp_path / "gone.mp4", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _runs(line: np.ndarray, colour: tuple[int, int, int]) -> list[int]:
    """Widths of the stretches of ``line`` (pixels x RGB) that are close to ``colour``."""
    near = np.abs(line.astype(int) - np.array(colour)).max(axis=1) < 40
    widths, current = [], 0
    for hit in near:
        if hit:
            current += 1
        elif current:
            widths.append(current)
            current = 0
    return widths + ([current] if current else [])


def test_contact_sheet_has_a_labelled_row_per_clip(tmp_path: Path) -> None:
    red = _encode(tmp_path / "red.mp4", "color=c=red:s=320x180:r=30:d=1")
    blue = _encode(tmp_path / "blue.mp4", "color=c=blue:s=180x320:r=30:d=1")
    ramp = _encode(tmp_path / "ramp.mp4", "color=c=black:s=240x240:r=30:d=2,geq=lum='60+N*3':cb=128:cr=128")
    sheet = contact_sheet(
        [("shot_red", red), ("shot_blue", blue), ("shot_ramp", ramp)],
        tmp_path / "sheet.png",
        frames_per_clip=3,
    )
    image = _png(sheet)
    assert image.shape[0] % 3 == 0
    rows = np.split(image, 3)
    across = int(rows[0].shape[0] * 0.7)  # a line through the frames, below the label's text
    red_runs, blue_runs = _runs(rows[0][across], (255, 0, 0)), _runs(rows[1][across], (0, 0, 255))
    assert len(red_runs) == 3 and len(blue_runs) == 3
    assert min(red_runs) > 2.5 * max(blue_runs)  # 16:9 frames beside 9:16 ones, undistorted
    # The ramp row shows three different moments (1/6, 3/6 and 5/6 through), brighter each time.
    line = rows[2][across].astype(int)
    background = line[2]
    framed = np.abs(line - background).max(axis=1) > 10
    edges = np.flatnonzero(np.diff(framed.astype(int)))
    levels = [
        line[a + 1 : b + 1].mean() for a, b in zip(edges[::2], edges[1::2], strict=False) if b - a > 100
    ]
    assert len(levels) == 3 and levels[0] + 40 < levels[1] < levels[2] - 40
    # Each row starts with its label: light text on the dark label column, different per row.
    labels = [row[5:30, 5:150].astype(int) for row in rows]
    assert all((label.min(axis=2) > 150).sum() > 30 for label in labels)
    assert np.abs(labels[0] - labels[1]).sum() > 0


def test_a_capped_contact_sheet_shows_the_first_clips_and_counts_the_rest(tmp_path: Path) -> None:
    clips = [_encode(tmp_path / f"c{i}.mp4", "color=c=red:s=320x180:r=30:d=1") for i in range(3)]
    labelled = [(f"shot{i}", clip) for i, clip in enumerate(clips)]
    full = _png(contact_sheet(labelled, tmp_path / "full.png", frames_per_clip=2))
    capped = _png(contact_sheet(labelled, tmp_path / "capped.png", frames_per_clip=2, max_rows=2))
    row = full.shape[0] // 3
    assert full.shape[1] == capped.shape[1]
    assert 2 * row < capped.shape[0] < 3 * row  # two clip rows and a shorter line for the third
    assert (capped[2 * row :, :300].min(axis=2) > 120).sum() > 30  # that line has text


def test_contact_sheet_names_a_broken_clip(tmp_path: Path) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 20)
    with pytest.raises(MediaError) as caught:
        contact_sheet([("shot1", notes)], tmp_path / "sheet.png", context="report")
    assert "report" in str(caught.value) and str(notes) in str(caught.value)
    assert not (tmp_path / "sheet.png").exists()
