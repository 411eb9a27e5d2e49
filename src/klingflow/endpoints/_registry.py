"""The endpoint registry: every fal endpoint klingflow knows, and the functions that work on any of them.

An :class:`EndpointInfo` wraps one :class:`~klingflow.endpoints._catalog.EndpointRecord` (vendored or
refreshed) and derives, on first use, what the rest of klingflow asks of an endpoint: its input and
output models (built from fal's schemas, :mod:`klingflow.endpoints._schema`), the media inputs it
consumes (by fal-js's ``x-fal-file-input`` marker, fal's ``_fal_ui_field``/``ui`` hint, or a
``*_url``/``*_urls`` name, nested ones included) with fal's file limits, the files and values it
produces (every ``File`` field of the output by its own name), and its price rule. Nothing is built
for endpoints a pipeline does not use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel

from klingflow.endpoints._catalog import EndpointRecord, record_of, refreshed_ids, snapshot_ids
from klingflow.endpoints._enums import suggest
from klingflow.endpoints._media import (
    MediaInput,
    MediaKind,
    collect_media,
    file_target,
    kind_from_name,
    plain_type,
)
from klingflow.endpoints._overlays import ImageLimits, check_overlays, overlay_names
from klingflow.endpoints._pricing import PriceRule
from klingflow.endpoints._schema import model_from_schema
from klingflow.errors import SpecError
from klingflow.settings import klingflow_home

__all__ = [
    "ALIASES",
    "ENDPOINTS",
    "EndpointInfo",
    "ValueOutput",
    "canonical_arguments",
    "endpoints_with_field",
    "estimate_seconds",
    "forget_endpoint",
    "get_endpoint",
    "input_dict",
    "media_inputs",
    "media_limits",
    "output_files",
    "parse_output",
    "validate_input",
]

ValueOutput = Literal["number", "text"]

_V1 = "fal-ai/kling-video/v1"
ALIASES: dict[str, str] = {
    "text-to-video": f"{_V1}/standard/text-to-video",
    "image-to-video": f"{_V1}/standard/image-to-video",
    "ai-avatar": f"{_V1}/standard/ai-avatar",
    "effects": f"{_V1}/standard/effects",
    "tts": f"{_V1}/tts",
}
"""The seed's short names, each a Kling v1 standard endpoint (or TTS), exactly as before the registry."""


