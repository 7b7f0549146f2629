"""Benchmark ``inferbatch run`` against the openai SDK and a bare aiohttp client, on a local stub server.

Run by hand (not part of the test suite); prints Markdown tables on stdout and
progress on stderr:

    python benchmarks/run.py                          # S1-S4, 3 repeats each
    python benchmarks/run.py --scenarios S1,S4 --repeats 5
    python benchmarks/run.py --scenarios S3 --million  # also 1,000,000 rows once

Scenarios (see benchmarks/README.md):

    S1  throughput: zero latency, 10,000 rows, -c 64, all three clients
    S2  concurrency efficiency: 100 ms server latency, 5,000 rows, -c 256, all three clients
    S3  memory: inferbatch only, zero latency, 10,000 vs 200,000 rows, JSONL and Parquet output
    S4  start-up: `inferbatch --help` and `inferbatch run --help`, median of 10

Each client runs as a child process; its wall time is taken around the
process by a tiny launcher, and its CPU time (user+sys) and peak RSS come from ``os.wait4``,
which covers the child and every descendant it waited for. Clients alternate
(A B C A B C ...) and every figure is the median over the repeats; ratios are
taken within a round (same repeat), then their median is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
CLIENTS = ("inferbatch", "openai-sdk", "bare-aiohttp")
MODEL = "stub-model"
CLK_TCK = os.sysconf("SC_CLK_TCK")

S1 = {"rows": 10_000, "concurrency": 64, "latency_ms": 0}
S2 = {"rows": 5_000, "concurrency": 256, "latency_ms": 100}
S3_ROWS = (10_000, 200_000)
S3_CONCURRENCY = 64
MILLION = 1_000_000
WARMUP_ROWS = 500


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def inferbatch_command() -> list[str]:
    script = Path(PY).parent / "inferbatch"
    if script.exists():
        return [str(script)]
    found = shutil.which("inferbatch")
    return [found] if found else [PY, "-m", "inferbatch"]


# ---- the stub server ------------------------------------------------------
class Stub:
    """benchmarks/stub_server.py in its own process."""

    def __init__(self, latency_ms: float) -> None:
        self.latency_ms = latency_ms
        self.proc = subprocess.Popen(
            [PY, str(HERE / "stub_server.py"), "--latency-ms", str(latency_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"stub server did not start (printed {self.url!r})")

    def _call(self, path: str, method: str = "GET") -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._call("/__reset", "POST")

    def stats(self) -> dict[str, Any]:
        return self._call("/__stats")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- inputs, commands, verification --------------------------------------
def make_input(directory: Path, rows: int) -> Path:
    path = directory / f"input-{rows}.jsonl"
    if path.exists():
        return path
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            row = {
                "id": f"row-{i:07d}",
                "messages": [{"role": "user", "content": f"Write one short sentence about item number {i}."}],
            }
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def client_command(
    client: str, url: str, source: Path, output: Path, concurrency: int
) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if client == "inferbatch":
        env.update(INFERENCE_URL=url, INFERENCE_KEY="x", INFERENCE_MODEL_ID=MODEL)
        return [*inferbatch_command(), "run", str(source), "-o", str(output), "-c", str(concurrency), "-q"], env
    script = {"openai-sdk": "openai_sdk.py", "bare-aiohttp": "bare_aiohttp.py"}[client]
    return [
        PY,
        str(HERE / "clients" / script),
        str(source),
        str(output),
        "-c",
        str(concurrency),
        "--url",
        url,
        "--model",
        MODEL,
    ], env


def count_ok(client: str, output: Path) -> int:
    if not output.exists():
        return 0
    if output.suffix == ".parquet":
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        status = pq.read_table(output, columns=["status"]).column("status")
        return int(pc.sum(pc.equal(status, "ok")).as_py() or 0)
    marker = b'"status":"ok"' if client == "inferbatch" else b'"content":'
    with open(output, "rb") as handle:
        return sum(1 for line in handle if marker in line)


def cleanup(output: Path) -> None:
    output.unlink(missing_ok=True)
    shutil.rmtree(str(output) + ".checkpoint", ignore_errors=True)


# ---- one measurement -----------------------------------------------------
# The child is started by a tiny launcher (``python -S``, a few MB) rather than by this process, because
# Linux carries the exec()ing process's old high-water RSS into the child's ru_maxrss: spawned from here
# (tens of MB once pyarrow is loaded for checking Parquet output), every child would report at least that.
# The launcher posix_spawn()s the command, times it, and reports os.wait4's rusage for it as JSON.
LAUNCHER = r"""
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as handle:
    json.dump({"wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
               "exit": os.waitstatus_to_exitcode(status)}, handle)
