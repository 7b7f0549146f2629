"""Where every final result goes: its evaluation, the checkpoint, the progress display.

``Recorder.record(result, item)`` is the one place a row becomes final. It returns the stop that
result calls for (``--abort-after`` consecutive failed rows), or None; it never stops the run itself.
"""

from __future__ import annotations

import dataclasses

from inferbatch.checkpoint import Checkpoint
from inferbatch.config import RunConfig
from inferbatch.errors import InferbatchError, TooManyFailures
from inferbatch.evaluation import check
from inferbatch.progress import Progress
from inferbatch.results import Evaluation, Result, Status
from inferbatch.shaping import Invalid, Request


class Recorder:
    """Records final results; counts what the run needs to know of them (finished rows, the slowest, failures)."""

    def __init__(self, cfg: RunConfig, checkpoint: Checkpoint, progress: Progress) -> None:
        self.checkpoint = checkpoint
        self.progress = progress
        self.assertions = cfg.assertions if cfg.evaluation else None
        self.keep_body = cfg.output_format == "openai-batch"
        self.parsed_column = cfg.structured
        self.abort_after = cfg.abort_after
        self.finished = 0
        self.consecutive_errors = 0
        self.max_latency_ms = 0.0

    def record(self, result: Result, item: Request | Invalid) -> InferbatchError | None:
        """Make ``result`` final: evaluate it (evaluation runs), checkpoint it, show it.

        Returns ``TooManyFailures`` once ``--abort-after`` rows in a row ended ``error`` (``invalid`` rows
        neither count nor reset the count: they were never sent)."""
        if self.assertions is not None:
            failures = check(self.assertions, result.record(parsed_column=self.parsed_column), item.expect)
            evaluation = Evaluation(item.variant, item.sample, not failures, tuple(failures), result.cached)
            result = dataclasses.replace(result, evaluation=evaluation)
        status = result.status
        line = result.line(keep_body=self.keep_body, parsed_column=self.parsed_column)
        if result.structured:
            self.checkpoint.has_parsed = True
        self.checkpoint.record(item.slot, line, status)
        self.finished += 1
        latency = result.latency_ms
        if latency is not None and latency > self.max_latency_ms:
            self.max_latency_ms = latency
        self.progress.row(status, result.total_tokens or 0, latency_ms=latency)
        if status is Status.OK:
            self.consecutive_errors = 0
        elif status is Status.ERROR:
            self.consecutive_errors += 1
            if self.abort_after and self.consecutive_errors >= self.abort_after:
                return TooManyFailures(
                    f"{self.consecutive_errors} rows in a row failed (last: {result.error}); "
                    "fix the cause and rerun (--retry-errors re-sends them), or raise --abort-after"
                )
        return None
