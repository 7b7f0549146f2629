"""Offline evaluation (SPEC §3, §8.2-8.3, §8.23; README "Offline evaluation"): assertions, Wilson intervals,
variants × rows × --repeat, resume after kill -9, the response cache, --fail-under, the checkpoint's guard,
the shipped jobs/eval.toml, and `report` on an evaluation output. The simulator is the real server."""

from __future__ import annotations

import json
import math
import shutil
import signal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from conftest import connection_env, invoke, read_jsonl, run_process, wait_for_lines, write_jsonl
from inferbatch.errors import ConfigError
from inferbatch.evaluation import Assertion, check, wilson

REPO = Path(__file__).resolve().parent.parent

# SPEC §3, in this order (§8.14); evaluation runs add these, kept columns come last.
BASE_COLUMNS = [
    "id",
    "index",
    "status",
    "status_code",
    "content",
    "finish_reason",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "attempts",
    "latency_ms",
    "error",
    "tool_calls",
    "request_id",
    "cached_tokens",
    "reasoning_tokens",
]
EVAL_COLUMNS = ["variant", "sample", "passed", "failures", "cached"]


# ---- helpers ----------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the plain text used here
    raise TypeError(value)


def write_job(
    path: Path,
    *,
    variants: list[dict[str, Any]],
    asserts: list[dict[str, Any]] = (),  # type: ignore[assignment]
    **top: Any,
) -> Path:
    """A job file: top-level keys, then [[variants]] (with [variants.params]) and [[assert]] tables."""
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for variant in variants:
        lines.append("\n[[variants]]")
        params = variant.get("params")
        for key, value in variant.items():
            if key != "params":
                lines.append(f"{key} = {toml_value(value)}")
        if params:
            lines.append("[variants.params]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in params.items())
    for table in asserts:
        lines.append("\n[[assert]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(runner: CliRunner, args: list[str], env: dict[str, str] | None = None) -> Result:
    result = invoke(runner, ["run", *args], env=env)
    assert "Traceback" not in result.output
    return result


def triples(rows: list[dict[str, Any]]) -> list[tuple[Any, Any, Any]]:
    return [(r["variant"], r["index"], r["sample"]) for r in rows]


def expected_triples(variants: list[str], n: int, repeat: int) -> list[tuple[str, int, int]]:
    return [(v, i, s) for v in variants for i in range(n) for s in range(repeat)]


def ok_record(
    content: str | None, latency_ms: float | None = 120.0, completion_tokens: int | None = 7
) -> dict[str, Any]:
    return {"status": "ok", "content": content, "latency_ms": latency_ms, "completion_tokens": completion_tokens}


def holds(definition: dict[str, Any], record: dict[str, Any], row: dict[str, Any] | None = None) -> bool:
    assertion = Assertion.from_table(definition, 1)
    return check((assertion,), record, row) == []


def variant_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("summary_variant ")]


def table_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    end = next(i for i, line in enumerate(lines) if line.startswith("variants disagree"))
    return lines[start : end + 1]


# ---- 1. assertions ------------------------------------------------------------------------------

JSON_CONTENT = '{"answer": 42, "items": [{"name": "first"}, {"name": "second"}]}'


@pytest.mark.parametrize(
    ("definition", "record", "row", "expected"),
    [
        # equals: whitespace around the content is ignored, anything else is not
        ({"type": "equals", "value": "Paris"}, ok_record("  Paris\n"), None, True),
        ({"type": "equals", "value": "Paris"}, ok_record("Paris, France"), None, False),
        ({"type": "equals", "column": "expected"}, ok_record("Lyon"), {"expected": "Lyon"}, True),
        ({"type": "equals", "column": "expected"}, ok_record("Lyon"), {"expected": "Nice"}, False),
        # contains: case matters
        ({"type": "contains", "value": "Paris"}, ok_record("it is Paris."), None, True),
        ({"type": "contains", "value": "Paris"}, ok_record("it is paris."), None, False),
        ({"type": "contains", "column": "expected"}, ok_record("the answer is Au"), {"expected": "Au"}, True),
        ({"type": "contains", "column": "expected"}, ok_record("the answer is Ag"), {"expected": "Au"}, False),
        # icontains: case does not
        ({"type": "icontains", "value": "PARIS"}, ok_record("it is paris."), None, True),
        ({"type": "icontains", "value": "PARIS"}, ok_record("it is Lyon."), None, False),
        ({"type": "icontains", "column": "expected"}, ok_record("JUPITER!"), {"expected": "jupiter"}, True),
        ({"type": "icontains", "column": "expected"}, ok_record("MARS!"), {"expected": "jupiter"}, False),
        # regex: re.search
        ({"type": "regex", "value": r"\b\d{3}\b"}, ok_record("code 144 ok"), None, True),
        ({"type": "regex", "value": r"\b\d{3}\b"}, ok_record("code 12 ok"), None, False),
        ({"type": "regex", "column": "pattern"}, ok_record("answer: B"), {"pattern": "^answer: [A-D]$"}, True),
        ({"type": "regex", "column": "pattern"}, ok_record("answer: E"), {"pattern": "^answer: [A-D]$"}, False),
        # is-json: no value needed
        ({"type": "is-json"}, ok_record('{"a": [1, 2]}'), None, True),
        ({"type": "is-json"}, ok_record("{'a': 1}"), None, False),
        ({"type": "is-json"}, ok_record(None), None, False),
        # json-path: a column value "42" equals a JSON 42; nested paths with list indexes
        (
            {"type": "json-path", "path": "$.answer", "column": "expected"},
            ok_record(JSON_CONTENT),
            {"expected": "42"},
            True,
        ),
        (
            {"type": "json-path", "path": "$.answer", "column": "expected"},
            ok_record(JSON_CONTENT),
            {"expected": "43"},
            False,
        ),
        ({"type": "json-path", "path": "$.answer", "value": 42}, ok_record(JSON_CONTENT), None, True),
        ({"type": "json-path", "path": "$.answer", "value": 41}, ok_record(JSON_CONTENT), None, False),
        ({"type": "json-path", "path": "$.items[1].name", "value": "second"}, ok_record(JSON_CONTENT), None, True),
        ({"type": "json-path", "path": "$.items[1].name", "value": "first"}, ok_record(JSON_CONTENT), None, False),
        (
            {"type": "json-path", "path": "$.items[1].name", "column": "expected"},
            ok_record(JSON_CONTENT),
            {"expected": "second"},
            True,
        ),
        ({"type": "json-path", "path": "$['items'][0]['name']", "value": "first"}, ok_record(JSON_CONTENT), None, True),
        ({"type": "json-path", "path": "$.items[5].name", "value": "second"}, ok_record(JSON_CONTENT), None, False),
        ({"type": "json-path", "path": "$.answer", "value": 42}, ok_record("not json"), None, False),
        # max-latency-ms
        ({"type": "max-latency-ms", "value": 200}, ok_record("x", latency_ms=120.0), None, True),
        ({"type": "max-latency-ms", "value": 100}, ok_record("x", latency_ms=120.0), None, False),
        ({"type": "max-latency-ms", "column": "budget"}, ok_record("x", latency_ms=120.0), {"budget": 150}, True),
        ({"type": "max-latency-ms", "column": "budget"}, ok_record("x", latency_ms=120.0), {"budget": "119"}, False),
        # max-tokens
        ({"type": "max-tokens", "value": 7}, ok_record("x", completion_tokens=7), None, True),
        ({"type": "max-tokens", "value": 6}, ok_record("x", completion_tokens=7), None, False),
        ({"type": "max-tokens", "column": "limit"}, ok_record("x", completion_tokens=7), {"limit": 10}, True),
        ({"type": "max-tokens", "column": "limit"}, ok_record("x", completion_tokens=7), {"limit": 3}, False),
    ],
)
def test_each_assertion_type_passes_and_fails(
    definition: dict[str, Any], record: dict[str, Any], row: dict[str, Any] | None, expected: bool
) -> None:
    assert holds(definition, record, row) is expected
    failures = check((Assertion.from_table(definition, 1),), record, row)
    assert failures == ([] if expected else [definition["type"]])


def test_check_lists_every_failed_type_in_order_and_a_non_ok_row_fails_status_only() -> None:
    assertions = tuple(
        Assertion.from_table(t, n)
        for n, t in enumerate(
            [
                {"type": "contains", "value": "Paris"},
                {"type": "is-json"},
                {"type": "max-tokens", "value": 1},
                {"type": "regex", "value": "^sim"},
            ],
            1,
        )
    )
    assert check(assertions, ok_record("sim says Paris", completion_tokens=5), None) == ["is-json", "max-tokens"]
    assert check(assertions, ok_record('"Paris"', completion_tokens=1), None) == ["regex"]
    for status in ("error", "invalid"):
        record = {"status": status, "content": "sim Paris", "latency_ms": None, "completion_tokens": None}
        assert check(assertions, record, None) == ["status"]
        assert check((), record, None) == ["status"]
    assert check((), ok_record("anything"), None) == []


@pytest.mark.parametrize("content", ['{"code": 42}', '{"code": "42"}'])
def test_json_path_column_text_matches_a_json_number_or_the_same_json_string(content: str) -> None:
    """An input column is text: "42" must match the JSON number 42 and, all the more, the JSON string "42"."""
    definition = {"type": "json-path", "path": "$.code", "column": "expected"}
    assert holds(definition, ok_record(content), {"expected": "42"})
    assert not holds(definition, ok_record(content), {"expected": "43"})


@pytest.mark.parametrize(
    ("definition", "fragment"),
    [
        ({"type": "startswith", "value": "x"}, "type must be one of"),
        ({"value": "x"}, "type must be one of"),
        ({"type": "contains"}, "needs `value"),
        ({"type": "equals"}, "needs `value"),
        ({"type": "max-tokens"}, "needs `value"),
        ({"type": "regex", "value": "(unclosed"}, "bad regex"),
        ({"type": "json-path", "value": 1}, "path"),
        ({"type": "contains", "value": "x", "expected": "y"}, "unknown key"),
    ],
)
def test_bad_assertion_definitions_are_usage_errors(definition: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        Assertion.from_table(definition, 3)


def test_bad_assertion_in_a_job_file_is_exit_2_and_nothing_sent(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "q": "x"}])
    for n, bad in enumerate(
        [
            {"type": "nope", "value": "x"},
            {"type": "regex", "value": "[z-a]"},
            {"type": "json-path", "value": 1},
            {"type": "contains"},
        ]
    ):
        job = write_job(
            tmp_path / f"bad{n}.toml",
            input=str(source),
            output=str(tmp_path / f"out{n}.jsonl"),
            variants=[{"name": "v", "template": "{q}"}],
            asserts=[bad],
        )
        result = run(runner, ["--job", str(job)], env=connection_env(server))
        assert result.exit_code == 2, result.stderr
        assert "[[assert]]" in result.stderr
        assert not (tmp_path / f"out{n}.jsonl").exists()
    assert server.stats.requests == 0


