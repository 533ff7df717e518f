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
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from kvstore import persistence
from kvstore.auth_tokens import load_tokens
from kvstore.build import build_store
from kvstore.config import ConfigError, Settings, TlsConfig
from kvstore.deployment import Deployment, Router
from kvstore.hints import Hints
from kvstore.server.admin_service import AdminService
from kvstore.server.auth import AuthInterceptor, Guard, check_exposure
from kvstore.server.datadir_lock import DataDirLock
from kvstore.server.hint_worker import HintWorker
from kvstore.server.hints_service import AgentHintsService
from kvstore.server.interceptors import WrappingRegistry, fused
from kvstore.server.kvstore_service import KVStoreService
from kvstore.server.malformed import MalformedRequests
from kvstore.server.metrics import serve_metrics
from kvstore.server.telemetry import RpcMetrics, TimingInterceptor, tracing_interceptor
from kvstore.shm.leases import Leases
from kvstore.shm.segments import SharedSegment
from kvstore.store import Store
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = [pb.DESCRIPTOR.services_by_name[n].full_name for n in ("KVStore", "AgentHints", "Admin")]
SAVE_EVERY_S = 10.0  # learned return times are written at most this often (and at shutdown)
EXPIRE_EVERY_S = 30.0  # idle sessions are looked for this often (or 4 times per sessions.idle_ttl_s)


PREFAULT_NICE = 19  # the lowest priority: faulting pages in may wait for any request


