"""Every error klingflow raises on purpose.

Each error says what went wrong (``message``), where (``context``: file, step, field, endpoint,
request id), how to fix it (``hint``) and carries a short kebab-case ``reference`` that the CLI
prints so that people can search for it. The CLI catches :class:`KlingflowError` at one boundary
and renders those fields; anything else keeps its traceback.

Hierarchy::

    KlingflowError
    ├── ConfigError                  a setting or credential is missing or wrong
    ├── SpecError                    a pipeline or argument is invalid (file, step, field)
    ├── BudgetError                  the run's estimated cost is over the limit (nothing was spent)
    ├── BackendError                 talking to fal (or the emulator) failed
    │   ├── SubmitError              the request never got a request id
    │   ├── EndpointError            fal answered with an error (status, request id)
    │   └── ResultTimeout            the request did not finish in time
    ├── StoreError                   a stored file is missing, truncated or corrupt
    └── MediaError                   ffmpeg failed or a file is not media (command, stderr tail)

Backend errors carry ``transient``: True for what a retry may fix (429, 5xx, connection errors,
timeouts), False for what it never will (401/403, 404, 422).
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BudgetError",
    "ConfigError",
    "EndpointError",
    "KlingflowError",
    "MediaError",
    "ResultTimeout",
    "SpecError",
    "StoreError",
    "SubmitError",
]


class KlingflowError(Exception):
    """Base of every error klingflow raises on purpose."""

    reference: str = "klingflow-error"

    def __init__(self, message: str, *, context: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.context = context
        self.hint = hint

    def __str__(self) -> str:
        parts = [f"{self.context}: {self.message}" if self.context else self.message]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class ConfigError(KlingflowError):
    """A setting, credential or home directory is missing or unusable."""

    reference = "config-error"


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

    ``transient`` says whether a retry may succeed; ``retry_after`` is the server's Retry-After in
    seconds when it sent one.
    """

    reference = "backend-error"

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        request_id: str | None = None,
        status_code: int | None = None,
        transient: bool = False,
        retry_after: float | None = None,
        hint: str = "",
    ) -> None:
        where = [p for p in (endpoint, f"request {request_id}" if request_id else "") if p]
        if status_code is not None:
            where.append(f"HTTP {status_code}")
        super().__init__(message, context=" ".join(where), hint=hint)
        self.endpoint = endpoint
        self.request_id = request_id
        self.status_code = status_code
        self.transient = transient
        self.retry_after = retry_after


class SubmitError(BackendError):
    """The request was not accepted: no request id exists, so nothing is being paid for."""

    reference = "submit-failed"


class EndpointError(BackendError):
    """fal accepted the call but answered with an error (validation, auth, model failure)."""

    reference = "endpoint-error"


class ResultTimeout(BackendError):
    """The request did not complete within the allowed time; it may still be running on fal."""

    reference = "result-timeout"


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
