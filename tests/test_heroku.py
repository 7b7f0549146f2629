"""Heroku as it is today (SPEC §6, §8.31, §8.38-40): app.json, the standard inference plan, prices and limits,
Fir dyno names, several workers sharing one limit, the nightly Scheduler job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import chat_rows, invoke, read_jsonl, write_jsonl
from inferbatch import pricing
from inferbatch.config import resolve
from inferbatch.shaping import shard_of
from test_s3 import bucket, moto_endpoint, put  # noqa: F401 - fixtures: a bucket on a moto_server

ROOT = Path(__file__).resolve().parent.parent
APP_JSON = json.loads((ROOT / "app.json").read_text(encoding="utf-8"))
PROCFILE = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
NIGHTLY = ROOT / "jobs" / "nightly.toml"
STANDARD_PLAN = {"INFERENCE_KEY": "standard-plan-key"}  # + INFERENCE_URL; never INFERENCE_MODEL_ID
FIR_DYNO = "worker-23z34x56y-w78k9"


@pytest.fixture(autouse=True)
def no_dyno(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests here run off Heroku unless they say otherwise (Heroku CI itself runs on a dyno)."""
    for name in ("DYNO", "INFERBATCH_SHARDS", "INFERBATCH_MODEL", "BUCKETEER_BUCKET_NAME"):
        monkeypatch.delenv(name, raising=False)


# --- app.json, against Heroku's documented schema ------------------------------------------------------------------

# From Heroku Dev Center, "app.json Schema" (devcenter.heroku.com/articles/app-json-schema): the keys it documents.
APP_JSON_KEYS = {
    "addons",
    "buildpacks",
    "description",
    "env",
    "environments",
    "formation",
    "image",
    "keywords",
    "logo",
    "name",
    "repository",
    "scripts",
    "stack",
    "success_url",
    "website",
}
ADDON_KEYS = {"plan", "as", "options"}  # plan required
ENV_KEYS = {"description", "value", "required", "generator"}  # generator: "secret"
FORMATION_KEYS = {"quantity", "size"}
BUILDPACK_KEYS = {"url"}
SCRIPT_KEYS = {"postdeploy", "pr-predestroy"}
ENVIRONMENT_NAMES = {"test", "review"}
ENVIRONMENT_KEYS = {"addons", "buildpacks", "env", "formation", "scripts"}
ENVIRONMENT_SCRIPT_KEYS = {"test-setup", "test", "postdeploy", "pr-predestroy"}
DYNO_SIZES = {
    "eco",
    "basic",
    "standard-1x",
    "standard-2x",
    "performance-m",
    "performance-l",
    "performance-l-ram",
    "performance-xl",
    "performance-2xl",
    "private-s",
    "private-m",
    "private-l",
    "shield-s",
    "shield-m",
    "shield-l",
}
ONE_DYNO_PER_PROCESS_TYPE = {"eco", "basic"}  # these sizes cannot scale a process type past one dyno


def check_addons(addons: Any, where: str) -> None:
    assert isinstance(addons, list), where
    for addon in addons:
        if isinstance(addon, str):
            continue
        assert isinstance(addon, dict) and set(addon) <= ADDON_KEYS and isinstance(addon.get("plan"), str), addon


def check_env(env: Any, where: str) -> None:
    assert isinstance(env, dict), where
    for name, spec in env.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), name
        if isinstance(spec, str):
            continue
        assert isinstance(spec, dict) and set(spec) <= ENV_KEYS, (name, spec)
        assert isinstance(spec.get("value", ""), str) and isinstance(spec.get("description", ""), str), name
        assert isinstance(spec.get("required", False), bool), name
        assert spec.get("generator", "secret") == "secret", name


def check_formation(formation: Any, where: str) -> None:
    assert isinstance(formation, dict), where
    for process, spec in formation.items():
        assert set(spec) <= FORMATION_KEYS and isinstance(spec.get("quantity", 0), int), process
        assert spec.get("size", "standard-1x").lower() in DYNO_SIZES, spec


