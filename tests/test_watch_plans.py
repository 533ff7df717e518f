"""WatchPlans: warm plans reach engine-side subscribers over a real server, through both clients."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest
from conftest import BLOCK, ThreadedServer, make_settings
from kvstore.sdk import AgentSession, AsyncClient, Client, InvalidArgument, NotFound, PlanEvent


@pytest.fixture
def agent_server(tmp_path) -> ThreadedServer:
    srv = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    yield srv
    srv.stop()


def user_comes_back(address: str, namespace: str = "t") -> AgentSession:
    """A session with KV whose person reads and then starts typing: the policy plans a warm.
    (The session stays open: closing it would drop its plans.)"""
    session = AgentSession(address, namespace=namespace)
    with Client(address) as kv:
        keys = kv.keys_for(namespace, range(8))
        kv.put(namespace, keys, [os.urandom(BLOCK) for _ in keys], session=session.id)
    session.awaiting_user()
    session.user_active()
    assert session.flush()
    return session


def watch_in_thread(client: Client, namespace: str, for_s: float) -> queue.Queue[PlanEvent | Exception]:
    events: queue.Queue[PlanEvent | Exception] = queue.Queue()

    def run() -> None:
        try:
            for event in client.watch_plans(namespace, for_s=for_s):
                events.put(event)
        except Exception as exc:
            events.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return events


def wait_subscribed(server: ThreadedServer, n: int = 1) -> None:
    deadline = time.monotonic() + 10
    while server.store.plan_feed.subscribers < n:
        assert time.monotonic() < deadline, "the watch never subscribed"
        time.sleep(0.01)


def test_a_warm_plan_reaches_a_watcher_of_its_namespace_only(agent_server: ThreadedServer) -> None:
    with Client(agent_server.address) as watcher, Client(agent_server.address) as other:
        events = watch_in_thread(watcher, "t", for_s=10.0)
        elsewhere = watch_in_thread(other, "other", for_s=3.0)
        wait_subscribed(agent_server, 2)
        session = user_comes_back(agent_server.address)
        event = events.get(timeout=10)
        assert isinstance(event, PlanEvent), event
        assert (event.kind, event.session, event.namespace) == ("warm", session.id, "t")
        assert event.bytes == 2 * BLOCK and event.dropped_before == 0
        assert event.due_in_s >= 0 and event.due_at >= event.received
        with pytest.raises(queue.Empty):  # a watcher of another namespace hears nothing
            elsewhere.get(timeout=4.0)
        session.close()
    deadline = time.monotonic() + 10  # the streams ended (for_s, closed client): unsubscribed
    while agent_server.store.plan_feed.subscribers:
        assert time.monotonic() < deadline
        time.sleep(0.01)


async def test_the_async_twin_streams_the_same_plans(agent_server: ThreadedServer) -> None:
    import asyncio

    async with AsyncClient(agent_server.address) as kv:
        stream = kv.watch_plans("t", for_s=10.0)
        first = asyncio.ensure_future(stream.__anext__())
        while agent_server.store.plan_feed.subscribers < 1:
            await asyncio.sleep(0.01)
        session = await asyncio.to_thread(user_comes_back, agent_server.address)
        event = await asyncio.wait_for(first, 10)
        assert (event.kind, event.session) == ("warm", session.id)
        await stream.aclose()
        session.close()


def test_a_stream_ends_quietly_after_for_s_and_bad_requests_are_refused(
    agent_server: ThreadedServer,
) -> None:
    with Client(agent_server.address) as kv:
        started = time.monotonic()
        assert list(kv.watch_plans("t", for_s=0.5)) == []
        assert 0.4 < time.monotonic() - started < 5
        with pytest.raises(InvalidArgument, match="unknown plan kinds"):
            list(kv.watch_plans("t", kinds=["teleport"], for_s=5))
        with pytest.raises(NotFound):
            list(kv.watch_plans("no-such-namespace", for_s=5))
    assert agent_server.store.plan_feed.subscribers == 0
