"""The reconciler (ipamd.reconciler) on the in-memory store: this node's attachments whose owner is gone are released
only after a second observation past the grace period, never one created after the snapshot, never one judged
"unknown"; broken records of its own blocks are removed (B52); a dry run changes nothing. The netns check's look
inside a namespace that still exists (issue 8 item 4: its interface gone, or none of its addresses on it) runs here
against a double of ``ipamd.netns.observe`` (:class:`FakeNamespaces`). The same against real etcd and real daemons:
tests/integration/test_reconciler_etcd.py; with real namespaces and the real bridge and ptp plugins:
tests/e2e/test_reconciler_netns.py."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from ipamd.check import check_snapshot
from ipamd.deepcheck import NamespaceInspector
from ipamd.domain.cni import Attachment
from ipamd.domain.model import Allocation, HandleRecord, IpRecord, handle_key, ip_key
from ipamd.domain.netcheck import Observation, ObservedInterface, Prefix
from ipamd.domain.netconf import parse_netconf
from ipamd.reconciler import ALIVE, GONE, UNKNOWN, NetnsCheck, Verdict
from ipamd.service import IpamService
from ipamd.store.base import Put, prefix_end
from ipamd.store.memory import MemoryStore

NC = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.0.0/16"}]],
                                           "blockSize": 26}}, "n1")


class FakeNamespaces:
    """Stands in for ``ipamd.netns.observe`` (the ``observe`` seam of ipamd.deepcheck.NamespaceInspector). A
    namespace path is healthy unless told otherwise: its interface holds the addresses given in ``held`` (by
    default whatever ``addresses`` says for the path, else nothing). ``state[path]``: ``"no-iface"`` (interface
    missing), ``"error"`` (cannot enter), ``"not-netns"`` (the path is not a network namespace), ``"raise"`` (the
    observer itself raises). ``elsewhere[path]`` are other interfaces' addresses. Records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.addresses: dict[str, list[str]] = {}
        self.state: dict[str, str] = {}
        self.elsewhere: dict[str, list[tuple[str, str]]] = {}

    def observe(self, netns_path: str, if_name: str, **kw: Any) -> Observation:
        self.calls.append((netns_path, if_name, kw))
        state = self.state.get(netns_path, "")
        if state == "raise":
            raise RuntimeError("observer blew up")
        if state == "error":
            return Observation(netns_path, if_name, True, error="cannot enter it: Operation not permitted")
        if state == "not-netns":
            return Observation(netns_path, if_name, False, error="is not a network namespace")
        others = tuple((n, Prefix.parse(a)) for n, a in self.elsewhere.get(netns_path, ()))
        if state == "no-iface":
            return Observation(netns_path, if_name, True, elsewhere=others)
        held = tuple(sorted(Prefix.parse(a) for a in self.addresses.get(netns_path, ())))
        return Observation(netns_path, if_name, True, ObservedInterface(if_name, 2, True, True, "UP"), held,
                           elsewhere=others)


def daemon(store: MemoryStore, node: str = "A", grace: float = 0.0,
           namespaces: FakeNamespaces | None = None) -> IpamService:
    """A ready service whose namespace looks go to ``namespaces`` (a fresh :class:`FakeNamespaces` by default; it is
    ``svc.fake_namespaces``, and :func:`add` puts each attachment's addresses on its interface there)."""
    fake = namespaces or FakeNamespaces()
    svc = IpamService(store, node, reconcile_interval=60, reconcile_grace=grace,
                      inspector=NamespaceInspector(fake.observe))
    svc.fake_namespaces = fake  # type: ignore[attr-defined]
    svc.sync()
    svc.set_ready()
    return svc


def add(svc: IpamService, cid: str, netns: str = "", nc: Any = NC) -> list[Allocation]:
    """ADD ``n1/<cid>/eth0`` with ``netns``; the fake namespace then holds the addresses on eth0, as the main
    plugin would have put them."""
    allocs = svc.add(Attachment(nc.name, cid, "eth0"), nc, netns=netns)
    if netns:
        svc.fake_namespaces.addresses.setdefault(netns, []).extend(a.cidr for a in allocs)  # type: ignore
    return allocs


