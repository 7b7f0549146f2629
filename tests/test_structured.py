"""Structured answers end to end (SPEC §3, §8.42, §8.43): `--schema`, re-asks, modes, token details.

Every test runs `inferbatch run` (or `validate`) through the CLI against the real simulator on loopback and
checks exact values: requests the simulator counted, output rows read back, exit codes and stderr.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from conftest import connection_env, invoke, read_jsonl, write_jsonl
from inferbatch import simulator
from inferbatch.simulator import minimal_instance, mismatching_instance

REPO = Path(__file__).resolve().parents[1]
TICKET_SCHEMA_FILE = REPO / "sample_data" / "ticket.schema.json"
TICKET_SCHEMA: dict[str, Any] = json.loads(TICKET_SCHEMA_FILE.read_text(encoding="utf-8"))
TICKET = minimal_instance(TICKET_SCHEMA)  # what the simulator answers for the ticket schema
# SPEC §3 in order (§8.14), with `parsed` last when the run has a schema.
COLUMNS = [
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


class KnownBug(AssertionError):
    """A product promise checked by these tests (found broken once: re-asks cut off by a stop went uncounted)."""


def bug_check(condition: bool, message: str) -> None:
    if not condition:
        raise KnownBug(message)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def chat(texts: list[str], prefix: str = "r") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "messages": [{"role": "user", "content": t}]} for i, t in enumerate(texts)]


def run(runner: CliRunner, args: list[str], env: dict[str, str] | None = None) -> Result:
    result = invoke(runner, ["run", *args], env=env)
    assert "Traceback" not in result.output
    return result


def requests_for(server: Any, text: str) -> int:
    """Requests the simulator received whose last user message is ``text`` (a re-ask sends the same body)."""
    return int(server.stats.snapshot(prompts=True)["prompts"][text]["requests"])


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


def summary_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- 1-4: --schema, re-asks, mismatches -------------------------------------------------------------


def test_schema_match_every_row_ok_with_parsed(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = [f"ticket {i}: my invoice is wrong" for i in range(5)]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    output = tmp_path / "out.jsonl"

    result = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE)],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    rows = read_jsonl(output)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(5)]
    for row in rows:
        assert list(row) == [*COLUMNS, "parsed"]  # `parsed` present, after the §3 columns
        assert row["status"] == "ok" and row["status_code"] == 200 and row["error"] is None
        assert row["attempts"] == 1
        assert row["parsed"] is not None
        assert json.loads(row["parsed"]) == json.loads(row["content"]) == TICKET
        assert row["parsed"] == compact(TICKET)
        jsonschema.validate(json.loads(row["parsed"]), TICKET_SCHEMA)
    assert server.stats.requests == 5
    assert server.stats.structured_requests == 5  # sent as response_format json_schema (--schema-mode api)


def test_schema_mismatch_once_is_reasked_then_ok(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["ticket a", "ticket b [[sim:schema-missx1]]", "ticket c"]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    output = tmp_path / "out.jsonl"

    result = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE)],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr
    rows = by_id(read_jsonl(output))
    assert [rows[i]["status"] for i in ("r0", "r1", "r2")] == ["ok", "ok", "ok"]
    assert [rows[i]["attempts"] for i in ("r0", "r1", "r2")] == [1, 2, 1]
    assert json.loads(rows["r1"]["parsed"]) == TICKET
    assert rows["r1"]["error"] is None
    assert server.stats.requests == 3 + 1
    assert requests_for(server, texts[1]) == 2


def test_schema_always_mismatching_ends_error_with_content_kept(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["ticket a", "ticket b [[sim:schema-miss]]", "ticket c"]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    output = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"

    result = run(
        runner,
        [
            str(source),
            "-o",
            str(output),
            "-c",
            "4",
            "--schema",
            str(TICKET_SCHEMA_FILE),
            "--summary-json",
            str(summary),
        ],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    rows = by_id(read_jsonl(output))
    bad = rows["r1"]
    assert bad["status"] == "error"
    assert bad["status_code"] == 200
    assert bad["content"] is not None
    assert json.loads(bad["content"]) == mismatching_instance(TICKET_SCHEMA)  # the model's answer, kept
    assert bad["parsed"] is None
    assert bad["error"].startswith("schema_mismatch: $")
    # the first failing path and what fails there: the simulator's miss leaves out the first required field
    assert bad["error"] == "schema_mismatch: $: 'category' is a required property"
    assert bad["attempts"] == 3
    assert requests_for(server, texts[1]) == 1 + 2
    assert server.stats.requests == 2 + 3
    assert [rows["r0"]["status"], rows["r2"]["status"]] == ["ok", "ok"]
    data = summary_of(summary)
    assert data["error_types"] == {"schema_mismatch": 1}
    assert data["structured"] == {"rows": 3, "matched": 2, "schema_mismatch": 1}


def test_schema_mismatch_names_a_nested_failing_path(sim, runner, tmp_path: Path) -> None:
    """A miss inside a property names that property's path (`$.urgency`), not just `$`."""
    server = sim()
    schema = tmp_path / "urgent.schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"urgency": {"enum": ["low", "high"]}}}))
    source = write_jsonl(tmp_path / "in.jsonl", chat(["x [[sim:schema-miss]]"]))
    output = tmp_path / "out.jsonl"

    result = run(runner, [str(source), "-o", str(output), "--schema", str(schema)], env=connection_env(server))

    assert result.exit_code == 1, result.stderr
    (row,) = read_jsonl(output)
    assert row["error"].startswith("schema_mismatch: $.urgency: ")
    assert row["parsed"] is None and row["attempts"] == 3


