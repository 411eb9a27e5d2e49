"""What a call costs: the price rule in force (with overrides), estimates before, billed cost after.

The rule in force for an endpoint is its record's (vendored or refreshed) with the base rate replaced by
an override, if one is given: ``prices=`` in a call, else ``KLINGFLOW_PRICES`` (a JSON object keyed by
endpoint id or short name). An override for an endpoint without a known price makes a rule whose unit
the schema implies (:func:`implied_unit`), so a per-second endpoint is never priced per call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from klingflow.endpoints._enums import suggest
from klingflow.endpoints._pricing import AVATAR_ASSUMED_SECONDS, PriceRule, PriceUnit
from klingflow.endpoints._registry import ALIASES, ENDPOINTS, EndpointInfo, get_endpoint, input_dict
from klingflow.errors import ConfigError
from klingflow.settings import settings

__all__ = ["PRICES_ENV", "billed_cost", "estimate_cost", "implied_unit", "price_rule", "unit_price"]

PRICES_ENV = "KLINGFLOW_PRICES"
"""Environment variable: a JSON object of unit-price overrides, e.g. ``{"text-to-video": 0.05}``."""


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


def _override(info: EndpointInfo, prices: Mapping[str, float] | None) -> float | None:
    for table in (_checked_prices(prices or {}, "prices"), _env_prices()):
        if info.id in table:
            return table[info.id]
    return None


def implied_unit(info: EndpointInfo) -> PriceUnit:
    """What an endpoint without a known price most likely bills by, read from its schema: seconds of
    output when it takes a ``duration`` or is an avatar, seconds of its input video when its output
    follows one (motion control, video edits), images for image models, else the call."""
    if "duration" in info.fields:
        return "second"
    if info.record.mode == "ai-avatar" or info.record.family.startswith("ai-avatar"):
        return "output-second"
    if "video" in info.produces and "video_url" in info.fields:
        return "input-second"
    if set(info.produces.values()) == {"image"}:
        return "image"
    if "video" in info.produces:
        return "output-second"
    return "request"


def price_rule(endpoint: str, prices: Mapping[str, float] | None = None) -> PriceRule | None:
    """The rule in force: the endpoint's own with an override as its base rate, a rule of the implied
    unit for an override of an unpriced endpoint, or None when no price is known."""
    info = get_endpoint(endpoint)
    override = _override(info, prices)
    rule = info.price
    if override is None:
        return rule
    if rule is None:
        return PriceRule(unit=implied_unit(info), usd=override, source={"what": "a price override"})
    return rule.model_copy(update={"usd": override})


def unit_price(endpoint: str, prices: Mapping[str, float] | None = None) -> float | None:
    """USD per unit of ``endpoint``'s base rate under :func:`price_rule`; None when no price is known.
    Unknown endpoint names among the overrides raise ``ConfigError``, so a typo cannot silently keep
    the old price."""
    rule = price_rule(endpoint, prices)
    return None if rule is None else rule.usd


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
    """
    info = get_endpoint(endpoint)
    rule = price_rule(info.id, prices)
    if rule is None:
        return None
    arguments = input_dict(info, validated_input)
    units = rule.units(
        arguments, output_seconds=output_seconds, input_seconds=input_seconds, assumed_seconds=assumed_seconds
    )
    return None if units is None else round(rule.rate(arguments) * units, 6)


def billed_cost(
    endpoint: str,
    arguments: Mapping[str, Any] | None,
    units: float,
    fal_unit_price: float | None = None,
    prices: Mapping[str, float] | None = None,
) -> float | None:
    """What fal billed: its billable units times the unit price of the variant the input selected.

    ``fal_unit_price`` (fal's pricing API) replaces the rule's base rate; a variant's rate (audio on,
    4K) comes from the rule, since fal's pricing API states one price per endpoint. Without the
    ``arguments`` (``klingflow recover`` knows only a request id), the schema's defaults stand in.
    """
    info = get_endpoint(endpoint)
    rule = price_rule(info.id, prices)
    if rule is None:
        return None if fal_unit_price is None else round(units * fal_unit_price, 6)
    given = dict(arguments) if arguments is not None else info.defaults
    return round(units * rule.rate(given, base=fal_unit_price), 6)
