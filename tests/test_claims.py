"""Claims on real backends (files, and a real redis-server on loopback): one submit per cache key."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from klingflow.cache import FileClaims, Journal, RedisClaims, Store, claims_from_env
from klingflow.engine import RetryPolicy, RunOptions, arun
from klingflow.errors import ConfigError
from klingflow.spec import parse_pipeline

T2V = "fal-ai/kling-video/v1/standard/text-to-video"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port, stopped by its own process id afterwards."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: ./scripts/install-redis installs it"
    port = _free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            RedisClaims(url).holder("ping")
            break
        except Exception:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(params=["file", "redis"])
def claims(request, tmp_path: Path, redis_url: str):
    return (
        FileClaims(tmp_path / "claims")
        if request.param == "file"
        else RedisClaims(redis_url, prefix=f"t{time.time_ns()}:")
    )


def test_one_holder_at_a_time(claims) -> None:
    assert claims.acquire("k", "worker-a", ttl=5)
    assert not claims.acquire("k", "worker-b", ttl=5)
    assert claims.holder("k") == "worker-a"
    assert not claims.renew("k", "worker-b", ttl=5), "only the holder renews"
    claims.release("k", "worker-b")
    assert claims.holder("k") == "worker-a", "only the holder releases"
    claims.release("k", "worker-a")
    assert claims.acquire("k", "worker-b", ttl=5)


def test_an_expired_claim_is_taken_over(claims) -> None:
    assert claims.acquire("k", "worker-a", ttl=0.3)
    time.sleep(0.5)
    assert claims.holder("k") is None
    assert claims.acquire("k", "worker-b", ttl=5)
    assert not claims.renew("k", "worker-a", ttl=5), "the old holder learns it lost the claim"


def test_a_local_claim_of_a_dead_process_is_taken_over_at_once(tmp_path: Path) -> None:
    claims = FileClaims(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now belongs to no process
    owner = f"{socket.gethostname()}:{gone.pid}:deadbeef"
    assert claims.acquire("k", owner, ttl=60)
    assert claims.acquire("k", "worker-b", ttl=60)


def test_claims_setting(tmp_path: Path, monkeypatch, redis_url: str) -> None:
    monkeypatch.setenv("KLINGFLOW_HOME", str(tmp_path))
    assert isinstance(claims_from_env("file"), FileClaims)
    assert isinstance(claims_from_env(redis_url), RedisClaims)
    with pytest.raises(ConfigError, match="unknown claims backend"):
        claims_from_env("zookeeper://x")


@pytest.mark.parametrize("backend", ["file", "redis"])
async def test_two_workers_at_once_pay_once(emulator, tmp_path: Path, redis_url: str, backend: str) -> None:
    """Two runs of the same fan-out at once, sharing store, journal and claims: one submit per step."""
    setting = None if backend == "file" else redis_url
    shared = {
        "store": Store(tmp_path / "store"),
        "journal": Journal(tmp_path / "journal"),
        "retry": RetryPolicy(retries=1, base_delay=0.05),
        "backend": "fal",
        "key": emulator.key,
    }
    spec = parse_pipeline(
        {
            "name": "shared",
            "inputs": {
                "shots": {"type": "list", "default": [f"{backend} shared shot {i}" for i in range(4)]}
            },
            "steps": [
                {
                    "id": "shots",
                    "uses": "text-to-video",
                    "foreach": "${inputs.shots}",
                    "with": {"prompt": "${item}"},
                }
            ],
        }
    )
    first, second = await asyncio.gather(
        arun(spec, None, RunOptions(**shared, claims=setting)),
        arun(spec, None, RunOptions(**shared, claims=setting)),
    )
    assert emulator.stats()["submits"] == {T2V: 4}, "each step generated once"
    assert first.status == second.status == "completed"
    statuses = sorted(r.status for r in first.records + second.records)
    assert statuses.count("completed") == 4 and set(statuses) <= {"completed", "joined", "cached"}
    assert first.outputs["shots"]["video"] == second.outputs["shots"]["video"]
    joined = [r for r in first.records + second.records if r.status == "joined"]
    assert all(r.estimated_cost_usd == 0 and r.request_id for r in joined), "a join costs nothing"
