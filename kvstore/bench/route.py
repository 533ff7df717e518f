"""The replay's multi-worker pieces: a global index over the workers' stores, a shared remote tier,
and the routers that choose a worker for each request.

The global index is an in-process stand-in for the Redis layout (`kvs:{tenant}:{ns}:i:{key}` ->
{worker: tier}; DESIGN's remote tier at `kvs:{tenant}:{ns}:b:{key}`): for a prompt it answers, per
worker, how many of the prompt's leading blocks that worker holds in each tier, and blocks of the
remote tier count for every worker. It reads the workers' own indexes, so it is exact and has no
publish lag (the live index flushes every ~100 ms; the traces' gaps are seconds). The `cost` router
ranks with `kvstore.routing.rank`, the very function `Admin.Route` uses.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from kvstore.routing import RouteCost, WorkerView, rank
from kvstore.store import Store

ROUTERS = ("round-robin", "cache-only", "cost")
REMOTE = "remote"


class RoutedWorker(Protocol):
    index: int
    store: Store

    def load(self, now: float) -> float: ...


class RemoteTier:
    """A byte budget shared by every worker, LRU over the blocks it holds (kvstore enforces the
    remote tier's capacity itself, not Redis). Blocks arrive by write-through after a put."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.blocks: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self.read_bytes = 0

    def prefix(self, namespace: str, keys: Sequence[bytes], start: int) -> int:
        """How many blocks from `keys[start]` on it holds in a row."""
        n = start
        while n < len(keys) and (namespace, keys[n]) in self.blocks:
            n += 1
        return n - start

    def read(self, namespace: str, keys: Sequence[bytes], size: int) -> None:
        for key in keys:
            self.blocks.move_to_end((namespace, key))
        self.read_bytes += len(keys) * size

    def write(self, namespace: str, keys: Sequence[bytes], size: int) -> None:
        if size > self.capacity:
            return
        for key in keys:
            if (namespace, key) in self.blocks:
                self.blocks.move_to_end((namespace, key))
                continue
            while self.used + size > self.capacity:
                _, dropped = self.blocks.popitem(last=False)
                self.used -= dropped
            self.blocks[(namespace, key)] = size
            self.used += size


class GlobalIndex:
    """Which worker holds which of a prompt's leading blocks in which tier (module doc)."""

    def __init__(self, workers: Sequence[RoutedWorker], remote: RemoteTier | None) -> None:
        self.workers = workers
        self.remote = remote

    def view(self, worker: RoutedWorker, namespace: str, keys: Sequence[bytes], now: float) -> WorkerView:
        match = worker.store.index.longest_prefix(namespace, keys)
        tiers = dict(match.blocks_per_tier)
        if self.remote is not None and (more := self.remote.prefix(namespace, keys, match.blocks)):
            tiers[REMOTE] = more
        name = f"w{worker.index:03d}"
        return WorkerView(name, name, tiers, worker.load(now))

    def views(self, namespace: str, keys: Sequence[bytes], now: float) -> list[WorkerView]:
        return [self.view(w, namespace, keys, now) for w in self.workers]


Router = Callable[[str, Sequence[bytes], int, int, float], int]


def make_router(name: str, index: GlobalIndex, cost: RouteCost | None = None) -> Router:
    """A function (namespace, keys, prompt_tokens, block_tokens, now) -> the chosen worker's index."""
    if name == "round-robin":
        turn = itertools.count()
        return lambda ns, keys, tokens, bt, now: next(turn) % len(index.workers)
    if name == "cache-only":

        def most_cached(ns: str, keys: Sequence[bytes], tokens: int, bt: int, now: float) -> int:
            views = index.views(ns, keys, now)
            return max(range(len(views)), key=lambda i: (views[i].cached_blocks, -i))

        return most_cached
    if name == "cost":
        order = {f"w{w.index:03d}": w.index for w in index.workers}

        def cheapest(ns: str, keys: Sequence[bytes], tokens: int, bt: int, now: float) -> int:
            return order[rank(index.views(ns, keys, now), tokens, bt, cost)[0].view.worker]

        return cheapest
    raise ValueError(f"unknown router {name!r}; choose from {', '.join(ROUTERS)}")
