"""`kvstore bench dataplane`: put/get GB/s of 1-64 MiB blocks through the shared-memory path and
the gRPC path of a real `kvstore serve` child process, next to a raw memory copy and next to
LMCache's own CPU storage path (its LocalCPUBackend through its StorageManager), all in one run.

Every path moves the same bytes from the same source buffers into the same kind of destination:
a put copies a caller's block into the store, a get copies a stored block into a caller's
buffer (what an engine does before its host-to-device copy). Each path runs once untimed first,
so page faults of fresh memory are not counted. With LMCache installed it also times LMCache's
store/retrieve with kvstore as its remote backend against its local CPU backend.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kvstore.bench.report import print_table, write_json
from kvstore.sdk import Client
from kvstore.server.process import ServerProcess

MiB = 2**20
LMCACHE_TOKENS, LMCACHE_HEADS, LMCACHE_HEAD_DIM = 256, 8, 128  # one layer of K+V in bf16 = 1 MiB


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser(
        "dataplane",
        help="put/get GB/s: shared memory vs gRPC vs raw copy vs LMCache's CPU backend",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes", default="1,4,16,64", help="block sizes in MiB, comma-separated (default 1,4,16,64)"
    )
    p.add_argument("--batch-mib", type=int, default=64, help="bytes moved per call, in MiB (default 64)")
    p.add_argument("--total-mib", type=int, default=512, help="bytes timed per path and size (default 512)")
    p.add_argument("--no-lmcache", action="store_true", help="skip LMCache's paths")
    p.add_argument(
        "--compare-plugin",
        action="append",
        default=[],
        metavar="MODULE:CLASS",
        help="also time this LMCache remote-storage plugin class (e.g. an older copy of ours) beside "
        "LMCache's CPU backend and the shipped plugin, in the same run; repeatable",
    )
    p.add_argument(
        "--repeat", type=int, default=1, help="LMCache backend rounds, each in one run (default 1)"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to this JSON file")
    p.set_defaults(run=run)


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def timed(step: Callable[[int], None], calls: int, warmup: int = 1) -> float:
    """Seconds for `calls` calls of step(i), after `warmup` untimed ones (i < 0)."""
    for i in range(-warmup, 0):
        step(i)
    t0 = time.perf_counter()
    for i in range(calls):
        step(i)
    return time.perf_counter() - t0


def keys_for(size_mib: int, call: int, n: int) -> list[bytes]:
    return [f"{size_mib}:{call}:{j}".encode().ljust(16, b".") for j in range(n)]


@contextlib.contextmanager
def kvstore_server(workdir: Path, sizes: list[int], dram_bytes: int) -> Iterator[ServerProcess]:
    config = workdir / "kvstore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hbm": {"enabled": "off"},
                "dram": {"capacity": dram_bytes},
                "disk": {"enabled": False},
                "shared_memory": {"enabled": "on"},
                "max_message_bytes": max(sizes) * MiB + MiB,
                "log_level": "warning",
                "namespaces": [
                    {
                        "name": f"b{s}m",
                        "model": "bench",
                        "block_tokens": LMCACHE_TOKENS,
                        "block_bytes": s * MiB,
                    }
                    for s in sizes
                ]
                + [{"name": "lmcache", "model": "bench", "block_tokens": LMCACHE_TOKENS, "block_bytes": MiB}],
            }
        )
    )
    with ServerProcess(workdir / "data", config=config) as server:
        yield server


def bench_size(
    address: str, size_mib: int, batch_bytes: int, total_bytes: int, lmcache: bool, dram_bytes: int
) -> dict[str, Any]:
    size = size_mib * MiB
    n = max(1, batch_bytes // size)
    calls = max(3, total_bytes // (n * size))
    # Puts cycle through the whole DRAM tier before timing: a fresh shared page costs a fault once.
    fill = dram_bytes // (n * size) + 1
    moved = calls * n * size
    rng = np.random.default_rng(size_mib)
    src = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(n)]
    dst = [np.empty(size, dtype=np.uint8) for _ in range(n)]
    row: dict[str, Any] = {"block_mib": size_mib, "per_call": n}

    def raw(_: int) -> None:
        for d, s in zip(dst, src, strict=True):
            memoryview(d)[:] = memoryview(s)  # the copy the shared-memory path makes, alone

    row["raw"] = gbps(moved, timed(raw, calls))
    ns = f"b{size_mib}m"
    for transport, shared in (("shm", True), ("grpc", False)):
        with Client(address, shared_memory=shared, timeout=600) as kv:
            assert kv.transport() == transport, (
                f"expected the {transport} path, the client chose {kv.transport()}"
            )
            put_t = timed(lambda i, kv=kv: kv.put(ns, keys_for(size_mib, i, n), src), calls, fill)
            get_t = timed(
                lambda i, kv=kv: _check(kv.fetch(ns, keys_for(size_mib, calls - 1, n), into=dst)), calls
            )
        assert all(np.array_equal(d, s) for d, s in zip(dst, src, strict=True)), (
            f"{transport} get returned other bytes"
        )
        row[f"{transport}_put"] = gbps(moved, put_t)
        row[f"{transport}_get"] = gbps(moved, get_t)
    if lmcache:
        # Room for every chunk the run stores: LMCache's CPU backend then never has to evict.
        put_t, get_t = LMCacheCPU(size_mib, (calls + 2) * n * size).times(src, dst, calls)
        row["lmcache_put"] = gbps(moved, put_t)
        row["lmcache_get"] = gbps(moved, get_t)
    row["shm_vs_raw"] = min(row["shm_put"], row["shm_get"]) / row["raw"]
    return row


def _check(blocks: list[Any]) -> None:
    if any(b is None for b in blocks):
        raise RuntimeError("a block put moments ago was not found: the DRAM tier is too small for the batch")


# ---------------------------------------------------------------- LMCache


def _lmcache_metadata(layers: int) -> Any:
    import torch
    from lmcache.v1.metadata import LMCacheMetadata

    shape = (layers, 2, LMCACHE_TOKENS, LMCACHE_HEADS, LMCACHE_HEAD_DIM)
    return LMCacheMetadata("bench", 1, 0, 0, 0, torch.bfloat16, shape, chunk_size=LMCACHE_TOKENS)


def _lmcache_key(chunk: int) -> Any:
    import torch
    from lmcache.utils import CacheEngineKey

    return CacheEngineKey("bench", 1, 0, chunk, torch.bfloat16)


class LMCacheCPU:
    """LMCache's StorageManager with only its LocalCPUBackend: chunks of `size_mib` MiB."""

    def __init__(self, size_mib: int, cpu_bytes: int, **config: Any) -> None:
        from lmcache.v1.config import LMCacheEngineConfig
        from lmcache.v1.event_manager import EventManager
        from lmcache.v1.storage_backend.storage_manager import StorageManager

        settings = {"chunk_size": LMCACHE_TOKENS, "local_cpu": True, "max_local_cpu_size": cpu_bytes / 2**30}
        self.config = LMCacheEngineConfig.from_defaults(**{**settings, **config})
        self.metadata = _lmcache_metadata(size_mib)
        self.manager = StorageManager(self.config, self.metadata, EventManager())
        # The backend LMCache's engine reads from, as its lookup would report it.
        self.location: str | None = None

    def store(self, keys: list[Any], src: list[np.ndarray]) -> list[Any]:
        shapes, dtypes = self.metadata.get_shapes(), self.metadata.get_dtypes()
        objs = self.manager.batched_allocate(shapes, dtypes, len(keys))
        if objs is None:
            raise RuntimeError("LMCache could not allocate CPU buffers for the batch")
        for obj, data in zip(objs, src, strict=True):
            np.frombuffer(obj.byte_array, dtype=np.uint8)[:] = data  # the engine's device-to-host copy
        self.manager.batched_put(keys, objs)
        return objs

    def retrieve(self, keys: list[Any], dst: list[np.ndarray]) -> None:
        objs = self.manager.batched_get(keys, location=self.location)
        if any(o is None for o in objs):
            raise RuntimeError("LMCache missed a chunk it stored moments ago")
        for obj, out in zip(objs, dst, strict=True):
            out[:] = np.frombuffer(obj.byte_array, dtype=np.uint8)  # the engine's host-to-device copy
            obj.ref_count_down()

    def times(
        self, src: list[np.ndarray], dst: list[np.ndarray], calls: int, warmup: int = 1
    ) -> tuple[float, float]:
        n = len(src)
        try:
            put_t = timed(
                lambda i: self.store([_lmcache_key(i * n + j + 10**6) for j in range(n)], src), calls, warmup
            )
            last = [_lmcache_key((calls - 1) * n + j + 10**6) for j in range(n)]
            self.verify(last)
            get_t = timed(lambda i: self.retrieve(last, dst), calls)
        finally:
            self.close()
        if not all(np.array_equal(d, s) for d, s in zip(dst, src, strict=True)):
            raise RuntimeError("LMCache returned other bytes")
        return put_t, get_t

    def verify(self, keys: list[Any]) -> None:
        """Every chunk of the last stored batch is where the retrieve will look."""
        backend = self.manager.storage_backends[self.location or "LocalCPUBackend"]
        if not all(backend.contains(k) for k in keys):
            raise RuntimeError("LMCache's backend does not hold a chunk it finished storing")

    def close(self) -> None:
        self.manager.close()


