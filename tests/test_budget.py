"""Budget caps and cost: stop admitting before a cap is crossed, resume when it is raised."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from conftest import chat_rows, connection_env, invoke, read_jsonl, write_jsonl
from inferbatch.budget import Budget
from inferbatch.pricing import PRICES_USD_PER_MTOK, Pricing


def test_pricing_flags_win_over_the_table_and_unknown_models_cost_none() -> None:
    assert Pricing().cost("claude-4-5-sonnet", 1_000_000, 1_000_000) == pytest.approx(18.0)
    assert Pricing(price_in=1.0).cost("claude-4-5-sonnet", 1_000_000, 0) == pytest.approx(1.0)
    assert Pricing().cost("my-own-model", 10, 10) is None
    assert Pricing(price_in=2.0, price_out=4.0).cost("my-own-model", 500_000, 250_000) == pytest.approx(2.0)
    assert all(p_in < p_out for p_in, p_out in PRICES_USD_PER_MTOK.values())


def test_budget_reserves_settles_and_refuses_past_the_cap() -> None:
    budget = Budget(max_tokens=100, max_cost=None, pricing=Pricing())
    first = budget.reserve("m", 30, 30)
    assert first is not None
    assert budget.reserve("m", 30, 30) is None  # 60 reserved + 60 > 100
    budget.settle(first, "m", 10, 5)  # the estimate was pessimistic
    assert budget.spent_tokens == 15 and budget.reserved_tokens == 0 and budget.outstanding == 0
    assert budget.reserve("m", 30, 30) is not None


def test_budget_starts_from_what_earlier_runs_spent() -> None:
    budget = Budget(max_tokens=None, max_cost=1.0, pricing=Pricing(), spent_cost=0.99)
    assert budget.reserve("claude-4-5-sonnet", 10_000, 0) is None  # 0.03 USD would cross 1.00


def test_max_total_tokens_stops_before_crossing_then_raising_it_continues(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(60))
    output = tmp_path / "out.jsonl"
    env = connection_env(server)
    args = ["run", str(source), "-o", str(output), "-c", "4", "--param", "max_tokens=20"]
    first = invoke(runner, [*args, "--max-total-tokens", "400"], env=env)
    assert first.exit_code == 3
    assert "--max-total-tokens 400" in first.stderr and "raise" in first.stderr
    done = read_jsonl(output)
    assert 0 < len(done) < 60
    assert sum(r["total_tokens"] for r in done) <= 400
    assert {r["status"] for r in done} == {"ok"}

    second = invoke(runner, [*args, "--max-total-tokens", "1000000"], env=env)
    assert second.exit_code == 0
    final = read_jsonl(output)
    assert [r["id"] for r in final] == [f"row{i}" for i in range(60)]
    assert server.stats.requests == 60  # nothing sent twice


def test_max_total_tokens_counts_the_whole_job_across_resumed_runs(sim, runner, tmp_path: Path) -> None:
    """SPEC budgets: --max-total-tokens caps the whole job, so a rerun with the same cap after a cap stop starts
    from the tokens the checkpoint recorded and sends nothing, or at most one row that still fits."""
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(60))
    output = tmp_path / "out.jsonl"
    env = connection_env(server)
    args = ["run", str(source), "-o", str(output), "-c", "4", "--param", "max_tokens=20", "--max-total-tokens", "400"]
    first = invoke(runner, args, env=env)
    assert first.exit_code == 3, first.stderr
    done = read_jsonl(output)
    assert 0 < len(done) < 60
    spent = sum(r["total_tokens"] for r in done)
    assert spent <= 400
    sent = server.stats.requests

    again = invoke(runner, args, env=env)  # same cap: the earlier run's spend counts
    assert again.exit_code == 3, again.stderr
    assert server.stats.requests - sent <= 1
    final = read_jsonl(output)
    assert len(final) - len(done) <= 1
    assert sum(r["total_tokens"] for r in final) <= 400
    said = re.search(r"--max-total-tokens 400 \(spent (\d+)\)", again.stderr)
    assert said is not None, again.stderr
    assert int(said.group(1)) >= spent  # the stop counts the whole job, not only this run


def test_max_cost_counts_the_whole_job_across_resumed_runs(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(40))
    output = tmp_path / "out.jsonl"
    env = connection_env(server)
    # Prices chosen so that each row costs about a cent: 10 prompt + ~20 completion tokens.
    args = [
        "run",
        str(source),
        "-o",
        str(output),
        "-c",
        "2",
        "--price-in",
        "300",
        "--price-out",
        "300",
        "--param",
        "max_tokens=25",
    ]
    first = invoke(runner, [*args, "--max-cost", "0.05"], env=env)
    assert first.exit_code == 3
    done = read_jsonl(output)
    assert 0 < len(done) < 40
    assert sum(r["total_tokens"] for r in done) * 300 / 1e6 <= 0.05
    sent = server.stats.requests
    again = invoke(runner, [*args, "--max-cost", "0.05"], env=env)  # same cap: the earlier run's spend counts
    assert again.exit_code == 3
    assert len(read_jsonl(output)) - len(done) <= 1
    assert sum(r["total_tokens"] for r in read_jsonl(output)) * 300 / 1e6 <= 0.05
    assert server.stats.requests - sent <= 1


def test_summary_and_validate_report_cost(sim, runner, tmp_path: Path) -> None:
    server = sim()
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(5))
    summary = tmp_path / "summary.json"
    env = connection_env(server, model="claude-4-5-sonnet")
    result = invoke(
        runner, ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--summary-json", str(summary)], env=env
    )
    assert result.exit_code == 0
    figures = json.loads(summary.read_text())
    expected = (figures["prompt_tokens"] * 3 + figures["completion_tokens"] * 15) / 1e6
    assert figures["cost_usd"] == pytest.approx(expected, abs=1e-4)

    validated = invoke(runner, ["validate", str(source), "--model", "claude-4-5-sonnet", "--param", "max_tokens=100"])
    assert validated.exit_code == 0
    estimate = validated.stdout.strip().splitlines()[-1]
    assert estimate.startswith("estimate rows=5 ") and "max_completion_tokens=500" in estimate
    assert "cost_usd=0.01" in estimate  # 500 completion tokens at 15 USD/M plus a few prompt tokens


def test_the_whole_budget_is_usable_up_to_the_cap_exactly() -> None:
    """'Stop admitting before crossing': a reservation that lands exactly on the cap is inside it."""
    pricing = Pricing(1.0, 1.0)  # 1 USD per million tokens either way
    tokens = Budget(max_tokens=100, max_cost=None, pricing=pricing, spent_tokens=40)
    assert tokens.reserve("m", 50, 10) is not None  # 40 + 60 = 100
    assert tokens.reserve("m", 1, 0) is None
    cost = Budget(max_tokens=None, max_cost=0.0001, pricing=pricing, spent_cost=0.00004)
    assert cost.reserve("m", 50, 10) is not None  # 0.00004 + 0.00006 = the cap
    assert cost.reserve("m", 1, 0) is None


async def test_a_settlement_wakes_a_row_waiting_for_room() -> None:
    """A pessimistic estimate that settles smaller frees room: the waiting row must be woken to use it."""
    budget = Budget(max_tokens=100, max_cost=None, pricing=Pricing(None, None))
    held = budget.reserve(None, 10, 80)
    assert held is not None and budget.reserve(None, 10, 30) is None
    waiter = asyncio.create_task(budget.changed())
    await asyncio.sleep(0)
    budget.settle(held, None, 10, 20)  # used 30 of the 90 it held
    await asyncio.wait_for(waiter, timeout=5)
    assert budget.reserve(None, 10, 30) is not None


def test_the_cap_message_says_what_was_spent() -> None:
    budget = Budget(max_tokens=1000, max_cost=0.05, pricing=Pricing(1.0, 1.0), spent_tokens=990, spent_cost=0.0495)
    assert budget.describe() == "--max-total-tokens 1000 (spent 990) and --max-cost 0.05 USD (spent 0.0495)"
