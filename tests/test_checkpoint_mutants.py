"""The checkpoint's exact rules, where the mutation run (benchmarks/mutation, issue 16) found them unpinned:
where each result lives (slots), what a reopened checkpoint knows (finished, errors, in doubt, tokens), what
it refuses, what a completed job keeps, and how a failed write is kept and reported.

Each test names the behaviour it holds; the mutants it kills are listed in benchmarks/mutation/README.md.
The checkpoint is driven directly on a temp dir; nothing here needs a server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferbatch.checkpoint import Checkpoint, SlotLayout, refuse_mismatch
from inferbatch.errors import CheckpointError
from inferbatch.results import RESEND_KEY

MANIFEST: dict[str, Any] = {"input": {"path": "/in.jsonl", "size": 10, "hash": "h"}, "shaping": {"model": "m"}}


def line(index: int, status: str = "ok", **extra: Any) -> bytes:
    """A result line as the runner writes it: id and index first."""
    return orjson.dumps({"id": f"r{index}", "index": index, "status": status, **extra}) + b"\n"


def open_run(tmp_path: Path, manifest: dict[str, Any] = MANIFEST, **kwargs: Any) -> Checkpoint:
    return Checkpoint.open_for_run(str(tmp_path / "out.jsonl"), manifest, **{"restart": False, **kwargs})


def logs(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl.checkpoint"


# ---- slots -----------------------------------------------------------------------------------------------


def test_a_plain_layout_has_one_slot_per_row() -> None:
    layout = SlotLayout()
    assert layout.stride == 1
    assert layout.slot(7) == 7
    assert layout.slot_of({"index": 7, "variant": None, "sample": 0}) == 7
    assert list(layout.output_order(4)) == [0, 1, 2, 3]


def test_an_evaluation_layout_numbers_rows_then_variants_then_samples() -> None:
    """slot = index * V * K + variant * K + sample, with V = 3 variants and K = 2 samples."""
    layout = SlotLayout(("a", "b", "c"), repeat=2)
    assert layout.stride == 6
    assert layout.slot(4) == 24  # the row's first slot: first variant, first sample
    assert layout.slot(4, 1) == 26
    assert layout.slot(4, 2, 1) == 29
    assert layout.slot_of({"index": 4, "variant": "c", "sample": 1}) == 29
    assert layout.slot_of({"index": 4, "variant": "b"}) == 26  # no sample: the first
    assert layout.slot_of({"index": 4, "variant": "a", "sample": None}) == 24


@pytest.mark.parametrize(
    ("layout", "record", "slot"),
    [
        (SlotLayout(("a", "b")), {"index": 3, "variant": "b"}, 7),  # two variants, one sample each
        (SlotLayout(("a", "b")), {"index": 3, "variant": "a"}, 6),
        (SlotLayout(repeat=3), {"index": 2, "sample": 2}, 8),  # one (unnamed) variant, three samples
        (SlotLayout(repeat=3), {"index": 2, "variant": None}, 6),
    ],
)
def test_a_record_finds_its_slot(layout: SlotLayout, record: dict[str, Any], slot: int) -> None:
    assert layout.slot_of(record) == slot


def test_the_output_lists_variant_by_variant_then_rows_then_samples() -> None:
    layout = SlotLayout(("a", "b"), repeat=2)
    assert list(layout.output_order(8)) == [0, 1, 4, 5, 2, 3, 6, 7]


# ---- what a reopened checkpoint knows -------------------------------------------------------------------


def test_a_reopened_checkpoint_knows_finished_errors_in_doubt_and_the_last_line_of_each_row(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    for index in range(6):
        checkpoint.mark_sent(index)
    checkpoint.record(0, line(0, prompt_tokens=10, completion_tokens=2, model="m1"), "ok")
    checkpoint.record(1, line(1, "error"), "error")
    checkpoint.record(2, line(2, "error"), "error")
    checkpoint.record(2, line(2, prompt_tokens=5, completion_tokens=1, cached_tokens=3, model="m1"), "ok")  # retried
    checkpoint.record(3, line(3, "invalid"), "invalid")
    checkpoint.record(4, line(4, prompt_tokens=7, completion_tokens=7, model="m2"), "ok")
    assert checkpoint.needs_sending(1, retry_errors=False) is False
    assert checkpoint.needs_sending(1, retry_errors=True) is True
    assert checkpoint.needs_sending(2, retry_errors=True) is False  # it recovered
    checkpoint.close()

    again = open_run(tmp_path)
    try:
        resumed = again.resumed
        assert (resumed.finished, resumed.errors, resumed.in_doubt) == (5, 1, 1)  # row 5 was sent, never finished
        assert (resumed.prompt_tokens, resumed.completion_tokens) == (22, 10)
        assert resumed.usage_by_model == {"m1": (15, 3, 3), "m2": (7, 7, 0)}
        assert resumed.damaged_lines == 0
        assert [again.needs_sending(i, retry_errors=False) for i in range(7)] == [False] * 5 + [True, True]
        assert [again.needs_sending(i, retry_errors=True) for i in range(7)] == [
            False,
            True,
            False,
            False,
            False,
            True,
            True,
        ]
        assert again.has_parsed is False
        assert list(again.lines_in_order()) == [line(0, prompt_tokens=10, completion_tokens=2, model="m1")] + [
            line(1, "error"),
            line(2, prompt_tokens=5, completion_tokens=1, cached_tokens=3, model="m1"),
            line(3, "invalid"),
            line(4, prompt_tokens=7, completion_tokens=7, model="m2"),
        ]
    finally:
        again.close()


def test_a_row_whose_last_line_is_an_error_counts_as_an_error_again(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0), "ok")
    checkpoint.record(0, line(0, "error"), "error")  # --retry-errors style: the last line wins
    assert checkpoint.needs_sending(0, retry_errors=True) is True
    checkpoint.close()
    again = open_run(tmp_path)
    try:
        assert (again.resumed.finished, again.resumed.errors) == (1, 1)
        assert again.needs_sending(0, retry_errors=True) is True
    finally:
        again.close()


def test_a_row_cut_off_between_re_asks_is_sent_again_until_a_later_line_settles_it(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0, **{RESEND_KEY: True}), "ok")
    checkpoint.record(1, line(1, **{RESEND_KEY: True}), "ok")
    checkpoint.record(1, line(1), "ok")
    checkpoint.close()
    again = open_run(tmp_path)
    try:
        assert again.needs_sending(0, retry_errors=False) is True
        assert again.needs_sending(1, retry_errors=False) is False
    finally:
        again.close()


def test_a_structured_answer_in_the_log_gives_the_output_its_parsed_column(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0), "ok")
    checkpoint.record(1, line(1, parsed={"a": 1}), "ok")
    checkpoint.close()
    again = open_run(tmp_path)
    try:
        assert again.has_parsed is True
    finally:
        again.close()


def test_an_evaluation_checkpoint_reopens_into_the_same_slots_and_output_order(tmp_path: Path) -> None:
    layout = SlotLayout(("a", "b"), repeat=2)
    checkpoint = open_run(tmp_path, layout=layout)
    written = {}
    for index in (1, 0):
        for variant in ("b", "a"):
            for sample in (1, 0):
                record = {"id": f"r{index}", "index": index, "status": "ok", "variant": variant, "sample": sample}
                slot = layout.slot_of(record)
                written[slot] = orjson.dumps(record) + b"\n"
                checkpoint.record(slot, written[slot], "ok")
    checkpoint.close()
    again = open_run(tmp_path, layout=layout)
    try:
        assert again.resumed.finished == 8
        assert not any(again.needs_sending(slot, retry_errors=False) for slot in range(8))
        assert again.needs_sending(8, retry_errors=False) is True
        assert list(again.lines_in_order()) == [written[slot] for slot in [0, 1, 4, 5, 2, 3, 6, 7]]
    finally:
        again.close()


def test_the_output_skips_rows_that_have_no_result(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.record(3, line(3), "ok")
    checkpoint.record(0, line(0), "ok")
    checkpoint.record(5, line(5), "ok")
    try:
        assert list(checkpoint.lines_in_order()) == [line(0), line(3), line(5)]
    finally:
        checkpoint.close()


def test_the_index_is_read_wherever_it_stands_in_the_line(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    late = orjson.dumps({"id": "x", "status": "ok", "index": 12}) + b"\n"
    checkpoint.record(12, late, "ok")
    checkpoint.record(3, line(3), "ok")
    try:
        assert list(checkpoint.lines_in_order()) == [line(3), late]
    finally:
        checkpoint.close()


# ---- what a crash or a full disk leaves ----------------------------------------------------------------


def test_a_torn_last_line_is_cut_and_that_row_is_sent_again(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0), "ok")
    checkpoint.close()
    results = logs(tmp_path) / "results.jsonl"
    with open(results, "ab") as handle:
        handle.write(line(1)[:-7])  # kill -9 mid-write
    again = open_run(tmp_path)
    try:
        assert results.read_bytes() == line(0)
        assert again.resumed.finished == 1
        assert again.resumed.damaged_lines == 0
        assert again.needs_sending(1, retry_errors=False) is True
        again.record(1, line(1), "ok")
        assert list(again.lines_in_order()) == [line(0), line(1)]
    finally:
        again.close()


def test_a_damaged_line_mid_file_is_dropped_counted_and_its_row_sent_again(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.close()
    results = logs(tmp_path) / "results.jsonl"
    results.write_bytes(line(0) + b'{"id":"r1","ind\n' + line(2) + b"\n" + line(3))
    again = open_run(tmp_path)
    try:
        assert again.resumed.damaged_lines == 2  # the cut line and the empty one
        assert again.resumed.finished == 3
        assert results.read_bytes() == line(0) + line(2) + line(3)
        assert again.needs_sending(1, retry_errors=False) is True
        assert not (logs(tmp_path) / "results.tmp").exists()
    finally:
        again.close()


def test_the_sent_ledger_reads_only_whole_numbered_lines(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.close()
    (logs(tmp_path) / "sent.log").write_bytes(b"0\n2\nx\n\n4")  # 4 was torn: no newline
    again = open_run(tmp_path)
    try:
        assert again.resumed.in_doubt == 2  # rows 0 and 2
    finally:
        again.close()


def test_a_write_that_fails_is_kept_reported_once_and_finished_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the part not written stays pending (no torn line), on_failure hears of it once, and the next
    flush that succeeds writes exactly the rest."""
    checkpoint = open_run(tmp_path)
    reported: list[OSError] = []
    checkpoint.on_failure = reported.append
    real_write = os.write
    full = {"on": True}

    def write(fd: int, data: Any) -> int:
        if full["on"]:
            if len(data) > 5:
                return real_write(fd, bytes(data[:5]))  # a short write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    try:
        monkeypatch.setattr(os, "write", write)
        checkpoint.record(0, line(0), "ok")
        assert checkpoint.unsaved is True
        assert checkpoint.failure is not None and checkpoint.failure.errno == errno.ENOSPC
        checkpoint.record(1, line(1), "ok")
        assert len(reported) == 1  # reported once, not once per row
        full["on"] = False
        checkpoint.flush()
        assert checkpoint.unsaved is False
        assert checkpoint.failure is None
        assert (logs(tmp_path) / "results.jsonl").read_bytes() == line(0) + line(1)
        full["on"] = True
        checkpoint.record(2, line(2), "ok")
        assert len(reported) == 2  # a new failure after a recovery is reported again
        full["on"] = False
    finally:
        checkpoint.close()
    assert (logs(tmp_path) / "results.jsonl").read_bytes() == line(0) + line(1) + line(2)


