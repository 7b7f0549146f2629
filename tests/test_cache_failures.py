"""The response cache never loses a result: a cache that cannot be written, or an S3 cache that goes away mid-run.

Mid-run failures are made to happen at a known point: a real simulator on loopback calls a hook (removing the
cache folder, or killing the moto_server process that holds the S3 cache) when the Nth request arrives, before
answering it. With ``-c 1`` the rows before it have been answered and cached, the rows after it have not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import chat_rows, invoke, read_jsonl, write_jsonl
from inferbatch.simulator import STATS_KEY, SimOptions, create_app
from test_s3 import CREDENTIALS, create_bucket, start_moto

ROWS = 30
NTH = 10


@contextlib.contextmanager
def hooked_simulator(nth: int, hook: Callable[[], None], opts: SimOptions | None = None) -> Iterator[Any]:
    """The simulator on 127.0.0.1, calling ``hook()`` once, when the ``nth`` chat request arrives (before it is
    answered). Yields an object with ``url`` and ``stats`` like the ``sim`` fixture's servers."""
    seen = 0

    @web.middleware
    async def call_hook(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal seen
        if request.path.endswith("/chat/completions"):
            seen += 1
            if seen == nth:
                hook()
        return await handler(request)

    app = create_app(opts or SimOptions())
    app.middlewares.append(call_hook)
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await box["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "simulator did not start"

    class Server:
        url = box["url"]
        stats = app[STATS_KEY]

    try:
        yield Server
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=10)


def env_for(server: Any) -> dict[str, str]:
    return {"INFERENCE_URL": server.url, "INFERENCE_KEY": "test-key", "INFERENCE_MODEL_ID": "sim-model"}


def cache_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "response cache" in line]


def test_a_cache_folder_removed_mid_run_loses_no_result_and_warns_once(runner: Any, tmp_path: Path) -> None:
    """Promise: a cache write failure never loses a result (issue: paid-for responses were lost with a traceback);
    one warning, cache writes off for the rest of the run, every row in the output, exit 0."""
    cache = tmp_path / "cache"
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(ROWS))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    def replace_cache_by_a_file() -> None:
        shutil.rmtree(cache)
        cache.write_text("not a folder any more\n")

    with hooked_simulator(NTH, replace_cache_by_a_file) as server:
        result = invoke(
            runner,
            ["run", str(source), "-o", str(out), "--cache", str(cache), "-c", "1", "--summary-json", str(summary)],
            env=env_for(server),
        )
        assert server.stats.requests == ROWS
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"row{i}" for i in range(ROWS)]
    assert {r["status"] for r in rows} == {"ok"} and all(r["content"] for r in rows)
    assert len(cache_warnings(result.stderr)) == 1, result.stderr
    assert "Traceback" not in result.stderr
    # Rows answered before the cache went were stored; none after it (with -c 1, rows 0..NTH-2 had their turn).
    assert 1 <= json.loads(summary.read_text())["cache_stores"] <= NTH - 1


def test_a_cache_folder_that_cannot_be_created_is_exit_2_before_anything_is_sent(
    runner: Any, sim: Any, tmp_path: Path
) -> None:
    """Promise (SPEC §8.28): a --cache folder is checked writable before the run: one line, exit 2, nothing sent
    (was a traceback)."""
    server = sim()
    (tmp_path / "plain-file").write_text("x\n")
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    out = tmp_path / "out.jsonl"
    result = invoke(
        runner,
        ["run", str(source), "-o", str(out), "--cache", str(tmp_path / "plain-file" / "cache")],
        env=env_for(server),
    )
    assert result.exit_code == 2
    assert "--cache" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert server.stats.requests == 0
    assert not out.exists()


def test_the_cache_itself_refuses_a_folder_it_cannot_create(tmp_path: Path) -> None:
    """Promise: ResponseCache (also used through the library, without the CLI's checks) refuses an unwritable
    local folder with a ConfigError (exit 2) at once, never a traceback mid-run."""
    from inferbatch.cache import ResponseCache
    from inferbatch.errors import ConfigError

    (tmp_path / "plain-file").write_text("x\n")
    with pytest.raises(ConfigError, match="cannot be written"):
        ResponseCache(str(tmp_path / "plain-file" / "cache"), "http://x")


def test_cache_failures_never_raise_and_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Promise: after the cache folder goes, put() and get() never raise (a miss, a skipped store), one warning
    in all; writes stop at the first failure, reads after a few failures in a row."""
    from inferbatch.cache import READ_FAILURES_OFF, ResponseCache

    cache = ResponseCache(str(tmp_path / "cache"), "http://x")
    key = cache.key(b'{"messages": []}', 0)
    cache.put(key, {"data": {"n": 1}})
    assert cache.get(key) == {"data": {"n": 1}}
    shutil.rmtree(tmp_path / "cache")
    (tmp_path / "cache").write_text("a file now\n")
    caplog.set_level("WARNING", logger="inferbatch")
    for sample in range(READ_FAILURES_OFF + 2):
        other = cache.key(b'{"messages": []}', sample + 1)
        assert cache.get(other) is None
        cache.put(other, {"data": {"n": 2}})
    assert cache.writes_off and cache.reads_off
    assert cache.stores == 1
    assert len([r for r in caplog.records if "response cache" in r.getMessage()]) == 1


@pytest.fixture
def own_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto_server of this test's own (the test kills it), with a bucket; AWS_* point at it."""
    proc, url = start_moto()
    try:
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": url}.items():
            monkeypatch.setenv(name, value)
        create_bucket(url, "cache-bucket")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_an_s3_cache_whose_server_dies_mid_run_loses_no_result_and_warns_once(
    runner: Any, tmp_path: Path, own_moto: Any
) -> None:
    """Promise: an S3 cache that goes away mid-run (its server killed) costs no result: one warning, every row in
    the output, exit 0 (was a traceback, the responses received so far lost)."""
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(ROWS))
    out = tmp_path / "out.jsonl"

    def kill_s3() -> None:
        own_moto.kill()
        own_moto.wait(timeout=10)

    with hooked_simulator(NTH, kill_s3) as server:
        result = invoke(
            runner,
            ["run", str(source), "-o", str(out), "--cache", "s3://cache-bucket/cache", "-c", "1"],
            env=env_for(server),
        )
        assert server.stats.requests == ROWS
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"row{i}" for i in range(ROWS)]
    assert {r["status"] for r in rows} == {"ok"} and all(r["content"] for r in rows)
    assert len(cache_warnings(result.stderr)) == 1, result.stderr
    assert "Traceback" not in result.stderr
