"""The emulator as users meet it: `klingflow emulator serve` + `emulator env` + the seed's unmodified
Python quick-starts, and the embedded default in fresh interpreters (fal_client imported first or not)."""

from __future__ import annotations

import ast
import json
import os
import re
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import KLINGFLOW, serve_emulator
from klingflow.media import probe

pytestmark = pytest.mark.slow

SEED = Path(__file__).parent / "data" / "seed-kling-v1-standard.md"

# The seed has no TTS tab; this is the same quick-start shape for fal-ai/kling-video/v1/tts.
TTS_SNIPPET = """
import fal_client

def on_queue_update(update):
    if isinstance(update, fal_client.InProgress):
        for log in update.logs:
           print(log["message"])

result = fal_client.subscribe(
    "fal-ai/kling-video/v1/tts",
    arguments={"text": "Welcome to klingflow, where every clip is cached."},
    with_logs=True,
    on_queue_update=on_queue_update,
)
print(result)
"""


def seed_python_snippets() -> dict[str, str]:
    """The seed's Python quick-starts, unmodified, keyed by endpoint id."""
    blocks = re.findall(r'```python title="Python"[^\n]*\n(.*?)```', SEED.read_text(), re.S)
    snippets = {}
    for block in blocks:
        code = textwrap.dedent(block)
        snippets[re.search(r'"(fal-ai/[^"]+)"', code).group(1)] = code
    return snippets


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[dict[str, str]]:
    with serve_emulator(tmp_path_factory.mktemp("served-home"), "--latency", "0.3") as env:
        yield env


def test_env_prints_what_fal_client_needs(served: dict[str, str]) -> None:
    for name in ("FAL_KEY", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE", "NO_PROXY"):
        assert served[name]
    assert served["FAL_RUN_HOST"] != served["FAL_QUEUE_RUN_HOST"]


@pytest.mark.parametrize(
    "endpoint",
    [
        "fal-ai/kling-video/v1/standard/image-to-video",
        "fal-ai/kling-video/v1/standard/text-to-video",
        "fal-ai/kling-video/v1/standard/ai-avatar",
        "fal-ai/kling-video/v1/standard/effects",
        "fal-ai/kling-video/v1/tts",
    ],
)
def test_seed_quick_start_runs_unmodified(served: dict[str, str], endpoint: str, tmp_path: Path) -> None:
    code = TTS_SNIPPET if endpoint.endswith("/tts") else seed_python_snippets()[endpoint]
    done = subprocess.run(
        [sys.executable, "-c", code], env=served, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert "Generating" in done.stdout, "with_logs=True prints the emulator's log lines"
    file = result.get("video") or result["audio"]
    response = httpx.get(file["url"], verify=ssl.create_default_context(cafile=served["SSL_CERT_FILE"]))
    assert response.status_code == 200 and len(response.content) == file["file_size"]
    out = tmp_path / file["file_name"]
    out.write_bytes(response.content)
    info = probe(out)
    if endpoint.endswith("/tts"):
        assert info.has_audio and not info.has_video
    else:
        assert info.has_video and abs(info.duration - result.get("duration", 5.0)) < 0.1
    if "storage.googleapis.com" in code:
        assert "placeholder" in done.stdout, "unreachable public inputs are replaced and logged"


def test_seed_curl_example_against_the_run_host(served: dict[str, str]) -> None:
    curl_body = json.dumps({"prompt": "A stylish woman walks down a Tokyo street."})
    response = httpx.post(
        f"https://{served['FAL_RUN_HOST']}/fal-ai/kling-video/v1/standard/text-to-video",
        headers={"Authorization": f"Key {served['FAL_KEY']}"},
        content=curl_body,
        verify=ssl.create_default_context(cafile=served["SSL_CERT_FILE"]),
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["video"]["url"].endswith(".mp4")


def test_stats_command(served: dict[str, str]) -> None:
    done = subprocess.run(
        [*KLINGFLOW, "emulator", "stats"], env=served, capture_output=True, text=True, check=True
    )
    assert "submits" in json.loads(done.stdout)


def test_env_without_a_running_emulator_says_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "KLINGFLOW_HOME": str(tmp_path)}
    done = subprocess.run([*KLINGFLOW, "emulator", "env"], env=env, capture_output=True, text=True)
    assert done.returncode == 2, "a configuration mistake: exit 2"
    assert "no klingflow emulator is running" in done.stderr and "klingflow emulator serve" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_fault_spec_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "KLINGFLOW_HOME": str(tmp_path)}
    done = subprocess.run(
        [*KLINGFLOW, "emulator", "serve", "--port", "0", "--faults", "509:0.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown fault kind '509'" in done.stderr


EMBEDDED = """
import asyncio, json, os, sys
if sys.argv[1] == "fal-first":
    import fal_client  # a notebook that imported fal_client before klingflow
from klingflow.backends import connect

backend = connect()

async def generate():  # the backend's calls in the engine's order
    body = await backend.prepare("text-to-video", {"prompt": "embedded default"})
    handle = await backend.submit("text-to-video", body)
    await backend.wait(handle)
    return await backend.download(handle, (await backend.fetch_result(handle)).raw)

result = asyncio.run(generate())
import fal_client, httpx  # fal_client's own upload reaches the emulator through its tunnel
client = fal_client.SyncClient(key=backend.config.key.get_secret_value())
url = client.upload(b"embedded upload", "text/plain")
print(json.dumps({"kind": backend.config.kind, "path": str(result.files["video"].path),
                  "proxy": os.environ.get("HTTPS_PROXY", ""), "uploaded": httpx.get(url).text}))
"""


@pytest.mark.parametrize("order", ["klingflow-first", "fal-first"])
def test_embedded_default_without_a_key(order: str, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FAL_KEY", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE", "HTTPS_PROXY")
    }
    env.update(KLINGFLOW_HOME=str(tmp_path), KLINGFLOW_EMULATOR_LATENCY="0.1")
    done = subprocess.run(
        [sys.executable, "-c", EMBEDDED, order], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # fal_client's keep-alive connection through the tunnel is still open when the process exits
    # and the embedded emulator stops: that must end quietly, not as an asyncio ERROR.
    assert "Exception in callback" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["kind"] == "emulator"
    assert probe(report["path"]).width == 1280
    assert report["proxy"], "HTTPS_PROXY names the tunnel to fal's fixed upload hosts in both cases"
    assert report["uploaded"] == "embedded upload"
