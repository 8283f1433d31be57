"""factory.model through the real anthropic SDK, against the scripted Messages API on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from modelserver import ScriptedModel, delay, drop, error, reply, text, tool_use

from factory.model import PRICES, Model, ModelError, Usage, cost, price

KEY = "sk-ant-test-5f1c0ffee0ddba11"
NAME = "claude-sonnet-4-6"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The developer's ANTHROPIC_* settings must not leak into a test (nor send it elsewhere)."""
    for name in list(os.environ):
        if name.startswith("ANTHROPIC_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_thread_left():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while (extra := [t for t in threading.enumerate() if t not in before and t.is_alive()]) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not extra, f"threads left running: {extra}"


@pytest.fixture
def api():
    with ScriptedModel() as server:
        yield server
        assert not server.errors, f"a script step raised: {server.errors}"


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_model(api, sleeps):
    models = []

    def make(**kw):
        kw.setdefault("api_key", KEY)
        kw.setdefault("base_url", api.base_url)
        kw.setdefault("sleep", sleeps.append)
        m = Model(NAME, 256, **kw)
        models.append(m)
        return m

    yield make
    for m in models:
        m.close()


# -- replies ------------------------------------------------------------------------------


def test_plain_text_reply(api, make_model):
    api.add(text("hello, world"))
    r = make_model().send(system="be brief", messages=HI)
    assert r.content == [{"type": "text", "text": "hello, world"}]
    assert r.stop_reason == "end_turn"
    assert r.retries == 0
    assert r.model == NAME and r.id.startswith("msg_")
    sent = api.requests[0]
    assert (sent["model"], sent["max_tokens"], sent["system"], sent["messages"]) == (NAME, 256, "be brief", HI)
    assert "tools" not in sent


def test_tool_use_reply_is_plain_dicts_that_the_api_accepts_back(api, make_model):
    tools = [{"type": "bash_20250124", "name": "bash"},
             {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
             {"name": "finish", "description": "end the task", "input_schema": {"type": "object", "properties": {}}}]
    api.add(reply(text("I'll look"), tool_use("bash", {"command": "ls -la", "restart": False}, id="toolu_01")),
            lambda body: text("saw " + body["messages"][-1]["content"][0]["content"]))
    model = make_model()
    r = model.send(messages=HI, tools=tools)
    assert r.stop_reason == "tool_use"
    assert r.content == [{"type": "text", "text": "I'll look"},
                         {"type": "tool_use", "id": "toolu_01", "name": "bash",
                          "input": {"command": "ls -la", "restart": False}}]
    assert all(type(b) is dict for b in r.content)
    json.dumps(r.content)  # plain JSON, ready for a transcript

    messages = HI + [{"role": "assistant", "content": r.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                                   "content": "README"}]}]
    r2 = model.send(messages=messages, tools=tools)
    assert r2.content == [{"type": "text", "text": "saw README"}]
    assert api.requests[1]["messages"][1]["content"] == r.content


def test_replies_are_streamed_and_reassembled():
    long_text = "a long answer " * 50
    big_input = {"command": "printf '%s' " + "x" * 300, "nested": {"list": [1, 2, 3]}}
    with ScriptedModel([reply(text(long_text), tool_use("bash", big_input, id="toolu_9"))], chunk_chars=3) as api, \
            Model(NAME, 256, api_key=KEY, base_url=api.base_url) as model:
        r = model.send(messages=HI)
        assert api.requests[0]["stream"] is True
        assert r.content == [{"type": "text", "text": long_text},
                             {"type": "tool_use", "id": "toolu_9", "name": "bash", "input": big_input}]
        assert r.usage.to_dict() == api.usages[0]  # the usage of message_start, updated by message_delta