"""


def run_child(cmd: list[str], env: dict[str, str] | None = None, stderr_path: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` to the end; wall time, CPU (user+sys of the process tree it waited for), peak RSS."""
    with tempfile.NamedTemporaryFile(prefix="bench-rusage-", suffix=".json", delete=False) as tmp:
        result_path = Path(tmp.name)
    err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        subprocess.run(
            [PY, "-S", "-c", LAUNCHER, str(result_path), *cmd],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            check=True,
        )
        usage = json.loads(result_path.read_text())
    finally:
        if stderr_path:
            err.close()  # type: ignore[union-attr]
        result_path.unlink(missing_ok=True)
    return {
        "wall_s": usage["wall_s"],
        "cpu_s": usage["user_s"] + usage["sys_s"],
        "user_s": usage["user_s"],
        "sys_s": usage["sys_s"],
        "rss_mb": usage["maxrss_kib"] / 1024,  # KiB on Linux
        "exit": usage["exit"],
    }


def measure(
    client: str, stub: Stub, source: Path, rows: int, output: Path, concurrency: int, workdir: Path
) -> dict[str, Any]:
    cleanup(output)
    cmd, env = client_command(client, stub.url, source, output, concurrency)
    stub.reset()
    server_cpu = stub.cpu_s()
    result = run_child(cmd, env, workdir / "client.stderr")
    server_cpu = stub.cpu_s() - server_cpu
    stats = stub.stats()
    result.update(
        client=client,
        rows=rows,
        ok=count_ok(client, output),
        rps=rows / result["wall_s"],
        server_requests=stats["requests"],
        window_s=stats["span_s"],
        window_rps=stats["requests"] / stats["span_s"] if stats["span_s"] > 0 else 0.0,
        server_cpu_pct=100 * server_cpu / result["wall_s"],
        cpu_us_per_row=1e6 * result["cpu_s"] / rows,
    )
    if result["exit"] != 0 or result["ok"] != rows:
        tail = (workdir / "client.stderr").read_text(errors="replace")[-2000:]
        log(f"  WARNING {client}: exit={result['exit']} ok={result['ok']}/{rows}\n{tail}")
    cleanup(output)
    return result


# ---- tables --------------------------------------------------------------
def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def client_table(by_client: dict[str, list[dict[str, Any]]]) -> str:
    header = [
        "client",
        "wall s",
        "req/s",
        "req/s in server window",
        "CPU s",
        "CPU µs/row",
        "peak RSS MB",
        "stub CPU %",
        "ok rows",
        "runs",
    ]
    rows = []
    for client, runs in by_client.items():
        rows.append(
            [
                f"`{client}`",
                f"{med(runs, 'wall_s'):.2f}",
                f"{med(runs, 'rps'):,.0f}",
                f"{med(runs, 'window_rps'):,.0f}",
                f"{med(runs, 'cpu_s'):.2f}",
                f"{med(runs, 'cpu_us_per_row'):,.0f}",
                f"{med(runs, 'rss_mb'):.1f}",
                f"{med(runs, 'server_cpu_pct'):.0f}",
                f"{min(r['ok'] for r in runs):,}/{runs[0]['rows']:,}",
                str(len(runs)),
            ]
        )
    return table(header, rows)


def ratio(by_client: dict[str, list[dict[str, Any]]], a: str, b: str, key: str) -> float:
    """Median over rounds of a[key]/b[key], each ratio taken within one round; NaN when ``b`` never ran (the
    openai SDK not installed: ``pip install -r benchmarks/requirements.txt``), so the table still prints."""
    pairs = zip(by_client[a], by_client[b], strict=True)
    ratios = [x[key] / y[key] for x, y in pairs if y[key] and y.get("ok", 1)]
    return statistics.median(ratios) if ratios else float("nan")


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


