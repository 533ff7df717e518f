"""`kvstore bench remote`: the shared remote tier on Redis, in one run.

1. put/get GB/s through kvstore's remote tier (encode + checksum + pipelined SET, written by its
   writer thread; pipelined GET + checksum check) for 1-16 MiB blocks, next to a raw memory copy
   of the same bytes and next to *recompute*: the KV bytes per second prefill produces at the
   replay scenario's rate (prefill_tps x bytes per token). Fetching beats recomputing where
   remote get GB/s exceeds it.
2. Lookup round-trip p50/p99 over gRPC against two `kvstore serve` children, one without Redis
   and one with the remote tier and global index: a chain held locally (no Redis call), a chain
   held only in Redis (one pipelined EXISTS per lookup), a chain stored nowhere (the same probe).

Redis is started here on a free loopback port (`redis-server` must be installed) unless
`--redis-url` names one. Loopback figures measure kvstore's and Redis's CPU cost, not a network:
on a real network add the round-trip time to every lookup that asks Redis, and cap the GB/s at the
link (a 25 Gb/s NIC moves ~3 GB/s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kvstore.bench.redis_server import RedisMissing, RedisServer
from kvstore.bench.report import percentile, print_table, write_json
from kvstore.bench.scenario import GB, Scenario
from kvstore.hashing import Namespace
from kvstore.sdk import Client
from kvstore.server.process import ServerProcess
from kvstore.tiers.redis_link import RedisLink
from kvstore.tiers.remote import RemoteTier

MiB = 2**20


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser(
        "remote",
        help="remote tier on Redis: get/put GB/s vs raw copy vs recompute; Lookup with and without it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--redis-url", help="use this Redis (default: start redis-server on a free port)")
    p.add_argument("--sizes", default="1,4,16", help="block sizes in MiB, comma-separated (default 1,4,16)")
    p.add_argument("--total-mib", type=int, default=256, help="bytes timed per size and way (default 256)")
    p.add_argument("--lookups", type=int, default=2000, help="lookups timed per case (default 2000)")
    p.add_argument("--chain", type=int, default=64, help="blocks per looked-up chain (default 64)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to this JSON file")
    p.set_defaults(run=run)


def raw_copy_gbps(size: int, total: int) -> float:
    src = np.frombuffer(os.urandom(size), dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    n = max(1, total // size)
    started = time.perf_counter()
    for _ in range(n):
        np.copyto(dst, src)
    return n * size / (time.perf_counter() - started) / GB


def tier_gbps(url: str, size_mib: int, total_mib: int) -> dict[str, float]:
    """Put (queued, written by the writer thread, timed to the last byte in Redis) and get GB/s."""
    size = size_mib * MiB
    ns = Namespace("bench", "bench", "", "", 16, size)
    blocks = {os.urandom(32): os.urandom(size) for _ in range(max(2, total_mib // size_mib))}
    link = RedisLink(url, False, 30.0)
    link.probe()
    tier = RemoteTier(link, {"bench": ns}, 1 << 62, write_through=False, read_local=lambda n, k: None)
    tier.start()
    try:
        keys = list(blocks)
        tier.offer("bench", keys[0], None, b"", blocks[keys[0]])  # connection and allocator warm
        tier.flush(60)
        tier.fetch("bench", keys[:1])
        started = time.perf_counter()
        for key in keys[1:]:
            while not tier.offer("bench", key, None, b"", blocks[key]):
                time.sleep(0.001)  # the queue is full: wait for the writer, as a steady producer would
        if not tier.flush(300):
            raise SystemExit("the remote writer did not finish")
        put_s = time.perf_counter() - started
        started = time.perf_counter()
        got = []
        for i in range(1, len(keys), 4):  # 4 blocks per pipelined read
            got += tier.fetch("bench", keys[i : i + 4])
        get_s = time.perf_counter() - started
        assert all(b is not None and b.data == blocks[k] for b, k in zip(got, keys[1:], strict=True))
        moved = (len(keys) - 1) * size
        link.call(lambda c: c.flushdb(), None)
        return {"put_gbps": moved / put_s / GB, "get_gbps": moved / get_s / GB}
    finally:
        tier.close()
        link.close()


def lookup_latencies(url: str, workdir: Path, lookups: int, chain: int) -> list[dict[str, Any]]:
    small = ["--shared-memory", "off", "--dram", "64MiB", "--disk", "64MiB"]
    rows = []
    with (
        ServerProcess(workdir / "alone", small) as alone,
        ServerProcess(workdir / "shared", [*small, "--remote-url", url, "--worker-id", "bench"]) as shared,
        ServerProcess(workdir / "writer", [*small, "--remote-url", url, "--worker-id", "writer"]) as writer,
        Client(alone.address) as ka,
        Client(shared.address) as ks,
        Client(writer.address) as kw,
    ):
        block = ka.namespace("default").block_bytes
        tokens = {name: [i * 7919 + seed for i in range(chain * 16)] for seed, name in enumerate("lrn")}
        keys = {name: ka.keys_for("default", t) for name, t in tokens.items()}
        payload = [b"\0" * block] * chain
        ka.put("default", keys["l"], payload)
        ks.put("default", keys["l"], payload)
        kw.put("default", keys["r"], payload)  # write-through: in Redis, not on `shared`
        deadline = time.monotonic() + 30
        while ks.lookup("default", keys=keys["r"]).prefix_blocks < chain:
            if time.monotonic() > deadline:
                raise SystemExit("blocks did not reach Redis")
            time.sleep(0.05)
        cases = [("held locally", "l"), ("held only in Redis", "r"), ("stored nowhere", "n")]
        servers = (("without remote", ka), ("with remote + index", ks))
        runs = [(server, label, name, kv.lookup) for server, kv in servers for label, name in cases]
        runs = [r for r in runs if not (r[0] == "without remote" and r[2] == "r")]
        # Route reads the index: 3 workers' records, the chain's holders and the remote prefix.
        runs.append(("with remote + index", "Admin.Route (2 workers, chain indexed)", "l", ks.route))
        for server, label, name, call in runs:
            for _ in range(50):
                call("default", keys=keys[name])
            times = []
            for _ in range(lookups):
                started = time.perf_counter()
                call("default", keys=keys[name])
                times.append(time.perf_counter() - started)
            rows.append(
                {
                    "server": server,
                    "chain": label,
                    "p50_us": percentile(times, 50) * 1e6,
                    "p99_us": percentile(times, 99) * 1e6,
                }
            )
    return rows


def run(args: argparse.Namespace) -> int:
    scenario = Scenario()
    recompute = scenario.prefill_tps * scenario.bytes_per_token / GB
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-remote-") as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            try:
                url = args.redis_url or stack.enter_context(RedisServer(workdir)).url
            except RedisMissing as exc:
                print(f"kvstore bench remote: {exc}; or pass --redis-url")
                return 2
            rows = []
            for size_mib in [int(s) for s in args.sizes.split(",")]:
                figures = tier_gbps(url, size_mib, args.total_mib)
                rows.append(
                    {
                        "block_mib": size_mib,
                        "raw_copy_gbps": raw_copy_gbps(size_mib * MiB, args.total_mib * MiB),
                        **figures,
                        "recompute_gbps": recompute,
                        "get_vs_recompute": figures["get_gbps"] / recompute,
                    }
                )
            print_table(
                f"remote tier GB/s (loopback) vs raw copy vs recompute ({scenario.model} at "
                f"{scenario.prefill_tps:.0f} prefill tokens/s = {recompute:.2f} GB/s of KV)",
                rows,
            )
            latency = lookup_latencies(url, workdir, args.lookups, args.chain)
            print_table(f"Lookup round trip of a {args.chain}-block chain over gRPC (loopback)", latency)
    write_json(args.json, {"throughput": rows, "lookup": latency, "scenario": scenario.describe()})
    return 0
