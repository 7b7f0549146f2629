"""The simulator over real loopback HTTP: shapes, directives, faults, limits, stats, structured answers and the three
ways to run it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest

from inferbatch.simulator import (
    STATS_KEY,
    SimOptions,
    create_app,
    format_reset,
    in_thread,
    minimal_instance,
    mismatching_instance,
    running,
)


def chat(text: str, **params: Any) -> dict[str, Any]:
    return {"model": "claude-4-sonnet", "messages": [{"role": "user", "content": text}], **params}


class Client:
    """A running simulator and a session, with a shortcut for chat-completion posts."""

    def __init__(self, sim: Any, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session

    async def post(self, body: Any, path: str = "/v1/chat/completions", **kw: Any) -> tuple[int, Any, bytes]:
        async with self.session.post(self.sim.url + path, json=body, **kw) as r:
            return r.status, r.headers, await r.read()


@pytest.fixture
def opts() -> SimOptions:
    return SimOptions()


@pytest.fixture
async def client(opts: SimOptions) -> AsyncIterator[Client]:
    async with running(opts) as sim, aiohttp.ClientSession() as session:
        yield Client(sim, session)


def with_opts(**kw: Any) -> Any:
    return pytest.mark.parametrize("opts", [SimOptions(**kw)])


async def test_success_has_openai_shape(client: Client) -> None:
    status, headers, raw = await client.post(chat("What is the capital of France?"))
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["x-request-id"].startswith("req_")
    body = json.loads(raw)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "claude-4-sonnet"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content.startswith("sim reply to: What is the capital of France?")
    usage = body["usage"]
    assert usage["prompt_tokens"] == 8  # ceil(30 / 4)
    assert usage["completion_tokens"] == -(-len(content) // 4)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_reply_is_deterministic_per_request(client: Client) -> None:
    async def content(body: dict[str, Any]) -> str:
        _, _, raw = await client.post(body)
        return str(json.loads(raw)["choices"][0]["message"]["content"])

    first = await content(chat("same"))
    assert await content(chat("same")) == first
    assert await content(chat("same", temperature=0.7)) == first
    assert await content(chat("other")) != first
    with_system = {"messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "same"}]}
    assert await content(with_system) != first


async def test_model_defaults_and_stream_is_answered_as_json(client: Client) -> None:
    status, headers, raw = await client.post({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw)["model"] == "sim-model"
    assert client.sim.stats.stream_requested == 1


async def test_max_tokens_truncates_with_finish_reason_length(client: Client) -> None:
    _, _, raw = await client.post(chat("a fairly long question about many things", max_tokens=3))
    body = json.loads(raw)
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"]) == 12
    assert body["usage"]["completion_tokens"] <= 3


async def test_length_directive(client: Client) -> None:
    _, _, raw = await client.post(chat("[[sim:length]] hi"))
    assert json.loads(raw)["choices"][0]["finish_reason"] == "length"


async def test_tools_get_a_tool_call(client: Client) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    _, _, raw = await client.post(chat("Paris?", tools=tools))
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"input": "Paris?"}


async def test_plain_chat_path_health_and_models(client: Client) -> None:
    status, _, _ = await client.post(chat("hi"), path="/chat/completions")
    assert status == 200
    async with client.session.get(client.sim.url + "/health") as r:
        assert await r.json() == {"status": "ok"}
    async with client.session.get(client.sim.url + "/v1/models") as r:
        models = await r.json()
    assert models["object"] == "list"
    assert {"id": "claude-4-sonnet", "object": "model"}.items() <= models["data"][0].items()


@with_opts(models=("known",))
async def test_unknown_model_is_404(client: Client) -> None:
    status, _, raw = await client.post(chat("hi", model="nope"))
    assert status == 404
    assert json.loads(raw)["error"]["code"] == "model_not_found"
    assert (await client.post(chat("hi", model="known")))[0] == 200
    async with client.session.get(client.sim.url + "/v1/models") as r:
        assert [m["id"] for m in (await r.json())["data"]] == ["known"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"messages": []}',
        b'{"model": "m"}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
    ],
)
async def test_bad_requests_are_400(client: Client, body: bytes) -> None:
    async with client.session.post(client.sim.url + "/v1/chat/completions", data=body) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["type"] == "invalid_request_error"


@with_opts(max_body_bytes=1000)
async def test_body_over_the_limit_is_413(client: Client) -> None:
    status, _, raw = await client.post(chat("x" * 2000))
    assert status == 413
    assert json.loads(raw)["error"]["code"] == "request_too_large"


async def test_unknown_directive_is_400(client: Client) -> None:
    status, _, raw = await client.post(chat("[[sim:explode]]"))
    assert status == 400
    assert "[[sim:explode]]" in json.loads(raw)["error"]["message"]


@pytest.mark.parametrize("code", [400, 404, 422, 500])
async def test_status_directive_every_attempt(client: Client, code: int) -> None:
    for _ in range(3):
        status, headers, raw = await client.post(chat(f"row [[sim:{code}]]"))
        assert status == code
        assert headers["Content-Type"] == "application/json"
        assert headers["x-request-id"].startswith("req_")
        error = json.loads(raw)["error"]
        assert set(error) == {"code", "message", "type"}
        assert str(code) in error["message"]


async def test_counted_directive_fails_then_succeeds(client: Client) -> None:
    statuses = [(await client.post(chat("row 7 [[sim:500x2]]")))[0] for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    # Attempts are counted per request: another row with the same directive starts afresh.
    assert (await client.post(chat("row 8 [[sim:500x2]]")))[0] == 500


async def test_directives_form_a_script(client: Client) -> None:
    statuses = [(await client.post(chat("[[sim:500x1]] [[sim:429x1]] [[sim:drop x1]]")))[0] for _ in range(2)]
    assert statuses == [500, 429]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post(chat("[[sim:500x1]] [[sim:429x1]] [[sim:drop x1]]"))
    assert (await client.post(chat("[[sim:500x1]] [[sim:429x1]] [[sim:drop x1]]")))[0] == 200


@with_opts(retry_after_ms=True)
async def test_429_directive_sends_retry_after(client: Client) -> None:
    status, headers, raw = await client.post(chat("[[sim:429]]"))
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert headers["retry-after-ms"] == "1000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    _, headers, _ = await client.post(chat("[[sim:429]] [[sim:retry_after=2]]"))
    assert headers["Retry-After"] == "2"


@with_opts(retry_after=None)
async def test_429_without_retry_after(client: Client) -> None:
    status, headers, _ = await client.post(chat("[[sim:429]]"))
    assert status == 429
    assert "Retry-After" not in headers


async def test_403html_is_a_waf_page(client: Client) -> None:
    status, headers, raw = await client.post(chat("[[sim:403html]]"))
    assert status == 403
    assert headers["Content-Type"].startswith("text/html")
    assert raw.decode() == "<html><body><h1>403 Forbidden</h1>Request blocked by WAF</body></html>"


async def test_403auth_and_401_directives(client: Client) -> None:
    status, _, raw = await client.post(chat("[[sim:403auth]]", model="claude-4-sonnet"))
    assert status == 403
    error = json.loads(raw)["error"]
    assert error["code"] == error["type"] == "authorization_error"
    assert "claude-4-sonnet" in error["message"]
    status, _, raw = await client.post(chat("[[sim:401]]"))
    assert status == 401
    assert json.loads(raw)["error"]["code"] == "invalid_api_key"


async def test_drop_closes_the_connection(client: Client) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post(chat("[[sim:drop]]"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post(chat("[[sim:dropx1]]"))
    assert (await client.post(chat("[[sim:dropx1]]")))[0] == 200
    assert client.sim.stats.dropped == 2


async def test_malformed_and_empty_bodies(client: Client) -> None:
    status, headers, raw = await client.post(chat("[[sim:malformed]]"))
    assert (status, headers["Content-Type"]) == (200, "application/json")
    with pytest.raises(ValueError):
        json.loads(raw)
    assert (await client.post(chat("[[sim:malformedx1]]")))[2] == raw
    assert (await client.post(chat("[[sim:malformedx1]]")))[0] == 200
    status, _, raw = await client.post(chat("[[sim:empty]]"))
    assert (status, raw) == (200, b"")


async def test_hang_until_the_client_gives_up(client: Client) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await client.post(chat("[[sim:hang]]"), timeout=aiohttp.ClientTimeout(total=0.2))
    for _ in range(50):  # the server notices the closed connection and ends the handler
        if client.sim.stats.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert client.sim.stats.in_flight == 0
    assert client.sim.stats.hung == 1


async def test_hanging_request_does_not_block_shutdown() -> None:
    async with aiohttp.ClientSession() as session:
        async with running() as sim:
            pending = asyncio.create_task(session.post(sim.url + "/v1/chat/completions", json=chat("[[sim:hang]]")))
            while sim.stats.in_flight == 0:
                await asyncio.sleep(0.01)
            started = time.monotonic()
        assert time.monotonic() - started < 0.5
        with pytest.raises(aiohttp.ClientConnectionError):
            await pending


async def test_directive_fails_only_its_row_under_concurrency(client: Client) -> None:
    rows = [chat(f"row {i}" + (" [[sim:422]]" if i == 13 else "") + " [[sim:sleep=20]]") for i in range(30)]
    statuses = await asyncio.gather(*(client.post(row) for row in rows))
    assert [s for s, _, _ in statuses] == [422 if i == 13 else 200 for i in range(30)]
    assert client.sim.stats.max_in_flight > 1


@with_opts(latency_ms=100)
async def test_latency(client: Client) -> None:
    started = time.monotonic()
    await client.post(chat("hi"))
    assert time.monotonic() - started >= 0.1


@with_opts(require_key="sk-good", echo_key_in_error=True)
async def test_required_key(client: Client) -> None:
    status, _, raw = await client.post(chat("hi"))
    assert status == 401
    status, _, raw = await client.post(chat("hi"), headers={"Authorization": "Bearer sk-wrong"})
    assert status == 401
    error = json.loads(raw)["error"]
    assert error == {"code": "invalid_api_key", "message": error["message"], "type": "authentication_error"}
    assert "sk-wrong" in error["message"]
    assert (await client.post(chat("hi"), headers={"Authorization": "Bearer sk-good"}))[0] == 200
    assert client.sim.stats.auth_headers_seen == 2


@with_opts(require_key="sk-good")
async def test_required_key_not_echoed_by_default(client: Client) -> None:
    _, _, raw = await client.post(chat("hi"), headers={"Authorization": "Bearer sk-wrong"})
    assert b"sk-wrong" not in raw


@with_opts(rpm=5, window_s=1.0, retry_after_ms=True)
async def test_rpm_sliding_window(client: Client) -> None:
    remaining = []
    for i in range(5):
        status, headers, _ = await client.post(chat(f"q{i}"))
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "5"
        remaining.append(headers["x-ratelimit-remaining-requests"])
    assert remaining == ["4", "3", "2", "1", "0"]
    status, headers, raw = await client.post(chat("q5"))
    assert status == 429
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    assert headers["Retry-After"] == "1"
    assert 0 < int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("ms")
    assert "x-ratelimit-limit-tokens" not in headers
    # Rejected requests do not count: once the first five leave the window, five more fit.
    await asyncio.sleep(1.05)
    assert [(await client.post(chat(f"r{i}")))[0] for i in range(6)] == [200] * 5 + [429]


@with_opts(tpm=50, window_s=1.0, retry_after=None)
async def test_tpm_window_without_retry_after(client: Client) -> None:
    status, headers, raw = await client.post(chat("x" * 40))
    assert status == 200
    used = json.loads(raw)["usage"]["total_tokens"]
    assert headers["x-ratelimit-remaining-tokens"] == str(50 - used)
    status, headers, _ = await client.post(chat("x" * 40))
    assert status == 429
    assert "Retry-After" not in headers
    assert headers["x-ratelimit-limit-tokens"] == "50"
    assert headers["x-ratelimit-reset-tokens"] != "0s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.02, "20ms"),
        (0.0001, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (51, "51s"),
        (360, "6m0s"),
        (61.25, "1m1.25s"),
        (3661, "1h1m1s"),
    ],
)
def test_format_reset(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


@with_opts(rate_500=1.0)
async def test_rate_injection_spares_directive_rows(client: Client) -> None:
    assert (await client.post(chat("plain")))[0] == 500
    assert (await client.post(chat("[[sim:sleep=1]]")))[0] == 200


async def test_rate_injection_is_seeded() -> None:
    async def statuses() -> list[int]:
        async with running(SimOptions(rate_429=0.3, rate_503=0.3, seed=7)) as sim, aiohttp.ClientSession() as s:
            client = Client(sim, s)
            return [(await client.post(chat(f"q{i}")))[0] for i in range(30)]

    first = await statuses()
    assert first == await statuses()
    assert {200, 429, 503} == set(first)


async def test_stats_endpoint_and_reset(client: Client) -> None:
    await client.post(chat("hi"), headers={"Authorization": "Bearer k"})
    await client.post(chat("[[sim:500]]"))
    async with client.session.get(client.sim.url + "/stats") as r:
        stats = await r.json()
    assert stats == client.sim.stats.snapshot()
    assert stats["requests"] == 2
    assert stats["by_status"] == {"200": 1, "500": 1}
    assert stats["auth_headers_seen"] == 1
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] == 1
    async with client.session.post(client.sim.url + "/stats/reset") as r:
        assert r.status == 200
    assert client.sim.stats.snapshot()["requests"] == 0
    assert client.sim.stats.by_status == {}


async def test_reset_also_restarts_scripts(client: Client) -> None:
    assert (await client.post(chat("[[sim:500x1]]")))[0] == 500
    async with client.session.post(client.sim.url + "/reset"):
        pass
    assert (await client.post(chat("[[sim:500x1]]")))[0] == 500


@with_opts(redirect_to="http://elsewhere.example/v1/chat/completions")
async def test_redirect(client: Client) -> None:
    status, headers, _ = await client.post(chat("hi"), allow_redirects=False)
    assert status == 307
    assert headers["Location"] == "http://elsewhere.example/v1/chat/completions"


def test_create_app_exposes_stats() -> None:
    app = create_app(SimOptions())
    assert app[STATS_KEY].snapshot()["requests"] == 0


def test_in_thread_serves_synchronous_callers() -> None:
    with in_thread(SimOptions(latency_ms=1)) as sim:
        assert sim.url == f"http://127.0.0.1:{sim.port}"
        request = urllib.request.Request(
            sim.url + "/v1/chat/completions",
            data=json.dumps(chat("sync")).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert json.load(r)["choices"][0]["message"]["content"].startswith("sim reply to: sync")
        assert sim.stats.by_status == {200: 1}
    with pytest.raises(OSError):
        urllib.request.urlopen(sim.url + "/health", timeout=1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_signal(signum: int) -> None:
    code = (
        "from inferbatch.simulator import serve, SimOptions\n"
        "serve(SimOptions(), port=0, ready=lambda url: print(url, flush=True))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            assert json.load(r) == {"status": "ok"}
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert stderr == ""


# --- Structured answers (issue 14, SPEC §8.42-8.44) ------------------------------------------------------------

TICKET = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "feature", "other"]},
        "urgency": {"type": "string", "enum": ["low", "medium", "high"]},
        "summary": {"type": "string", "minLength": 10},
        "customer_id": {"type": "integer", "minimum": 1},
        "refund": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "escalate": {"type": "boolean"},
    },
    "required": ["category", "urgency", "summary", "customer_id", "refund", "escalate"],
    "additionalProperties": False,
}
TAGS = {"type": "array", "items": {"type": "string", "minLength": 2}, "minItems": 3}
NESTED = {
    "type": "object",
    "properties": {
        "order": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "lines": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                        "required": ["sku", "qty"],
                    },
                },
            },
            "required": ["id", "lines"],
        },
        "note": {"type": "string"},
    },
    "required": ["order"],
}
DEFS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "role": {"$ref": "#/$defs/role"}},
            "required": ["name", "role"],
        },
        "role": {"enum": ["owner", "viewer"]},
    },
    "type": "object",
    "properties": {
        "owner": {"$ref": "#/$defs/person"},
        "members": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 2},
    },
    "required": ["owner", "members"],
}
DEFINITIONS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "definitions": {"score": {"type": "number", "minimum": 0.5, "maximum": 0.9}},
    "type": "object",
    "properties": {"score": {"$ref": "#/definitions/score"}, "label": {"const": "final"}},
}
JUDGE = {
    "type": "object",
    "properties": {
        "pass": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    },
    "required": ["pass", "score", "reason"],
    "additionalProperties": False,
}
SCHEMAS = {
    "ticket": TICKET,
    "tags": TAGS,
    "nested": NESTED,
    "defs": DEFS,
    "definitions": DEFINITIONS,
    "judge": JUDGE,
    "any_of": {"anyOf": [{"type": "integer", "exclusiveMinimum": 3}, {"type": "string"}]},
    "one_of_objects": {"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}]},
    "all_of": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"required": ["b"], "properties": {"b": {"type": "string", "minLength": 4}}},
        ]
    },
    "type_list": {"type": ["null", "string"], "minLength": 2},
    "unique": {"type": "array", "items": {"enum": ["r", "g", "b"]}, "minItems": 3, "uniqueItems": True},
    "integer_bounds": {"type": "integer", "minimum": 2.5, "maximum": 10},
    "negative": {"type": "number", "maximum": -3.5},
}


def validate(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema).validate(instance)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_minimal_instance_is_valid(name: str) -> None:
    schema = SCHEMAS[name]
    instance = minimal_instance(schema)
    validate(instance, schema)
    assert minimal_instance(schema) == instance  # deterministic


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_mismatching_instance_fails_validation(name: str) -> None:
    schema = SCHEMAS[name]
    with pytest.raises(jsonschema.ValidationError):
        validate(mismatching_instance(schema), schema)


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({}, {}),
        ({"type": "no-such-type"}, {}),
        (True, {}),
        ({"type": "string"}, "x"),
        ({"type": "string", "minLength": 3}, "xxx"),
        ({"type": "string", "format": "date"}, "2000-01-01"),
        ({"type": "integer"}, 0),
        ({"type": "integer", "exclusiveMinimum": 0}, 1),
        ({"type": "number", "minimum": 2.5}, 3),
        ({"type": "number", "minimum": 0, "maximum": 1}, 0),
        ({"type": "boolean"}, False),
        ({"type": "null"}, None),
        ({"type": ["null", "integer"]}, 0),
        ({"enum": ["b", "a"]}, "b"),
        ({"const": {"k": 1}}, {"k": 1}),
        ({"type": "array", "items": {"type": "integer"}}, []),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 2}, [0, 0]),
        ({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}, {"a": "x", "b": 0}),
        (
            {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["b"]},
            {"b": 0},
        ),
        ({"anyOf": [{"type": "boolean"}, {"type": "string"}]}, False),
    ],
)
def test_minimal_instance_values(schema: Any, instance: Any) -> None:
    assert minimal_instance(schema) == instance


def test_minimal_ticket_and_its_mismatch() -> None:
    assert minimal_instance(TICKET) == {
        "category": "billing",
        "urgency": "low",
        "summary": "x" * 10,
        "customer_id": 1,
        "refund": 1,
        "escalate": False,
    }
    # a model's typical slip: one required field left out
    assert mismatching_instance(TICKET) == {k: v for k, v in minimal_instance(TICKET).items() if k != "category"}
    assert mismatching_instance({"enum": ["low", "high"]}) not in ("low", "high")
    assert mismatching_instance({}) == "schema-miss"


def structured(text: str, schema: Any = TICKET, **params: Any) -> dict[str, Any]:
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    return chat(text, response_format=response_format, **params)


async def content_of(client: Client, body: Any) -> str:
    status, _, raw = await client.post(body)
    assert status == 200, raw
    return str(json.loads(raw)["choices"][0]["message"]["content"])


async def test_json_schema_is_answered_with_a_minimal_instance(client: Client) -> None:
    text = await content_of(client, structured("Classify: my invoice is wrong"))
    assert text == json.dumps(minimal_instance(TICKET), separators=(",", ":"))
    validate(json.loads(text), TICKET)
    assert client.sim.stats.structured_requests == 1


async def test_json_object_answers_the_usual_reply_or_a_schema_instance(client: Client) -> None:
    plain = await content_of(client, chat("hi"))
    assert json.loads(await content_of(client, chat("hi", response_format={"type": "json_object"}))) == {
        "answer": plain
    }
    llama = {"type": "json_object", "schema": NESTED}
    validate(json.loads(await content_of(client, chat("hi", response_format=llama))), NESTED)
    assert await content_of(client, chat("hi", response_format={"type": "text"})) == plain
    assert client.sim.stats.structured_requests == 3


async def test_schema_miss_always_fails_validation(client: Client) -> None:
    for _ in range(3):
        text = await content_of(client, structured("row [[sim:schema-miss]]"))
        with pytest.raises(jsonschema.ValidationError):
            validate(json.loads(text), TICKET)
    enum_schema = {"type": "object", "properties": {"u": {"enum": ["low", "high"]}}}
    text = await content_of(client, structured("row [[sim:schema-miss]]", schema=enum_schema))
    with pytest.raises(jsonschema.ValidationError):
        validate(json.loads(text), enum_schema)
    # without a response_format the directive changes nothing
    assert (await content_of(client, chat("row [[sim:schema-miss]]"))).startswith("sim reply to: row")


async def test_counted_schema_miss_then_a_match_per_prompt(client: Client) -> None:
    def ok(text: str) -> bool:
        try:
            validate(json.loads(text), TICKET)
        except jsonschema.ValidationError:
            return False
        return True

    results = [ok(await content_of(client, structured("row 1 [[sim:schema-missx2]]"))) for _ in range(4)]
    assert results == [False, False, True, True]
    assert not ok(await content_of(client, structured("row 2 [[sim:schema-missx2]]")))  # another prompt: afresh
    # a re-ask that appends the bad answer and a correction is still that prompt
    body = structured("row 3 [[sim:schema-missx1]]")
    bad = await content_of(client, body)
    assert not ok(bad)
    body["messages"] += [{"role": "assistant", "content": bad}, {"role": "user", "content": "Fix the JSON."}]
    assert ok(await content_of(client, body))
    assert client.sim.stats.structured_requests == 7
    # a fault before the answer does not use up a miss
    assert (await client.post(structured("row 4 [[sim:500x1]] [[sim:schema-missx1]]")))[0] == 500
    assert not ok(await content_of(client, structured("row 4 [[sim:500x1]] [[sim:schema-missx1]]")))
    # /reset forgets the counts
    async with client.session.post(client.sim.url + "/reset"):
        pass
    assert not ok(await content_of(client, structured("row 1 [[sim:schema-missx2]]")))


async def test_counted_schema_miss_under_concurrency(client: Client) -> None:
    body = structured("row [[sim:schema-missx1]] [[sim:sleep=50]]")
    texts = await asyncio.gather(*(content_of(client, body) for _ in range(4)))
    assert sorted("category" in json.loads(text) for text in texts) == [False, True, True, True]


async def test_fenced_and_not_json(client: Client) -> None:
    text = await content_of(client, structured("row [[sim:fenced]]"))
    assert text.startswith("```json\n") and text.endswith("\n```")
    validate(json.loads(text.removeprefix("```json\n").removesuffix("\n```")), TICKET)
    text = await content_of(client, structured("row [[sim:not-json]]"))
    assert text.startswith("sim reply to: row")
    with pytest.raises(ValueError):
        json.loads(text)
    # without a response_format: plain replies, no 400
    assert (await content_of(client, chat("row [[sim:fenced]]"))).startswith("sim reply to:")


async def test_judge_schema_passes_unless_judge_fail(client: Client) -> None:
    verdict = json.loads(await content_of(client, structured("Grade this answer: Paris.", schema=JUDGE)))
    assert (verdict["pass"], verdict["score"]) == (True, 1.0)
    assert isinstance(verdict["reason"], str) and verdict["reason"]
    validate(verdict, JUDGE)
    body = structured("Grade this answer: sim reply to: x [[sim:judge-fail]]", schema=JUDGE)
    body["messages"].insert(0, {"role": "system", "content": "You are a strict grader."})
    verdict = json.loads(await content_of(client, body))
    assert (verdict["pass"], verdict["score"]) == (False, 0.0)
    validate(verdict, JUDGE)
    # the directive may sit in any message, e.g. the answer quoted in a system message
    body = structured("Grade it.", schema=JUDGE)
    body["messages"].insert(0, {"role": "system", "content": "Answer: [[sim:judge-fail]]"})
    assert json.loads(await content_of(client, body))["pass"] is False
    # a row carrying the directive is answered normally
    assert (await content_of(client, chat("row [[sim:judge-fail]]"))).startswith("sim reply to:")


@with_opts(reject_response_format=True)
async def test_reject_response_format(client: Client) -> None:
    status, _, raw = await client.post(structured("hi"))
    assert status == 400
    assert json.loads(raw) == {
        "error": {
            "code": "unsupported_parameter",
            "message": "Unsupported parameter: 'response_format' is not supported with this model.",
            "type": "invalid_request_error",
        }
    }
    assert (await client.post(chat("hi", response_format={"type": "json_object"})))[0] == 400
    assert (await client.post(chat("hi")))[0] == 200
    assert client.sim.stats.by_status == {400: 2, 200: 1}
    assert client.sim.stats.structured_requests == 2


async def test_usage_details(client: Client) -> None:
    _, _, raw = await client.post(chat("hi"))
    usage = json.loads(raw)["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}
    _, _, raw = await client.post(chat("hi [[sim:cached=1000]] [[sim:reasoning=500]]"))
    usage = json.loads(raw)["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 1000}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 500}
    assert usage["prompt_tokens"] == 1000  # raised to hold the cached tokens
    assert usage["completion_tokens"] == 500
    assert usage["total_tokens"] == 1500
    _, _, raw = await client.post(chat("x" * 400 + " [[sim:cached=2]]"))
    usage = json.loads(raw)["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 2
    assert usage["prompt_tokens"] > 100
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_structured_requests_in_stats_snapshot(client: Client) -> None:
    await client.post(structured("a"))
    await client.post(chat("b"))
    async with client.session.get(client.sim.url + "/stats") as r:
        assert (await r.json())["structured_requests"] == 1
    async with client.session.post(client.sim.url + "/stats/reset"):
        pass
    assert client.sim.stats.structured_requests == 0
