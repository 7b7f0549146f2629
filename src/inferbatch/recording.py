"""Where every final result goes: its evaluation, the checkpoint, the progress display.

``Recorder.record(result, item)`` is the one place a row becomes final; a judged row (SPEC §8.44) becomes
final through ``hold`` (its answer), ``votes`` (as the judge answers) and ``judged`` (its verdicts). It returns the stop that
result calls for (``--abort-after`` consecutive failed rows), or None; it never stops the run itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from inferbatch.checkpoint import Checkpoint
from inferbatch.config import RunConfig
from inferbatch.errors import InferbatchError, TooManyFailures
from inferbatch.evaluation import check
from inferbatch.judging import Judge
from inferbatch.progress import Progress
from inferbatch.results import JUDGE, JUDGE_PENDING_KEY, VOTES_KEY, Evaluation, Result, Status, dumps_line
from inferbatch.shaping import Invalid, Request


class Recorder:
    """Records final results; counts what the run needs to know of them (finished rows, the slowest, failures)."""

    def __init__(self, cfg: RunConfig, checkpoint: Checkpoint, progress: Progress, judge: Judge | None = None) -> None:
        self.checkpoint = checkpoint
        self.progress = progress
        self.assertions = cfg.assertions if cfg.evaluation else None
        self.judge = judge
        self.keep_body = cfg.output_format == "openai-batch"
        self.parsed_column = cfg.structured
        self.abort_after = cfg.abort_after
        self.finished = 0
        self.consecutive_errors = 0
        self.consecutive_judge_errors = 0
        self.max_latency_ms = 0.0

    def record(self, result: Result, item: Request | Invalid) -> InferbatchError | None:
        """Make ``result`` final: evaluate it (evaluation runs), checkpoint it, show it.

        Returns ``TooManyFailures`` once ``--abort-after`` rows in a row ended ``error`` (``invalid`` rows
        neither count nor reset the count: they were never sent)."""
        if self.assertions is not None:
            failures = check(self.assertions, result.record(parsed_column=self.parsed_column), item.expect)
            evaluation = Evaluation(
                item.variant, item.sample, not failures, tuple(failures), result.cached, judged=self.judge is not None
            )
            result = dataclasses.replace(result, evaluation=evaluation)
        line = result.line(keep_body=self.keep_body, parsed_column=self.parsed_column)
        if result.structured:
            self.checkpoint.has_parsed = True
        self.checkpoint.record(item.slot, line, result.status)
        return self._finished(result.status, result.total_tokens, result.latency_ms, result.error)

    # ---- judged rows (SPEC §8.44): the answer, then each vote, then the verdicts -----------------------
    def hold(self, result: Result, item: Request) -> dict[str, Any]:
        """Checkpoint an answer the judge is still to see (a crash after this re-sends only judge calls);
        returns its record, which ``votes`` and ``judged`` complete. Not final: nothing is counted yet."""
        assert self.judge is not None and self.assertions is not None
        evaluation = Evaluation(item.variant, item.sample, False, (), result.cached, judged=True)
        record = dataclasses.replace(result, evaluation=evaluation).record(
            keep_body=self.keep_body, parsed_column=self.parsed_column
        )
        if result.structured:
            self.checkpoint.has_parsed = True
        self.votes(record, item, {})
        return record

    def votes(self, record: dict[str, Any], item: Request, votes: dict[str, Any]) -> None:
        """Checkpoint the votes in so far: a rerun asks only for the rest."""
        self._judged_line(record, item, votes, final=False)

    def judged(self, record: dict[str, Any], item: Request, votes: dict[str, Any]) -> InferbatchError | None:
        """Every vote is in: the row's verdicts are final (see ``record`` for what it returns; besides, a judge
        that failed ``--abort-after`` rows in a row stops the run: a wrong judge_model must not cost every answer)."""
        entries = self._judged_line(record, item, votes, final=True)
        stop = self._finished(Status(record["status"]), record.get("total_tokens"), record.get("latency_ms"), None)
        failed = [e["error"] for e in entries if e.get("error") is not None]
        self.consecutive_judge_errors = self.consecutive_judge_errors + 1 if failed else 0
        if stop is None and failed and self.abort_after and self.consecutive_judge_errors >= self.abort_after:
            stop = TooManyFailures(
                f"the judge failed on {self.consecutive_judge_errors} rows in a row (last: {failed[-1]}); check "
                "judge_model and the rubric, then rerun (with --restart and --cache the answers are not paid again)"
            )
        return stop

    def _judged_line(
        self, record: dict[str, Any], item: Request, votes: dict[str, Any], *, final: bool
    ) -> list[dict[str, Any]]:
        assert self.judge is not None and self.assertions is not None
        entries, judge_failures = self.judge.verdicts(votes)
        failures = [*check(self.assertions, record, item.expect), *judge_failures]
        record["passed"] = not failures
        record["failures"] = orjson.dumps(failures).decode()
        record[JUDGE] = orjson.dumps(entries).decode()
        if final:
            record.pop(JUDGE_PENDING_KEY, None)
            record.pop(VOTES_KEY, None)
        else:
            record[JUDGE_PENDING_KEY] = True
            record[VOTES_KEY] = votes
        self.checkpoint.record(item.slot, dumps_line(record), record["status"])
        return entries

    def _finished(
        self, status: Status, tokens: int | None, latency: float | None, error: str | None
    ) -> InferbatchError | None:
        self.finished += 1
        if latency is not None and latency > self.max_latency_ms:
            self.max_latency_ms = latency
        self.progress.row(status, tokens or 0, latency_ms=latency)
        if status is Status.OK:
            self.consecutive_errors = 0
        elif status is Status.ERROR:
            self.consecutive_errors += 1
            if self.abort_after and self.consecutive_errors >= self.abort_after:
                return TooManyFailures(
                    f"{self.consecutive_errors} rows in a row failed (last: {error}); "
                    "fix the cause and rerun (--retry-errors re-sends them), or raise --abort-after"
                )
        return None
