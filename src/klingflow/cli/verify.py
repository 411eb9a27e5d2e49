"""``klingflow verify [--repair]``: is every stored output intact? Mend from fal what it still keeps."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from klingflow.cli._errors import friendly_errors, out

__all__ = ["add_verify_commands"]


def verify(
    repair: Annotated[
        bool,
        typer.Option(help="Fetch bad generations again from their requests while fal keeps them (free)."),
    ] = False,
    backend: Annotated[
        str | None,
        typer.Option(help="emulator or fal (default: fal when FAL_KEY is set, else the embedded emulator)."),
    ] = None,
) -> None:
    """Hash every stored output the cache points at and report the missing, cut or altered ones.

    Exits 1 while any stays bad. ``--repair`` fetches a bad generation again from its request
    (fal keeps a result for an hour after it completes); a run does the same by itself for the
    steps it uses.
    """
    from klingflow.backends import backend_kind
    from klingflow.engine import RunOptions, context_for, verify_store

    options = RunOptions(backend=backend_kind(backend))
    checked, bad = asyncio.run(verify_store(context_for(options), repair=repair))
    console = out()
    if bad:
        table = Table(title="stored outputs that failed verification")
        for column in ("endpoint", "request id", "damage", *(("repair", "detail") if repair else ())):
            table.add_column(column, overflow="fold")
        for item in bad:
            damage = ", ".join(f"{name} {what}" for name, what in item.damage.items())
            row = [item.endpoint.removeprefix("fal-ai/kling-video/"), item.request_id or "(local)", damage]
            table.add_row(*row, *((item.repair or "", item.detail) if repair else ()))
        console.print(table)
    mended = sum(item.repair == "refetched" for item in bad)
    console.print(
        f"{checked} stored entries checked, {len(bad)} bad"
        + (f", {mended} refetched from fal, {len(bad) - mended} not mended" if repair else "")
        + (
            ""
            if repair or not bad
            else "; `klingflow verify --repair` fetches them again while fal keeps them"
        )
    )
    if len(bad) > mended:
        raise typer.Exit(1)


def add_verify_commands(app: typer.Typer) -> None:
    """Attach ``verify`` behind the error boundary."""
    app.command("verify")(friendly_errors(verify))
