"""The `ttl` baseline (stands for Continuum): when a session starts a tool call, its blocks are
kept in the top tier for a fixed TTL; otherwise, and after the TTL, least recently used first.

Kept blocks leave the LRU order while kept (as pinned ones do), so finding a victim never walks
past them; they come back when the TTL ends (where their last use places them) or when read.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from kvstore.index import BlockEntry
from kvstore.policy.lru import LRUPolicy

if TYPE_CHECKING:
    from kvstore.sessions import Session


class TTLPolicy(LRUPolicy):
    name = "ttl"

    def __init__(self, ttl_s: float = 10.0) -> None:
        super().__init__()
        self.ttl_s = ttl_s
        self._kept: dict[str, tuple[float, OrderedDict[BlockEntry, None]]] = {}  # session -> (until, blocks)
        self._keeper: dict[BlockEntry, str] = {}

    def on_session(self, session: Session, event: str) -> None:
        if event == "begin_tool":
            self._release(session.id)
            top = self.store.tiers[0].name
            order = self._tier(top)
            until = self.store.clock.now() + self.ttl_s
            kept: OrderedDict[BlockEntry, None] = OrderedDict()
            for entry in session.tiers.get(top, ()):
                if entry in order and entry not in self._keeper:
                    del order[entry]
                    kept[entry] = None
                    self._keeper[entry] = session.id
            self._kept[session.id] = (until, kept)
            self.store.mover.schedule(lambda: self._expire(session.id, until), until, 40, f"ttl {session.id}")
        elif event == "close":
            self._release(session.id)

    def _expire(self, sid: str, until: float) -> None:
        kept = self._kept.get(sid)
        if kept is not None and kept[0] == until:
            self._release(sid)

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

    def victim(self, tier: str, sooner_than: float | None = None) -> BlockEntry | None:
        entry = super().victim(tier)
        if entry is not None or tier != self.store.tiers[0].name:
            return entry
        # Everything left is kept: the TTL yields (soonest to expire first) rather than fail.
        for _, kept in sorted(self._kept.values(), key=lambda k: k[0]):
            for candidate in kept:
                if candidate.movable:
                    return candidate
        return None
