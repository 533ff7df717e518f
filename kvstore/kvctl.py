"""`kvctl`: operate a running kvstore over gRPC (the Admin service).

Tables by default (rich), `--json` for scripts. Exit status: 0 ok, 1 the server refused or is
unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from kvstore.sdk.core import DEFAULT_ADDRESS, target
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

_SIZE = TypeAdapter(ByteSize)


def human(n: float) -> str:
    return ByteSize(int(n)).human_readable(decimal=False)


def _size(text: str) -> int:
    try:
        return int(_SIZE.validate_python(text))
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (try 512MiB or 2GiB)") from None


def _hex_key(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a hex block key") from None


def _stats(stub: pb_grpc.AdminStub, args: argparse.Namespace, console: Console) -> Any:
    reply = stub.Stats(pb.StatsRequest(), timeout=args.timeout)
    if args.json:
        return reply
    table = Table(
        title=f"kvstore {args.address} — policy {reply.policy}, {reply.blocks} blocks, "
        f"up {reply.uptime_s:.0f}s"
    )
    for col in ("tier", "used / capacity", "blocks", "pinned", "hits", "in", "out", "drops"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    for t in reply.tiers:
        pct = 100 * t.used_bytes / t.capacity_bytes if t.capacity_bytes else 0.0
        table.add_row(
            t.name,
            f"{human(t.used_bytes)} / {human(t.capacity_bytes)} ({pct:.0f}%)",
            str(t.blocks),
            str(t.pinned_blocks),
            str(t.hits),
            str(t.moves_in),
            str(t.moves_out),
            str(t.drops),
        )
    console.print(table)
    console.print(
        "devices: "
        + ", ".join(f"{t.name} {t.device}{' (shared memory)' if t.shared else ''}" for t in reply.tiers)
    )
    lease = reply.leases
    console.print(
        f"shared-memory leases: {lease.write_leases} writing ({human(lease.reserved_bytes)} reserved), "
        f"{lease.read_leases} reading"
    )
    console.print(
        f"get misses {reply.misses}   lookups {reply.lookups} "
        f"(blocks found {reply.lookup_hit_blocks})   namespaces: "
        + ", ".join(f"{n.name} ({n.block_tokens} tok, {human(n.block_bytes)})" for n in reply.namespaces)
    )
    return None


def _blocks(stub: pb_grpc.AdminStub, args: argparse.Namespace, console: Console) -> Any:
    reply = stub.ListBlocks(
        pb.ListBlocksRequest(namespace=args.namespace or "", tier=args.tier or "", limit=args.limit),
        timeout=args.timeout,
    )
    if args.json:
        return reply
    table = Table(title=f"{len(reply.blocks)} of {reply.total} blocks, most recently used first")
    for col in ("namespace", "key", "tier", "size", "pins", "idle", "sessions"):
        table.add_column(col)
    for b in reply.blocks:
        table.add_row(
            b.namespace,
            b.key.hex()[:16] + "…",
            b.tier,
            human(b.size),
            str(b.pins),
            f"{b.idle_s:.1f}s",
            ", ".join(b.sessions),
        )
    console.print(table)
    return None


def _evict(stub: pb_grpc.AdminStub, args: argparse.Namespace, console: Console) -> Any:
    if bool(args.keys) == bool(args.tier):
        raise SystemExit("kvctl evict: give either block keys (with --namespace) or --tier with --bytes")
    if args.tier and not args.bytes:
        raise SystemExit("kvctl evict: --tier needs --bytes (how much to free)")
    reply = stub.Evict(
        pb.EvictRequest(
            namespace=args.namespace or "",
            keys=args.keys,
            tier=args.tier or "",
            bytes=args.bytes or 0,
            drop=args.drop,
        ),
        timeout=args.timeout,
    )
    if args.json:
        return reply
    verb = "dropped" if args.drop else "demoted"
    console.print(f"{verb} {reply.blocks} blocks ({human(reply.bytes)})")
    return None


def _ago(seconds: float) -> str:
    return f"in {seconds:.1f}s" if seconds >= 0 else f"{-seconds:.1f}s ago"


def _sessions(stub: pb_grpc.AdminStub, args: argparse.Namespace, console: Console) -> Any:
    reply = stub.ListSessions(pb.ListSessionsRequest(), timeout=args.timeout)
    if args.json:
        return reply
    table = Table(title=f"{len(reply.sessions)} sessions")
    for col in ("session", "state", "tool", "expected back", "bytes per tier", "prefetch"):
        table.add_column(col)
    for s in reply.sessions:
        tool = f"{s.tool_name} for {s.in_tool_s:.1f}s" if s.tool_name else ""
        back = _ago(s.expected_back_in_s) if s.tool_name else ""
        tiers = ", ".join(f"{t} {human(b)}" for t, b in sorted(s.bytes_per_tier.items()))
        p = s.prefetch
        when = ""
        if p.HasField("done_ago_s"):
            when = f" {p.done_ago_s:.1f}s ago"
        elif p.HasField("scheduled_in_s"):
            when = f" {_ago(p.scheduled_in_s)}"
        fan = f" fan-out {s.fanout_branches_left} left" if s.fanout_branches_left else ""
        table.add_row(s.session, s.state + fan, tool, back, tiers, f"{p.status}{when}")
    console.print(table)
    return None


def _health(stub: pb_grpc.AdminStub, args: argparse.Namespace, console: Console) -> Any:
    reply = stub.Health(pb.HealthRequest(), timeout=args.timeout)
    if args.json:
        return reply
    style = "green" if reply.status == "SERVING" else "red"
    console.print(f"[{style}]{reply.status}[/{style}]  kvstore {reply.version}, up {reply.uptime_s:.0f}s")
    for t in reply.tiers:
        console.print(f"  {t.name}: {'ok' if t.ok else 'FAIL'} {t.detail if not t.ok else ''}")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvctl", description="Operate a running kvstore server.")
    parser.add_argument(
        "--address",
        default=os.environ.get("KVSTORE_ADDRESS", DEFAULT_ADDRESS),
        help=f"server address, host:port or unix:///path (default {DEFAULT_ADDRESS}, or $KVSTORE_ADDRESS)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "stats",
        help="per-tier usage, blocks, hits, moves",
        description="Per tier: used/capacity, blocks, pinned, hits, moves, drops.",
    )
    p.set_defaults(run=_stats)

    p = sub.add_parser(
        "blocks", help="list stored blocks", description="List stored blocks, most recent first."
    )
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument("--tier", choices=["hbm", "dram", "disk"], help="only this tier")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(run=_blocks)

    p = sub.add_parser(
        "evict",
        help="demote or drop blocks",
        description="Move blocks one tier down (or drop them with --drop): either the named "
        "keys, or --bytes worth from --tier in the policy's order.",
    )
    p.add_argument("keys", nargs="*", type=_hex_key, help="hex block keys (with --namespace)")
    p.add_argument("--namespace", help="namespace of the keys")
    p.add_argument("--tier", choices=["hbm", "dram", "disk"], help="tier to free room in")
    p.add_argument("--bytes", type=_size, help="how much to free, e.g. 2GiB")
    p.add_argument("--drop", action="store_true", help="remove from the store instead of demoting")
    p.set_defaults(run=_evict)

    p = sub.add_parser(
        "sessions",
        help="agent sessions: state, tool calls, bytes per tier, prefetches",
        description="Each session's state (running / in tool since / expected back / awaiting user), its "
        "bytes per tier, and its prefetch (scheduled at, done, late).",
    )
    p.set_defaults(run=_sessions)

    p = sub.add_parser(
        "health",
        help="is the server up and are its tiers writable",
        description="Server status and per-tier health.",
    )
    p.set_defaults(run=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    channel = grpc.insecure_channel(target(args.address))
    try:
        reply = args.run(pb_grpc.AdminStub(channel), args, console)
    except grpc.RpcError as exc:
        code = exc.code()
        hint = " (is `kvstore serve` running there?)" if code == grpc.StatusCode.UNAVAILABLE else ""
        print(f"kvctl: {code.name}: {exc.details()}{hint}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    if reply is not None:
        print(
            json.dumps(
                MessageToDict(
                    reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                ),
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
