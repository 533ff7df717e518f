"""`kvstore proxy` against a real kvstore server and a real (stub) engine over loopback HTTP:
forwarding unchanged and chunk by chunk, hints from OpenAI and Anthropic traffic, the engine tag,
retention, warm requests, and what happens when kvstore, the engine or the input is bad."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import ThreadedServer, free_port, make_settings, wait_until

from kvstore.bench.stub_upstream import AppThread, StubUpstream
from kvstore.kvctl import main as kvctl
from kvstore.proxy import identify
from kvstore.proxy.answers import CHAT, MESSAGES, EventStream, JsonAnswer, Outcome
from kvstore.proxy.app import PROXY, ProxyConfig, build_app
from kvstore.proxy.process import ProxyProcess
from kvstore.proxy.tracker import LastRequest, Tracker
from kvstore.server.process import ServerProcess

TOOLS = [{"type": "function", "function": {"name": "run_tests", "parameters": {"type": "object"}}}]
ANTHROPIC_TOOLS = [{"name": "run_tests", "input_schema": {"type": "object"}}]


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def chat(content: str = "fix the tests", **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "tools": TOOLS, **extra}


def tool_result(**extra: Any) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": "fix the tests"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "run_tests"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "2 passed"},
    ]
    return {"model": "m", "messages": messages, "tools": TOOLS, **extra}


# ---------------------------------------------------------------- the acceptance check, real processes


def listed_sessions(address: str, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    assert kvctl(["--address", address, "--json", "sessions"]) == 0
    return {s["session"]: s for s in json.loads(capsys.readouterr().out)["sessions"]}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_tool_call_in_the_traffic_is_a_tool_call_in_kvstore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stream: bool
) -> None:
    stub = StubUpstream()
    engine = AppThread(stub.app())
    try:
        with (
            ServerProcess(tmp_path / "data", ["--policy", "agent"]) as server,
            ProxyProcess(engine.url, server.address) as proxy,
        ):
            status, answer = post(
                f"{proxy.url}/v1/chat/completions", chat(stream=stream), {"x-session-id": "S"}
            )
            assert status == 200 and b"run_tests" in answer
            assert wait_until(lambda: "S" in listed_sessions(server.address, capsys)), proxy.log()
            wait_until(lambda: listed_sessions(server.address, capsys)["S"]["tool_name"] == "run_tests")
            listed = listed_sessions(server.address, capsys)["S"]
            assert listed["state"] == "in_tool" and listed["tool_name"] == "run_tests"
            # the next request carries the tool's result: the call is over
            status, _ = post(
                f"{proxy.url}/v1/chat/completions", tool_result(stream=stream), {"x-session-id": "S"}
            )
            assert status == 200
            wait_until(lambda: listed_sessions(server.address, capsys)["S"]["state"] != "in_tool")
            listed = listed_sessions(server.address, capsys)["S"]
            assert (
                listed["state"] == "awaiting_user" and listed["tool_name"] == ""
            )  # the answer ended the turn
        assert [r["body"]["kv_transfer_params"] for r in stub.requests] == [{"session_id": "S"}] * 2
    finally:
        engine.stop()


# ---------------------------------------------------------------- in-process proxy


class Setup:
    def __init__(
        self, server: ThreadedServer, stub: StubUpstream, engine: AppThread, proxy: AppThread
    ) -> None:
        self.server, self.stub, self.engine, self.proxy = server, stub, engine, proxy
        self.url = proxy.url

    def state(self, session: str) -> tuple[str, str] | None:
        """(state, tool) of a session in kvstore, once its hints arrived."""
        self.proxy_app[PROXY].tracker.sender.flush()
        live = self.server.store.sessions.sessions.get(session)
        return (live.state.value, live.tool.tool_name if live.tool else "") if live else None

    @property
    def proxy_app(self) -> web.Application:
        return self.proxy.runner.app


def start_proxy(upstream: str, kvstore: str, **config: Any) -> AppThread:
    return AppThread(build_app(ProxyConfig(upstream=upstream, kvstore=kvstore, namespace="t", **config)))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    server = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    stub = StubUpstream(chunks=4)
    engine = AppThread(stub.app())
    proxy = start_proxy(engine.url, server.address)
    yield Setup(server, stub, engine, proxy)
    proxy.stop()
    engine.stop()
    server.stop()


def test_answers_pass_unchanged_and_other_paths_pass_through(setup: Setup) -> None:
    for body in (chat(), chat(stream=True), tool_result(), tool_result(stream=True)):
        direct = post(f"{setup.engine.url}/v1/chat/completions", body)
        proxied = post(f"{setup.url}/v1/chat/completions", body, {"x-session-id": "S"})
        assert proxied[0] == direct[0] == 200
        # the stub numbers its ids: make them equal, then the bytes must be
        assert json_ids_removed(proxied[1]) == json_ids_removed(direct[1])
    with urllib.request.urlopen(f"{setup.url}/v1/models?limit=3", timeout=10) as reply:
        assert json.loads(reply.read())["data"][0]["id"] == "stub"
    assert setup.stub.requests[-1]["path"] == "/v1/models?limit=3"
    # headers pass on, except those about the client's own connection (RFC 9110 7.6.1)
    connection = http.client.HTTPConnection(setup.url.removeprefix("http://"), timeout=30)
    headers = {"x-custom": "kept", "connection": "x-gone, keep-alive", "x-gone": "1", "x-session-id": "S"}
    connection.request("POST", "/v1/chat/completions", json.dumps(chat()), headers)
    assert connection.getresponse().status == 200
    connection.close()
    sent = setup.stub.requests[-1]["headers"]
    assert sent["x-custom"] == "kept" and "x-gone" not in sent and sent["x-session-id"] == "S"
    assert sent["host"] == setup.engine.url.removeprefix("http://")


def json_ids_removed(raw: bytes) -> bytes:
    import re

    return re.sub(rb'"(chatcmpl|call)_?-?\d+"', b'"ID"', raw)


def test_the_session_goes_to_the_engine_in_kv_transfer_params(setup: Setup) -> None:
    body = chat()
    post(f"{setup.url}/v1/chat/completions", body, {"x-session-id": "S"})
    sent = setup.stub.requests[-1]["body"]
    assert sent.pop("kv_transfer_params") == {"session_id": "S"} and sent == body
    # the client's own kv_transfer_params are kept, with the session merged in
    post(
        f"{setup.url}/v1/chat/completions",
        chat(kv_transfer_params={"do_remote_decode": True}),
        {"x-session-id": "S"},
    )
    assert setup.stub.requests[-1]["body"]["kv_transfer_params"] == {
        "do_remote_decode": True,
        "session_id": "S",
    }
    # no session: nothing added
    post(f"{setup.url}/v1/chat/completions", chat())
    assert "kv_transfer_params" not in setup.stub.requests[-1]["body"]


def test_engine_tag_keys_or_none(setup: Setup) -> None:
    proxy = start_proxy(setup.engine.url, setup.server.address, session_keys=())
    try:
        post(f"{proxy.url}/v1/chat/completions", chat(), {"x-session-id": "S"})
        assert "kv_transfer_params" not in setup.stub.requests[-1]["body"]
        assert wait_until(lambda: setup.state("S") == ("in_tool", "run_tests"))  # hints still flow
    finally:
        proxy.stop()
    proxy = start_proxy(setup.engine.url, setup.server.address, session_keys=("lmcache.tag.session_id",))
    try:
        post(f"{proxy.url}/v1/chat/completions", chat(), {"x-session-id": "S"})
        assert setup.stub.requests[-1]["body"]["kv_transfer_params"] == {"lmcache.tag.session_id": "S"}
    finally:
        proxy.stop()


def test_streams_are_forwarded_chunk_by_chunk(setup: Setup) -> None:
    """The first chunk reaches the client while the engine still holds back the rest (a barrier)."""
    release = threading.Event()

    async def held_back(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "first"}}]}\n\n')
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", held_back)
    engine = AppThread(app)
    proxy = start_proxy(engine.url, setup.server.address)
    try:
        request = urllib.request.Request(
            f"{proxy.url}/v1/chat/completions",
            data=json.dumps(chat(stream=True)).encode(),
            headers={"content-type": "application/json", "x-session-id": "S"},
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            first = reply.readline()
            assert b"first" in first and not release.is_set()
            assert setup.state("S") == ("running", "")  # no answer yet, so no hint yet
            release.set()
            assert b"[DONE]" in reply.read()
        assert wait_until(lambda: setup.state("S") == ("awaiting_user", ""))
    finally:
        release.set()
        proxy.stop()
        engine.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_messages(setup: Setup, stream: bool) -> None:
    body = {
        "model": "claude",
        "max_tokens": 100,
        "stream": stream,
        "tools": ANTHROPIC_TOOLS,
        "metadata": {"user_id": "user_abc_account_def_session_1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
        "messages": [{"role": "user", "content": "fix the tests"}],
    }
    status, answer = post(f"{setup.url}/v1/messages", body)
    assert status == 200 and b"tool_use" in answer
    session = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert wait_until(lambda: setup.state(session) == ("in_tool", "run_tests"))
    body["messages"] += [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "run_tests", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
    ]
    assert post(f"{setup.url}/v1/messages", body, {"x-claude-code-session-id": session})[0] == 200
    assert wait_until(lambda: setup.state(session) == ("awaiting_user", ""))
    assert setup.stub.requests[-1]["body"]["kv_transfer_params"] == {"session_id": session}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_responses_and_completions(setup: Setup, stream: bool) -> None:
    tools = [{"type": "function", "name": "apply_patch", "parameters": {}}]
    body = {"model": "m", "input": "fix it", "tools": tools, "stream": stream, "prompt_cache_key": "codex-1"}
    assert post(f"{setup.url}/v1/responses", body, {"session_id": "codex-1"})[0] == 200
    assert wait_until(lambda: setup.state("codex-1") == ("in_tool", "apply_patch"))
    body["input"] = [{"type": "function_call_output", "call_id": "c", "output": "done"}]
    assert post(f"{setup.url}/v1/responses", body)[0] == 200
    assert wait_until(lambda: setup.state("codex-1") == ("awaiting_user", ""))
    completion = {"model": "m", "prompt": "once upon", "stream": stream, "user": "reader-9"}
    assert post(f"{setup.url}/v1/completions", completion)[0] == 200
    assert wait_until(lambda: setup.state("reader-9") == ("awaiting_user", ""))


def test_several_tools_at_once_are_one_call(setup: Setup) -> None:
    async def two_tools(request: web.Request) -> web.Response:
        calls = [
            {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}
            for i, name in enumerate(["grep", "run_tests", "grep"])
        ]
        message = {"role": "assistant", "tool_calls": calls}
        return web.json_response(
            {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", two_tools)
    engine = AppThread(app)
    proxy = start_proxy(engine.url, setup.server.address)
    try:
        assert post(f"{proxy.url}/v1/chat/completions", chat(), {"x-session-id": "S"})[0] == 200
        assert wait_until(lambda: setup.state("S") == ("in_tool", "grep+run_tests"))
    finally:
        proxy.stop()
        engine.stop()


def test_errors_and_cut_answers_give_no_hints(setup: Setup) -> None:
    status, answer = post(
        f"{setup.url}/v1/chat/completions", chat(), {"x-session-id": "S", "x-stub-status": "503"}
    )
    assert status == 503 and json.loads(answer)["error"]["message"] == "stub answers 503"
    assert setup.state("S") == ("running", "")  # opened by the request, no answer to learn from

    # an answer cut short by its token limit: the agent goes on, so no "awaiting user" either
    async def cut(request: web.Request) -> web.Response:
        message = {"role": "assistant", "content": "half an ans"}
        return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": "length"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", cut)
    engine = AppThread(app)
    proxy = start_proxy(engine.url, setup.server.address)
    try:
        assert post(f"{proxy.url}/v1/chat/completions", chat(), {"x-session-id": "S"})[0] == 200
        assert setup.state("S") == ("running", "")
    finally:
        proxy.stop()
        engine.stop()


def test_bad_input_is_the_engines_to_answer_and_changes_nothing(setup: Setup) -> None:
    status, answer = post(f"{setup.url}/v1/chat/completions", b"{not json", {"x-session-id": "S"})
    assert status == 400 and b"not a JSON object" in answer  # the engine's own answer
    assert setup.stub.requests[-1]["body"] is None
    status, _ = post(f"{setup.url}/v1/chat/completions", b"[1, 2]", {"x-session-id": "S"})
    assert status == 400
    assert post(f"{setup.url}/v1/chat/completions", chat(user=12), {})[0] == 200  # an odd field: no session
    assert "S" not in setup.server.store.sessions.sessions and not setup.server.store.sessions.sessions
    proxy = start_proxy(setup.engine.url, setup.server.address, max_body_bytes=1024)
    try:
        status, answer = post(f"{proxy.url}/v1/chat/completions", chat("x" * 4096), {"x-session-id": "S"})
        assert status == 413 and b"1024" in answer
    finally:
        proxy.stop()


def test_an_unreachable_engine_is_a_502(setup: Setup) -> None:
    proxy = start_proxy(f"http://127.0.0.1:{free_port()}", setup.server.address)
    try:
        status, answer = post(f"{proxy.url}/v1/chat/completions", chat(), {"x-session-id": "S"})
        assert status == 502 and "cannot reach the engine" in json.loads(answer)["error"]["message"]
        assert setup.state("S") == ("running", "")
    finally:
        proxy.stop()


def test_the_proxy_forwards_when_kvstore_is_down(setup: Setup) -> None:
    proxy = start_proxy(setup.engine.url, f"127.0.0.1:{free_port()}")
    try:
        for body in (chat(), tool_result(stream=True)):
            status, answer = post(f"{proxy.url}/v1/chat/completions", body, {"x-session-id": "S"})
            assert status == 200 and answer
        sender = proxy.runner.app[PROXY].tracker.sender
        assert sender.flush() and not sender.healthy
    finally:
        proxy.stop()


def test_an_engine_that_breaks_off_is_not_a_clean_end(setup: Setup) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "par"}}]}\n\n')
        assert request.transport is not None
        request.transport.abort()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", broken)
    engine = AppThread(app)
    proxy = start_proxy(engine.url, setup.server.address)

    async def read() -> bytes:
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"{proxy.url}/v1/chat/completions", json=chat(stream=True), headers={"x-session-id": "S"}
            ) as reply,
        ):
            return await reply.read()

    try:
        with pytest.raises(aiohttp.ClientPayloadError):
            asyncio.run(read())
        assert setup.state("S") == ("running", "")
    finally:
        proxy.stop()
        engine.stop()


# ---------------------------------------------------------------- retention and warm requests


async def test_retention_closes_the_session_after_its_ttl(setup: Setup) -> None:
    now = [0.0]
    tracker = Tracker(setup.server.address, "t", clock=lambda: now[0])
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
            }
        ]
    }
    retention = identify.retention_s(body)
    assert retention == 300.0
    conv = tracker.request("S", LastRequest(MESSAGES, "/v1/messages", body, {}), retention)
    tracker.answered(conv, Outcome(ended_turn=True))
    now[0] = 299.0
    assert await tracker.expire() == []
    now[0] = 301.0
    assert await tracker.expire() == ["S"]
    assert "S" not in setup.server.store.sessions.sessions and tracker.last_request("S") is None


def test_retention_from_what_senders_say() -> None:
    def message(*controls: dict[str, Any]) -> dict[str, Any]:
        return {
            "messages": [
                {"role": "user", "content": [{"type": "text", "cache_control": c} for c in controls]}
            ]
        }

    assert identify.retention_s({"messages": [{"role": "user", "content": "hi"}]}) is None
    assert (
        identify.retention_s(message({"type": "ephemeral", "ttl": "5m"}, {"type": "ephemeral", "ttl": "1h"}))
        == 3600
    )
    assert identify.retention_s({"system": [{"type": "text", "cache_control": {"type": "ephemeral"}}]}) == 300
    assert identify.retention_s({"tools": [{"name": "t", "cache_control": {"ttl": "1h"}}]}) == 3600
    assert identify.retention_s({"prompt_cache_retention": "24h"}) == 86400
    assert identify.retention_s({"prompt_cache_retention": "in_memory"}) == 600
    assert identify.retention_s({"prompt_cache_retention": "forever", "messages": "odd"}) is None


def test_a_warm_request_is_the_last_request_for_one_token(setup: Setup) -> None:
    warmer = setup.proxy_app[PROXY].warmer
    assert run_on(setup.proxy, warmer.warm("S")).status is None  # nothing seen yet
    body = chat(stream=True, stream_options={"include_usage": True}, max_completion_tokens=500, n=2)
    post(f"{setup.url}/v1/chat/completions", body, {"x-session-id": "S", "authorization": "Bearer k"})
    sent_before = len(setup.stub.requests)
    result = run_on(setup.proxy, warmer.warm("S"))
    assert result.status == 200 and result.session == "S"
    assert len(setup.stub.requests) == sent_before + 1
    warm = setup.stub.requests[-1]
    assert warm["headers"]["authorization"] == "Bearer k"
    expected = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    assert warm["body"] == {
        **expected,
        "max_completion_tokens": 1,
        "n": 1,
        "kv_transfer_params": {"session_id": "S"},
    }
    # an Anthropic request: max_tokens
    anthropic = {
        "model": "c",
        "max_tokens": 900,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    post(f"{setup.url}/v1/messages", anthropic, {"x-session-id": "A"})
    assert run_on(setup.proxy, warmer.warm("A")).status == 200
    assert (
        setup.stub.requests[-1]["body"]["max_tokens"] == 1 and "stream" not in setup.stub.requests[-1]["body"]
    )
    # the warm request is not the session's next request: the tool call is still on
    assert setup.state("S") == ("in_tool", "run_tests")


def run_on(thread: AppThread, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, thread.loop).result(timeout=30)


# ---------------------------------------------------------------- pieces


def test_the_session_comes_from_where_harnesses_put_it() -> None:
    claude_json = json.dumps({"device_id": "d", "account_uuid": "", "session_id": "cc-2"})
    cases: list[tuple[dict[str, str], dict[str, Any], str | None]] = [
        ({"x-session-id": "mine", "session_id": "codex"}, {"prompt_cache_key": "pck"}, "mine"),
        (
            {"x-claude-code-session-id": "cc-1"},
            {"metadata": {"user_id": "user_x_account_y_session_z"}},
            "cc-1",
        ),
        ({"session-id": "codex-new"}, {}, "codex-new"),
        ({"session_id": "codex-old"}, {"user": "u"}, "codex-old"),
        ({"x-opencode-session": "oc"}, {}, "oc"),
        ({}, {"prompt_cache_key": "pck", "user": "u"}, "pck"),
        ({}, {"metadata": {"user_id": "user_x_account_y_session_z-1"}}, "z-1"),
        ({}, {"metadata": {"user_id": claude_json}}, "cc-2"),
        ({}, {"metadata": {"user_id": "plain-user"}}, "plain-user"),
        ({}, {"user": "end-user"}, "end-user"),
        ({"x-session-id": "  "}, {"user": 7, "prompt_cache_key": None}, None),
        ({}, {}, None),
    ]
    for headers, body, expected in cases:
        assert identify.session_id(headers, body) == expected, (headers, body)
    long = identify.session_id({"x-session-id": "s" * 300}, {})
    assert long is not None and long.startswith("sha256:") and len(long) <= identify.MAX_ID


def test_max_id_is_kvstores() -> None:
    from kvstore.hints import MAX_ID

    assert identify.MAX_ID == MAX_ID


def test_streamed_answers_read_the_same_however_they_are_cut() -> None:
    events = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "tool_calls": [{"index": 0, "function": {"name": "run_"}}],
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"name": "tests", "arguments": "{"}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"name": "lint"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events) + b"data: [DONE]\r\n\r\n"
    for size in (1, 7, len(raw)):
        stream = EventStream(CHAT)
        for start in range(0, len(raw), size):
            stream.feed(raw[start : start + size])
        assert stream.outcome() == Outcome(tools=("run_tests", "lint")), size
    cut = EventStream(CHAT)
    cut.feed(raw[:40])
    assert cut.outcome() is None  # broken off before any tool name or finish reason
    whole = JsonAnswer(MESSAGES)
    whole.feed(
        json.dumps({"type": "message", "content": [{"type": "text"}], "stop_reason": "end_turn"}).encode()
    )
    assert whole.outcome() == Outcome(ended_turn=True)
    odd = JsonAnswer(CHAT)
    odd.feed(b'{"choices": [{"index": [], "message": {"tool_calls": [{"function": {"name": "x"}}]}}]}')
    assert odd.outcome() == Outcome()  # an odd answer: no hint, no error


def test_bench_proxy_writes_its_figures(tmp_path: Path) -> None:
    from kvstore.cli import main

    out = tmp_path / "proxy.json"
    assert (
        main(["bench", "proxy", "--requests", "4", "--warmup", "1", "--prompt-kib", "2", "--json", str(out)])
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["requests"] == 4 and figures["latency_direct_p50_ms"] > 0 and figures["ttfc_ratio_p50"] > 0
    assert main(["bench", "proxy", "--requests", "0"]) == 2
