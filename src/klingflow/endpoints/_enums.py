"""fal enum fields: refuse unknown values with a did-you-mean, list the values in JSON schema, and grow.

One helper, :class:`FalEnum`, used as ``Annotated[str, FalEnum(...)]`` metadata, covers every enum field.
It is a plain ``str`` in Python and on the wire (fal wants the exact string), an ``enum`` in the JSON
schema (a form renders it as a drop-down), and a ``PydanticCustomError`` of type ``enum`` whose message
suggests the closest known value. Pydantic's own ``Literal`` could do the first two, but its error
lists all 198 effect scenes and suggests nothing, and it cannot accept a value fal added after our list
was copied.

That last point is the extension setting: fal's effect scenes went from 5 to 198 in 18 months, so the
growing enums (:data:`EXTENSIBLE_ENUMS`) accept extra values from the environment variable
``KLINGFLOW_EXTRA_ENUM_VALUES`` and from :func:`allow_enum_values`. Both are read at validation time, so
setting them after import works. The user-facing description is the ``klingflow.endpoints`` docstring.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from klingflow.errors import ConfigError
from klingflow.settings import settings

__all__ = [
    "EXTENSIBLE_ENUMS",
    "EXTRA_ENUM_VALUES_ENV",
    "FalEnum",
    "allow_enum_values",
    "extra_enum_values",
    "load_values",
    "reset_enum_values",
    "suggest",
]

EXTRA_ENUM_VALUES_ENV = "KLINGFLOW_EXTRA_ENUM_VALUES"
"""Environment variable, e.g. ``effect_scene=new_scene,other_scene;voice_id=new_voice``."""

EXTENSIBLE_ENUMS = frozenset({"effect_scene", "voice_id", "shot_type"})
"""The enums fal keeps growing (``shot_type`` gained ``intelligent`` after the vendored schemas). The
fixed ones (duration, aspect_ratio, ...) change only with a new model version, which gets new endpoint
ids; a refresh (``klingflow endpoints refresh``) picks up any other change."""

_allowed_by_call: dict[str, set[str]] = {}


def load_values(name: str) -> tuple[str, ...]:
    """Read one enum list (one value a line, fal's order) from the package data."""
    text = (files("klingflow") / "data" / name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def suggest(value: str, choices: Iterable[str]) -> str | None:
    """Return the closest choice to ``value``, ignoring case (``aot`` finds ``AOT``), or None."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=5)
    if not close:
        return None
    # Among close matches, prefer the longest shared beginning: people get the start right, so
    # '16:10' means '16:9' rather than '1:1' (which difflib alone ranks higher).
    best = max(close, key=lambda choice: len(os.path.commonprefix([choice, value.lower()])))
    return by_lower[best]


def _check_extensible(field: str, where: str) -> None:
    if field not in EXTENSIBLE_ENUMS:
        guess = suggest(field, EXTENSIBLE_ENUMS)
        raise ConfigError(
            f"{field!r} is not an enum that can be extended"
            + (f"; did you mean {guess!r}?" if guess else ""),
            context=where,
            hint="extensible enums: " + ", ".join(sorted(EXTENSIBLE_ENUMS)),
        )


def allow_enum_values(field: str, values: Iterable[str]) -> None:
    """Accept ``values`` for the enum ``field`` (``effect_scene`` or ``voice_id``) from now on.

    For a value fal added after klingflow's list was copied; documented in the ``klingflow.endpoints``
    docstring. A bare string counts as one value, not as its characters. Raises ``ConfigError`` for a
    field that cannot be extended. :func:`reset_enum_values` undoes every call.
    """
    _check_extensible(field, "allow_enum_values")
    new = [values] if isinstance(values, str) else list(values)
    _allowed_by_call.setdefault(field, set()).update(v.strip() for v in new if v.strip())


def reset_enum_values() -> None:
    """Forget every value added by :func:`allow_enum_values` (the environment variable stays in force)."""
    _allowed_by_call.clear()


def _values_from_env() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for group in settings().extra_enum_values.split(";"):
        if not group.strip():
            continue
        field, sep, values = group.partition("=")
        if not sep:
            raise ConfigError(
                f"{group.strip()!r} has no '='",
                context=EXTRA_ENUM_VALUES_ENV,
                hint="write field=value,value;field=value, e.g. effect_scene=new_scene;voice_id=new_voice",
            )
        _check_extensible(field.strip(), EXTRA_ENUM_VALUES_ENV)
        found.setdefault(field.strip(), set()).update(v.strip() for v in values.split(",") if v.strip())
    return found


def extra_enum_values(field: str) -> frozenset[str]:
    """Values added for ``field`` by the environment variable and by :func:`allow_enum_values`, now."""
    return frozenset(_allowed_by_call.get(field, set()) | _values_from_env().get(field, set()))


@dataclass(frozen=True)
class FalEnum:
    """``Annotated[str, FalEnum(field, values)]``: a string that must be one of ``values``.

    ``accept_int`` converts an int to its string first, because fal's duration enum is ``"5" | "10"`` while
    YAML and people write ``5``; ``7`` then fails like any unknown value, listing the allowed ones.
    """

    field: str
    values: tuple[str, ...]
    accept_int: bool = False

    def allowed(self) -> tuple[str, ...]:
        """The known values in fal's order, then any added through the extension setting."""
        if self.field not in EXTENSIBLE_ENUMS:
            return self.values
        return self.values + tuple(sorted(extra_enum_values(self.field) - set(self.values)))

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema: core_schema.CoreSchema = core_schema.no_info_after_validator_function(
            self._check, handler(source)
        )
        if self.accept_int:
            schema = core_schema.no_info_before_validator_function(_int_to_str, schema)
        return schema

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "enum": list(self.allowed())}

    def _check(self, value: str) -> str:
        allowed = self.allowed()
        if value in allowed:
            return value
        guess = suggest(value, allowed)
        message = f"{value!r} is not a known {self.field}" + (f"; did you mean {guess!r}?" if guess else ".")
        if len(allowed) <= 10:
            message += " Allowed values: " + ", ".join(map(repr, allowed)) + "."
        elif all(v.isdigit() for v in allowed) and [int(v) for v in allowed] == list(
            range(int(allowed[0]), int(allowed[0]) + len(allowed))
        ):
            message += f" Allowed values: {allowed[0]!r} to {allowed[-1]!r}."
        if self.field in EXTENSIBLE_ENUMS:
            message += (
                f" If fal added it after klingflow's list, allow it with"
                f" {EXTRA_ENUM_VALUES_ENV}='{self.field}={value}' (see klingflow.endpoints)."
            )
        raise PydanticCustomError("enum", message)


def _int_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
