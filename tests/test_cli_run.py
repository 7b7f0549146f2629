"""`inferbatch run` end to end: the CLI against the real simulator on loopback (SPEC §1-§4, §8).

Every test asserts the exit code, stdout (data: `run` prints none) and stderr (people) apart.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl
from inferbatch import retry
from inferbatch.cli import cli

# SPEC §3, in this order (§8.14).
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
INT_COLUMNS = {
    "index",
    "status_code",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "attempts",
    "cached_tokens",
    "reasoning_tokens",
}
FLOAT_COLUMNS = {"latency_ms"}
STRING_COLUMNS = set(COLUMNS) - INT_COLUMNS - FLOAT_COLUMNS

KEY = "sk-test-SECRET-999"


def msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def run(runner: CliRunner, args: list[str], env: dict[str, str] | None = None) -> Result:
    result = invoke(runner, ["run", *args], env=env)
    assert "Traceback" not in result.output
    return result


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


def assert_usage_error(result: Result, server: Any) -> None:
    """Exit 2, a message for people on stderr, no data on stdout, no traceback, nothing sent."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert server.stats.requests == 0


# ---- row shapes -------------------------------------------------------------------------------


def test_openai_batch_line_body_is_sent_as_is(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    line = {
        "custom_id": "b1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": msg("batch question"), "max_tokens": 3},
    }
    src = write_jsonl(tmp_path / "in.jsonl", [line])
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    [row] = read_jsonl(out)
    assert row["id"] == "b1"
    assert row["status"] == "ok"
    assert row["status_code"] == 200
    assert row["model"] == "sim-model"  # filled in from INFERENCE_MODEL_ID
    assert row["completion_tokens"] <= 3  # the body's own max_tokens was sent
    assert row["finish_reason"] == "length"


