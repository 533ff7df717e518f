"""`kvstore bench stall`: do requests stall while the live server moves KV between tiers?

A real `kvstore serve` child process on loopback holds one session's KV (1 GiB by default) and
moves it HBM -> DRAM, DRAM -> HBM, HBM -> DRAM, DRAM -> disk and disk -> HBM, the way it does in
service: demotions through the admin Evict RPC, promotions as the agent policy's bring-back when
a fan-out is announced (AnnounceFanout; WaitReady says when the last byte is back). Meanwhile
two probers keep calling it: a Lookup prober (SDK Client over gRPC, shared memory off, so every
lookup is a round trip through the server) and a hint prober (AgentHints AwaitingUser/UserActive
on another session, each of which runs the policy's rebalance under the store's lock). Their
latencies while nothing moves, measured in the same run, are the yardstick.

Each move's rate is set against the machine's own ceiling, measured in the same run under the
same probing load: a raw copy of the same bytes, block by block, between two shared-memory
buffers (memory moves); a raw write of the same bytes to the same data dir, fsynced (moves to and
from disk); and, shown beside it for moves from disk, a raw read of them back into memory.

Targets (issue 10): during every move, Lookup and hint p99 within 3 x idle p99 + 5 ms and no
Lookup over 50 ms; memory moves at >= 0.8 x the raw copy, disk moves at >= 0.5 x the raw write.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
import yaml

from kvstore.bench.report import percentile, print_table, write_json
from kvstore.sdk import Client
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

MiB = 2**20
NAMESPACE = "stall"
BLOCK_TOKENS = 16
LOOKUP_CHAIN = 16  # blocks per probing lookup: a request's prefix of the moving session
PUT_BATCH = 16  # blocks per put while filling (setup, not measured)
RAW_REPEATS = 3  # raw baselines are the median of this many runs
RPC_TIMEOUT_S = 600.0  # a 1 GiB move on a slow disk may take a while; never a hung bench

# Targets of issue 10.
STALL_FACTOR, STALL_SLACK_MS, LOOKUP_MAX_MS = 3.0, 5.0, 50.0
MEMORY_RATIO, DISK_RATIO = 0.8, 0.5


@dataclass
class Prober:
    """Calls `probe` again and again (with `interval_s` between calls, so the probers do not
    themselves take the cores the move needs) and keeps (start, end) of every call."""

    name: str
    probe: Callable[[], Any]
    interval_s: float
    calls: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"probe-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self.probe()
            except grpc.RpcError:
                self.errors += 1  # counted, and the call's time still counts as a stall
            self.calls.append((t0, time.perf_counter()))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def during(self, t0: float, t1: float) -> list[float]:
        """Latencies (s) of the calls that overlapped [t0, t1]: one that began just before a move
        and was held up by it counts too."""
        return [end - start for start, end in list(self.calls) if start < t1 and end > t0]


def latency_figures(prefix: str, samples: list[float]) -> dict[str, float | int]:
    return {
        f"{prefix}s": len(samples),
        f"{prefix}_p50_ms": percentile(samples, 50) * 1e3,
        f"{prefix}_p99_ms": percentile(samples, 99) * 1e3,
        f"{prefix}_max_ms": max(samples, default=float("nan")) * 1e3,
    }


# ---------------------------------------------------------------------- raw baselines


@contextmanager
def shm_buffer(nbytes: int) -> Iterator[torch.Tensor]:
    """A host buffer in /dev/shm, as the server's memory tiers are, with every page faulted in."""
    seg = shared_memory.SharedMemory(create=True, size=nbytes)
    try:
        assert seg.buf is not None
        buf = torch.frombuffer(seg.buf, dtype=torch.uint8, count=nbytes)
        buf.fill_(1)  # fault every page in now, not under the timed copy
        yield buf
        del buf
    finally:
        seg.close()
        seg.unlink()


Window = tuple[float, float]  # perf_counter at start and end


