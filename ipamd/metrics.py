"""Prometheus metrics of one daemon (``prometheus-client``), on a registry of its own.

The catalogue, with each metric's type, labels and meaning, is docs/metrics.md; a test scrapes a running daemon and
checks it against that page. Names follow Prometheus conventions: ``ipamd_`` prefix, base units (seconds,
bytes), ``_total`` only on counters.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

#: Latency buckets of requests and etcd calls, seconds (1 ms to 10 s: a slow etcd answers in seconds, B50).
LATENCY_BUCKETS = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10)
#: The CNI verbs with a latency histogram of their own.
TIMED_VERBS = {"ADD": "add", "DEL": "del", "CHECK": "check", "GC": "gc"}


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One pool as the scrape sees it: ``usable`` addresses of its range, ``allocated`` (cluster-wide), ``blocks``
    claimed by any node, ``own_blocks`` claimed by this node."""

    pool: str
    usable: int
    allocated: int
    blocks: int
    own_blocks: int


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist`` ("unknown" when it is not installed)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The daemon's metrics. ``registry`` is private so several daemons (or tests) can live in one process."""

    def __init__(self) -> None:
        # no *_created series: they double the series count and nothing here uses them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        # requests
        self.requests = Counter("ipamd_requests_total", "CNI and gRPC requests by verb, outcome (ok or error) and "
                                "CNI code (0 for success)", ["verb", "outcome", "code"], registry=r)
        self.add_seconds = Histogram("ipamd_add_duration_seconds", "Time to answer a CNI ADD, seconds",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.del_seconds = Histogram("ipamd_del_duration_seconds", "Time to answer a CNI DEL, seconds",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.check_seconds = Histogram("ipamd_check_duration_seconds", "Time to answer a CNI CHECK, seconds",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.gc_seconds = Histogram("ipamd_gc_duration_seconds", "Time to answer a CNI GC, seconds",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.cas_conflicts = Counter("ipamd_cas_conflicts_total", "etcd transactions whose compares failed",
                                     ["verb"], registry=r)
        self.retries = Counter("ipamd_request_retries_total", "Request attempts after the first (conflict or etcd "
                               "unavailable), by verb", ["verb"], registry=r)
        self.pool_exhausted = Counter("ipamd_pool_exhausted_total", "ADDs refused because a pool was full",
                                      ["pool"], registry=r)
        self.borrowed = Counter("ipamd_addresses_borrowed_total", "Addresses this node allocated in a block owned "
                                "by another node", ["pool"], registry=r)
        self.cooldown_bypass = Counter("ipamd_cooldown_bypass_total", "Addresses handed out while still in their "
                                       "release cooldown because nothing else was free (B09)", ["pool"], registry=r)
        self.block_claims = Counter("ipamd_block_claims_total", "Blocks claimed by this node", registry=r)
        self.blocks_released = Counter("ipamd_blocks_released_total", "Empty blocks this node released after they "
                                       "stayed empty for --empty-block-release-seconds", ["pool"], registry=r)
        # etcd
        self.etcd_errors = Counter("ipamd_etcd_errors_total", "etcd calls that failed, by kind (unavailable, "
                                   "timeout, refused, auth, rejected)", ["kind"], registry=r)
        self.etcd_seconds = Histogram("ipamd_etcd_request_duration_seconds", "Time etcd took to answer a call, "
                                      "seconds, by operation", ["op"], buckets=LATENCY_BUCKETS, registry=r)
        self.etcd_txns = Counter("ipamd_etcd_txn_total", "etcd transactions made by requests", ["verb"], registry=r)
        self.etcd_round_trips = Counter("ipamd_etcd_txn_round_trips_total",
                                        "etcd Txn calls sent (concurrent transactions may share one)", registry=r)
        self.etcd_batch_parts = Histogram("ipamd_etcd_txn_batch_parts", "Transactions carried by one etcd Txn call",
                                          buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.etcd_server = Gauge("ipamd_etcd_server_info", "1 per etcd endpoint that answered, with its release and "
                                 "whether that release has a known data-loss bug", ["endpoint", "version", "known_bad"],
                                 registry=r)
        self.etcd_alarm = Gauge("ipamd_etcd_alarm", "1 while etcd reports the alarm (NOSPACE, CORRUPT)", ["alarm"],
                                registry=r)
        # GC, the reconciler and background loops
        self.gc_released = Counter("ipamd_gc_released_total", "Attachments released by GC", registry=r)
        self.reconcile_candidates = Gauge("ipamd_reconcile_candidates",
                                          "This node's attachments (and broken records) the reconciler saw gone in "
                                          "its last pass", registry=r)
        self.reconcile_released = Counter("ipamd_reconcile_released_total",
                                          "Attachments released (or broken records removed) by the reconciler, by "
                                          "the check that judged them", ["reason"], registry=r)
        self.reconcile_too_young = Counter("ipamd_reconcile_skipped_too_young_total",
                                           "Candidates seen gone again but still within the grace period",
                                           registry=r)
        # automatic removal of nodes deleted from the Kubernetes API (ipamd/noderemoval.py)
        self.node_removals = Counter("ipamd_node_removals_total", "Nodes deleted from the Kubernetes API whose "
                                     "attachments or blocks this daemon removed", registry=r)
        self.node_removal_released = Counter("ipamd_node_removal_released_total", "Attachments released by the "
                                             "automatic removal of nodes deleted from the Kubernetes API",
                                             registry=r)
        self.node_removal_blocks_deleted = Counter("ipamd_node_removal_blocks_deleted_total", "Blocks deleted by "
                                                   "the automatic removal of nodes deleted from the Kubernetes API",
                                                   registry=r)
        self.loop_errors = Counter("ipamd_background_errors_total",
                                   "Errors in background loops (each followed by a backoff and a retry)", ["loop"],
                                   registry=r)
        # readiness and build
        self.ready = Gauge("ipamd_ready", "1 when the daemon serves (health SERVING), 0 otherwise", registry=r)
        self.not_ready = Gauge("ipamd_not_ready", "1 for the reason the daemon is not ready (first_sync, "
                               "etcd_unavailable, etcd_permission, etcd_auth, etcd_alarm), 0 for the others",
                               ["reason"], registry=r)
        self.build = Gauge("ipamd_build_info", "1, with ipamd's version, Python's and the etcd client's",
                           ["version", "python", "etcd_client"], registry=r)
        self.build.labels(package_version("ipamd"), platform.python_version(),
                          package_version("etcd-sdk-python")).set(1)
        # continuous health of this node's attachments (ipamd/attachment_health.py, docs/namespace-checks.md)
        self.attachment_checks = Counter("ipamd_attachment_checks_total",
                                         "Attachments of this node looked at by the health loop, by result "
                                         "(ok, unhealthy)", ["result"], registry=r)
        self.attachments_unhealthy = Gauge("ipamd_attachments_unhealthy",
                                           "Attachments of this node whose last health check failed, by the first "
                                           "reason", ["reason"], registry=r)
        # pools checked against the node's own addresses and routes (ipamd/nodecheck.py, docs/namespace-checks.md)
        self.node_checks = Counter("ipamd_node_checks_total",
                                   "Pools checked against the node's own addresses and routes, by result (ok, "
                                   "conflict, unknown: the check could not look and the pool was allowed)",
                                   ["result"], registry=r)
        for result in ("ok", "conflict", "unknown"):
            self.node_checks.labels(result)

    def child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup costs a few microseconds and runs on every request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def request(self, verb: str, code: int, seconds: float) -> None:
        """Count one request of ``verb`` answered with CNI ``code`` (0: success) after ``seconds``."""
        self.child(self.requests, verb, "ok" if code == 0 else "error", str(code)).inc()
        timed = TIMED_VERBS.get(verb)
        if timed is not None:
            histogram: Histogram = getattr(self, timed + "_seconds")
            histogram.observe(seconds)

    def etcd_error(self, kind: str) -> None:
        """Count one failed etcd call of ``kind`` (the store's ``on_error`` hook)."""
        self.child(self.etcd_errors, kind).inc()

    def etcd_latency(self, op: str, seconds: float) -> None:
        """Observe one answered etcd call (the store's ``on_latency`` hook)."""
        self.child(self.etcd_seconds, op).observe(seconds)

    def watch_pools(self, stats: Callable[[], list[PoolStats]]) -> None:
        """Export the per-pool and per-node gauges, computed at scrape time by ``stats()``; nothing is exported
        while etcd cannot be read."""
        self.registry.register(_PoolCollector(stats))

    def serve(self, address: str) -> object:
        """Serve ``/metrics`` on ``host:port`` (port 0 picks one); returns the server (``server_port`` attr)."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
        return server


class _PoolCollector(Collector):
    def __init__(self, stats: Callable[[], list[PoolStats]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {
            "size": GaugeMetricFamily("ipamd_pool_size_addresses", "Usable addresses of the pool's range",
                                      labels=["pool"]),
            "free": GaugeMetricFamily("ipamd_pool_free_addresses", "Usable addresses not allocated, per pool",
                                      labels=["pool"]),
            "allocated": GaugeMetricFamily("ipamd_pool_allocated_addresses", "Allocated addresses, per pool",
                                           labels=["pool"]),
            "blocks": GaugeMetricFamily("ipamd_pool_blocks", "Blocks claimed by any node, per pool", labels=["pool"]),
            "own": GaugeMetricFamily("ipamd_node_blocks", "Blocks this node owns, per pool", labels=["pool"]),
        }
        try:
            rows = self.stats()
        except Exception:  # noqa: BLE001 - a scrape must not fail because etcd is away
            rows = []
        for row in rows:
            families["size"].add_metric([row.pool], row.usable)
            families["free"].add_metric([row.pool], max(row.usable - row.allocated, 0))
            families["allocated"].add_metric([row.pool], row.allocated)
            families["blocks"].add_metric([row.pool], row.blocks)
            families["own"].add_metric([row.pool], row.own_blocks)
        yield from families.values()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
