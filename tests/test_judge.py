"""LLM-as-judge end to end (SPEC §8.44, with §8.2, §8.3, §8.8, §8.42, §8.43): `[[assert]] type = "llm-rubric"`.

Every test runs `inferbatch run` through the CLI (in-process with click's runner, or as a real subprocess for
kill -9) against the real simulator on loopback, and checks exact values: the judge entries of the `judge`
column, `passed`/`failures`, exit codes, the summary's judge block and the simulator's counters (`requests`
counts every chat request, `judge_requests` those asking for a verdict, so answers = requests - judge_requests).

The simulator's plain answer is "sim reply to: <first 80 chars of the last user message> [digest]": a directive
in a row's prompt reaches the judge through `{output}`; a directive written in the rubric reaches only the
judge's request.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from conftest import connection_env, invoke, read_jsonl, run_process, wait_for_stats, write_jsonl
from inferbatch import simulator

REPO = Path(__file__).resolve().parent.parent

# The keys of one judge entry (the contract's list), in no particular order.
ENTRY_KEYS = {
    "name",
    "pass",
    "score",
    "reason",
    "holds",
    "threshold",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cached",
    "error",
    "votes",
    "agreement",
}
MEETS = "sim judge: the answer meets the rubric"
FAILS = "sim judge: the answer fails the rubric"


# ---- helpers ----------------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the plain text used here
    raise TypeError(value)


def write_job(path: Path, asserts: list[dict[str, Any]], **top: Any) -> Path:
    """A job file: top-level keys, then one [[assert]] table per definition."""
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for table in asserts:
        lines.append("\n[[assert]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rubric(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "llm-rubric", "rubric": text, **extra}


def prompts(texts: list[str], prefix: str = "r", **columns: Any) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "prompt": text, **columns} for i, text in enumerate(texts)]


def sim_reply(prompt: str) -> str:
    """The simulator's exact answer to a prompt row (one user message, no system message)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"user\x00{prompt}\x00".encode())
    return f"sim reply to: {prompt[:80]} [{digest.hexdigest()}]"


def run(runner: CliRunner, args: list[str], env: dict[str, str] | None = None) -> Result:
    result = invoke(runner, ["run", *args], env=env)
    assert "Traceback" not in result.output
    return result


def judge_of(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The `judge` column: JSON text (a string), or null."""
    value = row["judge"]
    if value is None:
        return None
    assert isinstance(value, str), value
    entries = json.loads(value)
    assert isinstance(entries, list)
    for entry in entries:
        assert set(entry) == ENTRY_KEYS, sorted(entry)
    return entries


def verdict(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without its token counts (checked to be whole numbers, the answered ones positive)."""
    for key in ("prompt_tokens", "completion_tokens", "cached_tokens"):
        assert type(entry[key]) is int and entry[key] >= 0, (key, entry)
    if entry["votes"]:
        assert entry["prompt_tokens"] > 0 and entry["completion_tokens"] > 0, entry
    return {k: v for k, v in entry.items() if k not in ("prompt_tokens", "completion_tokens", "cached_tokens")}


def expected_verdict(
    name: str,
    *,
    passed: bool | None = True,
    score: float | None = 1.0,
    holds: bool = True,
    threshold: float = 0.5,
    model: str = "sim-model",
    requests: int = 1,
    cached: bool = False,
    votes: int = 1,
    agreement: float | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "pass": passed,
        "score": score,
        "reason": None if passed is None else (MEETS if passed else FAILS),
        "holds": holds,
        "threshold": threshold,
        "model": model,
        "requests": requests,
        "cached": cached,
        "error": None,
        "votes": votes,
        "agreement": agreement,
    }


def failures(row: dict[str, Any]) -> list[str]:
    assert isinstance(row["failures"], str)  # JSON text, like `judge`
    return json.loads(row["failures"])  # type: ignore[no-any-return]


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


def summary_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def answers_sent(server: Any) -> int:
    return int(server.stats.requests - server.stats.judge_requests)


def logfmt_fields(line: str) -> dict[str, str]:
    """The key=value pairs of one logfmt line (a quoted value unquoted)."""
    return {k: v[1:-1] if v.startswith('"') else v for k, v in re.findall(r'(\w+)=("[^"]*"|\S*)', line)}


def judge_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("summary_judge ")]
    assert len(lines) == 1, text
    return lines[0]


# ---- 1. pass and fail by score and threshold ----------------------------------------------------------------


