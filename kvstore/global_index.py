"""The global prefix index: which worker holds which block in which local tier, kept in Redis.

Each worker publishes its own changes (block now in tier T, block gone) from the store's hooks:
`changed` only appends to a bounded queue under the store's lock; the publisher thread sends them
batched (every FLUSH_S or FLUSH_CHANGES, one pipeline). An overflowing queue is dropped whole and
a full re-publish of what the worker holds is scheduled instead; so is one after every reconnect,
and one every REFRESH_S, which keeps the index keys' TTL from running out under blocks that stay.
The same thread heartbeats the worker record (address, load) and probes a Redis that is down.

Readers (`read_views`) treat the index as a hint: an entry of a worker whose record expired is
ignored, and the worker a request is routed to verifies with its own Lookup. An entry's value is
`tier|unix time of its publish`: Redis expires whole hashes, not fields, so a field whose removal
was lost (a queue dropped in an outage) would live as long as other workers refresh its key;
readers ignore fields older than INDEX_TTL_S instead (live ones are re-published every REFRESH_S).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kvstore.hashing import Namespace
from kvstore.index import Index
from kvstore.routing import WorkerView
from kvstore.tiers.redis_layout import (
    HEARTBEAT_S,
    INDEX_TTL_S,
    WORKER_TTL_S,
    WORKERS,
    block_key,
    index_key,
    worker_key,
)
from kvstore.tiers.redis_link import RedisLink

log = logging.getLogger(__name__)

FLUSH_S = 0.1
FLUSH_CHANGES = 512
MAX_QUEUED = 65_536  # changes waiting; past it the queue is dropped and everything re-published
REFRESH_S = INDEX_TTL_S / 3
FORGET_WORKERS_S = 3600.0  # workers gone this long leave the `kvs:workers` set


class IndexPublisher:
    def __init__(
        self,
        link: RedisLink,
        lock: threading.Lock,
        index: Index,
        namespaces: Mapping[str, Namespace],
        worker_id: str,
        address: str,
        load: Callable[[], float],
    ) -> None:
        self.link = link
        self.worker_id = worker_id
        self.address = address
        self._store_lock = lock
        self._index = index
        self._namespaces = namespaces
        self._load = load
        self._changes: collections.deque[tuple[str, bytes, str | None]] = collections.deque()
        self._full = True  # publish everything first
        self._next_refresh = time.monotonic() + REFRESH_S
        self._next_beat = 0.0
        self._stop = threading.Event()
        self.published = self.dropped = self.republished = 0
        self._thread = threading.Thread(target=self._run, name="kvstore-index", daemon=True)
        link.on_reconnect.append(self._schedule_full)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop, and leave the deployment: routers stop naming this worker at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        leave = [("delete", worker_key(self.worker_id)), ("zrem", WORKERS, self.worker_id)]
        self.link.call(lambda c: _pipeline(c, leave), None)

    # ------------------------------------------------------------------ store hooks (lock held)

    def changed(self, namespace: str, key: bytes, tier: str | None) -> None:
        """A block now lives in `tier` (None: gone). Called under the store's lock: O(1)."""
        if self._full:
            return  # the next full publish reads the index as it is then
        if len(self._changes) >= MAX_QUEUED:
            self._changes.clear()
            self._full = True
            self.dropped += 1
            return
        self._changes.append((namespace, key, tier))

    def _schedule_full(self) -> None:
        with self._store_lock:
            self._changes.clear()
            self._full = True
        self._next_beat = 0.0  # a restarted Redis lost the worker record too

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            try:
                self._tick()
            except Exception:  # a bug must not stop publishing for good
                log.exception("publishing the global index failed")

    def _tick(self) -> None:
        if not self.link.probe():
            return
        now = time.monotonic()
        if now >= self._next_beat:
            self._heartbeat()
            self._next_beat = now + HEARTBEAT_S
        if now >= self._next_refresh:
            self._schedule_full()
        if self._full:
            self._publish_all()
            return
        while self._changes and self.link.up:
            batch = [self._changes.popleft() for _ in range(min(FLUSH_CHANGES, len(self._changes)))]
            self._send(batch)

    def _heartbeat(self) -> None:
        now = time.time()
        record = {"address": self.address, "load": self._load(), "updated": now}
        name = worker_key(self.worker_id)

        def beat(c: Any) -> None:
            pipe = c.pipeline(transaction=False)
            pipe.hset(name, mapping=record)
            pipe.expire(name, int(WORKER_TTL_S))
            pipe.zadd(WORKERS, {self.worker_id: now})
            pipe.zremrangebyscore(WORKERS, "-inf", now - FORGET_WORKERS_S)
            pipe.execute()

        self.link.call(beat, None)

    def _publish_all(self) -> None:
        """Everything this worker holds, in pipelines of FLUSH_CHANGES (changes made meanwhile queue)."""
        with self._store_lock:
            self._changes.clear()
            self._full = False
            held = [(e.namespace, e.key, e.tier) for e in self._index.entries()]
        self._next_refresh = time.monotonic() + REFRESH_S
        for start in range(0, len(held), FLUSH_CHANGES):
            if not self._send(held[start : start + FLUSH_CHANGES]):
                return  # down again: the reconnect publishes everything
        self.republished += 1

    def _send(self, changes: Sequence[tuple[str, bytes, str | None]]) -> bool:
        ops: list[tuple[Any, ...]] = []
        for namespace, key, tier in changes:
            name = index_key(self._namespaces[namespace], key)
            if tier is None:
                ops.append(("hdel", name, self.worker_id))
            else:
                ops.append(("hset", name, self.worker_id, f"{tier}|{int(time.time())}"))
                ops.append(("expire", name, INDEX_TTL_S))
        ok = self.link.call(lambda c: _pipeline(c, ops) or True, False)
        if ok:
            self.published += len(changes)
        return ok


