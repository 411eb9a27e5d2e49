"""One fal account's concurrency limit, shared by every machine: a Prefect global concurrency limit.

fal caps how many requests one account has running at once; each klingflow process caps only its
own (``--concurrency``), so three workers at 4 would send twelve into an account that takes five,
and fal answers with 429s or queues them. With ``KLINGFLOW_TEAM_LIMIT=NAME`` every fal request of
every run reporting to the Prefect server holds one slot of the global concurrency limit ``NAME``
from its submit to its result, inside the run's own cap (:mod:`klingflow.engine.generation`).

Prefect does the hard parts: the slots live on its server, a slot is a lease the holder renews
while it runs (``prefect.concurrency.asyncio.concurrency``), and the server's repossessor takes
back a lease that was not renewed (a SIGKILLed holder) once it expires: ``KLINGFLOW_TEAM_LEASE``
seconds (default 60) plus the repossessor's 15 s loop. ``strict``: a limit that does not exist is
an error, said before a run pays anything (:func:`check_team_limit`), never a silent "no cap".
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectNotFound

from klingflow.errors import ConfigError
from klingflow.settings import settings

__all__ = ["check_team_limit", "read_team_limit", "set_team_limit", "team_slot"]


def team_slot() -> Callable[[], AbstractAsyncContextManager[Any]] | None:
    """What holds one slot of the team's limit (None when ``KLINGFLOW_TEAM_LIMIT`` is not set)."""
    name, lease = settings().team_limit, settings().team_lease
    if not name:
        return None

    def one_slot() -> AbstractAsyncContextManager[Any]:
        return concurrency(name, occupy=1, strict=True, lease_duration=lease)

    return one_slot


async def read_team_limit(name: str) -> GlobalConcurrencyLimitResponse | None:
    """The limit as the Prefect server has it, or None."""
    async with get_client() as client:
        try:
            found = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None
    return found


async def check_team_limit() -> None:
    """Refuse to start (ConfigError) when ``KLINGFLOW_TEAM_LIMIT`` names no limit, or an inactive one."""
    name = settings().team_limit
    if not name:
        return
    limit = await read_team_limit(name)
    if limit is None or not limit.active:
        state = "does not exist" if limit is None else "is inactive"
        raise ConfigError(
            f"the team limit {name!r} (KLINGFLOW_TEAM_LIMIT) {state} on the Prefect server",
            context="KLINGFLOW_TEAM_LIMIT",
            hint=f"create it: klingflow team-limit {name} --slots N (N: what the fal account runs at once)",
        )


async def set_team_limit(name: str, slots: int) -> GlobalConcurrencyLimitResponse:
    """Create the limit with ``slots`` slots, or change an existing one's; returns it as stored."""
    async with get_client() as client:
        if await read_team_limit(name) is None:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots, active=True)
            )
        else:
            await client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
            )
    stored = await read_team_limit(name)
    assert stored is not None
    return stored
