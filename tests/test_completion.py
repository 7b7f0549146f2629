"""A finished job is never paid for twice, a pilot is a pilot, and a full disk stops the spending (SPEC §8.2).

Every test runs the real CLI against the real simulator and counts at the server what was sent.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_complete_job_run_again_sends_nothing_and_leaves_the_output_untouched(sim, runner, tmp_path: Path) -> None:
    """Never pay twice: the README's Scheduler pattern reruns the same command every hour."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(40))
    out = tmp_path / "out.jsonl"
    args = ["run", str(source), "-o", str(out), "--deadline", "55m"]
    first = invoke(runner, args, env=connection_env(server))
    assert first.exit_code == 0, first.stderr
    assert server.stats.requests == 40
    checkpoint = tmp_path / "out.jsonl.checkpoint"
    assert _files(checkpoint) == ["lock", "manifest.json"]  # the logs are gone, the record stays
    record = json.loads((checkpoint / "manifest.json").read_text())["complete"]
    assert record["rows"] == 40 and record["output_bytes"] == out.stat().st_size

    before = out.read_bytes()
    os.utime(out, (1_000_000_000, 1_000_000_000))
    for _ in range(2):
        again = invoke(runner, [*args, "--summary-json", str(tmp_path / "s.json")], env=connection_env(server))
        assert again.exit_code == 0, again.stderr
        assert "is already complete (rows=40): nothing sent" in again.stderr
    assert server.stats.requests == 40
    assert out.read_bytes() == before and out.stat().st_mtime == 1_000_000_000  # not even rewritten
    assert json.loads((tmp_path / "s.json").read_text())["ok"] == 40  # the summary still describes the job


def test_a_complete_job_whose_output_is_gone_is_exit_2_and_restart_runs_it_again(sim, runner, tmp_path: Path) -> None:
    """Never pay twice silently: a vanished output is a person's call, not an automatic re-run."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(10))
    out = tmp_path / "out.jsonl"
    assert invoke(runner, ["run", str(source), "-o", str(out)], env=connection_env(server)).exit_code == 0
    out.unlink()
    gone = invoke(runner, ["run", str(source), "-o", str(out)], env=connection_env(server))
    assert gone.exit_code == 2
    assert f"{out} is gone, but its checkpoint says the job completed" in gone.stderr
    assert "--restart" in gone.stderr and server.stats.requests == 10 and not out.exists()

    restarted = invoke(runner, ["run", str(source), "-o", str(out), "--restart"], env=connection_env(server))
    assert restarted.exit_code == 0, restarted.stderr
    assert server.stats.requests == 20 and len(read_jsonl(out)) == 10


def test_a_changed_job_on_a_complete_output_is_refused_as_before(sim, runner, tmp_path: Path) -> None:
    """The completion record belongs to one input and one set of request options."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(5))
    out = tmp_path / "out.jsonl"
    assert invoke(runner, ["run", str(source), "-o", str(out)], env=connection_env(server)).exit_code == 0
    changed = invoke(
        runner, ["run", str(source), "-o", str(out), "--param", "temperature=0"], env=connection_env(server)
    )
    assert changed.exit_code == 2
    assert "belongs to another run (changed option(s): params)" in changed.stderr
    assert server.stats.requests == 5