def prefault(segments: list[SharedSegment]) -> None:
    """Fault every page of the shared segments in, one after another, at the lowest CPU priority.

    One thread for all segments: they are faulted for the same reason and at the same (idle)
    priority, so running them in parallel would only take a second core from request handling.
    On Linux a thread's nice value is its own (setpriority on its native thread id), so this
    lowers only this thread. Logs the line `ServerProcess.wait_prefaulted` waits for, with 0 MiB
    when there is nothing to fault, so waiters never wait for a line that cannot come."""
    with contextlib.suppress(OSError):  # not permitted, or not Linux: fault at normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREFAULT_NICE)
    started = time.perf_counter()
    done = 0
    for segment in segments:
        try:
            done += segment.prefault()
        except (OSError, ValueError, TypeError, BufferError) as exc:  # closed under us (a fast shutdown)
            log.debug("prefault of %s stopped: %s", segment.name, exc)
    log.info("prefaulted %d MiB of shared memory in %.2f s", done >> 20, time.perf_counter() - started)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    size = int(settings.max_message_bytes)
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # gRPC sets SO_REUSEPORT by default: a second server on the same port would start
        # silently and the kernel would split connections between the two.
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS (cert + key), or mutual TLS when client_ca is set (clients must present a cert it signed)."""
    assert tls.cert is not None and tls.key is not None

    def read(path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read tls.{what} {path}: {exc.strerror}") from None

    client_ca = read(tls.client_ca, "client_ca") if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(read(tls.key, "key"), read(tls.cert, "cert"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind `address`; OSError naming it when the port is taken (by another kvstore or anything)."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises this, with no reason, when the bind fails
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {address}: the port is in use (by another kvstore server or another "
            "program), or the address is not one of this host's"
        )
    return port


class KVStoreServer:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        # Refusals come before anything is built: a refused server leaves no trace.
        check_exposure(settings)
        self.tokens = load_tokens(settings.auth.tokens_file) if settings.auth.tokens_file else None
        self._credentials = server_credentials(settings.tls) if settings.tls.enabled else None
        self._dir_lock = DataDirLock(settings.data_dir)
        self._dir_lock.acquire()
        try:
            self.store = store or build_store(settings)
        except BaseException:
            self._dir_lock.release()
            raise
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
        self.registry = CollectorRegistry()  # this server's metrics (tests run several per process)
        # Worker id and address are known once the port is bound (start); the deployment then too.
        self.router = Router(self.store, settings.worker_id, settings.advertise_address, None)
        self.deployment: Deployment | None = None
        self.rpc_metrics = RpcMetrics(self.registry, settings.policy)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def _build_server(self) -> grpc.aio.Server:
        s = self.settings
        try:  # before gRPC, which would print its own lines about a name it cannot resolve
            socket.getaddrinfo(s.host, s.port)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError(
                f"host: cannot resolve {s.host!r} ({exc}); give a name or address of this machine"
            ) from None
        # Timing first: it also counts calls the auth check refuses; malformed requests last, as
        # it wraps the deserializers every other layer reads.
        timing, malformed = TimingInterceptor(self.rpc_metrics), MalformedRequests()
        between: list[grpc.aio.ServerInterceptor] = []
        if s.tracing.enabled:
            between.append(tracing_interceptor("kvstore", s.tracing.otlp_endpoint))
        if self.tokens is not None:
            between.append(AuthInterceptor(self.tokens, Guard(self.store, self.leases)))
        if between:
            server = grpc.aio.server(
                options=grpc_options(s), interceptors=fused([timing, *between, malformed])
            )
            registry: grpc.aio.Server | WrappingRegistry = server
        else:  # nothing must run outside them: wrapped once at registration, no per-call chain
            server = grpc.aio.server(options=grpc_options(s))
            registry = WrappingRegistry(server, [timing, malformed])
        pb_grpc.add_KVStoreServicer_to_server(KVStoreService(self.store, self.leases), registry)
        pb_grpc.add_AdminServicer_to_server(AdminService(self.store, self.leases, self.router), registry)
        self._hint_worker = HintWorker(asyncio.get_running_loop())
        pb_grpc.add_AgentHintsServicer_to_server(AgentHintsService(self.store, self._hint_worker), registry)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, registry)
        reflection.enable_server_reflection(  # (it picks its asyncio servicer by the server's type)
            [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        self.port = _listen(server, f"{s.host}:{s.port}", self._credentials)
        if s.unix_socket is not None:
            s.unix_socket.unlink(missing_ok=True)
            # The socket file's permissions guard it; tokens, when on, are checked there too.
            _listen(server, f"unix://{s.unix_socket.resolve()}", None)
        return server

    async def start(self) -> None:
        try:
            server = self._build_server()
        except BaseException:
            # Nothing is served: give back the data dir and the shared segments for the next try.
            if self._hint_worker is not None:
                await self._hint_worker.close()
            await asyncio.to_thread(self.store.close)
            self._dir_lock.release()
            raise
        s = self.settings
        self.router.worker_id = s.worker_id or f"{socket.gethostname()}:{self.port}"
        self.router.address = s.advertise_address or self.address
        if s.remote.url is not None:
            self.deployment = Deployment(self.store, s.remote, self.router.worker_id, self.router.address)
            self.router.deployment = self.deployment
            self.deployment.start()
        await server.start()
        self._server = server
        for name in ["", *SERVICE_NAMES]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port is not None:
            self._stop_metrics = serve_metrics(self.registry, self.store, s.host, s.metrics_port, self.leases)
        self._mover.start()
        self._saver = asyncio.create_task(self._save_learned())
        self._expirer = asyncio.create_task(self._expire_sessions())
        segments = [t.segment for t in self.store.tiers if t.segment is not None]
        threading.Thread(target=prefault, args=(segments,), name="kvstore-prefault", daemon=True).start()
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
            plans.sleep(clock.now(), deadline)

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
            await self._hint_worker.close()
        if self.deployment is not None:  # leaves the global index before the flush moves blocks
            await asyncio.to_thread(self.deployment.close)
        if self.settings.flush_on_shutdown:
            flushed = await asyncio.to_thread(persistence.flush, self.store)
            log.info("flushed %d blocks to disk", flushed)
        await asyncio.to_thread(self.store.close)
        if self.settings.unix_socket is not None:
            self.settings.unix_socket.unlink(missing_ok=True)
        self._dir_lock.release()

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
    # What exists now (imports, torch, the restored index: ~200k objects) lives as long as the
    # process. Frozen, it is no longer walked by every full collection, which hint traffic
    # triggers every few seconds: measured at ~35 us of server CPU per hint before, ~5 us after.
    gc.collect()
    gc.freeze()
    print(f"kvstore listening on {server.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
