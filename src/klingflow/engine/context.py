"""What every step of one run shares, and the helpers generations and operations both use.

:class:`StepContext` holds the cache (store, journal, claims), the backend (made on first use,
so a fully cached run never starts one) and the concurrency cap. The cache decision
(:meth:`StepContext.look_up`: cached, refetch, recoverable or run) is the same for a generation,
a media operation and the plan, and so is describing a stored output on a ledger row
(:func:`describe_output`), so they live here, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from klingflow.cache import (
    DEFAULT_TTL,
    Claims,
    FileClaims,
    Journal,
    JournalEntry,
    OutputRecord,
    Store,
    StoredFile,
    canonical_json,
    new_owner,
)
from klingflow.endpoints import EndpointInfo, unit_price
from klingflow.engine.interrupts import STOP, OpenRequest, StopRequest
from klingflow.engine.options import AmbiguousSubmitPolicy, RetryPolicy
from klingflow.engine.reasons import History
from klingflow.errors import BackendError, ConfigError
from klingflow.ledger import Status, StepRecord
from klingflow.media import probe
from klingflow.settings import settings

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend

__all__ = [
    "CacheLookup",
    "CacheState",
    "Logger",
    "StepContext",
    "describe_output",
    "output_field",
    "plain",
    "prompt_of",
    "shown_arguments",
]

Logger = Callable[[str], None]
"""Where a step's messages go (a Prefect task run's logger, the CLI's step log)."""


