"""The `remote` tier: blocks in Redis (standalone or Cluster), shared by every worker of a deployment.

It is not one of the store's local tiers (those are per worker and indexed here); the store asks it
after its own tiers: a Lookup extends the local prefix with the blocks Redis holds, a Get reads
what the local tiers miss. Nothing here runs under the store's lock, and writes never run on the
caller's thread: `offer` puts a block on a bounded queue (full: the block is dropped and counted)
and the writer thread sends it, so a put or an eviction never waits on the network.

Blocks arrive by write-through (every new block after its put, read back from its local tier by
the writer) or by demotion (a block leaving the bottom local tier, its bytes handed over). Values
are checked on read (kvstore.tiers.redis_layout); a bad one is a miss and is deleted. Capacity is
kvstore's, not Redis's eviction: this worker counts the bytes it wrote and deletes its least
recently used blocks past `capacity` (a per-worker share of Redis's memory).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.hashing import Namespace
from kvstore.tiers.redis_layout import BadValue, RemoteBlock, block_key, decode, encode
from kvstore.tiers.redis_link import RedisLink

log = logging.getLogger(__name__)

BATCH_BYTES = 16 * 2**20  # one pipeline carries about this much
SEEN_MAX = 65_536
# A local block for write-through: (parent, meta, bytes), or None when it is gone meanwhile.
LocalRead = Callable[[str, bytes], "tuple[bytes | None, bytes, bytes] | None"]


@dataclass(slots=True)
class _Pending:
    namespace: str
    key: bytes
    parent: bytes | None = None
    meta: bytes = b""
    data: Any = None  # None: read it from the local tiers when its turn comes


@dataclass(slots=True)
class RemoteStats:
    up: bool
    capacity: int
    used: int
    blocks: int
    hits: int
    misses: int
    corrupt: int
    writes: int
    written_bytes: int
    dropped_writes: int
    evictions: int
    queued: int
    episodes: int
    errors: int


class RemoteTier:
    name = "remote"

    def __init__(
        self,
        link: RedisLink,
        namespaces: Mapping[str, Namespace],
        capacity: int,
        write_through: bool,
        read_local: LocalRead,
        queue_bytes: int = 256 * 2**20,
        queue_blocks: int = 8192,
        tenant_caps: Mapping[str, int] | None = None,
    ) -> None:
        self.link = link
        self.namespaces = namespaces
        self.capacity = capacity
        # Per tenant (`tenants.<name>.max_bytes.remote`): past its cap a tenant's own blocks go
        # first, so one tenant's writes never push another's out of this worker's share.
        self.tenant_caps = dict(tenant_caps or {})
        self._tenant_of_key: dict[str, str] = {}  # redis key -> tenant, for what this worker wrote
        self._used_by: collections.Counter[str] = collections.Counter()
        self.write_through = write_through
        self._read_local = read_local
        self._queue_bytes = queue_bytes
        self._queue_blocks = queue_blocks
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # the writer is sending a batch
        # What this worker wrote, least recently used first: redis key -> bytes (its capacity share).
        self._known: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._used = 0
        # Blocks lately read from Redis (another worker's): not sent back when they land here.
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.hits = self.misses = self.corrupt = self.writes = self.written_bytes = 0
        self.dropped_writes = self.evictions = 0
        self._writer = threading.Thread(target=self._run_writer, name="kvstore-remote-writer", daemon=True)

    def start(self) -> None:
        self._writer.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer.is_alive():
            self._writer.join(timeout=5)

    # ------------------------------------------------------------------ reads (callers' threads)

    def prefix(self, namespace: str, keys: Sequence[bytes]) -> int:
        """How many leading `keys` Redis holds (one round trip; 0 while Redis is down)."""
        if not keys:
            return 0
        ns = self.namespaces[namespace]

        def exists(client: Any) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(block_key(ns, key))
            return pipe.execute()

        found = self.link.call(exists, [])
        n = 0
        while n < len(found) and found[n]:
            n += 1
        return n

    def fetch(self, namespace: str, keys: Sequence[bytes]) -> list[RemoteBlock | None]:
        """The blocks of `keys` (None where Redis has none, or a bad value, which is deleted)."""
        if not keys:
            return []
        ns = self.namespaces[namespace]
        names = [block_key(ns, key) for key in keys]

        def get(client: Any) -> list[bytes | None]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
            return pipe.execute()

        raws = self.link.call(get, [None] * len(keys))
        out: list[RemoteBlock | None] = []
        bad: list[str] = []
        for name, raw in zip(names, raws, strict=True):
            block = None
            if raw is not None:
                try:
                    block = decode(raw, ns.block_bytes)
                except BadValue as exc:
                    log.warning("remote block %s is unusable (%s): deleted, not served", name, exc)
                    bad.append(name)
            out.append(block)
        with self._cond:
            self.corrupt += len(bad)
            for name, block in zip(names, out, strict=True):
                if block is None:
                    self.misses += 1
                else:
                    self.hits += 1
                    if name in self._known:
                        self._known.move_to_end(name)
                    self._seen[name] = None
                    self._seen.move_to_end(name)
                    if len(self._seen) > SEEN_MAX:
                        self._seen.popitem(last=False)
            for name in bad:
                self._forget(name)
        if bad:
            self.link.call(lambda c: _send(c, {}, bad), False)
        return out

    def delete(self, namespace: str, keys: Sequence[bytes]) -> None:
        """Delete blocks from Redis (a Delete of the store, a write taken back); while Redis is
        down, nothing happens. Writes of them still queued are dropped, and a batch being sent is
        waited out (at most `timeout_s`), so no queued write brings a deleted block back."""
        ns = self.namespaces[namespace]
        names = [block_key(ns, key) for key in keys]
        gone = set(keys)
        with self._cond:
            kept: collections.deque[_Pending] = collections.deque()
            for item in self._queue:
                if item.namespace != namespace or item.key not in gone:
                    kept.append(item)
                elif item.data is not None:  # its bytes no longer count against the queue's bound
                    self._queued_bytes -= ns.block_bytes
            self._queue = kept
            self._cond.wait_for(lambda: not self._busy, self.link.timeout_s)
            for name in names:
                self._forget(name)
                self._seen.pop(name, None)
        self.link.call(lambda c: _send(c, {}, names), False)

    # ------------------------------------------------------------------ writes (queued)

    def offer(
        self, namespace: str, key: bytes, parent: bytes | None = None, meta: bytes = b"", data: Any = None
    ) -> bool:
        """Queue a block for Redis without waiting: its bytes (`data`, a demotion) or, None, read from
        the local tiers by the writer (write-through). While Redis is down blocks wait here, within
        the queue's bounds; past them a block is dropped and counted (False)."""
        size = self.namespaces[namespace].block_bytes if data is not None else 0
        with self._cond:
            full = len(self._queue) >= self._queue_blocks or self._queued_bytes + size > self._queue_bytes
            if self._closed or full:
                self.dropped_writes += 1
                return False
            self._queue.append(_Pending(namespace, key, parent, meta, data))
            self._queued_bytes += size
            self._cond.notify()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue is empty (tests, benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run_writer(self) -> None:
        while True:
            with self._cond:
                # While Redis is down the queue holds (link.up is polled: the link does not notify).
                if not self._cond.wait_for(lambda: (self._queue and self.link.up) or self._closed, 0.2):
                    continue
                if self._closed:
                    return
                batch, nbytes = [], 0
                while self._queue and nbytes < BATCH_BYTES:
                    item = self._queue.popleft()
                    if item.data is not None:
                        self._queued_bytes -= self.namespaces[item.namespace].block_bytes
                    batch.append(item)
                    nbytes += self.namespaces[item.namespace].block_bytes
                self._busy = True
            try:
                self._write(batch)
            except Exception:  # a bug must not stop the writer for good
                log.exception("remote writer failed on a batch of %d blocks", len(batch))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: list[_Pending]) -> None:
        values: dict[str, bytes] = {}
        sizes: dict[str, int] = {}
        tenants: dict[str, str] = {}
        sending: list[_Pending] = []
        for item in batch:
            ns = self.namespaces[item.namespace]
            name = block_key(ns, item.key)
            with self._cond:
                if name in self._known:  # written already (write-through, then demoted)
                    self._known.move_to_end(name)
                    continue
                if name in self._seen:  # read from Redis: it is there already
                    continue
            if item.data is None:
                local = self._read_local(item.namespace, item.key)
                if local is None:
                    continue  # gone from the local tiers before its turn: nothing to send
                item.parent, item.meta, item.data = local
            values[name] = encode(item.parent, item.meta, item.data)
            sizes[name] = ns.block_bytes
            tenants[name] = ns.tenant
            sending.append(item)
        if not values:
            return
        sent = self.link.call(lambda c: _send(c, values, ()), False)
        with self._cond:
            if not sent:  # Redis went away under this batch: it waits in the queue, within bounds
                for item in reversed(sending):
                    if not self._requeue_locked(item):
                        self.dropped_writes += 1
                return
            for name, size in sizes.items():
                self._known[name] = size
                self._used += size
                tenant = tenants[name]
                self._tenant_of_key[name] = tenant
                self._used_by[tenant] += size
                self.writes += 1
                self.written_bytes += size
            victims = self._victims_locked()
        if victims:  # a failed delete leaves them in Redis, out of our count: Redis stays bounded
            self.link.call(lambda c: _send(c, {}, victims), False)

    def _requeue_locked(self, item: _Pending) -> bool:
        size = self.namespaces[item.namespace].block_bytes
        if len(self._queue) >= self._queue_blocks or self._queued_bytes + size > self._queue_bytes:
            return False
        self._queue.appendleft(item)
        self._queued_bytes += size
        return True

    def _victims_locked(self) -> list[str]:
        """This worker's least recently used blocks to delete to get back within capacity: first
        those of tenants past their own cap, then anyone's."""
        victims = []
        for tenant, cap in self.tenant_caps.items():
            if self._used_by[tenant] <= cap:
                continue
            for name in [n for n in self._known if self._tenant_of_key.get(n) == tenant]:
                if self._used_by[tenant] <= cap:
                    break
                victims.append(name)
                self._forget(name)
                self.evictions += 1
        while self._known and self._used > self.capacity:
            name = next(iter(self._known))
            victims.append(name)
            self._forget(name)
            self.evictions += 1
        return victims

    def _forget(self, name: str) -> None:
        size = self._known.pop(name, None)
        if size is not None:
            self._used -= size
            self._used_by[self._tenant_of_key.pop(name, "")] -= size

    # ------------------------------------------------------------------ operators

    def stats(self) -> RemoteStats:
        with self._cond:
            return RemoteStats(
                self.link.up,
                self.capacity,
                self._used,
                len(self._known),
                self.hits,
                self.misses,
                self.corrupt,
                self.writes,
                self.written_bytes,
                self.dropped_writes,
                self.evictions,
                len(self._queue),
                self.link.episodes,
                self.link.errors,
            )


def _send(client: Any, values: Mapping[str, bytes], victims: Sequence[str]) -> bool:
    pipe = client.pipeline(transaction=False)
    for name in victims:
        pipe.delete(name)
    for name, value in values.items():
        pipe.set(name, value)
    pipe.execute()
    return True
