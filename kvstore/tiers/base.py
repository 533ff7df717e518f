"""What a tier is: a name, a capacity, an allocator and a byte store, in one screen.

The store decides *what* goes where; a tier only answers "is there room", keeps the bytes and
gives them back. Block data crosses tiers as a torch tensor (memory tiers hand out views, so
HBM <-> DRAM moves are one device copy) or as any object with the buffer protocol.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import xxhash

from kvstore.index import BlockEntry

if TYPE_CHECKING:
    from kvstore.shm.segments import SharedSegment


class CorruptBlock(Exception):
    """The stored bytes of a block failed their checksum: the block must be dropped, not served."""


class WriteFailed(Exception):
    """A tier could not store a block's bytes (a full or read-only disk, an I/O error). Its caller
    gives the slot back and treats the tier as having no room; reads of what it holds go on."""


class Tier(ABC):
    name: str
    capacity: int
    device: str = "cpu"
    on_disk: bool = False  # file I/O: the store reads and writes it on its I/O pool
    # The shared-memory segment holding this tier's bytes, when same-host clients may map them.
    segment: SharedSegment | None = None

    @property
    @abstractmethod
    def used(self) -> int:
        """Bytes allocated, including alignment."""

    @abstractmethod
    def allocate(self, entry: BlockEntry) -> bool:
        """Reserve room for `entry` (sets entry.location); False when there is none."""

    @abstractmethod
    def free(self, entry: BlockEntry) -> None:
        """Give back the room of `entry`, which must have been allocated here."""

    def free_later(self, entry: BlockEntry) -> None:
        """Like `free`, for a caller holding the store's lock: the room is given back now, work
        that can wait (a file to unlink) is done off the lock."""
        self.free(entry)

    @abstractmethod
    def write(self, entry: BlockEntry, data: Any, non_blocking: bool = False) -> None:
        """Store `entry.size` bytes of `data` (a tensor or a buffer) at the entry's location
        (`non_blocking`: a device copy may still be running when this returns; see mover.Copier)."""

    @abstractmethod
    def read(self, entry: BlockEntry) -> Any:
        """The block's bytes as a tensor or buffer; valid until the entry is freed."""

    def read_bytes(self, entry: BlockEntry) -> bytes:
        """A copy of the block's bytes that outlives the slot."""
        return bytes(as_buffer(self.read(entry)))

    def checksum(self, entry: BlockEntry) -> int | None:
        """`checksum` of the bytes in the block's slot, read in place; None where that would mean
        a device copy (a GPU tier)."""
        return None

    @property
    def writable(self) -> bool:
        """False while new bytes should not be sent here (writes are failing): it has no room."""
        return True

    def health(self) -> tuple[bool, str]:
        return True, "ok"

    def close(self) -> None:
        """Release what the tier holds outside Python objects (files, device memory)."""


class ByteBudgetTier(Tier):
    """A tier whose room is a byte count (files, or nothing at all), not a buffer to carve up."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    def allocate(self, entry: BlockEntry) -> bool:
        if self._used + entry.size > self.capacity:
            return False
        self._used += entry.size
        return True

    def free(self, entry: BlockEntry) -> None:
        self._used -= entry.size


def checksum(data: Any) -> int | None:
    """XXH3-64 of a block's bytes (a buffer or a CPU tensor); None for a tensor on a device."""
    if hasattr(data, "detach") and data.device.type != "cpu":
        return None
    return xxhash.xxh3_64_intdigest(as_buffer(data))


def as_buffer(data: Any) -> memoryview:
    """A flat uint8 memoryview of a tensor (moved to host if needed) or of any buffer."""
    if hasattr(data, "detach"):  # torch.Tensor, without importing torch here
        tensor = data.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        return memoryview(tensor.contiguous().view(-1).numpy()).cast("B")
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
