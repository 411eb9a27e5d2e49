"""The CLI's one error boundary, and consoles that never break a message mid-sentence.

Errors klingflow raises on purpose (:class:`~klingflow.errors.KlingflowError`) are printed as
what / where / hint with the error's exit code (1; 2 for configuration; 130/143 for a stopped run),
like pip's diagnostic errors; anything else keeps its
traceback. Messages are printed with ``soft_wrap``: a terminal folds long lines itself, and a CI
log or ``| tee`` gets each message on whole lines instead of rich's 80-column default.

Prefect's flow engine logs the traceback of a failed flow run before klingflow's own summary.
:func:`quiet_prefect_tracebacks` keeps that traceback out of the terminal (it still reaches
Prefect's API logs and UI); ``--debug`` shows it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console

from klingflow.errors import KlingflowError

__all__ = ["friendly_errors", "out", "quiet_prefect_tracebacks", "stderr"]

P = ParamSpec("P")
R = TypeVar("R")


def out() -> Console:
    """A console for results on stdout that never wraps a line itself."""
    return Console(soft_wrap=True)


def stderr() -> Console:
    """A console for messages on stderr that never wraps a line itself."""
    return Console(stderr=True, soft_wrap=True)


def friendly_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Render KlingflowError as what/where/hint and exit with its ``exit_code``, instead of a traceback.

    1 for most, 2 for a configuration mistake (:class:`~klingflow.errors.ConfigError`), 130 / 143
    for a run stopped by SIGINT / SIGTERM (:class:`~klingflow.errors.RunInterrupted`).
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except KlingflowError as exc:
            console = stderr()
            console.print(f"[bold red]error[/] [dim]({exc.reference})[/]")
            if exc.context:
                console.print(f"  where: {exc.context}", markup=False, highlight=False)
            console.print(f"  {exc.message}", markup=False, highlight=False)
            if exc.hint:
                console.print(f"  hint: {exc.hint}", markup=False, highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


class _WithoutTraceback(logging.Formatter):
    """Formats a record as ``inner`` would, leaving out its traceback (for this handler only)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def quiet_prefect_tracebacks() -> None:
    """Drop tracebacks from Prefect's console output in this process (its API log handler keeps them)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                handler.formatter, _WithoutTraceback
            ):
                handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))