def test_app_json_has_only_keys_of_the_documented_schema() -> None:
    assert set(APP_JSON) <= APP_JSON_KEYS, set(APP_JSON) - APP_JSON_KEYS
    assert isinstance(APP_JSON["name"], str) and len(APP_JSON["name"]) <= 30
    assert isinstance(APP_JSON["description"], str)
    assert all(isinstance(k, str) for k in APP_JSON.get("keywords", []))
    check_addons(APP_JSON.get("addons", []), "addons")
    check_env(APP_JSON.get("env", {}), "env")
    check_formation(APP_JSON.get("formation", {}), "formation")
    assert all(isinstance(b, dict) and set(b) <= BUILDPACK_KEYS for b in APP_JSON.get("buildpacks", []))
    assert set(APP_JSON.get("scripts", {})) <= SCRIPT_KEYS
    for name, environment in APP_JSON.get("environments", {}).items():
        assert name in ENVIRONMENT_NAMES and set(environment) <= ENVIRONMENT_KEYS, name
        check_addons(environment.get("addons", []), name)
        check_env(environment.get("env", {}), name)
        check_formation(environment.get("formation", {}), name)
        assert set(environment.get("scripts", {})) <= ENVIRONMENT_SCRIPT_KEYS, name


def test_app_json_provisions_todays_standard_plan_storage_model_and_a_scalable_worker() -> None:
    """SPEC §6 and §8.39: the standard plan (no INFERENCE_MODEL_ID), Bucketeer, the model as a config var that
    the Procfile and the nightly job use, and a worker on a dyno size that can run more than one dyno."""
    plans = [a if isinstance(a, str) else a["plan"] for a in APP_JSON["addons"]]
    assert "heroku-inference:standard" in plans
    assert any(plan.startswith("bucketeer:") for plan in plans)
    assert "INFERENCE_MODEL_ID" not in APP_JSON["env"]
    model = APP_JSON["env"]["INFERBATCH_MODEL"]
    assert model["value"] in pricing.MODELS and pricing.Pricing().priced(model["value"])
    assert "$INFERBATCH_MODEL" in PROCFILE["worker"]
    assert tomllib.loads(NIGHTLY.read_text())["model"] == "$INFERBATCH_MODEL"
    worker = APP_JSON["formation"]["worker"]
    assert worker["size"].lower() not in ONE_DYNO_PER_PROCESS_TYPE
    assert APP_JSON["env"]["INFERBATCH_SHARDS"]["value"] == str(worker["quantity"])
    test = APP_JSON["environments"]["test"]
    assert test["scripts"]["test"] == "python -m pytest" and test["addons"] == []  # no paid add-ons for CI


def test_procfile_worker_defaults_to_the_bucketeer_inbox_and_shards_automatically() -> None:
    worker = PROCFILE["worker"]
    assert "${INFERBATCH_INBOX:-s3://$BUCKETEER_BUCKET_NAME/inbox/}" in worker
    assert "${INFERBATCH_OUTBOX:-s3://$BUCKETEER_BUCKET_NAME/outbox/}" in worker
    assert "--shard auto" in worker


