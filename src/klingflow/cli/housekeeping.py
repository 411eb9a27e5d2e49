"""``klingflow gc [--older-than 30d] [--dry-run]``: free what no kept run and no open request needs.

What is removed and what is always kept is :mod:`klingflow.engine.housekeeping`'s to say; this
command prints it as a table, per kind the count and the bytes freed (or, with ``--dry-run``,
that would be freed).

Example::

    klingflow gc --dry-run
    klingflow gc --older-than 12h
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.filesize import decimal
from rich.table import Table

from klingflow.cli._errors import friendly_errors, out

__all__ = ["add_housekeeping_commands", "gc"]


def gc(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Keep what the period since then uses: a look-back (30d, 12h, 2w) or an ISO date.",
        ),
    ] = "30d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be freed.")] = False,
) -> None:
    """Remove store objects, journal entries, claim files and temporary files nothing kept needs.

    Kept whatever their age: paid requests not collected yet (a re-run or klingflow recover
    resumes them), every cache entry a run of the period used and the files it points at, live
    claims, and anything written in the last hour.
    """
    from klingflow import ledger
    from klingflow.engine import collect_garbage
    from klingflow.errors import LedgerError

    try:
        cutoff = ledger.parse_since(older_than)
    except LedgerError as exc:
        raise LedgerError(exc.message, context="--older-than", hint=exc.hint) from None
    result = collect_garbage(cutoff, dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    table = Table(title=f"klingflow gc: {verb} what was not used since {result.cutoff:%Y-%m-%d %H:%M} UTC")
    table.add_column("kind")
    for column in ("count", "size", "bytes"):
        table.add_column(column, justify="right")
    for kind, freed in [*result.freed.items(), ("total", result.total)]:
        table.add_row(kind, str(freed.count), decimal(freed.bytes), f"{freed.bytes:,}")
    console = out()
    console.print(table)
    total = result.total
    console.print(
        f"{verb} {_items(total.count, 'item')} ({decimal(total.bytes)})"
        + ("; run it without --dry-run to remove them" if dry_run and total.count else "")
    )
    if result.open_requests:
        console.print(
            f"kept {_items(result.open_requests, 'paid request')} not collected yet, whatever their age: "
            "a re-run or `klingflow recover` resumes them"
        )


def _items(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def add_housekeeping_commands(app: typer.Typer) -> None:
    """Attach ``gc`` behind the error boundary."""
    app.command("gc")(friendly_errors(gc))
