"""Reading fal's schemas for media: which input fields take files, which outputs are files.

fal's OpenAPI marks no field as a file. fal-js adds ``x-fal-file-input`` to the schemas it publishes,
fal's own UI hints (``_fal_ui_field``, ``ui.field``) name images, masks, videos and audio, and every
file field is named ``*_url`` or ``*_urls``; any of the three makes a media input, so a schema refreshed
straight from fal (no fal-js marker) is read the same. An output is a file when its schema is fal's
``File`` (or ``Image``): an object with ``url`` and ``content_type`` or ``file_name``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from klingflow.endpoints._overlays import IMAGE_LIMITS, ImageLimits
from klingflow.endpoints._schema import resolve

__all__ = [
    "V1_FAMILIES",
    "MediaInput",
    "MediaKind",
    "collect_media",
    "file_target",
    "is_url",
    "kind_from_name",
    "plain_type",
    "set_media_input",
]

MediaKind = Literal["video", "image", "audio", "subtitles"]
"""The kinds of file a step takes or gives: fal's schemas name the first three, captions make the last."""

V1_FAMILIES = frozenset({"v1", "v1.5", "v1.6"})
"""The Kling families whose image fields are held to Kling's documented limits when the schema gives none."""

_UI_KINDS: dict[str, MediaKind] = {
    "image": "image",
    "image_mask": "image",
    "video": "video",
    "audio": "audio",
}


def kind_from_name(name: str) -> MediaKind | None:
    lowered = name.lower()
    for word, kind in (
        ("image", "image"),
        ("mask", "image"),
        ("video", "video"),
        ("audio", "audio"),
        ("voice", "audio"),
    ):
        if word in lowered:
            return kind  # type: ignore[return-value]
    return None


def media_kind(name: str, node: dict[str, Any]) -> MediaKind | None:
    """The media kind of a string property, or None when it is not a media input."""
    hint = node.get("_fal_ui_field") or (node.get("ui") or {}).get("field")
    if isinstance(hint, str) and hint in _UI_KINDS:
        return _UI_KINDS[hint]
    if node.get("x-fal-file-input") or name.endswith(("_url", "_urls")):
        limits = node.get("x-fal") or {}
        return kind_from_name(name) or ("image" if "min_width" in limits else None)
    return None


@dataclass(frozen=True)
class MediaInput:
    """One media input field: its kind and fal's file limits (``x-fal``), if the schema gives any."""

    kind: MediaKind
    limits: dict[str, Any]

    def image_limits(self, family: str, path: str) -> ImageLimits | None:
        """The limits a local image for this field is checked against before upload, or None."""
        if self.kind != "image":
            return None
        if self.limits:
            return ImageLimits.from_fal(self.limits)
        if family in V1_FAMILIES and "mask" not in path:
            return IMAGE_LIMITS
        return None


def plain_type(node: dict[str, Any]) -> str | None:
    if "anyOf" in node:
        kinds = [option.get("type") for option in node["anyOf"] if option.get("type") != "null"]
        return kinds[0] if kinds else None
    kind = node.get("type")
    return kind if isinstance(kind, str) else None


def is_file_schema(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    target = resolve(node, defs)
    properties = target.get("properties", {})
    return (
        target
        if "url" in properties and ("content_type" in properties or "file_name" in properties)
        else None
    )


def file_target(node: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The File schema a property holds and whether it is a list of them."""
    options = node.get("anyOf", [node])
    for option in options:
        if option.get("type") == "array" and option.get("items"):
            target = is_file_schema(option["items"], defs)
            if target is not None:
                return target, True
        target = is_file_schema(option, defs)
        if target is not None:
            return {**target, "$ref": option.get("$ref", "")}, False
    return None, False


def collect_media(
    schema: dict[str, Any], defs: dict[str, Any], prefix: str, found: dict[str, MediaInput], depth: int
) -> None:
    if depth > 4:
        return
    properties: dict[str, Any] = schema.get("properties", {})
    order = [name for name in schema.get("x-fal-order-properties", []) if name in properties]
    for name in order + [name for name in properties if name not in order]:
        node, path = properties[name], f"{prefix}{name}"
        for option in node.get("anyOf", [node]):
            if option.get("type") == "null":
                continue
            item = option.get("items", option) if option.get("type") == "array" else option
            kind = media_kind(name, item) if item.get("type") == "string" else None
            if kind is None and option.get("type") == "string":
                kind = media_kind(name, option)
            if kind is not None:
                found[path] = MediaInput(kind, dict(item.get("x-fal") or option.get("x-fal") or {}))
                break
            nested = resolve(item, defs)
            if nested.get("properties"):
                collect_media(nested, defs, f"{path}.", found, depth + 1)
                break


def is_url(value: str) -> bool:
    """Whether a media value is fetched by fal itself (http, https or a data: URI), not a local file."""
    return value.startswith(("http://", "https://", "data:"))


def set_media_input(document: Any, path: str, value: Any) -> None:
    """Set ``value`` at a :func:`media_inputs` path such as ``dynamic_masks[0].mask_url`` in a JSON body."""
    keys: list[Any] = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    for key in keys[:-1]:
        document = document[key]
    document[keys[-1]] = value
