"""LMCache's store buffers handed out on kvstore's shared-memory slots, so a put copies nothing.

Why: LMCache fills the buffers its allocator gives it (the engine's device-to-host copy) and then
hands them to the storage backends. With buffers from LMCache's own CPU pool, the plugin's put had
to copy every chunk again into a kvstore slot. Here the allocator hands out slots reserved in
kvstore ahead of time (`Reserve` by count, keys unknown yet); LMCache writes each chunk straight
into its slot, and the plugin's put is one `CommitSlots` RPC naming the chunks: no copy, one round
trip per batch.

- Pool: slots are reserved in batches of `pool_chunks` (`store_buffers_mib`, at most a quarter of
  kvstore's shared memory) by a background thread whenever half are gone, so an allocation does
  not wait on an RPC; one that finds the pool short reserves the rest itself. Anything else (a
  partial chunk, no room in kvstore, kvstore down) comes from LMCache's own allocator, and the
  plugin's put copies it as before.
- Leases: a reserved slot is kvstore's to reuse once its write lease expires (`lease_ttl_s`, 30 s
  by default). A slot is handed out only in the first half of its lease, and LMCache writes a
  store buffer right after allocating it and puts it at once. A buffer LMCache frees without a
  put goes back to the pool; one handed to a put never does (if the CommitSlots failed, it may
  still have been applied). A lease whose time is up is released with the slots it has left.
- A server restart (new segments) leaves pooled slots of the old one: their commits fail (a
  dropped store, logged) until those leases age out of the pool.
- Only where LMCache keeps nothing itself: its CPU cache off (`local_cpu: false`, it is then only
  the allocator) and kvstore its only storage backend, with the naive serde (the buffer reaches
  the plugin as allocated). The connector checks this before installing the pool.
"""

from __future__ import annotations

import logging
import mmap
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from kvstore.sdk import Client
from kvstore.sdk.base import Op, Rpc
from kvstore.sdk.core import LEASE_SAFETY
from lmcache.utils import get_size_bytes
from lmcache.v1.memory_management import (
    MemoryAllocatorInterface,
    MemoryFormat,
    MemoryObj,
    MemoryObjMetadata,
    TensorMemoryObj,
)

from kvstore.errors import KVStoreError
from kvstore.v1 import kvstore_pb2 as pb

log = logging.getLogger("kvstore.integrations.lmcache")


@dataclass(slots=True)
class _Lease:
    id: int
    fresh_until: float  # time.monotonic(): no slot of it is handed out after this
    ends_at: float  # time.monotonic(): the server may have reused its uncommitted slots by now
    left: int = 0  # slots not committed yet (pooled, handed out, or dropped as stale)
    out: int = 0  # slots handed out and neither committed nor given back


@dataclass(frozen=True, slots=True)
class Layout:
    """What a buffer holds, as LMCache's chunk metadata names it."""

    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    fmt: MemoryFormat


@dataclass(slots=True)
class _Slot:
    lease: _Lease
    index: int  # in the lease's ReserveResponse.slots
    view: memoryview
    layout: Layout | None = None  # while handed out


@dataclass(frozen=True, slots=True)
class Written:
    """A store buffer of LMCache's that lies in a kvstore slot: what CommitSlots names."""

    lease_id: int
    slot: int
    layout: Layout  # known here, so a put need not ask LMCache's buffer (each getter takes its lock)


