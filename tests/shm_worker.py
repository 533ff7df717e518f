"""A separate client process for the shared-memory tests: `python tests/shm_worker.py MODE ADDRESS ...`.

Modes:
  write ADDRESS SEED SECONDS   put blocks whose bytes are a function of their key, until time is up
  read ADDRESS SECONDS         get random keys of those writers; count blocks whose bytes are wrong
  die-mid-write ADDRESS KEY    reserve one block, write half of it, then SIGKILL itself

Prints one JSON line with what it did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import time

from kvstore.sdk import Client, core
from kvstore.sdk.base import Rpc

from kvstore.errors import FailedPrecondition

NAMESPACE = "t"
KEYS = 64  # the key space writers and readers share


def key_of(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(4, "little"), digest_size=16).digest()


def block_of(key: bytes, size: int) -> bytes:
    """Bytes only this key has: a reader can tell a torn or foreign block from the right one."""
    pattern = hashlib.sha256(key).digest()
    return (pattern * (size // len(pattern) + 1))[:size]


def write(address: str, seed: int, seconds: float) -> dict[str, int]:
    rng = random.Random(seed)
    puts = 0
    with Client(address) as kv:
        assert kv.transport() == "shm"
        size = kv.namespace(NAMESPACE).block_bytes
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            keys = [key_of(rng.randrange(KEYS)) for _ in range(4)]
            with contextlib.suppress(FailedPrecondition):  # a reader holds it: fine
                kv.delete(NAMESPACE, [k for k in keys if rng.random() < 0.3])
            kv.put(NAMESPACE, keys, [block_of(k, size) for k in keys])
            puts += 1
    return {"puts": puts}


def read(address: str, seconds: float) -> dict[str, int]:
    rng = random.Random(os.getpid())
    found = torn = 0
    with Client(address) as kv:
        assert kv.transport() == "shm"
        size = kv.namespace(NAMESPACE).block_bytes
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            keys = [key_of(rng.randrange(KEYS)) for _ in range(8)]
            for key, block in zip(keys, kv.fetch(NAMESPACE, keys), strict=True):
                if block is not None:
                    found += 1
                    torn += block.data != block_of(key, size)
    return {"found": found, "torn": torn}


def die_mid_write(address: str, key: bytes) -> None:
    with Client(address) as kv:
        segments = kv._run(kv._shared())
        assert segments is not None
        size = kv.namespace(NAMESPACE).block_bytes
        chain = core.chain_blocks([key], [block_of(key, size)], None)
        request, _ = core.reserve_request(NAMESPACE, chain, None, False)
        reply = kv._invoke(Rpc("Reserve", request))
        slot = reply.slots[0]
        segments.view(slot.segment, slot.offset, size // 2)[:] = block_of(key, size)[: size // 2]
        print(json.dumps({"lease_id": reply.lease_id, "offset": slot.offset}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    mode, address = argv[0], argv[1]
    if mode == "write":
        print(json.dumps(write(address, int(argv[2]), float(argv[3]))))
    elif mode == "read":
        print(json.dumps(read(address, float(argv[2]))))
    elif mode == "die-mid-write":
        die_mid_write(address, bytes.fromhex(argv[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
