"""Side outputs never clobber (SPEC §8.28) and merge refuses gaps (SPEC §8.35), through the real CLI.

Every path a command writes (the output and its checkpoint folder, --summary-json, --cache, report --html,
merge -o) is checked against every path it reads or writes before anything is sent or written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: what "nothing overwritten" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_exit_2(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


# ---- run: no written path may be a path the run reads or writes -----------------------------------------------

CLASHES = {
    # name: (extra args, a fragment the one line must hold); run in tmp_path with in.jsonl, job.toml, prompt.txt
    "summary is the input, spelled ./": (["-o", "out.jsonl", "--summary-json", "./in.jsonl"], "is the input"),
    "summary is the output": (["-o", "out.jsonl", "--summary-json", "out.jsonl"], "is the output"),
    "summary is the cache": (["-o", "out.jsonl", "--cache", "c", "--summary-json", "c"], "--cache"),
    "cache is the output": (["-o", "out.jsonl", "--cache", "out.jsonl"], "is the output"),
    "cache is the input": (["-o", "out.jsonl", "--cache", "in.jsonl"], "in.jsonl"),
    "output is the job file": (["--job", "job.toml", "-o", "job.toml"], "is the job file"),
    "summary is the job file": (
        ["--job", "job.toml", "-o", "out.jsonl", "--summary-json", "job.toml"],
        "is the job file",
    ),
    "output is the template file": (["--template-file", "prompt.txt", "-o", "prompt.txt"], "--template-file"),
    "summary is the template file": (
        ["--template-file", "prompt.txt", "-o", "out.jsonl", "--summary-json", "prompt.txt"],
        "--template-file",
    ),
    "summary inside the checkpoint": (
        ["-o", "out.jsonl", "--summary-json", "out.jsonl.checkpoint/s.json"],
        "checkpoint folder",
    ),
    "cache inside the checkpoint": (["-o", "out.jsonl", "--cache", "out.jsonl.checkpoint/cache"], "checkpoint folder"),
    "summary is the checkpoint folder": (
        ["-o", "out.jsonl", "--summary-json", "out.jsonl.checkpoint"],
        "checkpoint folder",
    ),
    "output through a symlink to the input": (["-o", "link.jsonl"], "is the input"),
    "summary through a symlinked folder": (
        ["-o", "out.jsonl", "--summary-json", "linked-dir/in.jsonl"],
        "is the input",
    ),
    "s3 summary is the s3 output, spelled //": (
        ["-o", "s3://bucket/out.jsonl", "--summary-json", "s3://bucket//out.jsonl/"],
        "is the output",
    ),
    "s3 summary inside the s3 checkpoint": (
        ["-o", "s3://bucket/out.jsonl", "--summary-json", "s3://bucket/out.jsonl.checkpoint/s.json"],
        "checkpoint folder",
    ),
}


@pytest.mark.parametrize("case", sorted(CLASHES))
def test_a_written_path_that_is_another_path_of_the_run_is_refused(
    sim, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """SPEC §8.28: --summary-json, --cache and the output may not be the input, the output, each other, the job
    or template file, or inside the checkpoint folder, however spelled: exit 2 in one line, nothing sent,
    nothing overwritten."""
    server = sim()
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(3)])
    (tmp_path / "job.toml").write_text('input = "in.jsonl"\n', encoding="utf-8")
    (tmp_path / "prompt.txt").write_text("Q: {prompt}", encoding="utf-8")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "in.jsonl")
    (tmp_path / "linked-dir").symlink_to(tmp_path)
    before = snapshot(tmp_path)
    extra, fragment = CLASHES[case]
    args = ["run", *([] if "--job" in extra else ["in.jsonl"]), *extra]

    result = invoke(runner, args, env=connection_env(server))

    assert fragment in one_line_exit_2(result)
    assert server.stats.requests == 0
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out.jsonl.checkpoint").exists()


@pytest.mark.parametrize("option", ["-o", "--summary-json", "--cache"])
def test_a_written_path_under_a_file_is_refused_before_sending(sim, runner, tmp_path: Path, option: str) -> None:
    """SPEC §8.28: the folders of written paths are checked writable before the run; a folder that cannot
    exist (a file is in the way) is one line and exit 2, nothing sent (it was a traceback for -o)."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(2))
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder\n", encoding="utf-8")
    target = str(blocker / "sub" / "thing")
    args = ["-o", target] if option == "-o" else ["-o", str(tmp_path / "out.jsonl"), option, target]

    result = invoke(runner, ["run", str(source), *args], env=connection_env(server))

    assert f"{option} {target}" in one_line_exit_2(result) and "not a folder" in result.stderr
    assert server.stats.requests == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_an_unwritable_output_folder_is_refused_before_sending(sim, runner, tmp_path: Path) -> None:
    """SPEC §8.28: an output folder that cannot be written is one line and exit 2, nothing sent (it was a
    PermissionError traceback). Checked by trying, so it holds for root too: /sys refuses even root (CI runs
    as root, where a chmod-locked folder would not stop a write)."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(2))
    result = invoke(runner, ["run", str(source), "-o", "/sys/out.jsonl"], env=connection_env(server))
    assert "cannot write in the folder" in one_line_exit_2(result)
    assert server.stats.requests == 0


def test_missing_folders_of_written_paths_are_created(sim, runner, tmp_path: Path) -> None:
    """Decision on SPEC §8.28: "checked writable" means the nearest existing folder is writable; missing folders
    of -o and --summary-json are created, as -o always did (`-o out/x.jsonl` on a fresh checkout works)."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(2))
    output, summary = tmp_path / "out" / "run1" / "x.jsonl", tmp_path / "reports" / "run1" / "summary.json"

    result = invoke(
        runner, ["run", str(source), "-o", str(output), "--summary-json", str(summary)], env=connection_env(server)
    )

    assert result.exit_code == 0, result.output
    assert len(read_jsonl(output)) == 2
    assert json.loads(summary.read_text(encoding="utf-8"))["rows"] == 2


