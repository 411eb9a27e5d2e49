"""klingflow's orchestration overhead against a plain asyncio.gather + fal_client script (run on demand).

Both sides run as whole processes (start-up included), against the same emulator in benchmark
render mode (``--render-mode prerendered``: an output costs a file copy, not an ffmpeg render), with
the same concurrency cap, submitting, polling and downloading every output. The sides alternate
(hand-written, klingflow, hand-written, klingflow, ...) so a busy machine hurts both alike, and
every pair uses new prompts, so klingflow never hits its cache. klingflow reports to its local
Prefect server, started once before the timed runs (the first-ever run, server start included,
is timed on its own).

Scenarios:

- ``n8``:     8 generations, 10 s emulator latency, cap 4;
- ``n8long``: 8 generations, 60 s latency, cap 4 (closer to Kling's real minutes): the row's note
  says, from fal's request history (the emulator's clock) and the ledger, how soon after fal's
  COMPLETED each side sent the next submit (the hand-written script holds its place through the
  download), and how soon klingflow's step had finished (result, download and probe included);
- ``n200``:   200 generations, 1 s latency, cap 8;
- ``batch200``: ``klingflow run PIPELINE --batch rows.csv`` over 200 rows of one text-to-video step
  each (every row a child flow run), 1 s latency, cap 8, 8 rows at once (``--row-concurrency``,
  default 8, the CLI's default too), against the script's 200 requests under the same cap; the
  note gives the peak RSS of each side's process (``os.wait4``'s ``ru_maxrss``), and a batch that
  failed (exit status, rows done, its output's last line) instead of timing it; not in the
  default set (about 6 minutes for 2 pairs);
- ``zero``:   200 generations at zero latency, cap 8: (klingflow - hand-written) / 200 is the
  per-step overhead;
- ``cached``: a fully cached re-run of the story preset (whole process; it runs without Prefect,
  and the row also says when its detached recorder had made it a flow run);
- ``first``:  the story preset in a new home: the first-ever run (no server yet, fresh Prefect
  database), then the same with the server running, then with ``--ephemeral``;
- ``floor``:  Prefect alone (``prefect_floor.py``): a flow of 0 and of 200 no-op task runs (cap 8),
  and a flow of 200 child flow runs of one no-op task run each (8 at once, a batch's shape),
  against the same local server: what any Prefect flow pays before klingflow does anything.

    .venv/bin/python benchmarks/bench_overhead.py                  # all, 3 pairs each (~15 min)
    .venv/bin/python benchmarks/bench_overhead.py --only n8 zero --pairs 5
    .venv/bin/python benchmarks/bench_overhead.py --only n8long --pairs 2 --latency 5   # a quick try
    .venv/bin/python benchmarks/bench_overhead.py --only batch200 --pairs 2 --row-concurrency 16
    .venv/bin/python benchmarks/bench_overhead.py --write          # also into docs/benchmarks.md

Times are ``time.perf_counter()`` around ``subprocess.run``; CPU is the children's user+system
time (``resource.getrusage``), plus, for klingflow, what its local Prefect server used from the
run's start until it was idle again (``/proc/<pid>/stat``; it records task runs after a flow has
ended): on a 2-core machine the server's work competes with the run's. Each side starts on an
idle server.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
KLINGFLOW = [sys.executable, "-m", "klingflow.cli"]
HAND = [sys.executable, str(Path(__file__).with_name("hand_written.py"))]
FLOOR = [sys.executable, str(Path(__file__).with_name("prefect_floor.py"))]
STORY = REPO / "deployments" / "pipelines" / "story.yaml"
BEGIN, END = "<!-- bench_overhead: begin -->", "<!-- bench_overhead: end -->"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_last_stdout = ""


def _timed_peak(
    args: list[str], env: dict[str, str], cwd: Path, log: Path, check: bool = True
) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, exit status) of one whole process, its output in ``log``:
    ``os.wait4`` gives that child's own usage (``RUSAGE_CHILDREN``'s peak is the largest of every
    child so far). ``check``: a failure ends the benchmark."""
    started = time.perf_counter()
    with log.open("w") as printed:
        child = subprocess.Popen(args, env=env, cwd=cwd, stdout=printed, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and check:
        raise SystemExit(f"{' '.join(args[:6])} ... failed (exit {code}); its output: {log}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one whole process; fails loudly with its output if it fails."""
    global _last_stdout
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:6])} ... failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    _last_stdout = done.stdout
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _recorded_after(home: str, started: float, timeout: float = 60.0) -> float:
    """Seconds from ``started`` until the last run's flow run id is in its manifest (the detached
    recorder of a fully cached run has finished), so the next timed run starts on a quiet machine."""
    run_id = re.findall(r"\(run (\w+)\)", _last_stdout)[-1]
    manifest, pending = Path(home) / "runs" / f"{run_id}.json", Path(home) / "runs" / run_id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        linked = json.loads(manifest.read_text()).get("flow_run_id")
        if linked and not any(pending.glob("flow-run-parameters.json*")):  # the recorder has ended
            return time.perf_counter() - started
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} was not recorded in Prefect within {timeout:g} s")