def raw_copy(nbytes: int, block: int) -> list[Window]:
    """Copy `nbytes` block by block between two shared-memory buffers, RAW_REPEATS times; returns
    when each copy ran (its time is the raw rate; the probes meanwhile are the control). A
    single-threaded numpy copy: on a busy host it is the fastest plain copy (torch's copy_ splits a
    block over its intra-op threads, which then wait on each other and on the probers for a core),
    so it is the ceiling a move is held to."""
    with shm_buffer(nbytes) as src_t, shm_buffer(nbytes) as dst_t:
        src, dst = src_t.numpy(), dst_t.numpy()
        runs = []
        for _ in range(RAW_REPEATS):
            t0 = time.perf_counter()
            for start in range(0, nbytes, block):
                dst[start : start + block] = src[start : start + block]
            runs.append((t0, time.perf_counter()))
        del src, dst
    return runs


def raw_disk(directory: Path, nbytes: int, block: int) -> tuple[list[Window], list[Window]]:
    """Write `nbytes` in blocks to one file in `directory` and fsync it, then read them back into a
    memory buffer, RAW_REPEATS times; returns when each write and each read ran. The read finds
    what the write left in the page cache, as a move up from disk finds what the move down wrote."""
    payload = np.random.default_rng(1).integers(0, 255, block, dtype=np.uint8).tobytes()
    path = directory / f"raw-{uuid.uuid4().hex}.bin"
    writes, reads = [], []
    try:
        with shm_buffer(nbytes) as dst:
            view = memoryview(dst.numpy())
            for _ in range(RAW_REPEATS):
                t0 = time.perf_counter()
                with open(path, "wb") as f:
                    for _ in range(0, nbytes, block):
                        f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                writes.append((t0, time.perf_counter()))
                t0 = time.perf_counter()
                with open(path, "rb", buffering=0) as f:
                    for start in range(0, nbytes, block):
                        f.readinto(view[start : start + block])
                reads.append((t0, time.perf_counter()))
                path.unlink()
            view.release()
    finally:
        path.unlink(missing_ok=True)
    return writes, reads


# ---------------------------------------------------------------------- the run


@dataclass
class Move:
    kind: str
    src: str
    dst: str
    nbytes: int
    seconds: float
    t0: float
    t1: float


