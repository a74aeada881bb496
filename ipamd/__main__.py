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
from typing import Sequence

from . import config as config_mod
from .domain.model import dumps, node_key
from .store.base import Put, StoreUnavailable

log = logging.getLogger("ipamd")


def _keep_node_alive(service, cfg, stop: threading.Event,  # type: ignore[no-untyped-def]
                     registered: threading.Event) -> None:
    """Keep ``nodes/<node>`` on a lease while running; re-create it after an etcd outage; revoke on stop.
    Sets ``registered`` once the record is first written (the daemon is not ready before that)."""
    lease = 0
    while not stop.is_set():
        try:
            if lease == 0 or service.store.keepalive(lease, cfg.etcd_timeout) <= 0:
                lease = service.store.grant_lease(cfg.node_lease_ttl, cfg.etcd_timeout)
                service.store.txn([], [Put(node_key(cfg.node_name), dumps({"node": cfg.node_name,
                                                                             "pid": os.getpid()}), lease)],
                                  [], cfg.etcd_timeout)
            registered.set()
        except StoreUnavailable as exc:
            log.debug("node lease: %s", exc)
            lease = 0
        stop.wait(0.5 if lease == 0 else max(1.0, cfg.node_lease_ttl / 3))
    if lease:
        try:
            service.store.revoke(lease, cfg.etcd_timeout)
        except StoreUnavailable:
            pass


def run(cfg: config_mod.DaemonConfig) -> int:
    from .cniserver import CniServer
    from .embedded import EmbeddedEtcd
    from .failpoints import Failpoints
    from .grpcapi import GrpcServer
    from .metrics import Metrics
    from .service import IpamService
    from .store.etcd import EtcdStore

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
    store = EtcdStore(endpoints, cfg.etcd_prefix, ca_cert=cfg.etcd_ca_cert or None, cert=cfg.etcd_cert or None,
                      key=cfg.etcd_key or None, user=cfg.etcd_user or None, password=cfg.etcd_password or None,
                      timeout=cfg.etcd_timeout)
    metrics = Metrics()
    service = IpamService(store, cfg.node_name, request_timeout=cfg.request_timeout, metrics=metrics,
                          failpoints=Failpoints.from_env(), etcd_timeout=cfg.etcd_timeout)
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

    registered = threading.Event()

    def first_sync() -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                service.sync()
                while not registered.wait(0.1):  # the node record is written before the daemon reports ready
                    if stop.is_set():
                        return
                service.set_ready()
                grpc_server.set_serving(True)
                log.info("first sync with etcd done; ready")
                watch_etcd()
                return
            except StoreUnavailable as exc:
                log.warning("first sync with etcd failed (%s); retrying in %.1f s", exc, delay)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def watch_etcd() -> None:
        """Readiness follows etcd after the first sync: health NOT_SERVING and ipamd_ready 0 while etcd cannot be
        read (requests are still tried, and answer 11 at their deadline)."""
        serving = True
        while not stop.wait(2.0):
            try:
                service.store.read(node_key(cfg.node_name), None, cfg.etcd_timeout)
                ok = True
            except StoreUnavailable as exc:
                ok = False
                if serving:
                    log.warning("etcd unreachable (%s): reporting not ready", exc)
            if ok != serving:
                serving = ok
                grpc_server.set_serving(ok)
                metrics.ready.set(1 if ok else 0)
                if ok:
                    log.info("etcd reachable again: ready")

    threading.Thread(target=first_sync, name="sync", daemon=True).start()
    lease_thread = threading.Thread(target=_keep_node_alive, args=(service, cfg, stop, registered), name="lease",
                                    daemon=True)
    lease_thread.start()
    stop.wait()
    log.info("stopping: finishing requests in flight")
    grpc_server.set_serving(False)
    cni.stop()
    grpc_server.stop()
    lease_thread.join(timeout=cfg.etcd_timeout + 1)
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
    cfg = config_mod.load(argv)
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
