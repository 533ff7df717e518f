"""`kvstore bench grpc`: put/get GB/s over gRPC next to a raw memory copy and next to a bare gRPC
server moving the same bytes (the transport's ceiling on this machine), and Lookup round trips
under concurrent clients. The server is a real `kvstore serve` child process on loopback.

The SDK client maps the server's shared memory when it can, which would bypass gRPC for block
bytes; this bench opens it with `shared_memory=False` so the gRPC rows measure gRPC, and can add
shared-memory rows beside them (`--transports grpc,shm`). Each row says which transport it is."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

from kvstore.bench.report import percentile, print_table, write_json
from kvstore.sdk import Client
from kvstore.server.process import ServerProcess

MiB = 2**20


def raw_copy_gbps(size: int, repeats: int) -> float:
    src = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    t0 = time.perf_counter()
    for _ in range(repeats):
        np.copyto(dst, src)
    return size * repeats / (time.perf_counter() - t0) / 1e9


def _echo_server(port: int, size: int) -> None:
    """A bare grpc.aio server that takes and returns `size` opaque bytes: the transport's ceiling."""
    import asyncio

    payload = os.urandom(size)

    async def main() -> None:
        server = grpc.aio.server(options=_OPTIONS)

        async def put(request: bytes, context: object) -> bytes:
            return b""

        async def get(request: bytes, context: object) -> bytes:
            return payload

        handlers = {
            "Put": grpc.unary_unary_rpc_method_handler(put),
            "Get": grpc.unary_unary_rpc_method_handler(get),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo", handlers),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


_OPTIONS = [("grpc.max_send_message_length", 2**28), ("grpc.max_receive_message_length", 2**28)]


def bare_grpc_gbps(size: int, total: int) -> tuple[float, float]:
    """put/get GB/s of opaque bytes through a bare gRPC server in another process, no protobuf, no store."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(target=_echo_server, args=(port, size), daemon=True)
    proc.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            put, get = channel.unary_unary("/echo/Put"), channel.unary_unary("/echo/Get")
            data, n = os.urandom(size), max(2, total // size)
            put(data)
            t0 = time.perf_counter()
            for _ in range(n):
                put(data)
            put_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(n):
                get(b"")
            get_s = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.join()
    return n * size / put_s / 1e9, n * size / get_s / 1e9


def bandwidth(client: Client, ns: str, size: int, total: int) -> tuple[float, float]:
    n = max(2, total // size)
    rng = np.random.default_rng(size)
    blocks = [rng.integers(0, 255, size, dtype=np.uint8).tobytes() for _ in range(n)]
    keys = [os.urandom(32) for _ in range(n)]
    t0 = time.perf_counter()
    for k, b in zip(keys, blocks, strict=True):
        client.put(ns, [k], [b])
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = [client.get(ns, [k])[0] for k in keys]
    get_s = time.perf_counter() - t0
    if got != blocks:
        raise AssertionError("bytes read back differ from bytes put")
    client.delete(ns, keys)
    return n * size / put_s / 1e9, n * size / get_s / 1e9


TRANSPORTS = ("grpc", "shm")


def lookup_latency(address: str, clients: int, per_client: int, chain: list[bytes]) -> list[float]:
    samples: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker() -> None:
        mine = []
        with Client(address, shared_memory=False) as c:  # Lookup is a gRPC call either way
            c.lookup("mib1", keys=chain)
            barrier.wait()
            for _ in range(per_client):
                t0 = time.perf_counter()
                c.lookup("mib1", keys=chain)
                mine.append(time.perf_counter() - t0)
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def main(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    transports = [t.strip() for t in args.transports.split(",")]
    if unknown := set(transports) - set(TRANSPORTS):
        raise SystemExit(
            f"unknown transport(s) {', '.join(sorted(unknown))}; choose from {', '.join(TRANSPORTS)}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "dram": {"capacity": f"{max(sizes) * 4 + args.total_mib * 2}MiB"},
                    "disk": {"enabled": False},
                    "namespaces": [
                        {"name": f"mib{s}", "model": "bench", "block_bytes": s * MiB} for s in sizes
                    ],
                }
            )
        )
        with ServerProcess(Path(tmp) / "data", config=config) as server:
            server.wait_prefaulted()  # first-touch page faults are not the data path's cost
            clients = {t: Client(server.address, shared_memory=t == "shm") for t in transports}
            rows = []
            try:
                for s in sizes:
                    raw = raw_copy_gbps(s * MiB, 10)
                    bare_put, bare_get = bare_grpc_gbps(s * MiB, args.total_mib * MiB)
                    for transport, client in clients.items():
                        put, get = bandwidth(client, f"mib{s}", s * MiB, args.total_mib * MiB)
                        if client.transport() != transport:
                            raise RuntimeError(f"asked for {transport}, the client uses {client.transport()}")
                        rows.append(
                            {
                                "block": f"{s} MiB",
                                "transport": transport,
                                "put GB/s": put,
                                "get GB/s": get,
                                "raw copy GB/s": raw,
                                "bare gRPC put GB/s": bare_put,
                                "bare gRPC get GB/s": bare_get,
                                "put/bare": put / bare_put,
                                "get/bare": get / bare_get,
                            }
                        )
                print_table(f"Data path on loopback ({args.total_mib} MiB per size and transport)", rows)
                chain = [os.urandom(32) for _ in range(args.chain)]
                if 1 in sizes:
                    next(iter(clients.values())).put("mib1", chain, [bytes(MiB)] * len(chain))
            finally:
                for client in clients.values():
                    client.close()
            samples = lookup_latency(server.address, args.clients, args.lookups, chain)
            lat = {
                "transport": "grpc",
                "clients": args.clients,
                "lookups": len(samples),
                "chain blocks": args.chain,
                "p50 ms": percentile(samples, 50) * 1e3,
                "p99 ms": percentile(samples, 99) * 1e3,
            }
            print_table("Lookup round trip", [lat])
    write_json(args.json, {"bandwidth": rows, "lookup": lat})
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grpc",
        help="put/get GB/s over gRPC and Lookup round-trip latency",
        description="Start a real server, measure put/get bandwidth per block size next to a "
        "raw memory copy, then Lookup latency under concurrent clients.",
    )
    p.add_argument("--sizes", default="1,8,32", help="block sizes in MiB (default 1,8,32)")
    p.add_argument("--total-mib", type=int, default=512, help="MiB moved per size (default 512)")
    p.add_argument(
        "--transports",
        default="grpc",
        help="block-byte transports to measure, comma-separated: grpc (bytes in the RPCs), shm (the "
        "server's shared memory, same host only); default grpc",
    )
    p.add_argument("--clients", type=int, default=16, help="concurrent Lookup clients (default 16)")
    p.add_argument("--lookups", type=int, default=200, help="lookups per client (default 200)")
    p.add_argument("--chain", type=int, default=16, help="blocks per looked-up chain (default 16)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
