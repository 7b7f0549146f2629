"""Resume torture: one job on one output through kill -9, SIGTERM, SIGINT, `--limit` pilots, `--deadline`
stops and complete reruns, on a local output and on `s3://`, with real processes against a real simulator.

The promise (SPEC §4 "Checkpoint and resume", §8 rules 2, 3, 12, 20, 22): whatever mix of crashes, signals,
pilots and deadlines a job goes through, the finished output holds every input row exactly once, in input
order, and a row the checkpoint has recorded is never sent again, so nobody pays twice for it.

How it is checked: the simulator counts requests and answers per prompt (``GET /stats?prompts=1``), and every
prompt belongs to one row. Before each step the test reads which rows the checkpoint holds (the local
``results.jsonl``, or on S3 the part objects in the bucket, which are what a crash leaves: the local copy
is gone); after the step, none of those rows may have been sent again. The rows a step sent but that did not
end up recorded are "in doubt" (in flight at a kill, cut off by a drain, or finished but not yet in an S3
part): only they may be sent again, and only they may be answered twice at the end. Steps come from a
seeded random schedule; each step's exit code must be the documented one for what happened to it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import write_jsonl
from test_s3 import all_keys, bucket, moto_endpoint  # noqa: F401 - the real moto_server and a fresh bucket

CONCURRENCY = 8
DIRECTIVE = " [[sim:500x2]]"  # the first two attempts of such a row get a 500, the third an answer
STEP_TIMEOUT = 120.0
WAIT_TIMEOUT = 60.0


def torture_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"t{i:05d}", "prompt": f"torture question {i}" + (DIRECTIVE if i % 97 == 5 else "")} for i in range(n)
    ]


# ---- the simulator as its own process --------------------------------------------------------------------
class Server:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url

    def stats(self, prompts: bool = False) -> dict[str, Any]:
        query = "?prompts=1" if prompts else ""
        with urllib.request.urlopen(self.url + "/stats" + query, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


def start_server(*args: str) -> Server:
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferbatch", "simulate", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"the simulator did not start: {url!r}")
    return Server(proc, url)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Kill a run that is still alive (a step that failed part-way), and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


@dataclass(frozen=True)
class Seen:
    """What the server saw, per row: requests that reached the model, and completions it gave."""

    requests: list[int]
    answered: list[int]
    total: int


# ---- where the checkpoint lives --------------------------------------------------------------------------
class LocalStore:
    """The output and its checkpoint on the local disk."""

    def __init__(self, output: Path, rows: int) -> None:
        self.output = output
        self.uri = str(output)
        self.rows = rows
        self.dir = Path(str(output) + ".checkpoint")

    def manifest(self) -> dict[str, Any] | None:
        path = self.dir / "manifest.json"
        return json.loads(path.read_bytes()) if path.exists() else None

    def recorded(self) -> set[int]:
        """Rows with a result in the checkpoint (every row once the job is complete)."""
        manifest = self.manifest()
        if manifest is not None and manifest.get("complete"):
            return set(range(self.rows))
        path = self.dir / "results.jsonl"
        if not path.exists():
            return set()
        data = path.read_bytes()
        return {json.loads(line)["index"] for line in data[: data.rfind(b"\n") + 1].splitlines()}

    def progress(self, server: Server) -> int:
        """A figure that grows as rows finish: the lines of ``results.jsonl``."""
        path = self.dir / "results.jsonl"
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def output_bytes(self) -> bytes | None:
        return self.output.read_bytes() if self.output.exists() else None

    def step_starts(self) -> None:
        pass

    def after_kill(self) -> None:
        """flock() locks die with their process: the next run may start at once."""

    def check_complete_layout(self) -> None:
        assert not (self.dir / "results.jsonl").exists() and not (self.dir / "sent.log").exists()


class S3Store:
    """The output and its checkpoint in a bucket; what is recorded is what the part objects hold."""

    def __init__(self, output: str, rows: int, bucket: str) -> None:
        self.uri = output
        self.rows = rows
        self.bucket = bucket
        self.prefix = output + ".checkpoint"
        self._parts: dict[str, set[int]] = {}  # parts are immutable: read each once
        self._parts_at_start = 0

    def manifest(self) -> dict[str, Any] | None:
        from inferbatch import storage

        raw = storage.read_bytes(self.prefix + "/manifest.json")
        return json.loads(raw) if raw else None

    def _recorded_parts(self) -> set[int]:
        from inferbatch import storage

        found: set[int] = set()
        for uri, _ in storage.list_objects(self.prefix + "/parts"):
            if uri not in self._parts:
                data = storage.read_bytes(uri) or b""
                self._parts[uri] = {json.loads(line)["index"] for line in data.splitlines() if line.strip()}
            found |= self._parts[uri]
        return found

    def recorded(self) -> set[int]:
        manifest = self.manifest()
        if manifest is not None and manifest.get("complete"):
            return set(range(self.rows))
        return self._recorded_parts()

    def progress(self, server: Server) -> int:
        """A figure that grows as rows finish: the server's answers, but only once the run has written a
        part of its own (listing is cheap; parts lag up to an interval behind the answers)."""
        from inferbatch import storage

        answered = int(server.stats()["by_status"].get("200", 0))
        return answered if len(storage.list_objects(self.prefix + "/parts")) > self._parts_at_start else -1

    def step_starts(self) -> None:
        from inferbatch import storage

        self._parts_at_start = len(storage.list_objects(self.prefix + "/parts"))

    def output_bytes(self) -> bytes | None:
        from inferbatch import storage

        return storage.read_bytes(self.uri)

    def after_kill(self) -> None:
        """A killed run keeps its lease until it expires (SPEC §8.20): wait that out, no longer."""
        from inferbatch import storage

        raw = storage.read_bytes(self.prefix + "/lease.json")
        if raw:
            expires_at = float(json.loads(raw).get("expires_at", 0))
            left = expires_at - time.time()
            assert left < 30, f"a lease of {left:.0f} s after a kill"
            if left > -0.2:
                time.sleep(left + 0.2)

    def check_complete_layout(self) -> None:
        keys = all_keys(self.bucket)
        checkpoint_key = self.prefix.split("/", 3)[3]
        assert [k for k in keys if k.startswith(checkpoint_key)] == [checkpoint_key + "/manifest.json"], keys
        assert not [k for k in keys if k.endswith("/")], keys


# ---- the harness -----------------------------------------------------------------------------------------
@dataclass
class Torture:
    """One input, one output, one server; runs steps and checks each against what the server saw."""

    source: Path
    store: LocalStore | S3Store
    server: Server
    rows: int
    env: dict[str, str]
    extra: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    in_doubt: set[int] = field(default_factory=set)  # sent by a step but not recorded after it
    in_doubt_per_step: list[int] = field(default_factory=list)  # how many, rows with scripted failures apart
    in_doubt_total: int = 0  # summed over steps: each time a row was left in doubt, it may be sent once more
    prompt_row: dict[str, int] = field(default_factory=dict)
    directive_rows: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        for i, row in enumerate(torture_rows(self.rows)):
            self.prompt_row[row["prompt"]] = i
            if DIRECTIVE in row["prompt"]:
                self.directive_rows.add(i)

    # -- observing
    def seen(self) -> Seen:
        stats = self.server.stats(prompts=True)
        assert stats["prompts_untracked"] == 0
        requests, answered = [0] * self.rows, [0] * self.rows
        for prompt, counts in stats["prompts"].items():
            i = self.prompt_row[prompt]
            requests[i], answered[i] = counts["requests"], counts["answered"]
        return Seen(requests, answered, stats["requests"])

    def where(self) -> str:
        return "after steps:\n  " + "\n  ".join(self.history)

    def output_records(self) -> list[dict[str, Any]]:
        data = self.store.output_bytes()
        assert data is not None, f"no output at {self.store.uri}; " + self.where()
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    # -- acting
    def start(self, *args: str) -> subprocess.Popen[str]:
        command = [
            sys.executable,
            "-m",
            "inferbatch",
            "run",
            str(self.source),
            "-o",
            self.store.uri,
            "-c",
            str(CONCURRENCY),
            "-q",
            *self.extra,
            *args,
        ]
        return subprocess.Popen(command, env=self.env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_until(self, proc: subprocess.Popen[str], what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while not condition():
            if proc.poll() is not None:
                _, stderr = proc.communicate(timeout=10)
                raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{stderr}\n{self.where()}")
            assert time.monotonic() < deadline, f"never reached: {what}; " + self.where()
            time.sleep(0.05)

    def step(
        self,
        name: str,
        args: list[str],
        action: Callable[[subprocess.Popen[str], int], None] | None = None,
        *,
        expect: tuple[int, ...],
    ) -> tuple[set[int], set[int], str]:
        """Run one command (``action`` stops it from outside), check the exit code and that no row recorded
        before it was sent again; returns the rows it sent, the rows recorded after it, and its stderr."""
        recorded_before = self.store.recorded()
        before = self.seen()
        self.store.step_starts()
        progress = self.store.progress(self.server)
        proc = self.start(*args)
        try:
            if action is not None:
                action(proc, progress)
            _, stderr = proc.communicate(timeout=STEP_TIMEOUT)
        finally:
            stop_process(proc)
        after = self.seen()
        recorded_after = self.store.recorded()
        sent = {i for i in range(self.rows) if after.requests[i] > before.requests[i]}
        doubt = sent - recorded_after
        self.in_doubt |= doubt
        self.in_doubt_total += len(doubt)
        self.in_doubt_per_step.append(len(doubt - self.directive_rows))
        self.history.append(
            f"{len(self.history) + 1}. {name} {' '.join(args)} -> exit {proc.returncode}; recorded "
            f"{len(recorded_before)} -> {len(recorded_after)}; sent {len(sent)} rows in "
            f"{after.total - before.total} requests; in doubt {len(doubt)}"
        )
        assert proc.returncode in expect, f"exit {proc.returncode}, wanted {expect}:\n{stderr}\n{self.where()}"
        assert "Traceback" not in stderr, stderr
        resent = sorted(i for i in recorded_before if after.requests[i] != before.requests[i])
        assert not resent, (
            f"rows recorded before the step were sent again: {resent[:20]} (of {len(resent)}); " + self.where()
        )
        assert recorded_before <= recorded_after, "the checkpoint lost rows; " + self.where()
        return sent, recorded_after, stderr

    def check_output_matches_checkpoint(self, recorded: set[int]) -> None:
        """A run that ended by itself wrote every row finished so far, once each, in input order, all ok."""
        records = self.output_records()
        assert [r["index"] for r in records] == sorted(recorded), self.where()
        assert [r["id"] for r in records] == [f"t{r['index']:05d}" for r in records]
        assert {r["status"] for r in records} <= {"ok"}

    # -- the kinds of step
    def kill_9(self, new_rows: int) -> None:
        """kill -9 once ``new_rows`` more rows finished (see ``progress``): a killed run leaves the output as it
        was, and on a local disk only the rows in flight (at most -c) are left in doubt (SPEC §8.12)."""
        output_before = self.store.output_bytes()

        def action(proc: subprocess.Popen[str], progress: int) -> None:
            self.wait_until(
                proc, f"{new_rows} more rows finished", lambda: self.store.progress(self.server) >= progress + new_rows
            )
            proc.kill()

        self.step(f"kill -9 after {new_rows} rows", [], action, expect=(-signal.SIGKILL,))
        assert self.store.output_bytes() == output_before, "a killed run changed the output; " + self.where()
        if isinstance(self.store, LocalStore):
            # SPEC §8.12: each finished row goes to the OS as it completes; only in-flight requests are lost.
            assert self.in_doubt_per_step[-1] <= CONCURRENCY, self.where()
        self.store.after_kill()

    def signal_stop(self, sig: signal.Signals, new_rows: int) -> None:
        """SIGTERM/SIGINT while requests are in flight: they drain, get recorded, and the run exits 143/130."""

        def action(proc: subprocess.Popen[str], progress: int) -> None:
            self.wait_until(
                proc, f"{new_rows} more rows finished", lambda: self.store.progress(self.server) >= progress + new_rows
            )
            self.wait_until(proc, "requests in flight", lambda: self.server.stats()["in_flight"] > 0)
            proc.send_signal(sig)

        code = 143 if sig == signal.SIGTERM else 130
        _, recorded, stderr = self.step(f"{sig.name} after {new_rows} rows", [], action, expect=(code,))
        self.check_stopped_cleanly(recorded, stderr)

    def deadline(self, seconds: float) -> None:
        """A `--deadline` too short for the job stops admitting in time and exits 75 (SPEC §8.22, §8.3)."""
        _, recorded, stderr = self.step("deadline", ["--deadline", f"{seconds:g}s"], expect=(75,))
        assert "--deadline" in stderr
        self.check_stopped_cleanly(recorded, stderr)

    def check_stopped_cleanly(self, recorded: set[int], stderr: str) -> None:
        """After a drain every answered row is recorded (none cut off unless the drain said so), the output
        holds exactly the checkpoint, and the job is not complete."""
        if "drain timeout" not in stderr:
            assert self.in_doubt_per_step[-1] == 0, "rows sent but not recorded after a drain; " + self.where()
        else:
            assert self.in_doubt_per_step[-1] <= CONCURRENCY, self.where()
        self.check_output_matches_checkpoint(recorded)
        assert not (self.store.manifest() or {}).get("complete"), self.where()

    def pilot(self, limit: int) -> None:
        """`--limit N` sends only rows below N that have no result, finishes them all (exit 0), and keeps
        the checkpoint whole: the job is not complete (SPEC §8.2)."""
        sent, recorded, _ = self.step("pilot", ["--limit", str(limit)], expect=(0,))
        assert all(i < limit for i in sent), f"a --limit {limit} pilot sent rows past it; " + self.where()
        assert set(range(limit)) <= recorded, self.where()
        self.check_output_matches_checkpoint(recorded)
        assert not (self.store.manifest() or {}).get("complete"), "a pilot completed the job; " + self.where()

    def complete(self) -> bytes:
        """The plain command, left alone, finishes the job: exit 0, every row once, in order; completion record."""
        _, _, stderr = self.step("complete rerun", [], expect=(0,))
        records = self.output_records()
        assert [r["id"] for r in records] == [f"t{i:05d}" for i in range(self.rows)], self.where()
        assert [r["index"] for r in records] == list(range(self.rows))
        assert {r["status"] for r in records} == {"ok"}
        manifest = self.store.manifest() or {}
        assert (manifest.get("complete") or {}).get("rows") == self.rows, (manifest, stderr)
        self.store.check_complete_layout()
        data = self.store.output_bytes()
        assert data is not None
        return data

    def nothing_to_do(self, final: bytes, args: list[str]) -> None:
        """On a complete job the command sends nothing, leaves the output as it is, and exits 0 (SPEC §8.2)."""
        requests = self.server.stats()["requests"]
        _, _, stderr = self.step("rerun of a complete job", args, expect=(0,))
        assert "already complete" in stderr, stderr
        assert self.server.stats()["requests"] == requests, "a complete job sent requests; " + self.where()
        assert self.store.output_bytes() == final, "a complete job's output changed; " + self.where()

    def check_totals(self) -> None:
        """Only rows in doubt were ever answered twice; the total is rows + scripted retries + rows in doubt."""
        seen = self.seen()
        never = [i for i in range(self.rows) if seen.answered[i] == 0]
        assert not never, f"rows never answered: {never[:20]}; " + self.where()
        twice = sorted(i for i in range(self.rows) if seen.answered[i] > 1 and i not in self.in_doubt)
        assert not twice, f"rows answered twice without being in doubt: {twice[:20]}; " + self.where()
        for i in range(self.rows):
            if i not in self.in_doubt:
                assert seen.requests[i] == (3 if i in self.directive_rows else 1), (i, seen.requests[i], self.where())
        bound = self.rows + 2 * len(self.directive_rows) + self.in_doubt_total
        assert seen.total <= bound, (seen.total, bound, self.where())


def middle_schedule(rng: random.Random, kills: int, sigterms: int, sigints: int) -> list[str]:
    """A kill first (so a pilot below has something below it), the deadline early (so it has work to cut
    short), everything else shuffled."""
    rest = ["kill"] * (kills - 1) + ["sigterm"] * sigterms + ["sigint"] * sigints + ["pilot-below", "pilot-above"]
    rng.shuffle(rest)
    rest.insert(rng.randrange(0, 2), "deadline")
    return ["kill", *rest]


def torture(t: Torture, rng: random.Random, schedule: list[str], new_rows: tuple[int, int]) -> None:
    for kind in schedule:
        done = t.store.recorded()
        if kind == "kill":
            t.kill_9(rng.randint(*new_rows))
        elif kind == "sigterm":
            t.signal_stop(signal.SIGTERM, rng.randint(*new_rows))
        elif kind == "sigint":
            t.signal_stop(signal.SIGINT, rng.randint(*new_rows))
        elif kind == "deadline":
            t.deadline(rng.choice((4.5, 5.0, 5.5)))
        elif kind == "pilot-below":
            t.pilot(rng.randint(max(1, len(done) // 3), max(1, len(done))))
        elif kind == "pilot-above":
            start = max(done, default=0) + 1
            t.pilot(min(start + rng.randint(50, 200), t.rows - 200))
    assert len(t.store.recorded()) < t.rows, "the schedule finished the job before the complete rerun"
    final = t.complete()
    t.nothing_to_do(final, [])
    t.nothing_to_do(final, ["--limit", "100"])  # a pilot of a complete job: nothing to pilot
    t.nothing_to_do(final, ["--deadline", "30s"])
    t.check_totals()
    print(t.where())  # shown with -s, or when a later assertion in the test fails


def test_torture_local_output_every_row_once_in_order_and_nothing_recorded_is_sent_again(tmp_path: Path) -> None:
    """SPEC §4 checkpoint and resume (§8.2, 3, 12, 22): kill -9, SIGTERM, SIGINT, `--limit` pilots below and
    above what is done, a `--deadline` stop, then complete reruns on one local output: every input id exactly
    once and in order, no row recorded in the checkpoint ever sent again, and a complete job sends nothing."""
    rows = 2400
    source = write_jsonl(tmp_path / "in.jsonl", torture_rows(rows))
    server = start_server("--latency-ms", "20", "--jitter-ms", "20", "--seed", "11")
    try:
        env = {**os.environ, "INFERENCE_URL": server.url, "INFERENCE_KEY": "test-key", "INFERENCE_MODEL_ID": "sim"}
        t = Torture(source, LocalStore(tmp_path / "out.jsonl", rows), server, rows, env)
        rng = random.Random(20260511)
        torture(t, rng, middle_schedule(rng, kills=3, sigterms=2, sigints=1), new_rows=(40, 160))
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)


def test_torture_s3_output_every_row_once_in_order_and_nothing_recorded_is_sent_again(
    tmp_path: Path,
    bucket: str,  # noqa: F811 - the fixture imported from test_s3
) -> None:
    """SPEC §4 and §8.20 on `s3://` (a real moto_server): the same torture with the checkpoint as part objects.
    A kill may lose the rows finished since the last part, which are sent again; a row that was in a part
    before a step is never sent again; the complete job leaves one object, and a rerun sends nothing."""
    rows = 1600
    source = write_jsonl(tmp_path / "in.jsonl", torture_rows(rows))
    server = start_server("--latency-ms", "30", "--jitter-ms", "30", "--seed", "12")
    try:
        env = {**os.environ, "INFERENCE_URL": server.url, "INFERENCE_KEY": "test-key", "INFERENCE_MODEL_ID": "sim"}
        store = S3Store(f"s3://{bucket}/torture/out.jsonl", rows, bucket)
        t = Torture(source, store, server, rows, env, extra=["--checkpoint-interval", "0.5"])
        rng = random.Random(20260512)
        torture(t, rng, middle_schedule(rng, kills=2, sigterms=1, sigints=1), new_rows=(30, 80))
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)


def test_simulator_counts_requests_and_answers_per_prompt(sim: Any) -> None:
    """The instrument the torture relies on: ``/stats?prompts=1`` counts, per prompt, the requests that reached
    the model and the completions given; scripted failures are requests, not answers; plain ``/stats`` omits it."""
    server = sim()
    for prompt in ("plain", "plain", "flaky [[sim:500x2]]", "flaky [[sim:500x2]]", "flaky [[sim:500x2]]"):
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()
        request = urllib.request.Request(
            server.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            assert exc.code == 500
    with urllib.request.urlopen(server.url + "/stats?prompts=1", timeout=10) as response:
        stats = json.loads(response.read())
    assert stats["prompts"] == {
        "plain": {"requests": 2, "answered": 2},
        "flaky [[sim:500x2]]": {"requests": 3, "answered": 1},
    }
    assert stats["prompts_untracked"] == 0
    with urllib.request.urlopen(server.url + "/stats", timeout=10) as response:
        assert "prompts" not in json.loads(response.read())
