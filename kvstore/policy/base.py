"""The policy interface: the store tells the policy what happened, and asks it for victims and
plans.

A policy never copies bytes or touches tiers itself, and never holds the store: it reads a narrow
view (`PolicyView`: the clock, the tiers, link speeds, the sessions). Its core is one priority
order per tier (`order`: movable blocks, the first to leave first, each with its score); `victim`
and `victims` read it. For hints and checks it returns plans (`kvstore.plans`), which the mover
queues and `sessions.actions` executes. So every policy shares the same capacity, pinning and
transfer rules, and the benchmark's baselines run on the same code path as ours.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from kvstore.index import BlockEntry
from kvstore.plans import Plan

if TYPE_CHECKING:
    from kvstore.sessions import Session, SessionRegistry
    from kvstore.tiers.base import Tier


class PolicyView(Protocol):
    """What a policy may read of the store (implemented by `placement.StoreView`)."""

    tiers: list[Tier]
    levels: dict[str, int]
    sessions: SessionRegistry

    def now(self) -> float: ...

    def link_bandwidth(self, src: str, dst: str) -> float: ...

    def holds(self, entry: BlockEntry) -> bool: ...


class Policy(ABC):
    name: str
    uses_hints = False  # whether agent hints change what this policy does

    def __init__(self, view: PolicyView) -> None:
        self.view = view

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

    def on_claimed(self, entry: BlockEntry) -> None:
        """The block gained its first session reference."""

    @abstractmethod
    def order(self, tier: str) -> Iterator[tuple[BlockEntry, float]]:
        """Movable blocks of `tier`, the one to leave first first, each with its score (a score is
        only compared with another of the same policy; lower leaves first)."""

    def victim(self, tier: str, below: float | None = None) -> BlockEntry | None:
        """The block that should leave `tier` first, or None when none may. With `below` (a
        prefetch making room), only a block scoring under that."""
        for entry, score in self.order(tier):
            return entry if below is None or score < below else None
        return None

    def victims(self, tier: str, nbytes: int, below: float | None = None) -> list[BlockEntry] | None:
        """Blocks to push out of `tier` to free `nbytes`, first to leave first (all scoring under
        `below`, when given); None when that much cannot be freed."""
        chosen: list[BlockEntry] = []
        freed = 0
        if nbytes <= 0:
            return chosen
        for entry, score in self.order(tier):
            if below is not None and score >= below:
                return None
            chosen.append(entry)
            freed += entry.size
            if freed >= nbytes:
                return chosen
        return None

    def promote_on_get(self, entry: BlockEntry) -> bool:
        """Whether a get served from a lower tier brings the block back to the top tier."""
        return True

    def on_session(self, session: Session, event: str) -> list[Plan]:
        """A hint changed a session: 'open', 'begin_tool', 'end_tool', 'awaiting_user',
        'user_active', 'fanout', 'close'. Returns what to do about it (the baseline: nothing)."""
        return []

    def on_check(self, plan: Plan) -> list[Plan]:
        """A check this policy planned is due: what to do now."""
        return []

    def planned_return(self, session: Session) -> float | None:
        """When the policy would start bringing the session's KV back if it left (store clock),
        or None when hints do not move anything."""
        return None

    def on_resume(self, session: Session) -> None:
        """A data-path call names a session that a hint said was away (before it is marked back)."""
