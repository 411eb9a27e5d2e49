"""The durable journal: what happened to each cache key, so no request is ever paid for twice.

One small JSON record per cache key, under ``<home>/journal/``. A generation writes its record
*before* it polls (``submitted`` with fal's request id), and again when its outputs are safely in
the store (``done`` with their sha256). So:

* a re-run finds ``done`` and, after verifying the stored files, uses them: a cache hit;
* a re-run after a crash, ``kill -9`` or a retry finds ``submitted`` and polls that request id
  instead of submitting again;
* ``interrupted`` is written *before* a submit is sent (with the digest of its body): if the
  answer never arrives (a crash, a lost answer), fal may still have accepted it, and the next
  attempt asks fal's request history for that body before it pays again;
* a record whose files are gone or corrupt is forgotten, and the step regenerates.

Records are written to a temporary file and renamed, so a crash mid-write leaves the old record
or the new one, never half of one. The journal is shared by every pipeline run as the same user,
which makes the cache shared too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from klingflow._files import atomic_write
from klingflow.settings import klingflow_home

__all__ = ["Journal", "JournalEntry", "OutputRecord"]


class OutputRecord(BaseModel):
    """One stored output of a generation: enough to find and verify it in the store."""

    sha256: str
    suffix: str
    bytes: int
    url: str | None = None


JournalStatus = Literal["interrupted", "submitted", "done"]
"""Where a cache key's request stands (the module docstring says what each means)."""


class JournalEntry(BaseModel):
    """What the journal knows about one cache key."""

    key: str
    endpoint: str
    backend: str
    status: JournalStatus
    request_id: str | None = None
    payload_digest: str | None = Field(default=None, description="sha256 of the body submitted.")
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    outputs: dict[str, OutputRecord] = Field(default_factory=dict)
    values: dict[str, Any] = Field(default_factory=dict, description="Non-file outputs, e.g. duration.")


class Journal:
    """File-backed journal under ``root`` (default ``<klingflow home>/journal``)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or klingflow_home() / "journal"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, or None (an unreadable record counts as none)."""
        try:
            return JournalEntry.model_validate_json(self._path(key).read_text())
        except (FileNotFoundError, ValidationError, json.JSONDecodeError):
            return None

    def _record(self, key: str, status: JournalStatus, **fields: Any) -> JournalEntry:
        entry = JournalEntry(key=key, status=status, **fields)
        atomic_write(self._path(key), entry.model_dump_json(indent=1))
        return entry

    def record_interrupted(
        self, key: str, *, endpoint: str, backend: str, payload_digest: str
    ) -> JournalEntry:
        """Remember, before sending it, that a submit of this body is about to leave."""
        return self._record(
            key,
            "interrupted",
            endpoint=endpoint,
            backend=backend,
            payload_digest=payload_digest,
            submitted_at=datetime.now(UTC),
        )

    def record_submitted(
        self,
        key: str,
        *,
        endpoint: str,
        backend: str,
        request_id: str,
        payload_digest: str | None = None,
        submitted_at: datetime | None = None,
    ) -> JournalEntry:
        """Remember a request id before polling it (the step that makes resume possible)."""
        return self._record(
            key,
            "submitted",
            endpoint=endpoint,
            backend=backend,
            request_id=request_id,
            payload_digest=payload_digest,
            submitted_at=submitted_at or datetime.now(UTC),
        )

    def reopen(self, entry: JournalEntry) -> JournalEntry:
        """Turn a ``done`` entry back into the request it came from, whose result is fetched again.

        For a stored output that rotted (missing, cut, altered): its request was paid, and fal keeps
        the result for an hour after it completed, so it is collected again like a resumed request.
        """
        return self.record_submitted(
            entry.key,
            endpoint=entry.endpoint,
            backend=entry.backend,
            request_id=entry.request_id or "",
            payload_digest=entry.payload_digest,
            submitted_at=entry.submitted_at,
        )

    def record_done(
        self,
        key: str,
        *,
        endpoint: str,
        backend: str,
        request_id: str | None,
        outputs: dict[str, OutputRecord],
        values: dict[str, Any] | None = None,
        submitted_at: datetime | None = None,
    ) -> JournalEntry:
        """Remember a finished generation's stored outputs."""
        return self._record(
            key,
            "done",
            endpoint=endpoint,
            backend=backend,
            request_id=request_id,
            submitted_at=submitted_at,
            finished_at=datetime.now(UTC),
            outputs=outputs,
            values=values or {},
        )

    def entries(self) -> list[JournalEntry]:
        """Every readable entry (for ``klingflow recover``: what was paid for and is not stored)."""
        entries = (self.get(path.stem) for path in sorted(self.root.glob("*/*.json")))
        return [entry for entry in entries if entry is not None]

    def forget(self, key: str) -> None:
        """Drop the entry (its request failed, its files are gone, or the user asked to refresh)."""
        self._path(key).unlink(missing_ok=True)
