"""The client most users write: the official ``openai`` SDK, a semaphore, ``asyncio.gather``.

    python benchmarks/clients/openai_sdk.py INPUT.jsonl OUTPUT.jsonl -c N --url URL [--model M]

Reads every ``{id, messages}`` row, sends each with at most N in flight
(``AsyncOpenAI`` with its default ``max_retries``), and writes one JSON line
per row, in input order, when everything has finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from openai import AsyncOpenAI


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("--url", required=True, help="base URL, without /v1")
    parser.add_argument("--model", default="stub-model")
    args = parser.parse_args()

    with open(args.input, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]

    client = AsyncOpenAI(base_url=args.url.rstrip("/") + "/v1", api_key="x")
    semaphore = asyncio.Semaphore(args.concurrency)

    async def one(row: dict) -> dict:
        async with semaphore:
            try:
                response = await client.chat.completions.create(model=args.model, messages=row["messages"])
            except Exception as exc:  # noqa: BLE001 - a failed row becomes an error line
                return {"id": row["id"], "error": f"{type(exc).__name__}: {exc}"}
        choice = response.choices[0]
        return {
            "id": row["id"],
            "content": choice.message.content,
            "finish_reason": choice.finish_reason,
            "usage": response.usage.model_dump() if response.usage else None,
        }

    results = await asyncio.gather(*(one(row) for row in rows))
    await client.close()
    with open(args.output, "w", encoding="utf-8") as handle:
        for result in results:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
