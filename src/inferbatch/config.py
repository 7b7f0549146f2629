"""Resolve every setting of a run, once, into a frozen ``RunConfig``.

Precedence is flag > environment > job file > built-in default, decided in
``resolve()`` and nowhere else; after it, nothing reads ``os.environ``.
Each setting has one name: ``--max-attempts`` is the job-file key
``max_attempts`` and the field ``RunConfig.max_attempts``.

Environment variables read here:

    INFERENCE_URL        base URL of the API (Heroku sets it when a model is attached)
    INFERENCE_KEY        bearer key (or the variable named by --api-key-env)
    INFERENCE_MODEL_ID   model id
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from inferbatch.errors import UsageError
from inferbatch.evaluation import Assertion, Variant

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


def endpoint_url(base: str) -> str:
    """``https://host`` → ``https://host/v1/chat/completions``; a base ending in ``/v1`` gets ``/chat/completions``."""
    base = base.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", base):
        raise UsageError(f"--url/INFERENCE_URL must be an http(s) URL, got {base!r}")
    try:
        parsed = urllib.parse.urlsplit(base)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"--url/INFERENCE_URL is not a valid URL ({exc}): {base!r}") from None
    if not parsed.hostname:
        raise UsageError(f"--url/INFERENCE_URL has no host: {base!r}")
    if base.endswith("/chat/completions"):
        return base
    if base.endswith("/v1"):
        return base + "/chat/completions"
    return base + "/v1/chat/completions"


