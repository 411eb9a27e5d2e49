"""The ledger as a dataset: one parquet file per run, appended atomically and loaded as one DataFrame.

Each run is one parquet file, ``<home>/ledger/run-<run id>.parquet``, so two
processes finishing runs at once never write the same file and no lock is needed. A file is
written under a hidden temporary name in the same folder, fsynced, then renamed over its final
name: a reader (or a crash) sees the old file or the new one, never half of one. Every file
carries :data:`LEDGER_SCHEMA_VERSION` in its parquet metadata; columns are only ever added, so
an older file loads with the columns it lacks as NA. This package is the only place that does
pandas I/O (parquet, CSV, JSON).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from operator import methodcaller
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from klingflow._files import atomic_write
from klingflow.errors import LedgerError
from klingflow.ledger._record import COLUMNS, LEDGER_SCHEMA_VERSION, Status
from klingflow.settings import klingflow_home

__all__ = [
    "append",
    "export",
    "ledger_root",
    "load",
    "parse_since",
    "redact",
    "to_frame",
    "to_records",
    "typed",
]

_VERSION_KEY = b"klingflow.ledger.schema_version"
_SAFE_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_STALE_TEMP_SECONDS = 3600.0


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """Replace every known secret (and the FAL_KEY in the environment) with ``***``."""
    if text is None:
        return None
    for secret in [*secrets, os.environ.get("FAL_KEY", "")]:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return text


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Exactly :data:`COLUMNS`, in order, with their dtypes (missing columns become NA)."""
    frame = frame.reindex(columns=list(COLUMNS))
    for name, dtype in COLUMNS.items():
        if dtype.startswith("datetime"):
            frame[name] = pd.to_datetime(frame[name], utc=True).astype(dtype)
        else:
            frame[name] = frame[name].astype(dtype)
    return frame


def to_frame(rows: Iterable[dict[str, Any]], secrets: Iterable[str] = ()) -> pd.DataFrame:
    """Build the ledger DataFrame from row dicts: every column present, typed, secrets removed."""
    secrets = list(secrets)
    cleaned = []
    for row in rows:
        item = {name: row.get(name) for name in COLUMNS}
        for name in ("arguments", "error", "prompt"):
            item[name] = redact(item[name], secrets)
        cleaned.append(item)
    return typed(pd.DataFrame(cleaned, columns=list(COLUMNS)))


def ledger_root(root: Path | None = None) -> Path:
    """The ledger folder: ``root`` when given, else ``<klingflow home>/ledger``."""
    return root if root is not None else klingflow_home() / "ledger"


def _sweep_temps(folder: Path) -> None:
    """Delete temp files a killed writer left behind (only old ones: a live writer may own a new one)."""
    cutoff = time.time() - _STALE_TEMP_SECONDS
    for temp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if temp.stat().st_mtime < cutoff:
                temp.unlink()


def _versioned(frame: pd.DataFrame) -> pa.Table:
    """The typed frame as an arrow table whose metadata names the schema version."""
    table = pa.Table.from_pandas(typed(frame), preserve_index=False)
    metadata = {**(table.schema.metadata or {}), _VERSION_KEY: str(LEDGER_SCHEMA_VERSION).encode()}
    return table.replace_schema_metadata(metadata)


def append(frame: pd.DataFrame, *, root: Path | None = None) -> Path:
    """Store one run's rows as ``run-<run id>.parquet`` and return its path.

    The frame must hold exactly one run id. Writing a run again replaces its file whole (the
    new rows are the run's complete record), so a retried ``record`` never duplicates rows.
    Raises :class:`LedgerError` naming the file when it cannot be written.
    """
    runs = list(frame["run_id"].dropna().unique()) if "run_id" in frame else []
    if len(runs) != 1 or frame["run_id"].isna().any():
        raise LedgerError(
            f"a ledger file holds exactly one run, got run ids {sorted(map(str, runs))}",
            hint="append each run's frame separately (RunResult.ledger gives one run's rows)",
        )
    run_id = str(runs[0])
    if not _SAFE_RUN_ID.match(run_id):
        raise LedgerError(f"run id {run_id!r} cannot be a file name", hint="use letters, digits, . _ -")
    folder = ledger_root(root)
    target = folder / f"run-{run_id}.parquet"
    try:
        atomic_write(target, partial(pq.write_table, _versioned(frame)))
        _sweep_temps(folder)
    except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
        raise LedgerError(
            f"could not write the run's ledger rows: {exc}",
            context=str(target),
            hint="check that the klingflow home (KLINGFLOW_HOME) is writable and has free space",
        ) from exc
    return target


