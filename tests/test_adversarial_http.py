"""A hostile server, below HTTP framing: the promises hold whatever comes back over the socket.

The fault server (``faultserver.py``) resets connections mid-body, sends less than its
Content-Length, 40 MB bodies, status lines that are not, gzip that is not, headers and
bodies that echo the caller's key, reset times in Unix seconds, quota errors and a
Retry-After of a day. Each test drives the real ``Client`` or the real CLI and checks the
promise: no traceback, the right status and error code per row, exit 3 for a quota stop
with a message naming the limit, and no piece of the key (8 characters or more) anywhere
the product writes: stdout, stderr, the output file, the checkpoint.

Tests marked "needs the runner wiring" depend on ``runner.py`` catching ``QuotaRejected``
and stopping the run with ``QuotaExhausted`` (exit 3), which lands separately.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from conftest import invoke, read_jsonl, write_jsonl
from faultserver import (
    FaultServer,
    completion,
    garbage_status,
    gzip_bomb,
    gzip_garbage,
    hang,
    json_error,
    ok,
    ok_from,
    oversized,
    quota_body,
    reset_mid_body,
    respond,
    running,
    truncated,
)
from inferbatch.client import MAX_RESPONSE_BYTES, Client
from inferbatch.errors import Fatal, QuotaRejected, RequestFailed, Retryable

KEY = "sk-adv-Zq8Lr2Wm5Tx9Pc4Nv7Hb3Jd6Fg1Ks0YeA"
PIECES = {KEY[i : i + 8] for i in range(len(KEY) - 7)}
FORTY_MB = 40_000_000


@pytest.fixture
def fault() -> Iterator[FaultServer]:
    """A raw-socket fault server on 127.0.0.1, port 0, in its own thread."""
    with running() as server:
        yield server


def body(prompt: str) -> bytes:
    return orjson.dumps({"model": "fault-model", "messages": [{"role": "user", "content": prompt}]})


async def outcome(server: FaultServer, prompt: str, **client: Any) -> Any:
    """What ``Client.send`` made of the scripted answer: the Response, or the RequestFailed it raised."""
    async with Client(server.chat_url, KEY, timeout=client.pop("timeout", 10.0), concurrency=2, **client) as c:
        try:
            return await c.send(body(prompt))
        except RequestFailed as exc:
            return exc


def leaks(blob: str | bytes) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return sorted(p for p in PIECES if p in text)


def everything_written(result: Any, output: Path) -> dict[str, bytes]:
    """stdout, stderr, the output file and every file under the checkpoint directory."""
    blobs = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
    for path in [output, *sorted(output.parent.glob(output.name + ".checkpoint/**/*"))]:
        if path.is_file():
            blobs[str(path)] = path.read_bytes()
    return blobs


def assert_no_key_anywhere(result: Any, output: Path) -> None:
    for where, blob in everything_written(result, output).items():
        assert not leaks(blob), f"key pieces {leaks(blob)[:3]} in {where}"


def cli(runner: CliRunner, server: FaultServer, source: Path, output: Path, *extra: str) -> Any:
    return invoke(
        runner,
        ["run", str(source), "-o", str(output), "--url", server.url, *extra],
        env={"INFERENCE_KEY": KEY, "INFERENCE_MODEL_ID": "fault-model"},
    )


def prompts(*names: str) -> list[dict[str, Any]]:
    return [{"id": name, "prompt": name} for name in names]


# ---- the client, fault by fault -------------------------------------------------------------


async def test_reset_or_truncated_body_is_a_retryable_connection_error(fault: FaultServer) -> None:
    """A body cut off (reset mid-body, or Content-Length larger than sent) is transient: Retryable, with the status
    that did arrive, one short line, never a traceback."""
    fault.on("reset", reset_mid_body())
    fault.on("short", truncated())
    for prompt in ("reset", "short"):
        exc = await outcome(fault, prompt)
        assert type(exc) is Retryable, (prompt, exc)
        assert (exc.status, exc.code) == (200, "connection_error")
        assert "\n" not in exc.message and len(exc.message) <= 300


async def test_garbage_status_line_is_a_connection_error_without_status(fault: FaultServer) -> None:
    fault.on("garbage", garbage_status())
    fault.on("binary", garbage_status(b"\x00\x01\x02 nonsense\r\n"))
    for prompt in ("garbage", "binary"):
        exc = await outcome(fault, prompt)
        assert type(exc) is Retryable
        assert (exc.status, exc.code) == (None, "connection_error")
        assert "\n" not in exc.message


async def test_gzip_that_is_not_gzip_is_retryable(fault: FaultServer) -> None:
    fault.on("gz", gzip_garbage())
    exc = await outcome(fault, "gz")
    assert type(exc) is Retryable
    assert exc.status == 200 and exc.code == "connection_error"


async def test_body_over_32_mib_with_content_length_is_refused_unread(fault: FaultServer) -> None:
    """SPEC §8.37: Content-Length over 32 MiB: that row's error `response_too_large`, Fatal (never retried), and
    the body is not read (the server could hand the kernel only a fraction of its 40 MB)."""
    fault.on("big", oversized(FORTY_MB))
    exc = await outcome(fault, "big")
    assert type(exc) is Fatal
    assert (exc.status, exc.code) == (200, "response_too_large")
    assert exc.message.startswith("response_too_large: ")
    sent = fault.outcomes[-1]
    assert sent.bytes_sent < FORTY_MB // 2, sent  # socket buffers hold a few MB at most


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_body_without_content_length_stops_being_read_at_the_limit(fault: FaultServer, framing: str) -> None:
    """Chunked or close-delimited: read in bounded pieces, and abandoned as soon as it passes the limit."""
    fault.on("big", oversized(FORTY_MB, framing=framing))
    exc = await outcome(fault, "big", max_response_bytes=1 << 20)
    assert type(exc) is Fatal and exc.code == "response_too_large"
    sent = fault.outcomes[-1]
    assert sent.client_closed and sent.bytes_sent < FORTY_MB // 2, sent


async def test_a_gzip_bomb_is_measured_decoded(fault: FaultServer) -> None:
    """A 5 KB gzip body that inflates to 5 MB counts as 5 MB, not as its Content-Length."""
    fault.on("bomb", gzip_bomb(5_000_000))
    exc = await outcome(fault, "bomb", max_response_bytes=1 << 20)
    assert type(exc) is Fatal and exc.code == "response_too_large"


async def test_a_body_under_the_limit_without_content_length_is_read_whole(fault: FaultServer) -> None:
    fault.on("chunked", oversized(200_000, framing="chunked"))
    fault.on("close", oversized(200_000, framing="close"))
    for prompt in ("chunked", "close"):
        response = await outcome(fault, prompt)
        assert not isinstance(response, RequestFailed), response
        assert len(response.raw) == 200_000
        assert response.data["choices"][0]["message"]["content"].startswith("aaaa")


RSS_CHILD = """
import asyncio, json, resource, sys
from inferbatch.client import Client
from inferbatch.errors import RequestFailed

