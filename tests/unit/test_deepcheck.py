"""Deep CHECK, verify and the continuous health loop on the in-memory store, with the namespace observation replaced
by a double (the ``observe`` seam of ipamd.deepcheck.NamespaceInspector): the wiring in seconds. The same behaviour with
real namespaces, the real bridge and ptp plugins and a real daemon is in tests/e2e/test_netns_check.py;
docs/namespace-checks.md describes it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any

import pytest

from ipamd.attachment_health import HealthMonitor
from ipamd.deepcheck import NamespaceInspector
from ipamd.domain.cni import Attachment
from ipamd.domain.errors import CheckNoAllocation, CheckRouteMissing
from ipamd.domain.model import HandleRecord
from ipamd.domain.netcheck import (
    REASONS,
    GatewayProbe,
    Nexthop,
    Observation,
    ObservedInterface,
    ObservedRoute,
    Prefix,
)
from ipamd.domain.netconf import NetConf, parse_netconf
from ipamd.service import IpamService
from ipamd.store.memory import MemoryStore


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


pfx = Prefix.parse


def netconf(**ipam: Any) -> NetConf:
    return parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/24"}]],
                                                 "routes": [{"dst": "0.0.0.0/0"}], **ipam}}, "n1")


class FakeNamespaces:
    """Stands in for ``ipamd.netns.observe``: each netns path maps to an observation built from a small state
    (healthy unless told otherwise); records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.broken: dict[str, str] = {}   # netns path -> "gone" | "no-route" | "no-echo"
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def observe(self, netns_path: str, if_name: str, **kw: Any) -> Observation:
        with self.lock:
            self.calls.append((netns_path, if_name, kw))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0.01)
        with self.lock:
            self.in_flight -= 1
        state = self.broken.get(netns_path, "")
        if state == "gone":
            return Observation(netns_path, if_name, False, probed=bool(kw.get("gateways")), error="does not exist")
        routes = () if state == "no-route" else (
            ObservedRoute(pfx("0.0.0.0/0"), 254, (Nexthop(ip("10.1.2.1"), 2),)),)
        probes = tuple(GatewayProbe(f, g, 1, 0 if state == "no-echo" else 1, None, "REACHABLE")
                       for f, g in kw.get("gateways", ()))
        octet = int(netns_path.rsplit("c", 1)[1]) + 2 if netns_path.rsplit("c", 1)[1].isdigit() else 2
        return Observation(netns_path, if_name, True, ObservedInterface(if_name, 2, True, True, "UP"),
                           (pfx("10.1.2.%d/24" % octet),), routes, probes, bool(kw.get("gateways")))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def ns() -> FakeNamespaces:
    return FakeNamespaces()


def service(store: MemoryStore, ns: FakeNamespaces, node: str = "A") -> IpamService:
    svc = IpamService(store, node, request_timeout=2.0, etcd_timeout=0.5,
                      inspector=NamespaceInspector(ns.observe, timeout=1.0, workers=3))
    svc.sync()
    svc.set_ready()
    return svc


def add(svc: IpamService, cid: str, nc: NetConf | None = None) -> HandleRecord:
    """ADD ``cid`` with netns ``/var/run/netns/<cid>`` (c0 gets .2, c1 .3, ...)."""
    att = Attachment("n1", cid, "eth0")
    svc.add(att, nc or netconf(), netns="/var/run/netns/" + cid)
    rec = svc.get(att)
    assert rec is not None
    return rec


# --- deep CHECK ---------------------------------------------------------------------------------------------------

