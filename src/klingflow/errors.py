"""Every error klingflow raises on purpose, and the one rule that says which backend errors are transient.

Each error says what went wrong (``message``), where (``context``: file, step, field, endpoint,
request id), how to fix it (``hint``) and carries a short kebab-case ``reference`` that the CLI
prints so that people can search for it. The CLI catches :class:`KlingflowError` at one boundary
and renders those fields; anything else keeps its traceback.

Hierarchy::

    KlingflowError
    ├── ConfigError                  a setting or credential is missing or wrong
    ├── SpecError                    a pipeline or argument is invalid (file, step, field)
    ├── BudgetError                  the run's estimated cost is over the limit (nothing was spent)
    ├── BackendError                 talking to fal (or the emulator) failed; endpoint, request id, phase
    │   ├── RateLimited              408 / 409 / 429: try again later (retry_after)        transient
    │   ├── ServerError              5xx                                                   transient
    │   ├── ConnectionLost           transport error, timeout or truncated transfer         transient
    │   ├── SubmitAmbiguous          a submit fal may have accepted: its answer was lost or 5xx
    │   ├── RequestFailed            fal finished the request with an error                transient
    │   ├── RequestCancelled         the request was cancelled (by someone else)
    │   ├── Rejected                 any other 4xx: a retry will never help
    │   │   ├── Unauthorized         401 / 403: the key
    │   │   ├── InvalidInput         422: fal's validation detail
    │   │   └── NotFound             404 for an endpoint
    │   ├── RequestGone              404 for a request id: fal no longer knows it
    │   ├── ResultLost               the result file can no longer be fetched (4xx on download)
    │   └── ResultTimeout            the step's timeout expired; the request was cancelled
    ├── StoreError                   a stored file is missing, truncated or corrupt
    ├── MediaError                   ffmpeg failed or a file is not media (command, stderr tail)
    ├── LedgerError                  the ledger or a run manifest cannot be written or read
    ├── StepFailed                   one step failed; carries its ledger row
    └── PipelineFailed               some steps failed; carries everything the run did produce

Like httpx's ``map_httpcore_exceptions``, :func:`error_for_status` is the one table from an HTTP
status to an error type, and :data:`TRANSIENT` with :func:`is_transient` the one rule for what a
retry may fix. Callers match on types, never on status codes.
"""

from __future__ import annotations

import signal
from typing import Any, Literal

__all__ = [
    "BatchFailed",
    "TRANSIENT",
    "BackendError",
    "BudgetError",
    "ConfigError",
    "ConnectionLost",
    "InvalidInput",
    "KlingflowError",
    "LedgerError",
    "MediaError",
    "NotFound",
    "Phase",
    "PipelineFailed",
    "RateLimited",
    "Rejected",
    "RequestCancelled",
    "RequestFailed",
    "RequestGone",
    "ResultLost",
    "ResultTimeout",
    "RunInterrupted",
    "ServerError",
    "SpecError",
    "StepFailed",
    "StoreError",
    "SubmitAmbiguous",
    "Unauthorized",
    "error_for_status",
    "is_transient",
]

Phase = Literal["upload", "submit", "status", "result", "download", "cancel"]
"""Which call to fal an error came from: what decides whether repeating it can cost money."""


