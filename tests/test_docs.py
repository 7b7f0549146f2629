"""The README stays true: its demo command works, and every command is documented and has help."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import invoke, read_jsonl
from inferbatch.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_demo_and_the_test_commands() -> None:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("inferbatch run --job jobs/demo.toml")
    assert commands[1].endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci  # CI runs the README's test command


def test_demo_job_runs_on_a_fresh_copy(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    done = subprocess.run(
        [sys.executable, "-m", "inferbatch", "run", "--job", "jobs/demo.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(tmp_path / "out" / "demo.jsonl")
    assert len(rows) == 50 and {r["status"] for r in rows} == {"ok"}
    assert (tmp_path / "out" / "demo.summary.json").exists()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_and_is_in_the_readme(runner, command: str) -> None:
    result = invoke(runner, [command, "--help"])
    assert result.exit_code == 0
    assert cli.commands[command].help
    assert f"inferbatch {command}" in README


def test_every_run_option_is_in_the_readme() -> None:
    hidden = {"--help", "--job", "--url", "--api-key-env", "--simulate", "--model", "--quiet", "--verbose"}
    for param in cli.commands["run"].params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--") and opt not in hidden:
                assert f"`{opt}" in README or f"{opt}`" in README or f" {opt} " in README, opt
