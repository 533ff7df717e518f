"""Disk tier: one file per block under a data dir, each checksummed.

File layout (little endian): magic "KVSB", format version (u8), then the lengths of namespace
(u16), key (u8), parent (u8), meta (u32) and payload (u64), a CRC32 of namespace, key, parent and
meta, the XXH3-64 of the payload, then namespace, key, parent, meta and payload (version 1, still
read: one CRC32 of everything after the header). The payload's checksum is the one the block
carries (`BlockEntry.checksum`, taken when its bytes entered the store), not one computed from the
bytes on their way here: a block whose bytes changed in a memory tier since (a process scribbling on
/dev/shm) fails the comparison and is dropped, never written with a fresh valid checksum. Files are
written to a temporary name and renamed, so a crash never leaves a half-written block under a real
name. On start the index is rebuilt from these files; a file that fails a checksum is deleted,
never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvstore.errors import shorten
from kvstore.index import BlockEntry
from kvstore.tiers.base import ByteBudgetTier, CorruptBlock, WriteFailed, as_buffer, checksum

log = logging.getLogger(__name__)

MAGIC = b"KVSB"
VERSION = 2
HEADER_V1 = struct.Struct("<4sBHBBIQI")
HEADER = struct.Struct("<4sBHBBIQIQ")
RETRY_AFTER_S = 5.0  # after a failed write, the tier takes no new blocks for this long


class DiskTier(ByteBudgetTier):
    on_disk = True

    def __init__(self, root: Path, capacity: int, fsync: bool = False) -> None:
        super().__init__("disk", capacity)
        self.root = Path(root) / "blocks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.device = str(self.root)
        self.fsync = fsync
        # Files of freed blocks waiting for the reaper thread (see free_later), and the one it is
        # unlinking; both guarded by the condition.
        self._reap = threading.Condition()
        self._doomed: set[Path] = set()
        self._unlinking: Path | None = None
        self._reaper: threading.Thread | None = None
        self._closed = False
        self.retry_after_s = RETRY_AFTER_S
        # (monotonic time, error) of the last failed write, until a write succeeds again.
        self._failed: tuple[float, str] | None = None

    def allocate(self, entry: BlockEntry) -> bool:
        if not super().allocate(entry):
            return False
        self._spare(self.path(entry.namespace, entry.key))
        return True

    @property
    def writable(self) -> bool:
        failed = self._failed
        return failed is None or time.monotonic() - failed[0] >= self.retry_after_s

    def free(self, entry: BlockEntry) -> None:
        super().free(entry)
        try:
            self.path(entry.namespace, entry.key).unlink(missing_ok=True)
        except OSError as exc:  # a read-only disk: the room is given back; the file is stale
            log.warning("could not remove block file: %s", exc)

    def free_later(self, entry: BlockEntry) -> None:
        """Give the room back now; the file is unlinked by the reaper thread, since the caller
        holds the store's lock and an unlink is file-system work (0.1 ms for a 2 MiB block here,
        milliseconds when the journal is busy: a move of 1 GiB from disk did 512 of them under the
        lock). A crash before the unlink leaves a file with the block's own bytes, which a restart
        recovers as a disk block."""
        super().free(entry)
        path = self.path(entry.namespace, entry.key)
        with self._reap:
            if self._closed:  # the reaper is gone: nothing is waiting on the lock at shutdown
                path.unlink(missing_ok=True)
                return
            self._doomed.add(path)
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._run_reaper, name="kvstore-disk-reaper", daemon=True
                )
                self._reaper.start()
            self._reap.notify()

    def _spare(self, path: Path) -> None:
        """The key is stored on disk again (its file is about to be replaced): never unlink it, and
        wait out an unlink already under way (rare: the same key back on disk within a moment)."""
        with self._reap:
            self._doomed.discard(path)
            while self._unlinking == path:
                self._reap.wait()

    def _run_reaper(self) -> None:
        while True:
            with self._reap:
                while not self._doomed and not self._closed:
                    self._reap.wait()
                if not self._doomed:
                    return
                path = self._unlinking = self._doomed.pop()
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove block file %s: %s", path, exc)
            finally:
                with self._reap:
                    self._unlinking = None
                    self._reap.notify_all()

    def close(self) -> None:
        """Unlink what is still pending (a flush at shutdown must not leave stale files)."""
        with self._reap:
            self._closed = True
            self._reap.notify_all()
            reaper = self._reaper
        if reaper is not None:
            reaper.join()

    def path(self, namespace: str, key: bytes) -> Path:
        ns_dir = hashlib.blake2b(namespace.encode(), digest_size=8).hexdigest()
        hex_key = key.hex()
        return self.root / ns_dir / hex_key[:2] / f"{hex_key}.blk"

    def write(self, entry: BlockEntry, data: Any, non_blocking: bool = False) -> None:
        payload = as_buffer(data)[: entry.size]
        payload_sum = checksum(payload)
        if entry.checksum is not None and payload_sum != entry.checksum:
            raise CorruptBlock(
                f"block {entry.key.hex()} changed in memory since it was stored (checksum mismatch "
                "on its way to disk): dropped, not written"
            )
        ns = entry.namespace.encode()
        parent = entry.parent or b""
        crc = 0
        for part in (ns, entry.key, parent, entry.meta):
            crc = zlib.crc32(part, crc)
        header = HEADER.pack(
            MAGIC,
            VERSION,
            len(ns),
            len(entry.key),
            len(parent),
            len(entry.meta),
            len(payload),
            crc,
            payload_sum,
        )
        path = self.path(entry.namespace, entry.key)
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(header)
                for part in (ns, entry.key, parent, entry.meta, payload):
                    f.write(part)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:  # full, read-only, failing: the caller keeps the block elsewhere
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a partial file would hold disk space nobody counts
            if self._failed is None:
                log.warning("disk tier: block writes fail (%s); keeping blocks in memory tiers", exc)
            self._failed = (time.monotonic(), exc.strerror or str(exc))
            raise WriteFailed(f"{tmp}: {exc}") from exc
        if self._failed is not None:
            log.warning("disk tier: block writes work again")
            self._failed = None

    def read(self, entry: BlockEntry) -> bytes:
        return self.read_bytes(entry)

    def read_bytes(self, entry: BlockEntry) -> bytes:
        path = self.path(entry.namespace, entry.key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CorruptBlock(f"{path} is gone") from None
        ns, key, _, _, payload, _ = _parse(raw, path)
        if ns != entry.namespace or key != entry.key:  # copied or renamed over this block's file
            raise CorruptBlock(f"{path} holds block {key.hex()} of namespace {shorten(ns)}, not this one")
        if len(payload) != entry.size:
            raise CorruptBlock(f"{path}: payload is {len(payload)} bytes, index says {entry.size}")
        return payload

    def scan(self) -> Iterator[BlockEntry]:
        """Entries for every intact block file; corrupt files and stale temporaries are deleted."""
        for path in sorted(self.root.glob("*/*/*")):
            if path.suffix == ".tmp":
                path.unlink(missing_ok=True)
                continue
            if path.suffix != ".blk":
                continue
            try:
                raw = path.read_bytes()
                ns, key, parent, meta, payload, digest = _parse(raw, path)
            except (CorruptBlock, OSError) as exc:
                log.warning("dropping corrupt block file: %s", exc)
                path.unlink(missing_ok=True)
                continue
            if path != self.path(ns, key):  # not where its key puts it: never index it as that key
                log.warning("dropping block file %s: it holds block %s, named elsewhere", path, key.hex())
                path.unlink(missing_ok=True)
                continue
            yield BlockEntry(
                namespace=ns,
                key=key,
                parent=parent or None,
                size=len(payload),
                tier=self.name,
                meta=meta,
                last_use=path.stat().st_mtime,
                checksum=digest,
            )

    def adopt(self, entry: BlockEntry) -> bool:
        """Count a block found on disk at start; False (and the file removed) when over capacity."""
        if self.allocate(entry):
            return True
        self.path(entry.namespace, entry.key).unlink(missing_ok=True)
        return False

    def health(self) -> tuple[bool, str]:
        failed = self._failed
        if failed is not None:
            ago = time.monotonic() - failed[0]
            return False, f"block writes failing ({failed[1]}, {ago:.0f} s ago): new blocks stay in memory"
        ok = os.access(self.root, os.W_OK)
        return ok, "ok" if ok else f"{self.root} is not writable"


def _parse(raw: bytes, path: Path) -> tuple[str, bytes, bytes, bytes, bytes, int]:
    """(namespace, key, parent, meta, payload, payload checksum) of a block file, verified."""
    if len(raw) < HEADER_V1.size:
        raise CorruptBlock(f"{path}: truncated header")
    magic, version = raw[:4], raw[4]
    if magic != MAGIC or version not in (1, VERSION):
        raise CorruptBlock(f"{path}: not a kvstore block file (version {version})")
    if version == 1:
        _, _, ns_len, key_len, parent_len, meta_len, size, crc = HEADER_V1.unpack_from(raw)
        header = HEADER_V1.size
    else:
        if len(raw) < HEADER.size:
            raise CorruptBlock(f"{path}: truncated header")
        _, _, ns_len, key_len, parent_len, meta_len, size, crc, payload_sum = HEADER.unpack_from(raw)
        header = HEADER.size
    if len(raw) != header + ns_len + key_len + parent_len + meta_len + size:
        raise CorruptBlock(f"{path}: length does not match its header")
    body = memoryview(raw)[header:]
    names = ns_len + key_len + parent_len + meta_len
    if version == 1:
        if zlib.crc32(body) != crc:
            raise CorruptBlock(f"{path}: checksum mismatch")
        payload_sum = checksum(body[names:])
    elif zlib.crc32(body[:names]) != crc or checksum(body[names:]) != payload_sum:
        raise CorruptBlock(f"{path}: checksum mismatch")
    pos = 0
    parts = []
    for n in (ns_len, key_len, parent_len, meta_len):
        parts.append(bytes(body[pos : pos + n]))
        pos += n
    ns, key, parent, meta = parts
    assert payload_sum is not None  # a buffer always has one
    return ns.decode(), key, parent, meta, bytes(body[pos:]), payload_sum
