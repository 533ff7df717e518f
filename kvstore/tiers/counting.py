"""A tier that only counts bytes: the benchmarks drive the real store, policy and mover on it
without holding the data (hours of traces, or a million-block index, replay in seconds)."""

from __future__ import annotations

from typing import Any

from kvstore.index import BlockEntry
from kvstore.tiers.base import Tier


class CountingTier(Tier):
    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.device = "counting"
        self._used = 0
        self._zeros: dict[int, bytes] = {}

    @property
    def used(self) -> int:
        return self._used

    def allocate(self, entry: BlockEntry) -> bool:
        if self._used + entry.size > self.capacity:
            return False
        self._used += entry.size
        return True

    def free(self, entry: BlockEntry) -> None:
        self._used -= entry.size

    def write(self, entry: BlockEntry, data: Any) -> None:
        """Nothing is kept."""

    def read(self, entry: BlockEntry) -> bytes:
        zeros = self._zeros.get(entry.size)
        if zeros is None:  # one buffer per block size, not one allocation per read
            zeros = self._zeros[entry.size] = bytes(entry.size)
        return zeros