def held(store: MemoryStore) -> set[str]:
    return {kv.key.rsplit("/", 2)[1] for kv in store.read("handles/", prefix_end("handles/"), 1)[0]}


def test_netns_check_verdicts(tmp_path: Path) -> None:
    ns = tmp_path / "ns"
    ns.touch()
    check = NetnsCheck()  # without a look: alive while the path exists
    rec = HandleRecord("n1", "c", "eth0", "A", (), str(ns), {}, netns_seen=True)
    assert check.verdict(rec)[0] == ALIVE
    ns.unlink()
    assert check.verdict(rec) == (GONE, "netns %s is gone" % ns, "netns")
    assert check.verdict(HandleRecord("n1", "c", "eth0", "A", (), str(ns)))[0] == UNKNOWN  # not seen at ADD
    assert check.verdict(HandleRecord("n1", "c", "eth0", "A", (), "", {}, netns_seen=True))[0] == UNKNOWN


def test_gone_attachments_are_released_on_the_second_pass(tmp_path: Path) -> None:
    """B19: the pod went away without a DEL (netns removed); the first pass only notes it, the second releases."""
    store = MemoryStore()
    a = daemon(store)
    for cid in ("keep", "lose"):
        (tmp_path / cid).touch()
        add(a, cid, str(tmp_path / cid))
    add(a, "unseen", "/var/run/netns/never-there")  # the daemon could not see it: never judged
    (tmp_path / "lose").unlink()
    first = a.reconciler.run(dry_run=False)
    assert list(first.candidates) == [handle_key("n1/lose/eth0")] and first.released == {}
    assert held(store) == {"keep", "lose", "unseen"}
    second = a.reconciler.run(dry_run=False)
    assert second.released == {handle_key("n1/lose/eth0"): "netns %s is gone" % (tmp_path / "lose")}
    assert held(store) == {"keep", "unseen"}
    assert a.metrics.reconcile_released.labels("netns")._value.get() == 1
    assert check_snapshot(store.dump()) == []
    add(a, "next", "")  # the released address is free again, and this node's view knows it
    assert store.count("ips/", prefix_end("ips/"), 1) == 3


def test_grace_period_and_too_young(tmp_path: Path) -> None:
    store = MemoryStore()
    a = daemon(store, grace=3600)
    (tmp_path / "x").touch()
    add(a, "x", str(tmp_path / "x"))
    (tmp_path / "x").unlink()
    a.reconciler.run(dry_run=False)
    again = a.reconciler.run(dry_run=False)
    assert again.released == {} and 3500 < again.waiting[handle_key("n1/x/eth0")] <= 3600
    assert a.metrics.reconcile_too_young._value.get() == 1
    assert held(store) == {"x"}


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    store = MemoryStore()
    a = daemon(store)
    (tmp_path / "x").touch()
    add(a, "x", str(tmp_path / "x"))
    (tmp_path / "x").unlink()
    for _ in range(3):
        dry = a.reconciler.run(dry_run=True)
        assert handle_key("n1/x/eth0") in dry.candidates and dry.released == {}
    assert held(store) == {"x"}
    a.reconciler.run(dry_run=False)
    assert a.reconciler.run(dry_run=True).released == {handle_key("n1/x/eth0"): "netns %s is gone"
                                                       % (tmp_path / "x")}
    assert held(store) == {"x"}