# ---- scenarios -----------------------------------------------------------
def warm_up(stub: Stub, workdir: Path, clients: tuple[str, ...], concurrency: int) -> None:
    source = make_input(workdir, WARMUP_ROWS)
    for client in clients:
        measure(client, stub, source, WARMUP_ROWS, workdir / f"warmup-{client}.jsonl", concurrency, workdir)


def compare_clients(
    name: str, spec: dict[str, int], repeats: int, workdir: Path, clients: tuple[str, ...] = CLIENTS
) -> dict[str, list[dict[str, Any]]]:
    source = make_input(workdir, spec["rows"])
    by_client: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    with Stub(spec["latency_ms"]) as stub:
        log(f"{name}: stub {stub.url} latency_ms={spec['latency_ms']}; warm-up")
        warm_up(stub, workdir, clients, spec["concurrency"])
        for round_no in range(1, repeats + 1):
            for client in clients:
                result = measure(
                    client, stub, source, spec["rows"], workdir / f"out-{client}.jsonl", spec["concurrency"], workdir
                )
                result["round"] = round_no
                by_client[client].append(result)
                log(
                    f"{name} round {round_no} {client}: wall={result['wall_s']:.2f}s rps={result['rps']:,.0f} "
                    f"window_rps={result['window_rps']:,.0f} cpu={result['cpu_s']:.2f}s rss={result['rss_mb']:.1f}MB "
                    f"stub_cpu={result['server_cpu_pct']:.0f}% ok={result['ok']}"
                )
    return by_client


def scenario_s1(repeats: int, workdir: Path, raw: dict[str, Any]) -> str:
    by_client = compare_clients("S1", S1, repeats, workdir)
    raw["S1"] = by_client
    vs_bare = ratio(by_client, "inferbatch", "bare-aiohttp", "rps")
    vs_sdk = ratio(by_client, "inferbatch", "openai-sdk", "rps")
    vs_bare_w = ratio(by_client, "inferbatch", "bare-aiohttp", "window_rps")
    vs_sdk_w = ratio(by_client, "inferbatch", "openai-sdk", "window_rps")
    cpu_vs_bare = ratio(by_client, "inferbatch", "bare-aiohttp", "cpu_s")
    return "\n".join(
        [
            f"### S1 throughput: zero latency, {S1['rows']:,} rows, -c {S1['concurrency']} (median of {repeats})",
            "",
            client_table(by_client),
            "",
            f"- inferbatch / bare-aiohttp req/s: **{vs_bare:.2f}×** (goal ≥ 0.8×) {verdict(vs_bare >= 0.8)}; "
            f"in the server window {vs_bare_w:.2f}×",
            f"- inferbatch / openai-sdk req/s: **{vs_sdk:.1f}×** (goal ≥ 10×) {verdict(vs_sdk >= 10)}; "
            f"in the server window {vs_sdk_w:.1f}×",
            f"- inferbatch / bare-aiohttp CPU seconds: {cpu_vs_bare:.2f}×",
        ]
    )


def scenario_s2(repeats: int, workdir: Path, raw: dict[str, Any]) -> str:
    by_client = compare_clients("S2", S2, repeats, workdir)
    raw["S2"] = by_client
    ideal = S2["concurrency"] / (S2["latency_ms"] / 1000)
    lines = [
        f"### S2 concurrency efficiency: {S2['latency_ms']} ms server latency, {S2['rows']:,} rows, "
        f"-c {S2['concurrency']} (median of {repeats}; ideal {ideal:,.0f} req/s)",
        "",
        client_table(by_client),
        "",
    ]
    for client, runs in by_client.items():
        e2e = med(runs, "rps") / ideal
        window = med(runs, "window_rps") / ideal
        goal = client == "inferbatch"
        e2e_verdict = f" (goal ≥ 90 %) {verdict(e2e >= 0.9)}" if goal else ""
        window_verdict = f" (goal ≥ 90 %) {verdict(window >= 0.9)}" if goal else ""
        lines.append(
            f"- `{client}`: end to end (process start to exit) **{100 * e2e:.0f} %** of ideal{e2e_verdict}; "
            f"in the server window (first request in to last response out) **{100 * window:.0f} %**{window_verdict}"
        )
    return "\n".join(lines)


