"""Resolving settings (SPEC §1, §6, §8.5, §8.8, §8.16, §8.18): precedence, env, job files, validation, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferbatch.config import (
    RunConfig,
    Secret,
    endpoint_url,
    parse_duration,
    parse_param,
    resolve,
)
from inferbatch.errors import ConfigError

ENV = {"INFERENCE_URL": "https://env.example.com", "INFERENCE_KEY": "env-secret-key", "INFERENCE_MODEL_ID": "env-model"}


def flags(**given: Any) -> dict[str, Any]:
    """What the CLI passes: every option present, None when not given."""
    base: dict[str, Any] = {
        "input": "in.jsonl",
        "output": "out.jsonl",
        "job": None,
        "model": None,
        "system": None,
        "template": None,
        "template_file": None,
        "id_column": None,
        "params": (),
        "limit": None,
        "shard": None,
        "keep_columns": None,
        "url": None,
        "api_key_env": None,
        "simulate": None,
        "concurrency": None,
        "rpm": None,
        "tpm": None,
        "max_attempts": None,
        "timeout": None,
        "retry_errors": None,
        "restart": None,
        "abort_after": None,
        "output_format": None,
        "summary_json": None,
        "drain_timeout": None,
        "deadline": None,
        "progress_interval": None,
        "verbose": 0,
    }
    base.update(given)
    return base


def job_file(tmp_path: Path, text: str, name: str = "jobs/job.toml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def usage_error(flag_values: dict[str, Any], env: dict[str, str] | None = None, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve(flag_values, ENV if env is None else env, **kwargs)
    assert info.value.exit_code == 2
    return info.value


# --- Defaults and precedence ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = resolve(flags(), ENV)
    assert cfg.concurrency == 16
    assert cfg.max_attempts == 6
    assert cfg.timeout == 300
    assert cfg.abort_after == 25
    assert cfg.drain_timeout == 20
    assert cfg.progress_interval == 10
    assert (cfg.shard.index, cfg.shard.count) == (0, 1)
    assert cfg.params == {}
    assert cfg.keep_columns == ()
    assert cfg.url == "https://env.example.com/v1/chat/completions"
    assert cfg.model == "env-model"
    assert cfg.api_key is not None and cfg.api_key.reveal() == "env-secret-key"


JOB = """
url = "https://job.example.com"
model = "job-model"
concurrency = 4
max_attempts = 3
system = "job system"

