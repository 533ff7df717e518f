"""The policy interface: the store tells the policy what happened, and asks it for victims.

A policy never copies bytes or touches tiers itself; it orders victims and, for hints, asks the
store to prefetch or offload a session. So every policy shares the same capacity, pinning and
transfer rules, and the benchmark's baselines run on the same code path as ours.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from kvstore.index import BlockEntry

if TYPE_CHECKING:
    from kvstore.sessions import Session
    from kvstore.store import Store


class Policy(ABC):
    name: str
    store: Store

    def attach(self, store: Store) -> None:
        """Called once by the store that runs this policy."""
        self.store = store

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

    def on_pin(self, entry: BlockEntry) -> None:
        """The block was pinned (0 -> 1): it cannot be a victim until unpinned."""

    def on_unpin(self, entry: BlockEntry) -> None:
        """The block's last pin went away."""

    def on_orphan(self, entry: BlockEntry) -> None:
        """The block lost its last session reference."""

    @abstractmethod
    def victim(self, tier: str, sooner_than: float | None = None) -> BlockEntry | None:
        """The movable block that should leave `tier` first, or None when none may.

        With `sooner_than` (a prefetch making room), never a block predicted to be used before
        that time.
        """

    def promote_on_get(self, entry: BlockEntry) -> bool:
        """Whether a get served from a lower tier brings the block back to the top tier."""
        return True

    def on_session(self, session: Session, event: str) -> None:
        """A hint changed a session: 'begin_tool', 'end_tool', 'awaiting_user', 'fanout', 'close'.

        The baseline ignores hints; the agent policy plans prefetches and offloads from them.
        """