def test_an_fsync_that_fails_is_reported_and_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = open_run(tmp_path)
    reported: list[OSError] = []
    checkpoint.on_failure = reported.append
    real_fsync = os.fsync
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "I/O error")

    try:
        checkpoint.record(0, line(0), "ok")
        monkeypatch.setattr(os, "fsync", failing_fsync)
        checkpoint.sync()
        assert len(reported) == 1 and reported[0].errno == errno.EIO
        monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
        checkpoint.sync()  # still dirty: synced now
        assert len(calls) == 3  # the failed one, then both logs
        checkpoint.sync()  # nothing new: no fsync
        assert len(calls) == 3
    finally:
        checkpoint.close()


# ---- what the checkpoint refuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ({"size": 10, "hash": "h"}, {"size": 11, "hash": "h"}, "input was /in.jsonl (10 bytes)"),
        ({"size": 10, "hash": "h"}, {"size": 10, "hash": "g"}, "input was /in.jsonl (10 bytes)"),
        ({"size": 10, "hash": "h", "content": "c"}, {"size": 10, "hash": "h", "content": "d"}, "now its content"),
    ],
)
def test_another_input_is_refused(old: dict[str, Any], new: dict[str, Any], problem: str) -> None:
    with pytest.raises(CheckpointError) as info:
        refuse_mismatch("out.checkpoint", {"input": {"path": "/in.jsonl", **old}}, {"input": {"path": "/x", **new}})
    assert problem in str(info.value)
    assert "--restart" in str(info.value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"size": 10, "hash": "h"}, {"size": 10, "hash": "h", "content": "c"}),  # written before the content hash
        ({"size": 10, "hash": "h", "content": "c"}, {"size": 10, "hash": "h"}),  # an s3:// input has none
        ({"size": 10, "hash": "h", "content": "c"}, {"size": 10, "hash": "h", "content": "c"}),
    ],
)
def test_the_same_input_is_accepted_comparing_only_what_both_identities_have(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    refuse_mismatch("out.checkpoint", {"input": old, "shaping": {"a": 1}}, {"input": new, "shaping": {"a": 1}})


def test_changed_options_are_refused_and_named_in_order() -> None:
    same = {"size": 1, "hash": "h"}
    with pytest.raises(CheckpointError) as info:
        refuse_mismatch(
            "out.checkpoint",
            {"input": same, "shaping": {"temperature": 0.5, "model": "a", "seed": 1}},
            {"input": same, "shaping": {"temperature": 0.7, "model": "a", "max_tokens": 10}},
        )
    assert "changed option(s): max_tokens, seed, temperature" in str(info.value)


def test_a_checkpoint_of_another_input_is_refused_on_open_and_restart_discards_it(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.mark_sent(0)
    checkpoint.record(0, line(0), "ok")
    checkpoint.close()
    other = {"input": {"path": "/in.jsonl", "size": 11, "hash": "h"}, "shaping": {"model": "m"}}
    with pytest.raises(CheckpointError):
        open_run(tmp_path, other)
    open_run(tmp_path).close()  # the lock was let go: the same job still opens
    fresh = open_run(tmp_path, other, restart=True)
    try:
        assert fresh.resumed.finished == 0 and fresh.resumed.in_doubt == 0
        assert fresh.needs_sending(0, retry_errors=False) is True
        manifest = orjson.loads((logs(tmp_path) / "manifest.json").read_bytes())
        assert manifest["input"]["size"] == 11
        assert (logs(tmp_path) / "results.jsonl").read_bytes() == b""
        assert (logs(tmp_path) / "sent.log").read_bytes() == b""
    finally:
        fresh.close()


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path: Path) -> None:
    lock = logs(tmp_path) / "lock"
    lock.parent.mkdir()
    lock.write_text("a much longer pid left by an earlier run\n")
    first = open_run(tmp_path)
    try:
        assert lock.read_text() == f"{os.getpid()}\n"  # the old text is gone, not overwritten in part
        with pytest.raises(CheckpointError) as info:
            open_run(tmp_path)
        assert f"(pid {os.getpid()})" in str(info.value)
    finally:
        first.close()
    open_run(tmp_path).close()


def test_a_damaged_manifest_is_refused(tmp_path: Path) -> None:
    open_run(tmp_path).close()
    (logs(tmp_path) / "manifest.json").write_bytes(b"{not json")
    with pytest.raises(CheckpointError, match="damaged"):
        open_run(tmp_path)
    (logs(tmp_path) / "manifest.json").write_bytes(orjson.dumps({"version": 1, **MANIFEST}))
    open_run(tmp_path).close()  # the refused open let the lock go


def test_restart_starts_over_from_a_damaged_manifest(tmp_path: Path) -> None:
    """The refusal says "rerun with --restart": a restart must not read the damaged manifest first."""
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0), "ok")
    checkpoint.close()
    (logs(tmp_path) / "manifest.json").write_bytes(b"{not json")
    restarted = Checkpoint.open_for_run(str(tmp_path / "out.jsonl"), MANIFEST, restart=True)
    try:
        assert restarted.resumed.finished == 0  # the old rows are gone with the old manifest
        assert orjson.loads((logs(tmp_path) / "manifest.json").read_bytes()) == {"version": 1, **MANIFEST}
    finally:
        restarted.close()


