"""Regenerate the sample inputs: python sample_data/make_samples.py (prompts.parquet mirrors prompts.jsonl)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent

QUESTIONS = [
    "What is the capital of France?", "Explain recursion in one sentence.", "Name three prime numbers.",
    "What does HTTP 429 mean?", "Summarise the plot of Hamlet in two sentences.", "Translate 'good morning' into Spanish.",
    "What is the boiling point of water at sea level in Celsius?", "Give a synonym for 'quick'.",
    "Why is the sky blue? Answer briefly.", "What is 17 times 23?", "Write a haiku about batch jobs.",
    "What is a Heroku dyno?", "Name the largest planet in our solar system.", "What is the chemical symbol for gold?",
    "Define 'idempotent' for an API.", "List two benefits of exponential backoff.", "Who wrote 'Pride and Prejudice'?",
    "Convert 100 Fahrenheit to Celsius.", "What is the square root of 144?", "Give one use of a message queue.",
    "What does JSONL stand for?", "Explain what a checkpoint is in a batch job.", "Name a sorting algorithm with O(n log n) time.",
    "What is the speed of light, roughly, in km/s?", "Suggest a name for a friendly robot.",
    "What is the difference between TCP and UDP, in one line?", "What is Parquet?", "Name three primary colours.",
    "What year did the first person walk on the Moon?", "Give an example of a palindrome.",
    "How many minutes are in a day?", "What is the opposite of 'ancient'?", "Explain rate limiting to a child.",
    "What is the longest river in Africa?", "Write a one-line motivational quote.", "What is the freezing point of water in Kelvin?",
    "Name a programming language created in the 1990s.", "What is an API key?", "What is 2 to the power of 10?",
    "Describe the colour of a ripe banana.", "What is the main ingredient of guacamole?", "Spell 'necessary' backwards.",
    "What is a leap year?", "Give a one-word answer: is the Earth flat?", "What does SIGTERM do to a process?",
    "Name an ocean that borders Australia.", "What is the plural of 'mouse'?", "What is machine learning, in ten words?",
    "Give a fun fact about octopuses.", "What does 'latency' mean in networking?",
]  # fmt: skip


def chat_rows() -> list[dict]:
    rows = []
    for i, question in enumerate(QUESTIONS):
        row: dict = {"id": f"q{i:03d}", "messages": [{"role": "user", "content": question}]}
        if i % 5 == 0:
            row["messages"].insert(0, {"role": "system", "content": "You are a concise assistant."})
        if i % 4 == 1:
            row["temperature"] = 0
        if i % 7 == 2:
            row["max_tokens"] = 64
        rows.append(row)
    return rows


def main() -> None:
    rows = chat_rows()
    with open(HERE / "prompts.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "messages": pa.array([r["messages"] for r in rows], type=pa.list_(message)),
            "temperature": pa.array([r.get("temperature") for r in rows], type=pa.float64()),
            "max_tokens": pa.array([r.get("max_tokens") for r in rows], type=pa.int64()),
        }
    )
    pq.write_table(table, HERE / "prompts.parquet")
    with open(HERE / "openai_batch.jsonl", "w", encoding="utf-8") as f:
        for i, question in enumerate(QUESTIONS[:10]):
            line = {"custom_id": f"request-{i + 1}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": question}], "max_tokens": 200}}  # fmt: skip
            f.write(json.dumps(line) + "\n")
    products = [
        ("p1", "Trail running shoes", "lightweight, grippy, waterproof"),
        ("p2", "Espresso machine", "15 bar pump, steam wand, compact"),
        ("p3", "Noise-cancelling headphones", "40 h battery, foldable, USB-C"),
        ("p4", "Standing desk", "electric, memory presets, bamboo top"),
        ("p5", "Cast iron skillet", "pre-seasoned, 26 cm, oven-safe"),
        ("p6", "E-reader", "glare-free screen, waterproof, 16 GB"),
        ("p7", "Camping tent", "two-person, 1.8 kg, three-season"),
        ("p8", "Mechanical keyboard", "hot-swappable switches, RGB, tenkeyless"),
    ]
    with open(HERE / "products.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "product", "features"])
        writer.writerows(products)


if __name__ == "__main__":
    main()
