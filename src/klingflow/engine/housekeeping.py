"""``klingflow gc``: remove what no kept run and no open request needs, and keep the cache warm.

Nothing in a klingflow home is cleaned by a run: store objects, journal entries, claim files and
temporary files accumulate. :func:`collect_garbage` removes, for a kept period (``older_than``,
default 30 days back):

* **journal entries** that are ``done``, were last written before the period, and that no ledger
  row of the period uses (its ``cache_key``, or the ``sha256`` of one of the entry's outputs);
* **store objects** that no kept journal entry and no ledger row of the period references;
* **claim files** (``<home>/claims``) no live claim holds: an expired lease, a holder process
  that is gone, or the lock file of a claim released long ago;
* **temporary files** a killed writer left: ``store/tmp`` downloads and scratch folders, and the
  hidden ``.*.tmp`` files of an atomic write in the journal, the claims and the ledger folder, and
  the log of a ``klingflow run`` killed before it moved it into its run folder (``runs/.run-*.log``).

What is kept, and why:

* a ``submitted`` or ``interrupted`` journal entry, **whatever its age**: it stands for a request
  that may have been paid for and may still be collected (a re-run or ``klingflow recover``
  resumes it), and forgetting it would pay again;
* a ``done`` entry a ledger row of the period used, however old the entry is, and every object a
  kept entry points at. A cache hit does not rewrite the journal, so a pipeline first made 40 days
  ago and re-run from the cache yesterday has 40-day-old entries and yesterday's ``cached`` rows:
  the rows are what keep them, and that re-run still hits after ``gc``. An older entry goes
  together with the objects only it referenced (unless a ledger row of the period names them);
* anything written within :data:`GRACE` (one hour), whatever ``older_than`` says: a run in
  progress stores an object a moment before it journals it, and writes its temporary files and
  its last journal entries long before its ledger rows;
* the entry of a key someone holds a live claim on (a worker is generating or fetching it), in
  either claims backend; a claim file still being written (unreadable and younger than its lease);
* a journal entry this version cannot read (a newer klingflow's record may stand for money), and
  the objects its JSON names; files in the store that are not named by a hash (not klingflow's);
* the ledger and the run folders (the record of what was paid for) and the two-hex-digit folders
  of the store and journal (at most 256 each; a writer may be about to create a file in one).

The age of a file is its modification time (when it was last written): a home copied without its
times only looks younger, and keeps more. Each removal looks at the file again first and spares
it if it was written since it was judged. One case ``gc`` cannot see: a run in progress that
reads, from the cache, an entry unused for the whole period (its ledger rows are written when it
ends); the default period of 30 days makes that a long-forgotten pipeline started at that moment.

Claims in Redis (``KLINGFLOW_CLAIMS=redis://...``) are keys set with an expiry (``PX``): a stale
one disappears by itself, so nothing of Redis is cleaned here; Redis is only asked whether a key
is held. The file claims under the home are cleaned with either backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from klingflow import ledger
from klingflow.cache import Claims, FileClaims, Journal, JournalEntry, Store, claims_from_env
from klingflow.settings import klingflow_home

__all__ = ["GRACE", "KINDS", "Collected", "Freed", "Kind", "collect_garbage"]

GRACE = timedelta(hours=1)
"""Nothing written more recently than this is removed: a run in progress may be writing it."""

Kind = Literal["store objects", "journal entries", "claim files", "temp files"]
KINDS: tuple[Kind, ...] = ("store objects", "journal entries", "claim files", "temp files")
"""What ``gc`` removes, in the order it reports them."""

_SHA256_HEX = frozenset("0123456789abcdef")


class Freed(BaseModel):
    """How much of one kind was (or, in a dry run, would be) removed."""

    count: int = 0
    bytes: int = 0


class Collected(BaseModel):
    """What one :func:`collect_garbage` call removed (or, with ``dry_run``, would remove)."""

    cutoff: datetime = Field(description="Older than this (and unreferenced) is removed.")
    dry_run: bool
    freed: dict[Kind, Freed] = Field(default_factory=lambda: {kind: Freed() for kind in KINDS})
    removed: list[Path] = Field(default_factory=list, description="Every file or folder removed.")
    open_requests: int = Field(0, description="Submitted or interrupted journal entries kept.")

    @property
    def total(self) -> Freed:
        """All kinds together."""
        return Freed(
            count=sum(f.count for f in self.freed.values()), bytes=sum(f.bytes for f in self.freed.values())
        )


class _Sweep:
    """Removes (or, dry, only counts) what was judged garbage, re-checking each file first."""

    def __init__(self, result: Collected) -> None:
        self.result = result

    def take(self, kind: Kind, path: Path, judged_mtime: float, size: int) -> None:
        """Remove ``path`` unless it was written after it was judged (``judged_mtime``)."""
        if not self.result.dry_run:
            try:
                if path.lstat().st_mtime != judged_mtime:
                    return
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                return
        self.count(kind, path, size)

    def count(self, kind: Kind, path: Path, size: int) -> None:
        freed = self.result.freed[kind]
        freed.count += 1
        freed.bytes += size
        self.result.removed.append(path)


def _tree(path: Path) -> tuple[float, int]:
    """The newest modification time in ``path`` (a file or a folder tree) and its bytes."""
    info = path.lstat()
    newest, size = info.st_mtime, info.st_size if path.is_file() else 0
    if path.is_dir() and not path.is_symlink():
        for folder, _, names in os.walk(path):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    inner = (Path(folder) / name).lstat()
                    newest, size = max(newest, inner.st_mtime), size + inner.st_size
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, Path(folder).lstat().st_mtime)
    return newest, size


def _listed_outputs(path: Path) -> set[str]:
    """The sha256 of the outputs an entry this version cannot read names, as far as its JSON says."""
    try:
        outputs = json.loads(path.read_text()).get("outputs", {})
        return {str(o["sha256"]) for o in outputs.values() if isinstance(o, dict) and "sha256" in o}
    except (OSError, ValueError, AttributeError):
        return set()


def _outputs(entry: JournalEntry) -> set[str]:
    return {output.sha256 for output in entry.outputs.values()}


def _journal(
    journal: Journal,
    sweep: _Sweep,
    *,
    cutoff: float,
    used_keys: set[str],
    used_objects: set[str],
    claims: Claims,
) -> set[str]:
    """Remove the old, unused ``done`` entries; return the objects the kept entries reference."""
    referenced: set[str] = set()
    for path in sorted(journal.root.glob("*/*.json")):
        with contextlib.suppress(FileNotFoundError):
            info = path.stat()
            entry = journal.get(path.stem)
            if entry is None:
                referenced |= _listed_outputs(path)
            elif entry.status != "done":
                sweep.result.open_requests += 1
            elif (
                info.st_mtime >= cutoff
                or entry.key in used_keys
                or _outputs(entry) & used_objects
                or claims.holder(entry.key) is not None
            ):
                referenced |= _outputs(entry)
            else:
                sweep.take("journal entries", path, info.st_mtime, info.st_size)
    return referenced


def _objects(store: Store, sweep: _Sweep, *, referenced: set[str], floor: float) -> None:
    """Remove the objects nothing kept references and nobody wrote within the grace."""
    for path in sorted(store.objects.glob("*/*")):
        sha256 = path.name[:64]
        if len(sha256) != 64 or not set(sha256) <= _SHA256_HEX or sha256 in referenced:
            continue
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()
            if path.is_file() and info.st_mtime < floor:
                sweep.take("store objects", path, info.st_mtime, info.st_size)


def _claims(folder: Path, sweep: _Sweep) -> None:
    """Remove the claim and lock files no live claim needs (under each key's lock)."""
    if not folder.is_dir():
        return
    claims = FileClaims(folder)
    for key, paths in claims.stale().items():
        sizes = []
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                sizes.append((path, path.stat().st_size))
        if sweep.result.dry_run or claims.discard(key):
            for path, size in sizes:
                sweep.count("claim files", path, size)


def _temps(home: Path, store: Store, sweep: _Sweep, *, floor: float) -> None:
    """Remove temporary files and folders nobody wrote to within the grace."""
    leftovers = [
        *sorted(store.tmp.iterdir()),
        *sorted((home / "journal").glob("*/.*.tmp")),
        *sorted((home / "claims").glob(".*.tmp")),
        *sorted((home / "ledger").glob(".*.tmp")),
        *sorted((home / "runs").glob(".run-*.log")),  # a killed `klingflow run`'s log, never moved
    ]
    for path in leftovers:
        with contextlib.suppress(FileNotFoundError):
            newest, size = _tree(path)
            if newest < floor:
                sweep.take("temp files", path, path.lstat().st_mtime, size)


def collect_garbage(
    older_than: datetime | date | str = "30d",
    *,
    dry_run: bool = False,
    claims: str | None = None,
) -> Collected:
    """Remove from the klingflow home what the kept period does not need (see the module docstring).

    ``older_than`` is a look-back (``30d``, ``12h``) or an ISO date, read like ``klingflow ledger
    --since``; ``claims`` names the claims backend (else ``KLINGFLOW_CLAIMS``). With ``dry_run``
    nothing is removed and the result says what would be.
    """
    floor = time.time() - GRACE.total_seconds()
    cutoff = min(ledger.parse_since(older_than).timestamp(), floor)
    result = Collected(cutoff=datetime.fromtimestamp(cutoff, UTC), dry_run=dry_run)
    sweep = _Sweep(result)
    home = klingflow_home()
    store, journal = Store(home / "store"), Journal(home / "journal")
    rows = ledger.load(since=result.cutoff)
    used_keys = {str(key) for key in rows["cache_key"].dropna()}
    used_objects = {str(sha) for sha in rows["sha256"].dropna()}
    referenced = _journal(
        journal,
        sweep,
        cutoff=cutoff,
        used_keys=used_keys,
        used_objects=used_objects,
        claims=claims_from_env(claims),
    )
    _objects(store, sweep, referenced=referenced | used_objects, floor=floor)
    _claims(home / "claims", sweep)
    _temps(home, store, sweep, floor=floor)
    return result
