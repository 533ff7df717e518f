"""Leases on shared-memory slots: how a same-host client writes and reads block bytes in place.

Writing: `reserve` allocates slots in a shared tier and hands out their offsets under a write
lease; the client copies its bytes in and calls `commit`, and only then are the blocks indexed.
A client that dies mid-write never commits: its blocks were never visible, and when the lease
expires its slots are freed, one more TTL later: a writer stalled past its lease (the SDK stops
writing at half of it) may still be copying into them, and a slot reused at once would take those
bytes into another block. A block's bytes changed in its slot after its commit (by anything: a
client writing after its commit, a same-user process scribbling on /dev/shm) no longer match the
checksum taken at commit, which is checked when it is read over gRPC, when it goes to disk, and by
the client on its copy of a block read through shared memory (Acquire hands out the checksum; a
copy that fails is discarded and the block read over gRPC, where it is dropped: a miss).

Reading: `acquire` takes a read lease on stored blocks. A leased block counts as read by a
transfer (`BlockEntry.readers`), so nothing moves, evicts or frees it while the client copies;
`release` ends the lease and says whether it was still valid. A lease that expired first may
have had its slots reused: the client must discard what it read (the SDK then reads over gRPC).

Writing before the keys are known: `reserve_count` hands out N anonymous slots under one lease, and
`commit_slots` names the blocks written into any of them (across leases), one call per batch. So a
client can give its caller slots as buffers to fill (LMCache's allocator) and store them with no
extra copy. Such a lease stays open until each slot is committed, or it ends and frees the rest.

Lease ids are generations: they only grow, so an ended lease is never confused with a new one.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from kvstore import writes
from kvstore.errors import FailedPrecondition, InvalidArgument
from kvstore.index import BlockEntry
from kvstore.store import Store

MAX_BLOCKS_PER_LEASE = 65536


class SlotState(Enum):
    WRITE = 0  # write the block's bytes at the slot, then commit
    STORED = 1  # stored already: nothing to write (commit counts it as put again)
    NO_ROOM = 2  # no shared-memory room: send this block over gRPC instead


@dataclass(slots=True)
class BlockHeader:
    key: bytes
    size: int  # bytes the client will write
    parent: bytes | None = None
    meta: bytes = b""


@dataclass(slots=True)
class Slot:
    key: bytes
    state: SlotState
    segment: int = 0  # index into `Leases.shared_tiers`
    offset: int = 0
    size: int = 0


@dataclass(slots=True)
class LeasedBlock:
    """A block under a read lease: in a shared segment, or (`data`) copied out when it is not."""

    key: bytes
    meta: bytes
    tier: str
    segment: int = 0
    offset: int = 0
    size: int = 0
    data: bytes | None = None
    checksum: int | None = None  # of a block in shared memory, for the client to check its copy


@dataclass(slots=True)
class Lease:
    id: int
    deadline: float
    writing: bool
    namespace: str
    session: str | None = None
    pin: bool = False
    # write: (slot entry or None, key, state), one per reserved block in request order; a slot of a
    # lease reserved by count has no key until commit_slots, which then sets its entry to None
    slots: list[tuple[BlockEntry | None, bytes, SlotState]] = field(default_factory=list)
    reads: list[BlockEntry] = field(default_factory=list)
    by_count: bool = False
    open_slots: int = 0  # by_count: slots neither committed nor without room


class Leases:
    """The lease tables. The store's methods take the store's lock themselves; this class's own
    lock guards only its tables, and is never held while calling the store."""

    def __init__(self, store: Store, ttl_s: float = 30.0, wake: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.wake = wake  # told when a lease opens: whoever expires leases sleeps until the next deadline
        self.shared_tiers = [t for t in store.tiers if t.segment is not None]
        self._segment_of = {t.name: i for i, t in enumerate(self.shared_tiers)}
        self._shared_names = frozenset(self._segment_of)
        # Names this server's segments in every lease reply (random per start).
        first = self.shared_tiers[0].segment if self.shared_tiers else None
        self.token = first.token if first is not None else b""
        self._active: dict[int, Lease] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap; stale rows are skipped
        # Slots of write leases that expired uncommitted, freed at their time (see the docstring).
        self._quarantine: list[tuple[float, int, list[BlockEntry]]] = []  # heap (deadline, lease id, slots)
        self._ids = itertools.count(1)
        self._last_id = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.shared_tiers)

    def _open(self, lease: Lease) -> Lease:
        """Register a lease (its id and deadline set now)."""
        with self._lock:
            lease.id = next(self._ids)
            self._last_id = lease.id
            lease.deadline = self.store.clock.now() + self.ttl_s
            self._active[lease.id] = lease
            heapq.heappush(self._deadlines, (lease.deadline, lease.id))
        self.wake()
        return lease

    def _check_batch(self, n: int) -> None:
        if not self.enabled:
            raise FailedPrecondition("this server has no shared-memory tier; use Put/Get over gRPC")
        if n > MAX_BLOCKS_PER_LEASE:
            raise InvalidArgument(f"{n} blocks in one lease; at most {MAX_BLOCKS_PER_LEASE}")

    # ------------------------------------------------------------------ writing

    def reserve(
        self, namespace: str, blocks: Sequence[BlockHeader], session: str | None = None, pin: bool = False
    ) -> tuple[Lease, list[Slot]]:
        self._check_batch(len(blocks))
        self.store.check.session(session)
        for i, b in enumerate(blocks):
            self.store.check.block(namespace, b.key, b.parent, b.meta, b.size, i)
        ns = self.store.check.namespace(namespace)
        with self.store.lock:  # checked here: the commit that opens the session cannot refuse
            if session:
                self.store.check_session_locked(session, namespace)
            if pin:  # the tenant's quota: pinned blocks cannot make room for each other
                new = {b.key for b in blocks if self.store.index.get(namespace, b.key) is None}
                writes.check_quota_locked(self.store, ns.tenant, len(new) * ns.block_bytes, 0)
        size = ns.block_bytes
        self.expire()
        lease = Lease(0, 0.0, True, namespace, session, pin)
        slots, seen = [], set()
        for b in blocks:
            if b.key in seen or self.store.index.get(namespace, b.key) is not None:
                lease.slots.append((None, b.key, SlotState.STORED))
                slots.append(Slot(b.key, SlotState.STORED))
                continue
            seen.add(b.key)
            entry = BlockEntry(namespace, b.key, b.parent or None, size, "", meta=b.meta)
            if not self.store.reserve_shared(entry):
                lease.slots.append((None, b.key, SlotState.NO_ROOM))
                slots.append(Slot(b.key, SlotState.NO_ROOM))
                continue
            lease.slots.append((entry, b.key, SlotState.WRITE))
            slots.append(Slot(b.key, SlotState.WRITE, self._segment_of[entry.tier], entry.location, size))
        return self._open(lease), slots

    def reserve_count(self, namespace: str, count: int) -> tuple[Lease, list[Slot]]:
        """`count` slots of the namespace's block size for blocks named at `commit_slots`."""
        if count < 1:
            raise InvalidArgument(f"count is {count}: reserve at least one slot")
        self._check_batch(count)
        size = self.store.check.namespace(namespace).block_bytes
        self.expire()
        lease = Lease(0, 0.0, True, namespace, by_count=True)
        slots = []
        for _ in range(count):
            entry = BlockEntry(namespace, b"", None, size, "")
            if not self.store.reserve_shared(entry):
                lease.slots.append((None, b"", SlotState.NO_ROOM))
                slots.append(Slot(b"", SlotState.NO_ROOM))
                continue
            lease.slots.append((entry, b"", SlotState.WRITE))
            slots.append(Slot(b"", SlotState.WRITE, self._segment_of[entry.tier], entry.location, size))
        lease.open_slots = sum(state is SlotState.WRITE for _, _, state in lease.slots)
        if not lease.open_slots:  # no room at all: no lease (id 0) to hold open
            return lease, slots
        return self._open(lease), slots

    def commit_slots(
        self,
        blocks: Sequence[tuple[int, int, BlockHeader]],
        session: str | None = None,
        pin: bool = False,
        gave_up: Callable[[], bool] | None = None,
    ) -> list[tuple[bytes, str]]:
        """Index blocks written into slots reserved by count: (lease id, slot index, header) each,
        all of one namespace. All are checked before any is indexed, so a refused call changes
        nothing; `gave_up`, as for `commit`: nothing is stored once the caller stopped waiting."""
        self.store.check.session(session)
        with self._lock:
            taken = [self._open_slot(i, lease_id, slot) for i, (lease_id, slot, _) in enumerate(blocks)]
        if len({(lease.id, slot) for lease, slot, _ in taken}) < len(taken):
            raise InvalidArgument("a slot is named twice: each slot holds one block")
        for i, ((lease, _, entry), (_, _, header)) in enumerate(zip(taken, blocks, strict=True)):
            self.store.check.block(lease.namespace, header.key, header.parent, header.meta, entry.size, i)
        namespaces = {lease.namespace for lease, _, _ in taken}
        if not namespaces:
            return []  # no blocks: nothing to commit (and no session opened)
        if len(namespaces) > 1:
            raise InvalidArgument(
                f"the blocks name leases of {len(namespaces)} namespaces; commit each namespace's apart"
            )
        with self.store.lock:  # the caps, the session's tenant and pinned room, before anything changes
            if session:
                self.store.check_session_locked(session, *namespaces)
            if pin and taken:
                tenant = self.store.namespaces[taken[0][0].namespace].tenant
                writes.check_quota_locked(self.store, tenant, sum(entry.size for _, _, entry in taken), 0)
        with self._lock:
            # Again: a lease may have ended while the blocks were checked without the lock.
            taken = [self._open_slot(i, lease_id, slot) for i, (lease_id, slot, _) in enumerate(blocks)]
            for (lease, slot, entry), (_, _, header) in zip(taken, blocks, strict=True):
                lease.slots[slot] = (None, header.key, SlotState.STORED)  # kvstore's now, not the lease's
                lease.open_slots -= 1
                if lease.open_slots == 0:
                    self._active.pop(lease.id, None)
                entry.key, entry.parent, entry.meta = header.key, header.parent or None, header.meta
        written = [(entry, entry.key) for _, _, entry in taken]
        stored = self.store.add_written(taken[0][0].namespace, written, session, pin, gave_up)
        return [(key, s.tier if s is not None else "") for (_, key), s in zip(written, stored, strict=True)]

    def _open_slot(self, i: int, lease_id: int, slot: int) -> tuple[Lease, int, BlockEntry]:
        """An uncommitted slot of an active lease reserved by count (caller holds the lock)."""
        lease = self._active.get(lease_id)
        if lease is None:
            raise self._gone(lease_id)
        if not lease.by_count:
            raise InvalidArgument(
                f"block #{i}: lease {lease_id} was not reserved by count; end it with Commit"
            )
        entry = lease.slots[slot][0] if 0 <= slot < len(lease.slots) else None
        if entry is None:
            raise InvalidArgument(
                f"block #{i}: lease {lease_id} has no open slot {slot} (out of range, committed already, "
                "or reserved without room)"
            )
        return lease, slot, entry

    def commit(self, lease_id: int, gave_up: Callable[[], bool] | None = None) -> list[tuple[bytes, str]]:
        """Index what the lease's client wrote; returns (key, tier) of every block it covered.
        `gave_up`: whether the caller stopped waiting; then nothing is stored (Store.add_written)."""
        with self._lock:
            lease = self._take(lease_id)
            if not lease.writing:
                self._active[lease_id] = lease
                raise InvalidArgument(f"lease {lease_id} is a read lease; end it with Release")
            if lease.by_count:
                self._active[lease_id] = lease
                raise InvalidArgument(f"lease {lease_id} was reserved by count; commit it with CommitSlots")
        # A block without room goes over gRPC instead: not part of the commit.
        written = [(entry, key) for entry, key, state in lease.slots if state is not SlotState.NO_ROOM]
        stored = iter(self.store.add_written(lease.namespace, written, lease.session, lease.pin, gave_up))
        out = []
        for _, key, state in lease.slots:
            entry = next(stored) if state is not SlotState.NO_ROOM else None
            out.append((key, entry.tier if entry is not None else ""))
        return out

    # ------------------------------------------------------------------ reading

    def acquire(
        self, namespace: str, keys: Sequence[bytes], session: str | None = None, stop_at_miss: bool = False
    ) -> tuple[Lease, list[LeasedBlock | None]]:
        self._check_batch(len(keys))
        self.expire()
        reads = self.store.get(namespace, keys, session, stop_at_miss, hold=self._shared_names)
        lease = Lease(0, 0.0, False, namespace, session, False)
        lease.reads = [r.held for r in reads if r is not None and r.held is not None]
        out: list[LeasedBlock | None] = []
        for r in reads:
            if r is None:
                out.append(None)
            elif r.held is None:  # not in shared memory (disk, a GPU): its bytes go inline
                out.append(LeasedBlock(r.key, r.meta, r.tier, data=r.data))
            else:
                held = r.held
                segment = self._segment_of[r.tier]
                out.append(
                    LeasedBlock(
                        r.key, r.meta, r.tier, segment, held.location, held.size, checksum=held.checksum
                    )
                )
        return self._open(lease), out

    # ------------------------------------------------------------------ ending

    def release(self, lease_id: int) -> bool:
        """End a lease. True if it was still valid: what its client read is what was stored.
        A write lease released without commit gives its slots back."""
        with self._lock:
            try:
                lease = self._take(lease_id)
            except FailedPrecondition:
                return False
        self._end(lease)
        return True

    def expire(self) -> int:
        """End the leases whose time is up (a write lease's slots are quarantined for one more
        TTL), and free the quarantined slots whose time is up; returns how many leases ended."""
        now = self.store.clock.now()
        ended: list[Lease] = []
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, lease_id = heapq.heappop(self._deadlines)
                lease = self._active.pop(lease_id, None)
                if lease is not None:
                    ended.append(lease)
            for lease in ended:
                slots = [entry for entry, _, _ in lease.slots if entry is not None]
                if slots:
                    heapq.heappush(self._quarantine, (now + self.ttl_s, lease.id, slots))
            freed: list[BlockEntry] = []
            while self._quarantine and self._quarantine[0][0] <= now:
                freed += heapq.heappop(self._quarantine)[2]
        for lease in ended:
            self.store.release(lease.reads)
        for entry in freed:
            self.store.free_slot(entry)
        return len(ended)

    def next_deadline(self) -> float | None:
        with self._lock:
            deadlines = [rows[0][0] for rows in (self._deadlines, self._quarantine) if rows]
            return min(deadlines, default=None)

    def _take(self, lease_id: int) -> Lease:
        lease = self._active.pop(lease_id, None)
        if lease is None:
            raise self._gone(lease_id)
        return lease

    def _gone(self, lease_id: int) -> FailedPrecondition | InvalidArgument:
        if 0 < lease_id <= self._last_id:
            return FailedPrecondition(
                f"lease {lease_id} has ended (released, committed, or expired after {self.ttl_s:g} s); "
                "nothing it covered was stored: start again"
            )
        return InvalidArgument(f"there is no lease {lease_id}")

    def _end(self, lease: Lease) -> None:
        for entry, _, _ in lease.slots:
            if entry is not None:
                self.store.free_slot(entry)
        self.store.release(lease.reads)

    def stats(self) -> dict[str, int]:
        with self._lock:
            leases = list(self._active.values())
            quarantined = sum(e.size for _, _, slots in self._quarantine for e in slots)
        return {
            "write_leases": sum(lease.writing for lease in leases),
            "read_leases": sum(not lease.writing for lease in leases),
            "reserved_bytes": quarantined
            + sum(e.size for lease in leases for e, _, _ in lease.slots if e is not None),
        }