def body(prompt):
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()

async def main(url, prompt):
    async with Client(url, "k" * 24, timeout=60, concurrency=1) as client:
        await client.send(body("warm"))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            await client.send(body(prompt))
            code = "ok"
        except RequestFailed as exc:
            code = exc.code
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"code": code, "grew_mb": (after - before) / 1024}))

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
@pytest.mark.parametrize(("framing", "bound_mb"), [("length", 16), ("chunked", 64)])
def test_a_40_mb_body_does_not_balloon_memory(fault: FaultServer, framing: str, bound_mb: int) -> None:
    """SPEC §8.37 and §6 (512 MB dynos): a 40 MB answer, valid JSON, costs at most the 32 MiB limit (nothing, with
    Content-Length). Reading it whole and parsing it grew the peak RSS by about 115 MB."""
    fault.on("big", oversized(FORTY_MB, framing=framing))
    child = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, fault.chat_url, "big"], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-2000:]
    figures = json.loads(child.stdout)
    assert figures["code"] == "response_too_large"
    assert figures["grew_mb"] < bound_mb, figures
    assert MAX_RESPONSE_BYTES == 32 * 1024 * 1024


async def test_headers_and_bodies_echoing_the_key_are_scrubbed(fault: FaultServer) -> None:
    """SPEC §8.33: x-request-id equal to the key, or holding a piece of it, and a completion quoting it: the client
    hands back [REDACTED] in every place a caller could write."""
    fault.on("rid", ok(headers=lambda seen: {"x-request-id": seen.key}))
    fault.on("rid-part", ok(headers=lambda seen: {"x-request-id": "req_" + seen.key[9:21]}))
    fault.on(
        "content",
        ok_from(
            lambda seen: completion(
                f"you sent {seen.key}",
                id="chatcmpl-" + seen.key[-10:],
                tool_calls=[{"function": {"arguments": seen.key[4:16]}}],
            )
        ),
    )
    fault.on("err-rid", json_error(500, "boom", "x", headers=lambda seen: {"x-request-id": seen.key}))
    for prompt in ("rid", "rid-part", "content", "err-rid"):
        got = await outcome(fault, prompt)
        visible = [str(got.request_id)]
        if isinstance(got, RequestFailed):
            visible += [got.message, repr(got.body), str(dict(got.headers or {}))]
        else:
            visible += [got.raw.decode(), json.dumps(got.data), str(dict(got.headers))]
        for text in visible:
            assert not leaks(text), (prompt, text)
        assert "[REDACTED]" in str(got.request_id) + "".join(visible), prompt
    assert fault.requests[0].key == KEY  # the server really was sent the key, and echoed it


