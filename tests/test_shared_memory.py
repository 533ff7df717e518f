"""The same-host data plane: real server, real /dev/shm segments, client processes that die."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from conftest import BLOCK, ThreadedServer, make_settings, used
from kvstore.sdk import AsyncClient, Client, core, shm
from shm_worker import block_of, key_of

from kvstore.config import ConfigError
from kvstore.errors import FailedPrecondition
from kvstore.kvctl import main as kvctl
from kvstore.server.process import ServerProcess
from kvstore.stats import store_stats
from kvstore.tiers import share_host_tiers
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

WORKER = Path(__file__).with_name("shm_worker.py")
TTL = 1.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(make_settings(tmp_path / "data", shared_memory={"lease_ttl_s": TTL}))
    yield srv
    srv.stop()


def wait_for(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def run_worker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent)}
    return subprocess.run(
        [sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_blocks_go_through_shared_memory(server: ThreadedServer) -> None:
    keys = [key_of(i) for i in range(6)]
    data = [block_of(k, BLOCK) for k in keys]
    with Client(server.address) as kv:
        assert kv.transport() == "shm"
        assert kv.put("t", keys, data) == ["hbm"] * 6
        # the bytes sit in the hbm tier's segment, at the offsets the index holds
        segment = server.store.tier_by_name["hbm"].segment
        assert segment is not None and segment.data is not None
        for key, block in zip(keys, data, strict=True):
            entry = server.store.index.get("t", key)
            assert bytes(segment.data[entry.location : entry.location + BLOCK]) == block
        assert kv.get("t", [*keys, key_of(99)]) == [*data, None]
        out = [bytearray(BLOCK) for _ in keys]
        got = kv.fetch("t", keys, into=out)
        assert [bytes(b) for b in out] == data and all(
            g is not None and g.data is o for g, o in zip(got, out, strict=True)
        )
        tensor = torch.randn(BLOCK // 4)
        kv.put("t", [key_of(50)], [tensor])
        assert torch.equal(kv.get("t", [key_of(50)])[0], tensor)
        into = torch.empty(BLOCK // 4)
        kv.fetch("t", [key_of(50)], into=[into])
        assert torch.equal(into, tensor)
    assert server.server.leases.stats() == {"write_leases": 0, "read_leases": 0, "reserved_bytes": 0}


async def test_async_client_uses_shared_memory(server: ThreadedServer) -> None:
    keys = [key_of(i) for i in range(3)]
    data = [block_of(k, BLOCK) for k in keys]
    async with AsyncClient(server.address) as kv:
        assert await kv.transport() == "shm"
        assert await kv.put("t", keys, data, session="s") == ["hbm"] * 3
        session_blocks = server.store.sessions.sessions["s"].tiers["hbm"]
        assert list(session_blocks) == [server.store.index.get("t", k) for k in keys]
        assert await kv.get("t", keys) == data
        out = [bytearray(BLOCK) for _ in keys]
        await kv.fetch("t", keys, into=out)
        assert [bytes(b) for b in out] == data


def test_blocks_on_disk_come_inline(server: ThreadedServer, stub: pb_grpc.KVStoreStub) -> None:
    keys = [key_of(i) for i in range(48)]
    with Client(server.address) as kv:
        kv.put("t", keys, [block_of(k, BLOCK) for k in keys])
    assert server.store.index.get("t", keys[0]).tier == "disk"
    server.store.promote_on_get = False  # so the block stays on disk while it is read
    reply = stub.Acquire(pb.AcquireRequest(namespace="t", keys=[keys[0], keys[-1]]))
    on_disk, in_hbm = reply.blocks
    assert on_disk.inline and on_disk.data == block_of(keys[0], BLOCK) and on_disk.tier == "disk"
    assert not in_hbm.inline and in_hbm.tier == "hbm" and in_hbm.size == BLOCK
    assert stub.Release(pb.LeaseRequest(lease_id=reply.lease_id)).valid


def test_client_on_another_host_falls_back_to_grpc(
    server: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another host has its own /dev/shm: the server's segments are not in it.
    other_shm = tmp_path / "other-host-shm"
    other_shm.mkdir()
    monkeypatch.setattr(shm, "SHM_ROOT", other_shm)
    keys = [key_of(i) for i in range(3)]
    data = [block_of(k, BLOCK) for k in keys]
    with Client(server.address) as kv:
        assert kv.transport() == "grpc"
        assert kv.put("t", keys, data) == ["hbm"] * 3
        assert kv.get("t", keys) == data
    # A segment of the same name that is not this server's (another container): token mismatch.
    for seg in server.store.tiers[:2]:
        assert seg.segment is not None
        (other_shm / seg.segment.name).write_bytes(b"\0" * (shm.HEADER_BYTES + seg.segment.size))
    with Client(server.address) as kv:
        assert kv.transport() == "grpc"
        assert kv.get("t", keys) == data


def test_uncommitted_blocks_are_invisible_and_their_slots_come_back(
    server: ThreadedServer, stub: pb_grpc.KVStoreStub, capsys: pytest.CaptureFixture[str]
) -> None:
    before = used(server)
    key = key_of(1)
    reply = stub.Reserve(pb.ReserveRequest(namespace="t", blocks=[pb.BlockHeader(key=key, size=BLOCK)]))
    assert reply.slots[0].state == pb.SLOT_WRITE and reply.expires_in_s == TTL
    assert used(server)["hbm"] == before["hbm"] + BLOCK  # the slot is taken...
    with grpc.insecure_channel(server.address) as channel:
        stats = pb_grpc.AdminStub(channel).Stats(pb.StatsRequest())
    assert (stats.leases.write_leases, stats.leases.reserved_bytes) == (1, BLOCK)
    assert [t.shared for t in stats.tiers] == [True, True, False]
    assert kvctl(["--address", server.address, "stats"]) == 0
    assert "1 writing" in capsys.readouterr().out
    assert stub.Lookup(pb.LookupRequest(namespace="t", keys=[key])).prefix_blocks == 0  # ...not visible
    assert not next(iter(stub.Get(pb.GetRequest(namespace="t", keys=[key])))).found
    assert wait_for(lambda: used(server) == before)  # the lease expired: the slot is free again
    with pytest.raises(grpc.RpcError) as err:
        stub.Commit(pb.LeaseRequest(lease_id=reply.lease_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in err.value.details()
    assert not stub.Release(pb.LeaseRequest(lease_id=reply.lease_id)).valid
    assert store_stats(server.store).blocks == 0


def test_writer_killed_mid_write_leaves_nothing(server: ThreadedServer) -> None:
    before = used(server)
    key = key_of(7)
    done = run_worker("die-mid-write", server.address, key.hex())
    assert done.returncode == -9, done.stderr
    assert json.loads(done.stdout)["lease_id"] > 0
    with Client(server.address) as kv:
        assert kv.lookup("t", keys=[key]).prefix_blocks == 0
        assert kv.get("t", [key]) == [None]
        assert wait_for(lambda: used(server) == before), "the dead writer's slot was not freed"
        kv.put("t", [key], [block_of(key, BLOCK)])  # the key can be written again, whole
        assert kv.get("t", [key]) == [block_of(key, BLOCK)]


def test_read_lease_holds_the_block_in_place(server: ThreadedServer, stub: pb_grpc.KVStoreStub) -> None:
    keys = [key_of(i) for i in range(60)]
    with Client(server.address) as kv:
        kv.put("t", keys[:1], [block_of(keys[0], BLOCK)])
        reply = stub.Acquire(pb.AcquireRequest(namespace="t", keys=keys[:1]))
        leased = reply.blocks[0]
        with pytest.raises(FailedPrecondition):
            kv.delete("t", keys[:1])
        # every tier overflows many times over: the leased block neither moves nor changes
        for i in range(1, 60, 10):
            kv.put("t", keys[i : i + 10], [block_of(k, BLOCK) for k in keys[i : i + 10]])
        entry = server.store.index.get("t", keys[0])
        assert (entry.tier, entry.location) == (leased.tier, leased.offset)
        segment = server.store.tier_by_name[leased.tier].segment
        assert segment is not None and segment.data is not None
        assert bytes(segment.data[leased.offset : leased.offset + BLOCK]) == block_of(keys[0], BLOCK)
        assert stub.Release(pb.LeaseRequest(lease_id=reply.lease_id)).valid
        assert kv.delete("t", keys[:1]) == 1


def test_expired_read_lease_makes_the_client_read_again(
    server: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = key_of(3)
    real = core.read_leased

    def slow_reader(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        time.sleep(TTL * 3)  # the lease expires before the client releases it
        return out

    with Client(server.address) as kv:
        kv.put("t", [key], [block_of(key, BLOCK)])
        monkeypatch.setattr(core, "read_leased", slow_reader)
        hits = store_stats(server.store).tiers[0].hits
        assert kv.get("t", [key]) == [block_of(key, BLOCK)]
        # read twice: once under the lease that expired, once again over gRPC
        assert store_stats(server.store).tiers[0].hits == hits + 2


def test_concurrent_writers_and_readers_never_see_torn_blocks(server: ThreadedServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in (
            ("write", server.address, "1", "3"),
            ("write", server.address, "2", "3"),
            ("read", server.address, "3"),
            ("read", server.address, "3"),
        )
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    writes, reads = results[:2], results[2:]
    assert all(w["puts"] > 10 for w in writes)
    assert sum(r["found"] for r in reads) > 50  # readers did read blocks while writers churned
    assert [r["torn"] for r in reads] == [0, 0]
    stats = store_stats(server.store)
    assert sum(t.drops for t in stats.tiers) > 0  # slots were reused under the readers
    assert server.server.leases.stats()["reserved_bytes"] == 0


def test_bad_lease_calls_change_nothing(server: ThreadedServer, stub: pb_grpc.KVStoreStub) -> None:
    before = used(server)
    bad = {
        "unknown namespace": (
            stub.Reserve,
            pb.ReserveRequest(namespace="nope", blocks=[pb.BlockHeader(key=key_of(1), size=BLOCK)]),
            grpc.StatusCode.NOT_FOUND,
        ),
        "wrong size": (
            stub.Reserve,
            pb.ReserveRequest(namespace="t", blocks=[pb.BlockHeader(key=key_of(1), size=BLOCK - 1)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "short key": (
            stub.Reserve,
            pb.ReserveRequest(namespace="t", blocks=[pb.BlockHeader(key=b"k", size=BLOCK)]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "no such lease": (stub.Commit, pb.LeaseRequest(lease_id=10**9), grpc.StatusCode.INVALID_ARGUMENT),
        "acquire short key": (
            stub.Acquire,
            pb.AcquireRequest(namespace="t", keys=[b"k"]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }
    for name, (method, request, code) in bad.items():
        with pytest.raises(grpc.RpcError) as err:
            method(request)
        assert err.value.code() == code, name
        assert err.value.details(), name
    assert used(server) == before and server.server.leases.stats()["write_leases"] == 0
    # a read lease cannot be committed, and stays valid
    reply = stub.Acquire(pb.AcquireRequest(namespace="t", keys=[key_of(1)]))
    with pytest.raises(grpc.RpcError) as err:
        stub.Commit(pb.LeaseRequest(lease_id=reply.lease_id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Release(pb.LeaseRequest(lease_id=reply.lease_id)).valid


def test_server_without_shared_memory(tmp_path: Path) -> None:
    srv = ThreadedServer(make_settings(tmp_path / "data", shared_memory={"enabled": "off"}))
    try:
        assert all(t.segment is None for t in srv.store.tiers)
        with Client(srv.address) as kv:
            assert kv.transport() == "grpc"
            kv.put("t", [key_of(1)], [block_of(key_of(1), BLOCK)])
            assert kv.get("t", [key_of(1)]) == [block_of(key_of(1), BLOCK)]
        with grpc.insecure_channel(srv.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.KVStoreStub(channel).Reserve(pb.ReserveRequest(namespace="t"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        srv.stop()


def test_shared_memory_on_refuses_a_full_dev_shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kvstore.tiers as tiers

    settings = make_settings(tmp_path / "data", shared_memory={"enabled": "on"})
    monkeypatch.setattr(tiers, "shm_room", lambda: 1024)
    with pytest.raises(ConfigError, match=r"shared_memory\.enabled"):
        share_host_tiers(settings, 1 << 20)
    auto = make_settings(tmp_path / "data", shared_memory={"enabled": "auto"})
    assert share_host_tiers(auto, 1 << 20) is False


def test_segments_are_unlinked_on_stop_and_after_a_crash(tmp_path: Path) -> None:
    for stop in ("terminate", "kill"):
        proc = ServerProcess(tmp_path / stop, ["--hbm", "1MiB", "--hbm-device", "cpu", "--dram", "1MiB"])
        with grpc.insecure_channel(proc.address) as channel:
            reply = pb_grpc.KVStoreStub(channel).AttachSharedMemory(pb.AttachSharedMemoryRequest())
        paths = [shm.SHM_ROOT / seg.name for seg in reply.segments]
        assert [seg.tier for seg in reply.segments] == ["hbm", "dram"] and all(p.exists() for p in paths)
        getattr(proc, stop)()
        # after SIGKILL, Python's resource tracker (a process of its own) unlinks them
        assert wait_for(lambda paths=paths: not any(p.exists() for p in paths), timeout=20), stop


def test_bench_dataplane_writes_its_figures(tmp_path: Path) -> None:
    from kvstore.cli import main

    out = tmp_path / "dataplane.json"
    args = ["bench", "dataplane", "--sizes", "1", "--batch-mib", "2", "--total-mib", "4", "--no-lmcache"]
    assert main([*args, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["sizes"]
    assert row["block_mib"] == 1 and row["per_call"] == 2
    assert all(row[k] > 0 for k in ("raw", "shm_put", "shm_get", "grpc_put", "grpc_get"))
    assert main(["bench", "dataplane", "--sizes", "one"]) == 2


def test_a_client_notices_the_server_restarted_with_new_segments(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--port", str(port), "--hbm", "1MiB", "--hbm-device", "cpu", "--dram", "1MiB"]
    config = tmp_path / "kvstore.yaml"
    config.write_text(f"namespaces: [{{name: t, model: m, block_tokens: 4, block_bytes: {BLOCK}}}]\n")
    old_key, new_key = key_of(1), key_of(2)
    first = ServerProcess(tmp_path / "data", args, config=config)
    kv = Client(f"127.0.0.1:{port}", timeout=20)
    try:
        kv.put("t", [old_key], [block_of(old_key, BLOCK)])
        assert kv.transport() == "shm"
        first.terminate()
        with ServerProcess(tmp_path / "data", args, config=config):
            # another client fills the new server's slot where the old one kept old_key
            with Client(f"127.0.0.1:{port}") as other:
                other.delete("t", [old_key])
                other.put("t", [new_key], [block_of(new_key, BLOCK)])
            # the old mapping would show old_key's bytes: the client must not read it
            assert kv.get("t", [new_key]) == [block_of(new_key, BLOCK)]
            kv.put("t", [old_key], [block_of(old_key, BLOCK)])
            assert kv.transport() == "shm"  # attached to the new segments again
            assert kv.get("t", [old_key, new_key]) == [block_of(old_key, BLOCK), block_of(new_key, BLOCK)]
    finally:
        kv.close()


def test_slots_reserved_by_count_are_named_when_committed(
    server: ThreadedServer, stub: pb_grpc.KVStoreStub
) -> None:
    """A client that hands out slots before it knows their keys (LMCache's store buffers): Reserve
    by count, write, then one CommitSlots naming blocks in slots of several leases."""
    before = used(server)
    first = stub.Reserve(pb.ReserveRequest(namespace="t", count=3))
    second = stub.Reserve(pb.ReserveRequest(namespace="t", count=2))
    assert [s.state for s in first.slots] == [pb.SLOT_WRITE] * 3 and not first.slots[0].key
    assert used(server)["hbm"] == before["hbm"] + 5 * BLOCK
    segments = shm.attach(stub.AttachSharedMemory(pb.AttachSharedMemoryRequest()))
    assert segments is not None
    keys = [key_of(i) for i in range(3)]
    picks = [(first, 2), (second, 0), (first, 0)]  # any slot of any lease, in any order
    for k, (reply, i) in zip(keys, picks, strict=True):
        s = reply.slots[i]
        segments.view(s.segment, s.offset, s.size)[:] = block_of(k, BLOCK)
    blocks = [
        pb.SlotBlock(lease_id=r.lease_id, slot=i, key=k, parent=keys[n - 1] if n else b"", meta=b"m%d" % n)
        for n, (k, (r, i)) in enumerate(zip(keys, picks, strict=True))
    ]
    assert list(stub.CommitSlots(pb.CommitSlotsRequest(blocks=blocks, session="s1")).tiers) == ["hbm"] * 3
    with Client(server.address) as kv:
        got = kv.fetch("t", keys)
        assert [bytes(b.data) for b in got] == [block_of(k, BLOCK) for k in keys]
        assert [b.meta for b in got] == [b"m0", b"m1", b"m2"]
        assert kv.lookup("t", keys=keys).prefix_blocks == 3  # chained by their parents
    with grpc.insecure_channel(server.address) as channel:
        listed = pb_grpc.AdminStub(channel).ListSessions(pb.ListSessionsRequest()).sessions
    assert [(x.session, x.blocks) for x in listed] == [("s1", 3)]
    # slot 2 of the first lease was committed: naming it again changes nothing
    with pytest.raises(grpc.RpcError) as err:
        stub.CommitSlots(
            pb.CommitSlotsRequest(blocks=[pb.SlotBlock(lease_id=first.lease_id, slot=2, key=key_of(9))])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "committed already" in err.value.details()
    # both leases still hold an open slot: released, or expired, it is freed; committed blocks stay
    assert server.server.leases.stats()["write_leases"] == 2
    assert stub.Release(pb.LeaseRequest(lease_id=second.lease_id)).valid
    assert wait_for(lambda: used(server)["hbm"] == before["hbm"] + 3 * BLOCK)
    assert server.server.leases.stats()["write_leases"] == 0
    assert store_stats(server.store).blocks == 3
    segments.close()


def test_bad_slot_commits_change_nothing(server: ThreadedServer, stub: pb_grpc.KVStoreStub) -> None:
    by_count = stub.Reserve(pb.ReserveRequest(namespace="t", count=2))
    named = stub.Reserve(pb.ReserveRequest(namespace="t", blocks=[pb.BlockHeader(key=key_of(5), size=BLOCK)]))
    before = used(server)
    good = pb.SlotBlock(lease_id=by_count.lease_id, slot=0, key=key_of(1))
    bad = {
        "no such lease": pb.SlotBlock(lease_id=10**9, slot=0, key=key_of(1)),
        "a lease reserved with keys": pb.SlotBlock(lease_id=named.lease_id, slot=0, key=key_of(1)),
        "slot out of range": pb.SlotBlock(lease_id=by_count.lease_id, slot=2, key=key_of(1)),
        "short key": pb.SlotBlock(lease_id=by_count.lease_id, slot=1, key=b"k"),
        "a slot named twice": good,
    }
    for name, block in bad.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.CommitSlots(pb.CommitSlotsRequest(blocks=[good, block]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert err.value.details(), name
    with pytest.raises(grpc.RpcError) as err:  # keys belong to CommitSlots, not to a Reserve by count
        stub.Reserve(
            pb.ReserveRequest(namespace="t", count=1, blocks=[pb.BlockHeader(key=key_of(1), size=BLOCK)])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.Commit(pb.LeaseRequest(lease_id=by_count.lease_id))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "CommitSlots" in err.value.details()
    assert used(server) == before and store_stats(server.store).blocks == 0
    assert server.server.leases.stats()["write_leases"] == 2
    assert not stub.CommitSlots(pb.CommitSlotsRequest(session="s1")).tiers  # no blocks: nothing at all
    assert not server.store.sessions.sessions
    stub.CommitSlots(pb.CommitSlotsRequest(blocks=[good]))  # still open: the refusals took nothing
    assert store_stats(server.store).blocks == 1
    last = pb.SlotBlock(lease_id=by_count.lease_id, slot=1, key=key_of(2))
    stub.CommitSlots(pb.CommitSlotsRequest(blocks=[last]))
    assert server.server.leases.stats()["write_leases"] == 1  # every slot committed: the lease closed
