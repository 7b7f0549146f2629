"""``s3://bucket/key`` paths through ``pyarrow.fs`` (no hand-written S3 client).

Credentials, region and endpoint are ``config.s3_settings()``: the standard ``AWS_*``
variables, else Heroku Bucketeer's ``BUCKETEER_AWS_*``; ``AWS_ENDPOINT_URL`` points at an
S3-compatible store. This module reads no environment variable itself: it asks
``config.s3_settings()`` at each operation (the one reader of the environment; why not a
value frozen once is in its docstring) and keeps one filesystem and one client per
distinct settings, so asking is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any

from inferbatch.config import S3Settings, s3_settings
from inferbatch.errors import ConfigError, InputError

READ_CHUNK = 1 << 20


def is_s3(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith("s3://")


def s3_path(uri: str) -> str:
    """``s3://bucket/key`` → ``bucket/key`` (pyarrow's form)."""
    path = uri[len("s3://") :].lstrip("/")
    if "/" not in path or not path.split("/", 1)[1]:
        raise ConfigError(f"{uri}: an S3 path needs a bucket and a key, e.g. s3://my-bucket/prompts.jsonl")
    return path


@lru_cache(maxsize=4)
def _filesystem(settings: S3Settings) -> Any:
    from pyarrow import fs as pafs

    kwargs: dict[str, Any] = {"region": settings.region or "us-east-1"}
    if settings.access_key and settings.secret_key:
        kwargs.update(access_key=settings.access_key, secret_key=settings.secret_key)
    if settings.endpoint:
        scheme, _, rest = settings.endpoint.partition("://")
        kwargs.update(endpoint_override=rest or scheme, scheme=scheme if rest else "https")
    return pafs.S3FileSystem(**kwargs)


def filesystem() -> Any:
    """The ``pyarrow.fs.S3FileSystem`` for the current S3 settings."""
    return _filesystem(s3_settings())


