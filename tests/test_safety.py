"""Safety stops, checkpoint identity, --restart / --retry-errors, and the key staying secret."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl

SECRET = "sk-live-SECRET-7f3a9"


def rows_with(n: int, directive: str) -> list[dict[str, object]]:
    return [{"id": f"r{i}", "prompt": f"q {i} {directive}"} for i in range(n)]


def final_message(stderr: str) -> str:
    """The one `inferbatch: ...` line the CLI prints for a stop (paths and counts elsewhere do not count)."""
    lines = [line for line in stderr.splitlines() if line.startswith("inferbatch: ")]
    assert len(lines) == 1, stderr
    return lines[0].removeprefix("inferbatch: ")


MISMATCH = re.compile(
    r"out\.jsonl\.checkpoint belongs to another run \((?P<why>[^;]*)\); "
    r"rerun with --restart to discard it and start over"
)


def test_401_stops_the_run_with_exit_3_after_at_most_concurrency_requests(sim, runner, tmp_path: Path) -> None:
    server = sim(require_key="the-right-key")
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(500))
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "4"],
        env=connection_env(server, key="a-wrong-key"),
    )
    assert result.exit_code == 3
    assert server.stats.requests <= 4
    assert re.fullmatch(
        r"the key was rejected \(401\): invalid_api_key: .*; check INFERENCE_KEY\b.*", final_message(result.stderr)
    )
    assert "Traceback" not in result.stderr
    # Rows cut off by a safety stop are not final: nothing is recorded as error for them.
    assert read_jsonl(tmp_path / "out.jsonl") == []


def test_json_403_authorization_error_is_a_safety_stop(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", rows_with(100, "[[sim:403auth]]"))
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "2"], env=connection_env(server)
    )
    assert result.exit_code == 3
    assert server.stats.requests <= 2
    assert re.fullmatch(
        r"the key may not use .*\(403\): authorization_error: .*; check INFERENCE_KEY\b.*", final_message(result.stderr)
    )


def test_consecutive_404s_abort_after_25(sim, runner, tmp_path: Path) -> None:
    server = sim(models=("real-model",))
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(1000))
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "4"],
        env=connection_env(server, model="no-such-model"),
    )
    assert result.exit_code == 3
    assert final_message(result.stderr).startswith("25 rows in a row failed (last: model_not_found")
    output = read_jsonl(tmp_path / "out.jsonl")
    assert 25 <= len(output) <= 25 + 4
    assert all(r["status"] == "error" and r["status_code"] == 404 for r in output)
    assert server.stats.requests <= 25 + 4


def test_abort_after_0_never_stops(sim, runner, tmp_path: Path) -> None:
    server = sim(models=("real-model",))
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(40))
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--abort-after", "0"],
        env=connection_env(server, model="no-such-model"),
    )
    assert result.exit_code == 1
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 40


def test_html_403_is_a_row_error_and_the_run_continues(sim, runner, tmp_path: Path) -> None:
    server = sim()
    rows = chat_rows(10)
    rows[4] = {"id": "blocked", "prompt": "something a WAF dislikes [[sim:403html]]"}
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--max-attempts", "3"],
        env=connection_env(server),
    )
    assert result.exit_code == 1
    output = read_jsonl(tmp_path / "out.jsonl")
    blocked = output[4]
    assert blocked["status"] == "error" and blocked["status_code"] == 403 and blocked["attempts"] == 3
    assert "<" not in blocked["error"] and "\n" not in blocked["error"]
    assert sum(r["status"] == "ok" for r in output) == 9


def test_changed_options_or_input_edited_in_place_are_refused_and_restart_starts_over(
    sim, runner, tmp_path: Path
) -> None:
    """SPEC §4/§8.8: a checkpoint belongs to one input (size *and* content) and one set of request-shaping
    options; anything else is refused (exit 2, nothing sent) unless --restart, never silently resumed with
    stale answers."""
    server = sim()
    env = connection_env(server)
    rows = [
        {"id": "capital", "prompt": "What is the capital of France?"},
        *chat_rows(4),
        {"id": "bad", "prompt": "x [[sim:400]]"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    first = invoke(runner, ["run", str(source), "-o", str(output)], env=env)
    assert first.exit_code == 1  # one error row keeps the checkpoint
    assert (tmp_path / "out.jsonl.checkpoint").exists()
    answered = output.read_bytes()
    assert b"France" in answered

    changed = invoke(runner, ["run", str(source), "-o", str(output), "--system", "Be brief."], env=env)
    assert changed.exit_code == 2
    refused = MISMATCH.search(final_message(changed.stderr))
    assert refused is not None and refused["why"] == "changed option(s): system", changed.stderr

    # Edited in place, same byte length: only the content hash can tell.
    original = source.read_bytes()
    source.write_bytes(original.replace(b"France", b"Norway"))
    assert source.stat().st_size == len(original)
    sent = server.stats.requests
    other_input = invoke(runner, ["run", str(source), "-o", str(output)], env=env)
    assert other_input.exit_code == 2, other_input.stderr
    refused = MISMATCH.search(final_message(other_input.stderr))
    assert refused is not None and refused["why"].startswith(f"input was {source} ({len(original)} bytes)")
    assert server.stats.requests == sent
    assert output.read_bytes() == answered  # refused: the output was left alone

    restarted = invoke(runner, ["run", str(source), "-o", str(output), "--restart"], env=env)
    assert restarted.exit_code == 1
    assert server.stats.requests - sent == 6
    final = read_jsonl(output)
    assert len(final) == 6
    assert "Norway" in final[0]["content"] and "France" not in final[0]["content"]


def test_a_large_input_edited_in_the_middle_is_refused(sim, runner, tmp_path: Path) -> None:
    """SPEC §4: the input identity covers the whole file, not only its ends: one row edited in place in the
    middle of a file of several hundred KiB (same length) refuses the checkpoint."""
    server = sim()
    env = connection_env(server)
    rows = [{"id": f"r{i}", "prompt": f"question {i:05d} " + "padding " * 20} for i in range(3000)]
    rows[1500]["prompt"] = "What is the capital of France?"
    rows.append({"id": "bad", "prompt": "x [[sim:400]]"})
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    assert source.stat().st_size > 4 * 65536
    output = tmp_path / "out.jsonl"
    first = invoke(runner, ["run", str(source), "-o", str(output), "-c", "32", "-q"], env=env)
    assert first.exit_code == 1

    original = source.read_bytes()
    source.write_bytes(original.replace(b"France", b"Norway"))
    sent = server.stats.requests
    again = invoke(runner, ["run", str(source), "-o", str(output)], env=env)
    assert again.exit_code == 2, again.stderr
    refused = MISMATCH.search(final_message(again.stderr))
    assert refused is not None and refused["why"].startswith("input was "), again.stderr
    assert server.stats.requests == sent


def test_invalid_rows_never_count_toward_abort_after(sim, runner, tmp_path: Path) -> None:
    """SPEC §8.9: --abort-after counts consecutive `error` rows only; 30 invalid rows in a row (more than
    --abort-after 25) are not failures of the API, and the valid rows after them all run."""
    server = sim()
    rows = [*({"id": f"empty{i}", "messages": []} for i in range(30)), *chat_rows(10)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--abort-after", "25"],
        env=connection_env(server),
    )
    assert result.exit_code == 1, result.stderr  # some rows invalid, no safety stop (3)
    output = read_jsonl(tmp_path / "out.jsonl")
    assert [r["status"] for r in output] == ["invalid"] * 30 + ["ok"] * 10
    assert [r["id"] for r in output[30:]] == [f"row{i}" for i in range(10)]
    assert server.stats.requests == 10


def test_plain_rerun_sends_nothing_and_retry_errors_resends_only_errors(sim, runner, tmp_path: Path) -> None:
    server = sim()
    env = connection_env(server)
    rows = [*chat_rows(8), {"id": "flaky", "prompt": "x [[sim:500x3]]"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    first = invoke(runner, ["run", str(source), "-o", str(output), "--max-attempts", "2"], env=env)
    assert first.exit_code == 1
    assert read_jsonl(output)[8]["status"] == "error"

    before = server.stats.requests
    plain = invoke(runner, ["run", str(source), "-o", str(output), "--max-attempts", "2"], env=env)
    assert plain.exit_code == 1
    assert server.stats.requests == before  # nothing left to send

    retried = invoke(runner, ["run", str(source), "-o", str(output), "--retry-errors"], env=env)
    assert retried.exit_code == 0
    assert server.stats.requests - before == 2  # the third 500, then the success: only the error row
    final = read_jsonl(output)
    assert len(final) == 9 and {r["status"] for r in final} == {"ok"}
    assert sorted(p.name for p in (tmp_path / "out.jsonl.checkpoint").iterdir()) == ["lock", "manifest.json"]


def test_key_echoed_in_401_body_never_reaches_any_output(sim, runner, tmp_path: Path) -> None:
    server = sim(require_key="the-right-key", echo_key_in_error=True)
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(20))
    output = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    result = invoke(
        runner,
        ["run", str(source), "-o", str(output), "-v", "--summary-json", str(summary)],
        env=connection_env(server, key=SECRET),
    )
    assert result.exit_code == 3
    assert SECRET not in result.output and SECRET not in result.stderr and SECRET not in result.stdout
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_redirect_to_another_host_never_sees_authorization(sim, runner, tmp_path: Path) -> None:
    elsewhere = sim()
    server = sim(redirect_to=elsewhere.url + "/v1/chat/completions")
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl")], env=connection_env(server, key=SECRET)
    )
    assert elsewhere.stats.requests == 0 and elsewhere.stats.auth_headers_seen == 0
    output = read_jsonl(tmp_path / "out.jsonl")
    assert all(r["status"] == "error" and r["status_code"] == 307 for r in output)
    assert result.exit_code == 1
