"""What agent frameworks call: announce tool calls, fan-outs and waits, so kvstore can move the
session's KV out of HBM while it idles and back before the next LLM call.

Hints are advisory. The caller only puts a hint on an ordered queue (microseconds); the process's
`HintSender` for the address sends it with a bounded timeout. If kvstore is down or slow the
agent's code runs on unharmed: a log line, `healthy` turns False, and never an exception into the
agent's tool.

    session = AgentSession("127.0.0.1:50551", namespace="default")
    with session.tool_call("pytest", expected_s=30):
        run_tests()
    session.awaiting_user()

Tools shared by many sessions use the module-level `tool` decorator: each call is announced on
the session that is current where it runs (`with session:` or `with session.activate():`).

`AsyncAgentSession` is the asyncio twin (`async with session.tool_call(...)`): the same methods,
with the ones that wait (`wait_ready`, `flush`, `close`) awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import grpc
from kvstore.sdk.core import DEFAULT_ADDRESS
from kvstore.sdk.sender import HintSender

from kvstore.v1 import kvstore_pb2 as pb

log = logging.getLogger("kvstore.sdk.agent")

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound="SessionBase")

_current: contextvars.ContextVar[SessionBase | None] = contextvars.ContextVar(
    "kvstore_current_session", default=None
)


def current_session() -> SessionBase | None:
    """The session tools announce on here (set by `with session:` / `session.activate()`)."""
    return _current.get()


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


class SessionBase:
    """Builds and queues the hints; the sync and async sessions differ only in how they wait.

    Tool calls that overlap in one session (parallel tools) are one call for kvstore: it begins
    with the first, is named after it, and ends when the last one ends (kvstore holds one tool call
    per session)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        session_id: str | None = None,
        namespace: str = "default",
        timeout: float = 2.0,
        sender: HintSender | None = None,
        token: str | None = None,
        root_certificates: bytes | None = None,
    ) -> None:
        """`token`: bearer token (default $KVSTORE_TOKEN), `root_certificates`: PEM CA for TLS; both
        unused when a `sender` is given (it carries its own)."""
        self.id = session_id or uuid.uuid4().hex
        self.namespace = namespace
        self._sender = sender or HintSender.shared(address, timeout, token, root_certificates)
        self._open = pb.OpenSessionRequest(session=self.id, namespace=namespace)
        self._lock = threading.Lock()
        self._running: set[str] = set()  # ids of the calls running now
        self._server_call: str | None = None  # the call kvstore knows of, while any runs
        self._tokens: list[contextvars.Token[SessionBase | None]] = []
        self._sender.send("OpenSession", self._open)

    @property
    def healthy(self) -> bool:
        """False while hints are not reaching kvstore (they are advisory: nothing else breaks)."""
        return self._sender.healthy

    def _send(self, method: str, request: Any) -> None:
        self._sender.send(method, request, reopen=self._open)

    def begin_tool_call(self, tool_name: str, expected_s: float | None = None) -> str:
        """Announce a tool call; returns its id for `end_tool_call`. Without `expected_s`, kvstore
        expects what this tool took before."""
        call_id = uuid.uuid4().hex
        with self._lock:
            self._running.add(call_id)
            if self._server_call is not None:
                return call_id
            self._server_call = call_id
            request = pb.BeginToolCallRequest(session=self.id, tool_name=tool_name, call_id=call_id)
            if expected_s is not None:
                request.expected_s = expected_s
            self._send("BeginToolCall", request)
        return call_id

    def end_tool_call(self, call_id: str) -> None:
        """The call is over (an id that is not running is ignored)."""
        with self._lock:
            if call_id not in self._running:
                return
            self._running.discard(call_id)
            if self._running or self._server_call is None:
                return
            self._send("EndToolCall", pb.EndToolCallRequest(call_id=self._server_call))
            self._server_call = None

    def awaiting_user(self) -> None:
        self._send("AwaitingUser", pb.SessionRequest(session=self.id))

    def user_active(self) -> None:
        """The person is active (started typing, approved a step): the next request is near, so
        kvstore brings the session's KV back now."""
        self._send("UserActive", pb.SessionRequest(session=self.id))

    def bind(self, keys: list[bytes]) -> None:
        self._send("BindChain", pb.BindChainRequest(session=self.id, namespace=self.namespace, keys=keys))

    def fanout(self, n: int, ttl_s: float = 300.0) -> Fanout:
        fanout_id = uuid.uuid4().hex
        self._send(
            "AnnounceFanout", pb.AnnounceFanoutRequest(session=self.id, n=n, ttl_s=ttl_s, fanout_id=fanout_id)
        )
        return Fanout(self._sender, fanout_id)

    @contextlib.contextmanager
    def activate(self: S) -> Iterator[S]:
        """Make this the current session in the block: `tool`-decorated functions announce on it."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def tool(self, tool_name: str, expected_s: float | None = None) -> Callable[[F], F]:
        """Decorator: every call of the function (sync or async) is announced on this session.
        For tools shared across sessions, use the module-level `tool` instead."""
        return _announcing(tool_name, expected_s, lambda: self)

    @contextlib.contextmanager
    def _announced(self, tool_name: str, expected_s: float | None) -> Iterator[str]:
        call_id = self.begin_tool_call(tool_name, expected_s)
        try:
            yield call_id
        finally:
            self.end_tool_call(call_id)

    def _enter(self) -> None:
        self._tokens.append(_current.set(self))

    def _exit(self) -> None:
        if self._tokens:
            with contextlib.suppress(ValueError):  # entered in another context: nothing to undo here
                _current.reset(self._tokens.pop())

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
        """Close the session in kvstore (its blocks lose this reference) and wait for delivery."""
        self._send("CloseSession", pb.SessionRequest(session=self.id))
        self._sender.flush(self._sender.timeout * 2)


def tool(tool_name: str, expected_s: float | None = None) -> Callable[[F], F]:
    """Decorator for a tool shared by many sessions (sync or async): each call is announced on the
    session current where it runs (`with session:`, `async with session:`, `session.activate()`),
    and runs unannounced where there is none."""
    return _announcing(tool_name, expected_s, current_session)


def _announcing(
    tool_name: str, expected_s: float | None, resolve: Callable[[], SessionBase | None]
) -> Callable[[F], F]:
    def announced() -> contextlib.AbstractContextManager[Any]:
        session = resolve()
        return session._announced(tool_name, expected_s) if session is not None else contextlib.nullcontext()

    def wrap(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with announced():
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with announced():
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


class AgentSession(SessionBase):
    """One agent's session. `with AgentSession(...) as session:` makes it the current session in
    the block and closes it at the end."""

    @contextlib.contextmanager
    def tool_call(self, tool_name: str, expected_s: float | None = None) -> Iterator[str]:
        """Announce a tool call for the duration of the block; yields the call id."""
        with self._announced(tool_name, expected_s) as call_id:
            yield call_id

    def wait_ready(self, timeout_s: float = 1.0) -> bool:
        """Block until the session's KV is in HBM (True), or the timeout passes or kvstore is away (False)."""
        return self._wait_ready(timeout_s)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the hints queued so far were sent (or given up on)."""
        return self._sender.flush(timeout)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> AgentSession:
        self._enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit()
        self.close()


class AsyncAgentSession(SessionBase):
    """asyncio twin of AgentSession: hints are queued the same way (never awaited on kvstore)."""

    @contextlib.asynccontextmanager
    async def tool_call(self, tool_name: str, expected_s: float | None = None) -> AsyncIterator[str]:
        """Announce a tool call for the duration of the block; yields the call id."""
        with self._announced(tool_name, expected_s) as call_id:
            yield call_id

    async def wait_ready(self, timeout_s: float = 1.0) -> bool:
        """Wait until the session's KV is in HBM (True), or the timeout passes or kvstore is away (False)."""
        return await asyncio.to_thread(self._wait_ready, timeout_s)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the hints queued so far were sent (or given up on)."""
        return await asyncio.to_thread(self._sender.flush, timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    async def __aenter__(self) -> AsyncAgentSession:
        self._enter()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._exit()
        await self.close()
