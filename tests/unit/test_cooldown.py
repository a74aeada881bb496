"""Release cooldown (field case B09, decision 1) on the in-memory store: a released address of a pool with
``releaseCooldownSeconds`` is skipped until the etcd lease of its cooling record ends; when only cooling addresses
are left, the one whose cooldown began earliest is handed out and counted; a cooldown of 0 changes nothing; every
release path (DEL, ipamctl release, GC, reconciler, node removal) writes the record in its own transaction. The same
against real etcd and a real daemon, across a SIGKILL and restart: tests/integration/test_field_cooldown.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from ipamd.check import analyse, check_snapshot
from ipamd.cooling import CoolingLeases, window
from ipamd.deepcheck import NamespaceInspector
from ipamd.domain.cni import Attachment
from ipamd.domain.errors import InvalidConfig, PoolExhausted
from ipamd.domain.model import CoolingRecord, IpRecord, PoolRecord, cooling_key, ip_key, node_key
from ipamd.domain.netcheck import Observation
from ipamd.domain.netconf import NetConf, parse_netconf
from ipamd.nodes import plan_removal, remove_node
from ipamd.service import IpamService
from ipamd.store.base import Put, prefix_end
from ipamd.store.memory import MemoryStore


class Clock:
    """A monotonic clock the test moves: it drives the store's lease expiry (etcd's time) and the lease windows."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def netconf(subnet: str = "10.45.0.0/29", name: str = "n1", **ipam: Any) -> NetConf:
    return parse_netconf({"name": name, "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]], **ipam}},
                         name)


def service(store: MemoryStore, node: str = "A", clock: Clock | None = None, **kw: Any) -> IpamService:
    kw.setdefault("request_timeout", 2.0)
    kw.setdefault("etcd_timeout", 0.5)
    svc = IpamService(store, node, **kw)
    if clock is not None:
        svc.cooling = CoolingLeases(store, clock)
        svc.gc_runner.cooling = svc.reconciler.cooling = svc.cooling
    svc.sync()
    svc.set_ready()
    return svc


def att(cid: str, network: str = "n1") -> Attachment:
    return Attachment(network, cid, "eth0")


def addr(svc: IpamService, cid: str, nc: NetConf) -> str:
    return str(svc.add(att(cid), nc)[0].cidr.split("/")[0])


def cooling(store: MemoryStore) -> dict[str, int]:
    """Cooling records: address text -> mod_revision."""
    return {str(ipaddress.ip_address(int(kv.key.rsplit("/", 1)[1], 16))): kv.mod_revision
            for kv in store.read("cooling/", prefix_end("cooling/"), 1)[0]}


def bypasses(svc: IpamService, pool: str = "n1/0a2d0000-29") -> float:
    return float(svc.metrics.cooldown_bypass.labels(pool)._value.get())


def assert_consistent(store: MemoryStore) -> None:
    violations = check_snapshot(store.dump())
    assert not violations, "\n".join(map(str, violations))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock)


# --- configuration ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-1, 1.5, "30", True, 86401, [30]])
def test_bad_cooldown_is_code_7_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidConfig) as exc:
        netconf(releaseCooldownSeconds=value)
    assert exc.value.cni_code == 7 and "ipam.releaseCooldownSeconds" in exc.value.msg


@pytest.mark.parametrize("value, expect", [(None, 0), (0, 0), (30, 30), (86400, 86400)])
def test_cooldown_is_parsed_without_warning(value: object, expect: int) -> None:
    nc = netconf(**({} if value is None else {"releaseCooldownSeconds": value}))
    assert nc.range_sets[0][0].cooldown == expect and nc.warnings == ()


def test_pool_record_carries_the_cooldown_only_when_set() -> None:
    rng = netconf().range_sets[0][0].range
    assert b"releaseCooldownSeconds" not in PoolRecord("n1", rng, 29).encode()
    assert PoolRecord.decode(PoolRecord("n1", rng, 29, 30).encode()).cooldown == 30
    with pytest.raises(ValueError):
        PoolRecord.decode(PoolRecord("n1", rng, 29).encode().replace(b'"blockSize"', b'"releaseCooldownSeconds":-1,'
                                                                                    b'"blockSize"'))


# --- the B09 repro on the in-memory store -----------------------------------------------------------------------

