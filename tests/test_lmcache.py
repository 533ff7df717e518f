"""LMCache (the real package, CPU build) storing and loading its chunks through a real kvstore
server via our remote-storage plugin, driven through LMCache's own RemoteBackend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
import yaml
from conftest import wait_until

lmcache = pytest.importorskip(
    "lmcache", reason="the lmcache extra is not installed (pip install -e '.[lmcache]')"
)

from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.exceptions import IrrecoverableException  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend  # noqa: E402
from lmcache.v1.storage_backend.remote_backend import RemoteBackend  # noqa: E402

from kvstore.server.process import ServerProcess  # noqa: E402
from kvstore.v1 import kvstore_pb2 as pb  # noqa: E402
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc  # noqa: E402

CHUNK = 256
SHAPE = (2, 2, CHUNK, 8, 128)  # layers, K/V, tokens, heads, head dim
CHUNK_BYTES = 2 * 2 * CHUNK * 8 * 128 * 2  # bf16


class LMCacheSide:
    """LMCache's CPU buffer and remote backend, configured to use the kvstore plugin."""

    def __init__(
        self,
        address: str,
        namespace: str = "lmcache",
        timeout_s: float = 1.0,
        shared_memory: bool = True,
        local_cpu: bool = False,
    ) -> None:
        config = LMCacheEngineConfig.from_defaults(
            chunk_size=CHUNK,
            local_cpu=local_cpu,
            max_local_cpu_size=0.2,
            remote_storage_plugins=["kvstore"],
            extra_config={
                "remote_storage_plugin.kvstore.module_path": "kvstore.integrations.lmcache.connector",
                "remote_storage_plugin.kvstore.class_name": "KVStoreConnector",
                "remote_storage_plugin.kvstore.address": address,
                "remote_storage_plugin.kvstore.namespace": namespace,
                "remote_storage_plugin.kvstore.timeout_s": timeout_s,
                "remote_storage_plugin.kvstore.shared_memory": shared_memory,
            },
        )
        self.metadata = LMCacheMetadata("test-model", 1, 1, 0, 0, torch.bfloat16, SHAPE, chunk_size=CHUNK)
        self.local = LocalCPUBackend(config, self.metadata, dst_device="cpu")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backend = RemoteBackend(
            config, self.metadata, self.loop, self.local, "cpu", plugin_name="kvstore"
        )

    def chunk(self, seed: int, tokens: int = CHUNK) -> tuple[object, bytes]:
        """A chunk as LMCache's store fills one: a buffer from its allocator, then the KV copied in."""
        fmt = MemoryFormat.KV_2LTD
        obj = self.local.allocate(self.metadata.get_shapes(tokens), self.metadata.get_dtypes(), fmt)
        generator = torch.Generator().manual_seed(seed)
        obj.tensor.copy_(torch.randn(obj.tensor.shape, generator=generator).to(obj.tensor.dtype))
        return obj, bytes(obj.byte_array)

    def put(self, key: CacheEngineKey, obj: object) -> None:
        self.backend.submit_put_task(key, obj)
        deadline = time.monotonic() + 10
        while self.backend.exists_in_put_tasks(key) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def key(chunk_hash: int, session: str | None = None) -> CacheEngineKey:
    k = CacheEngineKey(
        "test-model",
        1,
        0,
        chunk_hash,
        torch.bfloat16,
        # vLLM hands LMCache the request's `lmcache.*` kv_transfer_params as its request configs
        request_configs={"lmcache.kvstore.session_id": session} if session else None,
    )
    return k


def stats(address: str) -> pb.StatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.AdminStub(channel).Stats(pb.StatsRequest())


def sessions(address: str) -> list[tuple[str, int]]:
    with grpc.insecure_channel(address) as channel:
        found = pb_grpc.AdminStub(channel).ListSessions(pb.ListSessionsRequest()).sessions
    return sorted((s.session, s.blocks) for s in found)


@pytest.fixture
def kvstore_server(tmp_path: Path) -> Iterator[ServerProcess]:
    config = tmp_path / "kvstore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dram": {"capacity": "32MiB"},  # fits a small /dev/shm (containers default to 64 MiB)
                "disk": {"capacity": "256MiB"},
                "namespaces": [
                    {
                        "name": "lmcache",
                        "model": "test-model",
                        "block_tokens": CHUNK,
                        "block_bytes": CHUNK_BYTES,
                    },
                    {
                        "name": "padded",
                        "model": "test-model",
                        "block_tokens": CHUNK,
                        "block_bytes": 4 * CHUNK_BYTES,
                    },
                    {"name": "small", "model": "test-model", "block_tokens": 16, "block_bytes": 4096},
                ],
            }
        )
    )
    with ServerProcess(tmp_path / "data", config=config) as server:
        yield server


