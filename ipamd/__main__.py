"""``ipamd``: the per-node daemon (wiring only), and ``ipamd install-cni DIR``.

Start-up: config -> (embedded etcd) -> store -> service -> CNI socket, gRPC socket, /metrics -> first sync with
etcd in the background (not ready, ADD answered with code 11, health NOT_SERVING until it succeeds) -> node
liveness lease. SIGTERM/SIGINT: stop accepting, finish requests in flight, close and remove both sockets,
revoke the lease, stop an embedded etcd, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import config as config_mod
from . import logs
from .domain.errors import IpamError
from .domain.model import blocks_prefix, dumps, node_key
from .health import DaemonStatus, PoolStatus, Readiness
from .metrics import Metrics, PoolStats, package_version
from .store.base import Compare, Put, StoreRefused, prefix_end
from .store.etcd import ALARMS, version_problem

if TYPE_CHECKING:
    from .service import IpamService
    from .store.etcd import EtcdStore

log = logging.getLogger("ipamd")


class _NodeLease:
    """Keeps ``nodes/<node>`` on a lease while the daemon runs (one round per call of :meth:`round`), re-creates it
    after an etcd outage, revokes it on stop. ``registered`` is set once the record is first written (the daemon
    is not ready before that)."""

    def __init__(self, service: IpamService, cfg: config_mod.DaemonConfig) -> None:
        self.service, self.cfg = service, cfg
        self.lease = 0
        self.written = False
        self.registered = threading.Event()

    def round(self) -> float:
        """Keep the lease alive; grant a new one when it expired; (re)write the record when it is not known to be
        there. Each step can fail on its own (failpoints ``lease.keepalive``, ``lease.grant``, ``lease.put``); the
        next round picks up where it failed."""
        store, cfg, fp = self.service.store, self.cfg, self.service.failpoints
        fp.hit("lease.keepalive")
        if self.lease and store.keepalive(self.lease, cfg.etcd_timeout) <= 0:
            self.lease, self.written = 0, False
        if not self.lease:
            fp.hit("lease.grant")
            self.lease, self.written = store.grant_lease(cfg.node_lease_ttl, cfg.etcd_timeout), False
        if not self.written:
            fp.hit("lease.put")
            store.txn([], [Put(node_key(cfg.node_name), dumps({"node": cfg.node_name, "pid": os.getpid()}),
                               self.lease)], [], cfg.etcd_timeout)
            self.written = True
        self.registered.set()
        return max(1.0, cfg.node_lease_ttl / 3)

    def revoke(self) -> None:
        if self.lease:
            try:
                self.service.store.revoke(self.lease, self.cfg.etcd_timeout)
            except IpamError as exc:
                log.info("node lease not revoked (%s); it expires by itself", exc)


def run(cfg: config_mod.DaemonConfig) -> int:
    from .cniserver import CniServer
    from .concurrency import supervise
    from .embedded import EmbeddedEtcd
    from .failpoints import Failpoints
    from .grpcapi import GrpcServer, TcpListener
    from .health import reason_of
    from .metrics import Metrics
    from .service import IpamService
    from .sockets import UMASK, SocketError, claim
    from .store.etcd import EtcdStore

    # nothing the daemon creates is ever readable or writable by others unless it says so (B46)
    os.umask(UMASK)
    kube_api = None
    if cfg.kubernetes:  # the API configuration first: a bad one stops the daemon before it serves (exit 2)
        try:
            from .kube import KubeApi, KubeConfigError
        except ImportError as exc:
            log.error("--kubernetes needs the Kubernetes client (pip install 'ipamd[kubernetes]'): %s", exc)
            return 2
        try:
            kube_api = KubeApi.connect(cfg.kubeconfig, cfg.kube_timeout)
        except KubeConfigError as exc:
            log.error("%s", exc)
            return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    gid = config_mod.resolve_group(cfg.socket_group) if cfg.socket_group else None
    claims = []
    try:
        for path in (cfg.cni_socket, cfg.grpc_socket):
            claims.append(claim(path, gid))
    except SocketError as exc:
        log.error("%s", exc.strerror or exc)
        for c in claims:
            c.close()
        return 1
    cni_claim, grpc_claim = claims
    embedded = None
    endpoints = cfg.etcd_endpoints
    if cfg.embedded_etcd:
        try:
            embedded = EmbeddedEtcd(cfg.embedded_etcd).start()
        except (FileNotFoundError, RuntimeError) as exc:
            log.error("--embedded-etcd: %s", exc)
            return 2
        endpoints = embedded.endpoint
        log.info("embedded etcd at %s, data in %s", endpoints, cfg.embedded_etcd)
    metrics = Metrics()
    from .domain.poolspec import parse_labels

    try:
        store = EtcdStore(endpoints, cfg.etcd_prefix, ca_cert=cfg.etcd_ca_cert or None,
                          cert=cfg.etcd_cert or None, key=cfg.etcd_key or None, user=cfg.etcd_user or None,
                          password=cfg.etcd_password or None, password_file=cfg.etcd_password_file or None,
                          timeout=cfg.etcd_timeout)
    except (OSError, ValueError) as exc:
        log.error("cannot set up the etcd client for %s: %s", endpoints, exc)
        if embedded is not None:
            embedded.stop()
        return 1
    store.on_error = metrics.etcd_error
    store.on_latency = metrics.etcd_latency
    node_check = None
    if cfg.node_check:  # pools that overlap the node's own networks are refused (docs/namespace-checks.md)
        from . import netns
        from .nodecheck import NodeCheck

        look_timeout = min(2.0, cfg.request_timeout / 4)
        node_check = NodeCheck(cfg.node_name, lambda: netns.observe_node(cfg.node_netns, timeout=look_timeout),
                               metrics=metrics)
    service = IpamService(store, cfg.node_name, request_timeout=cfg.request_timeout, etcd_timeout=cfg.etcd_timeout,
                          gc_timeout=cfg.gc_timeout, handle_limit=cfg.handle_cache_size, metrics=metrics,
                          failpoints=Failpoints.from_env(), reconcile_interval=cfg.reconcile_interval,
                          reconcile_grace=cfg.reconcile_grace, node_check=node_check,
                          node_labels=parse_labels(cfg.node_labels, "node_labels"))
    metrics.watch_pools(lambda: pool_stats(service))
    tcp = TcpListener(cfg.grpc_address, cfg.grpc_tls_cert, cfg.grpc_tls_key, cfg.grpc_client_ca) \
        if cfg.grpc_address else None
    try:
        cni = CniServer(service, cni_claim)
        try:
            # daemon_status is defined below: it needs the readiness, which needs this server
            grpc_server = GrpcServer(service, grpc_claim, tcp=tcp, status=lambda: daemon_status())  # noqa: PLW0108
        except BaseException:
            cni.stop()
            raise
    except OSError as exc:
        log.error("%s", exc.strerror if isinstance(exc, SocketError) else exc)
        for c in claims:
            c.release()
        store.close()
        if embedded is not None:
            embedded.stop()
        return 1
    metrics_server = metrics.serve(cfg.metrics_address) if cfg.metrics_address else None
    cni.start()
    grpc_server.start()
    log.info("ipamd node %s: CNI socket %s, gRPC socket %s%s, etcd %s prefix %s%s", cfg.node_name, cfg.cni_socket,
             cfg.grpc_socket, ", gRPC TLS on %s (port %d)" % (cfg.grpc_address, grpc_server.tcp_port) if tcp else "",
             endpoints, cfg.etcd_prefix,
             ", metrics on %s (port %d)" % (cfg.metrics_address, getattr(metrics_server, "server_port", 0))
             if cfg.metrics_address else "")

    def readiness_changed(ready: bool, detail: str) -> None:
        grpc_server.set_serving(ready)
        service.unhealthy = "" if ready else detail

    readiness = Readiness(metrics, readiness_changed)
    lease = _NodeLease(service, cfg)

    def daemon_status() -> DaemonStatus:
        return collect_status(service, store, readiness, cfg.etcd_timeout)

    def sync_round() -> float:
        """Until the first sync: sync, wait for the node record, check etcd's versions, report ready. After it:
        readiness follows etcd (docs/operations.md "Health"): the node record readable (quorum, permission) and
        no alarm; requests are still tried while not ready."""
        try:
            service.failpoints.hit("sync.read")
            if not service.ready:
                service.sync()
                if not lease.registered.wait(0.5):  # the node record is written before the daemon reports ready
                    return 0.0
                check_etcd_versions(store, metrics, cfg.etcd_timeout)
                service.set_ready()
                log.info("first sync with etcd done")
                if service.node_check is not None:  # warn now about pools whose ADDs will be refused
                    records = (service.cache.pool_record(p)[0] for p in service.cache.pool_ids())
                    service.node_check.check_known((r.network, r.range) for r in records if r is not None)
            probe_etcd(store, metrics, cfg)
        except IpamError as exc:
            readiness.set(reason_of(exc), exc.msg)
            raise
        readiness.set(None)
        return 2.0

    def lease_round() -> float:
        try:
            return lease.round()
        except IpamError as exc:
            if not service.ready and reason_of(exc) != "etcd_unavailable":
                readiness.set(reason_of(exc), exc.msg)  # e.g. no permission to write the node record (B44)
            raise

    def watch_round() -> float:
        """Keep the view fresh once the first sync is done (ipamd.watcher)."""
        if not service.ready:
            return 0.5
        return service.watcher.round()

    def reconcile_round() -> float:
        """Release this node's attachments whose owner is gone (ipamd.reconciler), once ready."""
        if not service.ready:
            return 1.0
        return service.reconciler.round()

    from .blockrelease import BlockReleaser

    # podCIDR blocks (Kubernetes mode) are the node's by the API's say: never released (docs/decisions.md)
    release_after = 0.0 if cfg.kubernetes and cfg.kube_pod_cidr_blocks else cfg.empty_block_release_seconds
    releaser = BlockReleaser(store, service.cache, cfg.node_name, after=release_after, etcd_timeout=cfg.etcd_timeout,
                             metrics=metrics, failpoints=service.failpoints)

    def block_release_round() -> float:
        """Give back this node's blocks that stayed empty (ipamd.blockrelease), once ready."""
        if not service.ready:
            return 1.0
        return releaser.round()

    loops = [
        threading.Thread(target=supervise, name="sync", daemon=True,
                         args=("sync", sync_round, stop, metrics.loop_errors.labels("sync").inc, 0.1, 5.0)),
        threading.Thread(target=supervise, name="watch", daemon=True,
                         args=("watch", watch_round, stop, metrics.loop_errors.labels("watch").inc, 0.1, 5.0)),
        threading.Thread(target=supervise, name="reconcile", daemon=True,
                         args=("reconcile", reconcile_round, stop, metrics.loop_errors.labels("reconcile").inc, 1.0,
                               60.0)),
        threading.Thread(target=supervise, name="blockrelease", daemon=True,
                         args=("block release", block_release_round, stop,
                               metrics.loop_errors.labels("blockrelease").inc, 1.0, 60.0)),
        threading.Thread(target=supervise, name="lease", daemon=True,
                         args=("node lease", lease_round, stop, metrics.loop_errors.labels("lease").inc, 0.2,
                               max(0.5, min(5.0, cfg.node_lease_ttl / 3)))),
    ]
    if cfg.health_interval > 0:  # opt-in: continuous health of this node's attachments (docs/namespace-checks.md)
        from .attachment_health import HealthMonitor

        monitor = HealthMonitor(service, interval=cfg.health_interval, max_per_round=cfg.health_max_per_round,
                                stop=stop)
        loops.append(threading.Thread(target=supervise, name="health", daemon=True,
                                      args=("health", monitor.round, stop, metrics.loop_errors.labels("health").inc,
                                            0.5, max(1.0, cfg.health_interval))))
        log.info("continuous health: every %g s, at most %d attachment(s) per round", cfg.health_interval,
                 cfg.health_max_per_round)
    kube = None
    if kube_api is not None:  # Kubernetes mode (ipamd/kube.py): node and pod views, podCIDR blocks
        from .kube import KubeMode

        kube = KubeMode(kube_api, cfg.node_name, store, service.cache, cfg.kube_pod_cidr_blocks, cfg.etcd_timeout,
                        node_removal_grace=cfg.kube_node_removal_grace, metrics=metrics,
                        failpoints=service.failpoints)
        if kube.remover is not None:
            log.info("automatic node removal: a node deleted from the Kubernetes API is removed %g s after its "
                     "deletion was seen, once its lease nodes/<node> has expired", cfg.kube_node_removal_grace)
        service.reconciler.checks.append(kube.owner_check)  # after the netns check: a dead sandbox is gone
        nodes_view = kube.nodes
        service.node_labels_source = lambda: nodes_view.labels(cfg.node_name)  # named pools' nodeSelector
        service.namespace_labels = kube.namespaces.labels  # namespaceSelector: the Namespace objects' labels
        loops += [threading.Thread(target=supervise, name=name, daemon=True,
                                   args=(name, body, stop, metrics.loop_errors.labels(name).inc, 0.2, 10.0))
                  for name, body in kube.loops()]
    for t in loops:
        t.start()
    stop.wait()
    log.info("stopping: finishing requests in flight")
    if kube is not None:
        kube.close()
    grpc_server.set_serving(False)
    cni.stop()
    grpc_server.stop()
    for t in loops:
        t.join(timeout=cfg.etcd_timeout + 1)
    service.watcher.close()
    from . import netns

    netns.close()  # the namespace helper process (docs/namespace-checks.md)
    lease.revoke()
    if metrics_server is not None:
        metrics_server.shutdown()  # type: ignore[attr-defined]
    store.close()
    if embedded is not None:
        embedded.stop()
    log.info("stopped")
    return 0