[params]
temperature = 0.5
max_tokens = 100
"""


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        ({"model": "flag-model"}, ENV, "flag-model"),
        ({}, ENV, "env-model"),
        ({}, {k: v for k, v in ENV.items() if k != "INFERENCE_MODEL_ID"}, "job-model"),
    ],
)
def test_model_precedence(tmp_path: Path, given: dict[str, Any], env: dict[str, str], expected: str) -> None:
    cfg = resolve(flags(job=job_file(tmp_path, JOB), **given), env)
    assert cfg.model == expected


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        ({"url": "https://flag.example.com"}, ENV, "https://flag.example.com/v1/chat/completions"),
        ({}, ENV, "https://env.example.com/v1/chat/completions"),
        ({}, {"INFERENCE_KEY": "k"}, "https://job.example.com/v1/chat/completions"),
    ],
)
def test_url_precedence(tmp_path: Path, given: dict[str, Any], env: dict[str, str], expected: str) -> None:
    cfg = resolve(flags(job=job_file(tmp_path, JOB), **given), env)
    assert cfg.url == expected


def test_job_file_values_apply_and_flags_win(tmp_path: Path) -> None:
    job = job_file(tmp_path, JOB)
    from_job = resolve(flags(job=job), ENV)
    assert from_job.concurrency == 4
    assert from_job.max_attempts == 3
    assert from_job.system == "job system"
    assert from_job.params == {"temperature": 0.5, "max_tokens": 100}
    from_flags = resolve(flags(job=job, concurrency=32, system="flag system", params=("temperature=0",)), ENV)
    assert from_flags.concurrency == 32
    assert from_flags.max_attempts == 3
    assert from_flags.system == "flag system"
    assert from_flags.params == {"temperature": 0, "max_tokens": 100}


def test_job_file_relative_paths_resolve_against_the_job_file(tmp_path: Path) -> None:
    job = job_file(
        tmp_path,
        'input = "../data/in.jsonl"\noutput = "out/results.parquet"\nsummary_json = "sum.json"\n',
        name="project/jobs/nightly.toml",
    )
    cfg = resolve(flags(job=job, input=None, output=None), ENV)
    jobs_dir = tmp_path / "project" / "jobs"
    assert Path(cfg.input).resolve() == (tmp_path / "project" / "data" / "in.jsonl").resolve()
    assert cfg.output is not None and Path(cfg.output).resolve() == (jobs_dir / "out" / "results.parquet").resolve()
    assert cfg.summary_json is not None and Path(cfg.summary_json).resolve() == (jobs_dir / "sum.json").resolve()
    assert cfg.output_format == "parquet"


def test_job_file_paths_leave_absolute_s3_and_stdin_alone(tmp_path: Path) -> None:
    absolute = str(tmp_path / "abs.jsonl")
    job = job_file(tmp_path, f'input = "{absolute}"\noutput = "s3://bucket/out.jsonl"\n')
    cfg = resolve(flags(job=job, input=None, output=None), ENV)
    assert Path(cfg.input) == Path(absolute)
    assert cfg.output == "s3://bucket/out.jsonl"
    stdin_job = job_file(tmp_path, 'input = "-"\n', name="stdin.toml")
    assert resolve(flags(job=stdin_job, input=None), ENV).input == "-"


def test_flag_input_wins_over_job_input_and_is_not_rewritten(tmp_path: Path) -> None:
    job = job_file(tmp_path, 'input = "job.jsonl"\n')
    assert resolve(flags(job=job, input="mine.jsonl"), ENV).input == "mine.jsonl"


def test_job_file_template_file_and_keep_columns(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "prompt.txt").write_text("Q: {question}", encoding="utf-8")
    job = job_file(tmp_path, 'template_file = "prompt.txt"\nkeep_columns = ["expected", "topic"]\n')
    cfg = resolve(flags(job=job), ENV)
    assert cfg.template == "Q: {question}"
    assert cfg.keep_columns == ("expected", "topic")


def test_keep_columns_flag_is_comma_separated() -> None:
    assert resolve(flags(keep_columns="a, b,,c"), ENV).keep_columns == ("a", "b", "c")


def test_params_flags_parse_json_and_never_keep_stream() -> None:
    cfg = resolve(flags(params=("temperature=0", "max_tokens=200", 'stop=["END"]', "user=alice", "stream=true")), ENV)
    assert cfg.params == {"temperature": 0, "max_tokens": 200, "stop": ["END"], "user": "alice"}


def test_no_input_is_a_usage_error() -> None:
    usage_error(flags(input=None))


# --- Connection: URL, key, simulate --------------------------------------------------------------------------------


def test_missing_url_names_the_variable_and_heroku() -> None:
    error = usage_error(flags(), {"INFERENCE_KEY": "k", "INFERENCE_MODEL_ID": "m"})
    assert "INFERENCE_URL" in str(error)
    assert "heroku config:get" in str(error)


def test_missing_key_names_the_variable_and_heroku() -> None:
    error = usage_error(flags(), {"INFERENCE_URL": "https://x", "INFERENCE_MODEL_ID": "m"})
    assert "INFERENCE_KEY" in str(error)
    assert "heroku config:get" in str(error)


def test_empty_key_counts_as_missing() -> None:
    usage_error(flags(), {**ENV, "INFERENCE_KEY": ""})


def test_api_key_env_reads_another_variable() -> None:
    env = {"INFERENCE_URL": "https://x", "OTHER_KEY": "other-secret"}
    cfg = resolve(flags(api_key_env="OTHER_KEY"), env)
    assert cfg.api_key is not None and cfg.api_key.reveal() == "other-secret"
    error = usage_error(flags(api_key_env="OTHER_KEY"), {"INFERENCE_URL": "https://x", "INFERENCE_KEY": "k"})
    assert "OTHER_KEY" in str(error)


def test_missing_model_is_left_to_the_rows() -> None:
    """SPEC §8.7: a missing model is decided by the first valid row, not here."""
    cfg = resolve(flags(), {"INFERENCE_URL": "https://x", "INFERENCE_KEY": "k"})
    assert cfg.model is None


def test_no_connection_needed_for_validate() -> None:
    cfg = resolve(flags(), {}, need_connection=False)
    assert cfg.url is None and cfg.api_key is None


def test_simulate_needs_no_url_key_or_model() -> None:
    cfg = resolve(flags(simulate=True), {})
    assert cfg.simulate is True
    assert cfg.api_key is None
    assert cfg.model


def test_simulate_ignores_inference_url_and_key() -> None:
    cfg = resolve(flags(simulate=True), ENV)
    assert cfg.url is None
    assert cfg.api_key is None
    assert "env-secret-key" not in repr(cfg)


def test_simulate_keeps_model_precedence(tmp_path: Path) -> None:
    """Precedence flag > env > job file > default holds under --simulate too."""
    job = job_file(tmp_path, 'model = "job-model"\n')
    assert resolve(flags(simulate=True, job=job, model="flag-model"), ENV).model == "flag-model"
    assert resolve(flags(simulate=True, job=job), {"INFERENCE_MODEL_ID": "env-model"}).model == "env-model"
    assert resolve(flags(simulate=True, job=job), {}).model == "job-model"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://x", "https://x/v1/chat/completions"),
        ("https://x/", "https://x/v1/chat/completions"),
        ("https://x/v1", "https://x/v1/chat/completions"),
        ("https://x/v1/", "https://x/v1/chat/completions"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1/chat/completions"),
        ("https://x/v1/chat/completions", "https://x/v1/chat/completions"),
        ("https://us.inference.heroku.com", "https://us.inference.heroku.com/v1/chat/completions"),
    ],
)
def test_endpoint_url(base: str, expected: str) -> None:
    assert endpoint_url(base) == expected


@pytest.mark.parametrize("base", ["ftp://x", "x.example.com", "", "https://", "file:///etc/passwd"])
def test_endpoint_url_rejects_non_http(base: str) -> None:
    with pytest.raises(ConfigError):
        endpoint_url(base)


def test_bad_url_from_env_is_a_usage_error() -> None:
    usage_error(flags(), {**ENV, "INFERENCE_URL": "inference.example.com"})


# --- Secrets -------------------------------------------------------------------------------------------------------


def test_secret_never_shows_the_key() -> None:
    secret = Secret("sk-very-secret")
    percent = "%s" % secret  # noqa: UP031 - %-formatting is one more way to show it
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", percent, str([secret])):
        assert "sk-very-secret" not in shown
    assert secret.reveal() == "sk-very-secret"


def test_resolved_config_never_shows_the_key() -> None:
    cfg = resolve(flags(), ENV)
    assert "env-secret-key" not in repr(cfg)
    assert "env-secret-key" not in str(cfg)
    assert "env-secret-key" not in str(cfg.shaping_fingerprint())


# --- parse_param ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("temperature=0", ("temperature", 0)),
        ("temperature=0.7", ("temperature", 0.7)),
        ("max_tokens=200", ("max_tokens", 200)),
        ("logprobs=true", ("logprobs", True)),
        ("seed=null", ("seed", None)),
        ('stop=["\\n", "END"]', ("stop", ["\n", "END"])),
        ('response_format={"type": "json_object"}', ("response_format", {"type": "json_object"})),
        ("user=alice", ("user", "alice")),
        ("user=alice=bob", ("user", "alice=bob")),
        ('user="quoted"', ("user", "quoted")),
        ("reasoning_effort=", ("reasoning_effort", "")),
    ],
)
def test_parse_param(text: str, expected: tuple[str, Any]) -> None:
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["temperature", "", "=5"])
def test_parse_param_without_key_or_equals_is_a_usage_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_param(text)


# --- Bad option values are usage errors (SPEC §8.16) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        {"concurrency": 0},
        {"concurrency": -1},
        {"max_attempts": 0},
        {"shard": "3/3"},
        {"shard": "4/3"},
        {"shard": "0/0"},
        {"shard": "garbage"},
        {"shard": "1"},
        {"shard": "-1/3"},
        {"params": ("temperature",)},
        {"timeout": 0},
        {"rpm": 0},
        {"abort_after": -1},
        {"deadline": "soon"},
        {"deadline": "0s"},
    ],
)
def test_bad_option_values_are_usage_errors(given: dict[str, Any]) -> None:
    usage_error(flags(**given))


@pytest.mark.parametrize(("text", "index", "count"), [("0/1", 0, 1), ("2/3", 2, 3), (" 1 / 4 ", 1, 4)])
def test_shard_values(text: str, index: int, count: int) -> None:
    shard = resolve(flags(shard=text), ENV).shard
    assert (shard.index, shard.count) == (index, count)


def test_abort_after_zero_means_never_and_limit_zero_is_allowed() -> None:
    cfg = resolve(flags(abort_after=0, limit=0), ENV)
    assert cfg.abort_after == 0
    assert cfg.limit == 0


# --- parse_duration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("9m", 540.0),
        ("23h", 82_800.0),
        ("1h30m", 5_400.0),
        ("90s", 90.0),
        ("20ms", 0.02),
        ("6m0s", 360.0),
        ("1.5s", 1.5),
        ("45", 45.0),
        ("2.5", 2.5),
        (30, 30.0),
    ],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "9 minutes", "m", "9x", "1h30", "h1", "9m junk"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_deadline_flag_is_parsed() -> None:
    assert resolve(flags(deadline="9m"), ENV).deadline == pytest.approx(540.0)


# --- Shaping fingerprint (SPEC §8.8) -------------------------------------------------------------------------------


def fingerprint(**given: Any) -> dict[str, Any]:
    return resolve(flags(**given), ENV).shaping_fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"template": "Q: {question}"},
        {"system": "Be terse."},
        {"params": ("temperature=0",)},
        {"model": "other-model"},
        {"url": "https://elsewhere.example.com"},
        {"id_column": "key"},
        {"shard": "1/2"},
        {"output_format": "openai-batch"},
    ],
)
def test_fingerprint_changes_with_shaping_options(change: dict[str, Any]) -> None:
    assert fingerprint(**change) != fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"concurrency": 3},
        {"rpm": 100},
        {"tpm": 10_000},
        {"timeout": 5},
        {"max_attempts": 2},
        {"limit": 10},
        {"abort_after": 0},
        {"retry_errors": True},
        {"restart": True},
        {"drain_timeout": 1},
        {"progress_interval": 1},
    ],
)
def test_fingerprint_ignores_non_shaping_options(change: dict[str, Any]) -> None:
    assert fingerprint(**change) == fingerprint()


def test_fingerprint_ignores_param_order() -> None:
    assert fingerprint(params=("a=1", "b=2")) == fingerprint(params=("b=2", "a=1"))
    assert fingerprint(params=("a=1",)) != fingerprint(params=("a=2",))


# --- Output format -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "requested", "expected"),
    [
        ("out.jsonl", None, "jsonl"),
        ("out.parquet", None, "parquet"),
        ("OUT.PARQUET", None, "parquet"),
        ("s3://bucket/out.parquet", None, "parquet"),
        ("out.ndjson", None, "jsonl"),
        ("out.jsonl", "openai-batch", "openai-batch"),
        ("out.parquet", "jsonl", "jsonl"),
    ],
)
def test_output_format(output: str, requested: str | None, expected: str) -> None:
    assert resolve(flags(output=output, output_format=requested), ENV).output_format == expected


def test_unknown_output_format_is_a_usage_error() -> None:
    usage_error(flags(output_format="csv"))


# --- Job file problems ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["concurency", "api_key"])
def test_unknown_job_file_key_is_a_usage_error(tmp_path: Path, key: str) -> None:
    error = usage_error(flags(job=job_file(tmp_path, f'{key} = "x"\n')))
    assert key in str(error)


def test_job_file_allows_evaluation_tables(tmp_path: Path) -> None:
    text = '[[variants]]\nname = "terse"\ntemplate = "{q}"\n\n[[assert]]\ntype = "contains"\nvalue = "x"\n'
    assert isinstance(resolve(flags(job=job_file(tmp_path, text)), ENV), RunConfig)


@pytest.mark.parametrize("text", ["concurrency = \n", "[params\n", "model = 'unterminated\n", "a = 1\na = 2\n"])
def test_invalid_toml_is_a_usage_error(tmp_path: Path, text: str) -> None:
    usage_error(flags(job=job_file(tmp_path, text)))


def test_missing_job_file_is_a_usage_error(tmp_path: Path) -> None:
    usage_error(flags(job=str(tmp_path / "nope.toml")))


def test_params_must_be_a_table(tmp_path: Path) -> None:
    usage_error(flags(job=job_file(tmp_path, 'params = "temperature=0"\n')))


def test_bad_job_file_value_is_a_usage_error(tmp_path: Path) -> None:
    usage_error(flags(job=job_file(tmp_path, "concurrency = 0\n")))


# --- Through the CLI: kept columns, numbers, URLs with credentials (SPEC §8.27, §8.33, §8.34) ----------------------

# Every column SPEC §3 names, the evaluation columns, `parsed` (§8.42) and `judge` (§8.44): written out here,
# not imported, so the test holds the code to the SPEC's list.
OUTPUT_COLUMNS = [
    "id",
    "index",
    "status",
    "status_code",
    "content",
    "finish_reason",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "attempts",
    "latency_ms",
    "error",
    "tool_calls",
    "request_id",
    "cached_tokens",
    "reasoning_tokens",
    "parsed",
    "variant",
    "sample",
    "passed",
    "failures",
    "cached",
    "judge",
    "_body",
    "_code",  # internal keys of a checkpoint line: a kept column there would vanish from the output
]


def cli_run(runner: Any, server: Any, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    from conftest import connection_env, invoke, write_jsonl

    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q{i}", "topic": "t"} for i in range(3)])
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), *extra],
        env=connection_env(server) if env is None else env,
    )
    assert "Traceback" not in result.output
    return result


def refused_in_one_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("column", OUTPUT_COLUMNS)
def test_keep_columns_naming_an_output_column_is_refused(sim, runner, tmp_path: Path, column: str) -> None:
    """SPEC §8.27: kept columns never shadow results: --keep-columns naming an output column is exit 2 in one
    line naming it, before anything is sent (a kept `status` used to overwrite every row's status)."""
    server = sim()

    result = cli_run(runner, server, tmp_path, "--keep-columns", f"topic,{column}")

    assert f"--keep-columns {column}:" in refused_in_one_line(result)
    assert server.stats.requests == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_job_file_keep_columns_naming_an_output_column_is_refused(sim, runner, tmp_path: Path) -> None:
    """SPEC §8.27 and §8.5: the job file's `keep_columns` is held to the same rule as the flag."""
    server = sim()
    job = job_file(tmp_path, 'keep_columns = ["topic", "content"]\n', name="job.toml")

    result = cli_run(runner, server, tmp_path, "--job", job)

    assert "`content` is an output column" in refused_in_one_line(result)
    assert server.stats.requests == 0


NON_FINITE_FLAGS = [
    ["--timeout", "inf"],
    ["--timeout", "-inf"],
    ["--max-cost", "nan"],
    ["--rpm", "inf"],
    ["--tpm", "nan"],
    ["--price-in", "nan"],
    ["--price-out", "inf"],
    ["--drain-timeout", "inf"],
    ["--progress-interval", "nan"],
    ["--checkpoint-interval", "inf"],
    ["--fail-under", "nan"],
    ["--deadline", "inf"],
    ["--deadline", "nan"],
    ["--max-wait", "inf"],
    ["--max-wait", "1e999"],
    ["-c", "nan"],
    ["--max-attempts", "inf"],
    ["--abort-after", "nan"],
    ["--max-total-tokens", "1e999"],
    ["--repeat", "inf"],
    ["--limit", "inf"],
    ["--param", "temperature=NaN"],
    ["--param", "top_p=Infinity"],
    ["--param", "max_tokens=1e999"],
    ["--param", "stop=[1, -Infinity]"],
]


@pytest.mark.parametrize("extra", NON_FINITE_FLAGS, ids=lambda e: " ".join(e))
def test_nan_and_inf_flags_are_refused(sim, runner, tmp_path: Path, extra: list[str]) -> None:
    """SPEC §8.34: nan and inf are refused wherever a number is taken: exit 2 in one line naming the option,
    nothing sent (--max-cost nan silently disabled the cap, --timeout inf crashed mid-run)."""
    server = sim()

    result = cli_run(runner, server, tmp_path, *extra)

    named = {"-c": "--concurrency", "--param": f"--param {extra[1].split('=')[0]}"}.get(extra[0], extra[0])
    assert f"inferbatch: {named}" in refused_in_one_line(result)
    assert server.stats.requests == 0


@pytest.mark.parametrize(
    "line",
    [
        "timeout = nan",
        "max_cost = inf",
        "rpm = inf",
        "limit = inf",
        "concurrency = -inf",
        "deadline = inf",
        'max_wait = "inf"',
        "fail_under = nan",
        "progress_interval = 1e999",
        "[params]\ntemperature = nan",
        '[[variants]]\nname = "a"\ntemplate = "{prompt}"\n[variants.params]\ntop_p = inf',
        '[[assert]]\ntype = "max-latency-ms"\nvalue = inf',
    ],
)
def test_nan_and_inf_in_job_files_are_refused(sim, runner, tmp_path: Path, line: str) -> None:
    """SPEC §8.34 and §6: a job file's nan or inf, in any table, is exit 2 in one line naming the key (`limit = inf`
    was an OverflowError traceback, `timeout = nan` was taken), nothing sent."""
    server = sim()
    job = job_file(tmp_path, f"{line}\n", name="job.toml")

    result = cli_run(runner, server, tmp_path, "--job", job)

    key = line.split("\n")[-1].split(" = ")[0]
    assert key in refused_in_one_line(result).replace("-", "_")
    assert server.stats.requests == 0


@pytest.mark.parametrize(
    "command",
    [
        ["worker", "--inbox", "in", "--outbox", "out", "--once", "--simulate", "--poll", "nan"],
        ["simulate", "--rate-429", "nan"],
        ["simulate", "--latency-ms", "inf"],
        ["report", "r.jsonl", "--price-in", "nan"],
        ["validate", "in.jsonl", "--price-out", "inf"],
    ],
    ids=["worker --poll", "simulate --rate-429", "simulate --latency-ms", "report --price-in", "validate --price-out"],
)
def test_nan_and_inf_are_refused_by_every_command(
    runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """SPEC §8.34: the other commands' numbers too: exit 2 in one line (a simulator would otherwise serve
    with a nan rate, a worker poll with nan, a report price nan)."""
    from conftest import invoke, write_jsonl

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "q"}])
    write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "index": 0, "status": "ok"}])
    (tmp_path / "in").mkdir()

    result = invoke(runner, command)

    assert command[-2] in refused_in_one_line(result)


