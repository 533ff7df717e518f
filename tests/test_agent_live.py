"""Live, real server and real bytes: a session's KV leaves HBM during a ~1 s tool call while
another client keeps HBM under pressure, and is back in HBM when the call ends."""

from __future__ import annotations

import os
import threading
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


def test_tool_call_kv_is_back_in_hbm_when_the_call_ends_under_pressure(tmp_path) -> None:
    settings = make_settings(
        tmp_path / "data",
        policy="agent",
        hbm={"capacity": 24 * BLOCK},
        dram={"capacity": 512 * BLOCK},
        disk={"capacity": 64 * BLOCK},
        namespaces=[{"name": "t", "model": "m", "block_tokens": 4, "block_bytes": BLOCK}],
        agent={"prefetch_margin_s": 0.15},
    )
    srv = ThreadedServer(settings)
    stop = threading.Event()

    def pressure() -> None:  # another tenant streaming new blocks through HBM
        with Client(srv.address) as kv:
            n = 0
            while not stop.is_set():
                kv.put("t", [os.urandom(32) for _ in range(4)], [os.urandom(BLOCK) for _ in range(4)])
                n += 1
                time.sleep(0.005)

    try:
        with (
            Client(srv.address) as kv,
            AgentSession(srv.address, namespace="t") as session,
            grpc.insecure_channel(srv.address) as channel,
        ):
            admin = pb_grpc.AdminStub(channel)
            keys = kv.keys_for("t", range(4 * 8))
            data = [os.urandom(BLOCK) for _ in keys]
            kv.put("t", keys, data, session=session.id)
            assert session_bytes(admin, session.id) == {"hbm": 8 * BLOCK}
            worker = threading.Thread(target=pressure)
            worker.start()
            left_hbm = False
            with session.tool_call("pytest", expected_s=1.0):
                started = time.monotonic()
                while time.monotonic() - started < 1.0:
                    left_hbm |= session_bytes(admin, session.id).get("hbm", 0) < 8 * BLOCK
                    time.sleep(0.02)
            assert session.flush()
            assert left_hbm, "pressure never pushed the session's blocks out of HBM"
            assert session_bytes(admin, session.id) == {"hbm": 8 * BLOCK}
            stop.set()
            worker.join()
            assert kv.get("t", keys, session=session.id) == data  # and the bytes are intact
        assert srv.store.sessions.prefetches["on_time"] == 1
    finally:
        stop.set()
        srv.stop()