def probe_etcd(store: EtcdStore, metrics: Metrics, cfg: config_mod.DaemonConfig) -> None:
    """One readiness probe (docs/operations.md "Health"): a linearizable read of this node's record (etcd has a
    quorum and grants us read permission) and the cluster's alarms; once etcd refused a write for permission, also
    write permission, by a txn whose compare never holds (etcd checks the permission of both branches; nothing is
    written), until it passes. Raises :class:`StoreUnavailable`, or :class:`StoreRefused` for a missing permission
    or a raised alarm (B44, B45); sets ``ipamd_etcd_alarm``."""
    store.read(node_key(cfg.node_name), None, cfg.etcd_timeout)
    if store.write_refused:  # read permission alone is not ready: every ADD would fail (B44, revoked live)
        key = node_key(cfg.node_name)
        store.txn([Compare(key, "mod", "<", 0)], [Put(key, b"")], [], cfg.etcd_timeout)
        store.write_refused = False
    status = store.status(cfg.etcd_timeout)
    for alarm in ALARMS.values():
        metrics.etcd_alarm.labels(alarm).set(1 if alarm in status.alarms else 0)
    if status.alarms:
        raise StoreRefused("etcd alarm %s is raised: etcd refuses writes until an operator frees space and disarms "
                           "it (docs/operations.md \"etcd alarms\")" % ", ".join(status.alarms), "alarm")


