"""Every ``KLINGFLOW_*`` environment variable, in one pydantic-settings model.

Settings are read when asked for (:func:`settings`), not once at import: a test, a notebook or a
Prefect worker may change the environment between runs, and the values are cheap to read. Each
setting is documented here and nowhere else; modules take the value they need from
``settings()`` instead of reading ``os.environ`` themselves.

Example::

    from klingflow.settings import klingflow_home, settings

    settings().claims      # "file", or "redis://host:6379/0"
    klingflow_home()       # ~/.klingflow, created on first use
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "klingflow_home", "settings"]


class Settings(BaseSettings):
    """klingflow's settings; each field is read from ``KLINGFLOW_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="KLINGFLOW_", extra="ignore")

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


def settings() -> Settings:
    """The settings as the environment says now."""
    return Settings()


def klingflow_home() -> Path:
    """The klingflow home directory (``KLINGFLOW_HOME``, default ``~/.klingflow``), created if needed."""
    home = settings().home.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
