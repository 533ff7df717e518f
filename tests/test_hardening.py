"""Regressions for defects found by probing the live server (issue 13): owned pins, cancelled
puts, bounded requests, session expiry and caps, malformed input, config errors, a failing disk."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, make_settings, wait_until
from kvstore.sdk import Client

from kvstore.config import load_settings
from kvstore.errors import FailedPrecondition
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


@pytest.fixture
def agent_server(tmp_path) -> ThreadedServer:
    srv = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    yield srv
    srv.stop()


def test_unpin_cannot_release_a_fanouts_pins(agent_server: ThreadedServer) -> None:
    """A fan-out's pins are its own: a client's Unpin is refused, the fan-out's release leaves the
    client's pins, and no pin count goes below zero (ListBlocks keeps working, blocks can leave)."""
    with grpc.insecure_channel(agent_server.address) as channel, Client(agent_server.address) as kv:
        hints, admin = pb_grpc.AgentHintsStub(channel), pb_grpc.AdminStub(channel)
        keys = kv.keys_for("t", range(4 * 2))
        kv.put("t", keys, [os.urandom(BLOCK) for _ in keys], session="s")
        fan = hints.AnnounceFanout(pb.AnnounceFanoutRequest(session="s", n=1, ttl_s=60))
        assert wait_until(lambda: all(agent_server.store.index.get("t", k).pins == 1 for k in keys))
        with pytest.raises(FailedPrecondition):  # not the client's pin to release
            kv.unpin("t", keys)
        assert kv.pin("t", keys[:1]) == 1  # a client pin beside the fan-out's
        hints.BranchDone(pb.BranchDoneRequest(fanout_id=fan.fanout_id))  # releases only its own
        listed = {b.key: b.pins for b in admin.ListBlocks(pb.ListBlocksRequest(namespace="t")).blocks}
        assert listed == {keys[0]: 1, keys[1]: 0}
        assert kv.unpin("t", keys[:1]) == 1
        with pytest.raises(FailedPrecondition):
            kv.unpin("t", keys[:1])
        assert all(b.pins == 0 for b in admin.ListBlocks(pb.ListBlocksRequest(namespace="t")).blocks)
        assert kv.delete("t", keys) == 2  # nothing left holding them


def put_requests(keys: list[bytes], session: str = "", pin: bool = False) -> list[pb.PutRequest]:
    parents = [b"", *keys[:-1]]
    return [
        pb.PutRequest(namespace="t", key=k, parent=p, data=os.urandom(BLOCK), session=session, pin=pin)
        for k, p in zip(keys, parents, strict=True)
    ]


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_put_its_client_gave_up_on_leaves_nothing(server: ThreadedServer, how: str) -> None:
    """The Put's blocks have all arrived, but its worker waits (here: on the store's lock, held by
    the test) until the client's deadline passed or it cancelled: nothing may be stored, pinned
    or opened for it afterwards."""
    store = server.store
    with grpc.insecure_channel(server.address) as channel, Client(server.address) as kv:
        kvs = pb_grpc.KVStoreStub(channel)
        keys = kv.keys_for("t", range(4 * 3))
        with store.lock:
            if how == "deadline":
                with pytest.raises(grpc.RpcError) as err:
                    kvs.Put(iter(put_requests(keys, "s", pin=True)), timeout=0.5)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                call = kvs.Put.future(iter(put_requests(keys, "s", pin=True)))
                time.sleep(0.5)  # the stream is sent; the worker waits on the lock
                call.cancel()
                assert call.cancelled()
            time.sleep(0.5)  # for the server to hear of it: one that commits first has stored the put
        time.sleep(1.0)  # the worker gets the lock, and must not store the blocks now
        assert len(store.index) == 0 and "s" not in store.sessions.sessions
        assert all(t.used == 0 for t in store.tiers) and sum(store.placement.pinned_blocks.values()) == 0
        assert kv.put("t", keys, [os.urandom(BLOCK) for _ in keys]) == ["hbm"] * 3  # and it still works


