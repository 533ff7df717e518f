"""Integrity against a real server: a corrupt disk block read through Acquire, a Commit its client
gave up on, bytes changed in a shared-memory slot after they were stored (checksums carried with
blocks), and slots of an expired write lease kept from reuse for a while."""

from __future__ import annotations

import hashlib
import mmap
import os
import time
import zlib
from pathlib import Path

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, make_settings, used
from kvstore.sdk import Client

from kvstore.persistence import disk_tier
from kvstore.shm.header import HEADER_BYTES
from kvstore.tiers.base import checksum
from kvstore.tiers.disk import HEADER_V1, MAGIC, DiskTier
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


def key_of(i: int) -> bytes:
    return hashlib.blake2b(f"integrity-{i}".encode(), digest_size=32).digest()


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


def scribble(srv: ThreadedServer, key: bytes) -> None:
    """What another process of the server's user can do: write into a block's bytes in /dev/shm."""
    entry = srv.store.index.get("t", key)
    segment = srv.store.tier_by_name[entry.tier].segment
    assert segment is not None
    fd = os.open(f"/dev/shm/{segment.name}", os.O_RDWR)
    try:
        m = mmap.mmap(fd, HEADER_BYTES + segment.size)
    finally:
        os.close(fd)
    m[HEADER_BYTES + entry.location] ^= 0xFF
    m.close()


def test_bytes_changed_in_shared_memory_are_never_served_nor_written_to_disk(
    server: ThreadedServer, stub: pb_grpc.KVStoreStub
) -> None:
    """Blocks carry the checksum taken when they came in: one scribbled in its memory slot is a
    dropped miss when read over gRPC, and is dropped (not written with a fresh checksum) when it
    goes to disk; an untouched one goes to disk and back intact."""
    keys = [key_of(i) for i in range(3)]
    data = [os.urandom(BLOCK) for _ in keys]
    stub.Put(iter(pb.PutRequest(namespace="t", key=k, data=d) for k, d in zip(keys, data, strict=True)))
    store = server.store
    assert {store.index.get("t", k).tier for k in keys} == {"hbm"}
    scribble(server, keys[0])
    reply = list(stub.Get(pb.GetRequest(namespace="t", keys=keys[:1])))
    assert not reply[0].found and store.index.get("t", keys[0]) is None
    scribble(server, keys[1])
    store.evict("t", keys[1:])  # hbm -> dram: a memory copy carries the checksum as it is
    assert {store.index.get("t", k).tier for k in keys[1:]} == {"dram"}
    store.evict("t", keys[1:])  # dram -> disk: the scribbled block fails its checksum there
    assert store.index.get("t", keys[1]) is None
    disk = disk_tier(store)
    assert disk is not None and not disk.path("t", keys[1]).exists()
    assert store.index.get("t", keys[2]).tier == "disk"
    store.promote_on_get = False
    got = list(stub.Get(pb.GetRequest(namespace="t", keys=keys)))
    assert [g.found for g in got] == [False, False, True] and got[2].data == data[2]
    assert sum(t.used for t in store.tiers) == BLOCK  # nothing dropped left a slot behind


def test_slots_of_an_expired_write_lease_are_not_reused_at_once(tmp_path: Path) -> None:
    """A writer stalled past its lease may still be copying into its slots: they are freed one TTL
    after the lease expired, so no other block is stored there meanwhile."""
    srv = ThreadedServer(make_settings(tmp_path / "data", shared_memory={"lease_ttl_s": 1.0}))
    try:
        with grpc.insecure_channel(srv.address) as channel:
            stub = pb_grpc.KVStoreStub(channel)
            before = used(srv)
            reply = stub.Reserve(
                pb.ReserveRequest(namespace="t", blocks=[pb.BlockHeader(key=key_of(1), size=BLOCK)])
            )
            assert reply.slots[0].state == pb.SLOT_WRITE
            time.sleep(1.5)  # expired, quarantined
            assert srv.server.leases.stats() == {"write_leases": 0, "read_leases": 0, "reserved_bytes": BLOCK}
            assert sum(used(srv).values()) == sum(before.values()) + BLOCK
            with pytest.raises(grpc.RpcError) as err:
                stub.Commit(pb.LeaseRequest(lease_id=reply.lease_id))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            deadline = time.monotonic() + 10
            while used(srv) != before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert used(srv) == before and srv.server.leases.stats()["reserved_bytes"] == 0
    finally:
        srv.stop()


def test_block_files_of_the_previous_format_are_still_read(tmp_path: Path) -> None:
    """Version 1 files (one CRC-32 over everything) from before the carried checksums: recovered,
    served, and given the checksum they carry from then on."""
    disk = DiskTier(tmp_path, 16 * BLOCK)
    key, payload = key_of(7), os.urandom(BLOCK)
    ns, meta = b"t", b"m"
    body = ns + key + meta + payload
    path = disk.path("t", key)
    path.parent.mkdir(parents=True)
    header = HEADER_V1.pack(MAGIC, 1, len(ns), len(key), 0, len(meta), len(payload), zlib.crc32(body))
    path.write_bytes(header + body)
    (entry,) = list(disk.scan())
    assert (entry.key, entry.meta, entry.checksum) == (key, meta, checksum(payload))
    assert disk.read_bytes(entry) == payload
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    assert list(disk.scan()) == [] and not path.exists()  # a corrupt one is still dropped


def test_a_block_changed_in_shared_memory_after_its_commit_is_a_miss_for_a_shm_reader(
    server: ThreadedServer,
) -> None:
    """A client writing into a slot after its commit (here: the test, through /dev/shm): a reader
    on the shared-memory path checks its copy against the block's checksum, discards it, and reads
    over gRPC, where the server drops the block: a miss, never the changed bytes."""
    with Client(server.address) as kv:
        assert kv.transport() == "shm"
        keys = kv.keys_for("t", range(4 * 3))
        data = [os.urandom(BLOCK) for _ in keys]
        kv.put("t", keys, data)
        scribble(server, keys[1])
        assert kv.get("t", keys) == [data[0], None, data[2]]
        assert server.store.index.get("t", keys[1]) is None
        out = [bytearray(BLOCK) for _ in keys[::2]]  # into caller buffers: checked the same way
        assert [b.tier for b in kv.fetch("t", keys[::2], into=out)] == ["hbm", "hbm"]  # type: ignore[union-attr]
        assert [bytes(b) for b in out] == [data[0], data[2]]