def test_verdict_holds_when_pass_and_score_reaches_the_threshold(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["alpha [[sim:judge-score=0.4]]", "beta [[sim:judge-fail]]", "gamma", "delta [[sim:judge-score=0.5]]"]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    env = connection_env(server)
    # holds for the rows whose prompt (hence answer) carries a directive, fails for gamma
    marker = {"type": "icontains", "value": "[[sim:"}

    # threshold 0.5, default name "rubric-2" (the second [[assert]] table)
    strict = write_job(tmp_path / "strict.toml", [marker, rubric("Is this a good answer: {output}?", threshold=0.5)])
    out = tmp_path / "strict.jsonl"
    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(strict)], env=env)

    assert result.exit_code == 0, result.stderr  # every row ok; failed assertions keep exit 0 (no --fail-under)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"]
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert [r["content"] for r in rows] == [sim_reply(t) for t in texts]
    assert [r["passed"] for r in rows] == [False, False, False, True]
    assert [failures(r) for r in rows] == [["llm-rubric"], ["llm-rubric"], ["icontains"], []]
    assert [[verdict(e) for e in judge_of(r) or []] for r in rows] == [
        [expected_verdict("rubric-2", score=0.4, holds=False)],  # pass true, but 0.4 < 0.5
        [expected_verdict("rubric-2", passed=False, score=0.0, holds=False)],
        [expected_verdict("rubric-2")],  # holds; the row fails on icontains only
        [expected_verdict("rubric-2", score=0.5)],  # score == threshold holds (>=)
    ]
    assert server.stats.judge_requests == 4
    assert answers_sent(server) == 4

    # threshold 0.3: the 0.4 score now holds; judge-fail still fails (pass false whatever the score)
    lenient = write_job(
        tmp_path / "lenient.toml",
        [marker, rubric("Is this a good answer: {output}?", threshold=0.3, name="lenient")],
    )
    out = tmp_path / "lenient.jsonl"
    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(lenient)], env=env)

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert [r["passed"] for r in rows] == [True, False, False, True]
    assert [failures(r) for r in rows] == [[], ["llm-rubric"], ["icontains"], []]
    assert [[verdict(e) for e in judge_of(r) or []] for r in rows] == [
        [expected_verdict("lenient", score=0.4, threshold=0.3)],
        [expected_verdict("lenient", passed=False, score=0.0, holds=False, threshold=0.3)],
        [expected_verdict("lenient", threshold=0.3)],
        [expected_verdict("lenient", score=0.5, threshold=0.3)],
    ]

    # threshold 0: a score of 0.0 reaches it, yet pass false fails
    zero = write_job(tmp_path / "zero.toml", [rubric("Judge {output}", threshold=0.0, name="zero")])
    out = tmp_path / "zero.jsonl"
    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(zero)], env=env)

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert [r["passed"] for r in rows] == [True, False, True, True]
    assert [failures(r) for r in rows] == [[], ["llm-rubric"], [], []]
    assert verdict((judge_of(rows[1]) or [])[0]) == expected_verdict(
        "zero", passed=False, score=0.0, holds=False, threshold=0.0
    )


# ---- 2. judge failures: garbage answers and HTTP errors ------------------------------------------------------


def test_unparseable_judge_answers_are_reasked_then_rubric_error_and_the_row_stays_ok(
    sim, runner, tmp_path: Path
) -> None:
    server = sim()
    texts = ["first question", "second question"]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    job = write_job(tmp_path / "job.toml", [rubric("Grade {output} [[sim:not-json]]", name="garbage")])

    result = run(
        runner,
        [
            str(source),
            "-o",
            str(out),
            "-c",
            "4",
            "--job",
            str(job),
            "--schema-retries",
            "1",
            "--summary-json",
            str(summary),
        ],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr  # every row ended ok; a failed assertion is no failed row
    assert server.stats.judge_requests == 2 * (1 + 1)  # asked once, re-asked --schema-retries 1 time, per row
    assert server.stats.structured_requests == 4  # only the judge asks for JSON
    assert answers_sent(server) == 2
    rows = read_jsonl(out)
    for row, text in zip(rows, texts):
        assert row["status"] == "ok" and row["status_code"] == 200 and row["error"] is None
        assert row["content"] == sim_reply(text)  # the answer is kept
        assert row["passed"] is False
        assert failures(row) == ["llm-rubric:error"]
        (entry,) = judge_of(row) or []
        assert entry["name"] == "garbage"
        assert entry["pass"] is None and entry["score"] is None and entry["holds"] is False
        assert isinstance(entry["error"], str) and entry["error"]
        assert entry["votes"] == 0 and entry["requests"] == 2 and entry["cached"] is False
    data = summary_of(summary)
    assert data["ok"] == 2 and data["error"] == 0
    assert data["attempts"] == 2  # the answers' attempts only
    judge = data["judge"]
    assert (judge["requests"], judge["verdicts"], judge["passed"], judge["errors"]) == (4, 2, 0, 2)


def test_judge_http_errors_after_retries_are_rubric_error_and_the_row_stays_ok(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["first question", "second question", "third question"]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    out = tmp_path / "out.jsonl"
    job = write_job(tmp_path / "job.toml", [rubric("Grade {output} [[sim:500]]", name="down")])

    result = run(
        runner,
        [str(source), "-o", str(out), "-c", "4", "--job", str(job), "--max-attempts", "2"],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr  # rows all ok: exit 0 whatever the assertions say
    assert server.stats.judge_requests == 3 * 2  # --max-attempts 2 per judge request
    assert server.stats.by_status == {200: 3, 500: 6}
    assert answers_sent(server) == 3
    for row, text in zip(read_jsonl(out), texts):
        assert row["status"] == "ok" and row["status_code"] == 200 and row["error"] is None
        assert row["attempts"] == 1
        assert row["content"] == sim_reply(text)
        assert row["passed"] is False
        assert failures(row) == ["llm-rubric:error"]
        (entry,) = judge_of(row) or []
        assert entry["pass"] is None and entry["score"] is None and entry["holds"] is False
        assert isinstance(entry["error"], str) and entry["error"]
        assert entry["votes"] == 0 and entry["requests"] == 2


# ---- 3. the judge's model --------------------------------------------------------------------------------


def test_judge_model_is_the_rubrics_else_the_runs_model(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts(["one", "two"]))
    out = tmp_path / "out.jsonl"
    job = write_job(
        tmp_path / "job.toml",
        [rubric("Own model: {output}", name="own", judge_model="judge-x"), rubric("Run model: {output}", name="run")],
    )

    result = run(
        runner,
        [str(source), "-o", str(out), "-c", "4", "--job", str(job), "--model", "answer-model"],
        env=connection_env(server),  # INFERENCE_MODEL_ID=sim-model: the flag wins
    )

    assert result.exit_code == 0, result.stderr
    assert server.stats.judge_models == {"judge-x": 2, "answer-model": 2}
    assert server.stats.judge_requests == 4
    for row in read_jsonl(out):
        assert row["model"] == "answer-model"
        assert [(e["name"], e["model"], e["holds"]) for e in judge_of(row) or []] == [
            ("own", "judge-x", True),
            ("run", "answer-model", True),
        ]


def test_judge_model_without_a_run_model_is_each_rows_model(sim, runner, tmp_path: Path) -> None:
    server = sim()
    rows = [{**row, "model": f"row-model-{i}"} for i, row in enumerate(prompts(["one", "two"]))]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output}", name="q")])
    env = {"INFERENCE_URL": server.url, "INFERENCE_KEY": "test-key"}  # no INFERENCE_MODEL_ID, no --model

    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(job)], env=env)

    assert result.exit_code == 0, result.stderr
    assert server.stats.judge_models == {"row-model-0": 1, "row-model-1": 1}
    assert [[e["model"] for e in judge_of(r) or []] for r in read_jsonl(out)] == [["row-model-0"], ["row-model-1"]]


