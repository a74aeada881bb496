"""Prometheus metrics of one daemon (``prometheus-client``), on a registry of its own.

Names follow Prometheus conventions: ``ipamd_`` prefix, base units, counters end in ``_total``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    """The daemon's metrics. ``registry`` is private so several daemons (or tests) can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter("ipamd_requests_total", "CNI and gRPC requests by verb and outcome",
                                ["verb", "outcome"], registry=r)
        self.add_seconds = Histogram("ipamd_add_duration_seconds", "Time to answer an ADD, seconds",
                                     buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10), registry=r)
        self.cas_conflicts = Counter("ipamd_cas_conflicts_total", "etcd transactions whose compares failed",
                                     ["verb"], registry=r)
        self.etcd_errors = Counter("ipamd_etcd_errors_total", "etcd requests that failed or timed out",
                                   registry=r)
        self.etcd_txns = Counter("ipamd_etcd_txn_total", "etcd transactions made by requests", ["verb"], registry=r)
        self.etcd_round_trips = Counter("ipamd_etcd_txn_round_trips_total",
                                        "etcd Txn calls sent (concurrent transactions may share one)", registry=r)
        self.etcd_batch_parts = Histogram("ipamd_etcd_txn_batch_parts", "Transactions carried by one etcd Txn call",
                                          buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.pool_exhausted = Counter("ipamd_pool_exhausted_total", "ADDs refused because a pool was full",
                                      ["pool"], registry=r)
        self.block_claims = Counter("ipamd_block_claims_total", "blocks claimed by this node", registry=r)
        self.gc_released = Counter("ipamd_gc_released_total", "attachments released by GC", registry=r)
        self.ready = Gauge("ipamd_ready", "1 once the first sync with etcd is done", registry=r)
        self.reconcile_candidates = Gauge("ipamd_reconcile_candidates",
                                          "This node's attachments (and broken records) the reconciler saw gone in "
                                          "its last pass", registry=r)
        self.reconcile_released = Counter("ipamd_reconcile_released_total",
                                          "Attachments released (or broken records removed) by the reconciler, by "
                                          "the check that judged them", ["reason"], registry=r)
        self.reconcile_too_young = Counter("ipamd_reconcile_skipped_too_young_total",
                                           "Candidates seen gone again but still within the grace period",
                                           registry=r)
        self.loop_errors = Counter("ipamd_background_errors_total",
                                   "Errors in background loops (each followed by a backoff and a retry)", ["loop"],
                                   registry=r)

    def child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup costs a few microseconds and runs on every request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def watch_pools(self, usage: Callable[[], list[tuple[str, int, int]]]) -> None:
        """Export ``ipamd_pool_free_addresses`` / ``ipamd_pool_allocated_addresses`` per pool, computed at scrape
        time by ``usage()`` (pool id, usable, allocated); nothing is exported while etcd cannot be read."""
        self.registry.register(_PoolCollector(usage))

    def serve(self, address: str) -> object:
        """Serve ``/metrics`` on ``host:port`` (port 0 picks one); returns the server (``server_port`` attr)."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
        return server


class _PoolCollector(Collector):
    def __init__(self, usage: Callable[[], list[tuple[str, int, int]]]) -> None:
        self.usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        free = GaugeMetricFamily("ipamd_pool_free_addresses", "Usable addresses not allocated, per pool",
                                 labels=["pool"])
        allocated = GaugeMetricFamily("ipamd_pool_allocated_addresses", "Allocated addresses, per pool",
                                      labels=["pool"])
        try:
            rows = self.usage()
        except Exception:  # noqa: BLE001 - a scrape must not fail because etcd is away
            rows = []
        for pool, usable, used in rows:
            free.add_metric([pool], max(usable - used, 0))
            allocated.add_metric([pool], used)
        yield free
        yield allocated

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
