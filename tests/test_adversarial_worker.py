"""The worker against awkward inboxes (SPEC §8.19): names that collide, places that loop, files that are not
inputs, inputs that are bad or still being written, and outboxes left by an older version."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import chat_rows, invoke, read_jsonl, write_jsonl
from inferbatch.config import resolve
from inferbatch.worker import InboxFile, Worker, case_clashes, outbox_inside_inbox
from test_cache_failures import hooked_simulator
from test_worker import wait_for, worker_process

HOUR_AGO = time.time() - 3600


def env_for(server: Any) -> dict[str, str]:
    return {"INFERENCE_URL": server.url, "INFERENCE_KEY": "test-key", "INFERENCE_MODEL_ID": "sim-model"}


def write_csv(path: Path, prefix: str, n: int) -> Path:
    path.write_text("id,prompt\n" + "".join(f"{prefix}{i},question {i}\n" for i in range(n)))
    return path


def aged(*paths: Path) -> None:
    """Make files look long finished, so the worker does not wait for them to stop changing."""
    for path in paths:
        os.utime(path, (HOUR_AGO, HOUR_AGO))


def worker_args(inbox: Path | str, outbox: Path | str, *extra: str) -> list[str]:
    return ["worker", "--inbox", str(inbox), "--outbox", str(outbox), "--poll", "0.2", "--once", *extra]


def make_worker(server: Any, inbox: Path, outbox: Path, **options: Any) -> Worker:
    cfg = resolve({"input": str(inbox)}, env_for(server))
    return Worker(cfg, inbox=str(inbox), outbox=str(outbox), poll=0.2, output_ext="jsonl", once=True, **options)


# ---- names -------------------------------------------------------------------------------------------------
def test_inputs_that_differ_only_by_extension_are_all_processed(runner: Any, sim: Any, tmp_path: Path) -> None:
    """Promise (§8.19): outputs are named by the whole file name, so `a.jsonl` and `a.csv` both run (one of them
    was skipped forever, silently, when outputs were named by the stem)."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    aged(write_jsonl(inbox / "a.jsonl", chat_rows(4, "j")), write_csv(inbox / "a.csv", "c", 3))
    result = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in read_jsonl(outbox / "a.jsonl.results.jsonl")] == [f"j{i}" for i in range(4)]
    assert [r["id"] for r in read_jsonl(outbox / "a.csv.results.jsonl")] == [f"c{i}" for i in range(3)]
    assert json.loads((outbox / "a.csv.done.json").read_text())["rows"] == 3
    assert json.loads((outbox / "a.jsonl.done.json").read_text())["rows"] == 4
    assert server.stats.requests == 7


def test_parquet_results_are_named_by_the_whole_input_name(runner: Any, sim: Any, tmp_path: Path) -> None:
    """Promise (§8.19): `--output-ext parquet` writes OUTBOX/FILE.results.parquet for inbox file FILE."""
    import pyarrow.parquet as pq

    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    aged(write_csv(inbox / "b.csv", "c", 3))
    result = invoke(runner, worker_args(inbox, outbox, "--output-ext", "parquet"), env=env_for(server))
    assert result.exit_code == 0, result.stderr
    assert pq.read_table(outbox / "b.csv.results.parquet").column("id").to_pylist() == ["c0", "c1", "c2"]
    assert (outbox / "b.csv.done.json").exists()


