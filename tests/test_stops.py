"""Which server answers stop the whole run and which stay one row's error (SPEC §4 "Safety stops")."""

from __future__ import annotations

from pathlib import Path

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl


def test_a_json_403_for_a_model_only_one_row_names_is_that_rows_error(sim, runner, tmp_path: Path) -> None:
    """One row asking for a model the key may not use must not stop the job on every rerun."""
    server = sim()
    rows = chat_rows(20)
    rows[7] = {"id": "special", "model": "premium-model", "prompt": "hello [[sim:403auth]]"}
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = invoke(runner, ["run", str(source), "-o", str(out), "-c", "2"], env=connection_env(server))
    assert result.exit_code == 1, result.stderr
    output = read_jsonl(out)
    assert len(output) == 20
    special = output[7]
    assert special["status"] == "error" and special["status_code"] == 403 and special["attempts"] == 1
    assert special["error"].startswith("authorization_error")
    assert [r["status"] for i, r in enumerate(output) if i != 7] == ["ok"] * 19
    # A plain rerun does not send it again (it is final), and nothing else either.
    again = invoke(runner, ["run", str(source), "-o", str(out)], env=connection_env(server))
    assert again.exit_code == 1 and server.stats.requests == 20


def test_a_json_403_for_the_runs_own_model_still_stops_at_once(sim, runner, tmp_path: Path) -> None:
    """The key may not use the model every row goes to: stop before burning the job (exit 3)."""
    server = sim()
    rows = chat_rows(50)
    for row in rows:
        row["messages"][0]["content"] += " [[sim:403auth]]"
    rows[0]["model"] = "sim-model"  # naming the run's own model explicitly is still the run's model
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "-c", "2"], env=connection_env(server)
    )
    assert result.exit_code == 3
    assert "the key may not use model 'sim-model' (403)" in result.stderr
    assert server.stats.requests <= 2
