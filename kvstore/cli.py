"""`kvstore`: run the service (`serve`), the chat proxy (`proxy`) and the benchmarks (`bench ...`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from kvstore import __version__
from kvstore.config import ConfigError, load_settings
from kvstore.sdk.core import DEFAULT_ADDRESS


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC service",
        description="Run the kvstore gRPC service. Flags beat KVSTORE_* env vars, which beat "
        "the YAML file given with --config.",
    )
    p.add_argument("--config", type=Path, help="YAML file with settings")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 50551; 0 picks a free one)")
    p.add_argument("--unix-socket", type=Path, help="also listen on this Unix socket")
    p.add_argument("--data-dir", type=Path, help="where the disk tier keeps blocks (default ./kvstore-data)")
    p.add_argument("--policy", help="placement policy (default lru)")
    p.add_argument("--hbm", dest="hbm_capacity", metavar="SIZE", help="HBM tier capacity, e.g. 40GiB")
    p.add_argument("--hbm-device", help="auto, cuda, cuda:N or cpu (a stand-in)")
    p.add_argument("--dram", dest="dram_capacity", metavar="SIZE", help="DRAM tier capacity, e.g. 64GiB")
    p.add_argument("--disk", dest="disk_capacity", metavar="SIZE", help="disk tier capacity, e.g. 1TiB")
    p.add_argument(
        "--shared-memory",
        choices=["auto", "on", "off"],
        help="keep host tiers in /dev/shm so same-host clients read and write in place (default auto)",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument(
        "--remote-url",
        metavar="URL",
        help="shared remote tier and global index on Redis: redis://HOST:PORT/DB",
    )
    p.add_argument("--worker-id", help="this worker's name in the global index (default host:port)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"], help="json: one JSON object per line")
    p.add_argument(
        "--tracing",
        action="store_true",
        default=None,
        help="export OpenTelemetry spans of RPCs (OTLP/gRPC; endpoint from tracing.otlp_endpoint or OTEL_*)",
    )
    p.add_argument(
        "--auth-tokens",
        type=Path,
        metavar="PATH",
        help="require bearer tokens listed in this YAML/JSON file (see `kvstore token new`)",
    )
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="serve without tokens on a non-loopback --host (only on a network you trust)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca", type=Path, metavar="PEM", help="require client certificates signed by this CA"
    )
    p.set_defaults(run=_run_serve)


def _nested(args: argparse.Namespace) -> dict:
    flags = {
        k: getattr(args, k)
        for k in (
            "host",
            "port",
            "unix_socket",
            "data_dir",
            "policy",
            "metrics_port",
            "log_level",
            "log_format",
            "worker_id",
        )
    }
    if args.remote_url is not None:
        flags["remote"] = {"url": args.remote_url}
    if args.tracing:
        flags["tracing"] = {"enabled": True}
    for tier in ("hbm", "dram", "disk"):
        capacity = getattr(args, f"{tier}_capacity")
        if capacity is not None:
            flags[tier] = {"capacity": capacity}
    if args.hbm_device is not None:
        flags.setdefault("hbm", {})["device"] = args.hbm_device
    if "hbm" in flags:
        flags["hbm"].setdefault("enabled", "on")
    if args.shared_memory is not None:
        flags["shared_memory"] = {"enabled": args.shared_memory}
    auth = {"tokens_file": args.auth_tokens, "allow_unauthenticated": args.allow_unauthenticated}
    tls = {"cert": args.tls_cert, "key": args.tls_key, "client_ca": args.tls_client_ca}
    for name, group in (("auth", auth), ("tls", tls)):
        given = {k: v for k, v in group.items() if v is not None}
        if given:
            flags[name] = given
    return flags


def _run_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, **_nested(args))
    except ConfigError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 2
    from kvstore.server.app import serve
    from kvstore.server.telemetry import configure_logging

    configure_logging(settings.log_level, settings.log_format)

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 1
    return 0


def _proxy_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "proxy",
        help="run the OpenAI/Anthropic-compatible proxy that turns chat traffic into hints",
        description="Forward chat requests to an engine unchanged (streams chunk by chunk) and derive "
        "kvstore hints from them: the session from x-session-id, the harness's own session header, "
        "prompt_cache_key, metadata.user_id or user; tool calls, their ends and finished turns from "
        "the answers. The session goes to the engine in kv_transfer_params.",
    )
    p.add_argument("--upstream", required=True, help="the engine's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--kvstore", default=DEFAULT_ADDRESS, help=f"kvstore server address (default {DEFAULT_ADDRESS})"
    )
    p.add_argument("--namespace", default="default", help="kvstore namespace of the engine's KV")
    p.add_argument(
        "--session-key",
        action="append",
        metavar="KEY",
        help="key of kv_transfer_params that names the session for the engine's connector (default "
        "session_id; lmcache.kvstore.session_id for LMCache's); repeat for several",
    )
    p.add_argument(
        "--no-kv-transfer-params",
        action="store_true",
        help="leave chat requests exactly as they came (for an upstream that refuses unknown fields)",
    )
    p.add_argument("--max-sessions", type=int, default=1000, help="sessions the proxy keeps state for")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.set_defaults(run=_run_proxy)


def _run_proxy(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    upstream = urlsplit(args.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.hostname:
        print(f"kvstore proxy: --upstream {args.upstream!r} is not an http(s) URL", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535 or args.max_sessions < 1:
        print("kvstore proxy: --port must be 0-65535 and --max-sessions at least 1", file=sys.stderr)
        return 2
    from kvstore.proxy.app import ProxyConfig, serve
    from kvstore.server.telemetry import configure_logging

    configure_logging(args.log_level)
    from kvstore.proxy.tagging import SESSION_KEY

    config = ProxyConfig(
        upstream=args.upstream,
        kvstore=args.kvstore,
        namespace=args.namespace,
        session_keys=() if args.no_kv_transfer_params else tuple(args.session_key or [SESSION_KEY]),
        max_sessions=args.max_sessions,
    )
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"kvstore proxy: {exc}", file=sys.stderr)
        return 1
    return 0


def _token_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "token",
        help="mint a bearer token, or hash one, for the --auth-tokens file",
        description="Tokens are random; the server's tokens file keeps only their SHA-256.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser(
        "new",
        help="print a new token (stderr) and its tokens-file entry (stdout)",
        description="Print a new random token on stderr (give it to the client, e.g. as KVSTORE_TOKEN) "
        "and the entry to append under `tokens:` in the server's tokens file on stdout.",
    )
    new.add_argument("--tenant", required=True, help="namespaces with this tenant are the token's")
    new.add_argument("--role", required=True, choices=["engine", "agent", "admin"])
    new.add_argument("--name", default="", help="a label for the entry (who holds the token)")
    new.set_defaults(run=_run_token_new)
    hashed = actions.add_parser(
        "hash",
        help="print the tokens-file entry of an existing token (read from stdin)",
        description="Read a token from stdin (so it stays out of shell history) and print its entry.",
    )
    hashed.add_argument("--tenant", required=True)
    hashed.add_argument("--role", required=True, choices=["engine", "agent", "admin"])
    hashed.add_argument("--name", default="")
    hashed.set_defaults(run=_run_token_hash)


def _run_token_new(args: argparse.Namespace) -> int:
    from kvstore.auth_tokens import entry_yaml, new_token

    token = new_token()
    print(f"token (give it to the client; it is not stored anywhere): {token}", file=sys.stderr)
    print(entry_yaml(token, args.tenant, args.role, args.name), end="")
    return 0


def _run_token_hash(args: argparse.Namespace) -> int:
    from kvstore.auth_tokens import entry_yaml

    token = sys.stdin.readline().strip()
    if not token:
        print("kvstore token hash: no token on stdin", file=sys.stderr)
        return 2
    print(entry_yaml(token, args.tenant, args.role, args.name), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description="Agent-aware KV-cache tiering service.")
    parser.add_argument("--version", action="version", version=f"kvstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _proxy_parser(sub)
    _token_parser(sub)
    from kvstore.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
