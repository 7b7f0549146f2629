"""The checkpoint of an ``s3://`` output: immutable part objects, since an object store has no append.

    OUTPUT.checkpoint/manifest.json            what the checkpoint belongs to (as on disk)
    OUTPUT.checkpoint/parts/<run>-<n>.jsonl    result lines finished since the previous part
    OUTPUT.checkpoint/sent/<run>-<n>.log       row indexes sent since the previous part (in-doubt ledger)
    OUTPUT.checkpoint/lease.json               the live run's lease, renewed with every part

The run works on a local copy (a temp dir, exactly like a local checkpoint) and
uploads what finished since the last part every ``--checkpoint-interval``
seconds, so a crash loses at most that interval's results, which the next
run sends again. The lease is best effort: two runs started within the same
second may both start; a run killed without cleaning up holds the lease
until it expires (three intervals, at least 3 s; 15 s by default).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from inferbatch import storage
from inferbatch.checkpoint import FORMAT_VERSION, Checkpoint, SlotLayout, refuse_mismatch
from inferbatch.errors import CheckpointError

log = logging.getLogger("inferbatch")


class S3Checkpoint(Checkpoint):
    def __init__(self, prefix: str, local_dir: Path, interval: float, layout: SlotLayout | None = None) -> None:
        super().__init__(local_dir, layout=layout)
        self.prefix = prefix
        self.interval = interval
        self.lease_s = 3 * max(interval, 1.0)  # parts go up at most once a second
        self.run_id = f"{time.time_ns():020d}-{os.getpid()}"
        self._guard = threading.Lock()  # record() runs on the event loop, sync() in a worker thread
        self._part_results = bytearray()
        self._part_sent = bytearray()
        self._part = 0
        self._last_upload = time.monotonic()
        self.parts_written = 0

    @classmethod
    def open_for_s3(
        cls, output: str, manifest: dict[str, Any], *, restart: bool, interval: float, layout: SlotLayout | None = None
    ) -> S3Checkpoint:
        local = Path(tempfile.mkdtemp(prefix="inferbatch-checkpoint-"))
        checkpoint = cls(output + ".checkpoint", local, interval, layout)
        try:
            checkpoint._take_lease(output)
            # --restart starts over whatever is there, a damaged manifest too.
            existing_raw = None if restart else storage.read_bytes(f"{checkpoint.prefix}/manifest.json")
            try:
                existing = orjson.loads(existing_raw) if existing_raw else None
            except orjson.JSONDecodeError:
                raise CheckpointError(f"{checkpoint.prefix}/manifest.json is damaged; rerun with --restart") from None
            if existing is not None and not restart:
                refuse_mismatch(checkpoint.prefix, existing, manifest)
                checkpoint.completion = existing.get("complete")
            if existing is None or restart:
                for folder in ("parts", "sent"):
                    storage.delete_prefix(f"{checkpoint.prefix}/{folder}")
                storage.write_bytes(
                    f"{checkpoint.prefix}/manifest.json", orjson.dumps({"version": FORMAT_VERSION, **manifest})
                )
            elif checkpoint.completion is None:
                checkpoint._download()
            if checkpoint.completion is None:
                checkpoint._load()
                checkpoint._open_logs()
        except OSError as exc:
            shutil.rmtree(checkpoint.dir, ignore_errors=True)
            text = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"cannot use the checkpoint at {checkpoint.prefix}: {text}") from None
        except BaseException:
            checkpoint._release_lease()
            shutil.rmtree(checkpoint.dir, ignore_errors=True)
            raise
        return checkpoint

    # ---- lease -----------------------------------------------------------
    def _take_lease(self, output: str) -> None:
        raw = storage.read_bytes(f"{self.prefix}/lease.json")
        if raw:
            try:
                lease = orjson.loads(raw)
            except orjson.JSONDecodeError:
                lease = {}
            left = float(lease.get("expires_at", 0)) - time.time()
            if left > 0 and lease.get("run_id") != self.run_id:
                if not holder_is_gone(lease):
                    raise CheckpointError(
                        f"another inferbatch run (host {lease.get('host')}, pid {lease.get('pid')}) is writing "
                        f"{output}; its lease ends in {left:.0f} s unless renewed: wait for it, or stop it, before "
                        "running again"
                    )
                log.warning(
                    "taking over the checkpoint lease of a run on this host that is gone (pid %s)", lease.get("pid")
                )
        self._write_lease()

    def _write_lease(self) -> None:
        """The lease names its holder (SPEC §8.36): host, pid and the process's start time, so a rerun on the
        same host can tell that the holder is gone without waiting for the lease to expire."""
        lease = {"run_id": self.run_id, **this_process(), "expires_at": time.time() + self.lease_s}
        storage.write_bytes(f"{self.prefix}/lease.json", orjson.dumps(lease))

    def _release_lease(self) -> None:
        try:
            raw = storage.read_bytes(f"{self.prefix}/lease.json")
            if raw and orjson.loads(raw).get("run_id") == self.run_id:
                storage.delete(f"{self.prefix}/lease.json")
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("could not release the checkpoint lease (%s); it expires by itself", exc)

    # ---- parts -----------------------------------------------------------
    def _download(self) -> None:
        """Rebuild the local logs from every part, oldest first (the run id leads with a timestamp)."""
        for folder, name in (("parts", "results.jsonl"), ("sent", "sent.log")):
            with open(self.dir / name, "wb") as local:
                for uri, _ in storage.list_objects(f"{self.prefix}/{folder}"):
                    data = storage.read_bytes(uri) or b""
                    if data and not data.endswith(b"\n"):
                        data = data[: data.rfind(b"\n") + 1]
                    local.write(data)

    def mark_sent(self, slot: int) -> None:
        super().mark_sent(slot)
        with self._guard:
            self._part_sent += b"%d\n" % slot

    def record(self, slot: int, line: bytes, status: str) -> None:
        super().record(slot, line, status)
        with self._guard:
            self._part_results += line

    def sync(self) -> None:
        super().sync()
        if time.monotonic() - self._last_upload >= self.interval:
            self.upload()

    def upload(self) -> None:
        """Write what finished since the last part as new objects, and renew the lease."""
        with self._guard:
            results, sent = bytes(self._part_results), bytes(self._part_sent)
            self._part_results.clear()
            self._part_sent.clear()
        self._last_upload = time.monotonic()
        name = f"{self.run_id}-{self._part:06d}"
        try:
            if sent:
                storage.write_bytes(f"{self.prefix}/sent/{name}.log", sent)
            if results:
                storage.write_bytes(f"{self.prefix}/parts/{name}.jsonl", results)
                self.parts_written += 1
            if sent or results:
                self._part += 1
            self._write_lease()
        except OSError as exc:
            log.warning("checkpoint upload failed (%s); retrying with the next part", " ".join(str(exc).split())[:200])
            with self._guard:
                self._part_results[:0] = results
                self._part_sent[:0] = sent

    def close(self) -> None:
        """Upload the last part, give up the lease, drop the local copy."""
        if self._results_fd >= 0:
            self.upload()
            self._release_lease()
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove(self) -> None:
        self.close()
        storage.delete_prefix(self.prefix)

    def complete(self, record: dict[str, Any]) -> None:
        """Keep one object, the manifest with the completion record; parts, ledger and lease go."""
        manifest_uri = f"{self.prefix}/manifest.json"
        manifest = orjson.loads(storage.read_bytes(manifest_uri) or b"{}")
        storage.write_bytes(manifest_uri, orjson.dumps({**manifest, "complete": record}))
        self._close_logs()
        storage.delete_prefix(self.prefix, keep=(manifest_uri,))
        super().close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _close_logs(self) -> None:
        with self._guard:  # the job is complete: what is pending needs no part of its own
            self._part_results.clear()
            self._part_sent.clear()
        Checkpoint._close_logs(self)


# ---- lease holders (SPEC §8.36) ---------------------------------------------
@functools.lru_cache(maxsize=1)
def _this_host() -> dict[str, str | None]:
    """What makes a pid mean the same process: the host name, the kernel's boot id and the pid namespace.

    A host name alone is not enough: containers sharing a host name (``--uts=host``) have pid namespaces of
    their own, and a machine that rebooted has the same name and reused pids. Where ``/proc`` is missing
    (macOS), the host name is all there is."""
    boot_id = pid_ns = None
    with contextlib.suppress(OSError):
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        pid_ns = os.readlink("/proc/self/ns/pid")
    return {"host": socket.gethostname(), "boot_id": boot_id, "pid_ns": pid_ns}


def _process_status(pid: int) -> tuple[str, str] | None:
    """``(state, start time in clock ticks since boot)`` from ``/proc/PID/stat``, or None where unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name in (...) may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def this_process() -> dict[str, Any]:
    """The lease fields that identify the running process."""
    status = _process_status(os.getpid())
    return {**_this_host(), "pid": os.getpid(), "started": status[1] if status else None}


def holder_is_gone(lease: dict[str, Any]) -> bool:
    """True only if the lease's holder ran on this host and its process is gone: no such pid, a zombie, or a
    pid now used by a process that started at another time. Anything else (another host, a lease from an older
    version, a process that may be alive) is False: the lease holds until it expires."""
    if any(lease.get(key) != value for key, value in _this_host().items()):
        return False
    pid = lease.get("pid")
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    status = _process_status(pid)
    if status is None:
        return False
    state, started = status
    if state in ("Z", "X"):  # killed, not yet reaped by its parent: it writes nothing more
        return True
    return lease.get("started") is not None and lease.get("started") != started
