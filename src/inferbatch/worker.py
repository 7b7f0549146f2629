"""``inferbatch worker``: process every input in an inbox, resumably, then poll; never exit on success.

For an inbox file named ``FILE`` (the whole name, extension included: ``a.csv``; a
file under a sub-prefix of an ``s3://`` inbox is named by its key below the inbox,
``day1/a.csv``) the worker writes ``OUTBOX/FILE.results.jsonl`` (or ``.parquet``)
and, once the run has no unfinished rows, ``OUTBOX/FILE.done.json`` holding the
summary. An input with a ``.done.json`` is never run again, error rows included:
``--retry-errors`` is a person's call. Inbox files are only read.

Every file in the inbox is either run or skipped with one log line saying why:
hidden files (an upload in progress), names that are not an input format, result
and done files (never inputs), a local inbox's sub-folders, a file still being
written (a local file modified in the last ``SETTLE_S`` seconds waits until it
stops changing; an S3 object appears whole), and an input that could not be read
(retried when it changes, or after ``FAILED_RETRY_S``). An outbox equal to or
inside the inbox is refused, or the worker would take its own results as inputs.

Heroku restarts a worker dyno that exits, and restarts every dyno daily, so
the worker resumes an unfinished input from its checkpoint and skips finished
ones; a bad input is logged and passed over, never a reason to exit (that would
be a crash loop). With ``--shard auto``, each of N worker dynos takes the inbox
files whose name hashes to its shard, so they share one inbox without a
coordinator; the run lock keeps two workers off one output in any case.

Outboxes written before names kept the extension (``a.results.jsonl`` and
``a.done.json`` for ``a.jsonl``) are recognised: an input whose old ``.done.json``
names it is marked done under the new name without being run again, and an old
unfinished checkpoint that names it is moved to the new name, so the run resumes
instead of paying again for the rows already finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferbatch import storage
from inferbatch.config import RunConfig, Shard
from inferbatch.errors import (
    CheckpointError,
    ConfigError,
    InferbatchError,
    InputError,
    Interrupted,
    SafetyStop,
)
from inferbatch.limits import Limiter
from inferbatch.progress import Progress, logfmt
from inferbatch.runner import RunReport, StopSwitch, run_batch
from inferbatch.shaping import shard_of
from inferbatch.signals import signal_handlers
from inferbatch.sources import FORMATS

log = logging.getLogger("inferbatch")

RESULT_SUFFIXES = (".results.jsonl", ".results.parquet", ".done.json")
SETTLE_S = 2.0
FAILED_RETRY_S = 3600.0


@dataclass(frozen=True, slots=True)
class InboxFile:
    """An input file: ``name`` is its name relative to the inbox, extension included."""

    uri: str
    name: str
    size: int
    mtime_ns: int | None

    @property
    def state(self) -> tuple[int, int | None]:
        return (self.size, self.mtime_ns)


@dataclass(slots=True)
class Listing:
    """What is in the inbox: the inputs, and ``(name, why)`` for everything else."""

    inputs: list[InboxFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def not_an_input(name: str) -> str | None:
    """Why the inbox entry ``name`` is never an input, or None if it is one."""
    parts = name.split("/")
    if any(part.startswith(".") for part in parts):
        return "hidden file (an upload in progress?): hidden files are never inputs"
    if any(part.endswith(".checkpoint") for part in parts[:-1]):
        return "part of a run's checkpoint: never an input"
    lower = parts[-1].lower()
    if lower.endswith(RESULT_SUFFIXES):
        return "a worker result or done file: never an input"
    if not lower.endswith(FORMATS):
        return f"not an input format (inputs end in {', '.join(FORMATS)})"
    return None


def list_inbox(inbox: str) -> Listing:
    """Every entry of the inbox, sorted by name: inputs, and the rest with the reason it is not one."""
    listing = Listing()
    if storage.is_s3(inbox):
        for obj in storage.list_files(inbox):
            why = not_an_input(obj.name)
            if why:
                listing.skipped.append((obj.name, why))
            else:
                listing.inputs.append(InboxFile(obj.uri, obj.name, obj.size, obj.mtime_ns))
        return listing
    folder = Path(inbox)
    if not folder.is_dir():
        raise InputError(f"inbox {inbox} is not a folder")
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            why = not_an_input(entry.name)
            if why is None and entry.is_dir():
                why = "a folder: a local inbox's sub-folders are not read"
            elif why is None and not entry.is_file():
                why = "not a regular file"
            if why:
                listing.skipped.append((entry.name, why))
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue  # gone since the folder was read
            listing.inputs.append(InboxFile(str(folder / entry.name), entry.name, info.st_size, info.st_mtime_ns))
    return listing


def case_clashes(inputs: list[InboxFile]) -> dict[str, str]:
    """On an outbox that ignores case, ``{name: first}`` for each input whose results would overwrite those of
    ``first``, the input of the same name but for case that comes first."""
    first: dict[str, str] = {}
    clashes = {}
    for item in inputs:
        key = item.name.casefold()
        if key in first:
            clashes[item.name] = first[key]
        else:
            first[key] = item.name
    return clashes


def outbox_inside_inbox(outbox: str, inbox: str) -> bool:
    """True if the outbox is the inbox or under it (``s3://`` by key prefix, ``/`` bounded)."""
    if storage.is_s3(outbox) != storage.is_s3(inbox):
        return False
    if storage.is_s3(inbox):
        inner, outer = outbox[len("s3://") :].strip("/"), inbox[len("s3://") :].strip("/")
        return inner == outer or inner.startswith(outer + "/")
    inner_path, outer_path = Path(outbox).resolve(), Path(inbox).resolve()
    return inner_path == outer_path or outer_path in inner_path.parents


def _ignores_case(folder: Path) -> bool:
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".inferbatch-case-", suffix=".probe")
    os.close(fd)
    try:
        return os.path.exists(os.path.join(folder, os.path.basename(probe).upper()))
    finally:
        os.unlink(probe)


