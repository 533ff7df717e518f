"""`kvstore bench faults`: what clients see when the disk tier's file system fills up or turns
read-only, and that every cross-tenant attempt is denied.

Disk faults run a real `kvstore serve` (DRAM + disk, the disk tier's capacity far above the file
system's room) whose data dir is a small tmpfs mounted for the run: full means the file system
has no room left (ENOSPC), read-only means it is remounted read-only (EROFS), as a failing disk
is. Mounting needs root (CAP_SYS_ADMIN); without it the disk scenarios are skipped and say so.
Writer threads put fresh blocks, readers get blocks acknowledged before, Admin.Health is sampled;
every answer is counted by status. Then the fault is cleared (blocks deleted, or remounted
read-write) and the same is counted again: the server must come back to SERVING by itself.

Cross-tenant: a server with a tokens file and two tenants; tenant b's tokens try every way to
reach tenant a's namespace, blocks, sessions, tool calls, fan-outs and leases. Each attempt must
be PERMISSION_DENIED (or, for listings, show nothing of a's), and a's state must be unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml

from kvstore.auth_tokens import entry_yaml, new_token
from kvstore.bench.report import print_table, write_json
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

BLOCK = 16 * 1024
NS = "faults"


def key(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=32).digest()


def payload(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=64).digest() * (BLOCK // 64)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of `size` at `path` for the block; yields False (nothing mounted) where not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, mode: str) -> None:
    """Remount; retried while a block file is open for writing (the kernel answers busy)."""
    for _ in range(500):
        if subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.01)
    raise RuntimeError(f"could not remount {path} {mode}")


class Traffic:
    """Writers and readers against one server; answers counted per (phase, call, status)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.health: Counter[tuple[str, str]] = Counter()
        self.acked: list[int] = []
        self.next = 0
        self.corrupt = 0
        self.lock = threading.Lock()
        self.phase = "before"

    def _count(self, call: str, status: str) -> None:
        with self.lock:
            self.counts[(self.phase, call, status)] += 1

    def _writer(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(self.address) as ch:
            kv = pb_grpc.KVStoreStub(ch)
            while not stop.is_set():
                with self.lock:
                    n, self.next = self.next, self.next + 1
                try:
                    reply = kv.Put(
                        iter([pb.PutRequest(namespace=NS, key=key(n), data=payload(n))]), timeout=30
                    )
                except grpc.RpcError as exc:
                    self._count("Put", exc.code().name)
                    time.sleep(0.01)
                    continue
                self._count("Put", "OK" if reply.tiers[0] else "OK, not kept")
                if reply.tiers[0]:
                    with self.lock:
                        self.acked.append(n)

    def _reader(self, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(self.address) as ch:
            kv = pb_grpc.KVStoreStub(ch)
            while not stop.is_set():
                with self.lock:
                    n = rng.choice(self.acked) if self.acked else None
                if n is None:
                    time.sleep(0.01)
                    continue
                try:
                    reply = next(iter(kv.Get(pb.GetRequest(namespace=NS, keys=[key(n)]), timeout=30)))
                except grpc.RpcError as exc:
                    self._count("Get", exc.code().name)
                    continue
                if reply.found and reply.data != payload(n):
                    with self.lock:
                        self.corrupt += 1
                self._count("Get", "OK, hit" if reply.found else "OK, miss (evicted)")

    def _prober(self, stop: threading.Event) -> None:
        with grpc.insecure_channel(self.address) as ch:
            admin = pb_grpc.AdminStub(ch)
            while not stop.is_set():
                status = admin.Health(pb.HealthRequest(), timeout=30).status
                with self.lock:
                    self.health[(self.phase, status)] += 1
                stop.wait(0.25)

    def run(self, phase: str, seconds: float, writers: int = 3, readers: int = 2) -> None:
        self.phase = phase
        stop = threading.Event()
        threads = [threading.Thread(target=self._writer, args=(stop,)) for _ in range(writers)]
        threads += [threading.Thread(target=self._reader, args=(stop, i)) for i in range(readers)]
        threads.append(threading.Thread(target=self._prober, args=(stop,)))
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()

    def rows(self, scenario: str) -> list[dict[str, Any]]:
        out = []
        for phase in dict.fromkeys(p for p, _, _ in self.counts):
            calls = {f"{c} {s}": n for (p, c, s), n in sorted(self.counts.items()) if p == phase}
            health = {f"health {s}": n for (p, s), n in sorted(self.health.items()) if p == phase}
            out.append(
                {"scenario": scenario, "phase": phase, "answers": _join(calls), "health": _join(health)}
            )
        return out


def _join(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def disk_server(root: Path) -> ServerProcess:
    """A server whose disk tier's files (root/data/blocks) live on the file system mounted there."""
    config = root.parent / f"{root.name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hbm": {"enabled": "off"},
                "dram": {"capacity": 32 * BLOCK},
                "disk": {"capacity": "1GiB"},  # far above the file system's room: it fills first
                "shared_memory": {"enabled": "off"},
                "log_level": "warning",
                "namespaces": [{"name": NS, "model": "m", "block_tokens": 16, "block_bytes": BLOCK}],
            }
        )
    )
    return ServerProcess(root / "data", config=config)


