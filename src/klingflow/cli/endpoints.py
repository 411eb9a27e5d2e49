"""``klingflow endpoints list | show | refresh``: the fal endpoints klingflow knows, and fresher copies.

``list`` and ``show`` read the registry (the vendored snapshot, or a copy refreshed into the home);
``refresh`` asks fal's platform API for schemas and prices now (the embedded emulator when no fal key
is configured, like every other command) and stores them in ``KLINGFLOW_HOME/endpoints``, saying per
endpoint whether its schema changed (by sha256) and what it costs. A refreshed copy older than
``klingflow.endpoints.REFRESH_TTL`` is still used, and reported as stale by ``show`` and ``plan``.

Example::

    klingflow endpoints list --family v3 --mode image-to-video --priced
    klingflow endpoints show fal-ai/kling-video/v3/pro/image-to-video
    klingflow endpoints refresh fal-ai/kling-video/v3/pro/image-to-video
    klingflow endpoints refresh          # every endpoint that already has a refreshed copy
    klingflow endpoints refresh --all    # every vendored endpoint
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from klingflow.cli._errors import friendly_errors, out
from klingflow.errors import ConfigError, SpecError

if TYPE_CHECKING:
    from klingflow.backends.platform import Refreshed
    from klingflow.endpoints import EndpointInfo, EndpointRecord

__all__ = ["endpoints_app", "stale_note"]

endpoints_app = typer.Typer(
    help="The fal endpoints klingflow knows: list them, show one's inputs and price, refresh them from fal.",
    no_args_is_help=True,
)

BackendOpt = Annotated[
    str | None,
    typer.Option(help="emulator or fal (default: fal when FAL_KEY is set, else the embedded emulator)."),
]


def _price(record: EndpointRecord) -> str:
    return record.price.describe() if record.price is not None else "unknown"


def _schema_age(record: EndpointRecord) -> str:
    """Where the schema comes from and how old it is, short enough for a table cell."""
    if record.input is None:
        return "no schema"
    age = record.age_days()
    if age is None:
        return f"snapshot {str(record.source.get('date', 'undated'))[:10]}"
    return f"refreshed {age:.0f}d ago" + (" (stale)" if record.stale() else "")


def stale_note(uses: Iterable[str]) -> str | None:
    """A line naming the endpoints among ``uses`` whose refreshed copy is older than the TTL, if any."""
    from klingflow.endpoints import ALIASES, ENDPOINTS, REFRESH_TTL

    stale = {}
    for name in uses:
        info = ENDPOINTS.get(ALIASES.get(name, name))
        if info is not None and info.record.stale():
            stale[info.id] = info.record.age_days() or 0.0
    if not stale:
        return None
    listed = ", ".join(f"{endpoint_id} ({age:.0f} days)" for endpoint_id, age in sorted(stale.items()))
    return (
        f"stale: these endpoints' schemas and prices were refreshed more than {REFRESH_TTL / 86400:g} days "
        f"ago: {listed}; `klingflow endpoints refresh` fetches them again"
    )


def _info(name: str) -> EndpointInfo:
    """The endpoint ``name`` (fal id or short name) names; an unknown one is a usage error (exit 2)."""
    from klingflow.endpoints import get_endpoint

    try:
        return get_endpoint(name)
    except SpecError as exc:
        raise ConfigError(exc.message, context="endpoint id", hint=exc.hint) from None


def _matching(values: set[str], wanted: str | None, what: str) -> str | None:
    """``wanted`` as one of ``values`` (any case); one that matches nothing is an error with a suggestion."""
    if wanted is None:
        return None
    by_case = {value.lower(): value for value in values}
    if wanted.lower() in by_case:
        return by_case[wanted.lower()]
    from klingflow.endpoints import suggest

    guess = suggest(wanted, sorted(values))
    raise ConfigError(
        f"no endpoint has {what} {wanted!r}" + (f"; did you mean {guess!r}?" if guess else ""),
        context=f"--{what}",
        hint=f"{what} values: " + ", ".join(sorted(values)),
    )


@endpoints_app.command("list")
@friendly_errors
def list_endpoints(
    family: Annotated[
        str | None, typer.Option(help="Only this family, as the family column shows it.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="Only this mode, e.g. image-to-video.")] = None,
    priced: Annotated[
        bool, typer.Option("--priced", help="Only endpoints klingflow has a price for.")
    ] = False,
) -> None:
    """Every endpoint id ``uses:`` takes, with its family, mode, tier, price rule and schema's age."""
    from klingflow.endpoints import ENDPOINTS

    records = [ENDPOINTS[endpoint_id].record for endpoint_id in ENDPOINTS]
    family = _matching({r.family for r in records if r.family}, family, "family")
    mode = _matching({r.mode for r in records if r.mode}, mode, "mode")
    chosen = [
        r
        for r in records
        if (family is None or r.family == family)
        and (mode is None or r.mode == mode)
        and (not priced or r.price is not None)
    ]
    columns = ("id", "family", "mode", "tier", "price", "schema")
    rows = [(r.id, r.family, r.mode, r.tier, _price(r), _schema_age(r)) for r in chosen]
    console = out()
    if not console.is_terminal:  # a pipe or a file: tab-separated lines, one endpoint each
        for row in (columns, *rows):
            typer.echo("\t".join(row))  # written as is: rich would turn the tabs into spaces
        return
    table = Table(
        title=f"{len(rows)} fal endpoints", caption="`klingflow endpoints show ID` for one's inputs"
    )
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