def _old_stem(name: str) -> str | None:
    """The name an older worker gave an input's outputs: its base name without the extension."""
    base = name.rsplit("/", 1)[-1]
    lower = base.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            return base[: -len(ext)] or None
    return None


def _names(recorded: object, name: str) -> bool:
    """Does a recorded input path or URI name the inbox file ``name``?"""
    return isinstance(recorded, str) and (recorded == name or recorded.endswith("/" + name))


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if storage.is_s3(folder) else str(Path(folder) / name)


def _state_of(uri: str) -> tuple[int, int | None] | None:
    if storage.is_s3(uri):
        return storage.stat(uri)
    try:
        info = os.stat(uri)
    except FileNotFoundError:
        return None
    return (info.st_size, info.st_mtime_ns)


def _read_json(uri: str) -> dict[str, Any] | None:
    """A small JSON object, None if there is no such file; ``{}`` if it is not a JSON object."""
    try:
        raw = storage.read_bytes(uri) if storage.is_s3(uri) else Path(uri).read_bytes()
    except FileNotFoundError:
        return None
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _write_done(uri: str, data: dict[str, object]) -> None:
    text = (json.dumps(data, indent=2) + "\n").encode()
    if storage.is_s3(uri):
        storage.write_bytes(uri, text)
        return
    tmp = f"{uri}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(text)
    os.replace(tmp, uri)