class LMCacheRemote(LMCacheCPU):
    """The same StorageManager storing through kvstore (our plugin) instead of its local CPU."""

    def __init__(
        self,
        address: str,
        cpu_bytes: int,
        shared_memory: bool,
        plugin_class: str = "kvstore.integrations.lmcache.connector:KVStoreConnector",
    ) -> None:
        plugin = "remote_storage_plugin.kvstore."
        module_path, class_name = plugin_class.split(":")
        super().__init__(
            1,
            cpu_bytes,
            local_cpu=False,
            remote_storage_plugins=["kvstore"],
            extra_config={
                plugin + "module_path": module_path,
                plugin + "class_name": class_name,
                plugin + "address": address,
                plugin + "namespace": "lmcache",
                plugin + "timeout_s": 60.0,
                plugin + "shared_memory": shared_memory,
            },
        )
        self.location = "RemoteBackend-kvstore"

    def store(self, keys: list[Any], src: list[np.ndarray]) -> list[Any]:
        objs = super().store(keys, src)
        # LMCache puts in the background, holding one reference to each buffer until the plugin's
        # put returned (kvstore committed the chunks): a store counts until the last is dropped.
        # Polled locally, so the wait adds no RPC (nothing else allocates from this manager).
        while any(o.get_ref_count() > 0 for o in objs):
            time.sleep(0.0002)
        self.stored = keys
        return objs