def test_chat_row_with_its_own_params(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [
        {"id": "c1", "messages": msg("chat question"), "max_tokens": 2, "model": "row-model"},
        {"id": "c2", "messages": msg("chat question two")},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    got = by_id(read_jsonl(out))
    assert [r["status"] for r in got.values()] == ["ok", "ok"]
    assert got["c1"]["model"] == "row-model"  # the row's model wins
    assert got["c1"]["completion_tokens"] <= 2
    assert got["c1"]["finish_reason"] == "length"
    assert got["c2"]["model"] == "sim-model"
    assert got["c2"]["completion_tokens"] > 2


def test_prompt_row_with_system(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [
        {"id": "p1", "prompt": "hello there"},
        {"id": "p2", "prompt": "hello there", "system": "You answer in exactly one short sentence, always."},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    got = by_id(read_jsonl(out))
    assert got["p1"]["status"] == got["p2"]["status"] == "ok"
    assert "hello there" in got["p1"]["content"]
    # The system message was sent: a longer prompt, and a different conversation.
    assert got["p2"]["prompt_tokens"] > got["p1"]["prompt_tokens"]
    assert got["p2"]["content"] != got["p1"]["content"]


def test_csv_with_template(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = tmp_path / "in.csv"
    src.write_text("id,question,topic\nq1,what is 2+2,math\nq2,capital of France,geo\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"

    result = run(
        runner, [str(src), "-o", str(out), "--template", "Q: {question} ({topic})"], env=connection_env(server)
    )

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    rows = read_jsonl(out)
    assert [(r["id"], r["index"], r["status"]) for r in rows] == [("q1", 0, "ok"), ("q2", 1, "ok")]
    assert "Q: what is 2+2 (math)" in rows[0]["content"]
    assert "Q: capital of France (geo)" in rows[1]["content"]


# ---- output layout --------------------------------------------------------------------------


def mixed_rows() -> list[dict[str, Any]]:
    return [
        {"id": "a", "messages": msg("fine"), "topic": "t-a", "score": 1},
        {"id": "b", "messages": msg("bad [[sim:400]]"), "topic": "t-b", "score": 2},
        {"id": "c", "messages": [], "topic": "t-c", "score": 3},
        {
            "id": "d",
            "messages": msg("tools"),
            "topic": "t-d",
            "score": 4,
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        },
    ]


def test_jsonl_columns_in_spec_order_with_kept_columns_last(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", mixed_rows())
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--keep-columns", "topic,score"], env=connection_env(server))

    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    rows = read_jsonl(out)
    assert [r["status"] for r in rows] == ["ok", "error", "invalid", "ok"]
    for row in rows:
        assert list(row) == [*COLUMNS, "topic", "score"]
    assert [(r["topic"], r["score"]) for r in rows] == [("t-a", 1), ("t-b", 2), ("t-c", 3), ("t-d", 4)]
    calls = json.loads(rows[3]["tool_calls"])  # JSON text of choices[0].message.tool_calls
    assert calls[0]["function"]["name"] == "lookup"


def test_parquet_output_matches_jsonl_with_declared_types(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", mixed_rows())
    env = connection_env(server)
    out_jsonl, out_parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"

    r1 = run(runner, [str(src), "-o", str(out_jsonl), "--keep-columns", "topic,score"], env=env)
    r2 = run(runner, [str(src), "-o", str(out_parquet), "--keep-columns", "topic,score"], env=env)

    assert (r1.exit_code, r2.exit_code) == (1, 1), r2.stderr
    assert r2.stdout == ""
    table = pq.read_table(out_parquet)
    assert table.schema.names == [*COLUMNS, "topic", "score"]
    assert_declared_types(table.schema)
    assert pa.types.is_string(table.schema.field("topic").type)
    assert pa.types.is_integer(table.schema.field("score").type)
    stable = [c for c in COLUMNS if c not in ("latency_ms", "request_id")] + ["topic", "score"]
    from_parquet = [{c: r[c] for c in stable} for r in table.to_pylist()]
    from_jsonl = [{c: r[c] for c in stable} for r in read_jsonl(out_jsonl)]
    assert from_parquet == from_jsonl


def assert_declared_types(schema: pa.Schema) -> None:
    for name in COLUMNS:
        typ = schema.field(name).type
        if name in INT_COLUMNS:
            assert pa.types.is_integer(typ), (name, typ)
        elif name in FLOAT_COLUMNS:
            assert pa.types.is_floating(typ), (name, typ)
        else:
            assert pa.types.is_string(typ) or pa.types.is_large_string(typ), (name, typ)


def test_parquet_all_invalid_keeps_declared_types(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"x{i}", "messages": []} for i in range(3)])
    out = tmp_path / "out.parquet"

    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 1, result.stderr
    assert server.stats.requests == 0
    table = pq.read_table(out)
    assert table.schema.names == COLUMNS
    assert table.schema.field("status_code").type == pa.int64()
    assert_declared_types(table.schema)
    assert table.column("status").to_pylist() == ["invalid"] * 3
    assert table.column("attempts").to_pylist() == [0, 0, 0]


def test_parquet_kept_column_mixing_ints_and_floats_is_double(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    """SPEC §8.14: a kept column is typed from its values; ints and floats together are one `double`
    column (the values stay numbers), not JSON text and not ints that would truncate 2.5."""
    server = sim()
    scores: list[Any] = [1, 2.5, None, 3]
    rows = [{"id": f"s{i}", "messages": msg(f"question {i}"), "score": score} for i, score in enumerate(scores)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"

    result = run(runner, [str(src), "-o", str(out), "--keep-columns", "score"], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out)
    assert table.schema.field("score").type == pa.float64()
    assert_declared_types(table.schema)
    assert table.column("score").to_pylist() == [1.0, 2.5, None, 3.0]


# ---- order, concurrency ---------------------------------------------------------------------


def test_input_order_kept_under_random_latency(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim(latency_ms=5, latency_jitter_ms=40)
    n = 200
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(n))
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "-c", "32"], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == list(range(n))
    assert [r["id"] for r in rows] == [f"row{i}" for i in range(n)]
    assert all(r["status"] == "ok" for r in rows)
    assert server.stats.max_in_flight > 1  # answers really did come back out of order-prone, in parallel


def test_in_flight_never_above_concurrency(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim(latency_ms=20)
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(300))
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "-c", "7"], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(out)) == 300
    assert 1 < server.stats.max_in_flight <= 7


# ---- failures and retries -------------------------------------------------------------------


def test_400_is_not_retried(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [{"id": "good", "messages": msg("fine")}, {"id": "bad", "messages": msg("no [[sim:400]]")}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    got = by_id(read_jsonl(out))
    assert got["good"]["status"] == "ok"
    bad = got["bad"]
    assert bad["status"] == "error"
    assert bad["status_code"] == 400
    assert bad["attempts"] == 1
    assert "simulated 400" in bad["error"]  # the server's own message
    assert server.stats.by_status.get(400) == 1


def test_transient_errors_are_retried_to_ok(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim(retry_after=0.05)  # a short Retry-After keeps the 429 pause short
    rows = [
        {"id": "r500", "messages": msg("x [[sim:500x2]]")},
        {"id": "r503", "messages": msg("y [[sim:503x3]]")},
        {"id": "r429", "messages": msg("z [[sim:429x1]]")},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    got = by_id(read_jsonl(out))
    assert {k: (v["status"], v["status_code"], v["attempts"]) for k, v in got.items()} == {
        "r500": ("ok", 200, 3),
        "r503": ("ok", 200, 4),
        "r429": ("ok", 200, 2),
    }
    assert server.stats.by_status == {500: 2, 503: 3, 429: 1, 200: 3}


def test_retry_after_is_respected(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    # 1.5 s, more than the first backoff could ever be (full jitter, 1 s), so only Retry-After explains the wait.
    retry.set_testing(False)
    server = sim(retry_after=1.5, ratelimit_headers=False)  # only Retry-After says how long
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "r", "messages": msg("slow down [[sim:429x1]]")}])
    out = tmp_path / "out.jsonl"

    started = time.monotonic()
    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))
    elapsed = time.monotonic() - started

    assert result.exit_code == 0, result.stderr
    [row] = read_jsonl(out)
    assert (row["status"], row["attempts"]) == ("ok", 2)
    assert elapsed >= 1.4


def test_timeout_has_null_status_code(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [{"id": "ok", "messages": msg("fine")}, {"id": "hang", "messages": msg("wait [[sim:hang]]")}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(
        runner, [str(src), "-o", str(out), "--timeout", "0.3", "--max-attempts", "2"], env=connection_env(server)
    )

    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    got = by_id(read_jsonl(out))
    assert got["ok"]["status"] == "ok"
    hang = got["hang"]
    assert hang["status"] == "error"
    assert hang["status_code"] is None
    assert hang["attempts"] == 2
    assert "timeout" in hang["error"].lower()
    assert server.stats.hung == 2


# ---- configuration errors: exit 2, nothing sent --------------------------------------------


@pytest.mark.parametrize("missing", ["INFERENCE_URL", "INFERENCE_KEY", "INFERENCE_MODEL_ID"])
def test_missing_connection_setting(runner: CliRunner, sim: Any, tmp_path: Path, missing: str) -> None:
    server = sim()
    env = connection_env(server)
    del env[missing]
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))  # no row names a model

    result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl")], env=env)

    assert_usage_error(result, server)
    assert missing in result.stderr
    if missing == "INFERENCE_MODEL_ID":  # SPEC §8.39: the standard plan sets none; name every way to give one
        assert all(way in result.stderr for way in ("--model", "job file", "row", "heroku ai:models:list"))
    else:
        assert "heroku config:get" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one clear line


def test_no_model_is_fine_when_first_row_names_one(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    env = connection_env(server)
    del env["INFERENCE_MODEL_ID"]
    rows = [{"id": "a", "model": "m1", "messages": msg("one")}, {"id": "b", "messages": msg("two")}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], env=env)

    assert result.exit_code == 1, result.stderr
    got = by_id(read_jsonl(out))
    assert (got["a"]["status"], got["a"]["model"]) == ("ok", "m1")
    assert got["b"]["status"] == "invalid"  # SPEC §8.7: a later row without a model
    assert server.stats.requests == 1


@pytest.mark.parametrize(
    "args",
    [["-c", "0"], ["--max-attempts", "0"], ["--shard", "3/3"], ["--param", "foo"]],
    ids=["concurrency-0", "max-attempts-0", "shard-3of3", "param-no-equals"],
)
def test_bad_option_values_are_usage_errors(runner: CliRunner, sim: Any, tmp_path: Path, args: list[str]) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))

    result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl"), *args], env=connection_env(server))

    assert_usage_error(result, server)


@pytest.mark.parametrize("kind", ["unknown-extension", "missing-file", "not-parquet"])
def test_unreadable_input_exits_2(runner: CliRunner, sim: Any, tmp_path: Path, kind: str) -> None:
    server = sim()
    if kind == "unknown-extension":
        src = write_jsonl(tmp_path / "in.txt", chat_rows(2))
    elif kind == "missing-file":
        src = tmp_path / "nope.jsonl"
    else:
        src = tmp_path / "in.parquet"
        src.write_text("this is not parquet\n", encoding="utf-8")

    result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl")], env=connection_env(server))

    assert_usage_error(result, server)
    assert src.name in result.stderr


def test_rerun_after_fixing_an_unreadable_input(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    # Exit 2 means the run never started: it must not leave a checkpoint that refuses the corrected input.
    server = sim()
    src, out = tmp_path / "in.parquet", tmp_path / "out.jsonl"
    src.write_text("this is not parquet\n", encoding="utf-8")
    env = connection_env(server)

    first = run(runner, [str(src), "-o", str(out)], env=env)
    assert first.exit_code == 2, first.stderr

    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["one", "two"]}), src)
    second = run(runner, [str(src), "-o", str(out)], env=env)

    assert second.exit_code == 0, second.stderr
    assert [r["status"] for r in read_jsonl(out)] == ["ok", "ok"]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_input_without_a_usable_column_exits_2(runner: CliRunner, sim: Any, tmp_path: Path, fmt: str) -> None:
    # SPEC §2: "no usable column" (no messages/prompt/body, no --template) is unreadable input, not N invalid rows.
    server = sim()
    src = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two"]}), src)
    else:
        src.write_text("id,text\na,one\nb,two\n", encoding="utf-8")

    result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl")], env=connection_env(server))

    assert_usage_error(result, server)


@pytest.mark.parametrize("flag", ["--key", "--api-key", "--inference-key"])
def test_the_key_is_never_a_flag(runner: CliRunner, sim: Any, tmp_path: Path, flag: str) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(1))
    env = connection_env(server)
    del env["INFERENCE_KEY"]

    result = run(runner, [str(src), "-o", str(tmp_path / "out.jsonl"), flag, KEY], env=env)

    assert_usage_error(result, server)
    assert KEY not in result.output