def test_inputs_whose_names_differ_only_by_case_are_both_processed(runner: Any, sim: Any, tmp_path: Path) -> None:
    """Promise (§8.19, every input file is processed): on a case-sensitive outbox, `a.jsonl` and `A.jsonl` are two
    inputs with two results."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    aged(write_jsonl(inbox / "a.jsonl", chat_rows(2, "lower")), write_jsonl(inbox / "A.jsonl", chat_rows(3, "upper")))
    if (inbox / "A.jsonl").read_text() == (inbox / "a.jsonl").read_text():
        pytest.skip("this file system ignores case")
    result = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(outbox / "a.jsonl.results.jsonl")) == 2
    assert len(read_jsonl(outbox / "A.jsonl.results.jsonl")) == 3
    assert server.stats.requests == 5


def test_on_an_outbox_that_ignores_case_a_clashing_name_is_skipped_with_a_reason(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Promise (§8.19, none is skipped without a log line saying why): where the outbox ignores case (macOS, an
    S3 inbox read into a local folder), the second of `a.jsonl`/`A.jsonl` would overwrite the first's results:
    it is skipped, with a line saying why, instead of clobbering them."""
    assert case_clashes(
        [InboxFile("u", "a.jsonl", 1, 1), InboxFile("u", "A.JSONL", 1, 1), InboxFile("u", "b.jsonl", 1, 1)]
    ) == {"A.JSONL": "a.jsonl"}
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    aged(write_jsonl(inbox / "a.jsonl", chat_rows(2)), write_jsonl(inbox / "A.jsonl", chat_rows(3)))
    worker = make_worker(server, inbox, outbox)
    worker.ignores_case = True  # what the probe finds on such a file system
    caplog.set_level(logging.INFO, logger="inferbatch")
    asyncio.run(worker.process_inbox())
    assert server.stats.requests == 3  # A.jsonl sorts first
    assert not (outbox / "a.jsonl.results.jsonl").exists()
    assert any(
        "worker_skip" in r.getMessage() and "a.jsonl" in r.getMessage() and "ignores case" in r.getMessage()
        for r in caplog.records
    )


# ---- places ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "inside", "inside-s3", "same-s3"])
def test_an_outbox_equal_to_or_inside_the_inbox_is_refused(where: str, runner: Any, sim: Any, tmp_path: Path) -> None:
    """Promise (§8.19): an outbox equal to or inside the inbox is exit 2 before anything runs (the worker took its
    own results as new inputs, without end)."""
    server = sim()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    aged(write_jsonl(inbox / "a.jsonl", chat_rows(2)))
    inbox_arg, outbox_arg = {
        "same": (str(inbox), str(inbox) + "/"),
        "inside": (str(inbox), str(inbox / "results")),
        "inside-s3": ("s3://bkt/jobs/inbox/", "s3://bkt/jobs/inbox/results"),
        "same-s3": ("s3://bkt/jobs/inbox", "s3://bkt/jobs/inbox/"),
    }[where]
    result = invoke(runner, worker_args(inbox_arg, outbox_arg), env=env_for(server))
    assert result.exit_code == 2
    assert "inside --inbox" in result.stderr and "Traceback" not in result.stderr
    assert server.stats.requests == 0
    assert sorted(p.name for p in inbox.iterdir()) == ["a.jsonl"]


def test_inside_is_by_folder_not_by_string_prefix(tmp_path: Path) -> None:
    """Promise (§8.19): `inbox-results` beside `inbox` is not inside it; `s3://b/in` does not contain `s3://b/inx`."""
    assert not outbox_inside_inbox(str(tmp_path / "inbox-results"), str(tmp_path / "inbox"))
    assert not outbox_inside_inbox("s3://b/inx/out", "s3://b/in")
    assert outbox_inside_inbox("s3://b/in/out", "s3://b")
    assert not outbox_inside_inbox(str(tmp_path / "inbox"), "s3://b/inbox")