def parse_param(text: str) -> tuple[str, Any]:
    """``temperature=0`` → ("temperature", 0); the value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--param needs KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def parse_shard(text: str, env: Mapping[str, str] | None = None) -> Shard:
    """``I/N``, or ``auto``: I from Heroku's ``DYNO`` (``worker.3`` is shard 2), N from ``INFERBATCH_SHARDS``
    (unset: a single shard)."""
    if str(text).strip() == "auto":
        env = env or {}
        dyno = env.get("DYNO", "")
        number = re.fullmatch(r"[\w-]+\.(\d+)", dyno)
        count = env.get("INFERBATCH_SHARDS", "")
        if not count:
            return Shard()  # one dyno: it takes everything
        if not number or not count.isdigit() or int(count) < 1 or int(number[1]) > int(count):
            raise UsageError(
                "--shard auto needs DYNO (set by Heroku, e.g. worker.3) and INFERBATCH_SHARDS "
                f"(how many dynos share the work, e.g. heroku config:set INFERBATCH_SHARDS=4); got DYNO={dyno!r} "
                f"INFERBATCH_SHARDS={count!r}"
            )
        return parse_shard(f"{int(number[1]) - 1}/{count}")
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UsageError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: I must be between 0 and N-1")
    return Shard(index, count)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """``9m`` → 540.0, ``1h30m`` → 5400.0, ``20ms`` → 0.02, a bare number is seconds."""
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


def load_job(path: str) -> dict[str, Any]:
    """Read a job file; keys are long option names with ``_``, paths become relative to the file."""
    job_path = Path(path)
    try:
        data = tomllib.loads(job_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"job file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read job file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"job file {path} is not valid TOML: {exc}") from None
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
    for key in PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str):
            value = data[key] = os.path.expandvars(value)  # e.g. s3://$BUCKETEER_BUCKET_NAME/...
        if isinstance(value, str) and value != "-" and "://" not in value:
            data[key] = os.path.normpath(job_path.parent / value)
    if "params" in data and not isinstance(data["params"], dict):
        raise UsageError(f"job file {path}: [params] must be a table")
    return data


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}") from None
    if number < minimum or number != float(value):
        raise UsageError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value!r}")
    return number


def _positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--{name.replace('_', '-')} must be a number, got {value!r}") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise UsageError(f"--{name.replace('_', '-')} must be {'≥' if allow_zero else '>'} 0, got {value!r}")
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
    job: dict[str, Any] = load_job(flags["job"]) if flags.get("job") else {}
    merged: dict[str, Any] = dict(DEFAULTS)
    merged.update({k: v for k, v in job.items() if k in DEFAULTS})
    for key, value in flags.items():
        if key in DEFAULTS and value is not None and value != () and key != "params":
            merged[key] = value

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

    output = merged["output"]
    for name in ("output", "summary_json"):
        target = merged[name]
        if isinstance(target, str) and "://" not in target and os.path.isdir(target):
            raise UsageError(f"--{name.replace('_', '-')} {target} is a folder; give a file name")
    if isinstance(merged["cache"], str) and "://" not in merged["cache"] and os.path.isfile(merged["cache"]):
        raise UsageError(f"--cache {merged['cache']} is a file; the cache is a folder (or an s3:// prefix)")
    for key in ("max_tokens", "max_completion_tokens"):
        value = params.get(key)
        if value is not None and (type(value) is not int or value < 1):
            raise UsageError(f"--param {key} must be a positive whole number, got {value!r}")
    if "model" in params and not isinstance(params["model"], str):
        raise UsageError(f"--param model must be a string, got {params['model']!r}")
    if output and merged["input"] != "-" and _same_path(str(merged["input"]), str(output)):
        raise UsageError(f"-o {output} is the input file: writing there would destroy the prompts; choose another output")

    keep = merged["keep_columns"]
    if isinstance(keep, list):
        keep = tuple(keep)
    if isinstance(keep, str):
        keep = tuple(c.strip() for c in keep.split(",") if c.strip())

    simulate = bool(merged["simulate"])
    url = api_key = None
    model = flags.get("model") or env.get("INFERENCE_MODEL_ID") or job.get("model")
    if need_connection and not simulate:
        raw_url = flags.get("url") or env.get("INFERENCE_URL") or job.get("url")
        if not raw_url:
            raise UsageError(
                "no API URL: set INFERENCE_URL (e.g. export INFERENCE_URL=$(heroku config:get -a APP INFERENCE_URL)) "
                "or pass --url; or try --simulate"
            )
        url = endpoint_url(raw_url)
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
    deadline = parse_duration(merged["deadline"]) if merged["deadline"] is not None else None
    if deadline is not None and deadline <= 0:
        raise UsageError("--deadline must be positive")
    max_wait = parse_duration(merged["max_wait"])
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
        fail_under = _positive_float("fail_under", fail_under, allow_zero=True)
        if fail_under is not None and fail_under > 1:
            raise UsageError("--fail-under is a fraction between 0 and 1 (e.g. 0.9)")

    return RunConfig(
        variants=variants,
        assertions=assertions,
        repeat=_positive_int("repeat", merged["repeat"]) or 1,
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
        max_attempts=_positive_int("max_attempts", merged["max_attempts"]) or 6,
        timeout=_positive_float("timeout", merged["timeout"]) or 300.0,
        system=merged["system"],
        template=template,
        id_column=merged["id_column"],
        params=params,
        limit=_positive_int("limit", merged["limit"], minimum=0),
        shard=parse_shard(merged["shard"], env),
        keep_columns=tuple(keep),
        retry_errors=bool(merged["retry_errors"]),
        restart=bool(merged["restart"]),
        abort_after=abort_after or 0,
        output_format=output_format_for(merged["output"], merged["output_format"]),
        summary_json=merged["summary_json"],
        drain_timeout=_positive_float("drain_timeout", merged["drain_timeout"], allow_zero=True) or 0.0,
        deadline=deadline,
        max_wait=max_wait,
        max_total_tokens=_positive_int("max_total_tokens", merged["max_total_tokens"]),
        max_cost=_positive_float("max_cost", merged["max_cost"]),
        price_in=_positive_float("price_in", merged["price_in"], allow_zero=True),
        price_out=_positive_float("price_out", merged["price_out"], allow_zero=True),
        progress_interval=_positive_float("progress_interval", merged["progress_interval"]) or 10.0,
        checkpoint_interval=_positive_float("checkpoint_interval", merged["checkpoint_interval"]) or 5.0,
        verbosity=int(flags.get("verbosity") or 0),
    )


MAX_CONCURRENCY = 4096


def _concurrency(value: Any) -> int:
    number = _positive_int("concurrency", value) or 16
    if number > MAX_CONCURRENCY:
        raise UsageError(f"--concurrency {number} is more than {MAX_CONCURRENCY} requests in flight; no API allows that")
    return number


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _tables(job: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = job.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise UsageError(f"job file: `{key}` must be written as [[{key}]] tables")
    return value


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]
