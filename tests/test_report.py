"""The run record and report: record_run against the emulator, the HTML's contents, and Chromium.

One pipeline run (module scope) feeds every test: two text-to-video shots from a foreach, one
more shot, a voice line, a last frame, a step that times out (failed) and its dependant
(skipped), and a concat of the shots. Its prompts carry markup that must come out escaped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from websockets.sync.client import connect

from conftest import REPO
from klingflow import ledger
from klingflow.cache import Journal, Store
from klingflow.engine import RetryPolicy, RunOptions, RunResult, arun
from klingflow.engine.recording import record_run
from klingflow.ledger import LedgerError, RunManifest, load_manifest
from klingflow.spec import ValidatedPipeline, check, parse_pipeline

HOSTILE = 'Wide shot of a lighthouse & <script>alert("owned")</script>'


def demo(broken: Path) -> dict[str, Any]:
    """The demo pipeline; ``broken`` is a file that is not a video, so step ``broken`` fails."""
    return {
        "name": "lighthouse",
        "inputs": {
            "beats": {"type": "list", "default": ["dawn <b>breaks</b> over a calm sea", "a storm rolls in"]}
        },
        "steps": [
            {"id": "opening", "uses": "text-to-video", "with": {"prompt": HOSTILE}},
            {
                "id": "beats",
                "uses": "text-to-video",
                "foreach": "${inputs.beats}",
                "with": {"prompt": "${item}", "aspect_ratio": "9:16"},
            },
            {"id": "voice", "uses": "tts", "with": {"text": "The keeper climbs the stairs."}},
            {"id": "keyframe", "uses": "last_frame", "with": {"video": "${steps.opening.video}"}},
            {"id": "broken", "uses": "last_frame", "with": {"video": str(broken)}},
            {
                "id": "animate",
                "uses": "image-to-video",
                "with": {"image_url": "${steps.broken.image}", "prompt": "the sea moves"},
            },
            {
                "id": "final_cut",
                "uses": "concat",
                "with": {"inputs": ["${steps.opening.video}", "${steps.beats.video}"]},
            },
        ],
    }


def run_demo(
    key: str, home: Path, out_dir: Path | None, *, run_id: str | None = None, warm: bool = False
) -> tuple[RunResult, ValidatedPipeline]:
    """Run the demo pipeline against the session emulator with a private cache under ``home``.

    ``warm`` first runs just ``opening`` and ``voice``, so that the demo finds those two cached.
    """
    broken = home / "broken.mp4"
    # An MP4 signature over garbage: it passes validation's content check and fails when decoded.
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"this is not a video " * 50)
    data = demo(broken)
    options = RunOptions(
        backend="fal",
        key=key,
        store=Store(home / "store"),
        journal=Journal(home / "journal"),
        retry=RetryPolicy(retries=1, base_delay=0.05),
        out_dir=out_dir,
    )
    if warm:
        steps = [step for step in data["steps"] if step["id"] in ("opening", "voice")]
        warm_up = parse_pipeline({**data, "steps": steps})
        asyncio.run(arun(warm_up, None, options.model_copy(update={"out_dir": None})))
    spec = parse_pipeline(data)
    result = asyncio.run(arun(spec, None, options, run_id=run_id))
    return result, check(spec, {})


class Recorded:
    """The module's one recorded run."""

    def __init__(
        self, home: Path, out: Path, result: RunResult, validated: ValidatedPipeline, manifest: RunManifest
    ) -> None:
        self.home, self.out, self.result, self.validated, self.manifest = (
            home,
            out,
            result,
            validated,
            manifest,
        )


