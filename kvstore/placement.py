"""Where blocks are: the tiers, the index, the policy's order, and moves between tiers.

The lock (`Placement.lock`) guards the index, every tier's allocator, the placement fields of every
entry (tier, location, pins, readers, moving), the policy's structures, the session registry and
the counters. It is held for bookkeeping only, never while bytes are copied or files written:

- a move reserves its destination and marks the block `moving` under the lock (the block stays
  readable at its source, and is nobody's victim), copies with the lock released, and re-takes it
  to switch the block's location and free its source. A move whose block gained a reader or a pin
  meanwhile is abandoned instead, its destination freed;
- making room claims victims under the lock (marks them moving) and pushes them down one tier
  each the same way; from the bottom tier they are dropped;
- a new block is written into its reserved slot before it is indexed, so nobody sees it half done.

So a caller waits on the lock for at most one block's bookkeeping, whatever is being moved.
Methods named `*_locked` expect the caller to hold the lock; the others take it themselves.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.clock import Clock
from kvstore.index import BlockEntry, Index
from kvstore.mover import Copier, Links
from kvstore.policy.base import Policy
from kvstore.quotas import Quotas
from kvstore.sessions import Session, SessionRegistry
from kvstore.tiers.base import CorruptBlock, Tier, WriteFailed, checksum

log = logging.getLogger(__name__)

# Blocks a move claims in one pass of the lock (and switches in one more): the lock is held for
# this many blocks' bookkeeping at most, tens of microseconds each.
GROUP_BLOCKS = 32


@dataclass
class StoreView:
    """What a policy may read of the store: the clock, the tiers, the links' speeds, the sessions,
    and whether a block is still stored. Policies hold this, never the store."""

    clock: Clock
    tiers: list[Tier]
    sessions: SessionRegistry
    links: Links
    index: Index

    def __post_init__(self) -> None:
        self.levels = {t.name: i for i, t in enumerate(self.tiers)}

    def now(self) -> float:
        return self.clock.now()

    def link_bandwidth(self, src: str, dst: str) -> float:
        return self.links.bandwidth(src, dst)

    def holds(self, entry: BlockEntry) -> bool:
        return self.index.get(entry.namespace, entry.key) is entry


@dataclass(slots=True)
class TierCounters:
    hits: int = 0
    moves_in: int = 0
    moves_out: int = 0
    drops: int = 0


class Moved(enum.Enum):
    DONE = 0
    BUSY = 1  # a reader or a pin came: the block stays where it was
    NO_ROOM = 2
    GONE = 3  # no longer stored (or its bytes were corrupt, and it was dropped)


class Placement:
    def __init__(self, view: StoreView, policy: Policy, copier: Copier, quotas: Quotas | None = None) -> None:
        self.view = view
        self.quotas = quotas or Quotas({}, {})
        # Blocks carry a checksum taken when their bytes came in (the server; the replay, whose
        # bytes are zeros, skips it): checked when a block is written to disk, and when a memory
        # tier's bytes are copied out for a reader over gRPC (tiers.base.checksum).
        self.checksums = False
        self.tiers = view.tiers
        self.tier_by_name = {t.name: t for t in self.tiers}
        self.levels = view.levels
        self.index = view.index
        self.sessions = view.sessions
        self.clock = view.clock
        self.policy = policy
        self.copier = copier
        self.lock = threading.Lock()
        self.counters = {t.name: TierCounters() for t in self.tiers}
        self.pinned_bytes = {t.name: 0 for t in self.tiers}
        self.tier_blocks = {t.name: 0 for t in self.tiers}
        self.pinned_blocks = {t.name: 0 for t in self.tiers}
        self.sessions.on_orphan = policy.on_orphan
        self.sessions.on_claimed = policy.on_claimed
        # Hooks of the deployment (kvstore.deployment), None on a lone worker:
        # on_change(entry, tier or None when gone, new), under the lock, O(1);
        # on_dropped(entry, bytes), off the lock, for a block pushed out of the bottom tier.
        self.on_change: Callable[[BlockEntry, str | None, bool], None] | None = None
        self.on_dropped: Callable[[BlockEntry, bytes], None] | None = None

    # ------------------------------------------------------------------ bookkeeping (lock held)

    def held_locked(self, entry: BlockEntry) -> bool:
        return self.index.get(entry.namespace, entry.key) is entry

    def room_locked(self, level: int) -> int:
        tier = self.tiers[level]
        return tier.capacity - tier.used

    def allocate_locked(self, tier: Tier, entry: BlockEntry) -> bool:
        """A slot for `entry` in `tier`, within capacity and its tenant's quota (charged to it)."""
        if not self.quotas.fits(entry, tier.name) or not tier.allocate(entry):
            return False
        self.quotas.charge(entry, tier.name)
        return True

    def free_locked(self, tier: Tier, entry: BlockEntry, later: bool = False) -> None:
        """Give back a slot `allocate_locked` gave (`later`: a file is unlinked off the lock)."""
        if later:
            tier.free_later(entry)
        else:
            tier.free(entry)
        self.quotas.charge(entry, tier.name, -1)

    def victim_locked(self, entry: BlockEntry, tier: Tier, below: float | None = None) -> BlockEntry | None:
        """What to push out of `tier` so `entry` fits: where its tenant is at quota, only one of the
        tenant's own blocks (making room there helps nobody else); else the policy's first victim."""
        if not self.quotas.fits(entry, tier.name):
            return self.quotas.own_victim(self.policy, tier.name, entry.namespace, below)
        return self.policy.victim(tier.name, below)

    def could_fit_locked(self, entry: BlockEntry, tier: Tier) -> bool:
        return entry.size <= tier.capacity and self.quotas.could_fit(entry, tier.name)

    def add_locked(self, entry: BlockEntry) -> None:
        self.index.add(entry)
        self.tier_blocks[entry.tier] += 1
        self.policy.on_insert(entry)
        if self.on_change is not None:
            self.on_change(entry, entry.tier, True)

    def touch_locked(self, entry: BlockEntry, now: float) -> None:
        entry.last_use = now
        self.policy.on_access(entry)

    def pin_locked(self, entry: BlockEntry, fanout: bool = False) -> None:
        """Pin once more; `fanout`: the pin is a fan-out's, not a client's."""
        if entry.pins == 0:
            self.pinned_bytes[entry.tier] += entry.size
            self.pinned_blocks[entry.tier] += 1
            self.quotas.charge_pin(entry, entry.tier, 1)
            self.sessions.on_pinned(entry, True)
            self.policy.on_pin(entry)
        entry.pins += 1
        entry.fanout_pins += fanout

    def unpin_locked(self, entry: BlockEntry, fanout: bool = False) -> None:
        """Release one pin of its owner's kind; callers check that one is held."""
        if entry.pins <= 0 or (fanout and entry.fanout_pins <= 0):
            raise AssertionError(f"block {entry.key.hex()} has no such pin to release")
        entry.pins -= 1
        entry.fanout_pins -= fanout
        if entry.pins == 0:
            self.pinned_bytes[entry.tier] -= entry.size
            self.pinned_blocks[entry.tier] -= 1
            self.quotas.charge_pin(entry, entry.tier, -1)
            self.sessions.on_pinned(entry, False)
            self.policy.on_unpin(entry)

    def drop_locked(self, entry: BlockEntry, count: bool = True) -> None:
        self._count_wasted(entry, self.sessions.on_drop(entry))
        self.free_locked(self.tier_by_name[entry.tier], entry)
        self.policy.on_remove(entry)
        self.index.remove(entry)
        self._leave_tier(entry)
        if count:
            self.counters[entry.tier].drops += 1
        if self.on_change is not None:
            self.on_change(entry, None, False)

    def claim_victims_locked(self, level: int, nbytes: int, below: float | None) -> list[BlockEntry] | None:
        """Victims to push out of tiers[level] so `nbytes` more fit, claimed (marked moving) so that
        nobody else picks them; None (nothing claimed) when that much cannot be freed."""
        victims = self.policy.victims(self.tiers[level].name, nbytes - self.room_locked(level), below)
        for victim in victims or ():
            victim.moving = True
        return victims

    # ------------------------------------------------------------------ moves (lock not held)

    def make_room(self, level: int, nbytes: int, below: float | None = None) -> bool:
        """Push the policy's victims out of tiers[level] until `nbytes` more fit; False, nothing
        moved, when that is impossible (`below`: only victims scoring under it)."""
        with self.lock:
            victims = self.claim_victims_locked(level, nbytes, below)
        if victims is None:
            return False
        self.push_down(victims, level)
        return True

    def push_down(self, victims: Sequence[BlockEntry], level: int) -> None:
        """Move claimed victims from tiers[level] one tier down (making room there the same way);
        drop those with no tier or no room below. A victim that gained a reader stays."""
        if level + 1 < len(self.tiers):
            outcomes = self.move_many(victims, level + 1, claimed=True)
        else:
            outcomes = [Moved.NO_ROOM] * len(victims)
        dropped = [v for v, outcome in zip(victims, outcomes, strict=True) if outcome is Moved.NO_ROOM]
        on_dropped = self.on_dropped
        if on_dropped is not None:  # claimed (moving): nobody frees them while they are read
            for victim in dropped:
                data = self.read(victim)
                if data is not None:
                    on_dropped(victim, data)
        if dropped:
            with self.lock:
                for victim in dropped:
                    victim.moving = False
                    if self.held_locked(victim) and victim.movable:
                        self.drop_locked(victim)

    def move(
        self,
        entry: BlockEntry,
        level: int,
        below: float | None = None,
        data: Any = None,
        pin: bool = False,
        claimed: bool = False,
    ) -> Moved:
        """Move `entry` to tiers[level]; `data`: its bytes, when the caller read them already.
        The rest as `move_many`."""
        return self.move_many([entry], level, below, pin, claimed, None if data is None else [data])[0]

    def move_many(
        self,
        entries: Sequence[BlockEntry],
        level: int,
        below: float | None = None,
        pin: bool = False,
        claimed: bool = False,
        data: Sequence[Any] | None = None,
    ) -> list[Moved]:
        """Move blocks to tiers[level], in order, making room there as needed (`below`: pushing
        out only blocks the policy scores under it); returns each one's outcome. `pin`: pin each
        as it lands; `claimed`: the caller marked them moving (victims); `data`: their bytes, when
        the caller read them already.

        Blocks that fit are claimed in groups of up to GROUP_BLOCKS in one pass of the lock,
        copied together (blocks whose slots lie end to end in both tiers in one copy: on a busy
        host, each copy's return waits for the GIL) and switched in one more pass. A block that
        needs room ends its group; its victim is chosen once the group has landed, as if the
        blocks had moved one by one."""
        dst = self.tiers[level]
        outcomes: list[Moved | None] = [None] * len(entries)
        pos = 0
        while pos < len(entries):
            group: list[tuple[int, Tier, BlockEntry]] = []
            victim = None
            with self.lock:
                while pos < len(entries) and len(group) < GROUP_BLOCKS:
                    claim = self._claim_locked(entries[pos], dst, below, claimed, first=not group)
                    if claim is None:
                        break  # it needs room: after this group has landed
                    if isinstance(claim, Moved):
                        outcomes[pos] = claim
                    elif isinstance(claim, BlockEntry):
                        victim = claim
                        break
                    else:
                        group.append((pos, *claim))
                    pos += 1
            for i, outcome in self._land(group, entries, dst, pin, claimed, data):
                outcomes[i] = outcome
            if victim is not None:
                self.push_down([victim], level)
        return outcomes  # type: ignore[return-value]

    def _claim_locked(
        self, entry: BlockEntry, dst: Tier, below: float | None, claimed: bool, first: bool
    ) -> Moved | BlockEntry | tuple[Tier, BlockEntry] | None:
        """Under the lock, one block of a move: its outcome when it needs no copy (or cannot
        move); its source tier and reserved destination, marked moving; else a victim to push out
        of `dst` first (claimed) — or None when it is not the `first` of its group, whose blocks
        must land before a victim is chosen."""
        if not self.held_locked(entry):
            entry.moving = entry.moving and not claimed
            return Moved.GONE
        if entry.tier == dst.name or (not claimed and not entry.movable):
            if claimed:
                entry.moving = False
            return Moved.DONE if entry.tier == dst.name else Moved.BUSY
        if not dst.writable:  # its writes fail (a full disk): no room there for now
            return Moved.NO_ROOM  # a claimed entry stays marked: the caller decides
        staged = entry.staged(dst.name)
        fits = self.could_fit_locked(entry, dst)
        if fits and self.allocate_locked(dst, staged):
            entry.moving = True
            return self.tier_by_name[entry.tier], staged
        if not first:
            return None
        victim = self.victim_locked(staged, dst, below) if fits else None
        if victim is None:
            if claimed:
                entry.moving = True  # still ours: the caller decides
            return Moved.NO_ROOM
        victim.moving = True
        return victim

    def _land(
        self,
        group: list[tuple[int, Tier, BlockEntry]],
        entries: Sequence[BlockEntry],
        dst: Tier,
        pin: bool,
        claimed: bool,
        data: Sequence[Any] | None,
    ) -> list[tuple[int, Moved]]:
        """Copy a claimed group's bytes (off the lock), then, in one pass of the lock, switch each
        block to its new slot — or give the slot back: a block that gained a reader or a pin
        meanwhile stays where it was, one whose bytes were corrupt is dropped."""
        if not group:
            return []
        copies = [(src, entries[i], staged, None if data is None else data[i]) for i, src, staged in group]
        try:
            failures = self.copier.copy_many(copies, dst)
        except BaseException:
            with self.lock:
                for i, _, staged in group:
                    self.free_locked(dst, staged)
                    entries[i].moving = False
            raise
        landed = []
        with self.lock:
            for (i, src, staged), failure in zip(group, failures, strict=True):
                entry = entries[i]
                entry.moving = False
                if failure is not None:
                    self.free_locked(dst, staged)
                    if isinstance(failure, CorruptBlock):
                        if self.held_locked(entry):
                            self.drop_locked(entry)
                        landed.append((i, Moved.GONE))
                    else:  # WriteFailed: a claimed victim stays ours: push_down drops it
                        entry.moving = claimed
                        landed.append((i, Moved.NO_ROOM))
                    continue
                lower = self.levels[dst.name] > self.levels[src.name]
                if not self.held_locked(entry) or entry.readers or (entry.pins and lower):
                    self.free_locked(dst, staged)
                    landed.append((i, Moved.BUSY))
                    continue
                self._switch_locked(entry, src, staged)
                if pin:
                    self.pin_locked(entry)
                landed.append((i, Moved.DONE))
        return landed

    def place(self, entry: BlockEntry, data: Any) -> BlockEntry | None:
        """Store a new block in the fastest tier that has or can make room: its bytes go into a
        reserved slot, and only then is it indexed. Returns the stored entry (another writer's, if
        one stored the key meanwhile), or None when no tier can take it."""
        for level, tier in enumerate(self.tiers):
            if not tier.writable:
                continue
            if self.reserve(entry, level):
                try:
                    self.copier.write(tier, entry, data)
                except WriteFailed:  # its slot goes back; the next tier down may take it
                    with self.lock:
                        self.free_locked(tier, entry)
                        entry.tier = ""
                    continue
                with self.lock:
                    stored = self.index.get(entry.namespace, entry.key)
                    if stored is not None:  # another writer got there first
                        self.free_locked(tier, entry)
                        self.touch_locked(stored, self.clock.now())
                        return stored
                    self.add_locked(entry)
                    return entry
        return None

    def reserve(self, entry: BlockEntry, level: int) -> bool:
        """Allocate a slot for a new (unindexed) `entry` in tiers[level], pushing victims down until
        it fits (sets entry.tier and location); False, entry.tier '', when it cannot."""
        tier = self.tiers[level]
        while True:
            with self.lock:
                entry.tier = tier.name
                if not self.could_fit_locked(entry, tier):
                    entry.tier = ""
                    return False
                if self.allocate_locked(tier, entry):
                    return True
                victim = self.victim_locked(entry, tier)
                if victim is None:
                    entry.tier = ""
                    return False
                victim.moving = True
            self.push_down([victim], level)

    def evict(self, entries: Sequence[BlockEntry], drop: bool = False) -> list[BlockEntry]:
        """Move blocks one tier down, or out (`drop`, or from the bottom tier); returns those that
        left their tier (not the busy ones: pinned, read or moving)."""
        by_level: dict[int, list[BlockEntry]] = {}
        left = []
        with self.lock:
            for entry in entries:
                if not self.held_locked(entry) or not entry.movable:
                    continue
                left.append(entry)
                level = self.levels[entry.tier]
                if drop or level + 1 == len(self.tiers):
                    self.drop_locked(entry)
                else:
                    entry.moving = True
                    by_level.setdefault(level, []).append(entry)
        for level, claimed in by_level.items():
            self.push_down(claimed, level)
        return left

    def read(self, entry: BlockEntry) -> bytes | None:
        """The bytes of a block the caller holds a reader count on; a block whose bytes fail their
        checksum is dropped (unless it is being moved: the move finds out) and reads as None."""
        tier = self.tier_by_name[entry.tier]
        try:
            data = self.copier.read_bytes(tier, entry)
            if (
                self.checksums
                and entry.checksum is not None
                and not tier.on_disk
                and checksum(data) != entry.checksum
            ):
                raise CorruptBlock(f"block {entry.key.hex()} changed in {tier.name} since it was stored")
            return data
        except CorruptBlock:
            with self.lock:
                if self.held_locked(entry) and not entry.moving:
                    self.drop_locked(entry)
            return None

    # ------------------------------------------------------------------ internals

    def _switch_locked(self, entry: BlockEntry, src: Tier, staged: BlockEntry) -> None:
        """The bytes are in `staged`'s slot: the block now lives there, and its source is freed
        (a source file is unlinked off the lock: up to milliseconds when the journal is busy)."""
        self.free_locked(src, entry, later=True)
        from_tier = entry.tier
        self._leave_tier(entry)
        entry.tier, entry.location = staged.tier, staged.location
        self.tier_blocks[entry.tier] += 1
        if entry.pins:
            self.pinned_bytes[entry.tier] += entry.size
            self.pinned_blocks[entry.tier] += 1
            self.quotas.charge_pin(entry, entry.tier, 1)
        self.counters[from_tier].moves_out += 1
        self.counters[entry.tier].moves_in += 1
        if log.isEnabledFor(logging.DEBUG):  # per block: build the record only when it is kept
            log.debug(
                "moved block %s from %s to %s",
                entry.key.hex()[:16],
                from_tier,
                entry.tier,
                extra={"key": entry.key.hex(), "src": from_tier, "dst": entry.tier, "bytes": entry.size},
            )
        wasted = self.sessions.on_move(entry, from_tier)  # sessions first: the policy reads their bytes
        self.policy.on_move(entry, from_tier)
        self._count_wasted(entry, wasted)
        if self.on_change is not None:
            self.on_change(entry, entry.tier, False)

    def _leave_tier(self, entry: BlockEntry) -> None:
        self.tier_blocks[entry.tier] -= 1
        if entry.pins:
            self.pinned_bytes[entry.tier] -= entry.size
            self.pinned_blocks[entry.tier] -= 1
            self.quotas.charge_pin(entry, entry.tier, -1)

    def _count_wasted(self, entry: BlockEntry, sessions: Sequence[Session]) -> None:
        """Prefetched blocks that left the top tier before their session used them."""
        for session in sessions:
            if session.prefetch.wasted_bytes == 0:
                self.sessions.prefetches["wasted"] += 1
            session.prefetch.wasted_bytes += entry.size
            self.sessions.prefetch_bytes["wasted"] += entry.size