def check_etcd_versions(store: EtcdStore, metrics: Metrics, timeout: float) -> None:
    """Ask every configured endpoint for its etcd release; warn (log and ``ipamd_etcd_server_info{known_bad}``)
    for a release with a known data-loss bug (docs/operations.md "etcd versions"). Endpoints that do not answer are
    skipped. Never raises."""
    for url in store.endpoints:
        try:
            version = store.status(timeout, endpoint=url).version
        except IpamError as exc:
            log.info("etcd at %s did not report its version: %s", url, exc.msg)
            continue
        problem = version_problem(version)
        metrics.etcd_server.labels(url, version, "true" if problem else "false").set(1)
        if problem:
            log.warning("etcd at %s runs %s, a release with a known data-loss bug: %s; upgrade etcd "
                        "(docs/operations.md \"etcd versions\")", url, version, problem)
        else:
            log.info("etcd at %s runs %s", url, version)


def collect_status(service: IpamService, store: EtcdStore, readiness: Readiness, timeout: float) -> DaemonStatus:
    """The daemon's status for ``ipamctl status``: readiness, the view's revisions, a fresh Maintenance.Status of the
    etcd member in use (its error when it cannot be asked) and this node's pools (docs/operations.md "Health")."""
    etcd_error, st = "", None
    try:
        st = store.status(timeout)
    except IpamError as exc:
        etcd_error = exc.msg
    pools: list[PoolStatus] = []
    try:
        own: dict[str, list[str]] = {}
        for pool_id, block in service.cache.own_blocks():
            own.setdefault(pool_id, []).append(block.cidr())
        pools = [PoolStatus(p.pool, p.usable, p.allocated, p.blocks, tuple(sorted(own.get(p.pool, ()))))
                 for p in pool_stats(service)]
    except IpamError as exc:
        etcd_error = etcd_error or exc.msg
    return DaemonStatus(
        node=service.node, version=package_version("ipamd"), ready=readiness.ready,
        not_ready_reason=readiness.reason or "",
        not_ready_detail=readiness.detail, sync_revision=service.revision, watch_revision=service.cache.watch_revision,
        etcd_reachable=st is not None, etcd_error=etcd_error, etcd_endpoint=st.endpoint if st else store.endpoint,
        etcd_version=st.version if st else "", etcd_member_id=st.member_id if st else 0,
        etcd_leader=st.leader if st else 0, etcd_revision=st.revision if st else 0,
        etcd_alarms=st.alarms if st else (), pools=tuple(pools))