@pytest.fixture
def side(kvstore_server: ServerProcess) -> Iterator[LMCacheSide]:
    s = LMCacheSide(kvstore_server.address)
    yield s
    s.close()


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "grpc"])
def test_chunks_round_trip_byte_identical(kvstore_server: ServerProcess, shared_memory: bool) -> None:
    side = LMCacheSide(kvstore_server.address, shared_memory=shared_memory)
    try:
        plugin = side.backend.connection._connector  # LMCache wraps plugins for its stats
        assert plugin.client.transport() == ("shm" if shared_memory else "grpc")
        assert (plugin.buffers is not None) == shared_memory  # store buffers on slots: same host only
        _round_trip(side)
    finally:
        side.close()


def _round_trip(side: LMCacheSide) -> None:
    stored = {}
    for i in range(4):
        obj, raw = side.chunk(seed=i)
        side.put(key(1000 + i), obj)
        stored[1000 + i] = (raw, obj.get_shapes(), obj.get_dtypes())
    for chunk_hash, (raw, shapes, dtypes) in stored.items():
        got = side.backend.get_blocking(key(chunk_hash))
        assert got is not None
        assert bytes(got.byte_array) == raw
        assert got.get_shapes() == shapes and got.get_dtypes() == dtypes
        got.ref_count_down()


def test_exists_answers_match_what_is_stored(side: LMCacheSide, kvstore_server: ServerProcess) -> None:
    obj, _ = side.chunk(seed=7)
    side.put(key(7), obj)
    assert side.backend.contains(key(7))
    assert not side.backend.contains(key(8))
    with grpc.insecure_channel(kvstore_server.address) as channel:
        stats = pb_grpc.AdminStub(channel).Stats(pb.StatsRequest())
    assert stats.blocks == 1 and stats.tiers[0].used_bytes >= CHUNK_BYTES


def test_a_session_request_config_attaches_the_chunks_to_a_kvstore_session(
    side: LMCacheSide, kvstore_server: ServerProcess
) -> None:
    obj, _ = side.chunk(seed=3)
    side.put(key(33, session="agent-1"), obj)
    assert sessions(kvstore_server.address) == [("agent-1", 1)]


def test_two_sessions_share_one_stored_copy_of_a_chunk(
    side: LMCacheSide, kvstore_server: ServerProcess
) -> None:
    """A shared system prompt: the same chunk under two sessions is one LMCache key, one kvstore
    block, found by both, and referenced by both sessions (so hints about either move it)."""
    a, b = key(44, session="agent-a"), key(44, session="agent-b")
    assert a == b and a.to_string() == b.to_string()  # the session is not part of LMCache's key
    obj, raw = side.chunk(seed=4)
    side.put(a, obj)
    other, _ = side.chunk(seed=4)
    side.put(b, other)  # LMCache stores it again when asked to: kvstore counts it, keeps one copy
    assert stats(kvstore_server.address).blocks == 1
    for k in (a, b):
        assert side.backend.contains(k)
        got = side.backend.get_blocking(k)
        assert got is not None and bytes(got.byte_array) == raw
        got.ref_count_down()
    assert sessions(kvstore_server.address) == [("agent-a", 1), ("agent-b", 1)]


