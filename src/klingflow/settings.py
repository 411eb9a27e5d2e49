"""Every ``KLINGFLOW_*`` environment variable, in one pydantic-settings model.

Settings are read when asked for (:func:`settings`), not once at import: a test, a notebook or a
Prefect worker may change the environment between runs. Building the model costs about 2 ms (a
profile of a 200-step run found it called per step, for prices), so :func:`settings` keeps the
model built for the current ``KLINGFLOW_*`` variables and builds a new one when they change. Each
setting is documented here and nowhere else; modules take the value they need from
``settings()`` instead of reading ``os.environ`` themselves.

Example::

    from klingflow.settings import klingflow_home, settings

    settings().claims      # "file", or "redis://host:6379/0"
    klingflow_home()       # ~/.klingflow, created on first use
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from klingflow.errors import ConfigError

__all__ = ["Settings", "klingflow_home", "settings"]


class Settings(BaseSettings):
    """klingflow's settings; each field is read from ``KLINGFLOW_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="KLINGFLOW_", extra="ignore", frozen=True)

    home: Path = Field(
        default=Path("~/.klingflow"),
        description="Where the media store, journal, claims, ledger, run manifests and emulator files live.",
    )
    claims: str = Field(
        default="file",
        description="Who generates a cache key right now: 'file' (one machine) or a redis:// URL.",
    )
    backend_id: str | None = Field(
        default=None,
        description="Overrides the backend identity recorded in cache keys (e.g. share one cache "
        "between two emulator hosts).",
    )
    prices: str = Field(
        default="",
        description='JSON object of unit prices that override fal\'s, e.g. {"text-to-video": 0.05}.',
    )
    extra_enum_values: str = Field(
        default="",
        description="Newer enum values to accept: field=value,value;field=value.",
    )
    offline: bool = Field(
        default=False,
        description="Never fetch an endpoint's schema or price from fal's platform API: a pipeline naming "
        "an endpoint klingflow has neither vendored nor refreshed is refused instead (--offline).",
    )
    cancel_queued: bool = Field(
        default=False,
        description="On Ctrl-C or SIGTERM, cancel the run's requests still waiting in fal's queue "
        "(free); running ones are always left to finish and be collected by a re-run.",
    )
    team_limit: str | None = Field(
        default=None,
        description="The name of a Prefect global concurrency limit: every fal request of every run that "
        "reports to that Prefect server holds one of its slots from submit to result, inside the run's own "
        "cap (one fal account's limit, shared by every machine; `klingflow team-limit NAME --slots N`).",
    )
    team_lease: float = Field(
        default=60.0,
        ge=60,
        description="Seconds a team slot's lease lasts unrenewed (its holder renews it while it runs): how "
        "soon a killed holder's slot comes back, plus the Prefect server's check every 15 s (Prefect's "
        "server takes no lease under 60 s).",
    )
    free_deadline: float = Field(
        default=600.0,
        gt=0,
        description="Seconds a free call (poll, result fetch, download, upload) is retried.",
    )
    result_deadline: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds a completed request's result fetch is retried (fal keeps results 1 hour).",
    )
    reconcile_grace: float = Field(
        default=900.0,
        ge=0,
        description="Seconds to look for a lost submit in fal's request history before paying again.",
    )
    reconcile_poll: float = Field(default=5.0, gt=0, description="Seconds between two looks at that history.")
    ffmpeg: str | None = Field(
        default=None, description="The ffmpeg binary to run (default: PATH, else bundled)."
    )
    emulator_latency: float = Field(
        default=0.5, ge=0, description="Seconds each embedded-emulator request spends IN_PROGRESS."
    )
    emulator_workers: int = Field(default=4, ge=1, description="Requests the embedded emulator runs at once.")
    emulator_offline: bool = Field(
        default=False, description="The embedded emulator never fetches http(s) inputs."
    )
    emulator_validation: Literal["model", "submit"] | None = Field(
        default=None, description="Emulator: 'model' (fal: 422 on the result) or 'submit' (422 at submit)."
    )
    emulator_result_retention: float | None = Field(
        default=None, gt=0, description="Emulator: seconds a result is kept after completion (fal: 3600)."
    )
    emulator_large_result_retention: float | None = Field(
        default=None, gt=0, description="Emulator: the same for results of 10 KB or more (fal: 360)."
    )
    emulator_media_expiry: float | None = Field(
        default=None, gt=0, description="Emulator: seconds output and uploaded files are served (kept)."
    )
    emulator_render: Literal["full", "prerendered"] | None = Field(
        default=None, description="Emulator: 'full' renders every request, 'prerendered' is benchmark mode."
    )
    emulator_webhook_attempts: int | None = Field(
        default=None, ge=1, description="Emulator: webhook deliveries tried per request (5)."
    )
    emulator_webhook_backoff: float | None = Field(
        default=None, ge=0, description="Emulator: seconds before the second webhook delivery (0.5)."
    )
    prefect: Literal["local", "ephemeral"] = Field(
        default="local",
        description="Where runs report when no Prefect API is configured: 'local' (one background "
        "Prefect server per home, shared by every run, with a UI) or 'ephemeral' (Prefect's "
        "temporary in-process server, nothing kept).",
    )
    server_port: int = Field(
        default=4290,
        ge=1,
        le=65535,
        description="Preferred port of the local Prefect server (else a free one).",
    )
    server_idle_minutes: float = Field(
        default=60, ge=0, description="The local Prefect server stops after this long unused (0: never)."
    )
    server_start_timeout: float = Field(
        default=90,
        gt=0,
        description="Seconds to wait for the local Prefect server to answer when starting it.",
    )
    local_prefect_api_url: str | None = Field(
        default=None,
        description="Set by klingflow itself next to the PREFECT_API_URL it points at its local server, "
        "so that URL (inherited by a subprocess, say) is not taken for one the user configured.",
    )


def settings() -> Settings:
    """The settings as the environment says now; a bad value is a ConfigError naming its variable."""
    ours = tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("KLINGFLOW_")))
    return _settings_for(ours)


@functools.lru_cache(maxsize=16)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    """The model for one snapshot of the ``KLINGFLOW_*`` variables (read again by ``Settings()``)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [f"KLINGFLOW_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(
            "; ".join(problems), context="environment", hint="fix or unset the variable"
        ) from None


def klingflow_home() -> Path:
    """The klingflow home directory (``KLINGFLOW_HOME``, default ``~/.klingflow``), created if needed."""
    home = settings().home.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
