"""Field case B09 (docs/field-cases.md "IP reuse policy"): a released address is not handed out again until its
release cooldown has passed, measured by etcd (the cooling record's lease), not by the daemon's clock or memory.

Real etcd, real ipamd processes killed with SIGKILL and restarted, real shim processes. ``faketime`` is not
installed (and shifting ``time.time`` inside Python hangs grpc's server start), so the restarted daemon's clock is
not moved: instead the first test shows that the cooldown survives a SIGKILL and restart (nothing of it lives in
the daemon), and the second that it ends by the etcd lease while no daemon runs at all (nothing of it needs a
daemon's clock). No code on the cooldown path reads the wall clock (ipamd/cooling.py uses a monotonic clock only
to rotate its leases). The ``daemons`` fixture checks the invariants (``ipamctl check``'s definition, invariant 6
included) after each test.
"""

from __future__ import annotations

import time
import urllib.request

from harness import cni_config, free_port, run_cni, wait_for
from prometheus_client.parser import text_string_to_metric_families

from ipamd.cooling import window
from ipamd.store.etcd import EtcdStore


def cooling_keys(endpoints: str, prefix: str) -> list[str]:
    store = EtcdStore(endpoints, prefix)
    try:
        return [kv.key for kv in store.read("cooling/", "cooling0", 5)[0]]
    finally:
        store.close()


def bypass_total(port: int) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "ipamd_cooldown_bypass":
            return sum(s.value for s in fam.samples if s.name == "ipamd_cooldown_bypass_total")
    raise AssertionError("ipamd_cooldown_bypass_total is not exported")


def test_b09_cooldown_survives_sigkill_and_restart(daemons):
    """B09 repro: 10.45.0.0/29, releaseCooldownSeconds 30. ADD c1 -> .2; DEL c1; ADD c2 -> .3; SIGKILL ipamd A and
    restart it; ADD c3 -> .4 (the cooldown survived: it is etcd's); c4 -> .5, c5 -> .6; c6 -> .2 (only .2 is left,
    still cooling: handed out, and ipamd_cooldown_bypass_total counts it); c7 -> 100."""
    conf = cni_config("b09", subnet="10.45.0.0/29", releaseCooldownSeconds=30)

    def add(d, cid):
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id=cid)
        assert out.rc == 0, (cid, out)
        return out.ips

    a = daemons("A")
    assert add(a, "c1") == ["10.45.0.2/29"]
    assert run_cni("DEL", conf, socket=a.cni_socket, container_id="c1").rc == 0
    assert cooling_keys(a.endpoints, a.prefix) == ["cooling/b09/v4/0a2d0002"]
    assert add(a, "c2") == ["10.45.0.3/29"]
    a.kill()  # SIGKILL: nothing is cleaned up, nothing in memory survives

    port = free_port()
    b = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    assert add(b, "c3") == ["10.45.0.4/29"]
    assert add(b, "c4") == ["10.45.0.5/29"]
    assert add(b, "c5") == ["10.45.0.6/29"]
    assert bypass_total(port) == 0
    assert add(b, "c6") == ["10.45.0.2/29"]
    assert bypass_total(port) == 1
    assert cooling_keys(b.endpoints, b.prefix) == []  # the ADD deleted the record it overrode
    out = run_cni("ADD", conf, socket=b.cni_socket, container_id="c7")
    assert out.rc != 0 and out.code == 100, out


def test_b09_short_cooldown_ends_by_the_etcd_lease_with_no_daemon_running(daemons):
    """releaseCooldownSeconds 3: after DEL the daemon is SIGKILLed; the cooling record still disappears from etcd,
    not before 3 s and within the lease's TTL (3 s + a 1 s window) plus etcd's expiry slack, with no daemon running:
    the lease ends it. The restarted daemon then gives .2 again, without a bypass."""
    conf = cni_config("b09s", subnet="10.46.0.0/29", releaseCooldownSeconds=3)
    a = daemons("A")
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="c1").ips == ["10.46.0.2/29"]
    assert run_cni("DEL", conf, socket=a.cni_socket, container_id="c1").rc == 0
    released = time.monotonic()
    a.kill()
    assert cooling_keys(a.endpoints, a.prefix) == ["cooling/b09s/v4/0a2e0002"]
    wait_for(lambda: not cooling_keys(a.endpoints, a.prefix), "the cooling record's lease to expire",
             timeout=3 + window(3) + 5)
    assert time.monotonic() - released >= 3 - 0.2
    port = free_port()
    b = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    assert run_cni("ADD", conf, socket=b.cni_socket, container_id="c2").ips == ["10.46.0.2/29"]
    assert bypass_total(port) == 0
