"""``klingflow verify``: hash every stored output the journal points at; mend what fal still keeps.

A cache hit already re-hashes its own files before it is used, and a generation whose stored copy
rotted is fetched again from its request (:meth:`StepContext.look_up`'s ``refetch``). This is the
same check over the whole home at once, for a person who wants to know before a run (or after a
disk scare): every ``done`` entry's files, each found missing, cut (wrong size) or altered (wrong
sha256). With ``repair`` a bad generation of this backend is collected again from its request
while fal keeps its result (1 hour after it completed), exactly as ``klingflow recover`` collects
a request a crash left behind; one fal no longer keeps is reported lost (the next run pays for it
again and says so). A local operation's output is made again, for free, by the next run.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel

from klingflow._files import file_sha256
from klingflow.cache import JournalEntry, OutputRecord
from klingflow.engine.context import StepContext
from klingflow.engine.recover import recover_entry

__all__ = ["Verified", "verify_store"]

Damage = Literal["missing", "cut", "altered"]
Repair = Literal["refetched", "lost", "pending", "unreachable", "remade by the next run", "other backend"]


_REPAIRS: dict[str, Repair] = {
    "recovered": "refetched",
    "lost": "lost",
    "pending": "pending",
    "unreachable": "unreachable",
}
"""What collecting a bad entry's request came to (:func:`recover_entry`'s outcome), in verify's words."""


class Verified(BaseModel):
    """One ``done`` journal entry whose stored files do not all verify."""

    key: str
    endpoint: str
    request_id: str | None
    damage: dict[str, Damage]
    repair: Repair | None = None
    detail: str = ""


def _damage(ctx: StepContext, output: OutputRecord) -> Damage | None:
    path = ctx.store.path_for(output.sha256, output.suffix)
    if not path.is_file():
        return "missing"
    if path.stat().st_size != output.bytes:
        return "cut"
    return None if file_sha256(path) == output.sha256 else "altered"


def _check(ctx: StepContext) -> tuple[int, list[tuple[JournalEntry, dict[str, Damage]]]]:
    done = [entry for entry in ctx.journal.entries() if entry.status == "done"]
    bad = []
    for entry in done:
        damage = {name: d for name, out in entry.outputs.items() if (d := _damage(ctx, out)) is not None}
        if damage:
            bad.append((entry, damage))
    return len(done), bad


async def verify_store(ctx: StepContext, *, repair: bool = False) -> tuple[int, list[Verified]]:
    """How many ``done`` entries were checked, and the bad ones (mended where fal allows, if asked)."""
    try:
        checked, bad = await asyncio.to_thread(_check, ctx)
        found = []
        for entry, damage in bad:
            item = Verified(
                key=entry.key, endpoint=entry.endpoint, request_id=entry.request_id, damage=damage
            )
            found.append(item)
            if not repair:
                continue
            if not entry.request_id:
                item.repair = "remade by the next run"
            elif entry.backend != ctx.backend_identity:
                item.repair, item.detail = (
                    "other backend",
                    f"made on {entry.backend}; verify with that backend",
                )
            else:
                recovered = await recover_entry(ctx, ctx.journal.reopen(entry))
                item.repair = _REPAIRS.get(recovered.outcome, "unreachable")
                item.detail = recovered.detail
        return checked, found
    finally:
        await ctx.aclose()
