"""The agent policy: place blocks by when their sessions will need them next.

Every block's predicted next use is the soonest over the sessions that reference it (a running
session: now; a session in a tool call: the call's expected end; waiting on a person: never).
Under pressure the block used farthest in the future leaves first — Belady's rule with
predictions — and blocks nobody predicts for leave in LRU order, after the far ones and before
those needed soon. A tool call schedules a prefetch back to the top tier at
`expected_end - lead`, with `lead = session bytes / link bandwidth + margin`, so the blocks are
back before the tool returns; ending early makes the prefetch urgent; a tool that overruns its
estimate by more than a grace period stops holding HBM (its blocks become the first to leave).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from kvstore.config import AgentConfig
from kvstore.index import BlockEntry
from kvstore.policy.lru import LRUPolicy
from kvstore.sessions import Session, State

URGENT, PREFETCH, OVERRUN, OFFLOAD = 0, 5, 20, 30  # job priorities: lower runs first
REPLAN_MIN_S = 0.05  # move a planned prefetch earlier only when it gains at least this much


@dataclass(slots=True)
class Ranking:
    far: list[tuple[float, Session]]
    near: list[tuple[float, Session]]
    idle: list[Session]


class AgentPolicy(LRUPolicy):
    name = "agent"

    def __init__(self, config: AgentConfig | None = None) -> None:
        super().__init__()
        self.config = config or AgentConfig()
        self._ranked_at: tuple[float, int] | None = None
        self._ranked = Ranking([], [], [])
        self._orphans: dict[str, OrderedDict[BlockEntry, None]] = {}

    # ------------------------------------------------------------------ predictions

    def session_next_use(self, session: Session, now: float) -> float | None:
        return session.next_use(now, self.config.running_idle_s)

    def block_next_use(self, entry: BlockEntry, now: float) -> float | None:
        """Soonest predicted use over the sessions referencing the block; None: no prediction."""
        best: float | None = None
        sessions = self.store.sessions.sessions
        for sid in entry.sessions or ():
            nu = self.session_next_use(sessions[sid], now)
            if nu is not None and (best is None or nu < best):
                best = nu
        return best

    def lead(self, session: Session) -> float:
        """Seconds to bring the whole session back to the top tier, plus the margin: bytes on the
        bottom tier over its link, everything else over the link from the tier below the top
        (links measured where moves were timed)."""
        tiers = self.store.tiers
        top = tiers[0].name
        if len(tiers) == 1:
            return self.config.prefetch_margin_s
        bottom = tiers[-1].name
        on_bottom = session.bytes_per_tier.get(bottom, 0) if len(tiers) > 2 else 0
        rest = session.total_bytes - on_bottom
        seconds = rest / self.store.link_bandwidth(tiers[1].name, top)
        if on_bottom:
            seconds += on_bottom / self.store.link_bandwidth(bottom, top)
        return seconds + self.config.prefetch_margin_s

    # ------------------------------------------------------------------ victims

    def _ranking(self, now: float) -> Ranking:
        """Sessions by predicted next use: far (beyond their prefetch lead, farthest first), near,
        and idle (no prediction, least recently active first). Cached until time moves or a
        session's state changes."""
        version = self.store.sessions.version
        if self._ranked_at != (now, version):
            ranked, idle = [], []
            for session in self.store.sessions.live():
                nu = self.session_next_use(session, now)
                if nu is None:
                    idle.append(session)
                elif nu > now:
                    ranked.append((nu, session, nu - now > self.lead(session)))
            ranked.sort(key=lambda r: -r[0])
            idle.sort(key=lambda s: s.last_active)
            self._ranked = Ranking(
                [(nu, s) for nu, s, far in ranked if far], [(nu, s) for nu, s, far in ranked if not far], idle
            )
            self._ranked_at = (now, version)
        return self._ranked

    def victim(self, tier: str, sooner_than: float | None = None) -> BlockEntry | None:
        now = self.store.clock.now()
        ranking = self._ranking(now)
        for nu, session in ranking.far:
            if session.tiers.get(tier):
                entry = self._session_victim(session, tier, nu, now, sooner_than)
                if entry is not None:
                    return entry
        entry = self._unpredicted_victim(tier, now, ranking.idle)
        if entry is not None:
            return entry
        for nu, session in ranking.near:
            if session.tiers.get(tier):
                entry = self._session_victim(session, tier, nu, now, sooner_than)
                if entry is not None:
                    return entry
        # Last resort (never for a prefetch): blocks of running sessions, least recently used.
        return super().victim(tier) if sooner_than is None else None

    def _session_victim(
        self, session: Session, tier: str, nu: float, now: float, sooner_than: float | None
    ) -> BlockEntry | None:
        if sooner_than is not None and nu <= sooner_than:
            return None
        for entry in reversed(session.tiers[tier]):  # the chain's tail first: prefixes are shared more
            if not entry.movable:
                continue
            shared = self.block_next_use(entry, now) if len(entry.sessions or ()) > 1 else nu
            if shared is None or shared >= nu:
                return entry
        return None

    def _unpredicted_victim(self, tier: str, now: float, idle: list[Session]) -> BlockEntry | None:
        """Blocks nobody predicts for: first those no session references (least recently used
        first), then those of sessions that went quiet without a hint."""
        orphans = self._orphans.get(tier)
        while orphans:
            entry = next(iter(orphans))
            if entry.sessions or entry.pins or entry.tier != tier:
                del orphans[entry]  # it gained a reference (or a pin) since it was orphaned
                continue
            if entry.movable:
                return entry
            break  # a transfer is reading it: fall through to the rest
        for session in idle:
            for entry in reversed(session.tiers.get(tier, {})):
                if entry.movable and self.block_next_use(entry, now) is None:
                    return entry
        return None

    # Orphans (blocks no session references) per tier, in LRU order; stale members are dropped
    # when met, so only a block losing its last reference needs telling.
    def on_insert(self, entry: BlockEntry) -> None:
        super().on_insert(entry)
        if not entry.sessions:
            self._orphans_of(entry.tier)[entry] = None

    def on_access(self, entry: BlockEntry) -> None:
        super().on_access(entry)
        orphans = self._orphans.get(entry.tier)
        if orphans is not None and entry in orphans:
            orphans.move_to_end(entry)

    def on_remove(self, entry: BlockEntry) -> None:
        super().on_remove(entry)
        self._orphans_of(entry.tier).pop(entry, None)

    def on_move(self, entry: BlockEntry, from_tier: str) -> None:
        super().on_move(entry, from_tier)
        self._orphans_of(from_tier).pop(entry, None)
        if not entry.sessions and not entry.pins:
            self._orphans_of(entry.tier)[entry] = None
        if entry.sessions and entry.tier == self.store.tiers[-1].name and len(self.store.tiers) > 2:
            self._replan(entry)

    def _replan(self, entry: BlockEntry) -> None:
        """A block of a session in a tool call went down to the slow bottom tier: its prefetch now
        takes longer, so start it earlier than planned."""
        now = self.store.clock.now()
        for sid in entry.sessions or ():
            session = self.store.sessions.sessions[sid]
            call, planned = session.tool, session.prefetch.scheduled_at
            if session.state is not State.IN_TOOL or call is None or session.overdue or planned is None:
                continue
            start = max(now, call.planned_end - self.lead(session))
            if start < planned - REPLAN_MIN_S and session.prefetch.status == "scheduled":
                session.prefetch.scheduled_at = start
                call_id = call.call_id
                self.store.mover.schedule(
                    lambda s=session, c=call_id: self.store.prefetch(s, c),
                    start,
                    PREFETCH,
                    f"prefetch (replanned) {sid}",
                )

    def on_pin(self, entry: BlockEntry) -> None:
        super().on_pin(entry)
        self._orphans_of(entry.tier).pop(entry, None)

    def on_unpin(self, entry: BlockEntry) -> None:
        super().on_unpin(entry)
        if not entry.sessions:
            self._orphans_of(entry.tier)[entry] = None

    def on_orphan(self, entry: BlockEntry) -> None:
        if not entry.pins and self.store.index.get(entry.namespace, entry.key) is entry:
            self._orphans_of(entry.tier)[entry] = None

    def _orphans_of(self, tier: str) -> OrderedDict[BlockEntry, None]:
        orphans = self._orphans.get(tier)
        if orphans is None:
            orphans = self._orphans[tier] = OrderedDict()
        return orphans

    # ------------------------------------------------------------------ hints

    def on_session(self, session: Session, event: str) -> None:
        store, now = self.store, self.store.clock.now()
        if event == "begin_tool" and session.tool is not None:
            call = session.tool
            start = max(now, call.planned_end - self.lead(session))
            session.prefetch.status, session.prefetch.scheduled_at = "scheduled", start
            store.mover.schedule(
                lambda: store.prefetch(session, call.call_id), start, PREFETCH, f"prefetch {session.id}"
            )
            grace = max(self.config.overrun_grace_s, self.config.overrun_grace_fraction * call.expected_s)
            store.mover.schedule(
                lambda: self._overrun(session, call.call_id),
                call.expected_end + grace,
                OVERRUN,
                f"overrun {session.id}",
            )
            if self.config.offload_eagerly:
                store.mover.schedule(lambda: store.offload(session), now, OFFLOAD, f"offload {session.id}")
        elif event == "end_tool":
            # On time only if the KV is in the top tier now (an overrun or later pressure may have
            # sent it away again after the prefetch); otherwise bring it back at once.
            counts = store.sessions.prefetches
            away = session.total_bytes - session.bytes_per_tier.get(store.tiers[0].name, 0)
            if session.prefetch.status == "done" and away == 0:
                counts["on_time"] += 1
            else:
                counts["late"] += 1
                session.prefetch.status = "late"
                store.mover.schedule(
                    lambda: store.prefetch(session, None), now, URGENT, f"urgent {session.id}"
                )
        elif event == "awaiting_user" and self.config.offload_eagerly:
            store.mover.schedule(lambda: store.offload(session), now, OFFLOAD, f"offload {session.id}")
        elif event == "fanout" and session.fanout is not None:
            fanout = session.fanout
            store.mover.schedule(
                lambda: store.pin_fanout(session, fanout.fanout_id), now, URGENT, f"fanout {session.id}"
            )
            store.mover.schedule(
                lambda: store.release_fanout(session, fanout.fanout_id),
                fanout.expires,
                URGENT,
                f"fanout ttl {session.id}",
            )

    def _overrun(self, session: Session, call_id: str) -> None:
        """The tool ran past its estimate and the grace period: its blocks stop holding HBM — they
        are the first to leave when anyone needs room (and leave now with `offload_eagerly`).
        Moving them out with nobody asking for the room would only make the resume cold."""
        if session.state is State.IN_TOOL and session.tool is not None and session.tool.call_id == call_id:
            session.overdue = True
            self.store.sessions.version += 1
            if self.config.offload_eagerly:
                self.store.offload(session)
