"""Memory tiers: one preallocated torch buffer, carved up by an extent allocator.

`hbm` puts the buffer on a CUDA device (or on the CPU standing in for one, with its own
capacity, so every code path runs without a GPU). `dram` puts it in host memory, pinned when a
GPU is present so HBM <-> DRAM copies run at full PCIe speed. No per-block malloc either way.
A host buffer can live in a shared-memory segment (`shared=True`): same-host clients then read and
write block bytes in place (see kvstore/shm/leases.py for who may touch which bytes when).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch

from kvstore.index import BlockEntry
from kvstore.shm.segments import SharedSegment
from kvstore.tiers.allocator import ExtentAllocator
from kvstore.tiers.base import Tier, as_buffer, checksum

log = logging.getLogger(__name__)


class MemoryTier(Tier):
    def __init__(
        self,
        name: str,
        capacity: int,
        device: str = "cpu",
        pin_memory: bool = False,
        shared: bool = False,
    ) -> None:
        self.name = name
        self.device = device
        self._alloc = ExtentAllocator(capacity)
        self.capacity = self._alloc.capacity
        on_host = torch.device(device).type == "cpu"
        if shared and not on_host:
            raise ValueError(f"tier {name}: only a host buffer can be shared memory, not {device}")
        self.segment = SharedSegment(name, self.capacity) if shared else None
        if self.segment is not None:
            assert self.segment.data is not None
            # Like torch.empty, a fresh segment's pages cost RAM only once they are written.
            self._buf = torch.frombuffer(self.segment.data, dtype=torch.uint8, count=self.capacity)
            if pin_memory:
                _register_pinned(self._buf)
        else:
            # torch.empty does not touch the pages: untouched capacity costs address space, not RAM.
            self._buf = torch.empty(
                self.capacity, dtype=torch.uint8, device=device, pin_memory=pin_memory and on_host
            )
        self._host = self._buf.numpy() if on_host else None

    @property
    def used(self) -> int:
        return self._alloc.used

    def allocate(self, entry: BlockEntry) -> bool:
        offset = self._alloc.allocate(entry.size)
        if offset is None:
            return False
        entry.location = offset
        return True

    def free(self, entry: BlockEntry) -> None:
        self._alloc.free(entry.location)

    def write(self, entry: BlockEntry, data: Any, non_blocking: bool = False) -> None:
        self.write_span(entry.location, entry.size, data, non_blocking)

    def write_span(self, start: int, size: int, data: Any, non_blocking: bool = False) -> None:
        """Store `size` bytes of `data` at `start`: one block's slot, or a run of slots end to end."""
        end = start + size
        if isinstance(data, torch.Tensor) and data.device.type == "cpu" and self._host is not None:
            # Host to host (a move between host tiers): one memcpy on this thread, GIL released.
            # torch's copy_ would split the block over its intra-op threads, which on a busy host
            # wait for a core (and spin while they wait, taking it from request handling): the
            # stall bench measured it at a fifth of a plain copy's speed on 2 cores.
            src = data.detach().reshape(-1).view(torch.uint8).numpy()
            self._host[start:end] = src[:size]
        elif isinstance(data, torch.Tensor):
            self._buf[start:end].copy_(data.reshape(-1).view(torch.uint8), non_blocking=non_blocking)
        elif self._host is not None:
            self._host[start:end] = np.frombuffer(as_buffer(data), dtype=np.uint8, count=size)
        else:
            with warnings.catch_warnings():  # read-only source buffers are fine: we only read them
                warnings.simplefilter("ignore", UserWarning)
                src = torch.frombuffer(as_buffer(data), dtype=torch.uint8, count=size)
            self._buf[start:end].copy_(src)

    def read(self, entry: BlockEntry) -> torch.Tensor:
        return self.span(entry.location, entry.size)

    def span(self, start: int, size: int) -> torch.Tensor:
        """A view of `size` bytes at `start` (valid while the slots under it are held)."""
        return self._buf[start : start + size]

    def read_bytes(self, entry: BlockEntry) -> bytes:
        if self._host is not None:
            return self._host[entry.location : entry.location + entry.size].tobytes()
        return self.read(entry).cpu().numpy().tobytes()

    def checksum(self, entry: BlockEntry) -> int | None:
        if self._host is None:
            return None
        return checksum(self._host[entry.location : entry.location + entry.size])

    def extents(self) -> list[tuple[int, int]]:
        return self._alloc.extents()

    def close(self) -> None:
        self._host = None
        self._buf = torch.empty(0, dtype=torch.uint8)
        if self.segment is not None:
            self.segment.close()


def _register_pinned(buf: torch.Tensor) -> None:
    """Page-lock a shared host buffer for the GPU, as pin_memory=True does for torch.empty."""
    if not buf.numel():
        return
    err = torch.cuda.cudart().cudaHostRegister(buf.data_ptr(), buf.numel(), 0)
    if int(err) != 0:
        log.warning(
            "cudaHostRegister of %d bytes failed (%s); DRAM<->HBM copies will be slower", buf.numel(), err
        )


def hbm_device(requested: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu' (a stand-in with its own capacity)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