def test_requests_are_bounded(tmp_path) -> None:
    """A Put stream, a Get and a Lookup cannot make the server hold more than the limits: an
    endless Put stream is cut off, a Get repeating one key or naming too many, a Lookup of too many
    tokens are refused with the limit to change in the message, and nothing is stored."""
    srv = ThreadedServer(
        make_settings(tmp_path / "data", limits={"max_put_bytes": 8 * BLOCK, "max_get_bytes": 8 * BLOCK})
    )
    try:
        with grpc.insecure_channel(srv.address) as channel, Client(srv.address) as kv:
            kvs = pb_grpc.KVStoreStub(channel)
            keys = kv.keys_for("t", range(4 * 40))

            def endless():  # a client that never closes its stream
                for i in range(10**9):
                    yield pb.PutRequest(namespace="t", key=keys[i % 40], data=bytes(BLOCK))

            with pytest.raises(grpc.RpcError) as err:
                kvs.Put(endless(), timeout=20)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limits.max_put_bytes" in err.value.details()
            assert len(srv.store.index) == 0
            kv.put("t", keys[:1], [bytes(BLOCK)])
            with pytest.raises(grpc.RpcError) as err:
                list(kvs.Get(pb.GetRequest(namespace="t", keys=[keys[0]] * 1000), timeout=20))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limits.max_get_bytes" in err.value.details()
            assert len(srv.store.index) == 1
    finally:
        srv.stop()


