"""fal's per-endpoint OpenAPI documents <-> klingflow's endpoint records, without any network.

fal's platform API answers ``GET /v1/models?endpoint_id=ID&expand=openapi-3.0`` with one entry per
endpoint: its ``metadata`` (display name, category, status) and its queue OpenAPI 3.0 document. In
that document the endpoint's input is the request body of ``POST /{id}`` and its output the 200
answer of ``GET /{id}/requests/{request_id}``, each a ``$ref`` into ``components/schemas`` that
shares the component namespace with the queue's own schemas (``QueueStatus``).

:func:`json_schemas` turns those two into self-contained JSON Schemas the way the vendored snapshot
stores them: the referenced component becomes the root, every component it reaches (and only those)
moves under ``$defs``, refs are rewritten to ``#/$defs/NAME``, and prose (descriptions, titles,
examples) is dropped, as ``scripts/vendor_endpoints.py`` drops it, so the sha256 of an unchanged
schema is the snapshot's. :func:`openapi_document` is the inverse the emulator serves, so a refresh
against the emulator round-trips the snapshot exactly. :func:`refreshed_record` makes the
:class:`~klingflow.endpoints._catalog.EndpointRecord` a refresh stores, with its price rule: the
known rule (its audio and voice variants) with fal's unit price as the base rate, or a plain rule
from fal's pricing unit for an endpoint klingflow never priced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from klingflow.endpoints._catalog import EndpointRecord, schema_sha256
from klingflow.endpoints._pricing import PriceRule, PriceUnit

__all__ = [
    "PROSE_KEYS",
    "classify_endpoint",
    "json_schemas",
    "openapi_document",
    "price_from_fal",
    "refreshed_record",
    "strip_prose",
]

PROSE_KEYS = frozenset({"description", "examples", "title", "limit_description", "example"})
"""Keys whose values are fal's words, never kept (klingflow's help text is its own)."""

_NAMED_SCHEMAS = frozenset({"properties", "$defs", "patternProperties", "definitions"})
"""Keys whose mapping is keyed by names (a property called ``title`` is a field, not prose)."""

_COMPONENT_REF = "#/components/schemas/"
_DEFS_REF = "#/$defs/"


def strip_prose(node: Any, *, named: bool = False) -> Any:
    """``node`` without descriptions, titles and examples; names of properties and defs are kept."""
    if isinstance(node, dict):
        return {
            key: strip_prose(value, named=key in _NAMED_SCHEMAS and not named)
            for key, value in node.items()
            if named or key not in PROSE_KEYS
        }
    if isinstance(node, list):
        return [strip_prose(item) for item in node]
    return node


def _rewrite_refs(node: Any, old: str, new: str, found: set[str]) -> Any:
    """A copy of ``node`` with refs under prefix ``old`` moved to ``new``; their names added to ``found``."""
    if isinstance(node, dict):
        copy = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(old):
                name = value.removeprefix(old)
                found.add(name)
                copy[key] = new + name
            else:
                copy[key] = _rewrite_refs(value, old, new, found)
        return copy
    if isinstance(node, list):
        return [_rewrite_refs(item, old, new, found) for item in node]
    return node


def _self_contained(schema: dict[str, Any], components: Mapping[str, Any]) -> dict[str, Any]:
    """One JSON Schema from an OpenAPI schema and its components: root inlined, the rest in ``$defs``."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_COMPONENT_REF):
        name = ref.removeprefix(_COMPONENT_REF)
        if name not in components:
            raise ValueError(f"the OpenAPI document refers to a schema it lacks: {name}")
        schema = {**components[name], **{k: v for k, v in schema.items() if k != "$ref"}}
    pending: set[str] = set()
    root = _rewrite_refs(schema, _COMPONENT_REF, _DEFS_REF, pending)
    defs: dict[str, Any] = {}
    while pending:
        name = pending.pop()
        if name in defs:
            continue
        if name not in components:
            raise ValueError(f"the OpenAPI document refers to a schema it lacks: {name}")
        defs[name] = _rewrite_refs(components[name], _COMPONENT_REF, _DEFS_REF, pending)
    if defs:
        root["$defs"] = dict(sorted(defs.items()))
    result: dict[str, Any] = strip_prose(root)
    return result


def _json_body(operation: Any, *, request: bool) -> dict[str, Any] | None:
    if not isinstance(operation, dict):
        return None
    holder = operation.get("requestBody") if request else (operation.get("responses") or {}).get("200")
    content = (holder or {}).get("content") or {}
    schema = (content.get("application/json") or {}).get("schema")
    return schema if isinstance(schema, dict) else None


