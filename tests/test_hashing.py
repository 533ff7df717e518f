"""Block keys: chained, namespace-seeded, cryptographic; the SDK side imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvstore.hashing import Namespace, chain_keys, namespace_seed, opaque_key


def test_chain_keys_are_prefix_stable_and_position_dependent() -> None:
    ns = Namespace("n", "llama", block_tokens=4)
    a = ns.chain_keys(range(12))
    b = ns.chain_keys([*range(8), 99, 99, 99, 99])
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    # the same tokens in another position (after another prefix) get another key
    assert ns.chain_keys([0, 1, 2, 3])[0] != ns.chain_keys([4, 5, 6, 7, 0, 1, 2, 3])[1]
    assert ns.chain_keys(range(7)) == a[:1]  # a trailing partial block has no key
    assert all(len(k) == 32 for k in a)


def test_namespaces_never_share_keys() -> None:
    tokens = range(16)
    keys = {Namespace("x", m, t).chain_keys(tokens)[0] for m, t in [("a", ""), ("b", ""), ("a", "t2")]}
    assert len(keys) == 3
    # length-prefixed fields: ("ab", "") and ("a", "b") are different namespaces
    assert namespace_seed("ab", "") != namespace_seed("a", "b")


def test_sha256_is_available_and_different() -> None:
    seed = namespace_seed("m")
    assert chain_keys(seed, range(4), 4, "sha256") != chain_keys(seed, range(4), 4, "blake2b")
    with pytest.raises(ValueError, match="unknown hash"):
        chain_keys(seed, range(4), 4, "md5")


def test_bad_tokens_are_rejected() -> None:
    with pytest.raises(ValueError, match="token ids"):
        chain_keys(b"s" * 32, [1, -2, 3, 4], 4)


def test_opaque_keys() -> None:
    assert opaque_key(b"k" * 20) == b"k" * 20
    assert len(opaque_key(123456789)) == 32 and opaque_key(1) != opaque_key(2) != opaque_key("2")
    assert opaque_key(-5) != opaque_key(5)


def test_sdk_and_hashing_do_not_import_torch() -> None:
    code = "import sys, kvstore.sdk, kvstore.hashing; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