def parse_since(value: datetime | date | str) -> datetime:
    """A UTC datetime from a datetime, a date, an ISO string, or a look-back like ``7d``, ``24h``, ``30m``.

    Naive values are taken as UTC.
    """
    if isinstance(value, str):
        relative = _RELATIVE.match(value)
        if relative:
            amount, unit = float(relative.group(1)), _UNITS[relative.group(2)]
            return datetime.now(UTC) - timedelta(**{unit: amount})
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise LedgerError(
                f"cannot read {value!r} as a date",
                context="since",
                hint="give an ISO date (2025-01-31, 2025-01-31T09:00) or a look-back: 30m, 24h, 7d, 2w",
            ) from None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _read(path: Path) -> pd.DataFrame:
    """One run file as a typed frame; newer or older schema versions keep the columns we know."""
    try:
        return typed(pq.read_table(path).to_pandas())
    except (OSError, pa.ArrowException, ValueError, TypeError) as exc:
        raise LedgerError(
            f"cannot read this ledger file: {exc}",
            context=str(path),
            hint="klingflow never leaves partial files; move this one aside if it was damaged or copied",
        ) from exc


def _files(folder: Path, run: str | None) -> list[Path]:
    """Run files (never temp files), oldest write first; ``run`` matches an id or its prefix."""
    if not folder.is_dir():
        return []
    exact = folder / f"run-{run}.parquet"
    if run is not None and exact.is_file():
        return [exact]
    pattern = f"run-{glob.escape(run)}*.parquet" if run is not None else "run-*.parquet"
    return sorted(folder.glob(pattern), key=lambda p: (p.stat().st_mtime_ns, p.name))


def load(
    *,
    run: str | None = None,
    pipeline: str | None = None,
    since: datetime | date | str | None = None,
    status: str | None = None,
    root: Path | None = None,
) -> pd.DataFrame:
    """Every stored ledger row that matches, as one DataFrame with exactly :data:`COLUMNS` and dtypes.

    ``run`` is a run id or a prefix of one; ``since`` keeps rows started at or after it (see
    :func:`parse_since`); ``status`` is one of :class:`~klingflow.ledger.Status`. Rows keep each
    run's step order; runs come oldest first. Nothing matching gives an empty frame with the same dtypes.
    """
    if status is not None and status not in set(Status):
        raise LedgerError(f"unknown status {status!r}", context="status", hint=f"one of {', '.join(Status)}")
    start = parse_since(since) if since is not None else None
    frames = [_read(path) for path in _files(ledger_root(root), run)]
    frames = [f for f in frames if not f.empty]
    frame = pd.concat(frames, ignore_index=True) if frames else typed(pd.DataFrame())
    keep = pd.Series(True, index=frame.index)
    if pipeline is not None:
        keep &= frame["pipeline"].eq(pipeline).fillna(False)
    if status is not None:
        keep &= frame["status"].eq(status).fillna(False)
    if start is not None:
        keep &= frame["started_at"].ge(pd.Timestamp(start)).fillna(False)
    frame = frame[keep.astype(bool)]
    run_start = frame.groupby("run_id", dropna=False)["started_at"].transform("min")
    order = pd.DataFrame({"start": run_start, "position": range(len(frame))}, index=frame.index)
    frame = frame.loc[order.sort_values(["start", "position"], kind="stable").index]
    return frame.reset_index(drop=True)


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


def to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain dicts for JSON, HTML or Prefect: NA becomes None, timestamps ISO strings."""
    # pandas types a column label as any hashable; a ledger frame's are its column names, strings.
    return [{str(name): _plain(value) for name, value in row.items()} for row in frame.to_dict("records")]


def export(
    frame: pd.DataFrame, format: Literal["csv", "json", "parquet"], out: Path | None = None
) -> str | None:
    """Write ``frame`` as CSV, JSON (a list of row objects) or parquet.

    CSV and JSON go to ``out`` when given, else they are returned as text; parquet needs ``out``.
    Files are written atomically; a ledger-shaped parquet file carries the schema version.
    """
    if format == "parquet":
        if out is None:
            raise LedgerError("parquet is binary: it needs a file", hint="add --output FILE.parquet")
        table = _versioned(frame) if list(frame) == list(COLUMNS) else pa.Table.from_pandas(frame)
        write: Callable[[BinaryIO], object] = partial(pq.write_table, table)
    else:
        if format == "csv":
            text = frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S.%f%z")
        elif format == "json":
            text = frame.to_json(orient="records", date_format="iso", date_unit="us", indent=2) or "[]"
        else:
            raise LedgerError(f"unknown format {format!r}", hint="one of table, csv, json, parquet")
        if out is None:
            return text
        write = methodcaller("write", text.encode())
    try:
        atomic_write(out, write)
    except OSError as exc:
        raise LedgerError(f"could not write {format}: {exc}", context=str(out)) from exc
    return None