def _show_fields(console: Console, info: EndpointInfo) -> None:
    from klingflow.cli._schema_view import field_rows  # only `show` reads schemas field by field

    assert info.record.input is not None
    media = {path: f"{m.kind} (a URL, or a local file klingflow uploads)" for path, m in info.media.items()}
    rows = [
        replace(row, type=media.get(row.name.replace("[]", ""), row.type))
        for row in field_rows(info.record.input)
    ]
    if console.is_terminal:
        table = Table(title="inputs", title_justify="left")
        for column in ("field", "type", "required", "default", "one of", "limits"):
            table.add_column(column, overflow="fold")
        for row in rows:
            cells = (row.name, row.type, "yes" if row.required else "", row.default, row.values, row.limits)
            table.add_row(*(escape(cell) for cell in cells))
        console.print(table)
        return
    console.print("inputs:", markup=False)
    for row in rows:
        parts = [row.type, "required" if row.required else "optional"]
        parts += [f"default {row.default}"] if row.default else []
        parts += [f"one of {row.values}"] if row.values else []
        parts += [row.limits] if row.limits else []
        console.print(f"  {row.name}: " + "; ".join(parts), markup=False, highlight=False)


@endpoints_app.command("show")
@friendly_errors
def show(
    endpoint: Annotated[str, typer.Argument(help="A fal endpoint id, or one of the short names.")],
) -> None:
    """One endpoint: its inputs (types, defaults, allowed values, limits), media, outputs and price."""
    info = _info(endpoint)
    record = info.record
    console = out()

    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    line(f"{info.id}" + (f" (short name {info.alias})" if info.alias != info.id else ""))
    line(f"  {record.title}" + ("" if record.live else " (fal no longer lists it)"))
    line(f"  family {record.family or '-'}, mode {record.mode or '-'}, tier {record.tier or '-'}")
    line(f"  price: {_price(record)}")
    via = ""
    if record.origin == "refreshed":
        via = f" from {record.source.get('backend', 'fal')}, {record.age_days() or 0:.1f} days old"
    line(f"  schema: {record.provenance()}{via}" + (f", sha256 {record.sha256}" if record.sha256 else ""))
    if record.input is None or record.output is None:
        line(f"  no schema is known: `klingflow endpoints refresh {info.id}` fetches it, if fal serves it")
        return
    if info.overlays:
        line("  cross-field rules: " + ", ".join(info.overlays))
    _show_fields(console, info)
    from klingflow.cli._schema_view import shown_limits

    line("media inputs:" if info.media else "media inputs: none")
    for path, media in info.media.items():
        limits = shown_limits({"x-fal": media.limits})
        line(f"  {path}: {media.kind}" + (f" ({limits})" if limits else ""))
    line("outputs:")
    for name, kind in info.produces.items():
        line(f"  {name}: {'list of ' if name in info.many else ''}{kind} file")
    for name, value in info.values.items():
        line(f"  {name}: {value}")


def _report(console: Console, found: Refreshed) -> None:
    record, previous = found.record, found.previous

    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    if record is None:
        line(f"{found.endpoint_id}: not refreshed: {found.problem}")
        return
    short = (record.sha256 or "")[:12]
    if previous is None or previous.sha256 is None:
        schema = f"new schema (sha256 {short})"
    elif found.changed:
        schema = f"schema changed (sha256 {(previous.sha256 or '')[:12]} -> {short})"
    else:
        schema = f"schema unchanged (sha256 {short})"
    price = _price(record)
    was = _price(previous) if previous is not None else "unknown"
    line(f"{found.endpoint_id}: {schema}; price {price}" + (f" (was {was})" if was != price else ""))


@endpoints_app.command("refresh")
@friendly_errors
def refresh(
    endpoint_ids: Annotated[
        list[str] | None,
        typer.Argument(help="fal endpoint ids or short names (default: every refreshed one)."),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Refresh every vendored endpoint.")] = False,
    backend: BackendOpt = None,
) -> None:
    """Fetch schemas and prices from fal now into the home; say per endpoint what changed.

    Without ids, the endpoints that already have a refreshed copy are fetched again; ``--all``
    fetches every vendored one. An id klingflow has not vendored is fetched too, and is then known to
    pipelines like any other. Exits 1 when fal did not answer a schema for some id.
    """
    from klingflow.endpoints import ALIASES, ENDPOINTS, refreshed_dir, snapshot_ids, suggest
    from klingflow.spec import looks_like_fal_id

    names = [ALIASES.get(name, name) for name in endpoint_ids or []]
    for name in names:
        if not looks_like_fal_id(name):
            guess = suggest(name, [*ALIASES, *ENDPOINTS])
            raise ConfigError(
                f"{name!r} is not a fal endpoint id" + (f"; did you mean {guess!r}?" if guess else ""),
                context="endpoint id",
                hint="fal ids look like owner/app/...; `klingflow endpoints list` shows the known ones",
            )
    if every:
        names = [*snapshot_ids(), *names]
    elif not names:
        names = [name for name in ENDPOINTS if ENDPOINTS[name].record.origin == "refreshed"]
    console = out()
    if not names:
        console.print("nothing to refresh: no endpoint has a refreshed copy yet; name ids, or use --all")
        return
    found, identity = asyncio.run(_refresh(backend, list(dict.fromkeys(names))))
    for item in found:
        _report(console, item)
    stored = [item for item in found if item.record is not None]
    console.print(
        f"{len(stored)} of {len(found)} refreshed from {identity} into {refreshed_dir()}; "
        f"{sum(item.changed for item in stored)} with a changed schema",
        markup=False,
        highlight=False,
    )
    if len(stored) < len(found):
        raise typer.Exit(1)


async def _refresh(backend: str | None, names: list[str]) -> tuple[list[Refreshed], str]:
    from klingflow.backends import backend_kind, connect
    from klingflow.backends.platform import refresh_endpoints

    client = connect(backend_kind(backend))
    try:
        return await refresh_endpoints(client, names), client.identity
    finally:
        await client.aclose()