def test_heroku_ci_installs_the_test_extra_as_a_dependency_group() -> None:
    """Heroku CI's uv build installs the default dependency groups, not extras; pip users keep the extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["dependency-groups"]["test"] == ["inferbatch[test]"]
    assert project["tool"]["uv"]["default-groups"] == ["test"]
    assert project["project"]["optional-dependencies"]["test"]


# --- the standard plan: the model is named per request (SPEC §8.39) ------------------------------------------------


def test_standard_plan_runs_with_the_model_from_the_flag_or_the_rows(sim, runner, tmp_path: Path) -> None:
    server = sim()
    env = {**STANDARD_PLAN, "INFERENCE_URL": server.url}
    source = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "a", "prompt": "q"}, {"id": "b", "prompt": "r", "model": "nova-lite"}]
    )
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--model", "claude-4-5-haiku"], env=env
    )
    assert result.exit_code == 0, result.stderr
    assert [r["model"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["claude-4-5-haiku", "nova-lite"]


def test_standard_plan_without_a_model_names_every_way_to_give_one(sim, runner, tmp_path: Path) -> None:
    """Needs the runner to raise config.missing_model_error() (the lead wires it): exit 2, one line, nothing sent."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3))
    result = invoke(
        runner,
        ["run", str(source), "-o", str(tmp_path / "out.jsonl")],
        env={**STANDARD_PLAN, "INFERENCE_URL": server.url},
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    for way in ("--model", "job file", "row", "heroku ai:models:list"):
        assert way in result.stderr, way
    assert server.stats.requests == 0


# --- prices and limits (SPEC §8.31) --------------------------------------------------------------------------------


def test_price_table_says_its_source_and_date_and_covers_todays_models() -> None:
    doc = pricing.__doc__ or ""
    assert pricing.TABLE_DATE in doc and "devcenter.heroku.com" in doc
    for model in (
        "claude-sonnet-4-6",
        "claude-4-5-sonnet",
        "claude-4-5-haiku",
        "claude-opus-4-5",
        "openai-gpt-oss-120b",
        "nova-pro",
        "nova-lite",
    ):
        assert pricing.Pricing().priced(model), model
    assert pricing.published_limits("claude-4-5-haiku") == (200, 800_000)
    assert pricing.published_limits("claude-4-5-sonnet") == (150, 800_000)
    assert pricing.published_limits("my-own-model") == (None, None)
    for info in pricing.MODELS.values():
        assert (info.rpm is None) == (info.tpm is None)
        if info.price_in is not None and info.price_out is not None:
            assert 0 < info.price_in < info.price_out


def test_an_unpriced_model_never_costs_zero() -> None:
    assert pricing.Pricing().cost("nova-2-lite", 1000, 1000) is None  # in the table for its limits only
    assert pricing.Pricing(price_in=1.0).cost("my-own-model", 1000, 1000) is None  # half a price is no price
    assert pricing.Pricing(price_in=1.0, price_out=2.0).cost("my-own-model", 1_000_000, 0) == pytest.approx(1.0)
    assert pricing.Pricing(price_out=30.0).cost("claude-4-5-haiku", 0, 1_000_000) == pytest.approx(30.0)


def test_max_cost_is_refused_for_an_unpriced_model_before_anything_is_sent(sim, runner, tmp_path: Path) -> None:
    """The issue's repro: --max-cost 0.000001 with an unpriced model sent every row. Now exit 2, nothing sent."""
    server = sim()
    env = {**STANDARD_PLAN, "INFERENCE_URL": server.url}
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(5))
    args = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--model", "kimi-k2-thinking"]

    refused = invoke(runner, [*args, "--max-cost", "0.000001"], env=env)
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1 and "kimi-k2-thinking" in refused.stderr
    assert "--price-in" in refused.stderr and "--price-out" in refused.stderr
    assert server.stats.requests == 0 and not (tmp_path / "out.jsonl").exists()

    accepted = invoke(runner, [*args, "--max-cost", "5", "--price-in", "0.6", "--price-out", "2.5"], env=env)
    assert accepted.exit_code == 0, accepted.stderr
    assert server.stats.requests == 5


def test_max_cost_stops_at_the_first_row_naming_an_unpriced_model(sim, runner, tmp_path: Path) -> None:
    """Rows' own models are only known when read: the run stops (exit 2) before sending the first row whose model
    has no price, naming it. Needs the runner to check ``Pricing.priced`` before reserving (the lead wires it)."""
    server = sim()
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(6)]
    rows[3] = {"id": "r3", "prompt": "the unpriced question", "model": "minimax-m2"}
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke(
        runner,
        [
            "run",
            str(source),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--model",
            "claude-4-5-haiku",
            "--max-cost",
            "5",
            "-c",
            "1",
        ],
        env={**STANDARD_PLAN, "INFERENCE_URL": server.url},
    )
    assert result.exit_code == 2, result.stderr
    assert "minimax-m2" in result.stderr and "--price-in" in result.stderr
    assert "the unpriced question" not in server.stats.prompts
    assert "r3" not in {r["id"] for r in read_jsonl(tmp_path / "out.jsonl")}


