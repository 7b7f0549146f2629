"""Shared fixtures: a real simulator on loopback, a clean environment, fast retries, input builders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from inferbatch import retry
from inferbatch.cli import cli
from inferbatch.simulator import SimOptions, SimServer, in_thread


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's real INFERENCE_* variables."""
    for name in (
        "INFERENCE_URL",
        "INFERENCE_KEY",
        "INFERENCE_MODEL_ID",
        "AWS_ENDPOINT_URL",
        "DYNO",
        "INFERBATCH_SHARDS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def fast_retries() -> Iterator[None]:
    retry.set_testing(True)
    yield
    retry.set_testing(False)


@pytest.fixture
def sim() -> Iterator[Callable[..., SimServer]]:
    """``sim(rpm=5, require_key="k")`` starts a real simulator on 127.0.0.1 in a thread; stopped after the test."""
    stack: list[Any] = []

    def start(**options: Any) -> SimServer:
        manager = in_thread(SimOptions(**options))
        server = manager.__enter__()
        stack.append(manager)
        return server

    yield start
    for manager in reversed(stack):
        manager.__exit__(None, None, None)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def chat_rows(n: int, prefix: str = "row") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "messages": [{"role": "user", "content": f"question {i}"}]} for i in range(n)]


def invoke(runner: CliRunner, args: list[str], env: dict[str, str] | None = None) -> Result:
    """Run the CLI in-process; bugs raise (catch_exceptions=False) instead of hiding in result.exception."""
    return runner.invoke(cli, args, env=env, catch_exceptions=False)


def connection_env(server: SimServer, key: str = "test-key", model: str = "sim-model") -> dict[str, str]:
    return {"INFERENCE_URL": server.url, "INFERENCE_KEY": key, "INFERENCE_MODEL_ID": model}


class SimProcess:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.fixture
def sim_process() -> Iterator[Any]:
    """Start `inferbatch simulate --port 0 ARGS` as its own process; yields a starter."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> SimProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferbatch", "simulate", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        return SimProcess(proc, url)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def wait_for_lines(path: Path, minimum: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            count = path.read_bytes().count(b"\n")
            if count >= minimum:
                return count
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {minimum} lines")


def run_process(args: list[str], url: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "INFERENCE_URL": url, "INFERENCE_KEY": "test-key", "INFERENCE_MODEL_ID": "sim-model"}
    return subprocess.Popen(
        [sys.executable, "-m", "inferbatch", "run", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def wait_for_stats(server: SimProcess, timeout: float = 30, **minimums: int) -> dict[str, Any]:
    """Poll the simulator's /stats until each named figure reaches its minimum, e.g. ``in_flight=4, hung=4``
    for "every slot now holds a hanging request": a fixed sleep checks less on a slow machine."""
    deadline = time.monotonic() + timeout
    while True:
        stats = server.stats()
        if all(stats[name] >= minimum for name, minimum in minimums.items()):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"simulator never reached {minimums}: {stats}")
        time.sleep(0.02)
