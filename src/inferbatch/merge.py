"""``inferbatch merge``: combine ``--shard`` outputs into one file in input order.

Each shard's output is already in output order (input order; an evaluation's
variant by variant, then input order, then sample), so the merge is a
streaming k-way merge on ``(variant, index, sample)`` (memory: one row per
shard, plus a compact id set). Refused, exit 2, before the output is replaced:

- two rows with the same place or the same ``id`` (the same shard twice, or
  outputs of different inputs): the files overlap;
- indexes that leave a gap, unless ``allow_gaps``: a shard is missing or
  unfinished (SPEC §8.35). Indexes must run 0, 1, 2, ... up to the largest one
  present; rows missing after it, at the end of the input, cannot be seen
  without the input;
- an output that is one of the inputs (SPEC §8.28).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from inferbatch.config import PathUse, check_paths
from inferbatch.errors import ConfigError, InputError, OutputError
from inferbatch.results import (
    COLUMNS,
    EVAL_COLUMNS,
    FROM_BATCH_KEY,
    JUDGE,
    PARSED,
    OutputWriter,
    Status,
    dumps_line,
    kept_column_types,
    read_output,
)
from inferbatch.shaping import IdSet

Place = tuple[int, int, int]  # (variant rank, index, sample)


def _records(path: str) -> Iterator[dict[str, Any]]:
    try:
        for record in read_output(path):
            if not isinstance(record, dict) or "index" not in record or "id" not in record or "status" not in record:
                raise InputError(f"{path}: not an inferbatch result file (no id/index/status)")
            if record.get(FROM_BATCH_KEY):
                raise InputError(
                    f"{path}: an openai-batch output has no row positions to merge by; run the shards with "
                    "--output-format jsonl or parquet, merge those, and convert after"
                )
            index, sample = record["index"], record.get("sample") or 0
            if type(index) is not int or index < 0 or type(sample) is not int:
                raise InputError(f"{path}: not an inferbatch result file (index {index!r} is not a row position)")
            yield record
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable result file ({str(exc)[:200]})") from None


def _variant_ranks(inputs: list[str]) -> dict[Any, int]:
    """Variants in the order the outputs list them; empty for outputs of plain (non-evaluation) runs."""
    ranks: dict[Any, int] = {}
    for path in inputs:
        for record in _records(path):
            if "variant" not in record:
                break
            ranks.setdefault(record["variant"], len(ranks))
    return ranks


def _places(path: str, source: int, ranks: dict[Any, int]) -> Iterator[tuple[Place, int, dict[str, Any]]]:
    for record in _records(path):
        yield (ranks.get(record.get("variant"), 0), record["index"], record.get("sample") or 0), source, record


def merge_outputs(inputs: list[str], output: str, output_format: str | None = None, *, allow_gaps: bool = False) -> int:
    """Write the merged rows to ``output``; returns how many rows it holds."""
    if not inputs:
        raise ConfigError("merge needs at least one shard output")
    check_paths(
        [
            PathUse("-o", output, "the merged output", writes=True),
            *(PathUse("INPUT", path, "one of the inputs") for path in inputs),
        ]
    )
    fmt = output_format or ("parquet" if output.lower().endswith(".parquet") else "jsonl")
    ranks = _variant_ranks(inputs)
    kept_types = None
    parsed = judge = False
    if fmt == "parquet":
        known = set(COLUMNS) | {PARSED} | (set(EVAL_COLUMNS) | {JUDGE} if ranks else set())
        extra: list[str] = []
        for path in inputs:
            for record in _records(path):
                extra = [k for k in record if k not in known]
                parsed = parsed or PARSED in record
                judge = judge or (bool(ranks) and JUDGE in record)
                break
        if extra:
            kept_types = kept_column_types((r for p in inputs for r in _records(p)), tuple(extra))
    try:
        writer = OutputWriter(output, fmt, kept_types, evaluation=bool(ranks), parsed=parsed, judge=judge)
    except OSError as exc:
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    seen = IdSet()
    previous: Place | None = None
    previous_source = -1
    count = missing = 0
    first_gap: int | None = None
    try:
        merged = heapq.merge(*(_places(p, n, ranks) for n, p in enumerate(inputs)), key=lambda item: item[0])
        for place, source, record in merged:
            gap = _check_order(place, source, previous, previous_source, inputs)
            if gap:
                missing += gap
                first_gap = place[1] - gap if first_gap is None else first_gap
            # An input's own duplicate id is already an `invalid` row; only answered rows must be unique.
            key = str(record["id"]) if not ranks else f"{record['id']}\0{record.get('variant')}\0{place[2]}"
            if record["status"] != Status.INVALID and not seen.add(key):
                raise ConfigError(f"the shard outputs overlap: id {record['id']!r} appears twice")
            previous, previous_source = place, source
            writer.write_line(dumps_line(record), record)
            count += 1
        if missing and not allow_gaps:  # checked after the whole stream, so an overlap is named first
            raise ConfigError(
                f"the shard outputs leave gaps: {missing} row index(es) missing, the first at index {first_gap} "
                "(a shard missing or unfinished); merge every shard, or pass --allow-gaps to write the merge anyway"
            )
        writer.commit()
    except OSError as exc:
        writer.abort()
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        writer.abort()
        raise
    return count


def _check_order(place: Place, source: int, previous: Place | None, previous_source: int, inputs: list[str]) -> int:
    """Refuse a row that repeats a place or comes out of order; return how many indexes it skips (a gap)."""
    rank, index, _ = place
    if previous is not None and place < previous:
        raise InputError(f"{inputs[source]}: rows are not in input order; not an unchanged inferbatch output")
    same_variant = previous is not None and previous[0] == rank
    last = previous[1] if previous is not None and same_variant else -1
    if place == previous or (same_variant and index == last and source != previous_source):
        raise ConfigError(f"the shard outputs overlap: row index {index} appears twice; merge each shard once")
    return max(0, index - last - 1)