@pytest.mark.parametrize("status", [429, 403])
async def test_quota_bodies_are_quota_rejected(fault: FaultServer, status: int) -> None:
    fault.on("q", respond(status, quota_body("insufficient_quota")))
    exc = await outcome(fault, "q")
    assert type(exc) is QuotaRejected and exc.status == status
    assert "insufficient_quota" in exc.message


async def test_retry_after_of_a_day_is_quota_rejected(fault: FaultServer) -> None:
    fault.on("day", respond(429, {"error": {"message": "come back tomorrow"}}, headers={"Retry-After": "86400"}))
    exc = await outcome(fault, "day", max_wait=600.0)
    assert type(exc) is QuotaRejected
    assert "Retry-After" in exc.message and "in 1d (at " in exc.message


# ---- the CLI, end to end ----------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["jsonl", "openai-batch"])
def test_cli_survives_every_fault_and_never_writes_a_piece_of_the_key(
    fault: FaultServer, runner: CliRunner, tmp_path: Path, output_format: str
) -> None:
    """One run meets every fault at once: each row ends with the right status and code, the run finishes (exit 1:
    some rows are errors), no traceback, and no 8-character piece of the key is in stdout, stderr, the output or
    the checkpoint (the checkpoint stays: rows ended in error)."""
    now = int(time.time())
    fault.on("reset", reset_mid_body())
    fault.on("truncated", truncated())
    fault.on("garbage", garbage_status())
    fault.on("gzip", gzip_garbage())
    fault.on("big", oversized(FORTY_MB))
    fault.on("big-chunked", oversized(FORTY_MB, framing="chunked"))
    fault.on("rid", ok(headers=lambda seen: {"x-request-id": seen.key}))
    fault.on("rid-part", ok(headers=lambda seen: {"x-request-id": "req_" + seen.key[3:14]}))
    fault.on(
        "echo",
        ok_from(
            lambda seen: completion(
                f"key {seen.key}; head {seen.key[:9]}",
                id="cc-" + seen.key[5:20],
                tool_calls=[{"function": {"arguments": seen.key[-12:]}}],
            )
        ),
    )
    fault.on(
        "err-cut", respond(400, lambda seen: {"error": {"code": "invalid_request", "message": "w" * 285 + seen.key}})
    )  # across the cut
    fault.on(
        "err-html", respond(403, lambda seen: f"<html><b>blocked</b> {seen.key[2:30]}</html>", content_type="text/html")
    )
    fault.on(
        "err-echo",
        respond(
            422,
            lambda seen: {"error": {"code": "bad", "message": f"bad key {seen.key}", "param": seen.key[6:20]}},
            headers=lambda seen: {"x-request-id": seen.key[1:25]},
        ),
    )
    fault.on(
        "epoch", ok(headers={"x-ratelimit-remaining-requests": "50", "x-ratelimit-reset-requests": str(now + 3600)})
    )
    fault.on(
        "garbage-reset",
        ok(
            headers={
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "inf",
                "x-ratelimit-limit-requests": "nan",
            }
        ),
    )
    fault.on("retry-after-inf", respond(429, {"error": {"message": "slow"}}, headers={"Retry-After": "inf"}))
    names = [
        "reset",
        "truncated",
        "garbage",
        "gzip",
        "big",
        "big-chunked",
        "rid",
        "rid-part",
        "echo",
        "err-cut",
        "err-html",
        "err-echo",
        "epoch",
        "garbage-reset",
        "retry-after-inf",
        "fine",
    ]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(*names))
    output = tmp_path / "out.jsonl"
    result = cli(
        runner,
        fault,
        source,
        output,
        "--max-attempts",
        "2",
        "-c",
        "4",
        "-v",
        "--output-format",
        output_format,
        "--summary-json",
        str(tmp_path / "summary.json"),
    )
    assert result.exit_code == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert_no_key_anywhere(result, output)
    assert not leaks((tmp_path / "summary.json").read_bytes())

    lines = read_jsonl(output)
    assert len(lines) == len(names)
    if output_format == "jsonl":
        rows = {r["id"]: r for r in lines}
        got = {n: (rows[n]["status"], rows[n]["status_code"], (rows[n]["error"] or "").split(":")[0]) for n in names}
        attempts = {n: rows[n]["attempts"] for n in names}
        request_ids = {n: rows[n]["request_id"] for n in names}
    else:
        rows = {r["custom_id"]: r for r in lines}
        got = {
            n: (
                "ok" if rows[n]["error"] is None else "error",
                (rows[n]["response"] or {}).get("status_code"),
                (rows[n]["error"] or {}).get("code", ""),
            )
            for n in names
        }
        attempts = None
        request_ids = {n: (rows[n]["response"] or {}).get("request_id") for n in names}
    expected_codes = {
        "reset": ("error", 200, "connection_error"),
        "truncated": ("error", 200, "connection_error"),
        "garbage": ("error", None, "connection_error"),
        "gzip": ("error", 200, "connection_error"),
        "big": ("error", 200, "response_too_large"),
        "big-chunked": ("error", 200, "response_too_large"),
        "err-cut": ("error", 400, "invalid_request"),
        "err-html": ("error", 403, "http_403"),
        "err-echo": ("error", 422, "bad"),
        "retry-after-inf": ("error", 429, "http_429"),  # garbage Retry-After: a short backoff, not forever
    }
    for name in names:
        status, code, error = expected_codes.get(name, ("ok", 200, ""))
        if output_format == "openai-batch" and status == "ok":
            error = ""
        assert got[name] == (status, code, error), name
    if attempts is not None:
        assert attempts["big"] == attempts["big-chunked"] == 1  # Fatal: never retried
        assert attempts["reset"] == attempts["garbage"] == 2
        assert attempts["err-cut"] == attempts["err-echo"] == 1
    assert request_ids["rid"] == "[REDACTED]"
    assert request_ids["rid-part"] == "req_[REDACTED]"
    assert request_ids["err-echo"] == "[REDACTED]"
    assert len(fault.sent_to("big")) == 1