class Bench:
    def __init__(self, server: ServerProcess, channel: grpc.Channel, args: argparse.Namespace) -> None:
        self.server = server
        self.admin = pb_grpc.AdminStub(channel)
        self.hints = pb_grpc.AgentHintsStub(channel)
        self.block = int(args.block_mib * MiB)
        self.blocks = max(1, int(args.gib * 2**30) // self.block)
        self.nbytes = self.blocks * self.block
        self.session = "stall-moving"
        self.keys: list[bytes] = []

    def fill(self) -> None:
        """Put the moving session's KV into HBM (shared memory where it can: setup, not timed)."""
        self.hints.OpenSession(pb.OpenSessionRequest(session=self.session, namespace=NAMESPACE))
        pool = np.random.default_rng(0).integers(0, 255, 8 * self.block, dtype=np.uint8)
        with Client(self.server.address) as client:
            self.keys = client.keys_for(NAMESPACE, range(self.blocks * BLOCK_TOKENS))
            for i in range(0, self.blocks, PUT_BATCH):
                keys = self.keys[i : i + PUT_BATCH]
                data = [
                    pool[(j % 8) * self.block : (j % 8 + 1) * self.block] for j in range(i, i + len(keys))
                ]
                tiers = client.put(
                    NAMESPACE, keys, data, parent=self.keys[i - 1] if i else None, session=self.session
                )
                if set(tiers) != {"hbm"}:
                    raise RuntimeError(f"blocks landed in {sorted(set(tiers))}, not all in hbm")
        self.expect({"hbm": self.nbytes})

    def where(self) -> dict[str, int]:
        for s in self.admin.ListSessions(pb.ListSessionsRequest()).sessions:
            if s.session == self.session:
                return {tier: n for tier, n in s.bytes_per_tier.items() if n}
        return {}

    def expect(self, placement: dict[str, int]) -> None:
        found = self.where()
        if found != placement:
            raise RuntimeError(f"the session's KV is at {found}, expected {placement}")

    def evict(self, src: str, dst: str) -> Move:
        """Demote every block one tier down through the admin Evict RPC, which returns when the
        bytes have landed."""
        t0 = time.perf_counter()
        reply = self.admin.Evict(pb.EvictRequest(namespace=NAMESPACE, keys=self.keys), timeout=RPC_TIMEOUT_S)
        t1 = time.perf_counter()
        if reply.bytes != self.nbytes:
            raise RuntimeError(f"evict {src} -> {dst} moved {reply.bytes} of {self.nbytes} bytes")
        self.expect({dst: self.nbytes})
        return Move(f"{src}→{dst}", src, dst, self.nbytes, t1 - t0, t0, t1)

    def prefetch(self, src: str) -> Move:
        """A fan-out of one branch is announced: the policy plans to load the session's KV into
        HBM and pin it there, the mover thread runs that (the same bring-back as a tool call's
        prefetch), and WaitReady answers once every byte is in HBM. Its time includes a hint round
        trip and up to 5 ms of WaitReady's server-side polling: a 1 GiB memory move's rate reads up
        to ~5% low. The branch is then done, which unpins it."""
        fanout_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        self.hints.AnnounceFanout(
            pb.AnnounceFanoutRequest(session=self.session, n=1, ttl_s=RPC_TIMEOUT_S, fanout_id=fanout_id)
        )
        ready = self.hints.WaitReady(
            pb.WaitReadyRequest(session=self.session, timeout_s=RPC_TIMEOUT_S), timeout=RPC_TIMEOUT_S + 10
        )
        t1 = time.perf_counter()
        self.hints.BranchDone(pb.BranchDoneRequest(fanout_id=fanout_id))
        if not ready.ready:
            raise RuntimeError(f"prefetch {src} -> hbm not done: {self.where()}")
        self.expect({"hbm": self.nbytes})
        return Move(f"{src}→hbm", src, "hbm", self.nbytes, t1 - t0, t0, t1)

    def moves(self, settle_s: float) -> Iterator[Move]:
        """The five moves, with a pause before each so one's tail never counts in the next."""
        steps: list[Callable[[], Move]] = [
            lambda: self.evict("hbm", "dram"),
            lambda: self.prefetch("dram"),
            lambda: self.evict("hbm", "dram"),
            lambda: self.evict("dram", "disk"),
            lambda: self.prefetch("disk"),
        ]
        for step in steps:
            time.sleep(settle_s)
            yield step()


def server_config(path: Path, nbytes: int, block: int) -> None:
    room = nbytes + nbytes // 4 + 8 * block  # the session's KV, with slack for alignment
    path.write_text(
        yaml.safe_dump(
            {
                "policy": "agent",
                # The agent policy would bring the session back into HBM's free room on its own
                # (it is free to), racing the moves the bench drives; at min_chance 1 it brings
                # back only what is certain: the announced fan-outs the bench uses to move up.
                "agent": {"min_chance": 1.0},
                "flush_on_shutdown": False,  # nothing to keep: a fast exit
                "hbm": {"enabled": "on", "device": "cpu", "capacity": room},
                "dram": {"capacity": room},
                "disk": {"enabled": True, "capacity": room},
                "namespaces": [
                    {"name": NAMESPACE, "model": "bench", "block_tokens": BLOCK_TOKENS, "block_bytes": block}
                ],
            }
        )
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    block = int(args.block_mib * MiB)
    base = Path(args.data_dir) if args.data_dir is not None else None
    with tempfile.TemporaryDirectory(dir=base, prefix="kvstore-stall-") as tmp:
        data_dir = Path(tmp) / "data"
        config = Path(tmp) / "stall.yaml"
        server_config(config, max(1, int(args.gib * 2**30) // block) * block, block)
        with (
            ServerProcess(data_dir, config=config) as server,
            grpc.insecure_channel(server.address) as channel,
        ):
            prefaulted = server.wait_prefaulted(args.prefault_timeout)
            bench = Bench(server, channel, args)
            bench.fill()
            lookup_client = Client(server.address, shared_memory=False)
            chain = bench.keys[:LOOKUP_CHAIN]
            hint_session = "stall-probe"
            bench.hints.OpenSession(pb.OpenSessionRequest(session=hint_session, namespace=NAMESPACE))
            flip = [False]

            def hint() -> None:
                flip[0] = not flip[0]
                request = pb.SessionRequest(session=hint_session)
                (bench.hints.UserActive if flip[0] else bench.hints.AwaitingUser)(request)

            interval = args.probe_interval_ms / 1e3
            probers = [
                Prober("lookup", lambda: lookup_client.lookup(NAMESPACE, keys=chain), interval),
                Prober("hint", hint, interval),
            ]
            for p in probers:
                p.start()
            try:
                t0 = time.perf_counter()
                time.sleep(args.idle_s)
                idle_window = (t0, time.perf_counter())
                copies = raw_copy(bench.nbytes, block)
                writes, reads = raw_disk(data_dir, bench.nbytes, block)
                moves = [m for _ in range(args.rounds) for m in bench.moves(args.settle_s)]
            finally:
                for p in probers:
                    p.stop()
                lookup_client.close()
    lookups, hints = probers
    idle = {
        **latency_figures("lookup", lookups.during(*idle_window)),
        **latency_figures("hint", hints.during(*idle_window)),
    }
    windows = {"copy": copies, "write+fsync": writes, "read": reads}
    raw = {k: statistics.median(t1 - t0 for t0, t1 in w) for k, w in windows.items()}
    # The control: the probes while the bench itself moved the same bytes with plain code. What
    # they suffer then is what any copy costs them on this machine, not the store's move path.
    control = {
        k: {
            **latency_figures("lookup", [x for t0, t1 in w for x in lookups.during(t0, t1)]),
            **latency_figures("hint", [x for t0, t1 in w for x in hints.during(t0, t1)]),
        }
        for k, w in windows.items()
    }
    kinds: dict[str, list[Move]] = {}
    for m in moves:
        kinds.setdefault(m.kind, []).append(m)
    rows = [move_figures(ms, lookups, hints, idle, raw) for ms in kinds.values()]
    return {
        "config": {
            "bytes": bench.nbytes,
            "block_bytes": block,
            "probe_interval_ms": args.probe_interval_ms,
            "idle_s": args.idle_s,
            "rounds": args.rounds,
            "prefaulted_mib": prefaulted[0] if prefaulted else None,
            "prefault_s": prefaulted[1] if prefaulted else None,
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "probe_errors": {p.name: p.errors for p in probers},
        },
        "idle": idle,
        "raw_gbps": {k: bench.nbytes / s / 1e9 for k, s in raw.items()},
        "control": control,
        "moves": rows,
        "targets_met": all(r["targets_met"] for r in rows),
    }


def move_figures(
    moves: list[Move], lookups: Prober, hints: Prober, idle: dict[str, Any], raw: dict[str, float]
) -> dict[str, Any]:
    """One row per kind of move: its median time, and the probes of all its moves pooled (a
    1 GiB memory move lasts ~0.1 s, a few dozen probes: one move alone makes a thin p99)."""
    move = moves[0]
    seconds = statistics.median(m.seconds for m in moves)
    lookup_each = [lookups.during(m.t0, m.t1) for m in moves]
    lookup = latency_figures("lookup", [x for each in lookup_each for x in each])
    hint = latency_figures("hint", [x for m in moves for x in hints.during(m.t0, m.t1)])
    # The yardsticks: a raw copy for memory moves, a raw write+fsync for moves to or from
    # disk. A move up from disk is also set against a raw read of the same bytes (from the page
    # cache, as the move reads them): every block file is checksummed, which that read is not.
    on_disk = "disk" in (move.src, move.dst)
    raw_kind = "write+fsync" if on_disk else "copy"
    ratio = raw[raw_kind] / seconds  # the move's rate over the raw rate of the same bytes
    stall_bound = {p: STALL_FACTOR * idle[f"{p}_p99_ms"] + STALL_SLACK_MS for p in ("lookup", "hint")}
    floor = DISK_RATIO if on_disk else MEMORY_RATIO
    met = {
        "lookup_p99": lookup["lookup_p99_ms"] <= stall_bound["lookup"],
        "hint_p99": hint["hint_p99_ms"] <= stall_bound["hint"],
        "lookup_max": lookup["lookup_max_ms"] <= LOOKUP_MAX_MS,
        "rate": ratio >= floor,
        "lookup_during": all(each for each in lookup_each),  # every move, not just one of them
    }
    return {
        "kind": move.kind,
        "bytes": move.nbytes,
        "seconds": seconds,
        "moves": len(moves),
        "seconds_each": [m.seconds for m in moves],
        "gbps": move.nbytes / seconds / 1e9,
        "raw": raw_kind,
        "raw_gbps": move.nbytes / raw[raw_kind] / 1e9,
        "ratio_to_raw": ratio,
        "ratio_to_raw_read": raw["read"] / seconds if move.src == "disk" else None,
        "ratio_target": floor,
        **lookup,
        **hint,
        "stall_bound_ms": stall_bound,
        "met": met,
        "targets_met": all(met.values()),
    }


def print_report(result: dict[str, Any]) -> None:
    idle = result["idle"]
    cfg = result["config"]
    print_table(
        f"Idle probes ({cfg['idle_s']:.0f} s, probe every {cfg['probe_interval_ms']} ms; "
        f"load avg {cfg['load_avg'][0]:.2f})",
        [
            {
                "probe": p,
                "calls": idle[f"{p}s"],
                "p50 ms": idle[f"{p}_p50_ms"],
                "p99 ms": idle[f"{p}_p99_ms"],
                "max ms": idle[f"{p}_max_ms"],
            }
            for p in ("lookup", "hint")
        ],
    )
    gib = cfg["bytes"] / 2**30
    print_table(
        f"Moves of {gib:.2f} GiB in {cfg['block_bytes'] >> 20} MiB blocks, against raw copies of the "
        f"same bytes (target: >= {MEMORY_RATIO} x raw copy in memory, >= {DISK_RATIO} x raw write+fsync "
        "for disk)",
        [
            {
                "move": r["kind"],
                "moves": r["moves"],
                "median s": r["seconds"],
                "GB/s": r["gbps"],
                "raw": r["raw"],
                "raw GB/s": r["raw_gbps"],
                "x raw": r["ratio_to_raw"],
                "x raw read": "" if r["ratio_to_raw_read"] is None else f"{r['ratio_to_raw_read']:.3g}",
                "rate met": "yes" if r["met"]["rate"] else "no",
            }
            for r in result["moves"]
        ],
    )
    print_table(
        "Probes during each move (target: p99 <= 3 x idle p99 + 5 ms, Lookup max <= 50 ms)",
        [
            {
                "move": r["kind"],
                "lookups": r["lookups"],
                "lookup p99 ms": r["lookup_p99_ms"],
                "lookup max ms": r["lookup_max_ms"],
                "hints": r["hints"],
                "hint p99 ms": r["hint_p99_ms"],
                "hint max ms": r["hint_max_ms"],
                "stalls met": "yes"
                if all(v for k, v in r["met"].items() if k != "rate")
                else "no: " + ", ".join(k for k, v in r["met"].items() if not v and k != "rate"),
            }
            for r in result["moves"]
        ],
    )


def print_control(result: dict[str, Any]) -> None:
    print_table(
        "Control: probes while the bench copies the same bytes with plain code (raw baselines)",
        [
            {
                "raw": kind,
                "GB/s": result["raw_gbps"][kind],
                "lookups": c["lookups"],
                "lookup p99 ms": c["lookup_p99_ms"],
                "lookup max ms": c["lookup_max_ms"],
                "hints": c["hints"],
                "hint p99 ms": c["hint_p99_ms"],
                "hint max ms": c["hint_max_ms"],
            }
            for kind, c in result["control"].items()
        ],
    )


def main(args: argparse.Namespace) -> int:
    result = run(args)
    print_report(result)
    print_control(result)
    write_json(args.json, result)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stall",
        help="Lookup and hint latency while the live server moves KV between tiers",
        description="Start a real server, fill one session's KV into HBM, and move it HBM->DRAM, "
        "DRAM->HBM, HBM->DRAM, DRAM->disk and disk->HBM while a Lookup prober and a hint prober "
        "run; report their latency during each move against idle, and each move's rate against a "
        "raw copy / raw write of the same bytes measured in the same run.",
    )
    p.add_argument("--gib", type=float, default=1.0, help="GiB moved by each move (default 1)")
    p.add_argument(
        "--block-mib", type=float, default=2.0, help="block size in MiB (default 2: 16 tokens of Llama-3-8B)"
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="times the five moves are made (default 3); figures pool them"
    )
    p.add_argument("--idle-s", type=float, default=3.0, help="seconds of idle probing (default 3)")
    p.add_argument("--settle-s", type=float, default=0.5, help="pause before each move (default 0.5)")
    p.add_argument(
        "--probe-interval-ms", type=float, default=2.0, help="pause between a prober's calls (default 2)"
    )
    p.add_argument("--data-dir", type=Path, help="where the server's data dir goes (default: a temp dir)")
    p.add_argument(
        "--prefault-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for shared memory to be prefaulted",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
