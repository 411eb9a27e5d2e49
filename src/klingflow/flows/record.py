"""``python -m klingflow.flows.record RUN_ID ...``: record in Prefect runs that were made without it.

A fully cached ``klingflow run`` submits and pays nothing, so the CLI makes it in the engine
alone, in about a second, instead of importing Prefect and starting a flow run (about three
seconds on two cores, more than the run). Prefect users still expect to see it, so when the local
Prefect server runs, the CLI then starts this module as a detached process (its own session,
output to ``prefect-record.log`` in the run's folder, never the caller's terminal) and ends. It
records the run as a flow run (:func:`klingflow.flows.pipeline.arecord_run`) within seconds, and
exits.

It never starts the server: one the user stopped (``klingflow server stop``) stays stopped. A run
whose recorder finds no server waits, with ``flow-run-parameters.json`` in its folder
(:mod:`klingflow.engine.waiting`); the next run that starts the server starts this module for every
waiting run, and ``klingflow server start`` records them itself (:func:`record`). Its outputs,
ledger rows and report are complete in the meantime.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable

from klingflow.flows.pipeline import arecord_run

__all__ = ["main", "record"]


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def record(run_ids: Iterable[str], say: Callable[[str], None] = _print) -> int:
    """Record each run, one line each; return the number that could not be recorded.

    A run left waiting because no server runs is not counted: it is recorded at the next start.
    """
    failed = 0
    for run_id in run_ids:
        try:
            result = asyncio.run(arecord_run(run_id))
        except Exception as exc:  # one line per run; the traceback is Prefect's, logged above it
            say(f"klingflow: run {run_id} could not be recorded in Prefect: {exc}")
            failed += 1
        else:
            if result is None:
                say(
                    f"klingflow: run {run_id} waits to be recorded in Prefect: the local Prefect server "
                    "is not running; the next run that starts it, or `klingflow server start`, records it"
                )
            else:
                say(f"klingflow: run {result.run_id} recorded as flow run {result.flow_run_id}")
    return failed


def main(argv: list[str] | None = None) -> int:
    """Record each run id given; the exit code is the number that could not be recorded."""
    return record(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
