"""Agent hints over the real gRPC server: statuses for bad input, the SDK's AgentSession (sync,
async, decorator, fan-out, wait_ready), its advisory behaviour when kvstore is away, and kvctl."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import urllib.request

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, make_settings, wait_until
from kvstore.sdk import AgentSession, AsyncAgentSession, Client

from kvstore.kvctl import main as kvctl
from kvstore.sessions import AwayKind
from kvstore.stats import store_stats
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


@pytest.fixture
def agent_server(tmp_path) -> ThreadedServer:
    srv = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    yield srv
    srv.stop()


def settled(server: ThreadedServer) -> bool:
    """The mover has run every plan due by now (a hint's rebalance check runs on it, soon after)."""
    plans = server.store.plans
    return wait_until(lambda: (due := plans.next_due()) is None or due > server.store.clock.now())


def test_bad_hints_get_the_right_status_and_change_nothing(agent_server: ThreadedServer) -> None:
    with grpc.insecure_channel(agent_server.address) as channel:
        hints = pb_grpc.AgentHintsStub(channel)
        hints.OpenSession(pb.OpenSessionRequest(session="s", namespace="t"))
        call = hints.BeginToolCall(pb.BeginToolCallRequest(session="s", tool_name="pytest", expected_s=30))
        assert settled(agent_server)
        before = (agent_server.store.plans.pending, dict(agent_server.store.sessions.hints))
        cases = [
            (
                grpc.StatusCode.NOT_FOUND,
                hints.BeginToolCall,
                pb.BeginToolCallRequest(session="x", tool_name="t"),
            ),
            (grpc.StatusCode.NOT_FOUND, hints.EndToolCall, pb.EndToolCallRequest(call_id="nope")),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                hints.BeginToolCall,
                pb.BeginToolCallRequest(session="s", tool_name="t", expected_s=-4),
            ),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                hints.BeginToolCall,
                pb.BeginToolCallRequest(session="s", tool_name="t", expected_s=float("inf")),
            ),
            (
                grpc.StatusCode.FAILED_PRECONDITION,
                hints.BeginToolCall,
                pb.BeginToolCallRequest(session="s", tool_name="t", expected_s=3),
            ),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                hints.AnnounceFanout,
                pb.AnnounceFanoutRequest(session="s", n=0, ttl_s=9),
            ),
            (grpc.StatusCode.NOT_FOUND, hints.BranchDone, pb.BranchDoneRequest(fanout_id="f")),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                hints.WaitReady,
                pb.WaitReadyRequest(session="s", timeout_s=-1),
            ),
            (grpc.StatusCode.NOT_FOUND, hints.WaitReady, pb.WaitReadyRequest(session="x", timeout_s=0)),
            (
                grpc.StatusCode.NOT_FOUND,
                hints.OpenSession,
                pb.OpenSessionRequest(session="y", namespace="zzz"),
            ),
        ]
        for code, method, request in cases:
            with pytest.raises(grpc.RpcError) as err:
                method(request)
            assert err.value.code() == code, (request, err.value.details())
            assert err.value.details()
        assert (agent_server.store.plans.pending, dict(agent_server.store.sessions.hints)) == before
        assert hints.EndToolCall(pb.EndToolCallRequest(call_id=call.call_id)).call_id == call.call_id


def test_agent_session_sends_ordered_hints(agent_server: ThreadedServer) -> None:
    with Client(agent_server.address) as kv, AgentSession(agent_server.address, namespace="t") as session:
        keys = kv.keys_for("t", range(4 * 3))
        kv.put("t", keys, [os.urandom(BLOCK) for _ in keys], session=session.id)
        with session.tool_call("pytest", expected_s=30):
            assert session.flush()
            live = agent_server.store.sessions.sessions[session.id]
            assert live.state.value == "in_tool" and live.tool.tool_name == "pytest"
            assert live.blocks == 3

        @session.tool("lint")
        def lint(x: int) -> int:
            return x + 1

        assert lint(1) == 2
        fan = session.fanout(2, ttl_s=60)
        assert session.flush()
        assert wait_until(lambda: store_stats(agent_server.store).tiers[0].pinned_blocks == 3)
        with fan.branch():
            pass
        fan.branch_done()
        session.awaiting_user()
        assert session.flush() and session.healthy
        assert store_stats(agent_server.store).tiers[0].pinned_blocks == 0
        assert live.state.value == "awaiting_user"
        assert session.wait_ready(0.5)
    registry = agent_server.store.sessions
    assert session.id not in registry.sessions  # closed on exit
    assert registry.hints["begin_tool"] == 2 and registry.hints["end_tool"] == 2
    assert registry.returns.specific[AwayKind.TOOL_UNANNOUNCED]["lint"].samples


