"""``klingflow ledger`` (query the stored ledger), ``klingflow ledger summary`` and ``klingflow report``.

:func:`add_ledger_commands` attaches them to the main app with the same error boundary (a
:class:`~klingflow.errors.KlingflowError` printed as what / where / hint, exit 1). The report
module (which load PyAV and Pillow) are imported only by the commands that
need them, so ``klingflow --help`` stays quick.

Example::

    klingflow ledger --since 7d --status failed
    klingflow ledger --pipeline story --format csv > story.csv
    klingflow ledger summary
    klingflow report 3f2a
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, Protocol, TypeVar

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from klingflow import ledger
from klingflow.ledger import LedgerError, Status, step_label

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["add_ledger_commands", "ledger_list", "ledger_summary", "report_command"]

P = ParamSpec("P")
R = TypeVar("R")


class Wrap(Protocol):
    """What :func:`add_ledger_commands` wraps each command in: a function of the same signature."""

    def __call__(self, command: Callable[P, R], /) -> Callable[P, R]: ...


class Format(StrEnum):
    """How ``klingflow ledger`` prints rows."""

    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


_FILE_FORMATS: dict[Format, Literal["csv", "json", "parquet"]] = {
    Format.csv: "csv",
    Format.json: "json",
    Format.parquet: "parquet",
}
"""The formats ``klingflow ledger`` writes with :func:`klingflow.ledger.export` (all but the table)."""


class SummaryFormat(StrEnum):
    """How ``klingflow ledger summary`` prints its tables."""

    table = "table"
    csv = "csv"
    json = "json"


class Level(StrEnum):
    """Which summary: per run or per pipeline."""

    run = "run"
    pipeline = "pipeline"


RunOpt = Annotated[str | None, typer.Option("--run", help="A run id, or the start of one.")]
PipelineOpt = Annotated[str | None, typer.Option("--pipeline", help="Only this pipeline (its name).")]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Only rows started since: an ISO date, or 30m, 24h, 7d, 2w.")
]
StatusOpt = Annotated[str | None, typer.Option("--status", help=f"Only this status: {', '.join(Status)}.")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to this file instead of the terminal.")
]

_ROW_COLUMNS = [
    ("run_id", "run", 8),
    ("pipeline", "pipeline", 0),
    ("step", "step", 0),
    ("status", "status", 0),
    ("endpoint", "endpoint", 0),
    ("estimated_cost_usd", "cost $", 0),
    ("cost_usd", "billed $", 0),
    ("queue_seconds", "queue s", 0),
    ("run_seconds", "run s", 0),
    ("started_at", "started", 0),
    ("error", "error", 0),
]
_SUMMARY_COLUMNS = [
    ("steps", "steps"),
    ("cached_share", "cached"),
    *((str(s), str(s)) for s in Status if s not in (Status.COMPLETED, Status.CACHED)),
    ("spend_usd", "estimated $"),
    ("billed_usd", "billed $"),
    ("queue", "queue s"),
    ("run", "run s"),
]
_RARE_OUTCOMES = [str(s) for s in Status if s not in (Status.COMPLETED, Status.CACHED, Status.FAILED)]
"""Outcome columns a narrow terminal drops first when no row has any (failures are always shown)."""
_TEXT_COLUMNS = {"run_id", "pipeline", "step", "status", "endpoint", "error"}
STATUS_STYLES: dict[str, str] = {
    Status.COMPLETED: "green",
    Status.CACHED: "cyan",
    Status.JOINED: "cyan",
    Status.FAILED: "red",
    Status.SKIPPED: "yellow",
    Status.INTERRUPTED: "yellow",
}
"""Each status's colour in tables, keyed by a cell's text (a test checks every :class:`Status` has one)."""


def _cell(row: dict[str, Any], name: str, width: int = 0) -> Text:
    """One table cell as plain Text (user text such as ``[bold]`` in a prompt is never markup).

    Tables favour a glance in an 80-column terminal: short run ids, the endpoint's last part,
    minutes-precision UTC times, an error's first line; ``--format csv`` or ``json`` give every
    column in full.
    """
    value = row.get(name)
    if name == "step":
        value = step_label(row)
    elif name == "endpoint":
        value = (value or "").rsplit("/", 1)[-1]
    elif name.endswith("_at") and value:
        value = datetime.fromisoformat(value).strftime("%m-%d %H:%M")
    elif name in ("queue", "run"):
        low, high = row[f"{name}_p50"], row[f"{name}_p95"]
        value = "–" if low is None else f"{low:.1f} / {high:.1f}"
    elif name == "cached_share" and value is not None:
        value = f"{value:.0%}"
    elif name in ("estimated_cost_usd", "cost_usd", "spend_usd", "billed_usd") and value is not None:
        value = f"{value:.3f}"
    elif isinstance(value, float):
        value = f"{value:.1f}"
    text = str(value).splitlines()[0] if value not in (None, "") else ""
    return Text(
        text[:width] if width else text, style=STATUS_STYLES.get(text, "") if name == "status" else ""
    )


_UNBOUNDED = 100_000
"""A width no table reaches: measured within it, a table says how wide it is without wrapping."""
_FREE_TEXT = ("pipeline", "step", "endpoint", "error")
"""The columns whose cells wrap when the terminal is narrow; the others are short fixed values."""
_ROOMY_TEXT = 14
"""The width free text keeps before an optional column is: a step id like ``beats[12]`` on one line."""
_NARROWEST_TEXT = 9
"""The width free text keeps at least, or every column wraps: one more than their widest heading."""


def _table(
    title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, int]], optional: list[str]
) -> Table:
    """A rich table that fits the terminal, never cutting a header or a value to an ellipsis.

    The short fixed values (ids, statuses, counts, money, times, p50 / p95) stay whole on one line,
    and free text (a pipeline name, a step id, an error) wraps in its cell. While free text would
    be narrower than ``_ROOMY_TEXT``, columns go: first those empty in every row, then the
    ``optional`` ones in order. Only a terminal too narrow even for ``_NARROWEST_TEXT`` wraps every
    column (a header over lines, never an ellipsis).
    """
    console = Console()
    empty = [name for name, _, width in columns if not any(_cell(row, name, width).plain for row in rows)]
    for name in dict.fromkeys([*empty, *optional]):
        if _fits(console, rows, columns, _ROOMY_TEXT):
            break
        columns = [column for column in columns if column[0] != name]
    return _build_table(title, rows, columns, fold=not _fits(console, rows, columns, _NARROWEST_TEXT))


def _fits(
    console: Console, rows: list[dict[str, Any]], columns: list[tuple[str, str, int]], text_width: int
) -> bool:
    """Whether the fixed columns fit on one line with each free-text one at least ``text_width`` wide.

    rich narrows the widest wrapping columns first, all to one width, so none ends narrower.
    """
    fixed = [column for column in columns if column[0] not in _FREE_TEXT]
    width = console.measure(
        _build_table("", rows, fixed, fold=False), options=console.options.update_width(_UNBOUNDED)
    ).maximum
    for name, heading, limit in columns:
        if name in _FREE_TEXT:
            natural = max([cell_len(heading), *(_cell(row, name, limit).cell_len for row in rows)])
            width += min(natural, text_width) + 2  # its padding and the divider before it
    return width <= console.width


def _build_table(
    title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, int]], *, fold: bool
) -> Table:
    """The table itself; ``fold``: every column may wrap (else the fixed values keep to one line)."""
    table = Table(
        title=title,
        header_style="bold",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
    )
    for name, heading, _ in columns:
        text = name in _TEXT_COLUMNS or name.endswith("_at")
        table.add_column(
            heading,
            justify="left" if text else "right",
            no_wrap=not fold and name not in _FREE_TEXT,
            overflow="fold",
            max_width=16 if name == "pipeline" else None,  # a longer name wraps
        )
    for row in rows:
        table.add_row(*(_cell(row, name, width) for name, _, width in columns))
    return table


def _load(run: str | None, pipeline: str | None, since: str | None, status: str | None) -> pd.DataFrame:
    """The matching rows; an unknown ``--run`` is an error that lists the recent runs."""
    frame = ledger.load(run=run, pipeline=pipeline, since=since, status=status)
    if run is not None and frame.empty and ledger.load(run=run).empty:
        ledger.load_manifest(run)  # raises, naming the recent runs, unless the run exists and had no steps
    return frame


def _emit(text: str | None, output: Path | None, console: Console) -> None:
    if output is None and text is not None:
        typer.echo(text, nl=not text.endswith("\n"))
    elif output is not None:
        console.print(f"wrote {output}", highlight=False)


def ledger_list(
    ctx: typer.Context,
    run: RunOpt = None,
    pipeline: PipelineOpt = None,
    since: SinceOpt = None,
    status: StatusOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table, csv, json or parquet.")] = (
        Format.table
    ),
    output: OutputOpt = None,
) -> None:
    """List ledger rows (every step of every recorded run), filtered; newest runs last."""
    if ctx.invoked_subcommand is not None:
        return
    frame = _load(run, pipeline, since, status)
    console = Console()
    if format is Format.table:
        if output is not None:
            raise LedgerError("--output needs a file format", hint="add --format csv, json or parquet")
        if frame.empty:
            console.print("no ledger rows match", style="yellow")
            return
        console.print(
            _table(
                f"{len(frame)} ledger rows (times UTC)",
                ledger.to_records(frame),
                _ROW_COLUMNS,
                ["pipeline", "endpoint", "queue_seconds", "cost_usd"],
            )
        )
        return
    _emit(ledger.export(frame, _FILE_FORMATS[format], output), output, Console(stderr=True))


def ledger_summary(
    run: RunOpt = None,
    pipeline: PipelineOpt = None,
    since: SinceOpt = None,
    status: StatusOpt = None,
    format: Annotated[SummaryFormat, typer.Option("--format", "-f", help="table, csv or json.")] = (
        SummaryFormat.table
    ),
    by: Annotated[
        Level | None,
        typer.Option("--by", help="Only per run or per pipeline (csv shows per run by default)."),
    ] = None,
    output: OutputOpt = None,
) -> None:
    """Per run and per pipeline: steps, cached share, failures, estimated and billed spend, timings."""
    frame = _load(run, pipeline, since, status)
    runs, pipelines = ledger.summary(frame)
    levels = {"run": runs, "pipeline": pipelines}
    if format is SummaryFormat.csv:
        chosen = levels[(by or Level.run).value]
        _emit(ledger.export(chosen, "csv", output), output, Console(stderr=True))
        return
    wanted = [by.value] if by else ["run", "pipeline"]
    if format is SummaryFormat.json:
        data = {f"{level}s": ledger.to_records(levels[level]) for level in wanted}
        text = json.dumps(data, indent=2)
        if output is not None:
            output.write_text(text + "\n", encoding="utf-8")
        _emit(text, output, Console(stderr=True))
        return
    console = Console()
    if frame.empty:
        console.print("no ledger rows match", style="yellow")
        return
    keys = {
        "run": [("run_id", "run", 8), ("pipeline", "pipeline", 0), ("started_at", "started", 0)],
        "pipeline": [("pipeline", "pipeline", 0), ("runs", "runs", 0), ("last_run_at", "last run", 0)],
    }
    for index, level in enumerate(wanted):
        if index:
            console.print()
        records = ledger.to_records(levels[level])
        columns = keys[level] + [(name, heading, 0) for name, heading in _SUMMARY_COLUMNS]
        title = f"per {level} (times UTC; queue and run seconds as p50 / p95)"
        unused = [name for name in _RARE_OUTCOMES if not any(record[name] for record in records)]
        optional = [*unused, "pipeline" if level == "run" else "runs", "queue"]
        console.print(_table(title, records, columns, optional))


def report_command(
    run_id: Annotated[str, typer.Argument(help="The run id, or the start of one (see `klingflow ledger`).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the report (default: where the run put it).")
    ] = None,
) -> None:
    """Write (again) a run's HTML report: final cut, DAG, every clip with its settings, the ledger."""
    from klingflow.ledger import REPORT_NAME, load_manifest, run_dir, save_manifest
    from klingflow.report import write_report

    manifest = load_manifest(run_id)
    frame = ledger.load(run=manifest.run_id)
    target = out or Path(manifest.report or run_dir(manifest.run_id) / REPORT_NAME)
    try:
        written = write_report(manifest, frame, target)
    except OSError as exc:
        raise LedgerError(f"could not write the report: {exc}", context=str(target)) from exc
    if out is None and manifest.report != str(written):
        manifest.report = str(written)
        save_manifest(manifest)
    Console().print(f"report: {written.resolve().as_uri()}", highlight=False)


def _unwrapped(command: Callable[P, R]) -> Callable[P, R]:
    return command


def add_ledger_commands(app: typer.Typer, wrap: Wrap = _unwrapped) -> None:
    """Attach ``ledger`` (with ``summary``) and ``report`` to ``app``, each wrapped by ``wrap``.

    ``wrap`` is the CLI's error boundary (:func:`~klingflow.cli._errors.friendly_errors`); without it,
    errors propagate, which is what tests want.
    """
    group = typer.Typer(help="Query the ledger: every step of every recorded run.")
    group.callback(invoke_without_command=True)(wrap(ledger_list))
    group.command("summary")(wrap(ledger_summary))
    app.add_typer(group, name="ledger")
    app.command("report")(wrap(report_command))
