"""klingflow's Prefect server answers concurrent writes instead of refusing them with 503.

Stock ``prefect server start`` begins SQLite transactions DEFERRED; under concurrent writers
SQLite refuses the upgrade at once and the server answers 503, which Prefect's client retries
after sleeping seconds (a batch's child flow runs are such writers). The requests here go out
without a client's retries, so every refusal is seen.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx


async def create_flow_runs(api: str, count: int, at_once: int) -> list[int]:
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:
        flow = await client.post("/flows/", json={"name": f"burst-{uuid.uuid4().hex[:8]}"})
        flow.raise_for_status()
        gate = asyncio.Semaphore(at_once)

        async def one(n: int) -> int:
            async with gate:
                body = {"flow_id": flow.json()["id"], "name": f"run-{n}", "state": {"type": "PENDING"}}
                created = await client.post("/flow_runs/", json=body)
                if created.status_code != 201:
                    return created.status_code
                running = await client.post(
                    f"/flow_runs/{created.json()['id']}/set_state", json={"state": {"type": "RUNNING"}}
                )
                return running.status_code

        return await asyncio.gather(*(one(n) for n in range(count)))


def test_concurrent_flow_runs_are_created_without_a_refusal(session_prefect) -> None:
    codes = asyncio.run(create_flow_runs(session_prefect["PREFECT_API_URL"], 120, 16))
    refused = [code for code in codes if code not in (200, 201)]
    assert not refused, f"{len(refused)} of {len(codes)} writes refused: {sorted(set(refused))}"