# ---- 2. Wilson interval -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("passed", "total", "low", "high"),
    [
        (20, 20, 0.8389, 1.0),
        (16, 20, 0.5840, 0.9193),
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (8, 10, 0.4902, 0.9433),
        (1, 1, 0.2065, 1.0),
        (50, 100, 0.4038, 0.5962),
        (0, 0, 0.0, 1.0),
    ],
)
def test_wilson_interval_matches_known_values(passed: int, total: int, low: float, high: float) -> None:
    got_low, got_high = wilson(passed, total)
    assert got_low == pytest.approx(low, abs=5e-4)
    assert got_high == pytest.approx(high, abs=5e-4)
    assert 0.0 <= got_low <= got_high <= 1.0


def test_wilson_with_no_rows_is_the_whole_interval() -> None:
    """Nothing judged, nothing known: [0, 1], not a pass rate pinned at 0 (the HTML report and the summary agree)."""
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, -1) == (0.0, 1.0)


@pytest.mark.parametrize("total", [1, 10, 1_000, 1_000_000])
def test_wilson_when_all_pass_reaches_1_and_when_none_pass_starts_at_0(total: int) -> None:
    all_low, all_high = wilson(total, total)
    none_low, none_high = wilson(0, total)
    assert all_high == 1.0 and none_low == 0.0
    assert not math.isnan(all_low) and not math.isnan(none_high)
    assert all_low == pytest.approx(1.0 - none_high)  # the interval is symmetric under passed <-> failed
    assert 0.0 < all_low < 1.0 and 0.0 < none_high < 1.0


