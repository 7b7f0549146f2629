"""``OUTPUT.checkpoint/``: every finished row, durably, so a rerun sends only what is left.

Layout:

    manifest.json   what the checkpoint belongs to: input identity + request-shaping fingerprint,
                    and, once every row of the input ended ok, the completion record (``complete``)
    results.jsonl   one result line per finished row, appended as it finishes (last line wins per index)
    sent.log        one row index per line, appended before a row's first attempt (the in-doubt ledger)
    lock            flock()ed by the live run; the kernel drops it when the process dies

Each result line is handed to the operating system with one ``write()`` as
soon as the row finishes, so ``kill -9`` loses only in-flight rows; ``sync()``
fsyncs, and the runner calls it every second. Which rows are finished is kept
as bitmaps over row positions (a bit a row), not as a set of ids.

A complete job keeps only its manifest with the completion record (SPEC §8.2):
the same command run again finds it and sends nothing, so a Scheduler job that
reruns every hour never pays twice. A write that fails (a full disk) is kept in
memory and reported through ``on_failure``; the runner then stops sending.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from inferbatch.bits import Bits
from inferbatch.errors import CheckpointError
from inferbatch.results import JUDGE_PENDING_KEY, PARSED, RESEND_KEY, Status, judge_usage, row_usage

FORMAT_VERSION = 1
IDENTITY_BLOCK = 1 << 16


def input_identity(path: str) -> dict[str, Any]:
    """Size, a hash of the first and last 64 KiB, and for a local file a hash of the whole content.

    The whole-content hash catches a row edited in place with the same length anywhere in the
    file (about 1 s a GB); an ``s3://`` input is not read twice, so it keeps the cheap identity.
    """
    if path.startswith("s3://"):
        from inferbatch.storage import open_input_file

        handle = open_input_file(path)
        size = handle.size()
        name = path
    else:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, with the remote handle
        size = os.fstat(handle.fileno()).st_size
        name = os.path.abspath(path)
    digest = hashlib.blake2b(digest_size=16)
    identity: dict[str, Any] = {"path": name, "size": size}
    with handle:
        digest.update(handle.read(IDENTITY_BLOCK))
        if size > IDENTITY_BLOCK:
            handle.seek(max(IDENTITY_BLOCK, size - IDENTITY_BLOCK))
            digest.update(handle.read(IDENTITY_BLOCK))
        identity["hash"] = digest.hexdigest()
        if not path.startswith("s3://"):
            handle.seek(0)
            content = hashlib.blake2b(digest_size=16)
            while block := handle.read(1 << 20):
                content.update(block)
            identity["content"] = content.hexdigest()
    return identity


@dataclass(frozen=True, slots=True)
class SlotLayout:
    """Where a result lives: a plain run has one slot per row (its index); an evaluation run has
    one per row, variant and sample, ``slot = index * V * K + variant * K + sample``; the output
    lists them variant by variant, then in input order, then by sample."""

    variants: tuple[str, ...] = ("",)
    repeat: int = 1

    @property
    def stride(self) -> int:
        return len(self.variants) * self.repeat

    def slot(self, index: int, variant: int = 0, sample: int = 0) -> int:
        return index * self.stride + variant * self.repeat + sample

    def slot_of(self, record: dict[str, Any]) -> int:
        if self.stride == 1:
            return int(record["index"])
        return self.slot(record["index"], self.variants.index(record.get("variant") or ""), record.get("sample") or 0)

    def output_order(self, slots: int) -> Iterator[int]:
        rows = -(-slots // self.stride)
        for variant in range(len(self.variants)):
            for index in range(rows):
                base = index * self.stride + variant * self.repeat
                yield from range(base, base + self.repeat)


@dataclass(slots=True)
class Resumed:
    """What an earlier run left: counts for the log and the summary."""

    finished: int = 0
    errors: int = 0
    in_doubt: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_by_model: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # prompt, completion, cached
    damaged_lines: int = 0


class Checkpoint:
    """A run's finished rows. ``open_for_run`` locks it and checks it belongs to this input and these options."""

    def __init__(self, directory: Path, *, ephemeral: bool = False, layout: SlotLayout | None = None) -> None:
        self.dir = directory
        self.layout = layout or SlotLayout()
        self.ephemeral = ephemeral
        self.finished = Bits()
        self.errored = Bits()
        self.resend = Bits()  # kept rows a stop cut off between re-asks: the next run sends them again
        self.has_parsed = False  # some row holds a structured answer's `parsed`: the output gets the column
        # Judged rows whose answer is recorded but not every verdict (SPEC §8.44): slot -> its record (votes so
        # far included). Few: only rows a stop or a crash caught while their judge was being asked.
        self.judge_pending: dict[int, dict[str, Any]] = {}
        self.sent = Bits()
        self.resumed = Resumed()
        self._results_fd = -1
        self._sent_fd = -1
        self._lock_fd = -1
        self._dirty = False
        self._pending_results = bytearray()
        self._pending_sent = bytearray()
        self._flush_scheduled = False
        self.completion: dict[str, Any] | None = None  # set when the job already completed (SPEC §8.2)
        self.failure: OSError | None = None  # the last write that failed; its bytes are still pending
        self.on_failure: Callable[[OSError], None] | None = None

    # ---- opening ---------------------------------------------------------
    @classmethod
    def open_for_run(
        cls, output: str, manifest: dict[str, Any], *, restart: bool, layout: SlotLayout | None = None
    ) -> Checkpoint:
        directory = Path(output + ".checkpoint")
        checkpoint = cls(directory, layout=layout)
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint._lock(output)
        try:
            # --restart starts over whatever is there: a damaged manifest too (its error says to use --restart).
            existing = None if restart else checkpoint._read_manifest()
            if existing is not None and not restart:
                refuse_mismatch(str(directory), existing, manifest)
                checkpoint.completion = existing.get("complete")
            if existing is None or restart:
                for name in ("results.jsonl", "sent.log"):
                    (directory / name).unlink(missing_ok=True)
                _write_json_atomic(directory / "manifest.json", {"version": FORMAT_VERSION, **manifest})
            if checkpoint.completion is None:
                checkpoint._load()
                checkpoint._open_logs()
        except BaseException:
            checkpoint.close()
            raise
        return checkpoint

    @classmethod
    def temporary(cls, layout: SlotLayout | None = None) -> Checkpoint:
        """For stdin input, which cannot be re-read: the same machinery in a temp dir, removed at the end."""
        checkpoint = cls(Path(tempfile.mkdtemp(prefix="inferbatch-")), ephemeral=True, layout=layout)
        checkpoint._open_logs()
        return checkpoint

    def _lock(self, output: str) -> None:
        path = self.dir / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise CheckpointError(
                    f"another inferbatch run (pid {holder}) is writing {output}; "
                    "wait for it to finish, or stop it, before running again"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            return orjson.loads((self.dir / "manifest.json").read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            raise CheckpointError(f"{self.dir}/manifest.json is damaged; rerun with --restart") from None

    def _load(self) -> None:
        """Rebuild the bitmaps from the logs, cutting a torn last line left by a crash."""
        results = self.dir / "results.jsonl"
        if results.exists():
            good_end = 0
            damaged = 0
            with open(results, "rb") as handle:
                for line in handle:
                    if not line.endswith(b"\n"):
                        break  # torn by a crash: cut below
                    try:
                        record = orjson.loads(line)
                        self._note(record)
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        damaged += 1  # a write cut short mid-file (a full disk): that row is sent again
                    good_end += len(line)
            if good_end != results.stat().st_size:
                os.truncate(results, good_end)
            if damaged:
                self.resumed.damaged_lines = damaged
                _drop_damaged_lines(results)
        sent = self.dir / "sent.log"
        if sent.exists():
            with open(sent, "rb") as handle:
                for line in handle:
                    if line.endswith(b"\n") and line[:-1].isdigit():
                        self.sent.set(int(line))
        self.resumed.finished = self.finished.count()
        self.resumed.errors = self.errored.count()
        self.resumed.in_doubt = self.sent.count_and_not(self.finished)

    def _note(self, record: dict[str, Any]) -> None:
        slot = self.layout.slot_of(record)
        self.finished.set(slot)
        if PARSED in record:
            self.has_parsed = True
        if record.get(RESEND_KEY):
            self.resend.set(slot)
        else:
            self.resend.clear(slot)
        if record["status"] == Status.ERROR:
            self.errored.set(slot)
        else:
            self.errored.clear(slot)
        # A judged row's lines each hold everything it was billed for so far (its answer and the votes in):
        # a later line of the row replaces what its pending line counted, rather than adding to it.
        earlier = self.judge_pending.pop(slot, None)
        if earlier is not None:
            self._spent(earlier, -1)
        if record.get(JUDGE_PENDING_KEY):
            self.judge_pending[slot] = record
        self._spent(record, 1)

    def _spent(self, record: dict[str, Any], sign: int) -> None:
        """Count (``sign`` 1) or take back (-1) the tokens a line was billed for, the judge's too: the budget
        caps count them from the start of the next run."""
        usage = row_usage(record)
        bills = [(record.get("model") or "", usage.prompt, usage.completion, usage.cached), *judge_usage(record)]
        for model, prompt, completion, cached in bills:
            if prompt or completion:
                self.resumed.prompt_tokens += sign * prompt
                self.resumed.completion_tokens += sign * completion
                p, c, k = self.resumed.usage_by_model.get(model, (0, 0, 0))
                self.resumed.usage_by_model[model] = (p + sign * prompt, c + sign * completion, k + sign * cached)

    def _open_logs(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._results_fd = os.open(self.dir / "results.jsonl", flags, 0o644)
        self._sent_fd = os.open(self.dir / "sent.log", flags, 0o644)

    # ---- during the run --------------------------------------------------
    def needs_sending(self, slot: int, retry_errors: bool) -> bool:
        if slot not in self.finished or slot in self.resend or slot in self.judge_pending:
            return True
        return retry_errors and slot in self.errored

    def mark_sent(self, slot: int) -> None:
        self._pending_sent += b"%d\n" % slot
        self._flush_soon()

    def record(self, slot: int, line: bytes, status: str) -> None:
        """One finished row: to the OS before the event loop's next turn (survives kill -9), to disk at
        the next ``sync()``."""
        self._pending_results += line
        self.finished.set(slot)
        if status == Status.ERROR:
            self.errored.set(slot)
        else:
            self.errored.clear(slot)
        self._flush_soon()

    def _flush_soon(self) -> None:
        # Rows finishing in the same turn of the event loop share one write() instead of one each.
        if self._flush_scheduled:
            return
        try:
            asyncio.get_running_loop().call_soon(self.flush)
            self._flush_scheduled = True
        except RuntimeError:  # no event loop: write now
            self.flush()

    def flush(self) -> None:
        """Hand what finished to the operating system (call on the event loop's thread).

        A write that fails keeps the unwritten bytes pending (a later flush continues exactly
        there, so no line is torn) and is reported to ``on_failure`` instead of raising.
        """
        self._flush_scheduled = False
        try:
            if self._pending_sent:
                self._dirty = True  # the ledger is fsynced too, even while no row finishes
                _write_all(self._sent_fd, self._pending_sent)
            if self._pending_results:
                self._dirty = True
                _write_all(self._results_fd, self._pending_results)
        except OSError as exc:
            self._failed(exc)
            return
        self.failure = None

    def sync(self) -> None:
        """fsync what was flushed; safe from a worker thread. A failure is reported like a write's."""
        if self._dirty:
            self._dirty = False
            try:
                os.fsync(self._results_fd)
                os.fsync(self._sent_fd)
            except OSError as exc:
                self._dirty = True
                self._failed(exc)

    @property
    def unsaved(self) -> bool:
        """Finished rows that are not yet with the operating system (a write failed)."""
        return bool(self._pending_results)

    def _failed(self, exc: OSError) -> None:
        first = self.failure is None
        self.failure = exc
        if first and self.on_failure is not None:
            self.on_failure(exc)

    # ---- after the run ---------------------------------------------------
    def lines_in_order(self) -> Iterator[bytes]:
        """Every slot's last result line, in output order, without holding the lines in memory
        (an 8-byte file offset per slot)."""
        self.flush()
        path = self.dir / "results.jsonl"
        offsets = array("q")
        plain = self.layout.stride == 1
        with open(path, "rb") as handle:
            position = 0
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # the rest of it is still pending after a failed write
                slot = _index_of(line) if plain else self.layout.slot_of(orjson.loads(line))
                if slot >= len(offsets):
                    offsets.extend([-1] * (slot + 1 - len(offsets)))
                offsets[slot] = position
                position += len(line)
            order = range(len(offsets)) if plain else self.layout.output_order(len(offsets))
            for slot in order:
                offset = offsets[slot] if slot < len(offsets) else -1
                if offset >= 0:
                    handle.seek(offset)
                    yield handle.readline()

    def close(self) -> None:
        self._close_logs()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _close_logs(self) -> None:
        if self._results_fd >= 0:
            self.flush()
            self.sync()
        for name in ("_results_fd", "_sent_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def complete(self, record: dict[str, Any]) -> None:
        """Every row of the input ended ok: keep only the manifest, with the completion record.

        The record is written before the logs go, so a crash in between still leaves a
        complete job (with stale logs, which the next ``--restart`` clears).
        """
        manifest = self._read_manifest() or {}
        _write_json_atomic(self.dir / "manifest.json", {**manifest, "complete": record})
        self._close_logs()
        for name in ("results.jsonl", "sent.log"):
            (self.dir / name).unlink(missing_ok=True)
        self.close()


def _write_all(fd: int, data: bytearray) -> None:
    """Write all of ``data``, removing what was written as it goes: on an error it holds what is left."""
    while data:
        written = os.write(fd, data)
        del data[:written]


def _drop_damaged_lines(path: Path) -> None:
    """Rewrite a results log without the lines that do not parse (rare: only after a failed write)."""
    tmp = path.with_suffix(".tmp")
    with open(path, "rb") as source, open(tmp, "wb") as target:
        for line in source:
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            target.write(line)
        target.flush()
        os.fsync(target.fileno())
    os.replace(tmp, path)


def _index_of(line: bytes) -> int:
    # Result lines start {"id":...,"index":N — find N without parsing the whole line.
    start = line.find(b'"index":')
    if start < 0:
        return int(orjson.loads(line)["index"])
    start += 8
    end = start
    while line[end : end + 1].isdigit():
        end += 1
    return int(line[start:end])


def refuse_mismatch(where: str, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    """A checkpoint made for another input or other request options is refused, unless --restart."""
    problem = _mismatch(existing, wanted)
    if problem:
        raise CheckpointError(
            f"{where} belongs to another run ({problem}); "
            "rerun with --restart to discard it and start over, or use another --output"
        )


def _mismatch(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    old_input, new_input = existing.get("input") or {}, wanted.get("input") or {}
    # A checkpoint written before the whole-content hash existed compares what it has.
    both_content = "content" in old_input and "content" in new_input
    if (
        old_input.get("size") != new_input.get("size")
        or old_input.get("hash") != new_input.get("hash")
        or (both_content and old_input["content"] != new_input["content"])
    ):
        return f"input was {old_input.get('path')} ({old_input.get('size')} bytes), now its content differs"
    old_shape, new_shape = existing.get("shaping") or {}, wanted.get("shaping") or {}
    changed = sorted(k for k in set(old_shape) | set(new_shape) if old_shape.get(k) != new_shape.get(k))
    if changed:
        return "changed option(s): " + ", ".join(changed)
    return None


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
