"""Block keys: `key_i = H(key_{i-1} || tokens_i)`, seeded by the namespace.

H is cryptographic (blake2b by default, sha256 on request) so that one tenant cannot craft
collisions that poison another's cache. Keys made by an engine (LMCache chunk hashes, vLLM block
hashes, trace hash ids) are accepted as opaque keys with their parent; see `opaque_key`.

No torch here: the SDK imports this module.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

KEY_BYTES = 32
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 64
HASHES = ("blake2b", "sha256")


def _hasher(name: str):
    if name == "blake2b":
        return hashlib.blake2b(digest_size=KEY_BYTES)
    if name == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown hash {name!r}; use one of {', '.join(HASHES)}")


def namespace_seed(model: str, tenant: str = "", adapter: str = "", hash_name: str = "blake2b") -> bytes:
    """The parent of the first block of every chain in this namespace."""
    h = _hasher(hash_name)
    for part in ("kvstore/v1", model, tenant, adapter):
        encoded = part.encode()
        h.update(len(encoded).to_bytes(4, "little"))
        h.update(encoded)
    return h.digest()


def _token_bytes(tokens: Sequence[int]) -> bytes:
    try:
        return array("I", tokens).tobytes()
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"token ids must be integers in [0, 2**32): {exc}") from None


def chain_keys(
    seed: bytes, tokens: Sequence[int], block_tokens: int, hash_name: str = "blake2b"
) -> list[bytes]:
    """Keys of the full blocks of `tokens` (a trailing partial block has no key)."""
    if block_tokens < 1:
        raise ValueError("block_tokens must be >= 1")
    data = _token_bytes(tokens)
    step = block_tokens * 4
    keys: list[bytes] = []
    parent = seed
    for start in range(0, len(tokens) // block_tokens * step, step):
        h = _hasher(hash_name)
        h.update(parent)
        h.update(data[start : start + step])
        parent = h.digest()
        keys.append(parent)
    return keys


def opaque_key(engine_key: bytes | int | str, hash_name: str = "blake2b") -> bytes:
    """A store key for an engine-made key: kept as is when it is already 16-64 bytes, else hashed."""
    if isinstance(engine_key, bytes) and MIN_KEY_BYTES <= len(engine_key) <= MAX_KEY_BYTES:
        return engine_key
    if isinstance(engine_key, int):
        raw = engine_key.to_bytes((engine_key.bit_length() + 8) // 8 or 1, "little", signed=True)
    elif isinstance(engine_key, str):
        raw = engine_key.encode()
    else:
        raw = bytes(engine_key)
    h = _hasher(hash_name)
    h.update(b"opaque:")
    h.update(raw)
    return h.digest()


def check_key(key: bytes, what: str = "key") -> None:
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"{what} must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {len(key)}")


@dataclass(frozen=True)
class Namespace:
    """Model + tenant (+ adapter): keys never match across namespaces."""

    name: str
    model: str
    tenant: str = ""
    adapter: str = ""
    block_tokens: int = 16
    block_bytes: int = 16 * 131072
    hash: str = "blake2b"

    @property
    def seed(self) -> bytes:
        return namespace_seed(self.model, self.tenant, self.adapter, self.hash)

    def chain_keys(self, tokens: Sequence[int]) -> list[bytes]:
        return chain_keys(self.seed, tokens, self.block_tokens, self.hash)
