"""References between steps: ``${inputs.NAME}``, ``${steps.ID.OUTPUT}`` and ``${item}``.

A string that is exactly one reference is *typed*: at run time the referenced object replaces the
whole string (a list, a number, a media file). A reference among other text is *interpolated* with
``str()``. Inside a YAML list, a typed reference whose value is a list is spliced into the surrounding
list, so ``inputs: ["${steps.opening.video}", "${steps.shots.video}"]`` is one flat list of videos even
though ``shots`` ran once per item.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from klingflow.errors import SpecError
from klingflow.spec._problems import DocPath

__all__ = ["NO_ITEM", "Found", "Reference", "find_references", "parse_reference", "resolve", "scan"]

_PATTERN = re.compile(r"\$\{([^{}]*)\}")
_INPUT = re.compile(r"inputs\.([A-Za-z_]\w*)")
_STEP = re.compile(r"steps\.([A-Za-z_][\w-]*)\.([A-Za-z_]\w*)")
_FORMS = "${inputs.NAME}, ${steps.ID.OUTPUT} or ${item}"


class _NoItem:
    """Marks a :func:`resolve` call made outside a foreach step (``None`` may be a real item)."""

    def __repr__(self) -> str:
        return "NO_ITEM"


NO_ITEM: Any = _NoItem()


@dataclass(frozen=True)
class Reference:
    """One parsed ``${...}``.

    ``kind`` is ``"input"`` (``name`` is the input), ``"step"`` (``name`` is the step id and
    ``output`` one of its outputs: ``video``, ``audio``, ``image`` or ``duration``) or ``"item"``
    (the current element of a foreach step).
    """

    kind: Literal["input", "step", "item"]
    name: str | None = None
    output: str | None = None

    @property
    def step_id(self) -> str | None:
        """The referenced step's id, or None for an input or item reference."""
        return self.name if self.kind == "step" else None

    def __str__(self) -> str:
        if self.kind == "item":
            return "${item}"
        if self.kind == "input":
            return f"${{inputs.{self.name}}}"
        return f"${{steps.{self.name}.{self.output}}}"


def parse_reference(expression: str) -> Reference:
    """Parse the text between ``${`` and ``}``; raise ``ValueError`` saying which forms exist."""
    text = expression.strip()
    if text == "item":
        return Reference("item")
    if match := _INPUT.fullmatch(text):
        return Reference("input", match.group(1))
    if match := _STEP.fullmatch(text):
        return Reference("step", match.group(1), match.group(2))
    raise ValueError(f"'${{{expression}}}' is not a reference; write {_FORMS}")


@dataclass(frozen=True)
class Found:
    """A reference (or a malformed one, with ``error``) at ``path`` inside a value.

    ``whole`` is True when the string is exactly the reference (a typed reference).
    """

    path: DocPath
    reference: Reference | None
    whole: bool
    error: str = ""


def scan(value: Any, path: DocPath = ()) -> Iterator[Found]:
    """Every reference in nested dicts, lists and strings, malformed ones included, in document order."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from scan(item, (*path, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from scan(item, (*path, index))
    elif isinstance(value, str):
        whole = _PATTERN.fullmatch(value) is not None
        for match in _PATTERN.finditer(value):
            try:
                yield Found(path, parse_reference(match.group(1)), whole)
            except ValueError as exc:
                yield Found(path, None, whole, str(exc))
        if "${" in _PATTERN.sub("", value):
            yield Found(path, None, False, f"unclosed '${{' in {value!r}; write {_FORMS}")


def find_references(value: Any) -> list[Reference]:
    """The references in ``value`` (nested dicts, lists, strings), in document order.

    Raises ``SpecError`` for text that starts a reference but is not one, so a typo such as
    ``${step.a.video}`` never passes as literal text.
    """
    found = []
    for item in scan(value):
        if item.reference is None:
            raise SpecError(item.error)
        found.append(item.reference)
    return found


def _value_of(
    reference: Reference, inputs: Mapping[str, Any], outputs: Mapping[str, Mapping[str, Any]], item: Any
) -> Any:
    try:
        if reference.kind == "input":
            return inputs[reference.name or ""]
        if reference.kind == "step":
            return outputs[reference.name or ""][reference.output or ""]
    except KeyError as exc:
        raise SpecError(f"no value for {reference}", hint="run the steps it depends on first") from exc
    if item is NO_ITEM:
        raise SpecError("${item} used outside a step with foreach")
    return item


def resolve(
    value: Any,
    *,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Mapping[str, Any]],
    item: Any = NO_ITEM,
) -> Any:
    """Replace every reference in ``value`` (nested dicts and lists included) by its value.

    ``inputs`` holds the pipeline's resolved inputs, ``outputs[step_id][output]`` whatever the engine
    stored for a finished step (a ``Path``, a list of them for a foreach step, a float duration), and
    ``item`` the current element in a foreach step. A typed reference returns the object itself; an
    interpolated one uses ``str()``; a typed reference to a list inside a list is spliced in. Pure: it
    reads nothing and changes nothing. A missing value raises ``SpecError``.

    Example::

        resolve({"inputs": ["${steps.a.video}", "${steps.b.video}"]}, inputs={},
                outputs={"a": {"video": "a.mp4"}, "b": {"video": ["b1.mp4", "b2.mp4"]}})
        # {"inputs": ["a.mp4", "b1.mp4", "b2.mp4"]}
    """
    if isinstance(value, Mapping):
        return {key: resolve(v, inputs=inputs, outputs=outputs, item=item) for key, v in value.items()}
    if isinstance(value, list | tuple):
        resolved: list[Any] = []
        for element in value:
            new = resolve(element, inputs=inputs, outputs=outputs, item=item)
            typed = isinstance(element, str) and _PATTERN.fullmatch(element) is not None
            if typed and isinstance(new, list | tuple):
                resolved.extend(new)
            else:
                resolved.append(new)
        return resolved
    if not isinstance(value, str) or "${" not in value:
        return value
    references = find_references(value)
    if _PATTERN.fullmatch(value):
        return _value_of(references[0], inputs, outputs, item)
    return _PATTERN.sub(
        lambda match: str(_value_of(parse_reference(match.group(1)), inputs, outputs, item)), value
    )
