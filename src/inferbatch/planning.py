"""What a run will send, worked out before anything is sent: shared by ``run``, ``validate`` and the progress total.

cfg ─▶ check_columns (exit 2 for input that cannot run at all)
    ─▶ work_items: every (row, variant, sample), shaped, with its checkpoint slot
    ─▶ prime: the first row read now (a missing model is exit 2 before any request)
cfg ─▶ expected_results: how many results a whole run writes (the progress total)
cfg ─▶ estimate: rows, prompt tokens and the completion tokens allowed, per model (``validate``)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from inferbatch.checkpoint import SlotLayout
from inferbatch.config import RunConfig, missing_model_error
from inferbatch.errors import InputError
from inferbatch.evaluation import Variant
from inferbatch.judging import Judge
from inferbatch.pricing import Pricing, published_limits
from inferbatch.shaping import Invalid, Request, Shaper, estimate_prompt_tokens, shard_of
from inferbatch.sources import Row, column_names, count_rows, input_has_ids, read_rows, survey


def make_shaper(cfg: RunConfig, variant: Variant | None = None) -> Shaper:
    return Shaper(
        model=(variant and variant.model) or cfg.model,
        params={**cfg.params, **((variant and variant.params) or {})},
        system=(variant and variant.system) or cfg.system,
        template=(variant and variant.template) or cfg.template,
        id_column=cfg.id_column,
        keep_columns=cfg.keep_columns,
        location="row" if cfg.input.lower().endswith(".parquet") else "line",
        schema=(cfg.answer_schema.name, cfg.answer_schema.schema) if cfg.answer_schema is not None else None,
        schema_mode=cfg.schema_mode,
    )


def slot_layout(cfg: RunConfig) -> SlotLayout:
    return SlotLayout(tuple(v.name for v in cfg.variants) or ("",), cfg.repeat)


def chosen_variants(cfg: RunConfig) -> int:
    """How many variants this run sends (1 for a plain run)."""
    return len(cfg.selected_variants) or len(cfg.variants) or 1


def work_items(cfg: RunConfig, rows: Iterator[Row]) -> Iterator[Request | Invalid]:
    """Every (row, variant, sample) to run, row by row, each with its slot in the checkpoint."""
    layout = slot_layout(cfg)
    variants: list[Variant | None] = list(cfg.variants) or [None]
    shapers = [make_shaper(cfg, v) for v in variants]
    has_ids = input_has_ids(cfg.input, cfg.id_column)  # SPEC §8.30: named by id or by position, for every row
    for shaper in shapers:
        shaper.has_ids = has_ids
    chosen = [i for i, v in enumerate(variants) if not cfg.selected_variants or (v and v.name in cfg.selected_variants)]
    # The row's values the assertions compare with, and the columns the judge's rubrics fill in (SPEC §8.44).
    columns = sorted({a.column for a in cfg.assertions if a.column} | judge_columns(cfg))
    for row in rows:
        if cfg.limit is not None and row.index >= cfg.limit:
            return
        if cfg.shard.count > 1 and (
            shard_of(shapers[0].row_id(row.data, row.index, row.error), cfg.shard.count) != cfg.shard.index
        ):
            continue
        expect = {c: row.data[c] for c in columns if c in row.data} if columns and row.data is not None else None
        for position in chosen:
            item = shapers[position].shape(row.index, row.line, row.data, row.error)
            variant = variants[position]
            name = variant.name if variant is not None else None
            for sample in range(cfg.repeat):
                work = dataclasses.replace(item) if cfg.repeat > 1 else item
                work.slot = layout.slot(row.index, position, sample)
                work.variant, work.sample, work.expect = name, sample, expect
                yield work


def judge(cfg: RunConfig) -> Judge | None:
    """The run's LLM judge (SPEC §8.44), or None without an llm-rubric assertion."""
    return Judge.of(cfg.assertions, cfg.judge_repeat, cfg.model, cfg.schema_mode)