class SlotBuffers(MemoryAllocatorInterface):
    """The parent allocator of slot-backed buffers; `allocate`/`batched_allocate` stand in for
    LMCache's LocalCPUBackend methods of the same names (the originals serve the rest)."""

    def __init__(
        self,
        client: Client,
        namespace: str,
        chunk_bytes: int,
        pool_chunks: int,
        allocate: Callable[..., MemoryObj | None],
        batched_allocate: Callable[..., list[MemoryObj] | None],
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.chunk_bytes = chunk_bytes
        self.pool_chunks = max(1, pool_chunks)
        self.lmcache_allocate = allocate  # LMCache's own, for what slots do not serve
        self.lmcache_batched_allocate = batched_allocate
        self._lock = threading.Lock()
        self._pool: deque[_Slot] = deque()
        self._given: dict[int, _Slot] = {}  # id(memory obj) -> its slot, until committed or freed
        self._leases: dict[int, _Lease] = {}  # leases with slots in the pool or handed out
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._refill_loop, name="kvstore-lmcache-slots", daemon=True)
        self._thread.start()
        self._wake.set()

    # ------------------------------------------------------------------ LocalCPUBackend's methods

    def allocate(
        self,
        shapes: torch.Size | list[torch.Size],
        dtypes: torch.dtype | list[torch.dtype],
        fmt: MemoryFormat | None = None,
        eviction: bool = True,
        busy_loop: bool = True,
    ) -> MemoryObj | None:
        objs = self._from_slots(shapes, dtypes, 1, fmt)
        if objs:
            return objs[0]
        return self.lmcache_allocate(shapes, dtypes, fmt, eviction=eviction, busy_loop=busy_loop)

    def batched_allocate(
        self,
        shapes: torch.Size | list[torch.Size],
        dtypes: torch.dtype | list[torch.dtype],
        batch_size: int,
        fmt: MemoryFormat | None = None,
        eviction: bool = True,
        busy_loop: bool = True,
    ) -> list[MemoryObj] | None:
        objs = self._from_slots(shapes, dtypes, batch_size, fmt)
        if len(objs) == batch_size:
            return objs
        rest = self.lmcache_batched_allocate(
            shapes, dtypes, batch_size - len(objs), fmt, eviction=eviction, busy_loop=busy_loop
        )
        if rest is None:
            for obj in objs:
                obj.ref_count_down()
            return None
        return objs + rest

    # ------------------------------------------------------------------ the plugin's side

    def written(self, memory_objs: Sequence[MemoryObj]) -> list[Written | None]:
        """Where each buffer LMCache hands to put lies, for those in our slots still uncommitted."""
        with self._lock:
            slots = [self._given.get(id(obj)) for obj in memory_objs]
        return [
            None if slot is None or slot.layout is None else Written(slot.lease.id, slot.index, slot.layout)
            for slot in slots
        ]

    def settled(self, memory_objs: Sequence[MemoryObj], committed: bool) -> None:
        """A put of these buffers returned: their slots are kvstore's blocks now (`committed`), or
        the CommitSlots failed and might still have been applied. Either way a slot handed to a
        put never goes back to the pool (it could be a stored block); an uncommitted one is freed
        with its lease."""
        with self._lock:
            for obj in memory_objs:
                slot = self._given.pop(id(obj), None)
                if slot is None:
                    continue
                slot.lease.out -= 1
                if committed:
                    slot.lease.left -= 1
                    if slot.lease.left == 0:  # all committed: the server closed the lease
                        self._leases.pop(slot.lease.id, None)
        self._wake.set()  # in-flight buffers are settled: the pool may refill

    def pooled(self) -> int:
        with self._lock:
            return len(self._pool)

    def handed_out(self) -> int:
        with self._lock:
            return len(self._given)

    # ------------------------------------------------------------------ MemoryAllocatorInterface

    def free(self, memory_obj: MemoryObj, allocator_type: str | None = None) -> None:
        """LMCache freed a buffer: one never committed goes back to the pool while its lease is fresh."""
        with self._lock:
            slot = self._given.pop(id(memory_obj), None)
            if slot is not None:
                slot.lease.out -= 1
                if time.monotonic() < slot.lease.fresh_until:
                    self._pool.appendleft(slot)
        # The slot is kvstore's (a block) or back in the pool: this view must not be used again.
        if isinstance(memory_obj, TensorMemoryObj):
            memory_obj.invalidate()

    def batched_free(
        self, memory_objs: list[MemoryObj], allocator_type: str | None = None, update_stats: bool = True
    ) -> None:
        for obj in memory_objs:
            self.free(obj)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            leases = [lease.id for lease in self._leases.values()]
            self._pool.clear()
            self._leases.clear()
        for lease_id in leases:
            self._release(lease_id)

    # ------------------------------------------------------------------ slots

    def _from_slots(
        self,
        shapes: torch.Size | list[torch.Size],
        dtypes: torch.dtype | list[torch.dtype],
        n: int,
        fmt: MemoryFormat | None,
    ) -> list[MemoryObj]:
        """Up to `n` buffers on slots; none for anything but full chunks of a known format."""
        shapes = [shapes] if isinstance(shapes, torch.Size) else list(shapes)
        dtypes = [dtypes] if isinstance(dtypes, torch.dtype) else list(dtypes)
        if fmt is None or self._closed or get_size_bytes(shapes, dtypes) != self.chunk_bytes:
            return []
        slots = self._take(n)
        if len(slots) < n:
            slots += self._take(n - len(slots), reserve=n - len(slots))  # the pool refills itself
        objs: list[MemoryObj] = []
        given: dict[int, _Slot] = {}
        layout = Layout(tuple(shapes), tuple(dtypes), fmt)
        for slot in slots:
            slot.layout = layout
            obj = TensorMemoryObj(
                raw_data=torch.frombuffer(slot.view, dtype=torch.uint8),
                metadata=MemoryObjMetadata(
                    shapes[0], dtypes[0], 0, self.chunk_bytes, 1, 0, fmt, shapes=shapes, dtypes=dtypes
                ),
                parent_allocator=self,
            )
            objs.append(obj)
            given[id(obj)] = slot
        with self._lock:
            self._given.update(given)
        return objs

    def _take(self, n: int, reserve: int = 0) -> list[_Slot]:
        """Up to `n` fresh slots from the pool (after reserving `reserve` more, when asked)."""
        if reserve:
            self._reserve(reserve)
        now = time.monotonic()
        out: list[_Slot] = []
        with self._lock:
            while self._pool and len(out) < n:
                slot = self._pool.popleft()
                if now < slot.lease.fresh_until:
                    slot.lease.out += 1
                    out.append(slot)
            low = len(self._pool) < self.pool_chunks // 2 + 1
        if low:
            self._wake.set()
        return out

    def _reserve(self, count: int, refill: bool = False) -> None:
        """One Reserve of up to `count` anonymous slots into the pool; nothing on failure (LMCache's
        own buffers serve meanwhile)."""
        try:
            self.client._run(self._reserve_op(count, refill))
        except (KVStoreError, ValueError) as exc:
            log.debug("kvstore: reserving %d store buffers failed (LMCache's own serve): %s", count, exc)

    def _reserve_op(self, count: int, refill: bool) -> Op[None]:
        segments = yield from self.client._shared()
        if segments is None:
            return
        # Reserved slots cannot be pushed down to make room for stored blocks: the pool holds at
        # most a quarter of kvstore's shared memory, and with the buffers in use at most half.
        room = segments.capacity // self.chunk_bytes
        with self._lock:
            if refill:
                count = min(count, room // 4) - len(self._pool)
            else:
                count = min(count, room // 2 - len(self._pool) - len(self._given))
        if count < 1:
            return
        started = time.monotonic()
        reply = yield Rpc("Reserve", pb.ReserveRequest(namespace=self.namespace, count=count))
        if not reply.lease_id or (yield from self.client._stale(segments, reply)):
            return
        lease = _Lease(
            reply.lease_id,
            started + reply.expires_in_s * LEASE_SAFETY,
            started + reply.expires_in_s,
        )
        slots = [
            _Slot(lease, i, segments.view(s.segment, s.offset, s.size))
            for i, s in enumerate(reply.slots)
            if s.state == pb.SLOT_WRITE
        ]
        lease.left = len(slots)
        if refill:
            # Map the slots' pages in this process now, off LMCache's path (LMCache's own pool is
            # touched when it is allocated): else the engine's copy into a slot first takes a page
            # fault per 4 KiB of a mapping that never touched them, which halves its speed.
            for slot in slots:
                torch.frombuffer(slot.view, dtype=torch.uint8)[:: mmap.PAGESIZE].sum()
        with self._lock:
            self._leases[lease.id] = lease
            self._pool.extend(slots)

    def _release(self, lease_id: int) -> None:
        try:
            self.client._run(self._release_op(lease_id))
        except (KVStoreError, ValueError) as exc:
            log.debug("release of kvstore write lease %d failed (it expires on its own): %s", lease_id, exc)

    def _release_op(self, lease_id: int) -> Op[None]:
        yield Rpc("Release", pb.LeaseRequest(lease_id=lease_id))

    def _refill_loop(self) -> None:
        """Keeps the pool at least half full, and gives back leases past their fresh half."""
        while not self._closed:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._closed:
                return
            for lease_id in self._stale_leases():
                self._release(lease_id)
            with self._lock:
                short = len(self._pool) <= self.pool_chunks // 2
            if short:
                self._reserve(self.pool_chunks, refill=True)

    def _stale_leases(self) -> list[int]:
        """Leases no slot may be handed out from any more, and with none out: drop their pooled
        slots (release frees them server-side; committed ones are kvstore's already)."""
        now = time.monotonic()
        with self._lock:
            stale = [
                lease
                for lease in self._leases.values()
                if now >= lease.fresh_until and (lease.out == 0 or now >= lease.ends_at)
            ]
            if not stale:
                return []
            gone = {lease.id for lease in stale}
            self._pool = deque(s for s in self._pool if s.lease.id not in gone)
            for lease_id in gone:
                del self._leases[lease_id]
        return sorted(gone)
