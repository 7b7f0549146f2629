"""Tests the mutation run asked for in runner.py's own functions (benchmarks/mutation/README.md): the run's
wall time and figures in its summary, the skipped count of a resume, a stdin run's temporary checkpoint."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

import inferbatch
from conftest import connection_env, read_jsonl, write_jsonl
from inferbatch.progress import Progress


def run_library(cfg: inferbatch.RunConfig, progress: Progress | None = None) -> inferbatch.RunReport:
    async def go() -> inferbatch.RunReport:
        async with inferbatch.simulated(cfg) as simulated_cfg:
            return await inferbatch.run_batch(simulated_cfg, handle_signals=False, progress=progress)

    return asyncio.run(go())


def config(tmp_path: Path, rows: int, **settings: Any) -> inferbatch.RunConfig:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q {i}"} for i in range(rows)])
    return inferbatch.resolve(
        {"input": str(source), "output": str(tmp_path / "out.jsonl"), "simulate": True, **settings}, os.environ
    )


def test_the_summary_has_this_runs_wall_time_and_its_requests(tmp_path: Path) -> None:
    started = time.monotonic()
    report = run_library(config(tmp_path, 6))
    took = time.monotonic() - started

    assert report.summary.rows == 6
    assert 0 < report.summary.wall_s <= took  # the run's own time, not a clock reading
    assert report.summary.sent_this_run == 6  # the limiter's figures reach the summary
    assert report.summary.as_dict()["requests_per_s"] == round(6 / report.summary.wall_s, 2)


def test_a_resume_counts_the_rows_it_skips(tmp_path: Path) -> None:
    pilot = run_library(config(tmp_path, 5, limit=2))
    assert pilot.summary.rows == 2
    progress = Progress(total=None, quiet=True)

    rest = run_library(config(tmp_path, 5), progress)

    assert rest.summary.rows == 5 and rest.summary.sent_this_run == 3
    assert progress.skipped == 2


def test_a_stdin_run_leaves_no_temporary_checkpoint(
    runner: Any, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where Checkpoint.temporary makes its folder
    server = sim()
    text = "".join(f'{{"id": "r{i}", "prompt": "q {i}"}}\n' for i in range(3))
    out = tmp_path / "out.jsonl"

    result = runner.invoke(inferbatch.cli.cli, ["run", "-", "-o", str(out)], input=text, env=connection_env(server))

    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(out)) == 3
    assert sorted(p.name for p in scratch.iterdir()) == []


def test_a_stopped_run_counts_every_row_it_did_not_finish_as_unfinished(tmp_path: Path) -> None:
    """Not only the rows in flight at the stop: the rows never read count too (SPEC §3's summary)."""
    report = run_library(config(tmp_path, 30, max_total_tokens=1))  # the budget stops it before the first row

    assert isinstance(report.stop, inferbatch.BudgetExceeded)
    assert report.summary.rows == 0
    assert report.summary.unfinished == 30
