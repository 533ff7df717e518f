"""`kvstore`: run the service (`serve`) and its benchmarks (`bench ...`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from kvstore import __version__
from kvstore.config import ConfigError, load_settings


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
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(run=_run_serve)


def _nested(args: argparse.Namespace) -> dict:
    flags = {
        k: getattr(args, k)
        for k in ("host", "port", "unix_socket", "data_dir", "policy", "metrics_port", "log_level")
    }
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
    return flags


def _run_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, **_nested(args))
    except ConfigError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from kvstore.server.app import serve

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kvstore: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvstore", description="Agent-aware KV-cache tiering service.")
    parser.add_argument("--version", action="version", version=f"kvstore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    from kvstore.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