@pytest.mark.parametrize("problem", ["inbox-missing", "inbox-is-a-file", "outbox-is-a-file", "outbox-under-a-file"])
def test_an_unusable_inbox_or_outbox_is_exit_2_with_one_line(
    problem: str, runner: Any, sim: Any, tmp_path: Path
) -> None:
    """Promise (§1 exit codes): an inbox that does not exist or is a file, an outbox that is a file or cannot be
    created are a usage error, exit 2 with one line (were a traceback, or an idle worker polling nothing)."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    aged(write_jsonl(inbox / "a.jsonl", chat_rows(2)))
    (tmp_path / "file").write_text("x\n")
    if problem == "inbox-missing":
        inbox = tmp_path / "no-such-inbox"
    elif problem == "inbox-is-a-file":
        inbox = tmp_path / "file"
    elif problem == "outbox-is-a-file":
        outbox = tmp_path / "file"
    else:
        outbox = tmp_path / "file" / "outbox"
    result = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert server.stats.requests == 0


# ---- what is not an input ----------------------------------------------------------------------------------
def test_files_that_are_not_inputs_are_skipped_each_with_a_reason(runner: Any, sim: Any, tmp_path: Path) -> None:
    """Promise (§8.19): result and done files are never inputs, and nothing is skipped without a line saying why
    (hidden files, other extensions, sub-folders were passed over silently; results were taken as inputs)."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (inbox / "sub").mkdir()
    skipped = {
        "old.jsonl.results.jsonl": write_jsonl(inbox / "old.jsonl.results.jsonl", chat_rows(2, "res")),
        "old.jsonl.done.json": inbox / "old.jsonl.done.json",
        ".partial.jsonl": write_jsonl(inbox / ".partial.jsonl", chat_rows(2, "hid")),
        "notes.txt": inbox / "notes.txt",
        "sub": write_jsonl(inbox / "sub" / "deep.jsonl", chat_rows(2, "sub")),
    }
    (inbox / "old.jsonl.done.json").write_text("{}\n")
    (inbox / "notes.txt").write_text("hello\n")
    aged(write_jsonl(inbox / "good.jsonl", chat_rows(3, "good")), *skipped.values())
    result = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert result.exit_code == 0, result.stderr
    assert server.stats.requests == 3
    outputs = sorted(p.name for p in outbox.iterdir() if not p.name.endswith(".checkpoint"))  # §8.2 record
    assert outputs == ["good.jsonl.done.json", "good.jsonl.results.jsonl"]
    skip_lines = [line for line in result.stderr.splitlines() if line.startswith("worker_skip")]
    for name in skipped:
        assert any(f"input={name} " in line and "reason=" in line for line in skip_lines), (name, skip_lines)
    assert len(skip_lines) == len(skipped)


# ---- bad inputs --------------------------------------------------------------------------------------------
def test_a_bad_input_is_logged_once_and_passed_over_without_crash_looping(tmp_path: Path, sim_process: Any) -> None:
    """Promise (§6: a worker dyno that exits is restarted): an input that cannot be read (exit 2 for `run`) is
    logged and the worker goes on to the next file and stays up; it is not retried while it is unchanged (it
    was, on every poll, with its error each time)."""
    server = sim_process()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (inbox / "bad.parquet").write_bytes(b"this is not parquet\n")
    aged(inbox / "bad.parquet", write_jsonl(inbox / "good.jsonl", chat_rows(3)))
    proc = worker_process(inbox, outbox, server.url)
    try:
        wait_for(lambda: (outbox / "good.jsonl.done.json").exists())
        aged(write_jsonl(inbox / "later.jsonl", chat_rows(2, "later")))  # a later poll happens, bad.parquet unchanged
        wait_for(lambda: (outbox / "later.jsonl.done.json").exists())
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    failures = [line for line in stderr.splitlines() if line.startswith("worker_failed")]
    assert len(failures) == 1 and "bad.parquet" in failures[0], stderr
    assert not (outbox / "bad.parquet.done.json").exists()
    assert server.stats()["requests"] == 5


