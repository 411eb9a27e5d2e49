"""What Prefect alone costs klingflow's runs: a flow of N task runs that do nothing, whole process.

klingflow gives each step a Prefect task run and reports to its local Prefect server, so this is
the floor under its overhead: ``bench_overhead.py`` (scenario ``floor``) times it with N = 0 (import
Prefect, create a flow run, finish it, exit) and N = 200 (cap 8, as in the ``zero`` race) against
the same local server klingflow uses. With ``--rows`` each of the N is a child flow run holding one
no-op task run, 8 at once: the shape of a batch of N one-step rows, what Prefect alone costs it.

    python benchmarks/prefect_floor.py N [--rows]
"""

import asyncio
import sys

from prefect import flow, task


@task(persist_result=False)
async def step(index: int) -> int:
    return index


@flow(name="prefect-floor", persist_result=False)
async def floor(n: int, cap: int = 8) -> None:
    limit = asyncio.Semaphore(cap)

    async def one(index: int) -> int:
        async with limit:
            return await step(index)

    await asyncio.gather(*(one(i) for i in range(n)))


@flow(name="prefect-floor-row", persist_result=False)
async def row(index: int) -> int:
    return await step(index)


@flow(name="prefect-floor-batch", persist_result=False)
async def batch(n: int, cap: int = 8) -> None:
    limit = asyncio.Semaphore(cap)

    async def one(index: int) -> int:
        async with limit:
            return await row.with_options(flow_run_name=f"row-{index}")(index)

    await asyncio.gather(*(one(i) for i in range(n)))


if __name__ == "__main__":
    asyncio.run((batch if "--rows" in sys.argv[2:] else floor)(int(sys.argv[1])))
