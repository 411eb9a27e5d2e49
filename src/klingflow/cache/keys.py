"""Cache keys: what makes two generations "the same request".

A generation's key is the sha256 of: the endpoint id, its canonical validated arguments (defaults
filled, so ``duration: 5`` and an omitted duration agree) with every media input replaced by the
sha256 of its content, the backend's identity (an emulator render is never served as a fal
output), and :data:`CACHE_VERSION`. The fal key is never part of it. Media operations (concat,
last_frame, ...) are keyed the same way on their parameters and their inputs' content.

Hashing content rather than names means a renamed or re-downloaded file still hits, and an edited
file with the same name misses. Remote URLs are keyed by the URL itself: fetching them just to hash
them would need the network, and fal reads them anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from klingflow._files import file_sha256
from klingflow.cache.store import Store

__all__ = ["CACHE_VERSION", "canonical_json", "generation_key", "media_digest", "operation_key"]

CACHE_VERSION = "1"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def media_digest(value: str | Path, store: Store | None = None) -> str:
    """Content identity of a media input: ``sha256:<hex>`` for files and data URIs, else ``url:<url>``."""
    if isinstance(value, Path):
        if store is not None and value.parent.parent == store.objects and len(value.stem) == 64:
            return f"sha256:{value.stem}"  # store objects are named by their hash
        return f"sha256:{file_sha256(value)}"
    if value.startswith("data:") and "," in value:
        header, payload = value.split(",", 1)
        data = base64.b64decode(payload) if ";base64" in header else payload.encode()
        return f"sha256:{hashlib.sha256(data).hexdigest()}"
    return f"url:{value}"


def _key(material: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({**material, "cache_version": CACHE_VERSION}).encode()).hexdigest()


def generation_key(endpoint_id: str, canonical_arguments: dict[str, Any], backend_identity: str) -> str:
    """Key of one generation; ``canonical_arguments`` already has media replaced by digests."""
    return _key({"endpoint": endpoint_id, "arguments": canonical_arguments, "backend": backend_identity})


def operation_key(operation: str, parameters: dict[str, Any]) -> str:
    """Key of one media operation; ``parameters`` already has media replaced by digests."""
    return _key({"operation": operation, "parameters": parameters})