# ---- files still being written -----------------------------------------------------------------------------
def test_a_local_file_still_being_written_waits_until_it_stops_changing(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Promise (§8.19, every input file is processed whole): a local file modified moments ago may be half copied;
    it is not taken (with a line saying so) until it has stopped changing for a while. It was run at once, and a
    half-copied file ended `done` with the rest of its rows never sent."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    source = write_jsonl(inbox / "upload.jsonl", chat_rows(3))
    worker = make_worker(server, inbox, outbox, settle_s=3600)  # "a while" made long, so nothing depends on timing
    caplog.set_level(logging.INFO, logger="inferbatch")
    wait = asyncio.run(worker.process_inbox())
    assert wait is not None and wait > 0
    assert server.stats.requests == 0 and not (outbox / "upload.jsonl.results.jsonl").exists()
    assert any("worker_wait" in r.getMessage() and "upload.jsonl" in r.getMessage() for r in caplog.records)

    aged(source)  # it has not changed for an hour
    assert asyncio.run(worker.process_inbox()) is None
    assert server.stats.requests == 3 and (outbox / "upload.jsonl.done.json").exists()


def test_a_file_that_changes_while_it_is_read_is_not_marked_done(runner: Any, tmp_path: Path) -> None:
    """Promise (§8.19, a done file means the whole input ran): an input that changed while it was read gets no
    done file, and a warning line, instead of being marked done with rows never sent."""
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    source = write_jsonl(inbox / "growing.jsonl", chat_rows(5))
    aged(source)

    def more_rows_arrive() -> None:
        with open(source, "a") as handle:
            handle.write(json.dumps({"id": "late", "messages": [{"role": "user", "content": "late"}]}) + "\n")

    with hooked_simulator(1, more_rows_arrive) as server:
        result = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert result.exit_code == 0, result.stderr
    assert "worker_changed" in result.stderr
    assert not (outbox / "growing.jsonl.done.json").exists()


# ---- outboxes written by an older version ------------------------------------------------------------------
def test_an_outbox_from_the_stem_naming_is_not_run_again(runner: Any, sim: Any, tmp_path: Path) -> None:
    """Promise (§8.2 never pay twice, §8.19 never run a done input again): an input that an older worker finished
    (`a.done.json` naming `a.jsonl`) is marked done under the new name, not run again; `a.csv`, which the old
    naming had passed over, runs."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    aged(write_jsonl(inbox / "a.jsonl", chat_rows(4, "j")), write_csv(inbox / "a.csv", "c", 3))
    write_jsonl(outbox / "a.results.jsonl", [{"id": f"j{i}", "index": i, "status": "ok"} for i in range(4)])
    (outbox / "a.done.json").write_text(
        json.dumps({"input": str(inbox / "a.jsonl"), "output": str(outbox / "a.results.jsonl"), "rows": 4, "ok": 4})
    )
    result = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert result.exit_code == 0, result.stderr
    assert server.stats.requests == 3  # a.csv only
    migrated = json.loads((outbox / "a.jsonl.done.json").read_text())
    assert migrated["rows"] == 4 and migrated["migrated_from"] == str(outbox / "a.done.json")
    assert (outbox / "a.csv.done.json").exists()
    assert "worker_migrated" in result.stderr
    again = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert again.exit_code == 0 and server.stats.requests == 3


def test_an_unfinished_checkpoint_from_the_stem_naming_is_resumed(runner: Any, sim: Any, tmp_path: Path) -> None:
    """Promise (§8.2 never pay twice): a run an older worker left unfinished (`a.results.jsonl.checkpoint/`) is
    resumed under the new name: the rows it finished are not sent again."""
    server = sim()
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    rows = chat_rows(6)
    rows[2]["messages"][0]["content"] += " [[sim:400]]"  # an error row keeps the checkpoint, as a stop would
    source = write_jsonl(inbox / "a.jsonl", rows)
    aged(source)
    old = invoke(runner, ["run", str(source), "-o", str(outbox / "a.results.jsonl")], env=env_for(server))
    assert old.exit_code == 1, old.stderr
    assert (outbox / "a.results.jsonl.checkpoint").is_dir()
    sent = server.stats.requests

    result = invoke(runner, worker_args(inbox, outbox), env=env_for(server))
    assert result.exit_code == 0, result.stderr
    assert server.stats.requests == sent  # nothing sent again: the error row waits for --retry-errors
    assert [r["status"] for r in read_jsonl(outbox / "a.jsonl.results.jsonl")] == [
        "ok",
        "ok",
        "error",
        "ok",
        "ok",
        "ok",
    ]
    assert (outbox / "a.jsonl.done.json").exists()
    assert not (outbox / "a.results.jsonl.checkpoint").exists()
