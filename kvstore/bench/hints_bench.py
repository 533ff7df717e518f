"""`kvstore bench hints`: hint round trips under concurrent sessions, what a fire-and-forget hint
costs the agent, and a live timeline of one tool call under HBM pressure (real server, real bytes)."""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import grpc
import yaml

from kvstore.bench.report import percentile, print_table, write_json
from kvstore.sdk import AgentSession, Client
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

MiB = 2**20


def round_trips(address: str, sessions: int, calls: int) -> list[float]:
    samples: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(sessions)

    def agent(n: int) -> None:
        mine = []
        with grpc.insecure_channel(address) as channel:
            hints = pb_grpc.AgentHintsStub(channel)
            hints.OpenSession(pb.OpenSessionRequest(session=f"s{n}", namespace="bench"))
            barrier.wait()
            for i in range(calls):
                t0 = time.perf_counter()
                reply = hints.BeginToolCall(
                    pb.BeginToolCallRequest(session=f"s{n}", tool_name="t", expected_s=30, call_id=f"{n}-{i}")
                )
                t1 = time.perf_counter()
                hints.EndToolCall(pb.EndToolCallRequest(call_id=reply.call_id))
                mine += [t1 - t0, time.perf_counter() - t1]
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def caller_cost(address: str, calls: int) -> list[float]:
    costs = []
    with AgentSession(address, namespace="bench") as session:
        for _ in range(calls):
            t0 = time.perf_counter()
            call_id = session.begin_tool_call("t", 30.0)
            costs.append(time.perf_counter() - t0)
            session.end_tool_call(call_id)
        session.flush()
    return costs


def timeline(address: str, blocks: int, tool_s: float) -> list[dict[str, object]]:
    """When the session's blocks left HBM, when the prefetch was planned and done, when the tool ended."""
    samples: list[tuple[float, int, str, float | None]] = []
    stop = threading.Event()

    def pressure() -> None:
        with Client(address) as kv:
            while not stop.is_set():
                kv.put("bench", [os.urandom(32)], [os.urandom(MiB)])

    with (
        Client(address) as kv,
        AgentSession(address, namespace="bench") as session,
        grpc.insecure_channel(address) as channel,
    ):
        admin = pb_grpc.AdminStub(channel)
        keys = kv.keys_for("bench", range(16 * blocks))
        kv.put("bench", keys, [os.urandom(MiB) for _ in keys], session=session.id)
        session.flush()
        worker = threading.Thread(target=pressure, daemon=True)
        worker.start()
        t0 = time.monotonic()

        def sample() -> None:
            info = next(
                s for s in admin.ListSessions(pb.ListSessionsRequest()).sessions if s.session == session.id
            )
            at = time.monotonic() - t0
            scheduled = (
                at + info.prefetch.scheduled_in_s if info.prefetch.HasField("scheduled_in_s") else None
            )
            samples.append((at, info.bytes_per_tier.get("hbm", 0) // MiB, info.prefetch.status, scheduled))

        with session.tool_call("pytest", expected_s=tool_s):
            session.flush()
            sample()
            while time.monotonic() - t0 < tool_s:
                sample()
                time.sleep(0.005)
        session.flush()
        ended = time.monotonic() - t0
        sample()
        stop.set()
        worker.join()
    fewest = min(samples, key=lambda s: s[1])
    moments = [
        ("tool call begins (expected 1 s)", samples[0]),
        ("first block pushed out of HBM", next((s for s in samples if s[1] < blocks), None)),
        ("fewest blocks in HBM", fewest),
        ("prefetch done", next((s for s in samples if s[2] == "done"), None)),
    ]
    rows: list[dict[str, object]] = [
        {"t (s)": round(s[0], 3), "moment": name, "blocks in hbm": f"{s[1]}/{blocks}", "prefetch": s[2]}
        for name, s in moments
        if s is not None
    ]
    if samples[0][3] is not None:
        rows.insert(
            1,
            {
                "t (s)": round(samples[0][3], 3),
                "moment": "prefetch scheduled for",
                "blocks in hbm": "",
                "prefetch": "",
            },
        )
    rows.append(
        {
            "t (s)": round(ended, 3),
            "moment": "tool call ends",
            "blocks in hbm": f"{samples[-1][1]}/{blocks}",
            "prefetch": samples[-1][2],
        }
    )
    return sorted(rows, key=lambda r: float(r["t (s)"]))


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "policy": "agent",
                    "hbm": {"enabled": "on", "device": args.hbm_device, "capacity": f"{args.hbm_mib}MiB"},
                    "dram": {"capacity": "2GiB"},
                    "disk": {"enabled": False},
                    "agent": {"prefetch_margin_s": 0.1},
                    "namespaces": [
                        {"name": "bench", "model": "bench", "block_tokens": 16, "block_bytes": MiB}
                    ],
                }
            )
        )
        with ServerProcess(Path(tmp) / "data", config=config) as server:
            rtt = round_trips(server.address, args.sessions, args.calls)
            cost = caller_cost(server.address, 2000)
            events = timeline(server.address, args.blocks, args.tool_s)
    figures = {
        "sessions": args.sessions,
        "hints": len(rtt),
        "hint rtt p50 ms": percentile(rtt, 50) * 1e3,
        "hint rtt p99 ms": percentile(rtt, 99) * 1e3,
        "caller cost p50 us": percentile(cost, 50) * 1e6,
        "caller cost p99 us": percentile(cost, 99) * 1e6,
    }
    print_table(f"hint round trips, {args.sessions} concurrent sessions", [figures])
    print_table(
        f"live timeline: {args.blocks} x 1 MiB blocks, {args.tool_s}s tool call, HBM under pressure", events
    )
    write_json(args.json, {"figures": figures, "timeline": events})
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hints",
        help="hint round trips, caller cost, and a live tool-call timeline",
        description="Real server (agent policy): BeginToolCall/EndToolCall round trips from "
        "concurrent sessions, the caller-side cost of a queued hint, and one tool "
        "call's KV leaving HBM under pressure and coming back before the call ends.",
    )
    p.add_argument("--sessions", type=int, default=64, help="concurrent sessions (default 64)")
    p.add_argument("--calls", type=int, default=50, help="tool calls per session (default 50)")
    p.add_argument(
        "--blocks", type=int, default=32, help="1 MiB blocks of the timeline's session (default 32)"
    )
    p.add_argument("--tool-s", type=float, default=1.0, help="the timeline's tool call, seconds (default 1)")
    p.add_argument("--hbm-mib", type=int, default=96, help="HBM tier capacity in MiB (default 96)")
    p.add_argument("--hbm-device", default="auto", help="auto (CUDA if present), cuda or cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
