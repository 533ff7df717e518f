"""The real gRPC server on loopback, driven through the SDK (sync and async) and raw stubs."""

from __future__ import annotations

import asyncio
import os
import threading

import grpc
import pytest
import torch
from conftest import BLOCK, ThreadedServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kvstore.sdk import AsyncClient, Client

from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from kvstore.stats import store_stats
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


def blocks(n: int, seed: int = 0) -> list[bytes]:
    return [os.urandom(BLOCK) for _ in range(n)]


def state(srv: ThreadedServer) -> tuple:
    s = store_stats(srv.store)
    return tuple((t.name, t.used, t.blocks, t.pinned_blocks) for t in s.tiers), s.blocks


def test_put_get_lookup_by_tokens_sync(server: ThreadedServer) -> None:
    tokens = list(range(4 * 5 + 2))  # five full blocks and a partial one
    with Client(server.address) as kv:
        keys = kv.keys_for("t", tokens)
        assert len(keys) == 5
        data = blocks(5)
        assert kv.put("t", keys, data) == ["hbm"] * 5
        assert kv.get("t", keys) == data
        found = kv.lookup("t", tokens=tokens)
        assert found.prefix_blocks == 5 and found.keys == keys and found.blocks_per_tier == {"hbm": 5}
        # a different tenant's namespace never matches the same tokens
        assert kv.lookup("other", tokens=tokens).prefix_blocks == 0
        assert kv.delete("t", keys[3:]) == 2
        assert kv.lookup("t", keys=keys).prefix_blocks == 3
        assert kv.get("t", keys, stop_at_miss=True) == [*data[:3], None, None]
    entry = server.store.index.get("t", keys[1])
    assert entry.parent == keys[0]  # the SDK sent the chain's parents


def test_tensors_round_trip_dtype_and_shape(server: ThreadedServer) -> None:
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(8))
        tensors = [torch.randn(2, 4, 256, dtype=torch.bfloat16), torch.arange(1024, dtype=torch.int32)]
        kv.put("t", keys, tensors)
        got = kv.get("t", keys)
    for want, have in zip(tensors, got, strict=True):
        assert have.dtype == want.dtype and have.shape == want.shape and torch.equal(have, want)


async def test_async_client_matches_sync(server: ThreadedServer) -> None:
    async with AsyncClient(server.address) as kv:
        keys = await kv.keys_for("t", range(12))
        data = blocks(3)
        assert await kv.put("t", keys, data, session="s1") == ["hbm"] * 3
        assert await kv.get("t", keys) == data
        assert (await kv.lookup("t", keys=keys)).prefix_blocks == 3
        assert await kv.pin("t", keys[:1]) == 1
        with pytest.raises(FailedPrecondition):
            await kv.delete("t", keys[:1])
        assert await kv.unpin("t", keys[:1]) == 1
        assert await kv.delete("t", keys) == 3
        with pytest.raises(NotFound):
            await kv.namespace("missing")
    assert store_stats(server.store).blocks == 0


@pytest.mark.parametrize("shared_memory", [False, True], ids=["grpc", "shm"])
def test_blocks_flow_down_to_disk_and_back(server: ThreadedServer, shared_memory: bool) -> None:
    with Client(server.address, shared_memory=shared_memory) as kv:
        assert kv.transport() == ("shm" if shared_memory else "grpc")
        keys = kv.keys_for("t", range(4 * 56))
        data = blocks(56)
        tiers = kv.put("t", keys, data)
        # 48 slots in all: the batch's own first 8 blocks were pushed off the bottom
        expected = [""] * 8 + ["disk"] * 16 + ["dram"] * 16 + ["hbm"] * 16
        now = [e.tier if e else "" for e in (server.store.index.get("t", k) for k in keys)]
        assert now == expected
        if not shared_memory:  # over shared memory, tiers are as each round was committed
            assert tiers == expected
        assert kv.get("t", keys[8:9]) == data[8:9]  # served from disk, promoted to hbm
        assert server.store.index.get("t", keys[8]).tier == "hbm"
        # with every tier full, each promotion cascades and the bottom drops its LRU block;
        # whatever comes back is exactly what was put
        got = kv.get("t", keys[9:])
        assert all(g is None or g == d for g, d in zip(got, data[9:], strict=True))
        assert sum(g is not None for g in got) >= 32
    stats = {t.name: t for t in store_stats(server.store).tiers}
    assert stats["disk"].hits > 0 and stats["disk"].moves_in > 0 and stats["disk"].drops >= 8


BAD_CALLS = {
    "short key": lambda kv, keys: kv.put("t", [b"k" * 8], blocks(1)),
    "wrong block size": lambda kv, keys: kv.put("t", keys[:1], [b"x" * (BLOCK - 1)]),
    "unknown namespace": lambda kv, keys: kv.put("nope", keys[:1], blocks(1)),
    "empty namespace": lambda kv, keys: kv.lookup("", keys=keys),
    "second block of a stream is bad": lambda kv, keys: kv.put("t", keys[5:7], [os.urandom(BLOCK), b"bad"]),
    "get with a long key": lambda kv, keys: kv.get("t", [b"k" * 65]),
    "pin a missing block": lambda kv, keys: kv.pin("t", [keys[0], keys[9]]),
    "unpin an unpinned block": lambda kv, keys: kv.unpin("t", keys[:1]),
}
EXPECTED = {
    "short key": InvalidArgument,
    "wrong block size": InvalidArgument,
    "unknown namespace": NotFound,
    "empty namespace": InvalidArgument,
    "second block of a stream is bad": InvalidArgument,
    "get with a long key": InvalidArgument,
    "pin a missing block": NotFound,
    "unpin an unpinned block": FailedPrecondition,
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_requests_get_a_clear_status_and_change_nothing(server: ThreadedServer, case: str) -> None:
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(40))
        kv.put("t", keys[:3], blocks(3))
        before = state(server)
        with pytest.raises(EXPECTED[case]) as err:
            BAD_CALLS[case](kv, keys)
        assert len(str(err.value)) > 25  # a sentence a person can act on, not a bare code
        assert state(server) == before
        assert kv.lookup("t", keys=keys).prefix_blocks == 3