def test_schema_retries_zero_sends_once(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["ticket a", "ticket b [[sim:schema-miss]]"]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    output = tmp_path / "out.jsonl"

    result = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE), "--schema-retries", "0"],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    rows = by_id(read_jsonl(output))
    assert rows["r1"]["status"] == "error" and rows["r1"]["attempts"] == 1
    assert rows["r1"]["error"].startswith("schema_mismatch: $")
    assert requests_for(server, texts[1]) == 1
    assert server.stats.requests == 2


# ---- 5-6: json_object, fences ------------------------------------------------------------------------


def test_json_object_param_parses_and_not_json_is_a_mismatch(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["give me json", "plain words please [[sim:not-json]]"]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    output = tmp_path / "out.jsonl"

    result = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", "--param", 'response_format={"type":"json_object"}'],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    rows = by_id(read_jsonl(output))
    good, bad = rows["r0"], rows["r1"]
    assert good["status"] == "ok" and good["attempts"] == 1
    value = json.loads(good["parsed"])
    assert value == json.loads(good["content"])
    assert list(value) == ["answer"] and value["answer"].startswith("sim reply to: give me json [")
    assert bad["status"] == "error" and bad["status_code"] == 200
    assert bad["error"].startswith("schema_mismatch: $: not JSON")
    assert bad["content"].startswith("sim reply to: plain words please [[sim:not-json]]")
    assert bad["parsed"] is None
    assert bad["attempts"] == 3
    assert requests_for(server, texts[1]) == 3
    assert server.stats.requests == 1 + 3
    assert server.stats.structured_requests == 4


def test_fenced_json_is_unfenced_for_parsed_and_kept_in_content(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat(["ticket [[sim:fenced]]"]))
    output = tmp_path / "out.jsonl"

    result = run(
        runner, [str(source), "-o", str(output), "--schema", str(TICKET_SCHEMA_FILE)], env=connection_env(server)
    )

    assert result.exit_code == 0, result.stderr
    (row,) = read_jsonl(output)
    assert row["status"] == "ok" and row["attempts"] == 1
    assert row["content"] == f"```json\n{compact(TICKET)}\n```"
    assert row["parsed"] == compact(TICKET)
    assert server.stats.requests == 1


# ---- 7: invalid schemas --------------------------------------------------------------------------------


def test_invalid_schema_file_is_exit_2_before_anything_is_sent(sim, runner, tmp_path: Path) -> None:
    server = sim()
    bad = tmp_path / "bad.schema.json"
    bad.write_text('{"type": "objekt"}', encoding="utf-8")
    source = write_jsonl(tmp_path / "in.jsonl", chat(["a", "b"]))
    output = tmp_path / "out.jsonl"

    result = run(runner, [str(source), "-o", str(output), "--schema", str(bad)], env=connection_env(server))

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--schema" in lines[0] and str(bad) in lines[0]
    assert "not a valid JSON Schema: $.type: 'objekt' " in lines[0]
    assert server.stats.requests == 0
    assert not output.exists()
    assert not (tmp_path / "out.jsonl.checkpoint").exists()

    checked = invoke(runner, ["validate", str(source), "--schema", str(bad)])
    assert checked.exit_code == 2
    check_lines = checked.stderr.strip().splitlines()
    assert len(check_lines) == 1, checked.stderr
    assert check_lines == lines  # the same one line as `run`
    assert server.stats.requests == 0


def test_row_with_invalid_response_format_schema_is_invalid_others_run(sim, runner, tmp_path: Path) -> None:
    server = sim()
    rows = chat(["a", "b", "c"])
    rows[1]["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"

    result = run(runner, [str(source), "-o", str(output), "-c", "4"], env=connection_env(server))

    assert result.exit_code == 1, result.stderr
    out = by_id(read_jsonl(output))
    assert out["r1"]["status"] == "invalid"
    assert out["r1"]["attempts"] == 0 and out["r1"]["status_code"] is None
    assert out["r1"]["error"].startswith(
        "invalid_row: line 2: `response_format`: not a valid JSON Schema: $.type: 'objekt' "
    )
    assert [out["r0"]["status"], out["r2"]["status"]] == ["ok", "ok"]
    assert server.stats.requests == 2
    assert server.stats.structured_requests == 0


# ---- 8-9: Parquet types, token details ----------------------------------------------------------------


def test_parquet_output_declares_parsed_and_token_detail_types(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat(["a", "b [[sim:schema-miss]]", "c [[sim:cached=5]]"]))
    output = tmp_path / "out.parquet"

    result = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE), "--schema-retries", "0"],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    table = pq.read_table(output)
    assert table.schema.names == [*COLUMNS, "parsed"]
    assert table.schema.field("parsed").type == pa.string()
    assert table.schema.field("cached_tokens").type == pa.int64()
    assert table.schema.field("reasoning_tokens").type == pa.int64()
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert [r["parsed"] for r in rows] == [compact(TICKET), None, compact(TICKET)]
    assert [r["cached_tokens"] for r in rows] == [0, 0, 5]
    assert [r["reasoning_tokens"] for r in rows] == [0, 0, 0]


