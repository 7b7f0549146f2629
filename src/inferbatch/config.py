"""Resolve every setting of a run, once, into a frozen ``RunConfig``.

Precedence is flag > environment > job file > built-in default (``DEFAULTS``, the
one table of defaults), decided in ``merge_settings()`` and nowhere else. Outside this
module only the CLI touches ``os.environ``: it hands it in (and redacts secrets).
Each setting has one name: ``--max-attempts`` is the job-file key
``max_attempts`` and the field ``RunConfig.max_attempts``.

Environment variables read here:

    INFERENCE_URL        base URL of the API (Heroku's Managed Inference add-on sets it)
    INFERENCE_KEY        bearer key (or the variable named by --api-key-env)
    INFERENCE_MODEL_ID   model id; set only by the older per-model plans. The standard plan
                         (``heroku-inference:standard``) serves several models, named per request:
                         then the model comes from --model, the job file or the row (SPEC §8.39)
    DYNO                 Heroku's dyno name, for ``--shard auto`` (``worker.3``; Fir apps' names carry no number)
    INFERBATCH_SHARDS    how many dynos share the work under ``--shard auto``; each takes 1/N of the limits
    $NAME in a job file  ``input``, ``output``, ``summary_json``, ``cache``, ``template_file`` and ``model`` may
                         name variables (``s3://$BUCKETEER_BUCKET_NAME/...``, ``model = "$INFERBATCH_MODEL"``);
                         one that is unset or empty is an error only if that value is used
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (or AWS_DEFAULT_REGION)
                         S3 credentials and region for ``s3://`` paths (``s3_settings()``); else Heroku
                         Bucketeer's BUCKETEER_AWS_ACCESS_KEY_ID, BUCKETEER_AWS_SECRET_ACCESS_KEY,
                         BUCKETEER_AWS_REGION
    AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL
                         an S3-compatible store to use instead of AWS

``resolve()`` is two steps: ``merge_settings()`` decides each raw value by precedence, then one small
function per section (input, connection, limits, budget, evaluation, output) checks what it owns.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from inferbatch.durations import duration_seconds
from inferbatch.errors import ConfigError
from inferbatch.evaluation import RUBRIC, Assertion, Variant
from inferbatch.pricing import Pricing, unpriced_error
from inferbatch.results import COLUMNS, EVAL_COLUMNS, INTERNAL_KEYS, JUDGE, PARSED


class Secret:
    """A string that never shows itself in repr, str or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count``; the defaults, ``0/1``, are the whole input (and --shard's default)."""

    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# The one table of defaults: every setting a flag and a job-file key give, as a user would write it ("10m",
# "0/1"). RunConfig's fields, the --help text (cli.py) and load_job's list of known keys all read it, so a
# default changes here and nowhere else. None, False and empty mean "not set".
DEFAULTS: dict[str, Any] = {
    "concurrency": 16,
    "rpm": None,
    "tpm": None,
    "max_attempts": 6,
    "timeout": 300.0,
    "system": None,
    "template": None,
    "template_file": None,
    "id_column": None,
    "limit": None,
    "shard": str(Shard()),
    "keep_columns": (),
    "retry_errors": False,
    "restart": False,
    "abort_after": 25,
    "output_format": None,
    "summary_json": None,
    "drain_timeout": 20.0,
    "deadline": None,
    "max_wait": "10m",
    "max_total_tokens": None,
    "max_cost": None,
    "price_in": None,
    "price_out": None,
    "progress_interval": 10.0,
    "checkpoint_interval": 5.0,
    "api_key_env": "INFERENCE_KEY",
    "url": None,
    "model": None,
    "simulate": False,
    "input": None,
    "output": None,
    "params": {},
    "repeat": 1,
    "judge_repeat": 1,
    "variant": (),
    "fail_under": None,
    "cache": None,
    "schema": None,
    "schema_retries": 2,
    "schema_mode": "api",
}
# Settings a flag gives that a job file may not: the job file itself, and -v's count.
FLAG_ONLY_DEFAULTS: dict[str, Any] = {"job": None, "verbose": 0}

# The TOML type each job-file key must have (numbers are checked again when converted).
_STRINGS = (
    "system",
    "template",
    "template_file",
    "id_column",
    "output_format",
    "summary_json",
    "deadline",
    "max_wait",
    "api_key_env",
    "url",
    "model",
    "input",
    "output",
    "cache",
    "shard",
    "schema",
    "schema_mode",
)
_BOOLS = ("retry_errors", "restart", "simulate")
_NUMBERS = (
    "concurrency",
    "rpm",
    "tpm",
    "max_attempts",
    "timeout",
    "limit",
    "abort_after",
    "drain_timeout",
    "max_total_tokens",
    "max_cost",
    "price_in",
    "price_out",
    "progress_interval",
    "checkpoint_interval",
    "repeat",
    "judge_repeat",
    "fail_under",
    "schema_retries",
)
_JOB_TYPES: dict[str, type | tuple[type, ...]] = {
    **{k: str for k in _STRINGS},
    **{k: bool for k in _BOOLS},
    **{k: (int, float, str) for k in _NUMBERS},
    "deadline": (str, int, float),
    "max_wait": (str, int, float),
    "keep_columns": (str, list),
    "variant": (str, list),
    "params": dict,
}

# Job-file keys holding paths, resolved relative to the job file.
PATH_KEYS = ("input", "output", "template_file", "summary_json", "cache", "schema")

OUTPUT_FORMATS = ("jsonl", "parquet", "openai-batch")

# Names a kept column may not take (SPEC §8.27): every result column, and the internal keys (body, error code).
RESERVED_COLUMNS = tuple(dict.fromkeys((*COLUMNS, PARSED, *EVAL_COLUMNS, JUDGE, *INTERNAL_KEYS)))


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Every setting of one run, resolved and checked (``resolve()``); field names are the job-file keys.

    A default that is a value reads ``DEFAULTS`` (converted where the field holds the parsed value: ``max_wait``
    is seconds, ``shard`` a Shard); one that means "not set" (None, False, empty) is written as such. Either
    way a RunConfig built directly agrees with one resolved from no settings (tests/test_config.py pins it).
    """

    input: str
    output: str | None = None
    url: str | None = None  # full endpoint, .../v1/chat/completions
    api_key: Secret | None = None
    model: str | None = None
    simulate: bool = False
    concurrency: int = DEFAULTS["concurrency"]
    rpm: int | None = None
    tpm: int | None = None
    max_attempts: int = DEFAULTS["max_attempts"]
    timeout: float = DEFAULTS["timeout"]
    system: str | None = None
    template: str | None = None
    id_column: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    limit: int | None = None
    shard: Shard = Shard()
    keep_columns: tuple[str, ...] = ()
    retry_errors: bool = False
    restart: bool = False
    abort_after: int = DEFAULTS["abort_after"]
    output_format: str = field(default_factory=lambda: output_format_for(None, DEFAULTS["output_format"]))
    summary_json: str | None = None
    drain_timeout: float = DEFAULTS["drain_timeout"]
    deadline: float | None = None  # seconds from process start
    # Longest wait a server may ask for; longer is a quota stop (SPEC §4).
    max_wait: float = field(default_factory=lambda: parse_duration(DEFAULTS["max_wait"]))
    max_total_tokens: int | None = None
    max_cost: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    progress_interval: float = DEFAULTS["progress_interval"]
    checkpoint_interval: float = DEFAULTS["checkpoint_interval"]
    verbose: int = 0  # -v count
    variants: tuple[Variant, ...] = ()
    assertions: tuple[Assertion, ...] = ()
    repeat: int = DEFAULTS["repeat"]
    judge_repeat: int = DEFAULTS["judge_repeat"]  # votes asked of the judge per (row, rubric) (SPEC §8.44)
    selected_variants: tuple[str, ...] = ()
    fail_under: float | None = None
    cache: str | None = None
    limit_share: int = 1  # SPEC §8.38: N processes (--shard auto, INFERBATCH_SHARDS=N) each take 1/N of every limit
    job: str | None = None  # the job file read, kept so no written path may be it (SPEC §8.28)
    template_file: str | None = None  # likewise; its text is in ``template``
    schema: str | None = None  # --schema FILE (SPEC §8.42); its name and content are in answer_schema
    answer_schema: AnswerSchema | None = None
    schema_retries: int = DEFAULTS["schema_retries"]
    schema_mode: str = DEFAULTS["schema_mode"]

    @property
    def structured(self) -> bool:
        """The run asks for structured answers (--schema, or a response_format in its params or a variant's):
        its output has the ``parsed`` column (SPEC §3)."""
        kinds = ("json_schema", "json_object")
        formats = [
            self.params.get("response_format"),
            *((v.params or {}).get("response_format") for v in self.variants),
        ]
        return self.answer_schema is not None or any(isinstance(f, Mapping) and f.get("type") in kinds for f in formats)

    @property
    def evaluation(self) -> bool:
        """An evaluation run adds the variant, sample, passed, failures and cached columns."""
        return bool(self.variants or self.assertions or self.repeat > 1 or self.cache)

    def shaping_fingerprint(self) -> dict[str, Any]:
        """The options that change what is sent for a row (SPEC §8.8): a change refuses the checkpoint."""
        return {
            "url": None if self.simulate else self.url,
            "model": self.model,
            "system": self.system,
            "template": self.template,
            "params": dict(sorted(self.params.items())),
            "id_column": self.id_column,
            "shard": str(self.shard),
            "output_format": self.output_format,
            "keep_columns": list(self.keep_columns),
            "variants": [v.as_dict() for v in self.variants],
            "repeat": self.repeat,
            "assert": [a.as_dict() for a in self.assertions],
            **({"judge_repeat": self.judge_repeat} if self.judge_repeat != 1 else {}),
            "schema": self.answer_schema.schema if self.answer_schema is not None else None,
            "schema_mode": self.schema_mode if self.answer_schema is not None else None,
        }


def endpoint_url(base: str, source: str = "--url/INFERENCE_URL") -> str:
    """``https://host`` → ``https://host/v1/chat/completions``; a base ending in ``/v1`` gets ``/chat/completions``.

    A URL carrying ``user:password@`` is refused (SPEC §8.33): the key belongs in INFERENCE_KEY, and a
    password in the URL would be sent as Basic auth and stored in the checkpoint. No message here shows it.
    """
    base = base.strip().rstrip("/")
    shown = _redact_userinfo(base)
    authority = re.split(r"[/?#]", base.split("://", 1)[1] if "://" in base else base, maxsplit=1)[0]
    if "@" in authority:
        raise ConfigError(
            f"{source} carries a user name or password ({shown}); remove the `user:password@` part: "
            "the key goes in INFERENCE_KEY (or the variable named by --api-key-env), never in the URL"
        )
    if not re.match(r"^https?://[^/\s]+", base):
        raise ConfigError(f"{source} must be an http(s) URL, got {shown!r}")
    try:
        parsed = urllib.parse.urlsplit(base)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"{source} is not a valid URL ({exc}): {shown!r}") from None
    if not parsed.hostname:
        raise ConfigError(f"{source} has no host: {shown!r}")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


def _redact_userinfo(url: str) -> str:
    """``https://user:pw@host/x`` → ``https://***@host/x``, also for malformed URLs; other URLs unchanged."""
    return re.sub(r"[^/\s@]+@", "***@", url)


def parse_param(text: str) -> tuple[str, Any]:
    """``temperature=0`` → ("temperature", 0); the value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--param needs KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
        finite = non_finite(value) is None
    except _NonFinite:
        value, finite = None, False
    except ValueError:
        value, finite = raw, True
    if not finite:  # SPEC §8.34: Python's json takes NaN, Infinity and 1e999
        hint = "" if raw.strip()[:1] in "[{" else f"; to send it as text, quote it as JSON: {key}='\"{raw.strip()}\"'"
        raise ConfigError(f"--param {key}: {raw.strip()!r} holds a number that is not finite (nan, infinity){hint}")
    return key, value


class _NonFinite(Exception):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def non_finite(value: Any, where: str = "") -> str | None:
    """The dotted path of the first nan or ±inf inside ``value`` (a number, list or table), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


ONE_OFF_PROCESS_TYPES = ("run", "scheduler", "release")


def parse_shard(text: str, env: Mapping[str, str] | None = None) -> Shard:
    """``I/N``, or ``auto``: I from Heroku's ``DYNO`` (``worker.3`` is shard 2), N from ``INFERBATCH_SHARDS``
    (unset: a single shard).

    SPEC §8.40: Fir-generation apps name dynos without a number (``worker-23z34x56y-w78k9``), so ``auto``
    cannot tell the shard there: a one-line error asking for ``--shard I/N``.
    """
    if str(text).strip() == "auto":
        env = env or {}
        dyno = env.get("DYNO", "").strip()
        count = env.get("INFERBATCH_SHARDS", "").strip()
        if not count:
            return Shard()  # one dyno: it takes everything
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(
                f"INFERBATCH_SHARDS must be the number of worker dynos sharing the work (a whole number, 1 or "
                f"more), got {count!r}: heroku config:set INFERBATCH_SHARDS=2"
            )
        number = re.fullmatch(r"([\w-]+)\.(\d+)", dyno)
        if not dyno:
            raise ConfigError(
                f"--shard auto reads the dyno number from DYNO, which Heroku sets (worker.3), and it is not set: "
                f"off Heroku pass --shard I/N (0/{count} ... {int(count) - 1}/{count}) instead"
            )
        if number is None:
            raise ConfigError(
                f"--shard auto cannot tell which shard this dyno is: DYNO={dyno!r} carries no number (Fir-generation "
                f"apps name dynos like worker-23z34x56y-w78k9); pass --shard I/N instead, one Procfile process type "
                f"per shard (--shard 0/{count}, --shard 1/{count}, ...), or unset INFERBATCH_SHARDS to run one worker"
            )
        if number[1] in ONE_OFF_PROCESS_TYPES:
            raise ConfigError(
                f"--shard auto: {dyno} is a one-off dyno, not one of the {count} worker dynos "
                f"(INFERBATCH_SHARDS={count}); pass --shard I/N to run one shard here"
            )
        index = int(number[2])
        if not 1 <= index <= int(count):
            raise ConfigError(
                f"--shard auto: this is dyno {dyno}, but INFERBATCH_SHARDS={count}: set INFERBATCH_SHARDS to the "
                f"number of worker dynos before scaling (heroku config:set INFERBATCH_SHARDS={max(index, 1)}, "
                "then heroku ps:scale)"
            )
        return Shard(index - 1, int(count))
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    first, of = int(match[1]), int(match[2])
    if of < 1 or first >= of:
        raise ConfigError(f"--shard {text}: I must be between 0 and N-1")
    return Shard(first, of)


def parse_duration(text: str | float | int, option: str | None = None) -> float:
    """``9m`` → 540.0, ``1h30m`` → 5400.0, ``20ms`` → 0.02, a bare number is seconds (``durations``); nan and
    inf are refused."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 90s, 9m, 23h)")
    if not math.isfinite(seconds):
        raise ConfigError(f"{option + ': ' if option else ''}{text!r} is not a finite duration (use e.g. 90s, 9m, 23h)")
    return seconds


# Job-file keys whose value may name environment variables: the paths, and the model (SPEC §8.39: on the
# standard plan an app setting such as INFERBATCH_MODEL names it).
EXPANDED_KEYS = (*PATH_KEYS, "model")
# Where load_job() leaves the variables a value names that are unset: {key: [NAME, ...]}.
UNSET_VARIABLES = "\0unset"

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand_variables(text: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """``$NAME`` and ``${NAME}`` replaced by their values in ``env``; also the names that are unset or empty
    (left as written)."""
    missing: list[str] = []

    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        found = env.get(name, "")
        if not found:
            missing.append(name)
            return match[0]
        return found

    return _VARIABLE.sub(value, text), missing


def load_job(path: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read a job file; keys are long option names with ``_``, paths become relative to the file.

    Variables in the ``EXPANDED_KEYS`` take their values from ``env`` (the process environment by default);
    a value naming an unset one is listed under ``UNSET_VARIABLES``, for ``resolve()`` to refuse if it is used.
    """
    env = os.environ if env is None else env
    job_path = Path(path)
    try:
        data = tomllib.loads(job_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"job file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read job file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path} is not valid TOML: {exc}") from None
    where = non_finite(data)
    if where is not None:
        raise ConfigError(f"job file {path}: `{where}` is not a finite number (nan and inf are refused)")
    known = set(DEFAULTS) | {"variants", "assert"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"job file {path}: unknown key(s) {', '.join(unknown)}")
    for key, value in data.items():
        expected = _JOB_TYPES.get(key)
        wrong_bool = key in _NUMBERS and isinstance(value, bool)
        if expected is not None and (wrong_bool or not isinstance(value, expected)):
            names = " or ".join(
                t.__name__.replace("str", "a string")
                .replace("bool", "true/false")
                .replace("list", "a list")
                .replace("int", "a number")
                .replace("float", "a number")
                for t in (expected if isinstance(expected, tuple) else (expected,))
            )
            raise ConfigError(f"job file {path}: `{key}` must be {names}, got {value!r}")
    keep = data.get("keep_columns")
    if isinstance(keep, list) and not all(isinstance(c, str) for c in keep):
        raise ConfigError(f"job file {path}: `keep_columns` must list column names")
    unset: dict[str, list[str]] = {}
    for key in EXPANDED_KEYS:
        value = data.get(key)
        if not isinstance(value, str):
            continue
        value, missing = expand_variables(value, env)  # e.g. s3://$BUCKETEER_BUCKET_NAME/...
        data[key] = value
        if missing:
            unset[key] = missing
        elif key in PATH_KEYS and value != "-" and "://" not in value:
            data[key] = os.path.normpath(job_path.parent / value)
    if "params" in data and not isinstance(data["params"], dict):
        raise ConfigError(f"job file {path}: [params] must be a table")
    data[UNSET_VARIABLES] = unset
    return data


def _refuse_unset(job_path: str, key: str, names: list[str]) -> ConfigError:
    name = names[0]
    return ConfigError(
        f"job file {job_path}: `{key}` names ${name}, which is not set; set it (on Heroku: heroku config:set "
        f"{name}=...) or give {_flag(key) if key != 'input' else 'INPUT'} on the command line"
    )


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def _finite(name: str, value: Any) -> float:
    """``value`` as a float; nan and ±inf are refused (SPEC §8.34): a nan limit would silently be no limit."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{_flag(name)} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{_flag(name)} must be a finite number, got {value!r}")
    return number


def _whole_number(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` (a number, or its text from a flag) as an int ≥ ``minimum``, else a ConfigError naming the flag:
    the same line whether the value came from the command line or a job file."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            as_float = _finite(name, value)
            if not as_float.is_integer():
                raise ConfigError(f"{_flag(name)} must be a whole number, got {value!r}") from None
            number = int(as_float)
    if number < minimum:
        raise ConfigError(f"{_flag(name)} must be at least {minimum}, got {value!r}")
    return number


def _optional_whole_number(name: str, value: Any, *, minimum: int = 1) -> int | None:
    """``_whole_number`` for a setting whose default is None (not set)."""
    return None if value is None else _whole_number(name, value, minimum=minimum)


def _positive_number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (≥ 0 with ``allow_zero``) for option ``name``; else a ConfigError naming it."""
    number = _finite(name, value)
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{_flag(name)} must be {'≥' if allow_zero else '>'} 0, got {value!r}")
    return number


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    """A finite number > 0 (≥ 0 with ``allow_zero``) for option ``name``, or None; else a ConfigError naming it."""
    return None if value is None else _positive_number(name, value, allow_zero=allow_zero)


def output_format_for(output: str | None, requested: str | None) -> str:
    if requested:
        if requested not in OUTPUT_FORMATS:
            raise ConfigError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}")
        return requested
    if output and output.lower().endswith(".parquet"):
        return "parquet"
    return "jsonl"


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], *, need_connection: bool = True) -> RunConfig:
    """Merge flags (None = not given), environment and job file into one validated RunConfig.

    Two steps: ``merge_settings`` decides every raw value by precedence and is the last reader of ``env``;
    then one small function per section checks the settings it owns and returns them as RunConfig fields.
    Sections run in this order, so of two mistakes the same one is always reported. ``need_connection``
    is False for ``validate``: no URL or key is required, and no folder needs to be writable.
    """
    settings = merge_settings(flags, env)
    cfg = RunConfig(
        **_input_settings(settings),
        **_connection_settings(settings, need_connection=need_connection),
        **_limit_settings(settings),
        **_budget_settings(settings),
        **_evaluation_settings(settings),
        **_output_settings(settings),
        **_schema_settings(settings),
    )
    check_paths(run_paths(cfg), writable=need_connection)  # validate (no connection) writes nothing
    if cfg.max_cost is not None:
        check_priced(cfg)
    return cfg


