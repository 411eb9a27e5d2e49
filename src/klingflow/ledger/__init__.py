"""The ledger: one typed pandas row per step execution, kept as a dataset, plus each run's manifest.

Every step execution (completed, cached, joined, failed or skipped; one row per foreach item)
becomes a row, so a team can answer "what did we spend, what failed and why, which clip came from
which prompt" with ordinary DataFrame code. Timestamps are UTC, arguments are JSON with secrets
removed, and media columns are probed from the stored file, not copied from the request.

* :class:`StepRecord` and :class:`Status`: the row and its statuses (``_record``);
* :func:`append`, :func:`load`, :func:`export`: the parquet dataset, one file per run (``_dataset``);
* :func:`summary`: per run and per pipeline (``_summary``);
* :class:`RunManifest`: a run's shape, so its report can be redrawn from disk (``_manifests``).

Example::

    from klingflow import ledger

    week = ledger.load(since="7d")
    per_run, per_pipeline = ledger.summary(week)
    print(per_pipeline[["pipeline", "runs", "spend_usd", "queue_p95"]])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from klingflow.errors import LedgerError
from klingflow.ledger._manifests import (
    CONTACT_SHEET_NAME,
    REPORT_NAME,
    RunManifest,
    list_manifests,
    load_manifest,
    run_dir,
    runs_root,
    save_manifest,
)
from klingflow.ledger._record import (
    COLUMNS,
    LEDGER_SCHEMA_VERSION,
    Status,
    StepRecord,
    spend_label,
    step_label,
)

if TYPE_CHECKING:
    from klingflow.ledger._dataset import (
        append,
        export,
        ledger_root,
        load,
        parse_since,
        redact,
        to_frame,
        to_records,
        typed,
    )
    from klingflow.ledger._summary import LedgerSummary, summary

# The pandas/pyarrow half is imported on first use, so the row, its statuses and the manifests
# (what the CLI, `klingflow server status` and `--help` need) do not cost pandas' import.
_LAZY = {
    **dict.fromkeys(
        (
            "append",
            "export",
            "ledger_root",
            "load",
            "parse_since",
            "redact",
            "to_frame",
            "to_records",
            "typed",
        ),
        "klingflow.ledger._dataset",
    ),
    "LedgerSummary": "klingflow.ledger._summary",
    "summary": "klingflow.ledger._summary",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'klingflow.ledger' has no attribute {name!r}")


__all__ = [
    "COLUMNS",
    "CONTACT_SHEET_NAME",
    "LEDGER_SCHEMA_VERSION",
    "REPORT_NAME",
    "LedgerError",
    "LedgerSummary",
    "RunManifest",
    "Status",
    "StepRecord",
    "append",
    "export",
    "ledger_root",
    "list_manifests",
    "load",
    "load_manifest",
    "parse_since",
    "redact",
    "run_dir",
    "spend_label",
    "runs_root",
    "save_manifest",
    "step_label",
    "summary",
    "to_frame",
    "to_records",
    "typed",
]