def test_a_summary_that_cannot_be_written_at_the_end_is_exit_2_with_the_output_written(
    sim, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §8.28: if writing --summary-json still fails at the end, that is one line and exit 2 (it was a
    message and the run's exit 0), with the output written and no half summary left behind."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    output, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    summary.write_text('{"old": true}\n', encoding="utf-8")
    real_replace = os.replace

    def disk_full_for_the_summary(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(dst) == str(summary):
            raise OSError(28, "No space left on device")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full_for_the_summary)
    result = invoke(
        runner, ["run", str(source), "-o", str(output), "--summary-json", str(summary)], env=connection_env(server)
    )

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("inferbatch:")]
    assert errors == [
        f"inferbatch: cannot write --summary-json {summary}: No space left on device; the output {output} is written"
    ]
    assert len(read_jsonl(output)) == 3
    assert summary.read_text(encoding="utf-8") == '{"old": true}\n'  # not truncated, not half written
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


# ---- merge ---------------------------------------------------------------------------------------------------


@pytest.fixture
def shards(sim, runner, tmp_path: Path) -> list[Path]:
    """Outputs of `run --shard I/3` over the same 30 rows."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(30))
    outputs = []
    for index in range(3):
        out = tmp_path / f"shard{index}.jsonl"
        result = invoke(
            runner, ["run", str(source), "-o", str(out), "--shard", f"{index}/3"], env=connection_env(server)
        )
        assert result.exit_code == 0, result.output
        outputs.append(out)
    return outputs


def test_merge_refuses_a_missing_shard_unless_allow_gaps(runner, shards: list[Path], tmp_path: Path) -> None:
    """SPEC §8.35: shard outputs whose indexes leave a gap (a missing shard) are exit 2 in one line and no output
    (it wrote a partial file and exited 0); --allow-gaps writes the rows there are."""
    merged = tmp_path / "merged.jsonl"
    two = [str(p) for p in shards[:2]]

    refused = invoke(runner, ["merge", *two, "-o", str(merged)])

    assert "gap" in one_line_exit_2(refused) and "--allow-gaps" in refused.stderr
    assert not merged.exists()

    allowed = invoke(runner, ["merge", *two, "-o", str(merged), "--allow-gaps"])

    assert allowed.exit_code == 0, allowed.output
    expected = sorted(r["index"] for p in shards[:2] for r in read_jsonl(p))
    assert [r["index"] for r in read_jsonl(merged)] == expected


def test_merge_refuses_a_gap_at_the_start(runner, tmp_path: Path) -> None:
    """SPEC §8.35: indexes must start at 0; an output whose first row is index 5 leaves a gap."""
    rows = [{"id": f"r{i}", "index": i, "status": "ok"} for i in range(5, 8)]
    part = write_jsonl(tmp_path / "part.jsonl", rows)

    refused = invoke(runner, ["merge", str(part), "-o", str(tmp_path / "m.jsonl")])

    assert "the first at index 0" in one_line_exit_2(refused)
    assert not (tmp_path / "m.jsonl").exists()


def test_merge_names_an_overlap_before_a_gap(runner, shards: list[Path], tmp_path: Path) -> None:
    """SPEC §8.26 and §8.35: the same shard given twice (with another missing) is reported as an overlap."""
    result = invoke(runner, ["merge", str(shards[0]), str(shards[1]), str(shards[0]), "-o", str(tmp_path / "m.jsonl")])

    assert "overlap" in one_line_exit_2(result)


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_merge_output_may_not_be_one_of_its_inputs(runner, shards: list[Path], tmp_path: Path, spelling: str) -> None:
    """SPEC §8.28: merge -o may not be one of its inputs, however spelled: exit 2, the input untouched."""
    target = {"same": str(shards[1]), "dot": str(tmp_path / "." / "x" / ".." / shards[1].name)}.get(spelling)
    if spelling == "symlink":
        (tmp_path / "alias.jsonl").symlink_to(shards[1])
        target = str(tmp_path / "alias.jsonl")
    before = [p.read_bytes() for p in shards]

    result = invoke(runner, ["merge", *map(str, shards), "-o", str(target)])

    assert "is one of the inputs" in one_line_exit_2(result)
    assert [p.read_bytes() for p in shards] == before


def test_merge_output_under_a_file_is_one_line(runner, shards: list[Path], tmp_path: Path) -> None:
    """SPEC §8.28: merge -o in a folder that cannot exist is one line and exit 2, not a traceback."""
    result = invoke(runner, ["merge", *map(str, shards), "-o", str(shards[0] / "merged.jsonl")])

    assert "not a folder" in one_line_exit_2(result)


@pytest.mark.parametrize("bad", ['{"id": "a", "index": "zero", "status": "ok"}', "[1, 2, 3]", "7"])
def test_merge_of_a_file_with_a_bad_index_is_one_line(runner, tmp_path: Path, bad: str) -> None:
    """SPEC §8.26: a file that is not an inferbatch output is exit 2 in one line (an index that is not a
    number, or a line that is not an object, was a traceback)."""
    good = write_jsonl(tmp_path / "good.jsonl", [{"id": "b", "index": 0, "status": "ok"}])
    odd = write_jsonl(tmp_path / "odd.jsonl", [bad])

    result = invoke(runner, ["merge", str(good), str(odd), "-o", str(tmp_path / "m.jsonl")])

    assert "odd.jsonl" in one_line_exit_2(result)


def test_merge_combines_evaluation_shards(runner, tmp_path: Path) -> None:
    """SPEC §8.23/§8.26: shards of an evaluation run (several rows per index: one per variant and sample)
    merge into the order a single run writes (variant by variant, then input order); they were refused
    as overlapping."""
    rows = [{"id": f"q{i}", "question": f"question {i}"} for i in range(12)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    job = tmp_path / "eval.toml"
    job.write_text(
        'input = "in.jsonl"\nsimulate = true\nrepeat = 2\n'
        '[[variants]]\nname = "terse"\ntemplate = "One word: {question}"\n'
        '[[variants]]\nname = "long"\ntemplate = "Explain: {question}"\n',
        encoding="utf-8",
    )
    whole = tmp_path / "whole.jsonl"
    assert invoke(runner, ["run", "--job", str(job), "-o", str(whole)]).exit_code == 0
    parts = []
    for index in range(2):
        part = tmp_path / f"part{index}.jsonl"
        assert invoke(runner, ["run", "--job", str(job), "-o", str(part), "--shard", f"{index}/2"]).exit_code == 0
        parts.append(str(part))
    merged = tmp_path / "merged.jsonl"

    result = invoke(runner, ["merge", *parts, "-o", str(merged)])

    assert result.exit_code == 0, result.output
    place = ("variant", "index", "sample", "id", "content")
    assert [[r[k] for k in place] for r in read_jsonl(merged)] == [[r[k] for k in place] for r in read_jsonl(whole)]
    assert source.exists()