def pool_stats(service: IpamService) -> list[PoolStats]:
    """Per-pool figures for the scrape: usable and allocated (service.pool_usage: one count-only read per pool),
    blocks claimed by any node (one count-only read per pool) and by this node (the cache)."""
    own: dict[str, int] = {}
    for pool_id, _ in service.cache.own_blocks():
        own[pool_id] = own.get(pool_id, 0) + 1
    out = []
    for pool_id, usable, allocated in service.pool_usage():
        prefix = blocks_prefix(pool_id)
        blocks = service.store.count(prefix, prefix_end(prefix), service.etcd_timeout)
        out.append(PoolStats(pool_id, usable, allocated, blocks, own.get(pool_id, 0)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "install-cni":
        from .install import install_cni  # ipamd/install.py

        return install_cni(argv[1:])
    try:
        cfg = config_mod.load(argv)
    except config_mod.ConfigError as exc:
        print("ipamd: %s" % exc, file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_format)
    if any(a == "--etcd-password" or a.startswith("--etcd-password=") for a in argv):
        log.warning("--etcd-password on the command line is visible to every local user in the process list; use "
                    "--etcd-password-file or IPAMD_ETCD_PASSWORD")
    if cfg.request_timeout >= 30:
        log.warning("--request-timeout %g is not below the CNI plugin's default deadline of 30 s "
                    "(IPAMD_CNI_TIMEOUT): the plugin may give up before the daemon answers", cfg.request_timeout)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
