"""Every Kling endpoint fal serves, typed from fal's own schemas: validate, price, media, outputs.

Where the facts come from: ``klingflow/data/fal-endpoints.json``, a snapshot of fal's input and output
JSON Schemas and prices for 78 Kling endpoint ids (made by ``scripts/vendor_endpoints.py``; each entry
names its source, date and sha256), or a copy refreshed from fal's platform API into
``KLINGFLOW_HOME/endpoints`` (``klingflow endpoints refresh``), which wins when present. Models are built
from the schema on first use (``_schema.py``); cross-field rules the schemas do not carry are overlays
(``_overlays.py``); prices are rules (``_pricing.py``).

Names. ``uses:`` takes any known fal endpoint id. The seed's five short names stay what they were:
``text-to-video``, ``image-to-video``, ``ai-avatar``, ``effects`` (Kling v1 standard) and ``tts``
(:data:`ALIASES`).

Enums. An unknown value is refused with the closest known one, e.g. ``'hugg' is not a known
effect_scene; did you mean 'hug'?``. A duration enum of digit strings also takes ints (YAML writes
``5``) and sends fal's string. Each enum field's JSON schema lists its values, so forms show drop-downs.

Growing enums (this is where the setting is documented). fal adds effect scenes, voices and shot types
over time. To use a value newer than klingflow's list:

- set ``KLINGFLOW_EXTRA_ENUM_VALUES="effect_scene=new_scene,other_scene;voice_id=new_voice"``, or
- call ``allow_enum_values("effect_scene", ["new_scene"])``; ``reset_enum_values()`` undoes the calls.

Both are read at validation time and apply to ``effect_scene``, ``voice_id`` and ``shot_type`` of every
endpoint. An added effect scene takes one or two images, since klingflow cannot know which.

Input files. fal's ``x-fal`` file limits (size, sides, aspect ratio) are checked on local files before
anything is uploaded or paid for, by ``klingflow.spec.check``; Kling v1 image fields, whose schema has
none, are held to Kling's documented limits (:data:`IMAGE_LIMITS`).

Prices. Each endpoint's rule: per second (audio on/off and voice-control variants), per second with a
5 s minimum, per input second rounded up, per image, per request. An endpoint without a known price
estimates as None (plans show ``unknown``, never $0). Override base rates per call (``prices=``) or with
``KLINGFLOW_PRICES='{"text-to-video": 0.05}'`` (alias or id keys).

Example::

    from klingflow.endpoints import canonical_arguments, estimate_cost, validate_input

    call = validate_input("text-to-video", {"prompt": "a red fox in snow", "duration": 10})
    canonical_arguments(call)["duration"]   # "10"
    estimate_cost("text-to-video", call)     # 0.45
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from klingflow.endpoints._catalog import (
    REFRESH_TTL,
    EndpointRecord,
    drop_refreshed,
    record_of,
    refreshed_dir,
    schema_sha256,
    snapshot_ids,
    snapshot_meta,
    store_refreshed,
)
from klingflow.endpoints._costs import (
    PRICES_ENV,
    billed_cost,
    estimate_cost,
    implied_unit,
    price_rule,
    unit_price,
)
from klingflow.endpoints._enums import (
    EXTENSIBLE_ENUMS,
    EXTRA_ENUM_VALUES_ENV,
    FalEnum,
    allow_enum_values,
    extra_enum_values,
    reset_enum_values,
    suggest,
)
from klingflow.endpoints._media import MediaInput, MediaKind, is_url, set_media_input
from klingflow.endpoints._overlays import (
    DUAL_IMAGE_SCENES,
    EFFECT_SCENES,
    IMAGE_LIMITS,
    TTS_VOICES,
    ImageLimits,
    scene_image_counts,
)
from klingflow.endpoints._pricing import AVATAR_ASSUMED_SECONDS, PriceRule, PriceUnit, PriceVariant
from klingflow.endpoints._registry import (
    ALIASES,
    ENDPOINTS,
    EndpointInfo,
    ValueOutput,
    canonical_arguments,
    endpoints_with_field,
    estimate_seconds,
    forget_endpoint,
    get_endpoint,
    media_inputs,
    media_limits,
    output_files,
    parse_output,
    validate_input,
)
from klingflow.endpoints._schema import FalInput, FalOutput, model_from_schema

if TYPE_CHECKING:
    from klingflow.endpoints._openapi import (
        classify_endpoint,
        json_schemas,
        openapi_document,
        price_from_fal,
        refreshed_record,
        strip_prose,
    )

# fal's OpenAPI documents are read only by a refresh and written only by the emulator: imported on use,
# so validate and plan do not pay for them
_LAZY = dict.fromkeys(
    (
        "classify_endpoint",
        "json_schemas",
        "openapi_document",
        "price_from_fal",
        "refreshed_record",
        "strip_prose",
    ),
    "klingflow.endpoints._openapi",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'klingflow.endpoints' has no attribute {name!r}")


__all__ = [
    "ALIASES",
    "AVATAR_ASSUMED_SECONDS",
    "DUAL_IMAGE_SCENES",
    "EFFECT_SCENES",
    "ENDPOINTS",
    "EXTENSIBLE_ENUMS",
    "EXTRA_ENUM_VALUES_ENV",
    "IMAGE_LIMITS",
    "PRICES_ENV",
    "REFRESH_TTL",
    "TTS_VOICES",
    "EndpointInfo",
    "EndpointRecord",
    "FalEnum",
    "FalInput",
    "FalOutput",
    "ImageLimits",
    "MediaInput",
    "MediaKind",
    "PriceRule",
    "PriceUnit",
    "PriceVariant",
    "ValueOutput",
    "allow_enum_values",
    "billed_cost",
    "canonical_arguments",
    "classify_endpoint",
    "drop_refreshed",
    "endpoints_with_field",
    "estimate_cost",
    "estimate_seconds",
    "extra_enum_values",
    "forget_endpoint",
    "get_endpoint",
    "implied_unit",
    "is_url",
    "json_schemas",
    "media_inputs",
    "media_limits",
    "model_from_schema",
    "openapi_document",
    "output_files",
    "parse_output",
    "price_from_fal",
    "price_rule",
    "record_of",
    "refreshed_dir",
    "refreshed_record",
    "reset_enum_values",
    "scene_image_counts",
    "schema_sha256",
    "set_media_input",
    "snapshot_ids",
    "snapshot_meta",
    "store_refreshed",
    "strip_prose",
    "suggest",
    "unit_price",
    "validate_input",
]
