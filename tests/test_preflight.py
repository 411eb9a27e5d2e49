"""A run that cannot reach its backend is refused before Prefect or any server starts.

Each case is a real ``klingflow run`` on a new home with klingflow's local Prefect server as the
default (what a new user has): one message saying what and how to fix it, exit 2, nothing started
(no local server folder, no flow run, no emulator), never "internal error".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STORY = REPO / "deployments" / "pipelines" / "story.yaml"
CLIENT = ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET", "FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "HTTPS_PROXY")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT and not k.startswith("PREFECT_")}
    env.pop("KLINGFLOW_PREFECT", None)  # the default: klingflow's local Prefect server
    env.update({"KLINGFLOW_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect"), **extra})
    return env


@pytest.mark.parametrize(
    ("case", "extra", "args", "said"),
    [
        ("no key", {}, ["--backend", "fal"], "no fal key is configured"),
        (
            "emulator host without its tunnel",
            {"FAL_KEY": "k", "FAL_QUEUE_RUN_HOST": "127.0.0.1:9", "FAL_RUN_HOST": "127.0.0.1:9"},
            [],
            "HTTPS_PROXY is not set",
        ),
        (
            "unreadable CA bundle",
            {"FAL_KEY": "k", "SSL_CERT_FILE": "/nonexistent/ca.pem"},
            [],
            "cannot be read",
        ),
        ("unknown backend", {}, ["--backend", "replicate"], "unknown backend"),
    ],
)
def test_a_backend_that_cannot_work_is_refused_before_anything_starts(
    tmp_path: Path, case: str, extra: dict[str, str], args: list[str], said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "klingflow.cli", "run", str(STORY), *args],
        env=_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr and "hint:" in done.stderr, done.stderr
    assert "internal error" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert done.stderr.count("error (config-error)") == 1, done.stderr
    assert not (tmp_path / "home" / "prefect-server").exists(), "no local Prefect server was started"
    assert not (tmp_path / "home" / "emulator").exists(), "no emulator was started"
    assert not (tmp_path / "prefect").exists(), "Prefect never ran"


def test_a_block_that_does_not_exist_is_refused_before_a_flow_run(
    tmp_path: Path, session_prefect: dict[str, str]
) -> None:
    import httpx

    api = session_prefect["PREFECT_API_URL"]
    count = httpx.post(f"{api}/flow_runs/count", json={}, timeout=30).raise_for_status().json()
    done = subprocess.run(
        [sys.executable, "-m", "klingflow.cli", "run", str(STORY), "--credentials", "no-such-block"],
        env=_env(tmp_path, **session_prefect),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no FalCredentials block named 'no-such-block'" in done.stderr, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    after = httpx.post(f"{api}/flow_runs/count", json={}, timeout=30).raise_for_status().json()
    assert after == count, "no flow run was started"
