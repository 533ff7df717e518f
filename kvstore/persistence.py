"""What survives a restart: the disk tier's blocks are indexed again at start (`recover`), and
memory tiers are flushed to disk at shutdown when configured (`flush`)."""

from __future__ import annotations

import logging
import time

from kvstore.placement import Moved
from kvstore.store import Store
from kvstore.tiers.disk import DiskTier

log = logging.getLogger(__name__)


def disk_tier(store: Store) -> DiskTier | None:
    return next((t for t in store.tiers if isinstance(t, DiskTier)), None)


def recover(store: Store) -> int:
    """Index the blocks the disk tier holds from an earlier run; returns how many. Files of the
    wrong size or of keys indexed already are removed; those of unconfigured namespaces kept."""
    disk = disk_tier(store)
    if disk is None:
        return 0
    wall_now, now = time.time(), store.clock.now()
    found = sorted(disk.scan(), key=lambda e: e.last_use)
    recovered = 0
    with store.lock:
        for entry in found:
            ns = store.namespaces.get(entry.namespace)
            if ns is None:
                log.warning("keeping block file of unconfigured namespace %r unindexed", entry.namespace)
                continue
            if entry.size != ns.block_bytes or store.index.get(entry.namespace, entry.key) is not None:
                disk.path(entry.namespace, entry.key).unlink(missing_ok=True)
                continue
            if not disk.adopt(entry):
                continue
            store.placement.quotas.charge(entry, disk.name)
            entry.last_use = now - max(0.0, wall_now - entry.last_use)  # idle time carries over
            store.placement.add_locked(entry)
            recovered += 1
    return recovered


def flush(store: Store) -> int:
    """Move memory-tier blocks to disk (least recently used first) so a restart keeps them."""
    disk = disk_tier(store)
    if disk is None:
        return 0
    with store.lock:
        memory = sorted((e for e in store.index.entries() if e.tier != disk.name), key=lambda e: e.last_use)
    level = store.tiers.index(disk)
    return store.placement.move_many(memory, level).count(Moved.DONE)