@dataclass
class StepContext:
    """What every step of one run shares."""

    store: Store
    journal: Journal
    backend_identity: str
    backend_factory: Callable[[], FalBackend]
    claims: Claims = field(default_factory=FileClaims)
    owner: str = field(default_factory=new_owner)
    claim_ttl: float = DEFAULT_TTL
    concurrency: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    refresh: bool = False
    base_dir: Path | None = None
    prices: dict[str, float] | None = None
    on_ambiguous_submit: AmbiguousSubmitPolicy = "reconcile"
    stop: StopRequest = field(default_factory=lambda: STOP)
    """Asked by a signal or a cancelled flow run: no new submit leaves (see :mod:`.interrupts`)."""
    cancel_queued: bool = False
    approve_unattended: bool = False
    history: History = field(default_factory=History)
    """Each step's last run in the ledger, read on the plan's first need (:mod:`.reasons`)."""
    team_slot: Callable[[], AbstractAsyncContextManager[Any]] | None = None
    """One slot of the team's cap, held with the run's own from submit to result (:mod:`.generation`)."""
    """``--yes``: every approval gate is approved without asking (:mod:`.approval`)."""
    """On a stop, cancel this run's requests still waiting in fal's queue (free)."""
    open_requests: dict[str, OpenRequest] = field(default_factory=dict)
    """Requests this run submitted or resumed, by cache key (what a stop may leave running at fal)."""
    _backend: FalBackend | None = None
    _limiter: asyncio.Semaphore | None = None
    _fal_prices: dict[str, float | None] = field(default_factory=dict)
    _verified: set[tuple[str, str]] = field(default_factory=set)
    _generating: dict[str, asyncio.Lock] = field(default_factory=dict)

    @property
    def backend(self) -> FalBackend:
        """The backend, created on first use (so a fully cached run never starts one)."""
        if self._backend is None:
            backend = self.backend_factory()
            if backend.identity != self.backend_identity:
                # the cache keys of this run name another backend: its outputs would be stored (and
                # later served) as that backend's, so stop before anything is submitted
                raise ConfigError(
                    f"the backend this run calls is {backend.identity}, but its plan and cache keys were "
                    f"made for {self.backend_identity}",
                    context="backend identity",
                    hint="set the fal hosts (FAL_QUEUE_RUN_HOST / a FalCredentials block) before the "
                    "run starts, in a fresh process",
                )
            self._backend = backend
        return self._backend

    def for_row(self) -> StepContext:
        """A context for one row of a batch: this one's cache, backend, cap, prices and stop request.

        Rows share one limiter (the cap is the account's, not a row's) and one backend (made on
        first use by whichever row needs it first); only the open requests are the row's own, so
        a stop reports each row's requests in that row. The batch closes the backend, once.
        """
        return replace(
            self, backend_factory=lambda: self.backend, open_requests={}, _backend=None, _limiter=self.limiter
        )

    async def aclose(self) -> None:
        """Release the backend's connections, if this run made a backend."""
        if self._backend is not None:
            await self._backend.aclose()

    @property
    def limiter(self) -> asyncio.Semaphore:
        """Caps requests in flight (submitted, not yet downloaded) for this run's backend."""
        if self._limiter is None:
            self._limiter = asyncio.Semaphore(self.concurrency)
        return self._limiter

    async def unit_price(self, endpoint: str) -> float | None:
        """USD per billable unit: fal's pricing API when it answers (once per run), else the endpoint's
        price rule (or ``KLINGFLOW_PRICES``); None when neither knows a price."""
        from klingflow.backends.platform import unit_prices

        if endpoint not in self._fal_prices:
            try:
                if not settings().offline:  # offline: klingflow's own price, no call to the pricing API
                    self._fal_prices.update(await unit_prices(self.backend, [endpoint]))
            except BackendError:
                pass  # unreachable or unknown to fal: the price rule (or KLINGFLOW_PRICES) below
            if endpoint not in self._fal_prices:
                self._fal_prices[endpoint] = unit_price(endpoint, self.prices)
        return self._fal_prices[endpoint]

    def secrets(self) -> list[SecretStr]:
        """The key of the backend this run used, if it made one (for redacting what is recorded)."""
        return [self._backend.config.key] if self._backend is not None else []

    def journal_says_open(self, key: str) -> bool:
        """Whether the journal still holds ``key`` as paid but not stored (submitted or interrupted)."""
        entry = self.journal.get(key)
        return entry is not None and entry.status != "done"

    def generating(self, key: str) -> asyncio.Lock:
        """The lock one execution of this process holds while it generates ``key``.

        A claim is per process (its owner is this process), so it cannot keep two executions of
        one run, or two rows of a batch, from both submitting the same key at once: the second
        waits here, then finds the first one's result in the cache. Rows share it (:meth:`for_row`).
        """
        return self._generating.setdefault(key, asyncio.Lock())

    def look_up(self, key: str, *, regenerate: bool = False) -> CacheLookup:
        """The one cache decision, for a generation, a media operation and the plan alike.

        * ``cached``: a ``done`` entry whose every stored file re-hashes to its record (a generation
          whose output is only values, such as a voice id, has no file to re-hash);
        * ``refetch``: a ``done`` generation whose stored files are missing, cut or altered: its
          request id is known, so its result is fetched from fal again (free while fal keeps it,
          1 hour after it completed) before anything is paid again;
        * ``recoverable``: a request that was submitted (paid) but never stored: resumed, never
          forgotten, whatever ``regenerate`` says;
        * ``run``: nothing usable (no entry, ``regenerate`` asked for a new result, or a local
          operation's lost output): the caller forgets ``entry``, if any, and generates.

        Hashes the stored files (at most once per file and run): call :meth:`alook_up` from
        the event loop.
        """
        entry = self.journal.get(key)
        if entry is None:
            return CacheLookup("run")
        if entry.status != "done":
            return CacheLookup("recoverable", entry)
        if regenerate:
            return CacheLookup("run", entry)
        files = {name: self._stored(out) for name, out in entry.outputs.items()}
        # a generation may give no file at all (create-voice answers a voice id): its entry is whole
        # as it is; a local operation always writes one, so an operation entry without it is not
        if (entry.outputs or entry.request_id) and all(f is not None for f in files.values()):
            return CacheLookup("cached", entry, {n: f for n, f in files.items() if f is not None})
        return CacheLookup("refetch" if entry.request_id else "run", entry)

    async def alook_up(self, key: str, *, regenerate: bool = False) -> CacheLookup:
        """:meth:`look_up` off the event loop (hashing a stored clip takes milliseconds per MB)."""
        return await asyncio.to_thread(self.look_up, key, regenerate=regenerate)

    def _stored(self, output: OutputRecord) -> StoredFile | None:
        candidate = StoredFile(
            sha256=output.sha256, path=self.store.path_for(output.sha256, output.suffix), bytes=output.bytes
        )
        seen = (candidate.sha256, str(candidate.path))
        if seen in self._verified:
            return candidate
        if not self.store.verify(candidate):
            return None
        self._verified.add(seen)  # hashed once per run: the plan's check serves the step's too
        return candidate

    def fill_cached(self, lookup: CacheLookup, record: StepRecord, kinds: Mapping[str, str]) -> None:
        """Fill ``record`` from a ``cached`` lookup: its files, media columns, values and request id."""
        assert lookup.entry is not None and lookup.files is not None
        entry = lookup.entry
        for name, stored in lookup.files.items():
            describe_output(record, stored, kinds[output_field(name)], duration=entry.values.get("duration"))
            record.output_url = record.output_url or entry.outputs[name].url
        record.outputs = {**record.outputs, **_outputs_by_name(lookup.files, entry.values, kinds)}
        record.status, record.request_id = Status.CACHED, entry.request_id


