"""What klingflow is measured against: a plain ``asyncio.gather`` + ``fal_client`` script.

N text-to-video generations, at most CONCURRENCY in flight, each submitted, awaited with
fal_client's own ``handle.get()`` and downloaded to OUT_DIR. No cache, no journal, no retries,
no ledger: the least a person would write. ``bench_overhead.py`` runs it as a whole process.

    python benchmarks/hand_written.py CONCURRENCY OUT_DIR PROMPT [PROMPT ...]
"""

import asyncio
import sys
from pathlib import Path

import fal_client
import httpx

ENDPOINT = "fal-ai/kling-video/v1/standard/text-to-video"


async def one(client, http, limit, out: Path, index: int, prompt: str) -> int:
    async with limit:
        handle = await client.submit(ENDPOINT, {"prompt": prompt})
        result = await handle.get()
        response = await http.get(result["video"]["url"])
        response.raise_for_status()
        (out / f"shot-{index}.mp4").write_bytes(response.content)
        return len(response.content)


async def main(concurrency: int, out: Path, prompts: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    client, limit = fal_client.AsyncClient(), asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient() as http:
        sizes = await asyncio.gather(*(one(client, http, limit, out, i, p) for i, p in enumerate(prompts)))
    print(f"{len(sizes)} files, {sum(sizes)} bytes")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
