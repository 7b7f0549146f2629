"""Summarise a py-spy ``--format raw`` profile: where the CPU samples go.

    py-spy record --rate 500 --format raw --threads -o prof.raw -- inferbatch run IN -o OUT -c 64 -q
    python benchmarks/pyspy_summary.py prof.raw [--top 25]

Prints Markdown: samples per thread; *self* time per function (the frame on
top of the stack); *inclusive* time per function (anywhere on the stack);
and self time per component (the package or inferbatch module of the top
frame). py-spy leaves out idle samples (a thread blocked in epoll, a lock,
a sleep) unless ``--idle`` was given, so the percentages are shares of the
CPU the process actually used.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def component(file: str) -> str:
    if "inferbatch/" in file:
        return "inferbatch/" + file.split("inferbatch/", 1)[1].split(":")[0]
    for name in ("aiohttp", "yarl", "multidict", "tenacity", "click", "pyarrow", "orjson", "openai", "httpx", "httpx2"):
        if f"{name}/" in file:
            return name
    if file.startswith("asyncio/") or "/asyncio/" in file:
        return "asyncio"
    if "<frozen" in file or "importlib" in file:
        return "imports"
    return file.split("/")[0] if "/" in file else file or "?"


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append((stack.split(";"), int(count)))
    return stacks


def name_of(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame)
    if not match:
        return frame, ""
    file = match["file"]
    short = file
    return f"{match['func']} ({short}{':' + match['line'] if match['line'] else ''})", file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("raw")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    stacks = parse(args.raw)
    total = sum(c for _, c in stacks)
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    for frames, count in stacks:
        if frames and frames[0].startswith("thread ("):
            # "thread (TID): NAME" -> NAME, so runs merged with `cat` add up
            threads[frames[0].split("): ", 1)[1] if "): " in frames[0] else "(unnamed)"] += count
            frames = frames[1:]
        else:
            threads["all"] += count
        if not frames:
            continue
        top, file = name_of(frames[-1])
        self_time[top] += count
        components[component(file)] += count
        for frame in {name_of(f)[0] for f in frames}:
            inclusive[frame] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f} %"

    print(f"{total} samples\n")
    print("| thread | samples | share |\n|---|---:|---:|")
    for thread, n in threads.most_common():
        print(f"| {thread} | {n} | {pct(n)} |")
    print("\n**Self time by component** (top frame's package / inferbatch module)\n")
    print("| component | share |\n|---|---:|")
    for name, n in components.most_common(args.top):
        print(f"| {name} | {pct(n)} |")
    print(f"\n**Self time, top {args.top} functions**\n")
    print("| function | share |\n|---|---:|")
    for name, n in self_time.most_common(args.top):
        print(f"| `{name}` | {pct(n)} |")
    print(f"\n**Inclusive time, top {args.top} functions** (on the stack)\n")
    print("| function | share |\n|---|---:|")
    for name, n in inclusive.most_common(args.top):
        print(f"| `{name}` | {pct(n)} |")


if __name__ == "__main__":
    main()