def test_an_attachment_changed_between_passes_starts_over(tmp_path: Path) -> None:
    store = MemoryStore()
    a = daemon(store)
    (tmp_path / "x").touch()
    add(a, "x", str(tmp_path / "x"))
    (tmp_path / "x").unlink()
    a.reconciler.run(dry_run=False)
    kv = store.read(handle_key("n1/x/eth0"), None, 1)[0][0]
    store.txn([], [Put(kv.key, kv.value)], [], 1)  # rewritten (a new mod_revision) between the passes
    assert a.reconciler.run(dry_run=False).released == {}
    assert a.reconciler.run(dry_run=False).released != {}


def test_other_nodes_attachments_are_never_judged(tmp_path: Path) -> None:
    store = MemoryStore()
    a, b = daemon(store, "A"), daemon(store, "B")
    (tmp_path / "b").touch()
    add(b, "b", str(tmp_path / "b"))
    (tmp_path / "b").unlink()
    add(a, "a", "")
    for _ in range(2):
        assert a.reconciler.run(dry_run=False).candidates == {}
    assert held(store) == {"a", "b"}


def test_address_record_without_handle_in_our_block_is_removed(tmp_path: Path) -> None:
    """B52 by the daemon: an address record of this node whose handle is gone is removed on the second pass,
    comparing both records; the address is allocatable again."""
    store = MemoryStore()
    a = daemon(store)
    add(a, "live")
    ghost = ip_key("n1", 4, 0x0A010000 + 9)
    store.txn([], [Put(ghost, IpRecord("n1/ghost/eth0", "A", NC.range_sets[0][0].id).encode())], [], 1)
    a.reconciler.run(dry_run=False)
    released = a.reconciler.run(dry_run=False).released
    assert released == {ghost: "address record without its handle (B52)"}
    assert store.read(ghost, None, 1)[0] == ()
    assert check_snapshot(store.dump()) == []


def test_a_failing_check_means_unknown(tmp_path: Path) -> None:
    store = MemoryStore()
    a = daemon(store)

    class Broken:
        name = "broken"

        def verdict(self, record: HandleRecord) -> tuple[str, str]:
            raise RuntimeError("cannot tell")

    a.reconciler.checks = [Broken()]
    add(a, "x")
    for _ in range(2):
        assert a.reconciler.run(dry_run=False).candidates == {}


def test_releases_go_in_batches_under_the_op_limit(tmp_path: Path) -> None:
    store = MemoryStore()
    a = daemon(store)
    for i in range(150):
        (tmp_path / str(i)).touch()
        add(a, "c%d" % i, str(tmp_path / str(i)))
        (tmp_path / str(i)).unlink()
    a.reconciler.run(dry_run=False)
    txns = store.calls["txn"]
    assert len(a.reconciler.run(dry_run=False).released) == 150
    assert 3 <= store.calls["txn"] - txns <= 6  # 300 deletes in <= 120-op batches, plus the handle reads
    assert held(store) == set()


@pytest.mark.parametrize("interval, expect_pass", [(0, False), (60, True)])
def test_round_respects_the_off_switch(interval: float, expect_pass: bool) -> None:
    store = MemoryStore()
    a = daemon(store)
    a.reconciler.interval = interval
    before = store.calls.get("read", 0)
    a.reconciler.round()
    assert (store.calls.get("read", 0) > before) == expect_pass


# --- the look inside a namespace that still exists (issue 8 item 4) ----------------------------------------------

P = "/var/run/netns/pod"
V4 = Allocation("n1/0", 4, int(ipaddress.ip_address("10.1.0.2")), 16, None)
V6 = Allocation("n1/1", 6, int(ipaddress.ip_address("fd00::2")), 64, None)


def record(*allocs: Allocation, netns: str = P) -> HandleRecord:
    return HandleRecord("n1", "c", "eth0", "A", allocs, netns, {}, netns_seen=True)


