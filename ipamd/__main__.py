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
from .domain.model import dumps, node_key
from .store.base import Put

if TYPE_CHECKING:
    from .service import IpamService

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
    from .grpcapi import GrpcServer
    from .metrics import Metrics
    from .service import IpamService
    from .store.etcd import EtcdStore

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
    try:
        store = EtcdStore(endpoints, cfg.etcd_prefix, ca_cert=cfg.etcd_ca_cert or None,
                          cert=cfg.etcd_cert or None, key=cfg.etcd_key or None, user=cfg.etcd_user or None,
                          password=cfg.etcd_password or None, timeout=cfg.etcd_timeout)
    except IpamError as exc:
        log.error("cannot connect to etcd at %s: %s", endpoints, exc)
        if embedded is not None:
            embedded.stop()
        return 1
    metrics = Metrics()
    service = IpamService(store, cfg.node_name, request_timeout=cfg.request_timeout, etcd_timeout=cfg.etcd_timeout,
                          gc_timeout=cfg.gc_timeout, handle_limit=cfg.handle_cache_size, metrics=metrics,
                          failpoints=Failpoints.from_env(), reconcile_interval=cfg.reconcile_interval,
                          reconcile_grace=cfg.reconcile_grace)
    metrics.watch_pools(service.pool_usage)
    os.makedirs(os.path.dirname(cfg.grpc_socket) or ".", exist_ok=True)
    if os.path.exists(cfg.grpc_socket):
        os.unlink(cfg.grpc_socket)
    cni = CniServer(service, cfg.cni_socket)
    grpc_server = GrpcServer(service, cfg.grpc_socket)
    metrics_server = metrics.serve(cfg.metrics_address) if cfg.metrics_address else None
    cni.start()
    grpc_server.start()
    log.info("ipamd node %s: CNI socket %s, gRPC socket %s, etcd %s prefix %s%s", cfg.node_name, cfg.cni_socket,
             cfg.grpc_socket, endpoints, cfg.etcd_prefix,
             ", metrics on %s" % cfg.metrics_address if cfg.metrics_address else "")

    lease = _NodeLease(service, cfg)
    serving = [False]

    def sync_round() -> float:
        """Until the first sync: sync, wait for the node record, report ready. After it: readiness follows etcd
        (health NOT_SERVING and ipamd_ready 0 while etcd cannot be read; requests are still tried)."""
        service.failpoints.hit("sync.read")
        if not service.ready:
            service.sync()
            if not lease.registered.wait(0.5):  # the node record is written before the daemon reports ready
                return 0.0
            service.set_ready()
            grpc_server.set_serving(True)
            serving[0] = True
            log.info("first sync with etcd done; ready")
            return 2.0
        try:
            store.read(node_key(cfg.node_name), None, cfg.etcd_timeout)
        except IpamError:
            if serving[0]:
                log.warning("etcd unreachable: reporting not ready")
                serving[0] = False
                grpc_server.set_serving(False)
                metrics.ready.set(0)
            raise
        if not serving[0]:
            log.info("etcd reachable again: ready")
            serving[0] = True
            grpc_server.set_serving(True)
            metrics.ready.set(1)
        return 2.0

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

    loops = [
        threading.Thread(target=supervise, name="sync", daemon=True,
                         args=("sync", sync_round, stop, metrics.loop_errors.labels("sync").inc, 0.1, 5.0)),
        threading.Thread(target=supervise, name="watch", daemon=True,
                         args=("watch", watch_round, stop, metrics.loop_errors.labels("watch").inc, 0.1, 5.0)),
        threading.Thread(target=supervise, name="reconcile", daemon=True,
                         args=("reconcile", reconcile_round, stop, metrics.loop_errors.labels("reconcile").inc, 1.0,
                               60.0)),
        threading.Thread(target=supervise, name="lease", daemon=True,
                         args=("node lease", lease.round, stop, metrics.loop_errors.labels("lease").inc, 0.2,
                               max(0.5, min(5.0, cfg.node_lease_ttl / 3)))),
    ]
    kube = None
    if kube_api is not None:  # Kubernetes mode (ipamd/kube.py): node and pod views, podCIDR blocks
        from .kube import KubeMode

        kube = KubeMode(kube_api, cfg.node_name, store, service.cache, cfg.kube_pod_cidr_blocks, cfg.etcd_timeout)
        service.reconciler.checks.append(kube.owner_check)  # after the netns check: a dead sandbox is gone
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
    lease.revoke()
    try:
        os.unlink(cfg.grpc_socket)
    except FileNotFoundError:
        pass
    if metrics_server is not None:
        metrics_server.shutdown()  # type: ignore[attr-defined]
    store.close()
    if embedded is not None:
        embedded.stop()
    log.info("stopped")
    return 0


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
    logs.setup(cfg.log_level)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
