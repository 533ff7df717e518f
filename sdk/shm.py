"""The client's side of the shared-memory data plane: map the server's segments, copy in place.

A client maps each segment the server names from its own /dev/shm and checks the token in the
segment's header. On another host, or in a container without the server's /dev/shm, the segment
is missing or different: `attach` returns None and the client stays on gRPC.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Sequence
from typing import Any

from kvstore.shm.header import HEADER_BYTES, SHM_ROOT, header
from kvstore.v1 import kvstore_pb2 as pb

log = logging.getLogger(__name__)


class Segments:
    """The server's shared segments, mapped into this process."""

    def __init__(self, maps: Sequence[mmap.mmap], lease_ttl_s: float, token: bytes) -> None:
        self._maps = list(maps)
        self.token = token  # the first segment's: lease replies carry it (a restart changes it)
        self._views = [memoryview(m)[HEADER_BYTES:] for m in self._maps]
        self.lease_ttl_s = lease_ttl_s
        self.capacity = sum(len(v) for v in self._views)

    def round_blocks(self, block_bytes: int) -> int:
        """Blocks per reserve/commit round: reserved slots cannot be pushed down to make room, so a
        round takes at most half the shared room and a big put runs as several rounds."""
        return max(1, self.capacity // 2 // max(block_bytes, 1))

    def view(self, segment: int, offset: int, size: int) -> memoryview:
        view = self._views[segment]
        if offset + size > len(view):
            raise ValueError(f"slot {offset}+{size} lies outside segment {segment} ({len(view)} bytes)")
        return view[offset : offset + size]

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._views = []
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a view handed to the caller is still alive; unmapped at exit
                log.debug("shared segment still viewed; left mapped")
        self._maps = []


def attach(reply: pb.AttachSharedMemoryResponse) -> Segments | None:
    """Map every segment of the reply, or None when any is not this host's (stay on gRPC)."""
    if not reply.segments:
        return None
    maps: list[mmap.mmap] = []
    try:
        for seg in reply.segments:
            maps.append(_map(seg))
    except (OSError, ValueError) as exc:
        for m in maps:
            m.close()
        log.info("shared memory not reachable (%s); using gRPC for block bytes", exc)
        return None
    return Segments(maps, reply.lease_ttl_s, reply.segments[0].token)


def _map(seg: pb.SharedSegment) -> mmap.mmap:
    if "/" in seg.name or not seg.name:
        raise ValueError(f"bad segment name {seg.name!r}")
    fd = os.open(SHM_ROOT / seg.name, os.O_RDWR)
    try:
        if os.fstat(fd).st_size != HEADER_BYTES + seg.size:
            raise ValueError(f"segment {seg.name} has another size than the server's")
        m = mmap.mmap(fd, HEADER_BYTES + seg.size)
    finally:
        os.close(fd)
    expected = header(seg.token)
    if m[: len(expected)] != expected:
        m.close()
        raise ValueError(f"segment {seg.name} belongs to another server")
    return m


def copy_into(dst: memoryview, src: Any) -> None:
    """One memcpy of a block's bytes (a buffer, or a CPU tensor's) into a slot."""
    dst[:] = src if isinstance(src, memoryview) else memoryview(src).cast("B")
