"""The agent policy: keep in HBM the sessions most likely to need their KV next.

Every session is scored by one number, its *chance*: the probability that it is back (asks for its
KV) within its horizon — the time it takes to bring its blocks back to the top tier, plus
`horizon_s` — given how long it has been away and what kvstore learned of absences like this one
(`sessions.returns`: per tool, actual / announced durations; per tenant, people's think times and
silent gaps; each conditioned on the wait so far). A running session is one whose request was
just sent: its chance is high. A person away for an hour has a small one. A tool call has its
chance rise as its learned return window comes near, and a tool that overruns simply sits in that
distribution's tail: no special case.

Victims, per tier, lowest first: blocks no session references any more (abandoned chains, closed
sessions; least recently used first), then sessions by ascending chance, each from its chain's
tail (prefixes are shared more). Blocks never tied to a session (a tenant that sends no session)
are scored as silent ones by their last use, so they compete fairly instead of being dropped first.

Prefetch is a swap: at every hint and at scheduled checks, a session not fully in the top tier is
brought back if the blocks it displaces all score lower than its own chance by `swap_margin`
(HBM is never free in steady state, so "prefetch into free room" does nothing; displacing the
wrong blocks costs more than it gains). A check is scheduled whenever another `check_step` of an
away session's remaining return probability is about to pass.

With `engine_owns_top`, the top tier stands for an engine's own KV pool: it evicts by the engine's
LRU whatever this policy thinks (DESIGN §1), and the policy acts there only by bringing sessions
back (a warm load) when the LRU victims score lower; the lower tiers are its own.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator

from pydantic import BaseModel, ByteSize, ConfigDict, Field

from kvstore.index import BlockEntry
from kvstore.plans import Plan, PlanKind
from kvstore.policy.base import PolicyView
from kvstore.policy.lru import LRUPolicy
from kvstore.sessions import Away, AwayKind, PrefetchStatus, Session

ABANDONED = -1.0  # the score of a block no session references any more
RESIDENCE_WINDOW_S = 600.0  # eviction rates are averaged over about this long
SUCCESS_RATE_WEIGHT = 0.05  # the prefetch success rate averages over about the last 20 resumes
REBALANCE = "rebalance"  # the ref of a check a hint asked for (vs. a timed one)


class LooseBlocks:
    """Blocks of one kind that no session holds (abandoned, or sessionless), per tier, least
    recently used first, with their bytes per tier."""

    def __init__(self) -> None:
        self._tiers: dict[str, OrderedDict[BlockEntry, None]] = {}
        self.bytes: dict[str, int] = {}

    def __contains__(self, entry: BlockEntry) -> bool:
        return entry in self._tiers.get(entry.tier, ())

    def in_tier(self, tier: str) -> Iterator[BlockEntry]:
        return iter(self._tiers.get(tier, ()))

    def add(self, entry: BlockEntry, tier: str | None = None) -> None:
        tier = tier or entry.tier
        blocks = self._tiers.setdefault(tier, OrderedDict())
        if entry not in blocks:
            blocks[entry] = None
            self.bytes[tier] = self.bytes.get(tier, 0) + entry.size

    def discard(self, entry: BlockEntry, tier: str | None = None) -> bool:
        tier = tier or entry.tier
        blocks = self._tiers.get(tier)
        if blocks is None or entry not in blocks:
            return False
        del blocks[entry]
        self.bytes[tier] -= entry.size
        return True

    def touch(self, entry: BlockEntry) -> None:
        blocks = self._tiers.get(entry.tier)
        if blocks is not None and entry in blocks:
            blocks.move_to_end(entry)


class AgentConfig(BaseModel):
    """Knobs of the agent policy (DESIGN §4)."""

    model_config = ConfigDict(extra="forbid")

    horizon_s: float = Field(
        2.0, gt=0, le=3600, description="how far ahead, beyond its reload time, a session's chance is judged"
    )
    swap_margin: float = Field(
        0.05, ge=0, le=1, description="a prefetch displaces only blocks whose chance is lower by this much"
    )
    min_chance: float = Field(
        0.02, ge=0, le=1, description="never bring back a session less likely than this within its horizon"
    )
    check_step: float = Field(
        0.2,
        gt=0,
        le=1,
        description="look at an away session again each time this fraction of its remaining "
        "return probability is about to pass",
    )
    min_check_interval_s: float = Field(0.1, gt=0, le=60, description="checks are at least this far apart")
    prefetch_margin_s: float = Field(
        0.2, ge=0, le=600, description="extra lead on top of a reload's transfer time"
    )
    offload_eagerly: bool = Field(
        False,
        description="a session's blocks leave HBM at once when it starts a tool call or waits on its "
        "user, not only under pressure",
    )
    link_bandwidth: ByteSize = Field(
        ByteSize(8 * 10**9), ge=1, description="bytes/s assumed for HBM<-DRAM before moves were measured"
    )
    default_tool_s: float = Field(
        10.0, gt=0, le=86400, description="a never-seen tool's median duration, before any is learned"
    )


class AgentPolicy(LRUPolicy):
    name = "agent"
    uses_hints = True

    def __init__(
        self, view: PolicyView, config: AgentConfig | None = None, engine_owns_top: bool = False
    ) -> None:
        super().__init__(view)
        self.config = config or AgentConfig()
        self.engine_owns_top = engine_owns_top
        # level -> ((now, version, level), sessions by ascending chance, chance by session id)
        self._ranked: dict[
            int, tuple[tuple[float, int, int], list[tuple[float, Session]], dict[str, float]]
        ] = {}
        self._evicted: dict[str, tuple[float, float]] = {}  # tier -> (bytes/s leaving it, as of when)
        self._level = view.levels
        # How often a session pushed out of the top tier was back in it when it resumed.
        self.prefetch_success = 0.5
        # Per tier, least recently used first: blocks whose last reference went away, and blocks
        # never tied to a session. Stale members are dropped when met.
        self._abandoned = LooseBlocks()  # they lost their last session reference
        self._sessionless = LooseBlocks()  # they never had one
        self._check_at: float | None = None
        self._rebalance_queued = False  # a REBALANCE check is queued and has not run yet
        self._last_rebalance = -math.inf
        self._planned: tuple[Session | None, int, float] = (None, -1, 0.0)  # see planned_return

    # ------------------------------------------------------------------ scores

    def lead(self, session: Session) -> float:
        """Seconds to bring all of the session's blocks to the top tier (over the links they would
        come through; blocks in the top tier now are counted as if they came from the next tier),
        plus the margin."""
        tiers = self.view.tiers
        top = tiers[0].name
        if len(tiers) == 1:
            return self.config.prefetch_margin_s
        seconds = 0.0
        for name, nbytes in session.bytes_per_tier.items():
            if nbytes:
                src = tiers[1].name if name == top else name
                seconds += nbytes / self.view.link_bandwidth(src, top)
        return seconds + self.config.prefetch_margin_s

    def short_horizon(self, session: Session) -> float:
        """Within this, a session evicted now could not be brought back in time: its reload time
        plus `horizon_s`."""
        return self.lead(session) + self.config.horizon_s

    def residence_s(self, level: int, now: float) -> float:
        tier = self.view.tiers[level]
        rate, at = self._evicted.get(tier.name, (0.0, now))
        rate *= math.exp(-(now - at) / RESIDENCE_WINDOW_S)
        return tier.capacity / rate if rate > 0 else math.inf

    def chance(self, session: Session, level: int, now: float) -> float:
        """The expected cost of not having the session's blocks in tiers[level] — the chance it
        asks for them before they could be brought back. Beyond the short horizon they can come
        back only if a prefetch then finds room, which succeeds with the measured rate `q`; blocks
        that stay out longer than the tier's residence time would have been pushed out anyway:
            q * P(back within short) + (1 - q) * P(back within max(short, residence)).
        A lower tier has no prefetch into it worth counting on: its score is the long term alone."""
        if session.fanout is not None:
            return 1.0
        return self._chance_back(session.absence(), self.short_horizon(session), level, now)

    def _chance_back(self, away: Away, short: float, level: int, now: float) -> float:
        """The blend `chance` describes, for an absence whose short horizon is `short`."""
        returns = self.view.sessions.returns
        long = max(short, self.residence_s(level, now))
        p_long = 1.0 if math.isinf(long) else returns.chance_back(away, now, long)
        if level > 0:
            return p_long
        q = self.prefetch_success
        return q * returns.chance_back(away, now, short) + (1.0 - q) * p_long

    def _ranking(self, now: float, level: int = 0) -> list[tuple[float, Session]]:
        """Live sessions by ascending chance for tiers[level] (ties: the longer quiet first).
        Cached until time moves or a session's state changes."""
        key = (now, self.view.sessions.version, level)
        ranked = self._ranked.get(level)
        if ranked is None or ranked[0] != key:
            scored = [(self.chance(s, level, now), s.last_active, s) for s in self.view.sessions.live()]
            scored.sort(key=lambda r: (r[0], r[1]))
            order = [(p, s) for p, _, s in scored]
            ranked = self._ranked[level] = (key, order, {s.id: p for p, s in order})
        return ranked[1]

    def _chance_of(self, sid: str, level: int) -> float:
        return self._ranked[level][2].get(sid, 0.0)

    def block_chance(self, entry: BlockEntry, level: int, now: float) -> float:
        if entry.sessions:
            self._ranking(now, level)
            return max(self._chance_of(sid, level) for sid in entry.sessions)
        if entry in self._abandoned:
            return ABANDONED
        return self._sessionless_chance(entry, level, now)

    def _sessionless_chance(self, entry: BlockEntry, level: int, now: float) -> float:
        """A block never tied to a session, scored as a silent session of one block."""
        tiers = self.view.tiers
        away = Away(AwayKind.SILENT, "", entry.last_use)
        short = entry.size / self.view.link_bandwidth(tiers[-1].name, tiers[0].name) + self.config.horizon_s
        return self._chance_back(away, short, level, now)

    # ------------------------------------------------------------------ victims

    def order(self, tier: str) -> Iterator[tuple[BlockEntry, float]]:
        """Movable blocks of `tier`, lowest score first: abandoned blocks, then sessions by their
        chance (each from its chain's tail), with sessionless blocks merged in by theirs."""
        now = self.view.now()
        level = self._level[tier]
        if self.engine_owns_top and level == 0:
            for entry in self._tier(tier):
                if entry.movable:
                    yield entry, self.block_chance(entry, 0, now)
            return
        for entry in self._abandoned.in_tier(tier):
            if entry.movable:
                yield entry, ABANDONED
        sessionless = (e for e in self._sessionless.in_tier(tier) if e.movable)
        loose = next(sessionless, None)
        loose_score = self._sessionless_chance(loose, level, now) if loose is not None else math.inf
        for p, session in self._ranking(now, level):
            blocks = session.tiers.get(tier)
            if not blocks or session.pinned_bytes_per_tier.get(tier, 0) >= session.bytes_per_tier[tier]:
                continue
            while loose is not None and loose_score <= p:
                yield loose, loose_score
                loose = next(sessionless, None)
                loose_score = self._sessionless_chance(loose, level, now) if loose is not None else math.inf
            for entry in reversed(blocks):  # the chain's tail first: prefixes are shared more
                if entry.movable and (len(entry.sessions or ()) < 2 or self._owner(entry, level) is session):
                    yield entry, p
        while loose is not None:
            yield loose, loose_score
            loose = next(sessionless, None)
            loose_score = self._sessionless_chance(loose, level, now) if loose is not None else math.inf

    def _owner(self, entry: BlockEntry, level: int) -> Session:
        """Of the sessions sharing a block, the one most likely to need it (ties: the first id):
        the block leaves with that session's score."""
        chances = self._ranked[level][2]
        best, best_p = "", -math.inf
        for sid in entry.sessions or ():
            p = chances.get(sid, 0.0)
            if p > best_p or (p == best_p and sid < best):
                best, best_p = sid, p
        return self.view.sessions.sessions[best]

    def victims(self, tier: str, nbytes: int, below: float | None = None) -> list[BlockEntry] | None:
        if below is not None and self._freeable(tier, below) < nbytes:
            return None  # cheap refusal: not enough bytes score under `below`, whatever the blocks
        return super().victims(tier, nbytes, below)

    def _freeable(self, tier: str, below: float) -> float:
        """At least the bytes of `tier` that could leave scoring under `below` (shared blocks count
        once per session, so this over-counts; it only refuses what is surely impossible)."""
        now = self.view.now()
        level = self._level[tier]
        total = self._abandoned.bytes.get(tier, 0) + self._sessionless.bytes.get(tier, 0)
        for p, session in self._ranking(now, level):
            if p >= below:
                break
            total += session.bytes_per_tier.get(tier, 0) - session.pinned_bytes_per_tier.get(tier, 0)
        return total

    # Blocks no session references, per tier in LRU order: abandoned (they lost their last
    # reference) and sessionless (never had one). The registry tells of both transitions.
    def on_insert(self, entry: BlockEntry) -> None:
        super().on_insert(entry)
        if not entry.sessions:
            self._sessionless.add(entry)

    def on_access(self, entry: BlockEntry) -> None:
        super().on_access(entry)
        if not entry.sessions:
            self._abandoned.touch(entry)
            self._sessionless.touch(entry)

    def on_remove(self, entry: BlockEntry) -> None:
        super().on_remove(entry)
        self._count_eviction(entry.tier, entry.size)
        self._abandoned.discard(entry)
        self._sessionless.discard(entry)

    def on_move(self, entry: BlockEntry, from_tier: str) -> None:
        super().on_move(entry, from_tier)
        if self._level[entry.tier] > self._level[from_tier]:
            self._count_eviction(from_tier, entry.size)
        for group in (self._abandoned, self._sessionless):
            if group.discard(entry, from_tier):
                group.add(entry)

    def on_orphan(self, entry: BlockEntry) -> None:
        if self.view.holds(entry):
            self._sessionless.discard(entry)
            self._abandoned.add(entry)

    def on_claimed(self, entry: BlockEntry) -> None:
        self._abandoned.discard(entry)
        self._sessionless.discard(entry)

    def _count_eviction(self, tier: str, nbytes: int) -> None:
        now = self.view.now()
        rate, at = self._evicted.get(tier, (0.0, now))
        self._evicted[tier] = (
            rate * math.exp(-(now - at) / RESIDENCE_WINDOW_S) + nbytes / RESIDENCE_WINDOW_S,
            now,
        )

    # ------------------------------------------------------------------ hints and checks

    def on_session(self, session: Session, event: str) -> list[Plan]:
        now = self.view.now()
        plans: list[Plan] = []
        if event == "fanout" and session.fanout is not None:
            fanout = session.fanout
            plans += [
                Plan(PlanKind.PIN_FANOUT, now, session.id, ref=fanout.fanout_id),
                Plan(PlanKind.RELEASE_FANOUT, fanout.expires, session.id, ref=fanout.fanout_id),
            ]
        elif event == "end_tool":
            self._count_resume(session)  # the agent is back: was its KV?
        if event in ("begin_tool", "awaiting_user") and self.config.offload_eagerly:
            plans.append(Plan(PlanKind.OFFLOAD, now, session.id, session.generation))
        if event in ("begin_tool", "user_active"):  # an engine warms its own cache around then
            warm_at = self.planned_return(session)
            plans.append(
                Plan(PlanKind.WARM, warm_at if warm_at is not None else now, session.id, session.generation)
            )
        return plans + self._rebalance_soon(now)

    def _rebalance_soon(self, now: float) -> list[Plan]:
        """One check for however many hints arrive before it runs: ranking every session is
        O(sessions), too much for each hint of a busy server, and runs on the mover instead. Now,
        unless one ran within `min_check_interval_s` (a burst of hints wakes the mover once)."""
        if self._rebalance_queued:
            return []
        self._rebalance_queued = True
        at = max(now, self._last_rebalance + self.config.min_check_interval_s)
        return [Plan(PlanKind.CHECK, at, ref=REBALANCE)]

    def on_check(self, plan: Plan) -> list[Plan]:
        if plan.ref == REBALANCE:
            self._rebalance_queued = False
            self._last_rebalance = self.view.now()
            return self.rebalance()
        if plan.not_before != self._check_at:
            return []  # superseded by a sooner check
        self._check_at = None
        return self.rebalance()

    def on_resume(self, session: Session) -> None:
        """A data-path call of a session that was away (before the store marks it back); after a
        tool call, its end already counted."""
        if session.away is not None and session.away.kind is not AwayKind.RESUMING:
            self._count_resume(session)

    def _count_resume(self, session: Session) -> None:
        """A session came back: was its KV all in the top tier, thanks to a prefetch?"""
        away = session.total_bytes - session.bytes_per_tier.get(self.view.tiers[0].name, 0)
        brought = session.prefetch.status is not PrefetchStatus.NONE
        if away or brought:
            success = float(brought and away == 0)
            self.prefetch_success += SUCCESS_RATE_WEIGHT * (success - self.prefetch_success)
        if not brought:
            return
        counts = self.view.sessions.prefetches
        in_flight = session.prefetch.done_at is not None and session.prefetch.done_at > self.view.now()
        if session.prefetch.status is PrefetchStatus.DONE and away == 0 and not in_flight:
            counts["on_time"] += 1
        else:
            counts["late"] += 1
            session.prefetch.status = PrefetchStatus.LATE

    def planned_return(self, session: Session) -> float | None:
        """By then a `check_step` of absences like this one have ended: a session away from the top
        tier would be considered for a swap around there. (Asked twice per hint, by the plan and
        by the reply: worked out once per session generation.)"""
        if self._planned[0] is session and self._planned[1] == session.generation:
            return self._planned[2]
        now = self.view.now()
        returns = self.view.sessions.returns
        back = returns.time_back(session.absence(), now, self.config.check_step) - self.short_horizon(session)
        self._planned = (session, session.generation, max(now, back))
        return self._planned[2]

    def rebalance(self) -> list[Plan]:
        """Plans bringing back the sessions most likely to be needed, where that displaces only
        blocks scoring lower by the margin; and the next check."""
        now = self.view.now()
        plans = [plan for level in range(len(self.view.tiers) - 1) for plan in self._fill(level, now)]
        check = self._next_check(now)
        return plans + ([check] if check is not None else [])

    def _fill(self, level: int, now: float) -> list[Plan]:
        """Sessions to swap into tiers[level] from the tiers below, likeliest first."""
        tier = self.view.tiers[level]
        below = {t.name for t in self.view.tiers[level + 1 :]}
        if not any(s.bytes_per_tier.get(name) for s in self.view.sessions.live() for name in below):
            return []  # nothing a session holds is below this tier
        plans = []
        for p, session in reversed(self._ranking(now, level)):
            if p < self.config.min_chance:
                break
            outside = sum(n for name, n in session.bytes_per_tier.items() if name in below)
            if outside == 0 or session.fanout is not None:
                continue
            bound = p - self.config.swap_margin
            if self.victims(tier.name, outside - (tier.capacity - tier.used), bound) is not None:
                plans.append(Plan(PlanKind.BRING_BACK, now, session.id, session.generation, level, bound))
        return plans

    def _next_check(self, now: float) -> Plan | None:
        """One pending check: the soonest time an away session not fully in the top tier needs
        looking at again (None when one is planned sooner already)."""
        top = self.view.tiers[0].name
        returns = self.view.sessions.returns
        soonest = math.inf
        for session in self.view.sessions.live():
            if session.total_bytes == session.bytes_per_tier.get(top, 0) or session.fanout is not None:
                session.prefetch.next_check = None
                continue
            at = returns.time_back(session.absence(), now, self.config.check_step) - self.short_horizon(
                session
            )
            at = max(at, now + self.config.min_check_interval_s)
            session.prefetch.next_check = at
            soonest = min(soonest, at)
        if math.isfinite(soonest) and (
            self._check_at is None or soonest < self._check_at or self._check_at <= now
        ):
            self._check_at = soonest
            return Plan(PlanKind.CHECK, soonest)
        return None
