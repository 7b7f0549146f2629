"""One row's trip: ``await send(request, ctx)`` sends it until it has a final answer, and returns a ``Result``.

    request ─cache?─▶ retry.call ─▶ attempt: budget.reserve ─▶ limiter.acquire ─▶ client.send
                                              ◀── settle both with what came back ──┘
    Result (ok | error)  or  a typed stop raised:

    Stopped           the run is stopping: the row is cut off, has no result, a rerun sends it
    AuthFailed        401, or a 403 for a model the run itself names (SPEC §4)
    QuotaExhausted    the server says the quota is gone, or asks for a wait over --max-wait
    BudgetExceeded    --max-total-tokens / --max-cost reached with nothing left in flight
    ConfigError        --max-cost with a row whose own model has no price (SPEC §8.31)

Everything a trip needs and shares with the other rows of the run is in ``Context``; nothing here
calls back into the runner. ``remember`` stores a fresh answer in the response cache, after the
runner has recorded it (a paid answer is kept whatever the cache does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from tenacity import RetryCallState

from inferbatch import retry
from inferbatch.budget import Budget, Reservation
from inferbatch.cache import ResponseCache
from inferbatch.client import Response
from inferbatch.errors import (
    AuthFailed,
    AuthRejected,
    BudgetExceeded,
    InferbatchError,
    QuotaExhausted,
    QuotaRejected,
    RequestFailed,
    StructuredOutputRefused,
)
from inferbatch.limits import Limiter, Stopped
from inferbatch.pricing import Pricing, unpriced_error
from inferbatch.results import Result, Status, Usage
from inferbatch.shaping import Request, estimate_prompt_tokens
from inferbatch.structured import MISMATCH, Expectation, SchemaProblem

log = logging.getLogger("inferbatch")

__all__ = ["Context", "Sender", "Stopped", "remember", "send"]


class Sender(Protocol):
    """What ``send`` needs of ``client.Client``: one HTTP attempt, raising ``RequestFailed`` subclasses."""

    async def send(self, body: bytes) -> Response: ...


@dataclass(slots=True)
class Context:
    """What every row's trip shares with the others in one run."""

    client: Sender
    limiter: Limiter
    budget: Budget
    pricing: Pricing
    policy: retry.Policy
    stopping: asyncio.Event
    mark_sent: Callable[[int], None]  # the checkpoint's in-doubt ledger: sent, outcome not yet known
    cache: ResponseCache | None = None
    # A 403 for one of these models stops the run; for a row's own model, it fails the row.
    own_models: frozenset[str | None] = frozenset()
    needs_prices: bool = False  # --max-cost: a model without a price must not count as free
    schema_retries: int = 2  # re-asks of an answer that does not match its schema (SPEC §8.42)
    log_retries: bool = False
    clock: Callable[[], float] = time.monotonic


class StopAfter(Exception):
    """A stop that came while a row was being re-asked: ``result`` (its last, paid, mismatching answer) is
    recorded, then ``stop`` ends the run. Without it, the answers billed before the stop would be lost."""

    def __init__(self, stop: InferbatchError, result: Result) -> None:
        super().__init__(str(stop))
        self.stop = stop
        self.result = result