# ---- a complete job ------------------------------------------------------------------------------------


def test_a_complete_job_keeps_only_its_manifest_with_the_record(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0), "ok")
    checkpoint.complete({"rows": 1})
    assert sorted(p.name for p in logs(tmp_path).iterdir()) == ["lock", "manifest.json"]
    manifest = orjson.loads((logs(tmp_path) / "manifest.json").read_bytes())
    assert manifest == {"version": 1, **MANIFEST, "complete": {"rows": 1}}
    again = open_run(tmp_path)  # the lock was let go
    try:
        assert again.completion == {"rows": 1}
        assert sorted(p.name for p in logs(tmp_path).iterdir()) == ["lock", "manifest.json"]  # no logs reopened
    finally:
        again.close()
    fresh = open_run(tmp_path, restart=True)
    try:
        assert fresh.completion is None
    finally:
        fresh.close()


def test_a_temporary_checkpoint_works_and_is_removed(tmp_path: Path) -> None:
    checkpoint = Checkpoint.temporary()
    try:
        assert checkpoint.ephemeral is True
        checkpoint.record(1, line(1), "ok")
        checkpoint.record(0, line(0), "ok")
        assert list(checkpoint.lines_in_order()) == [line(0), line(1)]
    finally:
        checkpoint.remove()
    assert not checkpoint.dir.exists()


