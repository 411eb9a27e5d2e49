"""An endpoint's input schema as rows people read: field, type, required, default, allowed values, limits.

``klingflow endpoints show`` prints these rows (a table on a terminal, lines elsewhere). They are read
from the JSON Schema klingflow validates with, so they say exactly what a pipeline may pass; objects
in lists (Kling's ``multi_prompt``, ``elements``) are opened one level, as ``multi_prompt[].duration``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["FieldRow", "field_rows", "shown_limits", "shown_values"]

_MANY_VALUES = 8
"""Enums longer than this are shortened to their first values and a count (effect scenes: ~200)."""

_SIZE_KEYS = frozenset({"max_file_size", "min_file_size"})
_LIMIT_WORDS = {
    "minimum": ">= {}",
    "maximum": "<= {}",
    "exclusiveMinimum": "> {}",
    "exclusiveMaximum": "< {}",
    "minLength": "at least {} chars",
    "maxLength": "at most {} chars",
    "minItems": "at least {} items",
    "maxItems": "at most {} items",
}


@dataclass(frozen=True)
class FieldRow:
    """One input field as ``klingflow endpoints show`` prints it."""

    name: str
    type: str
    required: bool
    default: str
    values: str
    limits: str


def _options(node: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The non-null alternatives of a property and whether null is allowed."""
    options = node.get("anyOf") or node.get("oneOf") or [node]
    kept = [option for option in options if option.get("type") != "null"]
    return kept or [node], len(kept) < len(options)


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _type(node: dict[str, Any]) -> str:
    name = _ref_name(node)
    if name:
        return name
    kind = node.get("type")
    if kind == "array":
        return f"list of {_type(node.get('items') or {})}"
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    return str(kind or "any")


def _size(value: Any) -> str:
    if isinstance(value, int | float) and value >= 1024 * 1024:
        return f"{value / (1024 * 1024):g} MB"
    return str(value)


def shown_values(values: list[Any]) -> str:
    """Allowed values, shortened when there are many."""
    shown = [json.dumps(value) if not isinstance(value, str) else value for value in values]
    if len(shown) > _MANY_VALUES:
        return ", ".join(shown[:_MANY_VALUES]) + f", ... ({len(shown)} values)"
    return ", ".join(shown)


def shown_limits(node: dict[str, Any]) -> str:
    """Numeric, length and size limits of one schema node, fal's file limits (``x-fal``) included."""
    parts = [word.format(node[key]) for key, word in _LIMIT_WORDS.items() if key in node]
    items = node.get("items")
    if isinstance(items, dict):
        parts += [word.format(items[key]) for key, word in _LIMIT_WORDS.items() if key in items]
        node = {**items, **node}
    fal = node.get("x-fal") or {}
    parts += [f"{key} {_size(value) if key in _SIZE_KEYS else value}" for key, value in fal.items()]
    return "; ".join(parts)


def _row(name: str, node: dict[str, Any], required: bool) -> FieldRow:
    options, _nullable = _options(node)
    values: list[Any] = []
    for option in options:
        values += option.get("enum", []) + ([option["const"]] if "const" in option else [])
    values += node.get("enum", [])
    default = node["default"] if "default" in node else options[0].get("default")
    return FieldRow(
        name=name,
        type=" or ".join(dict.fromkeys(_type(option) for option in options)),
        required=required,
        default="" if default is None else json.dumps(default),
        values=shown_values(list(dict.fromkeys(values))),
        limits="; ".join(filter(None, (shown_limits(option) for option in options))),
    )


def _ordered(schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties") or {}
    order = [name for name in schema.get("x-fal-order-properties", []) if name in properties]
    return order + [name for name in properties if name not in order]


def _nested(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema a property holds (directly or as list items), if it is one of ``$defs``."""
    for option in _options(node)[0]:
        target = option.get("items", option) if option.get("type") == "array" else option
        name = _ref_name(target)
        if name and isinstance(defs.get(name), dict) and defs[name].get("properties"):
            return dict(defs[name])
    return None


def field_rows(schema: dict[str, Any], *, prefix: str = "", depth: int = 0) -> list[FieldRow]:
    """Every input field of ``schema`` in fal's order, nested objects one level deep."""
    defs = schema.get("$defs") or {}
    required = set(schema.get("required", []))
    rows = []
    for name in _ordered(schema):
        node = schema["properties"][name]
        rows.append(_row(prefix + name, node, name in required))
        nested = _nested(node, defs)
        if nested is not None and depth < 1:
            listed = any(option.get("type") == "array" for option in _options(node)[0])
            rows += field_rows(
                {**nested, "$defs": defs}, prefix=f"{prefix}{name}{'[]' if listed else ''}.", depth=depth + 1
            )
    return rows
