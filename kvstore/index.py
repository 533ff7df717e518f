"""The block index: (namespace, key) -> BlockEntry, and longest-prefix lookup.

A lookup walks the asked chain and stops at the first key that is not stored, so it costs
O(chain length), never O(blocks stored).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class BlockEntry:
    """One stored block. Identity (eq=False) makes entries usable as keys of ordered sets."""

    namespace: str
    key: bytes
    parent: bytes | None
    size: int
    tier: str
    location: int = 0
    meta: bytes = b""
    pins: int = 0
    # Of `pins`, those a fan-out holds (sessions.actions): pins are owned, so a client's Unpin can
    # release only the others, and a fan-out's release only its own.
    fanout_pins: int = 0
    # Transfers reading this block right now: it must not be freed or moved under them.
    readers: int = 0
    # Being moved: its bytes are on their way to another tier (readable here until the move ends).
    moving: bool = False
    last_use: float = 0.0
    sessions: set[str] | None = None
    # XXH3-64 of its bytes, taken when they entered the store (a put, a commit, a disk file) and
    # carried with the block across tiers; None where the store keeps none (the replay).
    checksum: int | None = None

    @property
    def movable(self) -> bool:
        return self.pins == 0 and self.readers == 0 and not self.moving

    def staged(self, tier: str) -> BlockEntry:
        """A copy to allocate and write in another tier before the block moves there."""
        return BlockEntry(
            self.namespace, self.key, self.parent, self.size, tier, 0, self.meta, checksum=self.checksum
        )


@dataclass(slots=True)
class PrefixMatch:
    """How long a prefix of a chain is stored, and in which tiers: `entries` in the local tiers,
    then `remote` more blocks in the shared remote tier (kvstore.tiers.remote)."""

    entries: list[BlockEntry]
    blocks_per_tier: dict[str, int] = field(default_factory=dict)
    remote: int = 0

    @property
    def blocks(self) -> int:
        return len(self.entries) + self.remote

    @property
    def tiers(self) -> list[str]:
        return [e.tier for e in self.entries] + ["remote"] * self.remote


class Index:
    def __init__(self) -> None:
        self._by_ns: dict[str, dict[bytes, BlockEntry]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def blocks(self, namespace: str) -> dict[bytes, BlockEntry]:
        """The namespace's blocks by key, to read many at a time (never to change)."""
        return self._by_ns.get(namespace) or {}

    def get(self, namespace: str, key: bytes) -> BlockEntry | None:
        blocks = self._by_ns.get(namespace)
        return blocks.get(key) if blocks is not None else None

    def add(self, entry: BlockEntry) -> None:
        blocks = self._by_ns.setdefault(entry.namespace, {})
        if entry.key in blocks:
            raise KeyError("block already indexed")
        # Share the parent's key object: a chain then stores each key once.
        if entry.parent is not None:
            parent = blocks.get(entry.parent)
            if parent is not None:
                entry.parent = parent.key
        blocks[entry.key] = entry
        self._count += 1

    def remove(self, entry: BlockEntry) -> None:
        del self._by_ns[entry.namespace][entry.key]
        self._count -= 1

    def longest_prefix(self, namespace: str, keys: Sequence[bytes]) -> PrefixMatch:
        blocks = self._by_ns.get(namespace, {})
        found: list[BlockEntry] = []
        per_tier: dict[str, int] = {}
        for key in keys:
            entry = blocks.get(key)
            if entry is None:
                break
            found.append(entry)
            per_tier[entry.tier] = per_tier.get(entry.tier, 0) + 1
        return PrefixMatch(found, per_tier)

    def entries(self, namespace: str | None = None) -> Iterator[BlockEntry]:
        if namespace is not None:
            yield from self._by_ns.get(namespace, {}).values()
            return
        for blocks in self._by_ns.values():
            yield from blocks.values()