def test_a_checkpoint_for_a_run_is_not_temporary_and_close_is_idempotent(tmp_path: Path) -> None:
    checkpoint = open_run(tmp_path)
    assert checkpoint.ephemeral is False
    checkpoint.close()
    checkpoint.close()
    assert logs(tmp_path).is_dir()


def test_a_checkpoint_that_loaded_nothing_resumes_nothing(tmp_path: Path) -> None:
    """Stdin's temporary checkpoint and a complete job read no logs: no rows done, in doubt or damaged, and no
    tokens already spent (the budget caps and the summary start from these figures)."""
    temporary = Checkpoint.temporary()
    try:
        assert dataclasses.astuple(temporary.resumed) == (0, 0, 0, 0, 0, {}, 0)
    finally:
        temporary.remove()
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0, prompt_tokens=3, completion_tokens=4), "ok")
    checkpoint.complete({"rows": 1})
    again = open_run(tmp_path)
    try:
        assert again.completion == {"rows": 1}
        assert dataclasses.astuple(again.resumed) == (0, 0, 0, 0, 0, {}, 0)
    finally:
        again.close()


def test_the_checkpoint_folder_is_made_with_its_missing_parents(tmp_path: Path) -> None:
    """`-o results/2026-12-02/out.jsonl` where the folders do not exist yet."""
    output = tmp_path / "results" / "2026-12-02" / "out.jsonl"
    checkpoint = Checkpoint.open_for_run(str(output), MANIFEST, restart=False)
    try:
        checkpoint.record(0, line(0), "ok")
        assert list(checkpoint.lines_in_order()) == [line(0)]
    finally:
        checkpoint.close()
    assert (tmp_path / "results" / "2026-12-02" / "out.jsonl.checkpoint" / "manifest.json").is_file()


