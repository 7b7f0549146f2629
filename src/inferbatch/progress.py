"""What people see: progress while a run goes, the summary after it, and ``report`` from a file.

``Summary`` is computed from result records (so ``inferbatch report`` gives the
same figures from the output file as the run printed), plus what only the run
knows (retries, 429s, time paused, wall time). Latency percentiles come from
a fixed log-spaced histogram: constant memory, within 1 % of the exact value.

On a terminal, progress is a bar redrawn in place on stderr; otherwise (Heroku
logs, CI) one logfmt line every ``--progress-interval`` seconds, followed by a
``metrics`` line in Heroku's log-based metrics convention, which log-drain
metrics add-ons chart without any code of ours::

    progress done=1200 total=5000 ok=1190 error=10 invalid=0 rps=35.2 tpm=91000 eta_s=108
    metrics sample#inferbatch.rps=36.1 sample#inferbatch.tokens_per_min=93000 sample#inferbatch.rows_done=1200
        sample#inferbatch.rows_left=3800 count#inferbatch.rows_ok=361 count#inferbatch.rows_error=0
        count#inferbatch.rows_invalid=0 measure#inferbatch.latency_p90=812.4ms

``sample#`` is a gauge (the latest value), ``count#`` the rows finished since the
previous line (summed by the add-on), ``measure#`` the 90th-percentile latency of
the rows finished since the previous line. No prompt or completion text ever goes
to a log line.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from inferbatch.bits import Bits
from inferbatch.pricing import Pricing
from inferbatch.results import JUDGE, JUDGE_PENDING, Status, error_type, judge_entries, row_usage, whole_count

_BUCKET_BASE = 1.01
_BUCKET_MIN_MS = 0.01


class LatencyHistogram:
    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        bucket = int(math.log(max(ms, _BUCKET_MIN_MS) / _BUCKET_MIN_MS, _BUCKET_BASE))
        self.counts[bucket] += 1
        self.n += 1
        if ms > self.max:
            self.max = ms

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        target = q * self.n
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= target:
                return float(min(self.max, _BUCKET_MIN_MS * _BUCKET_BASE ** (bucket + 0.5)))
        return self.max


@dataclass
class JudgeBill:
    """What the LLM judge did and cost (SPEC §8.44), kept apart from the answers' figures."""

    verdicts: int = 0  # rubric verdicts given, errors included (not the ones a stop left pending)
    passed: int = 0
    errors: int = 0
    cached: int = 0  # verdicts entirely from the response cache
    pending: int = 0  # verdicts a stop left for the next run to ask
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = False
    agreement_sum: float = 0.0
    agreement_n: int = 0

    def add(self, entry: dict[str, Any], pricing: Pricing, default_model: str | None) -> None:
        prompt, completion = whole_count(entry.get("prompt_tokens")), whole_count(entry.get("completion_tokens"))
        cached_tokens = whole_count(entry.get("cached_tokens"))
        self.requests += whole_count(entry.get("requests"))
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached_tokens
        if prompt or completion:
            cost = pricing.cost(entry.get("model") or default_model, prompt, completion, cached_tokens)
            if cost is not None:
                self.cost_usd += cost
                self.cost_known = True
        if entry.get("pending"):
            self.pending += 1
            return
        self.verdicts += 1
        self.passed += entry.get("holds") is True
        self.errors += entry.get("error") is not None
        self.cached += entry.get("cached") is True
        agreement = entry.get("agreement")
        if isinstance(agreement, (int, float)) and not isinstance(agreement, bool):
            self.agreement_sum += agreement
            self.agreement_n += 1

    def as_dict(self) -> dict[str, Any]:
        from inferbatch.evaluation import wilson

        judged = self.verdicts - self.errors  # an error is no verdict on the answer: not in the pass rate
        low, high = wilson(self.passed, judged)
        return {
            "verdicts": self.verdicts,
            "passed": self.passed,
            "errors": self.errors,
            "pending": self.pending,
            "pass_rate": round(self.passed / judged, 4) if judged else None,
            "wilson_low": round(low, 4),
            "wilson_high": round(high, 4),
            "cached": self.cached,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cost_usd": round(self.cost_usd, 4) if self.cost_known else None,
            "agreement": round(self.agreement_sum / self.agreement_n, 4) if self.agreement_n else None,
        }


