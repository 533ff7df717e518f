"""A POSIX shared-memory segment that backs a memory tier, so same-host clients map its bytes.

Layout (kvstore/shm/header.py): a header page with a random token, then the tier's bytes. A client names
the segment, maps it from its own /dev/shm and compares the token with the one the server sent
over gRPC: a client on another host (or in another container) finds no such segment, or a
different one, and falls back to gRPC. The server creates and unlinks it; if the server is
killed, Python's resource tracker unlinks it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
from multiprocessing import shared_memory

from kvstore.shm.header import HEADER_BYTES, SHM_ROOT, TOKEN_BYTES, header

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23  # Linux >= 5.14: fault pages in writable, contents untouched
PREFAULT_CHUNK = 64 * 2**20


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

    def prefault(self) -> int:
        """Fault every page of the segment in, writable, without changing its contents — run by a
        background thread at start, so that no write into the segment pays a page fault under a
        move later. Safe beside writers (nothing is written). Returns the bytes prefaulted (0 where
        the kernel cannot: older than 5.14)."""
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        mapping = self._shm._mmap  # type: ignore[attr-defined]
        base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))  # ctypes releases the GIL per call
        done, total = 0, HEADER_BYTES + self.size
        while done < total:
            length = min(PREFAULT_CHUNK, total - done)
            if libc.madvise(ctypes.c_void_p(base + done), ctypes.c_size_t(length), MADV_POPULATE_WRITE) != 0:
                log.debug(
                    "prefault of %s stopped at %d bytes: %s", self.name, done, os.strerror(ctypes.get_errno())
                )
                break
            done += length
        return done

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
