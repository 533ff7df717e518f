"""Checks of what callers hand the store: namespaces, keys, block headers and sizes.

Each raises `InvalidArgument` or `NotFound` with a message that says what to do, and changes
nothing, so the store runs them on a call's whole input before it touches anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kvstore import hashing
from kvstore.errors import InvalidArgument, NotFound, ResourceExhausted, shorten
from kvstore.hashing import Namespace

MAX_META_BYTES = 4096
MAX_ID = 256  # characters of a session, call or fan-out id (hints and the data path alike)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one call may ask of the server (config `limits`): without bounds, one request can make
    it buffer or copy out gigabytes, or hash for seconds while other callers wait."""

    max_put_bytes: int = 256 * 2**20  # block bytes one Put stream (or Reserve) carries
    max_get_bytes: int = 256 * 2**20  # block bytes one Get (or Acquire) copies out
    max_keys_per_call: int = 65536  # keys (or blocks) one call names: a 1M-token chain of 16-token blocks
    max_lookup_tokens: int = 1 << 20  # tokens one Lookup hashes


def check_key(key: bytes, what: str) -> None:
    try:
        hashing.check_key(key, what)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


class Checks:
    """Validation against one store's configured namespaces."""

    def __init__(self, namespaces: Mapping[str, Namespace], limits: Limits | None = None) -> None:
        self.namespaces = namespaces
        self.limits = limits or Limits()

    def namespace(self, name: str) -> Namespace:
        if not name:
            raise InvalidArgument("namespace is empty; pass the name of a configured namespace")
        ns = self.namespaces.get(name)
        if ns is None:
            known = ", ".join(sorted(self.namespaces)) or "none"
            raise NotFound(
                f"namespace {shorten(name)} is not configured (configured: {known}); add it under "
                "`namespaces:` in the server config"
            )
        return ns

    def count(self, n: int, what: str = "keys") -> None:
        """At most `limits.max_keys_per_call` keys or blocks in one call."""
        if n > self.limits.max_keys_per_call:
            raise InvalidArgument(
                f"{n} {what} in one call; at most {self.limits.max_keys_per_call} "
                "(limits.max_keys_per_call): split the call"
            )

    def tokens(self, n: int) -> None:
        if n > self.limits.max_lookup_tokens:
            raise InvalidArgument(
                f"{n} tokens in one lookup; at most {self.limits.max_lookup_tokens} "
                "(limits.max_lookup_tokens): look up a shorter prefix, or pass its keys"
            )

    def put_bytes(self, nbytes: int) -> None:
        """A put stream is buffered until it ends, so it may carry at most `limits.max_put_bytes`.
        (Not bounded by the tiers' capacity: a batch larger than they are is allowed, its first
        unpinned blocks pushed out by its last.)"""
        if nbytes > self.limits.max_put_bytes:
            raise ResourceExhausted(
                f"put carries more than {self.limits.max_put_bytes} bytes of blocks "
                "(limits.max_put_bytes): send the blocks in several puts"
            )

    def get_bytes(self, nbytes: int) -> None:
        if nbytes > self.limits.max_get_bytes:
            raise ResourceExhausted(
                f"get would copy out {nbytes} bytes of blocks; at most {self.limits.max_get_bytes} "
                "(limits.max_get_bytes): ask for fewer keys per call (and each key once)"
            )

    @staticmethod
    def session(session_id: str | None) -> None:
        """A session id named on the data path: as long as hints accept, so it can be closed."""
        if session_id and len(session_id) > MAX_ID:
            raise InvalidArgument(f"session id is {len(session_id)} characters; at most {MAX_ID}")

    def keys(self, keys: Sequence[bytes]) -> None:
        self.count(len(keys))
        lo, hi = hashing.MIN_KEY_BYTES, hashing.MAX_KEY_BYTES
        for i, key in enumerate(keys):
            if not lo <= len(key) <= hi:  # on every lookup: format a message only on failure
                check_key(key, f"key #{i}")

    def size(self, namespace: str, size: int, i: int = 0) -> None:
        ns = self.namespace(namespace)
        if size != ns.block_bytes:
            raise InvalidArgument(
                f"block #{i} has {size} bytes; namespace {ns.name!r} stores blocks of "
                f"exactly {ns.block_bytes} bytes ({ns.block_tokens} tokens)"
            )

    def header(self, namespace: str, key: bytes, parent: bytes | None, meta: bytes, i: int = 0) -> Namespace:
        """Everything about a block to store but its bytes; returns its namespace."""
        ns = self.namespace(namespace)
        check_key(key, f"block #{i} key")
        if parent:
            check_key(parent, f"block #{i} parent")
        if len(meta) > MAX_META_BYTES:
            raise InvalidArgument(f"block #{i} meta is {len(meta)} bytes; at most {MAX_META_BYTES}")
        return ns

    def block(
        self, namespace: str, key: bytes, parent: bytes | None, meta: bytes, size: int, i: int = 0
    ) -> None:
        self.header(namespace, key, parent, meta, i)
        self.size(namespace, size, i)