@contextlib.contextmanager
def emulator(work: Path, base: dict[str, str], latency: float, workers: int) -> Iterator[dict[str, str]]:
    """`klingflow emulator serve` in benchmark render mode; yields the client environment for it."""
    # a new home per emulator: a stopped one's server.json would be taken for the new one's
    home = Path(tempfile.mkdtemp(prefix=f"emulator-{latency:g}s-{workers}w-", dir=work))
    env = {**base, "KLINGFLOW_HOME": str(home)}
    server = subprocess.Popen(
        [*KLINGFLOW, "emulator", "serve", "--port", "0", "--offline", "--render-mode", "prerendered",
         "--latency", str(latency), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (home / "emulator" / "server.json").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the emulator did not start")
            time.sleep(0.1)
        printed = subprocess.run(
            [*KLINGFLOW, "emulator", "env"], env=env, capture_output=True, text=True, check=True
        ).stdout
        found = {k: v.strip("'") for k, v in re.findall(r"^export (\w+)=(.*)$", printed, re.M)}
        yield {**base, **found}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _server_cpu(home: str) -> float:
    """CPU seconds the home's local Prefect server has used so far (Linux; 0 if unknown)."""
    try:
        state = json.loads((Path(home) / "prefect-server" / "server.json").read_text())
        fields = Path(f"/proc/{state['server_pid']}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, KeyError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settled_server_cpu(home: str, timeout: float = 30.0) -> float:
    """The server's CPU seconds once it is idle again: it records task runs after a flow has ended."""
    last, deadline = _server_cpu(home), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _server_cpu(home)
        if now - last < 0.05:
            return now
        last = now
    return last


def _submits(env: dict[str, str]) -> int:
    context = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    response = httpx.get(
        f"https://{env['FAL_QUEUE_RUN_HOST']}/_emulator/stats",
        headers={"Authorization": f"Key {env['FAL_KEY']}"},
        verify=context,
        trust_env=False,
    )
    return int(response.raise_for_status().json()["total_submits"])


def _history(env: dict[str, str], since: float) -> list[dict[str, object]]:
    """fal's request history of the text-to-video endpoint: the requests sent since ``since``
    (``sent_at``, ``ended_at`` as epoch seconds of the emulator's clock), in the order they were sent."""
    context = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    response = httpx.get(
        f"https://{env['FAL_QUEUE_RUN_HOST']}/v1/models/requests/by-endpoint",
        params={"endpoint_id": "fal-ai/kling-video/v1/standard/text-to-video", "limit": 100},
        headers={"Authorization": f"Key {env['FAL_KEY']}"},
        verify=context,
        trust_env=False,
    )
    items = []
    for item in response.raise_for_status().json()["items"]:
        moments = {
            k: datetime.fromisoformat(item[k].replace("Z", "+00:00")).timestamp()
            for k in ("sent_at", "ended_at")
        }
        if moments["sent_at"] >= since:
            items.append({"request_id": item["request_id"], **moments})
    return sorted(items, key=lambda item: item["sent_at"])


def _handoffs(items: list[dict[str, object]], cap: int) -> list[float]:
    """Seconds from each completion that freed a place under the cap to the submit that took it:
    the (cap + i)-th submit waited for the i-th completion."""
    ended = sorted(float(item["ended_at"]) for item in items)  # type: ignore[arg-type]
    return [float(items[cap + i]["sent_at"]) - ended[i] for i in range(len(items) - cap)]  # type: ignore[arg-type]


def _finished_after(env: dict[str, str], items: list[dict[str, object]], since: float) -> list[float]:
    """Seconds from fal's COMPLETED to the end of the step that awaited it (result, download, probe),
    from the ledger rows of those requests."""
    started = datetime.fromtimestamp(since, UTC).isoformat()
    printed = subprocess.run(
        [*KLINGFLOW, "ledger", "--since", started, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    finished = {
        row["request_id"]: datetime.fromisoformat(row["finished_at"].replace("Z", "+00:00")).timestamp()
        for row in json.loads(printed)
        if row.get("request_id") and row.get("finished_at")
    }
    return [finished[str(item["request_id"])] - float(item["ended_at"]) for item in items]  # type: ignore[arg-type]


def _fan_out(path: Path, prompts: list[str]) -> Path:
    spec = {
        "name": path.stem,
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
    path.write_text(json.dumps(spec))
    return path


def _one_step(path: Path) -> Path:
    """A pipeline of one text-to-video step whose prompt is the row's ``prompt`` column."""
    spec = {
        "name": path.stem,
        "inputs": {"prompt": {"type": "string"}},
        "steps": [{"id": "clip", "uses": "text-to-video", "with": {"prompt": "${inputs.prompt}"}}],
    }
    path.write_text(json.dumps(spec))
    return path


def _rows_csv(path: Path, prompts: list[str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([prompt] for prompt in prompts)
    return path


def _spread(values: list[float], unit: str = "s", digits: int = 1) -> str:
    """``median unit (min-max)``."""
    unit = f" {unit}" if unit else ""
    return f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


class Bench:
    def __init__(self, work: Path, pairs: int) -> None:
        self.work, self.pairs, self.tag = work, pairs, uuid.uuid4().hex[:8]
        self.base = {
            k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "PREFECT_", "KLINGFLOW_"))
        }
        self.base.pop("HTTPS_PROXY", None)
        self.client = {
            "KLINGFLOW_HOME": str(work / "client-home"),
            "KLINGFLOW_SERVER_PORT": str(_free_port()),
            "PREFECT_HOME": str(work / "prefect-home"),
        }
        self.rows: list[str] = []

    def row(self, text: str) -> None:
        """Keep a result row, and print it now (a later scenario's failure must not lose it)."""
        self.rows.append(text)
        print(text, flush=True)

    def klingflow_env(self, emulator_env: dict[str, str]) -> dict[str, str]:
        return {**emulator_env, **self.client}

    def race(self, name: str, n: int, latency: float, cap: int, timeline: bool = False) -> None:
        """Alternating pairs: hand-written, then klingflow, on new prompts each pair; ``timeline``: also
        the hand-offs under the cap and klingflow's steps' end after fal's COMPLETED (the row's note)."""
        hand, kf, cpu_h, cpu_k, cpu_s = [], [], [], [], []
        handoff_h: list[float] = []
        handoff_k: list[float] = []
        finished_k: list[float] = []
        with emulator(self.work, self.base, latency, cap) as env:
            kenv = self.klingflow_env(env)
            for pair in range(self.pairs):
                prompts = [f"shot {i} of {name} pair {pair} ({self.tag})" for i in range(n)]
                out = self.work / f"{name}-{pair}"
                _settled_server_cpu(self.client["KLINGFLOW_HOME"])  # neither side starts on a busy server
                since = time.time()
                wall, cpu = _timed([*HAND, str(cap), str(out / "hand"), *prompts], env, self.work)
                hand.append(wall), cpu_h.append(cpu)
                if timeline:
                    handoff_h += _handoffs(_history(env, since), cap)
                pipeline = _fan_out(self.work / f"{name}{pair}.yaml", prompts)
                run = [*KLINGFLOW, "run", str(pipeline), "--concurrency", str(cap), "--out", str(out / "kf")]
                server = _settled_server_cpu(self.client["KLINGFLOW_HOME"])
                since = time.time()
                wall, cpu = _timed(run, kenv, self.work)
                kf.append(wall), cpu_k.append(cpu)
                if timeline:
                    items = _history(env, since)
                    handoff_k += _handoffs(items, cap)
                    finished_k += _finished_after(kenv, items, since)
                cpu_s.append(_settled_server_cpu(self.client["KLINGFLOW_HOME"]) - server)
                print(
                    f"{name} pair {pair}: hand-written {hand[-1]:.2f} s, klingflow {kf[-1]:.2f} s", flush=True
                )
        ratios = [k / h for h, k in zip(hand, kf, strict=True)]
        per_step = [1000 * (k - h) / n for h, k in zip(hand, kf, strict=True)]
        extra = f"per step {_spread(per_step, 'ms', 0)}" if latency == 0 else ""
        if timeline:
            extra = (
                f"fal's COMPLETED -> next submit: hand-written {_spread(handoff_h, 's', 2)}, klingflow "
                f"{_spread(handoff_k, 's', 2)}; -> klingflow's step finished {_spread(finished_k, 's', 2)}"
            )
        self.row(
            f"| {name}: N={n}, {latency:g} s latency, cap {cap} | {_spread(hand)} | {_spread(kf)} | "
            f"{_spread(ratios, '', 2)} | {statistics.median(cpu_h):.1f} / "
            f"{statistics.median(cpu_k):.1f} + {statistics.median(cpu_s):.1f} s | {extra} |"
        )

    def batch(self, name: str, n: int, latency: float, cap: int, row_concurrency: int) -> None:
        """Alternating pairs: the script's n requests, then a batch of n one-step rows under the same
        cap, new prompts each pair; each side's wall, CPU and peak RSS. A batch that fails is kept
        as such in the note (exit status, rows done, the last line of its output), not timed."""
        hand, kf, cpu_h, cpu_k, cpu_s, rss_h, rss_k = [], [], [], [], [], [], []
        ratios: list[float] = []
        failed: list[str] = []
        with emulator(self.work, self.base, latency, cap) as env:
            kenv = self.klingflow_env(env)
            pipeline = _one_step(self.work / f"{name}.yaml")
            for pair in range(self.pairs):
                prompts = [f"row {i} of {name} pair {pair} ({self.tag})" for i in range(n)]
                out = self.work / f"{name}-{pair}"
                _settled_server_cpu(self.client["KLINGFLOW_HOME"])
                hand_run = [*HAND, str(cap), str(out / "hand"), *prompts]
                wall, cpu, rss, _ = _timed_peak(
                    hand_run, env, self.work, self.work / f"{name}-{pair}-hand.log"
                )
                hand.append(wall), cpu_h.append(cpu), rss_h.append(rss)
                rows = _rows_csv(self.work / f"{name}-{pair}.csv", prompts)
                run = [*KLINGFLOW, "run", str(pipeline), "--batch", str(rows), "--concurrency", str(cap),
                       "--row-concurrency", str(row_concurrency), "--out", str(out / "kf")]  # fmt: skip
                server = _settled_server_cpu(self.client["KLINGFLOW_HOME"])
                log = self.work / f"{name}-{pair}-klingflow.log"
                wall, cpu, rss, code = _timed_peak(run, kenv, self.work, log, check=False)
                cpu_s.append(_settled_server_cpu(self.client["KLINGFLOW_HOME"]) - server)
                rss_k.append(rss), cpu_k.append(cpu)
                done = len(list((out / "kf").glob("*/*.mp4")))
                if code == 0 and done == n:
                    kf.append(wall), ratios.append(wall / hand[-1])
                else:
                    last = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                    failed.append(
                        f"pair {pair}: exit {code} after {wall:.0f} s, {done} of {n} rows done "
                        f"({last[0][:160]})"
                    )
                print(
                    f"{name} pair {pair}: hand-written {hand[-1]:.2f} s ({rss_h[-1]:.0f} MiB), "
                    f"klingflow {wall:.2f} s ({rss:.0f} MiB), exit {code}, {done} of {n} rows done",
                    flush=True,
                )
        timed = f"{_spread(kf)}" if kf else "failed"
        self.row(
            f"| {name}: {n} rows of 1 step, {latency:g} s latency, cap {cap}, {row_concurrency} rows at "
            f"once | {_spread(hand)} | {timed} | {_spread(ratios, '', 2) if ratios else ''} | "
            f"{statistics.median(cpu_h):.1f} / {statistics.median(cpu_k):.1f} + "
            f"{statistics.median(cpu_s):.1f} s | peak RSS: hand-written {_spread(rss_h, 'MiB', 0)}, "
            f"klingflow {_spread(rss_k, 'MiB', 0)}{'; ' if failed else ''}{'; '.join(failed)} |"
        )

    def cached(self) -> None:
        """A fully cached re-run of the story preset, whole process; it must submit nothing."""
        with emulator(self.work, self.base, 0, 4) as env:
            kenv = self.klingflow_env(env)
            run = [*KLINGFLOW, "run", str(STORY), "--set", f"subject=a fox ({self.tag})", "--out",
                   str(self.work / "story")]  # fmt: skip
            _timed(run, kenv, self.work)  # fills the cache
            before = _submits(env)
            walls, recorded = [], []
            for _ in range(max(self.pairs, 3)):
                started = time.perf_counter()
                walls.append(_timed(run, kenv, self.work)[0])
                recorded.append(_recorded_after(self.client["KLINGFLOW_HOME"], started))
                print(f"cached re-run: {walls[-1]:.2f} s, a flow run after {recorded[-1]:.2f} s", flush=True)
            submits = _submits(env) - before
        self.row(
            f"| cached: story preset, fully cached re-run | | {_spread(walls, 's', 2)} | | | "
            f"{submits} submits; recorded as a flow run after {_spread(recorded, 's', 1)} |"
        )

    def first(self) -> None:
        """The story preset in a new home: first-ever run (server start, migrations), warm, ephemeral."""
        fresh = {
            "KLINGFLOW_HOME": str(self.work / "first-home"),
            "KLINGFLOW_SERVER_PORT": str(_free_port()),
            "PREFECT_HOME": str(self.work / "first-prefect-home"),
        }
        results = {}
        try:
            with emulator(self.work, self.base, 0, 4) as env:
                for label, args in (
                    ("first-ever (starts the server)", []),
                    ("server already running", []),
                    ("--ephemeral", ["--ephemeral"]),
                ):
                    run = [*KLINGFLOW, "run", str(STORY), "--set", f"subject={label} ({self.tag})",
                           "--out", str(self.work / "first"), *args]  # fmt: skip
                    results[label] = _timed(run, {**env, **fresh}, self.work)[0]
                    print(f"story, {label}: {results[label]:.2f} s", flush=True)
        finally:
            subprocess.run([*KLINGFLOW, "server", "stop"], env={**self.base, **fresh}, capture_output=True)
        shown = ", ".join(f"{label} {wall:.1f} s" for label, wall in results.items())
        self.row(f"| first: story preset, new home, 0 s latency | | {shown} | | | |")

    def floor(self) -> None:
        """Prefect alone, whole process, against klingflow's local server: 0 and 200 no-op task runs."""
        status = subprocess.run(
            [*KLINGFLOW, "server", "status"], env={**self.base, **self.client}, capture_output=True, text=True
        ).stdout
        found = re.search(r"https?://\S+/api", status)
        if found is None:
            raise SystemExit(f"no local server to measure against:\n{status}")
        env = {**self.base, **self.client, "PREFECT_API_URL": found.group(0)}
        _timed([*FLOOR, "0"], env, self.work)  # warm-up: the server registers the flow once
        walls: dict[int, list[float]] = {0: [], 200: []}
        server: dict[int, list[float]] = {0: [], 200: []}
        for _ in range(max(self.pairs, 3)):
            for n in walls:
                before = _settled_server_cpu(self.client["KLINGFLOW_HOME"])
                walls[n].append(_timed([*FLOOR, str(n)], env, self.work)[0])
                server[n].append(_settled_server_cpu(self.client["KLINGFLOW_HOME"]) - before)
                print(f"prefect floor, {n} task runs: {walls[n][-1]:.2f} s", flush=True)
        per_task = [1000 * (b - a) / 200 for a, b in zip(walls[0], walls[200], strict=True)]
        self.row(
            f"| floor: Prefect alone, empty flow / 200 no-op task runs, cap 8 | | "
            f"{_spread(walls[0], 's', 2)} / {_spread(walls[200], 's', 2)} | | "
            f"server {statistics.median(server[0]):.1f} / {statistics.median(server[200]):.1f} s | "
            f"per task run {_spread(per_task, 'ms', 0)} |"
        )
        rows, rows_server = [], []
        for _ in range(max(self.pairs, 3)):
            before = _settled_server_cpu(self.client["KLINGFLOW_HOME"])
            rows.append(_timed([*FLOOR, "200", "--rows"], env, self.work)[0])
            rows_server.append(_settled_server_cpu(self.client["KLINGFLOW_HOME"]) - before)
            print(f"prefect floor, 200 child flow runs: {rows[-1]:.2f} s", flush=True)
        self.row(
            f"| floor: Prefect alone, a batch's shape: 200 child flow runs of one no-op task run, 8 at once "
            f"| | {_spread(rows, 's', 1)} | | server {statistics.median(rows_server):.1f} s | "
            f"what batch200 pays Prefect before klingflow does anything |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["n8", "n8long", "n200", "batch200", "zero", "cached", "first", "floor"],
        default=["n8", "n200", "zero", "cached", "first", "floor"],
    )
    parser.add_argument("--latency", type=float, help="The n8long race's emulator latency (default 60 s).")
    parser.add_argument(
        "--row-concurrency", type=int, default=8, help="The batch200 race's rows at once (default 8)."
    )
    parser.add_argument("--write", action="store_true", help="Replace the results in docs/benchmarks.md.")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="klingflow-bench-"))
    bench = Bench(work, options.pairs)
    started = subprocess.run(
        [*KLINGFLOW, "server", "start"], env={**bench.base, **bench.client}, capture_output=True, text=True
    )
    if started.returncode != 0:
        raise SystemExit(started.stderr)
    try:
        for name in options.only:
            if name == "n8":
                bench.race("n8", 8, 10.0, 4)
            elif name == "n8long":
                bench.race(
                    "n8long", 8, 60.0 if options.latency is None else options.latency, 4, timeline=True
                )
            elif name == "n200":
                bench.race("n200", 200, 1.0, 8)
            elif name == "batch200":
                bench.batch("batch200", 200, 1.0, 8, options.row_concurrency)
            elif name == "zero":
                bench.race("zero", 200, 0.0, 8)
            elif name == "cached":
                bench.cached()
            elif name == "floor":
                bench.floor()
            else:
                bench.first()
    finally:
        subprocess.run(
            [*KLINGFLOW, "server", "stop"], env={**bench.base, **bench.client}, capture_output=True
        )
    machine = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average before {os.getloadavg()[0]:.1f}; "
        f"{options.pairs} alternating pairs per race"
    )
    table = "\n".join(
        [
            f"Measured {machine}.",
            "",
            "| scenario | hand-written | klingflow | ratio | CPU: hand / klingflow + its server | note |",
            "|---|---|---|---|---|---|",
            *bench.rows,
        ]
    )
    print(table)
    if options.write:
        doc = REPO / "docs" / "benchmarks.md"
        text = doc.read_text()
        if BEGIN in text:
            head, _, rest = text.partition(BEGIN)
            text = head + BEGIN + "\n" + table + "\n" + END + rest.partition(END)[2]
        else:
            text = text.rstrip("\n") + f"\n\n{BEGIN}\n{table}\n{END}\n"
        doc.write_text(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
