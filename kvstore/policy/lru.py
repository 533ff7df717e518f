"""The baseline: under pressure the least recently used block moves one tier down
(hbm -> dram -> disk -> dropped)."""

from __future__ import annotations

from collections import OrderedDict

from kvstore.index import BlockEntry
from kvstore.policy.base import Policy


class LRUPolicy(Policy):
    name = "lru"

    def __init__(self) -> None:
        # Per tier, blocks from least to most recently used.
        self._order: dict[str, OrderedDict[BlockEntry, None]] = {}

    def _tier(self, name: str) -> OrderedDict[BlockEntry, None]:
        order = self._order.get(name)
        if order is None:
            order = self._order[name] = OrderedDict()
        return order

    def on_insert(self, entry: BlockEntry) -> None:
        self._tier(entry.tier)[entry] = None

    def on_access(self, entry: BlockEntry) -> None:
        order = self._tier(entry.tier)
        if entry in order:
            order.move_to_end(entry)

    def on_remove(self, entry: BlockEntry) -> None:
        self._tier(entry.tier).pop(entry, None)

    def on_move(self, entry: BlockEntry, from_tier: str) -> None:
        self._tier(from_tier).pop(entry, None)
        if not entry.pins:
            self._tier(entry.tier)[entry] = None

    # Pinned blocks leave the order while pinned, so finding a victim never walks past them.
    def on_pin(self, entry: BlockEntry) -> None:
        self._tier(entry.tier).pop(entry, None)

    def on_unpin(self, entry: BlockEntry) -> None:
        self._tier(entry.tier)[entry] = None

    def victim(self, tier: str, sooner_than: float | None = None) -> BlockEntry | None:
        for entry in self._tier(tier):
            if entry.movable:
                return entry
        return None
