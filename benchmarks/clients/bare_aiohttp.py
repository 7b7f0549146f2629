"""The ceiling of a featureless Python client: one ``aiohttp.ClientSession``, a semaphore, ``json``.

    python benchmarks/clients/bare_aiohttp.py INPUT.jsonl OUTPUT.jsonl -c N --url URL [--model M]

Streams ``{id, messages}`` rows, keeps at most N requests in flight, and
writes one JSON line per row as it finishes (completion order). No retries,
no checkpoint, no rate limiting, no ordering.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--url", required=True, help="base URL, without /v1")
    parser.add_argument("--model", default="stub-model")
    args = parser.parse_args()

    url = args.url.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    semaphore = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    tasks: set[asyncio.Task[None]] = set()

    with open(args.output, "w", encoding="utf-8") as out:
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one(row: dict) -> None:
                try:
                    body = json.dumps({"model": args.model, "messages": row["messages"]})
                    async with session.post(url, data=body) as resp:
                        data = json.loads(await resp.read())
                    if resp.status != 200:
                        result = {"id": row["id"], "error": f"http_{resp.status}"}
                    else:
                        choice = data["choices"][0]
                        result = {
                            "id": row["id"],
                            "content": choice["message"]["content"],
                            "finish_reason": choice.get("finish_reason"),
                            "usage": data.get("usage"),
                        }
                except Exception as exc:  # noqa: BLE001 - a failed row becomes an error line
                    result = {"id": row["id"], "error": f"{type(exc).__name__}: {exc}"}
                finally:
                    semaphore.release()
                out.write(json.dumps(result) + "\n")

            with open(args.input, encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    await semaphore.acquire()
                    task = asyncio.create_task(one(row))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