# ---- 4. kill -9 while judge calls hang --------------------------------------------------------------------


def test_kill_9_while_judging_then_rerun_judges_without_resending_answers(tmp_path: Path, sim_process: Any) -> None:
    n = 3
    texts = [f"question {i}" for i in range(n)]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    out = tmp_path / "out.jsonl"
    # hangx1: the first attempt of each judge body never answers; the second attempt of the same body does
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output} [[sim:hangx1]]", name="slow")])
    server = sim_process()
    # -c above the row count: hanging judge calls never keep an answer from being sent.
    # --timeout long enough that no hung attempt times out before the kill.
    args = [str(source), "-o", str(out), "--job", str(job), "-c", str(n + 1), "--timeout", "60", "-q"]

    proc = run_process(args, server.url)
    try:
        at_kill = wait_for_stats(server, judge_requests=n, hung=n, in_flight=n)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert at_kill["requests"] - at_kill["judge_requests"] == n  # every answer was sent before the kill
    assert at_kill["judge_requests"] == n
    assert not out.exists()

    rerun = run_process(args, server.url)
    try:
        _, stderr = rerun.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        rerun.kill()
        rerun.communicate(timeout=10)
        raise AssertionError(f"the rerun did not finish: {server.stats()}") from None
    assert rerun.returncode == 0, stderr

    after = server.stats()
    assert after["requests"] - after["judge_requests"] == n  # not one answer sent again
    assert after["judge_requests"] == 2 * n  # each judge body asked once more ...
    assert after["hung"] == n  # ... the same body, whose second attempt answers
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(n)]  # each row once, in input order
    for row, text in zip(rows, texts):
        assert row["status"] == "ok"
        assert row["content"] == sim_reply(text)
        assert row["passed"] is True and failures(row) == []
        (entry,) = judge_of(row) or []
        assert (entry["name"], entry["pass"], entry["score"], entry["holds"]) == ("slow", True, 1.0, True)
        assert entry["error"] is None and entry["votes"] == 1


# ---- 5. the response cache judges again without a request -------------------------------------------------


