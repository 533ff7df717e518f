"""`kvstore bench proxy`: what `kvstore proxy` adds to a chat request, next to a direct call to the
same engine, measured in one run.

A stub engine (`stub_upstream`, its own process), `kvstore serve --policy agent` and
`kvstore proxy` in front of the stub, all on loopback. One client sends the same requests to the
stub directly and through the proxy, alternating which goes first: non-streamed answers (latency)
and streamed ones (time to the first chunk of the body). The requests offer a tool, so every
proxied answer of a session begins a tool call in kvstore and the session's next request ends it:
the hints and the engine tag are on the measured path. The same requests without a session
(`proxy_plain`: forwarding alone) split what the proxy adds into forwarding and hints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from kvstore.bench.report import percentile, print_table, write_json
from kvstore.proxy.process import ProxyProcess, StubProcess
from kvstore.server.process import ServerProcess

TOOLS = [{"type": "function", "function": {"name": "run_tests", "parameters": {"type": "object"}}}]


def request_body(prompt_kib: int, stream: bool) -> dict[str, Any]:
    prompt = ("lorem ipsum " * (prompt_kib * 1024 // 12 + 1))[: prompt_kib * 1024]
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], "tools": TOOLS, "stream": stream}


async def timed(
    client: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[float, float]:
    """(seconds to the first chunk of the body, seconds to the end)."""
    t0 = time.perf_counter()
    async with client.post(url, data=body, headers=headers) as reply:
        first = await reply.content.readany()
        t1 = time.perf_counter()
        rest = await reply.read()
        t2 = time.perf_counter()
        if reply.status != 200 or not (first or rest):
            raise RuntimeError(f"{url} answered {reply.status}: {(first + rest)[:200]!r}")
    return t1 - t0, t2 - t0


# Who a request goes to: the engine itself, the proxy with no session named (it only forwards),
# and the proxy with a session (it also tags the request and sends hints).
ROUTES = ("direct", "proxy_plain", "proxy")


async def measure(
    direct: str, proxied: str, requests: int, warmup: int, sessions: int, prompt_kib: int
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {
        kind: {route: [] for route in ROUTES} for kind in ("latency", "ttfc", "stream_total")
    }
    bodies = {stream: json.dumps(request_body(prompt_kib, stream)).encode() for stream in (False, True)}
    plain = {"content-type": "application/json"}
    async with aiohttp.ClientSession() as client:
        for i in range(warmup + requests):
            named = {**plain, "x-session-id": f"bench-{i % sessions}"}
            routes = [("direct", direct, plain), ("proxy_plain", proxied, plain), ("proxy", proxied, named)]
            routes = routes[i % 3 :] + routes[: i % 3]  # each goes first as often as the others
            for stream in (False, True):
                for route, url, headers in routes:
                    first, total = await timed(client, f"{url}/v1/chat/completions", bodies[stream], headers)
                    if i < warmup:
                        continue
                    if stream:
                        samples["ttfc"][route].append(first)
                        samples["stream_total"][route].append(total)
                    else:
                        samples["latency"][route].append(total)
    return samples


def figures(samples: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind, by in samples.items():
        for q in (50, 99):
            at = {route: percentile(by[route], q) for route in ROUTES}
            for route in ROUTES:
                out[f"{kind}_{route}_p{q}_ms"] = at[route] * 1e3
            out[f"{kind}_added_p{q}_ms"] = (at["proxy"] - at["direct"]) * 1e3
            if kind == "ttfc":
                out[f"ttfc_ratio_p{q}"] = at["proxy"] / at["direct"]
    return out


def main(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.sessions < 1 or args.prompt_kib < 1:
        print("kvstore bench proxy: --requests, --sessions and --prompt-kib must be at least 1")
        return 2
    stub_args = ["--chunks", str(args.chunks), "--chunk-delay-ms", str(args.chunk_delay_ms)]
    stub_args += ["--first-delay-ms", str(args.ttft_ms)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(
            Path(tmp) / "data", ["--policy", "agent", "--dram", "64MiB", "--disk", "64MiB"]
        ) as server,
        StubProcess(stub_args) as stub,
        ProxyProcess(stub.url, server.address) as proxy,
    ):
        samples = asyncio.run(
            measure(stub.url, proxy.url, args.requests, args.warmup, args.sessions, args.prompt_kib)
        )
    result = {
        "requests": args.requests,
        "prompt_kib": args.prompt_kib,
        "chunks": args.chunks,
        "chunk_delay_ms": args.chunk_delay_ms,
        "engine_ttft_ms": args.ttft_ms,
        **figures(samples),
    }
    print_table(
        f"kvstore proxy vs direct, {args.requests} requests each, {args.prompt_kib} KiB prompts", [result]
    )
    write_json(args.json, result)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "proxy",
        help="latency kvstore proxy adds to chat requests, against a direct call",
        description="Stub engine, kvstore and kvstore proxy on loopback: per-request latency "
        "(p50/p99) and time to the first streamed chunk, direct and through the proxy, in one run.",
    )
    p.add_argument("--requests", type=int, default=300, help="measured requests of each kind (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="requests of each kind first, not measured")
    p.add_argument("--sessions", type=int, default=8, help="sessions the requests rotate over (default 8)")
    p.add_argument("--prompt-kib", type=int, default=32, help="prompt size in KiB (default 32)")
    p.add_argument("--chunks", type=int, default=16, help="chunks per streamed answer (default 16)")
    p.add_argument(
        "--chunk-delay-ms", type=float, default=1.0, help="engine's pause between chunks (default 1)"
    )
    p.add_argument(
        "--ttft-ms",
        type=float,
        default=0.0,
        help="engine's pause before answering, a stand-in for prefill (default 0: the proxy's cost alone)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
