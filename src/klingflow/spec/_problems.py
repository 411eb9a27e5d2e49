"""One problem found in a pipeline, and the translation of pydantic errors into such problems.

Validation never stops at the first mistake: every check appends a :class:`Problem`, and
:func:`raise_problems` sorts them by line and raises one ``SpecError``. A problem knows its line, step
and field separately, so the file name can be added at the end and tests can sort by position.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from klingflow.endpoints import ALIASES, ENDPOINTS, endpoints_with_field, suggest
from klingflow.errors import SpecError

__all__ = [
    "DocPath",
    "Problem",
    "did_you_mean",
    "field_names",
    "format_path",
    "model_at",
    "raise_problems",
    "spec_error",
    "validation_problems",
]

DocPath = tuple[str | int, ...]
"""A position in the pipeline document: mapping keys and list indexes, e.g. ``("steps", 2, "with")``."""

_UNKNOWN_KEY_HINTS = {"required": "an input is required exactly when it has no default"}
"""Keys people write that klingflow derives instead, with the reason in place of a list of fields."""


@dataclass(frozen=True)
class Problem:
    """What is wrong (``message``), where (``line``, ``step``, ``field``) and how to fix it (``hint``).

    ``order`` is the step's index in the file, so problems without line numbers (a pipeline built in
    Python) still sort in the order the steps were written.
    """

    message: str
    line: int | None = None
    step: str | None = None
    field: str | None = None
    hint: str = ""
    order: int = -1

    def text(self, shown: str) -> str:
        """``FILE:LINE step 'ID' field 'F': message``, leaving out the parts that are not known."""
        where = f"{shown}:{self.line}" if shown and self.line else shown
        head = " ".join(
            part
            for part in (
                where,
                f"step {self.step!r}" if self.step else "",
                f"field {self.field!r}" if self.field else "",
            )
            if part
        )
        text = f"{head}: {self.message}" if head else self.message
        return f"{text}\n    hint: {self.hint}" if self.hint else text


def spec_error(problems: Iterable[Problem], shown: str) -> SpecError:
    """One ``SpecError`` listing every distinct problem, sorted by line, then step, field and message."""
    ordered = sorted(
        set(problems), key=lambda p: (p.line or 0, p.order, p.step or "", p.field or "", p.message)
    )
    return SpecError("invalid pipeline", problems=list(dict.fromkeys(p.text(shown) for p in ordered)))


def raise_problems(problems: Sequence[Problem], shown: str) -> None:
    """Raise :func:`spec_error` when there is any problem; return quietly when there is none."""
    if problems:
        raise spec_error(problems, shown)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when something close exists, else an empty string."""
    guess = suggest(value, choices)
    return f"; did you mean {guess!r}?" if guess else ""


def format_path(path: Sequence[str | int]) -> str:
    """``("dynamic_masks", 0, "mask_url")`` -> ``dynamic_masks[0].mask_url``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _candidates(annotation: Any) -> list[Any]:
    """The concrete types an annotation allows: unions and ``Annotated`` unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [t for arg in typing.get_args(annotation) for t in _candidates(arg)]
    return [annotation]


def _descend(annotation: Any, part: str | int) -> Any:
    for candidate in _candidates(annotation):
        origin = typing.get_origin(candidate)
        if isinstance(part, int) and origin is list:
            return typing.get_args(candidate)[0]
        if isinstance(part, str) and origin is dict:
            return typing.get_args(candidate)[1]
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, info in candidate.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
    return None


def model_at(model: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model that describes the object at ``path`` inside ``model``, if one does."""
    annotation: Any = model
    for part in path:
        annotation = _descend(annotation, part)
    for candidate in _candidates(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def field_names(model: type[BaseModel]) -> list[str]:
    """The keys a user writes for ``model``: aliases where they exist (``with``, not ``with_``)."""
    return [info.alias or name for name, info in model.model_fields.items()]


def _supported_elsewhere(owner: str, key: str) -> list[str]:
    """Endpoints of ``owner``'s family and mode that take ``key`` (none when ``owner`` is no endpoint)."""
    if owner not in ENDPOINTS and owner not in ALIASES:
        return []
    return endpoints_with_field(owner, key)


def _message(error: Any, model: type[BaseModel], owner: str) -> tuple[str, str]:
    """A readable message and hint for one pydantic error dict."""
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    if kind == "missing":
        return f"required field is missing{f' ({owner} needs it)' if owner else ''}", ""
    if kind == "extra_forbidden":
        where = model_at(model, loc[:-1])
        names = field_names(where) if where else []
        key = str(loc[-1])
        hint = _UNKNOWN_KEY_HINTS.get(key) or ("allowed fields: " + ", ".join(names) if names else "")
        elsewhere = _supported_elsewhere(owner, key) if len(loc) == 1 else []
        if elsewhere:
            return f"unknown field: {owner} takes no {key!r}", f"{key} is taken by {', '.join(elsewhere)}"
        return "unknown field" + did_you_mean(key, names), hint
    message = error["msg"].removeprefix("Value error, ")
    if kind == "string_too_long" and isinstance(value, str):
        message += f"; it has {len(value)}"
    if isinstance(value, str | int | float | bool) and repr(value) not in message:
        shown = repr(value) if len(repr(value)) <= 40 else repr(f"{value}"[:34] + "...")
        message += f" (got {shown})"
    return message, ""


def validation_problems(
    exc: ValidationError,
    model: type[BaseModel],
    locate: Callable[[DocPath], tuple[int | None, str | None, str | None, int]],
    owner: str = "",
) -> list[Problem]:
    """Turn each error of ``exc`` into a :class:`Problem`.

    ``locate(loc)`` maps a pydantic ``loc`` to (line, step id, field, step index), because only the
    caller knows whether the validated object was a whole pipeline or one step's arguments. ``owner``
    names what needs a missing field (``text-to-video``).
    """
    problems = []
    for error in exc.errors():
        message, hint = _message(error, model, owner)
        line, step, field, order = locate(tuple(error["loc"]))
        problems.append(Problem(message, line=line, step=step, field=field, hint=hint, order=order))
    return problems
