"""Chunks handed to LMCache as views of kvstore's shared-memory slots, under one read lease per batch.

Why: copying a chunk out of its slot into an LMCache buffer is a full extra memcpy per chunk that
LMCache's own CPU backend never pays (its get hands back the buffer it holds). Here a batched get
is one `Acquire` RPC; each full chunk found in shared memory becomes a `TensorMemoryObj` over its
slot, and the lease's `Release` is sent by a background thread once LMCache has freed every chunk
of the batch (ref count down to 0), off LMCache's retrieve path.

While the lease is held kvstore neither moves, evicts nor frees those slots. A lease lives
`lease_ttl_s` (30 s by default); LMCache frees a retrieved chunk as soon as it has copied it to the
GPU, so that is ample. A chunk that LMCache would keep (its own CPU cache, `local_cpu: true`, keeps
what a remote backend returned) must not be a slot view: the connector copies then instead.

This uses the SDK's sans-I/O pieces (`Rpc`, `Client._run`, `Client._shared`) rather than a new public
SDK method: the lease outlives one call here, which the public `fetch` deliberately never allows.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import torch
from kvstore.sdk import Client
from kvstore.sdk.base import Op, Rpc
from kvstore.sdk.shm import Segments
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


class _Batch:
    """One read lease and how many of its chunks LMCache still holds."""

    __slots__ = ("lease_id", "outstanding")

    def __init__(self, lease_id: int, outstanding: int) -> None:
        self.lease_id = lease_id
        self.outstanding = outstanding


class SlotLeases(MemoryAllocatorInterface):
    """The 'allocator' of slot-view chunks: it allocates nothing; its `free` (called by LMCache's
    `ref_count_down` at 0, or by the object's `__del__`) counts a batch's chunks back and queues the
    lease's Release when the last one is freed."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._batch_of: dict[int, _Batch] = {}  # id(memory obj) -> its batch
        self._releases: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._pending = 0  # leases queued or being released (tests wait for 0)
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(
            target=self._release_loop, name="kvstore-lmcache-release", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ reading

    def segments(self) -> Segments | None:
        return self.client._run(self.client._shared())

    def acquire(
        self, segments: Segments, namespace: str, keys: Sequence[bytes], session: str | None
    ) -> pb.AcquireResponse | None:
        """One Acquire for the batch; None when the server's segments are not the ones mapped
        (it restarted: the lease is given back and the caller reads over gRPC)."""
        return self.client._run(self._acquire(segments, namespace, keys, session))

    def _acquire(
        self, segments: Segments, namespace: str, keys: Sequence[bytes], session: str | None
    ) -> Op[pb.AcquireResponse | None]:
        request = pb.AcquireRequest(namespace=namespace, keys=list(keys), session=session or "")
        reply = yield Rpc("Acquire", request)
        if (yield from self.client._stale(segments, reply)):
            return None
        return reply

    def wrap(
        self,
        lease_id: int,
        views: Sequence[memoryview],
        shapes: list[torch.Size],
        dtypes: list[torch.dtype],
        fmt: MemoryFormat,
    ) -> list[MemoryObj]:
        """LMCache chunks over `views` (slots of lease `lease_id`); the lease is released when all
        are freed. With no views the lease is released now."""
        if not views:
            self.release(lease_id)
            return []
        objs: list[MemoryObj] = [
            TensorMemoryObj(
                raw_data=torch.frombuffer(view, dtype=torch.uint8),
                metadata=MemoryObjMetadata(
                    shapes[0], dtypes[0], 0, len(view), 1, 0, fmt, shapes=list(shapes), dtypes=list(dtypes)
                ),
                parent_allocator=self,
            )
            for view in views
        ]
        batch = _Batch(lease_id, len(objs))
        with self._lock:
            for obj in objs:
                self._batch_of[id(obj)] = batch
        return objs

    # ------------------------------------------------------------------ freeing

    def free(self, memory_obj: MemoryObj, allocator_type: str | None = None) -> None:
        with self._lock:
            batch = self._batch_of.pop(id(memory_obj), None)
            if batch is None:  # freed already (ref_count_down, then __del__)
                return
            batch.outstanding -= 1
            done = batch.outstanding == 0
        # No use after free: its slot may be reused once the lease is released.
        if isinstance(memory_obj, TensorMemoryObj):
            memory_obj.invalidate()
        if done:
            self.release(batch.lease_id)

    def batched_free(
        self, memory_objs: list[MemoryObj], allocator_type: str | None = None, update_stats: bool = True
    ) -> None:
        for obj in memory_objs:
            self.free(obj)

    def release(self, lease_id: int) -> None:
        with self._lock:
            self._pending += 1
        self._releases.put(lease_id)

    def _release_loop(self) -> None:
        while (lease_id := self._releases.get()) is not None:
            try:
                valid = self.client._run(self._release(lease_id))
                if not valid:
                    log.warning(
                        "kvstore read lease %d ended before LMCache freed its chunks (held longer "
                        "than the server's lease_ttl_s): what LMCache read from them may be stale",
                        lease_id,
                    )
            except (KVStoreError, ValueError) as exc:
                log.debug("release of kvstore lease %d failed (it expires on its own): %s", lease_id, exc)
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def _release(self, lease_id: int) -> Op[bool]:
        return (yield Rpc("Release", pb.LeaseRequest(lease_id=lease_id))).valid

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every queued Release was sent (close, tests)."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def held(self) -> int:
        """Chunks handed out and not freed yet."""
        with self._lock:
            return len(self._batch_of)

    def close(self) -> None:
        self.wait_idle()
        self._releases.put(None)
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ not an allocator

    def allocate(self, shapes: Any, dtypes: Any, fmt: Any = None, allocator_type: Any = None) -> Any:
        raise NotImplementedError("slot views are made by the kvstore connector, not allocated")

    def batched_allocate(
        self, shapes: Any, dtypes: Any, batch_size: int, fmt: Any = None, allocator_type: Any = None
    ) -> Any:
        raise NotImplementedError("slot views are made by the kvstore connector, not allocated")
