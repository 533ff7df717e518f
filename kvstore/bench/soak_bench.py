"""`kvstore bench soak`: many agent sessions against a real server for a long while, then what the
server holds: RSS, pinned blocks, leases and open sessions, before (after a warm-up) and after
(clients gone, idle sessions expired). Nothing may leak: pins, leases and sessions back to 0, RSS
flat (within what the allocator keeps).

Each client thread plays agent sessions one after another: open, a few turns of (lookup with the
session, put the new blocks of its growing chain, get the prefix, a tool call begun and ended), a
fan-out and a pin now and then, and at the end a CloseSession, or (one in five) nothing, leaving the
session to idle expiry. Blocks go through shared memory when the host has it. Every error is counted
by kind; the figure is that there are none (RESOURCE_EXHAUSTED would mean pins or caps filled up).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml

from kvstore.bench.report import print_table, write_json
from kvstore.errors import KVStoreError
from kvstore.sdk import Client
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

BLOCK_TOKENS = 16
BLOCK = 16 * 1024
NS = "soak"


def server_state(address: str, pid: int) -> dict[str, Any]:
    with grpc.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        stats = admin.Stats(pb.StatsRequest(), timeout=30)
        sessions = admin.ListSessions(pb.ListSessionsRequest(), timeout=30)
    return {
        "rss_mib": round(psutil.Process(pid).memory_info().rss / 2**20, 1),
        "blocks": stats.blocks,
        "pinned_blocks": sum(t.pinned_blocks for t in stats.tiers),
        "leases": stats.leases.write_leases + stats.leases.read_leases,
        "reserved_bytes": stats.leases.reserved_bytes,
        "sessions": len(sessions.sessions),
    }


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def call(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            out = fn(*args, **kwargs)
        except (KVStoreError, grpc.RpcError) as exc:
            name = exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__
            with self.lock:
                self.calls[kind] += 1
                self.errors[f"{kind}: {name}"] += 1
            return None
        with self.lock:
            self.calls[kind] += 1
        return out


def play(address: str, worker: int, stop: threading.Event, tally: Tally, shared_memory: bool) -> None:
    """One client thread: agent sessions one after another until `stop`."""
    rng = random.Random(worker)
    with (
        Client(address, timeout=60.0, shared_memory=shared_memory) as kv,
        grpc.insecure_channel(address) as ch,
    ):
        hints = pb_grpc.AgentHintsStub(ch)
        n = 0
        while not stop.is_set():
            sid, n = f"soak-{worker}-{n}", n + 1
            tally.call("OpenSession", hints.OpenSession, pb.OpenSessionRequest(session=sid, namespace=NS))
            tokens: list[int] = [worker]  # a chain of its own: sessions share no blocks
            for _ in range(rng.randint(2, 6)):
                if stop.is_set():
                    break
                tokens += [rng.randrange(32000) for _ in range(BLOCK_TOKENS * rng.randint(1, 3))]
                keys = kv.keys_for(NS, tokens)
                found = tally.call("Lookup", kv.lookup, NS, keys=keys, session=sid)
                have = found.prefix_blocks if found is not None else 0
                new = keys[have:]
                parent = keys[have - 1] if have else None
                blobs = [rng.randbytes(BLOCK) for _ in new]
                tally.call("Put", kv.put, NS, new, blobs, parent=parent, session=sid)
                tally.call("Get", kv.get, NS, keys[:have], session=sid)
                pinned = rng.random() < 0.2 and tally.call("Pin", kv.pin, NS, keys[:1]) is not None
                if pinned:  # a client pin, released after its use
                    tally.call("Unpin", kv.unpin, NS, keys[:1])
                if rng.random() < 0.2:
                    fan = tally.call(
                        "AnnounceFanout",
                        hints.AnnounceFanout,
                        pb.AnnounceFanoutRequest(session=sid, n=2, ttl_s=30),
                    )
                    if fan is not None:
                        for _ in range(2):
                            done = pb.BranchDoneRequest(fanout_id=fan.fanout_id)
                            tally.call("BranchDone", hints.BranchDone, done)
                call = tally.call(
                    "BeginToolCall",
                    hints.BeginToolCall,
                    pb.BeginToolCallRequest(session=sid, tool_name=rng.choice(["grep", "bash", "edit"])),
                )
                time.sleep(rng.uniform(0.01, 0.2))
                if call is not None:
                    tally.call("EndToolCall", hints.EndToolCall, pb.EndToolCallRequest(call_id=call.call_id))
            if rng.random() < 0.8:
                tally.call("CloseSession", hints.CloseSession, pb.SessionRequest(session=sid))


def main(args: argparse.Namespace) -> int:
    if args.sessions < 1 or args.seconds <= 0:
        print("kvstore bench soak: --sessions must be at least 1 and --seconds > 0")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "soak.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "policy": "agent",
                    "hbm": {"enabled": "off"},
                    "dram": {"capacity": args.dram},
                    "disk": {"capacity": args.disk},
                    "sessions": {"idle_ttl_s": args.idle_ttl_s},
                    "log_level": "warning",
                    "namespaces": [
                        {"name": NS, "model": "m", "block_tokens": BLOCK_TOKENS, "block_bytes": BLOCK}
                    ],
                }
            )
        )
        server = ServerProcess(Path(tmp) / "data", config=config)
        pid = server.proc.pid
        start = server_state(server.address, pid)
        stop, tally = threading.Event(), Tally()
        threads = [
            threading.Thread(target=play, args=(server.address, i, stop, tally, not args.no_shm), daemon=True)
            for i in range(args.sessions)
        ]
        began = time.monotonic()
        for t in threads:
            t.start()
        warm_s = min(60.0, args.seconds / 10)
        time.sleep(warm_s)
        before = server_state(server.address, pid)  # after the warm-up: pools and caches are sized
        samples = [(round(time.monotonic() - began), before["rss_mib"])]
        while time.monotonic() - began < args.seconds:
            time.sleep(min(args.sample_s, max(0.0, args.seconds - (time.monotonic() - began))))
            samples.append((round(time.monotonic() - began), server_state(server.address, pid)["rss_mib"]))
        under_load = server_state(server.address, pid)
        stop.set()
        for t in threads:
            t.join(120)
        time.sleep(args.idle_ttl_s * 1.5 + 1)  # sessions left open expire (the server looks every ttl/4)
        after = server_state(server.address, pid)
        server.terminate()
    rows = [
        {"when": "start", **start},
        {"when": f"after {warm_s:.0f} s warm-up", **before},
        {"when": f"at {args.seconds:.0f} s, under load", **under_load},
        {"when": "clients gone, idle expired", **after},
    ]
    figures = {
        "sessions (concurrent)": args.sessions,
        "seconds": args.seconds,
        "calls": sum(tally.calls.values()),
        "errors": sum(tally.errors.values()),
        "rss growth after warm-up (MiB)": round(after["rss_mib"] - before["rss_mib"], 1),
        "rss max sampled (MiB)": max(r for _, r in samples),
        "pinned blocks after": after["pinned_blocks"],
        "leases after": after["leases"],
        "sessions after": after["sessions"],
    }
    print_table(f"soak: {args.sessions} sessions for {args.seconds:.0f} s", rows)
    print_table("soak figures", [figures])
    if tally.errors:
        print_table("errors by call and status", [dict(tally.errors)])
    write_json(
        args.json,
        {
            "figures": figures,
            "states": rows,
            "rss_samples": samples,
            "calls": dict(tally.calls),
            "errors": dict(tally.errors),
        },
    )
    leaked = after["pinned_blocks"] or after["leases"] or after["sessions"] or after["reserved_bytes"]
    return 1 if leaked or tally.errors else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "soak",
        help="many agent sessions for a long while; RSS, pins, leases, sessions before and after",
        description="A real server (agent policy, DRAM + disk) under N concurrent agent sessions "
        "(lookups, puts, gets, tool calls, fan-outs, pins); what it holds must come back flat.",
    )
    p.add_argument("--sessions", type=int, default=64, help="concurrent sessions (default 64)")
    p.add_argument("--seconds", type=float, default=600.0, help="how long (default 600)")
    p.add_argument("--sample-s", type=float, default=30.0, help="RSS sampled this often (default 30)")
    # Small tiers: the store is full (and stays full, blocks cycling to disk and out) well within
    # the warm-up, so what RSS does after it is the server's own, not the index filling up.
    p.add_argument("--dram", default="16MiB", help="DRAM tier (default 16MiB: blocks cycle to disk)")
    p.add_argument("--disk", default="64MiB", help="disk tier (default 64MiB)")
    p.add_argument("--no-shm", action="store_true", help="blocks over gRPC only")
    p.add_argument(
        "--idle-ttl-s", type=float, default=60.0, help="sessions.idle_ttl_s of the server (default 60)"
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
