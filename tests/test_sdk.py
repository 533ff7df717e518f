"""The SDK's shape: sync and async twins with the same public signatures, one hint thread per
address however many sessions, tools shared across sessions, overlapping tool calls."""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from typing import Any

import pytest
from conftest import ThreadedServer, make_settings
from kvstore.sdk import (
    AgentSession,
    AsyncAgentSession,
    AsyncClient,
    Client,
    HintSender,
    SessionPool,
    current_session,
    tool,
)

from kvstore.sessions import State

# Methods that only queue a hint or build a value: the same (not awaited) on both twins.
NOT_AWAITED = {
    "activate",
    "begin_tool_call",
    "end_tool_call",
    "awaiting_user",
    "user_active",
    "bind",
    "fanout",
    "tool",
}
DUNDER_TWINS = {"__init__": "__init__", "__enter__": "__aenter__", "__exit__": "__aexit__"}


def kind(member: Any) -> str:
    if isinstance(member, property):
        return "property"
    wrapped = getattr(member, "__wrapped__", None)
    if wrapped is not None and inspect.isasyncgenfunction(wrapped):
        return "async context manager"
    if wrapped is not None and inspect.isgeneratorfunction(wrapped):
        return "context manager"
    if inspect.isasyncgenfunction(member):
        return "async iterator"
    return "coroutine" if inspect.iscoroutinefunction(member) else "plain"


def shape(member: Any) -> list[tuple[Any, ...]]:
    """Parameters and return annotation, with the twins' names made the same."""

    def same(annotation: Any) -> str:
        return re.sub(r"\bAsync(?=[A-Z])", "", str(annotation))

    if isinstance(member, property):
        member = member.fget
    sig = inspect.signature(member)
    params = [(p.name, p.kind, p.default, same(p.annotation)) for p in sig.parameters.values()]
    return [*params, ("->", same(sig.return_annotation))]


@pytest.mark.parametrize(("sync", "twin"), [(Client, AsyncClient), (AgentSession, AsyncAgentSession)])
def test_sync_and_async_twins_have_the_same_public_signatures(sync: type, twin: type) -> None:
    def public(cls: type) -> dict[str, Any]:
        return {n: inspect.getattr_static(cls, n) for n in dir(cls) if not n.startswith("_")}

    ours, theirs = public(sync), public(twin)
    assert sorted(ours) == sorted(theirs)
    for name, member in ours.items():
        # a method that waits is a coroutine on the async twin, or an async iterator (a stream)
        waits = {
            "plain": {"coroutine", "async iterator"},
            "context manager": {"async context manager"},
            "property": {"property"},
        }
        expected = {kind(member)} if name in NOT_AWAITED else waits[kind(member)]
        assert kind(theirs[name]) in expected, name
        assert shape(member) == shape(theirs[name]), name
    for name, twin_name in DUNDER_TWINS.items():
        a, b = inspect.getattr_static(sync, name), inspect.getattr_static(twin, twin_name)
        assert shape(a) == shape(b), name
        assert kind(b) == ("plain" if name == "__init__" else "coroutine"), name


async def test_twins_have_the_same_public_attributes() -> None:
    def attributes(obj: object) -> list[str]:
        return sorted(k for k in vars(obj) if not k.startswith("_"))

    client, aclient = Client("127.0.0.1:1"), AsyncClient("127.0.0.1:1")
    assert attributes(client) == attributes(aclient) == ["address", "timeout"]
    client.close()
    await aclient.close()
    sender = HintSender("127.0.0.1:1", timeout=0.1)
    try:
        session, asession = AgentSession(sender=sender), AsyncAgentSession(sender=sender)
        assert attributes(session) == attributes(asession) == ["id", "namespace"]
    finally:
        sender.close()


@pytest.fixture
def agent_server(tmp_path) -> ThreadedServer:
    srv = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    yield srv
    srv.stop()


def hint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kvstore-hints"]


