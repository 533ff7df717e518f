"""Replay agent traces through the shipped Store, Hints and policies on a virtual clock.

One `Replay` runs one policy over a scenario. It plays the workload — closed-loop slots that
take the traces' sessions one after another, requests that hold their blocks in HBM while they
run, hints derived from the traces' tool structure — and measures (DESIGN §5). Every placement
decision is the store's and the policy's: the replay never moves a block itself. Tiers are
counting tiers, so hours of traces replay in seconds; transfers cost virtual time on the
scenario's links.

Hints, as an agent framework would send them: a request that ends in `tool_use` is followed by
BeginToolCall with `expected = gap x lognormal(0, sigma)` and EndToolCall when the next request
arrives; after `end_turn`, AwaitingUser, and with `user_active_s` a UserActive about that many
seconds (x lognormal(0, 0.5)) before the person's next request; after a request whose stop reason
was not recorded, nothing. `oracle` instead announces every gap exactly, as a tool call.

With `workers` > 1 it is the routing simulation: every worker has its own store (the same
composition root), all on one virtual clock; a router (kvstore.bench.route) picks the worker of
each request from a global index over them, and a session's hints go to the worker that served its
last request. A session's KV on another worker is reused only if the router sends it back there,
or through the shared remote tier when the scenario has one.
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
from kvstore.bench.route import GlobalIndex, RemoteTier, make_router
from kvstore.bench.scenario import Scenario
from kvstore.bench.traces import Request, Trace, TraceSession, gaps
from kvstore.build import compose
from kvstore.clock import VirtualClock
from kvstore.hashing import Namespace
from kvstore.hints import Hints
from kvstore.mover import Links
from kvstore.policy import AgentConfig, TTLConfig
from kvstore.sessions import ReturnTimes
from kvstore.store import PutBlock, Store
from kvstore.tiers.base import Tier
from kvstore.tiers.counting import CountingTier

POLICIES = ("recompute", "lru", "lru-offload", "ttl", "agent", "oracle")
NEEDS_HINTS = {"ttl", "agent", "oracle"}
GAP_KINDS = ("tool", "human", "none")  # what preceded a resume: a tool call, the person, no hint
GiB = 2**30
USER_ACTIVE_SIGMA = 0.5  # spread of the simulated UserActive lead (lognormal)

_KEY = struct.Struct("<QQ")


class ScenarioError(ValueError):
    """The scenario cannot run these traces (the message says what to change)."""


def _percentile(values: list[float], q: float) -> float | None:
    """None when there is nothing to measure (no resumes, say), rather than NaN in the JSON."""
    return percentile(values, q) if values else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(eq=False)
class SimSession:
    sid: str
    trace: TraceSession
    scope: int
    namespace: str
    top_level: bool
    timing: list[tuple[float, float]]  # (hold, think) per request
    next_index: int = 0
    open_call: str | None = None
    gap_kind: str = "none"
    worker: Worker | None = None  # the worker that serves (or last served) its request
    opened: list[Worker] = field(default_factory=list)  # workers its session is open on


@dataclass(eq=False)
class Worker:
    """One worker: its store, its hints, the requests waiting for its HBM, and its load."""

    index: int
    store: Store
    hints: Hints
    waiting: deque[tuple[SimSession, float, int]] = field(default_factory=deque)  # + prefill estimate
    running: dict[SimSession, tuple[float, float, int]] = field(default_factory=dict)  # start, end, out
    running_bytes: int = 0  # `recompute`: HBM held by running requests
    queued_tokens: int = 0
    placed: int = 0  # blocks put

    def index_changes(self) -> int:
        """What it would publish to the global index: a block put, moved to another tier, or dropped."""
        counters = self.store.placement.counters.values()
        return self.placed + sum(c.moves_in + c.drops for c in counters)

    @property
    def top(self) -> Tier:
        return self.store.tiers[0]

    def load(self, now: float) -> float:
        """Pending work in tokens (what kvstore.routing expects): the prefill of queued requests
        plus the decode still to run of running ones, spread evenly over their hold."""
        decode = sum(
            out * (end - now) / (end - start) for start, end, out in self.running.values() if end > start
        )
        return self.queued_tokens + decode


@dataclass
class Tally:
    requests: int = 0
    resumed: int = 0
    warm: int = 0
    oversize: int = 0
    prefilled_tokens: int = 0
    new_tokens: int = 0
    oversize_prefilled: int = 0  # of which oversize requests (prefilled whole, cached nowhere)
    oversize_new: int = 0
    resume_ttft: list[float] = field(default_factory=list)
    first_ttft: list[float] = field(default_factory=list)
    cache_stall: list[float] = field(default_factory=list)
    oversize_ttft: list[float] = field(default_factory=list)
    room_wait: list[float] = field(default_factory=list)
    resumed_by_gap: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GAP_KINDS, 0))
    warm_by_gap: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GAP_KINDS, 0))
    reused_bytes: int = 0
    prefetched_resumes: int = 0
    late_resumes: int = 0
    hbm_idle_byte_s: float = 0.0
    waited_s: float = 0.0
    block_ops: int = 0
    work: dict[int, int] = field(default_factory=dict)  # worker -> prefilled + decoded tokens

    def resume_figures(self) -> dict[str, float | int | None]:
        return {
            "resumed_requests": self.resumed,
            "warm_resume_rate": self.warm / self.resumed if self.resumed else None,
            "cache_stall_mean": _mean(self.cache_stall),
            "cache_stall_p99": _percentile(self.cache_stall, 99),
        }

    def route_figures(self, workers: int) -> dict[str, float | int | None]:
        return {
            **self.resume_figures(),
            "prefill_amplification": _ratio(self.prefilled_tokens, self.new_tokens),
            "prefill_amplification_fitting": self.fitting_amplification(),
            "load_imbalance": self.load_imbalance(workers),
        }

    def fitting_amplification(self) -> float | None:
        """Prefill amplification over the requests whose KV fits in HBM: what a router can change."""
        return _ratio(self.prefilled_tokens - self.oversize_prefilled, self.new_tokens - self.oversize_new)

    def load_imbalance(self, workers: int) -> float | None:
        """Max over mean of the workers' prefilled + decoded tokens (1.0: even; `workers`: all on one)."""
        total = sum(self.work.values())
        return max(self.work.values()) * workers / total if total else None


