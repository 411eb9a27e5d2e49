"""A long-lived klingflow engine process for the money tests: one pipeline run per request line.

fal_client fixes its hosts when it is imported, so a process whose fal_client must go through the
fault proxy has to start with the proxy's environment. Starting a ``klingflow run`` per cell would
cost seconds of Prefect start-up each; this process is started once (see
:class:`moneyhelpers.EngineProcess`) and runs each cell in-process with ``klingflow.engine.arun``,
the same engine ``klingflow run`` drives (Prefect's task layer adds no retries and no cache).

Protocol: one JSON object per line on stdin,
``{"pipeline": PATH, "home": DIR, "concurrency": N, "retries": N}``; one JSON object per line on
stdout, ``{"status", "run_id", "records": [...], "log": [...], "error"}``. The run's klingflow home
(store, journal, claims, ledger) is ``home``. Anything else the run prints goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def run_one(request: dict[str, Any]) -> dict[str, Any]:
    from klingflow.cache import Journal, Store
    from klingflow.engine import RetryPolicy, RunHooks, RunOptions, arun

    home = Path(request["home"])
    os.environ["KLINGFLOW_HOME"] = str(home)  # settings are read afresh: ledger and claims go here
    log: list[str] = []
    options = RunOptions(
        backend="fal",
        key=os.environ["FAL_KEY"],
        store=Store(home / "store"),
        journal=Journal(home / "journal"),
        concurrency=request.get("concurrency"),
        retry=RetryPolicy(retries=request.get("retries", 3), base_delay=0.05, max_delay=2.0),
    )
    hooks = RunHooks(log=log.append)
    try:
        result = asyncio.run(arun(request["pipeline"], options=options, hooks=hooks))
    except BaseException as exc:  # report it; the next cell still runs
        return {"status": "crashed", "error": "".join(traceback.format_exception(exc)), "log": log}
    return {
        "status": str(result.status),
        "run_id": result.run_id,
        "records": [
            {
                "step_id": r.step_id,
                "status": str(r.status),
                "request_id": r.request_id,
                "sha256": r.sha256,
                "output_path": r.output_path,
                "attempts": r.attempts,
                "error": r.error,
            }
            for r in result.records
        ],
        "log": log,
    }


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the engine's prints (and ffmpeg's, inherited fd 1) must not corrupt the replies
    for line in sys.stdin:
        if line.strip():
            replies.write(json.dumps(run_one(json.loads(line))) + "\n")


if __name__ == "__main__":
    main()