@pytest.mark.parametrize("allocs, state, held, elsewhere, want", [
    # the interface holds the address (another prefix length still holds it): alive
    ((V4,), "", ["10.1.0.2/16"], [], Verdict(ALIVE, "")),
    ((V4,), "", ["10.1.0.2/24", "10.1.0.99/16"], [], Verdict(ALIVE, "")),
    # one of two addresses left: alive (releasing the handle would hand out the one still in use)
    ((V4, V6), "", ["fd00::2/64"], [], Verdict(ALIVE, "")),
    # the interface holds none of them
    ((V4,), "", [], [], Verdict(GONE, "address 10.1.0.2 not on eth0 in %s" % P, "netns_address")),
    ((V4,), "", ["10.1.0.3/16", "fe80::1/64"], [],
     Verdict(GONE, "address 10.1.0.2 not on eth0 in %s" % P, "netns_address")),
    ((V4, V6), "", ["fe80::1/64"], [],
     Verdict(GONE, "addresses 10.1.0.2, fd00::2 not on eth0 in %s" % P, "netns_address")),
    # the interface is missing
    ((V4,), "no-iface", [], [("lo", "127.0.0.1/8")],
     Verdict(GONE, "interface eth0 is missing in %s" % P, "netns_interface")),
    # ... but another interface of the namespace holds the address: still in use, alive
    ((V4,), "no-iface", [], [("net1", "10.1.0.2/16")], Verdict(ALIVE, "10.1.0.2 on net1 in %s" % P)),
    ((V4,), "", [], [("net1", "10.1.0.2/16")], Verdict(ALIVE, "10.1.0.2 on net1 in %s" % P)),
    # cannot tell
    ((V4,), "error", [], [],
     Verdict(UNKNOWN, "cannot look into netns %s: cannot enter it: Operation not permitted" % P)),
    ((V4,), "not-netns", [], [],
     Verdict(UNKNOWN, "netns %s is not a network namespace (is not a network namespace)" % P)),
    ((V4,), "raise", [], [], Verdict(UNKNOWN, "cannot look into netns %s: RuntimeError: observer blew up" % P)),
    ((), "", [], [], Verdict(UNKNOWN, "no addresses recorded")),
])
def test_netns_look_verdicts(allocs: tuple[Allocation, ...], state: str, held: list[str],
                             elsewhere: list[tuple[str, str]], want: Verdict) -> None:
    """Issue 8 item 4, docs/namespace-checks.md "Reconciler": the verdict of one look into an existing namespace,
    its reason and its kind (the metrics label), through the real NamespaceInspector.presence with a double of
    observe; exactly one observation per verdict, without routes or probes."""
    fake = FakeNamespaces()
    fake.addresses[P], fake.elsewhere[P] = held, elsewhere
    if state:
        fake.state[P] = state
    check = NetnsCheck(exists=lambda path: True, look=NamespaceInspector(fake.observe, timeout=0.5).presence)
    assert check.verdict(record(*allocs)) == want
    assert fake.calls == [(P, "eth0", {"timeout": 0.5, "routes": False, "all_addresses": True})]


def test_netns_look_is_skipped_when_the_path_is_gone_or_was_never_seen() -> None:
    """A path that does not exist is gone without a look (kind netns, as before); a namespace not seen at ADD is
    never looked at; a namespace removed while it was looked at is gone, not unknown."""
    fake = FakeNamespaces()
    paths = {P}
    check = NetnsCheck(exists=lambda path: path in paths, look=NamespaceInspector(fake.observe).presence)
    assert check.verdict(record(V4, netns="/var/run/netns/other")) == \
        Verdict(GONE, "netns /var/run/netns/other is gone", "netns")
    unseen = HandleRecord("n1", "c", "eth0", "A", (V4,), P, {}, netns_seen=False)
    assert check.verdict(unseen).state == UNKNOWN
    assert fake.calls == []

    def vanishing(rec: HandleRecord) -> Observation:
        paths.discard(P)
        return Observation(P, "eth0", False, error="does not exist")

    assert NetnsCheck(exists=lambda path: path in paths, look=vanishing).verdict(record(V4)) == \
        Verdict(GONE, "netns %s is gone" % P, "netns")


