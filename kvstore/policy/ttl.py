"""The `ttl` baseline (stands for Continuum): when a session starts a tool call, its blocks are
kept in the top tier for a fixed TTL; otherwise, and after the TTL, least recently used first.

Kept blocks leave the LRU order while kept (as pinned ones do), so finding a victim never walks
past them; they come back when the TTL ends (where their last use places them) or when read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from kvstore.index import BlockEntry
from kvstore.plans import Plan, PlanKind
from kvstore.policy.base import PolicyView
from kvstore.policy.lru import LRUPolicy

if TYPE_CHECKING:
    from kvstore.sessions import Session


class TTLConfig(BaseModel):
    """Knobs of the `ttl` baseline."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: float = Field(
        10.0, gt=0, le=86400, description="how long a session's KV is kept after a tool call begins"
    )


class TTLPolicy(LRUPolicy):
    name = "ttl"
    uses_hints = True  # a tool call starts the TTL

    def __init__(self, view: PolicyView, config: TTLConfig | None = None) -> None:
        super().__init__(view)
        self.ttl_s = (config or TTLConfig()).ttl_s
        self._kept: dict[str, tuple[float, OrderedDict[BlockEntry, None]]] = {}  # session -> (until, blocks)
        self._keeper: dict[BlockEntry, str] = {}

    def on_session(self, session: Session, event: str) -> list[Plan]:
        if event == "begin_tool":
            self._release(session.id)
            top = self.view.tiers[0].name
            order = self._tier(top)
            until = self.view.now() + self.ttl_s
            kept: OrderedDict[BlockEntry, None] = OrderedDict()
            for entry in session.tiers.get(top, ()):
                if entry in order and entry not in self._keeper:
                    del order[entry]
                    kept[entry] = None
                    self._keeper[entry] = session.id
            self._kept[session.id] = (until, kept)
            return [Plan(PlanKind.CHECK, until, ref=session.id)]
        if event == "close":
            self._release(session.id)
        return []

    def on_check(self, plan: Plan) -> list[Plan]:
        """A session's TTL is up (unless a newer tool call kept it again)."""
        kept = self._kept.get(plan.ref)
        if kept is not None and kept[0] == plan.not_before:
            self._release(plan.ref)
        return []

    def _release(self, sid: str) -> None:
        """Put a session's kept blocks back in the LRU order where their last use places them
        (a sort, but only once per tool call)."""
        _, kept = self._kept.pop(sid, (0.0, OrderedDict()))
        if not kept:
            return
        for entry in kept:
            del self._keeper[entry]
        for tier in {entry.tier for entry in kept}:
            order = self._tier(tier)
            merged = sorted([*order, *(e for e in kept if e.tier == tier)], key=lambda e: e.last_use)
            order.clear()
            order.update(dict.fromkeys(merged))

    def _unkeep(self, entry: BlockEntry) -> bool:
        sid = self._keeper.pop(entry, None)
        if sid is None:
            return False
        del self._kept[sid][1][entry]
        return True

    def on_access(self, entry: BlockEntry) -> None:
        if self._unkeep(entry):  # read again: the session is back, plain LRU from here
            self._tier(entry.tier)[entry] = None
        super().on_access(entry)

    def on_remove(self, entry: BlockEntry) -> None:
        self._unkeep(entry)
        super().on_remove(entry)

    def on_move(self, entry: BlockEntry, from_tier: str) -> None:
        self._unkeep(entry)
        super().on_move(entry, from_tier)

    def on_pin(self, entry: BlockEntry) -> None:
        self._unkeep(entry)
        super().on_pin(entry)

    def order(self, tier: str) -> Iterator[tuple[BlockEntry, float]]:
        yield from super().order(tier)
        if tier == self.view.tiers[0].name:
            # Then what is kept: the TTL yields (soonest to expire first) rather than fail.
            for _, kept in sorted(self._kept.values(), key=lambda k: k[0]):
                for candidate in kept:
                    if candidate.movable:
                        yield candidate, 0.0
