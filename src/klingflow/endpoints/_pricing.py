"""Price rules: what one call of an endpoint costs, from its input (before) and fal's units (after).

A rule is data in the endpoint snapshot (``scripts/vendor_endpoints.py`` makes it from fal's catalog
text) or in a refreshed copy (fal's pricing API). Its ``unit`` says what is counted:

- ``second``: seconds of output video, the requested ``duration`` (for a multi-shot request the larger
  of it and the shots' total); ``minimum_units`` covers "the first 5 s, then per additional second"
  (v2, v2.1, v2.5 turbo bill at least five seconds);
- ``output-second``: seconds of output whose length follows an input (ai-avatar follows its audio); an
  estimate made before that length is known assumes :data:`AVATAR_ASSUMED_SECONDS`;
- ``input-second``: seconds of an input video, rounded up to ``round_up_to`` (lipsync: 5 s steps);
- ``image``: images produced (``num_images``, default 1; a ``series`` of ``series_amount``, at least 2);
- ``request``: one call.

``variants`` change the rate with the input, first match wins: ``{"generate_audio": true}`` (v2.6, v3,
O3 native audio), ``{"voice_ids": "non-empty"}`` or ``{"elements[].voice_id": "non-empty"}`` (voice
control, v2.6 and v3), ``{"resolution": "4K"}`` (images). A
``when`` value is matched against the input after defaults are filled, so audio that an endpoint
generates unless told not to is priced as audio on.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["AVATAR_ASSUMED_SECONDS", "PriceRule", "PriceUnit", "PriceVariant", "shots_seconds"]

PriceUnit = Literal["second", "output-second", "input-second", "image", "request"]

AVATAR_ASSUMED_SECONDS = 10.0
"""Output length assumed for an ai-avatar estimate before the audio's length is known (Kling v1 avatar
clips are reported to run up to about 10 s, so this errs high rather than low)."""


class PriceVariant(BaseModel):
    """Another rate when every ``when`` field of the input matches."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    when: dict[str, Any]
    usd: float

    def matches(self, arguments: dict[str, Any]) -> bool:
        """Whether the (defaults-filled) input selects this variant. A name ``list[].field`` matches
        when any item of the list does (v3's voice control is a ``voice_id`` on one of its elements)."""
        for name, wanted in self.when.items():
            listed, _, field = name.partition("[].")
            items = arguments.get(listed) if field else None
            values = (
                [item.get(field) for item in items if isinstance(item, dict)]
                if isinstance(items, list)
                else [arguments.get(name)]
            )
            if not any((bool(value) if wanted == "non-empty" else value == wanted) for value in values):
                return False
        return True


class PriceRule(BaseModel):
    """One endpoint's price (see the module docstring)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    unit: PriceUnit
    usd: float
    variants: tuple[PriceVariant, ...] = ()
    minimum_units: float = 0
    round_up_to: float | None = None
    source: dict[str, Any] = {}

    def rate(self, arguments: dict[str, Any], base: float | None = None) -> float:
        """USD per unit for this input: the first matching variant's, else ``base`` or the rule's own.

        ``base`` is a unit price from elsewhere (``KLINGFLOW_PRICES``, fal's pricing API); it replaces
        the rule's base rate but not a variant's, which fal's pricing API does not state.
        """
        for variant in self.variants:
            if variant.matches(arguments):
                return variant.usd
        return self.usd if base is None else base

    def units(
        self,
        arguments: dict[str, Any],
        *,
        output_seconds: float | None = None,
        input_seconds: float | None = None,
        assumed_seconds: float = AVATAR_ASSUMED_SECONDS,
    ) -> float | None:
        """How many units one call bills, or None when the count needs a length not known yet."""
        if self.unit == "request":
            return 1.0
        if self.unit == "image":
            if arguments.get("result_type") == "series":  # Kling Image O3: a series of related images
                return float(arguments.get("series_amount") or 2)
            return float(arguments.get("num_images") or 1)
        if self.unit == "second":
            duration = arguments.get("duration")
            seconds = float(duration) if duration is not None else output_seconds
            shots = shots_seconds(arguments.get("multi_prompt"))
            if shots is not None:
                # fal's docs do not say whether a multi-shot video bills its duration or its shots'
                # total; the larger of the two errs high, never low
                seconds = max(seconds or 0.0, shots)
            if seconds is None:
                return None
            return max(seconds, self.minimum_units)
        if self.unit == "output-second":
            return assumed_seconds if output_seconds is None else output_seconds
        if input_seconds is None:
            return None
        step = self.round_up_to or 1
        return max(math.ceil(input_seconds / step) * step, self.minimum_units)

    def describe(self) -> str:
        """One line for people: ``$0.07/s; $0.14/s with generate_audio=true``."""
        short = {
            "second": "/s",
            "output-second": "/s of output",
            "input-second": "/s of input",
            "image": "/image",
            "request": "/request",
        }[self.unit]
        text = f"${self.usd:g}{short}"
        if self.minimum_units:
            text += f" (at least {self.minimum_units:g} s)"
        if self.round_up_to:
            text += f" (rounded up to {self.round_up_to:g} s)"
        for variant in self.variants:
            conditions = sorted(variant.when.items(), key=lambda item: item[1] == "non-empty")
            when = ", ".join(f"{k} set" if v == "non-empty" else f"{k}={_shown(v)}" for k, v in conditions)
            text += f"; ${variant.usd:g}{short} with {when}"
        return text


def shots_seconds(shots: Any) -> float | None:
    """The total length of a ``multi_prompt``'s shots, or None without shots."""
    if not isinstance(shots, list) or not shots:
        return None
    return sum(float(shot.get("duration") or 0) for shot in shots if isinstance(shot, dict))


def _shown(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)
