"""What crash safety costs: req/s with the durable checkpoint, and with its durability switched off.

Run by hand (not a test):  python benchmarks/checkpoint_overhead.py [--rows 20000] [--repeats 5] [-c 64]

"durable" is inferbatch as users run it: one write() per finished row, one per sent row (the
in-doubt ledger), an fsync every second. "not durable" keeps the same code path but buffers the
result lines in user space, skips the ledger and never fsyncs: what a runner without crash safety
would do. Both run in this process against the simulator in its own process (zero latency), the
two alternating, and the medians are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inferbatch import checkpoint as checkpoint_module
from inferbatch.config import resolve
from inferbatch.runner import run_batch


class NotDurable(checkpoint_module.Checkpoint):
    def _open_logs(self) -> None:
        super()._open_logs()
        self._buffer = open(self.dir / "results.jsonl", "ab", buffering=1 << 20)  # noqa: SIM115

    def mark_sent(self, slot: int) -> None:
        pass

    def record(self, slot: int, line: bytes, status: str) -> None:
        self._buffer.write(line)
        self.finished.set(slot)

    def sync(self) -> None:
        pass

    def lines_in_order(self):  # type: ignore[no-untyped-def]
        self._buffer.flush()
        return super().lines_in_order()


def one_run(source: Path, output: Path, url: str, concurrency: int, durable: bool) -> float:
    env = {"INFERENCE_URL": url, "INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "m"}
    cfg = resolve({"input": str(source), "output": str(output), "concurrency": concurrency, "restart": True}, env)
    original = checkpoint_module.Checkpoint.open_for_run
    if not durable:  # the runner opens a NotDurable where it would open a Checkpoint
        checkpoint_module.Checkpoint.open_for_run = (  # type: ignore[method-assign]
            lambda *a, **k: original.__func__(NotDurable, *a, **k)  # type: ignore[attr-defined]
        )
    try:
        started = time.perf_counter()
        report = asyncio.run(run_batch(cfg, handle_signals=False))
        wall = time.perf_counter() - started
    finally:
        checkpoint_module.Checkpoint.open_for_run = original  # type: ignore[method-assign]
    assert report.summary.ok == report.summary.rows, report.summary.as_dict()
    return report.summary.rows / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inferbatch-ckpt-bench-"))
    source = work / "in.jsonl"
    with open(source, "w") as handle:
        for i in range(args.rows):
            handle.write(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": f"question {i}"}]}) + "\n")
    sim = subprocess.Popen(
        [sys.executable, "-m", "inferbatch", "simulate", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert sim.stdout is not None
    url = sim.stdout.readline().strip()
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(args.repeats):
            for durable in (True, False):
                rates[durable].append(one_run(source, work / "out.jsonl", url, args.concurrency, durable))
    finally:
        sim.terminate()
        sim.wait()
    durable, not_durable = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"rows={args.rows} -c {args.concurrency} repeats={args.repeats} nproc={os.cpu_count()}\n")
    print("| checkpoint | median req/s | runs |")
    print("|---|---:|---|")
    print(f"| durable (as shipped) | {durable:.0f} | {', '.join(f'{r:.0f}' for r in rates[True])} |")
    print(f"| not durable | {not_durable:.0f} | {', '.join(f'{r:.0f}' for r in rates[False])} |")
    print(f"\noverhead of durability: {(1 - durable / not_durable) * 100:.1f} % of throughput")


if __name__ == "__main__":
    main()