class _LineReader:
    """``readline()`` over a stream that only has ``read()`` (pyarrow's S3 input streams)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._buffer = b""
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            data = self._buffer + self._stream.read()
            self._buffer = b""
            return bytes(data)
        while len(self._buffer) < size and not self._eof:
            self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _fill(self) -> None:
        chunk = bytes(self._stream.read(READ_CHUNK))
        if not chunk:
            self._eof = True
        self._buffer += chunk

    def readline(self) -> bytes:
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[: newline + 1], self._buffer[newline + 1 :]
                return line
            if self._eof:
                line, self._buffer = self._buffer, b""
                return line
            self._fill()

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> _LineReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_error(uri: str, exc: Exception) -> InputError:
    text = " ".join(str(exc).split())[:200]
    return InputError(f"{uri}: cannot read from S3 ({text})")


def open_input_stream(uri: str) -> IO[bytes]:
    """A sequential reader with ``readline()``."""
    try:
        return _LineReader(filesystem().open_input_stream(s3_path(uri)))  # type: ignore[return-value]
    except FileNotFoundError:
        raise InputError(f"{uri}: no such S3 object") from None
    except OSError as exc:
        raise _read_error(uri, exc) from None


def open_input_file(uri: str) -> Any:
    """A random-access reader (for Parquet)."""
    try:
        return filesystem().open_input_file(s3_path(uri))
    except FileNotFoundError:
        raise InputError(f"{uri}: no such S3 object") from None
    except OSError as exc:
        raise _read_error(uri, exc) from None


def read_bytes(uri: str) -> bytes | None:
    """The whole object, or None if it does not exist."""
    try:
        with filesystem().open_input_stream(s3_path(uri)) as stream:
            return bytes(stream.read())
    except FileNotFoundError:
        return None


def write_bytes(uri: str, data: bytes) -> None:
    with filesystem().open_output_stream(s3_path(uri)) as stream:
        stream.write(data)


def upload_file(local_path: str, uri: str) -> None:
    with open(local_path, "rb") as source, filesystem().open_output_stream(s3_path(uri)) as target:
        while chunk := source.read(READ_CHUNK):
            target.write(chunk)


def list_objects(prefix_uri: str) -> list[tuple[str, int]]:
    """``(s3://uri, size)`` of every object under a prefix, sorted by key."""
    from pyarrow import fs as pafs

    prefix = prefix_uri[len("s3://") :].strip("/")
    try:
        infos = filesystem().get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise _read_error(prefix_uri, exc) from None
    return sorted((f"s3://{info.path}", info.size) for info in infos if info.type == pafs.FileType.File)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object under a prefix: its ``s3://`` URI, its key relative to the prefix, size and modification time."""

    uri: str
    name: str
    size: int
    mtime_ns: int | None


def list_files(prefix_uri: str) -> list[ObjectInfo]:
    """Every object under a prefix (a directory-marker key ending in ``/`` is not an object), sorted by key."""
    from pyarrow import fs as pafs

    prefix = prefix_uri[len("s3://") :].strip("/")
    try:
        infos = filesystem().get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise _read_error(prefix_uri, exc) from None
    found = [
        ObjectInfo(f"s3://{info.path}", info.path[len(prefix) :].lstrip("/"), info.size, info.mtime_ns)
        for info in infos
        if info.type == pafs.FileType.File
    ]
    return sorted(found, key=lambda item: item.uri)


def stat(uri: str) -> tuple[int, int | None] | None:
    """``(size, mtime_ns)`` of an object, or None if it does not exist."""
    from pyarrow import fs as pafs

    info = filesystem().get_file_info(s3_path(uri))
    return (info.size, info.mtime_ns) if info.type == pafs.FileType.File else None


def copy(source_uri: str, target_uri: str) -> None:
    """A server-side copy of one object."""
    filesystem().copy_file(s3_path(source_uri), s3_path(target_uri))


def object_size(uri: str) -> int | None:
    from pyarrow import fs as pafs

    info = filesystem().get_file_info(s3_path(uri))
    return info.size if info.type == pafs.FileType.File else None


# Deleting goes through botocore, not pyarrow: pyarrow's S3 delete re-creates the parent "folder" as an
# empty `key/` marker object after every delete (apache/arrow#36275; the C++ option that turns this off
# is not exposed in Python), which would litter the user's bucket with directory markers.


@lru_cache(maxsize=4)
def _s3_client(settings: S3Settings) -> Any:
    import botocore.config
    import botocore.session

    config = botocore.config.Config(
        s3={"addressing_style": "path"} if settings.endpoint else {}, retries={"max_attempts": 3, "mode": "standard"}
    )
    return botocore.session.get_session().create_client(
        "s3",
        region_name=settings.region or "us-east-1",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        config=config,
    )


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = s3_path(uri).partition("/")
    return bucket, key


def delete_prefix(prefix_uri: str, *, keep: tuple[str, ...] = ()) -> None:
    """Delete every object under ``prefix_uri/`` (directory markers included), except the ``keep`` URIs."""
    bucket, key = _bucket_key(prefix_uri.rstrip("/"))
    kept = {_bucket_key(uri)[1] for uri in keep}
    client = _s3_client(s3_settings())
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/"):
            doomed = [{"Key": o["Key"]} for o in page.get("Contents", ()) if o["Key"] not in kept]
            if doomed:
                client.delete_objects(Bucket=bucket, Delete={"Objects": doomed, "Quiet": True})
    except _boto_errors() as exc:  # botocore's errors share no base with OSError
        raise OSError(f"cannot delete {prefix_uri}/*: {exc}") from None


def delete(uri: str) -> None:
    """Delete one object; a missing one is fine (S3 answers a delete of a missing key with success)."""
    bucket, key = _bucket_key(uri)
    try:
        _s3_client(s3_settings()).delete_object(Bucket=bucket, Key=key)
    except _boto_errors() as exc:  # botocore's errors share no base with OSError
        raise OSError(f"cannot delete {uri}: {exc}") from None


def _boto_errors() -> tuple[type[Exception], ...]:
    """What botocore raises for a request that failed (a bug elsewhere still shows its traceback)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)
