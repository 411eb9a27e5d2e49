"""The emulator's behaviour switches: each fal behaviour is on by default and can be turned off.

One :class:`EmulatorOptions` is fixed when a server starts (keyword arguments of
:class:`~klingflow.emulator.server.EmulatorServer`, flags of ``klingflow emulator serve``, or the
``KLINGFLOW_EMULATOR_*`` variables below, which both the foreground and the embedded emulator read)
and can be changed while it runs through the admin route ``POST /_emulator/config`` (a partial JSON
object); ``POST /_emulator/reset`` puts back the options it started with.

=================================  ==============================  ====================================
option                             environment variable            default (fal's behaviour)
=================================  ==============================  ====================================
``validation``                     KLINGFLOW_EMULATOR_VALIDATION   ``model``: invalid input is accepted,
                                                                   goes COMPLETED, result answers 422;
                                                                   ``submit``: 422 at submit
``result_retention``               ..._RESULT_RETENTION            3600 s after completion
``large_result_retention``         ..._LARGE_RESULT_RETENTION      360 s for results >= 10 KB
``media_expiry``                   KLINGFLOW_EMULATOR_MEDIA_EXPIRY none: files are kept
``render``                         KLINGFLOW_EMULATOR_RENDER       ``full``; ``prerendered`` = benchmark
``webhook_attempts``               ..._WEBHOOK_ATTEMPTS            5 deliveries at most
``webhook_backoff``                ..._WEBHOOK_BACKOFF             0.5 s, doubling per attempt
=================================  ==============================  ====================================
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from klingflow.errors import ConfigError
from klingflow.settings import settings

__all__ = ["EmulatorOptions", "RenderMode", "Validation"]

Validation = Literal["model", "submit"]
RenderMode = Literal["full", "prerendered"]


class EmulatorOptions(BaseModel):
    """Switches for the fal behaviours the emulator reproduces (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    validation: Validation = Field(
        "model",
        description="'model': an invalid input is accepted and its result answers 422 (fal); "
        "'submit': the submit itself answers 422.",
    )
    result_retention: float = Field(3600.0, gt=0, description="Seconds a result is kept after completion.")
    large_result_retention: float = Field(
        360.0, gt=0, description="Seconds a result of large_result_bytes or more is kept."
    )
    large_result_bytes: int = Field(10 * 1024, ge=1, description="Size from which a result is 'large'.")
    media_expiry: float | None = Field(
        None, gt=0, description="Default seconds output and uploaded files live (None: kept)."
    )
    render: RenderMode = Field(
        "full", description="'full': render every request; 'prerendered': benchmark mode."
    )
    webhook_attempts: int = Field(5, ge=1, le=20, description="Deliveries tried per webhook.")
    webhook_backoff: float = Field(0.5, ge=0, description="Seconds before the 2nd delivery; doubles.")

    @classmethod
    def from_env(cls, **given: Any) -> EmulatorOptions:
        """Options from the ``KLINGFLOW_EMULATOR_<NAME>`` settings, with ``given`` (non-None) winning."""
        configured = settings()
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            value = getattr(configured, f"emulator_{name}", None)
            if value is not None:
                values[name] = value
        values.update({k: v for k, v in given.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"invalid emulator option: {problems}",
                hint="check the serve flags and the KLINGFLOW_EMULATOR_* variables",
            ) from None
