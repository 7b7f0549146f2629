"""One self-contained HTML page about a result file: ``inferbatch report OUTPUT --html FILE``.

The page needs no network: no script, no stylesheet, font or image from
anywhere, and a Content-Security-Policy that forbids them in case a future
edit slips. Charts are inline SVG drawn here, in Python. It shows the summary
(the same figures as ``inferbatch report``, from :class:`progress.Summary`), a
latency histogram on log-spaced buckets, statuses over the input's order,
tokens per row, the slowest rows and the first failed rows with their errors.
When the rows carry a ``variant`` column (evaluation runs, SPEC §8.23) it adds
each variant's pass rate with its Wilson 95 % interval, the failed assertion
types, and the rows whose outcome differs between variants. When rows ended in
``schema_mismatch`` or carry a ``parsed`` column (structured output, SPEC §8.42)
it adds the mismatch count and the most frequent failing JSON paths, read from
the documented ``error`` text ``schema_mismatch: <path>: <message>``. When rows
carry a ``judge`` column (an ``llm-rubric`` assertion, SPEC §8.44) with at least
one verdict, it adds the judge's pass rate per variant and rubric (Wilson 95 %,
errors counted apart), its score histogram, its bill (requests, tokens, cost) and
the rows where the judge and the deterministic assertions disagree.

Everything that comes from the data (ids, errors, variant names, assertion
types, JSON paths, which hold the model's own keys, the judge's reasons and
rubric names) is untrusted and goes
through :func:`html.escape`. No prompt is ever shown, nor any completion text.

Memory stays bounded for a million rows, in one pass over the records:

- latency: counts per 1/20 of a decade (``floor(20·log10(ms))``), at most a
  few hundred keys whatever the data;
- statuses over time and tokens per row: :class:`Bins`, counts per
  ``value // width`` where the width (a power of two) doubles, merging bins
  pairwise, whenever more than 1,024 bins are in use. Results have no
  timestamps, but rows are in input order, so the row ``index`` stands for
  time; the bins are regrouped into at most 50 bars when the page is drawn;
- a heap of the 20 slowest rows and the first 50 failed rows (id and error
  truncated);
- per variant: counters; disagreements: a first-in-first-out window of the
  last 100,000 ``(id, sample)`` keys, each holding two bitmasks of the
  variants that passed and failed. Variants of one row further apart than
  that in the file are not compared, and the page says so when it happens;
- schema mismatches: a counter of failing paths with one example message each,
  at most 1,000 distinct paths (truncated), the rest counted as one
  ``(other paths)`` entry;
- judge: counters per variant and rubric (at most 100 variants and 20 rubrics a
  variant, the rest counted together), 10 score bins, and the first 50 rows where
  the judge and the assertions disagree (texts clipped), with their count.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import orjson

from inferbatch.evaluation import wilson
from inferbatch.progress import Summary
from inferbatch.results import Status, whole_count

__all__ = ["Bins", "ReportCollector", "render_html", "write_html"]

SLOWEST_ROWS = 20
FAILED_ROWS = 50
DISAGREEMENT_ROWS = 50
DISAGREEMENT_WINDOW = 100_000
MAX_VARIANTS = 100
MAX_FAILURE_TYPES = 50
LATENCY_BINS_PER_DECADE = 20
TEXT_LIMIT = 300
ID_LIMIT = 120
MIN_BAR_PX = 2.0
MAX_SCHEMA_PATHS = 1000
SCHEMA_PATH_ROWS = 10
PATH_LIMIT = 200
MAX_RUBRICS = 20
SCORE_BINS = 10
JUDGE_DISAGREEMENT_ROWS = 50
REASON_LIMIT = 200
RUBRIC_NAME_LIMIT = 60

STATUS_COLORS = {Status.OK: "#2f9e44", Status.ERROR: "#e03131", Status.INVALID: "#f59f00"}
LATENCY_COLOR = "#1c7ed6"
TOKENS_COLOR = "#7048e8"
PASS_COLOR = "#2f9e44"
JUDGE_COLOR = "#0c8599"
DEFAULT_VARIANT = "default"  # a row with no `variant`, as the JSON summary names it
OTHER_RUBRICS = "(other rubrics)"
# The `failures` entries an llm-rubric writes (SPEC §8.44); "status" is the row not ending ok. Any other entry is a
# deterministic assertion that failed.
JUDGE_FAILURES = frozenset({"llm-rubric", "llm-rubric:error", "llm-rubric:pending"})
NOT_ASSERTIONS = JUDGE_FAILURES | {"status"}
OTHER_VARIANTS = "(other variants)"
OTHER_PATHS = "(other paths)"
SCHEMA_MISMATCH = "schema_mismatch: "  # the documented error text: `schema_mismatch: <json path>: <message>`
# A path as jsonschema's `json_path` writes it: `$`, then `.name`, `[3]` or `['any key']` (quotes escaped).
_JSON_PATH = re.compile(r"(\$(?:\.[A-Za-z][A-Za-z0-9_]*|\[[0-9]+\]|\['(?:[^'\\]|\\.)*'\])*): (.*)", re.DOTALL)


class Bins:
    """Counts per category in bins of ``value // width``; bounded by ``max_bins``.

    Whenever a new bin would exceed ``max_bins``, the width doubles and neighbouring
    bins merge (``(v // w) // 2 == v // 2w``), so no count is ever split or lost.
    """

    def __init__(self, categories: int = 1, max_bins: int = 1024) -> None:
        self.categories = categories
        self.max_bins = max_bins
        self.width = 1
        self.counts: dict[int, list[int]] = {}
        self.low: int | None = None
        self.high: int | None = None

    def add(self, value: int, category: int = 0) -> None:
        value = max(0, value)
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        slot = self.counts.get(value // self.width)
        if slot is None:
            while len(self.counts) >= self.max_bins:
                self._coarsen()
            slot = self.counts.setdefault(value // self.width, [0] * self.categories)
        slot[category] += 1

    def _coarsen(self) -> None:
        self.width *= 2
        merged: dict[int, list[int]] = {}
        for key, slot in self.counts.items():
            target = merged.setdefault(key // 2, [0] * self.categories)
            for i, count in enumerate(slot):
                target[i] += count
        self.counts = merged

    def bars(self, start: int, end: int, target: int) -> tuple[int, int, list[list[int]]]:
        """``(first, bar_width, counts)``: at most ``target`` equal bars covering values ``start..end``.

        A bar is a whole number of bins; while bins are single values it is a round 1-2-5 width.
        """
        span = max(1, end - start + 1)
        bar = self.width * max(1, math.ceil(span / (self.width * target)))
        if self.width == 1:
            bar = _nice_at_least(bar)
        first = start // bar * bar
        count = (end - first) // bar + 1
        out = [[0] * self.categories for _ in range(count)]
        for key, slot in self.counts.items():
            i = (key * self.width - first) // bar
            if 0 <= i < count:
                for c, n in enumerate(slot):
                    out[i][c] += n
        return first, bar, out


@dataclass(slots=True)
class _Variant:
    rows: int = 0
    judged: int = 0
    passed: int = 0
    failures: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Disagreement:
    row_id: str
    sample: Any
    passed_mask: int
    failed_mask: int
    failures: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Verdicts:
    """Rubric verdicts: ``judged`` had a usable vote (``held`` of them held), ``errors`` had none, ``pending``
    were cut off by a stop (the next run asks the judge): neither of the last two is in the pass rate."""

    judged: int = 0
    held: int = 0
    errors: int = 0
    pending: int = 0
    agreement_sum: float = 0.0
    agreement_n: int = 0


@dataclass(slots=True)
class _JudgeVariant:
    rows: int = 0
    verdicts: _Verdicts = field(default_factory=_Verdicts)
    rubrics: dict[str, _Verdicts] = field(default_factory=dict)
    scores: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    priced: int = 0  # verdicts with tokens whose judge model has a price ...
    unpriced: int = 0  # ... and those whose model has none: their cost is unknown, never zero


@dataclass(slots=True)
class _JudgeDisagreement:
    row_id: str
    variant: str
    sample: str
    judge_holds: bool
    score: str
    reason: str
    failed: str


class ReportCollector:
    """Everything the page needs, gathered in one pass; ``add`` each result record, then :func:`render_html`.

    ``deterministic_assertions`` says whether the run had assertions besides ``llm-rubric``; ``None`` (the
    default) infers it from the rows (see :meth:`judge_compared`).
    """

    def __init__(self, *, deterministic_assertions: bool | None = None) -> None:
        self.summary = Summary()
        self.latency_bins: Counter[int] = Counter()
        self.by_index = Bins(categories=3)
        self.tokens = Bins()
        self.slowest: list[tuple[float, int, dict[str, Any]]] = []
        self.failed: list[dict[str, Any]] = []
        self.variant_names: dict[str, int] = {}
        self.variants: dict[str, _Variant] = {}
        self.disagreements: dict[tuple[str, Any], _Disagreement] = {}
        self.disagreeing = 0
        self.window: OrderedDict[tuple[str, Any], tuple[int, int, tuple[tuple[int, str], ...]]] = OrderedDict()
        self.window_evicted = 0
        self._texts: dict[str, str] = {}
        self._seq = 0
        self.structured = False  # some row has a `parsed` column or ended in schema_mismatch
        self.parsed = 0
        self.schema_mismatches = 0
        self.schema_paths: Counter[str] = Counter()
        self.schema_examples: dict[str, str] = {}
        self.deterministic_assertions = deterministic_assertions
        self.judge_rows = 0  # rows with a non-null `judge`
        self.judge_unreadable = 0  # ... that is not a JSON list: skipped
        self.judge_bad_entries = 0  # verdicts with neither an error nor a boolean `holds`
        self.judge: dict[str, _JudgeVariant] = {}
        self.judge_disagreements: list[_JudgeDisagreement] = []
        self.judge_only_judge_passes = 0  # the judge holds, an assertion failed
        self.judge_only_judge_fails = 0  # the judge fails, every assertion held
        self.assertion_failed = False  # some row failed a deterministic assertion

    def add(self, record: dict[str, Any]) -> None:
        """Count one result record. Raises ``ValueError`` for a row that is not an inferbatch result."""
        if not isinstance(record, dict) or "status" not in record:
            raise ValueError("rows have no `status`: not an inferbatch result file")
        self.summary.add(record)
        seq = self._seq
        self._seq += 1
        status = record.get("status")
        index = record.get("index")
        index = index if type(index) is int else seq
        self.by_index.add(index, {"ok": 0, "error": 1}.get(str(status), 2))

        latency = record.get("latency_ms")
        if isinstance(latency, int | float) and not isinstance(latency, bool) and math.isfinite(latency):
            self.latency_bins[math.floor(LATENCY_BINS_PER_DECADE * math.log10(max(float(latency), 0.01)))] += 1
            if len(self.slowest) < SLOWEST_ROWS:
                heapq.heappush(self.slowest, (float(latency), -seq, _brief(record, index)))
            elif latency > self.slowest[0][0]:
                heapq.heapreplace(self.slowest, (float(latency), -seq, _brief(record, index)))

        tokens = record.get("total_tokens")
        if type(tokens) is not int:
            prompt, completion = record.get("prompt_tokens"), record.get("completion_tokens")
            tokens = prompt + completion if type(prompt) is int and type(completion) is int else None
        if tokens is not None:
            self.tokens.add(tokens)

        if status != Status.OK and len(self.failed) < FAILED_ROWS:
            self.failed.append(_brief(record, index))

        if "variant" in record and record["variant"] is not None:
            self._add_variant(record)

        if "parsed" in record:
            self.structured = True
            if record["parsed"] is not None:
                self.parsed += 1
        error = record.get("error")
        if isinstance(error, str) and error.startswith(SCHEMA_MISMATCH):
            self._add_schema_mismatch(error[len(SCHEMA_MISMATCH) :])

        if record.get("judge") is not None:
            self._add_judge(record)

    def judge_compared(self) -> bool:
        """Whether a row the judge failed and every assertion held counts as a disagreement.

        Such a row disagrees only if the run had a deterministic assertion to hold, and a row's
        ``failures`` cannot say so when they all held. The rule: the run had one when the caller
        says so, else when some row of the file failed one (a ``failures`` entry other than
        llm-rubric* and ``status``). Without that evidence a judge-only run would list every row
        the judge failed. A row the judge passed and an assertion failed is evidence by itself.
        """
        if self.deterministic_assertions is not None:
            return self.deterministic_assertions
        return self.assertion_failed

    def _add_judge(self, record: dict[str, Any]) -> None:
        kinds = _failure_kinds(record.get("failures"))
        failed = [kind for kind in kinds if kind not in NOT_ASSERTIONS]
        self.assertion_failed = self.assertion_failed or bool(failed)
        entries = _judge_entries(record["judge"])
        if entries is None:
            self.judge_unreadable += 1
            self.judge_rows += 1
            return
        if not entries:
            return  # JSON null (or []): no judge ran, as a null column
        self.judge_rows += 1
        stats = self._judge_variant(record.get("variant"))
        stats.rows += 1
        for entry in entries:
            self._add_verdict(stats, entry)
        self._compare_judge(record, entries, kinds, failed)

    def _judge_variant(self, variant: Any) -> _JudgeVariant:
        name = DEFAULT_VARIANT if variant is None else str(variant)
        if name not in self.judge and len(self.judge) >= MAX_VARIANTS:
            name = OTHER_VARIANTS
        return self.judge.setdefault(name, _JudgeVariant())

    def _add_verdict(self, stats: _JudgeVariant, entry: dict[str, Any]) -> None:
        name = _truncate(str(entry.get("name") or "(unnamed)"), RUBRIC_NAME_LIMIT)
        if name not in stats.rubrics and len(stats.rubrics) >= MAX_RUBRICS:
            name = OTHER_RUBRICS
        tallies = (stats.verdicts, stats.rubrics.setdefault(name, _Verdicts()))
        kind = _verdict_kind(entry)
        agreement = _number(entry.get("agreement"))
        for tally in tallies:
            if kind == "pending":
                tally.pending += 1
            elif kind == "error":  # no usable vote: counted, but not in the pass rate's denominator
                tally.errors += 1
            elif kind == "judged":
                tally.judged += 1
                tally.held += entry["holds"]
            if agreement is not None:
                tally.agreement_sum += agreement
                tally.agreement_n += 1
        if kind == "bad":
            self.judge_bad_entries += 1
        score = _number(entry.get("score"))
        if score is not None and 0.0 <= score <= 1.0:
            stats.scores[min(math.floor(score * SCORE_BINS), SCORE_BINS - 1)] += 1  # 1.0 is in the last bin
        self._add_judge_bill(stats, entry)

    def _add_judge_bill(self, stats: _JudgeVariant, entry: dict[str, Any]) -> None:
        prompt, completion = whole_count(entry.get("prompt_tokens")), whole_count(entry.get("completion_tokens"))
        cached = whole_count(entry.get("cached_tokens"))
        stats.requests += whole_count(entry.get("requests"))
        stats.prompt_tokens += prompt
        stats.completion_tokens += completion
        stats.cached_tokens += cached
        if not (prompt or completion):
            return  # every vote from the cache: nothing billed, priced or not
        model = entry.get("model")
        model = model if isinstance(model, str) and model else self.summary.default_model
        cost = self.summary.pricing.cost(model, prompt, completion, cached)
        if cost is None:
            stats.unpriced += 1
        else:
            stats.cost_usd += cost
            stats.priced += 1

    def _compare_judge(
        self, record: dict[str, Any], entries: list[dict[str, Any]], kinds: list[str], failed: list[str]
    ) -> None:
        # The judge's verdict on a row is every rubric holding; a row with an errored, pending or
        # unreadable verdict has none, and cannot disagree.
        if "llm-rubric:error" in kinds or "llm-rubric:pending" in kinds:
            return
        if any(_verdict_kind(e) != "judged" for e in entries):
            return
        judge_holds = all(e["holds"] for e in entries)
        if judge_holds == (not failed):
            return
        if judge_holds:
            self.judge_only_judge_passes += 1
        else:
            self.judge_only_judge_fails += 1
        if len(self.judge_disagreements) < JUDGE_DISAGREEMENT_ROWS:
            # The verdicts that explain the judge's side: those that failed, or all when all held.
            shown = entries if judge_holds else [e for e in entries if not e["holds"]]
            named = len(entries) > 1  # with several rubrics, a text says whose it is
            sample = record.get("sample")
            self.judge_disagreements.append(
                _JudgeDisagreement(
                    row_id=_truncate(str(record.get("id")), ID_LIMIT),
                    variant=DEFAULT_VARIANT if record.get("variant") is None else str(record.get("variant")),
                    sample="—" if sample is None else _truncate(str(sample), ID_LIMIT),
                    judge_holds=judge_holds,
                    score=_truncate(_verdict_texts(shown, named, lambda e: _score(e.get("score")), " "), REASON_LIMIT),
                    reason=_truncate(
                        _verdict_texts(shown, named, lambda e: str(e.get("reason") or ""), ": "), REASON_LIMIT
                    ),
                    failed=", ".join(failed),
                )
            )

    def _add_schema_mismatch(self, problem: str) -> None:
        self.structured = True
        self.schema_mismatches += 1
        path, message = _split_problem(problem)
        path = _truncate(path, PATH_LIMIT)
        if path not in self.schema_paths and len(self.schema_paths) >= MAX_SCHEMA_PATHS:
            path = OTHER_PATHS
        self.schema_paths[path] += 1
        if path != OTHER_PATHS and path not in self.schema_examples:
            self.schema_examples[path] = _truncate(message, TEXT_LIMIT)

    def _add_variant(self, record: dict[str, Any]) -> None:
        name = str(record["variant"])
        if name not in self.variants and len(self.variants) >= MAX_VARIANTS:
            name = OTHER_VARIANTS
        stats = self.variants.setdefault(name, _Variant())
        number = self.variant_names.setdefault(name, len(self.variant_names))
        stats.rows += 1
        passed = record.get("passed")
        if not isinstance(passed, bool):
            return
        stats.judged += 1
        failures = None
        if passed:
            stats.passed += 1
        else:
            kinds = _failure_kinds(record.get("failures"))
            for kind in kinds:
                if kind in stats.failures or len(stats.failures) < MAX_FAILURE_TYPES:
                    stats.failures[kind] += 1
                else:
                    stats.failures["(other)"] += 1
            failures = ", ".join(kinds) or None
        if name != OTHER_VARIANTS:
            self._compare(record, number, passed, failures)

    def _compare(self, record: dict[str, Any], number: int, passed: bool, failures: str | None) -> None:
        sample = record.get("sample")
        key = (
            _truncate(str(record.get("id")), ID_LIMIT),
            sample if isinstance(sample, int | str | None) else str(sample),
        )
        bit = 1 << number
        known = self.disagreements.get(key)
        if known is not None:
            if passed:
                known.passed_mask |= bit
            else:
                known.failed_mask |= bit
                if failures:
                    known.failures[number] = failures
            return
        passed_mask, failed_mask, why = self.window.pop(key, (0, 0, ()))
        if passed:
            passed_mask |= bit
        else:
            failed_mask |= bit
            if failures:
                why = (*why, (number, self._intern(failures)))
        if passed_mask and failed_mask:
            self.disagreeing += 1
            if len(self.disagreements) < DISAGREEMENT_ROWS:
                self.disagreements[key] = _Disagreement(key[0], key[1], passed_mask, failed_mask, dict(why))
            return
        self.window[key] = (passed_mask, failed_mask, why)
        if len(self.window) > DISAGREEMENT_WINDOW:
            self.window.popitem(last=False)
            self.window_evicted += 1

    def _intern(self, text: str) -> str:
        """One copy of each of the (few) distinct failure lists, so the window stays small."""
        if len(self._texts) < MAX_FAILURE_TYPES * 20:
            return self._texts.setdefault(text, text)
        return self._texts.get(text, text)


def write_html(records: Iterable[dict[str, Any]], path: str, *, title: str = "inferbatch report") -> None:
    """Write the report page for ``records`` (result rows, SPEC §3) to ``path``, atomically.

    Reads the records once; the page is built in memory (its size is bounded) and
    renamed into place, so ``path`` is never half written. Raises ``ValueError`` when a
    record is not a result row; ``OSError`` when ``path`` cannot be written.
    """
    collector = ReportCollector()
    for record in records:
        collector.add(record)
    page = render_html(collector, title=title)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(page)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def render_html(collector: ReportCollector, *, title: str = "inferbatch report") -> str:
    """The whole page as one string."""
    s = collector.summary
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cards = [
        ("rows", f"{s.rows:,}", ""),
        ("ok", f"{s.ok:,}", "ok"),
        ("error", f"{s.error:,}", "error"),
        ("invalid", f"{s.invalid:,}", "invalid"),
    ]
    if collector.variants:
        judged = sum(v.judged for v in collector.variants.values())
        passed = sum(v.passed for v in collector.variants.values())
        cards.append(("passed", f"{passed:,} / {judged:,}", "ok"))
    if collector.structured:
        cards.append(("schema mismatch", f"{collector.schema_mismatches:,}", "error"))
    if collector.judge_rows:
        judged = sum(v.verdicts.judged for v in collector.judge.values())
        held = sum(v.verdicts.held for v in collector.judge.values())
        cards.append(("judge held", f"{held:,} / {judged:,}", "ok"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f'<header><h1>{escape(title)}</h1><p class="sub">{s.rows:,} rows · generated {generated}</p></header>',
        '<div class="cards">',
        *(
            f'<div class="card {cls}"><div class="label">{escape(label)}</div>'
            f'<div class="n" data-field="{escape(label)}">{escape(value)}</div></div>'
            for label, value, cls in cards
        ),
        "</div>",
        _summary_section(s),
        '<section><h2>Charts</h2><div class="grid">',
        _figure("Latency per row (last attempt)", _latency_chart(collector.latency_bins)),
        _figure("Tokens per row (total)", _tokens_chart(collector.tokens)),
        "</div>",
        _figure("Statuses over the input (row index)", _status_chart(collector.by_index), legend=True),
        "</section>",
    ]
    if collector.variants:
        parts.append(_variants_section(collector))
    if collector.judge_rows:
        parts.append(_judge_section(collector))
    if collector.structured:
        parts.append(_schema_section(collector))
    parts.append(_slowest_section(collector))
    parts.append(_failed_section(collector))
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


# ---- sections -------------------------------------------------------------------------------------


def _summary_section(s: Summary) -> str:
    d = s.as_dict()
    lat = d["latency_ms"]
    codes = " · ".join(f"{code}: {n:,}" for code, n in d["status_codes"].items()) or "—"
    errors = " · ".join(f"{kind}: {n:,}" for kind, n in list(d["error_types"].items())[:20]) or "—"
    reasons = " · ".join(f"{kind}: {n:,}" for kind, n in d["finish_reasons"].items()) or "—"
    outcome = [
        ("rows", f"{d['rows']:,}"),
        ("ok", f"{d['ok']:,}"),
        ("error", f"{d['error']:,}"),
        ("invalid", f"{d['invalid']:,}"),
        ("status codes", codes),
        ("error types", errors),
        ("finish reasons", reasons),
    ]
    requests = [
        ("attempts", f"{d['attempts']:,}"),
        ("retries", f"{d['retries']:,}"),
        ("latency p50", _ms(lat["p50"])),
        ("latency p90", _ms(lat["p90"])),
        ("latency p99", _ms(lat["p99"])),
        ("latency max", _ms(lat["max"])),
        ("prompt tokens", f"{d['prompt_tokens']:,}"),
        ("completion tokens", f"{d['completion_tokens']:,}"),
    ]
    tables = "".join(
        f'<table id="summary-{name}" class="kv">'
        f"{''.join(f'<tr><th scope=row>{escape(k)}</th><td>{escape(v)}</td></tr>' for k, v in rows)}</table>"
        for name, rows in (("outcome", outcome), ("requests", requests))
    )
    return f'<section id="summary"><h2>Summary</h2><div class="grid">{tables}</div></section>'


def _variants_section(c: ReportCollector) -> str:
    names = list(c.variants)
    rows = []
    for name in names:
        v = c.variants[name]
        low, high = wilson(v.passed, v.judged)
        rate = f"{v.passed / v.judged:.1%}" if v.judged else "—"
        top = " · ".join(f"{kind}: {n:,}" for kind, n in v.failures.most_common(8)) or "—"
        rows.append(
            f'<tr><td>{escape(name)}</td><td class="num">{v.rows:,}</td><td class="num">{v.judged:,}</td>'
            f'<td class="num">{v.passed:,}</td><td class="num">{rate}</td>'
            f'<td class="num">{low:.1%} – {high:.1%}</td><td>{escape(top)}</td></tr>'
        )
    table = (
        '<table id="variants"><thead><tr><th>variant</th><th class="num">rows</th><th class="num">judged</th>'
        '<th class="num">passed</th><th class="num">pass rate</th><th class="num">Wilson 95 %</th>'
        f"<th>failed assertions</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    shown = [n for n in names if n != OTHER_VARIANTS]
    if c.disagreeing:
        head = "".join(f"<th>{escape(_truncate(n, 40))}</th>" for n in shown)
        body = []
        for d in c.disagreements.values():
            cells = []
            for name in shown:
                bit = 1 << c.variant_names[name]
                if d.passed_mask & bit:
                    cells.append('<td class="pass">pass</td>')
                elif d.failed_mask & bit:
                    why = d.failures.get(c.variant_names[name])
                    detail = f' <span class="why">{escape(_truncate(why, 120))}</span>' if why else ""
                    cells.append(f'<td class="fail">fail{detail}</td>')
                else:
                    cells.append('<td class="none">—</td>')
            body.append(f"<tr><td>{escape(d.row_id)}</td><td>{escape(str(d.sample))}</td>{''.join(cells)}</tr>")
        note = f"{c.disagreeing:,} rows where variants disagree"
        if c.disagreeing > len(c.disagreements):
            note += f"; the first {len(c.disagreements):,} shown"
        disagreement = (
            f'<h3>Rows where variants disagree</h3><p class="sub">{note}.</p>'
            f'<table id="disagreements"><thead><tr><th>id</th><th>sample</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )
    else:
        disagreement = '<h3>Rows where variants disagree</h3><p class="sub">None found.</p>'
    if c.window_evicted:
        disagreement += (
            f'<p class="sub">Only rows within {DISAGREEMENT_WINDOW:,} (id, sample) keys of each other are compared; '
            f"{c.window_evicted:,} keys left that window before every variant was seen.</p>"
        )
    chart = _figure("Pass rate per variant, with Wilson 95 % interval", _pass_rate_chart(c))
    return f"<section><h2>Variants</h2>{chart}{table}{disagreement}</section>"


def _judge_section(c: ReportCollector) -> str:
    verdicts = sum(v.verdicts.judged + v.verdicts.errors for v in c.judge.values())
    notes = [f"{verdicts:,} rubric verdicts on {sum(v.rows for v in c.judge.values()):,} rows"]
    if c.judge_unreadable:
        notes.append(f"{c.judge_unreadable:,} rows skipped: their `judge` is not a JSON list")
    pending = sum(v.verdicts.pending for v in c.judge.values())
    if pending:
        notes.append(f"{pending:,} verdicts pending: a stop cut them off, the next run asks the judge")
    if c.judge_bad_entries:
        notes.append(f"{c.judge_bad_entries:,} verdicts with neither an error nor a `holds` are not counted")
    notes.append("errors (the judge gave no usable vote) are counted apart, not in the pass rate")
    chart = "".join(
        _figure(f"Scores: {_truncate(name, 60)}", _score_chart(name, v.scores)) for name, v in c.judge.items()
    )
    return (
        f'<section id="judge"><h2>LLM judge</h2><p class="sub">{escape("; ".join(notes))}.</p>'
        f"{_judge_verdicts_table(c)}{_judge_disagreements(c)}"
        f'<h3>Score distribution per variant</h3><div class="grid">{chart}</div>'
        f"<h3>Judge calls</h3>{_judge_calls_table(c)}</section>"
    )


def _judge_verdicts_table(c: ReportCollector) -> str:
    """A row per variant, and one per rubric under it when it has several."""
    agreement = any(v.verdicts.agreement_n for v in c.judge.values())
    pending = any(v.verdicts.pending for v in c.judge.values())
    rows = []
    for name, v in c.judge.items():
        if len(v.rubrics) == 1:
            rows.append(_verdicts_row(name, next(iter(v.rubrics)), v.verdicts, agreement, pending))
            continue
        rows.append(_verdicts_row(name, "all rubrics", v.verdicts, agreement, pending))
        rows.extend(_verdicts_row(name, rubric, t, agreement, pending) for rubric, t in v.rubrics.items())
    head = ('<th class="num">pending</th>' if pending else "") + (
        '<th class="num">mean agreement</th>' if agreement else ""
    )
    return (
        '<table id="judge-verdicts"><thead><tr><th>variant</th><th>rubric</th><th class="num">verdicts</th>'
        '<th class="num">judged</th><th class="num">held</th><th class="num">pass rate</th>'
        f'<th class="num">Wilson 95 %</th><th class="num">errors</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _verdicts_row(variant: str, rubric: str, t: _Verdicts, agreement: bool, pending: bool) -> str:
    """``pending`` and ``agreement``: whether the table has those columns (only when some verdict needs them)."""
    low, high = wilson(t.held, t.judged)
    rate = f"{t.held / t.judged:.1%}" if t.judged else "—"  # nothing judged is no pass rate, not 0 %
    cell = f'<td class="num">{t.pending:,}</td>' if pending else ""
    if agreement:  # --judge-repeat: the share of votes that sided with the majority, averaged
        mean = f"{t.agreement_sum / t.agreement_n:.1%}" if t.agreement_n else "—"
        cell += f'<td class="num">{mean}</td>'
    return (
        f"<tr><td>{escape(variant)}</td><td>{escape(rubric)}</td>"
        f'<td class="num">{t.judged + t.errors:,}</td><td class="num">{t.judged:,}</td>'
        f'<td class="num">{t.held:,}</td><td class="num">{rate}</td>'
        f'<td class="num">{low:.1%} – {high:.1%}</td><td class="num">{t.errors:,}</td>{cell}</tr>'
    )


def _judge_disagreements(c: ReportCollector) -> str:
    title = "<h3>Judge and assertions disagree — read these first</h3>"
    compared = c.judge_compared()
    total = c.judge_only_judge_passes + (c.judge_only_judge_fails if compared else 0)
    rows = [d for d in c.judge_disagreements if compared or d.judge_holds]
    unknown = ""
    if not compared:
        unknown = (
            "No row failed a deterministic assertion, so this file does not show whether the run had any "
            f"besides the judge: the {c.judge_only_judge_fails:,} rows only the judge failed are not compared. "
        )
    if not total:
        return f'{title}<p class="sub">{unknown}None found.</p>'
    note = f"{total:,} rows where the judge (every rubric holds) and the deterministic assertions disagree"
    if total > len(rows):
        note += f"; the first {len(rows):,} in input order are shown"
    body = "".join(
        f"<tr><td>{escape(d.row_id)}</td><td>{escape(d.variant)}</td><td>{escape(d.sample)}</td>"
        f"{_verdict_cell(d.judge_holds)}{_verdict_cell(not d.judge_holds)}"
        f'<td class="num">{escape(d.score)}</td><td class="err">{escape(d.reason)}</td>'
        f"<td>{escape(d.failed) or '—'}</td></tr>"
        for d in rows
    )
    return (
        f'{title}<p class="sub">{unknown}{note}.</p><table id="judge-disagreements"><thead><tr><th>id</th>'
        '<th>variant</th><th>sample</th><th>judge</th><th>assertions</th><th class="num">judge score</th>'
        f"<th>judge reason</th><th>failed assertions</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _verdict_cell(holds: bool) -> str:
    return '<td class="pass">pass</td>' if holds else '<td class="fail">fail</td>'


def _judge_calls_table(c: ReportCollector) -> str:
    """The judge's bill per variant: the answers' own tokens and cost are the summary's, not counted here."""
    rows = [_calls_row(name, v) for name, v in c.judge.items()]
    if len(c.judge) > 1:
        total = _JudgeVariant()
        for v in c.judge.values():
            total.rows += v.rows
            total.requests += v.requests
            total.prompt_tokens += v.prompt_tokens
            total.completion_tokens += v.completion_tokens
            total.cached_tokens += v.cached_tokens
            total.cost_usd += v.cost_usd
            total.priced += v.priced
            total.unpriced += v.unpriced
        rows.append(_calls_row("all variants", total))
    return (
        '<table id="judge-calls"><thead><tr><th>variant</th><th class="num">rows judged</th>'
        '<th class="num">judge requests</th><th class="num">prompt tokens</th><th class="num">completion tokens</th>'
        '<th class="num">cached tokens</th><th class="num">judge cost (USD)</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _calls_row(name: str, v: _JudgeVariant) -> str:
    if not v.unpriced:
        cost = f"{v.cost_usd:.4f}"
    elif not v.priced:
        cost = "unknown (no price for the judge model)"
    else:  # a partial sum is a floor, never the bill
        cost = f"≥ {v.cost_usd:.4f} ({v.unpriced:,} verdicts unpriced)"
    return (
        f'<tr><td>{escape(name)}</td><td class="num">{v.rows:,}</td><td class="num">{v.requests:,}</td>'
        f'<td class="num">{v.prompt_tokens:,}</td><td class="num">{v.completion_tokens:,}</td>'
        f'<td class="num">{v.cached_tokens:,}</td><td class="num">{escape(cost)}</td></tr>'
    )


def _schema_section(c: ReportCollector) -> str:
    rows = c.summary.rows
    share = f" ({c.schema_mismatches / rows:.1%} of rows)" if rows else ""
    facts = [
        ("schema mismatch", f"{c.schema_mismatches:,}{share}"),
        ("parsed answers", f"{c.parsed:,}"),
        ("failing paths", f"{len(c.schema_paths):,}" + ("+" if OTHER_PATHS in c.schema_paths else "")),
    ]
    summary = (
        '<table id="schema-summary" class="kv narrow">'
        f"{''.join(f'<tr><th scope=row>{escape(k)}</th><td>{escape(v)}</td></tr>' for k, v in facts)}</table>"
    )
    if not c.schema_mismatches:
        return (
            f'<section id="schema"><h2>Structured output</h2>{summary}<p class="sub">No schema mismatch.</p></section>'
        )
    top = c.schema_paths.most_common(SCHEMA_PATH_ROWS)
    body = "".join(
        f'<tr><td class="num">{rank}</td><td class="err">{escape(path)}</td><td class="num">{n:,}</td>'
        f'<td class="num">{n / c.schema_mismatches:.1%}</td>'
        f'<td class="err">{escape(c.schema_examples.get(path, "—"))}</td></tr>'
        for rank, (path, n) in enumerate(top, 1)
    )
    note = f"{len(top):,} failing paths, most frequent first"
    if len(top) < len(c.schema_paths):
        note = f"The {len(top):,} most frequent of {len(c.schema_paths):,} failing paths"
    if OTHER_PATHS in c.schema_paths:
        note += f"; paths beyond the first {MAX_SCHEMA_PATHS:,} distinct ones are counted as {OTHER_PATHS}"
    return (
        f'<section id="schema"><h2>Structured output</h2>{summary}<h3>Most frequent failing paths</h3>'
        f'<p class="sub">{escape(note)}.</p><table id="schema-paths"><thead><tr><th class="num">#</th>'
        '<th>path</th><th class="num">rows</th><th class="num">share</th><th>example message</th></tr></thead>'
        f"<tbody>{body}</tbody></table></section>"
    )


def _slowest_section(c: ReportCollector) -> str:
    rows = sorted(c.slowest, key=lambda e: (-e[0], -e[1]))
    if not rows:
        return '<section><h2>Slowest rows</h2><p class="sub">No row has a latency.</p></section>'
    body = "".join(
        f'<tr><td class="num">{rank}</td><td>{escape(r["id"])}</td><td class="num">{r["index"]:,}</td>'
        f'<td class="num">{escape(_ms(latency))}</td><td class="{escape(r["status"])}">{escape(r["status"])}</td>'
        f'<td class="num">{escape(r["status_code"])}</td><td class="num">{escape(r["attempts"])}</td></tr>'
        for rank, (latency, _, r) in enumerate(rows, 1)
    )
    return (
        f'<section><h2>Slowest rows</h2><table id="slowest" class="narrow"><thead><tr><th class="num">#</th><th>id</th>'
        '<th class="num">index</th><th class="num">latency</th><th>status</th><th class="num">status code</th>'
        f'<th class="num">attempts</th></tr></thead><tbody>{body}</tbody></table></section>'
    )


def _failed_section(c: ReportCollector) -> str:
    total = c.summary.error + c.summary.invalid
    if not total:
        return '<section><h2>Failed rows</h2><p class="sub">None: every row is ok.</p></section>'
    note = f"{total:,} rows did not end ok"
    if total > len(c.failed):
        note += f"; the first {len(c.failed):,} in input order are shown"
    body = "".join(
        f'<tr><td class="num">{r["index"]:,}</td><td>{escape(r["id"])}</td>'
        f'<td class="{escape(r["status"])}">{escape(r["status"])}</td><td class="num">{escape(r["status_code"])}</td>'
        f'<td class="num">{escape(r["attempts"])}</td><td class="err">{escape(r["error"])}</td></tr>'
        for r in c.failed
    )
    return (
        f'<section><h2>Failed rows</h2><p class="sub">{note}.</p><table id="failed"><thead><tr>'
        '<th class="num">index</th><th>id</th><th>status</th><th class="num">status code</th>'
        f'<th class="num">attempts</th><th>error</th></tr></thead><tbody>{body}</tbody></table></section>'
    )


def _figure(caption: str, svg: str, *, legend: bool = False) -> str:
    keys = ""
    if legend:
        items = "".join(
            f'<span><span class="key" style="background:{color}"></span>{name}</span>'
            for name, color in STATUS_COLORS.items()
        )
        keys = f'<div class="legend">{items}</div>'
    return f"<figure><figcaption>{escape(caption)}</figcaption>{keys}{svg}</figure>"


# ---- charts ---------------------------------------------------------------------------------------


def _latency_chart(bins: Counter[int]) -> str:
    if not bins:
        return _empty_chart("no latencies")
    low, high = min(bins), max(bins)
    group = next((g for g in (1, 2, 4, 5, 10, 20) if (high - low) // g + 1 <= 60), 40)
    if high - low + 1 < 12:
        pad = (12 - (high - low + 1)) // 2
        low, high = low - pad, high + pad
    first = low // group * group
    count = (high - first) // group + 1
    counts = [[0] for _ in range(count)]
    for key, n in bins.items():
        counts[(key - first) // group][0] += n

    def edge(k: int) -> float:
        return float(10 ** (k / LATENCY_BINS_PER_DECADE))

    labels = [f"{_ms(edge(first + i * group))} – {_ms(edge(first + (i + 1) * group))}" for i in range(count)]
    lo_log, hi_log = first / LATENCY_BINS_PER_DECADE, (first + count * group) / LATENCY_BINS_PER_DECADE
    ticks = []
    decades = hi_log - lo_log
    steps = (1, 1.5, 2, 3, 5, 7) if decades <= 1.2 else (1, 2, 5) if decades <= 2.5 else (1,)
    for exponent in range(math.floor(lo_log) - 1, math.ceil(hi_log) + 1):
        for step in steps:
            value = step * 10.0**exponent
            position = (math.log10(value) - lo_log) / (hi_log - lo_log)
            if 0 <= position <= 1:
                ticks.append((position, _ms(value)))
    return _bar_chart(counts, [LATENCY_COLOR], labels, ticks, "latency (log scale)", "rows")


def _tokens_chart(tokens: Bins) -> str:
    if tokens.low is None or tokens.high is None:
        return _empty_chart("no token counts")
    low, high = tokens.low, tokens.high
    if high - low < 10:
        low = max(0, low - (10 - (high - low)) // 2)
        high = low + 10
    first, width, counts = tokens.bars(low, high, 40)
    end = first + width * len(counts)
    labels = [
        f"{first + i * width:,}" if width == 1 else f"{first + i * width:,} – {first + (i + 1) * width - 1:,}"
        for i in range(len(counts))
    ]
    ticks = [((v - first) / (end - first), f"{v:,}") for v in _nice_ticks(first, end, 8)]
    return _bar_chart(counts, [TOKENS_COLOR], labels, ticks, "total tokens", "rows")


def _status_chart(by_index: Bins) -> str:
    if by_index.high is None:
        return _empty_chart("no rows", width=1100)
    first, width, counts = by_index.bars(0, by_index.high, 50)
    end = first + width * len(counts)
    labels = [
        f"row {first + i * width:,}" if width == 1 else f"rows {first + i * width:,} – {first + (i + 1) * width - 1:,}"
        for i in range(len(counts))
    ]
    ticks = [((v - first) / (end - first), f"{v:,}") for v in _nice_ticks(first, end, 12)]
    return _bar_chart(
        counts,
        list(STATUS_COLORS.values()),
        labels,
        ticks,
        "row index",
        "share of rows",
        series=list(STATUS_COLORS),
        share=True,
        width=1100,
        height=220,
    )


def _score_chart(name: str, scores: list[int]) -> str:
    label = f"judge scores: {name}"
    if not any(scores):
        return _empty_chart("no scores")
    labels = [f"{i / SCORE_BINS:.1f} – {(i + 1) / SCORE_BINS:.1f}" for i in range(SCORE_BINS)]
    ticks = [(i / SCORE_BINS, f"{i / SCORE_BINS:.1f}") for i in range(0, SCORE_BINS + 1, 2)]
    counts = [[n] for n in scores]
    return _bar_chart(counts, [JUDGE_COLOR], labels, ticks, "judge score", "verdicts", height=200, label=label)


def _pass_rate_chart(c: ReportCollector) -> str:
    names = list(c.variants)
    width, left, right, row_h, top = 1100, 220, 150, 30, 10
    plot = width - left - right
    height = top + row_h * len(names) + 32
    out = []
    for i in range(0, 11, 2):
        x = left + plot * i / 10
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 26}"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 10}" text-anchor="middle">{i * 10} %</text>')
    for row, name in enumerate(names):
        v = c.variants[name]
        y = top + row * row_h
        rate = v.passed / v.judged if v.judged else 0.0
        low, high = wilson(v.passed, v.judged)
        shown = f"{rate:.1%}" if v.judged else "—"  # no row judged is no pass rate, not 0 %
        label = f"{name}: {v.passed:,}/{v.judged:,} passed ({shown}), Wilson 95 % {low:.1%} – {high:.1%}"
        mid = y + row_h / 2
        out.append(
            f'<text class="name" x="{left - 8}" y="{mid + 4:.1f}" text-anchor="end">'
            f"{escape(_truncate(name, 32))}</text>"
        )
        out.append(
            f'<rect class="bar" x="{left}" y="{y + 6}" width="{plot * rate:.1f}" height="{row_h - 12}" '
            f'fill="{PASS_COLOR}"><title>{escape(label)}</title></rect>'
        )
        if v.judged:
            x0, x1 = left + plot * low, left + plot * high
            out.append(
                f'<path class="whisker" d="M{x0:.1f} {mid:.1f}H{x1:.1f}M{x0:.1f} {mid - 7:.1f}V{mid + 7:.1f}'
                f'M{x1:.1f} {mid - 7:.1f}V{mid + 7:.1f}"/>'
            )
        tally = f"{shown} of {v.judged:,}" if v.judged else "none judged"
        out.append(f'<text x="{left + plot + 8}" y="{mid + 4:.1f}">{tally}</text>')
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - 26}"/>')
    return _svg(width, height, "".join(out), "pass rate per variant")


def _bar_chart(
    counts: list[list[int]],
    colors: list[str],
    labels: list[str],
    ticks: list[tuple[float, str]],
    x_title: str,
    y_title: str,
    *,
    series: list[str] | None = None,
    share: bool = False,
    width: int = 540,
    height: int = 240,
    label: str | None = None,
) -> str:
    """Vertical (stacked) bars, evenly spaced; ``ticks`` are (fraction of the x axis, text).

    ``share=True`` draws each stack as 100 % of its bar. A non-zero segment is never
    thinner than ``MIN_BAR_PX``, so one failed row in a million still shows; the
    tooltip of every bar has the exact counts.
    """
    left, right, top, bottom = 52, 14, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((sum(c) for c in counts), default=0)
    if share:
        y_ticks, y_max = [0, 25, 50, 75, 100], 100.0
    else:
        step = _nice_at_least(max(peak, 1) / 4)
        y_max = float(max(1, math.ceil(peak / step)) * step)
        y_ticks = list(range(0, int(y_max) + 1, step))
    out = []
    for value in y_ticks:
        y = top + plot_h - plot_h * value / y_max
        text = f"{value} %" if share else _compact(value)
        out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    step_x = plot_w / max(1, len(counts))
    gap = min(2.0, step_x * 0.15)
    for i, stack in enumerate(counts):
        x = left + i * step_x + gap / 2
        total = sum(stack)
        if series:
            detail = ", ".join(f"{name} {n:,}" for name, n in zip(series, stack, strict=True))
        else:
            detail = f"{total:,} {y_title}"
        tip = escape(f"{labels[i]}: {detail}")
        scale = plot_h / total if share and total else plot_h / y_max
        heights = [max(MIN_BAR_PX, n * scale) if n > 0 else 0.0 for n in stack]
        if share and total:
            biggest = heights.index(max(heights))
            heights[biggest] -= sum(heights) - plot_h
        base = float(top + plot_h)
        for color, h in zip(colors, heights, strict=False):
            if h <= 0:
                continue
            base -= h
            out.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{max(step_x - gap, 0.5):.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{tip}</title></rect>'
            )
    out.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>')
    for fraction, text in ticks:
        x = left + plot_w * fraction
        anchor = "end" if fraction > 0.96 else "middle"
        out.append(f'<line class="axis" x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">{escape(text)}</text>')
    out.append(
        f'<text class="title" x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"{escape(x_title)}</text>"
    )
    out.append(
        f'<text class="title" transform="translate(13 {top + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_title)}</text>'
    )
    return _svg(width, height, "".join(out), label or f"{y_title} by {x_title}")


def _empty_chart(text: str, width: int = 540) -> str:
    body = f'<text x="{width / 2}" y="60" text-anchor="middle">{escape(text)}</text>'
    return _svg(width, 100, body, text)


def _svg(width: int, height: int, body: str, label: str) -> str:
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}">{body}</svg>'
    )


# ---- small helpers --------------------------------------------------------------------------------


def _brief(record: dict[str, Any], index: int) -> dict[str, Any]:
    """The few fields a table shows, as text, truncated: never the prompt or the completion."""
    code = record.get("status_code")
    attempts = record.get("attempts")
    return {
        "id": _truncate(str(record.get("id")), ID_LIMIT),
        "index": index,
        "status": str(record.get("status")),
        "status_code": "—" if code is None else str(code),
        "attempts": "—" if attempts is None else str(attempts),
        "error": _truncate(str(record.get("error") or ""), TEXT_LIMIT),
    }


def _split_problem(problem: str) -> tuple[str, str]:
    """``(path, message)`` from ``<json path>: <message>``; a bracketed key may hold ``: `` itself."""
    match = _JSON_PATH.match(problem)
    if match:
        return match[1], match[2]
    path, _, message = problem.partition(": ")
    return (path, message) if message else ("(no path)", problem)


def _failure_kinds(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return [_truncate(value, 60)] if value.strip() else []
    if isinstance(value, list):
        return [_truncate(v if isinstance(v, str) else orjson.dumps(v).decode(), 60) for v in value]
    return []


def _judge_entries(value: Any) -> list[dict[str, Any]] | None:
    """The verdicts of a `judge` cell (JSON text, or a list already); ``None`` when it is not a JSON list.

    JSON ``null`` is an empty list: no judge ran. Entries that are not objects are dropped.
    """
    if isinstance(value, str | bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if value is None:
        return []
    if not isinstance(value, list):
        return None
    return [entry for entry in value if isinstance(entry, dict)]


def _verdict_kind(entry: dict[str, Any]) -> str:
    """``pending`` (a stop cut it off), ``error`` (no usable vote), ``judged`` (a boolean ``holds``), or ``bad``."""
    if entry.get("pending"):
        return "pending"
    if entry.get("error") is not None:
        return "error"
    return "judged" if isinstance(entry.get("holds"), bool) else "bad"


def _verdict_texts(
    entries: list[dict[str, Any]], named: bool, text: Callable[[dict[str, Any]], str], separator: str
) -> str:
    """The verdicts' texts, each after its rubric's name when ``named``."""
    if not named:
        return " · ".join(text(entry) for entry in entries)
    return " · ".join(f"{entry.get('name') or '(unnamed)'}{separator}{text(entry)}" for entry in entries)


def _score(value: Any) -> str:
    number = _number(value)
    return "—" if number is None else f"{number:.2f}"


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1000:
        return f"{value / 1000:.3g} s"
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def _compact(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k" if value < 1_000_000 else f"{value / 1_000_000:.1f}M"
    return f"{value:,.0f}"


def _nice_at_least(value: float) -> int:
    """The smallest 1, 2, 5 × 10^k that is at least ``value``."""
    exponent = 10 ** math.floor(math.log10(max(value, 1)))
    for step in (1, 2, 5, 10):
        if step * exponent >= value:
            return int(step * exponent)
    return int(10 * exponent)


def _nice_ticks(start: float, end: float, count: int) -> list[int]:
    """Round values from ``start`` up to at least ``end`` (or just short of it), about ``count`` of them."""
    step = _nice_at_least((end - start) / max(1, count))
    first = math.ceil(start / step) * step
    ticks = list(range(int(first), int(end) + step, step))
    return [t for t in ticks if t <= end] or [int(first)]


_CSS = """
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d2330;
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Liberation Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 20px 40px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:16px;margin:0 0 12px}h3{font-size:14px;margin:20px 0 6px}
.sub{color:#5c6577;margin:0 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;margin:18px 0}
.card{background:#fff;border:1px solid #e1e4ea;border-left:4px solid #adb5bd;border-radius:8px;padding:10px 14px}
.card.ok{border-left-color:#69db7c}.card.error{border-left-color:#ff8787}.card.invalid{border-left-color:#ffd43b}
.card .label{color:#5c6577;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .n{font-size:26px;font-weight:600;font-variant-numeric:tabular-nums}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:16px 20px;margin:16px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:8px 24px}
figure{margin:0 0 12px}figcaption{font-weight:600;margin:0 0 6px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #edf0f3;vertical-align:top}
thead th{color:#5c6577;font-weight:600;border-bottom:1px solid #d5d9e0}
table.kv{align-self:start}table.kv th{color:#5c6577;font-weight:500;width:40%}
table.narrow{width:auto;min-width:60%}table.narrow th,table.narrow td{padding:5px 18px}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ok,td.pass{color:#2b8a3e}td.error,td.fail{color:#c92a2a}td.invalid{color:#e67700}td.none{color:#868e96}
.why{color:#5c6577}
.err{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;word-break:break-word}
svg{display:block;max-width:100%;height:auto}
svg text{font-size:11px;fill:#5c6577}svg text.title{font-size:12px;fill:#343a40}
svg text.name{font-size:12px;fill:#1d2330}
svg .grid{stroke:#e9ecef}svg .axis{stroke:#868e96}svg .whisker{stroke:#1d2330;stroke-width:1.5;fill:none}
.legend{display:flex;gap:16px;font-size:12px;color:#5c6577;margin:0 0 4px}
.legend .key{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
"""
