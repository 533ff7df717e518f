"""Live, real server and real bytes: a session's KV leaves HBM during a ~1 s tool call while
another client keeps HBM under pressure, and is back in HBM when the call ends."""

from __future__ import annotations

import os
import time

import grpc
from conftest import ThreadedServer, make_settings
from kvstore.sdk import AgentSession, Client

from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

BLOCK = 64 * 1024


def session_bytes(admin: pb_grpc.AdminStub, session_id: str) -> dict[str, int]:
    for s in admin.ListSessions(pb.ListSessionsRequest()).sessions:
        if s.session == session_id:
            return dict(s.bytes_per_tier)
    return {}


def test_tool_call_kv_pushed_out_is_back_in_hbm_as_soon_as_the_call_ends(tmp_path) -> None:
    """A's long tool call makes it the likeliest to leave when B's request needs HBM; when A's tool
    returns early, A's KV comes back at once (ahead of A's next request), displacing the tail of B,
    which is away in a tool call of its own."""
    settings = make_settings(
        tmp_path / "data",
        policy="agent",
        hbm={"capacity": 24 * BLOCK},
        dram={"capacity": 512 * BLOCK},
        disk={"capacity": 64 * BLOCK},
        namespaces=[{"name": "t", "model": "m", "block_tokens": 4, "block_bytes": BLOCK}],
    )
    srv = ThreadedServer(settings)
    try:
        with (
            Client(srv.address) as kv,
            AgentSession(srv.address, namespace="t") as a,
            AgentSession(srv.address, namespace="t") as b,
            grpc.insecure_channel(srv.address) as channel,
        ):
            admin = pb_grpc.AdminStub(channel)
            a_keys, b_keys = kv.keys_for("t", range(4 * 8)), kv.keys_for("t", range(1000, 1000 + 4 * 20))
            a_data = [os.urandom(BLOCK) for _ in a_keys]
            kv.put("t", a_keys, a_data, session=a.id)
            assert session_bytes(admin, a.id) == {"hbm": 8 * BLOCK}
            call_a = a.begin_tool_call("pytest", expected_s=600.0)
            assert a.flush()
            kv.put("t", b_keys, [os.urandom(BLOCK) for _ in b_keys], session=b.id, pin=True)  # B runs
            assert session_bytes(admin, a.id).get("hbm", 0) < 8 * BLOCK  # A's tail made room
            kv.unpin("t", b_keys)
            call_b = b.begin_tool_call("build", expected_s=20.0)
            assert b.flush()
            time.sleep(0.5)
            assert session_bytes(admin, a.id).get("hbm", 0) < 8 * BLOCK  # no reason to swap yet
            a.end_tool_call(call_a)  # A's tool returns early: its next request is due
            assert a.wait_ready(timeout_s=5.0)  # the mover brings it back now, before that request
            assert session_bytes(admin, a.id) == {"hbm": 8 * BLOCK}
            assert session_bytes(admin, b.id).get("dram", 0) > 0  # B's tail went down for it
            b.end_tool_call(call_b)
            assert kv.get("t", a_keys, session=a.id) == a_data  # and the bytes are intact
    finally:
        srv.stop()