def test_a_limit_pilot_after_an_interrupted_run_keeps_the_checkpoint_whole(sim, runner, tmp_path: Path) -> None:
    """--limit is a pilot: it never deletes what an earlier run paid for, and the full run sends only the rest."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(30))
    out = tmp_path / "out.jsonl"
    env = connection_env(server)
    assert invoke(runner, ["run", str(source), "-o", str(out), "--limit", "12"], env=env).exit_code == 0
    assert server.stats.requests == 12
    assert "results.jsonl" in _files(tmp_path / "out.jsonl.checkpoint")
    # A smaller pilot afterwards sends nothing and removes nothing.
    assert invoke(runner, ["run", str(source), "-o", str(out), "--limit", "5"], env=env).exit_code == 0
    assert server.stats.requests == 12
    full = invoke(runner, ["run", str(source), "-o", str(out)], env=env)
    assert full.exit_code == 0, full.stderr
    assert server.stats.requests == 30  # only the 18 rows the pilots left
    assert [r["id"] for r in read_jsonl(out)] == [f"row{i}" for i in range(30)]
    assert _files(tmp_path / "out.jsonl.checkpoint") == ["lock", "manifest.json"]


def test_a_job_with_error_rows_keeps_its_checkpoint_and_retry_errors_resends_exactly_those(
    sim, runner, tmp_path: Path
) -> None:
    """Rows that ended error are not complete: only --retry-errors sends them, and only them."""
    server = sim()
    rows = chat_rows(8)
    rows[3]["messages"][0]["content"] += " [[sim:400]]"
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    env = connection_env(server)
    assert invoke(runner, ["run", str(source), "-o", str(out)], env=env).exit_code == 1
    assert server.stats.requests == 8
    plain = invoke(runner, ["run", str(source), "-o", str(out)], env=env)
    assert plain.exit_code == 1 and server.stats.requests == 8
    retried = invoke(runner, ["run", str(source), "-o", str(out), "--retry-errors"], env=env)
    assert retried.exit_code == 1 and server.stats.requests == 9  # the one error row, once
    assert [r["status"] for r in read_jsonl(out)].count("error") == 1


def test_an_evaluation_run_of_one_variant_does_not_complete_the_job(sim, runner, tmp_path: Path) -> None:
    """--variant runs a part of the job: the other variants stay to be run, not marked complete."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "question": f"topic {i}"} for i in range(4)])
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{source}"\noutput = "{tmp_path / "out.jsonl"}"\n'
        '[[variants]]\nname = "a"\ntemplate = "A: {question}"\n'
        '[[variants]]\nname = "b"\ntemplate = "B: {question}"\n'
    )
    env = connection_env(server)
    assert invoke(runner, ["run", "--job", str(job), "--variant", "a"], env=env).exit_code == 0
    assert server.stats.requests == 4
    both = invoke(runner, ["run", "--job", str(job)], env=env)
    assert both.exit_code == 0, both.stderr
    assert server.stats.requests == 8
    assert sorted({r["variant"] for r in read_jsonl(tmp_path / "out.jsonl")}) == ["a", "b"]
    # Every variant done (no --variant): the job is complete, and the next run sends nothing.
    again = invoke(runner, ["run", "--job", str(job)], env=env)
    assert again.exit_code == 0 and "already complete" in again.stderr, again.stderr
    assert server.stats.requests == 8


def test_naming_every_variant_completes_the_job_like_naming_none(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "question": f"topic {i}"} for i in range(3)])
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{source}"\noutput = "{tmp_path / "out.jsonl"}"\n'
        '[[variants]]\nname = "a"\ntemplate = "A: {question}"\n'
        '[[variants]]\nname = "b"\ntemplate = "B: {question}"\n'
    )
    env = connection_env(server)
    every = ["run", "--job", str(job), "--variant", "a", "--variant", "b"]
    assert invoke(runner, every, env=env).exit_code == 0
    again = invoke(runner, every, env=env)
    assert again.exit_code == 0 and "already complete" in again.stderr, again.stderr
    assert server.stats.requests == 6


def _limit_file_size(limit: int) -> None:
    # A file-size limit stands in for a full disk (no mount needed): writes past it fail with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_checkpoint_that_cannot_be_written_stops_sending_and_a_rerun_continues(sim, tmp_path: Path) -> None:
    """Never pay for what cannot be kept: a full disk under the checkpoint stops the run with one line."""
    server = sim(latency_ms=5)
    rows = 400
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(rows))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, **connection_env(server)}
    args = [sys.executable, "-m", "inferbatch", "run", str(source), "-o", str(out), "-c", "4", "-q"]
    # About 60 result lines fit under 20 KB; the input (already written) is only read.
    full = subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=120, preexec_fn=lambda: _limit_file_size(20_000)
    )
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    assert "cannot write the checkpoint" in full.stderr
    sent_while_full = server.stats.requests
    assert sent_while_full < rows / 2  # it stopped, instead of sending everything into the void
    saved = (tmp_path / "out.jsonl.checkpoint" / "results.jsonl").read_bytes().count(b"\n")
    assert saved > 0

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    result = read_jsonl(out)
    assert [r["id"] for r in result] == [f"row{i}" for i in range(rows)]
    assert {r["status"] for r in result} == {"ok"}
    # Rows saved before the disk filled are not sent again: only the ones that could not be saved are.
    assert server.stats.requests == rows + (sent_while_full - saved)


def test_a_row_that_recovered_on_retry_errors_is_not_sent_again(sim, runner, tmp_path: Path) -> None:
    """--retry-errors re-sends exactly the rows that are error now: one that turned ok is final."""
    server = sim()
    rows = chat_rows(6)
    rows[1]["messages"][0]["content"] += " [[sim:500x2]]"  # fails both attempts of the first run, then recovers
    rows[4]["messages"][0]["content"] += " [[sim:400]]"  # fails for good
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    env = connection_env(server)
    args = ["run", str(source), "-o", str(out), "--max-attempts", "2"]
    assert invoke(runner, args, env=env).exit_code == 1
    assert server.stats.requests == 4 + 2 + 1
    assert invoke(runner, [*args, "--retry-errors"], env=env).exit_code == 1
    assert server.stats.requests == 7 + 2  # row 1 once (ok now), row 4 once (error again)
    assert [r["status"] for r in read_jsonl(out)] == ["ok", "ok", "ok", "ok", "error", "ok"]
    assert invoke(runner, [*args, "--retry-errors"], env=env).exit_code == 1
    assert server.stats.requests == 9 + 1  # only row 4