@pytest.fixture(scope="module")
def recorded(emulator_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    home = tmp_path_factory.mktemp("report-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KLINGFLOW_HOME", str(home))
        result, validated = run_demo(emulator_server.identity.key, home, home / "out", warm=True)
        manifest, _ = record_run(
            result, validated, out_dir=home / "out", secrets=[emulator_server.identity.key]
        )
        yield Recorded(home, home / "out", result, validated, manifest)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def elements(page: str, tag: str) -> list[dict[str, str]]:
    parser = _Elements()
    parser.feed(page)
    return [attrs for name, attrs in parser.found if name == tag]


def test_record_run_writes_ledger_manifest_sheet_and_report(recorded: Recorded) -> None:
    manifest = recorded.manifest
    assert manifest.status == "failed" and set(manifest.failures) == {"broken", "animate"}
    assert manifest.report == str(recorded.out / "report.html")
    assert Path(manifest.report).is_file()
    sheet = Path(manifest.contact_sheet or "")
    assert sheet.parent == recorded.home / "runs" / manifest.run_id
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (recorded.home / "runs" / f"{manifest.run_id}.json").is_file()
    assert load_manifest(manifest.run_id[:6]) == manifest
    rows = ledger.load(run=manifest.run_id, root=recorded.home / "ledger")
    assert len(rows) == len(recorded.result.records) == 8
    assert set(manifest.final) == {"voice", "keyframe", "final_cut"}, "steps nothing depends on"
    assert manifest.dependencies["final_cut"] == ["beats", "opening"]
    assert manifest.kinds["keyframe"] == "operation" and manifest.uses["voice"] == "tts"


def test_report_draws_the_dag_coloured_by_status(recorded: Recorded) -> None:
    page = Path(recorded.manifest.report or "").read_text()
    assert len(elements(page, "svg")) == 1 and 'id="dag"' in page
    nodes = {
        attrs["data-step"]: attrs["data-status"] for attrs in elements(page, "g") if "data-step" in attrs
    }
    assert nodes == {
        "opening": "cached",
        "beats": "completed",
        "voice": "cached",
        "keyframe": "completed",
        "broken": "failed",
        "animate": "skipped",
        "final_cut": "completed",
    }
    assert page.count('class="edge"') == 4, "opening->keyframe, broken->animate, two into final_cut"


def test_report_media_point_at_existing_local_files(recorded: Recorded) -> None:
    report = Path(recorded.manifest.report or "")
    page = report.read_text()
    videos, audios, images = (elements(page, tag) for tag in ("video", "audio", "img"))
    assert len(videos) == 1 + 4, "the final cut on top, then opening, beats[0], beats[1], final_cut"
    assert len(audios) == 2, "voice: on top (a final output) and in its card"
    assert len(images) == 3, "keyframe: on top and in its card; the contact sheet"
    for attrs in [*videos, *audios, *images]:
        source = attrs["src"]
        assert not re.match(r"^[a-z]+://", source), f"{source} must be a relative path"
        assert (report.parent / unquote(source)).resolve().is_file()
    first_video = page.index("<video")
    assert page.index('id="final"') < first_video < page.index('id="pipeline"'), "the final cut is on top"


def test_report_is_self_contained(recorded: Recorded) -> None:
    page = Path(recorded.manifest.report or "").read_text()
    assert not elements(page, "link") and "@import" not in page
    for tag in ("script", "img", "video", "audio", "source", "iframe"):
        for attrs in elements(page, tag):
            assert not attrs.get("src", "").startswith(("http:", "https:", "//"))
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)


def test_report_escapes_user_text(recorded: Recorded) -> None:
    page = Path(recorded.manifest.report or "").read_text()
    assert "<script>alert" not in page and "<b>breaks</b>" not in page
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;" in page
    assert "dawn &lt;b&gt;breaks&lt;/b&gt; over a calm sea" in page
    assert len(elements(page, "script")) == 1, "only the report's own inline script"


def test_report_cards_show_settings_cost_timings_and_errors(recorded: Recorded) -> None:
    page = Path(recorded.manifest.report or "").read_text()
    beat = next(r for r in recorded.result.records if r.step_id == "beats")
    assert beat.request_id and beat.request_id in page
    assert "$0.225" in page and "miss (generated)" in page and "hit (reused, not paid again)" in page
    assert "not a readable media file" in page and "skipped: depends on failed step(s) broken" in page
    assert "&quot;aspect_ratio&quot;: &quot;9:16&quot;" in page, "arguments shown as pretty JSON"
    table = page[page.index('id="ledger"') :]
    assert table.count("<tr>") == 1 + 8