# ---- --simulate ------------------------------------------------------------------------------


def test_simulate_needs_no_environment(runner: CliRunner, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--simulate"])

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert [r["status"] for r in read_jsonl(out)] == ["ok"] * 3


@pytest.mark.parametrize("target", ["dead-address", "live-server"])
def test_simulate_ignores_inference_url_and_key(runner: CliRunner, sim: Any, tmp_path: Path, target: str) -> None:
    other = sim()
    url = "http://127.0.0.1:9" if target == "dead-address" else other.url
    env = {"INFERENCE_URL": url, "INFERENCE_KEY": KEY}
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--simulate"], env=env)

    assert result.exit_code == 0, result.stderr
    assert [r["status"] for r in read_jsonl(out)] == ["ok"] * 3
    assert other.stats.requests == 0
    assert KEY not in result.output


# ---- invalid rows -------------------------------------------------------------------------------


def test_bad_rows_become_invalid_naming_the_line(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "messages": msg("first")}).encode(),  # line 1
        b"",  # line 2: blank, not a row (SPEC §8.4)
        b'{"id": "broken", "messages": [',  # line 3: bad JSON
        json.dumps({"id": "empty", "messages": []}).encode(),  # line 4
        json.dumps({"id": "a", "messages": msg("again")}).encode(),  # line 5: duplicate id
        b'{"id": "latin1", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # line 6: not UTF-8
        json.dumps({"id": "b", "messages": msg("last")}).encode(),  # line 7
    ]
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out)], env=connection_env(server))

    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["status"] for r in rows] == ["ok", "invalid", "invalid", "invalid", "invalid", "ok"]
    assert (rows[0]["id"], rows[5]["id"]) == ("a", "b")
    # The later duplicate is the invalid one, named by its position so output ids stay unique (§8.30).
    assert rows[3]["id"] == "<index 3>" and "duplicate id 'a'" in rows[3]["error"]
    for row, line, word in zip(rows[1:5], (3, 4, 5, 6), ("json", "messages", "duplicate", "utf-8"), strict=True):
        assert row["status_code"] is None
        assert row["attempts"] == 0
        assert re.search(rf"\bline {line}\b", row["error"]), row["error"]
        assert word in row["error"].lower(), row["error"]
    assert server.stats.requests == 2