def test_a_refused_second_run_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """A worker that keeps retrying a locked output must not leak a file descriptor per try."""
    first = open_run(tmp_path)
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(CheckpointError):
                open_run(tmp_path)
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        first.close()


def test_a_row_with_prompt_tokens_only_still_counts_as_spent(tmp_path: Path) -> None:
    """A bill of prompt tokens and no completion (a cut-off answer, a cached prompt) is spent all the same."""
    checkpoint = open_run(tmp_path)
    checkpoint.record(0, line(0, prompt_tokens=5, completion_tokens=0, model="m1"), "ok")
    checkpoint.record(1, line(1, prompt_tokens=0, completion_tokens=4, model="m1"), "ok")
    checkpoint.close()
    again = open_run(tmp_path)
    try:
        assert (again.resumed.prompt_tokens, again.resumed.completion_tokens) == (5, 4)
        assert again.resumed.usage_by_model == {"m1": (5, 4, 0)}
    finally:
        again.close()


def test_a_row_marked_sent_reaches_the_ledger_before_it_is_sent(tmp_path: Path) -> None:
    """Outside an event loop, mark_sent writes at once: a kill -9 right after still finds the row in doubt."""
    checkpoint = open_run(tmp_path)
    try:
        checkpoint.mark_sent(3)
        assert (logs(tmp_path) / "sent.log").read_bytes() == b"3\n"
    finally:
        checkpoint.close()


