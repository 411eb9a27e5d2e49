"""How to run: :class:`RunOptions`, and the one place they are resolved.

Options come in layers, and :func:`resolve_options` is the only function that combines them:

1. **explicit**: what the caller said (CLI flags, ``run_pipeline`` keywords, flow parameters);
2. **block**: a ``KlingDefaults`` Prefect block (concurrency, budget, output folder, arguments);
3. **pipeline file**: what the pipeline itself says (``max_cost_usd``);
4. **fallback**: the caller's own defaults (the CLI exports to ``./klingflow-out/NAME``);
5. **built-in**: :data:`BUILT_IN`.

For every option the first layer that gives it (not None) wins. Endpoint *arguments* follow the
same idea from the other side: the most specific wins, so a step's ``with`` beats the pipeline's
``defaults``, which beat a block's ``arguments``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from klingflow.backends.config import BackendKind
from klingflow.cache import Journal, Store
from klingflow.errors import ConfigError
from klingflow.settings import settings

if TYPE_CHECKING:
    from klingflow.spec import PipelineSpec

__all__ = [
    "FLOW_OPTIONS",
    "BUILT_IN",
    "AmbiguousSubmitPolicy",
    "RetryPolicy",
    "RunOptions",
    "ambiguous_submit_policy",
    "resolve_options",
]


AmbiguousSubmitPolicy = Literal["reconcile", "fail", "resubmit"]
"""What to do with a submit fal may have accepted (its answer was lost): see :class:`RetryPolicy`."""

_POLICIES: tuple[AmbiguousSubmitPolicy, ...] = get_args(AmbiguousSubmitPolicy)


def ambiguous_submit_policy(policy: str | None) -> AmbiguousSubmitPolicy | None:
    """An ``--on-ambiguous-submit`` value as :class:`RunOptions` takes it (None stays None).

    Any other word is a :class:`~klingflow.errors.ConfigError` naming the option (exit 2, with a
    hint) rather than the options model's validation traceback.
    """
    if policy is None:
        return None
    for known in _POLICIES:
        if policy == known:
            return known
    raise ConfigError(
        f"unknown policy {policy!r}",
        context="--on-ambiguous-submit",
        hint="use 'reconcile' (the default), 'fail' or 'resubmit'",
    )


class RetryPolicy(BaseModel):
    """Retries, by what they cost.

    Free calls (upload, status poll, result fetch, download, cancel, and a submit that provably
    never reached fal or was rate-limited) are retried on transient errors with backoff and jitter,
    never sooner than Retry-After, until ``free_deadline`` seconds have passed in that phase.
    A completed request's result fetch is retried until ``result_deadline`` (fal keeps a result
    one hour after it completes), since giving up on it loses a paid clip. ``retries`` counts only
    paid attempts: new submits after fal finished a request with an error.
    A submit whose answer was lost is looked up in fal's request history for up to
    ``reconcile_grace`` seconds (fal lists a request once it has ended, so this must cover a
    generation), polling every ``reconcile_poll`` seconds.
    """

    retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.25
    free_deadline: float = Field(default_factory=lambda: settings().free_deadline)
    result_deadline: float = Field(default_factory=lambda: settings().result_deadline)
    reconcile_grace: float = Field(default_factory=lambda: settings().reconcile_grace)
    reconcile_poll: float = Field(default_factory=lambda: settings().reconcile_poll)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1``; never less than the server's Retry-After."""
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        backoff *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(backoff, retry_after or 0.0)


