"""The history check (ipamd.testing.history) over a short run with faults (issue 8 "history checker"): three daemons on
a three-member etcd, clients calling ADD and DEL like runtimes (retrying what answers 11), while the etcd leader is
killed and restarted, one daemon is SIGKILLed and restarted, one daemon's etcd answers slowly for a while, and a
reconciler pass runs on every node. No address is ever held by two live attachments at once, every acknowledged
allocation is in every snapshot taken while it is held, everything is released at the end, and the invariants
hold (the ``daemons`` fixture). The longer version with more daemons is bench/soak.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from harness import EtcdCluster, cni_config

from ipamd.domain.model import HandleRecord
from ipamd.store.etcd import EtcdStore
from ipamd.testing.faultproxy import FaultProxy
from ipamd.testing.history import History, Workload, snapshot_of


def test_history_through_faults(etcd_cluster: EtcdCluster, daemons) -> None:  # type: ignore[no-untyped-def]
    proxy = FaultProxy(etcd_cluster.members[0].client_port).start()
    others = ",".join(m.endpoint for m in etcd_cluster.members[1:])
    nodes = {"A": daemons("A"), "B": daemons("B"), "C": daemons("C", endpoints_=proxy.endpoint + "," + others)}
    conf = cni_config("hist", subnet="10.70.0.0/22", blockSize=28)
    history = History()
    workload = Workload({n: d.cni_socket for n, d in nodes.items()}, json.dumps(conf).encode(), history,
                        clients_per_node=2, live=4)
    reader = EtcdStore(etcd_cluster.endpoints, nodes["A"].prefix)
    stop = threading.Event()

    def read_handles() -> list[tuple[str, tuple[str, ...]]]:
        kvs, _ = reader.read("handles/hist/", "handles/hist0", 5)
        recs = [HandleRecord.decode(kv.value) for kv in kvs]
        return [(r.handle, tuple(a.cidr for a in r.allocations)) for r in recs]

    def snapshots() -> None:
        while not stop.wait(0.5):
            try:
                history.snapshot(snapshot_of(read_handles))
            except Exception:
                pass

    snapper = threading.Thread(target=snapshots, daemon=True)
    try:
        workload.start()
        snapper.start()
        time.sleep(2)
        leader = etcd_cluster.leader()
        leader.kill()
        time.sleep(2)
        leader.start(new=False)
        etcd_cluster.wait_healthy()
        time.sleep(1)
        nodes["B"].kill()
        time.sleep(1)
        nodes["B"].start()
        time.sleep(1)
        proxy.delay = 0.3
        time.sleep(3)
        proxy.delay = 0.0
        for d in nodes.values():
            gc = subprocess.run([sys.executable, "-m", "ipamd.ctl", "--socket", d.grpc_socket, "gc"],
                                capture_output=True, text=True, timeout=60)
            assert gc.returncode == 0 and "0 released" in gc.stderr, gc  # nothing here has a visible netns
        time.sleep(1)
        workload.finish()
        stop.set()
        snapper.join(5)
        history.snapshot(snapshot_of(read_handles))
        summary = history.summary()
        problems = history.check()
        assert problems == [], problems[:10]
        assert summary["adds_ok"] >= 50 and summary["snapshots"] >= 10, summary
        assert history.snapshots[-1].handles == {}, "everything was deleted at the end"
    finally:
        stop.set()
        workload.stop.set()
        reader.close()
        proxy.stop()