def test_restart_with_the_cache_rejudges_with_zero_requests(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["alpha [[sim:judge-score=0.4]]", "beta [[sim:judge-fail]]", "gamma"]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output}", name="q"), rubric("Again {output}", name="r")])
    args = [
        str(source),
        "-o",
        str(out),
        "-c",
        "4",
        "--job",
        str(job),
        "--cache",
        str(tmp_path / "cache"),
        "--summary-json",
        str(summary),
    ]
    env = connection_env(server)

    first = run(runner, args, env=env)
    assert first.exit_code == 0, first.stderr
    assert (server.stats.requests, server.stats.judge_requests) == (3 + 6, 6)
    first_rows = read_jsonl(out)
    first_judge = summary_of(summary)["judge"]
    assert (first_judge["requests"], first_judge["verdicts"], first_judge["cached"]) == (6, 6, 0)

    server.stats.reset()
    second = run(runner, [*args, "--restart"], env=env)

    assert second.exit_code == 0, second.stderr
    assert server.stats.requests == 0  # answers and verdicts all from the cache
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    assert [r["cached"] for r in rows] == [True, True, True]
    assert [r["content"] for r in rows] == [r["content"] for r in first_rows]
    assert [r["passed"] for r in rows] == [r["passed"] for r in first_rows] == [False, False, True]
    assert [r["failures"] for r in rows] == [r["failures"] for r in first_rows]
    for row, before in zip(rows, first_rows):
        entries, earlier = judge_of(row) or [], judge_of(before) or []
        assert len(entries) == len(earlier) == 2
        for entry, old in zip(entries, earlier):
            same = ("name", "pass", "score", "reason", "holds", "threshold", "model", "error", "votes")
            assert {k: entry[k] for k in same} == {k: old[k] for k in same}
            assert (entry["cached"], entry["requests"]) == (True, 0)
            assert (old["cached"], old["requests"]) == (False, 1)
    judge = summary_of(summary)["judge"]
    assert judge["requests"] == 0
    assert judge["verdicts"] == 6
    assert judge["cached"] == 6
    assert judge["passed"] == first_judge["passed"] == 2  # gamma, twice
    assert judge["errors"] == 0

    # Each vote is its own cached sample: with --judge-repeat 3, vote 0 comes from the cache, votes 1 and 2 are
    # asked (like --repeat's samples); the answers all come from the cache.
    server.stats.reset()
    third = run(runner, [*args, "--restart", "--judge-repeat", "3"], env=env)

    assert third.exit_code == 0, third.stderr
    assert server.stats.requests == server.stats.judge_requests == 6 * 2
    for row in read_jsonl(out):
        for entry in judge_of(row) or []:
            assert (entry["votes"], entry["requests"], entry["cached"]) == (3, 2, False)
    judge = summary_of(summary)["judge"]
    assert (judge["requests"], judge["verdicts"], judge["cached"]) == (12, 6, 0)


# ---- 6. the judge's bill, apart from the answers' ------------------------------------------------------------