def test_keys_and_tokens_per_call_are_bounded_by_default(server: ThreadedServer) -> None:
    """Too many keys (Lookup, Delete, Pin, BindChain...) or tokens in one call are refused before any
    work is done, naming the limit to raise."""
    with grpc.insecure_channel(server.address) as channel:
        kvs = pb_grpc.KVStoreStub(channel)
        too_many = [bytes(16)] * 70_000  # over the default limits.max_keys_per_call
        for call, request in [
            (kvs.Lookup, pb.LookupRequest),
            (kvs.Delete, pb.DeleteRequest),
            (kvs.Pin, pb.PinRequest),
        ]:
            with pytest.raises(grpc.RpcError) as err:
                call(request(namespace="t", keys=too_many), timeout=20)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, call
            assert "limits.max_keys_per_call" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # over the default limits.max_lookup_tokens
            kvs.Lookup(pb.LookupRequest(namespace="t", tokens=range(2_000_000)), timeout=20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limits.max_lookup_tokens" in err.value.details()
        assert server.store.lookups == 0


def test_data_path_session_ids_are_length_checked(server: ThreadedServer) -> None:
    """A session id longer than hints accept is refused on the data path too (it could never be
    closed), before anything is stored or opened."""
    long = "s" * 100_000
    with grpc.insecure_channel(server.address) as channel, Client(server.address) as kv:
        kvs = pb_grpc.KVStoreStub(channel)
        keys = kv.keys_for("t", range(4 * 2))
        calls = [
            lambda: kvs.Put(iter(put_requests(keys, long))),
            lambda: list(kvs.Get(pb.GetRequest(namespace="t", keys=keys, session=long))),
            lambda: kvs.Lookup(pb.LookupRequest(namespace="t", keys=keys, session=long)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 256" in err.value.details() and len(err.value.details()) < 1000
    assert len(server.store.index) == 0 and not server.store.sessions.sessions


def test_idle_sessions_expire_and_open_sessions_are_capped(tmp_path) -> None:
    """Sessions idle for sessions.idle_ttl_s are closed (their plans go with them, their blocks
    stay); past sessions.max_open, opening another is RESOURCE_EXHAUSTED and changes nothing."""
    settings = make_settings(tmp_path / "data", policy="agent", sessions={"idle_ttl_s": 1.0, "max_open": 2})
    srv = ThreadedServer(settings)
    try:
        with grpc.insecure_channel(srv.address) as channel, Client(srv.address) as kv:
            hints, admin = pb_grpc.AgentHintsStub(channel), pb_grpc.AdminStub(channel)
            keys = kv.keys_for("t", range(4 * 2))
            hints.OpenSession(pb.OpenSessionRequest(session="a", namespace="t"))
            kv.put("t", keys, [os.urandom(BLOCK) for _ in keys], session="b")
            hints.BeginToolCall(pb.BeginToolCallRequest(session="a", tool_name="sleep", expected_s=6 * 86400))
            with pytest.raises(grpc.RpcError) as err:
                hints.OpenSession(pb.OpenSessionRequest(session="c", namespace="t"))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "sessions.max_open" in err.value.details()
            more = kv.keys_for("t", range(100, 100 + 4 * 2))
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.KVStoreStub(channel).Put(iter(put_requests(more, "c")))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(srv.store.index) == 2
            assert srv.store.plans.pending > 0  # the tool call's plans
            assert wait_until(lambda: not admin.ListSessions(pb.ListSessionsRequest()).sessions, 10)
            # (a store-wide check the closing hints asked for may still wait its turn, briefly)
            assert wait_until(lambda: srv.store.plans.pending == 0, 5) and len(srv.store.index) == 2
            hints.OpenSession(pb.OpenSessionRequest(session="c", namespace="t"))  # room again
    finally:
        srv.stop()


GARBAGE = b"\xff\xff\xff\x0f\x01"  # not a protobuf message: a truncated varint field


def test_malformed_requests_are_invalid_argument_with_one_log_line(
    server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    methods = [
        ("unary_unary", "/kvstore.v1.KVStore/Lookup"),
        ("unary_unary", "/kvstore.v1.Admin/Stats"),
        ("unary_unary", "/kvstore.v1.AgentHints/OpenSession"),
        ("unary_stream", "/kvstore.v1.KVStore/Get"),
        ("stream_unary", "/kvstore.v1.KVStore/Put"),
    ]
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(server.address) as channel:
        for kind, method in methods:
            call = getattr(channel, kind)(method)  # no serializers: raw bytes on the wire
            caplog.clear()
            with pytest.raises(grpc.RpcError) as err:
                if kind == "stream_unary":
                    call(iter([GARBAGE]))
                elif kind == "unary_stream":
                    list(call(GARBAGE))
                else:
                    call(GARBAGE)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "malformed" in err.value.details()
            noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(noisy) <= 1 and all(r.exc_info is None for r in noisy), method
            assert all("\n" not in r.getMessage() for r in noisy)


def test_echoed_input_is_shortened(server: ThreadedServer) -> None:
    """A huge namespace or tier name is still NOT_FOUND / INVALID_ARGUMENT (not RESOURCE_EXHAUSTED
    from a status message over the metadata limit): messages echo only the start of the input."""
    huge = "n" * 20_000
    with grpc.insecure_channel(server.address) as channel:
        kvs, admin = pb_grpc.KVStoreStub(channel), pb_grpc.AdminStub(channel)
        hints = pb_grpc.AgentHintsStub(channel)
        hints.OpenSession(pb.OpenSessionRequest(session="s", namespace="t"))
        cases = [
            (grpc.StatusCode.NOT_FOUND, lambda: kvs.Lookup(pb.LookupRequest(namespace=huge))),
            (
                grpc.StatusCode.NOT_FOUND,
                lambda: kvs.DescribeNamespace(pb.DescribeNamespaceRequest(namespace=huge)),
            ),
            (grpc.StatusCode.INVALID_ARGUMENT, lambda: admin.Evict(pb.EvictRequest(tier=huge, bytes=1))),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                lambda: hints.BindChain(pb.BindChainRequest(session="s", namespace=huge)),
            ),
        ]
        for code, call in cases:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == code
            assert len(err.value.details()) < 1000 and "20000 characters" in err.value.details()


def test_serve_refuses_bad_configs_in_one_line_naming_the_field(tmp_path) -> None:
    """Each bad setting: exit status 2 and one line on stderr naming the field, no traceback."""
    big_block = tmp_path / "big.yaml"
    big_block.write_text(
        "hbm: {enabled: 'off'}\ndram: {capacity: 1MiB}\ndisk: {capacity: 1MiB}\n"
        "namespaces:\n  - {name: a, model: m, block_bytes: 2MiB}\n"
    )
    empty = tmp_path / "empty.yaml"
    empty.write_text("namespaces: []\n")
    cases = [
        (["--hbm-device", "cuda:7"], {}, "hbm.device"),
        (["--hbm-device", "tpu"], {}, "hbm.device"),
        ([], {"KVSTORE_HBM": "{bad json"}, "KVSTORE_HBM"),
        (["--host", "no.such.host.invalid"], {}, "host"),
        (["--dram", "100"], {}, "dram.capacity"),
        (["--dram", "100TiB"], {}, "dram.capacity"),
        (["--config", str(big_block)], {}, "namespaces.0.block_bytes"),
        (["--config", str(empty)], {}, "namespaces"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kvstore.cli",
                "serve",
                "--port",
                "0",
                "--data-dir",
                str(tmp_path / "d"),
                *args,
            ],
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, extra, _ in cases
    ]
    for proc, (args, extra, field) in zip(procs, cases, strict=True):
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (args, extra, err)
        assert len(lines) == 1 and field in lines[0] and "Traceback" not in err, (args, extra, err)


def test_a_mistyped_kvstore_variable_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KVSTORE_POLCY", "agent")
    monkeypatch.setenv("KVSTORE_ADDRESS", "127.0.0.1:1")  # the SDK's: not the server's to judge
    caplog.set_level(logging.WARNING)
    load_settings()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "KVSTORE_POLCY" in warned and "KVSTORE_POLICY" in warned
    assert "KVSTORE_ADDRESS" not in warned


@pytest.fixture
def small_files() -> Iterator[Callable[[bool], None]]:
    """Turn a file-size limit on and off for this process: every block file write then fails
    (EFBIG, as a full or read-only disk fails them), without root or a special filesystem."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process

    def limit(on: bool) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 if on else soft, hard))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def test_a_failing_disk_degrades_instead_of_stopping_everything(
    tmp_path, small_files: Callable[[bool], None]
) -> None:
    """With disk writes failing: blocks on disk stay readable, puts keep landing in the memory
    tiers (what room-making would have pushed to disk is dropped), no call is UNKNOWN, the disk's
    accounting matches its blocks, Admin Health says DEGRADED; once writes work again, it recovers."""
    srv = ThreadedServer(
        make_settings(
            tmp_path / "data",
            hbm={"capacity": 4 * BLOCK},
            dram={"capacity": 4 * BLOCK},
            shared_memory={"enabled": "off"},
        )
    )
    store = srv.store
    disk = store.tier_by_name["disk"]
    disk.retry_after_s = 0.2  # how soon a write is tried again after one failed
    try:
        with grpc.insecure_channel(srv.address) as channel, Client(srv.address) as kv:
            admin = pb_grpc.AdminStub(channel)
            keys = kv.keys_for("t", range(4 * 24))
            data = [os.urandom(BLOCK) for _ in keys]
            assert kv.put("t", keys[:12], data[:12]) == ["disk"] * 4 + ["dram"] * 4 + ["hbm"] * 4
            small_files(True)
            tiers = kv.put("t", keys[12:20], data[12:20])  # pushes dram's blocks toward the disk
            assert tiers == ["hbm"] * 4 + ["hbm"] * 4 or all(tiers), tiers
            assert kv.get("t", keys[:4]) == data[:4]  # still read from disk (and promoted)
            on_disk = [e for e in store.index.entries() if e.tier == "disk"]
            assert disk.used == sum(e.size for e in on_disk)
            assert not list(disk.root.glob("*/*/*.tmp"))
            assert all(not e.moving for e in store.index.entries())
            health = admin.Health(pb.HealthRequest())
            assert health.status == "DEGRADED"
            assert "writ" in next(t.detail for t in health.tiers if t.name == "disk")
            assert admin.Evict(pb.EvictRequest(tier="hbm", bytes=BLOCK)).blocks >= 0  # no UNKNOWN
            small_files(False)
            time.sleep(0.3)
            kv.put("t", keys[20:24], data[20:24])  # pushes blocks down: the disk takes them again
            assert admin.Health(pb.HealthRequest()).status == "SERVING"
            assert disk.used == sum(e.size for e in store.index.entries() if e.tier == "disk") > 0
    finally:
        small_files(False)
        srv.stop()


def test_a_block_file_under_another_keys_name_is_never_served(tmp_path) -> None:
    """A disk file must name the key it is stored under: one copied or renamed over another block's
    file is dropped on read (not served as that block) and on recovery (where it must not cost
    the real block its file either)."""
    settings = make_settings(tmp_path / "data", hbm={"enabled": "off"}, dram={"enabled": False})
    srv = ThreadedServer(settings)
    disk = srv.store.tier_by_name["disk"]
    with Client(srv.address) as kv:
        keys = kv.keys_for("t", range(4 * 3))
        data = [os.urandom(BLOCK) for _ in keys]
        assert kv.put("t", keys, data) == ["disk"] * 3
        disk.path("t", keys[0]).write_bytes(disk.path("t", keys[1]).read_bytes())
        assert kv.get("t", keys[:2]) == [None, data[1]]  # not data[1] served as keys[0]
    srv.stop()
    disk.path("t", keys[2]).write_bytes(disk.path("t", keys[1]).read_bytes())
    srv = ThreadedServer(settings)
    try:
        with Client(srv.address) as kv:
            assert kv.get("t", keys) == [None, data[1], None]
        assert not srv.store.tier_by_name["disk"].path("t", keys[2]).exists()
    finally:
        srv.stop()
