"""The shared remote tier on Redis, the global prefix index and Admin.Route, against real Redis
servers (standalone and a 3-master cluster) that the tests start, kill and restart."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, free_port, make_settings, wait_until
from kvstore.sdk import AsyncClient, Client
from redis_servers import RedisCluster, RedisServer, need_redis

from kvstore.config import ConfigError, Settings, load_settings
from kvstore.hashing import Namespace
from kvstore.kvctl import main as kvctl
from kvstore.server.metrics import StoreCollector
from kvstore.server.process import ServerProcess
from kvstore.tiers.redis_layout import (
    INDEX_TTL_S,
    WORKERS,
    BadValue,
    block_key,
    decode,
    encode,
    index_key,
    worker_key,
)
from kvstore.tiers.redis_link import RedisLink
from kvstore.tiers.remote import RemoteTier
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

NS = Namespace("t", "test-model", "", "", 4, BLOCK)


def data(n: int) -> list[bytes]:
    return [os.urandom(BLOCK) for _ in range(n)]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.kill()


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> RedisServer:
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server


def worker(tmp_path: Path, name: str, url: str, **remote: Any) -> ThreadedServer:
    settings = make_settings(tmp_path / name, remote={"url": url, "timeout_s": 0.5, **remote}, worker_id=name)
    return ThreadedServer(settings)


def admin(address: str) -> pb_grpc.AdminStub:
    return pb_grpc.AdminStub(grpc.insecure_channel(address))


# ---------------------------------------------------------------- the value format


def test_value_is_checked_and_names_never_collide_or_form_hash_tags() -> None:
    payload = os.urandom(BLOCK)
    raw = encode(b"p" * 32, b"meta", payload)
    block = decode(raw, BLOCK)
    assert (block.parent, block.meta, block.data) == (b"p" * 32, b"meta", payload)
    flipped = bytearray(raw)
    flipped[-1] ^= 1
    for bad, size in ((bytes(flipped), BLOCK), (raw[:-1], BLOCK), (raw[:10], BLOCK), (raw, BLOCK * 2)):
        with pytest.raises(BadValue):
            decode(bad, size)
    key = b"k" * 32
    odd = Namespace("a:b{x}", "m", "ten:ant{", "", 4, BLOCK)
    names = {block_key(NS, key), block_key(odd, key), index_key(NS, key), worker_key("w{1}:x")}
    assert len(names) == 4 and not any("{" in n or "}" in n for n in names)
    assert block_key(odd, key).count(":") == block_key(NS, key).count(":")  # names cannot add fields


def test_config_refuses_a_url_that_is_not_redis_and_the_flag_sets_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="redis://"):
        Settings(remote={"url": "http://127.0.0.1:6379"})
    with pytest.raises(ConfigError, match=r"remote\.timeout_s"):
        load_settings(None, data_dir=tmp_path, remote={"url": "redis://x:1/0", "timeout_s": 0})
    from kvstore.cli import _nested, build_parser

    args = build_parser().parse_args(["serve", "--remote-url", "redis://127.0.0.1:7/0", "--worker-id", "w1"])
    flags = _nested(args)
    assert flags["remote"] == {"url": "redis://127.0.0.1:7/0"} and flags["worker_id"] == "w1"


# ---------------------------------------------------------------- two workers, one Redis


def test_blocks_put_on_one_worker_are_found_read_and_routed_on_another(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    a = worker(tmp_path, "A", fresh_redis.url, write_through=True)
    b = worker(tmp_path, "B", fresh_redis.url)
    try:
        tokens = list(range(4 * 6))
        with Client(a.address) as ka, Client(b.address) as kb:  # shared memory: Acquire reads remote inline
            keys = ka.keys_for("t", tokens)
            blocks = data(6)
            assert ka.put("t", keys, blocks) == ["hbm"] * 6  # through shared memory: write-through too
            assert wait_until(lambda: a.store.remote.stats().writes == 6)
            found = kb.lookup("t", tokens=tokens)
            assert found.prefix_blocks == 6 and found.blocks_per_tier == {"remote": 6}
            wait_until(lambda: a.server.deployment.publisher.published >= 6)
            route = kb.route("t", tokens=tokens)
            assert route.index_used and route.chain_blocks == 6
            assert [c.worker for c in route.candidates] == ["A", "B"]  # A holds it in hbm, B only remotely
            assert route.candidates[0].prefix_blocks == {"hbm": 6}
            assert route.candidates[0].address == a.address
            assert route.candidates[1].prefix_blocks == {"remote": 6}
            assert kb.get("t", keys) == blocks  # byte-identical through the other worker
            assert kb.lookup("t", keys=keys).blocks_per_tier == {"hbm": 6}  # now local on B too
            # ...with a checksum of its own, so a scribble on B's copy is caught like any other
            assert all(b.store.index.get("t", k).checksum is not None for k in keys)
            assert b.store.remote.stats().hits == 6
            # Delete removes it from the shared tier too: it does not come back from Redis.
            assert kb.delete("t", keys[4:]) == 2
            assert kb.get("t", keys[4:]) == [None, None]
            assert ka.lookup("t", keys=keys).prefix_blocks == 6  # A's own copies stay
    finally:
        a.stop()
        b.stop()


async def test_async_route_is_the_twin_and_bad_requests_are_refused(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    a = worker(tmp_path, "A", fresh_redis.url)
    try:
        async with AsyncClient(a.address, shared_memory=False) as kv:
            keys = await kv.keys_for("t", range(8))
            await kv.put("t", keys, data(2))
            route = await kv.route("t", keys=keys, load_weight=0.0, limit=1)
            assert [(c.worker, c.prefix_blocks) for c in route.candidates] == [("A", {"hbm": 2})]
        stub = admin(a.address)
        bad = [
            (pb.RouteRequest(namespace="t"), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.RouteRequest(namespace="t", keys=keys, tokens=[1, 2]), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.RouteRequest(namespace="nope", tokens=[1, 2, 3, 4]), grpc.StatusCode.NOT_FOUND),
            (pb.RouteRequest(namespace="t", keys=[b"short"]), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.RouteRequest(namespace="t", keys=keys, load_weight=-1), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for request, code in bad:
            with pytest.raises(grpc.RpcError) as err:
                stub.Route(request, timeout=5)
            assert err.value.code() == code, request
    finally:
        a.stop()


def test_kvctl_route_prints_the_candidates(
    tmp_path: Path, fresh_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    a = worker(tmp_path, "A", fresh_redis.url)
    try:
        with Client(a.address, shared_memory=False) as kv:
            kv.put("t", kv.keys_for("t", range(8)), data(2))
        assert a.store.remote.flush()
        tokens = ",".join(map(str, range(10)))
        assert kvctl(["route", "--namespace", "t", "--tokens", tokens, "--address", a.address, "--json"]) == 0
        reply = json.loads(capsys.readouterr().out)
        assert reply["candidates"][0]["worker"] == "A" and reply["candidates"][0]["prefix_blocks"] == {
            "hbm": 2
        }
        assert reply["candidates"][0]["uncovered_tokens"] == 2 and reply["index_used"] is True
        assert kvctl(["route", "--namespace", "t", "--tokens", tokens, "--address", a.address]) == 0
        assert "hbm 2" in capsys.readouterr().out
        assert kvctl(["stats", "--address", a.address]) == 0
        assert "remote (redis, worker A): up" in capsys.readouterr().out
        metrics = {m.name: m for m in StoreCollector(a.store).collect()}
        assert metrics["kvstore_remote_up"].samples[0].value == 1
        outcomes = {s.labels["outcome"]: s.value for s in metrics["kvstore_remote_blocks"].samples}
        assert outcomes["writes"] == 2
        assert kvctl(["route", "--namespace", "nope", "--tokens", tokens, "--address", a.address]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            kvctl(["route", "--namespace", "t", "--address", a.address])
    finally:
        a.stop()


def test_route_ignores_workers_whose_record_is_gone(tmp_path: Path, fresh_redis: RedisServer) -> None:
    a = worker(tmp_path, "A", fresh_redis.url)
    b = worker(tmp_path, "B", fresh_redis.url, write_through=False)
    try:
        with Client(a.address, shared_memory=False) as ka, Client(b.address, shared_memory=False) as kb:
            keys = ka.keys_for("t", range(12))
            ka.put("t", keys, data(3))
            assert wait_until(lambda: kb.route("t", keys=keys).candidates[0].prefix_blocks == {"hbm": 3})
            a.server.deployment.publisher._stop.set()  # A stops heartbeating, as a dead worker would
            a.server.deployment.publisher._thread.join()
            fresh_redis.client().delete(worker_key("A"))  # ... and its record expires
            assert [c.worker for c in kb.route("t", keys=keys).candidates] == ["B"]
            assert fresh_redis.client().hget(index_key(NS, keys[0]), "A").startswith(b"hbm|")  # still there
            # A live worker's field whose removal was lost: stale after INDEX_TTL_S, ignored too
            r = fresh_redis.client()
            r.hset(worker_key("C"), mapping={"address": "127.0.0.1:1", "load": 0})
            r.zadd(WORKERS, {"C": time.time()})
            r.hset(index_key(NS, keys[0]), "C", f"dram|{int(time.time()) - INDEX_TTL_S - 1}")

            def c_holds() -> dict[str, int]:
                found = [c for c in kb.route("t", keys=keys).candidates if c.worker == "C"]
                return dict(found[0].prefix_blocks)

            assert c_holds() == {"remote": 3}  # A wrote its blocks through: every worker can read them
            r.hset(index_key(NS, keys[0]), "C", f"dram|{int(time.time())}")
            assert c_holds() == {"dram": 1, "remote": 2}
    finally:
        a.stop()
        b.stop()


def test_corrupt_remote_value_is_a_miss_and_is_deleted(tmp_path: Path, fresh_redis: RedisServer) -> None:
    a = worker(tmp_path, "A", fresh_redis.url, write_through=True)
    b = worker(tmp_path, "B", fresh_redis.url)
    try:
        with Client(a.address, shared_memory=False) as ka, Client(b.address, shared_memory=False) as kb:
            keys = ka.keys_for("t", range(8))
            blocks = data(2)
            ka.put("t", keys, blocks)
            assert wait_until(lambda: a.store.remote.stats().writes == 2)
            r = fresh_redis.client()
            raw = bytearray(r.get(block_key(NS, keys[1])))
            raw[-5] ^= 0xFF
            r.set(block_key(NS, keys[1]), bytes(raw))
            assert kb.get("t", keys) == [blocks[0], None]
            assert r.exists(block_key(NS, keys[1])) == 0
            assert b.store.remote.stats().corrupt == 1
            assert kb.lookup("t", keys=keys).blocks_per_tier == {"hbm": 1}
    finally:
        a.stop()
        b.stop()


def test_demotion_sends_evicted_blocks_and_capacity_is_kvstores(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    # 2 blocks per local tier (6 in all), remote share 8 blocks; write_through off: blocks reach
    # Redis only when they fall out of the bottom tier.
    tiers = {"hbm": {"capacity": 2 * BLOCK}, "dram": {"capacity": 2 * BLOCK}, "disk": {"capacity": 2 * BLOCK}}
    remote = {"url": fresh_redis.url, "capacity": 8 * BLOCK, "write_through": False}
    settings = make_settings(tmp_path / "A", remote=remote, worker_id="A", **tiers)
    a = ThreadedServer(settings)
    try:
        with Client(a.address, shared_memory=False) as kv:
            keys = kv.keys_for("t", range(4 * 16))
            blocks = data(16)
            for i in range(16):
                kv.put("t", keys[i : i + 1], blocks[i : i + 1], parent=keys[i - 1] if i else None)
            assert a.store.remote.flush()
            stats = a.store.remote.stats()
            assert stats.writes == 10 and stats.evictions == 2 and stats.blocks == 8
            assert stats.used == 8 * BLOCK
            stored = fresh_redis.client().keys(block_key(NS, b"") + "*")
            assert len(stored) == 8  # kvstore deleted its oldest two; Redis evicted nothing
            assert kv.get("t", keys[2:3]) == blocks[2:3]  # evicted locally, served from Redis
            assert kv.get("t", keys[0:1]) == [None]  # past the remote capacity: gone
    finally:
        a.stop()


def test_tenants_never_share_remote_blocks(tmp_path: Path, fresh_redis: RedisServer) -> None:
    a = worker(tmp_path, "A", fresh_redis.url, write_through=True)
    b = worker(tmp_path, "B", fresh_redis.url)
    try:
        key = [b"x" * 32]
        with Client(a.address, shared_memory=False) as ka, Client(b.address, shared_memory=False) as kb:
            mine, theirs = data(1), data(1)
            ka.put("t", key, mine)
            ka.put("other", key, theirs)
            assert wait_until(lambda: a.store.remote.stats().writes == 2)
            assert kb.get("t", key) == mine and kb.get("other", key) == theirs
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------- outages


def test_redis_killed_and_restarted_mid_run(
    tmp_path: Path, fresh_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kvstore.tiers.redis_link")
    a = worker(tmp_path, "A", fresh_redis.url, write_through=True)
    b = worker(tmp_path, "B", fresh_redis.url)
    try:
        with Client(a.address) as ka, Client(b.address, shared_memory=False) as kb:
            keys = ka.keys_for("t", range(4 * 8))
            blocks = data(8)
            ka.put("t", keys[:4], blocks[:4])
            assert wait_until(lambda: a.store.remote.stats().writes == 4)
            assert wait_until(lambda: a.server.deployment.publisher.published == 4)
            republished = a.server.deployment.publisher.republished
            caplog.clear()
            fresh_redis.kill()
            # Engines see no errors: local tiers serve, puts land, remote reads are fast misses.
            ka.put("t", keys[4:], blocks[4:], parent=keys[3])
            assert ka.get("t", keys) == blocks
            started = time.monotonic()
            for _ in range(5):
                assert kb.lookup("t", keys=keys).prefix_blocks == 0
                assert kb.get("t", keys[:2]) == [None, None]
            assert time.monotonic() - started < 3
            assert kb.route("t", keys=keys).index_used is False
            for srv in (a, b):
                health = admin(srv.address).Health(pb.HealthRequest(), timeout=5)
                remote = next(t for t in health.tiers if t.name == "remote")
                assert health.status == "DEGRADED" and not remote.ok and "unreachable" in remote.detail
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 2  # one line per worker for the whole episode
            # Back: reconnected by itself, the index is published again (the restarted Redis is
            # empty) and the puts made during the outage reach Redis from the write queue.
            fresh_redis.start()
            for srv in (a, b):
                assert wait_until(
                    lambda srv=srv: (
                        admin(srv.address).Health(pb.HealthRequest(), timeout=5).status == "SERVING"
                    )
                )
            r = fresh_redis.client()
            assert wait_until(lambda: r.hget(index_key(NS, keys[0]), "A").startswith(b"hbm|"))
            assert wait_until(lambda: r.exists(block_key(NS, keys[7])))
            route = kb.route("t", keys=keys)
            assert route.index_used and route.candidates[0].worker == "A"
            assert kb.get("t", keys[7:]) == blocks[7:]
            stats = admin(a.address).Stats(pb.StatsRequest(), timeout=5).remote
            assert stats.up and stats.episodes == 1 and stats.index_republished == republished + 1
            assert "reconnected" in caplog.text
    finally:
        a.stop()
        b.stop()


def test_redis_down_at_start_then_up(tmp_path: Path) -> None:
    need_redis()
    port = free_port()
    a = worker(tmp_path, "A", f"redis://127.0.0.1:{port}/0")
    try:
        with Client(a.address, shared_memory=False) as kv:
            keys = kv.keys_for("t", range(8))
            blocks = data(2)
            assert kv.put("t", keys, blocks) == ["hbm", "hbm"]
            assert kv.get("t", keys) == blocks
            assert admin(a.address).Health(pb.HealthRequest(), timeout=5).status == "DEGRADED"
            late = RedisServer(tmp_path, port=port)
            try:
                r = late.client()
                assert wait_until(
                    lambda: (r.hget(index_key(NS, keys[1]), "A") or b"").startswith(b"hbm|")
                )  # published
                assert wait_until(lambda: r.exists(block_key(NS, keys[1])))  # the queued write-through
                assert admin(a.address).Health(pb.HealthRequest(), timeout=5).status == "SERVING"
            finally:
                late.kill()
    finally:
        a.stop()


def test_write_queue_is_bounded_and_counts_what_it_drops() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", False, 0.2)  # nothing listens there
    tier = RemoteTier(link, {"t": NS}, 1 << 20, True, lambda ns, key: None, queue_bytes=BLOCK, queue_blocks=3)
    assert tier.offer("t", b"a" * 32, data=data(1)[0])
    assert not tier.offer("t", b"b" * 32, data=data(1)[0])  # past the byte bound
    assert tier.offer("t", b"c" * 32) and tier.offer("t", b"d" * 32)  # write-through: keys only
    assert not tier.offer("t", b"e" * 32)  # past the block bound
    assert tier.stats().dropped_writes == 2 and tier.stats().queued == 3
    tier.delete("t", [b"a" * 32, b"c" * 32])  # a deleted block's queued write must not bring it back
    assert tier.stats().queued == 1
    assert tier.offer("t", b"f" * 32, data=data(1)[0])  # its bytes no longer count against the bound


def test_a_tenant_past_its_remote_cap_loses_its_own_blocks_not_anothers(fresh_redis: RedisServer) -> None:
    acme = Namespace("a", "test-model", "acme", "", 4, BLOCK)
    bolt = Namespace("b", "test-model", "bolt", "", 4, BLOCK)
    link = RedisLink(fresh_redis.url, False, 2.0)
    link.probe()
    tier = RemoteTier(
        link, {"a": acme, "b": bolt}, 6 * BLOCK, False, lambda ns, key: None, tenant_caps={"acme": 2 * BLOCK}
    )
    tier.start()
    try:
        bolts = [bytes([1, i]) * 16 for i in range(3)]
        for key in bolts:  # bolt's blocks first: the least recently written
            assert tier.offer("b", key, data=data(1)[0])
        assert tier.flush()
        acmes = [bytes([2, i]) * 16 for i in range(4)]
        for key in acmes:
            assert tier.offer("a", key, data=data(1)[0])
        assert tier.flush()
        r = fresh_redis.client()
        assert [r.exists(block_key(bolt, k)) for k in bolts] == [1, 1, 1]  # within the worker's share
        assert [r.exists(block_key(acme, k)) for k in acmes] == [0, 0, 1, 1]  # acme keeps its newest two
        assert tier.stats().used == 5 * BLOCK and tier.stats().evictions == 2
    finally:
        tier.close()


def test_slow_redis_costs_a_timeout_not_an_error(tmp_path: Path, fresh_redis: RedisServer) -> None:
    a = worker(tmp_path, "A", fresh_redis.url, timeout_s=0.2)
    try:
        with Client(a.address, shared_memory=False) as kv:
            keys = kv.keys_for("t", range(8))
            r = fresh_redis.client()
            r.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # Redis stops answering for 1.5 s
            started = time.monotonic()
            assert kv.lookup("t", keys=keys).prefix_blocks == 0
            assert kv.get("t", keys) == [None, None]
            assert time.monotonic() - started < 1.0
            assert not a.store.remote.link.up
            assert wait_until(lambda: a.store.remote.link.up, timeout=10)
    finally:
        a.stop()


# ---------------------------------------------------------------- Redis Cluster


def test_cluster_shares_blocks_and_survives_losing_it(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path / "cluster")
    a = worker(tmp_path, "A", cluster.url, cluster=True, write_through=True)
    b = worker(tmp_path, "B", cluster.url, cluster=True)
    try:
        with Client(a.address, shared_memory=False) as ka, Client(b.address, shared_memory=False) as kb:
            keys = ka.keys_for("t", range(4 * 12))
            blocks = data(12)
            ka.put("t", keys, blocks)
            assert wait_until(lambda: a.store.remote.stats().writes == 12)
            spread = [n.client().dbsize() for n in cluster.nodes]
            assert sum(1 for n in spread if n) == 3  # keys spread over all three masters
            assert kb.lookup("t", keys=keys).blocks_per_tier == {"remote": 12}
            assert wait_until(lambda: kb.route("t", keys=keys).candidates[0].prefix_blocks == {"hbm": 12})
            assert kb.get("t", keys) == blocks
            cluster.kill()
            more = ka.keys_for("t", range(4 * 13))[12:]
            assert ka.put("t", more, data(1), parent=keys[-1]) == ["hbm"]
            assert ka.get("t", keys) == blocks
            assert kb.get("t", [b"z" * 32]) == [None]
            assert admin(b.address).Health(pb.HealthRequest(), timeout=5).status == "DEGRADED"
    finally:
        a.stop()
        b.stop()
        cluster.kill()


# ---------------------------------------------------------------- the check, as run


def test_two_kvstore_serve_processes_on_one_redis(tmp_path: Path, fresh_redis: RedisServer) -> None:
    """Two `kvstore serve --remote-url`: blocks put through the first are found by lookup and read
    byte-identical through the second; route() on the second names a worker holding the prefix;
    after Redis is killed the first still serves its blocks and accepts puts."""
    small = ["--shared-memory", "off", "--dram", "16MiB", "--disk", "16MiB", "--remote-url", fresh_redis.url]
    with (
        ServerProcess(tmp_path / "one", [*small, "--worker-id", "one"]) as first,
        ServerProcess(tmp_path / "two", [*small, "--worker-id", "two"]) as second,
        Client(first.address) as k1,
        Client(second.address) as k2,
    ):
        tokens = list(range(16 * 4))
        keys = k1.keys_for("default", tokens)
        blocks = [os.urandom(k1.namespace("default").block_bytes) for _ in keys]
        assert k1.put("default", keys, blocks) == ["dram"] * 4
        # write-through is on by default
        found = wait_until(lambda: (f := k2.lookup("default", tokens=tokens)).prefix_blocks == 4 and f)
        assert found.prefix_blocks == 4 and found.blocks_per_tier == {"remote": 4}

        # Once the first worker's index entries are published (~100 ms), it ranks first: dram beats remote.
        def held_by_first() -> Any:
            route = k2.route("default", tokens=tokens)
            return route if route.candidates[0].prefix_blocks == {"dram": 4} else None

        route = wait_until(held_by_first)
        assert route and route.candidates[0].worker == "one" and route.candidates[0].address == first.address
        assert route.candidates[1].worker == "two" and route.candidates[1].prefix_blocks == {"remote": 4}
        assert k2.get("default", keys) == blocks
        fresh_redis.kill()
        more = k1.keys_for("default", range(16 * 5))[4:]
        assert k1.put("default", more, [blocks[0]], parent=keys[-1]) == ["dram"]
        assert k1.get("default", more) == [blocks[0]]
        assert k2.get("default", keys) == blocks  # the second kept its copies locally
    fresh_redis.start()
