"""The library can be driven from Python without the CLI: the README's example, and the public surface."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import inferbatch

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample_data").mkdir()
    (tmp_path / "sample_data" / "prompts.jsonl").write_bytes((ROOT / "sample_data" / "prompts.jsonl").read_bytes())
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Use from Python\n\n```python\n(.*?)```", readme, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1).replace("print(", "_ = ("), "README", "exec"), namespace)  # noqa: S102
    report = namespace["report"]
    assert report.outcome == "ok" and report.summary.ok == 50  # type: ignore[attr-defined]


def test_public_names_resolve_and_errors_carry_exit_codes() -> None:
    for name in inferbatch.__all__:
        assert getattr(inferbatch, name) is not None
    assert inferbatch.ConfigError("x").exit_code == 2
    assert inferbatch.AuthFailed("x").exit_code == 3
    assert inferbatch.DeadlineReached("x").exit_code == 75
    assert inferbatch.Interrupted("SIGTERM", 143).exit_code == 143


def test_run_batch_returns_a_report_for_a_stop_instead_of_raising(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": "r{i}", "prompt": "q {i}"}}\n' for i in range(30)))
    cfg = inferbatch.resolve(
        {"input": str(source), "output": str(tmp_path / "out.jsonl"), "simulate": True, "max_total_tokens": 1},
        os.environ,
    )

    async def run() -> inferbatch.RunReport:
        async with inferbatch.simulated(cfg) as simulated_cfg:
            return await inferbatch.run_batch(simulated_cfg, handle_signals=False)

    report = asyncio.run(run())
    assert isinstance(report.stop, inferbatch.BudgetExceeded)
    assert report.outcome is inferbatch.Outcome.STOPPED and report.summary.rows == 0


def test_run_batch_without_a_url_is_refused_not_sent_anywhere(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "r0", "prompt": "q"}\n')
    cfg = inferbatch.resolve(
        {"input": str(source), "output": str(tmp_path / "out.jsonl"), "simulate": True}, os.environ
    )
    try:
        asyncio.run(inferbatch.run_batch(cfg, handle_signals=False))
    except inferbatch.ConfigError as exc:
        assert "no URL" in str(exc)
    else:
        raise AssertionError("run_batch sent a simulate config with no URL")
    assert not (tmp_path / "out.jsonl").exists()
