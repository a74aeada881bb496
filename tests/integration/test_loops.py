"""Field case B53: no background loop may die while the daemon runs. A real daemon on its own etcd member; a
failpoint pauses one loop at one step (``sync.read``, ``lease.keepalive``, ``lease.grant``, ``lease.put``), etcd
is SIGKILLed during the pause, so that step meets a dead etcd, then etcd comes back on the same ports and data.
Every loop must resume by itself: the node record is back on a lease, the daemon reports SERVING, an ADD works,
and the loop's error was counted (``ipamd_background_errors_total``). The same with a failpoint that raises an
unexpected (non-etcd) error inside the loop.
"""

from __future__ import annotations

import time

import pytest
from harness import Daemon, EtcdCluster, cni_config, metric_sum, run_cni

from ipamd.embedded import free_port
from ipamd.store.etcd import EtcdStore

STEPS = ["sync.read", "lease.keepalive", "lease.grant", "lease.put"]




def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


def node_record_on_lease(endpoints: str, prefix: str, node: str) -> bool:
    store = EtcdStore(endpoints, prefix)
    try:
        kvs, _ = store.read("nodes/" + node, None, 2.0)
        return bool(kvs)
    except Exception:
        return False
    finally:
        store.close()


@pytest.mark.parametrize("step", STEPS)
def test_loop_survives_etcd_killed_at_each_step(own_etcd: EtcdCluster, prefix: str, workdir: str,
                                                step: str) -> None:
    port = free_port()
    # lease.keepalive only runs once a lease exists: a 2 s TTL makes the loop come round every second or so
    fp = "%s=pause:2:%d" % (step, 2 if step == "lease.keepalive" else 1)
    d = Daemon(own_etcd.endpoints, prefix, "A", workdir, env={"IPAMD_FAILPOINTS": fp},
               extra_args=["--metrics-address", "127.0.0.1:%d" % port, "--node-lease-ttl", "2",
                           "--etcd-timeout", "0.5", "--request-timeout", "3"])
    d.start(wait_ready=False)
    member = own_etcd.members[0]
    try:
        hits = 2 if step == "lease.keepalive" else 1
        wait_for(lambda: d.log().count("failpoint %s: pause" % step) >= hits, 30, "the %s pause" % step)
        member.kill()
        time.sleep(2.5)  # the paused step now runs against a dead etcd, fails, backs off, retries
        member.start(new=False)
        own_etcd.wait_healthy()
        d.wait_ready(60)
        wait_for(lambda: node_record_on_lease(own_etcd.endpoints, prefix, "A"), 30, "the node record")
        out = run_cni("ADD", cni_config("loops", subnet="10.77.0.0/24"), socket=d.cni_socket)
        assert out.rc == 0 and out.ips == ["10.77.0.2/24"], out
        assert metric_sum(port, "ipamd_background_errors_total") > 0
        assert d.proc is not None and d.proc.poll() is None
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("step", ["sync.read", "lease.put"])
def test_loop_survives_an_unexpected_error(own_etcd: EtcdCluster, prefix: str, workdir: str, step: str) -> None:
    """A non-etcd exception (a bug) in a loop is logged with its traceback, counted, and retried."""
    port = free_port()
    d = Daemon(own_etcd.endpoints, prefix, "A", workdir, env={"IPAMD_FAILPOINTS": "%s=error:3" % step},
               extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    d.start(wait_ready=False)
    try:
        d.wait_ready(60)
        assert metric_sum(port, "ipamd_background_errors_total") >= 3
        assert "unexpected error" in d.log() and "Traceback" in d.log()
        out = run_cni("ADD", cni_config("loops", subnet="10.77.0.0/24"), socket=d.cni_socket)
        assert out.rc == 0, out
    finally:
        assert d.stop() == 0
