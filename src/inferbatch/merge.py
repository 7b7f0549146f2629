"""``inferbatch merge``: combine ``--shard`` outputs into one file in input order.

Each shard's output is already in input order, so the merge is a streaming
k-way merge on ``index`` (memory: one row per shard, plus a compact id set).
Two rows with the same ``index`` or the same ``id`` mean the files overlap
(the same shard twice, or outputs of different inputs): refused, exit 2.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from inferbatch.errors import InputError, UsageError
from inferbatch.results import COLUMNS, OutputWriter, dumps_line, kept_column_types, read_output
from inferbatch.shaping import IdSet


def _rows(path: str) -> Iterator[tuple[int, int, dict[str, Any]]]:
    try:
        for record in read_output(path):
            if "index" not in record or "id" not in record or "status" not in record:
                raise InputError(f"{path}: not an inferbatch result file (no id/index/status)")
            yield record["index"], 0, record
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable result file ({str(exc)[:200]})") from None


def merge_outputs(inputs: list[str], output: str, output_format: str | None = None) -> int:
    """Write the merged rows to ``output``; returns how many rows it holds."""
    if not inputs:
        raise UsageError("merge needs at least one shard output")
    fmt = output_format or ("parquet" if output.lower().endswith(".parquet") else "jsonl")
    kept_types = None
    if fmt == "parquet":
        extra: list[str] = []
        for path in inputs:
            for _, _, record in _rows(path):
                extra = [k for k in record if k not in COLUMNS]
                break
            if extra:
                break
        if extra:
            kept_types = kept_column_types((r for p in inputs for _, _, r in _rows(p)), tuple(extra))
    writer = OutputWriter(output, fmt, kept_types)
    seen = IdSet()
    previous = -1
    count = 0
    try:
        for index, _, record in heapq.merge(*(_rows(p) for p in inputs), key=lambda item: item[0]):
            if index == previous:
                raise UsageError(f"the shard outputs overlap: row index {index} appears twice; merge each shard once")
            # An input's own duplicate id is already an `invalid` row; only answered rows must be unique.
            if record["status"] != "invalid" and not seen.add(str(record["id"])):
                raise UsageError(f"the shard outputs overlap: id {record['id']!r} appears twice")
            previous = index
            writer.write_line(dumps_line(record), record)
            count += 1
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return count