def policy_name(policy: str, scenario: Scenario) -> str:
    """The store policy a replay policy runs: `lru` and `recompute` are LRU over HBM alone,
    `lru-offload` LRU over every tier, `oracle` the agent policy fed the exact future."""
    if policy not in POLICIES:
        raise ScenarioError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if policy in ("agent", "oracle"):
        return "agent"
    if policy == "ttl" and scenario.hbm_owner != "engine":  # Continuum lives in the engine's scheduler:
        return "ttl"  # with the engine's plain LRU it is lru-offload
    return "lru"


def make_store(policy: str, scenario: Scenario, namespaces: list[Namespace], clock: VirtualClock) -> Store:
    """The store a policy runs on: `lru` and `recompute` keep KV in HBM only; the others tier it."""
    tiers = [CountingTier("hbm", int(scenario.hbm))]
    if policy not in ("lru", "recompute"):
        tiers += [CountingTier("dram", int(scenario.dram)), CountingTier("disk", int(scenario.disk))]
    agent = AgentConfig(prefetch_margin_s=scenario.prefetch_margin_s)
    return compose(
        tiers,
        namespaces,
        policy_name(policy, scenario),
        clock=clock,
        returns=ReturnTimes(None, agent.default_tool_s),
        links=Links(scenario.link_bandwidths()),
        agent=agent,
        ttl=TTLConfig(ttl_s=scenario.ttl_s),
        engine_owns_top=scenario.hbm_owner == "engine",
        virtual_transfers=True,
        io_workers=1,
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
        self.hinted = scenario.hints and policy != "recompute"
        self.progress = progress
        self.observer = observer  # called after every event and job (invariant checks)
        block_sizes = sorted({s.block_tokens for t in traces for s in t.sessions})
        self.namespaces = {
            bt: Namespace(f"b{bt}", "replay", block_tokens=bt, block_bytes=bt * scenario.bytes_per_token)
            for bt in block_sizes
        }
        self.clock = VirtualClock()  # one time for every worker
        self.workers = [
            Worker(i, store, Hints(store))
            for i in range(scenario.workers)
            for store in [make_store(policy, scenario, list(self.namespaces.values()), self.clock)]
        ]
        self.remote = RemoteTier(int(scenario.remote)) if scenario.remote and policy != "recompute" else None
        self.index = GlobalIndex(self.workers, self.remote)
        self.route = make_router(scenario.router, self.index)
        self.zero = {bt: memoryview(bytes(ns.block_bytes)) for bt, ns in self.namespaces.items()}
        scopes: dict[str, int] = {}
        self.queue = deque((s, scopes.setdefault(s.scope, len(scopes))) for t in traces for s in t.sessions)
        self.scope_names = {i: name for name, i in scopes.items()}
        self.total_requests = sum(self._count(s) for t in traces for s in t.sessions)
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        self.computed: set[bytes] = set()
        self.tally = Tally()
        self.per_trace: dict[int, Tally] = {}
        self.ids = itertools.count()

    @staticmethod
    def _count(session: TraceSession) -> int:
        return len(session.requests) + sum(Replay._count(sub) for _, _, sub in session.subagents)

    # ------------------------------------------------------------------ event loop

    def _push(self, t: float, kind: str, data: object) -> None:
        heapq.heappush(self.events, (t, next(self.seq), kind, data))

    def _observe(self) -> None:
        if self.observer is not None:
            for w in self.workers:
                self.observer(w.store)

    def _advance(self, t: float) -> None:
        """Move virtual time to t, running every worker's policy jobs at their due times on the way."""
        while True:
            due = [(d, w.index) for w in self.workers if (d := w.store.plans.next_due()) is not None]
            if not due or (first := min(due))[0] > t:
                break
            self._tick(max(first[0], self.clock.now()))
            self.workers[first[1]].store.run_due()
            self._observe()
        self._tick(t)

    def _tick(self, t: float) -> None:
        now = self.clock.now()
        if t > now:
            for w in self.workers:
                idle = w.top.used - w.store.placement.pinned_bytes[w.top.name]
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
            elif kind == "user_active":
                self._user_active(*data)  # type: ignore[misc]
            self._observe()
        return self._figures(time.perf_counter() - started)

    def _next_session(self) -> None:
        if self.queue:
            trace_session, scope = self.queue.popleft()
            self._open(trace_session, scope, top_level=True)

    def _open(self, trace_session: TraceSession, scope: int, top_level: bool) -> None:
        """A session starts; it is opened on a worker when its first request is routed there."""
        sim = SimSession(
            f"{trace_session.id}#{next(self.ids)}",
            trace_session,
            scope,
            self.namespaces[trace_session.block_tokens].name,
            top_level,
            gaps(trace_session.requests, self.scenario.decode_tps),
        )
        self._spawn_subagents(sim, -1)
        self._push(self.clock.now() + trace_session.requests[0].t, "arrive", sim)

    def _spawn_subagents(self, sim: SimSession, after: int) -> None:
        for index, _, sub in sim.trace.subagents:
            if index == after:
                self._open(sub, sim.scope, top_level=False)

    # ------------------------------------------------------------------ requests

    def _keys(self, sim: SimSession, request: Request) -> list[bytes]:
        return [_KEY.pack(sim.scope, h) for h in request.hash_ids]

    def _tallies(self, sim: SimSession) -> tuple[Tally, Tally]:
        trace = self.per_trace.get(sim.scope)
        if trace is None:
            trace = self.per_trace[sim.scope] = Tally()
        return self.tally, trace

    def _route(self, sim: SimSession, request: Request, keys: list[bytes]) -> tuple[Worker, int]:
        """The worker for this request, with the session open there, and the tokens it would
        prefill there as things stand (its load until it starts)."""
        now = self.clock.now()
        block_tokens = sim.trace.block_tokens
        w = self.workers[
            self.route(sim.namespace, keys, request.in_tokens, block_tokens, now)
            if len(self.workers) > 1
            else 0
        ]
        previous = sim.worker
        if previous is not None and previous is not w and sim.open_call is not None:
            previous.hints.end_tool_call(sim.open_call)  # the call ended where it began
            previous.store.run_due()
            sim.open_call = None
        if w not in sim.opened:
            w.hints.open_session(sim.sid, sim.namespace)
            sim.opened.append(w)
        sim.worker = w
        cached = self.index.view(w, sim.namespace, keys, now).cached_blocks
        return w, request.in_tokens - min(request.in_tokens, cached * block_tokens)

    def _arrive(self, sim: SimSession) -> None:
        now = self.clock.now()
        request = sim.trace.requests[sim.next_index]
        keys = self._keys(sim, request)
        w, pending = self._route(sim, request, keys)
        session = w.store.sessions.sessions[sim.sid]
        if sim.next_index > 0 and not self._oversize(w, request, sim):  # a resume: measure it as it
            reusable = self._computed_prefix(keys)  # arrives, before the hint lands
            match = w.store.index.longest_prefix(sim.namespace, keys[:reusable])
            in_flight = session.prefetch.done_at is not None and session.prefetch.done_at > now
            warm = (
                match.blocks == reusable
                and not in_flight
                and all(e.tier == w.top.name for e in match.entries)
            )
            for t in self._tallies(sim):
                t.resumed += 1
                t.resumed_by_gap[sim.gap_kind] += 1
                if session.prefetch.bytes:
                    t.prefetched_resumes += 1
                    t.late_resumes += in_flight
                if warm:
                    t.warm += 1
                    t.warm_by_gap[sim.gap_kind] += 1
        if sim.open_call is not None:
            w.hints.end_tool_call(sim.open_call)
            sim.open_call = None
            w.store.run_due()  # what the end of the call started runs now
        w.waiting.append((sim, now, pending))
        w.queued_tokens += pending
        self._start_waiting(w)

    def _user_active(self, sim: SimSession, index: int) -> None:
        w = sim.worker
        session = w.store.sessions.sessions.get(sim.sid) if w is not None else None
        if session is not None and sim.next_index == index and session.away is not None:
            w.hints.user_active(sim.sid)  # type: ignore[union-attr]
            w.store.run_due()  # type: ignore[union-attr]

    def _computed_prefix(self, keys: list[bytes]) -> int:
        """Blocks of the chain's longest prefix that some earlier request computed (reusable)."""
        for i, key in enumerate(keys):
            if key not in self.computed:
                return i
        return len(keys)

    def _oversize(self, w: Worker, request: Request, sim: SimSession) -> bool:
        """Its KV alone exceeds HBM: an engine prefills it and caches nothing."""
        return len(request.hash_ids) * w.store.namespaces[sim.namespace].block_bytes > w.top.capacity

    def _fits(self, w: Worker, keys: list[bytes], namespace: str) -> bool:
        block_bytes = w.store.namespaces[namespace].block_bytes
        if self.policy == "recompute":
            return len(keys) * block_bytes <= w.top.capacity - w.running_bytes
        held = 0
        for key in keys:
            entry = w.store.index.get(namespace, key)
            if entry is not None and entry.pins and entry.tier == w.top.name:
                held += block_bytes
        need = len(keys) * block_bytes - held
        return need <= w.top.capacity - w.store.placement.pinned_bytes[w.top.name]

    def _start_waiting(self, w: Worker) -> None:
        """Start a worker's waiting requests in arrival order while its HBM has room (no overtaking)."""
        while w.waiting:
            sim, arrived, pending = w.waiting[0]
            request = sim.trace.requests[sim.next_index]
            oversize = self._oversize(w, request, sim)
            keys = self._keys(sim, request)
            if not oversize and not self._fits(w, keys, sim.namespace):
                return
            w.waiting.popleft()
            w.queued_tokens -= pending
            if oversize:
                self._serve_oversize(w, sim, request, arrived)
            elif self.policy == "recompute":
                self._serve_uncached(w, sim, request, keys, arrived)
            else:
                self._serve(w, sim, request, keys, arrived)

    def _run_request(self, w: Worker, sim: SimSession, request: Request, end: float, finish: tuple) -> None:
        """Book a started request: its work and decode on the worker, and its end."""
        now = self.clock.now()
        w.running[sim] = (now, end, request.out_tokens)
        for t in self._tallies(sim):
            t.work[w.index] = t.work.get(w.index, 0) + request.out_tokens
        self._push(end, "finish", finish)
        if self.progress is not None:
            self.progress(1)

    def _serve(self, w: Worker, sim: SimSession, request: Request, keys: list[bytes], arrived: float) -> None:
        store, now, ns = w.store, self.clock.now(), sim.namespace
        block_tokens = sim.trace.block_tokens
        block_bytes = store.namespaces[ns].block_bytes
        top = w.top.name
        session = store.sessions.sessions[sim.sid]
        stall = max(0.0, (session.prefetch.done_at or 0.0) - now)  # a prefetch still on the link
        stored = store.lookup(ns, keys, session=sim.sid).blocks
        promotion = store.promote(ns, keys[:stored], session=sim.sid, pin=True)
        stored = promotion.blocks
        for src, nbytes in promotion.moved.items():
            stall += nbytes / store.links.bandwidth(src, top)
        fetched = 0  # blocks after the local prefix that the remote tier holds: read, not prefilled
        if self.remote is not None and (fetched := self.remote.prefix(ns, keys, stored)):
            self.remote.read(ns, keys[stored : stored + fetched], block_bytes)
            stall += fetched * block_bytes / (self.scenario.remote_gbps * 1e9)
        parents = [keys[stored - 1] if stored else None, *keys[stored:-1]][: len(keys) - stored]
        placed = store.put(
            [
                PutBlock(ns, k, self.zero[block_tokens], p, session=sim.sid, pin=True)
                for k, p in zip(keys[stored:], parents, strict=True)
            ]
        )
        w.placed += sum(1 for tier in placed if tier)
        if self.remote is not None:  # write-through, off the request's path
            self.remote.write(ns, keys, block_bytes)
        pinned = keys[:stored] + [k for k, tier in zip(keys[stored:], placed, strict=True) if tier]
        reusable = self._computed_prefix(keys)
        self.computed.update(keys)
        covered = (stored + fetched) * block_tokens
        prefilled = request.in_tokens - min(request.in_tokens, covered)
        new = request.in_tokens - min(request.in_tokens, reusable * block_tokens)
        prefill_s = prefilled / self.scenario.prefill_tps
        reused = (stored + fetched) * block_bytes
        self._record(w, sim, now - arrived, stall, prefilled, new, reused, len(keys) * 3 + stored)
        hold = sim.timing[sim.next_index][0]
        self._run_request(w, sim, request, now + max(hold, stall + prefill_s), (sim, pinned, 0))

    def _serve_uncached(
        self, w: Worker, sim: SimSession, request: Request, keys: list[bytes], arrived: float
    ) -> None:
        """`recompute`: no prefix cache, so no block outlives its request and nothing is placed;
        HBM holds only running requests (accounted here), and every input token is prefilled."""
        now = self.clock.now()
        held = len(keys) * w.store.namespaces[sim.namespace].block_bytes
        w.running_bytes += held
        reusable = self._computed_prefix(keys)
        self.computed.update(keys)
        block_tokens = sim.trace.block_tokens
        new = request.in_tokens - min(request.in_tokens, reusable * block_tokens)
        self._record(w, sim, now - arrived, 0.0, request.in_tokens, new, 0, 0)
        prefill_s = request.in_tokens / self.scenario.prefill_tps
        self._run_request(
            w, sim, request, now + max(sim.timing[sim.next_index][0], prefill_s), (sim, [], held)
        )

    def _serve_oversize(self, w: Worker, sim: SimSession, request: Request, arrived: float) -> None:
        """Prefilled whole and not cached, as an engine serves a request larger than its KV pool."""
        now = self.clock.now()
        keys = self._keys(sim, request)
        reusable = self._computed_prefix(keys)
        self.computed.update(keys)
        new = request.in_tokens - min(request.in_tokens, reusable * sim.trace.block_tokens)
        ttft = now - arrived + request.in_tokens / self.scenario.prefill_tps
        for t in self._tallies(sim):
            t.oversize += 1
            t.requests += 1
            t.prefilled_tokens += request.in_tokens
            t.new_tokens += new
            t.oversize_prefilled += request.in_tokens
            t.oversize_new += new
            t.oversize_ttft.append(ttft)
            t.work[w.index] = t.work.get(w.index, 0) + request.in_tokens
        hold = sim.timing[sim.next_index][0]
        end = now + max(hold, request.in_tokens / self.scenario.prefill_tps)
        self._run_request(w, sim, request, end, (sim, [], 0))

    def _record(
        self,
        w: Worker,
        sim: SimSession,
        waited: float,
        stall: float,
        prefilled: int,
        new: int,
        reused: int,
        ops: int,
    ) -> None:
        prefill_tps = self.scenario.prefill_tps
        ttft = waited + stall + prefilled / prefill_tps
        for t in self._tallies(sim):
            t.requests += 1
            t.waited_s += waited
            t.prefilled_tokens += prefilled
            t.new_tokens += new
            t.reused_bytes += reused
            t.block_ops += ops
            t.work[w.index] = t.work.get(w.index, 0) + prefilled
            if sim.next_index > 0:
                t.resume_ttft.append(ttft)
                t.room_wait.append(waited)
                t.cache_stall.append(stall + (prefilled - new) / prefill_tps)
            else:
                t.first_ttft.append(ttft)

    def _finish(self, sim: SimSession, pinned: list[bytes], held: int) -> None:
        w = sim.worker
        assert w is not None
        del w.running[sim]
        if pinned:
            w.store.unpin(sim.namespace, pinned)
        w.running_bytes -= held
        index = sim.next_index
        requests = sim.trace.requests
        self._spawn_subagents(sim, index)
        if index + 1 < len(requests):
            think = sim.timing[index][1]
            self._plan_gap(w, sim, requests[index], think)
            w.store.run_due()  # what the hint planned for now
            sim.next_index += 1
            self._push(self.clock.now() + think, "arrive", sim)
        else:
            for opened in sim.opened:
                opened.hints.close_session(sim.sid)
                opened.store.run_due()
            if sim.top_level:
                self._next_session()
        self._start_waiting(w)

    def _plan_gap(self, w: Worker, sim: SimSession, done: Request, think: float) -> None:
        """The hints an agent framework would send for the gap before the next request (DESIGN §5),
        to the worker that served it; every policy gets them (the baselines ignore them), so all
        run the same code path."""
        sim.gap_kind = {"tool_use": "tool", "end_turn": "human"}.get(done.stop, "none")
        if not self.hinted:
            return
        gap = max(think, 1e-3)
        noise = random.Random(f"{self.scenario.seed}:{sim.sid}:{sim.next_index}")
        if self.policy == "oracle" or sim.gap_kind == "tool":
            if self.policy == "oracle":
                expected = gap  # the exact future, for tool calls and people alike
            else:
                expected = (
                    gap * noise.lognormvariate(0.0, self.scenario.sigma) if self.scenario.sigma else gap
                )
            call_id = f"{sim.sid}:{sim.next_index}"
            w.hints.begin_tool_call(sim.sid, sim.gap_kind, max(min(expected, 6 * 86400.0), 1e-3), call_id)
            sim.open_call = call_id
        elif sim.gap_kind == "human":
            w.hints.awaiting_user(sim.sid)
            if self.scenario.user_active_s > 0:
                lead = self.scenario.user_active_s * noise.lognormvariate(0.0, USER_ACTIVE_SIGMA)
                at = self.clock.now() + max(0.0, gap - lead)
                self._push(at, "user_active", (sim, sim.next_index + 1))

    # ------------------------------------------------------------------ figures

    def _figures(self, wall_s: float) -> dict[str, object]:
        t = self.tally
        links = [link for w in self.workers for link in w.store.links.measured.values()]
        moved, moves = sum(link.bytes for link in links), sum(link.moves for link in links)
        prefetched = sum(w.store.sessions.prefetch_bytes["moved"] for w in self.workers)
        wasted = sum(w.store.sessions.prefetch_bytes["wasted"] for w in self.workers)
        workers = len(self.workers)
        return {
            "policy": self.policy,
            "requests": t.requests,
            **t.resume_figures(),
            "oversize_requests": t.oversize,
            "oversize_ttft_p50": _percentile(t.oversize_ttft, 50),
            "warm_by_gap": {
                kind: {"resumed": t.resumed_by_gap[kind], "warm_resume_rate": _ratio(t.warm_by_gap[kind], n)}
                for kind in GAP_KINDS
                if (n := t.resumed_by_gap[kind])
            },
            "prefill_amplification": t.prefilled_tokens / t.new_tokens if t.new_tokens else None,
            "prefill_amplification_fitting": t.fitting_amplification(),
            "load_imbalance": t.load_imbalance(workers),
            "remote_read_gib": self.remote.read_bytes / GiB if self.remote is not None else None,
            "index_changes_per_worker_s": sum(w.index_changes() for w in self.workers)
            / max(self.clock.now(), 1e-9)
            / workers,
            "room_wait_p99": _percentile(t.room_wait, 99),
            "resume_ttft_p50": _percentile(t.resume_ttft, 50),
            "resume_ttft_p99": _percentile(t.resume_ttft, 99),
            "first_ttft_p50": _percentile(t.first_ttft, 50),
            "first_ttft_p99": _percentile(t.first_ttft, 99),
            "bytes_moved_per_reused_byte": moved / t.reused_bytes if t.reused_bytes else None,
            "prefetch_precision": 1 - wasted / prefetched if prefetched else None,
            "prefetch_late_rate": t.late_resumes / t.prefetched_resumes if t.prefetched_resumes else None,
            "hbm_idle_gib_s": t.hbm_idle_byte_s / GiB,
            "hbm_wait_s_total": t.waited_s,
            "virtual_s": self.clock.now(),
            "replay_wall_s": wall_s,
            "requests_per_s": t.requests / wall_s if wall_s else math.inf,
            "block_ops_per_s": (t.block_ops + moves) / wall_s if wall_s else math.inf,
            "per_trace": {
                self.scope_names[scope]: tally.route_figures(workers)
                for scope, tally in sorted(self.per_trace.items())
            },
        }


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None
