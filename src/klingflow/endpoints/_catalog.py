"""Where an endpoint's schema and price come from: the vendored snapshot or a refreshed copy in the home.

The snapshot (``klingflow/data/fal-endpoints.json``) is made by ``scripts/vendor_endpoints.py`` from the
collected fal schema records; it is read once per process, on the first lookup. ``klingflow endpoints
refresh`` stores what fal's platform API answers now in ``KLINGFLOW_HOME/endpoints/<id>.json`` (one
:class:`EndpointRecord` each, with the time it was fetched). A lookup uses the refreshed copy when there
is one, else the snapshot; either way the record says which it is (``origin``) and how old it is, and
plans and ledgers say so too. A copy older than :data:`REFRESH_TTL` is still used but reported as
stale. Records are plain data; their models are built by the registry, on first use.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from klingflow._files import atomic_write
from klingflow.endpoints._pricing import PriceRule
from klingflow.settings import klingflow_home

__all__ = [
    "REFRESH_TTL",
    "EndpointRecord",
    "drop_refreshed",
    "record_of",
    "refreshed_dir",
    "schema_sha256",
    "snapshot_ids",
    "snapshot_meta",
    "store_refreshed",
]

REFRESH_TTL = 7 * 24 * 3600.0
"""Seconds after which a refreshed copy is reported as stale (fal changes Kling schemas monthly)."""


def schema_sha256(input_schema: Any, output_schema: Any) -> str:
    """The sha256 of both schemas in canonical JSON, as ``scripts/vendor_endpoints.py`` computes it."""
    text = json.dumps({"input": input_schema, "output": output_schema}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class EndpointRecord(BaseModel):
    """One endpoint's facts as data: classification, schemas, price rule, where they came from."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    id: str
    family: str = ""
    mode: str = ""
    tier: str = ""
    title: str = ""
    live: bool = True
    schema_kind: Literal["json-schema", "distilled", "openapi"] | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    sha256: str | None = None
    source: dict[str, Any] = {}
    price: PriceRule | None = None
    origin: Literal["snapshot", "refreshed"] = "snapshot"
    fetched_at: float | None = None
    """Unix time of a refresh; None for the snapshot."""

    def age_days(self, now: float | None = None) -> float | None:
        """Days since the refresh, or None for the snapshot (whose date is in ``source``)."""
        if self.fetched_at is None:
            return None
        return ((now or time.time()) - self.fetched_at) / 86400

    def stale(self, now: float | None = None) -> bool:
        """A refreshed copy older than :data:`REFRESH_TTL`."""
        return self.fetched_at is not None and (now or time.time()) - self.fetched_at > REFRESH_TTL

    def provenance(self) -> str:
        """One line: ``snapshot (schema 2026-05-12, fal-ai/fal-js)`` or ``refreshed 2026-12-03 08:10 UTC``.

        A snapshot's price comes from fal's catalog text, collected apart from the schema (its source
        is in ``price.source``); a refresh brings both from fal's platform API.
        """
        if self.fetched_at is not None:
            when = datetime.fromtimestamp(self.fetched_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            return f"refreshed {when}" + (
                " (stale: run `klingflow endpoints refresh`)" if self.stale() else ""
            )
        date = str(self.source.get("date", "undated"))[:10]
        return f"snapshot (schema {date}, {self.source.get('repo', 'unknown source')})"


@cache
def _snapshot() -> dict[str, Any]:
    text = (files("klingflow") / "data" / "fal-endpoints.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def snapshot_meta() -> dict[str, Any]:
    """The snapshot's own facts: what made it, from which records, under which terms."""
    return {key: value for key, value in _snapshot().items() if key != "endpoints"}


def snapshot_ids() -> list[str]:
    """Every endpoint id in the snapshot, sorted."""
    return sorted(_snapshot()["endpoints"])


def refreshed_dir(home: Path | None = None) -> Path:
    """``KLINGFLOW_HOME/endpoints``: one refreshed record per endpoint id."""
    return (home or klingflow_home()) / "endpoints"


def _refreshed_path(endpoint_id: str, home: Path | None = None) -> Path:
    return refreshed_dir(home) / (endpoint_id.replace("/", "__") + ".json")


def refreshed_ids(home: Path | None = None) -> list[str]:
    """Every endpoint id with a refreshed copy in the home."""
    folder = refreshed_dir(home)
    if not folder.is_dir():
        return []
    return sorted(path.stem.replace("__", "/") for path in folder.glob("*.json"))


def _refreshed(endpoint_id: str, home: Path | None = None) -> EndpointRecord | None:
    path = _refreshed_path(endpoint_id, home)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return EndpointRecord.model_validate_json(text)


def record_of(endpoint_id: str, home: Path | None = None) -> EndpointRecord | None:
    """The freshest record of ``endpoint_id``: the home's refreshed copy, else the snapshot's, else None."""
    refreshed = _refreshed(endpoint_id, home)
    if refreshed is not None:
        return refreshed
    entry = _snapshot()["endpoints"].get(endpoint_id)
    if entry is None:
        return None
    return EndpointRecord.model_validate({"id": endpoint_id, **entry})


def store_refreshed(record: EndpointRecord, home: Path | None = None) -> Path:
    """Write a refreshed record into the home (atomically); later lookups use it."""
    path = _refreshed_path(record.id, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, record.model_dump_json(indent=1).encode())
    return path


def drop_refreshed(endpoint_id: str, home: Path | None = None) -> bool:
    """Remove a refreshed copy, so the snapshot is used again; whether there was one."""
    path = _refreshed_path(endpoint_id, home)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed
