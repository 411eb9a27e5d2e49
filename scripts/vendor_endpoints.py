"""Maintainer script: make klingflow's endpoint snapshot from the collected fal schema records.

    python scripts/vendor_endpoints.py [RECORDS_DIR] [--out src/klingflow/data/fal-endpoints.json]

RECORDS_DIR (default ``../shared/fal-schemas``) holds one JSON record per fal endpoint id: fal's input
and output JSON Schemas as published from fal's OpenAPI, its catalog price text with a hand-derived
structure, and the sources (repository, commit, date, licence) of each. The snapshot keeps only the
structural facts klingflow validates, plans and emulates with: types, enums, defaults, required
fields, ranges, lengths, array sizes, field order, file markers and fal's file limits (``x-fal``).
Prose (descriptions, titles, examples) is dropped: klingflow's help text is its own.

Each endpoint's entry carries the sha256 of its two schemas as stored, so a ledger row can say which
schema its step was checked against, and a refresh (``klingflow endpoints refresh``) can tell whether
fal changed anything. Where a record has no JSON Schema but a distilled input list (Kling v3 turbo), the
list is turned into one here, and the entry says so (``schema_kind: distilled``).

Prices: the record's hand-derived structure becomes a rule klingflow evaluates (``unit`` plus its rates
and the input conditions of each variant); the five Kling v1 standard endpoints of the seed keep the
prices of the seed's API reference. An endpoint without either has no price (it plans as unknown).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

PROSE_KEYS = frozenset({"description", "examples", "title", "limit_description", "example"})

SEED_PRICES: dict[str, dict[str, Any]] = {
    "fal-ai/kling-video/v1/standard/text-to-video": {"unit": "second", "usd": 0.045},
    "fal-ai/kling-video/v1/standard/image-to-video": {"unit": "second", "usd": 0.045},
    "fal-ai/kling-video/v1/standard/effects": {"unit": "second", "usd": 0.045},
    "fal-ai/kling-video/v1/standard/ai-avatar": {"unit": "output-second", "usd": 0.0562},
    "fal-ai/kling-video/v1/tts": {"unit": "request", "usd": 0.007},
}
SEED_PRICE_SOURCE = {
    "what": "the seed's API reference (kling-v1-standard.md) and design/kling-schema.md section 5",
    "date": "2026-08",
}

FILE_DEF = {
    "type": "object",
    "required": ["url"],
    "properties": {
        "url": {"type": "string"},
        "content_type": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "file_name": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "file_size": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    },
}


def strip_prose(node: Any) -> Any:
    """The schema without descriptions, titles and examples (fal's words stay fal's)."""
    if isinstance(node, dict):
        return {key: strip_prose(value) for key, value in node.items() if key not in PROSE_KEYS}
    if isinstance(node, list):
        return [strip_prose(item) for item in node]
    return node


def schema_sha256(input_schema: Any, output_schema: Any) -> str:
    """The sha256 of both schemas in canonical JSON (sorted keys, no spaces)."""
    text = json.dumps({"input": input_schema, "output": output_schema}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _distilled_property(item: dict[str, Any], sibling: dict[str, Any] | None) -> dict[str, Any]:
    name = item["name"]
    if sibling and name in sibling.get("properties", {}):
        # The same field in the non-turbo endpoint of the same mode has the full shape (multi_prompt's
        # items, file limits); the distilled list only knows it is "json" or "media".
        return sibling["properties"][name]
    kinds = {
        "string": "string",
        "enum": "string",
        "integer": "integer",
        "number": "number",
        "boolean": "boolean",
    }
    prop: dict[str, Any] = {"type": kinds.get(item["type"], "string")}
    if item.get("enum"):
        prop["enum"] = list(item["enum"])
    if item.get("default") is not None:
        prop["default"] = item["default"]
    if item.get("min") is not None:
        prop["minimum"] = item["min"]
    if item.get("max") is not None:
        prop["maximum"] = item["max"]
    if item.get("media_kind"):
        prop["_fal_ui_field"] = item["media_kind"]
        prop["x-fal-file-input"] = True
    if item.get("is_list"):
        prop = {"type": "array", "items": prop}
    if not item.get("required"):
        prop = {"anyOf": [prop, {"type": "null"}]} if "default" not in prop else prop
    return prop


def distilled_schema(record: dict[str, Any], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A JSON Schema from a distilled input list, borrowing full shapes from the non-turbo sibling."""
    sibling_id = record["endpoint_id"].replace("/turbo/", "/")
    sibling = records.get(sibling_id, {}).get("input_schema")
    inputs = record["registry_distilled_2026_08"]["inputs"]
    schema: dict[str, Any] = {
        "type": "object",
        "required": [item["name"] for item in inputs if item.get("required")],
        "x-fal-order-properties": [item["name"] for item in inputs],
        "properties": {item["name"]: _distilled_property(item, sibling) for item in inputs},
    }
    if sibling and "$defs" in sibling:
        used = json.dumps(schema["properties"])
        schema["$defs"] = {name: d for name, d in sibling["$defs"].items() if f"#/$defs/{name}" in used}
    return schema


def _voice_control_field(record: dict[str, Any]) -> str | None:
    """Where an endpoint takes the voices that make "voice control": v2.6's ``voice_ids``, or a
    ``voice_id`` on v3's ``elements``; None where it takes none (v3 text-to-video)."""
    schema = record.get("input_schema") or {}
    if "voice_ids" in schema.get("properties", {}):
        return "voice_ids"
    if "elements" in schema.get("properties", {}) and '"voice_id"' in json.dumps(schema.get("$defs", {})):
        return "elements[].voice_id"
    return None