def test_failed_looks_pause_looking() -> None:
    """A broken helper costs a pass max_failures timeouts, not one per attachment: after 3 failed looks in a row the
    check answers unknown without looking until the pause is over, then looks again; a good look resets the
    count."""
    fake = FakeNamespaces()
    now = [100.0]
    check = NetnsCheck(exists=lambda path: True, look=NamespaceInspector(fake.observe).presence, max_failures=3,
                       pause=30.0, clock=lambda: now[0])
    fake.state[P] = "error"
    for _ in range(2):
        assert check.verdict(record(V4)).state == UNKNOWN
    fake.state.pop(P)
    fake.addresses[P] = ["10.1.0.2/16"]
    assert check.verdict(record(V4)).state == ALIVE  # resets the count
    fake.state[P] = "error"
    answers = [check.verdict(record(V4)) for _ in range(10)]
    assert len(fake.calls) == 3 + 3 and {a.state for a in answers} == {UNKNOWN}
    assert answers[-1].reason.startswith("not looking into namespaces for a while after 3 failures in a row")
    now[0] += 31
    fake.state.pop(P)
    assert check.verdict(record(V4)).state == ALIVE and len(fake.calls) == 7


def test_interface_or_address_gone_is_released_after_the_grace(tmp_path: Path) -> None:
    """Issue 8 item 4 through the whole reconciler: three pods whose namespaces all still exist; one lost its
    interface, one its address. The first pass only notes them (a dry run names each with its own reason), the
    second releases both, counted under their own labels; the healthy one stays; each pass looks into each
    namespace once. The released addresses are free again."""
    store = MemoryStore()
    a = daemon(store)
    fake = a.fake_namespaces  # type: ignore[attr-defined]
    paths = {cid: str(tmp_path / cid) for cid in ("ok", "noiface", "noaddr")}
    for cid, path in paths.items():
        Path(path).touch()
        add(a, cid, path)
    fake.state[paths["noiface"]] = "no-iface"
    fake.addresses[paths["noaddr"]] = []
    dry = a.reconciler.run(dry_run=True)
    assert dry.candidates == {
        handle_key("n1/noiface/eth0"): "interface eth0 is missing in %s" % paths["noiface"],
        handle_key("n1/noaddr/eth0"): "address 10.1.0.4 not on eth0 in %s" % paths["noaddr"]}
    assert dry.released == {}
    calls = len(fake.calls)
    first = a.reconciler.run(dry_run=False)
    assert len(fake.calls) - calls == 3 and first.released == {} and held(store) == {"ok", "noiface", "noaddr"}
    second = a.reconciler.run(dry_run=False)
    assert second.released == dry.candidates
    assert held(store) == {"ok"}
    for label, n in (("netns_interface", 1), ("netns_address", 1), ("netns", 0)):
        assert a.metrics.reconcile_released.labels(label)._value.get() == n, label
    assert check_snapshot(store.dump()) == []
    assert {x.cidr for x in add(a, "next1") + add(a, "next2")} == {"10.1.0.3/16", "10.1.0.4/16"}


@pytest.mark.parametrize("state", ["error", "raise", "not-netns"])
def test_failed_observation_releases_nothing(tmp_path: Path, state: str) -> None:
    """Never a release on a failure to look: a namespace that exists but cannot be looked into (permission, the
    helper gone, an observer that raises) or is not a network namespace is "unknown" in every pass, with grace 0;
    nothing is a candidate, nothing is released."""
    store = MemoryStore()
    a = daemon(store)
    (tmp_path / "x").touch()
    add(a, "x", str(tmp_path / "x"))
    a.fake_namespaces.state[str(tmp_path / "x")] = state  # type: ignore[attr-defined]
    for _ in range(4):
        result = a.reconciler.run(dry_run=False)
        assert (result.candidates, result.released) == ({}, {})
    assert held(store) == {"x"}
    assert a.fake_namespaces.calls  # type: ignore[attr-defined]  # it did try to look
