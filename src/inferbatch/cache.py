"""A content-addressed response cache for evaluation runs (``--cache DIR`` or ``s3://…``).

The key is a SHA-256 of the endpoint, the complete request body (model
included) and the sample number, so repeats (``--repeat K``) are cached one by
one and any change to the template, a parameter or the model misses. Only
successful responses are stored. Entries are written whole under their key
(a temp file renamed into place, or one S3 object), so runs sharing a cache
never see a half-written entry; two runs storing the same key write the same
answer's bytes, whichever wins.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from inferbatch import storage


class ResponseCache:
    def __init__(self, location: str, endpoint: str) -> None:
        self.location = location.rstrip("/")
        self.endpoint = endpoint
        self.remote = storage.is_s3(location)
        self.hits = 0
        self.stores = 0
        if not self.remote:
            Path(self.location).mkdir(parents=True, exist_ok=True)

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
        where = self._where(key)
        try:
            if self.remote:
                raw = storage.read_bytes(where)
            else:
                raw = Path(where).read_bytes()
        except (FileNotFoundError, OSError):
            return None
        if not raw:
            return None
        try:
            entry = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        self.hits += 1
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        data = orjson.dumps(entry)
        where = self._where(key)
        if self.remote:
            storage.write_bytes(where, data)
        else:
            folder = Path(where).parent
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, where)
        self.stores += 1