def test_put_into_tiers_full_of_pinned_blocks_is_resource_exhausted(server: ThreadedServer) -> None:
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(4 * 49))
        kv.put("t", keys[:48], blocks(48), pin=True)
        before = state(server)
        with pytest.raises(ResourceExhausted, match="pinned"):
            kv.put("t", keys[48:], blocks(1))
        assert state(server) == before


def test_raw_stub_errors_carry_grpc_status(server: ThreadedServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        kv = pb_grpc.KVStoreStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            kv.Lookup(pb.LookupRequest(namespace="t", keys=[b"x" * 32], tokens=[1, 2, 3, 4]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        admin = pb_grpc.AdminStub(channel)
        for request in (pb.ListBlocksRequest(limit=10**6), pb.ListBlocksRequest(tier="tape")):
            with pytest.raises(grpc.RpcError) as err:
                admin.ListBlocks(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            admin.Evict(pb.EvictRequest(tier="hbm"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.AgentHintsStub(channel).AwaitingUser(pb.SessionRequest(session="s"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "OpenSession" in err.value.details()


def test_standard_health_and_reflection(server: ThreadedServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "kvstore.v1.KVStore", "kvstore.v1.Admin"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"kvstore.v1.KVStore", "kvstore.v1.Admin", "grpc.health.v1.Health"} <= names


def test_admin_stats_list_evict(server: ThreadedServer) -> None:
    with Client(server.address) as kv, grpc.insecure_channel(server.address) as channel:
        keys = kv.keys_for("t", range(4 * 4))
        kv.put("t", keys, blocks(4), session="agent-1")
        admin = pb_grpc.AdminStub(channel)
        listed = admin.ListBlocks(pb.ListBlocksRequest(namespace="t", limit=2))
        assert listed.total == 4 and len(listed.blocks) == 2 and listed.blocks[0].sessions == ["agent-1"]
        evicted = admin.Evict(pb.EvictRequest(tier="hbm", bytes=2 * BLOCK))
        assert (evicted.blocks, evicted.bytes) == (2, 2 * BLOCK)
        stats = {t.name: t for t in admin.Stats(pb.StatsRequest()).tiers}
        assert stats["hbm"].blocks == 2 and stats["dram"].blocks == 2 and stats["dram"].moves_in == 2
        assert admin.Health(pb.HealthRequest()).status == "SERVING"


def test_many_concurrent_clients(server: ThreadedServer) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with Client(server.address) as kv:
                for round_ in range(5):
                    keys = kv.keys_for("t", [n * 1000 + round_ * 10 + t for t in range(8)])
                    data = blocks(2)
                    kv.put("t", keys, data)
                    got = kv.get("t", keys)
                    # under pressure from 15 other writers a block may already have been dropped,
                    # but whatever comes back must be exactly what was put
                    assert all(g is None or g == d for g, d in zip(got, data, strict=True))
                    kv.lookup("t", keys=keys)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for tier in server.store.tiers:
        assert tier.used <= tier.capacity


async def test_many_concurrent_async_clients(server: ThreadedServer) -> None:
    async def one(n: int) -> bool:
        async with AsyncClient(server.address) as kv:
            keys = await kv.keys_for("t", [n * 100 + t for t in range(4)])
            data = blocks(1)
            await kv.put("t", keys, data)
            got = await kv.get("t", keys)
            return got[0] is None or got == data

    assert all(await asyncio.gather(*(one(n) for n in range(32))))


def test_unix_socket(tmp_path, settings) -> None:
    sock = tmp_path / "kv.sock"
    srv = ThreadedServer(settings.model_copy(update={"unix_socket": sock}))
    try:
        with Client(str(sock)) as kv:
            keys = kv.keys_for("t", range(4))
            kv.put("t", keys, blocks(1))
            assert kv.lookup("t", keys=keys).prefix_blocks == 1
    finally:
        srv.stop()
    assert not sock.exists()


def test_prometheus_metrics_reflect_the_store(tmp_path, settings) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = ThreadedServer(settings.model_copy(update={"metrics_port": port}))
    try:
        with Client(srv.address) as kv:
            keys = kv.keys_for("t", range(4 * 3))
            kv.put("t", keys, blocks(3))
            kv.get("t", [b"z" * 32])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        srv.stop()
    assert f'kvstore_tier_used_bytes{{tier="hbm"}} {3 * BLOCK}.0' in text
    assert 'kvstore_tier_blocks{tier="hbm"} 3.0' in text
    assert "kvstore_get_misses_total 1.0" in text
