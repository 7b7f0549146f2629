"""A content-addressed response cache for evaluation runs (``--cache DIR`` or ``s3://…``).

The key is a SHA-256 of the endpoint, the complete request body (model
included) and the sample number, so repeats (``--repeat K``) are cached one by
one and any change to the template, a parameter or the model misses. Only
successful responses are stored. Entries are written whole under their key
(a temp file renamed into place, or one S3 object), so runs sharing a cache
never see a half-written entry; two runs storing the same key write the same
answer's bytes, whichever wins.

The cache is an optimisation, never a reason to lose a result: a response
already received (and paid for) goes to the output whatever the cache does.
A local cache folder that cannot be created or written is refused before
anything is sent (exit 2). During the run, a failed write (a full disk, a
folder gone, an S3 store that went away) logs one warning and turns writes off
for the rest of the run; a failed read is a miss (the row is sent), and after
``READ_FAILURES_OFF`` failed reads in a row the cache is no longer read, so a
store that went away costs a few slow reads, not one per row. At most one
warning line is logged per run, whatever fails and however often.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson

from inferbatch import storage
from inferbatch.errors import ConfigError

log = logging.getLogger("inferbatch")

READ_FAILURES_OFF = 3


class ResponseCache:
    def __init__(self, location: str, endpoint: str) -> None:
        self.location = location.rstrip("/")
        self.endpoint = endpoint
        self.remote = storage.is_s3(location)
        self.hits = 0
        self.stores = 0
        self.writes_off = False
        self.reads_off = False
        self._read_failures = 0  # in a row
        self._warned = False
        self._lock = threading.Lock()  # S3 reads and writes run in worker threads
        if not self.remote:
            self._check_writable()

    def _check_writable(self) -> None:
        try:
            Path(self.location).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.location, prefix=".", suffix=".probe")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"--cache {self.location} cannot be written ({exc.strerror or exc})") from None

    def key(self, body: bytes, sample: int) -> str:
        digest = hashlib.sha256()
        digest.update(self.endpoint.encode())
        digest.update(b"\0")
        digest.update(orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS))
        digest.update(b"\0%d" % sample)
        return digest.hexdigest()

    def _where(self, key: str) -> str:
        return f"{self.location}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry, or None: a miss, a damaged entry, or a read that failed."""
        if self.reads_off:
            return None
        where = self._where(key)
        try:
            raw = storage.read_bytes(where) if self.remote else Path(where).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._failed("read", exc)
            return None
        with self._lock:
            self._read_failures = 0
        if not raw:
            return None
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(entry, dict):
            return None
        self.hits += 1
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store an entry; never raises for storage trouble (the caller's result is already in hand)."""
        if self.writes_off:
            return
        data = orjson.dumps(entry)
        where = self._where(key)
        try:
            if self.remote:
                storage.write_bytes(where, data)
            else:
                _write_file(Path(where), data)
        except OSError as exc:
            self._failed("write", exc)
            return
        with self._lock:
            self.stores += 1

    def _failed(self, action: str, exc: OSError) -> None:
        with self._lock:
            if action == "write":
                self.writes_off = True
            else:
                self._read_failures += 1
                self.reads_off = self._read_failures >= READ_FAILURES_OFF
            first, self._warned = not self._warned, True
        if first:
            text = " ".join(str(exc).split())[:200]
            if action == "write":
                what, then = "cannot store a response", "without storing responses"
            else:
                what = "cannot read"
                then = f"sending such rows (and, after {READ_FAILURES_OFF} failed reads in a row, without reading it)"
            log.warning(
                "response cache %s: %s (%s); the run goes on %s, and every result still goes to the output",
                self.location,
                what,
                text,
                then,
            )


def _write_file(path: Path, data: bytes) -> None:
    """Write an entry whole: a temp file in the entry's folder, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
