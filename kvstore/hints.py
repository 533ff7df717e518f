"""Agent hints: validate, update the session, and let the policy plan.

Every method checks its whole input first and raises a `kvstore.errors` exception without
changing anything; then it updates the session registry and tells the policy (which may schedule
prefetches and offloads through the mover). The AgentHints gRPC service is a thin adapter over
this class, and the replay benchmark calls it directly.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound
from kvstore.sessions import Fanout, Session, State, ToolCall
from kvstore.store import Store

MAX_DURATION_S = 7 * 86400.0
MAX_FANOUT = 100_000
MAX_ID = 256


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

    def session(self, session_id: str) -> Session:
        _check_id(session_id, "session")
        session = self.registry.sessions.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id!r} is not open; call OpenSession first")
        return session

    def open_session(self, session_id: str, namespace: str) -> Session:
        _check_id(session_id, "session")
        self.store.namespace(namespace)
        with self.store.lock:
            existing = self.registry.sessions.get(session_id)
            if existing is not None and existing.namespace != namespace:
                raise FailedPrecondition(
                    f"session {session_id!r} is already open in namespace {existing.namespace!r}"
                )
            self.registry.count_hint("open")
            session = self.registry.open(session_id, namespace, self.store.clock.now())
            session.last_active = self.store.clock.now()
            return session

    def close_session(self, session_id: str) -> Session:
        with self.store.lock:
            session = self.session(session_id)
            self.registry.count_hint("close")
            if session.fanout is not None:
                self.store.release_fanout(session, session.fanout.fanout_id)
            self.store.policy.on_session(session, "close")
            self.registry.close(session)
            return session

    def bind(self, session_id: str, namespace: str, keys: list[bytes]) -> Session:
        """Attach the stored part of a chain to a session; keys not stored are ignored."""
        with self.store.lock:
            session = self.session(session_id)
            if namespace != session.namespace:
                raise InvalidArgument(
                    f"session {session_id!r} lives in namespace {session.namespace!r}, not {namespace!r}"
                )
            self.store._check_keys(keys)
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
            if session.state is State.IN_TOOL and session.tool is not None:
                raise FailedPrecondition(
                    f"session {session_id!r} is already in tool call "
                    f"{session.tool.call_id!r} ({session.tool.tool_name}); end it first"
                )
            call_id = call_id or uuid.uuid4().hex
            if call_id in self.registry.calls:
                raise FailedPrecondition(f"call_id {call_id!r} is already in use")
            now = self.store.clock.now()
            durations = self.registry.durations
            announced = expected_s is not None
            expected = expected_s if announced else durations.expected(tool_name)
            planned = expected * durations.planning_factor(tool_name) if announced else expected
            session.state, session.overdue = State.IN_TOOL, False
            session.tool = ToolCall(call_id, tool_name, now, expected, planned, announced)
            session.last_active = now
            self.registry.calls[call_id] = session
            self.registry.count_hint("begin_tool")
            session.prefetch.status, session.prefetch.scheduled_at = "none", None
            session.prefetch.done_at, session.prefetch.bytes, session.prefetch.wasted_bytes = None, 0, 0
            self.store.policy.on_session(session, "begin_tool")
            scheduled = session.prefetch.scheduled_at
            return ToolCallPlan(
                call_id, expected, max(0.0, scheduled - now) if scheduled is not None else 0.0
            )

    def end_tool_call(self, call_id: str) -> ToolCallPlan:
        _check_id(call_id, "call_id")
        with self.store.lock:
            session = self.registry.calls.get(call_id)
            if session is None or session.tool is None:
                raise NotFound(f"no open tool call {call_id!r} (already ended, or never begun)")
            now = self.store.clock.now()
            call = session.tool
            self.registry.durations.record(
                call.tool_name, now - call.started, call.expected_s if call.announced else None
            )
            del self.registry.calls[call_id]
            session.state, session.tool, session.overdue = State.RUNNING, None, False
            session.last_active = now
            self.registry.count_hint("end_tool")
            self.store.policy.on_session(session, "end_tool")
            return ToolCallPlan(call_id, call.expected_s, 0.0)

    def awaiting_user(self, session_id: str) -> Session:
        with self.store.lock:
            session = self.session(session_id)
            if session.state is State.IN_TOOL:
                raise FailedPrecondition(
                    f"session {session_id!r} is in a tool call; end it before waiting on the user"
                )
            session.state = State.AWAITING_USER
            self.registry.count_hint("awaiting_user")
            self.store.policy.on_session(session, "awaiting_user")
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
            self.registry.count_hint("fanout")
            self.store.policy.on_session(session, "fanout")
            return session.fanout

    def branch_done(self, fanout_id: str) -> int:
        """One branch finished; the prefix is released after the last. Returns branches left."""
        _check_id(fanout_id, "fanout_id")
        with self.store.lock:
            session = self.registry.fanouts.get(fanout_id)
            if session is None or session.fanout is None:
                raise NotFound(f"no running fan-out {fanout_id!r} (finished, expired, or never announced)")
            session.fanout.branches_left -= 1
            left = session.fanout.branches_left
            self.registry.count_hint("branch_done")
            if left == 0:
                self.store.release_fanout(session, fanout_id)
            return left

    def residency(self, session_id: str) -> Residency:
        with self.store.lock:
            session = self.session(session_id)
            top = self.store.tiers[0].name
            in_top = session.bytes_per_tier.get(top, 0)
            elsewhere = session.total_bytes - in_top
            return Residency(elsewhere == 0, in_top, elsewhere)
