"""fal's own JavaScript client (``@fal-ai/client``, unmodified) follows requests by the emulator's status
stream over HTTPS: ``queue.streamStatus`` and ``subscribe({mode: "streaming"})`` see each event and the
final COMPLETED, then fetch the result and its file. The emulator's status stream is modelled on what
fal-js reads (log lines new per event, which it adds up), so fal-js itself is the check of that.

``scripts/install-fal-js`` installs the pinned client into ``tests/js/node_modules`` (``scripts/test``
runs it; so does this module when the client is missing)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLIENT_VARIABLES, REPO, EmulatorAdmin

T2V = "fal-ai/kling-video/v1/standard/text-to-video"
JS = REPO / "tests" / "js"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the pinned @fal-ai/client installed beside the script (skips if it cannot be)."""
    if shutil.which("node") is None or not (JS / "node_modules" / "@fal-ai" / "client").is_dir():
        done = subprocess.run(
            [str(REPO / "scripts" / "install-fal-js")], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            pytest.skip(f"fal's JavaScript client could not be installed: {done.stderr.strip()[-500:]}")
    found = shutil.which("node")
    assert found is not None
    return found


def _run_fal_js(node: str, emulator: EmulatorAdmin, endpoint: str, arguments: dict) -> dict:
    server = emulator.server
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARIABLES}
    env.update(
        FAL_KEY=emulator.key,
        FAL_QUEUE_RUN_HOST=server.queue_host,
        NODE_EXTRA_CA_CERTS=str(server.identity.ca_bundle),  # node's own roots plus the emulator's CA
    )
    done = subprocess.run(
        [node, "stream_status.mjs", endpoint, json.dumps(arguments)],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _file_of(request_id: str, file: dict) -> None:
    assert file["status"] == 200 and file["bytes"] > 0, file
    assert Path(file["url"]).parent.name == request_id, file


def test_fal_js_follows_the_status_stream_to_completed_and_fetches_the_result(
    node: str, emulator: EmulatorAdmin
) -> None:
    seen = _run_fal_js(node, emulator, T2V, {"prompt": "fal-js streaming mode"})

    streamed = seen["streamed"]
    statuses = [event["status"] for event in streamed["events"]]
    assert statuses[-1] == "COMPLETED" == streamed["done"] and len(statuses) >= 2, statuses
    assert set(statuses[:-1]) <= {"IN_QUEUE", "IN_PROGRESS"}, statuses
    lines = [line for event in streamed["events"] for line in event["logs"]]
    assert len(lines) == len(set(lines)) and lines[-1] == "Done: output uploaded", lines
    _file_of(streamed["requestId"], streamed["file"])

    # subscribe in streaming mode hands onQueueUpdate every line so far: each update extends the last
    updates = seen["subscribed"]["updates"]
    assert updates[-1]["status"] == "COMPLETED", updates
    logs = [update["logs"] for update in updates if update["status"] != "IN_QUEUE"]
    assert all(later[: len(earlier)] == earlier for earlier, later in itertools.pairwise(logs)), logs
    assert logs[-1][-1] == "Done: output uploaded", logs
    _file_of(seen["subscribed"]["requestId"], seen["subscribed"]["file"])

    stats = emulator.stats()
    assert stats["submits"] == {T2V: 2} and stats["status_streams"] == 2, stats
    assert stats["status_polls"] == 0, "fal-js followed the stream, it never polled"