def bench_lmcache_backends(
    address: str, chunks: int, calls: int, dram_bytes: int, compare: list[str] | None = None
) -> list[dict[str, Any]]:
    """LMCache store/retrieve of 1 MiB chunks: local CPU backend vs kvstore as its backend (and
    any `compare` plugin classes, MODULE:CLASS), each ratio to the CPU backend of the same run."""
    rng = np.random.default_rng(1)
    src = [rng.integers(0, 256, MiB, dtype=np.uint8) for _ in range(chunks)]
    dst = [np.empty(MiB, dtype=np.uint8) for _ in range(chunks)]
    # LMCache touches its whole CPU buffer when it allocates it; kvstore's shared pages are warmed
    # by cycling through the DRAM tier once before timing.
    warmup = dram_bytes // (chunks * MiB) + 1
    cpu_bytes = chunks * MiB * (calls + warmup + 1)
    makers: list[tuple[str, Callable[[], LMCacheCPU]]] = [
        ("LocalCPUBackend", lambda: LMCacheCPU(1, cpu_bytes)),
        ("kvstore (shared memory)", lambda: LMCacheRemote(address, cpu_bytes, True)),
        ("kvstore (gRPC)", lambda: LMCacheRemote(address, cpu_bytes, False)),
    ]
    for plugin_class in compare or ():
        makers.append(
            (
                f"{plugin_class} (shared memory)",
                lambda p=plugin_class: LMCacheRemote(address, cpu_bytes, True, p),
            )
        )
    rows: list[dict[str, Any]] = []
    for name, make in makers:
        put_t, get_t = make().times(src, dst, calls, warmup)
        moved = chunks * MiB * calls
        rows.append(
            {"lmcache_backend": name, "store_gbps": gbps(moved, put_t), "retrieve_gbps": gbps(moved, get_t)}
        )
    for row in rows:  # against LMCache's own CPU backend, timed in the same run
        row["store_vs_cpu"] = row["store_gbps"] / rows[0]["store_gbps"]
        row["retrieve_vs_cpu"] = row["retrieve_gbps"] / rows[0]["retrieve_gbps"]
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print(f"kvstore bench dataplane: --sizes must be whole MiB, comma-separated (got {args.sizes!r})")
        return 2
    if not sizes or min(sizes) < 1 or args.batch_mib < 1 or args.total_mib < 1:
        print("kvstore bench dataplane: sizes, --batch-mib and --total-mib must be >= 1")
        return 2
    lmcache = not args.no_lmcache
    if lmcache:
        if importlib.util.find_spec("lmcache") is None:
            print("LMCache is not installed (pip install -e '.[lmcache]'): its columns are left out")
            lmcache = False
        logging.getLogger("lmcache").setLevel(logging.WARNING)
    batch = args.batch_mib * MiB
    # Room for a few batches: a put round takes at most half the shared room.
    dram = 4 * max(batch, max(sizes) * MiB)
    with (
        tempfile.TemporaryDirectory(prefix="kvstore-dataplane-") as tmp,
        kvstore_server(Path(tmp), sizes, dram) as server,
    ):
        rows = [bench_size(server.address, s, batch, args.total_mib * MiB, lmcache, dram) for s in sizes]
        print_table("put/get GB/s per path, same bytes, same run (lmcache: its LocalCPUBackend)", rows)
        backends: list[dict[str, Any]] = []
        for round_ in range(args.repeat if lmcache else 0):
            done = bench_lmcache_backends(server.address, 64, 8, dram, args.compare_plugin)
            print_table(f"LMCache store/retrieve of 1 MiB chunks, 64 per call (round {round_ + 1})", done)
            backends += [{"round": round_ + 1, **row} for row in done]
    if args.json:
        write_json(args.json, {"sizes": rows, "lmcache_backends": backends, "batch_mib": args.batch_mib})
        print(f"wrote {args.json}")
    return 0
