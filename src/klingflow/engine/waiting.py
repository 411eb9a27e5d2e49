"""Runs made without Prefect that wait to be recorded as flow runs, and the processes recording them.

A fully cached ``klingflow run`` is made by the engine alone and leaves its flow run's parameters
in its folder (:data:`~klingflow.engine.recording.FLOW_RUN_PARAMETERS`) until a recorder,
``python -m klingflow.flows.record RUN_ID ...``, has made it a flow run on the local Prefect
server. A recorder never starts that server (one the user stopped stays stopped), so a run made
while it is down waits: the next run that starts the server, or ``klingflow server start``,
records every waiting run. While it records a run, a recorder holds the run's claim
(:func:`recording_claim`, :mod:`klingflow.cache.claims`, the leases steps take), which is how
``klingflow server stop`` finds the recorders to let finish first (:func:`recorder_pids`).

Nothing here imports Prefect: the recorder is started by its module's name, detached.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from klingflow.cache import claims_from_env
from klingflow.engine.recording import FLOW_RUN_PARAMETERS
from klingflow.ledger import runs_root

__all__ = [
    "RECORDER",
    "record_waiting_later",
    "recorder_pids",
    "recording_claim",
    "start_recorder",
    "waiting_runs",
]

RECORDER = "klingflow.flows.record"
"""The recorder's module, run as ``python -m``."""


def recording_claim(run_id: str) -> str:
    """The claim key a recorder holds while it records ``run_id``."""
    return f"prefect-record-{run_id}"


def waiting_runs() -> list[str]:
    """The ids of this home's runs waiting to be recorded as flow runs, oldest first."""
    found = []
    for path in runs_root().glob(f"*/{FLOW_RUN_PARAMETERS}"):
        try:
            found.append((path.stat().st_mtime, path.parent.name))
        except FileNotFoundError:  # recorded in the meantime
            continue
    return [run_id for _mtime, run_id in sorted(found)]


def recorder_pids() -> list[int]:
    """The pids of the processes on this machine that hold the claim of a waiting run right now.

    A claim's owner is ``host:pid:random`` (:func:`klingflow.cache.new_owner`).
    """
    claims, host, pids = claims_from_env(), socket.gethostname(), set()
    for run_id in waiting_runs():
        owner = claims.holder(recording_claim(run_id))
        if owner is None:
            continue
        owner_host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if owner_host == host and pid.isdigit():
            pids.add(int(pid))
    return sorted(pids)


def start_recorder(run_ids: Iterable[str], log: Path) -> None:
    """Start a detached recorder of ``run_ids``, its output appended to ``log``; raises OSError.

    It gets no fal credential (replaying pays nothing), no module of the current folder (``-P``),
    and its own session, so a Ctrl-C in the terminal's next command does not reach it.
    """
    environment = {k: v for k, v in os.environ.items() if not k.upper().startswith("FAL_KEY")}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        subprocess.Popen(
            [sys.executable, "-P", "-m", RECORDER, *run_ids],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )


def record_waiting_later(say: Callable[[str], None]) -> None:
    """Start one detached recorder of every waiting run, if any; ``say`` gets one line about it.

    Called when the local server has just started, by a run or ``run_pipeline``. Its output goes
    to ``<home>/runs/prefect-record.log`` (a single run's recorder logs in that run's folder).
    """
    waiting = waiting_runs()
    if not waiting:
        return
    log = runs_root() / "prefect-record.log"
    try:
        start_recorder(waiting, log)
    except OSError as exc:
        say(f"klingflow: could not start recording the runs waiting for Prefect ({exc}); "
            "`klingflow server start` records them")  # fmt: skip
        return
    say(f"klingflow: recording {len(waiting)} run(s) made while the local server was down (log: {log})")
