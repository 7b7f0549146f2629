"""Resolve every setting of a run, once, into a frozen ``RunConfig``.

Precedence is flag > environment > job file > built-in default, decided in
``resolve()`` and nowhere else; after it, nothing reads ``os.environ``.
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

from inferbatch.errors import UsageError
from inferbatch.evaluation import Assertion, Variant
from inferbatch.pricing import Pricing, unpriced_error
from inferbatch.results import BODY_KEY, COLUMNS, EVAL_COLUMNS

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
    "shard": "0/1",
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
    "variant": (),
    "fail_under": None,
    "cache": None,
}

# The TOML type each job-file key must have (numbers are checked again when converted).
_STRINGS = ("system", "template", "template_file", "id_column", "output_format", "summary_json", "deadline", "max_wait",
            "api_key_env", "url", "model", "input", "output", "cache", "shard")  # fmt: skip
_BOOLS = ("retry_errors", "restart", "simulate")
_NUMBERS = ("concurrency", "rpm", "tpm", "max_attempts", "timeout", "limit", "abort_after", "drain_timeout",
            "max_total_tokens", "max_cost", "price_in", "price_out", "progress_interval", "checkpoint_interval",
            "repeat", "fail_under")  # fmt: skip
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
PATH_KEYS = ("input", "output", "template_file", "summary_json", "cache")

OUTPUT_FORMATS = ("jsonl", "parquet", "openai-batch")

# Output columns SPEC §3 and §8.42-44 name that results.py does not define yet; drop them from here once it does.
_PENDING_COLUMNS = ("cached_tokens", "reasoning_tokens", "parsed", "judge")
# Names a kept column may not take (SPEC §8.27): every result column, and the internal raw-body key.
RESERVED_COLUMNS = tuple(dict.fromkeys((*COLUMNS, *EVAL_COLUMNS, *_PENDING_COLUMNS, BODY_KEY)))


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
    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True, slots=True)
class RunConfig:
    input: str
    output: str | None = None
    url: str | None = None  # full endpoint, .../v1/chat/completions
    api_key: Secret | None = None
    model: str | None = None
    simulate: bool = False
    concurrency: int = 16
    rpm: int | None = None
    tpm: int | None = None
    max_attempts: int = 6
    timeout: float = 300.0
    system: str | None = None
    template: str | None = None
    id_column: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    limit: int | None = None
    shard: Shard = Shard()
    keep_columns: tuple[str, ...] = ()
    retry_errors: bool = False
    restart: bool = False
    abort_after: int = 25
    output_format: str = "jsonl"
    summary_json: str | None = None
    drain_timeout: float = 20.0
    deadline: float | None = None  # seconds from process start
    max_wait: float = 600.0  # longest wait a server may ask for; longer is a quota stop (SPEC §4)
    max_total_tokens: int | None = None
    max_cost: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    progress_interval: float = 10.0
    checkpoint_interval: float = 5.0
    verbosity: int = 0
    variants: tuple[Variant, ...] = ()
    assertions: tuple[Assertion, ...] = ()
    repeat: int = 1
    selected_variants: tuple[str, ...] = ()
    fail_under: float | None = None
    cache: str | None = None
    limit_share: int = 1  # SPEC §8.38: N processes (--shard auto, INFERBATCH_SHARDS=N) each take 1/N of every limit
    job: str | None = None  # the job file read, kept so no written path may be it (SPEC §8.28)
    template_file: str | None = None  # likewise; its text is in ``template``

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
        raise UsageError(
            f"{source} carries a user name or password ({shown}); remove the `user:password@` part: "
            "the key goes in INFERENCE_KEY (or the variable named by --api-key-env), never in the URL"
        )
    if not re.match(r"^https?://[^/\s]+", base):
        raise UsageError(f"{source} must be an http(s) URL, got {shown!r}")
    try:
        parsed = urllib.parse.urlsplit(base)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"{source} is not a valid URL ({exc}): {shown!r}") from None
    if not parsed.hostname:
        raise UsageError(f"{source} has no host: {shown!r}")
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
        raise UsageError(f"--param needs KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
        finite = non_finite(value) is None
    except _NonFinite:
        value, finite = None, False
    except ValueError:
        value, finite = raw, True
    if not finite:  # SPEC §8.34: Python's json takes NaN, Infinity and 1e999
        hint = "" if raw.strip()[:1] in "[{" else f"; to send it as text, quote it as JSON: {key}='\"{raw.strip()}\"'"
        raise UsageError(f"--param {key}: {raw.strip()!r} holds a number that is not finite (nan, infinity){hint}")
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
            raise UsageError(
                f"INFERBATCH_SHARDS must be the number of worker dynos sharing the work (a whole number, 1 or "
                f"more), got {count!r}: heroku config:set INFERBATCH_SHARDS=2"
            )
        number = re.fullmatch(r"([\w-]+)\.(\d+)", dyno)
        if not dyno:
            raise UsageError(
                f"--shard auto reads the dyno number from DYNO, which Heroku sets (worker.3), and it is not set: "
                f"off Heroku pass --shard I/N (0/{count} ... {int(count) - 1}/{count}) instead"
            )
        if number is None:
            raise UsageError(
                f"--shard auto cannot tell which shard this dyno is: DYNO={dyno!r} carries no number (Fir-generation "
                f"apps name dynos like worker-23z34x56y-w78k9); pass --shard I/N instead, one Procfile process type "
                f"per shard (--shard 0/{count}, --shard 1/{count}, ...), or unset INFERBATCH_SHARDS to run one worker"
            )
        if number[1] in ONE_OFF_PROCESS_TYPES:
            raise UsageError(
                f"--shard auto: {dyno} is a one-off dyno, not one of the {count} worker dynos "
                f"(INFERBATCH_SHARDS={count}); pass --shard I/N to run one shard here"
            )
        index = int(number[2])
        if not 1 <= index <= int(count):
            raise UsageError(
                f"--shard auto: this is dyno {dyno}, but INFERBATCH_SHARDS={count}: set INFERBATCH_SHARDS to the "
                f"number of worker dynos before scaling (heroku config:set INFERBATCH_SHARDS={max(index, 1)}, "
                "then heroku ps:scale)"
            )
        return Shard(index - 1, int(count))
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UsageError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: I must be between 0 and N-1")
    return Shard(index, count)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int, option: str | None = None) -> float:
    """``9m`` → 540.0, ``1h30m`` → 5400.0, ``20ms`` → 0.02, a bare number is seconds; nan and inf are refused."""
    seconds = _duration_seconds(text)
    if not math.isfinite(seconds):
        raise UsageError(f"{option + ': ' if option else ''}{text!r} is not a finite duration (use e.g. 90s, 9m, 23h)")
    return seconds


def _duration_seconds(text: str | float | int) -> float:
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"not a duration: {text!r} (use e.g. 90s, 9m, 23h)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


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
        raise UsageError(f"job file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read job file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"job file {path} is not valid TOML: {exc}") from None
    where = non_finite(data)
    if where is not None:
        raise UsageError(f"job file {path}: `{where}` is not a finite number (nan and inf are refused)")
    known = set(DEFAULTS) | {"variants", "assert"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"job file {path}: unknown key(s) {', '.join(unknown)}")
    for key, value in data.items():
        expected = _JOB_TYPES.get(key)
        wrong_bool = key in _NUMBERS and isinstance(value, bool)
        if expected is not None and (wrong_bool or not isinstance(value, expected)):
            names = " or ".join(t.__name__.replace("str", "a string").replace("bool", "true/false")
                                .replace("list", "a list").replace("int", "a number").replace("float", "a number")
                                for t in (expected if isinstance(expected, tuple) else (expected,)))  # fmt: skip
            raise UsageError(f"job file {path}: `{key}` must be {names}, got {value!r}")
    keep = data.get("keep_columns")
    if isinstance(keep, list) and not all(isinstance(c, str) for c in keep):
        raise UsageError(f"job file {path}: `keep_columns` must list column names")
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
        raise UsageError(f"job file {path}: [params] must be a table")
    data[UNSET_VARIABLES] = unset
    return data


def _refuse_unset(job_path: str, key: str, names: list[str]) -> UsageError:
    name = names[0]
    return UsageError(
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
        raise UsageError(f"{_flag(name)} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"{_flag(name)} must be a finite number, got {value!r}")
    return number


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            as_float = _finite(name, value)
            if not as_float.is_integer():
                raise UsageError(f"{_flag(name)} must be a whole number, got {value!r}") from None
            number = int(as_float)
    if number < minimum:
        raise UsageError(f"{_flag(name)} must be at least {minimum}, got {value!r}")
    return number


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    """A finite number > 0 (≥ 0 with ``allow_zero``) for option ``name``, or None; else a UsageError naming it."""
    if value is None:
        return None
    number = _finite(name, value)
    if number < 0 or (number == 0 and not allow_zero):
        raise UsageError(f"{_flag(name)} must be {'≥' if allow_zero else '>'} 0, got {value!r}")
    return number


def output_format_for(output: str | None, requested: str | None) -> str:
    if requested:
        if requested not in OUTPUT_FORMATS:
            raise UsageError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}")
        return requested
    if output and output.lower().endswith(".parquet"):
        return "parquet"
    return "jsonl"


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], *, need_connection: bool = True) -> RunConfig:
    """Merge flags (None = not given), environment and job file into one validated RunConfig."""
    job: dict[str, Any] = load_job(flags["job"], env) if flags.get("job") else {}
    unset: dict[str, list[str]] = job.pop(UNSET_VARIABLES, {})
    merged: dict[str, Any] = dict(DEFAULTS)
    merged.update({k: v for k, v in job.items() if k in DEFAULTS})
    for key, value in flags.items():
        if key in DEFAULTS and value is not None and value != () and key != "params":
            merged[key] = value
    for key, names in unset.items():
        if key != "model" and flags.get(key) is None:  # the job's value is used: its variable must be set
            raise _refuse_unset(flags["job"], key, names)

    params = dict(job.get("params", {}))
    for text in flags.get("params") or ():
        key, value = parse_param(text)
        params[key] = value
    params.pop("stream", None)

    if merged["input"] is None:
        raise UsageError("no input: give INPUT or a job file with `input = ...`")
    template = merged["template"]
    if merged["template_file"]:
        if template:
            raise UsageError("give --template or --template-file, not both")
        try:
            template = Path(merged["template_file"]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read --template-file {merged['template_file']}: {exc.strerror}") from None

    for key in ("max_tokens", "max_completion_tokens"):
        value = params.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise UsageError(f"--param {key} must be a positive whole number, got {value!r}")
    if "model" in params and not isinstance(params["model"], str):
        raise UsageError(f"--param model must be a string, got {params['model']!r}")

    keep = merged["keep_columns"]
    if isinstance(keep, list):
        keep = tuple(keep)
    if isinstance(keep, str):
        keep = tuple(c.strip() for c in keep.split(",") if c.strip())
    shadowing = [c for c in keep if c in RESERVED_COLUMNS]
    if shadowing:
        raise UsageError(
            f"--keep-columns {shadowing[0]}: `{shadowing[0]}` is an output column, and a kept column may not "
            "replace a result; rename that input column or leave it out"
        )

    simulate = bool(merged["simulate"])
    url = api_key = None
    model = flags.get("model") or env.get("INFERENCE_MODEL_ID")
    if not model and "model" in unset:
        raise _refuse_unset(flags["job"], "model", unset["model"])
    model = model or job.get("model")
    if need_connection and not simulate:
        sources = (("--url", flags.get("url")), ("INFERENCE_URL", env.get("INFERENCE_URL")),
                   (f"job file `url` ({flags.get('job')})", job.get("url")))  # fmt: skip
        source, raw_url = next(((name, value) for name, value in sources if value), ("", None))
        if not raw_url:
            raise UsageError(
                "no API URL: set INFERENCE_URL (e.g. export INFERENCE_URL=$(heroku config:get -a APP INFERENCE_URL)) "
                "or pass --url; or try --simulate"
            )
        url = endpoint_url(raw_url, source)
        key_env = merged["api_key_env"]
        key = env.get(key_env)
        if not key:
            raise UsageError(
                f"no API key: set {key_env} (e.g. export {key_env}=$(heroku config:get -a APP INFERENCE_KEY)); "
                "the key is never accepted as a flag"
            )
        api_key = Secret(key)
    elif simulate:
        model = model or "sim-model"

    if merged["abort_after"] is not None:
        abort_after = _positive_int("abort_after", merged["abort_after"], minimum=0)
    else:
        abort_after = 0
    deadline = parse_duration(merged["deadline"], "--deadline") if merged["deadline"] is not None else None
    if deadline is not None and deadline <= 0:
        raise UsageError("--deadline must be positive")
    max_wait = parse_duration(merged["max_wait"], "--max-wait")
    if max_wait <= 0:
        raise UsageError("--max-wait must be positive")

    variants = tuple(Variant.from_table(t, n) for n, t in enumerate(_tables(job, "variants"), 1))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise UsageError("[[variants]] names must be unique")
    job_variant = job.get("variant") or ()
    selected = tuple(flags.get("variant") or ()) or ((job_variant,) if isinstance(job_variant, str) else tuple(job_variant))
    unknown = [name for name in selected if name not in names]
    if unknown:
        raise UsageError(f"--variant {unknown[0]}: no such variant (job file has: {', '.join(names) or 'none'})")
    assertions = tuple(Assertion.from_table(t, n) for n, t in enumerate(_tables(job, "assert"), 1))
    fail_under = merged["fail_under"]
    if fail_under is not None:
        fail_under = positive_float("fail_under", fail_under, allow_zero=True)
        if fail_under is not None and fail_under > 1:
            raise UsageError("--fail-under is a fraction between 0 and 1 (e.g. 0.9)")

    shard = parse_shard(merged["shard"], env)
    cfg = RunConfig(
        variants=variants,
        assertions=assertions,
        repeat=_positive_int("repeat", merged["repeat"]) or DEFAULTS["repeat"],
        selected_variants=selected,
        fail_under=fail_under,
        cache=merged["cache"],
        input=str(merged["input"]),
        output=merged["output"],
        url=url,
        api_key=api_key,
        model=model or None,
        simulate=simulate,
        concurrency=_concurrency(merged["concurrency"]),
        rpm=_positive_int("rpm", merged["rpm"]),
        tpm=_positive_int("tpm", merged["tpm"]),
        max_attempts=_positive_int("max_attempts", merged["max_attempts"]) or DEFAULTS["max_attempts"],
        timeout=positive_float("timeout", merged["timeout"]) or DEFAULTS["timeout"],
        system=merged["system"],
        template=template,
        id_column=merged["id_column"],
        params=params,
        limit=_positive_int("limit", merged["limit"], minimum=0),
        shard=shard,
        limit_share=shard.count if str(merged["shard"]).strip() == "auto" else 1,
        keep_columns=tuple(keep),
        retry_errors=bool(merged["retry_errors"]),
        restart=bool(merged["restart"]),
        abort_after=abort_after or 0,
        output_format=output_format_for(merged["output"], merged["output_format"]),
        summary_json=merged["summary_json"],
        drain_timeout=positive_float("drain_timeout", merged["drain_timeout"], allow_zero=True) or 0.0,
        deadline=deadline,
        max_wait=max_wait,
        max_total_tokens=_positive_int("max_total_tokens", merged["max_total_tokens"]),
        max_cost=positive_float("max_cost", merged["max_cost"]),
        price_in=positive_float("price_in", merged["price_in"], allow_zero=True),
        price_out=positive_float("price_out", merged["price_out"], allow_zero=True),
        progress_interval=(positive_float("progress_interval", merged["progress_interval"])
                           or DEFAULTS["progress_interval"]),
        checkpoint_interval=(positive_float("checkpoint_interval", merged["checkpoint_interval"])
                             or DEFAULTS["checkpoint_interval"]),
        verbosity=int(flags.get("verbosity") or 0),
        job=flags.get("job") or None,
        template_file=merged["template_file"] or None,
    )
    check_paths(run_paths(cfg), writable=need_connection)  # validate (no connection) writes nothing
    if cfg.max_cost is not None:
        check_priced(cfg)
    return cfg


def run_models(cfg: RunConfig) -> list[str | None]:
    """The model each variant of the run sends (a `model` in the params, the variant's, else the run's);
    None for one that leaves the model to the rows. Rows that name their own model are not known here."""
    models: list[str | None] = []
    for variant in cfg.variants or (None,):
        params = {**cfg.params, **((variant and variant.params) or {})}
        model = params.get("model") or (variant and variant.model) or cfg.model
        if model not in models:
            models.append(model)
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


def missing_model_error() -> UsageError:
    """SPEC §8.7 and §8.39: the first valid row names no model and none is configured (exit 2, nothing sent)."""
    return UsageError(MISSING_MODEL)


def restarted_on_exit(env: Mapping[str, str]) -> bool:
    """Whether this process is a Heroku dyno of the app's formation (a worker), which the platform restarts
    when it exits, rather than a one-off or Scheduler dyno (``run.1234``, ``scheduler.42``) or no dyno at all."""
    dyno = env.get("DYNO", "").strip()
    return bool(dyno) and re.split(r"[.-]", dyno, maxsplit=1)[0] not in ONE_OFF_PROCESS_TYPES


MAX_CONCURRENCY = 4096


def _concurrency(value: Any) -> int:
    number = _positive_int("concurrency", value) or DEFAULTS["concurrency"]
    if number > MAX_CONCURRENCY:
        raise UsageError(f"--concurrency {number} is more than {MAX_CONCURRENCY} requests in flight; no API allows that")
    return number


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
        uses.append(PathUse("-o", cfg.output + ".checkpoint", "the output's checkpoint folder", writes=True,
                            kind="tree"))  # fmt: skip
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
                raise UsageError(f"{use.option} {use.path}: an s3:// path needs a bucket and a key")
        elif use.writes:
            _check_target(use, writable)


def _refuse_overlap(first: PathUse, second: PathUse) -> None:
    if _remote(first.path) != _remote(second.path):
        return
    if _same_location(first.path, second.path):
        writer, other = (second, first) if second.writes else (first, second)  # blame the later, a side output
        spelled = "" if other.path == writer.path else f" ({other.option} {other.path})"
        raise UsageError(
            f"{writer.option} {writer.path} is {other.what}{spelled}: writing there would destroy it; "
            f"give {writer.option} a path of its own"
        )
    for tree, inner in ((first, second), (second, first)):
        if tree.kind == "tree" and _inside(inner.path, tree.path):
            raise UsageError(
                f"{inner.option} {inner.path} is inside {tree.what} {tree.path}, which the run manages and "
                "removes; choose a path outside it"
            )


def _check_target(use: PathUse, writable: bool) -> None:
    path = use.path
    if use.kind == "file" and os.path.isdir(path):
        raise UsageError(f"{use.option} {path} is a folder; give a file name")
    if use.kind == "folder" and os.path.isfile(path):
        raise UsageError(f"{use.option} {path} is a file; the cache is a folder (or an s3:// prefix)")
    if use.kind == "tree" and os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{path} is in the way: {use.what} must be a folder of that name; move it away")
    if not writable:
        return
    folder = path if use.kind != "file" and os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"{use.option} {path}: {folder} is not a folder")
    if not _writable(folder):
        raise UsageError(f"{use.option} {path}: cannot write in the folder {folder} (permission denied or read-only)")


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
        raise UsageError(f"job file: `{key}` must be written as [[{key}]] tables")
    return value


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]