def judge_columns(cfg: RunConfig) -> set[str]:
    found = judge(cfg)
    return found.columns if found is not None else set()


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
        if item.no_model:
            raise missing_model_error()
    return itertools.chain(head, items)


def plan(cfg: RunConfig) -> Iterator[Request | Invalid]:
    """``check_columns``, then the primed work items: what ``run_batch`` sends."""
    check_columns(cfg)
    return prime(cfg, work_items(cfg, read_rows(cfg.input)))


def expected_results(cfg: RunConfig) -> int | None:
    """How many results the whole run writes (rows × variants × repeats), or None when it is not known
    without reading the input twice (stdin, or a shard, whose rows are known only by hashing their ids)."""
    if cfg.shard.count > 1:
        return None
    rows = count_rows(cfg.input)
    if rows is None:
        return None
    if cfg.limit is not None:
        rows = min(rows, cfg.limit)
    return rows * chosen_variants(cfg) * cfg.repeat


@dataclass(slots=True)
class ModelEstimate:
    """Rows, estimated prompt tokens and the completion tokens allowed (``max_tokens``), for one model."""

    rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.rows += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def merge(self, other: ModelEstimate) -> None:
        self.rows += other.rows
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def cost(self, model: str, pricing: Pricing) -> float | None:
        return pricing.cost(model, self.prompt_tokens, self.completion_tokens)

    def figures(self, model: str, pricing: Pricing) -> dict[str, Any]:
        """The estimate line's fields: tokens, cost, and the least time Heroku's published limits allow."""
        cost = self.cost(model, pricing)
        rpm, tpm = published_limits(model)
        figures: dict[str, Any] = {
            "rows": self.rows,
            "prompt_tokens": self.prompt_tokens,
            "max_completion_tokens": self.completion_tokens,
            "cost_usd": f"{cost:.2f}" if cost is not None else "unknown",
        }
        if rpm or tpm:
            minutes = max(
                self.rows / rpm if rpm else 0.0, (self.prompt_tokens + self.completion_tokens) / tpm if tpm else 0.0
            )
            figures.update(limit_rpm=rpm, limit_tpm=tpm, minutes_at_limit=round(minutes, 1))
        return figures


@dataclass(slots=True)
class Estimate:
    """What ``validate`` reports: the invalid items (the first reasons kept), and per-model figures for the rest."""

    invalid: int = 0
    reasons: list[str] = field(default_factory=list)
    by_model: dict[str, ModelEstimate] = field(default_factory=dict)

    @property
    def total(self) -> ModelEstimate:
        total = ModelEstimate()
        for figures in self.by_model.values():
            total.merge(figures)
        return total

    def unpriced(self, pricing: Pricing) -> list[str]:
        return sorted(model for model in self.by_model if pricing.cost(model, 0, 0) is None)

    def cost(self, pricing: Pricing) -> float | None:
        """The estimated cost in USD, or None if some model has no price."""
        if self.unpriced(pricing):
            return None
        return sum(e.cost(m, pricing) or 0.0 for m, e in self.by_model.items())


def estimate(cfg: RunConfig, *, reasons: int = 10) -> Estimate:
    """Shape every item of the run as ``run`` would, and add up what it would send; sends nothing.

    Keeps the first ``reasons`` invalid items' reasons. Rows without their own model count under
    ``cfg.model``, so give one (``validate`` passes a placeholder)."""
    check_columns(cfg)
    result = Estimate()
    for item in work_items(cfg, read_rows(cfg.input)):
        if isinstance(item, Invalid):
            result.invalid += 1
            if len(result.reasons) < reasons:
                result.reasons.append(item.reason)
            continue
        figures = result.by_model.setdefault(str(item.body.get("model")), ModelEstimate())
        figures.add(
            estimate_prompt_tokens(item.body),
            item.body.get("max_tokens") or item.body.get("max_completion_tokens") or 0,
        )
    return result
