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
    with open(HERE / "eval.jsonl", "w", encoding="utf-8") as f:
        for row in eval_rows():
            f.write(json.dumps(row) + "\n")
    with open(HERE / "products.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "product", "features"])
        writer.writerows(products)


EVAL_ITEMS = [
    ("Capital of France?", ["Paris", "Lyon", "Nice"], "Paris"),
    ("Largest planet?", ["Jupiter", "Mars", "Venus"], "Jupiter"),
    ("Chemical symbol for gold?", ["Au", "Ag", "Fe"], "Au"),
    ("Square root of 144?", ["12", "14", "16"], "12"),
    ("Author of Hamlet?", ["Shakespeare", "Marlowe", "Jonson"], "Shakespeare"),
    ("Boiling point of water at sea level in Celsius?", ["100", "90", "120"], "100"),
    ("Plural of mouse?", ["mice", "mouses", "meese"], "mice"),
    ("HTTP status for too many requests?", ["429", "503", "404"], "429"),
    ("Opposite of ancient?", ["modern", "old", "antique"], "modern"),
    ("Minutes in an hour?", ["60", "100", "30"], "60"),
    ("Longest river in Africa?", ["Nile", "Congo", "Niger"], "Nile"),
    ("Primary colour among these?", ["red", "green", "purple"], "red"),
    ("Ocean between Africa and Australia?", ["Indian", "Atlantic", "Arctic"], "Indian"),
    ("Main ingredient of guacamole?", ["avocado", "tomato", "lime"], "avocado"),
    ("2 to the power of 10?", ["1024", "1000", "2048"], "1024"),
    ("Freezing point of water in Kelvin, roughly?", ["273", "0", "373"], "273"),
    ("Which signal asks a process to terminate politely?", ["SIGTERM", "SIGKILL", "SIGSTOP"], "SIGTERM"),
    ("Which data format is columnar?", ["Parquet", "JSONL", "CSV"], "Parquet"),
    ("Year of the first Moon landing?", ["1969", "1972", "1959"], "1969"),
    ("Which of these is a palindrome?", ["level", "lever", "novel"], "level"),
    ("What does the L in JSONL stand for?", ["Lines", "Language", "List"], "Lines"),
    ("Which is a prime number?", ["7", "9", "15"], "7"),
    ("Fastest land animal?", ["cheetah", "lion", "horse"], "cheetah"),
    ("Which planet is called the Red Planet?", ["Mars", "Venus", "Mercury"], "Mars"),
    ("Which gas do plants take in for photosynthesis?", ["carbon dioxide", "oxygen", "nitrogen"], "carbon dioxide"),
    ("How many sides has a hexagon?", ["6", "5", "8"], "6"),
    ("Which is the smallest unit of information?", ["bit", "byte", "word"], "bit"),
    ("Hardest natural material?", ["diamond", "quartz", "granite"], "diamond"),
    ("Which of these sorts in O(n log n) on average?", ["mergesort", "bubblesort", "insertion sort"], "mergesort"),
    ("Which instrument has 88 keys?", ["piano", "organ", "harp"], "piano"),
    ("What is frozen water called?", ["ice", "steam", "dew"], "ice"),
    ("Which continent is Kenya in?", ["Africa", "Asia", "Europe"], "Africa"),
    ("Which protocol is connectionless?", ["UDP", "TCP", "SCTP"], "UDP"),
    ("What colour is a ripe banana?", ["yellow", "blue", "red"], "yellow"),
    ("How many days in a leap year?", ["366", "365", "364"], "366"),
    ("What is 17 times 3?", ["51", "41", "57"], "51"),
    ("Which metal is liquid at room temperature?", ["mercury", "iron", "tin"], "mercury"),
    ("Which animal is known for eight arms?", ["octopus", "squid", "crab"], "octopus"),
    ("Which is the largest ocean on Earth today?", ["Pacific", "Atlantic", "Indian"], "Pacific"),
    ("Which language is this project written in, given its src layout and pyproject file?", ["Python", "Rust", "Go"], "Python"),
]  # fmt: skip


def eval_rows() -> list[dict]:
    return [
        {"id": f"e{i:02d}", "question": f"{q} Options: {', '.join(options)}.", "expected": expected}
        for i, (q, options, expected) in enumerate(EVAL_ITEMS)
    ]


if __name__ == "__main__":
    main()
