"""A tier that only counts bytes: the benchmarks drive the real store, policy and mover on it
without holding the data (hours of traces, or a million-block index, replay in seconds)."""

from __future__ import annotations

from typing import Any

from kvstore.index import BlockEntry
from kvstore.tiers.base import ByteBudgetTier


class CountingTier(ByteBudgetTier):
    def __init__(self, name: str, capacity: int) -> None:
        super().__init__(name, capacity)
        self.device = "counting"
        self._zeros: dict[int, bytes] = {}

    def write(self, entry: BlockEntry, data: Any, non_blocking: bool = False) -> None:
        """Nothing is kept."""

    def read(self, entry: BlockEntry) -> bytes:
        zeros = self._zeros.get(entry.size)
        if zeros is None:  # one buffer per block size, not one allocation per read
            zeros = self._zeros[entry.size] = bytes(entry.size)
        return zeros
