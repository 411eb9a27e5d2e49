"""Benchmark: how long a slot of the team's fal cap takes to pass from one holder to the next.

Two holders of a one-slot Prefect global concurrency limit (what ``KLINGFLOW_TEAM_LIMIT`` names),
each holding it the way a generation does (``klingflow.flows.team.team_slot``: strict, leased),
on klingflow's local Prefect server (started in a temporary home, stopped at the end). Each round
the first holder keeps the slot for ``--hold`` seconds while the second waits for it; the handoff
is the time from the first one's release returning to the second one's acquisition returning.
Beside it: an ``asyncio.Semaphore`` handing over the same way (the cap inside one process), as
the floor. Then a holder in another process takes the slot and is killed with SIGKILL (it never
gives the slot back): the time from the kill to the next acquisition is its lease
(``KLINGFLOW_TEAM_LEASE``, 60 s, Prefect's shortest) plus up to the server's 15 s repossessor
loop. Prints a Markdown table for docs/benchmarks.md.

Usage::

    .venv/bin/python benchmarks/bench_team_limit.py [--rounds 20] [--hold 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import date
from typing import Any


async def _one_handoff(slot: Callable[[], AbstractAsyncContextManager[Any]], hold: float) -> float:
    """Seconds from the first holder's release returning to the second one's acquisition returning."""
    first_in = asyncio.Event()
    marks: dict[str, float] = {}

    async def first() -> None:
        async with slot():
            first_in.set()
            await asyncio.sleep(hold)
        marks["released"] = time.perf_counter()

    async def second() -> None:
        await first_in.wait()
        async with slot():
            marks["acquired"] = time.perf_counter()

    await asyncio.gather(first(), second())
    return marks["acquired"] - marks["released"]


async def _handoffs(
    slot: Callable[[], AbstractAsyncContextManager[Any]], rounds: int, hold: float
) -> list[float]:
    return [await _one_handoff(slot, hold) for _ in range(rounds)]


_HOLD_FOR_EVER = """
import asyncio, sys
from klingflow.flows.team import team_slot

async def hold():
    async with team_slot()():
        print("held", flush=True)
        await asyncio.sleep(3600)

asyncio.run(hold())
"""


def _after_a_kill(slot: Callable[[], AbstractAsyncContextManager[Any]], env: dict[str, str]) -> float:
    """Seconds from SIGKILL of a holder in another process to this process holding the slot."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_FOR_EVER],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    killed = time.perf_counter()

    async def take() -> None:
        async with slot():
            pass

    asyncio.run(take())
    return time.perf_counter() - killed


def _row(name: str, delays: list[float]) -> str:
    ms = sorted(d * 1000 for d in delays)
    return f"| {name} | {statistics.median(ms):.1f} | {ms[0]:.1f} | {ms[-1]:.1f} | {len(ms)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--hold", type=float, default=0.5)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="klingflow-bench-team-")
    os.environ["KLINGFLOW_HOME"] = home
    os.environ["KLINGFLOW_TEAM_LIMIT"] = "bench-one-slot"

    from klingflow.flows.server import use_local_server
    from klingflow.flows.team import set_team_limit, team_slot
    from klingflow.prefect_server import stop_server

    use_local_server(home, mode="local")
    try:
        asyncio.run(set_team_limit("bench-one-slot", 1))
        slot = team_slot()
        assert slot is not None
        team = asyncio.run(_handoffs(slot, args.rounds, args.hold))
        semaphore = asyncio.Semaphore(1)

        def local() -> AbstractAsyncContextManager[Any]:
            return semaphore

        floor = asyncio.run(_handoffs(local, args.rounds, args.hold))
        from prefect.settings import PREFECT_API_URL

        killed = _after_a_kill(slot, {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    finally:
        stop_server(home)
    print(f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, {date.today()}")
    print(f"{args.rounds} handoffs, each holder keeping the slot {args.hold:g} s\n")
    print("| handoff of one slot | median ms | min ms | max ms | rounds |")
    print("|---|---|---|---|---|")
    print(_row("Prefect global concurrency limit (team_slot, leased)", team))
    print(_row("asyncio.Semaphore (one process's own cap)", floor))
    print(f"\nA holder killed with SIGKILL: the slot was taken again {killed:.1f} s after the kill.")


if __name__ == "__main__":
    main()
