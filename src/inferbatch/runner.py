"""``run_batch``: feed every row still to do to bounded workers, record each result, write the output.

    planning.plan ─▶ feeder ─▶ queue (bounded) ─▶ workers: result = await dispatch.send(request)
                                                           recorder.record(result) ─▶ checkpoint
    completion.write_output (input order) ◀─ checkpoint

Nothing is held per row beyond the bounded queue: results go to the checkpoint as they finish and the
output is rebuilt from it in input order. A stop (signal, safety stop, deadline) closes the limiter so
nothing new is sent, lets in-flight requests finish for ``--drain-timeout`` seconds, and still writes the
output; rows it cut off have no result and a rerun sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from inferbatch import completion, dispatch, judging, retry
from inferbatch.budget import Budget
from inferbatch.cache import ResponseCache
from inferbatch.checkpoint import Checkpoint
from inferbatch.client import Client
from inferbatch.config import RunConfig, check_paths, run_paths
from inferbatch.errors import CheckpointError, ConfigError, DeadlineReached, InferbatchError, Interrupted
from inferbatch.limits import Limiter, Stopped
from inferbatch.planning import judge as judge_of
from inferbatch.planning import plan
from inferbatch.pricing import Pricing
from inferbatch.progress import Progress, Summary
from inferbatch.recording import Recorder
from inferbatch.results import VOTES_KEY, Result, Status
from inferbatch.shaping import Invalid, Request
from inferbatch.signals import signal_handlers

log = logging.getLogger("inferbatch")

FEED_BATCH = 256
TICK_S = 1.0


class Outcome(StrEnum):
    """How a run ended, for a caller to act on (the CLI maps it to an exit code)."""

    OK = "ok"  # every row ended ok (and every variant passes --fail-under)
    ROWS_FAILED = "rows_failed"  # some rows ended error or invalid, or a variant is under --fail-under
    STOPPED = "stopped"  # the run stopped early; ``RunReport.stop`` says why


@dataclass
class RunReport:
    """What a run did: the summary of the output, and the stop that ended it early, if any."""

    summary: Summary
    output: str | None
    stop: InferbatchError | None = None
    complete: bool = False
    already_complete: bool = False  # an earlier run completed this job: nothing was sent (SPEC §8.2)
    fail_under: float | None = None

    @property
    def outcome(self) -> Outcome:
        if self.stop is not None:
            return Outcome.STOPPED
        if self.summary.error or self.summary.invalid:
            return Outcome.ROWS_FAILED
        if self.fail_under is not None and self.summary.variants_below(self.fail_under):
            return Outcome.ROWS_FAILED
        return Outcome.OK


class StopSwitch:
    """Lets a caller stop a run from outside (the worker's own signal handlers), before or during it."""

    def __init__(self) -> None:
        self.reason: InferbatchError | None = None
        self._stop: Callable[[InferbatchError], None] | None = None

    def trigger(self, reason: InferbatchError) -> None:
        self.reason = reason
        if self._stop is not None:
            self._stop(reason)

    def bind(self, stop: Callable[[InferbatchError], None] | None) -> None:
        self._stop = stop
        if stop is not None and self.reason is not None:
            stop(self.reason)


@dataclass(frozen=True, slots=True)
class _Rejudge:
    """A row an earlier run answered and checkpointed, whose judge verdicts are not all in (SPEC §8.44)."""

    request: Request
    record: dict[str, Any]


def _second_interrupt() -> None:
    raise KeyboardInterrupt


async def run_batch(
    cfg: RunConfig,
    *,
    progress: Progress | None = None,
    handle_signals: bool = True,
    started_at: float | None = None,
    switch: StopSwitch | None = None,
    limiter: Limiter | None = None,
    on_second_interrupt: Callable[[], None] = _second_interrupt,
) -> RunReport:
    """Run ``cfg`` to the end or to a stop; always writes the output of every row finished so far.

    ``limiter``: one shared by consecutive runs (the worker's inputs), so moving to the next input never
    resets the rate windows the server is counting (SPEC §8.38); by default the run makes its own.
    ``on_second_interrupt``: called on a second Ctrl-C, after the checkpoint is flushed (the CLI leaves
    the process at once; by default KeyboardInterrupt is raised). ``cfg.url`` must be set: ``--simulate``
    is the caller's to start (``simulator.simulated(cfg)``)."""
    if cfg.output is None:
        raise ConfigError("no output: give -o OUTPUT or `output = ...` in the job file")
    if cfg.url is None:
        raise ConfigError("no URL: set INFERENCE_URL or --url (or start a simulator: simulator.simulated(cfg))")
    origin = time.monotonic() if started_at is None else started_at
    check_paths(run_paths(cfg))  # library callers and the worker's per-file configs skip resolve()
    items = plan(cfg)
    checkpoint = completion.open_checkpoint(cfg)
    try:
        if checkpoint.completion is not None:
            summary = await asyncio.to_thread(completion.already_complete, cfg, checkpoint.completion)
            return RunReport(summary, cfg.output, complete=True, already_complete=True, fail_under=cfg.fail_under)
        run = _Run(cfg, checkpoint, progress or Progress(total=None, quiet=True), origin, limiter, on_second_interrupt)
        if switch is not None:
            switch.bind(run.request_stop)
        try:
            await run.execute(items, handle_signals)
        finally:
            if switch is not None:
                switch.bind(None)
        return await asyncio.to_thread(_finish, cfg, run, checkpoint)
    finally:
        checkpoint.close()


def _finish(cfg: RunConfig, run: _Run, checkpoint: Checkpoint) -> RunReport:
    """Write the output, fill in the summary, and mark the job complete if every row of it is ok."""
    summary = completion.new_summary(cfg)
    completion.write_output(cfg, checkpoint, summary)
    summary.wall_s = time.monotonic() - run.started
    run.add_figures(summary)
    summary.in_doubt_resumed = checkpoint.resumed.in_doubt
    # A judged row a stop left pending (its verdicts still to ask) is not finished, whatever else went right.
    unjudged = summary.judge is not None and summary.judge.pending > 0
    complete = run.stop is None and run.fed_all and run.unfinished == 0 and checkpoint.failure is None and not unjudged
    total = run.progress.total
    # Rows answered but not yet judged are in the output, and unfinished all the same.
    summary.unfinished = (
        max(0, total - summary.rows) + summary.judge_pending_rows if total is not None else run.unfinished
    )
    if checkpoint.ephemeral:
        checkpoint.remove()
    elif complete and summary.error == 0 and summary.invalid == 0 and completion.covers_whole_input(cfg):
        completion.mark_complete(cfg, checkpoint, summary)
    return RunReport(summary, cfg.output, run.stop, complete=complete, fail_under=cfg.fail_under)


class _Run:
    """One run between reading the input and writing the output: the feeder, the workers and the stop."""

    def __init__(
        self,
        cfg: RunConfig,
        checkpoint: Checkpoint,
        progress: Progress,
        deadline_origin: float,
        limiter: Limiter | None,
        on_second_interrupt: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.on_second_interrupt = on_second_interrupt
        self.checkpoint = checkpoint
        self.progress = progress
        self.started = time.monotonic()
        self.deadline_origin = deadline_origin
        if limiter is None:
            limiter = Limiter(cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm, max_wait=cfg.max_wait, share=cfg.limit_share)
        limiter.reopen()
        self.limiter = limiter
        # A shared limiter's figures count every run: this run's are the differences.
        self.figures_at_start = (limiter.admitted, limiter.rate_limited, limiter.paused_s, limiter.tokens_used)
        self.judge = judge_of(cfg)
        self.recorder = Recorder(cfg, checkpoint, progress, self.judge)
        self.pricing = Pricing(cfg.price_in, cfg.price_out)
        resumed = checkpoint.resumed
        self.budget = Budget(
            max_tokens=cfg.max_total_tokens,
            max_cost=cfg.max_cost,
            pricing=self.pricing,
            spent_tokens=resumed.prompt_tokens + resumed.completion_tokens,
            spent_cost=sum(self.pricing.cost(m, p, c, k) or 0.0 for m, (p, c, k) in resumed.usage_by_model.items()),
        )
        self.stop: InferbatchError | None = None
        self.stopping = asyncio.Event()
        self.queue: asyncio.Queue[Request | _Rejudge | None] = asyncio.Queue(maxsize=cfg.concurrency * 2)
        self.workers = cfg.concurrency * 2 + 4  # more rows than slots, so rows waiting to retry don't idle the slots
        self.busy: set[asyncio.Task[Any]] = set()
        self.fed_all = False
        self.input_damage: InferbatchError | None = None
        self.fed = 0
        self.blocking_input = cfg.input == "-" or cfg.input.startswith("s3://")
        self.cache = ResponseCache(cfg.cache, "simulator" if cfg.simulate else cfg.url or "") if cfg.cache else None
        self.loop = asyncio.get_running_loop()
        self._signals = 0
        checkpoint.on_failure = self._checkpoint_failed

    @property
    def unfinished(self) -> int:
        return self.fed - self.recorder.finished

    def _context(self, client: Client) -> dispatch.Context:
        cfg = self.cfg
        return dispatch.Context(
            client=client,
            limiter=self.limiter,
            budget=self.budget,
            pricing=self.pricing,
            policy=retry.Policy(cfg.max_attempts, max_elapsed=cfg.max_attempts * cfg.timeout),  # SPEC §8.41
            stopping=self.stopping,
            mark_sent=self.checkpoint.mark_sent,
            cache=self.cache,
            own_models=frozenset(
                {cfg.model, *(v.model for v in cfg.variants), *(self.judge.models() if self.judge else ())} - {None}
            ),
            needs_prices=cfg.max_cost is not None,
            schema_retries=cfg.schema_retries,
            log_retries=cfg.verbose > 0,
        )

    def add_figures(self, summary: Summary) -> None:
        """This run's share of the limiter's figures, and the cache's."""
        admitted, rate_limited, paused_s, tokens_used = self.figures_at_start
        summary.sent_this_run = self.limiter.admitted - admitted
        summary.rate_limited = self.limiter.rate_limited - rate_limited
        summary.paused_s = self.limiter.paused_s - paused_s
        summary.effective_concurrency = self.limiter.effective_concurrency
        summary.tokens_this_run = self.limiter.tokens_used - tokens_used
        if self.cache is not None:
            summary.cache_stores = self.cache.stores

    # ---- orchestration ---------------------------------------------------
    async def execute(self, items: Iterator[Request | Invalid], handle_signals: bool) -> None:
        api_key = self.cfg.api_key.reveal() if self.cfg.api_key is not None else None
        assert self.cfg.url is not None
        async with Client(
            self.cfg.url,
            api_key,
            timeout=self.cfg.timeout,
            concurrency=self.cfg.concurrency,
            max_wait=self.cfg.max_wait,
        ) as client:
            ctx = self._context(client)
            async with signal_handlers(self._on_signal, handle_signals), self._ticker():
                feeder = asyncio.create_task(self._feed(items))
                workers = [asyncio.create_task(self._worker(ctx)) for _ in range(self.workers)]
                everything: asyncio.Future[list[None]] = asyncio.gather(feeder, *workers)
                stop_wait = asyncio.create_task(self.stopping.wait())
                either: set[asyncio.Future[Any]] = {everything, stop_wait}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if everything.done():
                    stop_wait.cancel()
                    everything.result()  # a bug in a worker surfaces here
                    if self.input_damage is not None and self.stop is None:
                        self.request_stop(self.input_damage)
                    return
                await self._drain(feeder, workers)
                everything.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await everything

    async def _feed(self, items: Iterator[Request | Invalid]) -> None:
        """Queue every row that still needs sending. A stream found damaged part-way (stdin, s3://) is
        an end of input that stops the run (exit 2) once the rows read before the damage are done."""

        def take() -> tuple[list[Request | Invalid], InferbatchError | None]:
            batch: list[Request | Invalid] = []
            try:
                batch.extend(itertools.islice(items, FEED_BATCH))
            except InferbatchError as exc:
                return batch, exc
            return batch, None

        while True:
            if self.blocking_input:
                batch, damage = await asyncio.to_thread(take)  # stdin and S3 reads can block
            else:
                # A local file's batch takes well under a millisecond to read and shape: doing it on
                # the loop costs less than a thread hand-off and the GIL contention that follows.
                batch, damage = take()
                await asyncio.sleep(0)
            for item in batch:
                if not self.checkpoint.needs_sending(item.slot, self.cfg.retry_errors):
                    self.progress.skipped += 1
                    continue
                self.fed += 1
                if isinstance(item, Invalid):
                    self._record(Result.invalid(item.id, item.index, item.reason, item.keep), item)
                elif (held := self.checkpoint.judge_pending.get(item.slot)) is not None:
                    await self.queue.put(_Rejudge(item, held))  # answered before: only the judge is asked
                else:
                    await self.queue.put(item)
            if damage is not None:
                self.input_damage = damage
                break
            if not batch:
                self.fed_all = True
                break
        for _ in range(self.workers):
            await self.queue.put(None)

    async def _worker(self, ctx: dispatch.Context) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self.stopping.is_set():  # a worker that comes back from a stopped row takes no other
            request = await self.queue.get()
            if request is None or self.stopping.is_set():
                return
            self.busy.add(me)
            try:
                if isinstance(request, _Rejudge):
                    await self._judge(request.request, request.record, ctx)
                else:
                    await self._row(request, ctx)
            finally:
                self.busy.discard(me)

    async def _row(self, request: Request, ctx: dispatch.Context) -> None:
        """One row: send it, record what came back, then keep a fresh answer in the cache (still busy: a
        drain waits for the cache write too)."""
        try:
            result = await dispatch.send(request, ctx)
        except Stopped:
            return  # cut off by a stop: no result, a rerun sends it
        except dispatch.StopAfter as stopped:
            self.request_stop(stopped.stop)  # first: the stop is the run's reason, whatever the row says
            self._record(stopped.result, request)  # its paid answers are kept (and counted); a rerun asks again
            return
        except InferbatchError as stop:
            self.request_stop(stop)
            return
        if self.judge is None or result.status is not Status.OK:
            self._record(result, request)  # first: a paid answer is kept whatever the cache does
            if self.cache is not None:
                await dispatch.remember(request, result, self.cache)
            return
        record = self.recorder.hold(result, request)  # kept before the judge is asked: a crash re-sends no answer
        if self.cache is not None:
            await dispatch.remember(request, result, self.cache)
        await self._judge(request, record, ctx)

    async def _judge(self, request: Request, record: dict[str, Any], ctx: dispatch.Context) -> None:
        """Ask the judge for every vote the row's answer still needs (SPEC §8.44), all at once; each vote is
        checkpointed as it arrives. A stop leaves the row pending: the next run asks for the votes missing."""
        assert self.judge is not None
        judge = self.judge
        votes: dict[str, Any] = dict(record.get(VOTES_KEY) or {})
        settled = False

        def keep() -> None:
            """Checkpoint the votes in: the last one makes the row final at once (one line, not two)."""
            nonlocal settled
            if judge.missing(votes):
                self.recorder.votes(record, request, votes)
            elif not settled:
                settled = True
                self._stop_for(self.recorder.judged(record, request, votes))

        async def one(rubric: int, vote: int) -> None:
            key = judging.vote_key(rubric, vote)
            # The answer as the judge reads it: its text, else its tool calls (JSON text).
            asked = judge.request(request, record.get("content") or record.get("tool_calls"), rubric, vote)
            if isinstance(asked, str):
                votes[key] = judging.problem_vote(asked, judge.model_for(rubric, request))
                keep()
                return
            try:
                result = await dispatch.send(asked, ctx)
            except dispatch.StopAfter as stopped:  # a stop between re-asks: its paid answer is kept, asked again
                result = stopped.result
                self.request_stop(stopped.stop)
            votes[key] = judging.vote_of(result, asked.body.get("model"), votes.get(key))
            keep()
            if self.cache is not None and not result.resend:
                await dispatch.remember(asked, result, self.cache)

        outcomes = await asyncio.gather(*(one(r, k) for r, k in judge.missing(votes)), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, InferbatchError):
                self.request_stop(outcome)
            elif isinstance(outcome, BaseException) and not isinstance(outcome, Stopped):
                raise outcome  # a bug
        if not judge.missing(votes) and not settled:  # nothing was left to ask (a line from an older run)
            keep()

    def _record(self, result: Result, item: Request | Invalid) -> None:
        self._stop_for(self.recorder.record(result, item))

    def _stop_for(self, stop: InferbatchError | None) -> None:
        if stop is not None:
            self.request_stop(stop)

    # ---- stopping --------------------------------------------------------
    def request_stop(self, reason: InferbatchError) -> None:
        if self.stop is None:
            self.stop = reason
            log.warning("stopping: %s", reason)
        self.limiter.close()
        self.stopping.set()
        self.budget.wake()

    async def _drain(self, feeder: asyncio.Task[Any], workers: list[asyncio.Task[Any]]) -> None:
        feeder.cancel()
        self.limiter.close()
        for task in workers:
            if task not in self.busy:
                task.cancel()
        busy = [t for t in workers if not t.done() and t in self.busy]
        if busy:
            timeout = self.cfg.drain_timeout
            if isinstance(self.stop, DeadlineReached):
                timeout = min(timeout, max(0.5, self._deadline_left() - self._finalize_estimate() - 1.0))
            log.info("draining in_flight=%d timeout_s=%.1f", self.limiter.in_flight, timeout)
            _, pending = await asyncio.wait(busy, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("drain timeout: %d request(s) cut off; a rerun sends them", len(pending))

    def _checkpoint_failed(self, exc: OSError) -> None:
        """A finished row could not be saved (a full disk): stop paying for rows that cannot be kept."""
        stop = CheckpointError(
            f"cannot write the checkpoint {self.checkpoint.dir} ({exc.strerror or exc}): stopped sending; "
            "make room and rerun the same command to continue"
        )
        with contextlib.suppress(RuntimeError):  # the loop is gone: the run is over anyway
            self.loop.call_soon_threadsafe(self.request_stop, stop)

    def _on_signal(self, sig: signal.Signals, code: int) -> None:
        self._signals += 1
        if self._signals > 1 and sig == signal.SIGINT:
            # A second Ctrl-C: leave now. Every finished row is already in the checkpoint.
            with contextlib.suppress(OSError):
                self.checkpoint.flush()
                self.checkpoint.sync()
            self.on_second_interrupt()
            return
        self.request_stop(Interrupted(sig.name, code))

    @contextlib.asynccontextmanager
    async def _ticker(self) -> AsyncIterator[None]:
        async def tick() -> None:
            while True:
                await asyncio.sleep(min(TICK_S, self.cfg.progress_interval))
                self.checkpoint.flush()
                await asyncio.to_thread(self.checkpoint.sync)
                self.progress.tick()
                self._check_deadline()

        task = asyncio.create_task(tick())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.checkpoint.flush()
            self.checkpoint.sync()
            self.progress.tick(force=True)
            self.progress.finish()

    # ---- the deadline ----------------------------------------------------
    def _deadline_left(self) -> float:
        assert self.cfg.deadline is not None
        return self.cfg.deadline - (time.monotonic() - self.deadline_origin)

    def _finalize_estimate(self) -> float:
        """Seconds to write the output: about 5 µs a row, plus a second for the rest."""
        return 1.0 + 5e-6 * (self.checkpoint.resumed.finished + self.recorder.finished)

    def _check_deadline(self) -> None:
        if self.cfg.deadline is None or self.stop is not None:
            return
        # Stop admitting early enough for in-flight requests (1.5 x the slowest so far) and the output
        # to finish in time; checked once a second, hence the extra second.
        in_flight_s = min(self.cfg.timeout, self.recorder.max_latency_ms / 1000 * 1.5)
        margin = max(3.0, in_flight_s + self._finalize_estimate() + 1.0)
        if self._deadline_left() <= margin:
            self.request_stop(
                DeadlineReached(
                    f"--deadline {self.cfg.deadline:g}s: stopped admitting with {self._deadline_left():.1f} s left; "
                    "finished rows are saved, rerun to continue"
                )
            )
