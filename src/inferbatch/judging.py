"""LLM-as-judge (SPEC §8.44): ask a model whether an answer meets a rubric, as a structured answer.

    answer ─▶ Judge.request(item, content, rubric, vote) ─▶ dispatch.send (the run's limiter, budget, retries,
              cache; the judge schema re-asked as any structured answer)  ─▶ vote_of(result)
    votes  ─▶ Judge.verdicts(votes) ─▶ the ``judge`` column's entries, and the failures they add

A vote is one judge answer (``--judge-repeat K`` asks K, each a separate cached sample). Votes are kept
by key ``"<rubric>:<vote>"`` in a plain dict, so a row's votes go to the checkpoint as they arrive and a
rerun after a crash asks only for the ones missing (``Judge.missing``). A verdict holds when more than
half of the votes that succeeded hold (``pass`` true and ``score >= threshold``): a tie fails.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from inferbatch.evaluation import RUBRIC, Assertion
from inferbatch.results import JUDGE_PENDING, Result, Status
from inferbatch.shaping import Request, TemplateValues, with_instruction
from inferbatch.structured import response_format_for, schema_expectation, schema_instruction

SCHEMA_NAME = "judge_verdict"
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pass": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    },
    "required": ["pass", "score", "reason"],
    "additionalProperties": False,
}
SYSTEM = (
    "You are a careful, impartial grader. Read the rubric and the answer, then judge whether the answer meets "
    "the rubric. Reply with JSON only: pass (true or false), score (a number from 0 to 1: how well the answer "
    "meets the rubric) and reason (one or two sentences)."
)
MAX_TOKENS = 1024  # a verdict is a few dozen tokens; the cap keeps the budget's reservation small
FAILED, ERROR, PENDING = RUBRIC, f"{RUBRIC}:error", JUDGE_PENDING
_EXPECTATION = schema_expectation(JUDGE_SCHEMA)
_USAGE = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens")


def rubric_fields(rubric: str) -> tuple[str, ...]:
    """The names a rubric template uses (``output`` among them); ValueError for a template that cannot be filled."""
    names: list[str] = []
    for _, name, _, _ in string.Formatter().parse(rubric):
        if name is not None:
            base = name.split(".")[0].split("[")[0]
            if not base or base.isdigit() or any(c in base for c in "\"' \t\n{"):
                raise ValueError(f"{{{name}}} is not a column name: {{output}} or {{column}}")
            if base not in names:
                names.append(base)
    return tuple(names)


def vote_key(rubric: int, vote: int) -> str:
    return f"{rubric}:{vote}"


@dataclass(frozen=True, slots=True)
class Judge:
    """The run's rubrics and how to ask about them."""

    rubrics: tuple[Assertion, ...]
    repeat: int = 1
    default_model: str | None = None  # the run's model; None: the answer's own request model
    schema_mode: str = "api"

    @classmethod
    def of(cls, assertions: tuple[Assertion, ...], repeat: int, model: str | None, schema_mode: str) -> Judge | None:
        rubrics = tuple(a for a in assertions if a.type == RUBRIC)
        return cls(rubrics, repeat, model, schema_mode) if rubrics else None

    @property
    def columns(self) -> set[str]:
        """The row columns the rubrics use (what planning keeps of each row for them)."""
        return {f for r in self.rubrics for f in rubric_fields(r.rubric or "") if f != "output"}

    def models(self) -> set[str | None]:
        """The judge models the configuration names (the answer's model is the fallback)."""
        return {r.judge_model or self.default_model for r in self.rubrics}

    def missing(self, votes: Mapping[str, Any]) -> list[tuple[int, int]]:
        """(rubric, vote) pairs still to ask: never asked, or cut off by a stop (``resend``)."""
        return [
            (r, k)
            for r in range(len(self.rubrics))
            for k in range(self.repeat)
            if (vote := votes.get(vote_key(r, k))) is None or vote.get("resend")
        ]

    def request(self, item: Request, content: str | None, rubric: int, vote: int) -> Request | str:
        """The judge request for one vote on ``item``'s answer, or why none can be made (a missing column)."""
        assertion = self.rubrics[rubric]
        template = assertion.rubric or ""
        fields = rubric_fields(template)
        values: dict[str, Any] = dict(item.expect or {})
        absent = [f for f in fields if f != "output" and f not in values]
        if absent:
            return f"the rubric needs column(s) {', '.join(absent)} which the row lacks"
        values["output"] = content or ""
        try:
            text = template.format_map(TemplateValues(values))
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as exc:
            return f"the rubric could not be filled ({exc})"
        if "output" not in fields:  # a rubric that only states criteria: the answer follows it
            text = f"{text}\n\nThe answer to judge:\n<answer>\n{content or ''}\n</answer>"
        model = self.model_for(rubric, item)
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": False}
        response_format = response_format_for(SCHEMA_NAME, JUDGE_SCHEMA, self.schema_mode)
        if response_format is None:  # --schema-mode prompt: the schema stated in the system message
            body["messages"] = with_instruction(messages, schema_instruction(JUDGE_SCHEMA))
        else:
            if response_format["type"] == "json_schema":  # every key required, no others: strict mode's rules
                response_format["json_schema"]["strict"] = True
            body["response_format"] = response_format
        return Request(
            item.id,
            item.index,
            item.line,
            body,
            {},
            structure=_EXPECTATION,
            run_format=True,
            slot=item.slot,
            variant=item.variant,
            sample=item.sample * self.repeat + vote,  # each vote (of each answer sample) its own cached sample
        )

    def model_for(self, rubric: int, item: Request) -> str | None:
        model = self.rubrics[rubric].judge_model or self.default_model or item.body.get("model")
        return model if isinstance(model, str) else None

    def verdicts(self, votes: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """The ``judge`` column's entries (one per rubric, in job order) and the failures they add."""
        entries, failures = [], []
        for number, rubric in enumerate(self.rubrics):
            found = [votes.get(vote_key(number, k)) for k in range(self.repeat)]
            entry = _verdict(rubric, [v for v in found if v is not None], pending=any(_unsettled(v) for v in found))
            entry["model"] = entry["model"] or rubric.judge_model or self.default_model
            entries.append(entry)
            if entry.get("pending"):
                failures.append(PENDING)
            elif entry["error"] is not None:
                failures.append(ERROR)
            elif not entry["holds"]:
                failures.append(FAILED)
        return entries, list(dict.fromkeys(failures))


def _unsettled(vote: Mapping[str, Any] | None) -> bool:
    return vote is None or bool(vote.get("resend"))


def _verdict(rubric: Assertion, votes: list[Mapping[str, Any]], *, pending: bool) -> dict[str, Any]:
    usage = {key: sum(int(v.get(key) or 0) for v in votes) for key in _USAGE}
    good = [v for v in votes if v.get("error") is None and not v.get("resend")]
    models = [v.get("model") for v in votes if v.get("model")]
    entry: dict[str, Any] = {
        "name": rubric.name,
        "pass": None,
        "score": None,
        "reason": None,
        "holds": False,
        "threshold": rubric.threshold,
        "model": models[0] if models else None,
        **usage,
        "cached": bool(votes) and all(v.get("cached") for v in votes),
        "error": None,
        "votes": len(good),
        "agreement": None,
    }
    if pending:
        entry.update(reason="not judged yet: the run stopped first; the next run asks the judge", pending=True)
        return entry
    if not good:
        errors = [str(v.get("error")) for v in votes if v.get("error")]
        entry.update(reason=errors[0] if errors else "no verdict", error=errors[0] if errors else "no verdict")
        return entry
    holding = [bool(v["pass"]) and float(v["score"]) >= rubric.threshold for v in good]
    holds = sum(holding) * 2 > len(good)
    entry.update(
        {
            "pass": sum(bool(v["pass"]) for v in good) * 2 > len(good),
            "score": round(sum(float(v["score"]) for v in good) / len(good), 4),
            "reason": next(v["reason"] for v, h in zip(good, holding, strict=True) if h == holds),
            "holds": holds,
            "agreement": round(max(sum(holding), len(good) - sum(holding)) / len(good), 4) if len(good) > 1 else None,
        }
    )
    return entry


def vote_of(result: Result, model: str | None, earlier: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One vote from the judge's answer (``dispatch.send``'s result). ``earlier``: a vote a stop cut off,
    whose paid tokens this one carries on."""
    vote: dict[str, Any] = {
        "model": result.model or model,
        "requests": result.attempts,
        "prompt_tokens": result.prompt_tokens or 0,
        "completion_tokens": result.completion_tokens or 0,
        "cached_tokens": result.cached_tokens or 0,
        "cached": result.cached,
    }
    if earlier is not None and earlier.get("resend"):
        for key in _USAGE:
            vote[key] += int(earlier.get(key) or 0)
        vote["cached"] = False
    if result.resend:
        vote["resend"] = True  # cut off between re-asks: paid, asked again by the next run
    elif result.status is Status.OK and result.parsed is not None:
        verdict = orjson.loads(result.parsed)
        vote.update({"pass": verdict["pass"], "score": verdict["score"], "reason": verdict["reason"], "error": None})
    else:
        vote["error"] = f"judge: {result.error or 'no verdict'}"
    return vote


def problem_vote(problem: str, model: str | None) -> dict[str, Any]:
    """A vote that could not be asked for (the rubric cannot be filled for this row): nothing was sent."""
    return {
        "model": model,
        "requests": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "cached": False,
        "error": f"judge: {problem}",
    }
