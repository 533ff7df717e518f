"""The policy interface: the store tells the policy what happened, and asks it for victims.

A policy never moves bytes or touches tiers; the store does that, so every policy shares the
same capacity, pinning and transfer rules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from kvstore.index import BlockEntry


class Policy(ABC):
    name: str

    @abstractmethod
    def on_insert(self, entry: BlockEntry) -> None:
        """A block was stored in entry.tier."""

    @abstractmethod
    def on_access(self, entry: BlockEntry) -> None:
        """A block was read (entry.last_use is already updated)."""

    @abstractmethod
    def on_remove(self, entry: BlockEntry) -> None:
        """A block left the store."""

    @abstractmethod
    def on_move(self, entry: BlockEntry, from_tier: str) -> None:
        """A block moved from `from_tier` to entry.tier."""

    @abstractmethod
    def victim(self, tier: str) -> BlockEntry | None:
        """The movable block that should leave `tier` first, or None when none may."""

    def promote_on_get(self, entry: BlockEntry) -> bool:
        """Whether a get served from a lower tier brings the block back to the top tier."""
        return True
