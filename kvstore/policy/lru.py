"""The baseline: under pressure the least recently used block moves one tier down
(hbm -> dram -> disk -> dropped)."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterator

from kvstore.index import BlockEntry
from kvstore.policy.base import Policy, PolicyView


class LRUPolicy(Policy):
    name = "lru"

    def __init__(self, view: PolicyView) -> None:
        super().__init__(view)
        # Per tier, blocks from least to most recently used.
        self._order: defaultdict[str, OrderedDict[BlockEntry, None]] = defaultdict(OrderedDict)

    def _tier(self, name: str) -> OrderedDict[BlockEntry, None]:
        return self._order[name]

    def on_insert(self, entry: BlockEntry) -> None:
        self._order[entry.tier][entry] = None

    def on_access(self, entry: BlockEntry) -> None:
        order = self._order[entry.tier]
        if entry in order:
            order.move_to_end(entry)

    def on_remove(self, entry: BlockEntry) -> None:
        self._order[entry.tier].pop(entry, None)

    def on_move(self, entry: BlockEntry, from_tier: str) -> None:
        self._order[from_tier].pop(entry, None)
        if not entry.pins:
            self._order[entry.tier][entry] = None

    # Pinned blocks leave the order while pinned, so finding a victim never walks past them.
    def on_pin(self, entry: BlockEntry) -> None:
        self._order[entry.tier].pop(entry, None)

    def on_unpin(self, entry: BlockEntry) -> None:
        self._order[entry.tier][entry] = None

    def order(self, tier: str) -> Iterator[tuple[BlockEntry, float]]:
        for entry in self._tier(tier):
            if entry.movable:
                yield entry, 0.0
