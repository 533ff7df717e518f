"""The header of a shared-memory segment, written by the server and checked by clients.

Torch-free (the SDK imports it, like kvstore.hashing). One 4 KiB page: magic + the segment's
random token, then the tier's bytes.
"""

from __future__ import annotations

from pathlib import Path

MAGIC = b"KVSTORE-SHM-V1\0\0"
HEADER_BYTES = 4096
TOKEN_BYTES = 16
SHM_ROOT = Path("/dev/shm")


def header(token: bytes) -> bytes:
    """The bytes a segment with this token starts with."""
    return MAGIC + token