def json_schemas(endpoint_id: str, document: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(input, output) JSON Schemas of ``endpoint_id`` from fal's queue OpenAPI ``document``.

    Raises ``ValueError`` saying what is missing when the document has no request body or no
    result schema for the endpoint (fal answers such documents for endpoints it cannot expand).
    """
    paths = document.get("paths") or {}
    components = (document.get("components") or {}).get("schemas") or {}
    submit = _json_body((paths.get(f"/{endpoint_id}") or {}).get("post"), request=True)
    result = _json_body(
        (paths.get(f"/{endpoint_id}/requests/{{request_id}}") or {}).get("get"), request=False
    )
    if submit is None:
        raise ValueError(f"fal's OpenAPI document has no request body for POST /{endpoint_id}")
    if result is None:
        raise ValueError(f"fal's OpenAPI document has no result schema for /{endpoint_id}/requests/{{id}}")
    return _self_contained(submit, components), _self_contained(result, components)


def _component_name(endpoint_id: str, suffix: str, taken: Mapping[str, Any]) -> str:
    parts = endpoint_id.split("/", 1)[-1].replace(".", "").split("/")
    name = "".join(part.replace("-", " ").title().replace(" ", "") for part in parts) + suffix
    while name in taken:
        name += "_"
    return name


def openapi_document(
    endpoint_id: str, input_schema: dict[str, Any], output_schema: dict[str, Any]
) -> dict[str, Any]:
    """fal's queue OpenAPI 3.0 document for an endpoint with these JSON Schemas (what the emulator serves).

    Paths for submit, status, cancel and result as fal lays them out; the two schemas' roots and
    ``$defs`` become ``components/schemas`` (the two share one namespace, as in fal's documents).
    """
    schemas: dict[str, Any] = {
        "QueueStatus": {
            "type": "object",
            "required": ["status", "request_id"],
            "properties": {
                "status": {"type": "string", "enum": ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]},
                "request_id": {"type": "string"},
                "response_url": {"type": "string"},
                "status_url": {"type": "string"},
                "cancel_url": {"type": "string"},
                "logs": {"type": "object", "additionalProperties": True},
                "metrics": {"type": "object", "additionalProperties": True},
                "queue_position": {"type": "integer"},
            },
        }
    }
    roots = {}
    for suffix, schema in (("Input", input_schema), ("Output", output_schema)):
        for name, definition in (schema.get("$defs") or {}).items():
            schemas[name] = _rewrite_refs(definition, _DEFS_REF, _COMPONENT_REF, set())
        name = _component_name(endpoint_id, suffix, schemas)
        body = {key: value for key, value in schema.items() if key != "$defs"}
        schemas[name] = _rewrite_refs(body, _DEFS_REF, _COMPONENT_REF, set())
        roots[suffix] = {"$ref": f"{_COMPONENT_REF}{name}"}
    request_id = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
    status = {"application/json": {"schema": {"$ref": f"{_COMPONENT_REF}QueueStatus"}}}
    base = f"/{endpoint_id}"
    return {
        "openapi": "3.0.4",
        "info": {"title": f"Queue OpenAPI for {endpoint_id}", "version": "1.0.0"},
        "servers": [{"url": "https://queue.fal.run"}],
        "security": [{"apiKeyAuth": []}],
        "components": {
            "securitySchemes": {"apiKeyAuth": {"type": "apiKey", "in": "header", "name": "Authorization"}},
            "schemas": schemas,
        },
        "paths": {
            f"{base}/requests/{{request_id}}/status": {
                "get": {
                    "parameters": [
                        request_id,
                        {"name": "logs", "in": "query", "required": False, "schema": {"type": "number"}},
                    ],
                    "responses": {"200": {"content": status}},
                }
            },
            f"{base}/requests/{{request_id}}/cancel": {
                "put": {
                    "parameters": [request_id],
                    "responses": {
                        "200": {
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"success": {"type": "boolean"}},
                                    }
                                }
                            }
                        }
                    },
                }
            },
            base: {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": roots["Input"]}},
                    },
                    "responses": {"200": {"content": status}},
                }
            },
            f"{base}/requests/{{request_id}}": {
                "get": {
                    "parameters": [request_id],
                    "responses": {"200": {"content": {"application/json": {"schema": roots["Output"]}}}},
                }
            },
        },
    }


_TIERS = ("standard", "pro", "master", "4k")
_VERSION = re.compile(r"^[vo]\d[\w.-]*$")
_FAMILY_MODES = ("lipsync", "ai-avatar")
_MODE = re.compile(
    r"-to-|^(effects|elements|tts|lipsync|ai-avatar|motion-control|create-voice|edit|reference)$"
)


def classify_endpoint(endpoint_id: str, category: str = "") -> tuple[str, str, str]:
    """(family, mode, tier) read from an id the snapshot does not classify.

    ``fal-ai/kling-video/v3.5/pro/text-to-video`` -> ``("v3.5", "text-to-video", "pro")``; the app
    name joins the family outside ``kling-video`` (``kling-image o3``); a missing tier is ``-``; a
    mode the id does not spell is fal's category.
    """
    app, *rest = endpoint_id.split("/")[1:] or [endpoint_id]
    tier = next((part for part in rest if part in _TIERS), "-")
    versions = [part for part in rest if _VERSION.match(part)]
    modes = [part for part in rest if part not in versions and part != tier and _MODE.search(part)]
    if len(modes) > 1 and modes[0] in _FAMILY_MODES:  # lipsync/audio-to-video: a family of modes
        versions.insert(0, modes.pop(0))
    others = [part for part in rest if part not in versions and part not in modes and part != tier]
    family = " ".join(([] if app == "kling-video" else [app]) + versions + others) or app
    return family, "/".join(modes) or category or "-", tier


_FAL_UNITS: dict[str, PriceUnit] = {
    "second": "second",
    "video second": "second",
    "image": "image",
    "request": "request",
    "video": "request",
    "generation": "request",
    "call": "request",
    "output-second": "output-second",
    "input-second": "input-second",
}
"""fal's pricing units (singular, lower case) and the unit klingflow counts for each; klingflow's own
names, which the emulator answers, map to themselves."""

_SECONDS: frozenset[str] = frozenset({"second", "output-second", "input-second"})


def _fal_unit(unit: str | None) -> PriceUnit | None:
    word = (unit or "").strip().lower().removeprefix("per ").strip()
    return _FAL_UNITS.get(word) or _FAL_UNITS.get(word.removesuffix("s"))


def price_from_fal(
    known: PriceRule | None, unit_price: float | None, unit: str | None, *, fetched: str
) -> PriceRule | None:
    """The price rule after fal's pricing API answered ``unit_price`` per ``unit`` (or nothing).

    A known rule of a compatible unit keeps its variants, minimum and rounding and takes fal's price
    as its base rate; otherwise fal's unit makes a plain rule. A unit klingflow cannot count (tokens,
    megapixels) leaves the known rule, or no price at all: plans then say unknown, never $0.
    """
    if unit_price is None:
        return known
    counted = _fal_unit(unit)
    source = {"what": "fal's pricing API (GET /v1/models/pricing)", "unit": unit or "", "fetched": fetched}
    compatible = known is not None and (
        counted == known.unit or (counted == "second" and known.unit in _SECONDS)
    )
    if known is not None and compatible:
        return known.model_copy(
            update={"usd": float(unit_price), "source": {**known.source, "base_rate": source}}
        )
    if counted is None:
        return known
    return PriceRule(unit=counted, usd=float(unit_price), source=source)


def refreshed_record(
    model: Mapping[str, Any],
    *,
    known: EndpointRecord | None,
    unit_price: float | None,
    unit: str | None,
    fetched_at: float,
    source: Mapping[str, Any],
) -> EndpointRecord:
    """The record a refresh stores from one ``/v1/models`` entry and fal's price for it.

    ``known`` is the record klingflow used until now (snapshot or earlier refresh): its family, mode
    and tier stay, and its price rule is the base of the new one (:func:`price_from_fal`). Raises
    ``ValueError`` when the entry carries no usable OpenAPI document.
    """
    endpoint_id = str(model["endpoint_id"])
    metadata = model.get("metadata") or {}
    document = model.get("openapi")
    if not isinstance(document, dict):
        raise ValueError("fal's answer carries no OpenAPI document for it")
    if isinstance(document.get("error"), dict):  # fal could not expand this endpoint's document
        code = document["error"].get("code") or "error"
        raise ValueError(f"fal has no OpenAPI document for it ({code})")
    input_schema, output_schema = json_schemas(endpoint_id, document)
    if known is not None and known.family:
        family, mode, tier = known.family, known.mode, known.tier
    else:
        family, mode, tier = classify_endpoint(endpoint_id, str(metadata.get("category") or ""))
    fetched = datetime.fromtimestamp(fetched_at, UTC).isoformat(timespec="seconds")
    return EndpointRecord(
        id=endpoint_id,
        family=family,
        mode=mode,
        tier=tier,
        title=str(metadata.get("display_name") or (known.title if known else "") or endpoint_id),
        live=str(metadata.get("status") or "active") == "active",
        schema_kind="openapi",
        input=input_schema,
        output=output_schema,
        sha256=schema_sha256(input_schema, output_schema),
        source={**source, "date": fetched, "fal_updated_at": metadata.get("updated_at")},
        price=price_from_fal(known.price if known else None, unit_price, unit, fetched=fetched),
        origin="refreshed",
        fetched_at=fetched_at,
    )
