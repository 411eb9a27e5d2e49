"""Start-up cost of the endpoint registry: this checkout against an earlier commit, side by side.

``klingflow validate`` and ``klingflow plan`` of the story preset, as whole processes, from this
checkout's ``src/`` and from ``--base REV``'s (exported with ``git archive`` into a temporary folder and
put first on ``PYTHONPATH``; same interpreter, same installed packages). The two sides alternate
(base, this, base, this, ...) so a busy machine slows both alike; each pair gives a ratio, and the
medians are printed with their range. Both sides plan in their own empty ``KLINGFLOW_HOME`` (a plan
submits nothing and reaches no network).

    .venv/bin/python benchmarks/bench_startup.py --base 069ea16 --pairs 9
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STORY = REPO / "deployments" / "pipelines" / "story.yaml"


def _export(rev: str, into: Path) -> Path:
    """``rev``'s ``src/`` as files under ``into``; returns the folder to put on ``PYTHONPATH``."""
    into.mkdir(parents=True)
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _spread(values: list[float], digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (e.g. 069ea16)")
    parser.add_argument("--pairs", type=int, default=9)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    sides = {"base": _export(args.base, work / "base"), "this": REPO / "src"}
    envs = {}
    for side, src in sides.items():
        home = work / f"home-{side}"
        home.mkdir()
        envs[side] = {**os.environ, "PYTHONPATH": str(src), "KLINGFLOW_HOME": str(home)}
        envs[side].pop("FAL_KEY", None)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    git = ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    print(f"base: {args.base}; this: {head} (with any uncommitted change)")
    print("| command | base wall s | this wall s | this/base wall | base CPU s | this CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for command in ("validate", "plan"):
        argv = [sys.executable, "-m", "klingflow.cli", command, str(STORY)]
        for side in sides:  # warm-up: byte-compile each side once
            _timed(argv, envs[side])
        walls: dict[str, list[float]] = {"base": [], "this": []}
        cpus: dict[str, list[float]] = {"base": [], "this": []}
        for _ in range(args.pairs):
            for side in ("base", "this"):
                wall, cpu = _timed(argv, envs[side])
                walls[side].append(wall)
                cpus[side].append(cpu)
        ratios = [t / b for b, t in zip(walls["base"], walls["this"], strict=True)]
        cpu = f"{statistics.median(cpus['base']):.3f} | {statistics.median(cpus['this']):.3f}"
        print(
            f"| `klingflow {command}` story preset | {_spread(walls['base'])} | {_spread(walls['this'])} | "
            f"{_spread(ratios, 2)} | {cpu} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
