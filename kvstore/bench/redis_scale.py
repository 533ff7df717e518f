"""`kvstore bench redis-scale`: what the global index and the remote tier cost in Redis, measured.

Starts its own `redis-server` on a free loopback port (no persistence), writes keys of the shared
layout (kvstore.bench.route's module doc; DESIGN's remote tier) at a few sizes and reports:

- bytes per index entry (`kvs:{tenant}:{ns}:i:{key hex}` HASH {worker: tier} with a TTL), both
  `MEMORY USAGE` of sampled keys and the growth of `used_memory` (which also counts the keyspace's
  hash table and the expires table), for 1, 2 and 4 holders per block;
- bytes per remote block (`kvs:{tenant}:{ns}:b:{key hex}`: a 23-byte header, the 32-byte parent
  key, then the payload) against its payload, at a few block sizes;
- server throughput with `redis-benchmark` (its C client, pipelined): index publishes (HSET + EXPIRE)
  and lookups (HGETALL) per second.

docs/scale.md extrapolates these to 1,000 workers x 1M blocks.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis

from kvstore.bench.redis_server import RedisMissing, RedisServer
from kvstore.bench.report import print_table, write_json

TENANT, NAMESPACE = "acme", "llama-3-8b"
TIERS = ("hbm", "dram", "disk")
HEADER_BYTES = 23 + 32  # the block header (magic, version, lengths, size, crc32) + parent key


def _pipe(server: RedisServer, commands: bytes) -> None:
    subprocess.run(
        ["redis-cli", "-p", str(server.port), "--pipe"], input=commands, check=True, capture_output=True
    )


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _resp(*args: str) -> bytes:
    """One command in Redis's wire protocol, for `redis-cli --pipe` (a C client: a million keys in
    seconds, where a Python pipeline takes minutes)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        parts.append(f"${len(a)}\r\n{a}\r\n".encode())
    return b"".join(parts)


def _key(kind: str, i: int) -> str:
    return f"kvs:{TENANT}:{NAMESPACE}:{kind}:{i.to_bytes(32, 'big').hex()}"


def index_entries(
    server: RedisServer, r: redis.Redis, entries: int, holders: int, ttl: bool = True
) -> dict[str, Any]:
    """Bytes per index key of `holders` fields, each a worker id and a tier, with a TTL or without
    (the expires table's entry is the difference)."""
    r.flushall()
    before = _used(r)
    rng = random.Random(0)
    commands = []
    for _ in range(entries):
        key = _key("i", rng.getrandbits(256))
        fields = [x for _ in range(holders) for x in (f"worker-{rng.randrange(1000):04d}", rng.choice(TIERS))]
        commands.append(_resp("HSET", key, *fields))
        if ttl:  # the live TTL is ~300 s; an hour keeps every key alive however long the fill takes
            commands.append(_resp("EXPIRE", key, "3600"))
    _pipe(server, b"".join(commands))
    used = _used(r) - before
    sample = [r.randomkey() for _ in range(200)]
    usage = [r.memory_usage(k) for k in sample]
    fields = sum(r.hlen(k) for k in sample) / len(sample)  # random worker ids may collide
    return {
        "entries": entries,
        "holders": holders,
        "ttl": ttl,
        "fields_mean": fields,
        "memory_usage_mean": sum(usage) / len(usage),
        "used_memory_per_entry": used / entries,
        "encoding": r.object("encoding", sample[0]).decode(),
    }


def remote_blocks(r: redis.Redis, payload: int, count: int, header: bool = True) -> dict[str, Any]:
    """Bytes Redis holds per remote block of `payload` bytes (with the header and parent key, or
    the bare payload: the allocator's size classes decide how much either costs)."""
    r.flushall()
    before = _used(r)
    value = os.urandom(HEADER_BYTES * header + payload)
    keys = [_key("b", i) for i in range(count)]
    for key in keys:
        r.set(key, value)
    used = _used(r) - before
    return {
        "payload": payload,
        "header": header,
        "value": len(value),
        "memory_usage": r.memory_usage(keys[0]),
        "used_memory_per_block": used / count,
        "overhead": used / count / payload - 1,
    }


def throughput(server: RedisServer, r: redis.Redis, requests: int, pipeline: int) -> dict[str, float]:
    """Commands/s the server takes from redis-benchmark's C client over loopback (one connection per
    client, `pipeline` commands in flight): index publishes and lookups."""
    if shutil.which("redis-benchmark") is None:
        return {}
    r.flushall()
    # as long as a real key (64 hex digits); 1M distinct keys, so publishes mostly refresh entries
    # and lookups mostly hit, as they do in steady state
    key = f"kvs:{TENANT}:{NAMESPACE}:i:{'0' * 52}__rand_int__"
    runs = {
        "hset_per_s": ["HSET", key, "worker-0042", "dram"],
        "expire_per_s": ["EXPIRE", key, "300"],
        "hgetall_per_s": ["HGETALL", key],
    }
    out = {}
    flags = ["-P", str(pipeline), "-c", "4"]
    for name, command in runs.items():
        text = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(server.port),
                "-q",
                "-n",
                str(requests),
                "-r",
                "1000000",
                *flags,
                *command,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found = re.findall(r"([\d.]+) requests per second", text)
        out[name] = float(found[-1]) if found else float("nan")
    return out


def main(args: argparse.Namespace) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="kvs-redis-") as tmp, RedisServer(Path(tmp)) as server:
            r = server.client()
            version = r.info("server")["redis_version"]
            index = [index_entries(server, r, n, 1) for n in args.entries]
            largest = max(args.entries)
            index += [index_entries(server, r, largest, h) for h in (2, 4)]
            index.append(index_entries(server, r, largest, 1, ttl=False))
            sizes = (256 * 1024, 2 * 2**20, 8 * 2**20)
            blocks = [remote_blocks(r, size, args.blocks, h) for size in sizes for h in (True, False)]
            ops = throughput(server, r, args.requests, args.pipeline)
    except RedisMissing as exc:
        print(f"kvstore bench redis-scale: {exc}")
        return 2
    print_table(f"global index entries (redis {version})", index)
    print_table("remote tier blocks", blocks)
    if ops:
        print_table(f"loopback throughput, pipeline {args.pipeline}, 4 connections", [ops])
    if args.json:
        write_json(args.json, {"redis": version, "index": index, "blocks": blocks, "throughput": ops})
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "redis-scale",
        help="Redis memory per index entry and remote block, and loopback ops/s, for docs/scale.md",
        description="Start a throwaway redis-server on loopback and measure the shared layout's real cost.",
    )
    p.add_argument(
        "--entries",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 100_000, 1_000_000],
        help="index sizes to fill, comma-separated (default 10000,100000,1000000)",
    )
    p.add_argument("--blocks", type=int, default=16, help="remote blocks written per size (default 16)")
    p.add_argument("--requests", type=int, default=2_000_000, help="redis-benchmark requests per command")
    p.add_argument("--pipeline", type=int, default=64, help="redis-benchmark pipeline depth (default 64)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.set_defaults(run=main)
