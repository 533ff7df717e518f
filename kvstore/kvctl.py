"""`kvctl`: operate a running kvstore over gRPC (the Admin service, and AgentHints for sessions).

Tables by default (rich), `--json` for scripts: numbers are JSON numbers and keys are hex, as
`kvctl evict` takes them. The options `--address`, `--json`, `--wide` and `--timeout` go before
or after the command. Exit status: 0 ok, 1 the server refused or is unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from kvstore import __version__
from kvstore.sdk import auth
from kvstore.sdk.core import DEFAULT_ADDRESS, target
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

_SIZE = TypeAdapter(ByteSize)
SHORT_KEY = 12  # hex digits of a key in a table without --wide
SHORT_ID = 16  # characters of a session id in a table without --wide
WIDE = 100_000  # console width under --wide: tables take their natural width, nothing is cut


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


def to_json(message: Message) -> dict[str, Any]:
    """A reply as JSON: numbers stay numbers (protobuf's own JSON makes 64-bit ones strings),
    bytes become hex, every field is present except unset optional ones."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            item = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _json_value(item, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_json_value(field, v) for v in value]
        elif not field.has_presence or message.HasField(field.name):
            out[field.name] = _json_value(field, value)
    return out


def _json_value(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        return to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    return value


def _key(key: bytes, wide: bool) -> str:
    text = key.hex()
    return text if wide or len(text) <= SHORT_KEY else text[:SHORT_KEY] + "…"


def _id_column(table: Table, name: str, wide: bool) -> None:
    """A column of ids: whole under --wide; otherwise cut with an ellipsis, never wrapped."""
    if wide:
        table.add_column(name, no_wrap=True)
    else:
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=SHORT_ID)


def _tenant_table(reply: pb.StatsResponse, console: Console) -> None:
    """Per tenant: used / quota per tier (pinned in brackets), open sessions / their cap."""
    if not reply.tenants:
        return
    table = Table(title="tenants (used / quota, pinned)")
    table.add_column("tenant")
    for t in reply.tiers:
        table.add_column(t.name, justify="right")
    table.add_column("sessions", justify="right")
    for tenant in reply.tenants:
        cells = [
            f"{human(u.used_bytes)} / {human(u.quota_bytes) if u.quota_bytes else '-'}"
            + (f" ({human(u.pinned_bytes)})" if u.pinned_bytes else "")
            for u in tenant.tiers
        ]
        cap = str(tenant.max_sessions) if tenant.max_sessions else "-"
        table.add_row(tenant.tenant or "(none)", *cells, f"{tenant.sessions} / {cap}")
    console.print(table)


def _stats(channel: grpc.Channel, args: argparse.Namespace, console: Console) -> Any:
    reply = pb_grpc.AdminStub(channel).Stats(pb.StatsRequest(), timeout=args.timeout)
    if args.json:
        return to_json(reply)
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
    _tenant_table(reply, console)
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
    if reply.HasField("remote"):
        r = reply.remote
        console.print(
            f"remote (redis, worker {r.worker_id}): {'up' if r.up else '[red]DOWN[/red]'}, "
            f"{human(r.used_bytes)} / {human(r.capacity_bytes)} in {r.blocks} blocks; hits {r.hits} "
            f"misses {r.misses} corrupt {r.corrupt}; writes {r.writes} dropped {r.dropped_writes} "
            f"queued {r.queued} evicted {r.evictions}; outages {r.episodes}; index published "
            f"{r.index_published} (full {r.index_republished})"
        )
    return None


def _blocks(channel: grpc.Channel, args: argparse.Namespace, console: Console) -> Any:
    reply = pb_grpc.AdminStub(channel).ListBlocks(
        pb.ListBlocksRequest(namespace=args.namespace or "", tier=args.tier or "", limit=args.limit),
        timeout=args.timeout,
    )
    if args.json:
        return to_json(reply)
    table = Table(title=f"{len(reply.blocks)} of {reply.total} blocks, most recently used first")
    table.add_column("namespace")
    table.add_column("key", no_wrap=True)
    for col in ("tier", "size", "pins", "idle"):
        table.add_column(col)
    _id_column(table, "sessions", args.wide)
    for b in reply.blocks:
        table.add_row(
            b.namespace,
            _key(b.key, args.wide),
            b.tier,
            human(b.size),
            str(b.pins),
            f"{b.idle_s:.1f}s",
            ", ".join(b.sessions),
        )
    console.print(table)
    return None


def _evict(channel: grpc.Channel, args: argparse.Namespace, console: Console) -> Any:
    if bool(args.keys) == bool(args.tier):
        raise SystemExit("kvctl evict: give either block keys (with --namespace) or --tier with --bytes")
    if args.tier and not args.bytes:
        raise SystemExit("kvctl evict: --tier needs --bytes (how much to free)")
    admin = pb_grpc.AdminStub(channel)
    # Which tiers the blocks leave: demoting from the bottom tier, or with no room below, drops a
    # block, and the server's reply does not say which happened. The drops counter of the tiers
    # they left does, read before and after.
    sources = [args.tier] if args.tier else _tiers_of(channel, args)
    before = _drops(admin, args.timeout)
    reply = admin.Evict(
        pb.EvictRequest(
            namespace=args.namespace or "",
            keys=args.keys,
            tier=args.tier or "",
            bytes=args.bytes or 0,
            drop=args.drop,
        ),
        timeout=args.timeout,
    )
    after = _drops(admin, args.timeout)
    dropped = min(reply.blocks, sum(after.get(t, 0) - before.get(t, 0) for t in set(sources)))
    demoted = reply.blocks - dropped
    if args.json:
        return {**to_json(reply), "demoted": demoted, "dropped": dropped}
    parts = [f"demoted {demoted}"] if demoted or not dropped else []
    parts += [f"dropped {dropped}"] if dropped else []
    console.print(f"{', '.join(parts)} of {reply.blocks} blocks ({human(reply.bytes)})")
    return None


def _drops(admin: pb_grpc.AdminStub, timeout: float) -> dict[str, int]:
    return {t.name: t.drops for t in admin.Stats(pb.StatsRequest(), timeout=timeout).tiers}


def _tiers_of(channel: grpc.Channel, args: argparse.Namespace) -> list[str]:
    """The tier each named key is in now (keys not stored are left out)."""
    kv = pb_grpc.KVStoreStub(channel)
    tiers = []
    for key in args.keys:
        found = kv.Lookup(pb.LookupRequest(namespace=args.namespace or "", keys=[key]), timeout=args.timeout)
        tiers += found.tiers
    return tiers


def _ago(seconds: float) -> str:
    return f"in {seconds:.1f}s" if seconds >= 0 else f"{-seconds:.1f}s ago"


def _sessions(channel: grpc.Channel, args: argparse.Namespace, console: Console) -> Any:
    reply = pb_grpc.AdminStub(channel).ListSessions(pb.ListSessionsRequest(), timeout=args.timeout)
    if args.json:
        return to_json(reply)
    table = Table(title=f"{len(reply.sessions)} sessions")
    _id_column(table, "session", args.wide)
    for col in ("state", "tool", "expected back", "bytes per tier", "prefetch"):
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


def _session_close(channel: grpc.Channel, args: argparse.Namespace, console: Console) -> Any:
    reply = pb_grpc.AgentHintsStub(channel).CloseSession(
        pb.SessionRequest(session=args.session_id), timeout=args.timeout
    )
    if args.json:
        return to_json(reply)
    console.print(
        f"closed session {reply.session}: its blocks stay stored, no longer held for it", soft_wrap=True
    )
    return None


def _health(channel: grpc.Channel, args: argparse.Namespace, console: Console) -> Any:
    reply = pb_grpc.AdminStub(channel).Health(pb.HealthRequest(), timeout=args.timeout)
    if args.json:
        return to_json(reply)
    style = "green" if reply.status == "SERVING" else "red"
    console.print(f"[{style}]{reply.status}[/{style}]  kvstore {reply.version}, up {reply.uptime_s:.0f}s")
    for t in reply.tiers:
        console.print(f"  {t.name}: {'ok' if t.ok else 'FAIL'} {t.detail if not t.ok else ''}")
    return None


def _route(channel: grpc.Channel, args: argparse.Namespace, console: Console) -> Any:
    if (args.keys is None) == (args.tokens is None):
        raise SystemExit("kvctl route: give the prompt as --keys HEX,HEX,... or --tokens N,N,... (one)")
    request = pb.RouteRequest(namespace=args.namespace, keys=args.keys or [], tokens=args.tokens or [])
    if args.load_weight is not None:
        request.load_weight = args.load_weight
    request.limit = args.limit
    reply = pb_grpc.AdminStub(channel).Route(request, timeout=args.timeout)
    if args.json:
        return to_json(reply)
    note = "" if reply.index_used else " — global index not read (no Redis, or it is down): this worker only"
    table = Table(title=f"route for {reply.chain_blocks} blocks of {args.namespace}{note}")
    _id_column(table, "worker", args.wide)
    for col in ("address", "prefix blocks", "load", "uncovered", "cost"):
        table.add_column(col, justify="left" if col in ("address", "prefix blocks") else "right")
    for c in reply.candidates:
        held = ", ".join(f"{t} {n}" for t, n in sorted(c.prefix_blocks.items())) or "-"
        table.add_row(c.worker, c.address, held, f"{c.load:.0f}", str(c.uncovered_tokens), f"{c.cost:.1f}")
    console.print(table)
    return None


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of token ids") from None


def _key_list(text: str) -> list[bytes]:
    return [_hex_key(t.strip()) for t in text.split(",") if t.strip()]


def _options(in_command: bool) -> argparse.ArgumentParser:
    """The options every command takes. After the command they default to "not given", so a value
    given before the command is kept (`kvctl --json stats` and `kvctl stats --json` agree)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if in_command else value

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--address",
        default=default(os.environ.get("KVSTORE_ADDRESS", DEFAULT_ADDRESS)),
        help=f"server address, host:port or unix:///path (default {DEFAULT_ADDRESS}, or $KVSTORE_ADDRESS)",
    )
    p.add_argument(
        "--token",
        default=default(None),
        help="bearer token, for servers started with --auth-tokens (default $KVSTORE_TOKEN)",
    )
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=default(None),
        metavar="PEM",
        help="connect with TLS, trusting this CA (default $KVSTORE_TLS_CA; plaintext when neither)",
    )
    p.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of tables")
    p.add_argument(
        "--wide", action="store_true", default=default(False), help="tables show whole ids and keys"
    )
    p.add_argument(
        "--timeout", type=float, default=default(10.0), help="seconds to wait for the server (default 10)"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvctl", description="Operate a running kvstore server.", parents=[_options(False)]
    )
    parser.add_argument("--version", action="version", version=f"kvctl (kvstore {__version__})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    options = [_options(True)]

    p = sub.add_parser(
        "stats",
        parents=options,
        help="per-tier usage, blocks, hits, moves",
        description="Per tier: used/capacity, blocks, pinned, hits, moves, drops.",
    )
    p.set_defaults(run=_stats)

    p = sub.add_parser(
        "blocks",
        parents=options,
        help="list stored blocks",
        description="List stored blocks, most recent first.",
    )
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument("--tier", choices=["hbm", "dram", "disk"], help="only this tier")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.set_defaults(run=_blocks)

    p = sub.add_parser(
        "evict",
        parents=options,
        help="demote or drop blocks",
        description="Move blocks one tier down (or drop them with --drop): either the named "
        "keys, or --bytes worth from --tier in the policy's order. Blocks on the bottom tier, or with "
        "no room below, are dropped; the message says how many were demoted and how many dropped.",
    )
    p.add_argument("keys", nargs="*", type=_hex_key, help="hex block keys (with --namespace)")
    p.add_argument("--namespace", help="namespace of the keys")
    p.add_argument("--tier", choices=["hbm", "dram", "disk"], help="tier to free room in")
    p.add_argument("--bytes", type=_size, help="how much to free, e.g. 2GiB")
    p.add_argument("--drop", action="store_true", help="remove from the store instead of demoting")
    p.set_defaults(run=_evict)

    p = sub.add_parser(
        "sessions",
        parents=options,
        help="agent sessions: state, tool calls, bytes per tier, prefetches",
        description="Each session's state (running / in tool since / expected back / awaiting user), its "
        "bytes per tier, and its prefetch (scheduled at, done, late).",
    )
    p.set_defaults(run=_sessions)

    p = sub.add_parser(
        "session", parents=options, help="act on one agent session", description="Act on one session."
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    close = actions.add_parser(
        "close",
        parents=options,
        help="close a session",
        description="Close a session, as its agent would: its blocks stay stored but are no longer "
        "held for it, so they leave the fast tiers first.",
    )
    close.add_argument("session_id", metavar="ID", help="the session's id (see `kvctl sessions`)")
    close.set_defaults(run=_session_close)

    p = sub.add_parser(
        "route",
        parents=options,
        help="which workers should take a prompt (global prefix index)",
        description="Workers to send a request to, best first: the prefix blocks each can serve per tier, "
        "its load and its cost (tokens to prefill not covered + tier fetch penalties + load weight x load).",
    )
    p.add_argument("--namespace", required=True, help="namespace of the prompt")
    p.add_argument("--tokens", type=_int_list, help="the prompt's token ids, comma-separated")
    p.add_argument("--keys", type=_key_list, help="the prompt's chain of hex block keys, comma-separated")
    p.add_argument(
        "--load-weight", type=float, help="tokens of prefill one token of load is worth (default 1)"
    )
    p.add_argument("--limit", type=int, default=0, help="at most this many candidates (default all)")
    p.set_defaults(run=_route)

    p = sub.add_parser(
        "health",
        parents=options,
        help="is the server up and are its tiers writable",
        description="Server status and per-tier health.",
    )
    p.set_defaults(run=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=WIDE) if args.wide else Console()
    ca = args.tls_ca or os.environ.get("KVSTORE_TLS_CA")
    tls = auth.Tls(Path(ca).read_bytes()) if ca else None
    channel = auth.channel(target(args.address), [], auth.resolve_token(args.token), tls)
    try:
        reply = args.run(channel, args, console)
    except grpc.RpcError as exc:
        code = exc.code()
        hint = " (is `kvstore serve` running there?)" if code == grpc.StatusCode.UNAVAILABLE else ""
        print(f"kvctl: {code.name}: {exc.details()}{hint}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    if reply is not None:
        print(json.dumps(reply, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
