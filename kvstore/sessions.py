"""Sessions: what agents are doing, and which blocks each one references.

Blocks are content-addressed and shared; a session *references* blocks (many to many). Each
session keeps its blocks per tier, so a policy can find "this session's blocks in HBM" without
scanning the tier. Hints change a session's state; from the state the policy reads a predicted
next use (`Session.next_use`).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvstore.index import BlockEntry

log = logging.getLogger(__name__)

HISTORY = 256  # completed calls remembered per tool name
MIN_RATIOS = 5  # announced calls seen before their error is trusted


class State(str, enum.Enum):
    RUNNING = "running"
    IN_TOOL = "in_tool"
    AWAITING_USER = "awaiting_user"
    CLOSED = "closed"


@dataclass(slots=True)
class ToolCall:
    call_id: str
    tool_name: str
    started: float
    expected_s: float  # as announced (or learned, when the caller gave none)
    planned_s: float  # what placement plans with: shorter when this tool's announcements run long
    announced: bool = True

    @property
    def expected_end(self) -> float:
        return self.started + self.expected_s

    @property
    def planned_end(self) -> float:
        return self.started + self.planned_s


@dataclass(slots=True)
class Prefetch:
    """The latest prefetch of a session back to the top tier."""

    status: str = "none"  # none, scheduled, running, done, late, cancelled
    scheduled_at: float | None = None
    done_at: float | None = None
    bytes: int = 0
    wasted_bytes: int = 0


@dataclass(slots=True)
class Fanout:
    fanout_id: str
    branches_left: int
    expires: float
    pinned: list[BlockEntry] = field(default_factory=list)


@dataclass(eq=False)
class Session:
    id: str
    namespace: str
    state: State = State.RUNNING
    last_active: float = 0.0
    tool: ToolCall | None = None
    overdue: bool = False
    fanout: Fanout | None = None
    prefetch: Prefetch = field(default_factory=Prefetch)
    # Blocks brought back by the prefetch and not used yet (evicting one of them wastes it).
    prefetched: set[BlockEntry] = field(default_factory=set)
    # tier -> blocks of this session in that tier (insertion ordered: roughly chain order).
    tiers: dict[str, dict[BlockEntry, None]] = field(default_factory=dict)
    bytes_per_tier: dict[str, int] = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return sum(len(blocks) for blocks in self.tiers.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_per_tier.values())

    def next_use(self, now: float, running_idle_s: float) -> float | None:
        """When this session will next read its blocks: now (running), the tool's expected end,
        infinity (waiting on a person, or a tool that overran), or None (no idea)."""
        if self.fanout is not None:
            return now
        if self.state is State.RUNNING:
            return now if now - self.last_active < running_idle_s else None
        if self.state is State.IN_TOOL and self.tool is not None and not self.overdue:
            return self.tool.planned_end
        if self.state in (State.IN_TOOL, State.AWAITING_USER):
            return math.inf
        return None


class ToolDurations:
    """What past tool calls teach, per tool name, saved as JSON so it survives a restart:
    - durations of calls announced without one: expected = a low quantile of the history;
    - for announced calls, actual / announced: placement plans with a low quantile of that ratio
      times the announcement, so a prefetch is early rather than late when callers guess long."""

    def __init__(
        self, path: Path | None, quantile: float, default_s: float, ratio_quantile: float = 0.1
    ) -> None:
        self.path = path
        self.quantile = quantile
        self.ratio_quantile = ratio_quantile
        self.default_s = default_s
        self.history: dict[str, deque[float]] = {}
        self.ratios: dict[str, deque[float]] = {}
        if path is not None and path.exists():
            try:
                saved = json.loads(path.read_text())
                self.history = {
                    k: deque(map(float, v), maxlen=HISTORY) for k, v in saved["durations"].items()
                }
                self.ratios = {k: deque(map(float, v), maxlen=HISTORY) for k, v in saved["ratios"].items()}
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("ignoring unreadable tool duration table %s: %s", path, exc)

    @staticmethod
    def _low(values: deque[float], quantile: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def expected(self, tool_name: str) -> float:
        past = self.history.get(tool_name)
        return self._low(past, self.quantile) if past else self.default_s

    def planning_factor(self, tool_name: str) -> float:
        """How much of an announced duration to plan with (never more than all of it)."""
        past = self.ratios.get(tool_name)
        if not past or len(past) < MIN_RATIOS:
            return 1.0
        return min(1.0, self._low(past, self.ratio_quantile))

    def record(self, tool_name: str, seconds: float, announced_s: float | None = None) -> None:
        if announced_s is None:
            self.history.setdefault(tool_name, deque(maxlen=HISTORY)).append(seconds)
        elif announced_s > 0:
            self.ratios.setdefault(tool_name, deque(maxlen=HISTORY)).append(seconds / announced_s)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "durations": {k: list(v) for k, v in self.history.items()},
                    "ratios": {k: list(v) for k, v in self.ratios.items()},
                }
            )
        )
        os.replace(tmp, self.path)


class SessionRegistry:
    """Sessions by id, open tool calls and fan-outs by id, and the block <-> session references."""

    def __init__(self, durations: ToolDurations) -> None:
        self.durations = durations
        self.sessions: dict[str, Session] = {}
        self.calls: dict[str, Session] = {}
        self.fanouts: dict[str, Session] = {}
        self.hints: dict[str, int] = {}
        self.prefetches: dict[str, int] = {"on_time": 0, "late": 0, "wasted": 0}
        self.prefetch_bytes: dict[str, int] = {"moved": 0, "wasted": 0}
        # Bumped whenever a session's state (hence its predicted next use) changes.
        self.version = 0
        # Told when a block loses its last session reference (the store points it at the policy).
        self.on_orphan: Callable[[BlockEntry], None] = lambda entry: None

    def count_hint(self, kind: str) -> None:
        self.hints[kind] = self.hints.get(kind, 0) + 1
        self.version += 1

    def open(self, session_id: str, namespace: str, now: float) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = Session(session_id, namespace, last_active=now)
        return session

    def live(self) -> list[Session]:
        return list(self.sessions.values())

    # ------------------------------------------------------------ references

    def ref(self, entry: BlockEntry, session: Session) -> None:
        if entry.sessions is not None and session.id in entry.sessions:
            return
        entry.sessions = (entry.sessions or set()) | {session.id}
        session.tiers.setdefault(entry.tier, {})[entry] = None
        session.bytes_per_tier[entry.tier] = session.bytes_per_tier.get(entry.tier, 0) + entry.size

    def unref(self, entry: BlockEntry, session: Session) -> None:
        if entry.sessions is None or session.id not in entry.sessions:
            return
        entry.sessions = entry.sessions - {session.id} or None
        del session.tiers[entry.tier][entry]
        session.bytes_per_tier[entry.tier] -= entry.size
        session.prefetched.discard(entry)
        if entry.sessions is None:
            self.on_orphan(entry)

    def on_move(self, entry: BlockEntry, from_tier: str) -> list[Session]:
        """Keep per-tier membership right; returns the sessions whose prefetched block just left."""
        wasted = []
        for sid in entry.sessions or ():
            session = self.sessions[sid]
            del session.tiers[from_tier][entry]
            session.bytes_per_tier[from_tier] -= entry.size
            session.tiers.setdefault(entry.tier, {})[entry] = None
            session.bytes_per_tier[entry.tier] = session.bytes_per_tier.get(entry.tier, 0) + entry.size
            if entry in session.prefetched:
                session.prefetched.discard(entry)
                wasted.append(session)
        return wasted

    def on_drop(self, entry: BlockEntry) -> list[Session]:
        wasted = []
        for sid in list(entry.sessions or ()):
            session = self.sessions[sid]
            if entry in session.prefetched:
                wasted.append(session)
            self.unref(entry, session)
        return wasted

    def close(self, session: Session) -> None:
        for blocks in list(session.tiers.values()):
            for entry in list(blocks):
                self.unref(entry, session)
        if session.tool is not None:
            self.calls.pop(session.tool.call_id, None)
        if session.fanout is not None:
            self.fanouts.pop(session.fanout.fanout_id, None)
        session.state = State.CLOSED
        del self.sessions[session.id]
        self.version += 1