def test_a_legacy_session_tag_still_attaches_but_warns_that_it_splits_the_cache(
    side: LMCacheSide, kvstore_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    tagged = CacheEngineKey(
        "test-model", 1, 0, 55, torch.bfloat16, request_configs={"lmcache.tag.session_id": "agent-t"}
    )
    obj, _ = side.chunk(seed=5)
    side.put(tagged, obj)
    assert sessions(kvstore_server.address) == [("agent-t", 1)]
    assert "lmcache.kvstore.session_id instead" in caplog.text


def test_gets_are_views_of_kvstore_slots_released_once_lmcache_frees_them(
    side: LMCacheSide, kvstore_server: ServerProcess
) -> None:
    """No copy out of shared memory: LMCache's chunk is the slot, under one read lease per batch,
    given back once LMCache has freed every chunk of the batch."""
    plugin = side.backend.connection._connector
    keys, raws = [key(60 + i) for i in range(3)], []
    for i, k in enumerate(keys):
        obj, raw = side.chunk(seed=60 + i)
        side.put(k, obj)
        raws.append(raw)
    got = side.backend.batched_get_blocking(keys)
    assert [bytes(g.byte_array) for g in got] == raws
    assert all(g.parent() is plugin.leases for g in got)
    assert plugin.leases.held() == 3 and stats(kvstore_server.address).leases.read_leases == 1
    got[0].ref_count_down()
    got[1].ref_count_down()
    assert stats(kvstore_server.address).leases.read_leases == 1  # one chunk still held
    got[2].ref_count_down()
    assert plugin.leases.wait_idle() and plugin.leases.held() == 0
    assert stats(kvstore_server.address).leases.read_leases == 0


def test_a_stopped_kvstore_makes_lmcache_miss_not_fail(
    side: LMCacheSide, kvstore_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    obj, _ = side.chunk(seed=1)
    side.put(key(1), obj)
    kvstore_server.terminate()
    started = time.monotonic()
    assert not side.backend.contains(key(1))
    assert side.backend.get_blocking(key(1)) is None
    other, _ = side.chunk(seed=2)
    side.put(key(2), other)  # dropped, with a log line, no exception
    assert time.monotonic() - started < 10  # every call is bounded by the plugin's timeout
    assert "LMCache carries on with misses" in caplog.text and "UNAVAILABLE" in caplog.text


def test_a_namespace_with_blocks_smaller_than_a_chunk_is_refused_clearly(
    kvstore_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    side = LMCacheSide(kvstore_server.address, namespace="small")
    try:
        obj, _ = side.chunk(seed=5)
        side.put(key(5), obj)
        assert not side.backend.contains(key(5))
        assert f"set block_bytes: {CHUNK_BYTES}" in caplog.text
    finally:
        side.close()


def test_a_missing_namespace_stops_lmcache_at_start_with_the_config_to_add(
    kvstore_server: ServerProcess,
) -> None:
    """The default kvstore config has no namespace for LMCache: every put would be refused and
    every get miss. LMCache's RemoteBackend lets an IrrecoverableException through, so it fails to
    start and says what to add."""
    with pytest.raises(IrrecoverableException) as failed:
        LMCacheSide(kvstore_server.address, namespace="nope")
    assert "no namespace 'nope'" in str(failed.value)
    assert f"block_bytes: {CHUNK_BYTES}" in str(failed.value)


def test_a_namespace_with_blocks_bigger_than_a_chunk_is_warned_about_and_still_works(
    kvstore_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    side = LMCacheSide(kvstore_server.address, namespace="padded")
    try:
        assert (
            f"every chunk is padded (4.0x the memory) and copied on get; set block_bytes: {CHUNK_BYTES}"
            in (caplog.text)
        )
        obj, raw = side.chunk(seed=9)
        side.put(key(9), obj)
        got = side.backend.get_blocking(key(9))
        assert got is not None and bytes(got.byte_array) == raw
        got.ref_count_down()
    finally:
        side.close()


def test_store_buffers_are_kvstore_slots_committed_in_place(
    side: LMCacheSide, kvstore_server: ServerProcess
) -> None:
    """LMCache's store buffers lie in kvstore slots reserved ahead (no copy on put): a put commits
    them where LMCache wrote them; a buffer freed unused goes back to the pool; a partial chunk
    comes from LMCache's own allocator and is copied as before."""
    plugin = side.backend.connection._connector
    buffers = plugin.buffers
    assert buffers is not None and plugin.leases is not None
    assert wait_until(lambda: buffers.pooled() > 0)
    keys, raws, objs = [key(70 + i, session="agent-s") for i in range(3)], [], []
    for i in range(len(keys)):
        obj, raw = side.chunk(seed=70 + i)
        assert obj.parent() is buffers and buffers.written([obj])[0] is not None
        objs.append(obj)
        raws.append(raw)
    assert buffers.handed_out() == 3
    side.backend.batched_submit_put_task(keys, objs)
    # LMCache holds a reference to each buffer until the plugin's put returned
    assert wait_until(lambda: all(o.get_ref_count() == 1 for o in objs))
    assert buffers.handed_out() == 0  # committed: the slots are kvstore's blocks now
    assert stats(kvstore_server.address).blocks == 3
    assert sessions(kvstore_server.address) == [("agent-s", 3)]
    got = side.backend.batched_get_blocking(keys)
    assert [bytes(g.byte_array) for g in got] == raws
    for g in got:
        g.ref_count_down()
    assert plugin.leases.wait_idle()

    unused, _ = side.chunk(seed=1)
    slot = buffers.written([unused])[0]
    unused.ref_count_down()  # LMCache gave up on it: the slot is reserved still, back in the pool
    assert buffers.handed_out() == 0 and not unused.is_valid()
    again, _ = side.chunk(seed=1)
    assert buffers.written([again])[0] == slot  # handed out again first
    again.ref_count_down()

    partial, raw = side.chunk(seed=2, tokens=100)
    assert partial.parent() is not buffers
    side.put(key(79), partial)
    tail = side.backend.get_blocking(key(79))
    assert tail is not None and bytes(tail.byte_array) == raw
    tail.ref_count_down()

    asyncio.run_coroutine_threadsafe(plugin.close(), side.loop).result(timeout=10)
    assert wait_until(lambda: stats(kvstore_server.address).leases.write_leases == 0)  # pool released
    assert side.local.allocate.__func__ is LocalCPUBackend.allocate  # LMCache's allocator again


def test_lmcache_keeping_chunks_itself_gets_its_own_buffers(kvstore_server: ServerProcess) -> None:
    """With LMCache's CPU cache on, it keeps what it stores and reads: slots would outlive their
    leases there, so the plugin leaves LMCache's buffers (and copies) alone."""
    side = LMCacheSide(kvstore_server.address, local_cpu=True)
    try:
        plugin = side.backend.connection._connector
        assert plugin.buffers is None and plugin.leases is None
        obj, raw = side.chunk(seed=3)
        assert obj.parent() is not None and not hasattr(obj.parent(), "written")
        side.put(key(3), obj)
        got = side.backend.get_blocking(key(3))
        assert got is not None and bytes(got.byte_array) == raw
        got.ref_count_down()
    finally:
        side.close()
