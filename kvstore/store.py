"""The one object that ties index, tiers, policy and mover together.

The gRPC server and the replay benchmark both drive a Store; nothing here knows about gRPC.
Every public method validates its whole input before it changes anything and raises a
`kvstore.errors` exception otherwise, so a refused call leaves the store as it was.

Placement: a new block goes to the fastest tier with room, after the policy has pushed its
victims one tier down (hbm -> dram -> disk -> dropped). A block that is pinned, or that a
transfer is reading, never moves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore import hashing
from kvstore.clock import Clock, RealClock
from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from kvstore.hashing import Namespace
from kvstore.index import BlockEntry, Index, PrefixMatch
from kvstore.mover import Mover
from kvstore.policy.base import Policy
from kvstore.sessions import Session, SessionRegistry, State, ToolDurations
from kvstore.tiers.base import CorruptBlock, Tier, as_buffer
from kvstore.tiers.disk import DiskTier

log = logging.getLogger(__name__)

MAX_META_BYTES = 4096


@dataclass(slots=True)
class PutBlock:
    namespace: str
    key: bytes
    data: Any
    parent: bytes | None = None
    meta: bytes = b""
    session: str | None = None
    pin: bool = False


@dataclass(slots=True)
class GetResult:
    key: bytes
    data: bytes
    meta: bytes
    tier: str


@dataclass(slots=True)
class Promotion:
    moved: dict[str, int]  # bytes brought up, per source tier
    blocks: int  # leading blocks of the chain that were stored (and pinned, when asked)


@dataclass(slots=True)
class TierCounters:
    hits: int = 0
    moves_in: int = 0
    moves_out: int = 0
    drops: int = 0


@dataclass(slots=True)
class TierStats:
    name: str
    device: str
    used: int
    capacity: int
    blocks: int
    pinned_blocks: int
    hits: int
    moves_in: int
    moves_out: int
    drops: int


@dataclass(slots=True)
class StoreStats:
    tiers: list[TierStats]
    blocks: int
    misses: int
    lookups: int
    lookup_hit_blocks: int
    policy: str


class Store:
    def __init__(
        self,
        tiers: Sequence[Tier],
        namespaces: Iterable[Namespace],
        policy: Policy,
        clock: Clock | None = None,
        promote_on_get: bool = True,
        sessions: SessionRegistry | None = None,
        link_bandwidths: dict[tuple[str, str], float] | None = None,
        default_bandwidth: float = 8e9,
        virtual_transfers: bool = False,
    ) -> None:
        if not tiers:
            raise ValueError("a store needs at least one tier")
        self.tiers = list(tiers)
        self.tier_by_name = {t.name: t for t in self.tiers}
        self.namespaces = {ns.name: ns for ns in namespaces}
        self.policy = policy
        self.clock = clock or RealClock()
        self.mover = Mover(self.clock)
        self.index = Index()
        self.promote_on_get = promote_on_get
        # One lock: block bytes are copied under it, so a reader never sees a slot reused.
        self.lock = threading.RLock()
        self.counters = {t.name: TierCounters() for t in self.tiers}
        self._pinned_bytes = {t.name: 0 for t in self.tiers}
        self._tier_blocks = {t.name: 0 for t in self.tiers}
        self._pinned_blocks = {t.name: 0 for t in self.tiers}
        self.misses = 0
        self.lookups = 0
        self.lookup_hit_blocks = 0
        self.sessions = sessions or SessionRegistry(ToolDurations(None, 0.25, 10.0))
        # Fixed link speeds (the replay's scenario); otherwise measured moves, else the default.
        self.link_bandwidths = dict(link_bandwidths or {})
        self.default_bandwidth = default_bandwidth
        # On a virtual clock a move is instant in the index but its bytes take time on the link:
        # a prefetch is done when its last byte has arrived, not when it was issued.
        self.virtual_transfers = virtual_transfers
        self.sessions.on_orphan = policy.on_orphan
        policy.attach(self)

    # ------------------------------------------------------------------ validation

    def namespace(self, name: str) -> Namespace:
        if not name:
            raise InvalidArgument("namespace is empty; pass the name of a configured namespace")
        ns = self.namespaces.get(name)
        if ns is None:
            known = ", ".join(sorted(self.namespaces)) or "none"
            raise NotFound(
                f"namespace {name!r} is not configured (configured: {known}); add it under "
                "`namespaces:` in the server config"
            )
        return ns

    @staticmethod
    def _check_key(key: bytes, what: str) -> None:
        try:
            hashing.check_key(key, what)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None

    @classmethod
    def _check_keys(cls, keys: Sequence[bytes]) -> None:
        lo, hi = hashing.MIN_KEY_BYTES, hashing.MAX_KEY_BYTES
        for i, key in enumerate(keys):
            if not lo <= len(key) <= hi:  # on every lookup: format a message only on failure
                cls._check_key(key, f"key #{i}")

    def validate_put(self, block: PutBlock, i: int = 0) -> None:
        self.validate_header(block.namespace, block.key, block.parent, block.meta, i)
        self.validate_size(block.namespace, len(as_buffer(block.data)), i)

    def validate_size(self, namespace: str, size: int, i: int = 0) -> None:
        ns = self.namespace(namespace)
        if size != ns.block_bytes:
            raise InvalidArgument(
                f"block #{i} has {size} bytes; namespace {ns.name!r} stores blocks of "
                f"exactly {ns.block_bytes} bytes ({ns.block_tokens} tokens)"
            )

    def validate_header(
        self, namespace: str, key: bytes, parent: bytes | None, meta: bytes, i: int = 0
    ) -> Namespace:
        """Everything about a block to store but its bytes; returns its namespace."""
        ns = self.namespace(namespace)
        self._check_key(key, f"block #{i} key")
        if parent:
            self._check_key(parent, f"block #{i} parent")
        if len(meta) > MAX_META_BYTES:
            raise InvalidArgument(f"block #{i} meta is {len(meta)} bytes; at most {MAX_META_BYTES}")
        return ns

    def _entries(self, namespace: str, keys: Sequence[bytes]) -> list[BlockEntry]:
        """The entries of all `keys`, or NotFound naming the first missing one."""
        self.namespace(namespace)
        self._check_keys(keys)
        entries = []
        for key in keys:
            entry = self.index.get(namespace, key)
            if entry is None:
                raise NotFound(f"block {key.hex()} is not stored in namespace {namespace!r}")
            entries.append(entry)
        return entries

    @staticmethod
    def _require_movable(entries: Sequence[BlockEntry]) -> None:
        busy = next((e for e in entries if not e.movable), None)
        if busy is not None:
            raise FailedPrecondition(f"block {busy.key.hex()} is pinned or being moved; unpin it first")

    # ------------------------------------------------------------------ data path

    def put(self, blocks: Sequence[PutBlock]) -> list[str]:
        """Store blocks; returns the tier each landed in ('' when it could not be placed)."""
        for i, block in enumerate(blocks):
            self.validate_put(block, i)
        with self.lock:
            self._check_room(blocks)
            now = self.clock.now()
            entries: list[BlockEntry | None] = []
            for b in blocks:
                entry = self.index.get(b.namespace, b.key)
                if entry is None:
                    entry = BlockEntry(
                        b.namespace,
                        b.key,
                        b.parent or None,
                        len(as_buffer(b.data)),
                        "",
                        meta=b.meta,
                        last_use=now,
                    )
                    if not self._place(entry, b.data):
                        entries.append(None)
                        continue
                else:
                    self._touch(entry, now)
                self._claim(entry, b.session, b.pin, now)
                entries.append(entry)
            # Where each block is now: a big batch may have pushed its own first blocks down or out.
            return [
                e.tier if e is not None and self.index.get(e.namespace, e.key) is e else "" for e in entries
            ]

    def _touch(self, entry: BlockEntry, now: float) -> None:
        """A block put again: it counts as used now."""
        entry.last_use = now
        self.policy.on_access(entry)

    def _claim(self, entry: BlockEntry, session: str | None, pin: bool, now: float) -> None:
        """What a put asks beyond storing: the session that references the block, a pin."""
        if session:
            self.sessions.ref(entry, self._active_session(session, entry.namespace, now))
        if pin:
            self._pin(entry)

    # ------------------------------------------------------------ slots written in place (leases.py)

    def allocate_shared(self, entry: BlockEntry) -> bool:
        """Room for `entry` in the fastest shared-memory tier that has some (pushing victims down),
        for a client to write in place. The slot stays out of the index until `add_written`."""
        with self.lock:
            for level, tier in enumerate(self.tiers):
                if tier.segment is None:
                    continue
                entry.tier = tier.name
                if self._make_room(level, entry):
                    return True
            entry.tier = ""
            return False

    def free_slot(self, entry: BlockEntry) -> None:
        """Give back a slot that was allocated but never indexed (a lease that ended uncommitted)."""
        with self.lock:
            self.tier_by_name[entry.tier].free(entry)

    def add_written(self, entry: BlockEntry, session: str | None, pin: bool) -> BlockEntry:
        """Index a block whose bytes a client wrote into its slot. If the key was stored meanwhile
        (another writer), the slot is freed and the stored block counts as put again."""
        with self.lock:
            now = self.clock.now()
            stored = self.index.get(entry.namespace, entry.key)
            if stored is None:
                entry.last_use = now
                self._added(entry)
                stored = entry
            else:
                self.tier_by_name[entry.tier].free(entry)
                self._touch(stored, now)
            self._claim(stored, session, pin, now)
            return stored

    def put_again(self, namespace: str, key: bytes, session: str | None, pin: bool) -> BlockEntry | None:
        """A put of a block that is stored already: touch it (and claim it); None if it is not."""
        with self.lock:
            entry = self.index.get(namespace, key)
            if entry is not None:
                now = self.clock.now()
                self._touch(entry, now)
                self._claim(entry, session, pin, now)
            return entry

    def _check_room(self, blocks: Sequence[PutBlock]) -> None:
        """ResourceExhausted unless the new pinned blocks, plus any one unpinned block, fit beside
        what is pinned already (unpinned blocks of a batch may push each other down and out)."""
        pinned_new, largest_unpinned, seen = 0, 0, set()
        for b in blocks:
            if (b.namespace, b.key) in seen or self.index.get(b.namespace, b.key) is not None:
                continue
            seen.add((b.namespace, b.key))
            size = self.namespaces[b.namespace].block_bytes
            if b.pin:
                pinned_new += size
            else:
                largest_unpinned = max(largest_unpinned, size)
        room = sum(t.capacity - self._pinned_bytes[t.name] for t in self.tiers)
        if pinned_new + largest_unpinned > room:
            raise ResourceExhausted(
                f"put needs room for {pinned_new + largest_unpinned} bytes but only {room} bytes of the "
                "tiers are not pinned; unpin blocks or raise tier capacities"
            )

    def get(
        self, namespace: str, keys: Sequence[bytes], session: str | None = None, stop_at_miss: bool = False
    ) -> list[GetResult | None]:
        self.namespace(namespace)
        self._check_keys(keys)
        results: list[GetResult | None] = []
        with self.lock:
            now = self.clock.now()
            for key in keys:
                entry = self.index.get(namespace, key)
                data = self._read(entry) if entry is not None else None
                if entry is None or data is None:
                    self.misses += 1
                    results.append(None)
                    if stop_at_miss:
                        break
                    continue
                results.append(GetResult(key, data, entry.meta, entry.tier))
                self.served(entry, session, now, data)
        return results

    def served(self, entry: BlockEntry, session: str | None, now: float, data: Any = None) -> None:
        """Account a read of `entry` and promote it when the policy says so. `data`: its bytes,
        when the caller has read them already (saves reading them again for the move)."""
        self.counters[entry.tier].hits += 1
        entry.last_use = now
        if session:
            self.sessions.ref(entry, self._active_session(session, entry.namespace, now))
        self.policy.on_access(entry)
        if (
            self.promote_on_get
            and entry.movable  # a pinned block stays where it was pinned
            and entry.tier != self.tiers[0].name
            and self.policy.promote_on_get(entry)
        ):
            self._move_to(entry, 0, data)

    def promote(
        self, namespace: str, keys: Sequence[bytes], session: str | None = None, pin: bool = False
    ) -> Promotion:
        """Bring the stored prefix of `keys` to the top tier without reading it out — what an
        engine does before running a request over it. With `pin`, each block is pinned as it
        lands, so bringing in the rest cannot push it out again. Stops at the first key that is
        not stored."""
        self.namespace(namespace)
        self._check_keys(keys)
        result = Promotion({}, 0)
        top = self.tiers[0].name
        with self.lock:
            now = self.clock.now()
            active = self._active_session(session, namespace, now) if session else None
            for key in keys:
                entry = self.index.get(namespace, key)
                if entry is None:
                    break
                entry.last_use = now
                self.policy.on_access(entry)
                if active is not None:
                    self.sessions.ref(entry, active)
                src = entry.tier
                if src != top and entry.movable and self._move_to(entry, 0):
                    result.moved[src] = result.moved.get(src, 0) + entry.size
                if pin:
                    self._pin(entry)
                result.blocks += 1
        return result

    def lookup(self, namespace: str, keys: Sequence[bytes], session: str | None = None) -> PrefixMatch:
        """Longest stored prefix of the chain. With a session (a request starting), the session now
        references exactly that prefix; the blocks it puts next join it."""
        self.namespace(namespace)
        self._check_keys(keys)
        with self.lock:
            match = self.index.longest_prefix(namespace, keys)
            self.lookups += 1
            self.lookup_hit_blocks += match.blocks
            if session:
                self._rebind(self._active_session(session, namespace, self.clock.now()), match.entries)
            return match

    def _rebind(self, session: Session, chain: list[BlockEntry]) -> None:
        """A request starts: the session now references exactly this chain. Blocks of chains it
        left behind (agents rewrite and compact their context) lose its reference, so they are no
        longer prefetched with it or kept for it."""
        keep = set(chain)
        for blocks in list(session.tiers.values()):
            for entry in [e for e in blocks if e not in keep]:
                self.sessions.unref(entry, session)
        for entry in chain:
            self.sessions.ref(entry, session)

    def _active_session(self, session_id: str, namespace: str, now: float) -> Session:
        """The session a data-path call names (opened on first use): it is active now, a person
        it waited on is back, and whatever its prefetch brought in has been used."""
        session = self.sessions.open(session_id, namespace, now)
        session.last_active = now
        if session.state is State.AWAITING_USER:
            session.state = State.RUNNING
            self.sessions.version += 1
        session.prefetched.clear()
        return session

    def delete(self, namespace: str, keys: Sequence[bytes]) -> int:
        self.namespace(namespace)
        self._check_keys(keys)
        with self.lock:
            entries = [e for e in (self.index.get(namespace, k) for k in keys) if e is not None]
            self._require_movable(entries)
            for entry in dict.fromkeys(entries):
                self._drop(entry, count=False)
            return len(set(entries))

    def pin(self, namespace: str, keys: Sequence[bytes]) -> int:
        with self.lock:
            entries = self._entries(namespace, keys)
            for entry in entries:
                self._pin(entry)
            return len(entries)

    def unpin(self, namespace: str, keys: Sequence[bytes]) -> int:
        with self.lock:
            entries = self._entries(namespace, keys)
            times = Counter(map(id, entries))
            for entry in entries:
                if entry.pins < times[id(entry)]:
                    raise FailedPrecondition(f"block {entry.key.hex()} is not pinned that many times")
            for entry in entries:
                self._unpin(entry)
            return len(entries)

    def evict(
        self,
        namespace: str = "",
        keys: Sequence[bytes] = (),
        tier: str = "",
        nbytes: int = 0,
        drop: bool = False,
    ) -> tuple[int, int]:
        """Demote (or drop) the named blocks, or `nbytes` from `tier` in the policy's order.

        Returns (blocks, bytes) that left their tier.
        """
        if keys and (tier or nbytes):
            raise InvalidArgument("evict takes either keys or tier + bytes, not both")
        if keys:
            with self.lock:
                entries = self._entries(namespace, keys)
                self._require_movable(entries)
                moved = 0
                for entry in dict.fromkeys(entries):
                    self._evict_one(entry, drop)
                    moved += entry.size
                return len(set(entries)), moved
        if tier not in self.tier_by_name:
            raise InvalidArgument(
                f"tier {tier!r} is not one of this store's tiers: {', '.join(self.tier_by_name)}"
            )
        if nbytes <= 0:
            raise InvalidArgument("bytes must be > 0 when evicting from a tier")
        with self.lock:
            blocks = freed = 0
            while freed < nbytes:
                victim = self.policy.victim(tier)
                if victim is None:
                    break
                self._evict_one(victim, drop)
                blocks += 1
                freed += victim.size
            return blocks, freed

    # ------------------------------------------------------------------ placement

    def _place(self, entry: BlockEntry, data: Any) -> bool:
        for level, tier in enumerate(self.tiers):
            entry.tier = tier.name
            if self._make_room(level, entry):
                tier.write(entry, data)
                self._added(entry)
                return True
        return False

    def _make_room(self, level: int, entry: BlockEntry, sooner_than: float | None = None) -> bool:
        """Allocate `entry` in tiers[level], pushing the policy's victims down; False if impossible.

        `sooner_than`: a prefetch, which must not push out blocks needed before that time.
        """
        tier = self.tiers[level]
        if entry.size > tier.capacity:
            return False
        while not tier.allocate(entry):
            victim = self.policy.victim(tier.name, sooner_than)
            if victim is None:
                return False
            self._evict_one(victim, drop=False)
        return True

    def _evict_one(self, entry: BlockEntry, drop: bool) -> None:
        level = self.tiers.index(self.tier_by_name[entry.tier])
        if drop or level + 1 == len(self.tiers) or not self._move_to(entry, level + 1):
            self._drop(entry)

    def _move_to(
        self, entry: BlockEntry, level: int, data: Any = None, sooner_than: float | None = None
    ) -> bool:
        """Move entry to tiers[level] (making room there); False, entry untouched, if no room."""
        src, dst = self.tier_by_name[entry.tier], self.tiers[level]
        staged = entry.staged(dst.name)
        entry.readers += 1  # a transfer reads it: making room below must not pick it
        try:
            if not self._make_room(level, staged, sooner_than):
                return False
            self.mover.copy(entry, src, dst, staged, data)
        finally:
            entry.readers -= 1
        from_tier = entry.tier
        self._removed_from_tier(entry)
        entry.tier, entry.location = staged.tier, staged.location
        self._tier_blocks[entry.tier] += 1
        if entry.pins:
            self._pinned_bytes[entry.tier] += entry.size
            self._pinned_blocks[entry.tier] += 1
        self.counters[from_tier].moves_out += 1
        self.counters[entry.tier].moves_in += 1
        wasted = self.sessions.on_move(entry, from_tier)  # sessions first: the policy reads their bytes
        self.policy.on_move(entry, from_tier)
        self._count_wasted(entry, wasted)
        return True

    def _read(self, entry: BlockEntry) -> bytes | None:
        """The block's bytes; a block whose bytes fail their checksum is dropped and reads as None."""
        try:
            return self.tier_by_name[entry.tier].read_bytes(entry)
        except CorruptBlock as exc:
            log.error("dropping corrupt block %s: %s", entry.key.hex(), exc)
            self._drop(entry)
            return None

    def _pin(self, entry: BlockEntry) -> None:
        if entry.pins == 0:
            self._pinned_bytes[entry.tier] += entry.size
            self._pinned_blocks[entry.tier] += 1
            self.policy.on_pin(entry)
        entry.pins += 1

    def _unpin(self, entry: BlockEntry) -> None:
        entry.pins -= 1
        if entry.pins == 0:
            self._pinned_bytes[entry.tier] -= entry.size
            self._pinned_blocks[entry.tier] -= 1
            self.policy.on_unpin(entry)

    def _count_wasted(self, entry: BlockEntry, sessions: list[Session]) -> None:
        """Prefetched blocks that left the top tier before their session used them."""
        for session in sessions:
            if session.prefetch.wasted_bytes == 0:
                self.sessions.prefetches["wasted"] += 1
            session.prefetch.wasted_bytes += entry.size
            self.sessions.prefetch_bytes["wasted"] += entry.size

    def _added(self, entry: BlockEntry) -> None:
        self.index.add(entry)
        self._tier_blocks[entry.tier] += 1
        self.policy.on_insert(entry)

    def _removed_from_tier(self, entry: BlockEntry) -> None:
        self._tier_blocks[entry.tier] -= 1
        if entry.pins:
            self._pinned_bytes[entry.tier] -= entry.size
            self._pinned_blocks[entry.tier] -= 1

    def _drop(self, entry: BlockEntry, count: bool = True) -> None:
        self._count_wasted(entry, self.sessions.on_drop(entry))
        self.tier_by_name[entry.tier].free(entry)
        self.policy.on_remove(entry)
        self.index.remove(entry)
        self._removed_from_tier(entry)
        if count:
            self.counters[entry.tier].drops += 1

    # ------------------------------------------------------------------ scheduled moves

    def run_due_jobs(self) -> int:
        """Run the jobs the policy scheduled whose time has come; returns how many ran."""
        with self.lock:
            due = self.mover.pop_due()
            for job in due:
                job.run()
            return len(due)

    def link_bandwidth(self, src: str, dst: str) -> float:
        """Bytes/s between two tiers: fixed by the scenario, else measured, else the default."""
        fixed = self.link_bandwidths.get((src, dst))
        if fixed:
            return fixed
        link = self.mover.links.get((src, dst))
        measured = link.bandwidth if link is not None and link.bytes >= 64 * 2**20 else None
        return measured or self.default_bandwidth

    # ------------------------------------------------------------ session mechanics (policies call these)

    def prefetch(self, session: Session, call_id: str | None) -> int:
        """Bring the session's blocks back to the top tier, never pushing out a block needed sooner
        than this session's. `call_id`: a scheduled prefetch, stale once that call has ended."""
        if call_id is not None and (session.tool is None or session.tool.call_id != call_id):
            return 0
        if session.id not in self.sessions.sessions:
            return 0
        now = self.clock.now()
        session.prefetch.status = "running"
        needed_at = self._needed_at(session, now)
        moved = 0
        seconds = 0.0
        top = self.tiers[0].name
        for tier in self.tiers[1:]:
            for entry in list(session.tiers.get(tier.name, ())):
                if not entry.movable:
                    continue
                if not self._move_to(entry, 0, sooner_than=needed_at):
                    break  # no room without pushing out blocks needed sooner: none will appear
                moved += entry.size
                seconds += entry.size / self.link_bandwidth(tier.name, top)
                session.prefetched.add(entry)
        session.prefetch.status = "done"
        session.prefetch.done_at = now + seconds if self.virtual_transfers else now
        session.prefetch.bytes = moved
        self.sessions.prefetch_bytes["moved"] += moved
        return moved

    def _needed_at(self, session: Session, now: float) -> float:
        """When the session needs its blocks (now, when it has no prediction)."""
        nu = session.next_use(now, math.inf)
        return now if nu is None else nu

    def offload(self, session: Session) -> int:
        """Move the session's top-tier blocks one tier down, except blocks another session is
        using now. Returns bytes moved."""
        top = self.tiers[0].name
        if len(self.tiers) < 2 or session.id not in self.sessions.sessions:
            return 0
        now = self.clock.now()
        moved = 0
        for entry in list(session.tiers.get(top, ())):
            others = [self.sessions.sessions[sid] for sid in entry.sessions or () if sid != session.id]
            if not entry.movable or any(self._needed_at(o, now) <= now for o in others):
                continue
            if self._move_to(entry, 1):
                moved += entry.size
        return moved

    def pin_fanout(self, session: Session, fanout_id: str) -> int:
        """Load the session's prefix into the top tier once and pin it while the branches run."""
        fanout = session.fanout
        if fanout is None or fanout.fanout_id != fanout_id:
            return 0
        self.prefetch(session, None)
        for entry in list(session.tiers.get(self.tiers[0].name, ())):
            self._pin(entry)
            fanout.pinned.append(entry)
        return len(fanout.pinned)

    def release_fanout(self, session: Session, fanout_id: str) -> None:
        fanout = session.fanout
        if fanout is None or fanout.fanout_id != fanout_id:
            return
        for entry in fanout.pinned:
            self._unpin(entry)
        session.fanout = None
        self.sessions.fanouts.pop(fanout_id, None)

    # ------------------------------------------------------------------ persistence

    def disk_tier(self) -> DiskTier | None:
        return next((t for t in self.tiers if isinstance(t, DiskTier)), None)

    def recover(self) -> int:
        """Index the blocks the disk tier holds from an earlier run; returns how many."""
        disk = self.disk_tier()
        if disk is None:
            return 0
        wall_now, now = time.time(), self.clock.now()
        found = sorted(disk.scan(), key=lambda e: e.last_use)
        recovered = 0
        with self.lock:
            for entry in found:
                ns = self.namespaces.get(entry.namespace)
                if ns is None:
                    log.warning("keeping block file of unconfigured namespace %r unindexed", entry.namespace)
                    continue
                if entry.size != ns.block_bytes or self.index.get(entry.namespace, entry.key) is not None:
                    disk.path(entry.namespace, entry.key).unlink(missing_ok=True)
                    continue
                if not disk.adopt(entry):
                    continue
                entry.last_use = now - max(0.0, wall_now - entry.last_use)
                self._added(entry)
                recovered += 1
        return recovered

    def flush(self) -> int:
        """Move memory-tier blocks to disk (least recently used first) so a restart keeps them."""
        disk = self.disk_tier()
        if disk is None:
            return 0
        level = self.tiers.index(disk)
        with self.lock:
            memory = sorted(
                (e for e in self.index.entries() if e.tier != disk.name), key=lambda e: e.last_use
            )
            return sum(1 for e in memory if self._move_to(e, level))

    def close(self, flush: bool = True) -> None:
        if flush:
            flushed = self.flush()
            log.info("flushed %d blocks to disk", flushed)
        for tier in self.tiers:
            tier.close()

    # ------------------------------------------------------------------ introspection

    def pinned_bytes(self, tier: str) -> int:
        return self._pinned_bytes[tier]

    def stats(self) -> StoreStats:
        with self.lock:
            tiers = [
                TierStats(
                    t.name,
                    t.device,
                    t.used,
                    t.capacity,
                    self._tier_blocks[t.name],
                    self._pinned_blocks[t.name],
                    c.hits,
                    c.moves_in,
                    c.moves_out,
                    c.drops,
                )
                for t in self.tiers
                for c in [self.counters[t.name]]
            ]
            return StoreStats(
                tiers, len(self.index), self.misses, self.lookups, self.lookup_hit_blocks, self.policy.name
            )

    def list_blocks(
        self, namespace: str = "", tier: str = "", limit: int = 100
    ) -> tuple[list[BlockEntry], int]:
        """Up to `limit` blocks (most recently used first) and how many matched in all."""
        if namespace:
            self.namespace(namespace)
        if tier and tier not in self.tier_by_name:
            raise InvalidArgument(
                f"tier {tier!r} is not one of this store's tiers: {', '.join(self.tier_by_name)}"
            )
        if limit < 1:
            raise InvalidArgument("limit must be >= 1")
        with self.lock:
            matched = [e for e in self.index.entries(namespace or None) if not tier or e.tier == tier]
            matched.sort(key=lambda e: e.last_use, reverse=True)
            return [dataclasses.replace(e) for e in matched[:limit]], len(matched)
