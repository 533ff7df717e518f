"""Prometheus metrics, read from the store at scrape time (nothing extra on the data path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from kvstore.shm.leases import Leases
from kvstore.stats import StoreStats, store_stats
from kvstore.store import Store
from kvstore.tiers.remote import RemoteStats


class StoreCollector(Collector):
    def __init__(self, store: Store, leases: Leases | None = None) -> None:
        self.store = store
        self.leases = leases

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = store_stats(self.store)  # takes the store's lock itself
        leases = self.leases.stats() if self.leases is not None else None
        with self.store.lock:  # session tables and link counts change under other threads
            return iter(list(self._collect(stats, leases)))

    def _collect(
        self, s: StoreStats, lease_stats: dict[str, int] | None
    ) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gauges = {
            "used_bytes": GaugeMetricFamily(
                "kvstore_tier_used_bytes", "Bytes allocated in the tier", labels=["tier"]
            ),
            "capacity": GaugeMetricFamily("kvstore_tier_capacity_bytes", "Tier capacity", labels=["tier"]),
            "blocks": GaugeMetricFamily("kvstore_tier_blocks", "Blocks in the tier", labels=["tier"]),
            "pinned": GaugeMetricFamily(
                "kvstore_tier_pinned_blocks", "Pinned blocks in the tier", labels=["tier"]
            ),
        }
        counters = {
            "hits": CounterMetricFamily("kvstore_tier_hits", "Gets served from the tier", labels=["tier"]),
            "moves_in": CounterMetricFamily(
                "kvstore_tier_moves_in", "Blocks moved into the tier", labels=["tier"]
            ),
            "moves_out": CounterMetricFamily(
                "kvstore_tier_moves_out", "Blocks moved out of the tier", labels=["tier"]
            ),
            "drops": CounterMetricFamily(
                "kvstore_tier_drops", "Blocks dropped from the tier", labels=["tier"]
            ),
        }
        for t in s.tiers:
            for name, value in (
                ("used_bytes", t.used),
                ("capacity", t.capacity),
                ("blocks", t.blocks),
                ("pinned", t.pinned_blocks),
            ):
                gauges[name].add_metric([t.name], value)
            for name, value in (
                ("hits", t.hits),
                ("moves_in", t.moves_in),
                ("moves_out", t.moves_out),
                ("drops", t.drops),
            ):
                counters[name].add_metric([t.name], value)
        yield from gauges.values()
        yield from counters.values()
        yield CounterMetricFamily("kvstore_get_misses", "Gets of keys that were not stored", value=s.misses)
        yield CounterMetricFamily("kvstore_lookups", "Prefix lookups", value=s.lookups)
        moved = CounterMetricFamily("kvstore_moved_bytes", "Bytes moved between tiers", labels=["src", "dst"])
        moves = CounterMetricFamily("kvstore_moves", "Blocks moved between tiers", labels=["src", "dst"])
        for (src, dst), link in list(self.store.links.measured.items()):
            moved.add_metric([src, dst], link.bytes)
            moves.add_metric([src, dst], link.moves)
        yield moved
        yield moves
        registry = self.store.sessions
        hints = CounterMetricFamily("kvstore_hints", "Agent hints received", labels=["kind"])
        for kind, n in sorted(registry.hints.items()):
            hints.add_metric([kind], n)
        yield hints
        prefetches = CounterMetricFamily(
            "kvstore_prefetches",
            "Tool-call prefetches by outcome (on_time, late, wasted)",
            labels=["outcome"],
        )
        for outcome, n in registry.prefetches.items():
            prefetches.add_metric([outcome], n)
        yield prefetches
        prefetch_bytes = CounterMetricFamily(
            "kvstore_prefetch_bytes", "Bytes prefetched, and wasted", labels=["kind"]
        )
        for kind, n in registry.prefetch_bytes.items():
            prefetch_bytes.add_metric([kind], n)
        yield prefetch_bytes
        yield GaugeMetricFamily("kvstore_sessions", "Open agent sessions", value=len(registry.sessions))
        if lease_stats is not None:
            leases = GaugeMetricFamily(
                "kvstore_leases",
                "Open shared-memory leases, and bytes reserved by write leases",
                labels=["kind"],
            )
            for kind, n in lease_stats.items():
                leases.add_metric([kind], n)
            yield leases
        if self.store.remote is not None:
            yield from _remote_metrics(self.store.remote.stats())


def _remote_metrics(r: RemoteStats) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The remote tier on Redis: whether it answers, this worker's share, and what its calls did."""
    yield GaugeMetricFamily("kvstore_remote_up", "1 while Redis answers, 0 during an outage", value=int(r.up))
    yield GaugeMetricFamily("kvstore_remote_used_bytes", "Bytes this worker keeps in Redis", value=r.used)
    yield GaugeMetricFamily("kvstore_remote_queued", "Blocks waiting to be written to Redis", value=r.queued)
    ops = CounterMetricFamily("kvstore_remote_blocks", "Remote tier block outcomes", labels=["outcome"])
    for outcome in ("hits", "misses", "corrupt", "writes", "dropped_writes", "evictions"):
        ops.add_metric([outcome], getattr(r, outcome))
    yield ops
    yield CounterMetricFamily("kvstore_remote_outages", "Redis outages since start", value=r.episodes)


def serve_metrics(
    registry: CollectorRegistry, store: Store, host: str, port: int, leases: Leases | None = None
) -> Callable[[], None]:
    """Serve /metrics (the store's counters, and whatever else is in `registry`: RPC latencies,
    build info) in a background thread; returns the function that stops it."""
    registry.register(StoreCollector(store, leases))
    httpd, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    return stop
