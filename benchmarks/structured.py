"""What validating structured answers costs: ``inferbatch run`` with and without ``--schema``, paired runs.

Run by hand (not part of the test suite); prints a Markdown table on stdout, progress on stderr:

    python benchmarks/structured.py                 # 10,000 rows, -c 64, 5 pairs
    python benchmarks/structured.py --rows 2000 --pairs 3

Both runs of a pair send the same 10,000 ticket prompts to the zero-latency stub server
(benchmarks/stub_server.py), which answers every request with the same valid 6-field ticket
(sample_data/ticket.schema.json). "off" sends no schema; "on" sends it (``--schema``, mode api) and
parses and validates every answer. The difference is what the feature costs the client: the larger
request body, parsing, validation and the ``parsed`` column. Which run goes first alternates by pair;
the ratio is taken within each pair and its median reported. CPU is the child's user+sys (``os.wait4``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = ROOT / "sample_data" / "ticket.schema.json"
ANSWER = {
    "category": "billing",
    "urgency": "high",
    "summary": "Charged twice for the March invoice; wants one refunded.",
    "product": "invoicing",
    "needs_human": True,
    "sentiment": -1,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def inferbatch() -> list[str]:
    script = Path(sys.executable).parent / "inferbatch"
    return [str(script)] if script.exists() else [shutil.which("inferbatch") or sys.executable, "-m", "inferbatch"]


def measure(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"inferbatch failed: {stderr[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--concurrency", "-c", type=int, default=64)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="inferbatch-structured-"))
    source = work / "tickets.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for i in range(args.rows):
            handle.write(json.dumps({"id": f"t{i}", "ticket": f"Ticket {i}: I was charged twice, please refund."}))
            handle.write("\n")
    stub = subprocess.Popen(
        [sys.executable, str(HERE / "stub_server.py"), "--content", json.dumps(ANSWER)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stub.stdout is not None
    url = stub.stdout.readline().strip()
    env = {**os.environ, "INFERENCE_URL": url, "INFERENCE_KEY": "bench", "INFERENCE_MODEL_ID": "stub-model"}
    base = [*inferbatch(), "run", str(source), "-c", str(args.concurrency), "-q", "--restart"]
    base += ["--template", "Extract the ticket's fields as JSON. Ticket: {ticket}"]
    modes = {"off": [], "on": ["--schema", str(SCHEMA)]}
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    ratios: list[float] = []
    try:
        for mode in modes:  # warm-up (page cache, imports)
            measure([*base, "-o", str(work / f"warm-{mode}.jsonl"), "--limit", "500", *modes[mode]], env)
        for pair in range(args.pairs):
            order = ["off", "on"] if pair % 2 == 0 else ["on", "off"]
            walls: dict[str, float] = {}
            for mode in order:
                output = work / f"out-{mode}.jsonl"
                wall, cpu = measure([*base, "-o", str(output), *modes[mode]], env)
                rows = output.read_text().splitlines()
                ok = sum('"status":"ok"' in line for line in rows)
                parsed = sum('"parsed":"' in line for line in rows)
                if ok != args.rows or (mode == "on" and parsed != args.rows):
                    raise RuntimeError(f"{mode}: {ok} ok, {parsed} parsed of {args.rows}")
                figures[mode].append((wall, cpu))
                walls[mode] = wall
                log(f"pair {pair + 1} {mode}: wall={wall:.2f}s rps={args.rows / wall:,.0f} cpu={cpu:.2f}s")
            ratios.append(walls["off"] / walls["on"])  # throughput on / off
    finally:
        stub.send_signal(signal.SIGTERM)
        stub.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    print(f"### Structured answers: {args.rows:,} rows, 6-field schema, -c {args.concurrency}, zero latency")
    print(f"(median of {args.pairs} pairs)\n")
    print("| run | wall s | req/s | CPU s | CPU µs/row |")
    print("|---|---:|---:|---:|---:|")
    for mode, label in (("off", "no schema"), ("on", "--schema (parse + validate)")):
        wall = statistics.median(w for w, _ in figures[mode])
        cpu = statistics.median(c for _, c in figures[mode])
        print(f"| {label} | {wall:.2f} | {args.rows / wall:,.0f} | {cpu:.2f} | {cpu / args.rows * 1e6:,.0f} |")
    ratio = statistics.median(ratios)
    verdict = "**met**" if ratio >= 0.9 else "**MISSED**"
    print(
        f"\n- throughput with validation / without: **{ratio:.2f}×** (goal ≥ 0.90×: validation costs ≤ 10 %) {verdict}"
    )
    print(f"- per-pair ratios: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
