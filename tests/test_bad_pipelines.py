"""The bad-input corpus (tests/bad_pipelines/): every mistake is refused before anything is paid for.

Each file holds one realistic mistake (``several_mistakes.yaml`` holds four, to show they are reported
together). ``klingflow validate FILE`` and ``klingflow run FILE`` must both exit non-zero with the
problem as ``FILE:LINE step 'ID' field 'F': cause``, without a traceback; ``run`` must submit nothing
(the session emulator's counters stay at zero) and write no journal, ledger, store or run record.

``validate`` runs as one process per file, two at a time. ``run`` starts Prefect, which takes seconds,
so one driver process runs ``python -m klingflow.cli run FILE`` for every file in turn (the module is
executed afresh each time, as ``-m`` does, with stdout and stderr captured at the file descriptors) and
each file is still asserted by its own test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import KLINGFLOW, REPO, EmulatorAdmin
from klingflow.errors import SpecError
from klingflow.spec import check, load_pipeline

BAD = Path(__file__).parent / "bad_pipelines"
FILES = sorted(path.name for path in BAD.glob("*.yaml"))


@dataclass(frozen=True)
class Problem:
    """One expected problem: where (line, step, field) and the key words of its cause."""

    line: int
    step: str | None
    field: str | None
    cause: tuple[str, ...]


def one(line: int, step: str | None, field: str | None, *cause: str) -> list[Problem]:
    return [Problem(line, step, field, cause)]


EXPECTED: dict[str, list[Problem]] = {
    "audio_into_image_field.yaml": one(
        11, "guide", "image_url", "expects an image", "${steps.voice.audio} is audio"
    ),
    "bad_reference_syntax.yaml": one(11, "last", "video", "'${step.opening.video}' is not a reference"),
    "cycle_self.yaml": one(11, "echo", "video", "step refers to itself (${steps.echo.video})"),
    "cycle_two_steps.yaml": one(7, "frame", "video", "dependency cycle: frame -> onward -> frame"),
    "dangling_step_reference.yaml": one(16, "cut", "inputs[0]", "no step 'intro'"),
    "duplicate_step_id.yaml": one(8, "shot", "id", "duplicate step id", "first used on line 4"),
    "duplicate_yaml_key.yaml": one(10, "opening", "duration", "duplicate key", "also on line 8"),
    "effects_pair_one_image.yaml": one(
        9, "kiss", "input_image_urls", "effect_scene 'kiss' takes 2 image(s)", "got 1"
    ),
    "effects_three_images.yaml": one(
        8, "hug", "input_image_urls", "effect_scene 'hug' takes 2 image(s)", "got 3"
    ),
    "empty_file.yaml": one(1, None, None, "must be a mapping with name and steps", "this file is empty"),
    "enum_aspect_ratio.yaml": one(
        8, "opening", "aspect_ratio", "'4:3' is not a known aspect_ratio", "'16:9', '9:16', '1:1'"
    ),
    "enum_duration.yaml": one(8, "opening", "duration", "'8' is not a known duration", "'5', '10'"),
    "enum_effect_scene.yaml": one(
        7, "reunion", "effect_scene", "'hugg' is not a known effect_scene", "did you mean 'hug'?"
    ),
    "enum_voice_id.yaml": one(
        8, "narrator", "voice_id", "'uk_man' is not a known voice_id", "did you mean 'uk_man2'?"
    ),
    "fake_jpg_via_input.yaml": one(
        16, "presenter", "image_url", "assets/presenter.jpg is not an image", "plain text"
    ),
    "fake_mp3_is_pdf.yaml": one(
        8, "presenter", "audio_url", "assets/voiceover.mp3 is not audio", "a PDF document"
    ),
    "fake_mp4_is_json.yaml": one(
        7, "intro_end", "video", "assets/intro-clip.mp4 is not a video", "JSON text"
    ),
    "fake_png_is_text.yaml": one(
        8, "portrait", "image_url", "assets/fake-portrait.png is not an image", "an HTML page"
    ),
    "foreach_empty_list.yaml": one(
        12, "tour", "foreach", "foreach over an empty list", "${inputs.cities} is []", "zero times"
    ),
    "foreach_literal_list.yaml": one(
        6, "tour", "foreach", "foreach takes a reference to a list", "not a list written in place"
    ),
    "foreach_not_list.yaml": one(
        10, "tour", "foreach", "foreach needs a list", "${inputs.city} is the string input"
    ),
    "image_as_audio.yaml": one(
        8, "presenter", "audio_url", "assets/portrait.png is not audio", "a PNG image"
    ),
    "image_too_small.yaml": one(
        8, "thumb", "image_url", "is 120x120 pixels", "at least 300 pixels on each side"
    ),
    "image_wrong_aspect.yaml": one(
        8, "banner", "image_url", "is 1200x300 pixels", "aspect ratio of 4:1", "between 1:2.5 and 2.5:1"
    ),
    "item_outside_foreach.yaml": one(11, "tour", "prompt", "${item} is only defined in a step with foreach"),
    "list_into_single_field.yaml": one(
        16, "ending", "video", "expects one video", "${steps.seas.video} is a list of videos"
    ),
    "max_cost_negative.yaml": one(3, None, "max_cost_usd", "greater than 0", "got -2.5"),
    "max_cost_zero.yaml": one(3, None, "max_cost_usd", "greater than 0"),
    "missing_local_file.yaml": one(8, "hero", "image_url", "local file not found", "assets/hero.png"),
    "missing_output.yaml": one(
        12, "scored", "audio", "step 'clip' (text-to-video) has no output 'audio'", "it has: video, duration"
    ),
    "missing_required_field.yaml": one(
        6, "poster", "image_url", "required field is missing", "image-to-video needs it"
    ),
    "negative_prompt_too_long.yaml": one(
        8, "violinist", "negative_prompt", "at most 2500 characters", "it has 2659"
    ),
    "prompt_too_long.yaml": one(8, "market", "prompt", "at most 2500 characters", "it has 2794"),
    "range_cfg_scale.yaml": one(8, "opening", "cfg_scale", "less than or equal to 1", "got 7"),
    "range_voice_speed.yaml": one(8, "auctioneer", "voice_speed", "less than or equal to 2", "got 2.5"),
    "retries_negative.yaml": one(6, "opening", "retries", "greater than or equal to 0", "got -1"),
    "set_wrong_type.yaml": one(5, None, "inputs.shots", "given value: expected list, got 'dawn'"),
    "several_mistakes.yaml": [
        Problem(9, "voice", "voice_id", ("'reader_en_m' is not a known voice_id", "'reader_en_m-v1'")),
        Problem(14, "product", "cfg_scale", ("less than or equal to 1", "got 1.5")),
        Problem(18, "scored", "video", ("no step 'produkt'", "did you mean 'product'?")),
        Problem(23, "cut", "inputs[0]", ("expects a video", "${steps.voice.audio} is audio")),
    ],
    "timeout_negative.yaml": one(6, "opening", "timeout", "greater than 0", "got -300"),
    "top_level_list.yaml": one(2, None, None, "must be a mapping with name and steps", "this file is a list"),
    "tts_text_too_long.yaml": one(8, "announcement", "text", "at most 500 characters", "it has 564"),
    "unknown_endpoint.yaml": one(
        5, "spin", "uses", "unknown endpoint or operation 'image-2-video'", "did you mean 'image-to-video'?"
    ),
    "unknown_input.yaml": one(
        11, "opening", "prompt", "unknown input ${inputs.subjet}", "did you mean 'subject'?"
    ),
    "unknown_step_key.yaml": one(6, "opening", "timout", "unknown field", "did you mean 'timeout'?"),
    "unknown_with_field.yaml": one(8, "teaser", "aspect", "unknown field", "did you mean 'aspect_ratio'?"),
    # every Kling model, typed from fal's schemas: one mistake per family
    "v26_enum_aspect_ratio.yaml": one(
        8, "teaser", "aspect_ratio", "'16:10' is not a known aspect_ratio", "did you mean '16:9'?"
    ),
    "v3_prompt_and_multi_prompt.yaml": one(
        8, "story", "multi_prompt", "give prompt or multi_prompt, not both"
    ),
    "v3_duration_out_of_range.yaml": one(
        8, "take", "duration", "'20' is not a known duration", "Allowed values: '3' to '15'"
    ),
    "o3_missing_image.yaml": one(
        6, "portrait", "image_url", "required field is missing", "o3/pro/image-to-video needs it"
    ),
    "v21_standard_tail_image.yaml": one(
        9,
        "door",
        "tail_image_url",
        "v2.1/standard/image-to-video takes no 'tail_image_url'",
        "v2.1/pro/image-to-video",
    ),
    "v26_start_image_too_small.yaml": one(
        8,
        "wake",
        "start_image_url",
        "assets/thumb.png is 120x120 pixels",
        "needs at least 300 pixels of width",
    ),
    "lipsync_missing_audio.yaml": one(6, "dubbed", "audio_url", "required field is missing"),
    "image_into_list_field.yaml": one(
        12, "scene", "image_urls", "expects a list of images, but ${steps.design.image} is an image"
    ),
    "kling_image_resolution.yaml": one(
        8, "still", "resolution", "'4k' is not a known resolution", "did you mean '4K'?"
    ),
    "unknown_endpoint_version.yaml": one(
        5, "teaser", "uses", "did you mean 'fal-ai/kling-video/v2.6/pro/text-to-video'?"
    ),
    "video_into_audio_field.yaml": one(
        16, "scored", "audio", "expects audio", "${steps.music.video} is a video"
    ),
    "yaml_syntax_error.yaml": one(7, None, None, "not valid YAML", "quoted string", "never closed"),
}

EXTRA_ARGS: dict[str, list[str]] = {"set_wrong_type.yaml": ["--set", "shots=dawn"]}
"""Mistakes made on the command line rather than in the file."""

CACHE_DIRS = ("journal", "ledger", "runs", "store", "claims")
"""What a run writes under KLINGFLOW_HOME once it gets going; a refused pipeline must leave none of it."""


def shown(name: str) -> str:
    """The file as the commands are given it (relative to the repository, where they run)."""
    return f"tests/bad_pipelines/{name}"


def flat(text: str) -> str:
    """Output with every run of whitespace made one space: Rich wraps long lines at the terminal width."""
    return " ".join(text.split())


def assert_reports(name: str, output: str) -> None:
    """``output`` names every expected problem of ``name`` as FILE:LINE step field: cause, and no other."""
    text = flat(output)
    assert "Traceback" not in output, output
    file = shown(name)
    expected = EXPECTED[name]
    starts = [text.find(f"{file}:{problem.line}") for problem in expected]
    for problem, start in zip(expected, starts, strict=True):
        head = " ".join(
            [f"{file}:{problem.line}"]
            + ([f"step {problem.step!r}"] if problem.step else [])
            + ([f"field {problem.field!r}"] if problem.field else [])
        )
        assert start >= 0 and text[start:].startswith(head + ":"), f"expected {head!r} in:\n{output}"
        end = text.find(f"{file}:", start + len(head))
        own = text[start : end if end > 0 else None]
        for words in problem.cause:
            assert words in own, f"{head}: expected {words!r} in {own!r}"
    assert text.count(f"{file}:") == len(expected), f"expected {len(expected)} problem(s):\n{output}"


def test_every_corpus_file_is_described_and_says_what_is_wrong() -> None:
    assert len(FILES) >= 30
    assert set(FILES) == set(EXPECTED), "tests/bad_pipelines/*.yaml and EXPECTED must list the same files"
    for name in FILES:
        first = (BAD / name).read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# Wrong"), f"{name} must start with a comment saying what is wrong"


@pytest.mark.parametrize("name", FILES)
def test_check_refuses_it_with_every_problem_located(name: str) -> None:
    """The library call the engine makes before any request: the same problems, file:line first."""
    inputs = {"shots": "dawn"} if name in EXTRA_ARGS else {}
    with pytest.raises(SpecError) as caught:
        check(load_pipeline(BAD / name), inputs)
    problems = caught.value.problems
    assert len(problems) == len(EXPECTED[name]), problems
    for text, problem in zip(problems, EXPECTED[name], strict=True):
        assert text.startswith(f"{BAD / name}:{problem.line}"), text


# --- klingflow validate FILE: one process per file, two at a time ---------------------------------


Done = subprocess.CompletedProcess[str]


def _validate(name: str) -> Done:
    return subprocess.run(
        [*KLINGFLOW, "validate", shown(name), *EXTRA_ARGS.get(name, [])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def validations() -> Iterator[dict[str, Future[Done]]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(_validate, name) for name in FILES}


@pytest.mark.parametrize("name", FILES)
def test_validate_refuses_it(name: str, validations: dict[str, Future[Done]]) -> None:
    done = validations[name].result()
    assert done.returncode != 0, done.stdout
    assert_reports(name, done.stderr + done.stdout)


# --- klingflow run FILE: nothing submitted, nothing recorded ---------------------------------------

_DRIVER = r"""
import json, os, runpy, ssl, sys, tempfile, traceback
from pathlib import Path
import httpx

