"""The live server while a move is in flight: its copy is parked at a gate (a barrier, no timing),
and everything else must still answer — a Lookup, a Get of the moving block, health, hints —
while a WaitReady for the moving session must not answer until the move is done."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, make_settings
from kvstore.sdk import AgentSession, Client

from kvstore.errors import FailedPrecondition
from kvstore.index import BlockEntry
from kvstore.mover import Copier, Copy
from kvstore.tiers.base import Tier
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

RPC_S = 5.0  # a call stuck behind the move fails with DEADLINE_EXCEEDED instead of hanging the test


class ParkingCopier(Copier):
    """Once armed, the next copy (on whatever thread runs it) waits at the gate."""

    def __init__(self, copier: Copier) -> None:
        super().__init__(copier.links)
        self.armed = False
        self.parked = threading.Event()
        self.gate = threading.Event()
        self.moving: BlockEntry | None = None

    def copy_many(self, copies: Sequence[Copy], dst: Tier) -> list[Exception | None]:
        if self.armed:
            self.armed = False
            self.moving = copies[0][1]
            self.parked.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().copy_many(copies, dst)


@pytest.fixture
def live(tmp_path) -> Iterator[tuple[ThreadedServer, ParkingCopier]]:
    srv = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    placement = srv.store.placement
    copier = ParkingCopier(placement.copier)
    placement.copier.close()
    placement.copier = copier
    yield srv, copier
    copier.gate.set()
    srv.stop()


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_everything_answers_while_a_block_is_being_moved(live: tuple[ThreadedServer, ParkingCopier]) -> None:
    srv, copier = live
    with Client(srv.address, shared_memory=False) as kv, grpc.insecure_channel(srv.address) as channel:
        admin = pb_grpc.AdminStub(channel)
        keys = kv.keys_for("t", range(4 * 4))
        blocks = [bytes([i]) * BLOCK for i in range(4)]
        assert kv.put("t", keys, blocks) == ["hbm"] * 4

        copier.armed = True
        evicting, evicted = in_thread(
            lambda: admin.Evict(pb.EvictRequest(namespace="t", keys=[keys[1]]), timeout=30)
        )
        assert copier.parked.wait(10)
        assert copier.moving is not None and copier.moving.key == keys[1]

        # Meanwhile: each of these returns (no lock is held across the copy) ...
        assert kv.lookup("t", keys=keys).prefix_blocks == 4
        assert kv.get("t", [keys[1]]) == [blocks[1]]  # readable at its source
        assert admin.Health(pb.HealthRequest(), timeout=RPC_S).status == "SERVING"
        hints = pb_grpc.AgentHintsStub(channel)
        assert hints.OpenSession(pb.OpenSessionRequest(session="s", namespace="t"), timeout=RPC_S).session
        # ... and the moving block cannot be moved or deleted twice.
        with pytest.raises(grpc.RpcError) as refused:
            admin.Evict(pb.EvictRequest(namespace="t", keys=[keys[1]]), timeout=RPC_S)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(FailedPrecondition):
            kv.delete("t", [keys[1]])
        assert srv.store.index.get("t", keys[1]).tier == "hbm"

        copier.gate.set()
        evicting.join(10)
        assert evicted and evicted[0].blocks == 1
    assert srv.store.index.get("t", keys[1]).tier == "dram"


def test_wait_ready_waits_for_the_move(live: tuple[ThreadedServer, ParkingCopier]) -> None:
    srv, copier = live
    with (
        Client(srv.address, shared_memory=False) as kv,
        AgentSession(srv.address, namespace="t") as session,
        grpc.insecure_channel(srv.address) as channel,
    ):
        keys = kv.keys_for("t", range(4 * 4))
        kv.put("t", keys, [bytes([i]) * BLOCK for i in range(4)], session=session.id)
        admin = pb_grpc.AdminStub(channel)
        assert admin.Evict(pb.EvictRequest(namespace="t", keys=keys), timeout=RPC_S).blocks == 4

        t0 = time.monotonic()
        assert session.wait_ready(timeout_s=0.3) is False  # in DRAM, and nothing brings it back
        assert time.monotonic() - t0 >= 0.3

        copier.armed = True
        promoting, _ = in_thread(lambda: srv.store.promote("t", keys))
        assert copier.parked.wait(10)
        waiting, ready = in_thread(lambda: session.wait_ready(timeout_s=30))
        waiting.join(1.0)
        assert waiting.is_alive()  # the first block is still on its way: not ready

        copier.gate.set()
        promoting.join(10)
        waiting.join(10)
        assert ready == [True]