def test_validate_prints_the_estimate_per_model(runner, tmp_path: Path) -> None:
    rows = [
        *({"id": f"h{i}", "prompt": "x" * 400} for i in range(4)),
        *({"id": f"n{i}", "prompt": "y" * 40, "model": "nova-lite"} for i in range(2)),
        {"id": "o", "prompt": "z", "model": "my-own-model"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke(runner, ["validate", str(source), "--model", "claude-4-5-haiku", "--param", "max_tokens=100"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    per_model = {
        parse_logfmt(line)[1]["model"]: parse_logfmt(line)[1] for line in lines if line.startswith("estimate_model ")
    }
    assert set(per_model) == {"claude-4-5-haiku", "nova-lite", "my-own-model"}
    haiku = per_model["claude-4-5-haiku"]
    assert haiku["rows"] == "4" and haiku["max_completion_tokens"] == "400"
    assert float(haiku["cost_usd"]) >= 0 and haiku["limit_rpm"] == "200" and haiku["limit_tpm"] == "800000"
    assert per_model["my-own-model"]["cost_usd"] == "unknown"
    assert lines[-1].startswith("estimate rows=7 ") and lines[-1].endswith("cost_usd=unknown")
    assert "my-own-model" in result.stderr  # the note names the model without a price


def parse_logfmt(line: str) -> tuple[str, dict[str, str]]:
    match = re.fullmatch(r'(\w+)((?: [^\s="]+=(?:"(?:[^"\\]|\\.)*"|[^\s"]*))*)', line)
    assert match, line
    pairs = re.findall(r' ([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)', match[2])
    return match[1], {key: value.strip('"') for key, value in pairs}


# --- Fir dyno names (SPEC §8.40) -----------------------------------------------------------------------------------


def test_run_with_shard_auto_on_a_fir_dyno_is_one_line_and_exit_2(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(4))
    env = {**STANDARD_PLAN, "INFERENCE_URL": server.url, "DYNO": FIR_DYNO, "INFERBATCH_SHARDS": "2"}
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--model", "m", "--shard", "auto"], env=env
    )
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "--shard I/N" in result.stderr and FIR_DYNO in result.stderr
    assert server.stats.requests == 0


def worker_process(inbox: Path, outbox: Path, url: str, *extra: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferbatch",
            "worker",
            "--inbox",
            str(inbox),
            "--outbox",
            str(outbox),
            "--poll",
            "0.5",
            "--model",
            "sim-model",
            *extra,
        ],
        env={**os.environ, **STANDARD_PLAN, "INFERENCE_URL": url, **env},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_worker_dyno_on_fir_says_so_once_and_waits_instead_of_crash_looping(tmp_path: Path) -> None:
    """A worker dyno that exits is restarted into the same error: it logs the one line and waits for SIGTERM
    (a config change or release restarts it), then exits 2."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    proc = worker_process(
        inbox, tmp_path / "outbox", "http://127.0.0.1:9", "--shard", "auto", DYNO=FIR_DYNO, INFERBATCH_SHARDS="2"
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "--shard I/N" in line and FIR_DYNO in line
        time.sleep(1.0)
        assert proc.poll() is None  # waiting, not exited (and so not restarted)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert rest == ""  # said once


def test_worker_once_or_off_heroku_exits_2_at_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for extra, env in ((("--once",), {"DYNO": FIR_DYNO}), ((), {"DYNO": "run.1234"})):
        proc = worker_process(
            inbox, tmp_path / "outbox", "http://127.0.0.1:9", "--shard", "auto", *extra, INFERBATCH_SHARDS="2", **env
        )
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and err.count("\n") == 1, err


# --- several workers, one limit (SPEC §8.38) -----------------------------------------------------------------------


def test_two_workers_with_shard_auto_share_the_announced_limit(sim, tmp_path: Path) -> None:
    """The server counts the add-on, not the dyno: two workers each pacing to the whole announced limit would
    send twice it. Each takes half, so together they stay under it (and collect at most 2 % 429s).
    Needs the limiter to divide by RunConfig.limit_share (the lead wires it)."""
    limit = 1200  # requests a minute, announced in x-ratelimit-limit-requests: 20 a second
    server = sim(rpm=limit)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    names = [f"part{i:02d}.jsonl" for i in range(60)]
    mine = {0: [n for n in names if shard_of(n, 2) == 0][:8], 1: [n for n in names if shard_of(n, 2) == 1][:8]}
    for name in mine[0] + mine[1]:
        write_jsonl(inbox / name, chat_rows(15, name.split(".")[0]))
    procs = [
        worker_process(
            inbox, outbox, server.url, "--shard", "auto", "--once", "-c", "4", DYNO=f"worker.{k}", INFERBATCH_SHARDS="2"
        )
        for k in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    total = 16 * 15
    assert all((outbox / f"{name}.done.json").exists() for name in mine[0] + mine[1])
    rejected = server.stats.by_status.get(429, 0)
    assert rejected <= 0.02 * server.stats.requests
    assert server.stats.requests - rejected == total
    # Together under the limit: no 5 s stretch holds more than the limit allows (plus the first requests, sent
    # before the first response announced it, and a tenth for timing jitter).
    arrivals = sorted(server.stats.arrivals)
    busiest = max(sum(1 for t in arrivals[i:] if t < start + 5.0) for i, start in enumerate(arrivals))
    assert busiest <= limit / 60 * 5 * 1.1 + 2 * 4, busiest


# --- the nightly Scheduler job -------------------------------------------------------------------------------------


def test_nightly_job_is_a_55_minute_s3_job_on_bucketeer() -> None:
    env = {
        **STANDARD_PLAN,
        "INFERENCE_URL": "https://us.inference.heroku.com",
        "BUCKETEER_BUCKET_NAME": "bkt",
        "INFERBATCH_MODEL": "claude-4-5-haiku",
    }
    cfg = resolve({"job": str(NIGHTLY), "input": None}, env)
    assert cfg.deadline == 55 * 60
    assert cfg.input == "s3://bkt/nightly/prompts.jsonl" and cfg.output == "s3://bkt/nightly/results.jsonl"
    assert cfg.model == "claude-4-5-haiku"


def test_nightly_job_runs_on_the_simulator_over_s3(bucket: str, runner, monkeypatch: pytest.MonkeyPatch) -> None:
    from inferbatch import storage

    monkeypatch.setenv("BUCKETEER_BUCKET_NAME", bucket)
    monkeypatch.setenv("INFERBATCH_MODEL", "claude-4-5-haiku")
    rows = chat_rows(30)
    put(f"s3://{bucket}/nightly/prompts.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())

    first = invoke(runner, ["run", "--job", str(NIGHTLY), "--simulate"])
    assert first.exit_code == 0, first.stderr
    output = storage.read_bytes(f"s3://{bucket}/nightly/results.jsonl")
    assert output is not None
    results = [json.loads(line) for line in output.decode().splitlines()]
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert {r["status"] for r in results} == {"ok"} and {r["model"] for r in results} == {"claude-4-5-haiku"}
    summary = storage.read_bytes(f"s3://{bucket}/nightly/summary.json")
    assert summary is not None and json.loads(summary)["ok"] == 30

    again = invoke(runner, ["run", "--job", str(NIGHTLY), "--simulate"])  # the next night: nothing left to pay for
    assert again.exit_code == 0 and "already complete" in again.stderr


def test_nightly_job_runs_locally_with_input_and_output_given(runner, tmp_path: Path) -> None:
    """The command line replaces the job's S3 paths, so BUCKETEER_BUCKET_NAME need not be set."""
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(10))
    result = invoke(
        runner,
        [
            "run",
            "--job",
            str(NIGHTLY),
            str(source),
            "-o",
            str(tmp_path / "out.jsonl"),
            "--summary-json",
            str(tmp_path / "summary.json"),
            "--model",
            "sim-model",
            "--simulate",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 10