def test_a_cosmetic_failure_never_fails_the_record(
    recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A clip that is not media (the contact sheet fails) and a report path that is a folder (the report
    fails): the run is still recorded, with warnings, because the money was already spent."""
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path))
    result = recorded.result.model_copy(deep=True)
    fake = tmp_path / "not-a-clip.mp4"
    fake.write_text("this is not a video\n" * 50)
    video = next(r for r in result.records if r.output_path and r.output_path.endswith(".mp4"))
    video.output_path = str(fake)
    (tmp_path / "out" / "report.html").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="klingflow.engine.recording"):
        manifest, _ = record_run(result, recorded.validated, out_dir=tmp_path / "out")
    assert manifest.contact_sheet is None and manifest.report is None
    assert "contact sheet" in caplog.text and "report" in caplog.text
    assert load_manifest(manifest.run_id) == manifest
    assert len(ledger.load(run=manifest.run_id)) == 8


def test_a_ledger_failure_is_loud_and_names_the_path(
    recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path))
    (tmp_path / "ledger").write_text("not a folder")
    with pytest.raises(LedgerError) as caught:
        record_run(recorded.result, recorded.validated, out_dir=None)
    assert str(tmp_path / "ledger") in caught.value.context


def test_load_manifest_explains_unknown_and_ambiguous_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from klingflow.ledger import save_manifest

    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path))
    for run_id in ("abc1", "abc2"):
        save_manifest(
            RunManifest(run_id=run_id, pipeline="p", status="completed", order=[], dependencies={}, kinds={})
        )
    with pytest.raises(LedgerError, match="ambiguous: abc1, abc2"):
        load_manifest("abc")
    with pytest.raises(LedgerError) as caught:
        load_manifest("zzz")
    assert "abc1" in caught.value.hint and "abc2" in caught.value.hint


# --- Chromium -------------------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    "--window-size=1400,1800",
]


@contextlib.contextmanager
def chromium_page(url: str) -> Iterator[Callable[..., dict[str, Any]]]:
    """Open ``url`` in headless Chromium (fresh profile) and yield a DevTools ``call(method, **params)``.

    DevTools (on loopback) lets the test wait for the page's own "all media checked" marker
    instead of guessing a delay; Chromium picks the port and writes it into the profile folder.
    """
    executable = shutil.which("chromium")
    assert executable, "chromium is missing: run scripts/install-chromium"
    profile = Path(tempfile.mkdtemp(prefix="klingflow-chromium-"))
    process = subprocess.Popen(
        [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().splitlines()[0])
        with httpx.Client(trust_env=False) as client:
            targets = client.get(f"http://127.0.0.1:{port}/json/list").json()
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, proxy=None) as socket:
            counter = iter(range(1, 1_000_000))

            def call(method: str, **params: Any) -> dict[str, Any]:
                number = next(counter)
                socket.send(json.dumps({"id": number, "method": method, "params": params}))
                while True:
                    message = json.loads(socket.recv(timeout=60))
                    if message.get("id") == number:
                        assert "error" not in message, message
                        return message["result"]

            yield call
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


def evaluate(call: Callable[..., dict[str, Any]], expression: str) -> Any:
    return call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@pytest.mark.slow
def test_report_plays_every_clip_in_headless_chromium(recorded: Recorded, tmp_path: Path) -> None:
    report = Path(recorded.manifest.report or "")
    with chromium_page(report.resolve().as_uri()) as call:
        deadline = time.monotonic() + 90
        while evaluate(call, "document.body ? document.body.dataset.mediaDone || '' : ''") != "true":
            assert time.monotonic() < deadline, evaluate(call, "document.body.dataset.mediaSettled")
            time.sleep(0.2)
        media = evaluate(
            call,
            "Array.from(document.querySelectorAll('video, audio')).map(e => ({tag: e.tagName,"
            " src: e.getAttribute('src'), playable: e.dataset.playable, width: e.videoWidth || 0,"
            " duration: e.duration}))",
        )
        svg = evaluate(
            call,
            "(() => { const s = document.querySelector('svg#dag');"
            " const r = s.getBoundingClientRect(); return {nodes: s.querySelectorAll('g.node').length,"
            " width: r.width, height: r.height}; })()",
        )
        if os.environ.get("KLINGFLOW_UPDATE_DOCS"):
            time.sleep(1.5)  # for a clean picture: the players' spinners fade out after the seek back
        evaluate(call, "window.scrollTo(0, 0)")
        shot = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
    videos = [m for m in media if m["tag"] == "VIDEO"]
    assert len(videos) == 5 and len(media) == 7
    for item in media:
        assert item["playable"] == "yes", f"{item['src']} did not play: {item}"
        assert item["duration"] > 0
    assert all(v["width"] > 0 for v in videos), "every video decoded to a picture"
    assert svg["nodes"] == 7 and svg["width"] > 200 and svg["height"] > 50, "the DAG picture is drawn"
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report.png").write_bytes(shot)
    if os.environ.get("KLINGFLOW_UPDATE_DOCS"):
        (REPO / "docs" / "report.png").write_bytes(shot)


@pytest.mark.slow
def test_chromium_check_is_not_vacuous_a_broken_clip_is_marked(tmp_path: Path) -> None:
    from klingflow.report import write_report

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video at all" * 40)
    manifest = RunManifest(
        run_id="broken",
        pipeline="p",
        status="completed",
        order=["cut"],
        dependencies={"cut": []},
        kinds={"cut": "operation"},
        final={"cut": str(broken)},
    )
    report = write_report(manifest, ledger.load(root=tmp_path / "none"), tmp_path / "report.html")
    with chromium_page(report.as_uri()) as call:
        deadline = time.monotonic() + 60
        while evaluate(call, "document.body ? document.body.dataset.mediaDone || '' : ''") != "true":
            assert time.monotonic() < deadline, "the page never settled"
            time.sleep(0.2)
        state = evaluate(call, "document.querySelector('video').dataset.playable")
        badge = evaluate(call, "document.querySelector('.check').textContent")
    assert state == "no" and badge.startswith("✗ cannot play")