cases, results_file = json.loads(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
stats_url = f"https://{os.environ['FAL_QUEUE_RUN_HOST']}/_emulator/stats"

def submits():
    answer = httpx.get(stats_url, headers={"Authorization": f"Key {os.environ['FAL_KEY']}"}, verify=context)
    return answer.raise_for_status().json()["total_submits"]

results = {}
for name, home, argv in cases:
    os.environ["KLINGFLOW_HOME"] = home
    before = submits()
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1); os.dup2(captured.fileno(), 2)
        code = None
        try:
            sys.argv = ["klingflow", *argv]
            runpy.run_module("klingflow.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = "raised"
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)
            os.close(saved[0]); os.close(saved[1])
        captured.seek(0)
        output = captured.read().decode("utf-8", "replace")
    results[name] = {"code": code, "output": output, "submits": submits() - before}
Path(results_file).write_text(json.dumps(results))
"""


@pytest.fixture(scope="module")
def runs(emulator_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """``klingflow run FILE --backend fal`` against the session emulator, for every file."""
    admin = EmulatorAdmin(emulator_server)
    admin.faults()
    root = tmp_path_factory.mktemp("bad-runs")
    cases = []
    for name in FILES:
        home = root / "homes" / name.removesuffix(".yaml")
        home.mkdir(parents=True)
        cases.append((name, str(home), ["run", shown(name), "--backend", "fal", *EXTRA_ARGS.get(name, [])]))
    env = {**admin.environment(), "FAL_KEY": admin.key, "PREFECT_HOME": str(root / "prefect")}
    results = root / "results.json"
    before = admin.stats()["total_submits"]
    driver = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(cases), str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert driver.returncode == 0 and results.exists(), driver.stderr[-5000:]
    found: dict[str, dict[str, Any]] = json.loads(results.read_text())
    for name, _, _ in cases:
        home = root / "homes" / name.removesuffix(".yaml")
        found[name]["recorded"] = sorted(
            str(path.relative_to(home))
            for folder in CACHE_DIRS
            for path in (home / folder).rglob("*")
            if path.is_file()
        )
    found["(all)"] = {"submits": admin.stats()["total_submits"] - before}
    return found


@pytest.mark.parametrize("name", FILES)
def test_run_refuses_it_before_submitting(name: str, runs: dict[str, dict[str, Any]]) -> None:
    result = runs[name]
    assert result["submits"] == 0, "a refused pipeline submitted a request"
    assert result["recorded"] == [], "a refused pipeline left run records"
    assert result["code"] not in (0, "raised"), result["output"]
    assert_reports(name, result["output"])


def test_no_refused_run_reached_the_emulator(runs: dict[str, dict[str, Any]]) -> None:
    assert runs["(all)"]["submits"] == 0


# --- real media still passes -----------------------------------------------------------------------


def _media(folder: Path) -> None:
    """A real PNG, JPEG, MP3 and MP4, each named for what it is."""
    from PIL import Image

    from klingflow.media._run import ffmpeg_executable

    Image.new("RGB", (720, 1280), (90, 120, 200)).save(folder / "portrait.png")
    Image.new("RGB", (750, 300), (200, 120, 90)).save(folder / "wide.jpg")  # exactly 2.5:1
    ffmpeg = ffmpeg_executable()
    for args in (
        ["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "libmp3lame", "voice.mp3"],
        ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=10:duration=1", "-pix_fmt", "yuv420p", "clip.mp4"],
    ):
        subprocess.run([ffmpeg, "-v", "error", "-y", *args], cwd=folder, check=True, timeout=60)


def test_real_media_passes_validation(tmp_path: Path) -> None:
    _media(tmp_path)
    pipeline = tmp_path / "real.yaml"
    pipeline.write_text(
        """name: real_media