def test_check_looks_inside_the_namespace_of_cni_netns(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    add(svc, "c0")
    assert svc.check(Attachment("n1", "c0", "eth0"), netconf(), None, "/var/run/netns/c0") == []
    assert [(c[0], c[1]) for c in ns.calls] == [("/var/run/netns/c0", "eth0")]
    assert "gateways" not in ns.calls[0][2]   # CHECK sends no probe


def test_check_mismatch_is_the_documented_error(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    add(svc, "c0")
    ns.broken["/var/run/netns/c0"] = "no-route"
    with pytest.raises(CheckRouteMissing) as info:
        svc.check(Attachment("n1", "c0", "eth0"), netconf(), None, "/var/run/netns/c0")
    assert info.value.cni_code == 113
    assert info.value.msg == "route 0.0.0.0/0 via 10.1.2.1 dev eth0 is missing"


def test_check_with_a_missing_namespace_is_store_only_and_says_so(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    add(svc, "c0")
    ns.broken["/var/run/netns/none"] = "gone"
    notes = svc.check(Attachment("n1", "c0", "eth0"), netconf(), None, "/var/run/netns/none")
    assert notes == ["CNI_NETNS /var/run/netns/none does not exist: CHECK compared the store only"]


def test_check_netns_false_never_looks(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    add(svc, "c0")
    ns.broken["/var/run/netns/c0"] = "no-route"
    assert svc.check(Attachment("n1", "c0", "eth0"), netconf(checkNetns=False), None, "/var/run/netns/c0") == []
    assert ns.calls == []


def test_store_check_comes_first(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    with pytest.raises(CheckNoAllocation):
        svc.check(Attachment("n1", "cX", "eth0"), netconf(), None, "/var/run/netns/cX")
    assert ns.calls == []


def test_add_records_the_results_routes(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    rec = add(svc, "c0", netconf(routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.2.254"}]))
    assert rec.routes == (("0.0.0.0/0", None), ("10.9.0.0/16", "10.1.2.254"))


# --- verify -------------------------------------------------------------------------------------------------------

def test_verify_probes_only_the_attachments_own_gateways(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    rec = add(svc, "c0")
    report = svc.inspector.verify(rec, probe_count=3, probe_timeout=0.5)
    assert report.ok and report.reason == ""
    (_, _, kw), = ns.calls
    assert kw["gateways"] == ((4, ip("10.1.2.1")),)
    assert (kw["probe_count"], kw["probe_timeout"]) == (3, 0.5)


def test_verify_all_keeps_order_and_bounds_concurrency(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    records = [add(svc, "c%d" % i) for i in range(8)]
    ns.broken["/var/run/netns/c5"] = "gone"
    reports = svc.inspector.verify_all(records)
    assert [r.record.container_id for r in reports] == ["c%d" % i for i in range(8)]
    assert [r.ok for r in reports] == [i != 5 for i in range(8)]
    assert reports[5].reason == "netns_missing"
    assert 1 < ns.most_in_flight <= 3


def test_node_attachments_are_this_nodes_only(store: MemoryStore, ns: FakeNamespaces) -> None:
    a, b = service(store, ns, "A"), service(store, ns, "B")
    add(a, "c0")
    add(b, "c1")
    add(a, "c2")
    assert [r.container_id for r in a.node_attachments()] == ["c0", "c2"]
    assert [r.container_id for r in a.node_attachments(container_id="c2")] == ["c2"]
    assert a.node_attachments(network="other") == []


# --- continuous health --------------------------------------------------------------------------------------------

def gauge(svc: IpamService, reason: str) -> float:
    value = svc.metrics.registry.get_sample_value("ipamd_attachments_unhealthy", {"reason": reason})
    assert value is not None
    return value


def checks(svc: IpamService, result: str) -> float:
    return svc.metrics.registry.get_sample_value("ipamd_attachment_checks_total", {"result": result}) or 0.0


def test_health_counts_exports_and_logs_each_transition_once(store: MemoryStore, ns: FakeNamespaces,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    svc = service(store, ns)
    for i in range(3):
        add(svc, "c%d" % i)
    monitor = HealthMonitor(svc, interval=5.0, max_per_round=10)
    assert all(gauge(svc, r) == 0 for r in REASONS)   # every reason exported, at 0
    revision = store.revision
    caplog.set_level(logging.INFO, logger="ipamd.attachment_health")

    assert monitor.round() == 5.0
    assert checks(svc, "ok") == 3 and checks(svc, "unhealthy") == 0
    ns.broken["/var/run/netns/c1"] = "no-route"
    for _ in range(3):
        monitor.round()
    assert gauge(svc, "route_missing") == 1 and checks(svc, "unhealthy") == 3
    ns.broken["/var/run/netns/c1"] = "no-echo"   # another reason: another transition
    monitor.round()
    assert gauge(svc, "route_missing") == 0 and gauge(svc, "gateway_unreachable") == 1
    del ns.broken["/var/run/netns/c1"]
    monitor.round()
    monitor.round()
    assert all(gauge(svc, r) == 0 for r in REASONS)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "attachment n1/c1/eth0 is unhealthy in /var/run/netns/c1: route_missing: route 0.0.0.0/0 via "
                    "10.1.2.1 dev eth0 is missing"),
        ("WARNING", "attachment n1/c1/eth0 is unhealthy in /var/run/netns/c1: gateway_unreachable: gateway "
                    "10.1.2.1 does not answer from eth0: 0 of 1 echo replies"),
        ("INFO", "attachment n1/c1/eth0 is healthy again (was gateway_unreachable)"),
    ]
    assert store.revision == revision   # it never writes (never releases)


def test_health_round_is_bounded_and_a_pass_reads_etcd_once(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    for i in range(5):
        add(svc, "c%d" % i)
    monitor = HealthMonitor(svc, interval=1.0, max_per_round=2)
    reads = store.calls.get("read", 0)
    monitor.round()
    assert len(ns.calls) == 2
    monitor.round()
    monitor.round()
    assert len(ns.calls) == 5 and [c[0][-2:] for c in ns.calls] == ["c0", "c1", "c2", "c3", "c4"]
    assert store.calls.get("read", 0) - reads == 1   # one range read of the handles for the whole pass
    monitor.round()
    assert store.calls.get("read", 0) - reads == 2 and len(ns.calls) == 7


def test_health_forgets_released_attachments_and_skips_one_released_while_it_looked(
        store: MemoryStore, ns: FakeNamespaces, caplog: pytest.LogCaptureFixture) -> None:
    svc = service(store, ns)
    add(svc, "c0")
    add(svc, "c1")
    monitor = HealthMonitor(svc, interval=1.0)
    ns.broken["/var/run/netns/c0"] = "gone"
    monitor.round()
    assert gauge(svc, "netns_missing") == 1
    svc.delete(Attachment("n1", "c0", "eth0"))
    monitor.round()   # the next pass no longer lists c0
    assert gauge(svc, "netns_missing") == 0 and set(monitor.unhealthy) == set()

    # c1 is released between the listing and the look: its broken namespace is not reported
    ns.broken["/var/run/netns/c1"] = "gone"
    original = ns.observe

    def release_then_observe(path: str, if_name: str, **kw: Any) -> Observation:
        svc.delete(Attachment("n1", "c1", "eth0"))
        return original(path, if_name, **kw)

    svc.inspector.observe = release_then_observe
    caplog.clear()
    caplog.set_level(logging.INFO, logger="ipamd.attachment_health")
    monitor.round()
    assert gauge(svc, "netns_missing") == 0 and caplog.records == []


def test_health_waits_until_ready_and_stops_between_attachments(store: MemoryStore, ns: FakeNamespaces) -> None:
    svc = service(store, ns)
    for i in range(4):
        add(svc, "c%d" % i)
    svc.ready = False
    monitor = HealthMonitor(svc, interval=7.0)
    assert monitor.round() == 1.0 and ns.calls == []
    svc.ready = True
    stop = threading.Event()
    stopping = HealthMonitor(svc, interval=7.0, stop=stop)
    original = ns.observe

    def observe_then_stop(path: str, if_name: str, **kw: Any) -> Observation:
        stop.set()
        return original(path, if_name, **kw)

    svc.inspector.observe = observe_then_stop
    stopping.round()
    assert len(ns.calls) == 1