def test_the_checkpoint_files_are_readable_by_others_but_never_executable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        checkpoint = open_run(tmp_path)
        checkpoint.close()
    finally:
        os.umask(old)
    for name in ("lock", "results.jsonl", "sent.log"):
        assert (logs(tmp_path) / name).stat().st_mode & 0o777 == 0o644, name


async def test_the_output_includes_a_row_recorded_in_the_same_event_loop_turn(tmp_path: Path) -> None:
    """On the event loop a row's line is written on the next turn; the output read right after the last row
    finished (same turn) must still hold it."""
    checkpoint = open_run(tmp_path)
    try:
        checkpoint.record(0, line(0), "ok")
        await asyncio.sleep(0)  # its write happened
        checkpoint.record(1, line(1), "ok")  # its write is scheduled, not done
        assert list(checkpoint.lines_in_order()) == [line(0), line(1)]
    finally:
        checkpoint.close()


def test_closing_fsyncs_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's end does not wait for the ticker: close() syncs both logs itself."""
    checkpoint = open_run(tmp_path)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    checkpoint.mark_sent(0)
    checkpoint.record(0, line(0), "ok")
    monkeypatch.setattr(os, "fsync", fsync)
    checkpoint.close()
    assert sorted(synced) == ["results.jsonl", "sent.log"]


def spy_on_fsync_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (file name, its size on disk) at every fsync: what a crash right then would keep."""
    calls: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_a_new_manifest_is_whole_on_disk_before_it_replaces_the_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy_on_fsync_sizes(monkeypatch)
    checkpoint = open_run(tmp_path)
    written = (logs(tmp_path) / "manifest.json").stat().st_size
    assert ("manifest.tmp", written) in calls
    checkpoint.complete({"rows": 0})
    assert ("manifest.tmp", (logs(tmp_path) / "manifest.json").stat().st_size) in calls


def test_a_results_log_rewritten_without_damaged_lines_is_whole_on_disk_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_run(tmp_path).close()
    results = logs(tmp_path) / "results.jsonl"
    results.write_bytes(line(0) + b"{damaged\n" + line(1))
    calls = spy_on_fsync_sizes(monkeypatch)
    checkpoint = open_run(tmp_path)
    checkpoint.close()
    assert ("results.tmp", len(line(0) + line(1))) in calls


def test_closing_or_removing_a_checkpoint_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """A worker opens one checkpoint per input, for days: each must give back its descriptors."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        checkpoint = open_run(tmp_path)
        checkpoint.record(0, line(0), "ok")
        checkpoint.close()
        Checkpoint.temporary().remove()
    assert len(os.listdir("/proc/self/fd")) == before
