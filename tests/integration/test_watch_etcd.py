"""The watch-fed view against real etcd: a service in this process (so its cache can be read) watches through a
fault proxy, while a real daemon process (node B) allocates and releases in the same pool. After each fault — etcd
killed and restarted, connections cut, history compacted while the watch was away — the cache converges to what
etcd holds (tests/unit/test_watch.py has the same scenarios on the in-memory store)."""

from __future__ import annotations

import threading
import time

from harness import EtcdCluster, cni_config, run_cni
from views import assert_view_matches

from ipamd.concurrency import supervise
from ipamd.domain.cni import Attachment
from ipamd.domain.netconf import parse_netconf
from ipamd.service import IpamService
from ipamd.store.etcd import EtcdStore
from ipamd.testing.faultproxy import FaultProxy


def converge(store: EtcdStore, svc: IpamService, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_view_matches(store, svc)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_view_converges_after_every_fault(own_etcd: EtcdCluster, prefix: str, daemons) -> None:  # type: ignore[no-untyped-def]
    member = own_etcd.members[0]
    proxy = FaultProxy(member.client_port).start()
    store = EtcdStore(proxy.endpoint, prefix, timeout=2.0)
    reader = EtcdStore(own_etcd.endpoints, prefix)
    svc = IpamService(store, "A", request_timeout=5.0, etcd_timeout=1.0)
    stop = threading.Event()
    b = daemons("B", endpoints_=own_etcd.endpoints)
    conf = cni_config("wnet", subnet="10.66.0.0/24", blockSize=28)
    nc = parse_netconf(conf, "wnet")
    try:
        svc.sync()
        svc.set_ready()
        threading.Thread(target=supervise, args=("watch", svc.watcher.round, stop, None, 0.05, 0.5),
                         daemon=True).start()
        for i in range(5):
            svc.add(Attachment("wnet", "a%d" % i, "eth0"), nc)
        for i in range(20):
            assert run_cni("ADD", conf, socket=b.cni_socket, container_id="b%d" % i).rc == 0
        converge(reader, svc)

        # another actor releases one of ours (through node B's daemon)
        assert run_cni("DEL", conf, socket=b.cni_socket, container_id="a2").rc == 0
        converge(reader, svc)

        # etcd killed and restarted under the watch
        member.kill()
        time.sleep(0.5)
        member.start(new=False)
        own_etcd.wait_healthy()
        assert run_cni("DEL", conf, socket=b.cni_socket, container_id="b4").rc == 0
        converge(reader, svc)

        # connections cut while B works
        proxy.mode = "reject"
        proxy.cut()
        for i in range(20, 30):
            assert run_cni("ADD", conf, socket=b.cni_socket, container_id="b%d" % i).rc == 0
        proxy.mode = "pass"
        converge(reader, svc)

        # history compacted while the watch was away: a full re-read, then the view is right again
        compactions = svc.watcher.compactions
        proxy.mode = "blackhole"
        proxy.cut()
        assert run_cni("DEL", conf, socket=b.cni_socket, container_id="a3").rc == 0  # one of A's addresses
        for i in range(30, 50):
            assert run_cni("ADD", conf, socket=b.cni_socket, container_id="b%d" % i).rc == 0  # B claims more
        own_etcd.etcdctl("compact", str(reader.read("", None, 5)[1]))
        proxy.mode = "pass"
        proxy.cut()
        deadline = time.monotonic() + 30
        while svc.watcher.compactions == compactions:
            assert time.monotonic() < deadline, "the watch never met the compaction"
            time.sleep(0.1)
        converge(reader, svc)
        # the lowest free address of A's block is a2's (released through B before): found without a failed compare
        conflicts = svc.metrics.cas_conflicts.labels("ADD")._value.get()
        assert svc.add(Attachment("wnet", "after", "eth0"), nc)[0].cidr == "10.66.0.4/24"
        assert svc.metrics.cas_conflicts.labels("ADD")._value.get() == conflicts
        converge(reader, svc)
    finally:
        stop.set()
        svc.watcher.close()
        for cid in ("a0", "a1", "a4", "after"):
            try:
                svc.delete(Attachment("wnet", cid, "eth0"))
            except Exception:
                pass
        store.close()
        reader.close()
        proxy.stop()
