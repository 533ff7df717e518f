"""Replay agent traces through the shipped Store, Hints and policies on a virtual clock.

One `Replay` runs one policy over a scenario. It plays the workload — closed-loop slots that
take the traces' sessions one after another, requests that hold their blocks in HBM while they
run, hints derived from the traces' tool structure — and measures (DESIGN §5). Every placement
decision is the store's and the policy's: the replay never moves a block itself. Tiers are
counting tiers, so hours of traces replay in seconds; transfers cost virtual time on the
scenario's links.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kvstore.bench.report import percentile
from kvstore.bench.scenario import Scenario
from kvstore.bench.traces import Request, Trace, TraceSession
from kvstore.clock import VirtualClock
from kvstore.config import AgentConfig
from kvstore.hashing import Namespace
from kvstore.hints import Hints
from kvstore.policy.agent import AgentPolicy
from kvstore.policy.base import Policy
from kvstore.policy.lru import LRUPolicy
from kvstore.policy.ttl import TTLPolicy
from kvstore.sessions import SessionRegistry, ToolDurations
from kvstore.store import PutBlock, Store
from kvstore.tiers.counting import CountingTier

POLICIES = ("recompute", "lru", "lru-offload", "ttl", "agent", "oracle")
NEEDS_HINTS = {"ttl", "agent", "oracle"}
GiB = 2**30

_KEY = struct.Struct("<QQ")
_SALTED_KEY = struct.Struct("<QQQ")


class ScenarioError(ValueError):
    """The scenario cannot run these traces (the message says what to change)."""


def _percentile(values: list[float], q: float) -> float | None:
    """None when there is nothing to measure (no resumes, say), rather than NaN in the JSON."""
    return percentile(values, q) if values else None


@dataclass(eq=False)
class SimSession:
    sid: str
    trace: TraceSession
    scope: int
    namespace: str
    top_level: bool
    next_index: int = 0
    open_call: str | None = None
    prefetch_planned: bool = False
    seq: int = 0


@dataclass
class Tally:
    requests: int = 0
    resumed: int = 0
    warm: int = 0
    prefilled_tokens: int = 0
    new_tokens: int = 0
    resume_ttft: list[float] = field(default_factory=list)
    first_ttft: list[float] = field(default_factory=list)
    reused_bytes: int = 0
    prefetched_resumes: int = 0
    late_resumes: int = 0
    hbm_idle_byte_s: float = 0.0
    waited_s: float = 0.0
    block_ops: int = 0


def make_store(policy: str, scenario: Scenario, namespaces: list[Namespace]) -> Store:
    """The store a policy runs on: `lru` and `recompute` keep KV in HBM only; the others tier it."""
    agent = AgentConfig(prefetch_margin_s=scenario.prefetch_margin_s)
    tiers = [CountingTier("hbm", int(scenario.hbm))]
    if policy not in ("lru", "recompute"):
        tiers += [CountingTier("dram", int(scenario.dram)), CountingTier("disk", int(scenario.disk))]
    chosen: Policy
    if policy in ("agent", "oracle"):
        chosen = AgentPolicy(agent)
    elif policy == "ttl":
        chosen = TTLPolicy(scenario.ttl_s)
    elif policy in ("recompute", "lru", "lru-offload"):
        chosen = LRUPolicy()
    else:
        raise ScenarioError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    return Store(
        tiers,
        namespaces,
        chosen,
        VirtualClock(),
        sessions=SessionRegistry(
            ToolDurations(None, agent.learned_quantile, agent.default_tool_s, agent.announced_quantile)
        ),
        link_bandwidths=scenario.link_bandwidths(),
        virtual_transfers=True,
    )


class Replay:
    def __init__(
        self,
        traces: list[Trace],
        policy: str,
        scenario: Scenario,
        progress: Callable[[int], None] | None = None,
        observer: Callable[[Store], None] | None = None,
    ) -> None:
        if policy in NEEDS_HINTS and not all(t.has_hints for t in traces):
            raise ScenarioError(
                f"policy {policy!r} needs tool-call structure, which "
                f"{next(t.path for t in traces if not t.has_hints)} does not have"
            )
        self.policy = policy
        self.scenario = scenario
        self.progress = progress
        self.observer = observer  # called after every event and job (invariant checks)
        block_sizes = sorted({s.block_tokens for t in traces for s in t.sessions})
        self.namespaces = {
            bt: Namespace(f"b{bt}", "replay", block_tokens=bt, block_bytes=bt * scenario.bytes_per_token)
            for bt in block_sizes
        }
        self.store = make_store(policy, scenario, list(self.namespaces.values()))
        self.hints = Hints(self.store)
        self.clock: VirtualClock = self.store.clock  # type: ignore[assignment]
        self.top = self.store.tiers[0]
        self.zero = {bt: memoryview(bytes(ns.block_bytes)) for bt, ns in self.namespaces.items()}
        largest = max(
            len(r.hash_ids) * s.block_tokens * scenario.bytes_per_token
            for t in traces
            for s in t.sessions
            for r in s.requests
        )
        if largest > self.top.capacity:
            raise ScenarioError(
                f"HBM of {scenario.hbm.human_readable(decimal=False)} cannot hold the largest "
                f"request's KV ({largest / GiB:.1f} GiB); raise --hbm"
            )
        scopes: dict[str, int] = {}
        self.queue = deque((s, scopes.setdefault(s.scope, len(scopes))) for t in traces for s in t.sessions)
        self.total_requests = sum(self._count(s) for t in traces for s in t.sessions)
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.waiting: deque[tuple[SimSession, float]] = deque()
        self.computed: set[bytes] = set()
        self.tally = Tally()
        self.last_t = 0.0
        self.ids = itertools.count()

    @staticmethod
    def _count(session: TraceSession) -> int:
        return len(session.requests) + sum(Replay._count(sub) for _, _, sub in session.subagents)

    # ------------------------------------------------------------------ event loop

    def _push(self, t: float, kind: str, data: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    def _advance(self, t: float) -> None:
        """Move virtual time to t, running the policy's jobs at their due times on the way."""
        store = self.store
        while (due := store.mover.next_due()) is not None and due <= t:
            self._tick(max(due, self.clock.now()))
            store.run_due_jobs()
            if self.observer is not None:
                self.observer(store)
        self._tick(t)

    def _tick(self, t: float) -> None:
        now = self.clock.now()
        if t > now:
            idle = self.top.used - self.store.pinned_bytes(self.top.name)
            self.tally.hbm_idle_byte_s += idle * (t - now)
            self.clock.advance_to(t)

    def run(self) -> dict[str, object]:
        started = time.perf_counter()
        for slot in range(min(self.scenario.sessions, len(self.queue))):
            self._push(slot * self.scenario.stagger_s, "slot", None)
        while self.events:
            t, _, kind, data = heapq.heappop(self.events)
            self._advance(t)
            if kind == "slot":
                self._next_session()
            elif kind == "arrive":
                self._arrive(data)  # type: ignore[arg-type]
            elif kind == "finish":
                self._finish(*data)  # type: ignore[misc]
            if self.observer is not None:
                self.observer(self.store)
        return self._figures(time.perf_counter() - started)

    def _next_session(self) -> None:
        if self.queue:
            trace_session, scope = self.queue.popleft()
            self._open(trace_session, scope, top_level=True)

    def _open(self, trace_session: TraceSession, scope: int, top_level: bool) -> None:
        sim = SimSession(
            f"{trace_session.id}#{next(self.ids)}",
            trace_session,
            scope,
            self.namespaces[trace_session.block_tokens].name,
            top_level,
        )
        self.hints.open_session(sim.sid, sim.namespace)
        self._spawn_subagents(sim, -1)
        self._push(self.clock.now() + trace_session.requests[0].t, "arrive", sim)

    def _spawn_subagents(self, sim: SimSession, after: int) -> None:
        for index, _, sub in sim.trace.subagents:
            if index == after:
                self._open(sub, sim.scope, top_level=False)

    # ------------------------------------------------------------------ requests

    def _keys(self, sim: SimSession, request: Request, salted: bool) -> list[bytes]:
        if salted:  # recompute: no reuse across requests
            return [_SALTED_KEY.pack(sim.scope, h, sim.seq) for h in request.hash_ids]
        return [_KEY.pack(sim.scope, h) for h in request.hash_ids]

    def _arrive(self, sim: SimSession) -> None:
        now = self.clock.now()
        request = sim.trace.requests[sim.next_index]
        keys = self._keys(sim, request, salted=False)
        session = self.store.sessions.sessions[sim.sid]
        if sim.next_index > 0:  # a resume: measure it as it arrives, before the hint lands
            reusable = self._computed_prefix(keys)
            match = self.store.index.longest_prefix(sim.namespace, keys[:reusable])
            in_flight = session.prefetch.done_at is not None and session.prefetch.done_at > now
            if sim.prefetch_planned:
                self.tally.prefetched_resumes += 1
                if in_flight or session.prefetch.status == "scheduled":
                    self.tally.late_resumes += 1
            self.tally.resumed += 1
            if (
                match.blocks == reusable
                and not in_flight
                and all(e.tier == self.top.name for e in match.entries)
            ):
                self.tally.warm += 1
        if sim.open_call is not None:
            self.hints.end_tool_call(sim.open_call)
            sim.open_call = None
            self.store.run_due_jobs()  # an urgent prefetch starts now
        sim.prefetch_planned = False
        self.waiting.append((sim, now))
        self._start_waiting()

    def _computed_prefix(self, keys: list[bytes]) -> int:
        """Blocks of the chain's longest prefix that some earlier request computed (reusable)."""
        for i, key in enumerate(keys):
            if key not in self.computed:
                return i
        return len(keys)

    def _fits(self, keys: list[bytes], namespace: str) -> bool:
        block_bytes = self.store.namespaces[namespace].block_bytes
        held = 0
        for key in keys:
            entry = self.store.index.get(namespace, key)
            if entry is not None and entry.pins and entry.tier == self.top.name:
                held += block_bytes
        need = len(keys) * block_bytes - held
        return need <= self.top.capacity - self.store.pinned_bytes(self.top.name)

    def _start_waiting(self) -> None:
        """Start waiting requests in arrival order while HBM has room for them (no overtaking)."""
        while self.waiting:
            sim, arrived = self.waiting[0]
            request = sim.trace.requests[sim.next_index]
            salted = self.policy == "recompute"
            sim.seq = next(self.seq)
            keys = self._keys(sim, request, salted)
            if not self._fits(keys, sim.namespace):
                return
            self.waiting.popleft()
            self._serve(sim, request, keys, arrived)

    def _serve(self, sim: SimSession, request: Request, keys: list[bytes], arrived: float) -> None:
        store, now, ns = self.store, self.clock.now(), sim.namespace
        block_tokens = sim.trace.block_tokens
        block_bytes = store.namespaces[ns].block_bytes
        top = self.top.name
        stored = store.lookup(ns, keys, session=sim.sid).blocks
        session = store.sessions.sessions[sim.sid]
        stall = max(0.0, (session.prefetch.done_at or 0.0) - now)  # a prefetch still on the link
        promotion = store.promote(ns, keys[:stored], session=sim.sid, pin=True)
        stored = promotion.blocks
        for src, nbytes in promotion.moved.items():
            stall += nbytes / store.link_bandwidth(src, top)
        parents = [keys[stored - 1] if stored else None, *keys[stored:-1]][: len(keys) - stored]
        placed = store.put(
            [
                PutBlock(ns, k, self.zero[block_tokens], p, session=sim.sid, pin=True)
                for k, p in zip(keys[stored:], parents, strict=True)
            ]
        )
        pinned = keys[:stored] + [k for k, tier in zip(keys[stored:], placed, strict=True) if tier]
        reusable_keys = keys if self.policy != "recompute" else self._keys(sim, request, salted=False)
        reusable = self._computed_prefix(reusable_keys)
        self.computed.update(reusable_keys)
        prefilled = request.in_tokens - min(request.in_tokens, stored * block_tokens)
        prefill_s = prefilled / self.scenario.prefill_tps
        ttft = (now - arrived) + stall + prefill_s
        t = self.tally
        t.requests += 1
        t.waited_s += now - arrived
        t.prefilled_tokens += prefilled
        t.new_tokens += request.in_tokens - min(request.in_tokens, reusable * block_tokens)
        t.reused_bytes += stored * block_bytes
        t.block_ops += len(keys) * 3 + stored  # lookup, pin/put, unpin; promote
        (t.resume_ttft if sim.next_index > 0 else t.first_ttft).append(ttft)
        api_time = request.api_time or request.out_tokens / self.scenario.decode_tps
        self._push(now + max(api_time, stall + prefill_s), "finish", (sim, pinned))
        if self.progress is not None:
            self.progress(1)

    def _finish(self, sim: SimSession, pinned: list[bytes]) -> None:
        self.store.unpin(sim.namespace, pinned)
        index = sim.next_index
        requests = sim.trace.requests
        self._spawn_subagents(sim, index)
        if index + 1 < len(requests):
            self._plan_gap(sim, requests[index], requests[index + 1])
            sim.next_index += 1
            self._push(self.clock.now() + requests[index + 1].think_time, "arrive", sim)
        else:
            self.hints.close_session(sim.sid)
            if sim.top_level:
                self._next_session()
        self._start_waiting()

    def _plan_gap(self, sim: SimSession, done: Request, upcoming: Request) -> None:
        """The hints an agent framework would send for the gap before `upcoming` (DESIGN §5); every
        policy gets them (the baselines ignore them), so all run the same code path."""
        gap = max(upcoming.think_time, 1e-3)
        if done.stop == "tool_use" or self.policy == "oracle":
            if self.policy == "oracle":
                expected = gap  # the exact future, for tool calls and people alike
            else:
                noise = random.Random(f"{self.scenario.seed}:{sim.sid}:{sim.next_index}")
                expected = (
                    gap * noise.lognormvariate(0.0, self.scenario.sigma) if self.scenario.sigma else gap
                )
            call_id = f"{sim.sid}:{sim.next_index}"
            self.hints.begin_tool_call(
                sim.sid,
                "tool" if done.stop == "tool_use" else "user",
                max(min(expected, 6 * 86400.0), 1e-3),
                call_id,
            )
            sim.open_call = call_id
            sim.prefetch_planned = self.policy in ("agent", "oracle")
        else:
            self.hints.awaiting_user(sim.sid)

    # ------------------------------------------------------------------ figures

    def _figures(self, wall_s: float) -> dict[str, object]:
        t, store = self.tally, self.store
        moved = sum(link.bytes for link in store.mover.links.values())
        moves = sum(link.moves for link in store.mover.links.values())
        pf = store.sessions.prefetch_bytes
        return {
            "policy": self.policy,
            "requests": t.requests,
            "resumed_requests": t.resumed,
            "warm_resume_rate": t.warm / t.resumed if t.resumed else None,
            "prefill_amplification": t.prefilled_tokens / t.new_tokens if t.new_tokens else None,
            "resume_ttft_p50": _percentile(t.resume_ttft, 50),
            "resume_ttft_p99": _percentile(t.resume_ttft, 99),
            "first_ttft_p50": _percentile(t.first_ttft, 50),
            "first_ttft_p99": _percentile(t.first_ttft, 99),
            "bytes_moved_per_reused_byte": moved / t.reused_bytes if t.reused_bytes else None,
            "prefetch_precision": 1 - pf["wasted"] / pf["moved"] if pf["moved"] else None,
            "prefetch_late_rate": t.late_resumes / t.prefetched_resumes if t.prefetched_resumes else None,
            "hbm_idle_gib_s": t.hbm_idle_byte_s / GiB,
            "hbm_wait_s_total": t.waited_s,
            "virtual_s": self.clock.now(),
            "replay_wall_s": wall_s,
            "requests_per_s": t.requests / wall_s if wall_s else math.inf,
            "block_ops_per_s": (t.block_ops + moves) / wall_s if wall_s else math.inf,
        }