async def send(request: Request, ctx: Context) -> Result:
    """Send ``request`` until it has a final answer (see the module docstring for the stops it raises)."""
    if ctx.cache is not None:
        cached = await _from_cache(request, ctx.cache)
        if cached is not None:
            return cached
    body = orjson.dumps(request.body)
    model = request.body.get("model")
    max_tokens = request.body.get("max_tokens") or request.body.get("max_completion_tokens")
    prompt_estimate = estimate_prompt_tokens(request.body)
    attempts = 0  # every send: retries and re-asks alike

    async def attempt(_number: int) -> Response:
        nonlocal attempts
        attempts += 1
        try:
            return await _attempt(request, body, model, prompt_estimate, max_tokens, ctx)
        except (Stopped, InferbatchError):
            attempts -= 1  # held back before it was sent (a stop, the budget): not an attempt
            raise

    asks = 1 + ctx.schema_retries if request.structure is not None else 1
    billed = Usage()  # the answers already re-asked: billed, so the row's token columns include them
    mismatch: Result | None = None  # the latest of those answers
    try:
        for ask in range(1, asks + 1):
            response = await retry.call(
                attempt,
                ctx.policy,
                sleep=lambda s: _sleep(s, ctx),
                before_sleep=_log_retry if ctx.log_retries else None,
                clock=ctx.clock,
            )
            result = _answer(request, response, attempts, billed)
            # An answer cut short by max_tokens would be cut short again, and a schema that cannot be applied
            # fails every answer: neither is re-asked.
            settled = result.finish_reason == "length" or result.error_code == "invalid_schema"
            if result.status is Status.OK or ask == asks or settled:
                return result
            mismatch = result
            billed = billed + Usage.of(response.data)
        raise AssertionError("unreachable: the last ask returns")  # pragma: no cover
    except Stopped:
        if mismatch is not None:  # cut off before a re-ask: its paid answers are kept, the next run asks again
            return dataclasses.replace(mismatch, resend=True, attempts=attempts)
        raise
    except InferbatchError as stop:  # the budget cap, or an unpriced model, before a re-ask
        if mismatch is not None:
            raise StopAfter(stop, dataclasses.replace(mismatch, resend=True, attempts=attempts)) from None
        raise
    except RequestFailed as exc:
        outcome = _failure(request, exc, attempts, billed, mismatch, ctx)
    if isinstance(outcome, InferbatchError):
        if mismatch is not None:
            raise StopAfter(outcome, mismatch)
        raise outcome
    return outcome


def _failure(
    request: Request, exc: RequestFailed, attempts: int, billed: Usage, mismatch: Result | None, ctx: Context
) -> Result | InferbatchError:
    """What a failed request means: the row's error, or a stop of the run (SPEC §4, §8.42). ``mismatch``: the
    row's last answer, re-asked: its model prices the tokens ``billed`` holds."""
    model = request.body.get("model")
    if isinstance(exc, QuotaRejected):
        return QuotaExhausted(f"quota stop: {exc.message}; finished rows are saved, rerun once it resets")
    if isinstance(exc, AuthRejected) and (exc.status == 401 or model in ctx.own_models):
        what = "the key was rejected (401)" if exc.status == 401 else f"the key may not use model {model!r} (403)"
        return AuthFailed(f"{what}: {exc.message}; check INFERENCE_KEY and the model")
    # (A 403 for a model only this row names is that row's error: the run goes on.)
    if request.run_format and exc.status == 400 and _REFUSED.search(exc.message) and "response_format" in exc.message:
        return StructuredOutputRefused(
            f"the server does not take the run's response_format ({exc.message}); with --schema or an llm-rubric "
            "judge, rerun with --schema-mode prompt (the schema in the system message) or json-object (llama.cpp's "
            "server); a response_format in --param or [params]: leave it out, and give the schema with --schema"
        )
    result = Result.failed(request.id, request.index, exc, attempts=attempts, kept=request.keep)
    answered_by = mismatch.model if mismatch is not None else None
    return dataclasses.replace(result, structured=request.structure is not None, model=answered_by).plus(billed)


# How servers say a parameter is refused outright (not: "the messages must mention JSON", a row's problem).
_REFUSED = re.compile(r"unsupported|not supported|unrecogni[sz]ed|unknown|not allowed|extra (?:inputs|fields)", re.I)


def _answer(request: Request, response: Response, attempts: int, billed: Usage) -> Result:
    """The row's result from a completion: ok, or (for a structured answer that does not match) an error
    with status 200 and the content kept (SPEC §8.42). ``billed``: earlier answers of the row, re-asked."""
    result = Result.answered(
        request.id,
        request.index,
        response.data,
        status_code=response.status,
        attempts=attempts,
        latency_ms=response.latency_ms,
        request_id=response.request_id,
        kept=request.keep,
    )
    return _checked(result, request.structure).plus(billed)


def _checked(result: Result, structure: Expectation | None) -> Result:
    if structure is None:
        return result
    try:
        parsed, problem = structure.check(result.content)
    except SchemaProblem as exc:  # the schema's fault (a $ref to nowhere): no re-ask can help
        return dataclasses.replace(
            result, status=Status.ERROR, error=f"invalid_schema: {exc}", error_code="invalid_schema", structured=True
        )
    if problem is None:
        return dataclasses.replace(result, parsed=parsed, structured=True)
    return dataclasses.replace(
        result,
        status=Status.ERROR,
        error=f"{MISMATCH}: {problem}",
        error_code=MISMATCH,
        structured=True,
    )