def test_summary_bills_the_judge_apart_from_the_answers(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["first question", "second question", "third question [[sim:judge-fail]]"]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output}", name="q")])
    price_in, price_out = 1000.0, 2000.0  # USD per million tokens: a few cents a row, well above rounding

    result = run(
        runner,
        [
            str(source),
            "-o",
            str(out),
            "-c",
            "4",
            "--job",
            str(job),
            "--price-in",
            str(price_in),
            "--price-out",
            str(price_out),
            "--summary-json",
            str(summary),
        ],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    entries = [e for r in rows for e in judge_of(r) or []]
    assert len(entries) == 3
    data = summary_of(summary)

    answer_prompt = sum(r["prompt_tokens"] for r in rows)
    answer_completion = sum(r["completion_tokens"] for r in rows)
    assert data["prompt_tokens"] == answer_prompt
    assert data["completion_tokens"] == answer_completion
    assert data["attempts"] == 3 and data["retries"] == 0  # the answers' attempts, not the judge's
    answer_cost = (answer_prompt * price_in + answer_completion * price_out) / 1e6
    assert data["cost_usd"] == pytest.approx(answer_cost, abs=1e-4)  # the judge is not in it

    judge = data["judge"]
    judge_prompt = sum(e["prompt_tokens"] for e in entries)
    judge_completion = sum(e["completion_tokens"] for e in entries)
    assert judge_prompt > 0 and judge_completion > 0
    assert judge["requests"] == server.stats.judge_requests == 3
    assert judge["prompt_tokens"] == judge_prompt
    assert judge["completion_tokens"] == judge_completion
    assert judge["cached_tokens"] == 0
    judge_cost = (judge_prompt * price_in + judge_completion * price_out) / 1e6
    assert judge["cost_usd"] > 0
    assert judge["cost_usd"] == pytest.approx(judge_cost, abs=1e-4)
    assert (judge["verdicts"], judge["passed"], judge["errors"], judge["cached"]) == (3, 2, 0, 0)
    assert data["total_cost_usd"] == pytest.approx(data["cost_usd"] + judge["cost_usd"], abs=1e-4)
    assert data["total_cost_usd"] == pytest.approx(answer_cost + judge_cost, abs=2e-4)

    (variant,) = data["variants"].values()
    mine = variant["judge"]
    assert (mine["verdicts"], mine["passed"], mine["errors"], mine["requests"]) == (3, 2, 0, 3)
    assert (mine["prompt_tokens"], mine["completion_tokens"]) == (judge_prompt, judge_completion)
    assert mine["pass_rate"] == pytest.approx(2 / 3, abs=1e-4)  # rounded like the other rates
    assert variant["prompt_tokens"] == answer_prompt  # the variant's answer figures stay the answers'

    line = judge_line(result.stderr)
    fields = logfmt_fields(line)
    assert {
        k: fields.get(k) for k in ("requests", "prompt", "completion", "verdicts", "passed", "errors", "cached")
    } == {
        "requests": "3",
        "prompt": str(judge_prompt),
        "completion": str(judge_completion),
        "verdicts": "3",
        "passed": "2",
        "errors": "0",
        "cached": "0",
    }
    assert float(fields["cost_usd"]) == pytest.approx(judge["cost_usd"], abs=1e-4)

    reported = invoke(runner, ["report", str(out), "--price-in", str(price_in), "--price-out", str(price_out)])
    assert reported.exit_code == 0, reported.stderr
    assert judge_line(reported.stdout + reported.stderr) == line  # `report` prints the same from the file


# ---- 7. budget caps stop judge calls too --------------------------------------------------------------------


def test_budget_cap_stops_judge_calls_and_a_raised_cap_judges_without_resending(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["q0", "q1", "q2"]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    out = tmp_path / "out.jsonl"
    # A long rubric: one judge request is estimated at 1,000+ prompt tokens, far over the cap, while the three
    # short answers (estimated at about 45 tokens each with max_tokens=40, billed at about 15) fit under it.
    long_rubric = "Judge {output} carefully. " + "Be strict about every detail of the answer. " * 100
    assert len(long_rubric) > 4000
    job = write_job(tmp_path / "job.toml", [rubric(long_rubric, name="long")])
    args = [str(source), "-o", str(out), "-c", "4", "--job", str(job), "--param", "max_tokens=40"]
    env = connection_env(server)

    first = run(runner, [*args, "--max-total-tokens", "400"], env=env)

    assert first.exit_code == 3, first.stderr  # a budget stop
    assert "--max-total-tokens 400" in first.stderr
    assert answers_sent(server) == 3
    assert server.stats.judge_requests == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    for row, text in zip(rows, texts):
        assert row["status"] == "ok"
        assert row["content"] == sim_reply(text)  # the answer is kept
        assert row["passed"] is False
        assert failures(row) == ["llm-rubric:pending"]

    second = run(runner, [*args, "--max-total-tokens", "100000"], env=env)

    assert second.exit_code == 0, second.stderr
    assert answers_sent(server) == 3  # not one answer sent again
    assert server.stats.judge_requests == 3
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    for row, text in zip(rows, texts):
        assert row["status"] == "ok" and row["content"] == sim_reply(text)
        assert row["passed"] is True and failures(row) == []
        assert [verdict(e) for e in judge_of(row) or []] == [expected_verdict("long")]


# ---- 8. a changed rubric refuses the checkpoint -------------------------------------------------------------


def test_changed_rubric_threshold_or_judge_model_refuses_the_checkpoint_and_restart_runs_it(
    sim, runner, tmp_path: Path
) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts(["one", "two"]))
    out = tmp_path / "out.jsonl"
    env = connection_env(server)
    base = rubric("Judge {output}", name="q")

    def go(name: str, table: dict[str, Any], *extra: str) -> Result:
        job = write_job(tmp_path / f"{name}.toml", [table])
        return run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(job), *extra], env=env)

    first = go("base", base)
    assert first.exit_code == 0, first.stderr
    assert (server.stats.requests, server.stats.judge_requests) == (4, 2)

    same = go("base", base)
    assert same.exit_code == 0, same.stderr
    assert "already complete" in same.stderr
    assert server.stats.requests == 4

    changes = {
        "rubric": rubric("Judge {output} [[sim:judge-fail]]", name="q"),
        "threshold": rubric("Judge {output}", name="q", threshold=0.9),
        "judge_model": rubric("Judge {output}", name="q", judge_model="judge-x"),
    }
    for name, table in changes.items():
        refused = go(name, table)
        assert refused.exit_code == 2, (name, refused.stderr)
        assert "belongs to another run (changed option(s): assert);" in refused.stderr, (name, refused.stderr)
        assert "--restart" in refused.stderr, name
        assert server.stats.requests == 4, name

    repeat = go("base", base, "--judge-repeat", "2")
    assert repeat.exit_code == 2, repeat.stderr
    assert "--restart" in repeat.stderr
    assert server.stats.requests == 4

    restarted = go("rubric", changes["rubric"], "--restart")
    assert restarted.exit_code == 0, restarted.stderr
    assert (server.stats.requests, server.stats.judge_requests) == (8, 4)  # answers and judge calls again
    rows = read_jsonl(out)
    assert len(rows) == 2
    assert [failures(r) for r in rows] == [["llm-rubric"], ["llm-rubric"]]
    assert [[verdict(e) for e in judge_of(r) or []] for r in rows] == [
        [expected_verdict("q", passed=False, score=0.0, holds=False)]
    ] * 2


# ---- 9. --judge-repeat ---------------------------------------------------------------------------------------


def test_judge_repeat_asks_k_times_and_takes_the_majority(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts(["one", "two [[sim:judge-fail]]"]))
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output}", name="a"), rubric("Also {output}", name="b")])
    env = connection_env(server)

    out = tmp_path / "flag.jsonl"
    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(job), "--judge-repeat", "3"], env=env)

    assert result.exit_code == 0, result.stderr
    assert server.stats.judge_requests == 2 * 2 * 3  # rows x rubrics x votes
    assert answers_sent(server) == 2
    rows = read_jsonl(out)
    assert [[verdict(e) for e in judge_of(r) or []] for r in rows] == [
        [
            expected_verdict(name, requests=3, votes=3, agreement=1.0)  # the simulator always agrees with itself
            for name in ("a", "b")
        ],
        [
            expected_verdict(name, passed=False, score=0.0, holds=False, requests=3, votes=3, agreement=1.0)
            for name in ("a", "b")
        ],
    ]
    assert [r["passed"] for r in rows] == [True, False]

    # the job key does the same
    server.stats.reset()
    keyed = write_job(tmp_path / "keyed.toml", [rubric("Judge {output}", name="a")], judge_repeat=3)
    out = tmp_path / "key.jsonl"
    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(keyed)], env=env)
    assert result.exit_code == 0, result.stderr
    assert server.stats.judge_requests == 2 * 3
    assert [[(e["votes"], e["agreement"]) for e in judge_of(r) or []] for r in read_jsonl(out)] == [[(3, 1.0)]] * 2