def test_b09_cooling_address_is_skipped_and_survives_a_restart(store: MemoryStore, clock: Clock) -> None:
    """B09: c1 .2, DEL c1, c2 .3; a restarted daemon (a new service on the same store) still skips .2: c3 .4,
    c4 .5, c5 .6; then only .2 is left and still cooling: c6 gets it and the bypass is counted."""
    nc = netconf(releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    assert addr(a, "c1", nc) == "10.45.0.2"
    a.delete(att("c1"))
    rec = store.read(cooling_key(ip_key("n1", 4, ip("10.45.0.2"))), None, 1)[0]
    assert len(rec) == 1 and CoolingRecord.decode(rec[0].value) == CoolingRecord("n1/0a2d0000-29", 30)
    assert addr(a, "c2", nc) == "10.45.0.3"
    clock.now += 10  # within the cooldown
    b = service(store, clock=clock)  # "restarted": nothing in memory survives
    assert [addr(b, c, nc) for c in ("c3", "c4", "c5")] == ["10.45.0.4", "10.45.0.5", "10.45.0.6"]
    assert bypasses(b) == 0
    assert addr(b, "c6", nc) == "10.45.0.2"
    assert bypasses(b) == 1 and cooling(store) == {}  # the ADD deleted the record it overrode
    assert_consistent(store)


def test_cooldown_ends_with_the_lease_not_the_local_clock(store: MemoryStore, clock: Clock) -> None:
    """B09: the cooling record goes when etcd's lease ends (TTL cooldown + window); then the address is the lowest
    free one again, with no bypass."""
    nc = netconf(releaseCooldownSeconds=3)
    a = service(store, clock=clock)
    addr(a, "c1", nc)
    a.delete(att("c1"))
    assert addr(a, "c2", nc) == "10.45.0.3"
    clock.now += 3 + window(3) + 0.1
    b = service(store, clock=clock)
    assert cooling(store) == {}
    assert addr(b, "c3", nc) == "10.45.0.2" and bypasses(b) == 0
    assert_consistent(store)


def test_the_earliest_cooldown_is_bypassed_first(store: MemoryStore, clock: Clock) -> None:
    """Decision 1: not the lowest address, the one whose cooldown began first (lowest record revision)."""
    nc = netconf(releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    for c in ("c2", "c3", "c4", "c5", "c6"):
        addr(a, c, nc)
    a.delete(att("c4"))  # .4 starts cooling first
    a.delete(att("c2"))  # then .2
    assert addr(a, "x", nc) == "10.45.0.4"
    assert addr(a, "y", nc) == "10.45.0.2"
    assert bypasses(a) == 2
    with pytest.raises(PoolExhausted):
        a.add(att("z"), nc)
    assert_consistent(store)


def test_the_watch_teaches_another_daemon_about_cooling(store: MemoryStore, clock: Clock) -> None:
    """A daemon whose cache is stale (it read the block before the release) still never hands out a cooling
    address: its ADD compares the cooling key, fails, learns the record from the failure reads and picks again."""
    nc = netconf("10.45.0.0/24", releaseCooldownSeconds=30, blockSize=29)
    a = service(store, clock=clock)
    assert addr(a, "c1", nc) == "10.45.0.2"
    addr(a, "c2", nc)
    b = service(store, node="B", clock=clock)
    a.delete(att("c1"))
    # B borrows nothing yet: it claims its own block; A's block with the cooling .2 is A's
    assert addr(b, "b1", nc) == "10.45.0.8"
    # A's own view knows .2 is cooling: its next ADD takes .4
    assert addr(a, "c3", nc) == "10.45.0.4"
    assert_consistent(store)


def test_stale_view_fails_the_compare_and_learns(store: MemoryStore, clock: Clock) -> None:
    nc = netconf(releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    addr(a, "c1", nc)
    lease = store.grant_lease(60, 1)
    # another actor released .3 behind A's back and left it cooling: A's view thinks .3 is free
    store.txn([], [Put(cooling_key(ip_key("n1", 4, ip("10.45.0.3"))), CoolingRecord("n1/0a2d0000-29", 30).encode(),
                       lease)], [], 1)
    conflicts = a.metrics.cas_conflicts.labels("ADD")._value.get()
    assert addr(a, "c2", nc) == "10.45.0.4"
    assert a.metrics.cas_conflicts.labels("ADD")._value.get() == conflicts + 1
    assert_consistent(store)


# --- cooldown 0 ---------------------------------------------------------------------------------------------------

def test_cooldown_zero_changes_nothing(store: MemoryStore, clock: Clock) -> None:
    """No cooling record, no lease, immediate reuse, one transaction per ADD and DEL."""
    nc = netconf()
    a = service(store, clock=clock)
    addr(a, "c0", nc)
    before = dict(store.calls)
    assert addr(a, "c1", nc) == "10.45.0.3"
    a.delete(att("c1"))
    assert addr(a, "c2", nc) == "10.45.0.3"
    assert store.calls["txn"] - before["txn"] == 3 and "grant_lease" not in store.calls
    assert cooling(store) == {}
    assert b"releaseCooldownSeconds" not in store.read("pools/n1/0a2d0000-29", None, 1)[0][0].value
    assert_consistent(store)


def test_a_leftover_cooling_record_is_deleted_by_an_add_without_cooldown(store: MemoryStore, clock: Clock) -> None:
    """A pool whose cooldown was turned off: its cooling records no longer hold addresses back, and the ADD that
    takes one deletes the record (invariant 6 holds)."""
    a = service(store, clock=clock)
    addr(a, "c1", netconf(releaseCooldownSeconds=30))
    a.delete(att("c1"))
    assert list(cooling(store)) == ["10.45.0.2"]
    assert addr(a, "c2", netconf()) == "10.45.0.2"
    assert cooling(store) == {} and bypasses(a) == 0
    assert_consistent(store)


# --- cost ---------------------------------------------------------------------------------------------------------

def test_releases_share_leases_and_del_stays_one_txn(store: MemoryStore, clock: Clock) -> None:
    """One lease per cooldown value and window, not per release; a DEL is one transaction once its window's lease
    exists."""
    nc = netconf("10.45.0.0/24", releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    for i in range(20):
        a.add(att("c%d" % i), nc)
    txns = store.calls["txn"]
    for i in range(20):
        a.delete(att("c%d" % i))
    assert store.calls["grant_lease"] == 1 and store.calls["txn"] - txns == 20
    assert len(cooling(store)) == 20
    clock.now += window(30)
    a.add(att("d"), nc)
    a.delete(att("d"))
    assert store.calls["grant_lease"] == 2


# --- every release path -------------------------------------------------------------------------------------------

def test_gc_writes_cooling_records(store: MemoryStore, clock: Clock) -> None:
    nc = netconf(releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    addr(a, "keep", nc)
    addr(a, "stale", nc)
    assert a.gc("n1", {("keep", "eth0")}) == 1
    assert list(cooling(store)) == ["10.45.0.3"]
    assert addr(a, "next", nc) == "10.45.0.4"
    assert_consistent(store)


def test_reconciler_writes_cooling_records(store: MemoryStore, clock: Clock, tmp_path: Path) -> None:
    nc = netconf(releaseCooldownSeconds=30)

    def observe(path: str, if_name: str, **kw: Any) -> Observation:
        return Observation(path, if_name, True, error="unused")

    a = service(store, clock=clock, reconcile_interval=60, reconcile_grace=0,
                inspector=NamespaceInspector(observe))
    ns = tmp_path / "ns"
    ns.touch()
    a.add(att("gone"), nc, netns=str(ns))
    ns.unlink()
    # and a broken record (B52): an address record of our block without its handle
    store.txn([], [Put(ip_key("n1", 4, ip("10.45.0.5")), IpRecord("n1/ghost/eth0", "A", "n1/0a2d0000-29").encode())],
              [], 1)
    a.reconciler.run(dry_run=False)
    a.reconciler.run(dry_run=False)
    assert sorted(cooling(store)) == ["10.45.0.2", "10.45.0.5"]
    assert addr(a, "next", nc) == "10.45.0.3"
    assert_consistent(store)


def test_grpc_release_path_writes_cooling_records(store: MemoryStore, clock: Clock) -> None:
    """ipamctl release and the gRPC Release call the service's DEL (ipamd/grpcapi.py)."""
    nc = netconf(releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    addr(a, "c1", nc)
    assert a.delete(att("c1")) == 1
    assert list(cooling(store)) == ["10.45.0.2"]


def test_node_removal_writes_cooling_records(store: MemoryStore, clock: Clock) -> None:
    nc = netconf(releaseCooldownSeconds=30)
    b = service(store, node="B", clock=clock)
    addr(b, "c1", nc)
    addr(b, "c2", nc)
    assert not store.read(node_key("B"), None, 1)[0]  # the service alone keeps no node record: B is "departed"
    plan = plan_removal(store.dump(), "B")
    assert plan.cooldowns == {"n1/0a2d0000-29": 30}
    result = remove_node(store, plan, cooling=CoolingLeases(store, clock))
    assert result.released == 2
    assert sorted(cooling(store)) == ["10.45.0.2", "10.45.0.3"]
    a = service(store, node="A", clock=clock)
    # A claims the emptied block knowing nothing of it: its claim compares .2's cooling key, fails, learns both
    # records from the failure reads, and takes .4
    assert addr(a, "x", nc) == "10.45.0.4" and bypasses(a) == 0
    assert_consistent(store)


# --- the check ----------------------------------------------------------------------------------------------------

def test_check_reports_an_allocated_address_with_a_cooling_record(store: MemoryStore, clock: Clock) -> None:
    nc = netconf(releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    addr(a, "c1", nc)
    store.txn([], [Put(cooling_key(ip_key("n1", 4, ip("10.45.0.2"))), CoolingRecord("n1/0a2d0000-29", 30).encode())],
              [], 1)
    found = [f for f in analyse(store.dump()) if f.kind == "allocated-and-cooling"]
    assert len(found) == 1 and found[0].invariant == 6 and found[0].severity == "violation"
    store.txn([], [Put("cooling/n1/v4/zz", b"{}")], [], 1)
    assert any(f.kind == "undecodable" and f.key == "cooling/n1/v4/zz" for f in analyse(store.dump()))


def test_a_lease_etcd_lost_is_replaced(store: MemoryStore, clock: Clock) -> None:
    """A cooling lease that etcd no longer knows (revoked, or an etcd restored from a backup) makes the put fail
    ("requested lease not found"); the DEL forgets its leases and succeeds with a new one."""
    nc = netconf(releaseCooldownSeconds=30)
    a = service(store, clock=clock)
    addr(a, "c1", nc)
    addr(a, "c2", nc)
    a.delete(att("c1"))
    lease = a.cooling.lease(30, 1)
    store.revoke(lease, 1)  # its record goes with it
    a.delete(att("c2"))
    assert store.calls["grant_lease"] == 2 and list(cooling(store)) == ["10.45.0.3"]
    assert_consistent(store)