class Worker:
    def __init__(
        self,
        base: RunConfig,
        *,
        inbox: str,
        outbox: str,
        poll: float,
        output_ext: str,
        once: bool = False,
        quiet: bool = False,
        settle_s: float = SETTLE_S,
        on_second_interrupt: Callable[[], None] | None = None,
    ) -> None:
        """``on_second_interrupt``: what a second Ctrl-C does (the CLI leaves at once); by default KeyboardInterrupt."""
        self.base = base
        self.on_second_interrupt = on_second_interrupt
        self.inbox = inbox
        self.outbox = outbox
        self.poll = poll
        self.output_ext = output_ext
        self.once = once
        self.quiet = quiet
        self.settle_s = settle_s
        self.switch = StopSwitch()
        # One limiter for every input: the server counts the add-on's requests, not our files (SPEC §8.38).
        self.limiter = Limiter(
            base.concurrency, rpm=base.rpm, tpm=base.tpm, max_wait=base.max_wait, share=base.limit_share
        )
        self.stopped: Interrupted | None = None
        self._wake = asyncio.Event()
        self._signals = 0
        self._said: set[tuple[str, str, str]] = set()
        self._first_seen: dict[str, tuple[tuple[int, int | None], float]] = {}
        self._failed: dict[str, tuple[tuple[int, int | None], float]] = {}
        self._last_scan: dict[str, int] | None = None
        self.ignores_case = False
        self._check_places()

    def _check_places(self) -> None:
        """Refuse (exit 2) an inbox or outbox the worker could only loop on or crash over."""
        if outbox_inside_inbox(self.outbox, self.inbox):
            raise ConfigError(
                f"--outbox {self.outbox} is inside --inbox {self.inbox}: the worker would take its own results "
                "as inputs; give the outbox a folder (or prefix) of its own"
            )
        if not storage.is_s3(self.inbox):
            if not os.path.exists(self.inbox):
                raise ConfigError(f"--inbox {self.inbox} does not exist: create the folder, or fix the path")
            if not os.path.isdir(self.inbox):
                raise ConfigError(f"--inbox {self.inbox} is a file; the inbox is a folder (or an s3:// prefix)")
        if not storage.is_s3(self.outbox):
            folder = Path(self.outbox)
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"--outbox {self.outbox} is a file; the outbox is a folder (or an s3:// prefix)")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self.ignores_case = _ignores_case(folder)
            except OSError as exc:
                raise ConfigError(f"--outbox {self.outbox} cannot be written ({exc.strerror or exc})") from None

    async def serve(self) -> Interrupted | None:
        """Process the inbox, sleep, repeat; returns only when stopped by a signal (the signal), or after --once."""
        async with signal_handlers(self._on_signal):
            while self.stopped is None:
                settling = await self.process_inbox()
                if self.stopped is not None or (self.once and settling is None):
                    break
                if settling is None:
                    log.info(logfmt("worker_idle", poll_s=self.poll))
                pause = self.poll if settling is None else min(self.poll, settling + 0.05)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
        return self.stopped

    async def process_inbox(self) -> float | None:
        """Run every input that is due, in name order; returns the seconds until a file still being written may
        be taken, or None if none is."""
        try:
            listing = await asyncio.to_thread(list_inbox, self.inbox)
        except (InferbatchError, OSError) as exc:
            self._say(logging.ERROR, "worker_inbox_unreadable", self.inbox, error=str(exc))
            return None
        for name, why in listing.skipped:
            self._say(logging.INFO, "worker_skip", name, reason=why)
        clashes = case_clashes(listing.inputs) if self.ignores_case else {}
        counts = dict.fromkeys(("inputs", "done", "other_shard", "waiting", "failed", "clash"), 0)
        counts["inputs"] = len(listing.inputs)
        settling: float | None = None
        shard = self.base.shard
        for item in listing.inputs:
            if self.stopped is not None:
                return None
            if item.name in clashes:
                counts["clash"] += 1
                self._say(
                    logging.WARNING,
                    "worker_skip",
                    item.name,
                    reason=f"its results would overwrite those of {clashes[item.name]} on this outbox, which "
                    "ignores case: rename one of them",
                )
                continue
            if shard.count > 1 and shard_of(item.name, shard.count) != shard.index:
                counts["other_shard"] += 1
                continue
            try:
                done = await asyncio.to_thread(self._is_done, item)
            except (InferbatchError, OSError) as exc:
                self._say(logging.ERROR, "worker_outbox_unreadable", item.name, error=" ".join(str(exc).split()))
                counts["failed"] += 1
                continue
            if done:
                counts["done"] += 1
                continue
            left = self._settle_left(item)
            if left > 0:
                counts["waiting"] += 1
                settling = left if settling is None else min(settling, left)
                self._say(
                    logging.INFO,
                    "worker_wait",
                    item.name,
                    reason="modified moments ago, maybe still being written: run once it stops changing",
                )
                continue
            failed = self._failed.get(item.name)
            if failed is not None and failed[0] == item.state and time.monotonic() - failed[1] < FAILED_RETRY_S:
                counts["failed"] += 1
                continue
            await self._run_one(item)
        self._log_scan(counts)
        return settling

    # ---- one input -------------------------------------------------------
    def _done_uri(self, name: str) -> str:
        return _join(self.outbox, f"{name}.done.json")

    def _output_uri(self, name: str) -> str:
        return _join(self.outbox, f"{name}.results.{self.output_ext}")

    def _is_done(self, item: InboxFile) -> bool:
        """Is there a done file for this input, under its name or (from an older worker) its stem?"""
        done = _read_json(self._done_uri(item.name))
        if done is not None:
            recorded = done.get("input")
            if isinstance(recorded, str) and not _names(recorded, item.name):
                # An older worker's done file for another input (``a.jsonl.jsonl`` → ``a.jsonl.done.json``) sits
                # where this input's would go: running would overwrite that input's results.
                self._say(
                    logging.WARNING,
                    "worker_skip",
                    item.name,
                    reason=f"{self._done_uri(item.name)} was written for {recorded} by an older inferbatch: "
                    "move it (and its results) away to run this input",
                )
            return True
        return self._adopt_old_outputs(item)

    def _adopt_old_outputs(self, item: InboxFile) -> bool:
        """Take over what an older worker, which named outputs by the input's stem, left for this input.

        Returns True if its done file names this input (now marked done under the new name)."""
        stem = _old_stem(item.name)
        if stem is None:
            return False
        old = _join(self.outbox, stem)
        old_done = _read_json(f"{old}.done.json")
        if old_done is not None and _names(old_done.get("input"), item.name):
            _write_done(self._done_uri(item.name), {**old_done, "migrated_from": f"{old}.done.json"})
            log.info(
                logfmt(
                    "worker_migrated", input=item.uri, done=self._done_uri(item.name), results=old_done.get("output")
                )
            )
            return True
        old_checkpoint = f"{old}.results.{self.output_ext}.checkpoint"
        new_checkpoint = f"{self._output_uri(item.name)}.checkpoint"
        if storage.is_s3(old_checkpoint):
            self._adopt_s3_checkpoint(item, old_checkpoint, new_checkpoint)
        else:
            self._adopt_local_checkpoint(item, Path(old_checkpoint), Path(new_checkpoint))
        return False

    def _adopt_local_checkpoint(self, item: InboxFile, old: Path, new: Path) -> None:
        if not old.is_dir() or new.exists():
            return
        manifest = _read_json(str(old / "manifest.json")) or {}
        if not _names((manifest.get("input") or {}).get("path"), item.name):
            return
        fd = os.open(old / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._say(logging.INFO, "worker_wait", item.name, reason=f"a live run holds the old checkpoint {old}")
                return
            os.rename(old, new)
        finally:
            os.close(fd)
        log.info(logfmt("worker_migrated", input=item.uri, checkpoint=str(new), was=str(old)))

    def _adopt_s3_checkpoint(self, item: InboxFile, old: str, new: str) -> None:
        if storage.object_size(f"{new}/manifest.json") is not None:
            return
        manifest = _read_json(f"{old}/manifest.json") or {}
        if not _names((manifest.get("input") or {}).get("path"), item.name):
            return
        lease = _read_json(f"{old}/lease.json") or {}
        if float(lease.get("expires_at") or 0) > time.time():
            self._say(logging.INFO, "worker_wait", item.name, reason=f"a live run holds the old checkpoint {old}")
            return
        objects = [obj for obj in storage.list_files(old) if obj.name not in ("manifest.json", "lease.json")]
        for obj in objects:
            storage.copy(obj.uri, f"{new}/{obj.name}")
        storage.copy(f"{old}/manifest.json", f"{new}/manifest.json")  # last: a half-done copy is not a checkpoint
        storage.delete_prefix(old)
        log.info(logfmt("worker_migrated", input=item.uri, checkpoint=new, was=old))

    def _settle_left(self, item: InboxFile) -> float:
        """Seconds before a local file counts as completely written: ``settle_s`` since its last change (by its
        modification time, or by what this worker saw when the clock and the file's time disagree)."""
        if storage.is_s3(item.uri) or self.settle_s <= 0 or item.mtime_ns is None:
            return 0.0
        now = time.monotonic()
        seen = self._first_seen.get(item.name)
        if seen is None or seen[0] != item.state:
            self._first_seen[item.name] = seen = (item.state, now)
        age = time.time() - item.mtime_ns / 1e9
        return max(0.0, self.settle_s - max(age, now - seen[1]))

    async def _run_one(self, item: InboxFile) -> None:
        uri, done, output = item.uri, self._done_uri(item.name), self._output_uri(item.name)
        if not storage.is_s3(output):
            Path(output).parent.mkdir(parents=True, exist_ok=True)
        cfg = dataclasses.replace(
            self.base,
            input=uri,
            output=output,
            shard=Shard(),
            summary_json=None,
            output_format="parquet" if self.output_ext == "parquet" else self.base.output_format,
        )
        log.info(logfmt("worker_start", input=uri, output=output))
        try:
            report = await run_batch(
                cfg,
                progress=Progress(total=None, interval=cfg.progress_interval, quiet=self.quiet),
                handle_signals=False,
                switch=self.switch,
                limiter=self.limiter,
            )
        except CheckpointError as exc:
            self._say(logging.WARNING, "worker_skip", uri, reason=str(exc))
            return
        except (InputError, ConfigError) as exc:
            self._failed[item.name] = (item.state, time.monotonic())
            log.error(
                logfmt(
                    "worker_failed",
                    input=uri,
                    error=str(exc),
                    retry=f"when the file changes, or in {FAILED_RETRY_S:.0f} s",
                )
            )
            return
        except InferbatchError as exc:
            log.error(logfmt("worker_failed", input=uri, error=str(exc), retry=f"in {self.poll:g} s"))
            return
        except Exception as exc:  # noqa: BLE001 - a bug: shown, but one input must not stop (or crash-loop) the rest
            self._failed[item.name] = (item.state, time.monotonic())
            log.error(
                logfmt(
                    "worker_failed",
                    input=uri,
                    error=f"{type(exc).__name__}: {exc}",
                    retry=f"when the file changes, or in {FAILED_RETRY_S:.0f} s",
                )
            )
            log.error(self._redact(traceback.format_exc()))
            return
        self._log_report(uri, report)
        if isinstance(report.stop, Interrupted):
            self.stopped = report.stop
        elif isinstance(report.stop, SafetyStop):
            log.error(logfmt("worker_paused", input=uri, reason=str(report.stop), retry_in_s=self.poll))
        elif report.complete:
            try:
                await asyncio.to_thread(self._mark_done, item, output, report)
            except (InferbatchError, OSError) as exc:
                log.error(
                    logfmt(
                        "worker_failed",
                        input=uri,
                        error=f"cannot write {done}: {' '.join(str(exc).split())}",
                        retry=f"in {self.poll:g} s",
                    )
                )

    def _mark_done(self, item: InboxFile, output: str, report: RunReport) -> None:
        """Write the done file, unless the input changed while it was read (it was still being written)."""
        if _state_of(item.uri) != item.state:
            log.warning(
                logfmt(
                    "worker_changed",
                    input=item.uri,
                    reason="the file changed while it was being read: not marked done; if it was "
                    "still being written, write it under a hidden name, then rename it",
                )
            )
            return
        finished_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        summary = {"input": item.uri, "output": output, "finished_at": finished_at, **report.summary.as_dict()}
        _write_done(self._done_uri(item.name), summary)
        log.info(
            logfmt(
                "worker_done",
                input=item.uri,
                rows=report.summary.rows,
                ok=report.summary.ok,
                error=report.summary.error,
                invalid=report.summary.invalid,
            )
        )

    # ---- logging ---------------------------------------------------------
    def _say(self, level: int, event: str, name: str, **fields: Any) -> None:
        """Log a line once per worker process for the same event, file and text (a poll repeats them)."""
        key = (event, name, json.dumps(fields, sort_keys=True, default=str))
        if key not in self._said:
            self._said.add(key)
            log.log(level, logfmt(event, input=name, **fields))

    def _log_scan(self, counts: dict[str, int]) -> None:
        if counts != self._last_scan:
            self._last_scan = counts
            log.info(logfmt("worker_scan", inbox=self.inbox, **counts))

    def _log_report(self, uri: str, report: RunReport) -> None:
        for line in report.summary.lines():
            log.info(line)

    def _redact(self, text: str) -> str:
        key = self.base.api_key.reveal() if self.base.api_key is not None else ""
        return text.replace(key, "[REDACTED]") if len(key) >= 8 else text

    def _on_signal(self, sig: signal.Signals, code: int) -> None:
        self._signals += 1
        if self._signals > 1 and sig == signal.SIGINT:
            if self.on_second_interrupt is None:
                raise KeyboardInterrupt
            self.on_second_interrupt()
            return
        reason = Interrupted(sig.name, code)
        self.stopped = reason
        self.switch.trigger(reason)
        self._wake.set()
