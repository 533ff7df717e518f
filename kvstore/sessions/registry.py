"""The session registry: sessions by id, open tool calls and fan-outs by id, the block <-> session
references, and the return times learned from every absence that ends.

Everything here is bookkeeping done under the store's lock; nothing copies bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from kvstore.errors import ResourceExhausted
from kvstore.index import BlockEntry
from kvstore.quotas import Quotas
from kvstore.sessions.model import Session, ToolCall
from kvstore.sessions.returns import Away, ReturnTimes


class SessionRegistry:
    def __init__(
        self, returns: ReturnTimes | None = None, max_open: int = 0, quotas: Quotas | None = None
    ) -> None:
        self.returns = returns or ReturnTimes()
        self.max_open = max_open  # 0: no cap (the replay); the server's is config sessions.max_open
        self.quotas = quotas or Quotas({}, {})  # per-tenant caps (tenants.<name>.max_sessions)
        self.sessions: dict[str, Session] = {}
        self.open_per_tenant: Counter[str] = Counter()
        self.calls: dict[str, Session] = {}
        self.fanouts: dict[str, Session] = {}
        self.hints: dict[str, int] = {}
        self.prefetches: dict[str, int] = {"on_time": 0, "late": 0, "wasted": 0}
        self.prefetch_bytes: dict[str, int] = {"moved": 0, "wasted": 0}
        # Bumped whenever a session's state (hence its prediction) changes.
        self.version = 0
        # Told when a block loses its last session reference, and when one gains its first (the
        # store points these at the policy); and when a session moved on (its queued plans go).
        self.on_orphan: Callable[[BlockEntry], None] = lambda entry: None
        self.on_claimed: Callable[[BlockEntry], None] = lambda entry: None
        self.on_moved_on: Callable[[Session], None] = lambda session: None

    def count_hint(self, kind: str) -> None:
        self.hints[kind] = self.hints.get(kind, 0) + 1
        self.version += 1

    def check_room(self, session_ids: Iterable[str], tenant: str = "") -> None:
        """ResourceExhausted when opening those of `session_ids` not open yet (in `tenant`'s
        namespaces) would pass the server's cap or the tenant's: callers ask before they change
        anything, so a refused call leaves the store as it was."""
        if not self.max_open and not self.quotas.limits:
            return
        new = {s for s in session_ids if s and s not in self.sessions}
        if not new:
            return
        self.quotas.check_sessions(tenant, self.open_per_tenant[tenant], len(new))
        if self.max_open and len(self.sessions) + len(new) > self.max_open:
            raise ResourceExhausted(
                f"{len(self.sessions)} sessions are open, at most {self.max_open} (sessions.max_open): "
                "close finished sessions (CloseSession), or raise sessions.max_open; sessions idle "
                "for sessions.idle_ttl_s are closed"
            )

    def open(self, session_id: str, namespace: str, now: float, tenant: str = "") -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            session = self.sessions[session_id] = Session(
                session_id, namespace, tenant, last_active=now, silent_since=now
            )
            self.open_per_tenant[tenant] += 1
        session.seen = now
        return session

    def idle(self, now: float, idle_s: float) -> list[Session]:
        """Sessions nobody named (by a hint or a data-path call) for more than `idle_s`."""
        return [s for s in self.sessions.values() if now - s.seen > idle_s]

    def live(self) -> list[Session]:
        return list(self.sessions.values())

    # ------------------------------------------------------------ transitions

    def start_tool(self, session: Session, call: ToolCall) -> None:
        session.start_tool(call)
        self.calls[call.call_id] = session
        self._moved_on(session)

    def end_tool(self, session: Session, now: float) -> ToolCall | None:
        call = session.tool
        self._learn(session.end_tool(now), now)
        if call is not None:
            self.calls.pop(call.call_id, None)
        self._moved_on(session)
        return call

    def wait_on_user(self, session: Session, now: float, active: bool) -> None:
        session.wait_on_user(now, active)
        self._moved_on(session)

    def came_back(self, session: Session, now: float) -> None:
        """A data-path call for the session (a tool call still open ends here)."""
        if session.tool is not None:
            self.end_tool(session, now)
        generation = session.generation
        self._learn(session.come_back(now), now)
        if session.generation != generation:
            self._moved_on(session)

    def close(self, session: Session) -> None:
        for blocks in list(session.tiers.values()):
            for entry in list(blocks):
                self.unref(entry, session)
        if session.tool is not None:
            self.calls.pop(session.tool.call_id, None)
        if session.fanout is not None:
            self.fanouts.pop(session.fanout.fanout_id, None)
        session.close()
        del self.sessions[session.id]
        self.open_per_tenant[session.tenant] -= 1
        self.returns.forget(session.id)
        self._moved_on(session)

    def _learn(self, ended: Away | None, now: float) -> None:
        if ended is not None:
            self.returns.record(ended, now - ended.since)

    def _moved_on(self, session: Session) -> None:
        self.version += 1
        self.on_moved_on(session)

    # ------------------------------------------------------------ references

    def ref(self, entry: BlockEntry, session: Session) -> None:
        if entry.sessions is not None and session.id in entry.sessions:
            return
        if not entry.sessions:
            self.on_claimed(entry)
        entry.sessions = (entry.sessions or set()) | {session.id}
        session.tiers.setdefault(entry.tier, {})[entry] = None
        session.bytes_per_tier[entry.tier] = session.bytes_per_tier.get(entry.tier, 0) + entry.size
        if entry.pins:
            pinned = session.pinned_bytes_per_tier
            pinned[entry.tier] = pinned.get(entry.tier, 0) + entry.size

    def unref(self, entry: BlockEntry, session: Session) -> None:
        if entry.sessions is None or session.id not in entry.sessions:
            return
        entry.sessions = entry.sessions - {session.id} or None
        del session.tiers[entry.tier][entry]
        session.bytes_per_tier[entry.tier] -= entry.size
        if entry.pins:
            session.pinned_bytes_per_tier[entry.tier] -= entry.size
        session.prefetched.discard(entry)
        if entry.sessions is None:
            self.on_orphan(entry)

    def rebind(self, session: Session, chain: list[BlockEntry]) -> None:
        """A request starts: the session now references exactly this chain. Blocks of chains it
        left behind (agents rewrite and compact their context) lose its reference, so they are no
        longer brought back with it or kept for it."""
        keep = set(chain)
        for blocks in list(session.tiers.values()):
            for entry in [e for e in blocks if e not in keep]:
                self.unref(entry, session)
        for entry in chain:
            self.ref(entry, session)

    def on_move(self, entry: BlockEntry, from_tier: str) -> list[Session]:
        """Keep per-tier membership right; returns the sessions whose prefetched block just left."""
        wasted = []
        for sid in entry.sessions or ():
            session = self.sessions[sid]
            del session.tiers[from_tier][entry]
            session.bytes_per_tier[from_tier] -= entry.size
            session.tiers.setdefault(entry.tier, {})[entry] = None
            session.bytes_per_tier[entry.tier] = session.bytes_per_tier.get(entry.tier, 0) + entry.size
            if entry.pins:
                pinned = session.pinned_bytes_per_tier
                pinned[from_tier] -= entry.size
                pinned[entry.tier] = pinned.get(entry.tier, 0) + entry.size
            if entry in session.prefetched:
                session.prefetched.discard(entry)
                wasted.append(session)
        return wasted

    def on_pinned(self, entry: BlockEntry, pinned: bool) -> None:
        """The block's first pin came (True) or its last went (False)."""
        delta = entry.size if pinned else -entry.size
        for sid in entry.sessions or ():
            tiers = self.sessions[sid].pinned_bytes_per_tier
            tiers[entry.tier] = tiers.get(entry.tier, 0) + delta

    def on_drop(self, entry: BlockEntry) -> list[Session]:
        wasted = []
        for sid in list(entry.sessions or ()):
            session = self.sessions[sid]
            if entry in session.prefetched:
                wasted.append(session)
            self.unref(entry, session)
        return wasted