# Variables `--shard auto` reads (SPEC §8.38, §8.40).
_SHARD_VARIABLES = ("DYNO", "INFERBATCH_SHARDS")


def merge_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Every setting's raw value, decided once: flag > environment > job file > ``DEFAULTS``.

    A flag counts when it is not None (nor an empty tuple: a repeatable flag not given). Besides the keys of
    ``DEFAULTS`` and ``FLAG_ONLY_DEFAULTS``, the mapping holds what only the environment or the job file gives:
    ``url_source`` (which of --url, INFERENCE_URL or the job file gave ``url``: messages name it), ``api_key``
    (a Secret from the variable ``api_key_env`` names, or None), ``shard_env`` (the variables ``--shard auto``
    reads) and the job's ``[[variants]]`` and ``[[assert]]`` tables. Values are not checked here, except what
    precedence itself needs: a job value naming an unset variable is refused when it is the one used, and
    --param texts are parsed to lay them over the job's [params].
    """
    job: dict[str, Any] = load_job(flags["job"], env) if flags.get("job") else {}
    unset: dict[str, list[str]] = job.pop(UNSET_VARIABLES, {})
    merged: dict[str, Any] = {**DEFAULTS, **FLAG_ONLY_DEFAULTS}
    merged.update({k: v for k, v in job.items() if k in DEFAULTS})
    for key, value in flags.items():
        if key in merged and value is not None and value != () and key != "params":
            merged[key] = value
    for key, names in unset.items():
        if key != "model" and flags.get(key) is None:  # the job's value is used: its variable must be set
            raise _refuse_unset(flags["job"], key, names)
    params = dict(job.get("params", {}))
    for text in flags.get("params") or ():
        key, value = parse_param(text)
        params[key] = value
    params.pop("stream", None)
    model = flags.get("model") or env.get("INFERENCE_MODEL_ID")
    if not model and "model" in unset:
        raise _refuse_unset(flags["job"], "model", unset["model"])
    job_url = (f"job file `url` ({flags.get('job')})", job.get("url"))
    url_sources = (("--url", flags.get("url")), ("INFERENCE_URL", env.get("INFERENCE_URL")), job_url)
    url_source, url = next(((name, value) for name, value in url_sources if value), ("", None))
    api_key = env.get(merged["api_key_env"])
    merged.update(
        params=params,
        model=model or job.get("model"),
        url=url,
        url_source=url_source,
        api_key=Secret(api_key) if api_key else None,
        shard_env={name: env[name] for name in _SHARD_VARIABLES if name in env},
        variants=job.get("variants", []),
        **{"assert": job.get("assert", [])},
    )
    return merged


def _input_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What is read and what each row becomes (SPEC §2): the input, template, params, kept columns, the rows."""
    if settings["input"] is None:
        raise ConfigError("no input: give INPUT or a job file with `input = ...`")
    template = settings["template"]
    if settings["template_file"]:
        if template:
            raise ConfigError("give --template or --template-file, not both")
        try:
            template = Path(settings["template_file"]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read --template-file {settings['template_file']}: {exc.strerror}") from None
    params = settings["params"]
    for key in ("max_tokens", "max_completion_tokens"):
        value = params.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise ConfigError(f"--param {key} must be a positive whole number, got {value!r}")
    if "model" in params and not isinstance(params["model"], str):
        raise ConfigError(f"--param model must be a string, got {params['model']!r}")
    keep_columns = _keep_columns(settings["keep_columns"])
    shard = parse_shard(settings["shard"], settings["shard_env"])
    return {
        "input": str(settings["input"]),
        "system": settings["system"],
        "template": template,
        "template_file": settings["template_file"] or None,
        "id_column": settings["id_column"],
        "params": params,
        "keep_columns": keep_columns,
        "shard": shard,
        "limit_share": shard.count if str(settings["shard"]).strip() == "auto" else 1,
        "limit": _optional_whole_number("limit", settings["limit"], minimum=0),
    }


def _keep_columns(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``a,b`` (a flag) or a list (a job file) as column names; none may be a result column (SPEC §8.27)."""
    keep = tuple(c.strip() for c in value.split(",") if c.strip()) if isinstance(value, str) else tuple(value)
    shadowing = [c for c in keep if c in RESERVED_COLUMNS]
    if shadowing:
        raise ConfigError(
            f"--keep-columns {shadowing[0]}: `{shadowing[0]}` is an output column, and a kept column may not "
            "replace a result; rename that input column or leave it out"
        )
    return keep


# The model a --simulate run names when none is configured.
SIMULATOR_MODEL = "sim-model"


def _connection_settings(settings: Mapping[str, Any], *, need_connection: bool) -> dict[str, Any]:
    """Where requests go, with which key and model (SPEC §1). --simulate needs none of them; ``validate``
    (no ``need_connection``) only the model, and that may be left to the rows."""
    simulate = bool(settings["simulate"])
    model = settings["model"]
    url = api_key = None
    if need_connection and not simulate:
        if not settings["url"]:
            raise ConfigError(
                "no API URL: set INFERENCE_URL (e.g. export INFERENCE_URL=$(heroku config:get -a APP INFERENCE_URL)) "
                "or pass --url; or try --simulate"
            )
        url = endpoint_url(settings["url"], settings["url_source"])
        key_env = settings["api_key_env"]
        api_key = settings["api_key"]
        if not api_key:
            raise ConfigError(
                f"no API key: set {key_env} (e.g. export {key_env}=$(heroku config:get -a APP INFERENCE_KEY)); "
                "the key is never accepted as a flag"
            )
    elif simulate:
        model = model or SIMULATOR_MODEL
    return {"url": url, "api_key": api_key, "model": model or None, "simulate": simulate}


def _limit_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """How hard and how long the run pushes (SPEC §1, §4): pace, retries, stops, and how often it reports."""
    deadline = settings["deadline"]
    return {
        "concurrency": _concurrency(settings["concurrency"]),
        "rpm": _optional_whole_number("rpm", settings["rpm"]),
        "tpm": _optional_whole_number("tpm", settings["tpm"]),
        "max_attempts": _whole_number("max_attempts", settings["max_attempts"]),
        "timeout": _positive_number("timeout", settings["timeout"]),
        "abort_after": _whole_number("abort_after", settings["abort_after"], minimum=0),
        "drain_timeout": _positive_number("drain_timeout", settings["drain_timeout"], allow_zero=True),
        "deadline": None if deadline is None else _positive_duration("--deadline", deadline),
        "max_wait": _positive_duration("--max-wait", settings["max_wait"]),
        "progress_interval": _positive_number("progress_interval", settings["progress_interval"]),
        "checkpoint_interval": _positive_number("checkpoint_interval", settings["checkpoint_interval"]),
    }


def _positive_duration(option: str, value: str | float) -> float:
    """``9m``, ``1h30m`` or seconds, as seconds > 0 (a zero deadline or wait would stop everything at once)."""
    seconds = parse_duration(value, option)
    if seconds <= 0:
        raise ConfigError(f"{option} must be positive")
    return seconds


def _budget_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The budget caps and the prices they count with (SPEC §8.31); a model without a price is refused by
    ``check_priced`` once the whole configuration is known."""
    return {
        "max_total_tokens": _optional_whole_number("max_total_tokens", settings["max_total_tokens"]),
        "max_cost": positive_float("max_cost", settings["max_cost"]),
        "price_in": positive_float("price_in", settings["price_in"], allow_zero=True),
        "price_out": positive_float("price_out", settings["price_out"], allow_zero=True),
    }


def _evaluation_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation run's variants, assertions, samples and pass mark (SPEC §8.23)."""
    variants = tuple(Variant.from_table(t, n) for n, t in enumerate(_tables(settings, "variants"), 1))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError("[[variants]] names must be unique")
    selected = settings["variant"]
    selected = ((selected,) if selected else ()) if isinstance(selected, str) else tuple(selected)
    unknown = [name for name in selected if name not in names]
    if unknown:
        raise ConfigError(f"--variant {unknown[0]}: no such variant (job file has: {', '.join(names) or 'none'})")
    assertions = tuple(Assertion.from_table(t, n) for n, t in enumerate(_tables(settings, "assert"), 1))
    fail_under = positive_float("fail_under", settings["fail_under"], allow_zero=True)
    if fail_under is not None and fail_under > 1:
        raise ConfigError("--fail-under is a fraction between 0 and 1 (e.g. 0.9)")
    judge_repeat = _whole_number("judge_repeat", settings["judge_repeat"])
    if judge_repeat > 1 and not any(a.type == RUBRIC for a in assertions):
        raise ConfigError("--judge-repeat asks an LLM judge several times: it needs an [[assert]] of type llm-rubric")
    return {
        "variants": variants,
        "selected_variants": selected,
        "assertions": assertions,
        "repeat": _whole_number("repeat", settings["repeat"]),
        "judge_repeat": judge_repeat,
        "fail_under": fail_under,
    }


def _output_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the run writes and how it resumes: output, its format, side outputs, cache, checkpoint choices,
    and the run's own record (the job file, -v). The paths are checked together, after (``check_paths``)."""
    return {
        "output": settings["output"],
        "output_format": output_format_for(settings["output"], settings["output_format"]),
        "summary_json": settings["summary_json"],
        "cache": settings["cache"],
        "retry_errors": bool(settings["retry_errors"]),
        "restart": bool(settings["restart"]),
        "job": settings["job"] or None,
        "verbose": int(settings["verbose"]),
    }


@dataclass(frozen=True, slots=True)
class AnswerSchema:
    """``--schema FILE``, read: its name (the file's stem) and the JSON Schema answers must match."""

    name: str
    schema: Mapping[str, Any]


def _schema_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Structured answers (SPEC §8.42): the schema file, how it is sent, how often a mismatch is re-asked.
    Every schema the configuration names must be valid JSON Schema: exit 2 before anything is sent."""
    from inferbatch.structured import SCHEMA_MODES, SchemaProblem, expectation_for, load_schema

    mode = str(settings["schema_mode"])
    if mode not in SCHEMA_MODES:
        raise ConfigError(f"--schema-mode {mode!r}: use one of {', '.join(SCHEMA_MODES)}")
    answer_schema = None
    if settings["schema"]:
        if "response_format" in settings["params"]:
            raise ConfigError("give --schema or a `response_format` param, not both")
        answer_schema = AnswerSchema(*load_schema(str(settings["schema"])))
    tables = [("--param/[params]", settings["params"])]
    tables += [(f"[[variants]] {t.get('name')!r}", t.get("params") or {}) for t in _tables(settings, "variants")]
    if answer_schema is not None:
        for where, params in tables[1:]:
            if isinstance(params, Mapping) and "response_format" in params:
                raise ConfigError(f"give --schema or {where}'s `response_format`, not both")
    for where, params in tables:
        try:
            expectation_for(params.get("response_format") if isinstance(params, Mapping) else None)
        except SchemaProblem as exc:
            raise ConfigError(f"{where} response_format: {exc}") from None
    return {
        "schema": settings["schema"] or None,
        "answer_schema": answer_schema,
        "schema_retries": _whole_number("schema_retries", settings["schema_retries"], minimum=0),
        "schema_mode": mode,
    }


def run_models(cfg: RunConfig) -> list[str | None]:
    """The model each variant of the run sends (a `model` in the params, the variant's, else the run's);
    None for one that leaves the model to the rows. Rows that name their own model are not known here."""
    models: list[str | None] = []
    for variant in cfg.variants or (None,):
        params = {**cfg.params, **((variant and variant.params) or {})}
        model = params.get("model") or (variant and variant.model) or cfg.model
        if model not in models:
            models.append(model)
    for rubric in cfg.assertions:  # the judge's models (SPEC §8.44): a named one, else the run's
        judge = rubric.judge_model or cfg.model if rubric.type == RUBRIC else None
        if judge is not None and judge not in models:
            models.append(judge)
    return models


def check_priced(cfg: RunConfig) -> None:
    """SPEC §8.31: --max-cost needs a price for every model the run uses, or it would count that model as free.

    Checked here for the models the configuration names; a model only rows name is checked by the runner
    before the first such row is sent (``Pricing.priced``, ``pricing.unpriced_error``)."""
    pricing = Pricing(cfg.price_in, cfg.price_out)
    for model in run_models(cfg):
        if model is not None and not pricing.priced(model):
            raise unpriced_error(model)


MISSING_MODEL = (
    "no model: name one with --model (e.g. --model claude-4-5-haiku), `model = ...` in the job file, or a `model` "
    "in each row; `heroku ai:models:list` lists the models (Heroku's standard inference plan names the model per "
    "request and sets no INFERENCE_MODEL_ID; the older per-model plans set it)"
)


def missing_model_error() -> ConfigError:
    """SPEC §8.7 and §8.39: the first valid row names no model and none is configured (exit 2, nothing sent)."""
    return ConfigError(MISSING_MODEL)


def restarted_on_exit(env: Mapping[str, str]) -> bool:
    """Whether this process is a Heroku dyno of the app's formation (a worker), which the platform restarts
    when it exits, rather than a one-off or Scheduler dyno (``run.1234``, ``scheduler.42``) or no dyno at all."""
    dyno = env.get("DYNO", "").strip()
    return bool(dyno) and re.split(r"[.-]", dyno, maxsplit=1)[0] not in ONE_OFF_PROCESS_TYPES


MAX_CONCURRENCY = 4096


def _concurrency(value: Any) -> int:
    number = _whole_number("concurrency", value)
    if number > MAX_CONCURRENCY:
        raise ConfigError(
            f"--concurrency {number} is more than {MAX_CONCURRENCY} requests in flight; no API allows that"
        )
    return number


# ---- S3: where and as whom s3:// paths are read and written ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Settings:
    """The credentials, region and endpoint ``storage`` opens ``s3://`` paths with (hashable: it keys the
    cached filesystem and client there)."""

    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint: str | None = None


# Each S3 setting's variables, the first one set wins: the standard AWS names, then Heroku Bucketeer's.
S3_VARIABLES: dict[str, tuple[str, ...]] = {
    "access_key": ("AWS_ACCESS_KEY_ID", "BUCKETEER_AWS_ACCESS_KEY_ID"),
    "secret_key": ("AWS_SECRET_ACCESS_KEY", "BUCKETEER_AWS_SECRET_ACCESS_KEY"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION", "BUCKETEER_AWS_REGION"),
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
}


def s3_settings(env: Mapping[str, str] | None = None) -> S3Settings:
    """The S3 settings ``env`` (the process environment by default) gives; an empty variable counts as unset.

    ``storage`` calls this for every S3 operation instead of reading the environment itself, so the
    environment is read in this module only. It is not frozen into ``RunConfig``: S3 is reached from
    ``sources``, ``results``, ``cache``, ``checkpoint_s3``, ``merge`` and ``report``, most of which never see
    a RunConfig, and ``merge``/``report`` resolve none; a module-level copy set once would go stale for a
    library user or a test that sets AWS_* later. Reading is cheap, and ``storage`` keeps one filesystem
    and one client per distinct settings.
    """
    env = os.environ if env is None else env

    def first_set(names: tuple[str, ...]) -> str | None:
        return next((env[name] for name in names if env.get(name)), None)

    return S3Settings(**{setting: first_set(names) for setting, names in S3_VARIABLES.items()})


# ---- paths: what a command reads and writes (SPEC §8.28) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathUse:
    """One path a command touches, named as the user gave it.

    ``kind`` is ``file``; ``folder`` (created and filled with entries of its own: the cache); or ``tree``
    (a folder the run also deletes, the checkpoint: nothing else may live inside it).
    """

    option: str  # how the user gave it: "-o", "--summary-json", "INPUT", ...
    path: str
    what: str  # for messages: "the input"
    writes: bool = False
    kind: Literal["file", "folder", "tree"] = "file"


def run_paths(cfg: RunConfig) -> list[PathUse]:
    """Every path ``run`` reads or writes: the output and its checkpoint, the side outputs, the files it reads."""
    uses: list[PathUse] = []
    if cfg.output:
        uses.append(PathUse("-o", cfg.output, "the output", writes=True))
        uses.append(
            PathUse("-o", cfg.output + ".checkpoint", "the output's checkpoint folder", writes=True, kind="tree")
        )
    if cfg.summary_json:
        uses.append(PathUse("--summary-json", cfg.summary_json, "the --summary-json file", writes=True))
    if cfg.cache:
        uses.append(PathUse("--cache", cfg.cache, "the --cache folder", writes=True, kind="folder"))
    if cfg.input != "-":
        uses.append(PathUse("INPUT", cfg.input, "the input"))
    if cfg.job:
        uses.append(PathUse("--job", cfg.job, "the job file"))
    if cfg.template_file:
        uses.append(PathUse("--template-file", cfg.template_file, "the --template-file"))
    if cfg.schema:
        uses.append(PathUse("--schema", cfg.schema, "the --schema file"))
    return uses


def check_paths(uses: list[PathUse], *, writable: bool = True) -> None:
    """The one check of every path a command will write (SPEC §8.28), before anything is sent or written.

    No written path may be another path of the command (the input, the output, a side output, the job or
    template file), however spelled (``./a.jsonl`` and ``a.jsonl``, a symlink: real paths are compared; for
    ``s3://`` only the text can be). Nothing may live inside a ``tree``. A written file may not be a folder,
    nor the cache a file. With ``writable``, the folder each local path will be written in (or its nearest
    existing parent: missing folders are created when written) must be a writable folder.
    """
    for position, first in enumerate(uses):
        for second in uses[position + 1 :]:
            if first.writes or second.writes:
                _refuse_overlap(first, second)
    for use in uses:
        if use.writes and _remote(use.path):
            bucket, _, key = _normal_remote(use.path).partition("://")[2].partition("/")
            if use.kind == "file" and not (bucket and key):
                raise ConfigError(f"{use.option} {use.path}: an s3:// path needs a bucket and a key")
        elif use.writes:
            _check_target(use, writable)


def _refuse_overlap(first: PathUse, second: PathUse) -> None:
    if _remote(first.path) != _remote(second.path):
        return
    if _same_location(first.path, second.path):
        writer, other = (second, first) if second.writes else (first, second)  # blame the later, a side output
        spelled = "" if other.path == writer.path else f" ({other.option} {other.path})"
        raise ConfigError(
            f"{writer.option} {writer.path} is {other.what}{spelled}: writing there would destroy it; "
            f"give {writer.option} a path of its own"
        )
    for tree, inner in ((first, second), (second, first)):
        if tree.kind == "tree" and _inside(inner.path, tree.path):
            raise ConfigError(
                f"{inner.option} {inner.path} is inside {tree.what} {tree.path}, which the run manages and "
                "removes; choose a path outside it"
            )


def _check_target(use: PathUse, writable: bool) -> None:
    path = use.path
    if use.kind == "file" and os.path.isdir(path):
        raise ConfigError(f"{use.option} {path} is a folder; give a file name")
    if use.kind == "folder" and os.path.isfile(path):
        raise ConfigError(f"{use.option} {path} is a file; the cache is a folder (or an s3:// prefix)")
    if use.kind == "tree" and os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"{path} is in the way: {use.what} must be a folder of that name; move it away")
    if not writable:
        return
    folder = path if use.kind != "file" and os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"{use.option} {path}: {folder} is not a folder")
    if not _writable(folder):
        raise ConfigError(f"{use.option} {path}: cannot write in the folder {folder} (permission denied or read-only)")


def _writable(folder: str) -> bool:
    """Whether a file can be created in ``folder``: asked, then tried (root passes os.access even where
    creating fails, as in /sys), with a hidden probe file removed at once."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".inferbatch-probe-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _remote(path: str) -> bool:
    return "://" in path


def _normal_remote(path: str) -> str:
    scheme, _, rest = path.partition("://")
    return f"{scheme.lower()}://{re.sub('/+', '/', rest.strip('/'))}"  # s3://b//k may be s3://b/k: refuse both


def _same_location(a: str, b: str) -> bool:
    if _remote(a):
        return _normal_remote(a) == _normal_remote(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # a hard link, or another spelling on a case-insensitive disk
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    if _remote(path):
        return _normal_remote(path).startswith(_normal_remote(folder) + "/")
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


def _tables(job: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = job.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"job file: `{key}` must be written as [[{key}]] tables")
    return value


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]