def price_rule(record: dict[str, Any]) -> dict[str, Any] | None:
    """klingflow's price rule from the record's hand-derived price structure, or None."""
    endpoint_id = record["endpoint_id"]
    if endpoint_id in SEED_PRICES:
        return {**SEED_PRICES[endpoint_id], "source": SEED_PRICE_SOURCE}
    pricing = record.get("pricing") or {}
    parts = pricing.get("structured_hand_derived")
    if not pricing.get("found") or not parts:
        return None
    source = {
        "what": pricing.get("source", ""),
        "text_sha256": hashlib.sha256(pricing.get("text", "").encode()).hexdigest(),
    }
    unit = parts["unit"]
    if "usd_first_5_seconds" in parts:
        # fal bills these per second with the first five as a base; every listed base is exactly five
        # times the per-second rate, so the rule is "per second, at least 5".
        return {
            "unit": "second",
            "usd": parts["usd_per_additional_second"],
            "minimum_units": 5,
            "base_usd": parts["usd_first_5_seconds"],
            "source": source,
        }
    if unit.startswith("second of INPUT"):
        return {"unit": "input-second", "usd": parts["usd_per_second"], "round_up_to": 5, "source": source}
    if unit.startswith("request"):
        return {"unit": "request", "usd": parts["usd_per_request"], "source": source}
    if unit == "output image":
        return {
            "unit": "image",
            "usd": parts["usd_per_image_1k_2k"],
            "variants": [{"when": {"resolution": "4K"}, "usd": parts["usd_per_image_4k"]}],
            "source": source,
        }
    if unit == "second of output video":
        if "usd_per_second" in parts:
            return {"unit": "second", "usd": parts["usd_per_second"], "source": source}
        variants = [{"when": {"generate_audio": True}, "usd": parts["usd_per_second_audio_on"]}]
        voice = _voice_control_field(record)
        if "usd_per_second_audio_on_with_voice_control" in parts and voice:
            variants.insert(
                0,
                {
                    "when": {"generate_audio": True, voice: "non-empty"},
                    "usd": parts["usd_per_second_audio_on_with_voice_control"],
                },
            )
        return {
            "unit": "second",
            "usd": parts["usd_per_second_audio_off"],
            "variants": variants,
            "source": source,
        }
    raise SystemExit(f"{endpoint_id}: price unit {unit!r} has no rule in this script")


def _main_source(record: dict[str, Any]) -> dict[str, Any]:
    first = record["sources"][0]
    return {key: first.get(key) for key in ("repo", "ref", "commit", "date", "license") if first.get(key)}


def entry(record: dict[str, Any], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One endpoint of the snapshot."""
    if record.get("input_schema"):
        kind = "json-schema"
        input_schema = strip_prose(record["input_schema"])
        output_schema = strip_prose(record["output_schema"])
    elif record.get("registry_distilled_2026_08"):
        kind = "distilled"
        input_schema = strip_prose(distilled_schema(record, records))
        # Every v3 turbo type in fal-js answers {video: File}.
        output_schema = {
            "type": "object",
            "required": ["video"],
            "properties": {"video": {"$ref": "#/$defs/File"}},
            "$defs": {"File": FILE_DEF},
        }
    else:
        kind, input_schema, output_schema = None, None, None
    catalog = record.get("catalog_2026_08") or {}
    return {
        "family": record["family"],
        "mode": record["mode"],
        "tier": record["tier"],
        "title": catalog.get("title") or record["endpoint_id"],
        "live": bool(catalog.get("live", False)),
        "schema_kind": kind,
        "input": input_schema,
        "output": output_schema,
        "sha256": schema_sha256(input_schema, output_schema) if kind else None,
        "source": _main_source(record),
        "price": price_rule(record),
    }


def snapshot(records_dir: Path) -> dict[str, Any]:
    """The whole snapshot, endpoints sorted by id."""
    records = {}
    for path in sorted(records_dir.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[record["endpoint_id"]] = record
    if not records:
        raise SystemExit(f"no endpoint records in {records_dir}")
    return {
        "made_by": "scripts/vendor_endpoints.py",
        "records": "fal-schemas (78 records: schemas from fal-ai/fal-js PR #212, 2026-05-12, MIT; prices from"
        " fal's catalog text via gokayfem/ComfyUI-fal-API data/fal_registry.json @ 1780dde, Apache-2.0)",
        "snapshot_date": max(r["sources"][0].get("date", "") for r in records.values()),
        "terms": "schema and price content is fal.ai's (its OpenAPI and catalog); fal's terms govern it",
        "endpoints": {endpoint_id: entry(record, records) for endpoint_id, record in sorted(records.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="?", type=Path, default=Path("../shared/fal-schemas"))
    parser.add_argument("--out", type=Path, default=Path("src/klingflow/data/fal-endpoints.json"))
    args = parser.parse_args(argv)
    data = snapshot(args.records)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    with_schema = sum(1 for e in data["endpoints"].values() if e["schema_kind"])
    priced = sum(1 for e in data["endpoints"].values() if e["price"])
    print(
        f"{args.out}: {len(data['endpoints'])} endpoints, {with_schema} with a schema, {priced} with a price"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
