"""Session actions: the one place plans are executed.

A plan (`kvstore.plans`) names a session and what to do with its blocks; here it becomes block
moves on the placement (`kvstore.placement`), each copied without the store's lock. The server's
mover thread calls `run_due` when a plan is due; the replay calls it as its virtual clock passes
each plan's time.
"""

from __future__ import annotations

import logging

from kvstore.mover import PlanQueue
from kvstore.placement import Moved, Placement
from kvstore.plan_feed import PlanFeed
from kvstore.plans import Plan, PlanKind
from kvstore.sessions.model import PrefetchStatus, Session, State

log = logging.getLogger(__name__)


class SessionActions:
    def __init__(self, placement: Placement, plans: PlanQueue, virtual_transfers: bool = False) -> None:
        self.placement = placement
        self.plans = plans
        self.feed = PlanFeed()  # warm plans go out to WatchPlans subscribers
        # On a virtual clock a move is instant in the index but its bytes take time on the link:
        # a prefetch is done when its last byte has arrived, not when it was issued.
        self.virtual_transfers = virtual_transfers
        placement.sessions.on_moved_on = lambda s: plans.forget(s.id, s.generation)

    def queue(self, plans: list[Plan]) -> None:
        for plan in plans:
            if (
                plan.kind is PlanKind.WARM
                and not self.feed.subscribers
                and plan.not_before <= self.placement.clock.now()
            ):
                continue  # it would run now and tell nobody: not worth waking the mover for
            self.plans.push(plan)

    def run_due(self) -> int:
        """Execute every plan whose time has come; returns how many ran."""
        ran = 0
        while due := self.plans.pop_due(self.placement.clock.now()):
            for plan in due:
                self.execute(plan)
                ran += 1
        return ran

    def execute(self, plan: Plan) -> None:
        placement = self.placement
        if log.isEnabledFor(logging.DEBUG):  # on every plan run
            log.debug(
                "plan %s for %s",
                plan.kind.value,
                plan.session or "the store",
                extra={"plan": plan.kind.value, "session": plan.session, "level": plan.level},
            )
        if plan.kind is PlanKind.CHECK:
            with placement.lock:
                more = placement.policy.on_check(plan)
            self.queue(more)
            return
        with placement.lock:
            session = placement.sessions.sessions.get(plan.session)
            if session is None or (plan.generation >= 0 and plan.generation != session.generation):
                return  # it ended, or moved on since this was planned
        if plan.kind is PlanKind.BRING_BACK:
            self.bring_back(session, plan.level, plan.below)
        elif plan.kind is PlanKind.OFFLOAD:
            self.offload(session)
        elif plan.kind is PlanKind.PIN_FANOUT:
            self.pin_fanout(session, plan.ref)
        elif plan.kind is PlanKind.RELEASE_FANOUT:
            self.release_fanout(session, plan.ref)
        elif plan.kind is PlanKind.WARM:
            self.warm(session)

    # ------------------------------------------------------------------ what plans do

    def bring_back(self, session: Session, level: int = 0, below: float | None = None) -> int:
        """Move the session's blocks from the tiers below up into tiers[level], displacing only
        blocks the policy scores under `below` — all of them or none. Returns bytes moved."""
        placement = self.placement
        dst = placement.tiers[level]
        with placement.lock:
            if session.id not in placement.sessions.sessions:
                return 0
            below_names = {t.name for t in placement.tiers[level + 1 :]}
            away = [e for name in below_names for e in session.tiers.get(name, ()) if e.movable]
            victims = placement.claim_victims_locked(level, sum(e.size for e in away), below)
        if victims is None:
            return 0
        placement.push_down(victims, level)
        now = placement.clock.now()
        moved, seconds = 0, 0.0
        away.sort(key=lambda e: placement.levels[e.tier])
        sources = [e.tier for e in away]
        for entry, src, outcome in zip(away, sources, placement.move_many(away, level, below), strict=True):
            if outcome is Moved.DONE:
                moved += entry.size
                seconds += entry.size / placement.view.link_bandwidth(src, dst.name)
        if level == 0 and moved:
            with placement.lock:
                session.prefetched.update(e for e in away if e.tier == dst.name)
                prefetch = session.prefetch
                prefetch.status = PrefetchStatus.DONE
                if self.virtual_transfers:
                    prefetch.done_at = max(now, prefetch.done_at or now) + seconds
                else:
                    prefetch.done_at = placement.clock.now()
                prefetch.bytes += moved
                placement.sessions.prefetch_bytes["moved"] += moved
        return moved

    def warm(self, session: Session) -> None:
        """Publish that the session is due back (by the conditional median of its return time)."""
        placement = self.placement
        if not self.feed.subscribers:
            return
        with placement.lock:
            now = placement.clock.now()
            due = placement.sessions.returns.time_back(session.absence(), now, 0.5) - now
        self.feed.warm(session, due)

    def offload(self, session: Session) -> int:
        """Move the session's top-tier blocks one tier down, except blocks a running session
        shares. Returns bytes moved."""
        placement = self.placement
        if len(placement.tiers) < 2:
            return 0
        with placement.lock:
            sessions = placement.sessions.sessions
            if session.id not in sessions:
                return 0
            leaving = [
                e
                for e in session.tiers.get(placement.tiers[0].name, ())
                if e.movable
                and not any(sessions[s].state is State.RUNNING for s in e.sessions or () if s != session.id)
            ]
        outcomes = placement.move_many(leaving, 1)
        return sum(e.size for e, outcome in zip(leaving, outcomes, strict=True) if outcome is Moved.DONE)

    def pin_fanout(self, session: Session, fanout_id: str) -> int:
        """Load the session's prefix into the top tier once and pin it while the branches run."""
        fanout = session.fanout
        if fanout is None or fanout.fanout_id != fanout_id:
            return 0
        self.bring_back(session, 0)
        placement = self.placement
        with placement.lock:
            if session.fanout is not fanout:
                return 0
            for entry in list(session.tiers.get(placement.tiers[0].name, ())):
                placement.pin_locked(entry, fanout=True)
                fanout.pinned.append(entry)
            return len(fanout.pinned)

    def release_fanout(self, session: Session, fanout_id: str) -> None:
        with self.placement.lock:
            self.release_fanout_locked(session, fanout_id)

    def release_fanout_locked(self, session: Session, fanout_id: str) -> None:
        fanout = session.fanout
        if fanout is None or fanout.fanout_id != fanout_id:
            return
        for entry in fanout.pinned:  # its own pins only: clients' pins stay
            if self.placement.held_locked(entry) and entry.fanout_pins > 0:
                self.placement.unpin_locked(entry, fanout=True)
        session.fanout = None
        self.placement.sessions.fanouts.pop(fanout_id, None)