CREDENTIAL_URLS = [
    "https://alice:hunter2-Pa55w0rd@inference.example.com",
    "http://:hunter2-Pa55w0rd@127.0.0.1:9/v1",
    "https://hunter2-Pa55w0rd@inference.example.com",
    "ftp://alice:hunter2-Pa55w0rd@example.com",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
@pytest.mark.parametrize("source", ["--url", "INFERENCE_URL", "job file"])
def test_url_with_user_and_password_is_refused_without_echoing_it(
    runner, tmp_path: Path, url: str, source: str
) -> None:
    """SPEC §8.33: a URL carrying `user:password@` (flag, env or job file) is exit 2 in one line naming where it
    came from, and the message shows neither the password nor the URL holding it."""
    env = {"INFERENCE_KEY": "k" * 20, "INFERENCE_MODEL_ID": "m"}
    extra: list[str] = []
    if source == "--url":
        extra = ["--url", url]
    elif source == "INFERENCE_URL":
        env["INFERENCE_URL"] = url
    else:
        extra = ["--job", job_file(tmp_path, f'url = "{url}"\n', name="job.toml")]

    result = cli_run(runner, None, tmp_path, *extra, env=env)

    message = refused_in_one_line(result)
    assert source.split()[0] in message
    assert "hunter2-Pa55w0rd" not in result.output and "alice" not in result.output
    assert "***@" in message


def test_parse_duration_refuses_nan_and_inf() -> None:
    """SPEC §8.34: a duration is a finite number of seconds."""
    for text in ("inf", "nan", "-inf", "1e999", float("inf"), float("nan"), "9" * 400 + "s"):
        with pytest.raises(ConfigError):
            parse_duration(text)  # type: ignore[arg-type]


def test_resolve_refuses_overlapping_s3_paths_by_their_text() -> None:
    """SPEC §8.28: for s3:// only the text can be compared: s3://b//k and s3://b/k/ are the same object."""
    error = usage_error(flags(output="s3://b/out.jsonl", summary_json="s3://b//out.jsonl/"))
    assert "--summary-json" in str(error)
    cfg = resolve(flags(output="s3://b/out.jsonl", summary_json="s3://b/out.summary.json"), ENV)
    assert cfg.summary_json == "s3://b/out.summary.json"


# --- Heroku's two inference plans (SPEC §8.39), job-file variables, shares and prices (§8.31, §8.38) -----------------

STANDARD_PLAN = {"INFERENCE_URL": "https://us.inference.heroku.com", "INFERENCE_KEY": "std-secret-key"}
PER_MODEL_PLAN = {**STANDARD_PLAN, "INFERENCE_MODEL_ID": "claude-4-5-haiku"}


@pytest.mark.parametrize(
    ("env", "given", "job_text", "expected"),
    [
        (STANDARD_PLAN, {}, None, None),  # the rows must name it: decided by the first valid row (SPEC §8.7)
        (STANDARD_PLAN, {"model": "claude-4-5-sonnet"}, None, "claude-4-5-sonnet"),
        (STANDARD_PLAN, {}, 'model = "nova-lite"\n', "nova-lite"),
        (STANDARD_PLAN, {"model": "claude-4-5-sonnet"}, 'model = "nova-lite"\n', "claude-4-5-sonnet"),
        (PER_MODEL_PLAN, {}, None, "claude-4-5-haiku"),
        (PER_MODEL_PLAN, {}, 'model = "nova-lite"\n', "claude-4-5-haiku"),  # env > job file
        (PER_MODEL_PLAN, {"model": "claude-4-5-sonnet"}, None, "claude-4-5-sonnet"),  # flag > env
        (PER_MODEL_PLAN, {"model": ""}, None, "claude-4-5-haiku"),  # the Procfile's --model "$INFERBATCH_MODEL", unset
    ],
    ids=[
        "standard-rows",
        "standard-flag",
        "standard-job",
        "standard-flag-over-job",
        "per-model-env",
        "per-model-env-over-job",
        "per-model-flag-over-env",
        "per-model-empty-flag",
    ],
)
def test_model_on_the_standard_plan_and_on_a_per_model_plan(
    tmp_path: Path, env: dict[str, str], given: dict[str, Any], job_text: str | None, expected: str | None
) -> None:
    """SPEC §8.39: the standard plan sets INFERENCE_URL and INFERENCE_KEY only; the connection resolves without
    INFERENCE_MODEL_ID and the model comes from --model, the job file or the rows. Per-model plans keep working."""
    job = job_file(tmp_path, job_text) if job_text is not None else None
    cfg = resolve(flags(job=job, **given), env)
    assert cfg.model == expected
    assert cfg.url == "https://us.inference.heroku.com/v1/chat/completions"
    assert cfg.api_key is not None and cfg.api_key.reveal() == "std-secret-key"


def test_missing_model_message_names_every_way_to_give_one() -> None:
    """SPEC §8.39: the message the runner raises when the first valid row names no model (exit 2)."""
    from inferbatch.config import missing_model_error

    error = missing_model_error()
    assert error.exit_code == 2
    text = str(error)
    for way in ("--model", "job file", "row", "heroku ai:models:list"):
        assert way in text, way
    assert "\n" not in text


def test_job_file_model_and_paths_name_environment_variables(tmp_path: Path) -> None:
    """The app's config vars reach a job file: `model = "$INFERBATCH_MODEL"`, `s3://$BUCKETEER_BUCKET_NAME/...`."""
    job = job_file(
        tmp_path,
        'model = "$INFERBATCH_MODEL"\ninput = "s3://${BUCKETEER_BUCKET_NAME}/in.jsonl"\n'
        'output = "s3://$BUCKETEER_BUCKET_NAME/out.jsonl"\n',
    )
    env = {**STANDARD_PLAN, "INFERBATCH_MODEL": "claude-4-5-haiku", "BUCKETEER_BUCKET_NAME": "bkt"}
    cfg = resolve(flags(job=job, input=None, output=None), env)
    assert (cfg.model, cfg.input, cfg.output) == ("claude-4-5-haiku", "s3://bkt/in.jsonl", "s3://bkt/out.jsonl")


def test_an_unset_variable_in_a_used_job_value_is_refused_naming_it(tmp_path: Path) -> None:
    job = job_file(tmp_path, 'model = "$INFERBATCH_MODEL"\noutput = "s3://$BUCKETEER_BUCKET_NAME/out.jsonl"\n')
    error = usage_error(flags(job=job, output=None, model="m"), STANDARD_PLAN)
    assert "$BUCKETEER_BUCKET_NAME" in str(error) and "heroku config:set BUCKETEER_BUCKET_NAME" in str(error)
    error = usage_error(flags(job=job), {**STANDARD_PLAN, "BUCKETEER_BUCKET_NAME": "bkt", "INFERBATCH_MODEL": ""})
    assert "$INFERBATCH_MODEL" in str(error)
    # A value the command line replaces is never used, so its variable may be unset.
    cfg = resolve(flags(job=job, model="claude-4-5-haiku", output=str(tmp_path / "out.jsonl")), STANDARD_PLAN)
    assert cfg.model == "claude-4-5-haiku"
    assert resolve(flags(job=job), PER_MODEL_PLAN).model == "claude-4-5-haiku"  # INFERENCE_MODEL_ID wins anyway


@pytest.mark.parametrize(
    ("shard", "env", "share"),
    [
        ("auto", {"DYNO": "worker.2", "INFERBATCH_SHARDS": "3"}, 3),
        ("auto", {"DYNO": "worker.1"}, 1),
        ("1/3", {"DYNO": "worker.2", "INFERBATCH_SHARDS": "3"}, 1),
        (None, {"DYNO": "worker.2", "INFERBATCH_SHARDS": "3"}, 1),
    ],
)
def test_limit_share_is_the_shard_count_under_shard_auto(shard: str | None, env: dict[str, str], share: int) -> None:
    """SPEC §8.38: with --shard auto and INFERBATCH_SHARDS=N each process takes 1/N of the limits; the runner
    divides by RunConfig.limit_share."""
    cfg = resolve(flags(shard=shard), {**ENV, **env})
    assert cfg.limit_share == share


@pytest.mark.parametrize("dyno", ["worker-23z34x56y-w78k9", "web-6f9b8c7d5-x2x8q"])
def test_shard_auto_on_a_fir_dyno_asks_for_an_explicit_shard(dyno: str) -> None:
    """SPEC §8.40: Fir dyno names carry no number: one line telling the user to pass --shard I/N, exit 2."""
    error = usage_error(flags(shard="auto"), {**ENV, "DYNO": dyno, "INFERBATCH_SHARDS": "2"})
    assert "--shard I/N" in str(error) and dyno in str(error) and "Fir" in str(error)
    assert "\n" not in str(error)
    assert resolve(flags(shard="auto"), {**ENV, "DYNO": dyno}).shard.count == 1  # one worker needs no number


@pytest.mark.parametrize(
    ("env", "restarted"),
    [
        ({"DYNO": "worker.1"}, True),
        ({"DYNO": "worker-23z34x56y-w78k9"}, True),
        ({"DYNO": "run.1234"}, False),
        ({"DYNO": "scheduler.42"}, False),
        ({}, False),
    ],
)
def test_restarted_on_exit_tells_formation_dynos_from_one_offs(env: dict[str, str], restarted: bool) -> None:
    from inferbatch.config import restarted_on_exit

    assert restarted_on_exit(env) is restarted


@pytest.mark.parametrize(
    ("given", "job_text"),
    [
        ({"model": "my-own-model"}, None),
        ({"params": ("model=my-own-model",)}, None),
        ({}, '[[variants]]\nname = "a"\nmodel = "my-own-model"\n[[variants]]\nname = "b"\n'),
        ({"model": "claude-4-5-haiku", "price_in": 1.0}, None),  # a priced model: one flag replaces its half
    ],
    ids=["flag", "param", "variant", "priced"],
)
def test_max_cost_needs_a_price_for_every_model_the_run_names(
    tmp_path: Path, given: dict[str, Any], job_text: str | None
) -> None:
    """SPEC §8.31: an unpriced model made --max-cost a no-op (it counted as free): exit 2 before anything is sent."""
    job = job_file(tmp_path, job_text) if job_text else None
    base = flags(job=job, max_cost=1.0, **given)
    if given.get("model") == "claude-4-5-haiku":
        assert resolve(base, STANDARD_PLAN).max_cost == 1.0
        return
    error = usage_error(
        base, STANDARD_PLAN if "model" in given else {**STANDARD_PLAN, "INFERENCE_MODEL_ID": "nova-lite"}
    )
    assert "my-own-model" in str(error) and "--price-in" in str(error) and "--price-out" in str(error)
    assert resolve(flags(**{**base, "price_in": 0.5, "price_out": 1.5}), STANDARD_PLAN).max_cost == 1.0
    assert resolve(flags(**{**base, "max_cost": None}), STANDARD_PLAN).max_cost is None  # no cap, no price needed


# --- Settings resolved once: one merge, then one check per section (issue 13 item 4) -------------------------------


def merged(given: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    from inferbatch.config import merge_settings

    return merge_settings(flags(**(given or {})), ENV if env is None else env)


JOB_URL = 'url = "https://job.example.com"\n'


@pytest.mark.parametrize(
    ("given", "env", "job_text", "url", "source"),
    [
        ({"url": "https://flag.example.com"}, ENV, JOB_URL, "https://flag.example.com", "--url"),
        ({}, ENV, JOB_URL, "https://env.example.com", "INFERENCE_URL"),
        ({}, {}, JOB_URL, "https://job.example.com", "job file `url`"),
        ({}, {}, None, None, ""),
    ],
    ids=["flag", "env", "job", "none"],
)
def test_merge_settings_takes_the_url_by_precedence_and_says_where_from(
    tmp_path: Path, given: dict[str, Any], env: dict[str, str], job_text: str | None, url: str | None, source: str
) -> None:
    job = job_file(tmp_path, job_text) if job_text else None
    settings = merged({**given, "job": job}, env)
    assert settings["url"] == url
    assert settings["url_source"].startswith(source)


def test_merge_settings_keeps_numbers_raw_and_the_key_a_secret(tmp_path: Path) -> None:
    """The merge decides precedence only: a flag's text stays text for the section to check; the key is a Secret
    from the variable --api-key-env names, and of the environment only what --shard auto reads is kept."""
    job = job_file(tmp_path, "concurrency = 4\nmax_attempts = 3\n")
    env = {**ENV, "OTHER_KEY": "other-secret-key", "DYNO": "worker.2", "UNRELATED": "x"}
    settings = merged({"job": job, "concurrency": "8", "api_key_env": "OTHER_KEY"}, env)
    assert (settings["concurrency"], settings["max_attempts"], settings["timeout"]) == ("8", 3, 300.0)
    assert isinstance(settings["api_key"], Secret) and settings["api_key"].reveal() == "other-secret-key"
    assert settings["shard_env"] == {"DYNO": "worker.2"}
    assert "other-secret-key" not in repr(settings) and "env-secret-key" not in repr(settings)
    assert settings["api_key"] is not None and merged({}, {})["api_key"] is None


def test_merge_settings_lays_param_flags_over_the_job_params(tmp_path: Path) -> None:
    job = job_file(tmp_path, "[params]\ntemperature = 0.5\nmax_tokens = 100\nstream = true\n")
    settings = merged({"job": job, "params": ("temperature=0", "top_p=0.9")})
    assert settings["params"] == {"temperature": 0, "max_tokens": 100, "top_p": 0.9}


def test_input_settings_check_what_is_read_and_sent(tmp_path: Path) -> None:
    from inferbatch.config import _input_settings

    section = _input_settings(merged({"keep_columns": "a, b,", "limit": "0", "shard": "1/4"}))
    assert section["keep_columns"] == ("a", "b")
    assert (section["limit"], str(section["shard"]), section["limit_share"]) == (0, "1/4", 1)
    with pytest.raises(ConfigError, match="--keep-columns status: `status` is an output column"):
        _input_settings(merged({"keep_columns": "a,status"}))
    template = tmp_path / "t.txt"
    template.write_text("Q: {q}", encoding="utf-8")
    with pytest.raises(ConfigError, match="give --template or --template-file, not both"):
        _input_settings(merged({"template": "x", "template_file": str(template)}))
    assert _input_settings(merged({"template_file": str(template)}))["template"] == "Q: {q}"
    with pytest.raises(ConfigError, match="--param max_tokens must be a positive whole number"):
        _input_settings(merged({"params": ("max_tokens=0",)}))
    with pytest.raises(ConfigError, match="no input"):
        _input_settings(merged({"input": None}))


def test_connection_settings_need_a_url_and_key_only_to_send() -> None:
    from inferbatch.config import SIMULATOR_MODEL, _connection_settings

    section = _connection_settings(merged(), need_connection=True)
    assert section["url"] == "https://env.example.com/v1/chat/completions" and section["model"] == "env-model"
    offline = {"url": None, "api_key": None, "model": None, "simulate": False}
    assert _connection_settings(merged({}, {}), need_connection=False) == offline
    assert _connection_settings(merged({"simulate": True}, {}), need_connection=True)["model"] == SIMULATOR_MODEL
    with pytest.raises(ConfigError, match="no API key: set OTHER_KEY"):
        _connection_settings(merged({"api_key_env": "OTHER_KEY"}), need_connection=True)


def test_limit_settings_convert_the_defaults_table() -> None:
    from inferbatch.config import _limit_settings

    assert _limit_settings(merged()) == {
        "concurrency": 16,
        "rpm": None,
        "tpm": None,
        "max_attempts": 6,
        "timeout": 300.0,
        "abort_after": 25,
        "drain_timeout": 20.0,
        "deadline": None,
        "max_wait": 600.0,
        "progress_interval": 10.0,
        "checkpoint_interval": 5.0,
    }
    assert _limit_settings(merged({"abort_after": "0", "drain_timeout": "0"}))["abort_after"] == 0
    refused = [
        ({"max_attempts": "0"}, "--max-attempts must be at least 1"),
        ({"timeout": "0"}, "--timeout must be > 0"),
        ({"deadline": "0s"}, "--deadline must be positive"),
        ({"concurrency": "5000"}, "--concurrency 5000 is more than 4096"),
    ]
    for given, message in refused:
        with pytest.raises(ConfigError, match=message):
            _limit_settings(merged(given))


def test_budget_settings_allow_free_prices_but_not_a_free_cap() -> None:
    from inferbatch.config import _budget_settings

    section = _budget_settings(merged({"price_in": "0", "max_total_tokens": "1000"}))
    assert section == {"max_total_tokens": 1000, "max_cost": None, "price_in": 0.0, "price_out": None}
    with pytest.raises(ConfigError, match="--max-cost must be > 0"):
        _budget_settings(merged({"max_cost": "0"}))


def test_evaluation_settings_select_variants_by_name(tmp_path: Path) -> None:
    from inferbatch.config import _evaluation_settings

    job = job_file(tmp_path, 'variant = ""\n[[variants]]\nname = "a"\n[[variants]]\nname = "b"\n')
    section = _evaluation_settings(merged({"job": job}))
    assert [v.name for v in section["variants"]] == ["a", "b"] and section["selected_variants"] == ()
    assert _evaluation_settings(merged({"job": job, "variant": ("b",)}))["selected_variants"] == ("b",)
    with pytest.raises(ConfigError, match="--variant c: no such variant"):
        _evaluation_settings(merged({"job": job, "variant": ("c",)}))
    with pytest.raises(ConfigError, match="--fail-under is a fraction"):
        _evaluation_settings(merged({"fail_under": "1.5"}))


def test_output_settings_pick_the_format_by_extension() -> None:
    from inferbatch.config import _output_settings

    section = _output_settings(merged({"output": "out.parquet", "verbose": 2}))
    assert (section["output_format"], section["verbose"], section["job"]) == ("parquet", 2, None)


def test_the_sections_give_every_runconfig_field_exactly_once(tmp_path: Path) -> None:
    """No field is left to its dataclass default by a section that forgot it, and no two sections own one."""
    from dataclasses import fields

    from inferbatch import config

    settings = merged()
    sections = [
        config._input_settings(settings),
        config._connection_settings(settings, need_connection=True),
        config._limit_settings(settings),
        config._budget_settings(settings),
        config._evaluation_settings(settings),
        config._output_settings(settings),
        config._schema_settings(settings),
    ]
    owned = [key for section in sections for key in section]
    assert sorted(owned) == sorted(f.name for f in fields(RunConfig))


# --- Each default written once ------------------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A default as help text and the README show it: 300.0 is 300."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_a_value(value: Any) -> bool:
    """None, False and empty mean "not set"; the rest are defaults a user should be told."""
    return value is not None and value is not False and value != () and value != {}


def test_a_runconfig_built_directly_has_the_defaults_resolve_gives() -> None:
    """RunConfig's field defaults read DEFAULTS: a RunConfig built in code (as a library user or a test does)
    agrees with one resolved from no settings at all."""
    from dataclasses import fields

    resolved = resolve(flags(), {}, need_connection=False)
    direct = RunConfig(input="in.jsonl", output="out.jsonl")
    for f in fields(RunConfig):
        assert getattr(direct, f.name) == getattr(resolved, f.name), f.name


@pytest.mark.parametrize("command", ["run", "validate", "worker"])
def test_help_shows_the_defaults_table(command: str) -> None:
    """Each option with a default states the table's value; none states a value the table does not have."""
    import re

    from inferbatch.cli import cli
    from inferbatch.config import DEFAULTS

    checked = 0
    for param in cli.commands[command].params:
        if param.name not in DEFAULTS or not getattr(param, "help", None):
            continue
        default, text = DEFAULTS[param.name], param.help  # type: ignore[attr-defined]
        stated = re.findall(r"\[default: ([^\]]+)\]", text)
        if is_a_value(default):
            assert shown(default) in text, (param.name, text)
            assert stated in ([], [shown(default)]), (param.name, stated)
            checked += 1
        else:
            assert not [s for s in stated if s[:1].isdigit()], (param.name, stated)
    assert checked >= (1 if command == "validate" else 10)


def test_readme_options_table_shows_the_defaults_table() -> None:
    """The README's run-options table restates each default: it must say what DEFAULTS says."""
    import re

    from inferbatch.config import DEFAULTS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    checked = 0
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`-"):
            continue
        options = [re.search(r"--([\w-]+)", part) for part in cells[0].split(" / ")]
        values = cells[1].split(" / ")
        if len(values) != len(options):
            values = values * len(options)  # one default for all: `--rpm N` / `--tpm N` | none
        for option, value in zip(options, values, strict=True):
            name = option[1].replace("-", "_") if option else None
            if name in DEFAULTS and is_a_value(DEFAULTS[name]):
                assert value.strip("`") == shown(DEFAULTS[name]), (name, value)
                checked += 1
    assert checked >= 9


# --- The environment is read in config only ----------------------------------------------------------------------


def test_s3_settings_prefer_aws_names_then_bucketeer() -> None:
    from inferbatch.config import S3Settings, s3_settings

    bucketeer = {
        "BUCKETEER_AWS_ACCESS_KEY_ID": "bk",
        "BUCKETEER_AWS_SECRET_ACCESS_KEY": "bucketeer-secret",
        "BUCKETEER_AWS_REGION": "eu-west-1",
    }
    assert s3_settings(bucketeer) == S3Settings("bk", "bucketeer-secret", "eu-west-1", None)
    aws = {
        **bucketeer,
        "AWS_ACCESS_KEY_ID": "ak",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "AWS_REGION": "",
        "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_ENDPOINT_URL": "http://a",
        "AWS_ENDPOINT_URL_S3": "http://s3",
    }
    assert s3_settings(aws) == S3Settings("ak", "aws-secret", "us-west-2", "http://s3")  # an empty one is unset
    assert s3_settings({}) == S3Settings()
    assert "aws-secret" not in repr(s3_settings(aws))


def test_s3_settings_follow_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """storage asks at each operation, so an endpoint set after import (a test's own moto server) is used."""
    from inferbatch.config import s3_settings

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert s3_settings().endpoint == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert s3_settings().endpoint == "http://127.0.0.1:2"


def test_only_config_and_the_cli_read_the_environment() -> None:
    """STYLE principle 4: settings are resolved in config; the CLI only hands ``os.environ`` in (and redacts)."""
    package = Path(__file__).resolve().parent.parent / "src" / "inferbatch"
    readers = sorted(
        path.name
        for path in package.glob("*.py")
        if any(word in path.read_text(encoding="utf-8") for word in ("os.environ", "getenv("))
    )
    assert set(readers) <= {"config.py", "cli.py", "__init__.py"}, readers  # __init__: its docstring's example


def test_config_does_not_import_storage() -> None:
    """storage imports config (for its S3 settings); config importing storage back would be a cycle."""
    import subprocess
    import sys

    code = "import sys, inferbatch.config; print('inferbatch.storage' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
