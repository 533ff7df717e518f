"""The session model: what an agent's session is doing, and its transitions.

Between two requests a session is *away* (`absence`): in a tool call, waiting on its person,
announced active, resuming after a tool call, or silent. Every transition is a method here and
bumps `generation`, so a plan made for an earlier state of the session is recognised as stale and
dropped. A transition that ends an absence returns it, for the registry to learn from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kvstore.index import BlockEntry
from kvstore.sessions.returns import Away, AwayKind


class State(str, enum.Enum):
    RUNNING = "running"
    IN_TOOL = "in_tool"
    AWAITING_USER = "awaiting_user"
    USER_ACTIVE = "user_active"  # awaiting its person, who is active (typing, approving a step)
    CLOSED = "closed"


class PrefetchStatus(str, enum.Enum):
    NONE = "none"  # nothing brought back since the session went away
    DONE = "done"  # its blocks were brought back to the top tier before it resumed
    LATE = "late"  # it resumed before (all of) its blocks were back


@dataclass(slots=True)
class ToolCall:
    call_id: str
    tool_name: str
    started: float
    expected_s: float  # as announced, or the learned median when the caller gave none
    announced: bool = True

    @property
    def expected_end(self) -> float:
        return self.started + self.expected_s


@dataclass(slots=True)
class Prefetch:
    """What the policy brought back to the top tier for the session's current absence."""

    status: PrefetchStatus = PrefetchStatus.NONE
    next_check: float | None = None  # when the policy looks at this session again
    done_at: float | None = None  # when the last byte arrived
    bytes: int = 0
    wasted_bytes: int = 0

    def reset(self) -> None:
        self.status, self.next_check, self.done_at = PrefetchStatus.NONE, None, None
        self.bytes = self.wasted_bytes = 0


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
    tenant: str = ""
    state: State = State.RUNNING
    last_active: float = 0.0
    # Set by hints (tool call, person, resuming); None while no hint says otherwise.
    away: Away | None = None
    # Last data-path call when no hint came since: the start of a silent absence.
    silent_since: float | None = None
    tool: ToolCall | None = None
    fanout: Fanout | None = None
    prefetch: Prefetch = field(default_factory=Prefetch)
    generation: int = 0  # bumped by every transition: plans made before are stale
    # When a hint or a data-path call last named it: idle sessions are closed (sessions.idle_ttl_s).
    seen: float = 0.0
    # Blocks brought back by the policy and not used yet (evicting one of them wastes it).
    prefetched: set[BlockEntry] = field(default_factory=set)
    # tier -> blocks of this session in that tier (insertion ordered: roughly chain order).
    tiers: dict[str, dict[BlockEntry, None]] = field(default_factory=dict)
    bytes_per_tier: dict[str, int] = field(default_factory=dict)
    pinned_bytes_per_tier: dict[str, int] = field(default_factory=dict)  # of those, pinned

    @property
    def blocks(self) -> int:
        return sum(len(blocks) for blocks in self.tiers.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_per_tier.values())

    def absence(self) -> Away:
        """The absence the session is in: what a hint said, else silent since its last call."""
        if self.away is not None:
            return self.away
        return Away(AwayKind.SILENT, self.tenant, self.last_active, session=self.id)

    # ------------------------------------------------------------------ transitions

    def start_tool(self, call: ToolCall) -> None:
        """BeginToolCall: away until the call ends (learned per tool)."""
        kind = AwayKind.TOOL if call.announced else AwayKind.TOOL_UNANNOUNCED
        self.tool = call
        self._go(
            State.IN_TOOL,
            Away(kind, call.tool_name, call.started, call.expected_s if call.announced else None),
        )

    def end_tool(self, now: float) -> Away | None:
        """EndToolCall (or the next request before it): the call's absence ends, and the session is
        `resuming` until a data-path call names it. Returns the absence that ended."""
        ended = self.away if self.tool is not None else None
        self.tool = None
        # What was brought back during the call stays on record until the session is back.
        self._go(
            State.RUNNING, Away(AwayKind.RESUMING, self.tenant, now, session=self.id), keep_prefetch=True
        )
        return ended

    def wait_on_user(self, now: float, active: bool) -> None:
        """AwaitingUser, or UserActive (`active`): its person is (about to be) back."""
        kind = AwayKind.USER_ACTIVE if active else AwayKind.USER
        self._go(
            State.USER_ACTIVE if active else State.AWAITING_USER,
            Away(kind, self.tenant, now, session=self.id),
        )

    def come_back(self, now: float) -> Away | None:
        """A data-path call names the session: whatever it was away for ends (returned, to learn
        from; a silent gap counts too), and whatever was brought back for it is used."""
        ended = self.away
        if ended is None and self.silent_since is not None and now > self.silent_since:
            ended = Away(AwayKind.SILENT, self.tenant, self.silent_since, session=self.id)
        if self.away is not None or self.state is not State.RUNNING:
            self.state, self.away = State.RUNNING, None
            self.generation += 1
        self.last_active = self.silent_since = now
        self.prefetched.clear()
        self.prefetch.reset()
        return ended

    def close(self) -> None:
        self.state, self.away, self.tool = State.CLOSED, None, None
        self.generation += 1

    def _go(self, state: State, away: Away, keep_prefetch: bool = False) -> None:
        self.state, self.away, self.silent_since = state, away, None
        self.last_active = away.since
        if not keep_prefetch:
            self.prefetch.reset()
        self.generation += 1