def scenario_s3(
    repeats: int,
    workdir: Path,
    raw: dict[str, Any],
    million: bool,
    million_formats: list[str],
    million_only: bool = False,
) -> str:
    formats = ("jsonl", "parquet")
    if million_only:
        repeats = 0
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {(n, f): [] for n in S3_ROWS for f in formats if repeats}
    sources = {n: make_input(workdir, n) for n in S3_ROWS if repeats}
    with Stub(0) as stub:
        log(f"S3: stub {stub.url}; warm-up")
        warm_up(stub, workdir, ("inferbatch",), S3_CONCURRENCY)
        for round_no in range(1, repeats + 1):
            for n in S3_ROWS:
                for fmt in formats:
                    result = measure(
                        "inferbatch", stub, sources[n], n, workdir / f"out-s3.{fmt}", S3_CONCURRENCY, workdir
                    )
                    result.update(round=round_no, format=fmt)
                    runs[(n, fmt)].append(result)
                    log(
                        f"S3 round {round_no} rows={n:,} {fmt}: wall={result['wall_s']:.2f}s rps={result['rps']:,.0f} "
                        f"cpu={result['cpu_s']:.2f}s rss={result['rss_mb']:.1f}MB ok={result['ok']}"
                    )
        million_runs: dict[str, dict[str, Any]] = {}
        if million:
            source = make_input(workdir, MILLION)
            for fmt in million_formats:
                log(f"S3 million rows {fmt} ...")
                result = measure(
                    "inferbatch", stub, source, MILLION, workdir / f"out-s3m.{fmt}", S3_CONCURRENCY, workdir
                )
                result.update(round=1, format=fmt)
                million_runs[fmt] = result
                log(
                    f"S3 rows={MILLION:,} {fmt}: wall={result['wall_s']:.2f}s rps={result['rps']:,.0f} "
                    f"cpu={result['cpu_s']:.2f}s rss={result['rss_mb']:.1f}MB ok={result['ok']}"
                )
    raw["S3"] = {f"{n}-{f}": v for (n, f), v in runs.items()} | {f"{MILLION}-{f}": [v] for f, v in million_runs.items()}

    header = ["rows", "output", "wall s", "req/s", "CPU s", "CPU µs/row", "peak RSS MB", "ok rows", "runs"]
    rows = []
    for (n, fmt), rs in runs.items():
        rows.append(
            [
                f"{n:,}",
                fmt,
                f"{med(rs, 'wall_s'):.2f}",
                f"{med(rs, 'rps'):,.0f}",
                f"{med(rs, 'cpu_s'):.2f}",
                f"{med(rs, 'cpu_us_per_row'):,.0f}",
                f"{med(rs, 'rss_mb'):.1f}",
                f"{min(r['ok'] for r in rs):,}/{n:,}",
                str(len(rs)),
            ]
        )
    for fmt, r in million_runs.items():
        rows.append(
            [
                f"{MILLION:,}",
                fmt,
                f"{r['wall_s']:.2f}",
                f"{r['rps']:,.0f}",
                f"{r['cpu_s']:.2f}",
                f"{r['cpu_us_per_row']:,.0f}",
                f"{r['rss_mb']:.1f}",
                f"{r['ok']:,}/{MILLION:,}",
                "1",
            ]
        )
    lines = [
        f"### S3 memory: inferbatch only, zero latency, -c {S3_CONCURRENCY} (median of {repeats or 1})",
        "",
        table(header, rows),
        "",
    ]
    small, big = S3_ROWS
    for fmt in formats if repeats else ():
        r = statistics.median(
            b["rss_mb"] / s["rss_mb"] for s, b in zip(runs[(small, fmt)], runs[(big, fmt)], strict=True)
        )
        lines.append(
            f"- {fmt}: peak RSS at {big:,} rows / at {small:,} rows: **{r:.2f}×** (goal ≤ 1.25×) {verdict(r <= 1.25)}"
        )
    for fmt, r in million_runs.items():
        lines.append(
            f"- {fmt}: peak RSS at {MILLION:,} rows: **{r['rss_mb']:.0f} MB** (goal < 200 MB) "
            f"{verdict(r['rss_mb'] < 200)}"
        )
    return "\n".join(lines)


