"""Where a run starts and ends on disk: the checkpoint it resumes, the output it writes, the completion record.

open_checkpoint ─▶ (an earlier run completed the job?) ─▶ already_complete: count the output, send nothing
                └▶ … the run … ─▶ write_output: the checkpoint's rows in input order ─▶ OUTPUT
                                  └▶ mark_complete when every row of the whole job ended ok (SPEC §8.2)
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson

from inferbatch import results
from inferbatch.checkpoint import Checkpoint, input_identity
from inferbatch.config import RunConfig
from inferbatch.errors import CheckpointError, InputError, OutputError
from inferbatch.evaluation import RUBRIC
from inferbatch.planning import slot_layout
from inferbatch.pricing import Pricing
from inferbatch.progress import Summary

log = logging.getLogger("inferbatch")


def open_checkpoint(cfg: RunConfig) -> Checkpoint:
    """The run's checkpoint: resumed if it belongs to this job, refused (CheckpointError) if to another."""
    if cfg.input == "-":
        log.warning("input is stdin, which cannot be re-read: this run has no checkpoint and cannot be resumed")
        return Checkpoint.temporary(slot_layout(cfg))
    assert cfg.output is not None
    try:
        identity = input_identity(cfg.input)
    except OSError as exc:
        raise InputError(f"{cfg.input}: cannot read ({exc.strerror or exc})") from None
    manifest = {"input": identity, "shaping": cfg.shaping_fingerprint()}
    checkpoint: Checkpoint
    if cfg.output.startswith("s3://"):
        from inferbatch.checkpoint_s3 import S3Checkpoint

        checkpoint = S3Checkpoint.open_for_s3(
            cfg.output, manifest, restart=cfg.restart, interval=cfg.checkpoint_interval, layout=slot_layout(cfg)
        )
    else:
        checkpoint = Checkpoint.open_for_run(cfg.output, manifest, restart=cfg.restart, layout=slot_layout(cfg))
    resumed = checkpoint.resumed
    if resumed.finished:
        log.info(
            "resume finished=%d errors=%d in_doubt=%d%s",
            resumed.finished,
            resumed.errors,
            resumed.in_doubt,
            " retry_errors=true" if cfg.retry_errors else "",
        )
    if resumed.in_doubt:
        log.warning(
            "resume: %d row(s) were sent before the last run stopped but have no result "
            "(possibly billed); they are sent again",
            resumed.in_doubt,
        )
    if checkpoint.judge_pending:
        log.warning(
            "resume: %d answered row(s) were waiting for the judge when the last run stopped; their judge calls "
            "then in flight may have been billed, and are asked again (the answers are not)",
            len(checkpoint.judge_pending),
        )
    return checkpoint


def new_summary(cfg: RunConfig) -> Summary:
    return Summary(pricing=Pricing(cfg.price_in, cfg.price_out), default_model=cfg.model)


def already_complete(cfg: RunConfig, completion: dict[str, Any]) -> Summary:
    """The job completed before: count the output as it is, touch nothing, send nothing."""
    assert cfg.output is not None
    if output_size(cfg.output) is None:
        raise CheckpointError(
            f"{cfg.output} is gone, but its checkpoint says the job completed "
            f"({completion.get('rows')} rows, {completion.get('finished_at')}); "
            "rerun with --restart to run it again"
        )
    summary = new_summary(cfg)
    try:
        for record in results.read_output(cfg.output):
            summary.add(record)
    except (ValueError, OSError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise CheckpointError(
            f"{cfg.output} cannot be read ({text}), but its checkpoint says the job completed; "
            "rerun with --restart to run it again"
        ) from None
    log.info(
        "already complete: %s (%d rows, finished %s); nothing sent; --restart runs it again",
        cfg.output,
        summary.rows,
        completion.get("finished_at"),
    )
    return summary


def output_size(output: str) -> int | None:
    if output.startswith("s3://"):
        from inferbatch.storage import object_size

        return object_size(output)
    try:
        return os.path.getsize(output)
    except OSError:
        return None


def covers_whole_input(cfg: RunConfig) -> bool:
    """A pilot (--limit) or a subset of the variants leaves the rest of the job to a later run."""
    every_variant = not cfg.selected_variants or set(cfg.selected_variants) >= {v.name for v in cfg.variants}
    return cfg.limit is None and every_variant


def write_output(cfg: RunConfig, checkpoint: Checkpoint, summary: Summary) -> None:
    """Write every finished row in input order to the output, counting each into ``summary``.

    A destination that cannot be written is an OutputError; every finished row stays in the checkpoint."""
    assert cfg.output is not None
    kept_types = None
    if cfg.output_format == "parquet" and cfg.keep_columns:
        kept_types = results.kept_column_types((orjson.loads(x) for x in checkpoint.lines_in_order()), cfg.keep_columns)
    # A run with no schema of its own, some of whose rows asked for one: the column on every row (SPEC §3).
    parsed = cfg.output_format != "openai-batch" and (cfg.structured or checkpoint.has_parsed)
    writer = None
    try:
        writer = results.OutputWriter(
            cfg.output,
            cfg.output_format,
            kept_types,
            evaluation=cfg.evaluation,
            parsed=parsed,
            judge=any(a.type == RUBRIC for a in cfg.assertions),
        )
        for line in checkpoint.lines_in_order():
            record = orjson.loads(line)
            summary.add(record)
            writer.write_line(line, record)
        writer.commit()
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if not isinstance(exc, OSError):
            raise
        text = " ".join(str(exc).split())[:300]
        raise OutputError(
            f"cannot write {cfg.output} ({text}); every finished row is kept in the checkpoint: "
            "fix the destination and rerun the same command to write it"
        ) from None


def mark_complete(cfg: RunConfig, checkpoint: Checkpoint, summary: Summary) -> None:
    """Keep the completion record, so the next run of the same command sends nothing (SPEC §8.2)."""
    assert cfg.output is not None
    checkpoint.complete(
        {
            "rows": summary.rows,
            "output": cfg.output,
            "output_bytes": output_size(cfg.output),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