def test_cli_epoch_reset_is_a_moment_not_56_years(fault: FaultServer, runner: CliRunner, tmp_path: Path) -> None:
    """`x-ratelimit-reset-requests: <Unix seconds>` with nothing left: the run waits until that moment (about a
    second here) and finishes; read as a duration it was a 56-year wait, now a quota stop."""
    fault.on(
        "first",
        ok(
            headers=lambda seen: {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": str(int(time.time()) + 1),
            }
        ),
    )
    source = write_jsonl(tmp_path / "in.jsonl", prompts("first", "second", "third"))
    output = tmp_path / "out.jsonl"
    result = cli(runner, fault, source, output, "-c", "1")
    assert result.exit_code == 0, result.stderr[-2000:]
    assert [r["status"] for r in read_jsonl(output)] == ["ok"] * 3


# ---- quota stops, end to end (needs the runner wiring: QuotaRejected → QuotaExhausted, exit 3) ---------


def final_message(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("inferbatch: ")]
    assert lines, stderr
    return lines[-1]


@pytest.mark.parametrize("status", [429, 403])
def test_cli_quota_error_stops_the_run_with_exit_3(
    fault: FaultServer, runner: CliRunner, tmp_path: Path, status: int
) -> None:
    """Needs the runner wiring. SPEC §4: an exhausted quota stops the run at once (exit 3, resumable), with a message
    naming it; the row that met it is not recorded as an error (a rerun after the reset sends it), and rows are not
    retried into the wall."""
    fault.default = respond(
        status,
        quota_body("insufficient_quota"),
        headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": str(int(time.time()) + 7200)},
    )
    source = write_jsonl(tmp_path / "in.jsonl", prompts(*(f"r{i}" for i in range(50))))
    output = tmp_path / "out.jsonl"
    result = cli(runner, fault, source, output, "-c", "2")
    assert result.exit_code == 3, result.stderr[-2000:]
    message = final_message(result.stderr)
    assert "insufficient_quota" in message and "x-ratelimit-reset-tokens" in message and "in 2h" in message
    assert len(fault.requests) <= 2  # the requests in flight when it came back: nothing more
    assert read_jsonl(output) == []
    assert "Traceback" not in result.stderr
    assert_no_key_anywhere(result, output)


