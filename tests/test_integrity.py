"""Integrity on the shared-memory data plane, against a real server: a corrupt disk block read through
Acquire, a Commit its client gave up on, and (per-slot generations) writes into a slot after its
lease ended."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, make_settings

from kvstore.persistence import disk_tier
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


def key_of(i: int) -> bytes:
    return hashlib.blake2b(f"integrity-{i}".encode(), digest_size=32).digest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(make_settings(tmp_path / "data"))
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: ThreadedServer) -> Iterator[pb_grpc.KVStoreStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.KVStoreStub(channel)


def used(srv: ThreadedServer) -> dict[str, int]:
    with srv.store.lock:
        return {t.name: t.used for t in srv.store.tiers}


def put_on_disk(srv: ThreadedServer, stub: pb_grpc.KVStoreStub, keys: list[bytes]) -> None:
    reqs = [pb.PutRequest(namespace="t", key=k, data=os.urandom(BLOCK)) for k in keys]
    stub.Put(iter(reqs))
    for _ in range(2):  # hbm -> dram -> disk
        srv.store.evict("t", keys)
    assert {srv.store.index.get("t", k).tier for k in keys} == {"disk"}


def test_a_corrupt_disk_block_read_through_acquire_is_a_dropped_miss(
    server: ThreadedServer, stub: pb_grpc.KVStoreStub
) -> None:
    """Acquire promotes what it reads from disk (promote_on_get): a block whose file fails its
    checksum must be a miss, leave the index, and take no memory slot, however often it is asked."""
    keys = [key_of(i) for i in range(4)]
    put_on_disk(server, stub, keys)
    disk = disk_tier(server.store)
    assert disk is not None
    path = disk.path("t", keys[1])
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one payload bit flipped on disk
    path.write_bytes(bytes(raw))
    before = used(server)
    for _ in range(5):
        reply = stub.Acquire(pb.AcquireRequest(namespace="t", keys=keys))
        assert [b.found for b in reply.blocks] == [True, False, True, True]
        assert stub.Release(pb.LeaseRequest(lease_id=reply.lease_id)).valid
    assert server.store.index.get("t", keys[1]) is None and not path.exists()
    after = used(server)
    # The three good blocks came up from disk; the corrupt one took no slot anywhere.
    assert after["disk"] == before["disk"] - 4 * BLOCK
    assert after["hbm"] + after["dram"] == before["hbm"] + before["dram"] + 3 * BLOCK
    with server.store.lock:
        entries = list(server.store.index.entries())
        assert all(e.readers == 0 and not e.moving for e in entries)
    assert sum(t.used for t in server.store.tiers) == len(entries) * BLOCK  # no slot outside the index


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_commit_its_client_gave_up_on_leaves_nothing(
    server: ThreadedServer, stub: pb_grpc.KVStoreStub, how: str
) -> None:
    """The client wrote its slots and called Commit, then its deadline passed (or it cancelled)
    before the commit was done (here the store's lock is held by the test): nothing may be indexed,
    pinned or opened for it, and its slots come back."""
    store = server.store
    keys = [key_of(i) for i in range(3)]
    before = used(server)
    reserved = stub.Reserve(
        pb.ReserveRequest(
            namespace="t", blocks=[pb.BlockHeader(key=k, size=BLOCK) for k in keys], session="s", pin=True
        )
    )
    assert [s.state for s in reserved.slots] == [pb.SLOT_WRITE] * 3
    commit = pb.LeaseRequest(lease_id=reserved.lease_id)
    with store.lock:
        if how == "deadline":
            with pytest.raises(grpc.RpcError) as err:
                stub.Commit(commit, timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            call = stub.Commit.future(commit)
            time.sleep(0.5)  # the commit waits on the lock
            call.cancel()
            assert call.cancelled()
        time.sleep(0.5)  # for the server to hear of it
    time.sleep(1.0)  # the commit gets the lock, and must not index the blocks now
    assert len(store.index) == 0 and "s" not in store.sessions.sessions
    assert used(server) == before and sum(store.placement.pinned_blocks.values()) == 0
    with pytest.raises(grpc.RpcError) as err:  # the lease is over: the client starts again
        stub.Commit(commit)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
