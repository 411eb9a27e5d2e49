"""Where log lines go while ``klingflow run`` shows its view: the run's log file, the console on demand.

A run's console is its live view (:mod:`klingflow.cli._live`). Everything else that logs during a
run — Prefect's flow and task run lines, fal's model logs forwarded as step messages, the embedded
emulator's and servers' uvicorn loggers, klingflow's own step messages — is written to the run's
log file (``<home>/runs/<run id>/run.log`` once the run id is known) and reaches the Prefect UI
through Prefect's API handler as before. ``--verbose`` also prints it on the console, above the
live view. klingflow's own warnings and errors are always printed.

Prefect configures the standard library's logging when it is imported (its ``logging.yml``: a
``PrefectConsoleHandler`` on the root, ``uvicorn`` and ``fastapi`` loggers), so :meth:`RunLogs.apply`
is called again once Prefect is imported, and once its flow run has started: it puts a filter on
each of its console handlers (what they print: nothing unless verbose, never klingflow's own
records, which :class:`_KlingflowConsole` prints) and this module's file handler next to them.
Nothing of Prefect's is replaced, so its API handler keeps sending every line to the UI. The
filters stay until the process ends (``klingflow run`` owns its process): what Prefect logs at exit,
stopping its temporary server or draining its API logs, is not the console's either.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from types import TracebackType

from rich.console import Console

__all__ = ["RunLogs"]

_OWN = "klingflow"
"""klingflow's loggers: ``klingflow`` and below (its step messages log as ``klingflow.steps``)."""

_NOT_PROPAGATING = ("uvicorn", "fastapi")
"""Loggers Prefect's logging config gives a console handler of their own and cuts from the root."""

_FORMAT = "%(asctime)s %(levelname)-7s %(source)s: %(message)s"


class _Lines(logging.Formatter):
    """``time LEVEL source: message``, the source being Prefect's task or flow run name when it has one."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        record.source = f"{record.name} {run!r}" if run else record.name
        return super().format(record)


def _own(record: logging.LogRecord) -> bool:
    return record.name == _OWN or record.name.startswith(f"{_OWN}.")


class _ForeignLines(logging.Filter):
    """On a Prefect console handler: other libraries' lines only with ``--verbose``, never klingflow's."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose and not _own(record)


class _KlingflowConsole(logging.Handler):
    """klingflow's own records on the run's console (above a live view, which owns that console)."""

    def __init__(self, console: Console, level: int) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname.lower()}: {message}"
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


class RunLogs:
    """A context: every log record of the run into a log file; on the console only what is asked for.

    Example::

        with RunLogs(console, verbose=False) as logs:
            ...  # run
            logs.keep_as(run_dir(run_id) / "run.log")
    """

    def __init__(self, console: Console, *, verbose: bool, folder: Path) -> None:
        self.console, self.verbose = console, verbose
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f".run-{os.getpid()}-{time.time_ns()}.log"
        self._file = logging.FileHandler(self.path, encoding="utf-8", delay=True)
        self._file.setFormatter(_Lines(_FORMAT))
        self._file.setLevel(logging.INFO)
        self._own = _KlingflowConsole(console, logging.INFO if verbose else logging.WARNING)
        self._filter = _ForeignLines(verbose)
        self._attached: list[logging.Logger] = []
        self._own_level = logging.NOTSET
        self._target: Path | None = None

    def __enter__(self) -> RunLogs:
        own = logging.getLogger(_OWN)
        self._own_level = own.level
        own.setLevel(logging.INFO)  # step messages are INFO; the handlers decide where they show
        own.addHandler(self._own)
        self.apply()
        return self

    def apply(self) -> None:
        """Filter every console handler of Prefect's, and add the file next to them (idempotent)."""
        from_prefect = _prefect_console_handler_type()
        for name in ("", *_NOT_PROPAGATING):
            logger = logging.getLogger(name)
            if self._file not in logger.handlers:
                logger.addHandler(self._file)
                self._attached.append(logger)
            for handler in logger.handlers:
                if from_prefect is not None and isinstance(handler, from_prefect):
                    if self._filter not in handler.filters:
                        handler.addFilter(self._filter)
                    if self.verbose:  # print above a live view
                        handler.console = self.console  # type: ignore[attr-defined]

    def keep_as(self, target: Path) -> None:
        """Where the file is moved when the run ends (its run folder, once the run id is known)."""
        self._target = target

    @property
    def final_path(self) -> Path | None:
        """The log file after the run (None when nothing was logged)."""
        path = self._target or self.path
        return path if path.exists() else None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        logging.getLogger(_OWN).removeHandler(self._own)
        logging.getLogger(_OWN).setLevel(self._own_level)
        for logger in self._attached:
            logger.removeHandler(self._file)
        self._file.close()
        if self._target is not None and self.path.exists():
            self._target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.path, self._target)


def _prefect_console_handler_type() -> type[logging.Handler] | None:
    """Prefect's console handler class, if Prefect is imported (a cached run never imports it)."""
    handlers = sys.modules.get("prefect.logging.handlers")
    return getattr(handlers, "PrefectConsoleHandler", None) if handlers is not None else None