def test_cli_retry_after_beyond_max_wait_stops_with_exit_3(
    fault: FaultServer, runner: CliRunner, tmp_path: Path
) -> None:
    """Needs the runner wiring. A 429 asking for a day (over --max-wait 10m) stops at once, saying until when,
    instead of sleeping ten minutes per attempt."""
    fault.default = respond(429, {"error": {"message": "daily limit"}}, headers={"Retry-After": "86400"})
    source = write_jsonl(tmp_path / "in.jsonl", prompts(*(f"r{i}" for i in range(20))))
    output = tmp_path / "out.jsonl"
    result = cli(runner, fault, source, output, "-c", "1", "--max-wait", "10m")
    assert result.exit_code == 3, result.stderr[-2000:]
    message = final_message(result.stderr)
    assert "Retry-After" in message and "in 1d (at " in message and "--max-wait 10m" in message
    assert len(fault.requests) == 1
    assert read_jsonl(output) == []


def test_cli_exhausted_limit_with_a_far_reset_stops_instead_of_hanging(fault: FaultServer, tmp_path: Path) -> None:
    """Needs the runner wiring for exit 3 (without it the run still ends, with error rows). "0 requests remaining,
    reset in 20 days" hung the run silently; now it stops at once naming the limit and the date. Run as a
    subprocess with a timeout, so a regression fails instead of hanging the suite."""
    far = str(int(time.time()) + 20 * 86_400)
    fault.default = ok(headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": far})
    source = write_jsonl(tmp_path / "in.jsonl", prompts(*(f"r{i}" for i in range(5))))
    output = tmp_path / "out.jsonl"
    env = {"PATH": "/usr/bin:/bin", "INFERENCE_KEY": KEY, "INFERENCE_MODEL_ID": "fault-model"}
    child = subprocess.run(
        [sys.executable, "-m", "inferbatch", "run", str(source), "-o", str(output), "--url", fault.url, "-c", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert child.returncode == 3, child.stderr[-2000:]
    message = final_message(child.stderr)
    assert "x-ratelimit-remaining-requests" in message and "in 20d (at " in message
    assert [r["status"] for r in read_jsonl(output)] == ["ok"]  # the answer that brought the news is kept
    assert len(fault.requests) == 1
    assert not leaks(child.stdout + child.stderr) and not leaks(output.read_bytes())


def test_a_bug_traceback_shows_no_piece_of_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SPEC §4/§8.33: a bug still prints its traceback, with every 8+ character piece of the key redacted, not only
    the whole key (a key cut by repr() or an exception message leaked its head before)."""
    from inferbatch import cli as cli_module

    def buggy(**kwargs: Any) -> None:
        raise RuntimeError(f"boom: whole={KEY} head={KEY[:12]}… tail=…{KEY[-9:]}")

    monkeypatch.setenv("INFERENCE_KEY", KEY)
    monkeypatch.setattr(cli_module.cli, "main", buggy)
    with pytest.raises(SystemExit) as info:
        cli_module.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom: whole=[REDACTED] head=[REDACTED]… tail=…[REDACTED]" in err
    assert not leaks(err)


def test_cli_a_row_retries_for_bounded_time(fault: FaultServer, runner: CliRunner, tmp_path: Path) -> None:
    """Needs the runner wiring (make_retrying(..., max_elapsed=max_attempts x timeout, started_at=...)). SPEC §8.41:
    a row that keeps failing stops retrying when its next wait would end past --max-attempts x --timeout from its
    first attempt (here 10 x 0.2 s = 2 s, with 503s asking for 0.5 s each): a few attempts, not all ten."""
    from inferbatch import retry

    retry.set_testing(False)  # real waits: the bound is about time (the autouse fixture restores test mode)
    fault.on("slow", respond(503, {"error": {"message": "busy"}}, headers={"Retry-After": "0.5"}))
    source = write_jsonl(tmp_path / "in.jsonl", prompts("slow"))
    output = tmp_path / "out.jsonl"
    result = cli(runner, fault, source, output, "--max-attempts", "10", "--timeout", "0.2")
    assert result.exit_code == 1, result.stderr[-2000:]
    (row,) = read_jsonl(output)
    assert row["status"] == "error" and row["status_code"] == 503
    assert 2 <= row["attempts"] <= 5, row["attempts"]
    assert len(fault.sent_to("slow")) == row["attempts"]


async def test_failures_say_how_far_the_answer_got_and_how_long_it_took(fault: FaultServer) -> None:
    """The `error` and `latency_ms` columns of a failed row are what a person reads first: a body cut off
    says which status arrived, a timeout says whether anything arrived, and the time is the attempt's."""
    fault.on("cut", reset_mid_body())
    fault.on("garbage", garbage_status())
    fault.on("slow", hang())
    cut = await outcome(fault, "cut")
    assert cut.message.startswith("connection_error: HTTP 200 body cut off: ")
    garbage = await outcome(fault, "garbage")
    assert garbage.message.startswith("connection_error: ") and "HTTP" not in garbage.message.split(":")[1]
    slow = await outcome(fault, "slow", timeout=0.3)
    assert slow.message == "timeout: no response within 0.3 s"
    for failure in (cut, garbage):
        assert 0 < failure.latency_ms < 10_000
    assert 250 <= slow.latency_ms < 10_000  # the attempt's own time, in milliseconds


async def test_an_answer_s_latency_is_the_attempt_s_time_in_milliseconds(fault: FaultServer) -> None:
    """latency_ms feeds the output, the summary percentiles and --deadline's margin: milliseconds, not seconds."""
    fault.on("fine", ok())
    response = await outcome(fault, "fine")
    assert 0 < response.latency_ms < 10_000


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_a_body_of_exactly_32_mib_is_read_and_one_byte_more_is_not(fault: FaultServer, framing: str) -> None:
    """SPEC §8.37 says *over* 32 MiB: the limit itself is still an answer (here a completion), one byte more is not."""
    fault.on("at", oversized(MAX_RESPONSE_BYTES, framing=framing))
    fault.on("over", oversized(MAX_RESPONSE_BYTES + 1, framing=framing))
    at = await outcome(fault, "at")
    assert not isinstance(at, RequestFailed), at
    assert len(at.data["choices"][0]["message"]["content"]) > 30_000_000
    over = await outcome(fault, "over")
    assert type(over) is Fatal and over.code == "response_too_large"