class KlingflowError(Exception):
    """Base of every error klingflow raises on purpose."""

    reference: str = "klingflow-error"
    exit_code: int = 1
    """The command line's exit status for it (a usage or configuration mistake: 2, like typer's)."""

    def __init__(self, message: str, *, context: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self._context = context
        self.hint = hint

    @property
    def context(self) -> str:
        """Where it went wrong: file, step, field, endpoint, request id."""
        return self._context

    def __str__(self) -> str:
        parts = [f"{self.context}: {self.message}" if self.context else self.message]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class ConfigError(KlingflowError):
    """A setting, credential or home directory is missing or unusable."""

    reference = "config-error"
    exit_code = 2


class SpecError(KlingflowError):
    """An argument or pipeline is invalid; ``problems`` lists every problem found, not just one."""

    reference = "invalid-spec"

    def __init__(
        self, message: str, *, problems: list[str] | None = None, context: str = "", hint: str = ""
    ) -> None:
        self.problems = problems or [message]
        if problems and len(problems) > 1:
            message = f"{len(problems)} errors:\n" + "\n".join(f"  - {p}" for p in problems)
        elif problems:
            message = problems[0]
        super().__init__(message, context=context, hint=hint)


class BudgetError(KlingflowError):
    """The plan's uncached estimate exceeds the budget; refused before any submission."""

    reference = "over-budget"


class BackendError(KlingflowError):
    """Talking to fal or the emulator failed.

    ``endpoint`` and ``request_id`` may be filled in after the error was made (a download error
    learns its request id one level up): the printed context is computed when it is shown, so it
    always names them. ``retry_after`` is the server's Retry-After in seconds when it sent one;
    ``error_type`` is fal's own classification (``request_timeout``, ``runner_disconnected``, ...).
    """

    reference = "backend-error"

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        request_id: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        phase: Phase | None = None,
        error_type: str | None = None,
        hint: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.endpoint = endpoint
        self.request_id = request_id
        self.status_code = status_code
        self.retry_after = retry_after
        self.phase = phase
        self.error_type = error_type

    @property
    def context(self) -> str:
        where = [self.endpoint] if self.endpoint else []
        if self.request_id:
            where.append(f"request {self.request_id}")
        if self.phase:
            where.append(f"({self.phase})")
        if self.status_code is not None:
            where.append(f"HTTP {self.status_code}")
        return " ".join(where)


class RateLimited(BackendError):
    """fal asked us to slow down (429, or 408/409); wait at least ``retry_after`` and try again."""

    reference = "rate-limited"


class ServerError(BackendError):
    """fal (or a gateway in front of it) answered 5xx."""

    reference = "server-error"


class ConnectionLost(BackendError):
    """The connection failed, timed out or was cut before a whole answer arrived."""

    reference = "connection-lost"


class SubmitAmbiguous(BackendError):
    """A submit whose outcome is unknown: the body was sent, then the answer was lost, cut, timed
    out, a 5xx, or had no request id. fal may have accepted (and will bill) it, so it is never
    resent blindly: klingflow asks fal's request history first."""

    reference = "submit-ambiguous"


class RequestFailed(BackendError):
    """fal completed the request with an error (``error_type`` says which); a new submit may succeed."""

    reference = "request-failed"


class RequestCancelled(BackendError):
    """fal reports the request as cancelled: it will not produce a result, and nobody asked us to redo it."""

    reference = "request-cancelled"


class Rejected(BackendError):
    """fal refused the call (a 4xx other than rate limiting): repeating it unchanged never helps."""

    reference = "rejected"


class Unauthorized(Rejected):
    """401 / 403: the key is missing, wrong, or may not call this endpoint."""

    reference = "unauthorized"


class InvalidInput(Rejected):
    """422: fal's validation rejected the arguments (the message lists each field)."""

    reference = "invalid-input"


class NotFound(Rejected):
    """404 for an endpoint id: no such model on this host."""

    reference = "not-found"


class RequestGone(BackendError):
    """404 for a request id: fal no longer knows the request (expired, or never existed there)."""

    reference = "request-gone"


class ResultLost(BackendError):
    """The result file answered 4xx: it is gone for good (expired from the CDN)."""

    reference = "result-lost"


class ResultTimeout(BackendError):
    """The request did not complete within the step's timeout; it was cancelled."""

    reference = "result-timeout"


TRANSIENT: tuple[type[BackendError], ...] = (RateLimited, ServerError, ConnectionLost, RequestFailed)
"""The backend errors a retry may fix. Everything else fails the step at once."""


def is_transient(error: BaseException) -> bool:
    """True when waiting and repeating the call may succeed (see :data:`TRANSIENT`)."""
    return isinstance(error, TRANSIENT)


def error_for_status(status: int, *, request_known: bool = False) -> type[BackendError]:
    """The error type for an HTTP error status: the one table klingflow keeps.

    ``request_known`` says the URL named a request id (status, result, cancel): a 404 there means
    fal no longer knows the request, not that the endpoint does not exist.
    """
    if status in (408, 409, 429):
        return RateLimited
    if status >= 500:
        return ServerError
    if status in (401, 403):
        return Unauthorized
    if status == 422:
        return InvalidInput
    if status == 404:
        return RequestGone if request_known else NotFound
    return Rejected


class StoreError(KlingflowError):
    """A downloaded or stored file is missing, truncated or does not match its checksum."""

    reference = "store-error"


class MediaError(KlingflowError):
    """ffmpeg failed, or a file is not the media it should be.

    ``stderr_tail`` holds ffmpeg's last lines so the cause is visible without re-running.
    """

    reference = "media-error"

    def __init__(self, message: str, *, context: str = "", hint: str = "", stderr_tail: str = "") -> None:
        if stderr_tail:
            message = f"{message}\nffmpeg said:\n{stderr_tail}"
        super().__init__(message, context=context, hint=hint)
        self.stderr_tail = stderr_tail


class LedgerError(KlingflowError):
    """The ledger (or a run's manifest) cannot be written, read or queried; ``context`` names the file."""

    reference = "ledger-error"


class StepFailed(KlingflowError):
    """A step failed; ``record`` is its ledger row (a :class:`~klingflow.ledger.StepRecord`, failed)."""

    reference = "step-failed"

    def __init__(self, record: Any) -> None:
        super().__init__(record.error or "step failed", context=f"step '{record.step_label}'")
        self.record = record


class PipelineFailed(KlingflowError):
    """Some steps failed; ``result`` (a :class:`~klingflow.engine.RunResult`) holds everything that ran."""

    reference = "pipeline-failed"

    def __init__(self, result: Any) -> None:
        lines = [f"{step}: {reason}" for step, reason in result.failures.items()]
        super().__init__(
            f"{len(result.failures)} step(s) did not complete:\n  " + "\n  ".join(lines),
            context=f"pipeline '{result.pipeline}'",
            hint="fix the cause and run again: completed steps are cached and not paid twice",
        )
        self.result = result


class BatchFailed(KlingflowError):
    """Some rows of a batch did not complete; the others did and are kept. ``result`` is the
    :class:`~klingflow.batch.BatchResult` (its table says which rows, at which step, why)."""

    reference = "batch-failed"

    def __init__(self, result: Any) -> None:
        failed = result.failed
        rows = ", ".join(str(n) for n in failed["row"].tolist()[:20]) + (", ..." if len(failed) > 20 else "")
        message = f"{len(failed)} of {len(result.table)} rows did not complete (rows {rows})"
        if result.stopped_by is not None:
            message = (
                f"interrupted by {signal.Signals(result.stopped_by).name}: no new request was sent; {message}"
            )
        super().__init__(
            message,
            context=f"pipeline '{result.pipeline}' (batch {result.batch_id})",
            hint="run the same command again: completed rows are cached and requests still running at fal "
            "are collected without paying again (--only-failed runs just the rows that did not complete)",
        )
        self.result = result
        if result.stopped_by is not None:  # the shell's convention for a process ended by a signal
            self.exit_code = 128 + result.stopped_by


class RunInterrupted(KlingflowError):
    """A run stopped on request (Ctrl-C, SIGTERM, a cancelled flow run) before every step finished.

    ``result`` (a :class:`~klingflow.engine.RunResult`) holds what ran, with the unfinished steps
    as ``interrupted`` rows; ``still_running`` the requests fal accepted that this run did not
    store (each an :class:`~klingflow.engine.OpenRequest`), which a re-run collects without paying
    again; ``cancelled`` those of them that were cancelled while still queued (nothing billed).
    """

    reference = "run-interrupted"

    def __init__(self, result: Any, signum: int, still_running: list[Any], cancelled: list[Any]) -> None:
        name = signal.Signals(signum).name
        lines = [f"{r.label}: request {r.request_id} ({r.endpoint})" for r in still_running]
        message = f"interrupted by {name}: no new request was sent"
        if cancelled:
            message += f"; {len(cancelled)} queued request(s) cancelled at fal (nothing billed)"
        if still_running:
            message += (
                f"; {len(still_running)} request(s) are still running at fal (not cancelled: fal bills "
                "work in progress):\n  " + "\n  ".join(lines)
            )
        super().__init__(
            message,
            context=f"pipeline '{result.pipeline}' (run {result.run_id})",
            hint="run the same command again (or `klingflow recover`) to collect them without paying again"
            if still_running
            else "run the same command again to go on: what completed is cached",
        )
        self.result, self.signum = result, signum
        self.still_running, self.cancelled = still_running, cancelled
        # The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM.
        self.exit_code = 128 + signum