async def remember(request: Request, result: Result, cache: ResponseCache) -> None:
    """Keep a fresh answer in the response cache (after the runner recorded it)."""
    if result.cached or result.body is None or result.status != "ok":
        return
    entry = {"data": result.body, "latency_ms": result.latency_ms, "request_id": result.request_id}
    await _cache_io(cache, cache.put, cache.key(orjson.dumps(request.body), request.sample), entry)


async def _from_cache(request: Request, cache: ResponseCache) -> Result | None:
    entry = await _cache_io(cache, cache.get, cache.key(orjson.dumps(request.body), request.sample))
    if entry is None or not isinstance(entry.get("data"), dict):
        return None
    try:
        result = Result.answered(
            request.id,
            request.index,
            entry["data"],
            status_code=200,
            attempts=0,
            latency_ms=float(entry.get("latency_ms") or 0.0),
            request_id=entry.get("request_id"),
            cached=True,
            kept=request.keep,
        )
        checked = _checked(result, request.structure)
        return checked if checked.status is Status.OK else None  # only good answers are kept; else ask
    except (KeyError, IndexError, TypeError, ValueError):
        return None  # an entry from another version: send the request instead


async def _cache_io(cache: ResponseCache, func: Callable[..., Any], *args: Any) -> Any:
    """Local cache files are read in the loop; S3 objects in a thread, so the loop never waits on a network."""
    if cache.remote:
        return await asyncio.to_thread(func, *args)
    return func(*args)


async def _attempt(
    request: Request, body: bytes, model: str | None, prompt_estimate: int, max_tokens: int | None, ctx: Context
) -> Response:
    """One attempt: reserve budget, pass the limiter, send, and settle both with what came back."""
    if ctx.needs_prices and not ctx.pricing.priced(model):
        raise unpriced_error(model)
    estimate = ctx.limiter.estimate(prompt_estimate, max_tokens)
    reservation = await _reserve(ctx, model, prompt_estimate, estimate - prompt_estimate)
    billed = Usage()
    try:
        ticket = await ctx.limiter.acquire(estimate)
        ctx.mark_sent(request.slot)
        try:
            response = await ctx.client.send(body)
        except RequestFailed as exc:
            # A body cut off after its status line is no success, whatever the status said.
            status = None if exc.code == "connection_error" else exc.status
            ctx.limiter.release(ticket, status=status, headers=exc.headers, retry_after=exc.retry_after)
            raise
        except BaseException:
            # Cut off (a drain's cancel) or a bug: the slot comes back, or a shared limiter loses it for good.
            ctx.limiter.release(ticket, status=None)
            raise
        counted = isinstance(response.data.get("usage"), dict)
        billed = Usage.of(response.data)
        ctx.limiter.release(
            ticket,
            status=200,
            headers=response.headers,
            total_tokens=billed.prompt + billed.completion if counted else None,
            completion_tokens=billed.completion if counted else None,
        )
        return response
    finally:
        if reservation is not None:
            ctx.budget.settle(reservation, model, billed.prompt, billed.completion, billed.cached)


async def _reserve(ctx: Context, model: str | None, prompt_tokens: int, completion_tokens: int) -> Reservation | None:
    """Hold budget for one attempt, waiting for in-flight settlements; a stop at the cap."""
    budget = ctx.budget
    while budget.active:
        if ctx.stopping.is_set():
            raise Stopped
        reservation = budget.reserve(model, prompt_tokens, completion_tokens)
        if reservation is not None:
            return reservation
        if not budget.outstanding:
            raise BudgetExceeded(f"budget cap reached: {budget.describe()}; raise the cap and rerun to continue")
        await budget.changed()
    return None


async def _sleep(seconds: float, ctx: Context) -> None:
    """Wait before a retry, unless the run is stopping (then the row is cut off, not failed)."""
    if ctx.stopping.is_set():
        raise Stopped
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), seconds)
    if ctx.stopping.is_set():
        raise Stopped


def _log_retry(state: RetryCallState) -> None:
    if state.outcome is not None:
        exc = state.outcome.exception()
        from inferbatch.progress import logfmt

        log.info(
            logfmt(
                "retry",
                attempt=state.attempt_number,
                status=getattr(exc, "status", None),
                wait_s=round(state.upcoming_sleep, 2),
                error=str(exc)[:200],
            )
        )
