"""The endpoint registry and the functions that work on any endpoint: validate, parse, media, price."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from klingflow.endpoints._enums import suggest
from klingflow.endpoints._models import (
    AiAvatarInput,
    AiAvatarOutput,
    EffectsInput,
    ImageToVideoInput,
    TextToVideoInput,
    TtsInput,
    TtsOutput,
    VideoOutput,
)
from klingflow.errors import ConfigError, SpecError
from klingflow.settings import settings

__all__ = [
    "AVATAR_ASSUMED_SECONDS",
    "ENDPOINTS",
    "PRICES_ENV",
    "EndpointInfo",
    "MediaKind",
    "PriceUnit",
    "canonical_arguments",
    "estimate_cost",
    "estimate_seconds",
    "get_endpoint",
    "is_url",
    "media_inputs",
    "parse_output",
    "set_media_input",
    "unit_price",
    "validate_input",
]

MediaKind = Literal["video", "image", "audio"]
PriceUnit = Literal["second", "request"]

PRICES_ENV = "KLINGFLOW_PRICES"
"""Environment variable: a JSON object of unit-price overrides, e.g. ``{"text-to-video": 0.05}``."""

AVATAR_ASSUMED_SECONDS = 10.0
"""Output length assumed for an ai-avatar estimate before the audio's length is known (Kling v1 avatar
clips are reported to run up to about 10 s, so this errs high rather than low)."""


@dataclass(frozen=True)
class EndpointInfo:
    """What klingflow knows about one fal endpoint.

    ``consumes`` maps input fields holding media URLs to their kind; a dotted name such as
    ``dynamic_masks.mask_url`` reaches into a list of objects (see :func:`media_inputs`). ``produces`` maps
    output fields holding a ``File`` to its kind. The price is ``unit_price`` USD per ``price_unit``.
    """

    id: str
    alias: str
    title: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    consumes: dict[str, MediaKind] = field(hash=False)
    produces: dict[str, MediaKind] = field(hash=False)
    unit_price: float
    price_unit: PriceUnit


_V1 = "fal-ai/kling-video/v1"

ENDPOINTS: dict[str, EndpointInfo] = {
    info.id: info
    for info in (
        EndpointInfo(
            id=f"{_V1}/standard/text-to-video",
            alias="text-to-video",
            title="Kling 1.0 text to video",
            input_model=TextToVideoInput,
            output_model=VideoOutput,
            consumes={},
            produces={"video": "video"},
            unit_price=0.045,
            price_unit="second",
        ),
        EndpointInfo(
            id=f"{_V1}/standard/image-to-video",
            alias="image-to-video",
            title="Kling 1.0 image to video",
            input_model=ImageToVideoInput,
            output_model=VideoOutput,
            consumes={
                "image_url": "image",
                "tail_image_url": "image",
                "static_mask_url": "image",
                "dynamic_masks.mask_url": "image",
            },
            produces={"video": "video"},
            unit_price=0.045,
            price_unit="second",
        ),
        EndpointInfo(
            id=f"{_V1}/standard/ai-avatar",
            alias="ai-avatar",
            title="Kling 1.0 talking avatar from an image and audio",
            input_model=AiAvatarInput,
            output_model=AiAvatarOutput,
            consumes={"image_url": "image", "audio_url": "audio"},
            produces={"video": "video"},
            unit_price=0.0562,
            price_unit="second",
        ),
        EndpointInfo(
            id=f"{_V1}/standard/effects",
            alias="effects",
            title="Kling 1.0 video effect on one or two images",
            input_model=EffectsInput,
            output_model=VideoOutput,
            consumes={"input_image_urls": "image"},
            produces={"video": "video"},
            unit_price=0.045,
            price_unit="second",
        ),
        EndpointInfo(
            id=f"{_V1}/tts",
            alias="tts",
            title="Kling text to speech",
            input_model=TtsInput,
            output_model=TtsOutput,
            consumes={},
            produces={"audio": "audio"},
            unit_price=0.007,
            price_unit="request",
        ),
    )
}
"""Every supported endpoint, keyed by fal endpoint id. Prices: fal's public prices (kling-schema.md §5)."""

_BY_NAME = {**ENDPOINTS, **{info.alias: info for info in ENDPOINTS.values()}}


def get_endpoint(name: str) -> EndpointInfo:
    """Look an endpoint up by fal id or alias; an unknown name raises ``SpecError`` with a suggestion."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    guess = suggest(name, _BY_NAME)
    raise SpecError(
        f"unknown endpoint {name!r}" + (f"; did you mean {guess!r}?" if guess else ""),
        hint="known endpoints: " + ", ".join(info.alias for info in ENDPOINTS.values()),
    )


def validate_input(endpoint: str, arguments: Mapping[str, Any]) -> BaseModel:
    """Validate ``arguments`` for ``endpoint`` and return the input model, defaults filled.

    Bad arguments raise pydantic's ``ValidationError`` unchanged: its ``errors()`` (loc, msg, type) are
    what fal's own 422 body carries, and enum messages include the did-you-mean.
    """
    return get_endpoint(endpoint).input_model.model_validate(dict(arguments))


def parse_output(endpoint: str, data: Mapping[str, Any]) -> BaseModel:
    """Parse fal's answer for ``endpoint``; fields fal adds later are kept, not refused."""
    return get_endpoint(endpoint).output_model.model_validate(dict(data))