def test_wilson_8_of_10_at_95_percent() -> None:
    """The textbook value: 8/10 at 95 % is about (0.490, 0.943); a wider z gives a wider interval."""
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low_99, high_99 = wilson(8, 10, z=2.5758)
    assert low_99 < 0.4902 and high_99 > 0.9433


# ---- 3. variants × rows × repeats --------------------------------------------------------------------


def eval_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "q": f"topic {i}", "expected": f"topic {i}"} for i in range(n)]


def two_variant_job(path: Path, source: Path, output: Path | None = None, **top: Any) -> Path:
    return write_job(
        path,
        input=str(source),
        **({"output": str(output)} if output is not None else {}),
        **top,
        variants=[{"name": "plain", "template": "Q: {q}"}, {"name": "polite", "template": "Please answer: {q}"}],
        asserts=[{"type": "icontains", "column": "expected"}],
    )


def test_variants_times_rows_times_repeats_in_order_with_typed_columns(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", eval_rows(7))
    job = two_variant_job(tmp_path / "job.toml", source, keep_columns="expected")
    out = tmp_path / "out.jsonl"

    result = run(runner, ["--job", str(job), "--repeat", "3", "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 42
    assert triples(rows) == expected_triples(["plain", "polite"], 7, 3)
    assert server.stats.requests == 42
    for row in rows:
        assert row["id"] == f"r{row['index']}"
        prefix = "Q: " if row["variant"] == "plain" else "Please answer: "
        assert row["content"].startswith(f"sim reply to: {prefix}topic {row['index']} ")  # the variant's template
        assert row["status"] == "ok"
        assert row["passed"] is True and row["failures"] == "[]" and row["cached"] is False
        assert type(row["sample"]) is int
        # §3 columns in order, the evaluation columns, the kept column last
        keys = list(row)
        assert keys[: len(BASE_COLUMNS)] == BASE_COLUMNS
        assert set(keys[len(BASE_COLUMNS) : -1]) == set(EVAL_COLUMNS)
        assert keys[-1] == "expected" and row["expected"] == f"topic {row['index']}"

    parquet_out = tmp_path / "out.parquet"
    result = run(runner, ["--job", str(job), "--repeat", "3", "-o", str(parquet_out)], env=connection_env(server))
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(parquet_out)
    schema = table.schema
    assert schema.field("passed").type == pa.bool_()
    assert schema.field("cached").type == pa.bool_()
    assert schema.field("sample").type == pa.int64()
    assert schema.field("failures").type == pa.string()
    assert schema.field("variant").type == pa.string()
    prows = table.to_pylist()
    assert triples(prows) == expected_triples(["plain", "polite"], 7, 3)
    assert [r["content"] for r in prows] == [r["content"] for r in rows]  # deterministic replies, same order
    assert all(r["passed"] is True and r["failures"] == "[]" and r["cached"] is False for r in prows)


def test_variant_flag_runs_only_that_variant(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", eval_rows(7))
    job = two_variant_job(tmp_path / "job.toml", source)
    out = tmp_path / "out.jsonl"

    result = run(
        runner, ["--job", str(job), "--repeat", "3", "--variant", "polite", "-o", str(out)], env=connection_env(server)
    )

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert triples(rows) == expected_triples(["polite"], 7, 3)
    assert all(r["content"].startswith("sim reply to: Please answer: ") for r in rows)
    assert server.stats.requests == 21

    unknown = run(
        runner, ["--job", str(job), "--variant", "nope", "-o", str(tmp_path / "x.jsonl")], env=connection_env(server)
    )
    assert unknown.exit_code == 2
    assert "nope" in unknown.stderr
    assert server.stats.requests == 21


def test_failures_column_lists_failed_types_and_error_rows_fail_status(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    server = sim()
    rows = [
        {"id": f"r{i}", "q": f"city {i}" + (" [[sim:400]]" if i == 2 else ""), "expected": f"city {i}"}
        for i in range(4)
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    job = write_job(
        tmp_path / "job.toml",
        input=str(source),
        output=str(out),
        variants=[{"name": "only", "template": "{q}"}],
        asserts=[
            {"type": "icontains", "column": "expected"},
            {"type": "regex", "value": "^sim reply to: city \\d"},
            {"type": "max-tokens", "value": 1},  # every sim reply is longer: fails
            {"type": "max-latency-ms", "value": 60000},  # holds
            {"type": "is-json"},  # the sim replies plain text: fails
        ],
    )

    result = run(runner, ["--job", str(job)], env=connection_env(server))

    assert result.exit_code == 1, result.stderr  # the 400 row is an error
    got = {r["id"]: r for r in read_jsonl(out)}
    for i in (0, 1, 3):
        assert got[f"r{i}"]["status"] == "ok"
        assert json.loads(got[f"r{i}"]["failures"]) == ["max-tokens", "is-json"]
        assert got[f"r{i}"]["passed"] is False
    assert got["r2"]["status"] == "error" and got["r2"]["status_code"] == 400
    assert json.loads(got["r2"]["failures"]) == ["status"]
    assert got["r2"]["passed"] is False


# ---- 4. resume after kill -9 ---------------------------------------------------------------------------


def test_kill_9_then_rerun_gives_every_variant_row_sample_exactly_once(tmp_path: Path, sim_process: Any) -> None:
    n, repeat, concurrency = 300, 2, 8
    total = 2 * n * repeat
    source = write_jsonl(tmp_path / "in.jsonl", eval_rows(n))
    out = tmp_path / "out.jsonl"
    job = two_variant_job(tmp_path / "job.toml", source, out)
    server = sim_process("--latency-ms", "30")
    args = ["--job", str(job), "--repeat", str(repeat), "-c", str(concurrency), "-q"]
    results_log = tmp_path / "out.jsonl.checkpoint" / "results.jsonl"

    proc = run_process(args, server.url)
    try:
        wait_for_lines(results_log, 200)
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = results_log.read_bytes().count(b"\n")
    assert 200 <= done_at_kill < total  # killed in the middle
    assert not out.exists()

    final = run_process(args, server.url)
    _, stderr = final.communicate(timeout=60)
    assert final.returncode == 0, stderr

    rows = read_jsonl(out)
    assert triples(rows) == expected_triples(["plain", "polite"], n, repeat)
    assert [r["id"] for r in rows] == [f"r{i}" for _ in range(2) for i in range(n) for _ in range(repeat)]
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        prefix = "Q: " if row["variant"] == "plain" else "Please answer: "
        assert row["content"].startswith(f"sim reply to: {prefix}topic {row['index']} ")
        assert row["passed"] is True
    assert server.stats()["requests"] <= total + concurrency  # only the in-flight ones at the kill, again
    # Complete: the logs are gone, the completion record stays so a rerun pays for nothing (SPEC §8.2).
    assert sorted(p.name for p in (tmp_path / "out.jsonl.checkpoint").iterdir()) == ["lock", "manifest.json"]
    sent = server.stats()["requests"]
    again = run_process(args, server.url)
    _, stderr = again.communicate(timeout=60)
    assert again.returncode == 0, stderr
    assert "already complete" in stderr
    assert server.stats()["requests"] == sent


# ---- 5. the response cache ------------------------------------------------------------------------------


def test_identical_rerun_is_answered_from_the_cache(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", eval_rows(5))
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    job = two_variant_job(tmp_path / "job.toml", source, out, cache=str(tmp_path / "cache"), summary_json=str(summary))
    env = connection_env(server)

    first = run(runner, ["--job", str(job)], env=env)
    assert first.exit_code == 0, first.stderr
    assert server.stats.requests == 10
    first_rows = read_jsonl(out)
    assert [r["cached"] for r in first_rows] == [False] * 10

    for extra in (["--restart"], ["-o", str(tmp_path / "again.jsonl")]):
        before = server.stats.requests
        again = run(runner, ["--job", str(job), *extra], env=env)
        assert again.exit_code == 0, again.stderr
        assert server.stats.requests == before  # not one request
        rows = read_jsonl(tmp_path / "again.jsonl" if "-o" in extra else out)
        assert triples(rows) == triples(first_rows)
        assert [r["cached"] for r in rows] == [True] * 10
        assert [r["content"] for r in rows] == [r["content"] for r in first_rows]
        assert all(r["status"] == "ok" and r["passed"] is True for r in rows)  # re-scored
        data = json.loads(summary.read_text())
        assert data["rows"] == 10
        assert data["cached"] == 10
        assert {name: v["cached"] for name, v in data["variants"].items()} == {"plain": 5, "polite": 5}


def test_cache_misses_only_for_changed_template_param_or_new_sample(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", eval_rows(4))
    cache = str(tmp_path / "cache")
    env = connection_env(server)
    base_variants = [{"name": "a", "template": "A {q}"}, {"name": "b", "template": "B {q}"}]

    def go(name: str, variants: list[dict[str, Any]], *extra: str) -> tuple[int, list[dict[str, Any]]]:
        out = tmp_path / f"{name}.jsonl"
        job = write_job(
            tmp_path / f"{name}.toml",
            input=str(source),
            output=str(out),
            cache=cache,
            variants=variants,
            asserts=[{"type": "icontains", "column": "expected"}],
        )
        before = server.stats.requests
        result = run(runner, ["--job", str(job), *extra], env=env)
        assert result.exit_code == 0, result.stderr
        return server.stats.requests - before, read_jsonl(out)

    sent, rows = go("base", base_variants)
    assert sent == 8 and not any(r["cached"] for r in rows)

    # b's template changed: b's rows miss, a's hit
    sent, rows = go("template", [base_variants[0], {"name": "b", "template": "B2 {q}"}])
    assert sent == 4
    assert [r["cached"] for r in rows] == [True] * 4 + [False] * 4
    assert all(r["content"].startswith("sim reply to: B2 ") for r in rows if r["variant"] == "b")

    # a's temperature changed: a's rows miss, b's (base template) hit
    sent, rows = go("param", [{**base_variants[0], "params": {"temperature": 0.7}}, base_variants[1]])
    assert sent == 4
    assert [r["cached"] for r in rows] == [False] * 4 + [True] * 4

    # a job-wide parameter changes every request
    sent, rows = go("global", base_variants, "--param", "max_tokens=300")
    assert sent == 8
    assert not any(r["cached"] for r in rows)

    # --repeat 2: sample 0 was cached by the base run, sample 1 is another key
    sent, rows = go("repeat", base_variants, "--repeat", "2")
    assert sent == 8
    assert triples(rows) == expected_triples(["a", "b"], 4, 2)
    assert [r["cached"] for r in rows] == [s == 0 for (_, _, s) in triples(rows)]


def test_cache_stores_only_successful_responses(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = eval_rows(5)
    rows[3]["q"] += " [[sim:400]]"
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    cache = str(tmp_path / "cache")
    env = connection_env(server)

    first = run(
        runner,
        ["--job", str(two_variant_job(tmp_path / "j1.toml", source, tmp_path / "o1.jsonl", cache=cache))],
        env=env,
    )
    assert first.exit_code == 1, first.stderr
    assert server.stats.requests == 10
    assert [r["status"] for r in read_jsonl(tmp_path / "o1.jsonl")].count("error") == 2

    second = run(
        runner,
        ["--job", str(two_variant_job(tmp_path / "j2.toml", source, tmp_path / "o2.jsonl", cache=cache))],
        env=env,
    )
    assert second.exit_code == 1, second.stderr
    assert server.stats.requests == 12  # only the two 400 rows (one per variant) were sent again
    for row in read_jsonl(tmp_path / "o2.jsonl"):
        if row["index"] == 3:
            assert row["status"] == "error" and row["cached"] is False and row["failures"] == '["status"]'
        else:
            assert row["status"] == "ok" and row["cached"] is True


def test_repeats_are_cached_one_by_one(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", eval_rows(3))
    out = tmp_path / "out.jsonl"
    job = two_variant_job(tmp_path / "job.toml", source, out, cache=str(tmp_path / "cache"), repeat=2)
    env = connection_env(server)

    first = run(runner, ["--job", str(job)], env=env)
    assert first.exit_code == 0, first.stderr
    assert server.stats.requests == 12  # every sample is its own request
    assert not any(r["cached"] for r in read_jsonl(out))

    second = run(runner, ["--job", str(job), "--restart"], env=env)
    assert second.exit_code == 0, second.stderr
    assert server.stats.requests == 12
    rows = read_jsonl(out)
    assert triples(rows) == expected_triples(["plain", "polite"], 3, 2)
    assert all(r["cached"] for r in rows)


# ---- 6. --fail-under and the summary's variants --------------------------------------------------------


def fail_under_setup(tmp_path: Path) -> tuple[Path, Path]:
    # "plain" asks the question only: rows 8 and 9 expect a word that is not in it (8/10 pass);
    # "hint" puts the expected word into the prompt, so the echo always holds it (10/10).
    rows = [{"id": f"r{i}", "q": f"item {i} word{i}", "expected": f"word{i}" if i < 8 else "absent"} for i in range(10)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    job = write_job(
        tmp_path / "job.toml",
        input=str(source),
        variants=[{"name": "plain", "template": "{q}"}, {"name": "hint", "template": "{q} ({expected})"}],
        asserts=[{"type": "icontains", "column": "expected"}],
    )
    return source, job


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ([], 0),
        (["--fail-under", "0.9"], 1),
        (["--fail-under", "0.8"], 0),  # 8/10 is not below 0.8
        (["--fail-under", "0.5"], 0),
        (["--fail-under", "0.9", "--variant", "hint"], 0),  # only the selected variant counts
        (["--fail-under", "1", "--variant", "plain"], 1),
    ],
)
def test_fail_under_sets_the_exit_code(
    runner: CliRunner, sim: Any, tmp_path: Path, extra: list[str], code: int
) -> None:
    server = sim()
    _, job = fail_under_setup(tmp_path)
    out = tmp_path / "out.jsonl"

    result = run(runner, ["--job", str(job), "-o", str(out), *extra], env=connection_env(server))

    assert result.exit_code == code, result.stderr
    rows = read_jsonl(out)
    assert {r["status"] for r in rows} == {"ok"}
    if "--fail-under" not in extra:
        assert not all(r["passed"] for r in rows)  # failed assertions, yet exit 0
        assert "fail-under" not in result.stderr
    if code == 1:
        assert any("fail-under" in line and "plain" in line for line in result.stderr.splitlines())
    else:
        assert not any("pass rate under" in line for line in result.stderr.splitlines())


def test_summary_json_variants_match_the_output(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    _, job = fail_under_setup(tmp_path)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"

    result = run(
        runner, ["--job", str(job), "-o", str(out), "--summary-json", str(summary)], env=connection_env(server)
    )

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    data = json.loads(summary.read_text())
    assert data["rows"] == len(rows) == 20
    assert set(data["variants"]) == {"plain", "hint"}
    for name, stats in data["variants"].items():
        mine = [r for r in rows if r["variant"] == name]
        passed = sum(r["passed"] for r in mine)
        low, high = wilson(passed, len(mine))
        assert stats["rows"] == len(mine) == 10
        assert stats["passed"] == passed
        assert stats["pass_rate"] == pytest.approx(passed / len(mine))
        assert stats["wilson_low"] == pytest.approx(low, abs=1e-4)
        assert stats["wilson_high"] == pytest.approx(high, abs=1e-4)
        assert stats["prompt_tokens"] == sum(r["prompt_tokens"] for r in mine)
        assert stats["completion_tokens"] == sum(r["completion_tokens"] for r in mine)
    assert data["variants"]["plain"]["passed"] == 8
    assert data["variants"]["plain"]["wilson_low"] == pytest.approx(0.4902, abs=1e-4)
    assert data["variants"]["plain"]["wilson_high"] == pytest.approx(0.9433, abs=1e-4)
    assert data["variants"]["hint"]["passed"] == 10
    assert data["variants"]["plain"]["assertion_pass_rates"] == {"icontains": 0.8}
    assert data["disagreements"] == 2
    assert data["disagreeing_ids"] == ["r8", "r9"]


# ---- 7. the checkpoint guards the evaluation's definition -------------------------------------------------


def test_changed_assertion_variants_or_repeat_refuse_the_checkpoint(
    runner: CliRunner, sim: Any, tmp_path: Path
) -> None:
    server = sim()
    rows = eval_rows(5)
    rows[2]["q"] += " [[sim:400]]"  # an error row: the checkpoint stays
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    env = connection_env(server)
    variants = [{"name": "plain", "template": "Q: {q}"}, {"name": "polite", "template": "Please answer: {q}"}]
    asserts = [{"type": "icontains", "column": "expected"}]

    def job(name: str, variants: list[dict[str, Any]], asserts: list[dict[str, Any]]) -> Path:
        return write_job(
            tmp_path / f"{name}.toml", input=str(source), output=str(out), variants=variants, asserts=asserts
        )

    first = run(runner, ["--job", str(job("base", variants, asserts))], env=env)
    assert first.exit_code == 1, first.stderr
    assert (tmp_path / "out.jsonl.checkpoint").exists()
    sent = server.stats.requests
    assert sent == 10

    # The same definition resumes (nothing left to send).
    same = run(runner, ["--job", str(job("base", variants, asserts))], env=env)
    assert same.exit_code == 1, same.stderr
    assert server.stats.requests == sent

    changes = {
        "assert_value": (variants, [{"type": "icontains", "column": "q"}]),
        "assert_added": (variants, [*asserts, {"type": "max-tokens", "value": 100}]),
        "template": ([variants[0], {"name": "polite", "template": "Kindly answer: {q}"}], asserts),
        "variant_added": ([*variants, {"name": "third", "template": "{q}?"}], asserts),
        "variant_removed": ([variants[0]], asserts),
    }
    for name, (v, a) in changes.items():
        result = run(runner, ["--job", str(job(name, v, a))], env=env)
        assert result.exit_code == 2, (name, result.stderr)
        assert "--restart" in result.stderr, name
        assert server.stats.requests == sent, name

    repeat = run(runner, ["--job", str(job("base", variants, asserts)), "--repeat", "2"], env=env)
    assert repeat.exit_code == 2, repeat.stderr
    assert "--restart" in repeat.stderr
    assert server.stats.requests == sent

    # --restart takes the new definition
    restarted = run(runner, ["--job", str(job("assert_value", *changes["assert_value"])), "--restart"], env=env)
    assert restarted.exit_code == 1, restarted.stderr
    assert server.stats.requests == sent + 10
    assert len(read_jsonl(out)) == 10


# ---- 8. the shipped jobs/eval.toml --------------------------------------------------------------------


def test_shipped_eval_job_runs_on_the_simulator(runner: CliRunner, tmp_path: Path) -> None:
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    shutil.copytree(REPO / "sample_data", tmp_path / "sample_data")

    result = run(runner, ["--job", str(tmp_path / "jobs" / "eval.toml"), "--simulate"])

    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    header = [line for line in lines if line.startswith("variant ")]
    assert len(header) == 1 and "pass rate" in header[0]
    assert any(line.startswith("terse ") for line in lines)
    assert any(line.startswith("guided ") for line in lines)
    rows = read_jsonl(tmp_path / "out" / "eval.jsonl")
    questions = sum(1 for line in (tmp_path / "sample_data" / "eval.jsonl").read_text().splitlines() if line.strip())
    assert triples(rows) == expected_triples(["terse", "guided"], questions, 1)
    assert {r["status"] for r in rows} == {"ok"}
    data = json.loads((tmp_path / "out" / "eval.summary.json").read_text())
    assert set(data["variants"]) == {"terse", "guided"}


# ---- 9. report on an evaluation output ----------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_report_prints_the_same_variant_lines_and_table_as_the_run(
    runner: CliRunner, sim: Any, tmp_path: Path, ext: str
) -> None:
    server = sim()
    _, job = fail_under_setup(tmp_path)
    out = tmp_path / f"out.{ext}"

    result = run(runner, ["--job", str(job), "-o", str(out), "--repeat", "2"], env=connection_env(server))
    assert result.exit_code == 0, result.stderr
    run_variants = variant_lines(result.stderr)
    assert [line.split()[1] for line in run_variants] == ["name=plain", "name=hint"]
    assert "rows=20 passed=16 " in run_variants[0]
    assert "rows=20 passed=20 " in run_variants[1]

    report = invoke(runner, ["report", str(out)])

    assert report.exit_code == 0, report.stderr
    assert variant_lines(report.stdout) == run_variants
    assert table_lines(report.stdout) == table_lines(result.stderr)
    table = table_lines(report.stdout)
    assert table[0].startswith("variant ")
    assert any(line.split()[:3] == ["plain", "20", "16"] for line in table)
    assert any(line.split()[:3] == ["hint", "20", "20"] for line in table)
    assert table[-1].startswith("variants disagree on 4 row(s)")


def test_csv_dataset_with_templates_only_in_variants_runs(sim, runner, tmp_path: Path) -> None:
    server = sim()
    (tmp_path / "data.csv").write_text("id,question,expected\nq1,Capital of France? Paris or Rome,Paris\n")
    job = tmp_path / "job.toml"
    job.write_text(
        'input = "data.csv"\noutput = "out.jsonl"\n[[variants]]\nname = "v"\ntemplate = "{question}"\n'
        '[[assert]]\ntype = "contains"\ncolumn = "expected"\n'
    )
    validated = invoke(runner, ["validate", "--job", str(job)])
    assert validated.exit_code == 0, validated.stderr
    result = invoke(runner, ["run", "--job", str(job)], env=connection_env(server))
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(tmp_path / "out.jsonl")[0]["passed"] is True
