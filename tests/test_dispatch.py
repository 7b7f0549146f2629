"""One row's trip (``dispatch.send``), unit by unit: a scripted fake client, a real limiter and budget, fake clocks.

Nothing here opens a socket. Waits are zero (``wait_scale=0``) unless a test is about waiting; the tests about
the elapsed bound replace ``dispatch._sleep`` with one that advances a fake clock, so they never sleep either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferbatch import dispatch, retry
from inferbatch.budget import Budget
from inferbatch.cache import ResponseCache
from inferbatch.client import Response
from inferbatch.errors import (
    AuthFailed,
    AuthRejected,
    BudgetExceeded,
    ConfigError,
    Fatal,
    QuotaExhausted,
    QuotaRejected,
    Retryable,
)
from inferbatch.limits import Limiter, Stopped
from inferbatch.pricing import Pricing, unpriced_error
from inferbatch.results import Result, Status
from inferbatch.shaping import Request, estimate_prompt_tokens

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


def ok(data: dict[str, Any] | None = None) -> Response:
    return Response(
        status=200, data=data if data is not None else COMPLETION, headers={}, latency_ms=5.0, raw=b"", request_id=None
    )


Outcome = Response | Exception | Callable[[], Response | Exception]


class FakeClient:
    """Plays ``script`` in order (each item a Response, an exception to raise, or a factory of either), then
    ``then`` (a factory) for every further send. ``on_send`` runs before each answer (a fake clock's tick)."""

    def __init__(
        self,
        *script: Outcome,
        then: Callable[[], Response | Exception] | None = None,
        on_send: Callable[[], None] | None = None,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.on_send = on_send
        self.bodies: list[bytes] = []

    @property
    def sends(self) -> int:
        return len(self.bodies)

    async def send(self, body: bytes) -> Response:
        self.bodies.append(body)
        if self.on_send is not None:
            self.on_send()
        if self.script:
            item = self.script.pop(0)
        elif self.then is not None:
            item = self.then
        else:
            raise AssertionError(f"unscripted send #{len(self.bodies)}")
        if callable(item):
            item = item()
        if isinstance(item, Exception):
            raise item
        return item


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(model: str | None = "m", *, sample: int = 0, keep: dict[str, Any] | None = None) -> Request:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body = {"model": model, **body}
    return Request(id="r1", index=0, line=1, body=body, keep=keep or {}, slot=0, sample=sample)


def context(
    client: FakeClient,
    *,
    max_attempts: int = 5,
    max_elapsed: float | None = None,
    wait_scale: float = 0.0,
    budget: Budget | None = None,
    pricing: Pricing | None = None,
    **extra: Any,
) -> tuple[dispatch.Context, list[int]]:
    """A Context around ``client`` with a real, unconstrained limiter and budget, and the mark_sent ledger."""
    pricing = pricing or Pricing()
    sent: list[int] = []
    ctx = dispatch.Context(
        client=client,
        limiter=Limiter(1000, max_wait=None),
        budget=budget or Budget(max_tokens=None, max_cost=None, pricing=pricing),
        pricing=pricing,
        policy=retry.Policy(max_attempts=max_attempts, max_elapsed=max_elapsed, wait_scale=wait_scale),
        stopping=asyncio.Event(),
        mark_sent=sent.append,
        **extra,
    )
    return ctx, sent


# ---- answers ----------------------------------------------------------------------------------------------------


async def test_a_first_attempt_answer_is_one_attempt_with_the_bodys_content_and_usage() -> None:
    client = FakeClient(ok())
    ctx, sent = context(client)
    req = request(keep={"topic": "greeting"})
    result = await dispatch.send(req, ctx)
    assert result == Result(
        "r1",
        0,
        Status.OK,
        200,
        content="hello",
        finish_reason="stop",
        model="m",
        prompt_tokens=7,
        completion_tokens=3,
        total_tokens=10,
        attempts=1,
        latency_ms=5.0,
        request_id="chatcmpl-1",
        kept={"topic": "greeting"},
        body=COMPLETION,
    )
    assert client.bodies == [orjson.dumps(req.body)]
    assert sent == [0]  # mark_sent(request.slot), once
    assert (ctx.limiter.admitted, ctx.limiter.in_flight, ctx.limiter.tokens_used) == (1, 0, 10)


async def test_retryable_twice_then_an_answer_is_three_attempts() -> None:
    client = FakeClient(
        Retryable("server_error: 502", status=502, code="server_error"), Retryable("timeout", code="timeout"), ok()
    )
    ctx, sent = context(client, max_attempts=5)
    result = await dispatch.send(request(), ctx)
    assert (result.status, result.attempts, result.content, result.error_code) == (Status.OK, 3, "hello", None)
    assert client.sends == 3
    assert sent == [0, 0, 0]  # every attempt is in doubt once sent
    assert (ctx.limiter.admitted, ctx.limiter.in_flight) == (3, 0)


async def test_a_budget_is_settled_with_the_answers_usage() -> None:
    pricing = Pricing()
    budget = Budget(max_tokens=100_000, max_cost=None, pricing=pricing)
    ctx, _ = context(FakeClient(ok()), budget=budget, pricing=pricing)
    await dispatch.send(request(), ctx)
    assert (budget.spent_tokens, budget.reserved_tokens, budget.outstanding) == (10, 0, 0)


# ---- failures that end the row ----------------------------------------------------------------------------------


async def test_always_retryable_ends_as_an_error_after_max_attempts_with_the_carried_code() -> None:
    # The message reads like another code: the row's code must come from ``code=``, never from the text.
    client = FakeClient(
        then=lambda: Retryable(
            "timeout: upstream gave up", status=503, code="server_error", latency_ms=7.25, request_id="req-9"
        )
    )
    ctx, sent = context(client, max_attempts=3)
    result = await dispatch.send(request(keep={"k": 1}), ctx)
    assert result == Result(
        "r1",
        0,
        Status.ERROR,
        503,
        attempts=3,
        latency_ms=7.25,
        error="timeout: upstream gave up",
        request_id="req-9",
        error_code="server_error",
        kept={"k": 1},
    )
    assert client.sends == 3
    assert sent == [0, 0, 0]
    assert (ctx.limiter.admitted, ctx.limiter.in_flight) == (3, 0)


async def test_a_retryable_failure_without_a_code_or_status_is_a_connection_error() -> None:
    ctx, _ = context(FakeClient(then=lambda: Retryable("connection reset")), max_attempts=2)
    result = await dispatch.send(request(), ctx)
    assert (result.status, result.status_code, result.error_code, result.attempts) == (
        Status.ERROR,
        None,
        "connection_error",
        2,
    )


async def test_fatal_400_is_an_error_after_one_attempt() -> None:
    client = FakeClient(
        Fatal(
            "bad_request: no such parameter",
            status=400,
            code="bad_request",
            body={"error": {"message": "no such parameter"}},
        )
    )
    ctx, sent = context(client, max_attempts=5)
    result = await dispatch.send(request(), ctx)
    assert (result.status, result.status_code, result.attempts, result.error_code) == (
        Status.ERROR,
        400,
        1,
        "bad_request",
    )
    assert result.error == "bad_request: no such parameter"
    assert result.body == {"error": {"message": "no such parameter"}}
    assert client.sends == 1 and sent == [0]


async def test_a_fatal_after_retries_counts_every_attempt_and_keeps_the_last_failure() -> None:
    client = FakeClient(
        Retryable("server_error", status=500, code="server_error"),
        Fatal("not_found: no model", status=404, code="not_found"),
    )
    ctx, _ = context(client, max_attempts=5)
    result = await dispatch.send(request(), ctx)
    assert (result.attempts, result.status_code, result.error_code, result.error) == (
        2,
        404,
        "not_found",
        "not_found: no model",
    )
    assert client.sends == 2


# ---- stops ---------------------------------------------------------------------------------------------------------


async def test_a_401_stops_the_run() -> None:
    client = FakeClient(AuthRejected("invalid api key", status=401, code="authentication_error"))
    ctx, _ = context(client, max_attempts=5)
    with pytest.raises(AuthFailed, match=r"^the key was rejected \(401\): invalid api key;"):
        await dispatch.send(request(), ctx)
    assert client.sends == 1


async def test_a_403_for_a_model_the_run_names_stops_the_run() -> None:
    client = FakeClient(AuthRejected("not allowed", status=403, code="authorization_error"))
    ctx, _ = context(client, own_models=frozenset({"m"}))
    with pytest.raises(AuthFailed, match=r"^the key may not use model 'm' \(403\): not allowed;"):
        await dispatch.send(request("m"), ctx)
    assert client.sends == 1


async def test_a_403_for_a_rows_own_model_fails_only_that_row() -> None:
    client = FakeClient(AuthRejected("not allowed", status=403, code="authorization_error"))
    ctx, _ = context(client, own_models=frozenset({"m"}))
    result = await dispatch.send(request("row-model"), ctx)
    assert (result.status, result.status_code, result.attempts, result.error_code, result.error) == (
        Status.ERROR,
        403,
        1,
        "authorization_error",
        "not allowed",
    )
    assert client.sends == 1


async def test_a_quota_rejection_stops_the_run() -> None:
    client = FakeClient(QuotaRejected("quota_exhausted: monthly credit used up", status=429, code="quota_exhausted"))
    ctx, _ = context(client, max_attempts=5)
    with pytest.raises(QuotaExhausted, match=r"^quota stop: quota_exhausted: monthly credit used up;"):
        await dispatch.send(request(), ctx)
    assert client.sends == 1


async def test_a_budget_cap_with_nothing_outstanding_stops_before_any_send() -> None:
    pricing = Pricing()
    budget = Budget(max_tokens=1, max_cost=None, pricing=pricing)
    client = FakeClient(ok())
    ctx, sent = context(client, budget=budget, pricing=pricing)
    with pytest.raises(BudgetExceeded, match=r"^budget cap reached: --max-total-tokens 1 \(spent 0\);"):
        await asyncio.wait_for(dispatch.send(request(), ctx), 5)  # a stop, not a wait for nothing
    assert client.sends == 0 and sent == [] and ctx.limiter.admitted == 0
    assert (budget.outstanding, budget.reserved_tokens) == (0, 0)


async def test_a_budget_cap_waits_for_an_outstanding_settlement_then_sends() -> None:
    pricing = Pricing()
    req = request()
    limiter = Limiter(1000, max_wait=None)
    need = limiter.estimate(estimate_prompt_tokens(req.body), None)
    budget = Budget(max_tokens=need + 5, max_cost=None, pricing=pricing)
    held = budget.reserve("m", 10, 0)  # another row's attempt in flight: this one does not fit beside it
    assert held is not None
    client = FakeClient(ok())
    ctx, _ = context(client, budget=budget, pricing=pricing)
    task = asyncio.create_task(dispatch.send(req, ctx))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done() and client.sends == 0
    budget.settle(held, "m", 0, 0)  # that attempt spent nothing: room again
    result = await asyncio.wait_for(task, 5)
    assert (result.status, result.attempts, client.sends) == (Status.OK, 1, 1)


async def test_a_stop_while_waiting_for_budget_cuts_the_row_off() -> None:
    pricing = Pricing()
    budget = Budget(max_tokens=300, max_cost=None, pricing=pricing)
    held = budget.reserve("m", 300, 0)
    assert held is not None
    client = FakeClient(ok())
    ctx, _ = context(client, budget=budget, pricing=pricing)
    task = asyncio.create_task(dispatch.send(request(), ctx))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    ctx.stopping.set()
    budget.wake()  # what the runner's request_stop does
    with pytest.raises(Stopped):
        await asyncio.wait_for(task, 5)
    assert client.sends == 0


async def test_max_cost_with_an_unpriced_model_is_a_usage_error_before_any_send() -> None:
    client = FakeClient(ok())
    ctx, sent = context(client, needs_prices=True)
    assert not Pricing().priced("m")
    with pytest.raises(ConfigError) as caught:
        await dispatch.send(request("m"), ctx)
    assert str(caught.value) == str(unpriced_error("m"))
    assert client.sends == 0 and sent == []


async def test_max_cost_with_a_priced_model_sends() -> None:
    client = FakeClient(ok())
    ctx, _ = context(client, needs_prices=True)
    result = await dispatch.send(request("nova-lite"), ctx)
    assert (result.status, client.sends) == (Status.OK, 1)


async def test_a_stop_during_a_retry_wait_cuts_the_row_off_at_once() -> None:
    # A real wait: the server asked for 5 s (plus jitter), and the policy does not scale it away.
    client = FakeClient(then=lambda: Retryable("overloaded", status=503, code="server_error", retry_after=5.0))
    ctx, _ = context(client, max_attempts=5, wait_scale=1.0)
    asyncio.get_running_loop().call_later(0.05, ctx.stopping.set)
    started = time.monotonic()
    with pytest.raises(Stopped):
        await dispatch.send(request(), ctx)
    assert time.monotonic() - started < 3.0
    assert client.sends == 1


async def test_a_failure_after_the_stop_is_not_retried() -> None:
    client = FakeClient(then=lambda: Retryable("overloaded", status=503, code="server_error"))
    ctx, _ = context(client, max_attempts=5)
    ctx.stopping.set()
    with pytest.raises(Stopped):
        await dispatch.send(request(), ctx)
    assert client.sends == 1  # the attempt in hand went out; no retry after the stop


# ---- the elapsed bound (SPEC §8.41) ------------------------------------------------------------------------------


def fake_sleeps(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> list[float]:
    """Replace the trip's retry wait with one that only advances ``clock``; returns the waits asked for."""
    waits: list[float] = []

    async def sleep(seconds: float, ctx: dispatch.Context) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    monkeypatch.setattr(dispatch, "_sleep", sleep)
    return waits


async def test_max_elapsed_stops_before_a_wait_that_would_end_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each send takes 0.6 s; the server asks for 0.5 s (+ up to 0.15 s jitter). From t=0: attempt 1 ends at 0.6,
    # its wait would end at 1.1..1.25, past 1.0: no second attempt, though nine are left.
    clock = FakeClock()
    waits = fake_sleeps(monkeypatch, clock)
    client = FakeClient(
        then=lambda: Retryable("overloaded", status=503, code="server_error", retry_after=0.5),
        on_send=lambda: clock.advance(0.6),
    )
    ctx, _ = context(client, max_attempts=10, max_elapsed=1.0, wait_scale=1.0, clock=clock)
    result = await dispatch.send(request(), ctx)
    assert (result.status, result.attempts, result.error_code) == (Status.ERROR, 1, "server_error")
    assert client.sends == 1 and waits == []


async def test_max_elapsed_allows_the_waits_that_end_within_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3 s: attempt 1 ends at 0.6, waits to ≤1.25; attempt 2 ends at ≤1.85, waits to ≤2.5; attempt 3 ends at
    # ≥2.8 and any wait (≥0.5) ends past 3.0: three attempts, two waits.
    clock = FakeClock()
    waits = fake_sleeps(monkeypatch, clock)
    client = FakeClient(
        then=lambda: Retryable("overloaded", status=503, code="server_error", retry_after=0.5),
        on_send=lambda: clock.advance(0.6),
    )
    ctx, _ = context(client, max_attempts=10, max_elapsed=3.0, wait_scale=1.0, clock=clock)
    result = await dispatch.send(request(), ctx)
    assert (result.status, result.attempts) == (Status.ERROR, 3)
    assert client.sends == 3 and len(waits) == 2
    assert all(0.5 <= w <= 0.65 for w in waits), waits


async def test_max_elapsed_counts_on_the_contexts_clock_even_with_zero_waits() -> None:
    # wait_scale 0: waits are nothing, the clock alone ends it: 0.6 < 1.0 retries, 1.2 >= 1.0 stops.
    clock = FakeClock(100.0)
    client = FakeClient(then=lambda: Retryable("timeout", code="timeout"), on_send=lambda: clock.advance(0.6))
    ctx, _ = context(client, max_attempts=10, max_elapsed=1.0, wait_scale=0.0, clock=clock)
    result = await dispatch.send(request(), ctx)
    assert (result.attempts, result.error_code, client.sends) == (2, "timeout", 2)


# ---- the fast path (retry.call's first attempt outside tenacity) --------------------------------------------------


def forbid_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    def make_retrying(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tenacity controller built")

    monkeypatch.setattr(retry, "make_retrying", make_retrying)


async def test_a_first_attempt_answer_never_builds_a_tenacity_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_tenacity(monkeypatch)
    client = FakeClient(ok())
    ctx, _ = context(client)
    result = await dispatch.send(request(), ctx)
    assert (result.status, result.attempts, client.sends) == (Status.OK, 1, 1)


async def test_a_first_attempt_failure_goes_to_tenacity(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_tenacity(monkeypatch)
    client = FakeClient(Retryable("timeout", code="timeout"), ok())
    ctx, _ = context(client)
    with pytest.raises(AssertionError, match="^tenacity controller built$"):
        await dispatch.send(request(), ctx)
    assert client.sends == 1


async def test_a_first_attempt_fatal_never_builds_a_tenacity_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_tenacity(monkeypatch)
    ctx, _ = context(FakeClient(Fatal("bad_request", status=400, code="bad_request")))
    result = await dispatch.send(request(), ctx)
    assert (result.status, result.attempts, result.error_code) == (Status.ERROR, 1, "bad_request")


# ---- the response cache --------------------------------------------------------------------------------------------


async def test_a_remembered_answer_is_served_from_the_cache(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "cache"), "http://x")
    client = FakeClient(ok())
    ctx, sent = context(client, cache=cache)
    req = request()
    first = await dispatch.send(req, ctx)
    assert (first.cached, first.attempts, cache.stores) == (False, 1, 0)  # send itself stores nothing
    await dispatch.remember(req, first, cache)
    assert cache.stores == 1
    second = await dispatch.send(req, ctx)
    assert second == Result(
        "r1",
        0,
        Status.OK,
        200,
        content="hello",
        finish_reason="stop",
        model="m",
        prompt_tokens=7,
        completion_tokens=3,
        total_tokens=10,
        attempts=0,
        latency_ms=5.0,
        request_id="chatcmpl-1",
        cached=True,
        body=COMPLETION,
    )
    assert client.sends == 1 and sent == [0] and cache.hits == 1


async def test_a_cached_answer_is_not_stored_again(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "cache"), "http://x")
    ctx, _ = context(FakeClient(ok()), cache=cache)
    req = request()
    await dispatch.remember(req, await dispatch.send(req, ctx), cache)
    cached = await dispatch.send(req, ctx)
    assert cached.cached is True
    await dispatch.remember(req, cached, cache)
    assert cache.stores == 1


async def test_an_error_is_not_remembered(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "cache"), "http://x")
    client = FakeClient(Fatal("bad_request", status=400, code="bad_request", body={"error": {}}), ok())
    ctx, _ = context(client, cache=cache)
    req = request()
    failed = await dispatch.send(req, ctx)
    await dispatch.remember(req, failed, cache)
    assert cache.stores == 0
    again = await dispatch.send(req, ctx)
    assert (again.cached, again.status, client.sends) == (False, Status.OK, 2)


async def test_another_sample_of_the_same_body_is_not_a_cache_hit(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "cache"), "http://x")
    client = FakeClient(ok(), ok())
    ctx, _ = context(client, cache=cache)
    await dispatch.remember(request(sample=0), await dispatch.send(request(sample=0), ctx), cache)
    other = await dispatch.send(request(sample=1), ctx)
    assert (other.cached, other.attempts, client.sends) == (False, 1, 2)


async def test_a_cache_entry_that_is_not_a_completion_is_sent_instead(tmp_path: Path) -> None:
    cache = ResponseCache(str(tmp_path / "cache"), "http://x")
    req = request()
    cache.put(cache.key(orjson.dumps(req.body), req.sample), {"data": {"no": "choices"}, "latency_ms": 1.0})
    client = FakeClient(ok())
    ctx, _ = context(client, cache=cache)
    result = await dispatch.send(req, ctx)
    assert (result.cached, result.attempts, client.sends) == (False, 1, 1)


# ---- cut off --------------------------------------------------------------------------------------------------


class HangingClient:
    """Never answers: every send waits until it is cancelled (a drain's cancel)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def send(self, body: bytes) -> Response:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_request_cancelled_in_flight_gives_its_limiter_slot_back() -> None:
    """A drain cancels rows still in flight; a limiter shared by the worker's next input must not lose the slot."""
    client = HangingClient()
    ctx, sent = context(FakeClient())
    ctx.client = client
    task = asyncio.create_task(dispatch.send(request(), ctx))
    await asyncio.wait_for(client.started.wait(), 5)
    assert ctx.limiter.in_flight == 1 and sent == [0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.limiter.in_flight == 0


# ---- a server that refuses response_format ------------------------------------------------------------------


def refusal(message: str) -> Fatal:
    return Fatal(f"unsupported_parameter: {message}", status=400, code="unsupported_parameter")


def structured_request(*, run_format: bool) -> Request:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}
    from inferbatch.structured import expectation_for

    return Request(
        id="r1",
        index=0,
        line=1,
        body=body,
        keep={},
        slot=0,
        structure=expectation_for(body["response_format"]),
        run_format=run_format,
    )


async def test_a_400_refusing_the_runs_own_response_format_stops_the_run() -> None:
    from inferbatch.errors import StructuredOutputRefused

    client = FakeClient(refusal("Unsupported parameter: 'response_format' is not supported with this model."))
    ctx, _ = context(client)
    with pytest.raises(StructuredOutputRefused, match="--schema-mode prompt"):
        await dispatch.send(structured_request(run_format=True), ctx)


async def test_a_400_refusing_a_rows_own_response_format_fails_only_that_row() -> None:
    client = FakeClient(refusal("Unsupported parameter: 'response_format' is not supported with this model."))
    ctx, _ = context(client)
    result = await dispatch.send(structured_request(run_format=False), ctx)
    assert (result.status, result.status_code, result.error_code) == (Status.ERROR, 400, "unsupported_parameter")


async def test_a_400_about_the_rows_messages_is_that_rows_error_even_with_the_runs_format() -> None:
    """OpenAI's json_object needs the word JSON in the messages: one row's problem, not a refused parameter."""
    message = "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
    ctx, _ = context(FakeClient(Fatal(f"invalid_request_error: {message}", status=400, code="invalid_request")))
    result = await dispatch.send(structured_request(run_format=True), ctx)
    assert (result.status, result.status_code) == (Status.ERROR, 400)


# ---- re-asks ----------------------------------------------------------------------------------------------------


def answer(content: str, finish_reason: str = "stop", model: str = "m") -> Response:
    data = {
        **COMPLETION,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }
    return ok(data)


async def test_an_answer_cut_short_by_max_tokens_is_not_re_asked() -> None:
    client = FakeClient(answer('{"a": ', finish_reason="length"))
    ctx, _ = context(client)
    result = await dispatch.send(structured_request(run_format=True), ctx)
    assert client.sends == 1 and result.error_code == "schema_mismatch" and result.finish_reason == "length"


async def test_a_row_that_fails_after_re_asks_keeps_the_model_that_billed_them() -> None:
    client = FakeClient(answer("not json", model="claude-x"), Fatal("bad_request: no", status=400, code="bad"))
    ctx, _ = context(client)
    result = await dispatch.send(structured_request(run_format=True), ctx)
    assert (result.status, result.error_code, result.model) == (Status.ERROR, "bad", "claude-x")
    assert (result.prompt_tokens, result.completion_tokens) == (7, 3)  # the re-asked answer's usage


async def test_a_stop_between_re_asks_keeps_the_paid_answer_for_a_rerun_to_ask_again() -> None:
    ctx, _ = context(FakeClient(answer("not json"), then=lambda: answer("not json")))
    ctx.client.on_send = ctx.limiter.close  # the run stops while the first answer is on its way
    kept = await dispatch.send(structured_request(run_format=True), ctx)
    assert ctx.client.sends == 1
    assert (kept.status, kept.error_code, kept.resend, kept.attempts, kept.total_tokens) == (
        Status.ERROR,
        "schema_mismatch",
        True,
        1,
        10,
    )
    assert kept.record()["_resend"] is True


async def test_the_budget_prices_cached_prompt_tokens_as_the_summary_does() -> None:
    """SPEC §8.43: cached prompt tokens at the table's cached-input price (Claude 4.5 Haiku: $1 in, $0.10 cached,
    $5 out per million), in the budget as in the summary."""
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "total_tokens": 1100,
        "prompt_tokens_details": {"cached_tokens": 800},
    }
    ctx, _ = context(FakeClient(ok({**COMPLETION, "model": "claude-4-5-haiku", "usage": usage})))
    ctx.budget = Budget(max_tokens=None, max_cost=1.0, pricing=ctx.pricing)
    row = request("claude-4-5-haiku")
    result = await dispatch.send(row, ctx)
    assert result.cached_tokens == 800
    assert ctx.budget.spent_cost == pytest.approx((200 * 1.00 + 800 * 0.10 + 100 * 5.00) / 1_000_000)
    assert ctx.pricing.cost("claude-4-5-haiku", 1000, 100, 800) == pytest.approx(ctx.budget.spent_cost)


