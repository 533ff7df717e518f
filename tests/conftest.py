"""Shared fixtures: small-capacity settings and a real server on a free loopback port."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvstore.config import Settings
from kvstore.server.app import KVStoreServer
from kvstore.stats import store_stats
from kvstore.store import Store
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

BLOCK = 4096  # bytes per block in the test namespace: capacities stay in MiB
TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Three tiers (HBM on the CPU standing in), 16 blocks each by default, namespace 't'."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "data_dir": data_dir,
        "hbm": {"enabled": "on", "device": "cpu", "capacity": 16 * BLOCK},
        "dram": {"capacity": 16 * BLOCK},
        "disk": {"capacity": 16 * BLOCK},
        "namespaces": [
            {"name": "t", "model": "test-model", "block_tokens": 4, "block_bytes": BLOCK},
            {"name": "other", "model": "test-model", "tenant": "b", "block_tokens": 4, "block_bytes": BLOCK},
        ],
    }
    for key, value in overrides.items():
        base[key] = (
            {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return Settings(**base)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until `predicate` returns something truthy (returned), or `timeout` passes (its last
    value is returned)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    return predicate()


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_server_loop: asyncio.AbstractEventLoop | None = None


def server_loop() -> asyncio.AbstractEventLoop:
    """The one event loop (in a background thread) that every in-process server of the run uses.
    grpc.aio polls one completion queue per process: servers on loops of their own steal each
    other's wake-ups (BlockingIOError in PollerCompletionQueue._handle_events) and calls get lost."""
    global _server_loop
    if _server_loop is None:
        _server_loop = asyncio.new_event_loop()
        threading.Thread(target=_server_loop.run_forever, name="test-servers", daemon=True).start()
    return _server_loop


class ThreadedServer:
    """A KVStoreServer running on the tests' server loop (`server_loop`) in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.loop = server_loop()
        self.server: KVStoreServer = self._run(self._start(settings))

    async def _start(self, settings: Settings) -> KVStoreServer:
        server = KVStoreServer(settings)
        await server.start()
        return server

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def store(self) -> Store:
        return self.server.store

    def stop(self) -> None:
        self._run(self.server.stop(grace=0))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def server(settings: Settings) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(settings)
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: ThreadedServer) -> Iterator[pb_grpc.KVStoreStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.KVStoreStub(channel)


def used(srv: ThreadedServer) -> dict[str, int]:
    """Bytes allocated per tier."""
    return {t.name: t.used for t in store_stats(srv.store).tiers}


@pytest.fixture
def traces_dir() -> Path:
    if not TRACES.is_dir():
        pytest.skip(f"shared traces not found at {TRACES} (tests expect ../shared/traces beside the repo)")
    return TRACES
