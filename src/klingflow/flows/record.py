"""``python -m klingflow.flows.record RUN_ID``: record in Prefect a run that was made without it.

A fully cached ``klingflow run`` submits and pays nothing, so the CLI makes it in the engine
alone, in about a second, instead of importing Prefect and starting a flow run (about three
seconds on two cores, more than the run). Prefect users still expect to see it, so the CLI then
starts this module as a detached process (its own session, output to ``prefect-record.log`` in
the run's folder, never the caller's terminal) and ends. It records the run as a flow run
(:func:`klingflow.flows.pipeline.arecord_run`) within seconds, and exits.

If it cannot (the server is gone and cannot start), the run's outputs, ledger rows and report are
already complete; ``flow-run-parameters.json`` stays in the run's folder, and running this module
again for the run records it then.
"""

from __future__ import annotations

import asyncio
import sys

from klingflow.flows.pipeline import arecord_run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Record each run id given; the exit code is the number that could not be recorded."""
    failed = 0
    for run_id in argv if argv is not None else sys.argv[1:]:
        try:
            result = asyncio.run(arecord_run(run_id))
        except Exception as exc:  # one line per run in the log; the traceback is Prefect's, above it
            print(f"klingflow: run {run_id} could not be recorded in Prefect: {exc}", file=sys.stderr)
            failed += 1
        else:
            print(f"klingflow: run {run_id} recorded as flow run {result.flow_run_id}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