async def test_a_short_retry_after_is_waited_out_not_skipped() -> None:
    """A server's Retry-After of a fraction of a second is still a wait (the sleep skips only zero)."""
    # A 500, not a 429: a 429's Retry-After also pauses the limiter, which would wait even if the row did not.
    client = FakeClient(Retryable("server_error: busy", status=500, code="server_error", retry_after=0.3), ok())
    ctx, _ = context(client, wait_scale=1.0)
    started = time.monotonic()
    result = await dispatch.send(request(), ctx)
    assert result.status is Status.OK and result.attempts == 2
    assert time.monotonic() - started >= 0.3


async def test_a_schema_that_cannot_be_applied_ends_the_row_without_re_asks() -> None:
    from inferbatch.structured import expectation_for

    schema = {"type": "object", "properties": {"a": {"$ref": "https://schemas.invalid/a.json"}}}
    row = structured_request(run_format=True)
    row.body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    row.structure = expectation_for(row.body["response_format"])
    client = FakeClient(answer('{"a": 1}'), then=lambda: answer('{"a": 1}'))
    ctx, _ = context(client)
    result = await dispatch.send(row, ctx)
    assert client.sends == 1
    assert (result.status, result.status_code, result.error_code) == (Status.ERROR, 200, "invalid_schema")
    assert result.error is not None and result.error.startswith("invalid_schema: the schema cannot be applied")
