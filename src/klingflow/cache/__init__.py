"""The cache: what makes "never pay twice" hold across runs, processes and machines.

* :mod:`~klingflow.cache.keys`: the cache key of a generation or an operation (content, not names);
* :mod:`~klingflow.cache.store`: the content-addressed media store, verified by re-hashing;
* :mod:`~klingflow.cache.journal`: per key, the fal request id (before polling) and the stored outputs;
* :mod:`~klingflow.cache.claims`: per key, which worker is generating it right now.

Like Hamilton's ``caching`` package, these four are one concern: a hit is a journal entry whose
stored files still re-hash correctly, and nothing else.
"""

from klingflow.cache.claims import DEFAULT_TTL, Claims, FileClaims, RedisClaims, claims_from_env, new_owner
from klingflow.cache.journal import Journal, JournalEntry, OutputRecord
from klingflow.cache.keys import CACHE_VERSION, canonical_json, generation_key, media_digest, operation_key
from klingflow.cache.store import Store, StoredFile

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_TTL",
    "Claims",
    "FileClaims",
    "Journal",
    "JournalEntry",
    "OutputRecord",
    "RedisClaims",
    "Store",
    "StoredFile",
    "canonical_json",
    "claims_from_env",
    "generation_key",
    "media_digest",
    "new_owner",
    "operation_key",
]