def test_parquet_parsed_column_is_string_even_when_every_value_is_null(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat(["a [[sim:schema-miss]]"]))
    output = tmp_path / "out.parquet"

    result = run(
        runner,
        [str(source), "-o", str(output), "--schema", str(TICKET_SCHEMA_FILE), "--schema-retries", "0"],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    table = pq.read_table(output)
    assert table.schema.field("parsed").type == pa.string()
    assert table.column("parsed").to_pylist() == [None]


def test_token_details_in_columns_and_summary(sim, runner, tmp_path: Path) -> None:
    server = sim()
    texts = ["a [[sim:cached=5]]", "b [[sim:reasoning=3]]", "c [[sim:cached=5]] [[sim:reasoning=3]]", "d"]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    output = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"

    result = run(
        runner, [str(source), "-o", str(output), "-c", "4", "--summary-json", str(summary)], env=connection_env(server)
    )

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(output)
    assert [r["cached_tokens"] for r in rows] == [5, 0, 5, 0]
    assert [r["reasoning_tokens"] for r in rows] == [0, 3, 3, 0]
    assert all("parsed" not in r for r in rows)  # no schema in this run: no `parsed` column
    data = summary_of(summary)
    assert data["cached_tokens"] == 10
    assert data["reasoning_tokens"] == 6
    assert data["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert data["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert "structured" not in data
    assert "summary_tokens " in result.stderr and " cached=10 reasoning=6 " in result.stderr


# ---- 10-11: re-asks are billed -------------------------------------------------------------------------


def test_summary_tokens_include_reasked_attempts(sim, runner, tmp_path: Path) -> None:
    texts = ["t0 [[sim:schema-missx1]] [[sim:cached=5]]", "t1 plain", "t2 [[sim:schema-missx1]]", "t3 plain"]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    schema_args = ["-c", "4", "--schema", str(TICKET_SCHEMA_FILE)]

    # Learn what the first (missing) answer to each re-asked row costs: the same bodies on a fresh simulator,
    # with no re-ask, end on exactly that answer.
    first_server = sim()
    first_out = tmp_path / "first.jsonl"
    first = run(
        runner,
        [str(source), "-o", str(first_out), *schema_args, "--schema-retries", "0"],
        env=connection_env(first_server),
    )
    assert first.exit_code == 1, first.stderr
    first_rows = by_id(read_jsonl(first_out))
    missed = [first_rows["r0"], first_rows["r2"]]
    assert [r["status"] for r in missed] == ["error", "error"]
    assert first_server.stats.requests == 4

    server = sim()
    output = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run(
        runner,
        [str(source), "-o", str(output), *schema_args, "--summary-json", str(summary)],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(output)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert [r["attempts"] for r in rows] == [2, 1, 2, 1]
    assert server.stats.requests == 6
    # A row's columns count every answer it was billed for: a re-asked row holds both of its answers (the
    # same body was sent twice, so twice the prompt), and the summary is the sum of the rows.
    by_row = by_id(rows)
    for key, miss in (("r0", first_rows["r0"]), ("r2", first_rows["r2"])):
        assert by_row[key]["prompt_tokens"] == 2 * miss["prompt_tokens"]
        assert by_row[key]["completion_tokens"] > miss["completion_tokens"]
        assert by_row[key]["total_tokens"] == by_row[key]["prompt_tokens"] + by_row[key]["completion_tokens"]
    expected_prompt = sum(r["prompt_tokens"] for r in rows)
    expected_completion = sum(r["completion_tokens"] for r in rows)
    data = summary_of(summary)
    assert data["prompt_tokens"] == expected_prompt
    assert data["completion_tokens"] == expected_completion
    assert data["cached_tokens"] == 5 + 5  # row t0's cached prompt, billed on both of its requests
    assert rows[0]["cached_tokens"] == 5 + 5
    assert data["attempts"] == 6 and data["retries"] == 2
    assert data["structured"] == {"rows": 4, "matched": 4, "schema_mismatch": 0}
    assert f"summary_tokens prompt={expected_prompt} completion={expected_completion} " in result.stderr


def test_report_of_the_output_counts_reasked_attempts_like_the_run(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat([f"t{i} [[sim:schema-missx1]]" for i in range(3)]))
    output = tmp_path / "out.jsonl"
    ran = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE)],
        env=connection_env(server),
    )
    assert ran.exit_code == 0, ran.stderr
    assert server.stats.requests == 6
    run_line = next(line for line in ran.stderr.splitlines() if line.startswith("summary_tokens "))
    rows = read_jsonl(output)
    assert [r["attempts"] for r in rows] == [2, 2, 2]
    prompt, completion = sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows)
    assert run_line.startswith(f"summary_tokens prompt={prompt} completion={completion} ")

    reported = invoke(runner, ["report", str(output)])
    assert reported.exit_code == 0, reported.stderr
    report_lines = [
        line for line in (reported.stdout + reported.stderr).splitlines() if line.startswith("summary_tokens ")
    ]
    assert len(report_lines) == 1, reported.output
    bug_check(report_lines[0] == run_line, f"run: {run_line!r}; report: {report_lines[0]!r}")