def disk_full(tmp: Path, seconds: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    mnt = tmp / "full" / "data" / "blocks"  # the disk tier's files; the data dir's lock stays out
    with tmpfs(mnt, "2m") as mounted:
        if not mounted:
            return [], {"disk full": "skipped: mounting a tmpfs needs root (CAP_SYS_ADMIN)"}
        server = disk_server(tmp / "full")
        traffic = Traffic(server.address)
        traffic.run("filling up", seconds)
        with grpc.insecure_channel(server.address) as ch:  # room again: delete what is on disk
            kv = pb_grpc.KVStoreStub(ch)
            kv.Delete(pb.DeleteRequest(namespace=NS, keys=[key(n) for n in traffic.acked[:100]]), timeout=30)
        time.sleep(6)  # the disk tier tries writes again 5 s after one failed
        traffic.run("room made", min(seconds, 5.0))
        server.terminate()
    return traffic.rows("disk full (2 MiB tmpfs)"), {"disk full: corrupt blocks served": traffic.corrupt}


def disk_read_only(tmp: Path, seconds: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    mnt = tmp / "ro" / "data" / "blocks"
    with tmpfs(mnt, "64m") as mounted:
        if not mounted:
            return [], {"read-only disk": "skipped: mounting a tmpfs needs root (CAP_SYS_ADMIN)"}
        server = disk_server(tmp / "ro")
        traffic = Traffic(server.address)
        traffic.run("writable", min(seconds, 3.0))
        remount(mnt, "ro")
        traffic.run("read-only", seconds)
        remount(mnt, "rw")
        time.sleep(6)
        traffic.run("writable again", min(seconds, 5.0))
        server.terminate()
    return traffic.rows("read-only disk (tmpfs remounted ro)"), {
        "read-only: corrupt blocks served": traffic.corrupt
    }


# ------------------------------------------------------------------ cross-tenant


def cross_tenant(tmp: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    roles = {"engine-a": ("a", "engine"), "agent-a": ("a", "agent"), "engine-b": ("b", "engine"),
             "agent-b": ("b", "agent"), "admin": ("ops", "admin")}  # fmt: skip
    tokens = {name: new_token() for name in roles}
    entries: list[Any] = []
    for name, (tenant, role) in roles.items():
        entries += yaml.safe_load(entry_yaml(tokens[name], tenant, role, name))
    (tmp / "tokens.yaml").write_text(yaml.safe_dump({"tokens": entries}))
    config = tmp / "tenants.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hbm": {"enabled": "off"},
                "dram": {"capacity": 64 * BLOCK},
                "disk": {"capacity": 64 * BLOCK},
                "log_level": "error",
                "auth": {"tokens_file": str(tmp / "tokens.yaml")},
                "namespaces": [
                    {"name": "a-ns", "model": "m", "tenant": "a", "block_tokens": 16, "block_bytes": BLOCK},
                    {"name": "b-ns", "model": "m", "tenant": "b", "block_tokens": 16, "block_bytes": BLOCK},
                ],
            }
        )
    )
    server = ServerProcess(tmp / "tenants-data", config=config)

    def md(name: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {tokens[name]}")]

    with grpc.insecure_channel(server.address) as ch:
        kv, hints, admin = pb_grpc.KVStoreStub(ch), pb_grpc.AgentHintsStub(ch), pb_grpc.AdminStub(ch)
        keys = [key(i) for i in range(4)]
        kv.Put(iter([pb.PutRequest(namespace="a-ns", key=k, data=payload(i)) for i, k in enumerate(keys)]),
               metadata=md("engine-a"))  # fmt: skip
        kv.Pin(pb.PinRequest(namespace="a-ns", keys=keys[:1]), metadata=md("engine-a"))
        hints.OpenSession(pb.OpenSessionRequest(session="sa", namespace="a-ns"), metadata=md("agent-a"))
        call = hints.BeginToolCall(
            pb.BeginToolCallRequest(session="sa", tool_name="grep"), metadata=md("agent-a")
        )
        fan = hints.AnnounceFanout(
            pb.AnnounceFanoutRequest(session="sa", n=2, ttl_s=600), metadata=md("agent-a")
        )
        lease = kv.Acquire(pb.AcquireRequest(namespace="a-ns", keys=keys[:1]), metadata=md("admin"))

        def state() -> tuple[Any, ...]:
            blocks = admin.ListBlocks(pb.ListBlocksRequest(namespace="a-ns"), metadata=md("admin")).blocks
            sessions = admin.ListSessions(pb.ListSessionsRequest(), metadata=md("admin")).sessions
            return sorted((b.key, b.tier, b.pins) for b in blocks), sorted(
                (s.session, s.state) for s in sessions
            )

        before = state()
        e, g = md("engine-b"), md("agent-b")
        attempts: dict[str, Callable[[], Any]] = {
            "Get a's blocks": lambda: list(kv.Get(pb.GetRequest(namespace="a-ns", keys=keys), metadata=e)),
            "Lookup a's chain": lambda: kv.Lookup(pb.LookupRequest(namespace="a-ns", keys=keys), metadata=e),
            "Put into a's namespace": lambda: kv.Put(
                iter([pb.PutRequest(namespace="a-ns", key=key(99), data=payload(99))]), metadata=e
            ),
            "Delete a's blocks": lambda: kv.Delete(pb.DeleteRequest(namespace="a-ns", keys=keys), metadata=e),
            "Pin a's blocks": lambda: kv.Pin(pb.PinRequest(namespace="a-ns", keys=keys), metadata=e),
            "Unpin a's pin": lambda: kv.Unpin(pb.PinRequest(namespace="a-ns", keys=keys[:1]), metadata=e),
            "UserActive a's": lambda: hints.UserActive(pb.SessionRequest(session="sa"), metadata=g),
            "Acquire a's blocks": lambda: kv.Acquire(
                pb.AcquireRequest(namespace="a-ns", keys=keys), metadata=e
            ),
            "Release a's lease": lambda: kv.Release(pb.LeaseRequest(lease_id=lease.lease_id), metadata=e),
            "Evict a's blocks": lambda: admin.Evict(pb.EvictRequest(namespace="a-ns", keys=keys), metadata=e),
            "Evict a tier (every tenant's)": lambda: admin.Evict(
                pb.EvictRequest(tier="dram", bytes=BLOCK), metadata=e
            ),
            "ListBlocks of a's namespace": lambda: admin.ListBlocks(
                pb.ListBlocksRequest(namespace="a-ns"), metadata=e
            ),
            "Get with a's session (own namespace)": lambda: list(
                kv.Get(pb.GetRequest(namespace="b-ns", keys=keys, session="sa"), metadata=e)
            ),
            "Put with a's session (own namespace)": lambda: kv.Put(
                iter([pb.PutRequest(namespace="b-ns", key=key(98), data=payload(98), session="sa")]),
                metadata=e,
            ),
            "CloseSession a's": lambda: hints.CloseSession(pb.SessionRequest(session="sa"), metadata=g),
            "AwaitingUser a's": lambda: hints.AwaitingUser(pb.SessionRequest(session="sa"), metadata=g),
            "BindChain a's session": lambda: hints.BindChain(
                pb.BindChainRequest(session="sa", namespace="a-ns", keys=keys), metadata=g
            ),
            "EndToolCall a's call": lambda: hints.EndToolCall(
                pb.EndToolCallRequest(call_id=call.call_id), metadata=g
            ),
            "BranchDone a's fan-out": lambda: hints.BranchDone(
                pb.BranchDoneRequest(fanout_id=fan.fanout_id), metadata=g
            ),
            "AnnounceFanout on a's session": lambda: hints.AnnounceFanout(
                pb.AnnounceFanoutRequest(session="sa", n=2, ttl_s=1), metadata=g
            ),
            "WaitReady a's session": lambda: hints.WaitReady(pb.WaitReadyRequest(session="sa"), metadata=g),
            "OpenSession in a's namespace": lambda: hints.OpenSession(
                pb.OpenSessionRequest(session="sb", namespace="a-ns"), metadata=g
            ),
        }
        rows = []
        for kind, attempt in attempts.items():
            try:
                attempt()
                outcome = "allowed"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            rows.append({"attempt by tenant b": kind, "answer": outcome})
        # Listings answer, but with nothing of a's in them.
        sessions = admin.ListSessions(pb.ListSessionsRequest(), metadata=e).sessions
        stats = admin.Stats(pb.StatsRequest(), metadata=e)
        rows.append(
            {
                "attempt by tenant b": "ListSessions (all)",
                "answer": "shows a's: " + str(any(s.session == "sa" for s in sessions)),
            }
        )
        rows.append(
            {
                "attempt by tenant b": "Stats",
                "answer": "shows a's: " + str(any(n.name == "a-ns" for n in stats.namespaces)),
            }
        )
        after = state()
    server.terminate()
    denied = sum(r["answer"] in ("PERMISSION_DENIED", "shows a's: False") for r in rows)
    figures = {
        "cross-tenant attempts": len(rows),
        "denied (or nothing of a's shown)": denied,
        "a's blocks, pins and sessions unchanged": before == after,
    }
    return rows, figures


def main(args: argparse.Namespace) -> int:
    figures: dict[str, Any] = {}
    disk_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_disk:
            for scenario in (disk_full, disk_read_only):
                rows, found = scenario(tmp, args.seconds)
                disk_rows += rows
                figures.update(found)
        tenant_rows, found = cross_tenant(tmp)
        figures.update(found)
    if disk_rows:
        print_table("disk faults: what clients saw", disk_rows)
    print_table("cross-tenant attempts", tenant_rows)
    print_table("fault figures", [figures])
    write_json(args.json, {"figures": figures, "disk": disk_rows, "cross_tenant": tenant_rows})
    unknown = any("UNKNOWN" in r["answers"] or "INTERNAL" in r["answers"] for r in disk_rows)
    corrupt = any(v for k, v in figures.items() if "corrupt" in k and isinstance(v, int))
    all_denied = figures["denied (or nothing of a's shown)"] == figures["cross-tenant attempts"]
    return (
        0
        if all_denied and not unknown and not corrupt and figures["a's blocks, pins and sessions unchanged"]
        else 1
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "faults",
        help="a full and a read-only disk (what clients see), and cross-tenant attempts (all denied)",
        description="Disk faults on a small tmpfs (needs root to mount; skipped otherwise), then every "
        "way tenant b could reach tenant a's data, against a real server with a tokens file.",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of traffic per fault (default 10)")
    p.add_argument("--skip-disk", action="store_true", help="only the cross-tenant attempts")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.set_defaults(run=main)
