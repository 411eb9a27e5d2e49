"""The ledger: one pandas row per step execution, with stable, typed columns.

Every step execution (completed, cached, failed or skipped; one row per foreach item) becomes a
row, so a team can answer "what did we spend, what failed and why, which clip came from which
prompt" with ordinary DataFrame code. Timestamps are UTC, arguments are JSON with secrets
removed, and media columns are probed from the stored file, not copied from the request.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

__all__ = ["COLUMNS", "LEDGER_SCHEMA_VERSION", "redact", "to_frame"]

LEDGER_SCHEMA_VERSION = 1

COLUMNS: dict[str, str] = {
    "run_id": "string",
    "flow_run_id": "string",
    "pipeline": "string",
    "step_id": "string",
    "item_index": "Int64",
    "kind": "string",
    "endpoint": "string",
    "backend": "string",
    "request_id": "string",
    "status": "string",
    "cache_key": "string",
    "attempts": "Int64",
    "submitted_at": "datetime64[us, UTC]",
    "started_at": "datetime64[us, UTC]",
    "finished_at": "datetime64[us, UTC]",
    "queue_seconds": "Float64",
    "run_seconds": "Float64",
    "estimated_cost_usd": "Float64",
    "prompt": "string",
    "arguments": "string",
    "output_path": "string",
    "output_url": "string",
    "sha256": "string",
    "bytes": "Int64",
    "duration_s": "Float64",
    "width": "Int64",
    "height": "Int64",
    "fps": "Float64",
    "has_audio": "boolean",
    "error": "string",
}


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """Replace every known secret (and the FAL_KEY in the environment) with ``***``."""
    if text is None:
        return None
    for secret in [*secrets, os.environ.get("FAL_KEY", "")]:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return text


def to_frame(rows: Iterable[dict[str, Any]], secrets: Iterable[str] = ()) -> pd.DataFrame:
    """Build the ledger DataFrame from row dicts: every column present, typed, secrets removed."""
    secrets = list(secrets)
    cleaned = []
    for row in rows:
        item = {name: row.get(name) for name in COLUMNS}
        for name in ("arguments", "error", "prompt"):
            item[name] = redact(item[name], secrets)
        cleaned.append(item)
    frame = pd.DataFrame(cleaned, columns=list(COLUMNS))
    for name, dtype in COLUMNS.items():
        if dtype.startswith("datetime"):
            frame[name] = pd.to_datetime(frame[name], utc=True).astype(dtype)
        else:
            frame[name] = frame[name].astype(dtype)
    return frame
