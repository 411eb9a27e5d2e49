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
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel

from klingflow.endpoints._catalog import EndpointRecord, record_of, refreshed_ids, snapshot_ids
from klingflow.endpoints._enums import suggest
from klingflow.endpoints._overlays import IMAGE_LIMITS, ImageLimits, check_overlays, overlay_names
from klingflow.endpoints._pricing import AVATAR_ASSUMED_SECONDS, PriceRule
from klingflow.endpoints._schema import model_from_schema, resolve
from klingflow.errors import ConfigError, SpecError
from klingflow.settings import klingflow_home, settings

__all__ = [
    "ALIASES",
    "ENDPOINTS",
    "PRICES_ENV",
    "EndpointInfo",
    "MediaInput",
    "MediaKind",
    "ValueOutput",
    "billed_cost",
    "canonical_arguments",
    "endpoints_with_field",
    "estimate_cost",
    "estimate_seconds",
    "forget_endpoint",
    "get_endpoint",
    "is_url",
    "media_inputs",
    "media_limits",
    "output_files",
    "parse_output",
    "set_media_input",
    "unit_price",
    "validate_input",
]

MediaKind = Literal["video", "image", "audio"]
ValueOutput = Literal["number", "text"]

PRICES_ENV = "KLINGFLOW_PRICES"
"""Environment variable: a JSON object of unit-price overrides, e.g. ``{"text-to-video": 0.05}``."""

_V1 = "fal-ai/kling-video/v1"
ALIASES: dict[str, str] = {
    "text-to-video": f"{_V1}/standard/text-to-video",
    "image-to-video": f"{_V1}/standard/image-to-video",
    "ai-avatar": f"{_V1}/standard/ai-avatar",
    "effects": f"{_V1}/standard/effects",
    "tts": f"{_V1}/tts",
}
"""The seed's short names, each a Kling v1 standard endpoint (or TTS), exactly as before the registry."""

_UI_KINDS: dict[str, MediaKind] = {
    "image": "image",
    "image_mask": "image",
    "video": "video",
    "audio": "audio",
}


def _kind_from_name(name: str) -> MediaKind | None:
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


def _media_kind(name: str, node: dict[str, Any]) -> MediaKind | None:
    """The media kind of a string property, or None when it is not a media input."""
    hint = node.get("_fal_ui_field") or (node.get("ui") or {}).get("field")
    if isinstance(hint, str) and hint in _UI_KINDS:
        return _UI_KINDS[hint]
    if node.get("x-fal-file-input") or name.endswith(("_url", "_urls")):
        limits = node.get("x-fal") or {}
        return _kind_from_name(name) or ("image" if "min_width" in limits else None)
    return None


@dataclass(frozen=True)
class MediaInput:
    """One media input field: its kind and fal's file limits (``x-fal``), if the schema gives any."""

    kind: MediaKind
    limits: dict[str, Any]

    def image_limits(self, endpoint_id: str, path: str) -> ImageLimits | None:
        """The limits a local image for this field is checked against before upload, or None."""
        if self.kind != "image":
            return None
        if self.limits:
            return ImageLimits.from_fal(self.limits)
        if endpoint_id.startswith(_V1) and "mask" not in path:
            return IMAGE_LIMITS
        return None


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
        _collect_media(schema, schema.get("$defs", {}), "", found, depth=0)
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
        for name, node in schema.get("properties", {}).items():
            target, listed = _file_target(node, defs)
            if target is not None:
                files[name] = _kind_from_name(name) or _kind_from_name(json.dumps(target)) or "video"
                if listed:
                    many.add(name)
            elif _plain_type(node) in ("number", "integer"):
                values[name] = "number"
            elif _plain_type(node) == "string":
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


def _plain_type(node: dict[str, Any]) -> str | None:
    if "anyOf" in node:
        kinds = [option.get("type") for option in node["anyOf"] if option.get("type") != "null"]
        return kinds[0] if kinds else None
    kind = node.get("type")
    return kind if isinstance(kind, str) else None