def canonical_arguments(model: BaseModel) -> dict[str, Any]:
    """The input as fal receives it, defaults filled and unset options left out.

    Two inputs that mean the same thing give the same dict (``duration: 5`` and ``"5"``, a missing
    ``cfg_scale`` and ``0.5``), which is what a cache key needs.
    """
    return model.model_dump(mode="json", exclude_none=True)


def _input_model(info: EndpointInfo, validated_input: BaseModel | Mapping[str, Any]) -> BaseModel:
    if isinstance(validated_input, info.input_model):
        return validated_input
    if isinstance(validated_input, BaseModel):
        wanted, got = info.input_model.__name__, type(validated_input).__name__
        raise TypeError(f"{info.alias} takes {wanted}, not {got}")
    return validate_input(info.id, validated_input)


def _walk(value: Any, parts: list[str], path: str) -> Iterator[tuple[str, Any]]:
    if value is None:
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, parts, f"{path}[{index}]")
    elif not parts:
        yield path, value
    else:
        name = parts[0]
        yield from _walk(getattr(value, name, None), parts[1:], f"{path}.{name}" if path else name)


def media_inputs(
    endpoint: str, validated_input: BaseModel | Mapping[str, Any]
) -> list[tuple[str, str, MediaKind]]:
    """Every media URL in an input as ``(field path, url, kind)``, nested ones included.

    Paths index lists, e.g. ``input_image_urls[1]`` and ``dynamic_masks[0].mask_url``, so a caller can
    upload local files or hash the media behind each URL and say which field a problem is in.
    """
    info = get_endpoint(endpoint)
    model = _input_model(info, validated_input)
    return [
        (path, url, kind)
        for name, kind in info.consumes.items()
        for path, url in _walk(model, name.split("."), "")
    ]


def estimate_seconds(endpoint: str, validated_input: BaseModel | Mapping[str, Any]) -> float | None:
    """Expected output length: the requested ``duration`` (5 or 10), or None where the input does not set
    it (ai-avatar follows its audio; TTS follows its text)."""
    duration = getattr(_input_model(get_endpoint(endpoint), validated_input), "duration", None)
    return None if duration is None else float(duration)


def _checked_prices(prices: Mapping[str, Any], where: str) -> dict[str, float]:
    checked: dict[str, float] = {}
    for name, price in prices.items():
        if name not in _BY_NAME:
            guess = suggest(name, _BY_NAME)
            raise ConfigError(
                f"price for unknown endpoint {name!r}" + (f"; did you mean {guess!r}?" if guess else ""),
                context=where,
            )
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise ConfigError(f"price for {name!r} must be a number >= 0, got {price!r}", context=where)
        checked[_BY_NAME[name].id] = float(price)
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


def unit_price(endpoint: str, prices: Mapping[str, float] | None = None) -> float:
    """USD per ``price_unit`` for ``endpoint``: ``prices`` (alias or id keys) first, then the JSON in
    ``KLINGFLOW_PRICES``, then fal's public price. Unknown endpoint names in either raise ``ConfigError``,
    so a typo cannot silently keep the old price."""
    info = get_endpoint(endpoint)
    for table in (_checked_prices(prices or {}, "prices"), _env_prices()):
        if info.id in table:
            return table[info.id]
    return info.unit_price


def estimate_cost(
    endpoint: str,
    validated_input: BaseModel | Mapping[str, Any],
    *,
    output_seconds: float | None = None,
    prices: Mapping[str, float] | None = None,
    assumed_seconds: float = AVATAR_ASSUMED_SECONDS,
) -> float:
    """Estimated fal charge in USD, rounded to a millionth of a dollar so that sums read cleanly.

    Per-second endpoints are billed for the requested ``duration`` (a 5 s request that returns 5.04 s
    costs 5 s). Where the input sets no duration (ai-avatar, whose length follows its audio) the caller
    passes ``output_seconds`` once known; before that, ``assumed_seconds`` stands in. TTS is billed per
    request. ``prices`` overrides unit prices as :func:`unit_price` describes.
    """
    info = get_endpoint(endpoint)
    price = unit_price(info.id, prices)
    if info.price_unit == "request":
        return round(price, 6)
    seconds = estimate_seconds(info.id, validated_input)
    if seconds is None:
        seconds = assumed_seconds if output_seconds is None else output_seconds
    return round(price * seconds, 6)


def is_url(value: str) -> bool:
    """Whether a media value is fetched by fal itself (http, https or a data: URI), not a local file."""
    return value.startswith(("http://", "https://", "data:"))


def set_media_input(document: Any, path: str, value: Any) -> None:
    """Set ``value`` at a :func:`media_inputs` path such as ``dynamic_masks[0].mask_url`` in a JSON body."""
    keys: list[Any] = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    for key in keys[:-1]:
        document = document[key]
    document[keys[-1]] = value