async def test_async_twin(agent_server: ThreadedServer) -> None:
    async with AsyncAgentSession(agent_server.address, namespace="t") as session:
        async with session.tool_call("search", expected_s=5):
            await asyncio.sleep(0)

        @session.tool("fetch")
        async def fetch() -> str:
            return "page"

        assert await fetch() == "page"
        assert await session.wait_ready(0.2)  # no blocks yet: trivially ready
        assert await session.flush() and session.healthy
    assert agent_server.store.sessions.hints["end_tool"] == 2


def test_hints_are_advisory_when_kvstore_is_away(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    caplog.set_level(logging.WARNING, logger="kvstore.sdk.agent")
    session = AgentSession(address, namespace="t", timeout=0.2)
    ran = []
    with session.tool_call("pytest", expected_s=1):
        ran.append(True)
    # the tool's own errors still reach the agent, unchanged
    with pytest.raises(ZeroDivisionError), session.tool_call("divide"):
        _ = 1 / 0
    assert session.wait_ready(0.1) is False
    assert session.flush()
    assert ran == [True] and session.healthy is False
    assert "not delivered" in caplog.text
    session.close()


def test_hints_resume_after_kvstore_restarts(tmp_path) -> None:
    settings = make_settings(tmp_path / "data", policy="agent")
    srv = ThreadedServer(settings)
    address = srv.address
    session = AgentSession(address, namespace="t", timeout=0.5)
    assert session.flush() and session.healthy
    srv.stop()
    session.awaiting_user()
    assert session.flush() and not session.healthy
    srv = ThreadedServer(settings.model_copy(update={"port": int(address.rsplit(":", 1)[1])}))
    try:
        # the new server never saw OpenSession: the SDK opens it again once it reconnects
        def delivered() -> bool:
            session.awaiting_user()
            return session.flush() and session.healthy

        assert wait_until(delivered, timeout=10)
        assert srv.store.sessions.sessions[session.id].state.value == "awaiting_user"
    finally:
        session.close()
        srv.stop()


def test_kvctl_sessions_and_metrics(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = ThreadedServer(make_settings(tmp_path / "data", policy="agent", metrics_port=port))
    try:
        with (
            Client(srv.address) as kv,
            AgentSession(srv.address, session_id="agent-7", namespace="t") as session,
        ):
            keys = kv.keys_for("t", range(8))
            kv.put("t", keys, [os.urandom(BLOCK) for _ in keys], session="agent-7")
            call_id = session.begin_tool_call("pytest", expected_s=40)
            assert session.flush()
            assert kvctl(["--address", srv.address, "sessions"]) == 0
            out = capsys.readouterr().out
            assert "agent-7" in out and "in_tool" in out and "pytest" in out
            assert kvctl(["--address", srv.address, "--json", "sessions"]) == 0
            listed = json.loads(capsys.readouterr().out)["sessions"][0]
            assert listed["bytes_per_tier"] == {"hbm": 2 * BLOCK}
            assert 30 < listed["expected_back_in_s"] <= 40
            session.end_tool_call(call_id)
            assert session.flush()
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'kvstore_hints_total{kind="begin_tool"} 1.0' in text
        assert 'kvstore_prefetches_total{outcome="on_time"}' in text
        assert "kvstore_sessions 1.0" in text
    finally:
        srv.stop()
