"""Checks of what callers hand the store: namespaces, keys, block headers and sizes.

Each raises `InvalidArgument` or `NotFound` with a message that says what to do, and changes
nothing, so the store runs them on a call's whole input before it touches anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kvstore import hashing
from kvstore.errors import InvalidArgument, NotFound
from kvstore.hashing import Namespace

MAX_META_BYTES = 4096


def check_key(key: bytes, what: str) -> None:
    try:
        hashing.check_key(key, what)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


class Checks:
    """Validation against one store's configured namespaces."""

    def __init__(self, namespaces: Mapping[str, Namespace]) -> None:
        self.namespaces = namespaces

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
    def keys(keys: Sequence[bytes]) -> None:
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