steps:
  - id: talk
    uses: ai-avatar
    with: {image_url: portrait.png, audio_url: voice.mp3}
  - id: wide
    uses: image-to-video
    with: {prompt: the field sways, image_url: wide.jpg, tail_image_url: portrait.png}
  - id: hug
    uses: effects
    with: {effect_scene: hug, input_image_urls: [portrait.png, wide.jpg]}
  - id: ending
    uses: last_frame
    with: {video: clip.mp4}
  - id: scored
    uses: mux_audio
    with: {video: clip.mp4, audio: voice.mp3}
""",
        encoding="utf-8",
    )
    assert check(load_pipeline(pipeline)).order == ["talk", "wide", "hug", "ending", "scored"]
    done = subprocess.run(
        [*KLINGFLOW, "validate", str(pipeline)], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


@pytest.mark.parametrize(
    ("content", "kinds", "label"),
    [
        (b"", set(), "an empty file (0 bytes)"),
        (b"\x89PNG\r\n\x1a\n", set(), "a PNG image whose header cannot be read"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", {"audio"}, "an M4A audio file"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", {"image"}, "a HEIF image"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00", {"video", "audio"}, "an MP4 video"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", {"video", "audio"}, "a Matroska/WebM video"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", {"audio"}, "a WAV audio file"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", {"audio"}, "an MP3 audio file"),
        (b"\xff\xfb\x90\x64\x00", {"audio"}, "an MP3/AAC audio file"),
        (b"PK\x03\x04\x14\x00", set(), "a ZIP archive"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', set(), "an SVG drawing"),
        (bytes(range(256)) * 4, set(), "unrecognised binary data"),
    ],
)
def test_sniff_reads_content_not_names(tmp_path: Path, content: bytes, kinds: set[str], label: str) -> None:
    from klingflow.spec._media import sniff

    path = tmp_path / "named.png"
    path.write_bytes(content)
    found = sniff(path)
    assert set(found.kinds) == kinds and found.label.startswith(label), found


def test_kling_image_limits_apply_to_local_images_only_where_kling_animates_them(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (640, 640), (10, 20, 30)).save(tmp_path / "square.webp")
    Image.new("RGB", (640, 640), (10, 20, 30)).save(tmp_path / "huge.png")
    with (tmp_path / "huge.png").open("ab") as stream:
        stream.write(b"\x00" * (11 * 2**20))  # trailing bytes: the header still reads, the file is 11 MB
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "mask.png")
    pipeline = tmp_path / "limits.yaml"
    pipeline.write_text(
        """name: limits
steps:
  - id: webp
    uses: image-to-video
    with: {prompt: p, image_url: square.webp}
  - id: huge
    uses: image-to-video
    with: {prompt: p, image_url: huge.png, static_mask_url: mask.png}
""",
        encoding="utf-8",
    )
    with pytest.raises(SpecError) as caught:
        check(load_pipeline(pipeline))
    problems = caught.value.problems
    assert len(problems) == 2, problems  # the small mask is not held to Kling's 300-pixel rule
    assert (
        "step 'webp' field 'image_url'" in problems[0]
        and "is a WebP image; Kling takes JPEG or PNG" in problems[0]
    )
    assert (
        "step 'huge' field 'image_url'" in problems[1]
        and "is 11.0 MB; Kling takes at most 10 MB" in problems[1]
    )
