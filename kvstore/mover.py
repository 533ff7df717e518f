"""Moves between tiers: the queue of plans waiting for their time, the copies themselves, and the
speed of each link.

`PlanQueue` holds plans until they are due, most urgent first, and forgets a session's plans as
soon as the session moves on. The server's mover thread sleeps until the next plan is due (or a
sooner one arrives); the replay pops due plans as it advances its virtual clock.

`Copier` does the copies, never under the store's lock: memory tiers copy inline (on a CUDA stream
of their own, synchronised by an event, when a GPU tier is involved), the disk tier reads and
writes on a small worker pool. It times every copy per link, so the policy can plan with the
bandwidth this machine reaches (`Links`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kvstore.index import BlockEntry
from kvstore.plans import Plan, PlanKind
from kvstore.tiers.base import CorruptBlock, Tier, WriteFailed
from kvstore.tiers.memory import MemoryTier

# Among plans due at once, lower runs first: pins and releases, then swaps, checks, offloads.
PRIORITY = {
    PlanKind.RELEASE_FANOUT: 0,
    PlanKind.PIN_FANOUT: 0,
    PlanKind.WARM: 1,
    PlanKind.BRING_BACK: 5,
    PlanKind.CHECK: 10,
    PlanKind.OFFLOAD: 30,
}
# One copy of a move: source tier, block, its reserved slot in the destination, its bytes if read.
Copy = tuple[Tier, BlockEntry, BlockEntry, Any]
MEASURED_AFTER = 64 * 2**20  # a link's measured speed is trusted after this many bytes
# Woken by a plan pushed for now, the mover waits this long for the plans that follow it (a burst
# of hints) before running them: one wake-up for the burst. Plans run seconds ahead; this is noise.
COALESCE_S = 0.002


class PlanQueue:
    """Plans by due time (thread-safe). A session's plans are dropped when `forget` says it moved
    on; plans made before that are recognised by their generation and never returned.

    Forgetting is O(1) (it happens on every hint): the dropped rows stay in the heap, skipped when
    they surface, and the heap is rebuilt only once they outnumber the live ones.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Plan]] = []
        self._seq = itertools.count()
        self._current: dict[str, int] = {}  # session -> the generation its plans must carry
        self._per_session: dict[str, int] = {}  # session -> its live rows in the heap
        self._live = 0
        self._dropped = 0  # rows in the heap that will never run
        self._cond = threading.Condition()
        self._sleeping_until = -math.inf  # the mover's wake-up time while it sleeps
        self._woken = False

    def push(self, plan: Plan) -> None:
        with self._cond:
            if plan.session and plan.generation >= 0:
                if plan.generation < self._current.get(plan.session, -1):
                    return  # planned before its session moved on
                self._forget(plan.session, plan.generation)
                self._per_session[plan.session] = self._per_session.get(plan.session, 0) + 1
            heapq.heappush(self._heap, (plan.not_before, PRIORITY[plan.kind], next(self._seq), plan))
            self._live += 1
            if plan.not_before < self._sleeping_until:  # else the mover is awake, or wakes in time
                self._sleeping_until = -math.inf
                self._cond.notify_all()

    def forget(self, session: str, generation: int) -> None:
        """The session moved on (to `generation`): its earlier plans are dropped."""
        with self._cond:
            self._forget(session, generation)

    def _forget(self, session: str, generation: int) -> None:
        if self._current.get(session, -1) >= generation:
            return
        self._current[session] = generation
        dropped = self._per_session.pop(session, 0)
        self._live -= dropped
        self._dropped += dropped
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        # Amortised O(1): a rebuild costs O(heap) and waits until as many rows (or sessions) are
        # dead as are alive.
        if self._dropped > max(64, self._live) or len(self._current) > 2 * len(self._per_session) + 64:
            self._compact()

    def _compact(self) -> None:
        self._heap = [row for row in self._heap if self._valid(row[3])]
        heapq.heapify(self._heap)
        self._dropped = 0
        # Sessions with no plan left need no generation: their old rows are gone.
        self._current = {s: g for s, g in self._current.items() if s in self._per_session}

    def pop_due(self, now: float) -> list[Plan]:
        """Plans whose time has come and whose session has not moved on, most urgent first."""
        due: list[tuple[int, int, Plan]] = []
        with self._cond:
            while self._heap and self._heap[0][0] <= now:
                _, priority, seq, plan = heapq.heappop(self._heap)
                if self._taken(plan):
                    due.append((priority, seq, plan))
            self._prune()
            self._maybe_compact()
        return [plan for _, _, plan in sorted(due)]

    def next_due(self) -> float | None:
        with self._cond:
            self._prune()
            return self._heap[0][0] if self._heap else None

    def sleep(self, now: float, other: float | None = None) -> None:
        """The mover's sleep: until the first plan or `other` (another deadline) is due, a plan
        due sooner is pushed, or `wake` is called. Looking at the queue and sleeping are one step
        under the queue's lock, so a push in between cannot go unnoticed."""
        with self._cond:
            self._prune()
            times = [t for t in (self._heap[0][0] if self._heap else None, other) if t is not None]
            until = min(times, default=math.inf)
            if not self._woken and until > now:
                self._sleeping_until = until
                pushed = self._cond.wait(None if until == math.inf else until - now)
                if pushed and self._sleeping_until == -math.inf and not self._woken:
                    self._cond.wait(COALESCE_S)
                self._sleeping_until = -math.inf
            self._woken = False

    def wake(self) -> None:
        """End the mover's sleep now (a sooner deadline elsewhere, or shutdown)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        return self._live

    def _valid(self, plan: Plan) -> bool:
        return (
            not plan.session or plan.generation < 0 or plan.generation >= self._current.get(plan.session, -1)
        )

    def _taken(self, plan: Plan) -> bool:
        """Account for a row leaving the heap; True when it is a live plan."""
        if not self._valid(plan):
            self._dropped -= 1
            return False
        self._live -= 1
        if plan.session and plan.generation >= 0:
            left = self._per_session[plan.session] - 1
            if left:
                self._per_session[plan.session] = left
            else:
                del self._per_session[plan.session]
        return True

    def _prune(self) -> None:
        while self._heap and not self._valid(self._heap[0][3]):
            heapq.heappop(self._heap)
            self._dropped -= 1


@dataclass(slots=True)
class LinkStats:
    moves: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def bandwidth(self) -> float | None:
        """Measured bytes/s, or None before the first timed move."""
        return self.bytes / self.seconds if self.seconds > 0 else None


@dataclass(slots=True)
class Run:
    """Memory blocks whose slots lie end to end in their source tier and in the destination."""

    src: MemoryTier
    src_start: int
    dst_start: int
    size: int

    def continued_by(self, src: Tier, entry: BlockEntry, staged: BlockEntry) -> bool:
        return (
            src is self.src
            and entry.location == self.src_start + self.size
            and staged.location == self.dst_start + self.size
        )


class Links:
    """Bytes/s between two tiers: fixed (a scenario's), else measured, else a default."""

    def __init__(self, fixed: dict[tuple[str, str], float] | None = None, default: float = 8e9) -> None:
        self.fixed = dict(fixed or {})
        self.default = default
        self.measured: dict[tuple[str, str], LinkStats] = {}

    def bandwidth(self, src: str, dst: str) -> float:
        fixed = self.fixed.get((src, dst))
        if fixed:
            return fixed
        link = self.measured.get((src, dst))
        measured = link.bandwidth if link is not None and link.bytes >= MEASURED_AFTER else None
        return measured or self.default

    def count(self, src: str, dst: str, nbytes: int, seconds: float) -> None:
        link = self.measured.get((src, dst))
        if link is None:
            link = self.measured[(src, dst)] = LinkStats()
        link.moves += 1
        link.bytes += nbytes
        link.seconds += seconds


class Copier:
    """Copies block bytes between tiers and into new slots, off the store's lock."""

    def __init__(self, links: Links, io_workers: int = 2) -> None:
        self.links = links
        self._io = ThreadPoolExecutor(io_workers, thread_name_prefix="kvstore-io")
        self._stream: Any = None  # a CUDA stream for GPU tiers, made on first use

    def copy(self, src: Tier, entry: BlockEntry, dst: Tier, staged: BlockEntry, data: Any = None) -> None:
        """Copy `entry`'s bytes from `src` into `staged`'s slot in `dst` (both reserved by the
        caller); `data`: the bytes already read, when the caller has them."""
        started = time.perf_counter()
        if data is None:
            data = self.read(src, entry)
        self.write(dst, staged, data)
        self.links.count(src.name, dst.name, entry.size, time.perf_counter() - started)

    def copy_many(self, copies: Sequence[Copy], dst: Tier) -> list[Exception | None]:
        """Make each copy into `dst`, as `copy`; returns, per copy, the CorruptBlock or
        WriteFailed it raised, or None (other errors propagate). Between memory tiers, blocks whose
        slots lie end to end in both tiers are copied as one run: one copy, not one per block."""
        failures: list[Exception | None] = [None] * len(copies)
        runs: list[Run] = []
        for i, (src, entry, staged, data) in enumerate(copies):
            if data is None and isinstance(src, MemoryTier) and isinstance(dst, MemoryTier):
                if runs and runs[-1].continued_by(src, entry, staged):
                    runs[-1].size += entry.size
                else:
                    runs.append(Run(src, entry.location, staged.location, entry.size))
                continue
            try:
                self.copy(src, entry, dst, staged, data)
            except (CorruptBlock, WriteFailed) as failure:
                failures[i] = failure
        for run in runs:
            started = time.perf_counter()
            data = run.src.span(run.src_start, run.size)
            self._to_memory(dst, data, dst.write_span, run.dst_start, run.size, data)
            self.links.count(run.src.name, dst.name, run.size, time.perf_counter() - started)
        return failures

    def read(self, tier: Tier, entry: BlockEntry) -> Any:
        """The block's bytes (a view into a memory tier's buffer, valid while the slot is held)."""
        if tier.on_disk:
            return self._io.submit(tier.read, entry).result()
        return tier.read(entry)

    def read_bytes(self, tier: Tier, entry: BlockEntry) -> bytes:
        """A copy of the block's bytes that outlives its slot."""
        if tier.on_disk:
            return self._io.submit(tier.read_bytes, entry).result()
        return tier.read_bytes(entry)

    def write(self, tier: Tier, entry: BlockEntry, data: Any) -> None:
        if tier.on_disk:
            self._io.submit(tier.write, entry, data).result()
        else:
            self._to_memory(tier, data, tier.write, entry, data)

    def _to_memory(self, tier: Tier, data: Any, write: Callable[..., None], *args: Any) -> None:
        """Run `write(*args, non_blocking=...)`, which copies `data` into a memory tier. HBM <->
        DRAM runs on a stream of its own, so a move never queues behind the engine's kernels; an
        event says when the bytes have landed (pinned host memory makes the copy asynchronous)."""
        if not (tier.device.startswith("cuda") or getattr(data, "is_cuda", False)):
            write(*args, non_blocking=False)
            return
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream()
        with torch.cuda.stream(self._stream):
            write(*args, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        done.synchronize()

    def run(self, work: Callable[[], Any]) -> Any:
        """Run file work (a flush, a scan) on the I/O pool and wait for it."""
        return self._io.submit(work).result()

    def close(self) -> None:
        self._io.shutdown(wait=True)