def test_many_sessions_share_one_hint_thread(agent_server: ThreadedServer) -> None:
    HintSender.shared(agent_server.address)  # the process's sender for this address
    senders = hint_threads()
    sessions = [AgentSession(agent_server.address, namespace="t") for _ in range(200)]
    # Counted by name: gRPC and the server start threads of their own at any time.
    assert hint_threads() == senders
    assert len({s._sender for s in sessions}) == 1
    for s in sessions[::2]:
        s.awaiting_user()
    assert sessions[0].flush()
    live = agent_server.store.sessions.sessions
    assert all(s.id in live for s in sessions)
    assert [live[s.id].state for s in sessions[:4]] == [State.AWAITING_USER, State.RUNNING] * 2
    for s in sessions:
        s.close()
    assert not live


def test_a_tool_shared_across_sessions_announces_on_the_current_one(agent_server: ThreadedServer) -> None:
    live = agent_server.store.sessions.sessions
    seen: dict[str, tuple[str, str]] = {}

    @tool("search")
    def search(query: str) -> str:
        session = current_session()
        if session is not None:
            assert session.flush()
            seen[query] = (session.id, live[session.id].state.value)
        return query.upper()

    a = AgentSession(agent_server.address, namespace="t")
    with AgentSession(agent_server.address, namespace="t") as b:
        assert search("in b") == "IN B"
        with a.activate():
            assert search("in a") == "IN A"
        assert current_session() is b
        # another thread has a context of its own: it names its own session

        def in_thread() -> None:
            with a.activate():
                search("thread")

        worker = threading.Thread(target=in_thread)
        worker.start()
        worker.join()
    assert current_session() is None
    assert search("nobody") == "NOBODY"  # no session: the tool still runs, unannounced
    assert seen == {
        "in b": (b.id, "in_tool"),
        "in a": (a.id, "in_tool"),
        "thread": (a.id, "in_tool"),
    }
    assert a.flush() and a.healthy
    assert live[a.id].state is State.RUNNING
    assert agent_server.store.sessions.hints["begin_tool"] == 3
    a.close()


async def test_a_shared_async_tool_in_concurrent_tasks(agent_server: ThreadedServer) -> None:
    live = agent_server.store.sessions.sessions
    gate = asyncio.Event()
    states: list[tuple[str, str]] = []

    @tool("fetch", expected_s=5)
    async def fetch() -> None:
        session = current_session()
        assert isinstance(session, AsyncAgentSession)
        await gate.wait()
        assert await session.flush()
        states.append((session.id, live[session.id].tool.tool_name))

    async def agent() -> str:
        async with AsyncAgentSession(agent_server.address, namespace="t") as session:
            await fetch()
            return session.id

    tasks = [asyncio.create_task(agent()) for _ in range(3)]
    await asyncio.sleep(0.05)
    gate.set()
    ids = await asyncio.gather(*tasks)
    assert sorted(states) == sorted((i, "fetch") for i in ids)
    assert agent_server.store.sessions.hints["end_tool"] == 3


def test_overlapping_tool_calls_in_one_session_are_one_call(agent_server: ThreadedServer) -> None:
    live = agent_server.store.sessions.sessions
    with AgentSession(agent_server.address, namespace="t") as session:
        first = session.begin_tool_call("grep", expected_s=10)
        second = session.begin_tool_call("pytest", expected_s=30)
        assert session.flush() and session.healthy  # kvstore holds one call per session: no refusal
        assert live[session.id].tool.tool_name == "grep"
        session.end_tool_call(first)
        assert session.flush() and live[session.id].state is State.IN_TOOL  # pytest still runs
        session.end_tool_call(second)
        session.end_tool_call(second)  # twice: ignored
        assert session.flush() and session.healthy
        assert live[session.id].state is State.RUNNING
    assert agent_server.store.sessions.hints["begin_tool"] == 1
    assert agent_server.store.sessions.hints["end_tool"] == 1


def test_session_pool_is_bounded() -> None:
    made: list[str] = []
    pool: SessionPool[str] = SessionPool(lambda sid: made.append(sid) or sid.upper(), max_items=2)
    assert pool.get("a") == "A" and pool.get("b") == "B" and pool.get("a") == "A"
    assert pool.get("c") == "C"  # b, the least recently used, is forgotten
    assert pool.peek("b") is None and pool.peek("a") == "A" and len(pool) == 2
    assert pool.get("b") == "B" and made == ["a", "b", "c", "b"]
    assert pool.pop("b") == "B" and pool.pop("b") is None
    with pytest.raises(ValueError, match="at least 1"):
        SessionPool(str, max_items=0)