def scenario_s4(workdir: Path, raw: dict[str, Any], runs: int = 10) -> str:
    commands: list[tuple[str, list[str], float | None]] = [
        ("`python -c pass` (reference)", [PY, "-c", "pass"], None),
        ("`inferbatch --help`", [*inferbatch_command(), "--help"], 0.3),
        ("`inferbatch run --help`", [*inferbatch_command(), "run", "--help"], 0.3),
    ]
    header = ["command", "median wall s", "min s", "max s", "median CPU s", "peak RSS MB", "goal"]
    rows = []
    raw["S4"] = {}
    for label, cmd, goal in commands:
        run_child(cmd)  # warm the page cache
        results = [run_child(cmd) for _ in range(runs)]
        raw["S4"][label] = results
        wall = med(results, "wall_s")
        log(f"S4 {label}: median {wall:.3f}s")
        rows.append(
            [
                label,
                f"{wall:.3f}",
                f"{min(r['wall_s'] for r in results):.3f}",
                f"{max(r['wall_s'] for r in results):.3f}",
                f"{med(results, 'cpu_s'):.3f}",
                f"{med(results, 'rss_mb'):.1f}",
                f"< {goal} s {verdict(wall < goal)}" if goal else "—",
            ]
        )
    return "\n".join([f"### S4 start-up (median of {runs})", "", table(header, rows)])


# ---- machine info and main -----------------------------------------------
def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def inferbatch_source() -> str:
    """Where the measured inferbatch is imported from, and its git commit if that is a checkout."""
    import importlib.util

    spec = importlib.util.find_spec("inferbatch")
    if spec is None or spec.origin is None:
        return "not importable"
    where = Path(spec.origin).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{where} (not a git checkout)"
    return f"{where} at {commit}{' + uncommitted changes' if dirty else ''}"


def machine_info() -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    items = [
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("nproc", f"{len(os.sched_getaffinity(0))} ({cpu}), {mem_gib:.0f} GiB RAM"),
        ("os", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("inferbatch", f"{version('inferbatch')} from {inferbatch_source()}"),
        ("aiohttp", version("aiohttp")),
        ("openai", version("openai")),
        ("httpx", f"{version('httpx')} / httpx2 {version('httpx2')}"),
        ("orjson / pyarrow", f"{version('orjson')} / {version('pyarrow')}"),
    ]
    return "\n".join(f"- {k}: {v}" for k, v in items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="S1,S2,S3,S4", help="comma-separated subset of S1,S2,S3,S4")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per client and scenario (median)")
    parser.add_argument("--million", action="store_true", help="S3: also run 1,000,000 rows once")
    parser.add_argument("--million-only", action="store_true", help="S3: run only the 1,000,000-row part")
    parser.add_argument("--million-formats", default="jsonl", help="output formats for --million (jsonl,parquet)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every row count (for a quick smoke test)")
    parser.add_argument("--workdir", help="where inputs and outputs go [default: a new temp dir, removed at the end]")
    parser.add_argument("--markdown", help="also write the Markdown report to this file")
    parser.add_argument("--json", help="also write every measurement as JSON to this file")
    args = parser.parse_args(argv)
    wanted = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(wanted) - {"S1", "S2", "S3", "S4"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    million_formats = [f.strip() for f in args.million_formats.split(",") if f.strip()]
    if set(million_formats) - {"jsonl", "parquet"}:
        parser.error("--million-formats takes jsonl and/or parquet")

    if args.scale != 1.0:
        global S3_ROWS, MILLION
        for spec in (S1, S2):
            spec["rows"] = max(1, round(spec["rows"] * args.scale))
        S3_ROWS = tuple(max(1, round(n * args.scale)) for n in S3_ROWS)
        MILLION = max(1, round(MILLION * args.scale))
    own_dir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="inferbatch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"workdir {workdir}")
    raw: dict[str, Any] = {}
    sections = ["## inferbatch benchmarks", "", machine_info()]
    steps: dict[str, Callable[[], str]] = {
        "S1": lambda: scenario_s1(args.repeats, workdir, raw),
        "S2": lambda: scenario_s2(args.repeats, workdir, raw),
        "S3": lambda: scenario_s3(
            args.repeats, workdir, raw, args.million or args.million_only, million_formats, args.million_only
        ),
        "S4": lambda: scenario_s4(workdir, raw),
    }
    try:
        for name in wanted:
            sections += ["", steps[name]()]
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    report = "\n".join(sections) + "\n"
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