@dataclass
class VariantStats:
    rows: int = 0
    passed: int = 0
    failed_types: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: int = 0
    pending: int = 0  # rows whose judge verdict a stop left for the next run: out of the pass rate
    judge: JudgeBill | None = None

    def as_dict(self) -> dict[str, Any]:
        from inferbatch.evaluation import wilson

        low, high = wilson(self.passed, self.rows)
        p50, p90 = self.latency.quantile(0.5), self.latency.quantile(0.9)
        return {
            "rows": self.rows,
            "passed": self.passed,
            "pass_rate": round(self.passed / self.rows, 4) if self.rows else None,
            "wilson_low": round(low, 4),
            "wilson_high": round(high, 4),
            "assertion_pass_rates": {t: round(1 - n / self.rows, 4) for t, n in sorted(self.failed_types.items())},
            "latency_ms": {
                "p50": round(p50, 1) if p50 is not None else None,
                "p90": round(p90, 1) if p90 is not None else None,
            },
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 4),
            "cached": self.cached,
            **({"pending": self.pending} if self.pending else {}),
            **({"judge": self.judge.as_dict()} if self.judge is not None else {}),
        }


@dataclass
class Summary:
    rows: int = 0
    ok: int = 0
    error: int = 0
    invalid: int = 0
    status_codes: Counter[str] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    soft_failures: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    paused_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    structured_rows: int = 0  # rows that asked for a structured answer (SPEC §8.42) ...
    structured_matched: int = 0  # ... and those whose answer matched (`parsed` set)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    wall_s: float = 0.0
    sent_this_run: int = 0
    unfinished: int = 0
    in_doubt_resumed: int = 0
    effective_concurrency: int | None = None
    tokens_this_run: int = 0
    stop_reason: str | None = None
    pricing: Pricing = field(default_factory=Pricing)
    default_model: str | None = None
    cost_usd: float = 0.0
    cost_known: bool = False
    cached: int = 0
    cache_stores: int = 0
    variants: dict[str, VariantStats] = field(default_factory=dict)
    judge: JudgeBill | None = None  # set once a row has a ``judge`` column (SPEC §8.44)
    judge_pending_rows: int = 0  # answered rows whose verdicts a stop left pending: unfinished
    disagreements: int = 0
    disagreeing_ids: list[str] = field(default_factory=list)
    _first_variant: str | None = None
    _first_seen: dict[int, Bits] = field(default_factory=dict)
    _first_passed: dict[int, Bits] = field(default_factory=dict)

    def add(self, record: dict[str, Any]) -> None:
        """Count one result record (from the run or from an output file)."""
        self.rows += 1
        status = record.get("status")
        if status == Status.OK:
            self.ok += 1
        elif status == Status.ERROR:
            self.error += 1
        else:
            self.invalid += 1
        if status != Status.INVALID:
            code = record.get("status_code")
            self.status_codes["none" if code is None else str(code)] += 1
            attempts = record.get("attempts") or 0
            self.attempts += attempts
            self.retries += max(0, attempts - 1)
        if status == Status.ERROR:
            self.error_types[error_type(record)] += 1
        reason = record.get("finish_reason")
        if reason:
            self.finish_reasons[reason] += 1
        if status == Status.OK and (reason == "length" or not (record.get("content") or record.get("tool_calls"))):
            self.soft_failures += 1  # answered, but cut off or empty
        if "parsed" in record and status != Status.INVALID:
            self.structured_rows += 1
            self.structured_matched += record["parsed"] is not None
        # A row's columns count every answer it was billed for (re-asked ones too, SPEC §8.43).
        usage = row_usage(record)
        prompt, completion = usage.prompt, usage.completion
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += usage.cached
        self.reasoning_tokens += usage.reasoning
        if prompt or completion:
            cost = self.pricing.cost(record.get("model") or self.default_model, prompt, completion, usage.cached)
            if cost is None and record.get("model") != self.default_model:
                cost = self.pricing.cost(self.default_model, prompt, completion, usage.cached)
            if cost is not None:
                self.cost_usd += cost
                self.cost_known = True
        latency = record.get("latency_ms")
        if latency is not None:
            self.latency.add(latency)
        if record.get("cached"):
            self.cached += 1
        if "passed" in record:
            self._add_evaluation(record, prompt, completion, latency)
        if JUDGE in record:
            self._add_judge(record)

    def _add_judge(self, record: dict[str, Any]) -> None:
        """The judge's bill and verdicts, apart from the answers' (SPEC §8.44)."""
        if self.judge is None:
            self.judge = JudgeBill()
        stats = self.variants.get(record.get("variant") or "default")
        if stats is not None and stats.judge is None:
            stats.judge = JudgeBill()
        for entry in judge_entries(record):
            self.judge.add(entry, self.pricing, self.default_model)
            if stats is not None and stats.judge is not None:
                stats.judge.add(entry, self.pricing, self.default_model)

    def _add_evaluation(self, record: dict[str, Any], prompt: int, completion: int, latency: float | None) -> None:
        name = record.get("variant") or "default"
        stats = self.variants.setdefault(name, VariantStats())
        if latency is not None:
            stats.latency.add(latency)
        stats.prompt_tokens += prompt
        stats.completion_tokens += completion
        stats.cost_usd += self.pricing.cost(record.get("model") or self.default_model, prompt, completion) or 0.0
        stats.cached += bool(record.get("cached"))
        failures = record.get("failures") or "[]"
        kinds = orjson.loads(failures) if isinstance(failures, str) else failures
        if JUDGE_PENDING in kinds:  # answered, but its verdict is still to come: not a pass, not a fail
            stats.pending += 1
            self.judge_pending_rows += 1
            return
        stats.rows += 1
        passed = bool(record.get("passed"))
        stats.passed += passed
        for kind in kinds:
            stats.failed_types[kind] += 1
        # Rows come variant by variant: remember the first variant's verdicts (a bit a row and sample),
        # and compare every other variant's with them.
        index, sample = int(record.get("index") or 0), int(record.get("sample") or 0)
        if self._first_variant is None:
            self._first_variant, self._first_seen, self._first_passed = name, {}, {}
        if name == self._first_variant:
            self._first_seen.setdefault(sample, Bits()).set(index)
            if passed:
                self._first_passed.setdefault(sample, Bits()).set(index)
        elif index in self._first_seen.get(sample, ()) and (index in self._first_passed.get(sample, ())) != passed:
            self.disagreements += 1
            if len(self.disagreeing_ids) < 20 and str(record.get("id")) not in self.disagreeing_ids:
                self.disagreeing_ids.append(str(record.get("id")))

    def variants_below(self, rate: float) -> list[str]:
        """Variants whose pass rate is under ``rate`` (for --fail-under)."""
        return [name for name, v in self.variants.items() if v.rows and v.passed / v.rows < rate]

    def as_dict(self) -> dict[str, Any]:
        def q(x: float) -> float | None:
            v = self.latency.quantile(x)
            return round(v, 1) if v is not None else None

        data: dict[str, Any] = {
            "rows": self.rows,
            "ok": self.ok,
            "error": self.error,
            "invalid": self.invalid,
            "unfinished": self.unfinished,
            "status_codes": dict(sorted(self.status_codes.items())),
            "error_types": dict(self.error_types.most_common()),
            "finish_reasons": dict(self.finish_reasons.most_common()),
            "soft_failures": self.soft_failures,
            "attempts": self.attempts,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "paused_s": round(self.paused_s, 1),
            "latency_ms": {
                "p50": q(0.5),
                "p90": q(0.9),
                "p99": q(0.99),
                "max": round(self.latency.max, 1) if self.latency.n else None,
            },
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": round(self.cost_usd, 4) if self.cost_known else None,
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(self.sent_this_run / self.wall_s, 2) if self.wall_s > 0 else None,
            "sent_this_run": self.sent_this_run,
            "in_doubt_resumed": self.in_doubt_resumed,
        }
        if self.effective_concurrency is not None:
            data["effective_concurrency"] = self.effective_concurrency
        if self.structured_rows:
            data["structured"] = {
                "rows": self.structured_rows,
                "matched": self.structured_matched,
                "schema_mismatch": self.error_types.get("schema_mismatch", 0),
            }
        if self.cached or self.cache_stores:
            data["cached"] = self.cached
            data["cache_stores"] = self.cache_stores
        if self.judge is not None:
            data["judge"] = {
                k: v for k, v in self.judge.as_dict().items() if k not in ("pass_rate", "wilson_low", "wilson_high")
            }
            judge_cost = data["judge"]["cost_usd"]
            if data["cost_usd"] is not None and (judge_cost is not None or not self.judge.prompt_tokens):
                data["total_cost_usd"] = round(self.cost_usd + self.judge.cost_usd, 4)
        if self.variants:
            data["variants"] = {name: v.as_dict() for name, v in self.variants.items()}
            data["disagreements"] = self.disagreements
            data["disagreeing_ids"] = self.disagreeing_ids
        if self.wall_s > 0:
            data["achieved_rpm"] = round(self.sent_this_run / self.wall_s * 60, 1)
            data["achieved_tpm"] = round(self.tokens_this_run / self.wall_s * 60)
        if self.stop_reason:
            data["stop_reason"] = self.stop_reason
        return data

    def lines(self, *, run_figures: bool = True) -> list[str]:
        """The summary as logfmt lines (one event a line, Logplex-friendly).

        ``run_figures=False`` leaves out what only a live run knows (wall time, 429s, pauses),
        for ``report`` on a file."""
        d = self.as_dict()
        lat = d["latency_ms"]
        rows = dict(
            rows=d["rows"], ok=d["ok"], error=d["error"], invalid=d["invalid"], soft_failures=d["soft_failures"]
        )
        requests = dict(attempts=d["attempts"], retries=d["retries"])
        if run_figures:
            rows.update(unfinished=d["unfinished"], wall_s=d["wall_s"], rps=d["requests_per_s"])
            requests.update(
                rate_limited=d["rate_limited"],
                paused_s=d["paused_s"],
                sent_this_run=d["sent_this_run"],
                achieved_rpm=d.get("achieved_rpm"),
                achieved_tpm=d.get("achieved_tpm"),
                concurrency_end=d.get("effective_concurrency"),
            )
        out = [
            logfmt("summary", **rows),
            logfmt("summary_requests", **requests),
            logfmt("summary_latency_ms", p50=lat["p50"], p90=lat["p90"], p99=lat["p99"], max=lat["max"]),
            logfmt(
                "summary_tokens",
                prompt=d["prompt_tokens"],
                completion=d["completion_tokens"],
                cached=d["cached_tokens"],
                reasoning=d["reasoning_tokens"],
                cost_usd=d["cost_usd"] if d["cost_usd"] is not None else "unknown",
            ),
        ]
        if d["status_codes"]:
            codes = {("no_response" if k == "none" else f"http_{k}"): v for k, v in d["status_codes"].items()}
            out.append(logfmt("summary_status_codes", **codes))
        if d["error_types"]:
            out.append(logfmt("summary_errors", **dict(list(d["error_types"].items())[:20])))
        if d["finish_reasons"]:
            out.append(logfmt("summary_finish_reasons", **d["finish_reasons"]))
        if run_figures and d["in_doubt_resumed"]:
            out.append(logfmt("summary_resume", in_doubt=d["in_doubt_resumed"]))
        if "cached" in d:
            out.append(logfmt("summary_cache", hits=d["cached"], stored=d.get("cache_stores", 0)))
        if "structured" in d:
            out.append(logfmt("summary_schema", **d["structured"]))
        if "judge" in d:
            j = d["judge"]
            out.append(
                logfmt(
                    "summary_judge",
                    requests=j["requests"],
                    prompt=j["prompt_tokens"],
                    completion=j["completion_tokens"],
                    cached_tokens=j["cached_tokens"],
                    cost_usd=j["cost_usd"] if j["cost_usd"] is not None else "unknown",
                    verdicts=j["verdicts"],
                    passed=j["passed"],
                    errors=j["errors"],
                    pending=j["pending"],
                    cached=j["cached"],
                    agreement=j["agreement"],
                )
            )
        for name, v in d.get("variants", {}).items():
            out.append(
                logfmt(
                    "summary_variant",
                    name=name,
                    rows=v["rows"],
                    passed=v["passed"],
                    pass_rate=v["pass_rate"],
                    wilson_low=v["wilson_low"],
                    wilson_high=v["wilson_high"],
                    p50_ms=v["latency_ms"]["p50"],
                    tokens=v["prompt_tokens"] + v["completion_tokens"],
                )
            )
        if d.get("variants"):
            out.append(
                logfmt("summary_disagreements", rows=d["disagreements"], ids=",".join(d["disagreeing_ids"][:10]))
            )
        return out

    def comparison_table(self) -> list[str]:
        """Variants side by side, for people: pass rate with its 95 % interval, latency, tokens, cost."""
        if not self.variants:
            return []
        width = max(8, *(len(n) for n in self.variants))
        head = (
            f"{'variant':<{width}}  {'rows':>6}  {'passed':>6}  {'pass rate':>9}  {'95% interval':>15}  "
            f"{'p50 ms':>8}  {'tokens':>9}  {'cost $':>8}"
        )
        judged = self.judge is not None
        if judged:  # the judge apart (SPEC §8.44): its pass rate, and its own bill
            head += f"  {'judge pass':>10}  {'judge tokens':>12}  {'judge $':>8}"
        lines = [head, "-" * len(head)]
        for name, stats in self.variants.items():
            v = stats.as_dict()
            rate = f"{v['pass_rate'] * 100:.1f}%" if v["pass_rate"] is not None else "-"
            interval = f"{v['wilson_low'] * 100:.1f}–{v['wilson_high'] * 100:.1f}%"
            p50 = v["latency_ms"]["p50"]
            line = (
                f"{name:<{width}}  {v['rows']:>6}  {v['passed']:>6}  {rate:>9}  {interval:>15}  "
                f"{(f'{p50:.1f}' if p50 is not None else '-'):>8}  {v['prompt_tokens'] + v['completion_tokens']:>9}  "
                f"{v['cost_usd']:>8.4f}"
            )
            if judged:
                j = v.get("judge") or {}
                judge_rate = f"{j['pass_rate'] * 100:.1f}%" if j.get("pass_rate") is not None else "-"
                judge_cost = f"{j['cost_usd']:.4f}" if j.get("cost_usd") is not None else "-"
                judge_tokens = j.get("prompt_tokens", 0) + j.get("completion_tokens", 0)
                line += f"  {judge_rate:>10}  {judge_tokens:>12}  {judge_cost:>8}"
            lines.append(line)
        if len(self.variants) > 1:
            shown = ", ".join(self.disagreeing_ids[:5])
            lines.append(f"variants disagree on {self.disagreements} row(s){': ' + shown if shown else ''}")
        return lines


