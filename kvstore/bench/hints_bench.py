"""`kvstore bench hints`: hint throughput against a bare gRPC server of the same shape, hint round
trips under concurrent sessions, what a fire-and-forget hint costs the agent, and a live timeline
of one tool call under HBM pressure (real server, real bytes)."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import yaml

from kvstore.bench.report import percentile, print_table, write_json
from kvstore.sdk import AgentSession, Client
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

MiB = 2**20


class BareHints(pb_grpc.AgentHintsServicer):
    """The same service shape with nothing behind it: what gRPC alone costs per hint."""

    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SessionReply:
        return pb.SessionReply(session=request.session, state="running")

    async def BeginToolCall(
        self, request: pb.BeginToolCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.ToolCallReply:
        return pb.ToolCallReply(call_id=request.call_id, expected_s=request.expected_s)

    async def EndToolCall(
        self, request: pb.EndToolCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.ToolCallReply:
        return pb.ToolCallReply(call_id=request.call_id)


def _serve_bare(port: multiprocessing.Value) -> None:  # type: ignore[valid-type]
    async def serve() -> None:
        server = grpc.aio.server()
        pb_grpc.add_AgentHintsServicer_to_server(BareHints(), server)
        port.value = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


@dataclass(frozen=True)
class Target:
    """A server to send hints to: its address, and its process (whose CPU time is read)."""

    address: str
    pid: int


@contextmanager
def bare_server() -> Iterator[Target]:
    """A bare grpc.aio AgentHints server in a child process, as kvstore's server is."""
    ctx = multiprocessing.get_context("spawn")
    port = ctx.Value("i", 0)
    child = ctx.Process(target=_serve_bare, args=(port,), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 30
        while port.value == 0:
            if not child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the bare gRPC server did not start")
            time.sleep(0.01)
        address = f"127.0.0.1:{port.value}"
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield Target(address, child.pid)
    finally:
        child.kill()
        child.join()


def throughput(address: str, sessions: int, seconds: float) -> tuple[int, float]:
    """Hints sent and seconds taken: `sessions` agents, each sending BeginToolCall/EndToolCall
    back to back."""

    async def run() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            hints = pb_grpc.AgentHintsStub(channel)
            await asyncio.gather(
                *(
                    hints.OpenSession(pb.OpenSessionRequest(session=f"s{n}", namespace="bench"))
                    for n in range(sessions)
                )
            )
            deadline = time.monotonic() + seconds

            async def agent(n: int) -> int:
                sent = 0
                while time.monotonic() < deadline:
                    call_id = f"{n}-{sent}"
                    await hints.BeginToolCall(
                        pb.BeginToolCallRequest(
                            session=f"s{n}", tool_name="t", expected_s=30, call_id=call_id
                        )
                    )
                    await hints.EndToolCall(pb.EndToolCallRequest(call_id=call_id))
                    sent += 2
                return sent

            return sum(await asyncio.gather(*(agent(n) for n in range(sessions))))

    t0 = time.monotonic()
    sent = asyncio.run(run())
    return sent, time.monotonic() - t0


def measured(target: Target, sessions: int, seconds: float) -> tuple[float, float]:
    """Hints per second, and the server's CPU microseconds per hint (user + system, all its
    threads): the second holds on a busy machine, where the first depends on who else runs."""
    server = psutil.Process(target.pid)
    before = sum(server.cpu_times()[:2])
    sent, took = throughput(target.address, sessions, seconds)
    return sent / took, (sum(server.cpu_times()[:2]) - before) / sent * 1e6


def compare_throughput(
    ours: Target, bare: Target, sessions: int, seconds: float, rounds: int
) -> list[dict[str, float]]:
    """Alternate rounds on the two servers, so a busy machine weighs on both alike."""
    rows = []
    for n in range(rounds):
        (mine, mine_cpu), (theirs, theirs_cpu) = (
            measured(ours, sessions, seconds),
            measured(bare, sessions, seconds),
        )
        rows.append(
            {
                "round": n + 1,
                "kvstore hints/s": mine,
                "bare grpc.aio hints/s": theirs,
                "ratio": mine / theirs,
                "kvstore CPU us/hint": mine_cpu,
                "bare CPU us/hint": theirs_cpu,
                "CPU ratio (bare/kvstore)": theirs_cpu / mine_cpu,
            }
        )
    return rows


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
        # Blocks of a running session push the tool call's KV out (the agent policy keeps a
        # running session's blocks over those of a session in a tool call; unreferenced blocks
        # would simply be evicted first). Halfway through, that session waits on its user, so
        # the tool call's KV, due back sooner, may displace it again.
        with Client(address) as kv, AgentSession(address, namespace="bench") as busy:
            busy.flush()
            while not stop.is_set() and time.monotonic() - t0 < tool_s / 2:
                kv.put("bench", [os.urandom(32)], [os.urandom(MiB)], session=busy.id)
            busy.awaiting_user()
            busy.flush()
            stop.wait()

    with (
        Client(address) as kv,
        AgentSession(address, namespace="bench") as session,
        grpc.insecure_channel(address) as channel,
    ):
        admin = pb_grpc.AdminStub(channel)
        keys = kv.keys_for("bench", range(16 * blocks))
        kv.put("bench", keys, [os.urandom(MiB) for _ in keys], session=session.id)
        session.flush()
        t0 = time.monotonic()
        worker = threading.Thread(target=pressure, daemon=True)
        worker.start()

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
        (f"tool call begins (expected {tool_s:g} s)", samples[0]),
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
    if min(args.sessions, args.calls, args.rounds, args.blocks, args.hbm_mib) < 1:
        print("kvstore bench hints: --sessions, --calls, --rounds, --blocks and --hbm-mib must be at least 1")
        return 2
    if not (args.seconds > 0 and args.tool_s > 0):
        print("kvstore bench hints: --seconds and --tool-s must be greater than 0")
        return 2
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
        with ServerProcess(Path(tmp) / "data", config=config) as server, bare_server() as bare:
            server.wait_prefaulted()  # the prefault thread's CPU is not a hint's cost
            ours = Target(server.address, server.proc.pid)
            rounds = compare_throughput(ours, bare, args.sessions, args.seconds, args.rounds)
            rtt = round_trips(server.address, args.sessions, args.calls)
            cost = caller_cost(server.address, 2000)
            events = timeline(server.address, args.blocks, args.tool_s)
    figures = {
        "sessions": args.sessions,
        "throughput ratio (median)": statistics.median(r["ratio"] for r in rounds),
        "CPU per hint ratio, bare/kvstore (median)": statistics.median(
            r["CPU ratio (bare/kvstore)"] for r in rounds
        ),
        "hints": len(rtt),
        "hint rtt p50 ms": percentile(rtt, 50) * 1e3,
        "hint rtt p99 ms": percentile(rtt, 99) * 1e3,
        "caller cost p50 us": percentile(cost, 50) * 1e6,
        "caller cost p99 us": percentile(cost, 99) * 1e6,
    }
    print_table(f"hint throughput, {args.sessions} sessions, kvstore vs a bare grpc.aio server", rounds)
    print_table(f"hint round trips, {args.sessions} concurrent sessions", [figures])
    print_table(
        f"live timeline: {args.blocks} x 1 MiB blocks, {args.tool_s}s tool call, HBM under pressure", events
    )
    write_json(args.json, {"figures": figures, "throughput": rounds, "timeline": events})
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hints",
        help="hint round trips, caller cost, and a live tool-call timeline",
        description="Real server (agent policy): hint throughput against a bare grpc.aio "
        "AgentHints server (alternating rounds), BeginToolCall/EndToolCall round trips from "
        "concurrent sessions, the caller-side cost of a queued hint, and one tool "
        "call's KV leaving HBM under pressure and coming back before the call ends.",
    )
    p.add_argument("--sessions", type=int, default=64, help="concurrent sessions (default 64)")
    p.add_argument("--calls", type=int, default=50, help="tool calls per session (default 50)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each throughput round (default 6)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds per server (default 3)")
    p.add_argument(
        "--blocks", type=int, default=32, help="1 MiB blocks of the timeline's session (default 32)"
    )
    p.add_argument("--tool-s", type=float, default=1.0, help="the timeline's tool call, seconds (default 1)")
    p.add_argument("--hbm-mib", type=int, default=96, help="HBM tier capacity in MiB (default 96)")
    p.add_argument("--hbm-device", default="auto", help="auto (CUDA if present), cuda or cpu")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
