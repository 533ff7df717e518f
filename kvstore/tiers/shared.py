"""A POSIX shared-memory segment that backs a memory tier, so same-host clients map its bytes.

Layout (kvstore/shm_header.py): a header page with a random token, then the tier's bytes. A client names
the segment, maps it from its own /dev/shm and compares the token with the one the server sent
over gRPC: a client on another host (or in another container) finds no such segment, or a
different one, and falls back to gRPC. The server creates and unlinks it; if the server is
killed, Python's resource tracker unlinks it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from multiprocessing import shared_memory

from kvstore.shm_header import HEADER_BYTES, SHM_ROOT, TOKEN_BYTES, header

log = logging.getLogger(__name__)


def shm_room() -> int | None:
    """Bytes free in /dev/shm, or None where there is no such file system."""
    try:
        st = os.statvfs(SHM_ROOT)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class SharedSegment:
    def __init__(self, tier: str, size: int) -> None:
        self.tier = tier
        self.size = size
        self.token = secrets.token_bytes(TOKEN_BYTES)
        name = f"kvstore-{os.getpid()}-{tier}-{self.token[:4].hex()}"
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=HEADER_BYTES + size)
        self.name = self._shm.name.lstrip("/")
        buf = self._shm.buf
        assert buf is not None
        first = header(self.token)
        buf[: len(first)] = first
        self.data: memoryview | None = buf[HEADER_BYTES : HEADER_BYTES + size]

    def close(self) -> None:
        """Unmap and unlink. Clients that still map it keep their mapping until they close it."""
        try:
            if self.data is not None:
                self.data.release()
                self.data = None
            self._shm.close()
        except BufferError:
            # A tensor view is still alive somewhere: the mapping goes with the process instead.
            log.debug("shared segment %s still has views; unlinking only", self.name)
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()
