"""klingflow's overhead against a hand-written asyncio.gather + fal_client script (run on demand).

The standing bar: a klingflow run of N independent generations finishes within 10 % of the wall time
of a hand-written ``asyncio.gather`` + ``fal_client`` script doing the same against the same emulator
with the same concurrency, whole process and start-up included; and a fully cached re-run submits
nothing. Both sides submit, poll, and download every output. The emulator's render cache is warmed
first, so both sides wait on the same queue latency rather than on ffmpeg.

    .venv/bin/python benchmarks/bench_overhead.py --n 8 --concurrency 4 --latency 10

Appends its table to docs/benchmarks.md under "## Overhead against a hand-written script".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
KLINGFLOW = [sys.executable, "-m", "klingflow.cli"]

HAND_WRITTEN = textwrap.dedent("""
    import asyncio, sys, httpx, fal_client

    async def one(client, prompt, limit):
        async with limit:
            handle = await client.submit("fal-ai/kling-video/v1/standard/text-to-video", {"prompt": prompt})
            result = await handle.get(interval=0.25)
            async with httpx.AsyncClient() as http:
                data = (await http.get(result["video"]["url"])).content
            return len(data)

    async def main(prompts, concurrency):
        client, limit = fal_client.AsyncClient(), asyncio.Semaphore(concurrency)
        sizes = await asyncio.gather(*(one(client, p, limit) for p in prompts))
        print(sum(sizes))

    asyncio.run(main(sys.argv[2:], int(sys.argv[1])))
""")


def _stats(env: dict[str, str]) -> dict:
    context = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    return httpx.get(
        f"https://{env['FAL_QUEUE_RUN_HOST']}/_emulator/stats",
        headers={"Authorization": f"Key {env['FAL_KEY']}"},
        verify=context,
    ).json()


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency", type=float, default=10.0)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="klingflow-bench-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "PREFECT_API"))}
    base["KLINGFLOW_HOME"] = str(work / "emulator-home")
    server = subprocess.Popen(
        [
            *KLINGFLOW,
            "emulator",
            "serve",
            "--port",
            "0",
            "--offline",
            "--latency",
            str(options.latency),
            "--workers",
            str(options.concurrency),
        ],
        env=base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not (work / "emulator-home" / "emulator" / "server.json").exists():
            time.sleep(0.1)
        printed = subprocess.run(
            [*KLINGFLOW, "emulator", "env"], env=base, capture_output=True, text=True, check=True
        ).stdout
        env = {**base, **{k: v.strip("'") for k, v in re.findall(r"^export (\w+)=(.*)$", printed, re.M)}}
        prompts = [f"benchmark shot {i}" for i in range(options.n)]
        pipeline = work / "bench.yaml"
        pipeline.write_text(
            json.dumps(
                {
                    "name": "bench",
                    "inputs": {"shots": {"type": "list", "default": prompts}},
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
        )
        hand = [sys.executable, "-c", HAND_WRITTEN, str(options.concurrency), *prompts]
        _timed(hand, env, work)  # warm the emulator's render cache: both sides then wait on latency alone
        hand_s = _timed(hand, env, work)
        run = [
            *KLINGFLOW,
            "run",
            str(pipeline),
            "--concurrency",
            str(options.concurrency),
            "--out",
            str(work / "out"),
        ]
        fresh = {**env, "KLINGFLOW_HOME": str(work / "client-home")}
        klingflow_s = _timed(run, fresh, work)
        before = _stats(env)["total_submits"]
        cached_s = _timed(run, fresh, work)
        cached_submits = _stats(env)["total_submits"] - before
    finally:
        server.terminate()
        server.wait()
    ratio = klingflow_s / hand_s
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {options.n} | {options.concurrency} | {options.latency:g} s | "
        f"{hand_s:.1f} s | {klingflow_s:.1f} s | {100 * (ratio - 1):+.0f} % | "
        f"{cached_s:.1f} s | {cached_submits} |"
    )
    print(row)
    doc = REPO / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    heading = "## Overhead against a hand-written script"
    if heading not in text:
        text += (
            f"\n{heading}\n\nMachine: {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}. `klingflow run` (Prefect ephemeral mode, whole process) "
            "against `asyncio.gather` + `fal_client` (whole process), same emulator, same concurrency; "
            "`benchmarks/bench_overhead.py`.\n\n"
            "| date | N | concurrency | emulator latency | hand-written | klingflow | overhead | "
            "cached re-run | submits on re-run |\n|---|---|---|---|---|---|---|---|---|\n"
        )
    doc.write_text(text.rstrip("\n") + "\n" + row + "\n")


if __name__ == "__main__":
    main()
