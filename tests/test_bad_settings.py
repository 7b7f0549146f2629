"""Bad settings found in review: each is one line and exit 2, before anything is sent."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import chat_rows, connection_env, invoke, write_jsonl


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-c", "10000000"], "inferbatch: --concurrency 10000000 "),
        (["--param", "max_tokens=0"], "inferbatch: --param max_tokens"),
        (["--param", "max_tokens=NaN"], "inferbatch: --param max_tokens"),
        (["--param", "model=5"], "inferbatch: --param model "),
        (["--url", "http://[::1"], "is not a valid URL"),
    ],
)
def test_bad_values_are_exit_2_and_nothing_is_sent(sim, runner, tmp_path: Path, extra: list[str], message: str) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    result = invoke(runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), *extra], env=connection_env(server))
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert server.stats.requests == 0


def test_output_or_summary_that_is_a_folder_and_a_cache_that_is_a_file(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    (tmp_path / "folder").mkdir()
    for extra in (
        ["-o", str(tmp_path / "folder")],
        ["-o", str(tmp_path / "o.jsonl"), "--summary-json", str(tmp_path / "folder")],
        ["-o", str(tmp_path / "o.jsonl"), "--cache", str(source)],
    ):
        result = invoke(runner, ["run", str(source), *extra], env=connection_env(server))
        assert result.exit_code == 2, extra
        assert result.stderr.count("\n") == 1
    assert server.stats.requests == 0


def test_output_and_input_the_same_file_is_refused(runner, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    before = source.read_bytes()
    result = invoke(runner, ["run", str(source), "-o", str(tmp_path / "." / "in.jsonl"), "--simulate"])
    assert result.exit_code == 2 and f"-o {tmp_path / 'in.jsonl'} is the input" in result.stderr
    assert source.read_bytes() == before


def test_job_file_values_of_the_wrong_type(runner, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", chat_rows(2))
    for line in ("template = 7", "keep_columns = 5", "concurrency = true", 'system = ["a"]', 'retry_errors = "yes"'):
        job = tmp_path / "job.toml"
        job.write_text(f'input = "in.jsonl"\noutput = "out.jsonl"\nsimulate = true\n{line}\n')
        result = invoke(runner, ["run", "--job", str(job)])
        assert result.exit_code == 2, line
        key = line.split(" = ")[0]
        assert f"job file {job}: `{key}` must be" in result.stderr and "Traceback" not in result.stderr


def test_output_file_gets_ordinary_permissions(runner, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(2))
    assert invoke(runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--simulate"]).exit_code == 0
    mode = stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # not mkstemp's 0600


def test_unreachable_s3_is_one_line_and_exit_2(sim, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens there
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    result = invoke(runner, ["run", str(source), "-o", "s3://nobucket/out.jsonl"], env=connection_env(server))
    assert result.exit_code == 2
    assert "cannot use the checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert server.stats.requests == 0


def test_an_output_that_cannot_be_written_keeps_the_rows_in_the_checkpoint(
    sim, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §3/§4: the output is written to a temp file and renamed into place; when that fails (a full disk),
    the run says so in one line (exit 2), leaves no temp file and no half output, keeps every finished row in
    the checkpoint, and a rerun writes the output without sending anything again."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(4))
    output = tmp_path / "out.jsonl"
    real_replace = os.replace

    def disk_full_at_the_rename(src: str, dst: str, *args: object, **kwargs: object) -> None:
        if os.fspath(dst) == str(output):
            raise OSError(28, "No space left on device")
        real_replace(src, dst, *args, **kwargs)  # the checkpoint's own files are written as usual

    monkeypatch.setattr(os, "replace", disk_full_at_the_rename)
    failed = invoke(runner, ["run", str(source), "-o", str(output)], env=connection_env(server))
    assert failed.exit_code == 2
    assert f"inferbatch: cannot write {output} (" in failed.stderr
    assert "No space left on device" in failed.stderr and "Traceback" not in failed.stderr
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl.checkpoint"]  # no temp file left
    assert (tmp_path / "out.jsonl.checkpoint" / "results.jsonl").read_bytes().count(b"\n") == 4
    monkeypatch.undo()

    again = invoke(runner, ["run", str(source), "-o", str(output)], env=connection_env(server))
    assert again.exit_code == 0
    assert server.stats.requests == 4  # the rerun only wrote the output
    assert output.read_text().count("\n") == 4