class EndpointInfo:
    """What klingflow knows about one fal endpoint, derived from its record on first use.

    ``consumes`` maps input fields holding media to their kind; a dotted name such as
    ``dynamic_masks.mask_url`` or ``elements.frontal_image_url`` reaches into a list of objects (see
    :func:`media_inputs`). ``produces`` maps output fields holding a ``File`` (or a list of them, named in
    ``many``) to their kind; ``values`` the other outputs (``duration``, ``voice_id``).
    """

    def __init__(self, record: EndpointRecord, alias: str | None = None) -> None:
        self.record = record
        self.id = record.id
        self.alias = alias or record.id
        self.title = record.title or record.id

    def __repr__(self) -> str:
        return f"EndpointInfo({self.id!r})"

    @property
    def price(self) -> PriceRule | None:
        """The price rule, or None when no price is known (plans say ``unknown``, never $0)."""
        return self.record.price

    @property
    def sha256(self) -> str | None:
        """The sha256 of the schemas this endpoint is validated with (recorded in the ledger)."""
        return self.record.sha256

    def _schemas(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.record.input is None or self.record.output is None:
            raise SpecError(
                f"no schema is known for endpoint {self.id!r}"
                + ("" if self.record.live else " (fal no longer lists it)"),
                hint=f"`klingflow endpoints refresh {self.id}` fetches it from fal, if fal serves it",
            )
        return self.record.input, self.record.output

    @cached_property
    def _class_prefix(self) -> str:
        parts = self.id.removeprefix("fal-ai/").replace(".", "").split("/")
        return "".join(part.replace("-", " ").title().replace(" ", "") for part in parts)

    @cached_property
    def input_model(self) -> type[BaseModel]:
        """The input model, built from the input schema on first use."""
        return model_from_schema(self._class_prefix, self._schemas()[0])

    @cached_property
    def output_model(self) -> type[BaseModel]:
        """The output model, built from the output schema on first use."""
        return model_from_schema(self._class_prefix, self._schemas()[1], output=True)

    @cached_property
    def fields(self) -> frozenset[str]:
        """The input's top-level field names."""
        return frozenset(self._schemas()[0].get("properties", {}))

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """The input's top-level defaults, as the schema states them."""
        properties = self._schemas()[0].get("properties", {})
        return {name: node["default"] for name, node in properties.items() if "default" in node}

    @cached_property
    def required(self) -> frozenset[str]:
        """The input's required fields."""
        return frozenset(self._schemas()[0].get("required", []))

    @cached_property
    def media(self) -> dict[str, MediaInput]:
        """Every media input by (dotted) path, with its kind and fal's limits."""
        schema = self._schemas()[0]
        found: dict[str, MediaInput] = {}
        collect_media(schema, schema.get("$defs", {}), "", found, depth=0)
        return found

    @property
    def consumes(self) -> dict[str, MediaKind]:
        """Media input paths and their kinds."""
        return {path: media.kind for path, media in self.media.items()}

    @cached_property
    def _outputs(self) -> tuple[dict[str, MediaKind], frozenset[str], dict[str, ValueOutput]]:
        schema = self._schemas()[1]
        defs = schema.get("$defs", {})
        files: dict[str, MediaKind] = {}
        many: set[str] = set()
        values: dict[str, ValueOutput] = {}
        properties: dict[str, Any] = schema.get("properties", {})
        order = [name for name in schema.get("x-fal-order-properties", []) if name in properties]
        for name in order + [name for name in properties if name not in order]:
            node = properties[name]
            target, listed = file_target(node, defs)
            if target is not None:
                files[name] = kind_from_name(name) or kind_from_name(json.dumps(target)) or "video"
                if listed:
                    many.add(name)
            elif plain_type(node) in ("number", "integer"):
                values[name] = "number"
            elif plain_type(node) == "string":
                values[name] = "text"
        return files, frozenset(many), values

    @property
    def produces(self) -> dict[str, MediaKind]:
        """Output fields holding a file (or a list of files, see ``many``) and their kinds."""
        return self._outputs[0]

    @property
    def many(self) -> frozenset[str]:
        """The ``produces`` fields that hold a list of files (``images``)."""
        return self._outputs[1]

    @property
    def values(self) -> dict[str, ValueOutput]:
        """The outputs that are not files (``duration``, ``voice_id``), with their type."""
        return self._outputs[2]

    @cached_property
    def overlays(self) -> list[str]:
        """The cross-field rules (``endpoints._overlays``) this endpoint's inputs are held to."""
        return overlay_names(self.id, self.fields)

    def generates_audio(self, arguments: Mapping[str, Any]) -> bool:
        """Whether a call with these (defaults-filled) arguments makes a video with sound."""
        if "generate_audio" in self.fields:
            return bool(arguments.get("generate_audio"))
        # avatars speak their audio, lipsync videos their audio or text; other video endpoints are silent
        return "audio" in self.produces or self.record.family == "lipsync" or self.record.mode == "ai-avatar"


_infos: dict[tuple[str, str], EndpointInfo] = {}


def forget_endpoint(endpoint_id: str | None = None) -> None:
    """Drop cached infos (one, or all), so the next lookup reads a refreshed record."""
    for cached in list(_infos):
        if endpoint_id is None or cached[1] == endpoint_id:
            del _infos[cached]


def _lookup(endpoint_id: str) -> EndpointInfo | None:
    home = klingflow_home()
    cached = (str(home), endpoint_id)
    if cached not in _infos:
        record = record_of(endpoint_id, home)
        if record is None:
            return None
        alias = next((name for name, target in ALIASES.items() if target == endpoint_id), None)
        _infos[cached] = EndpointInfo(record, alias)
    return _infos[cached]


class _Endpoints(Mapping[str, EndpointInfo]):
    """Every known endpoint by fal id: the snapshot's and the home's refreshed ones, looked up lazily."""

    def _ids(self) -> list[str]:
        return sorted(set(snapshot_ids()) | set(refreshed_ids(klingflow_home())))

    def __getitem__(self, endpoint_id: str) -> EndpointInfo:
        info = _lookup(endpoint_id)
        if info is None:
            raise KeyError(endpoint_id)
        return info

    def __contains__(self, endpoint_id: object) -> bool:
        return isinstance(endpoint_id, str) and (
            endpoint_id in set(snapshot_ids()) or record_of(endpoint_id, klingflow_home()) is not None
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids())

    def __len__(self) -> int:
        return len(self._ids())


ENDPOINTS: Mapping[str, EndpointInfo] = _Endpoints()
"""Every known endpoint, keyed by fal endpoint id (vendored snapshot plus refreshed copies)."""


def get_endpoint(name: str) -> EndpointInfo:
    """Look an endpoint up by fal id or alias; an unknown name raises ``SpecError`` with a suggestion."""
    info = _lookup(ALIASES.get(name, name))
    if info is not None:
        return info
    guess = suggest(name, [*ALIASES, *ENDPOINTS])
    raise SpecError(
        f"unknown endpoint {name!r}" + (f"; did you mean {guess!r}?" if guess else ""),
        hint="short names: " + ", ".join(ALIASES) + "; `klingflow endpoints list` shows every fal endpoint id"
        f" klingflow knows, and `klingflow endpoints refresh {name}` fetches one it has not vendored",
    )


def endpoints_with_field(endpoint: str, field: str) -> list[str]:
    """Other endpoints of ``endpoint``'s family and mode whose input has ``field`` (an end frame that
    only the pro tier takes, say), for an error that says where the field is supported."""
    info = get_endpoint(endpoint)
    found = []
    for other in ENDPOINTS:
        record = record_of(other, klingflow_home())
        if (
            other != info.id
            and record is not None
            and record.family == info.record.family
            and record.mode == info.record.mode
            and field in (record.input or {}).get("properties", {})
        ):
            found.append(other)
    return found


def validate_input(endpoint: str, arguments: Mapping[str, Any]) -> BaseModel:
    """Validate ``arguments`` for ``endpoint`` and return the input model, defaults filled.

    Bad arguments raise pydantic's ``ValidationError``: its ``errors()`` (loc, msg, type) are what fal's
    own 422 body carries, and enum messages include the did-you-mean. The schema's checks come first,
    then the endpoint's cross-field overlays.
    """
    info = get_endpoint(endpoint)
    model = info.input_model.model_validate(dict(arguments))
    if info.overlays:
        check_overlays(info.id, info.input_model.__name__, info.fields, canonical_arguments(model))
    return model


def parse_output(endpoint: str, data: Mapping[str, Any]) -> BaseModel:
    """Parse fal's answer for ``endpoint``; fields fal adds later are kept, not refused."""
    return get_endpoint(endpoint).output_model.model_validate(dict(data))


def output_files(endpoint: str, output: BaseModel) -> list[tuple[str, str, Any]]:
    """Every file of a parsed output as ``(name, field, File)``: ``video``, ``images[1]``, ..."""
    info = get_endpoint(endpoint)
    found: list[tuple[str, str, Any]] = []
    dumped = output.model_dump(by_alias=True)
    for field in info.produces:
        value = getattr(output, field, None) if hasattr(output, field) else dumped.get(field)
        if value is None:
            continue
        if field in info.many:
            found.extend((f"{field}[{index}]", field, item) for index, item in enumerate(value))
        else:
            found.append((field, field, value))
    return found


def canonical_arguments(model: BaseModel) -> dict[str, Any]:
    """The input as fal receives it, defaults filled and unset options left out.

    Two inputs that mean the same thing give the same dict (``duration: 5`` and ``"5"``, a missing
    ``cfg_scale`` and ``0.5``), which is what a cache key needs.
    """
    return model.model_dump(mode="json", exclude_none=True, by_alias=True)


def input_dict(info: EndpointInfo, validated_input: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """An input as fal receives it (a model of ``info``, or arguments validated now)."""
    if isinstance(validated_input, info.input_model):
        return canonical_arguments(validated_input)
    if isinstance(validated_input, BaseModel):
        wanted, got = info.input_model.__name__, type(validated_input).__name__
        raise TypeError(f"{info.alias} takes {wanted}, not {got}")
    return canonical_arguments(validate_input(info.id, validated_input))


def _walk(value: Any, parts: list[str], path: str) -> Iterator[tuple[str, Any]]:
    if value is None:
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, parts, f"{path}[{index}]")
    elif not parts:
        yield path, value
    elif isinstance(value, dict):
        name = parts[0]
        yield from _walk(value.get(name), parts[1:], f"{path}.{name}" if path else name)


def media_inputs(
    endpoint: str, validated_input: BaseModel | Mapping[str, Any]
) -> list[tuple[str, str, MediaKind]]:
    """Every media URL in an input as ``(field path, url, kind)``, nested ones included.

    Paths index lists, e.g. ``input_image_urls[1]`` and ``dynamic_masks[0].mask_url``, so a caller can
    upload local files or hash the media behind each URL and say which field a problem is in.
    """
    info = get_endpoint(endpoint)
    data = input_dict(info, validated_input)
    return [
        (path, url, kind)
        for name, kind in info.consumes.items()
        for path, url in _walk(data, name.split("."), "")
        if isinstance(url, str)
    ]


def estimate_seconds(endpoint: str, validated_input: BaseModel | Mapping[str, Any]) -> float | None:
    """Expected output length: the requested ``duration``, or None where the input does not set it
    (ai-avatar and lipsync follow their inputs; TTS follows its text)."""
    duration = input_dict(get_endpoint(endpoint), validated_input).get("duration")
    try:
        return None if duration is None else float(duration)
    except (TypeError, ValueError):
        return None


def media_limits(endpoint: str, path: str) -> ImageLimits | None:
    """The image limits a local file at ``path`` (``image_url``, ``input_image_urls[1]``) must meet."""
    info = get_endpoint(endpoint)
    slot = re.sub(r"\[\d+\]", "", path)
    media = info.media.get(slot)
    return None if media is None else media.image_limits(info.record.family, slot)
