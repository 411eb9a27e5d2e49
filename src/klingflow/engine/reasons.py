"""Why a step will run: one reason per planned execution that is not reused, said before paying.

Snakemake and Bazel users expect a re-run to say what changed; a Kling re-run that nobody meant
costs money. The plan gives each execution it will not reuse (``run`` or ``recoverable``) exactly
one reason, from this vocabulary, with a detail a person can act on:

* ``recoverable``: a request for it was paid and never stored; the run collects it (no new cost);
* ``verification_failed``: its stored file is missing, cut or altered; fetched again from fal
  while fal keeps it (a generation), or made again (a local operation);
* ``refresh``: ``--refresh``, or the step's ``refresh: true`` / ``cache: false``;
* ``upstream_changed``: a step it reads will run first, or made a different output than the
  last time (which step, by which argument);
* ``arguments_changed``: its own arguments differ from its last run (which fields), or they are
  the same while the content of a file it reads differs;
* ``key_version``: the same arguments under another :data:`klingflow.cache.CACHE_VERSION`;
* ``new``: no earlier run of this step (of this pipeline, and of this row of a batch) is in the
  ledger, or its result is no longer in the cache.

"The last run" is the newest ledger row of the same pipeline, step and foreach item (and batch
row key) that has a cache key, read once per home by :class:`History` on first need, so a fully
cached plan reads no ledger at all. The arguments compared are the ledger's own form of them
(:func:`~klingflow.engine.context.shown_arguments`), so an upstream output shows up by its stored
path or content digest. The run copies each planned reason onto the ledger row of the execution
it made (``run_reason``, ``run_reason_detail``): the plan and the ledger say the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from klingflow.cache import CACHE_VERSION
from klingflow.ledger import load, to_records
from klingflow.spec import find_references

__all__ = ["History", "RunReason", "Why", "changed_reason"]

RunReason = Literal[
    "new",
    "arguments_changed",
    "upstream_changed",
    "refresh",
    "verification_failed",
    "recoverable",
    "key_version",
]
"""Why a planned execution is not reused (see the module docstring)."""


@dataclass(frozen=True)
class Why:
    """One reason and its detail (which fields, which step, which request)."""

    reason: RunReason
    detail: str


@dataclass
class History:
    """The newest ledger row with a cache key of each (pipeline, row key, step, item), read once."""

    _rows: dict[tuple[Any, ...], dict[str, Any]] | None = field(default=None, repr=False)

    def last(
        self, pipeline: str, row_key: str | None, step_id: str, item_index: int | None
    ) -> dict[str, Any] | None:
        """That execution's newest earlier row (as plain values), or None."""
        if self._rows is None:
            self._rows = _newest_rows()
        return self._rows.get((pipeline, row_key, step_id, item_index))


def _newest_rows() -> dict[tuple[Any, ...], dict[str, Any]]:
    frame = load()
    frame = frame[frame["cache_key"].notna()].sort_values("started_at", na_position="first", kind="stable")
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in to_records(frame):  # oldest first: the newest of each execution is kept
        rows[(row["pipeline"], row["row_key"], row["step_id"], row["item_index"])] = row
    return rows


def _fields(raw: dict[str, Any]) -> dict[str, set[str]]:
    """For each argument of the step as written, the steps its value refers to."""
    return {
        name: {r.step_id for r in find_references(value) if r.step_id is not None}
        for name, value in raw.items()
    }


def changed_reason(
    last: dict[str, Any] | None,
    shown: str,
    key: str,
    raw: dict[str, Any],
) -> Why:
    """Why an execution whose inputs are known, and whose result is not cached, runs.

    ``last`` is its newest earlier ledger row (:class:`History`), ``shown`` its arguments in the
    ledger's form, ``key`` its cache key now and ``raw`` the step's arguments as written.
    """
    if last is None:
        return Why("new", "no earlier run of this step is in the ledger")
    if last["cache_key"] == key:
        return Why("new", "it ran before, but its result is no longer in the cache")
    before, now = json.loads(last["arguments"] or "{}"), json.loads(shown)
    differing = sorted(name for name in {*before, *now} if before.get(name) != now.get(name))
    sources = _fields(raw)
    upstream = sorted({step for name in differing for step in sources.get(name, set())})
    own = [name for name in differing if not sources.get(name)]
    if upstream and not own:
        return Why("upstream_changed", f"{', '.join(upstream)} made a different output than last time")
    if differing:
        return Why("arguments_changed", ", ".join(differing))
    version = last.get("cache_version") or "1"  # rows from before the column: version 1
    if version != CACHE_VERSION:
        return Why("key_version", f"cache key version {version} -> {CACHE_VERSION}")
    return Why("arguments_changed", "same arguments; the content of a file it reads differs")
