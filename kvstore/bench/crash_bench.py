"""`kvstore bench crash`: kill -9 a server in the middle of writes, again and again, and check
after every restart that no block comes back corrupt and none acknowledged on disk is lost.

A real `kvstore serve` with the disk tier alone (fsync on), so a put's answer "disk" means its
file is durable. A writer puts blocks whose bytes are derived from their keys; the server is
killed with SIGKILL at a random moment; the next server on the same data dir is asked for the
blocks the killed one was writing, and the last for every block ever written. Served bytes must
be the key's bytes; every acknowledged block must be there.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import threading
import time
from pathlib import Path

import yaml

from kvstore.bench.report import print_table, write_json
from kvstore.sdk import Client
from kvstore.server.process import ServerProcess

BLOCK = 16 * 1024


def key(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=32).digest()


def payload(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=64).digest() * (BLOCK // 64)


def write_until_killed(address: str, start: int, acked: list[int], stop: threading.Event) -> None:
    """Put one block after another; note the ones the server answered as stored on disk."""
    n = start
    try:
        with Client(address, timeout=5.0, shared_memory=False) as kv:
            while not stop.is_set():
                if kv.put("crash", [key(n)], [payload(n)]) == ["disk"]:
                    acked.append(n)
                n += 1
    except Exception:  # the server died under the call: that is the point
        return


def check(address: str, start: int, end: int, acked: set[int]) -> tuple[int, int, int]:
    """(blocks served, corrupt ones, acknowledged ones missing) among the keys start..end-1."""
    served = corrupt = lost = 0
    with Client(address, timeout=30.0, shared_memory=False) as kv:
        for first in range(start, end, 256):
            numbers = range(first, min(end, first + 256))
            for n, block in zip(numbers, kv.get("crash", [key(n) for n in numbers]), strict=True):
                if block is None:
                    lost += n in acked
                    continue
                served += 1
                corrupt += bytes(block) != payload(n)
    return served, corrupt, lost


def main(args: argparse.Namespace) -> int:
    if args.cycles < 1 or not 0 < args.min_s <= args.max_s:
        print("kvstore bench crash: --cycles must be at least 1 and 0 < --min-s <= --max-s")
        return 2
    rng = random.Random(args.seed)
    rows = []
    acked: set[int] = set()
    written = 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "crash.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "hbm": {"enabled": "off"},
                    "dram": {"enabled": False},
                    "disk": {"capacity": "4GiB", "fsync": True},
                    "shared_memory": {"enabled": "off"},
                    "namespaces": [{"name": "crash", "model": "m", "block_tokens": 16, "block_bytes": BLOCK}],
                }
            )
        )
        data = Path(tmp) / "data"
        previous = 0  # where the last cycle's writes began: what its kill put at risk
        for cycle in range(args.cycles):
            server = ServerProcess(data, config=config)
            served, corrupt, lost = check(server.address, previous, written, acked)
            now_acked: list[int] = []
            stop = threading.Event()
            writer = threading.Thread(
                target=write_until_killed, args=(server.address, written, now_acked, stop)
            )
            writer.start()
            time.sleep(rng.uniform(args.min_s, args.max_s))
            server.kill()  # SIGKILL mid-write: no shutdown code runs
            stop.set()
            writer.join()
            previous = written
            written = max([written, *(n + 1 for n in now_acked)]) + 64  # past anything maybe in flight
            acked.update(now_acked)
            rows.append({"cycle": cycle, "served": served, "corrupt": corrupt, "acked lost": lost})
        server = ServerProcess(data, config=config)
        served, corrupt, lost = check(server.address, 0, written, acked)  # all of it, once more
        server.terminate()
    rows.append({"cycle": args.cycles, "served": served, "corrupt": corrupt, "acked lost": lost})
    figures = {
        "kill -9 cycles": args.cycles,
        "blocks acknowledged on disk": len(acked),
        "corrupt blocks served (all checks)": sum(r["corrupt"] for r in rows),
        "acknowledged blocks lost (all checks)": sum(r["acked lost"] for r in rows),
        "blocks served at the end": served,
    }
    print_table(f"kill -9 mid-write, {args.cycles} cycles", [figures])
    write_json(args.json, {"figures": figures, "cycles": rows})
    failed = figures["corrupt blocks served (all checks)"] or figures["acknowledged blocks lost (all checks)"]
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "crash",
        help="kill -9 mid-write, restart, check nothing corrupt is served and nothing acked is lost",
        description="A real server with the disk tier alone (fsync on) is killed with SIGKILL while "
        "a client writes; after each restart every block ever written is read back.",
    )
    p.add_argument("--cycles", type=int, default=100, help="kill -9 cycles (default 100)")
    p.add_argument("--min-s", type=float, default=0.2, help="shortest run before the kill (default 0.2)")
    p.add_argument("--max-s", type=float, default=1.0, help="longest run before the kill (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