def test_server_also_answers_the_sdk_plain_and_raw_stream_calls(api):
    import anthropic

    api.add(reply(text("one"), tool_use("bash", {"command": "ls"}, id="toolu_a")), text("two"))
    with anthropic.Anthropic(api_key=KEY, base_url=api.base_url, max_retries=0) as client:
        m = client.messages.create(model=NAME, max_tokens=10, messages=HI)
        assert [b.type for b in m.content] == ["text", "tool_use"]
        assert m.content[1].input == {"command": "ls"} and m.stop_reason == "tool_use"
        events = list(client.messages.create(model=NAME, max_tokens=10, messages=HI, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "two"
    assert events[-2].delta.stop_reason == "end_turn"
    assert "stream" not in api.requests[0] and api.requests[1]["stream"] is True


# -- usage, cost and the prompt cache ---------------------------------------------------------


def test_usage_and_cost(api, make_model):
    api.add(text("x" * 400))
    r = make_model().send(messages=[{"role": "user", "content": "y" * 4000}])
    assert r.usage == Usage(**api.usages[0])
    assert r.usage.output_tokens >= 100 and r.usage.input_tokens >= 1000
    assert r.usage.cache_creation_input_tokens == r.usage.cache_read_input_tokens == 0
    assert cost(NAME, r.usage) == pytest.approx((r.usage.input_tokens * 3 + r.usage.output_tokens * 15) / 1e6)


def test_usage_arithmetic():
    a, b = Usage(1, 2, 3, 4), Usage(10, 20, 30, 40)
    assert a + b == Usage(11, 22, 33, 44) == a.add(b)
    assert (a + b).total_tokens == 110
    assert a.to_dict() == {"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 3,
                           "cache_read_input_tokens": 4}
    m = 1_000_000
    assert cost("claude-sonnet-4-5", Usage(m, m, m, m)) == pytest.approx(3 + 15 + 3.75 + 0.3)
    assert cost("claude-opus-4-5-20251101", Usage(m, m, 0, 0)) == pytest.approx(30)


@pytest.mark.parametrize("name, expected", [
    ("claude-sonnet-4-5", (3, 15)), ("claude-sonnet-4-5-20250929", (3, 15)), ("claude-sonnet-4-20250514", (3, 15)),
    ("claude-opus-4-5", (5, 25)), ("claude-opus-4-6", (5, 25)), ("claude-opus-4-1-20250805", (15, 75)),
    ("claude-opus-4-20250514", (15, 75)), ("claude-opus-4-0", (15, 75)), ("claude-haiku-4-5-20251001", (1, 5)),
    ("some-future-model", PRICES["claude-sonnet-4"]),
])
def test_price_by_model_family(name, expected):
    assert price(name) == expected


def cached_system(s):
    return [{"type": "text", "text": s, "cache_control": {"type": "ephemeral"}}]


def test_same_system_prompt_is_read_from_the_cache_the_second_time(api, make_model):
    system = cached_system("You are a careful engineer. " * 40)
    api.add(text("a"), text("b"))
    model = make_model()
    first = model.send(system=system, messages=HI).usage
    second = model.send(system=system, messages=[{"role": "user", "content": "something else"}]).usage
    assert first.cache_creation_input_tokens > 250 and first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0


def test_growing_conversation_reads_the_previous_turn_from_the_cache(api, make_model):
    system = cached_system("principles " * 100)
    api.add(text("turn one"), text("turn two"))
    model = make_model()
    mark = {"cache_control": {"type": "ephemeral"}}
    turn1 = [{"role": "user", "content": [{"type": "text", "text": "task " * 50, **mark}]}]
    u1 = model.send(system=system, messages=turn1).usage
    turn2 = [{"role": "user", "content": [{"type": "text", "text": "task " * 50}]},
             {"role": "assistant", "content": [{"type": "text", "text": "turn one"}]},
             {"role": "user", "content": [{"type": "text", "text": "go on", **mark}]}]
    u2 = model.send(system=system, messages=turn2).usage
    assert u1.cache_read_input_tokens == 0 and u1.cache_creation_input_tokens > 0
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens  # system + the whole first turn
    assert 0 < u2.cache_creation_input_tokens < 40  # only the new turn (two small messages) is written
    assert u2.input_tokens == 0  # nothing after the last breakpoint


def test_changed_system_prompt_gets_no_cache_read(api, make_model):
    api.add(text("a"), text("b"))
    model = make_model()
    model.send(system=cached_system("rules, version one " * 30), messages=HI)
    u = model.send(system=cached_system("rules, version two " * 30), messages=HI).usage
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens > 0


# -- retries ------------------------------------------------------------------------------


def test_rate_limit_then_success_is_retried_once_honouring_retry_after(api, make_model, sleeps):
    api.add(error(429, retry_after=2), text("ok"))
    r = make_model().send(messages=HI)
    assert r.content == [{"type": "text", "text": "ok"}]
    assert r.retries == 1 and len(api.requests) == 2
    assert sleeps == [2.0]


def test_overloaded_twice_then_success_backs_off_exponentially(api, make_model, sleeps):
    api.add(error(529), error(529), text("ok"))
    r = make_model(backoff_base=0.5).send(messages=HI)
    assert r.retries == 2 and r.stop_reason == "end_turn"
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


@pytest.mark.parametrize("failure", [
    drop(),  # closed before any answer
    drop(partial=True),  # closed halfway through the stream
    drop(partial=True, clean=True),  # a well-formed stream that stops before message_stop
    error(529, in_stream=True),  # an overloaded_error event inside a 200 stream
    error(500), error(503),
], ids=["dropped", "dropped-mid-stream", "stream-ended-early", "overloaded-mid-stream", "500", "503"])
def test_transient_failure_then_success_is_retried(api, make_model, sleeps, failure):
    api.add(failure, text("ok"))
    r = make_model().send(messages=HI)
    assert r.content == [{"type": "text", "text": "ok"}]
    assert r.retries == 1 and len(api.requests) == 2 and len(sleeps) == 1


def test_tool_input_that_is_not_json_is_asked_again(api, make_model, sleeps):
    from modelserver import broken_tool_use
    api.add(broken_tool_use("bash", '{"command": ls -la}'), text("ok"))
    r = make_model().send(messages=HI)
    assert r.content == [{"type": "text", "text": "ok"}]
    assert r.retries == 1 and len(api.requests) == 2


def test_persistent_overload_gives_up_after_max_retries_without_sleeping(api, make_model, sleeps):
    api.add(*[error(529)] * 10)
    start = time.monotonic()
    with pytest.raises(ModelError) as e:
        make_model(max_retries=4).send(messages=HI)
    assert time.monotonic() - start < 2
    assert e.value.kind == "overloaded" and e.value.status == 529 and e.value.retries == 4
    assert len(api.requests) == 5 and len(sleeps) == 4
    assert "after 4 retries" in str(e.value) and "overloaded" in str(e.value)
    assert sleeps == sorted(sleeps)  # exponential: each wait at least the previous one
    assert all(0.5 * 2 ** n / 2 <= s <= 0.5 * 2 ** n for n, s in enumerate(sleeps))


def test_persistent_dropped_connection_is_a_connection_error(api, make_model, sleeps):
    api.add(*[drop()] * 3)
    with pytest.raises(ModelError) as e:
        make_model(max_retries=2).send(messages=HI)
    assert e.value.kind == "connection" and e.value.retries == 2 and len(api.requests) == 3


def test_bad_request_is_not_retried(api, make_model, sleeps):
    api.add(text("never sent"))
    two_users = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ModelError) as e:
        make_model().send(messages=two_users)
    assert e.value.kind == "bad_request" and e.value.status == 400 and e.value.retries == 0
    assert "roles must alternate" in str(e.value)
    assert len(api.requests) == 1 and sleeps == []


def test_auth_failure_is_not_retried(api, make_model, sleeps):
    api.add(error(401, "invalid x-api-key"), text("never sent"))
    with pytest.raises(ModelError) as e:
        make_model().send(messages=HI)
    assert e.value.kind == "auth" and len(api.requests) == 1 and sleeps == []


def test_exhausted_script_fails_loudly_without_retrying(api, make_model, sleeps):
    with pytest.raises(ModelError) as e:
        make_model().send(messages=HI)
    assert "script exhausted" in str(e.value) and len(api.requests) == 1 and sleeps == []


# -- the deadline -------------------------------------------------------------------------


def test_passed_deadline_sends_nothing(api, make_model):
    api.add(text("never sent"))
    with pytest.raises(ModelError) as e:
        make_model(deadline=time.monotonic() - 1).send(messages=HI)
    assert e.value.kind == "deadline" and api.requests == []


def test_retry_that_would_pass_the_deadline_is_not_attempted(api, make_model, sleeps):
    api.add(error(429, retry_after=30), text("never sent"))
    with pytest.raises(ModelError) as e:
        make_model(deadline=time.monotonic() + 5).send(messages=HI)
    assert e.value.kind == "deadline" and "rate_limit_error" in str(e.value)
    assert len(api.requests) == 1 and sleeps == []


def test_slow_answer_past_the_deadline_is_a_deadline_error(api, make_model):
    api.add(delay(5, text("too late")))
    start = time.monotonic()
    with pytest.raises(ModelError) as e:
        make_model(deadline=time.monotonic() + 0.3).send(messages=HI)
    assert e.value.kind == "deadline" and time.monotonic() - start < 2


# -- the key ------------------------------------------------------------------------------


def test_missing_api_key_fails_before_any_request(api):
    with pytest.raises(ModelError) as e:
        Model(NAME, 256, base_url=api.base_url)
    assert e.value.kind == "auth" and "ANTHROPIC_API_KEY" in str(e.value)
    assert api.requests == []


def test_key_and_base_url_from_the_environment(api, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
    api.add(text("ok"))
    with Model(NAME, 256) as model:
        assert model.send(messages=HI).content == [{"type": "text", "text": "ok"}]
    assert api.api_keys == [KEY]


def test_key_is_sent_to_the_server_and_never_shown_in_errors(api, make_model):
    # A server that echoes the key back must not get it into our error message.
    api.add(error(401, f"invalid key {KEY}"), *[error(529, f"overloaded for {KEY}")] * 3)
    model = make_model(max_retries=2)
    for _ in range(2):
        with pytest.raises(ModelError) as e:
            model.send(messages=HI)
        assert KEY not in str(e.value) and KEY not in repr(e.value)
        assert "[REDACTED]" in str(e.value)
        assert e.value.__cause__ is None and e.value.__suppress_context__  # the SDK's error does not ride along
    assert api.api_keys == [KEY] * 4
    # The installed SDK (2.x) sends an API key as a Bearer token, not as x-api-key.
    assert {r.auth for r in api.requests} <= {"x-api-key", "bearer"}


# -- the server's own checks ------------------------------------------------------------------


def raw_post(api, body, headers):
    req = urllib.request.Request(api.base_url + "/v1/messages", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_requires_a_key_and_accepts_x_api_key(api):
    api.add(text("ok"))
    body = {"model": NAME, "max_tokens": 5, "messages": HI}
    status, answer = raw_post(api, body, {"anthropic-version": "2023-06-01"})
    assert status == 401 and answer["error"]["type"] == "authentication_error"
    status, answer = raw_post(api, body, {"anthropic-version": "2023-06-01", "x-api-key": "k-1"})
    assert status == 200 and answer["content"] == [{"type": "text", "text": "ok"}]
    assert api.api_keys == [None, "k-1"] and api.requests[1].auth == "x-api-key"


@pytest.mark.parametrize("body, message", [
    ({"max_tokens": 5, "messages": HI}, "model: Field required"),
    ({"model": NAME, "messages": HI}, "max_tokens: Field required"),
    ({"model": NAME, "max_tokens": 5}, "messages: Field required"),
    ({"model": NAME, "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]}, "first message"),
    ({"model": NAME, "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}]},
        {"role": "user", "content": "no result"}]}, "without `tool_result`"),
    ({"model": NAME, "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}]}]},
     "unexpected `tool_use_id`"),
    ({"model": NAME, "max_tokens": 5, "messages": HI, "tools": [{"name": "t"}]}, "input_schema"),
    ({"model": NAME, "max_tokens": 5, "messages": HI, "tools": [{"type": "bash_20250124", "name": "shell"}]},
     "'bash'"),
])
def test_server_rejects_what_the_api_rejects(api, body, message):
    status, answer = raw_post(api, body, {"anthropic-version": "2023-06-01", "x-api-key": "k"})
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    assert message in answer["error"]["message"]


# -- cost of importing ----------------------------------------------------------------------


def test_importing_the_module_does_not_import_the_sdk():
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
    code = "import sys, factory.model; print('anthropic' in sys.modules, 'httpx2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=lib))
    assert out.stdout.split() == ["False", "False"], out.stderr