def _miss_rows(n: int) -> list[dict[str, Any]]:
    return chat([f"ticket {i} [[sim:schema-miss]]" for i in range(n)])  # i < 10: every prompt the same length


def _tokens_per_request(sim, runner, tmp_path: Path, source: Path) -> int:
    """What one answered request of these rows costs (prompt + completion): every row once, no re-asks."""
    server = sim()
    output = tmp_path / "per-request.jsonl"
    args = [str(source), "-o", str(output), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE), "--schema-retries", "0"]
    result = run(runner, args, env=connection_env(server))
    assert result.exit_code == 1, result.stderr
    totals = {r["total_tokens"] for r in read_jsonl(output)}
    assert len(totals) == 1, totals  # every request of these rows costs the same
    return totals.pop()


BUDGET_ARGS = ["--schema", str(TICKET_SCHEMA_FILE), "--param", "max_tokens=30"]


def test_budget_cap_counts_reasked_attempts(sim, runner, tmp_path: Path) -> None:
    """8 rows that never match, 3 requests each. The cap holds all 8 rows' own usage with room to spare,
    so only the re-asks can make the run stop at it."""
    source = write_jsonl(tmp_path / "in.jsonl", _miss_rows(8))
    per_request = _tokens_per_request(sim, runner, tmp_path, source)
    cap = 300
    assert 8 * per_request + 30 < cap < 24 * per_request  # the design: own usage fits, all re-asks do not

    server = sim()
    output = tmp_path / "out.jsonl"
    result = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", *BUDGET_ARGS, "--max-total-tokens", str(cap)],
        env=connection_env(server),
    )

    assert result.exit_code == 3, result.stderr
    assert "--max-total-tokens 300" in result.stderr
    done = read_jsonl(output)
    assert len(done) < 8  # stopped before every row had its own answer: what rows' own usage alone allows
    # Rows the stop cut off between re-asks end on their last paid answer (fewer attempts), counted too.
    assert all(r["status"] == "error" and 1 <= r["attempts"] <= 3 for r in done)
    answered = server.stats.by_status.get(200, 0)
    assert answered == server.stats.requests < 24
    assert len(done) < answered  # re-asks were sent ...
    assert f"--max-total-tokens {cap} (spent {answered * per_request})" in result.stderr  # ... and counted
    assert sum(r["total_tokens"] for r in done) == answered * per_request  # ... and in the output
    assert answered * per_request <= cap