def _is_file(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    target = resolve(node, defs)
    properties = target.get("properties", {})
    return (
        target
        if "url" in properties and ("content_type" in properties or "file_name" in properties)
        else None
    )


def _file_target(node: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The File schema a property holds and whether it is a list of them."""
    options = node.get("anyOf", [node])
    for option in options:
        if option.get("type") == "array" and option.get("items"):
            target = _is_file(option["items"], defs)
            if target is not None:
                return target, True
        target = _is_file(option, defs)
        if target is not None:
            return {**target, "$ref": option.get("$ref", "")}, False
    return None, False


def _collect_media(
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
            kind = _media_kind(name, item) if item.get("type") == "string" else None
            if kind is None and option.get("type") == "string":
                kind = _media_kind(name, option)
            if kind is not None:
                found[path] = MediaInput(kind, dict(item.get("x-fal") or option.get("x-fal") or {}))
                break
            nested = resolve(item, defs)
            if nested.get("properties"):
                _collect_media(nested, defs, f"{path}.", found, depth + 1)
                break


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


def _input_dict(info: EndpointInfo, validated_input: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
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
    data = _input_dict(info, validated_input)
    return [
        (path, url, kind)
        for name, kind in info.consumes.items()
        for path, url in _walk(data, name.split("."), "")
        if isinstance(url, str)
    ]


def estimate_seconds(endpoint: str, validated_input: BaseModel | Mapping[str, Any]) -> float | None:
    """Expected output length: the requested ``duration``, or None where the input does not set it
    (ai-avatar and lipsync follow their inputs; TTS follows its text)."""
    duration = _input_dict(get_endpoint(endpoint), validated_input).get("duration")
    try:
        return None if duration is None else float(duration)
    except (TypeError, ValueError):
        return None


def _checked_prices(prices: Mapping[str, Any], where: str) -> dict[str, float]:
    checked: dict[str, float] = {}
    for name, price in prices.items():
        endpoint_id = ALIASES.get(name, name)
        if endpoint_id not in ENDPOINTS:
            guess = suggest(name, [*ALIASES, *ENDPOINTS])
            raise ConfigError(
                f"price for unknown endpoint {name!r}" + (f"; did you mean {guess!r}?" if guess else ""),
                context=where,
            )
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise ConfigError(f"price for {name!r} must be a number >= 0, got {price!r}", context=where)
        checked[endpoint_id] = float(price)
    return checked


def _env_prices() -> dict[str, float]:
    raw = settings().prices.strip()
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc}", context=PRICES_ENV, hint='e.g. {"tts": 0.008}') from exc
    if not isinstance(table, dict):
        raise ConfigError("must be a JSON object of endpoint -> unit price", context=PRICES_ENV)
    return _checked_prices(table, PRICES_ENV)


def unit_price(endpoint: str, prices: Mapping[str, float] | None = None) -> float | None:
    """USD per unit for ``endpoint``'s base rate: ``prices`` (alias or id keys) first, then the JSON in
    ``KLINGFLOW_PRICES``, then the price rule's; None when no price is known. Unknown endpoint names in
    either raise ``ConfigError``, so a typo cannot silently keep the old price."""
    info = get_endpoint(endpoint)
    for table in (_checked_prices(prices or {}, "prices"), _env_prices()):
        if info.id in table:
            return table[info.id]
    return None if info.price is None else info.price.usd


def _override(info: EndpointInfo, prices: Mapping[str, float] | None) -> float | None:
    for table in (_checked_prices(prices or {}, "prices"), _env_prices()):
        if info.id in table:
            return table[info.id]
    return None


def estimate_cost(
    endpoint: str,
    validated_input: BaseModel | Mapping[str, Any],
    *,
    output_seconds: float | None = None,
    input_seconds: float | None = None,
    prices: Mapping[str, float] | None = None,
    assumed_seconds: float = AVATAR_ASSUMED_SECONDS,
) -> float | None:
    """Estimated fal charge in USD (rounded to a millionth of a dollar), or None when it is unknown.

    Unknown means no price rule (and no override), or a count that needs a length not known yet (a
    lipsync's input video given as a URL). Per-second endpoints are billed for the requested
    ``duration`` (a 5 s request that returns 5.04 s costs 5 s); where the input sets no duration
    (ai-avatar) the caller passes ``output_seconds`` once known, and ``assumed_seconds`` stands in before.
    ``prices`` overrides base unit prices as :func:`unit_price` describes.
    """
    info = get_endpoint(endpoint)
    arguments = _input_dict(info, validated_input)
    override = _override(info, prices)
    rule = info.price
    if rule is None:
        if override is None:
            return None
        rule = PriceRule(unit="request", usd=override)
    units = rule.units(
        arguments, output_seconds=output_seconds, input_seconds=input_seconds, assumed_seconds=assumed_seconds
    )
    if units is None:
        return None
    return round(rule.rate(arguments, base=override) * units, 6)


def billed_cost(
    endpoint: str, arguments: Mapping[str, Any] | None, units: float, fal_unit_price: float | None = None
) -> float | None:
    """What fal billed: its billable units times the unit price of the variant the input selected.

    ``fal_unit_price`` (fal's pricing API) replaces the rule's base rate; a variant's rate (audio on,
    4K) comes from the rule, since fal's pricing API states one price per endpoint. Without the
    ``arguments`` (``klingflow recover`` knows only a request id), the schema's defaults stand in.
    """
    info = get_endpoint(endpoint)
    rule = info.price
    if rule is None:
        return None if fal_unit_price is None else round(units * fal_unit_price, 6)
    given = dict(arguments) if arguments is not None else info.defaults
    return round(units * rule.rate(given, base=fal_unit_price), 6)


def is_url(value: str) -> bool:
    """Whether a media value is fetched by fal itself (http, https or a data: URI), not a local file."""
    return value.startswith(("http://", "https://", "data:"))


def set_media_input(document: Any, path: str, value: Any) -> None:
    """Set ``value`` at a :func:`media_inputs` path such as ``dynamic_masks[0].mask_url`` in a JSON body."""
    keys: list[Any] = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    for key in keys[:-1]:
        document = document[key]
    document[keys[-1]] = value


def media_limits(endpoint: str, path: str) -> ImageLimits | None:
    """The image limits a local file at ``path`` (``image_url``, ``input_image_urls[1]``) must meet."""
    info = get_endpoint(endpoint)
    slot = re.sub(r"\[\d+\]", "", path)
    media = info.media.get(slot)
    return None if media is None else media.image_limits(info.id, slot)
