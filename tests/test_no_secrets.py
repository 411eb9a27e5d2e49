"""No secret in anything a run leaves behind: ledger, manifest, contact sheet, report, Prefect artifacts.

The planted key is the one the run really uses (the session emulator is told to accept only it,
so it travels in every request's headers), it is in FAL_KEY, and it is also pasted into a prompt
and into a failing input's file name, so that it reaches the ledger's prompt, arguments and error
texts; every file written and every artifact is then searched for it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.testing.utilities import prefect_test_harness

from klingflow import ledger
from test_artifacts import read_artifacts, recorded_flow

pytestmark = pytest.mark.slow

SECRET = "sk-test-planted-secret-123456"


@pytest.fixture(scope="module", autouse=True)
def prefect_server() -> Any:
    """One temporary Prefect server for this module."""
    with prefect_test_harness(server_startup_timeout=60):
        yield


def _text(path: Path) -> str:
    """A file's content as searchable text; parquet also decoded (its pages may be compressed)."""
    raw = path.read_bytes().decode("latin-1")
    return raw + pq.read_table(path).to_pandas().to_csv() if path.suffix == ".parquet" else raw


def test_the_planted_key_appears_in_no_file_and_no_artifact(
    emulator: Any, emulator_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    monkeypatch.setenv("KLINGFLOW_HOME", str(home))
    monkeypatch.setenv("FAL_KEY", SECRET)
    monkeypatch.setattr(emulator_server.state, "key", SECRET)
    broken = tmp_path / f"clip-{SECRET}.mp4"
    # An MP4 signature over garbage: it passes validation's content check and fails when decoded.
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"this is not a video " * 50)
    data = {
        "name": "secrets",
        "steps": [
            {"id": "shot", "uses": "text-to-video", "with": {"prompt": f"a kite, key {SECRET} oops"}},
            {"id": "voice", "uses": "tts", "with": {"text": "Nothing to see here."}},
            {"id": "broken", "uses": "last_frame", "with": {"video": str(broken)}},
        ],
    }
    ids = asyncio.run(recorded_flow(data, SECRET, str(home), str(out)))

    frame = ledger.load(run=ids["run_id"])
    assert list(frame["status"]) == ["completed", "completed", "failed"], "the key really worked"
    assert "***" in frame.loc[0, "prompt"] and "***" in frame.loc[2, "error"], "it was there, and redacted"

    written = [
        p for folder in (out, home / "ledger", home / "runs") for p in folder.rglob("*") if p.is_file()
    ]
    names = {p.name for p in written}
    assert {"report.html", "contact-sheet.png", f"{ids['run_id']}.json"} <= names
    assert any(name.endswith(".parquet") for name in names)
    for path in written:
        assert SECRET not in _text(path), f"the key leaked into {path}"

    artifacts = asyncio.run(
        read_artifacts(ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[ids["flow_run_id"]])))
    )
    assert len(artifacts) >= 2, "the ledger table and summary at least (plus images and links)"
    for artifact in artifacts:
        assert SECRET not in f"{artifact.data} {artifact.description} {artifact.key}", artifact.key


def test_the_planted_key_appears_in_no_command_output_and_no_file_of_the_home(tmp_path: Path) -> None:
    """Every command path, as a user runs them: validate, plan, run (with a failing step and a lost
    submit), recover, ledger, ledger summary, report. The served emulator accepts only the planted
    key; its output, and every file under the home (journal, store, claims, ledger, runs) and the
    exported outputs, are searched for it."""
    import subprocess

    from conftest import KLINGFLOW, serve_emulator

    home, emulator_home = tmp_path / "home", tmp_path / "emulator-home"
    (emulator_home / "emulator").mkdir(parents=True)
    (emulator_home / "emulator" / "key").write_text(SECRET)  # the served emulator's access key
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"this is not a video " * 50)
    pipeline = tmp_path / "secrets.yaml"
    pipeline.write_text(
        "name: secrets\nsteps:\n"
        f"  - id: shot\n    uses: text-to-video\n    with: {{prompt: 'a kite, key {SECRET} oops'}}\n"
        "  - id: voice\n    uses: tts\n    with: {text: Nothing to see here.}\n"
        f"  - id: broken\n    uses: last_frame\n    with: {{video: {broken}}}\n"
    )
    outputs = []
    with serve_emulator(emulator_home, "--latency", "0.2", "--faults", "script=lost") as env:
        env = {**env, "KLINGFLOW_HOME": str(home), "PREFECT_HOME": str(tmp_path / "prefect")}
        assert env["FAL_KEY"] == SECRET
        for args in (
            ["validate", str(pipeline)],
            ["plan", str(pipeline)],
            ["run", str(pipeline), "--out", str(tmp_path / "out")],
            ["recover"],
            ["ledger", "--format", "json"],
            ["ledger", "summary", "--format", "json"],
        ):
            done = subprocess.run([*KLINGFLOW, *args], env=env, capture_output=True, text=True, timeout=240)
            outputs.append((args[0], done))
        run_id = json.loads(outputs[4][1].stdout)[0]["run_id"]
        report = subprocess.run([*KLINGFLOW, "report", run_id], env=env, capture_output=True, text=True)
        outputs.append(("report", report))
    assert outputs[2][1].returncode == 1, "the run really ran (and its broken step failed)"
    assert "***" in outputs[4][1].stdout, "the key reached the ledger's prompt, redacted"
    for name, done in outputs:
        assert SECRET not in done.stdout + done.stderr, f"the key leaked into `klingflow {name}`'s output"
    written = [p for folder in (home, tmp_path / "out") for p in folder.rglob("*") if p.is_file()]
    assert any("journal" in p.parts for p in written) and any("store" in p.parts for p in written)
    for path in written:
        assert SECRET not in _text(path), f"the key leaked into {path}"