def test_summary_counts_reasks_of_rows_cut_off_by_a_stop(sim, runner, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", _miss_rows(8))
    per_request = _tokens_per_request(sim, runner, tmp_path, source)
    server = sim()
    output = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = run(
        runner,
        [
            str(source),
            "-o",
            str(output),
            "-c",
            "4",
            *BUDGET_ARGS,
            "--max-total-tokens",
            "300",
            "--summary-json",
            str(summary),
        ],
        env=connection_env(server),
    )
    assert result.exit_code == 3, result.stderr
    done = read_jsonl(output)
    answered = server.stats.by_status.get(200, 0)
    assert any(r["attempts"] < 3 for r in done)  # set-up: the stop cut some rows off between re-asks
    assert sum(r["attempts"] for r in done) == answered  # ... and each kept its paid answers
    data = summary_of(summary)
    billed = answered * per_request
    counted = data["prompt_tokens"] + data["completion_tokens"]
    bug_check(counted == billed, f"summary counts {counted} tokens; the simulator answered {billed}")


def test_budget_cap_holds_across_a_resume_after_cut_off_reasks(sim, runner, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", _miss_rows(8))
    per_request = _tokens_per_request(sim, runner, tmp_path, source)
    server = sim()
    output = tmp_path / "out.jsonl"
    args = [str(source), "-o", str(output), "-c", "4", *BUDGET_ARGS, "--max-total-tokens", "300"]

    first = run(runner, args, env=connection_env(server))
    assert first.exit_code == 3, first.stderr
    second = run(runner, args, env=connection_env(server))  # same cap: nothing more may be spent
    assert second.exit_code == 3, second.stderr

    billed = server.stats.by_status.get(200, 0) * per_request
    bug_check(billed <= 300, f"two runs under --max-total-tokens 300 were billed {billed} tokens")


# ---- 12: a server that refuses response_format ------------------------------------------------------


def test_server_refusing_response_format_stops_and_prompt_mode_works(sim, runner, tmp_path: Path, monkeypatch) -> None:
    server = sim(reject_response_format=True)
    texts = [f"ticket {i}" for i in range(20)]
    source = write_jsonl(tmp_path / "in.jsonl", chat(texts))
    env = connection_env(server)

    refused = run(
        runner,
        [str(source), "-o", str(tmp_path / "api.jsonl"), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE)],
        env=env,
    )

    assert refused.exit_code == 3, refused.stderr
    assert "--schema-mode prompt" in refused.stderr
    assert 1 <= server.stats.requests <= 4  # at most what was in flight, never every row
    assert server.stats.structured_requests == server.stats.requests
    assert server.stats.by_status == {400: server.stats.requests}
    assert read_jsonl(tmp_path / "api.jsonl") == []  # rows cut off by the stop are not final (SPEC §8.3)

    seen: list[dict[str, Any]] = []
    stated = simulator._stated_format

    def spy(body: dict[str, Any]) -> dict[str, Any] | None:
        seen.append(body)
        return stated(body)

    monkeypatch.setattr(simulator, "_stated_format", spy)
    server.stats.reset()
    output = tmp_path / "prompt.jsonl"
    ok = run(
        runner,
        [str(source), "-o", str(output), "-c", "4", "--schema", str(TICKET_SCHEMA_FILE), "--schema-mode", "prompt"],
        env=env,
    )

    assert ok.exit_code == 0, ok.stderr
    rows = read_jsonl(output)
    assert len(rows) == 20
    assert all(r["status"] == "ok" and r["parsed"] == compact(TICKET) for r in rows)
    assert server.stats.requests == 20
    assert server.stats.structured_requests == 0  # no response_format sent
    assert len(seen) == 20
    for body in seen:
        assert "response_format" not in body
        system = [m for m in body["messages"] if m["role"] == "system"]
        assert len(system) == 1
        assert "JSON Schema" in system[0]["content"]
        stated_schema = json.loads(system[0]["content"].split("matches this JSON Schema:\n", 1)[1])
        assert stated_schema == TICKET_SCHEMA


def test_json_object_mode_sends_the_schema_key(sim, runner, tmp_path: Path) -> None:
    """`--schema-mode json-object` (llama.cpp): response_format json_object with a `schema` key; answered with an
    instance of it and validated the same way."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat(["a", "b [[sim:schema-missx1]]"]))
    output = tmp_path / "out.jsonl"

    result = run(
        runner,
        [
            str(source),
            "-o",
            str(output),
            "-c",
            "4",
            "--schema",
            str(TICKET_SCHEMA_FILE),
            "--schema-mode",
            "json-object",
        ],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(output)
    assert [r["parsed"] for r in rows] == [compact(TICKET)] * 2
    assert [r["attempts"] for r in rows] == [1, 2]
    assert server.stats.structured_requests == server.stats.requests == 3


# ---- 13: kept columns, evaluation ---------------------------------------------------------------------


def test_keep_columns_parsed_is_refused(sim, runner, tmp_path: Path) -> None:
    server = sim()
    rows = [{"id": "a", "messages": [{"role": "user", "content": "x"}], "parsed": "mine"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"

    result = run(
        runner,
        [str(source), "-o", str(output), "--schema", str(TICKET_SCHEMA_FILE), "--keep-columns", "parsed"],
        env=connection_env(server),
    )

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "inferbatch: --keep-columns parsed: `parsed` is an output column, and a kept column may not replace a "
        "result; rename that input column or leave it out"
    ]
    assert server.stats.requests == 0
    assert not output.exists()


def _eval_job(tmp_path: Path, name: str, value: str) -> Path:
    shutil.copy(TICKET_SCHEMA_FILE, tmp_path / "ticket.schema.json")
    write_jsonl(
        tmp_path / "questions.jsonl", [{"id": "q1", "q": "ticket one [[sim:fenced]]"}, {"id": "q2", "q": "two"}]
    )
    job = tmp_path / f"{name}.toml"
    job.write_text(
        "\n".join(
            [
                'input = "questions.jsonl"',
                f'output = "{name}.jsonl"',
                'schema = "ticket.schema.json"',
                "concurrency = 4",
                "",
                "[[variants]]",
                'name = "v"',
                'template = "{q}"',
                "",
                "[[assert]]",
                'type = "json-path"',
                'path = "$.urgency"',
                f'value = "{value}"',
                "",
                "[[assert]]",
                'type = "is-json"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return job


def test_evaluation_json_path_reads_parsed_of_a_fenced_answer(sim, runner, tmp_path: Path) -> None:
    server = sim()
    job = _eval_job(tmp_path, "pass", "low")

    result = run(runner, ["--job", str(job)], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    rows = by_id(read_jsonl(tmp_path / "pass.jsonl"))
    fenced = rows["q1"]
    assert fenced["content"].startswith("```json\n")  # is-json on the content itself would fail
    assert fenced["parsed"] == compact(TICKET)
    assert fenced["passed"] is True and fenced["failures"] == "[]"
    assert rows["q2"]["passed"] is True and rows["q2"]["failures"] == "[]"
    assert server.stats.requests == 2

    # The assertion is not vacuous: another expected value fails the same answer.
    job = _eval_job(tmp_path, "fail", "high")
    result = run(runner, ["--job", str(job)], env=connection_env(server))
    assert result.exit_code == 0, result.stderr  # without --fail-under, failed assertions keep exit 0
    rows = by_id(read_jsonl(tmp_path / "fail.jsonl"))
    assert rows["q1"]["passed"] is False
    assert json.loads(rows["q1"]["failures"]) == ["json-path"]


# ---- 14: the sample job ---------------------------------------------------------------------------------


def test_sample_extract_job_runs_on_the_simulator(runner, tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "sample_data").mkdir()
    shutil.copy(REPO / "jobs" / "extract.toml", tmp_path / "jobs" / "extract.toml")
    for name in ("tickets.jsonl", "ticket.schema.json"):
        shutil.copy(REPO / "sample_data" / name, tmp_path / "sample_data" / name)

    result = run(runner, ["--job", str(tmp_path / "jobs" / "extract.toml"), "--simulate"])

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(tmp_path / "out" / "extract.jsonl")
    assert len(rows) == 22
    assert all(r["status"] == "ok" for r in rows)
    assert all(r["parsed"] is not None for r in rows)
    for row in rows:
        jsonschema.validate(json.loads(row["parsed"]), TICKET_SCHEMA)
    data = summary_of(tmp_path / "out" / "extract.summary.json")
    assert data["rows"] == 22 and data["ok"] == 22
    assert data["structured"] == {"rows": 22, "matched": 22, "schema_mismatch": 0}


# ---- found by review: rows cut off between re-asks, --schema with a variant's own format -----------------


def test_rows_a_stop_cut_off_between_re_asks_are_asked_again_by_the_next_run(sim, runner, tmp_path: Path) -> None:
    """SPEC §8.3: a row a stop cut off has no final result; its paid answers are kept (they count), and the next
    run sends it again — a raised cap is all it takes, no --retry-errors."""
    source = write_jsonl(tmp_path / "in.jsonl", _miss_rows(8))
    server = sim()
    output = tmp_path / "out.jsonl"
    args = [str(source), "-o", str(output), "-c", "4", *BUDGET_ARGS]

    first = run(runner, [*args, "--max-total-tokens", "300"], env=connection_env(server))
    assert first.exit_code == 3 and "budget cap reached" in first.stderr, first.stderr
    kept = by_id(read_jsonl(output))
    cut_off = {key for key, row in kept.items() if row["attempts"] < 3}
    assert cut_off  # set-up: the stop came between some row's re-asks
    assert all("_resend" not in row for row in kept.values())  # internal: never in the output
    unsent = 8 - len(kept)
    sent_before = server.stats.requests

    second = run(runner, [*args, "--max-total-tokens", "100000"], env=connection_env(server))
    assert second.exit_code == 1, second.stderr  # every row ends schema_mismatch: rows failed, not a stop
    rows = by_id(read_jsonl(output))
    assert len(rows) == 8 and all(r["error"].startswith("schema_mismatch: ") for r in rows.values())
    assert all(rows[key]["attempts"] == 3 for key in cut_off)  # asked again, whole
    assert server.stats.requests - sent_before == 3 * (len(cut_off) + unsent)  # the finished rows are not resent


def test_schema_with_a_variants_own_response_format_is_refused(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat(["a"]))
    job = tmp_path / "job.toml"
    job.write_text(
        '[[variants]]\nname = "a"\n[variants.params]\nresponse_format = {type = "json_object"}\n', encoding="utf-8"
    )
    result = run(
        runner,
        [str(source), "-o", str(tmp_path / "out.jsonl"), "--job", str(job), "--schema", str(TICKET_SCHEMA_FILE)],
        env=connection_env(server),
    )
    assert result.exit_code == 2
    assert "give --schema or [[variants]] 'a''s `response_format`, not both" in result.stderr
    assert server.stats.requests == 0


def test_a_rows_own_response_format_gives_that_row_a_parsed_value_in_a_run_without_a_schema(
    sim, runner, tmp_path: Path
) -> None:
    server = sim()
    rows = [
        {"id": "plain", "messages": [{"role": "user", "content": "hello"}]},
        {
            "id": "json",
            "messages": [{"role": "user", "content": "hello as json"}],
            "response_format": {"type": "json_object"},
        },
        {
            "id": "bad",
            "messages": [{"role": "user", "content": "no json here [[sim:not-json]]"}],
            "response_format": {"type": "json_object"},
        },
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    result = run(runner, [str(source), "-o", str(output)], env=connection_env(server))
    assert result.exit_code == 1, result.stderr  # the not-JSON row failed
    got = by_id(read_jsonl(output))
    assert got["plain"]["parsed"] is None  # the column is on every row once a row has it, as in Parquet
    assert list(got["plain"])[-3:] == ["cached_tokens", "reasoning_tokens", "parsed"]
    assert json.loads(got["json"]["parsed"]) == json.loads(got["json"]["content"])
    assert got["bad"]["parsed"] is None and got["bad"]["error"].startswith("schema_mismatch: $: not JSON")


def test_the_parsed_column_stays_on_every_row_when_the_structured_rows_ran_before_a_resume(
    sim, runner, tmp_path: Path
) -> None:
    server = sim()
    rows = [
        {
            "id": "json",
            "messages": [{"role": "user", "content": "as json"}],
            "response_format": {"type": "json_object"},
        },
        {"id": "plain", "messages": [{"role": "user", "content": "hello"}]},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    pilot = run(runner, [str(source), "-o", str(output), "--limit", "1"], env=connection_env(server))
    assert pilot.exit_code == 0, pilot.stderr
    rest = run(runner, [str(source), "-o", str(output)], env=connection_env(server))  # sends only `plain`
    assert rest.exit_code == 0, rest.stderr
    assert server.stats.requests == 2
    got = by_id(read_jsonl(output))
    assert got["plain"]["parsed"] is None and got["json"]["parsed"] is not None
