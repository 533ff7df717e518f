"""The `ttl` baseline (stands for Continuum): when a session starts a tool call, its blocks are
kept in the top tier for a fixed TTL; otherwise, and after the TTL, least recently used first."""

from __future__ import annotations

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
        self._kept_until: dict[str, float] = {}

    def on_session(self, session: Session, event: str) -> None:
        if event == "begin_tool":
            self._kept_until[session.id] = self.store.clock.now() + self.ttl_s
        elif event == "close":
            self._kept_until.pop(session.id, None)

    def _kept(self, entry: BlockEntry, now: float) -> bool:
        return any(self._kept_until.get(sid, 0.0) > now for sid in entry.sessions or ())

    def victim(self, tier: str, sooner_than: float | None = None) -> BlockEntry | None:
        if tier != self.store.tiers[0].name or not self._kept_until:
            return super().victim(tier)
        now = self.store.clock.now()
        for entry in self._tier(tier):
            if entry.movable and not self._kept(entry, now):
                return entry
        return super().victim(tier)  # everything is kept: the TTL yields to LRU rather than fail
