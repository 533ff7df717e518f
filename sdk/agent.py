"""What agent frameworks call: announce tool calls, fan-outs and waits, so kvstore can move the
session's KV out of HBM while it idles and back before the next LLM call.

Hints are advisory. The caller only puts a hint on an ordered queue (microseconds); a background
thread sends it with a bounded timeout. If kvstore is down or slow the agent's code runs on
unharmed: a log line, `healthy` turns False, and never an exception into the agent's tool.

    session = AgentSession("127.0.0.1:50551", namespace="default")
    with session.tool_call("pytest", expected_s=30):
        run_tests()
    session.awaiting_user()

`AsyncAgentSession` is the asyncio twin (`async with session.tool_call(...)`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc
from kvstore.sdk.core import DEFAULT_ADDRESS, target

from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger("kvstore.sdk.agent")

F = TypeVar("F", bound=Callable[..., Any])
_STOP = object()


class HintSender:
    """Sends hints in order on one background thread; `send` never blocks and never raises."""

    def __init__(
        self, address: str = DEFAULT_ADDRESS, timeout: float = 2.0, max_pending: int = 10_000
    ) -> None:
        self.timeout = timeout
        self.healthy = True
        self.last_error: str | None = None
        self.dropped = 0
        # kvstore is a sidecar on this host: after it restarts, reconnect within a second or two.
        self._channel = grpc.insecure_channel(
            target(address),
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._stub = pb_grpc.AgentHintsStub(self._channel)
        self._queue: queue.Queue[Any] = queue.Queue(max_pending)
        self._thread = threading.Thread(target=self._run, name="kvstore-hints", daemon=True)
        self._thread.start()

    def send(self, method: str, request: Any, reopen: pb.OpenSessionRequest | None = None) -> None:
        try:
            self._queue.put_nowait((method, request, reopen))
        except queue.Full:
            self.dropped += 1
            self.report_failure(f"hint queue full ({self._queue.maxsize}); dropping {method}")

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A blocking call (WaitReady); raises grpc.RpcError."""
        return getattr(self._stub, method)(request, timeout=timeout or self.timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued hint was sent (or given up on); for tests and clean exits."""
        done = threading.Event()
        self._queue.put((None, done, None))
        return done.wait(timeout)

    def close(self) -> None:
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


class Fanout:
    """N branches re-querying one prefix; the prefix stays pinned in HBM until the last is done."""

    def __init__(self, sender: HintSender, fanout_id: str) -> None:
        self.id = fanout_id
        self._sender = sender

    def branch_done(self) -> None:
        self._sender.send("BranchDone", pb.BranchDoneRequest(fanout_id=self.id))

    @contextlib.contextmanager
    def branch(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.branch_done()


class _SessionCore:
    """Builds and queues the hints; the sync and async sessions differ only in how they wait."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        session_id: str | None = None,
        namespace: str = "default",
        timeout: float = 2.0,
        sender: HintSender | None = None,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.namespace = namespace
        self._owns_sender = sender is None
        self._sender = sender or HintSender(address, timeout)
        self._open = pb.OpenSessionRequest(session=self.id, namespace=namespace)
        self._sender.send("OpenSession", self._open)

    @property
    def healthy(self) -> bool:
        """False while hints are not reaching kvstore (they are advisory: nothing else breaks)."""
        return self._sender.healthy

    def _send(self, method: str, request: Any) -> None:
        self._sender.send(method, request, reopen=self._open)

    def begin_tool_call(self, tool_name: str, expected_s: float | None = None) -> str:
        call_id = uuid.uuid4().hex
        request = pb.BeginToolCallRequest(session=self.id, tool_name=tool_name, call_id=call_id)
        if expected_s is not None:
            request.expected_s = expected_s
        self._send("BeginToolCall", request)
        return call_id

    def end_tool_call(self, call_id: str) -> None:
        self._send("EndToolCall", pb.EndToolCallRequest(call_id=call_id))

    def awaiting_user(self) -> None:
        self._send("AwaitingUser", pb.SessionRequest(session=self.id))

    def bind(self, keys: list[bytes]) -> None:
        self._send("BindChain", pb.BindChainRequest(session=self.id, namespace=self.namespace, keys=keys))

    def fanout(self, n: int, ttl_s: float = 300.0) -> Fanout:
        fanout_id = uuid.uuid4().hex
        self._send(
            "AnnounceFanout", pb.AnnounceFanoutRequest(session=self.id, n=n, ttl_s=ttl_s, fanout_id=fanout_id)
        )
        return Fanout(self._sender, fanout_id)

    def flush(self, timeout: float = 10.0) -> bool:
        return self._sender.flush(timeout)

    def _wait_ready(self, timeout_s: float) -> bool:
        self._sender.flush(self._sender.timeout)  # the hints before it (OpenSession) go first
        request = pb.WaitReadyRequest(session=self.id, timeout_s=timeout_s)
        try:
            reply = self._sender.call("WaitReady", request, timeout=timeout_s + self._sender.timeout)
        except grpc.RpcError as exc:
            self._sender.report_failure(f"WaitReady failed: {exc.code().name}")
            return False
        return reply.ready

    def _close(self) -> None:
        self._send("CloseSession", pb.SessionRequest(session=self.id))
        if self._owns_sender:
            self._sender.close()

    def tool(self, tool_name: str, expected_s: float | None = None) -> Callable[[F], F]:
        """Decorator: every call of the function (sync or async) is announced as a tool call."""

        def wrap(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def run_async(*args: Any, **kwargs: Any) -> Any:
                    call_id = self.begin_tool_call(tool_name, expected_s)
                    try:
                        return await fn(*args, **kwargs)
                    finally:
                        self.end_tool_call(call_id)

                return run_async  # type: ignore[return-value]

            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> Any:
                call_id = self.begin_tool_call(tool_name, expected_s)
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.end_tool_call(call_id)

            return run  # type: ignore[return-value]

        return wrap


class AgentSession(_SessionCore):
    @contextlib.contextmanager
    def tool_call(self, tool_name: str, expected_s: float | None = None) -> Iterator[str]:
        """Announce a tool call for the duration of the block; yields the call id."""
        call_id = self.begin_tool_call(tool_name, expected_s)
        try:
            yield call_id
        finally:
            self.end_tool_call(call_id)

    def wait_ready(self, timeout_s: float = 1.0) -> bool:
        """Block until the session's KV is in HBM (True), or the timeout passes or kvstore is away (False)."""
        return self._wait_ready(timeout_s)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAgentSession(_SessionCore):
    """asyncio twin of AgentSession: hints are queued the same way (never awaited on kvstore)."""

    @contextlib.asynccontextmanager
    async def tool_call(self, tool_name: str, expected_s: float | None = None) -> AsyncIterator[str]:
        call_id = self.begin_tool_call(tool_name, expected_s)
        try:
            yield call_id
        finally:
            self.end_tool_call(call_id)

    async def wait_ready(self, timeout_s: float = 1.0) -> bool:
        return await asyncio.to_thread(self._wait_ready, timeout_s)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    async def __aenter__(self) -> AsyncAgentSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