def test_judge_repeat_below_1_or_without_a_rubric_is_exit_2_and_nothing_sent(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts(["one"]))
    env = connection_env(server)
    judged = write_job(tmp_path / "judged.toml", [rubric("Judge {output}")])
    plain = write_job(tmp_path / "plain.toml", [{"type": "contains", "value": "sim"}])

    for name, job, k in (("zero", judged, "0"), ("negative", judged, "-1"), ("no-rubric", plain, "2")):
        out = tmp_path / f"{name}.jsonl"
        result = run(runner, [str(source), "-o", str(out), "--job", str(job), "--judge-repeat", k], env=env)
        assert result.exit_code == 2, (name, result.stderr)
        assert "No such option" not in result.stderr, result.stderr  # refused for its value, not as unknown
        assert "--judge-repeat" in result.stderr or "judge_repeat" in result.stderr, (name, result.stderr)
        assert not out.exists(), name
    assert server.stats.requests == 0

    # the control: 1 is the default and fine
    out = tmp_path / "one.jsonl"
    result = run(runner, [str(source), "-o", str(out), "--job", str(judged), "--judge-repeat", "1"], env=env)
    assert result.exit_code == 0, result.stderr
    assert (server.stats.requests, server.stats.judge_requests) == (2, 1)


# ---- 10. rows that did not end ok are not judged ---------------------------------------------------------------


