"""Rate-limit benchmark: how close does ``inferbatch run`` get to a server's RPM limit, and how many 429s does it cause?

Run by hand (not part of the test suite); it takes about ``3 * duration`` seconds plus start-up:

    /tmp/venv/bin/python benchmarks/ratelimit.py            # 600 RPM, 200 s per client, -c 16, 50 ms latency

For each client a fresh simulator process is started (``inferbatch simulate --rpm N``: a 60 s sliding
window, ``x-ratelimit-*`` headers on every answer, ``Retry-After`` on 429s unless ``--no-retry-after``),
so no client inherits another one's window. The clients:

* ``inferbatch -c C``: ``inferbatch run INPUT -o OUT -c C`` with nothing else, on more rows than it can
  finish, stopped with SIGTERM after ``--duration`` seconds (it drains and exits 143);
* ``naive -c C``: aiohttp + ``asyncio.Semaphore(C)``, sends as fast as the semaphore allows, on a 429
  sleeps ``Retry-After`` (else 1 s) and retries that row; no pacing;
* ``inferbatch -c C, no Retry-After``: as the first, against a simulator whose 429s carry only the
  ``x-ratelimit-*`` headers (as Heroku may send them).

Figures come from the simulator's ``GET /stats`` (what the server saw), sampled every second for the
per-window breakdown. ``duration_s`` is from the client's start (process spawn, imports included) to
the stop; achieved RPM = 200s / duration_s * 60; share of limit = achieved RPM / rpm. Over a sliding
window a bursty client can legally exceed 100 % over a short run (a full window at t=0 and another at
t=60), so 100 % is the steady-state ceiling, not a hard one.

Prints Markdown: the command line, versions, ``nproc``, the table and a per-window breakdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

MODEL = "claude-4-sonnet"
CLIENTS = ("inferbatch", "naive", "inferbatch-no-retry-after")


# ---- simulator ---------------------------------------------------------------
class Simulator:
    """``inferbatch simulate`` as its own process; ``url`` is its base URL."""

    def __init__(self, rpm: int, latency_ms: float, retry_after: bool, log: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "inferbatch",
            "simulate",
            "--port",
            "0",
            "--rpm",
            str(rpm),
            "--latency-ms",
            str(latency_ms),
        ]
        if not retry_after:
            cmd.append("--no-retry-after")
        self.cmd = cmd
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"simulator did not start: {line!r} (see {log})")
        self.url = line

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Sampler:
    """Polls ``/stats`` every ``interval`` seconds: (seconds since t0, requests, 200s, 429s)."""

    def __init__(self, sim: Simulator, t0: float, interval: float = 1.0) -> None:
        self.sim = sim
        self.t0 = t0
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            s = self.sim.stats()
        except OSError:
            return
        by = s["by_status"]
        self.samples.append((time.monotonic() - self.t0, s["requests"], by.get("200", 0), by.get("429", 0)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# ---- results -----------------------------------------------------------------
@dataclass
class Result:
    client: str
    duration_s: float
    requests: int
    ok: int
    rate_limited: int
    rpm: int
    exit_code: int | None = None
    first_request_s: float | None = None
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def share_429(self) -> float:
        return 100.0 * self.rate_limited / self.requests if self.requests else 0.0

    @property
    def achieved_rpm(self) -> float:
        return self.ok / self.duration_s * 60 if self.duration_s else 0.0

    @property
    def share_of_limit(self) -> float:
        return 100.0 * self.achieved_rpm / self.rpm

    def windows(self, length: float = 60.0) -> list[tuple[str, int, int, int]]:
        """(span, requests, 200s, 429s) per ``length`` seconds since the client started, from the samples."""
        out = []
        start = 0.0
        end_t = self.duration_s
        while start < end_t - 1e-9:
            end = min(start + length, end_t)
            a, b = _at(self.samples, start), _at(self.samples, end)
            out.append((f"{start:.0f}–{end:.0f} s", b[0] - a[0], b[1] - a[1], b[2] - a[2]))
            start = end
        return out


def _at(samples: list[tuple[float, int, int, int]], t: float) -> tuple[int, int, int]:
    """Counters at time ``t``: the last sample taken at or before it (zeros before the first)."""
    best = (0, 0, 0)
    for ts, req, ok, r429 in samples:
        if ts <= t + 0.5:  # samples are ~1 s apart; take the one nearest the boundary
            best = (req, ok, r429)
        else:
            break
    return best


def _finish(name: str, sim: Simulator, sampler: Sampler, duration: float, rpm: int) -> Result:
    sampler.stop()
    final = sim.stats()
    by = final["by_status"]
    first = next((ts for ts, req, _, _ in sampler.samples if req > 0), None)
    other = {k: v for k, v in by.items() if k not in ("200", "429")}
    result = Result(
        name,
        duration,
        final["requests"],
        by.get("200", 0),
        by.get("429", 0),
        rpm,
        first_request_s=first,
        samples=sampler.samples,
    )
    if other:
        result.notes.append(f"other statuses: {other}")
    return result


# ---- client A: inferbatch run --------------------------------------------------
def run_inferbatch(name: str, args: argparse.Namespace, workdir: Path, retry_after: bool) -> Result:
    tag = name.replace(" ", "_")
    sim = Simulator(args.rpm, args.latency_ms, retry_after, workdir / f"{tag}.sim.log")
    try:
        rows = int(args.rpm * args.duration / 60 * 1.5) + args.concurrency
        input_path = workdir / f"{tag}.input.jsonl"
        with open(input_path, "w") as f:
            for i in range(rows):
                f.write(json.dumps({"id": f"r{i}", "prompt": f"benchmark row {i}: say something short"}) + "\n")
        out = workdir / f"{tag}.out.jsonl"
        cmd = [
            sys.executable,
            "-m",
            "inferbatch",
            "run",
            str(input_path),
            "-o",
            str(out),
            "-c",
            str(args.concurrency),
            "--drain-timeout",
            "5",
            "--summary-json",
            str(workdir / f"{tag}.summary.json"),
        ]
        env = dict(os.environ, INFERENCE_URL=sim.url, INFERENCE_KEY="benchmark-key", INFERENCE_MODEL_ID=MODEL)
        stderr_path = workdir / f"{tag}.stderr.log"
        with open(stderr_path, "wb") as stderr:
            t0 = time.monotonic()
            sampler = Sampler(sim, t0)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                proc.wait(timeout=args.duration)
                ended_early = True
            except subprocess.TimeoutExpired:
                ended_early = False
            duration = time.monotonic() - t0
            if not ended_early:
                proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        result = _finish(name, sim, sampler, duration, args.rpm)
        result.exit_code = code
        if ended_early:
            result.notes.append(f"client exited on its own after {duration:.0f} s (exit {code})")
        elif code != 143:
            result.notes.append(f"exit {code}, expected 143 after SIGTERM")
        log_lines = stderr_path.read_text(errors="replace").splitlines()
        result.notes.extend(ln for ln in log_lines if ln.startswith(("summary", "drain")))
        return result
    finally:
        sim.stop()


# ---- client B: naive semaphore loop --------------------------------------------
async def _naive(url: str, concurrency: int, duration: float, rows: int) -> None:
    endpoint = f"{url}/v1/chat/completions"
    headers = {"Authorization": "Bearer benchmark-key", "Content-Type": "application/json"}
    sem = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"benchmark row {i}: say something short"}]}
        async with sem:
            while True:
                async with session.post(endpoint, json=body) as resp:
                    await resp.read()
                    if resp.status != 429:
                        return
                    try:
                        wait = float(resp.headers.get("Retry-After", "1"))
                    except ValueError:
                        wait = 1.0
                await asyncio.sleep(wait)  # holds its semaphore slot while it waits, as a naive loop does

    async def feed(session: aiohttp.ClientSession) -> None:
        tasks: set[asyncio.Task[None]] = set()
        for i in range(rows):
            await sem.acquire()  # do not create more tasks than slots
            sem.release()
            task = asyncio.create_task(one(session, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        feeder = asyncio.create_task(feed(session))
        try:
            await asyncio.wait_for(asyncio.shield(feeder), duration)
        except TimeoutError:
            feeder.cancel()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await asyncio.gather(feeder, return_exceptions=True)


def run_naive(name: str, args: argparse.Namespace, workdir: Path) -> Result:
    sim = Simulator(args.rpm, args.latency_ms, True, workdir / "naive.sim.log")
    try:
        rows = int(args.rpm * args.duration / 60 * 1.5) + args.concurrency
        t0 = time.monotonic()
        sampler = Sampler(sim, t0)
        asyncio.run(_naive(sim.url, args.concurrency, args.duration, rows))
        duration = time.monotonic() - t0
        result = _finish(name, sim, sampler, duration, args.rpm)
        if duration < args.duration - 1:
            result.notes.append(f"sent all {rows} rows after {duration:.0f} s")
        return result
    finally:
        sim.stop()


# ---- report ------------------------------------------------------------------
def versions() -> str:
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    return (
        f"python {platform.python_version()}, aiohttp {aiohttp.__version__}, inferbatch {inferbatch_source()}, "
        f"nproc {nproc}, {platform.system()} {platform.machine()}"
    )


def inferbatch_source() -> str:
    """Where the subprocesses import inferbatch from (PYTHONPATH is honoured), and its git commit if any."""
    try:
        path = subprocess.run(
            [sys.executable, "-c", "import inferbatch; print(inferbatch.__file__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    where = str(Path(path).parent.parent)
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"from {where}"
    return f"from {where} at {commit}{' (uncommitted changes)' if dirty else ''}"


def table(results: list[Result]) -> str:
    lines = [
        "| client | duration_s | requests | ok | 429s | 429 share % | achieved RPM | share of limit % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.client} | {r.duration_s:.1f} | {r.requests} | {r.ok} | {r.rate_limited} | "
            f"{r.share_429:.1f} | {r.achieved_rpm:.1f} | {r.share_of_limit:.1f} |"
        )
    return "\n".join(lines)


def window_table(results: list[Result]) -> str:
    lines = ["| client | window | requests | ok | 429s |", "|---|---|---:|---:|---:|"]
    for r in results:
        for span, req, ok, r429 in r.windows():
            lines.append(f"| {r.client} | {span} | {req} | {ok} | {r429} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=600, help="limit the simulator enforces [600]")
    parser.add_argument("--duration", type=float, default=200.0, help="seconds per client [200]")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="concurrency of every client [16]")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulator latency [50]")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help=f"comma-separated subset of {','.join(CLIENTS)} [all]"
    )
    parser.add_argument("--keep", metavar="DIR", help="keep inputs, outputs and logs in DIR (default: a temp dir)")
    args = parser.parse_args()
    chosen = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(chosen) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown client(s): {', '.join(sorted(unknown))}")

    command = shlex.join(["python", "benchmarks/ratelimit.py", *sys.argv[1:]])
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"
    with tempfile.TemporaryDirectory(prefix="inferbatch-ratelimit-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results: list[Result] = []
        c = args.concurrency
        for client in chosen:
            print(f"running {client} for {args.duration:g} s …", file=sys.stderr, flush=True)
            if client == "inferbatch":
                results.append(run_inferbatch(f"inferbatch -c {c}", args, workdir, retry_after=True))
            elif client == "naive":
                results.append(run_naive(f"naive -c {c}", args, workdir))
            else:
                results.append(run_inferbatch(f"inferbatch -c {c}, no Retry-After", args, workdir, retry_after=False))
            r = results[-1]
            print(
                f"  {r.client}: requests={r.requests} ok={r.ok} 429={r.rate_limited} share={r.share_of_limit:.1f}%",
                file=sys.stderr,
                flush=True,
            )

        print(f"Command: `{command}`  ")
        print(
            f"Settings: simulator `--rpm {args.rpm} --latency-ms {args.latency_ms:g}` (60 s sliding window), "
            f"{args.duration:g} s per client, `-c {c}`  "
        )
        print(f"Environment: {versions()}")
        print()
        print(table(results))
        print()
        print(
            "Per 60 s window since the client started (from 1 s samples of `/stats`; requests count on arrival, "
            "200s on completion, so a window can be off by one at its edges):"
        )
        print()
        print(window_table(results))
        notes = [(r.client, n) for r in results for n in r.notes]
        if notes:
            print()
            print("Notes:")
            print()
            for client, note in notes:
                print(f"- {client}: `{note}`")


if __name__ == "__main__":
    main()
