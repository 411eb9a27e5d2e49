"""Prefect's own server for klingflow's local home, with every SQLite transaction begun IMMEDIATE.

klingflow's supervisor runs this file (by path, ``python -P``) in place of ``prefect server
start``; the arguments are that command's. It changes one thing, and says why here because it
reaches into Prefect's server:

Prefect begins its SQLite write transactions DEFERRED: a request reads (a flow run's labels,
its parent), then writes. When another connection committed in between, SQLite cannot upgrade
that transaction and answers ``SQLITE_BUSY`` at once, without the busy timeout's wait; the
server turns it into a 503, and Prefect's client sleeps 2, 4, 8 ... seconds before trying
again, six times at most, then raises. Prefect's own comment in ``setup_sqlite`` names the cure
(begin such transactions IMMEDIATE) and its issue #18934 (open) is this symptom. A batch makes
exactly this load: rows' child flow runs created and ended at once. Measured here, 40 subflow
runs 8 at a time: 14.7 s and 29 retried requests with Prefect's default, 5.7 s and none with
IMMEDIATE (a writer then waits its turn in SQLite's busy handler, milliseconds, instead of
seconds in the client). Reads outside transactions are untouched; a local server has one user,
so serialising its write transactions costs nothing measurable.

If Prefect's server no longer has the hook (a later Prefect), the server runs unchanged and
says so in its log.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any


def begin_immediately() -> bool:
    """Make the SQLite configuration of Prefect's server begin every transaction IMMEDIATE."""
    try:
        from prefect.server.database import configurations
    except ImportError:  # pragma: no cover - Prefect's layout changed
        return False
    mode = getattr(configurations, "SQLITE_BEGIN_MODE", None)
    sqlite = getattr(configurations, "AioSqliteConfiguration", None)
    if mode is None or sqlite is None or not hasattr(sqlite, "begin_transaction"):
        return False

    @asynccontextmanager
    async def begin_transaction(
        self: Any, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any]:
        token = mode.set("IMMEDIATE")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            mode.reset(token)

    sqlite.begin_transaction = begin_transaction
    return True


def main(argv: list[str]) -> None:
    """``prefect server start ARGV`` in this process, with :func:`begin_immediately` applied."""
    if not begin_immediately():
        print("klingflow: Prefect's SQLite transactions could not be made IMMEDIATE", file=sys.stderr)
    from prefect.cli import app

    sys.argv = ["prefect", "server", "start", *argv]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
