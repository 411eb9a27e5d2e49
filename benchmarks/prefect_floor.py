"""What Prefect alone costs klingflow's runs: a flow of N task runs that do nothing, whole process.

klingflow gives each step a Prefect task run and reports to its local Prefect server, so this is
the floor under its overhead: ``bench_overhead.py`` (scenario ``floor``) times it with N = 0 (import
Prefect, create a flow run, finish it, exit) and N = 200 (cap 8, as in the ``zero`` race) against
the same local server klingflow uses.

    python benchmarks/prefect_floor.py N
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


if __name__ == "__main__":
    asyncio.run(floor(int(sys.argv[1])))
