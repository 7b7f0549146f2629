"""``inferbatch worker``: process every input in an inbox, resumably, then poll; never exit on success.

For an inbox file ``NAME.EXT`` (a local folder or an ``s3://`` prefix) the
worker writes ``OUTBOX/NAME.results.jsonl`` (or ``.parquet``) and, once the
run has no unfinished rows, ``OUTBOX/NAME.done.json`` holding the summary.
An input with a ``.done.json`` is never run again, error rows included:
``--retry-errors`` is a person's call. Inbox files are only read.

Heroku restarts a worker dyno that exits, and restarts every dyno daily, so
the worker resumes an unfinished input from its checkpoint and skips finished
ones. With ``--shard auto``, each of N worker dynos takes the inbox files whose
name hashes to its shard, so they share one inbox without a coordinator; the
run lock keeps two workers off one output in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path

from inferbatch import storage
from inferbatch.config import RunConfig, Shard
from inferbatch.errors import CheckpointError, InferbatchError, Interrupted, SafetyStop
from inferbatch.progress import Progress, logfmt
from inferbatch.runner import RunReport, StopSwitch, run_batch
from inferbatch.shaping import shard_of
from inferbatch.signals import signal_handlers
from inferbatch.sources import FORMATS

log = logging.getLogger("inferbatch")


def _stem(name: str) -> str | None:
    lower = name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def list_inbox(inbox: str) -> list[tuple[str, str]]:
    """``(uri, NAME)`` of every input file in the inbox, sorted by name."""
    if storage.is_s3(inbox):
        uris = [uri for uri, _ in storage.list_objects(inbox)]
    else:
        folder = Path(inbox)
        if not folder.is_dir():
            raise InferbatchError(f"inbox {inbox} is not a folder")
        uris = [str(p) for p in folder.iterdir() if p.is_file()]
    found = []
    for uri in uris:
        name = uri.rsplit("/", 1)[-1]
        stem = _stem(name)
        if stem and not name.startswith("."):
            found.append((uri, stem))
    return sorted(found, key=lambda item: item[1])


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if storage.is_s3(folder) else str(Path(folder) / name)


def _exists(uri: str) -> bool:
    if storage.is_s3(uri):
        return storage.object_size(uri) is not None
    return Path(uri).exists()


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
    def __init__(self, base: RunConfig, *, inbox: str, outbox: str, poll: float, output_ext: str,
                 once: bool = False, quiet: bool = False) -> None:  # fmt: skip
        self.base = base
        self.inbox = inbox
        self.outbox = outbox
        self.poll = poll
        self.output_ext = output_ext
        self.once = once
        self.quiet = quiet
        self.switch = StopSwitch()
        self.stopped: Interrupted | None = None
        self._wake = asyncio.Event()
        self._signals = 0
        if not storage.is_s3(outbox):
            Path(outbox).mkdir(parents=True, exist_ok=True)

    async def serve(self) -> int:
        """Process the inbox, sleep, repeat; returns an exit code only when stopped by a signal (or --once)."""
        async with signal_handlers(self._on_signal):
            while self.stopped is None:
                await self.process_inbox()
                if self.once or self.stopped is not None:
                    break
                log.info(logfmt("worker_idle", poll_s=self.poll))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)
        return self.stopped.exit_code if self.stopped is not None else 0

    async def process_inbox(self) -> None:
        try:
            inputs = list_inbox(self.inbox)
        except (InferbatchError, OSError) as exc:
            log.error("cannot list inbox %s: %s", self.inbox, exc)
            return
        shard = self.base.shard
        for uri, name in inputs:
            if self.stopped is not None:
                return
            if shard.count > 1 and shard_of(name, shard.count) != shard.index:
                continue
            done = _join(self.outbox, f"{name}.done.json")
            if _exists(done):
                continue
            await self._run_one(uri, name, done)

    async def _run_one(self, uri: str, name: str, done: str) -> None:
        output = _join(self.outbox, f"{name}.results.{self.output_ext}")
        cfg = dataclasses.replace(self.base, input=uri, output=output, shard=Shard(), summary_json=None,
                                  output_format="parquet" if self.output_ext == "parquet" else self.base.output_format)  # fmt: skip
        log.info(logfmt("worker_start", input=uri, output=output))
        try:
            report = await run_batch(cfg, progress=Progress(total=None, interval=cfg.progress_interval,
                                                            quiet=self.quiet),
                                     handle_signals=False, switch=self.switch)  # fmt: skip
        except CheckpointError as exc:
            log.warning(logfmt("worker_skip", input=uri, reason=str(exc)))
            return
        except InferbatchError as exc:
            log.error(logfmt("worker_failed", input=uri, error=str(exc)))
            return
        self._log_report(uri, report)
        if isinstance(report.stop, Interrupted):
            self.stopped = report.stop
        elif isinstance(report.stop, SafetyStop):
            log.error(logfmt("worker_paused", input=uri, reason=str(report.stop), retry_in_s=self.poll))
        elif report.complete:
            summary = {"input": uri, "output": output, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **report.summary.as_dict()}  # fmt: skip
            _write_done(done, summary)
            log.info(logfmt("worker_done", input=uri, rows=report.summary.rows, ok=report.summary.ok,
                            error=report.summary.error, invalid=report.summary.invalid))  # fmt: skip

    def _log_report(self, uri: str, report: RunReport) -> None:
        for line in report.summary.lines():
            log.info(line)

    def _on_signal(self, sig: signal.Signals, code: int) -> None:
        self._signals += 1
        if self._signals > 1 and sig == signal.SIGINT:
            os._exit(130)
        reason = Interrupted(sig.name, code)
        self.stopped = reason
        self.switch.trigger(reason)
        self._wake.set()