CacheState = Literal["cached", "refetch", "recoverable", "run"]
"""What a step does with its cache key (see :meth:`StepContext.look_up`)."""


@dataclass(frozen=True)
class CacheLookup:
    """The cache decision for one key: what to do, the journal entry, and the verified files."""

    state: CacheState
    entry: JournalEntry | None = None
    files: dict[str, StoredFile] | None = None


def output_field(name: str) -> str:
    """The output field of a file name: ``images[1]`` -> ``images``."""
    return name.partition("[")[0]


def _outputs_by_name(
    files: Mapping[str, StoredFile], values: Mapping[str, Any], kinds: Mapping[str, str]
) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for name, stored in files.items():
        field = output_field(name)
        if field == name:
            outputs[name] = stored.path
        else:
            outputs.setdefault(field, []).append(stored.path)
            outputs.setdefault(field.removesuffix("s"), stored.path)
    for name, value in values.items():
        if name not in kinds and value is not None:
            outputs[name] = value
    return outputs


def step_outputs(
    info: EndpointInfo, files: Mapping[str, StoredFile], values: Mapping[str, Any]
) -> dict[str, Any]:
    """What a generation gives the steps after it, by output name: every file (``video``, ``audio``,
    ``images`` and its first as ``image``), ``duration``, and the output's other values (``voice_id``)."""
    outputs = _outputs_by_name(files, values, info.produces)
    outputs.setdefault("duration", values.get("duration"))
    return outputs


def describe_output(
    record: StepRecord, stored: StoredFile, kind: str, *, duration: float | None = None
) -> None:
    """Fill the record's file and media columns from the stored file (probed, not assumed).

    The columns describe the step's first file (a video before its audio track's own file); every
    file is kept in ``record.outputs`` by name.
    """
    if record.output_path is None:
        record.output_path, record.sha256, record.bytes = str(stored.path), stored.sha256, stored.bytes
    record.outputs.setdefault(kind, stored.path)
    if kind not in ("video", "audio") or record.duration_s is not None:
        return  # a picture or a subtitle file has no length to probe
    info = probe(stored.path)
    record.duration_s = duration if duration is not None else info.duration
    record.width, record.height, record.fps, record.has_audio = (
        info.width,
        info.height,
        info.fps,
        info.has_audio,
    )
    record.outputs["duration"] = record.duration_s


def plain(value: Any) -> Any:
    """Paths as strings, recursively: arguments as fal and the ledger see them."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def shown_arguments(body: dict[str, Any]) -> str:
    """Arguments for the ledger: canonical JSON with data URIs shortened (they can be megabytes)."""

    def shorten(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("data:") and len(value) > 80:
            return value[:40] + f"...({len(value)} chars)"
        if isinstance(value, dict):
            return {k: shorten(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shorten(v) for v in value]
        return value

    return canonical_json(shorten(body))


def prompt_of(body: dict[str, Any]) -> str | None:
    """The text a person recognises a generation by: its prompt, its shots' prompts (``multi_prompt``),
    TTS text or effect scene."""
    for name in ("prompt", "text", "effect_scene"):
        if isinstance(body.get(name), str):
            return body[name]
    shots = body.get("multi_prompt")
    if isinstance(shots, list):
        texts = [
            shot["prompt"] for shot in shots if isinstance(shot, dict) and isinstance(shot.get("prompt"), str)
        ]
        return " | ".join(texts) or None
    return None