def test_error_and_invalid_rows_get_no_judge_and_fail_status(sim, runner, tmp_path: Path) -> None:
    server = sim()
    rows = [*prompts(["fine one", "broken [[sim:500]]", "fine two"]), {"id": "r3", "note": "no prompt, no messages"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output}", name="q")])

    result = run(
        runner,
        [str(source), "-o", str(out), "-c", "4", "--job", str(job), "--max-attempts", "1"],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr  # a row ended error
    got = read_jsonl(out)
    assert [r["status"] for r in got] == ["ok", "error", "ok", "invalid"]
    assert got[1]["status_code"] == 500
    for row in (got[1], got[3]):
        assert row["judge"] is None
        assert failures(row) == ["status"]
        assert row["passed"] is False
    for row in (got[0], got[2]):
        assert [verdict(e) for e in judge_of(row) or []] == [expected_verdict("q")]
        assert failures(row) == [] and row["passed"] is True
    assert server.stats.judge_requests == 2  # the two ok rows only
    assert server.stats.judge_models == {"sim-model": 2}
    assert answers_sent(server) == 3  # the invalid row was never sent


# ---- 11. rubric templates: the row's columns and the answer ------------------------------------------------------


def test_rubric_fills_row_columns_and_a_missing_column_is_that_rows_error(
    sim, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    judged: list[dict[str, Any]] = []
    asks_judge = simulator._asks_judge

    def spy(body: dict[str, Any], answer_format: Any) -> bool:
        found = asks_judge(body, answer_format)
        if found:
            judged.append(body)
        return found

    monkeypatch.setattr(simulator, "_asks_judge", spy)
    server = sim()
    rows = [
        {"id": "a", "prompt": "first", "question": "QA-alpha"},
        {"id": "b", "prompt": "second", "question": "QB-beta [[sim:judge-fail]]"},  # only the column says fail
        {"id": "c", "prompt": "third"},  # no `question` at all
        {"id": "d", "prompt": "fourth", "question": None},  # None shows as ""
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    template = "Does <<{output}>> answer <<{question}>>?"
    job = write_job(
        tmp_path / "job.toml",
        [rubric(template, name="fits"), rubric("Is the answer polite?", name="polite")],  # no {output}
    )

    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(job)], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    got = by_id(read_jsonl(out))
    assert [got[k]["status"] for k in "abcd"] == ["ok"] * 4
    assert [failures(got[k]) for k in "abcd"] == [[], ["llm-rubric"], ["llm-rubric:error"], []]
    assert [got[k]["passed"] for k in "abcd"] == [True, False, False, True]

    entries = {k: judge_of(got[k]) or [] for k in "abcd"}
    assert [[e["name"] for e in entries[k]] for k in "abcd"] == [["fits", "polite"]] * 4
    assert verdict(entries["a"][0]) == expected_verdict("fits")
    assert verdict(entries["b"][0]) == expected_verdict("fits", passed=False, score=0.0, holds=False)
    assert verdict(entries["d"][0]) == expected_verdict("fits")
    missing = entries["c"][0]
    assert (missing["pass"], missing["score"], missing["holds"], missing["votes"]) == (None, None, False, 0)
    assert isinstance(missing["error"], str) and "question" in missing["error"]
    assert [verdict(entries[k][1]) for k in "abcd"] == [expected_verdict("polite")] * 4

    # 3 renderable "fits" rubrics (c's cannot be filled, so it is not asked) and 4 "polite" ones
    assert server.stats.judge_requests == len(judged) == 7
    texts = ["\n".join(simulator._text(m.get("content")) for m in body["messages"]) for body in judged]
    for key, question in (("a", "QA-alpha"), ("b", "QB-beta [[sim:judge-fail]]"), ("d", "")):
        filled = f"Does <<{got[key]['content']}>> answer <<{question}>>?"
        assert sum(filled in text for text in texts) == 1, (key, filled, texts)
    assert not any("{question}" in text or "{output}" in text for text in texts)
    # A rubric without {output} still gets the answer, after the rubric.
    for key in "abcd":
        content = got[key]["content"]
        matching = [t for t in texts if "Is the answer polite?" in t and content in t]
        assert len(matching) == 1, (key, texts)
        assert matching[0].index("Is the answer polite?") < matching[0].index(content)


# ---- 12. Parquet ------------------------------------------------------------------------------------------


def test_parquet_judge_column_is_a_string(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts(["fine", "broken [[sim:500]]"]))
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output}", name="q")])
    env = connection_env(server)

    out = tmp_path / "out.parquet"
    result = run(runner, [str(source), "-o", str(out), "-c", "4", "--job", str(job), "--max-attempts", "1"], env=env)

    assert result.exit_code == 1, result.stderr
    table = pq.read_table(out)
    assert "judge" in table.schema.names
    assert table.schema.field("judge").type == pa.string()
    assert table.schema.field("failures").type == pa.string()
    values = table.column("judge").to_pylist()
    assert values[1] is None
    assert [verdict(e) for e in json.loads(values[0])] == [expected_verdict("q")]

    # every value null: the column keeps its declared type (SPEC §8.14)
    only_error = write_jsonl(tmp_path / "err.jsonl", prompts(["broken [[sim:500]]"]))
    out = tmp_path / "null.parquet"
    result = run(runner, [str(only_error), "-o", str(out), "--job", str(job), "--max-attempts", "1"], env=env)
    assert result.exit_code == 1, result.stderr
    table = pq.read_table(out)
    assert table.schema.field("judge").type == pa.string()
    assert table.column("judge").to_pylist() == [None]


# ---- 13. the sample job ------------------------------------------------------------------------------------


def test_sample_judge_job_runs_on_the_simulator_and_reports(runner, tmp_path: Path) -> None:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    shutil.copytree(REPO / "sample_data", tmp_path / "sample_data")
    job_path = tmp_path / "jobs" / "eval-judge.toml"

    result = run(runner, ["--job", str(job_path), "--simulate"])

    assert job_path.exists(), "jobs/eval-judge.toml is missing"
    job = tomllib.loads(job_path.read_text(encoding="utf-8"))
    rubrics = [t for t in job.get("assert", []) if t.get("type") == "llm-rubric"]
    assert rubrics, "the sample job has no llm-rubric assertion"
    out = (job_path.parent / job["output"]).resolve()
    rows = pq.read_table(out).to_pylist() if out.suffix == ".parquet" else read_jsonl(out)
    assert rows

    # The exit code the SPEC gives this outcome: 1 for a row that did not end ok, or a variant under
    # fail_under; else 0 (failed assertions alone do not change it).
    expected = 0
    if any(r["status"] != "ok" for r in rows):
        expected = 1
    fail_under = job.get("fail_under")
    if fail_under is not None:
        by_variant: dict[Any, list[bool]] = {}
        for r in rows:
            by_variant.setdefault(r.get("variant"), []).append(bool(r["passed"]))
        if any(sum(v) / len(v) < fail_under for v in by_variant.values()):
            expected = 1
    assert result.exit_code == expected, result.stderr

    names = [t.get("name", f"rubric-{n}") for n, t in enumerate(job["assert"], 1) if t.get("type") == "llm-rubric"]
    for row in rows:
        entries = judge_of(row)
        if row["status"] == "ok":
            assert entries is not None, row
            assert [e["name"] for e in entries] == names
        else:
            assert entries is None and failures(row) == ["status"]
    assert "summary_judge " in result.stderr

    html = tmp_path / "report.html"
    reported = invoke(runner, ["report", str(out), "--html", str(html)])
    assert reported.exit_code == 0, reported.stderr
    assert html.exists() and html.stat().st_size > 0


# ---- found in review: the edges of a judged run ----------------------------------------------------------------


def test_a_judge_failing_abort_after_rows_in_a_row_stops_the_run(sim, runner, tmp_path: Path) -> None:
    """A judge that cannot answer (a 404: a judge_model the server does not have) must not cost every answer."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts([f"question {i}" for i in range(40)]))
    out = tmp_path / "out.jsonl"
    job = write_job(tmp_path / "job.toml", [rubric("[[sim:404]] Judge {output}", name="q")])

    result = run(
        runner,
        [str(source), "-o", str(out), "-c", "1", "--job", str(job), "--abort-after", "5", "--max-attempts", "1"],
        env=connection_env(server),
    )

    assert result.exit_code == 3, result.stderr
    assert "the judge failed on 5 rows in a row (last: judge: " in result.stderr
    rows = read_jsonl(out)
    judged = [r for r in rows if failures(r) == ["llm-rubric:error"]]
    assert len(judged) == 5  # -c 1: the stop comes right after the fifth verdict
    assert all(r["status"] == "ok" for r in rows)
    assert answers_sent(server) < 10  # not 40
    manifest = json.loads((tmp_path / "out.jsonl.checkpoint" / "manifest.json").read_text())
    assert "complete" not in manifest  # a stopped run: the next one goes on from here


def test_a_judge_that_recovers_resets_the_count(sim, runner, tmp_path: Path) -> None:
    """Only judge failures in a row count: rows whose judge answered in between reset it."""
    server = sim()
    rows_in = [{"id": f"r{i}", "prompt": f"q{i}", "fail": "[[sim:404]]" if i % 3 else ""} for i in range(12)]
    source = write_jsonl(tmp_path / "in.jsonl", rows_in)
    out = tmp_path / "out.jsonl"
    job = write_job(tmp_path / "job.toml", [rubric("{fail} Judge {output}", name="q")])

    result = run(
        runner,
        [str(source), "-o", str(out), "-c", "1", "--job", str(job), "--abort-after", "3", "--max-attempts", "1"],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr  # never 3 judge failures in a row: two, then one that holds
    rows = read_jsonl(out)
    assert [failures(r) for r in rows] == [[] if i % 3 == 0 else ["llm-rubric:error"] for i in range(12)]


def test_rows_left_pending_are_unfinished_and_out_of_the_pass_rate(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["q0", "q1", "q2", "q3"]
    source = write_jsonl(tmp_path / "in.jsonl", prompts(texts))
    out = tmp_path / "out.jsonl"
    summary_file = tmp_path / "summary.json"
    long_rubric = "Judge {output} carefully. " + "Be strict about every detail of the answer. " * 100
    job = write_job(tmp_path / "job.toml", [{"type": "contains", "value": "sim"}, rubric(long_rubric, name="long")])
    args = [str(source), "-o", str(out), "-c", "4", "--job", str(job), "--param", "max_tokens=40"]

    stopped = run(
        runner, [*args, "--max-total-tokens", "500", "--summary-json", str(summary_file)], env=connection_env(server)
    )

    assert stopped.exit_code == 3, stopped.stderr
    assert [failures(r) for r in read_jsonl(out)] == [["llm-rubric:pending"]] * 4
    summary = json.loads(summary_file.read_text())
    assert summary["rows"] == 4 and summary["unfinished"] == 4  # answered, not judged: not finished
    variant = summary["variants"]["default"]
    assert (variant["rows"], variant["passed"], variant["pending"]) == (0, 0, 4)  # no pass rate from pending rows
    assert variant["assertion_pass_rates"] == {}
    assert summary["judge"]["pending"] == 4 and summary["judge"]["verdicts"] == 0

    resumed = run(runner, [*args, "--summary-json", str(summary_file)], env=connection_env(server))

    assert resumed.exit_code == 0, resumed.stderr
    assert "resume: 4 answered row(s) were waiting for the judge when the last run stopped" in resumed.stderr
    summary = json.loads(summary_file.read_text())
    assert summary["unfinished"] == 0
    variant = summary["variants"]["default"]
    assert (variant["rows"], variant["passed"], variant.get("pending", 0)) == (4, 4, 0)


def test_a_judged_row_takes_two_checkpoint_lines_its_answer_and_its_verdict(sim, runner, tmp_path: Path) -> None:
    """The answer is kept before the judge is asked; the last vote writes the final line at once."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts([f"q{i}" for i in range(5)]))
    out = tmp_path / "out.jsonl"
    job = write_job(tmp_path / "job.toml", [rubric("Judge {output}", name="q")])

    # --limit keeps the checkpoint whole (a pilot), so its lines can be read after the run.
    result = run(runner, [str(source), "-o", str(out), "--job", str(job), "--limit", "3"], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl.checkpoint" / "results.jsonl").read_text().splitlines()]
    by_row: dict[int, list[dict[str, Any]]] = {}
    for line in lines:
        by_row.setdefault(line["index"], []).append(line)
    assert sorted(by_row) == [0, 1, 2]
    for row_lines in by_row.values():
        held, final = row_lines
        assert held["_judge_pending"] is True and held["_votes"] == {}
        assert "_judge_pending" not in final and "_votes" not in final
        assert failures(final) == []


@pytest.mark.parametrize("text", ['Answer with {"pass": true} if {output} is fine', "Judge {0}", "Judge {}"])
def test_a_rubric_with_bare_braces_is_refused_before_anything_is_sent(sim, runner, tmp_path: Path, text: str) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", prompts(["one"]))
    job = write_job(tmp_path / "job.toml", [rubric(text)])

    result = run(
        runner, [str(source), "-o", str(tmp_path / "out.jsonl"), "--job", str(job)], env=connection_env(server)
    )

    assert result.exit_code == 2, result.stderr
    assert "[[assert]] #1 (llm-rubric): the rubric is not a valid template" in result.stderr
    assert "{{ and }}" in result.stderr
    assert server.stats.requests == 0
