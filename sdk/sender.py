"""Hints leave the agent's process through a `HintSender`: an ordered queue and one background
thread that sends each hint with a bounded timeout.

A process talks to kvstore through one sender per address (`HintSender.shared`), whatever the
number of sessions: 200 sessions cost one thread and one channel, not 200. One queue keeps each
session's hints in order. Delivery runs at about one round trip per hint (a few thousand hints a
second on loopback), far above what agents send.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from typing import Any

import grpc
from kvstore.sdk import auth
from kvstore.sdk.core import DEFAULT_ADDRESS, target

from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger("kvstore.sdk.agent")

_STOP = object()


class HintSender:
    """Sends hints in order on one background thread; `send` never blocks and never raises."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float = 2.0,
        max_pending: int = 10_000,
        token: str | None = None,
        root_certificates: bytes | None = None,
    ) -> None:
        """`token`: bearer token (default $KVSTORE_TOKEN); `root_certificates`: PEM CA, for TLS."""
        self.address = address
        self.timeout = timeout
        self.healthy = True
        self.last_error: str | None = None
        self.dropped = 0
        self.closed = False
        # kvstore is a sidecar on this host: after it restarts, reconnect within a second or two.
        self._channel = auth.channel(
            target(address),
            [
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
            auth.resolve_token(token),
            auth.tls_config(root_certificates, None, None, False),
        )
        self._stub = pb_grpc.AgentHintsStub(self._channel)
        self._queue: queue.Queue[Any] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="kvstore-hints", daemon=True)
        self._thread.start()

    @classmethod
    def shared(
        cls,
        address: str = DEFAULT_ADDRESS,
        timeout: float = 2.0,
        token: str | None = None,
        root_certificates: bytes | None = None,
    ) -> HintSender:
        """The process's sender for `address` (one per address, timeout and credentials), made on
        first use and flushed at interpreter exit."""
        token = auth.resolve_token(token)
        with _SHARED_LOCK:
            key = (address, timeout, token, root_certificates)
            sender = _SHARED.get(key)
            if sender is None or sender.closed:
                sender = _SHARED[key] = cls(
                    address, timeout, token=token, root_certificates=root_certificates
                )
            return sender

    def send(self, method: str, request: Any, reopen: pb.OpenSessionRequest | None = None) -> None:
        try:
            self._queue.put_nowait((method, request, reopen))
        except queue.Full:
            self.dropped += 1
            self.report_failure(f"hint queue full ({self._queue.maxsize}); dropping {method}")

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A blocking call on the caller's thread (WaitReady); raises grpc.RpcError."""
        return getattr(self._stub, method)(request, timeout=timeout or self.timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued hint was sent (or given up on); for tests and clean exits."""
        done = threading.Event()
        self._queue.put((None, done, None))
        return done.wait(timeout)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flush(self.timeout * 2)
        self._queue.put(_STOP)
        self._thread.join(self.timeout * 2)
        self._channel.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            method, request, reopen = item
            if method is None:
                request.set()
                continue
            try:
                self._deliver(method, request, reopen)
            except grpc.RpcError as exc:
                self.report_failure(f"{method} failed: {exc.code().name}: {exc.details()}")
            except Exception as exc:  # never let a hint kill the sender thread
                self.report_failure(f"{method} failed: {exc!r}")

    def _deliver(self, method: str, request: Any, reopen: pb.OpenSessionRequest | None) -> None:
        try:
            getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            # The server lost the session (it restarted, or was down when we opened): open it again.
            if (
                reopen is None
                or exc.code() != grpc.StatusCode.NOT_FOUND
                or "OpenSession" not in (exc.details() or "")
            ):
                raise
            self._stub.OpenSession(reopen, timeout=self.timeout)
            getattr(self._stub, method)(request, timeout=self.timeout)
        if not self.healthy:
            log.info("kvstore hints delivered again")
        self.healthy, self.last_error = True, None

    def report_failure(self, message: str) -> None:
        """Log the first failure after a success, and mark the sender unhealthy."""
        if self.healthy:
            log.warning("kvstore hint not delivered (the agent carries on): %s", message)
        self.healthy, self.last_error = False, message


_SHARED: dict[tuple[str, float, str | None, bytes | None], HintSender] = {}
_SHARED_LOCK = threading.Lock()


@atexit.register
def _close_shared() -> None:
    """Hints queued just before a script ends still reach kvstore (bounded by each timeout)."""
    with _SHARED_LOCK:
        senders = list(_SHARED.values())
        _SHARED.clear()
    for sender in senders:
        sender.close()
