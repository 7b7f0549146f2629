"""What people see: progress while a run goes, the summary after it, and ``report`` from a file.

``Summary`` is computed from result records (so ``inferbatch report`` gives the
same figures from the output file as the run printed), plus what only the run
knows (retries, 429s, time paused, wall time). Latency percentiles come from
a fixed log-spaced histogram: constant memory, within 1 % of the exact value.

On a terminal, progress is a bar redrawn in place on stderr; otherwise (Heroku
logs, CI) one logfmt line every ``--progress-interval`` seconds. No prompt or
completion text ever goes to a log line.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from inferbatch.pricing import Pricing

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
                return min(self.max, _BUCKET_MIN_MS * _BUCKET_BASE ** (bucket + 0.5))
        return self.max


@dataclass
class Summary:
    rows: int = 0
    ok: int = 0
    error: int = 0
    invalid: int = 0
    status_codes: Counter[str] = field(default_factory=Counter)
    error_types: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    paused_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
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

    def add(self, record: dict[str, Any]) -> None:
        """Count one result record (from the run or from an output file)."""
        self.rows += 1
        status = record.get("status")
        if status == "ok":
            self.ok += 1
        elif status == "error":
            self.error += 1
        else:
            self.invalid += 1
        if status != "invalid":
            code = record.get("status_code")
            self.status_codes["none" if code is None else str(code)] += 1
            attempts = record.get("attempts") or 0
            self.attempts += attempts
            self.retries += max(0, attempts - 1)
        if status == "error":
            error = record.get("error") or ""
            self.error_types[error.split(":", 1)[0] if ":" in error else "error"] += 1
        reason = record.get("finish_reason")
        if reason:
            self.finish_reasons[reason] += 1
        prompt, completion = record.get("prompt_tokens") or 0, record.get("completion_tokens") or 0
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if prompt or completion:
            cost = self.pricing.cost(record.get("model") or self.default_model, prompt, completion)
            if cost is None and record.get("model") != self.default_model:
                cost = self.pricing.cost(self.default_model, prompt, completion)
            if cost is not None:
                self.cost_usd += cost
                self.cost_known = True
        latency = record.get("latency_ms")
        if latency is not None:
            self.latency.add(latency)

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
            "attempts": self.attempts,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "paused_s": round(self.paused_s, 1),
            "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
                           "max": round(self.latency.max, 1) if self.latency.n else None},  # fmt: skip
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 4) if self.cost_known else None,
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(self.sent_this_run / self.wall_s, 2) if self.wall_s > 0 else None,
            "sent_this_run": self.sent_this_run,
            "in_doubt_resumed": self.in_doubt_resumed,
        }
        if self.effective_concurrency is not None:
            data["effective_concurrency"] = self.effective_concurrency
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
        rows = dict(rows=d["rows"], ok=d["ok"], error=d["error"], invalid=d["invalid"])
        requests = dict(attempts=d["attempts"], retries=d["retries"])
        if run_figures:
            rows.update(unfinished=d["unfinished"], wall_s=d["wall_s"], rps=d["requests_per_s"])
            requests.update(rate_limited=d["rate_limited"], paused_s=d["paused_s"], sent_this_run=d["sent_this_run"],
                            achieved_rpm=d.get("achieved_rpm"), achieved_tpm=d.get("achieved_tpm"),
                            concurrency_end=d.get("effective_concurrency"))  # fmt: skip
        out = [
            logfmt("summary", **rows),
            logfmt("summary_requests", **requests),
            logfmt("summary_latency_ms", p50=lat["p50"], p90=lat["p90"], p99=lat["p99"], max=lat["max"]),
            logfmt("summary_tokens", prompt=d["prompt_tokens"], completion=d["completion_tokens"],
                   cost_usd=d["cost_usd"] if d["cost_usd"] is not None else "unknown"),  # fmt: skip
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
        return out


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


class Progress:
    """Live progress on stderr: a bar on a terminal, else a logfmt line every ``interval`` seconds."""

    def __init__(self, *, total: int | None, interval: float = 10.0, quiet: bool = False,
                 stream: IO[str] | None = None) -> None:  # fmt: skip
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

    def row(self, status: str, tokens: int = 0) -> None:
        self.done += 1
        self.tokens += tokens
        if status == "ok":
            self.ok += 1
        elif status == "error":
            self.error += 1
        else:
            self.invalid += 1

    def fields(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rps = self.done / elapsed
        fields: dict[str, Any] = {"done": self.done + self.skipped}
        if self.total is not None:
            fields["total"] = self.total
        fields.update(ok=self.ok, error=self.error, invalid=self.invalid, rps=round(rps, 1),
                      tpm=int(self.tokens / elapsed * 60))  # fmt: skip
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
            self._last_emit = now
            print(logfmt("progress", **self.fields()), file=self.stream, flush=True)

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
        line = f"\r{head} ok={f['ok']} error={f['error']} invalid={f['invalid']} {f['rps']}/s{eta}"
        self.stream.write(line + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self.tty and self._drawn and not self.quiet:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