# ---- request parameters -------------------------------------------------------------------------


def test_param_reaches_the_body_and_row_wins(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [
        {"id": "p", "messages": msg("a question long enough to need more than five tokens to answer")},
        {
            "id": "own",
            "messages": msg("a question long enough to need more than five tokens to answer"),
            "max_tokens": 50,
        },
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(
        runner,
        [str(src), "-o", str(out), "--param", "temperature=0", "--param", "max_tokens=5"],
        env=connection_env(server),
    )

    assert result.exit_code == 0, result.stderr
    got = by_id(read_jsonl(out))
    assert got["p"]["completion_tokens"] <= 5
    assert got["p"]["finish_reason"] == "length"
    assert got["own"]["completion_tokens"] > 5  # the row's max_tokens=50 won over --param
    assert got["own"]["finish_reason"] == "stop"


def test_param_values_are_json(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "t", "messages": msg("call a tool")}])
    out = tmp_path / "out.jsonl"
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]

    result = run(
        runner, [str(src), "-o", str(out), "--param", f"tools={json.dumps(tools)}"], env=connection_env(server)
    )

    assert result.exit_code == 0, result.stderr
    [row] = read_jsonl(out)
    assert row["finish_reason"] == "tool_calls"
    assert json.loads(row["tool_calls"])[0]["function"]["name"] == "lookup"


