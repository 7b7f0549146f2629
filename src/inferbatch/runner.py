"""``run_batch``: read, shape, send with bounded concurrency, record, write the output.

    rows ─shape─▶ queue (bounded) ─▶ workers ─limiter─▶ retry loop ─▶ client.send
                                                                        │
    output file ◀─ finalize (input order) ◀─ checkpoint ◀─ result ◀─────┘

Nothing is held per row beyond the bounded queue: results go to the
checkpoint as they finish and the output is rebuilt from it in input order.
A stop (signal, safety stop, deadline) closes the limiter so nothing new is
sent, lets in-flight requests finish for ``--drain-timeout`` seconds, and
still writes the output; rows it cut off have no result and a rerun sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from inferbatch import results, retry
from inferbatch.checkpoint import Checkpoint, SlotLayout, input_identity
from inferbatch.budget import Budget, Reservation
from inferbatch.cache import ResponseCache
from inferbatch.client import Client, Response
from inferbatch.config import RunConfig, check_paths, missing_model_error, run_paths
from inferbatch.evaluation import Variant, check
from inferbatch.errors import (
    AuthFailed, AuthRejected, BudgetExceeded, CheckpointError, DeadlineReached, InferbatchError, InputError,
    Interrupted, OutputError, QuotaExhausted, QuotaRejected, RequestFailed, Retryable, TooManyFailures, UsageError,
)  # fmt: skip
from inferbatch.limits import Limiter, Stopped
from inferbatch.pricing import Pricing, unpriced_error
from inferbatch.progress import Progress, Summary
from inferbatch.signals import signal_handlers
from inferbatch.shaping import Invalid, Request, Shaper, estimate_prompt_tokens, shard_of
from inferbatch.sources import Row, column_names, input_has_ids, read_rows, survey

log = logging.getLogger("inferbatch")

FEED_BATCH = 256
TICK_S = 1.0


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
    def exit_code(self) -> int:
        if self.stop is not None:
            return self.stop.exit_code
        if self.summary.error or self.summary.invalid:
            return 1
        if self.fail_under is not None and self.summary.variants_below(self.fail_under):
            return 1
        return 0


def make_shaper(cfg: RunConfig, variant: Variant | None = None) -> Shaper:
    return Shaper(
        model=(variant and variant.model) or cfg.model,
        params={**cfg.params, **((variant and variant.params) or {})},
        system=(variant and variant.system) or cfg.system,
        template=(variant and variant.template) or cfg.template,
        id_column=cfg.id_column, keep_columns=cfg.keep_columns,
        location="row" if cfg.input.lower().endswith(".parquet") else "line",
    )  # fmt: skip


def slot_layout(cfg: RunConfig) -> SlotLayout:
    return SlotLayout(tuple(v.name for v in cfg.variants) or ("",), cfg.repeat)


def work_items(cfg: RunConfig, rows: Iterator[Row]) -> Iterator[Request | Invalid]:
    """Every (row, variant, sample) to run, row by row, each with its slot in the checkpoint."""
    layout = slot_layout(cfg)
    variants: list[Variant | None] = list(cfg.variants) or [None]
    shapers = [make_shaper(cfg, v) for v in variants]
    has_ids = input_has_ids(cfg.input, cfg.id_column)  # SPEC §8.30: named by id or by position, for every row
    for shaper in shapers:
        shaper.has_ids = has_ids
    chosen = [i for i, v in enumerate(variants) if not cfg.selected_variants or (v and v.name in cfg.selected_variants)]
    columns = sorted({a.column for a in cfg.assertions if a.column})
    for row in rows:
        if cfg.limit is not None and row.index >= cfg.limit:
            return
        if cfg.shard.count > 1 and (
            shard_of(shapers[0].row_id(row.data, row.index, row.error), cfg.shard.count) != cfg.shard.index
        ):
            continue
        expect = {c: row.data.get(c) for c in columns} if columns and row.data is not None else None
        for position in chosen:
            item = shapers[position].shape(row.index, row.line, row.data, row.error)
            name = variants[position].name if variants[position] else None  # type: ignore[union-attr]
            for sample in range(cfg.repeat):
                work = dataclasses.replace(item) if cfg.repeat > 1 else item
                work.slot = layout.slot(row.index, position, sample)
                work.variant, work.sample, work.expect = name, sample, expect
                yield work


def check_columns(cfg: RunConfig) -> None:
    """Refuse, before anything is sent, input that cannot run as a whole: exit 2, not N invalid rows.

    A Parquet/CSV file whose columns can make no request or lack the --id-column, and damage that a whole
    read of a local input finds (SPEC §8.32: a cut-short .gz is found before the first request, not after).
    """
    columns = column_names(cfg.input)
    if columns is not None:
        shown = ", ".join(columns[:12]) or "none"
        if cfg.id_column and cfg.id_column not in columns:
            raise InputError(f"{cfg.input}: --id-column {cfg.id_column!r} is not a column (columns: {shown})")
        templated = cfg.template is not None or any(v.template for v in cfg.variants)
        if not templated and not {"messages", "prompt", "body"} & set(columns):
            raise InputError(
                f"{cfg.input}: no usable column: rows need `messages`, `prompt` or `body`, or give --template "
                f"(columns: {shown})"
            )
    survey(cfg.input)


def prime(cfg: RunConfig, items: Iterator[Request | Invalid]) -> Iterator[Request | Invalid]:
    """Read the first row(s) now, so an unreadable file or a missing model is exit 2 before anything is sent.

    SPEC §8.7: without a configured model, the first valid row must name one.
    """
    head: list[Request | Invalid] = []
    for item in items:
        head.append(item)
        if cfg.model or isinstance(item, Request):
            break
        if item.reason.endswith("give the row a `model`"):
            raise missing_model_error()
    return itertools.chain(head, items)


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


async def run_batch(
    cfg: RunConfig,
    *,
    progress: Progress | None = None,
    handle_signals: bool = True,
    started_at: float | None = None,
    switch: StopSwitch | None = None,
    limiter: Limiter | None = None,
) -> RunReport:
    """Run ``cfg`` to the end or to a stop; always writes the output of every row finished so far.

    ``limiter``: one shared by consecutive runs (the worker's inputs), so moving to the next input never
    resets the rate windows the server is counting (SPEC §8.38); by default the run makes its own."""
    if cfg.output is None:
        raise UsageError("no output: give -o OUTPUT or `output = ...` in the job file")
    deadline_origin = time.monotonic() if started_at is None else started_at
    check_paths(run_paths(cfg))  # library callers and the worker's per-file configs skip resolve()
    check_columns(cfg)
    items = prime(cfg, work_items(cfg, read_rows(cfg.input)))
    checkpoint = _open_checkpoint(cfg)
    try:
        if checkpoint.completion is not None:
            return await asyncio.to_thread(_already_complete, cfg, checkpoint.completion)
        if progress is None:
            progress = Progress(total=None, quiet=True)
        if cfg.simulate:
            from inferbatch.simulator import SimOptions, running

            async with running(SimOptions()) as server:
                from inferbatch.config import endpoint_url

                url = endpoint_url(server.url)
                run = _Run(cfg, url, checkpoint, progress, deadline_origin, limiter)
                await run.execute(items, handle_signals, switch)
        else:
            assert cfg.url is not None
            run = _Run(cfg, cfg.url, checkpoint, progress, deadline_origin, limiter)
            await run.execute(items, handle_signals, switch)
        return await asyncio.to_thread(_finish, cfg, run, checkpoint)
    finally:
        checkpoint.close()


def _open_checkpoint(cfg: RunConfig) -> Checkpoint:
    if cfg.input == "-":
        log.warning("input is stdin, which cannot be re-read: this run has no checkpoint and cannot be resumed")
        return Checkpoint.temporary(slot_layout(cfg))
    assert cfg.output is not None
    try:
        identity = input_identity(cfg.input)
    except OSError as exc:
        raise InputError(f"{cfg.input}: cannot read ({exc.strerror or exc})") from None
    manifest = {"input": identity, "shaping": cfg.shaping_fingerprint()}
    checkpoint: Checkpoint
    if cfg.output.startswith("s3://"):
        from inferbatch.checkpoint_s3 import S3Checkpoint

        checkpoint = S3Checkpoint.open_for_s3(cfg.output, manifest, restart=cfg.restart,
                                              interval=cfg.checkpoint_interval, layout=slot_layout(cfg))  # fmt: skip
    else:
        checkpoint = Checkpoint.open_for_run(cfg.output, manifest, restart=cfg.restart, layout=slot_layout(cfg))
    resumed = checkpoint.resumed
    if resumed.finished:
        log.info(
            "resume finished=%d errors=%d in_doubt=%d%s", resumed.finished, resumed.errors, resumed.in_doubt,
            " retry_errors=true" if cfg.retry_errors else "",
        )  # fmt: skip
    if resumed.in_doubt:
        log.warning(
            "resume: %d row(s) were sent before the last run stopped but have no result "
            "(possibly billed); they are sent again", resumed.in_doubt,
        )  # fmt: skip
    return checkpoint


def _already_complete(cfg: RunConfig, completion: dict[str, Any]) -> RunReport:
    """The job completed before: count the output as it is, touch nothing, send nothing."""
    assert cfg.output is not None
    if _output_size(cfg.output) is None:
        raise CheckpointError(
            f"{cfg.output} is gone, but its checkpoint says the job completed "
            f"({completion.get('rows')} rows, {completion.get('finished_at')}); "
            "rerun with --restart to run it again"
        )
    summary = Summary(pricing=Pricing(cfg.price_in, cfg.price_out), default_model=cfg.model)
    try:
        for record in results.read_output(cfg.output):
            summary.add(record)
    except (ValueError, OSError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{cfg.output} cannot be read ({text}), but its checkpoint says the job completed; "
            "rerun with --restart to run it again"
        ) from None
    log.info("already complete: %s (%d rows, finished %s); nothing sent; --restart runs it again",
             cfg.output, summary.rows, completion.get("finished_at"))  # fmt: skip
    return RunReport(summary, cfg.output, None, complete=True, already_complete=True, fail_under=cfg.fail_under)


def _output_size(output: str) -> int | None:
    if output.startswith("s3://"):
        from inferbatch.storage import object_size

        return object_size(output)
    try:
        return os.path.getsize(output)
    except OSError:
        return None


def _covers_whole_input(cfg: RunConfig) -> bool:
    """A pilot (--limit) or a subset of the variants leaves the rest of the job to a later run."""
    every_variant = not cfg.selected_variants or set(cfg.selected_variants) >= {v.name for v in cfg.variants}
    return cfg.limit is None and every_variant


def _finish(cfg: RunConfig, run: _Run, checkpoint: Checkpoint) -> RunReport:
    """Write the output in input order, count it, and mark the job complete if every row of it is ok."""
    assert cfg.output is not None
    summary = run.summary
    kept_types = None
    if cfg.output_format == "parquet" and cfg.keep_columns:
        kept_types = results.kept_column_types((orjson.loads(x) for x in checkpoint.lines_in_order()), cfg.keep_columns)
    writer = None
    try:
        writer = results.OutputWriter(cfg.output, cfg.output_format, kept_types, evaluation=cfg.evaluation)
        for line in checkpoint.lines_in_order():
            record = orjson.loads(line)
            summary.add(record)
            writer.write_line(line, record)
        writer.commit()
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if not isinstance(exc, OSError):
            raise
        text = " ".join(str(exc).split())[:300]
        raise OutputError(
            f"cannot write {cfg.output} ({text}); every finished row is kept in the checkpoint: "
            "fix the destination and rerun the same command to write it"
        ) from None
    summary.wall_s = time.monotonic() - run.started
    admitted, rate_limited, paused_s, tokens_used = run.figures_at_start
    summary.sent_this_run = run.limiter.admitted - admitted
    summary.rate_limited = run.limiter.rate_limited - rate_limited
    summary.paused_s = run.limiter.paused_s - paused_s
    summary.effective_concurrency = run.limiter.effective_concurrency
    summary.tokens_this_run = run.limiter.tokens_used - tokens_used
    summary.in_doubt_resumed = checkpoint.resumed.in_doubt
    complete = run.stop is None and run.fed_all and run.unfinished == 0 and checkpoint.failure is None
    total = run.progress.total
    summary.unfinished = max(0, total - summary.rows) if total is not None else run.unfinished
    if checkpoint.ephemeral:
        checkpoint.remove()
    elif complete and summary.error == 0 and summary.invalid == 0 and _covers_whole_input(cfg):
        checkpoint.complete({
            "rows": summary.rows, "output": cfg.output, "output_bytes": _output_size(cfg.output),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })  # fmt: skip
    if run.cache is not None:
        summary.cache_stores = run.cache.stores
    return RunReport(summary, cfg.output, run.stop, complete=complete, fail_under=cfg.fail_under)


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0


class _Run:
    """The state of one run between reading the input and writing the output."""

    def __init__(self, cfg: RunConfig, url: str, checkpoint: Checkpoint, progress: Progress,
                 deadline_origin: float, limiter: Limiter | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.url = url
        self.checkpoint = checkpoint
        self.progress = progress
        self.started = time.monotonic()
        self.deadline_origin = deadline_origin
        self.summary = Summary(pricing=Pricing(cfg.price_in, cfg.price_out), default_model=cfg.model)
        if limiter is None:
            limiter = Limiter(cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm, max_wait=cfg.max_wait, share=cfg.limit_share)
        limiter.reopen()
        self.limiter = limiter
        # A shared limiter's figures count every run: this run's are the differences.
        self.figures_at_start = (limiter.admitted, limiter.rate_limited, limiter.paused_s, limiter.tokens_used)
        self.pricing = Pricing(cfg.price_in, cfg.price_out)
        resumed = checkpoint.resumed
        self.budget = Budget(
            max_tokens=cfg.max_total_tokens, max_cost=cfg.max_cost, pricing=self.pricing,
            spent_tokens=resumed.prompt_tokens + resumed.completion_tokens,
            spent_cost=sum(self.pricing.cost(m, p, c) or 0.0 for m, (p, c) in resumed.usage_by_model.items()),
        )  # fmt: skip
        self.stop: InferbatchError | None = None
        self.stopping = asyncio.Event()
        self.queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=cfg.concurrency * 2)
        self.workers = cfg.concurrency * 2 + 4  # more rows than slots, so rows waiting to retry don't idle the slots
        self.busy: set[asyncio.Task[Any]] = set()
        self.fed_all = False
        self.input_damage: InferbatchError | None = None
        self.fed = 0
        self.finished_now = 0
        self.consecutive_errors = 0
        self.max_latency_ms = 0.0
        self.keep_body = cfg.output_format == "openai-batch"
        self.blocking_input = cfg.input == "-" or cfg.input.startswith("s3://")
        self.cache = ResponseCache(cfg.cache, "simulator" if cfg.simulate else url) if cfg.cache else None
        self.client: Client | None = None
        self.loop = asyncio.get_running_loop()
        self._signals = 0
        self.own_models = {cfg.model, *(v.model for v in cfg.variants)} - {None}
        checkpoint.on_failure = self._checkpoint_failed

    @property
    def unfinished(self) -> int:
        return self.fed - self.finished_now

    # ---- orchestration ---------------------------------------------------
    async def execute(self, items: Iterator[Request | Invalid], handle_signals: bool,
                      switch: StopSwitch | None = None) -> None:  # fmt: skip
        if switch is not None:
            switch.bind(self.request_stop)
        try:
            await self._execute(items, handle_signals)
        finally:
            if switch is not None:
                switch.bind(None)

    async def _execute(self, items: Iterator[Request | Invalid], handle_signals: bool) -> None:
        api_key = self.cfg.api_key.reveal() if self.cfg.api_key is not None else None
        async with Client(self.url, api_key, timeout=self.cfg.timeout, concurrency=self.cfg.concurrency,
                          max_wait=self.cfg.max_wait) as client:  # fmt: skip
            self.client = client
            async with signal_handlers(self._on_signal, handle_signals), self._ticker():
                feeder = asyncio.create_task(self._feed(items))
                workers = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
                everything = asyncio.gather(feeder, *workers)
                stop_wait = asyncio.create_task(self.stopping.wait())
                await asyncio.wait({everything, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
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

    def request_stop(self, reason: InferbatchError) -> None:
        if self.stop is None:
            self.stop = reason
            log.warning("stopping: %s", reason)
        self.limiter.close()
        self.stopping.set()
        self.budget.wake()

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
            os._exit(130)
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

    def _deadline_left(self) -> float:
        assert self.cfg.deadline is not None
        return self.cfg.deadline - (time.monotonic() - self.deadline_origin)

    def _finalize_estimate(self) -> float:
        """Seconds to write the output: about 5 µs a row, plus a second for the rest."""
        return 1.0 + 5e-6 * (self.checkpoint.resumed.finished + self.finished_now)

    def _check_deadline(self) -> None:
        if self.cfg.deadline is None or self.stop is not None:
            return
        # Stop admitting early enough for in-flight requests (1.5 x the slowest so far) and the output
        # to finish in time; checked once a second, hence the extra second.
        in_flight_s = min(self.cfg.timeout, self.max_latency_ms / 1000 * 1.5)
        margin = max(3.0, in_flight_s + self._finalize_estimate() + 1.0)
        if self._deadline_left() <= margin:
            self.request_stop(DeadlineReached(
                f"--deadline {self.cfg.deadline:g}s: stopped admitting with {self._deadline_left():.1f} s left; "
                "finished rows are saved, rerun to continue"
            ))  # fmt: skip

    # ---- reading ---------------------------------------------------------
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
                    self._record(results.invalid_record(item.id, item.index, item.reason, {}), item)
                elif not await self._from_cache(item):
                    await self.queue.put(item)
            if damage is not None:
                self.input_damage = damage
                break
            if not batch:
                self.fed_all = True
                break
        for _ in range(self.workers):
            await self.queue.put(None)

    # ---- sending ---------------------------------------------------------
    async def _worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while not self.stopping.is_set():  # a worker that comes back from a stopped row takes no other
            request = await self.queue.get()
            if request is None or self.stopping.is_set():
                return
            self.busy.add(me)
            try:
                await self._process(request)
            finally:
                self.busy.discard(me)

    async def _process(self, request: Request) -> None:
        body = orjson.dumps(request.body)
        max_tokens = request.body.get("max_tokens") or request.body.get("max_completion_tokens")
        prompt_estimate = estimate_prompt_tokens(request.body)
        attempts = 1
        response = None
        started = time.monotonic()
        try:
            try:
                response = await self._attempt(request, body, prompt_estimate, max_tokens, True)
            except Retryable as first_failure:
                # The first attempt runs outside tenacity: most rows succeed at once, and tenacity's
                # per-call machinery cost about a tenth of the client's CPU. A failure is replayed as
                # tenacity's attempt 1, so the policy (waits, Retry-After, the attempt limit) sees it.
                replay: Retryable | None = first_failure
                async for attempt in retry.make_retrying(
                    self.cfg.max_attempts, sleep=self._sleep, before_sleep=self._log_retry,
                    max_elapsed=self.cfg.max_attempts * self.cfg.timeout, started_at=started,  # SPEC §8.41
                ):  # fmt: skip
                    with attempt:
                        if replay is not None:
                            failure, replay = replay, None
                            raise failure
                        attempts += 1
                        response = await self._attempt(request, body, prompt_estimate, max_tokens, False)
        except Stopped:
            return  # cut off by a stop: no result, a rerun sends it
        except QuotaRejected as exc:
            self.request_stop(QuotaExhausted(f"quota stop: {exc.message}; finished rows are saved, rerun once it resets"))
            return
        except AuthRejected as exc:
            model = request.body.get("model")
            if exc.status == 401 or model in self.own_models:
                what = "the key was rejected (401)" if exc.status == 401 else f"the key may not use model {model!r} (403)"
                self.request_stop(AuthFailed(f"{what}: {exc.message}; check INFERENCE_KEY and the model"))
                return
            # A model only this row names: that row's error, the run goes on (SPEC §4).
            record = results.error_record(request.id, request.index, exc, attempts=attempts, keep={},
                                          keep_body=self.keep_body)  # fmt: skip
            self._record(record, request)
            return
        except RequestFailed as exc:
            record = results.error_record(request.id, request.index, exc, attempts=attempts, keep={},
                                          keep_body=self.keep_body)  # fmt: skip
            self._record(record, request)
            return
        assert response is not None
        request_id = response.request_id  # redacted by the client: a proxy may echo the key there
        record = results.ok_record(
            request.id, request.index, response.data, status_code=response.status, attempts=attempts,
            latency_ms=response.latency_ms, request_id=request_id, keep={}, keep_body=self.keep_body,
        )  # fmt: skip
        self._record(record, request)  # first: a paid answer is kept whatever the cache does
        if self.cache is not None:
            entry = {"data": response.data, "latency_ms": response.latency_ms, "request_id": request_id}
            await self._cache_io(self.cache.put, self.cache.key(body, request.sample), entry)

    async def _cache_io(self, func: Callable[..., Any], *args: Any) -> Any:
        """Local cache files are read in the loop; S3 objects in a thread, so the loop never waits on a network."""
        assert self.cache is not None
        if self.cache.remote:
            return await asyncio.to_thread(func, *args)
        return func(*args)

    async def _from_cache(self, request: Request) -> bool:
        """Answer a row from the response cache; True if it was (no request is sent)."""
        if self.cache is None:
            return False
        key = self.cache.key(orjson.dumps(request.body), request.sample)
        entry = await self._cache_io(self.cache.get, key)
        if entry is None or not isinstance(entry.get("data"), dict):
            return False
        try:
            record = results.ok_record(
                request.id, request.index, entry["data"], status_code=200, attempts=0,
                latency_ms=float(entry.get("latency_ms") or 0.0), request_id=entry.get("request_id"), keep={},
                keep_body=self.keep_body,
            )  # fmt: skip
        except (KeyError, IndexError, TypeError):
            return False  # an entry from another version: send the request instead
        self._record(record, request, cached=True)
        return True

    async def _reserve(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> Reservation | None:
        """Hold budget for one attempt, waiting for in-flight settlements; stop the run at the cap."""
        while self.budget.active:
            if self.stopping.is_set():
                raise Stopped
            reservation = self.budget.reserve(model, prompt_tokens, completion_tokens)
            if reservation is not None:
                return reservation
            if not self.budget.outstanding:
                self.request_stop(BudgetExceeded(
                    f"budget cap reached: {self.budget.describe()}; raise the cap and rerun to continue"
                ))  # fmt: skip
                raise Stopped
            await self.budget.changed()
        return None

    async def _attempt(self, request: Request, body: bytes, prompt_estimate: int, max_tokens: int | None,
                       first: bool) -> Response:  # fmt: skip
        """One attempt: reserve budget, pass the limiter, send, and settle both with what came back."""
        assert self.client is not None
        model = request.body.get("model")
        if self.cfg.max_cost is not None and not self.pricing.priced(model):
            # SPEC §8.31: a row's own model without a price would make --max-cost count it as free.
            self.request_stop(unpriced_error(model))
            raise Stopped
        estimate = self.limiter.estimate(prompt_estimate, max_tokens)
        reservation = await self._reserve(model, prompt_estimate, estimate - prompt_estimate)
        prompt_tokens = completion_tokens = 0
        try:
            ticket = await self.limiter.acquire(estimate)
            if first:
                self.checkpoint.mark_sent(request.slot)  # the in-doubt ledger: sent, outcome not yet known
            try:
                response = await self.client.send(body)
            except RequestFailed as exc:
                # A body cut off after its status line is no success, whatever the status said.
                status = None if exc.code == "connection_error" else exc.status
                self.limiter.release(ticket, status=status, headers=exc.headers, retry_after=exc.retry_after)
                raise
            usage = response.data.get("usage")
            if isinstance(usage, dict):
                prompt_tokens = _count(usage.get("prompt_tokens"))
                completion_tokens = _count(usage.get("completion_tokens"))
            self.limiter.release(ticket, status=200, headers=response.headers,
                                 total_tokens=prompt_tokens + completion_tokens if usage else None,
                                 completion_tokens=completion_tokens if usage else None)  # fmt: skip
            return response
        finally:
            if reservation is not None:
                self.budget.settle(reservation, model, prompt_tokens, completion_tokens)

    async def _sleep(self, seconds: float) -> None:
        """Wait before a retry, unless the run is stopping (then the row is cut off, not failed)."""
        seconds *= retry.wait_scale()
        if self.stopping.is_set():
            raise Stopped
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), seconds)
        if self.stopping.is_set():
            raise Stopped

    def _log_retry(self, state: Any) -> None:
        if self.cfg.verbosity > 0 and state.outcome is not None:
            exc = state.outcome.exception()
            from inferbatch.progress import logfmt

            log.info(logfmt("retry", attempt=state.attempt_number, status=getattr(exc, "status", None),
                            wait_s=round(state.upcoming_sleep, 2), error=str(exc)[:200]))  # fmt: skip

    # ---- recording -------------------------------------------------------
    def _record(self, record: dict[str, Any], item: Request | Invalid, *, cached: bool = False) -> None:
        """A row is final: add the evaluation and kept columns, then checkpoint it."""
        if self.cfg.evaluation:
            failures = check(self.cfg.assertions, record, item.expect)
            record["variant"] = item.variant
            record["sample"] = item.sample
            record["passed"] = not failures
            record["failures"] = orjson.dumps(failures).decode()
            record["cached"] = cached
        record.update(item.keep)
        status = record["status"]
        self.checkpoint.record(item.slot, results.dumps_line(record), status)
        self.finished_now += 1
        if record["latency_ms"] is not None and record["latency_ms"] > self.max_latency_ms:
            self.max_latency_ms = record["latency_ms"]
        self.progress.row(status, record.get("total_tokens") or 0, latency_ms=record["latency_ms"])
        if status == "error":
            self.consecutive_errors += 1
            if self.cfg.abort_after and self.consecutive_errors >= self.cfg.abort_after:
                self.request_stop(TooManyFailures(
                    f"{self.consecutive_errors} rows in a row failed (last: {record['error']}); "
                    "fix the cause and rerun (--retry-errors re-sends them), or raise --abort-after"
                ))  # fmt: skip
        elif status == "ok":
            self.consecutive_errors = 0