def logfmt(event: str, **fields: Any) -> str:
    parts = [event]
    for key, value in fields.items():
        if value is None:
            value = ""
        elif isinstance(value, float):
            value = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
        text = str(value)
        if not text or any(c in text for c in ' "=\n'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
        parts.append(f"{key}={text}")
    line = " ".join(parts)
    return line[:9000]


METRIC = "inferbatch"  # the prefix of every metric name: inferbatch.rps, inferbatch.rows_ok, ...


@dataclass
class _Interval:
    """What finished between two metrics lines."""

    rows: int = 0
    tokens: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, status: str, tokens: int, latency_ms: float | None) -> None:
        self.rows += 1
        self.tokens += tokens
        self.statuses[status if status in (Status.OK, Status.ERROR) else Status.INVALID] += 1
        if latency_ms is not None:
            self.latency.add(latency_ms)


class Progress:
    """Live progress on stderr: a bar on a terminal, else a logfmt line (and a metrics line) every ``interval``
    seconds."""

    def __init__(
        self, *, total: int | None, interval: float = 10.0, quiet: bool = False, stream: IO[str] | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.interval = interval
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.done = self.ok = self.error = self.invalid = self.skipped = 0
        self.tokens = 0
        self._last_emit = self.started
        self._drawn = False
        self._since = _Interval()  # the rows finished since the last metrics line

    def row(self, status: str, tokens: int = 0, latency_ms: float | None = None) -> None:
        self.done += 1
        self.tokens += tokens
        if status == Status.OK:
            self.ok += 1
        elif status == Status.ERROR:
            self.error += 1
        else:
            self.invalid += 1
        self._since.add(status, tokens, latency_ms)

    def fields(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rps = self.done / elapsed
        fields: dict[str, Any] = {"done": self.done + self.skipped}
        if self.total is not None:
            fields["total"] = self.total
        fields.update(
            ok=self.ok, error=self.error, invalid=self.invalid, rps=round(rps, 1), tpm=int(self.tokens / elapsed * 60)
        )
        if self.total is not None and rps > 0:
            fields["eta_s"] = int(max(0, self.total - self.done - self.skipped) / rps)
        return fields

    def tick(self, force: bool = False) -> None:
        """Called about once a second by the runner."""
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            self._draw()
        elif force or now - self._last_emit >= self.interval:
            metrics = self.metrics(now - self._last_emit)
            self._last_emit = now
            print(logfmt("progress", **self.fields()), file=self.stream, flush=True)
            print(logfmt("metrics", **metrics), file=self.stream, flush=True)

    def metrics(self, seconds: float) -> dict[str, Any]:
        """Heroku log-based metrics for the last ``seconds``, and starts the next interval."""
        since, self._since = self._since, _Interval()
        seconds = max(seconds, 1e-9)
        figures: dict[str, Any] = {
            f"{METRIC}.rps": round(since.rows / seconds, 2),
            f"{METRIC}.tokens_per_min": int(since.tokens / seconds * 60),
            f"{METRIC}.rows_done": self.done + self.skipped,
        }
        if self.total is not None:
            figures[f"{METRIC}.rows_left"] = max(0, self.total - self.done - self.skipped)
        figures = {f"sample#{key}": value for key, value in figures.items()}
        for status in Status:
            figures[f"count#{METRIC}.rows_{status}"] = since.statuses.get(status, 0)
        p90 = since.latency.quantile(0.9)
        if p90 is not None:
            figures[f"measure#{METRIC}.latency_p90"] = f"{p90:.1f}ms"
        return figures

    def _draw(self) -> None:
        f = self.fields()
        done = f["done"]
        if self.total:
            width = 24
            filled = int(width * min(1.0, done / self.total))
            bar = "█" * filled + "░" * (width - filled)
            head = f"{bar} {done}/{self.total}"
        else:
            head = f"{done} rows"
        eta = f" eta {f['eta_s']}s" if "eta_s" in f else ""
        line = (
            f"\r{head} ok={f['ok']} error={f['error']} invalid={f['invalid']} {f['rps']} req/s "
            f"{f['tpm'] // 60} tok/s{eta}"
        )
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self.tty and self._drawn and not self.quiet:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