def read_views(link: RedisLink, ns: Namespace, keys: Sequence[bytes]) -> tuple[list[WorkerView], int] | None:
    """Every live worker's view of the chain `keys` (its leading blocks per tier, a block in the
    remote tier counting for every worker, and its load), and how many leading blocks the remote
    tier holds. None when Redis is down."""

    def first(c: Any) -> list[Any]:
        pipe = c.pipeline(transaction=False)
        pipe.zrangebyscore(WORKERS, time.time() - WORKER_TTL_S, "+inf")
        for key in keys:
            pipe.hgetall(index_key(ns, key))
        for key in keys:
            pipe.exists(block_key(ns, key))
        return pipe.execute()

    replies = link.call(first, None)
    if replies is None:
        return None
    ids = [w.decode() for w in replies[0]]
    holders: list[dict[bytes, bytes]] = replies[1 : 1 + len(keys)]
    in_remote = replies[1 + len(keys) :]
    remote = 0
    while remote < len(in_remote) and in_remote[remote]:
        remote += 1

    def records(c: Any) -> list[Any]:
        pipe = c.pipeline(transaction=False)
        for worker in ids:
            pipe.hgetall(worker_key(worker))
        return pipe.execute()

    found = link.call(records, None)
    if found is None:
        return None
    views = []
    for worker, record in zip(ids, found, strict=True):
        if not record:  # expired: a dead worker's index entries are ignored
            continue
        views.append(
            WorkerView(
                worker,
                record[b"address"].decode(),
                prefix_per_tier(worker.encode(), holders, remote),
                float(record.get(b"load", 0.0)),
            )
        )
    return views, remote


def entry_tier(value: bytes | None, now: float) -> str | None:
    """The tier an index entry names, None when there is none or it is stale (see the docstring)."""
    if value is None:
        return None
    tier, _, published = value.decode().partition("|")
    if published and now - int(published) > INDEX_TTL_S:
        return None
    return tier


def prefix_per_tier(
    worker: bytes, holders: Iterable[Mapping[bytes, bytes]], remote: int, now: float | None = None
) -> dict[str, int]:
    """Leading blocks of a chain a worker can serve, per tier: its own, else the remote tier's."""
    now = time.time() if now is None else now
    out: dict[str, int] = {}
    for i, holder in enumerate(holders):
        name = entry_tier(holder.get(worker), now) or ("remote" if i < remote else None)
        if name is None:
            break
        out[name] = out.get(name, 0) + 1
    return out


def _pipeline(client: Any, ops: Iterable[tuple[Any, ...]]) -> list[Any]:
    """One pipeline of (command, *args) tuples."""
    pipe = client.pipeline(transaction=False)
    for op, *args in ops:
        getattr(pipe, op)(*args)
    return pipe.execute()
