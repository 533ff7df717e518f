"""Agent hints: validate, move the session to its new state, and queue what the policy plans.

Every method checks its whole input first and raises a `kvstore.errors` exception without
changing anything; then, under the store's lock (bookkeeping only: no bytes move here), it
updates the session registry and hands the policy's plans to the plan queue, which the server's
mover thread executes (the replay runs them as its clock passes). The AgentHints gRPC service
is a thin adapter over this class, run off the event loop, and the replay calls it directly.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound, shorten
from kvstore.sessions import Fanout, Session, ToolCall
from kvstore.sessions.returns import AwayKind
from kvstore.store import Store
from kvstore.tenancy import check_tenant
from kvstore.validation import MAX_ID

log = logging.getLogger(__name__)

MAX_DURATION_S = 7 * 86400.0
MAX_FANOUT = 100_000


@dataclass(slots=True)
class ToolCallPlan:
    call_id: str
    expected_s: float
    prefetch_in_s: float


@dataclass(slots=True)
class Residency:
    ready: bool
    bytes_top: int
    bytes_elsewhere: int


def _check_id(value: str, what: str) -> None:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value) > MAX_ID:
        raise InvalidArgument(f"{what} is {len(value)} characters; at most {MAX_ID}")


def _check_seconds(value: float, what: str, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > MAX_DURATION_S:
        low = ">= 0" if allow_zero else "> 0"
        raise InvalidArgument(f"{what} must be {low} and at most {MAX_DURATION_S:.0f} s, got {value}")


class Hints:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = store.sessions

    def _plan_locked(self, session: Session, event: str) -> None:
        session.seen = self.store.clock.now()
        self.registry.count_hint(event)
        if log.isEnabledFor(logging.DEBUG):  # on every hint: build the record only when it is kept
            log.debug(
                "session %s: %s",
                session.id,
                event,
                extra={"session": session.id, "event": event, "state": session.state.value},
            )
        self.store.actions.queue(self.store.policy.on_session(session, event))

    def session(self, session_id: str) -> Session:
        _check_id(session_id, "session")
        session = self.registry.sessions.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id!r} is not open; call OpenSession first")
        check_tenant(session.tenant, f"session {session_id!r}")
        session.seen = self.store.clock.now()
        return session

    def open_session(self, session_id: str, namespace: str) -> Session:
        _check_id(session_id, "session")
        self.store.check.namespace(namespace)
        with self.store.lock:
            existing = self.registry.sessions.get(session_id)
            if existing is not None:
                check_tenant(existing.tenant, f"session {session_id!r}")
            if existing is not None and existing.namespace != namespace:
                raise FailedPrecondition(
                    f"session {session_id!r} is already open in namespace {existing.namespace!r}"
                )
            tenant = self.store.namespaces[namespace].tenant
            self.registry.check_room([session_id], tenant)
            session = self.registry.open(session_id, namespace, self.store.clock.now(), tenant)
            self.registry.count_hint("open")
            return session

    def close_session(self, session_id: str) -> Session:
        with self.store.lock:
            session = self.session(session_id)
            self._close_locked(session)
            return session

    def _close_locked(self, session: Session) -> None:
        if session.fanout is not None:
            self.store.actions.release_fanout_locked(session, session.fanout.fanout_id)
        self._plan_locked(session, "close")
        self.registry.close(session)

    def expire_idle(self, idle_s: float) -> int:
        """Close the sessions idle for more than `idle_s` (an agent that went away without closing
        them): their plans go, their fan-outs release, their blocks stay. Returns how many."""
        with self.store.lock:
            idle = self.registry.idle(self.store.clock.now(), idle_s)
            for session in idle:
                self._close_locked(session)
            return len(idle)

    def bind(self, session_id: str, namespace: str, keys: list[bytes]) -> Session:
        """Attach the stored part of a chain to a session; keys not stored are ignored."""
        self.store.check.keys(keys)
        with self.store.lock:
            session = self.session(session_id)
            if namespace != session.namespace:
                raise InvalidArgument(
                    f"session {session_id!r} lives in namespace {session.namespace!r}, "
                    f"not {shorten(namespace)}"
                )
            for key in keys:
                entry = self.store.index.get(namespace, key)
                if entry is not None:
                    self.registry.ref(entry, session)
            self.registry.count_hint("bind")
            return session

    def begin_tool_call(
        self, session_id: str, tool_name: str, expected_s: float | None = None, call_id: str = ""
    ) -> ToolCallPlan:
        _check_id(tool_name, "tool_name")
        if expected_s is not None:
            _check_seconds(expected_s, "expected_s")
        if call_id:
            _check_id(call_id, "call_id")
        with self.store.lock:
            session = self.session(session_id)
            if session.tool is not None:
                raise FailedPrecondition(
                    f"session {session_id!r} is already in tool call {session.tool.call_id!r} "
                    f"({session.tool.tool_name}); end it first"
                )
            call_id = call_id or uuid.uuid4().hex
            if call_id in self.registry.calls:
                raise FailedPrecondition(f"call_id {call_id!r} is already in use")
            now = self.store.clock.now()
            expected = expected_s
            if expected is None:
                expected = self.registry.returns.median_s(AwayKind.TOOL_UNANNOUNCED, tool_name)
            self.registry.start_tool(
                session, ToolCall(call_id, tool_name, now, expected, expected_s is not None)
            )
            self._plan_locked(session, "begin_tool")
            back = self.store.policy.planned_return(session)
            return ToolCallPlan(call_id, expected, max(0.0, back - now) if back is not None else 0.0)

    def end_tool_call(self, call_id: str) -> ToolCallPlan:
        _check_id(call_id, "call_id")
        with self.store.lock:
            session = self.registry.calls.get(call_id)
            if session is None or session.tool is None:
                raise NotFound(f"no open tool call {call_id!r} (already ended, or never begun)")
            check_tenant(session.tenant, f"tool call {call_id!r}")
            call = session.tool
            self.registry.end_tool(session, self.store.clock.now())
            self._plan_locked(session, "end_tool")
            return ToolCallPlan(call_id, call.expected_s, 0.0)

    def awaiting_user(self, session_id: str) -> Session:
        return self._wait_on_user(session_id, active=False)

    def user_active(self, session_id: str) -> Session:
        """The session's person is active (typing, approving a step): the next request is near."""
        return self._wait_on_user(session_id, active=True)

    def _wait_on_user(self, session_id: str, active: bool) -> Session:
        with self.store.lock:
            session = self.session(session_id)
            if session.tool is not None:
                raise FailedPrecondition(
                    f"session {session_id!r} is in a tool call; end it before waiting on the user"
                )
            self.registry.wait_on_user(session, self.store.clock.now(), active)
            self._plan_locked(session, "user_active" if active else "awaiting_user")
            return session

    def announce_fanout(self, session_id: str, n: int, ttl_s: float, fanout_id: str = "") -> Fanout:
        if n < 1 or n > MAX_FANOUT:
            raise InvalidArgument(f"n must be between 1 and {MAX_FANOUT}, got {n}")
        _check_seconds(ttl_s, "ttl_s")
        if fanout_id:
            _check_id(fanout_id, "fanout_id")
        with self.store.lock:
            session = self.session(session_id)
            if session.fanout is not None:
                raise FailedPrecondition(
                    f"session {session_id!r} already has fan-out {session.fanout.fanout_id!r} running"
                )
            fanout_id = fanout_id or uuid.uuid4().hex
            if fanout_id in self.registry.fanouts:
                raise FailedPrecondition(f"fanout_id {fanout_id!r} is already in use")
            session.fanout = Fanout(fanout_id, n, self.store.clock.now() + ttl_s)
            self.registry.fanouts[fanout_id] = session
            self._plan_locked(session, "fanout")
            return session.fanout

    def branch_done(self, fanout_id: str) -> int:
        """One branch finished; the prefix is released after the last. Returns branches left."""
        _check_id(fanout_id, "fanout_id")
        with self.store.lock:
            session = self.registry.fanouts.get(fanout_id)
            if session is None or session.fanout is None:
                raise NotFound(f"no running fan-out {fanout_id!r} (finished, expired, or never announced)")
            check_tenant(session.tenant, f"fan-out {fanout_id!r}")
            session.fanout.branches_left -= 1
            left = session.fanout.branches_left
            self.registry.count_hint("branch_done")
            if left == 0:
                self.store.actions.release_fanout_locked(session, fanout_id)
            return left

    def residency(self, session_id: str) -> Residency:
        with self.store.lock:
            session = self.session(session_id)
            top = self.store.tiers[0].name
            in_top = session.bytes_per_tier.get(top, 0)
            elsewhere = session.total_bytes - in_top
            return Residency(elsewhere == 0, in_top, elsewhere)
