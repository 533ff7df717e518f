"""`kvstore bench index`: prefix lookup cost and memory per block with a large index.

Drives the real Store (index + LRU policy) on a counting tier, so the figure is the shipped code's.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path

from kvstore.bench.report import percentile, print_table, write_json
from kvstore.hashing import Namespace
from kvstore.policy.lru import LRUPolicy
from kvstore.store import PutBlock, Store
from kvstore.tiers.counting import CountingTier

BLOCK_BYTES = 64


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(blocks: int, chain: int, repeats: int) -> dict[str, float]:
    ns = Namespace("bench", "bench-model", block_tokens=16, block_bytes=BLOCK_BYTES)
    store = Store([CountingTier("dram", blocks * BLOCK_BYTES)], [ns], LRUPolicy())
    data = bytes(BLOCK_BYTES)
    chains = blocks // chain
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    all_keys = []
    for c in range(chains):
        keys = ns.chain_keys(range(c * chain * 16, (c + 1) * chain * 16))
        parents = [None, *keys[:-1]]
        store.put([PutBlock("bench", k, data, p) for k, p in zip(keys, parents, strict=True)])
        if c % max(1, chains // 10) == 0:
            all_keys.append(keys)
    put_s = time.perf_counter() - started
    gc.collect()
    per_block = (rss_bytes() - before) / len(store.index)
    hit_times, miss_times = [], []
    for i in range(repeats):
        keys = all_keys[i % len(all_keys)]
        t0 = time.perf_counter()
        match = store.lookup("bench", keys)
        hit_times.append(time.perf_counter() - t0)
        assert match.blocks == chain
        missing_first = [keys[0][:-1] + b"\xff", *keys[1:]]
        t0 = time.perf_counter()
        store.lookup("bench", missing_first)
        miss_times.append(time.perf_counter() - t0)
    return {
        "blocks_indexed": len(store.index),
        "chain_blocks": chain,
        "lookup_full_hit_p50_us": percentile(hit_times, 50) * 1e6,
        "lookup_full_hit_p99_us": percentile(hit_times, 99) * 1e6,
        "lookup_first_miss_p50_us": percentile(miss_times, 50) * 1e6,
        "memory_per_block_bytes": per_block,
        "put_blocks_per_s": len(store.index) / put_s,
    }


def main(args: argparse.Namespace) -> int:
    result = run(args.blocks, args.chain, args.repeats)
    print_table(
        f"index: {result['blocks_indexed']:,} blocks, lookups of a {args.chain}-block chain",
        [{k: v for k, v in result.items()}],
    )
    write_json(args.json, result)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="lookup time and memory per block with a large index",
        description="Index a chain-structured set of blocks, then time longest-prefix lookups.",
    )
    p.add_argument("--blocks", type=int, default=1_000_000, help="blocks to index (default 1,000,000)")
    p.add_argument("--chain", type=int, default=1000, help="blocks per chain looked up (default 1000)")
    p.add_argument("--repeats", type=int, default=300, help="lookups to time (default 300)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
