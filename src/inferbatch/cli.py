"""The command line: parse flags, resolve a RunConfig, call the library, map errors to exit codes.

The only module that imports click. Heavy imports (aiohttp, pyarrow) happen
inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from inferbatch.config import DEFAULTS, OUTPUT_FORMATS
from inferbatch.errors import InferbatchError, OutputError
from inferbatch.pricing import Pricing
from inferbatch.structured import SCHEMA_MODES

if TYPE_CHECKING:
    from inferbatch.config import RunConfig
    from inferbatch.errors import Interrupted
    from inferbatch.progress import Progress
    from inferbatch.runner import RunReport
    from inferbatch.worker import Worker

_PROCESS_START = time.monotonic()
T = TypeVar("T")


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """The one place an InferbatchError becomes a message on stderr and an exit code."""
    try:
        yield
    except InferbatchError as exc:
        click.echo(f"inferbatch: {exc}", err=True)
        raise click.exceptions.Exit(exc.exit_code) from None


def _setup_logging(quiet: bool, verbose: int) -> None:
    level = logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("inferbatch")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)


def shaping_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options that decide what is sent for a row: shared by `run` and `validate`."""
    decorators = [
        click.option("--job", type=click.Path(dir_okay=False), help="Job file (TOML) with settings; flags win."),
        click.option(
            "--model",
            help="Model id, as `heroku ai:models:list` names it [env: INFERENCE_MODEL_ID, set "
            "by the older per-model plans only]; a row's own `model` wins.",
        ),
        click.option("--system", help="System message prepended to rows without one."),
        click.option("--template", help="User message built from row columns, with {column} placeholders."),
        click.option("--template-file", type=click.Path(dir_okay=False), help="Read --template from a file."),
        click.option("--id-column", help="Column holding the row id [default: custom_id, else id, else position]."),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help="Request body parameter (JSON value), e.g. temperature=0. Repeatable.",
        ),
        click.option("--limit", metavar="N", help="Only the first N rows."),
        click.option(
            "--shard",
            help="Only rows whose id hashes to shard I of N, as I/N; `auto` on Heroku: I from "
            "DYNO (worker.3), N from INFERBATCH_SHARDS, and each shard takes 1/N of the rate limits. "
            f"{_default('shard')}",
        ),
        click.option("--keep-columns", help="Comma-separated input columns to copy into the output."),
        click.option(
            "--schema",
            type=click.Path(dir_okay=False),
            help="JSON Schema file every answer must match (parsed into a `parsed` column; re-asked on a mismatch).",
        ),
        click.option(
            "--schema-mode",
            type=click.Choice(SCHEMA_MODES),
            help="How --schema is sent: api (response_format json_schema: OpenAI, vLLM), json-object "
            "(llama.cpp's server), prompt (in the system message: servers that refuse response_format). "
            f"{_default('schema_mode')}",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _default(name: str) -> str:
    """``[default: …]`` for help text, from the one table of defaults."""
    value = DEFAULTS[name]
    return f"[default: {value:g}]" if isinstance(value, float) else f"[default: {value}]"


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Connection and run options: shared by `run` and `worker`. Numbers are taken as text and checked by
    ``config.resolve``, so a bad one (``nan``, ``inf``, ``abc``) is the same one line from a flag or a job file."""
    decorators = [
        click.option("--url", help="API base URL [env: INFERENCE_URL]; /v1/chat/completions is appended."),
        click.option("--api-key-env", help=f"Read the key from this variable instead of {DEFAULTS['api_key_env']}."),
        click.option(
            "--simulate", is_flag=True, default=None, help="Run against the built-in simulator (no key needed)."
        ),
        click.option(
            "-c", "--concurrency", metavar="N", help=f"Most requests in flight at once. {_default('concurrency')}"
        ),
        click.option("--rpm", metavar="N", help="Requests-per-minute ceiling."),
        click.option("--tpm", metavar="N", help="Tokens-per-minute ceiling."),
        click.option(
            "--max-attempts", metavar="N", help=f"Attempts per row, the first included. {_default('max_attempts')}"
        ),
        click.option("--timeout", metavar="S", help=f"Seconds per attempt. {_default('timeout')}"),
        click.option(
            "--retry-errors", is_flag=True, default=None, help="On resume, send rows that ended as error again."
        ),
        click.option("--restart", is_flag=True, default=None, help="Discard an existing checkpoint and start over."),
        click.option(
            "--abort-after",
            metavar="N",
            help=f"Stop after N consecutive failed rows (0: never). {_default('abort_after')}",
        ),
        click.option(
            "--output-format",
            type=click.Choice(OUTPUT_FORMATS),
            help="Output format [default: by the output's extension].",
        ),
        click.option(
            "--drain-timeout",
            metavar="S",
            help=f"On SIGTERM/SIGINT, seconds in-flight requests may take. {_default('drain_timeout')}",
        ),
        click.option("--deadline", help="Stop admitting so in-flight work ends before this (9m, 23h); exit 75."),
        click.option(
            "--max-wait",
            help="Longest wait a server may ask for (Retry-After, a rate-limit reset); "
            f"longer is a quota stop, exit 3. {_default('max_wait')}",
        ),
        click.option(
            "--max-total-tokens",
            metavar="N",
            help="Budget cap: stop admitting before the job's tokens cross N; exit 3.",
        ),
        click.option(
            "--max-cost",
            metavar="USD",
            help="Budget cap in USD: stop admitting before the job's cost crosses it; exit 3.",
        ),
        click.option("--price-in", metavar="USD", help="USD per million prompt tokens [default: built-in table]."),
        click.option("--price-out", metavar="USD", help="USD per million completion tokens [default: built-in table]."),
        click.option(
            "--checkpoint-interval",
            metavar="S",
            help=f"With an s3:// output, seconds between checkpoint parts. {_default('checkpoint_interval')}",
        ),
        click.option(
            "--progress-interval",
            metavar="S",
            help=f"Seconds between logfmt progress lines off a terminal. {_default('progress_interval')}",
        ),
        click.option(
            "--repeat",
            metavar="K",
            help=f"Evaluation: send each (row, variant) K times (a `sample` column). {_default('repeat')}",
        ),
        click.option("--variant", multiple=True, help="Evaluation: run only this [[variants]] entry. Repeatable."),
        click.option(
            "--judge-repeat",
            metavar="K",
            help=f"Evaluation: ask the llm-rubric judge K times per answer; the majority holds. {_default('judge_repeat')}",
        ),
        click.option(
            "--schema-retries",
            metavar="N",
            help=f"Re-ask an answer that does not match its schema up to N more times. {_default('schema_retries')}",
        ),
        click.option(
            "--fail-under",
            metavar="RATE",
            help="Evaluation: exit 1 if any variant's pass rate is below this fraction (e.g. 0.9).",
        ),
        click.option("--cache", help="Response cache folder or s3:// prefix: identical requests are answered from it."),
        click.option("-q", "--quiet", is_flag=True, help="No progress, only warnings and the result."),
        click.option("-v", "--verbose", count=True, help="One logfmt line per retry."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="inferbatch", prog_name="inferbatch")
def cli() -> None:
    """Run large batches of chat-completion requests against an OpenAI-compatible API
    (Heroku Managed Inference first of all), safely and fast: one result row per input row."""


@cli.command()
@click.argument("input", required=False)
@click.option("-o", "--output", help="Output file: .jsonl or .parquet.")
@shaping_options
@run_options
@click.option("--summary-json", help="Also write the end-of-run summary as JSON (a path or s3://).")
def run(input: str | None, quiet: bool, verbose: int, **flags: Any) -> None:
    """Send every row of INPUT (.jsonl, .ndjson, .jsonl.gz, .parquet, .csv, or - for stdin) and write
    one result row per input row, in input order, to OUTPUT.

    Interrupted or crashed runs resume: run the same command again."""
    from inferbatch.config import resolve
    from inferbatch.planning import expected_results
    from inferbatch.progress import Progress

    _setup_logging(quiet, verbose)
    with error_boundary():
        cfg = resolve({**flags, "input": input, "verbose": verbose}, os.environ)
        progress = Progress(total=expected_results(cfg), interval=cfg.progress_interval, quiet=quiet)
        report = run_async(_run(cfg, progress))
        for line in report.summary.lines():
            click.echo(line, err=True)
        for line in report.summary.comparison_table():
            click.echo(line, err=True)
        below = report.summary.variants_below(cfg.fail_under) if cfg.fail_under is not None else []
        if below and report.stop is None:
            click.echo(f"inferbatch: pass rate under --fail-under {cfg.fail_under:g}: {', '.join(below)}", err=True)
        if report.stop is not None:
            click.echo(f"inferbatch: {report.stop}", err=True)
        if report.already_complete:
            click.echo(
                f"{report.output} is already complete (rows={report.summary.rows}): nothing sent, "
                "output untouched; --restart runs the job again",
                err=True,
            )
        else:
            click.echo(f"wrote {report.output} rows={report.summary.rows}", err=True)
        if cfg.summary_json:
            import json

            try:
                _write_side_output("--summary-json", cfg.summary_json, json.dumps(report.summary.as_dict(), indent=2))
            except OutputError as exc:
                failed = OutputError(f"{exc}; the output {report.output} is written")
                if report.stop is not None:  # a stop's own code (3, 75, 130, 143) says more: resumable
                    failed.exit_code = report.stop.exit_code
                raise failed from None
    raise click.exceptions.Exit(exit_code(report))


ROWS_FAILED_EXIT = 1


def exit_code(report: RunReport) -> int:
    """SPEC §1's exit codes: 0 every row ok, 1 rows failed (or a variant under --fail-under), else the stop's."""
    from inferbatch.runner import Outcome

    if report.stop is not None:
        return report.stop.exit_code
    return 0 if report.outcome is Outcome.OK else ROWS_FAILED_EXIT


async def _run(cfg: RunConfig, progress: Progress) -> RunReport:
    """``run_batch``, on a simulator of its own with --simulate; a second Ctrl-C leaves at once."""
    from inferbatch.runner import run_batch
    from inferbatch.simulator import simulated

    if cfg.simulate:
        async with simulated(cfg) as simulated_cfg:
            return await run_batch(
                simulated_cfg, progress=progress, started_at=_PROCESS_START, on_second_interrupt=_leave_now
            )
    return await run_batch(cfg, progress=progress, started_at=_PROCESS_START, on_second_interrupt=_leave_now)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, on uvloop when it is installed (``pip install 'inferbatch[fast]'``)."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _leave_now() -> None:
    """A second Ctrl-C: leave at once (every finished row is already in the checkpoint)."""
    os._exit(130)


def _write_side_output(option: str, path: str, text: str) -> None:
    """Write a side output whole (a temp file renamed into place, or one S3 object), creating missing folders.

    Its path was checked before the run (``config.check_paths``); a failure now is an OutputError (exit 2)."""
    import tempfile

    data = (text if text.endswith("\n") else text + "\n").encode()
    try:
        if path.startswith("s3://"):
            from inferbatch.storage import write_bytes

            write_bytes(path, data)
            return
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is an ordinary file
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, InferbatchError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or " ".join(str(exc).split())[:200]
        raise OutputError(f"cannot write {option} {path}: {reason}") from None


@cli.command()
@click.argument("input", required=False)
@shaping_options
@click.option("--show", type=int, default=10, show_default=True, help="How many problems to print.")
@click.option("--price-in", type=float, help="USD per million prompt tokens [default: built-in table].")
@click.option("--price-out", type=float, help="USD per million completion tokens [default: built-in table].")
def validate(input: str | None, show: int, **flags: Any) -> None:
    """Read and shape every row of INPUT as `run` would (every variant and sample of an evaluation job),
    and report problems and an estimate of tokens and cost; sends nothing."""
    import dataclasses

    from inferbatch import judging
    from inferbatch.config import resolve
    from inferbatch.planning import estimate
    from inferbatch.planning import judge as judge_of
    from inferbatch.progress import logfmt

    _setup_logging(False, 0)
    with error_boundary():
        cfg = resolve({**flags, "input": input}, os.environ, need_connection=False)
        no_model = cfg.model is None
        if no_model:  # shape as if a model were set; say so at the end
            cfg = dataclasses.replace(cfg, model=NO_MODEL)
        found = estimate(cfg, reasons=show)
        for reason in found.reasons:
            click.echo(f"invalid {reason}")
        invalid = found.invalid
        if invalid > show:
            click.echo(f"... and {invalid - show} more invalid rows")
        total = found.total
        click.echo(f"rows={total.rows + invalid} valid={total.rows} invalid={invalid}")
        pricing = Pricing(cfg.price_in, cfg.price_out)
        for model, figures in sorted(found.by_model.items()):
            click.echo(logfmt("estimate_model", model=model, **figures.figures(model, pricing)))
        cost = found.cost(pricing)
        shown_cost = f"{cost:.2f}" if cost is not None else "unknown"
        click.echo(
            f"estimate rows={total.rows} prompt_tokens={total.prompt_tokens} "
            f"max_completion_tokens={total.completion_tokens} cost_usd={shown_cost}"
        )
        judge = judge_of(cfg)
        if judge is not None:  # at most one call per valid row, rubric and vote (only answers that end ok are judged)
            calls = total.rows * len(judge.rubrics) * judge.repeat
            click.echo(
                logfmt(
                    "estimate_judge",
                    requests_max=calls,
                    max_completion_tokens=calls * judging.MAX_TOKENS,
                    models=",".join(sorted(str(m or "the row's model") for m in judge.models())),
                )
            )
        named = [model for model in found.unpriced(pricing) if model != NO_MODEL]  # the no-model note covers the rest
        if named:
            click.echo(
                f"note: no built-in price for {', '.join(named)}; pass --price-in and --price-out for a cost "
                "estimate (--max-cost needs them too)",
                err=True,
            )
        if no_model:
            click.echo(
                "note: no model set: rows without their own `model` need --model, `model = ...` in the job "
                "file, or INFERENCE_MODEL_ID (older plans) to run; `heroku ai:models:list` lists the models",
                err=True,
            )
    raise click.exceptions.Exit(0 if invalid == 0 else 1)


NO_MODEL = "<model>"


@cli.command()
@click.argument("output")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--html", "html_file", help="Also write a self-contained HTML report (charts, slowest and failed rows).")
@click.option("--price-in", type=float, help="USD per million prompt tokens [default: built-in table].")
@click.option("--price-out", type=float, help="USD per million completion tokens [default: built-in table].")
def report(output: str, as_json: bool, html_file: str | None, price_in: float | None, price_out: float | None) -> None:
    """Print the summary of a result file (JSONL or Parquet); with --html, write a report page too."""
    import json

    from inferbatch.config import PathUse, check_paths, positive_float
    from inferbatch.progress import Summary
    from inferbatch.report_html import ReportCollector, render_html
    from inferbatch.results import read_output

    with error_boundary():
        price_in = positive_float("price_in", price_in, allow_zero=True)
        price_out = positive_float("price_out", price_out, allow_zero=True)
        if html_file:
            check_paths(
                [
                    PathUse("OUTPUT", output, "the result file reported on"),
                    PathUse("--html", html_file, "the --html report", writes=True),
                ]
            )
    collector = ReportCollector() if html_file else None
    summary = collector.summary if collector is not None else Summary()
    summary.pricing = Pricing(price_in, price_out)
    try:
        for record in read_output(output):
            if not isinstance(record, dict) or "status" not in record or "index" not in record:
                raise ValueError("rows have no `status`/`index`: not an inferbatch result file")
            if collector is not None:
                collector.add(record)
            else:
                summary.add(record)
    except FileNotFoundError:
        click.echo(f"inferbatch: {output}: no such file", err=True)
        raise click.exceptions.Exit(2) from None
    except (ValueError, OSError, InferbatchError) as exc:
        click.echo(f"inferbatch: {output} is not a readable result file ({str(exc)[:200]})", err=True)
        raise click.exceptions.Exit(2) from None
    if as_json:
        data = summary.as_dict()
        for key in (
            "wall_s",
            "requests_per_s",
            "sent_this_run",
            "unfinished",
            "in_doubt_resumed",
            "rate_limited",
            "paused_s",
        ):
            data.pop(key, None)
        click.echo(json.dumps(data, indent=2))
    else:
        for line in summary.lines(run_figures=False):
            click.echo(line)
        for line in summary.comparison_table():
            click.echo(line)
    if collector is not None and html_file:
        with error_boundary():
            page = render_html(collector, title=f"inferbatch report: {output.rsplit('/', 1)[-1]}")
            _write_side_output("--html", html_file, page)
        click.echo(f"wrote {html_file}", err=True)


@cli.command()
@click.option("--inbox", required=True, help="Folder or s3:// prefix of input files to process.")
@click.option(
    "--outbox",
    required=True,
    help="Folder or s3:// prefix for FILE.results.* and FILE.done.json (FILE: the whole input name).",
)
@click.option("--poll", type=float, default=30.0, show_default=True, help="Seconds between looks at the inbox.")
@click.option(
    "--output-ext",
    type=click.Choice(["jsonl", "parquet"]),
    default="jsonl",
    show_default=True,
    help="Format of the results files.",
)
@click.option("--once", is_flag=True, help="Process the inbox once and exit (for a Scheduler job).")
@shaping_options
@run_options
def worker(
    inbox: str, outbox: str, poll: float, output_ext: str, once: bool, quiet: bool, verbose: int, **flags: Any
) -> None:
    """Process every input file in INBOX, resumably, one after another, then poll; never exits on success
    (a Heroku worker dyno that exits is restarted). Finished inputs get OUTBOX/FILE.done.json and are
    never run again. With --shard auto, N worker dynos split the inbox by file name.

    A configuration error is one line and exit 2. On a worker dyno (not --once) the worker says it once
    and then waits for the platform to stop it before exiting 2: exiting at once would only be restarted
    into the same error, over and over; changing a config var or releasing restarts it anyway."""
    from inferbatch.config import positive_float, resolve, restarted_on_exit
    from inferbatch.worker import Worker

    _setup_logging(quiet, verbose)
    with error_boundary():
        try:
            positive_float("poll", poll)
            cfg = resolve({**flags, "input": inbox, "verbose": verbose}, os.environ)
            service = Worker(
                cfg,
                inbox=inbox,
                outbox=outbox,
                poll=poll,
                output_ext=output_ext,
                once=once,
                quiet=quiet,
                on_second_interrupt=_leave_now,
            )
        except InferbatchError as exc:
            if exc.exit_code != 2 or once or not restarted_on_exit(os.environ):
                raise
            _hold_until_stopped(exc)
        stopped = run_async(_serve(service))
    raise click.exceptions.Exit(stopped.exit_code if stopped is not None else 0)


async def _serve(service: Worker) -> Interrupted | None:
    """The worker's loop, on a simulator of its own with --simulate."""
    from inferbatch.simulator import simulated

    if not service.base.simulate:
        return await service.serve()
    async with simulated(service.base) as cfg:
        service.base = cfg
        return await service.serve()


def _hold_until_stopped(exc: InferbatchError) -> NoReturn:
    """Say a worker dyno's configuration error once, then wait for SIGTERM (a config change, a release, the
    daily restart, a scale-down) or SIGINT, and exit 2: never a crash loop (SPEC §8.40)."""
    import signal

    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # first: a stop that comes while the line is written waits too
    click.echo(
        f"inferbatch: {exc} [this worker dyno now waits: exiting would only restart it into the same "
        "error; a config var change or a new release restarts it]",
        err=True,
    )
    signal.sigwait(stops)
    raise click.exceptions.Exit(exc.exit_code)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Merged output: .jsonl or .parquet (or s3://).")
@click.option(
    "--allow-gaps",
    is_flag=True,
    help="Write the merge even if row indexes leave a gap (a shard missing or unfinished).",
)
def merge(inputs: tuple[str, ...], output: str, allow_gaps: bool) -> None:
    """Combine --shard outputs into one file in input order. Refused (exit 2): shards that overlap, an
    output that is one of the inputs, and indexes that leave a gap, unless --allow-gaps. Indexes must run
    0, 1, 2, ... up to the largest one present (per variant in an evaluation); rows missing after it, at
    the very end of the input, cannot be seen without the input."""
    from inferbatch.merge import merge_outputs

    with error_boundary():
        count = merge_outputs(list(inputs), output, allow_gaps=allow_gaps)
    click.echo(f"wrote {output} rows={count}", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0: any free port).")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="Latency added to every response.")
@click.option("--jitter-ms", type=float, default=0.0, show_default=True, help="Random extra latency, up to this.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random latency and faults.")
@click.option("--rate-429", type=float, default=0.0, help="Share of requests answered 429.")
@click.option("--rate-500", type=float, default=0.0, help="Share of requests answered 500.")
@click.option("--rate-503", type=float, default=0.0, help="Share of requests answered 503.")
@click.option("--rate-hang", type=float, default=0.0, help="Share of requests never answered.")
@click.option("--rate-drop", type=float, default=0.0, help="Share of connections dropped without an answer.")
@click.option("--rate-malformed", type=float, default=0.0, help="Share of 200s with a broken body.")
@click.option("--retry-after", type=float, default=1.0, show_default=True, help="Retry-After seconds on 429s.")
@click.option("--no-retry-after", is_flag=True, help="Send 429s without Retry-After (as Heroku may).")
@click.option("--rpm", type=int, help="Enforce requests per minute (sliding window), 429 beyond.")
@click.option("--tpm", type=int, help="Enforce tokens per minute (sliding window), 429 beyond.")
@click.option("--window-s", type=float, default=60.0, show_default=True, help="Length of the rate-limit window.")
@click.option("--require-key-env", help="Require `Authorization: Bearer $VAR`; names the variable holding the key.")
@click.option(
    "--reject-response-format",
    is_flag=True,
    help="Answer any request with a response_format 400 unsupported_parameter (a model without structured output).",
)
def simulate(
    host: str,
    port: int,
    latency_ms: float,
    jitter_ms: float,
    seed: int,
    rate_429: float,
    rate_500: float,
    rate_503: float,
    rate_hang: float,
    rate_drop: float,
    rate_malformed: float,
    retry_after: float,
    no_retry_after: bool,
    rpm: int | None,
    tpm: int | None,
    window_s: float,
    require_key_env: str | None,
    reject_response_format: bool,
) -> None:
    """Serve an OpenAI-compatible chat-completions API on loopback, with deterministic replies,
    latency, fault injection and rate limits. Put [[sim:500x2]]-style directives in a prompt
    to script one row's answers (see README)."""
    from inferbatch.config import positive_float
    from inferbatch.errors import ConfigError
    from inferbatch.simulator import SimOptions, serve

    with error_boundary():
        for name, value in (("latency_ms", latency_ms), ("jitter_ms", jitter_ms), ("retry_after", retry_after)):
            positive_float(name, value, allow_zero=True)
        positive_float("window_s", window_s)
        for name, value in (
            ("rate_429", rate_429),
            ("rate_500", rate_500),
            ("rate_503", rate_503),
            ("rate_hang", rate_hang),
            ("rate_drop", rate_drop),
            ("rate_malformed", rate_malformed),
        ):
            if (positive_float(name, value, allow_zero=True) or 0.0) > 1:
                raise ConfigError(f"--{name.replace('_', '-')} is a share of requests, between 0 and 1; got {value}")
    require_key = None
    if require_key_env:
        require_key = os.environ.get(require_key_env)
        if not require_key:
            click.echo(f"inferbatch: --require-key-env {require_key_env}: that variable is not set", err=True)
            raise click.exceptions.Exit(2)
    opts = SimOptions(
        latency_ms=latency_ms,
        latency_jitter_ms=jitter_ms,
        seed=seed,
        rate_429=rate_429,
        rate_500=rate_500,
        rate_503=rate_503,
        rate_hang=rate_hang,
        rate_drop=rate_drop,
        rate_malformed=rate_malformed,
        retry_after=None if no_retry_after else retry_after,
        rpm=rpm,
        tpm=tpm,
        window_s=window_s,
        require_key=require_key,
        reject_response_format=reject_response_format,
    )

    def ready(url: str) -> None:
        click.echo(f"simulator listening on {url}", err=True)
        click.echo(url)
        sys.stdout.flush()

    serve(opts, host=host, port=port, ready=ready)


def main() -> None:
    """Console entry point: bugs still show a traceback, but never the key."""
    # Heroku's log router reads lines as they come: never sit on a buffered line.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        cli.main(prog_name="inferbatch")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001 - a bug: show it, redacted
        from inferbatch.redact import Redactor

        text = traceback.format_exc()
        for secret in _secrets_in_env():
            text = Redactor(secret).scrub(text)  # the whole value and every piece of 8+ characters (SPEC §8.33)
        sys.stderr.write(text)
        sys.exit(1)


def _secrets_in_env() -> list[str]:
    """Values that must never be printed: INFERENCE_KEY, any other *_KEY (--api-key-env), secrets, tokens."""
    names = [
        n
        for n in os.environ
        if n == "INFERENCE_KEY" or n.endswith(("_KEY", "_KEY_ID", "SECRET", "_TOKEN")) or "SECRET" in n
    ]
    values = {os.environ[n] for n in names if len(os.environ[n]) >= 8}
    return sorted(values, key=len, reverse=True)
