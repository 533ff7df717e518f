"""Build and run the server: Store from Settings, gRPC services, health, reflection, metrics.

`KVStoreServer` is what `kvstore serve` runs and what tests start on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvstore.config import Settings
from kvstore.leases import Leases
from kvstore.policy import make_policy
from kvstore.server.admin_service import AdminService
from kvstore.server.hints_service import AgentHintsService
from kvstore.server.kvstore_service import KVStoreService
from kvstore.server.metrics import serve_metrics
from kvstore.sessions import SessionRegistry, ToolDurations
from kvstore.store import Store
from kvstore.tiers import build_tiers
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = [pb.DESCRIPTOR.services_by_name[n].full_name for n in ("KVStore", "AgentHints", "Admin")]
MOVER_TICK_S = 0.02


def build_store(settings: Settings) -> Store:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    agent = settings.agent
    durations = ToolDurations(
        settings.data_dir / "tool_durations.json",
        agent.learned_quantile,
        agent.default_tool_s,
        agent.announced_quantile,
    )
    store = Store(
        build_tiers(settings),
        [ns.to_namespace() for ns in settings.namespaces],
        make_policy(settings.policy, agent),
        promote_on_get=settings.promote_on_get,
        sessions=SessionRegistry(durations),
        default_bandwidth=float(agent.link_bandwidth),
    )
    recovered = store.recover()
    if recovered:
        log.info("recovered %d blocks from %s", recovered, settings.data_dir)
    return store


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    size = int(settings.max_message_bytes)
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


class KVStoreServer:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or build_store(settings)
        self.leases = Leases(self.store, settings.shared_memory.lease_ttl_s)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._mover_task: asyncio.Task[None] | None = None
        self._stop_metrics: Callable[[], None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        s = self.settings
        server = grpc.aio.server(options=grpc_options(s))
        pb_grpc.add_KVStoreServicer_to_server(KVStoreService(self.store, self.leases), server)
        pb_grpc.add_AdminServicer_to_server(AdminService(self.store, self.leases), server)
        pb_grpc.add_AgentHintsServicer_to_server(AgentHintsService(self.store, self.kick_mover), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = server.add_insecure_port(f"{s.host}:{s.port}")
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
        self._mover_task = asyncio.create_task(self._run_mover())
        log.info(
            "kvstore serving on %s (tiers: %s; policy %s)",
            self.address,
            ", ".join(
                f"{t.name}={t.capacity >> 20}MiB@{t.device}{'+shm' if t.segment else ''}"
                for t in self.store.tiers
            ),
            s.policy,
        )

    async def _run_mover(self) -> None:
        # Stopped by a flag, not by cancellation: on Python 3.11 wait_for can swallow a cancel
        # that races with the wake event, and stop() would then wait forever.
        while not self._stopping:
            if self.store.mover.pending:
                await asyncio.to_thread(self.store.run_due_jobs)
            deadline = self.leases.next_deadline()
            if deadline is not None and deadline <= self.store.clock.now():
                await asyncio.to_thread(self.leases.expire)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), MOVER_TICK_S)

    def kick_mover(self) -> None:
        """Run due jobs now rather than at the next tick (an urgent prefetch was just scheduled)."""
        self._wake.set()

    async def stop(self, grace: float = 2.0) -> None:
        """Stop serving, then flush what must persist (memory tiers to disk, when configured)."""
        if self._mover_task is not None:
            self._stopping = True
            self._wake.set()
            await self._mover_task  # lets a running job finish before the flush
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._stop_metrics is not None:
            self._stop_metrics()
        await asyncio.to_thread(self.store.close, self.settings.flush_on_shutdown)
        if self.settings.unix_socket is not None:
            self.settings.unix_socket.unlink(missing_ok=True)

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down cleanly."""
    server = KVStoreServer(settings)
    await server.start()
    print(f"kvstore listening on {server.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