class RunOptions(BaseModel):
    """How to run a pipeline. Every field is optional: None means "not given at this layer"."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: BackendKind | None = None
    key: SecretStr | None = Field(default=None, description="A fal key given in code (never logged).")
    connector: Callable[[Store], Any] | None = Field(
        default=None, description="Makes the FalBackend for a store (a FalCredentials block's get_backend)."
    )
    concurrency: int | None = Field(default=None, ge=1)
    refresh: bool | None = None
    max_cost_usd: float | None = Field(default=None, ge=0)
    allow_unknown_cost: bool | None = Field(
        default=None,
        description="With max_cost_usd: start even when a step's price is unknown (the budget then covers "
        "the known prices only).",
    )
    out_dir: Path | None = None
    retry: RetryPolicy | None = None
    store: Store | None = None
    journal: Journal | None = None
    prices: dict[str, float] | None = None
    claims: str | None = Field(default=None, description="'file' or a redis:// URL (else KLINGFLOW_CLAIMS).")
    on_ambiguous_submit: AmbiguousSubmitPolicy | None = Field(
        default=None,
        description="A submit fal may have accepted: 'reconcile' (ask fal's history, default), 'fail', "
        "or 'resubmit' (pay again, flagged possible_duplicate).",
    )
    cancel_queued: bool | None = Field(
        default=None,
        description="On Ctrl-C or SIGTERM, cancel requests still queued at fal (free; else "
        "KLINGFLOW_CANCEL_QUEUED). Running requests are never cancelled.",
    )
    arguments: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Default endpoint arguments under the pipeline's own (a block's)."
    )
    team_slot: Callable[[], AbstractAsyncContextManager[Any]] | None = Field(
        default=None,
        description="Holds one slot of the team's cap while a request is at fal (the Prefect layer's "
        "global concurrency limit, KLINGFLOW_TEAM_LIMIT); None: only this run's own cap.",
    )
    approve: list[str] | None = Field(
        default=None,
        description="Steps that wait for a person's approval before they are paid for (besides the steps "
        "the pipeline marks approve:).",
    )
    yes: bool | None = Field(default=None, description="Approve every approval gate unattended.")

    def given(self) -> dict[str, Any]:
        """The options this layer sets."""
        return {
            name: getattr(self, name) for name in type(self).model_fields if getattr(self, name) is not None
        }

    def flow_parameters(self) -> dict[str, Any]:
        """The options of :data:`FLOW_OPTIONS` this layer sets, as a flow run's JSON parameters."""
        return {
            name: str(value) if isinstance(value, Path) else value
            for name in FLOW_OPTIONS
            if (value := getattr(self, name)) is not None
        }


FLOW_OPTIONS: tuple[str, ...] = (
    "backend",
    "concurrency",
    "refresh",
    "max_cost_usd",
    "allow_unknown_cost",
    "out_dir",
    "on_ambiguous_submit",
    "cancel_queued",
    "approve",
    "yes",
)
"""The options a flow run takes as its parameters (JSON): each one a deployment, a schedule, the
Prefect UI's form and the command line can set. Every Prefect flow of klingflow derives these
parameters from :class:`RunOptions`' own fields (types, defaults, descriptions); the other
options (a key given in code, a store, a journal, a retry policy, a connector) travel in-process."""


BUILT_IN = RunOptions(concurrency=4, refresh=False, on_ambiguous_submit="reconcile")
"""What a run uses when no layer says otherwise (the retry policy: ``RetryPolicy()``, read from settings)."""


def resolve_options(
    explicit: RunOptions | None = None,
    *,
    block: RunOptions | None = None,
    pipeline: PipelineSpec | None = None,
    fallback: RunOptions | None = None,
) -> RunOptions:
    """Combine the layers (see the module docstring): for each option the first one given wins."""
    from_file = RunOptions(max_cost_usd=pipeline.max_cost_usd if pipeline is not None else None)
    resolved: dict[str, Any] = {}
    for layer in (explicit, block, from_file, fallback, BUILT_IN):
        for name, value in (layer.given() if layer is not None else {}).items():
            resolved.setdefault(name, value)
    resolved.setdefault("retry", RetryPolicy())
    resolved.setdefault("cancel_queued", settings().cancel_queued)
    return RunOptions.model_validate(resolved)