# ---- --limit and --shard ------------------------------------------------------------------------


def test_limit(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(10))
    out = tmp_path / "out.jsonl"

    result = run(runner, [str(src), "-o", str(out), "--limit", "3"], env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert [(r["id"], r["index"]) for r in rows] == [("row0", 0), ("row1", 1), ("row2", 2)]
    assert server.stats.requests == 3


def test_shards_partition_the_rows(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    n = 40
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(n))
    env = connection_env(server)
    outs = [tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"]

    results = [run(runner, [str(src), "-o", str(o), "--shard", f"{i}/2"], env=env) for i, o in enumerate(outs)]

    assert [r.exit_code for r in results] == [0, 0], results[1].stderr
    shards = [read_jsonl(o) for o in outs]
    ids = [{r["id"] for r in rows} for rows in shards]
    assert ids[0] and ids[1]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == {f"row{i}" for i in range(n)}
    for rows in shards:
        assert all(r["index"] == int(r["id"].removeprefix("row")) for r in rows)  # position in the whole input
        assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    assert server.stats.requests == n


# ---- OpenAI Batch output ------------------------------------------------------------------------


def test_openai_batch_output(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [
        {"id": "ok", "messages": msg("fine")},
        {"id": "bad", "messages": msg("no [[sim:400]]")},
        {"id": "slow", "messages": msg("wait [[sim:hang]]")},
        {"id": "inv", "messages": []},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"

    result = run(
        runner,
        [str(src), "-o", str(out), "--output-format", "openai-batch", "--timeout", "0.3", "--max-attempts", "2"],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    lines = read_jsonl(out)
    assert [line["custom_id"] for line in lines] == ["ok", "bad", "slow", "inv"]
    for line in lines:
        assert list(line) == ["id", "custom_id", "response", "error"]
        assert line["id"] == f"batch_req_{line['custom_id']}"
    ok, bad, slow, inv = lines

    assert set(ok["response"]) == {"status_code", "request_id", "body"}
    assert ok["response"]["status_code"] == 200
    assert ok["response"]["request_id"]
    assert ok["response"]["body"]["choices"][0]["message"]["content"]
    assert ok["error"] is None

    assert bad["response"]["status_code"] == 400  # a response arrived
    assert bad["response"]["request_id"]
    assert bad["response"]["body"]["error"]["code"] == "invalid_request"
    assert set(bad["error"]) == {"code", "message"}
    assert bad["error"]["code"] == "invalid_request"  # the server's error.code (SPEC §8.25)
    assert "simulated 400" in bad["error"]["message"]

    assert slow["response"] is None
    assert slow["error"]["code"] == "timeout"

    assert inv["response"] is None
    assert inv["error"]["code"] == "invalid_row"
    assert inv["error"]["message"]


# ---- --summary-json -----------------------------------------------------------------------------

SUMMARY_KEYS = {
    "rows",
    "ok",
    "error",
    "invalid",
    "status_codes",
    "attempts",
    "retries",
    "rate_limited",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "wall_s",
    "requests_per_s",
}


def test_summary_json_counts_equal_the_output(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [
        *chat_rows(3),
        {"id": "retried", "messages": msg("x [[sim:500x1]]")},
        {"id": "bad", "messages": msg("no [[sim:400]]")},
        {"id": "slow", "messages": msg("w [[sim:hang]]")},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out, summary_path = tmp_path / "out.jsonl", tmp_path / "summary.json"

    result = run(
        runner,
        [str(src), "-o", str(out), "--summary-json", str(summary_path), "--timeout", "0.3", "--max-attempts", "2"],
        env=connection_env(server),
    )

    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert set(summary) >= SUMMARY_KEYS
    assert {"p50", "p90", "p99", "max"} <= set(summary["latency_ms"])
    output = read_jsonl(out)
    assert summary["rows"] == len(output) == 6
    for status in ("ok", "error", "invalid"):
        assert summary[status] == sum(r["status"] == status for r in output)
    codes: dict[str, int] = {}
    for r in output:
        key = "none" if r["status_code"] is None else str(r["status_code"])
        codes[key] = codes.get(key, 0) + 1
    assert summary["status_codes"] == codes == {"200": 4, "400": 1, "none": 1}
    assert summary["attempts"] == sum(r["attempts"] for r in output) == 8
    assert summary["retries"] == sum(r["attempts"] - 1 for r in output) == 2
    assert summary["prompt_tokens"] == sum(r["prompt_tokens"] or 0 for r in output) > 0
    assert summary["completion_tokens"] == sum(r["completion_tokens"] or 0 for r in output) > 0
    assert summary["latency_ms"]["max"] >= summary["latency_ms"]["p50"] > 0
    assert summary["wall_s"] > 0


# ---- job files ----------------------------------------------------------------------------------


def test_job_file_with_params_and_relative_paths(
    runner: CliRunner, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = sim()
    (tmp_path / "data").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    write_jsonl(tmp_path / "data" / "in.jsonl", chat_rows(6))
    job = tmp_path / "jobs" / "nightly.toml"
    job.write_text(
        'input = "../data/in.jsonl"\noutput = "../results/out.jsonl"\nconcurrency = 2\nlimit = 5\n'
        "\n[params]\nmax_tokens = 2\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path / "elsewhere")  # paths must be relative to the job file, not the cwd
    env = connection_env(server)

    result = run(runner, ["--job", str(job)], env=env)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    rows = read_jsonl(tmp_path / "results" / "out.jsonl")
    assert len(rows) == 5  # limit from the job
    assert all(r["status"] == "ok" and r["completion_tokens"] <= 2 for r in rows)

    other = tmp_path / "other.jsonl"
    result = run(runner, ["--job", str(job), "--limit", "3", "--param", "max_tokens=6", "-o", str(other)], env=env)

    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(other)
    assert len(rows) == 3  # --limit wins over the job's
    assert all(2 < r["completion_tokens"] <= 6 for r in rows)  # --param wins over [params]


# ---- stdin ----------------------------------------------------------------------------------------


def test_stdin_input_runs_without_checkpoint(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim()
    rows = [*chat_rows(3), {"id": "bad", "messages": msg("no [[sim:400]]")}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    out = tmp_path / "out.jsonl"

    result = runner.invoke(
        cli, ["run", "-", "-o", str(out)], input=text, env=connection_env(server), catch_exceptions=False
    )

    assert result.exit_code == 1, result.stderr
    assert result.stdout == ""
    got = read_jsonl(out)
    assert [r["id"] for r in got] == ["row0", "row1", "row2", "bad"]
    assert [r["status"] for r in got] == ["ok", "ok", "ok", "error"]
    said = [line for line in result.stderr.splitlines() if "resum" in line.lower()]
    assert len(said) == 1, result.stderr  # says once that stdin is not resumable
    assert not Path(f"{out}.checkpoint").exists()


# ---- secrets --------------------------------------------------------------------------------------


def all_text_under(root: Path, skip: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file() and p != skip)


def test_key_is_sent_but_never_shown(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim(require_key=KEY)
    rows = [
        *chat_rows(2),
        {"id": "r", "messages": msg("x [[sim:500x1]]")},
        {"id": "bad", "messages": msg("no [[sim:400]]")},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    result = run(
        runner, [str(src), "-o", str(out), "-v", "--summary-json", str(summary)], env=connection_env(server, key=KEY)
    )

    assert result.exit_code == 1, result.stderr
    assert [r["status"] for r in read_jsonl(out)] == ["ok", "ok", "ok", "error"]
    assert server.stats.auth_headers_seen >= 4  # the key did go to the server, as a header
    assert KEY not in result.stdout
    assert KEY not in result.stderr
    assert KEY not in all_text_under(tmp_path, skip=src)


def test_key_echoed_by_server_is_never_shown(runner: CliRunner, sim: Any, tmp_path: Path) -> None:
    server = sim(require_key="other", echo_key_in_error=True)
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(20))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"

    result = run(
        runner,
        [str(src), "-o", str(out), "-c", "1", "-v", "--summary-json", str(summary)],
        env=connection_env(server, key=KEY),
    )

    assert result.exit_code == 3, result.stderr  # a 401 is a safety stop
    assert result.stdout == ""
    assert "inferbatch: the key was rejected (401)" in result.stderr  # the message, not a path that says "key"
    assert server.stats.by_status.get(401, 0) >= 1
    assert server.stats.requests <= 2  # stopped at once, not after burning through the rows
    assert KEY not in result.stdout
    assert KEY not in result.stderr
    assert KEY not in all_text_under(tmp_path, skip=src)


def test_parquet_output_declares_which_columns_are_never_null(sim: Any, runner: CliRunner, tmp_path: Path) -> None:
    """SPEC §8.14: the declared schema, nullability included: id, index, status and attempts always have a value
    (readers such as pandas/Spark keep them non-nullable), the rest may be null."""
    import pyarrow.parquet as pq

    server = sim()
    src = write_jsonl(tmp_path / "in.jsonl", chat_rows(2))
    out = tmp_path / "out.parquet"
    assert run(runner, [str(src), "-o", str(out)], env=connection_env(server)).exit_code == 0
    schema = pq.read_schema(out)
    never_null = {f.name for f in schema if not f.nullable}
    assert never_null == {"id", "index", "status", "attempts"}
