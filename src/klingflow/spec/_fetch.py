"""``uses:`` ids klingflow has not vendored: fetched from fal's platform API once, then kept in the home.

A pipeline may name any fal endpoint (``uses: owner/name/...``). When it names one the registry does
not know, :func:`fetch_unknown_endpoints` asks fal for its schema and price before the pipeline is
checked (:func:`klingflow.backends.platform.refresh_endpoints`), and stores the answer as a refreshed
record in ``KLINGFLOW_HOME/endpoints``: every later check, plan and run reads it from there, without
asking again. An id fal does not list either is left to the check, which reports it as unknown with
the closest known name.

Nothing is fetched in offline mode (``--offline``, ``KLINGFLOW_OFFLINE``), nor without a fal key: the
embedded emulator, used then, serves only what the registry already knows. Either way the id is one
problem naming file, line, step and field ``uses``, saying how to make it known.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from klingflow.endpoints import ALIASES, ENDPOINTS
from klingflow.errors import ConfigError, KlingflowError
from klingflow.settings import settings
from klingflow.spec._models import PipelineSpec
from klingflow.spec._operations import OPERATIONS
from klingflow.spec._problems import DocPath, Problem, did_you_mean

__all__ = ["fetch_unknown_endpoints", "looks_like_fal_id"]

_FAL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)+$")
_not_listed: set[str] = set()
"""Ids this process already asked fal about in vain (asked once per process, not once per check)."""

T = TypeVar("T")


def looks_like_fal_id(name: str) -> bool:
    """Whether ``name`` has the shape of a fal endpoint id (``owner/name/...``), not an alias or operation."""
    return bool(_FAL_ID.match(name))


def _unknown(spec: PipelineSpec) -> dict[str, list[tuple[DocPath, int | None]]]:
    """Each fal-shaped name the registry does not know, with where the file names it."""
    places: dict[str, list[tuple[DocPath, int | None]]] = {}
    named: list[tuple[str, DocPath, int | None]] = [(key, ("defaults", key), None) for key in spec.defaults]
    named += [(step.uses, ("steps", i, "uses"), i) for i, step in enumerate(spec.steps)]
    for name, path, step in named:
        if name in OPERATIONS or name in ALIASES or not looks_like_fal_id(name) or name in ENDPOINTS:
            continue
        places.setdefault(name, []).append((path, step))
    return places


def _problems(
    spec: PipelineSpec, places: dict[str, list[tuple[DocPath, int | None]]], message: str, hint: str
) -> list[Problem]:
    found = []
    for name, where in places.items():
        for path, step in where:
            found.append(
                Problem(
                    message.format(name=name) + did_you_mean(name, [*ALIASES, *ENDPOINTS]),
                    spec.line(path),
                    spec.steps[step].id if step is not None else None,
                    "uses" if step is not None else f"defaults.{name}",
                    hint.format(name=name),
                    step if step is not None else -1,
                )
            )
    return found


_MAKE_KNOWN = (
    "run `klingflow endpoints refresh {name}` once with a fal key (FAL_KEY) and the network (it is kept "
    "in KLINGFLOW_HOME/endpoints), or vendor it: add its record to the fal-schemas folder and run "
    "scripts/vendor_endpoints.py"
)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end from sync code, also when called inside an event loop (the engine)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as exc:  # handed to the caller's thread, raised there
            failure.append(exc)

    thread = threading.Thread(target=target, name="klingflow-fetch-endpoints")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def _fetch(endpoint_ids: list[str]) -> None:
    from klingflow.backends import connect
    from klingflow.backends.platform import refresh_endpoints

    backend = connect()
    try:
        for found in await refresh_endpoints(backend, endpoint_ids):
            if found.record is None:
                _not_listed.add(found.endpoint_id)
    finally:
        await backend.aclose()


def fetch_unknown_endpoints(spec: PipelineSpec) -> list[Problem]:
    """Make the fal endpoint ids ``spec`` names but klingflow does not know known, fetching them once.

    Returns a problem (file, line, step, field ``uses``) for each place naming an id it may not or
    cannot fetch: offline mode, no fal key, or fal's platform API unreachable; :func:`check` reports
    them with every other problem of the file. Ids fal does not list are left for
    :func:`~klingflow.spec.check` to report as unknown.
    """
    places = _unknown(spec)
    if not places:
        return []
    if settings().offline:
        return _problems(
            spec,
            places,
            "endpoint {name!r} is neither vendored nor refreshed, and offline mode fetches nothing",
            _MAKE_KNOWN + "; or drop --offline (KLINGFLOW_OFFLINE) to fetch it now",
        )
    from klingflow.backends import check_backend

    wanted = [name for name in places if name not in _not_listed]
    try:
        if not wanted:
            return []
        if check_backend() is None:
            raise ConfigError(
                "no fal key is configured, and the embedded emulator knows only vendored endpoints"
            )
        _run(_fetch(wanted))
    except KlingflowError as exc:
        return _problems(
            spec,
            {name: places[name] for name in wanted},
            "endpoint {name!r} is not vendored and could not be fetched from fal: "
            + exc.message.replace("{", "{{").replace("}", "}}"),
            _MAKE_KNOWN,
        )
    return []
