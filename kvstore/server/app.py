"""Build and run the server: the store, gRPC services, health, reflection, metrics, and the
threads around them.

Threads: the asyncio loop serves gRPC and never takes the store's lock — data-path and admin
calls run in worker threads (`asyncio.to_thread`), hints on the hint worker's thread (in order,
in batches: server/hint_worker.py). The mover thread sleeps until a plan or a lease is due, then
runs it. A background task saves what was learned of return times. Shared segments are
pre-faulted by a thread at start, so the first write into a page never faults under a move.

`KVStoreServer` is what `kvstore serve` runs and what tests start on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore import persistence
from kvstore.build import build_store
from kvstore.config import ConfigError, Settings
from kvstore.hints import Hints
from kvstore.server.admin_service import AdminService
from kvstore.server.hint_worker import HintWorker
from kvstore.server.hints_service import AgentHintsService
from kvstore.server.kvstore_service import KVStoreService
from kvstore.server.malformed import MalformedRequests
from kvstore.server.metrics import serve_metrics
from kvstore.shm.leases import Leases
from kvstore.store import Store
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = [pb.DESCRIPTOR.services_by_name[n].full_name for n in ("KVStore", "AgentHints", "Admin")]
SAVE_EVERY_S = 10.0  # learned return times are written at most this often (and at shutdown)
EXPIRE_EVERY_S = 30.0  # idle sessions are looked for this often (or 4 times per sessions.idle_ttl_s)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    size = int(settings.max_message_bytes)
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


class KVStoreServer:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or build_store(settings)
        self.leases = Leases(self.store, settings.shared_memory.lease_ttl_s, wake=self.store.plans.wake)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._hint_worker: HintWorker | None = None
        self._mover = threading.Thread(target=self._run_mover, name="kvstore-mover", daemon=True)
        self._stop = threading.Event()
        self._saver: asyncio.Task[None] | None = None
        self._expirer: asyncio.Task[None] | None = None
        self._stop_metrics: Callable[[], None] | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        s = self.settings
        try:  # before gRPC, which would print its own lines about a name it cannot resolve
            socket.getaddrinfo(s.host, s.port)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError(
                f"host: cannot resolve {s.host!r} ({exc}); give a name or address of this machine"
            ) from None
        server = grpc.aio.server(options=grpc_options(s), interceptors=[MalformedRequests()])
        pb_grpc.add_KVStoreServicer_to_server(KVStoreService(self.store, self.leases), server)
        pb_grpc.add_AdminServicer_to_server(AdminService(self.store, self.leases), server)
        self._hint_worker = HintWorker(asyncio.get_running_loop())
        pb_grpc.add_AgentHintsServicer_to_server(AgentHintsService(self.store, self._hint_worker), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        try:
            self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError:  # gRPC's "failed to bind": a host name that does not resolve
            raise ConfigError(
                f"host: cannot listen on {s.host}:{s.port}; is {s.host!r} a name or address of this machine?"
            ) from None
        if self.port == 0:
            raise OSError(f"cannot listen on {s.host}:{s.port} (in use, or not an address of this host)")
        if s.unix_socket is not None:
            s.unix_socket.unlink(missing_ok=True)
            server.add_insecure_port(f"unix://{s.unix_socket.resolve()}")
        await server.start()
        self._server = server
        for name in ["", *SERVICE_NAMES]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port is not None:
            self._stop_metrics = serve_metrics(self.store, s.host, s.metrics_port, self.leases)
        self._mover.start()
        self._saver = asyncio.create_task(self._save_learned())
        self._expirer = asyncio.create_task(self._expire_sessions())
        for tier in self.store.tiers:
            if tier.segment is not None:
                threading.Thread(target=tier.segment.prefault, name="kvstore-prefault", daemon=True).start()
        log.info(
            "kvstore serving on %s (tiers: %s; policy %s)",
            self.address,
            ", ".join(
                f"{t.name}={t.capacity >> 20}MiB@{t.device}{'+shm' if t.segment else ''}"
                for t in self.store.tiers
            ),
            s.policy,
        )

    def _run_mover(self) -> None:
        """Sleep until a plan or a lease is due (or a sooner plan arrives), then run what is due."""
        plans, clock = self.store.plans, self.store.clock
        while not self._stop.is_set():
            try:
                self.store.run_due()
                deadline = self.leases.next_deadline()
                if deadline is not None and deadline <= clock.now():
                    self.leases.expire()
                    deadline = self.leases.next_deadline()
            except Exception:  # a failed move must not stop the mover for good
                log.exception("a planned move failed")
                deadline = None
            due = [t for t in (plans.next_due(), deadline) if t is not None]
            plans.wait(max(0.0, min(due) - clock.now()) if due else None)

    async def _save_learned(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            await asyncio.to_thread(self._save_learned_now)

    async def _expire_sessions(self) -> None:
        """Close sessions idle past sessions.idle_ttl_s: an agent that died or forgot CloseSession
        would otherwise hold its session, its references and its plans forever."""
        idle_s = self.settings.sessions.idle_ttl_s
        hints = Hints(self.store)
        while True:
            await asyncio.sleep(min(EXPIRE_EVERY_S, idle_s / 4))
            try:
                closed = await asyncio.to_thread(hints.expire_idle, idle_s)
            except Exception:  # a failed pass must not stop expiry for good
                log.exception("expiring idle sessions failed")
                continue
            if closed:
                log.info("closed %d session(s) idle for over %.0f s", closed, idle_s)

    def _save_learned_now(self) -> None:
        """Snapshot what was learned under the lock; write it without."""
        returns = self.store.sessions.returns
        with self.store.lock:
            snapshot = returns.take_snapshot()
        if snapshot is not None:
            try:
                returns.write(snapshot)
            except OSError as exc:
                log.warning("could not save learned return times to %s: %s", returns.path, exc)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving, then flush what must persist (memory tiers to disk, when configured)."""
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        self._stop.set()
        self.store.plans.wake()
        if self._mover.is_alive():
            await asyncio.to_thread(self._mover.join)  # lets a running move finish before the flush
        for task in (self._saver, self._expirer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._stop_metrics is not None:
            self._stop_metrics()
        if self._hint_worker is not None:
            await asyncio.to_thread(self._hint_worker.close)
        if self.settings.flush_on_shutdown:
            flushed = await asyncio.to_thread(persistence.flush, self.store)
            log.info("flushed %d blocks to disk", flushed)
        await asyncio.to_thread(self.store.close)
        if self.settings.unix_socket is not None:
            self.settings.unix_socket.unlink(missing_ok=True)

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    server = KVStoreServer(settings)
    try:
        await server.start()
    except BaseException:
        await asyncio.to_thread(server.store.close)  # shared segments go, not leak past exit
        raise
    print(f"kvstore listening on {server.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
