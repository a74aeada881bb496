"""The watch-fed view (ipamd.watcher, NodeCache.apply) on the in-memory store: other actors' changes reach the
cache, compaction leads to a full re-read, a broken watch resumes where it stopped; after every fault the cache is
compared with the store (issue: "cache and etcd are compared in tests after every fault"). The same against real
etcd: tests/integration/test_watch.py."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from views import assert_view_matches

from ipamd.domain.cni import Attachment
from ipamd.domain.model import BLOCKS
from ipamd.domain.netconf import NetConf, parse_netconf
from ipamd.service import IpamService
from ipamd.store.base import StoreUnavailable, prefix_end
from ipamd.store.memory import MemoryStore


def netconf(subnet: str = "10.1.2.0/24") -> NetConf:
    return parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]],
                                                 "blockSize": 28}}, "n1")


def service(store: MemoryStore, node: str) -> IpamService:
    svc = IpamService(store, node, request_timeout=2.0, etcd_timeout=0.5)
    svc.sync()
    svc.set_ready()
    return svc


def pump(svc: IpamService, rounds: int = 20) -> None:
    """Run the watcher until it has nothing more to deliver (the memory store delivers synchronously)."""
    for _ in range(rounds):
        w = svc.watcher._watch
        if w is not None and w._updates.empty():  # type: ignore[attr-defined]
            break
        svc.watcher.round()


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def test_release_through_another_daemon_reaches_the_owner() -> None:
    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    nc = netconf()
    for i in range(5):
        a.add(Attachment("n1", "c%d" % i, "eth0"), nc)
    pump(a)
    b.delete(Attachment("n1", "c1", "eth0"))  # e.g. ipamctl release through node B
    pump(a)
    assert_view_matches(store, a)
    txns = store.calls["txn"]
    assert a.add(Attachment("n1", "again", "eth0"), nc)[0].cidr == "10.1.2.3/24"
    assert store.calls["txn"] - txns == 1  # no failed compare: the view already knew


def test_another_nodes_claim_reaches_the_view() -> None:
    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    nc = netconf()
    a.add(Attachment("n1", "a0", "eth0"), nc)
    pump(b)
    for i in range(17):
        b.add(Attachment("n1", "b%d" % i, "eth0"), nc)  # B fills its block 10.1.2.16/28 (16) and claims .32/28
    pump(a)
    assert_view_matches(store, a)
    for i in range(13):
        a.add(Attachment("n1", "a%d" % (i + 1), "eth0"), nc)
    txns = store.calls["txn"]
    got = a.add(Attachment("n1", "next", "eth0"), nc)[0].cidr
    assert got == "10.1.2.48/24" and store.calls["txn"] - txns == 1  # claimed past B's blocks at the first try


def test_compaction_leads_to_a_full_reread() -> None:
    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    nc = netconf()
    a.add(Attachment("n1", "a0", "eth0"), nc)
    pump(a)
    a.watcher.close()  # the watch is away (etcd restarted, say) while B works and etcd compacts
    for i in range(20):
        b.add(Attachment("n1", "b%d" % i, "eth0"), nc)
    store.compact(store.revision)
    for _ in range(3):
        a.watcher.round()
    assert a.watcher.compactions == 1
    pump(a)
    assert_view_matches(store, a)


def test_broken_watch_resumes_from_the_last_revision() -> None:
    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    nc = netconf()
    a.add(Attachment("n1", "a0", "eth0"), nc)
    pump(a)
    store.break_watches()
    with pytest.raises(StoreUnavailable):
        a.watcher.round()
    for i in range(20):
        b.add(Attachment("n1", "b%d" % i, "eth0"), nc)
    b.delete(Attachment("n1", "b3", "eth0"))
    pump(a)
    assert_view_matches(store, a)


def test_old_events_never_undo_newer_knowledge() -> None:
    """Our own DEL at revision R is in the cache at once; the watch's older put of the same address (R-1) arrives
    later and must not resurrect it."""
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf()
    a.watcher.round()  # the watch exists but is not pumped
    a.add(Attachment("n1", "c1", "eth0"), nc)
    a.delete(Attachment("n1", "c1", "eth0"))
    snap: dict[str, Any] = a.cache.snapshot()
    assert all(b["taken"] == [] for pool in snap.values() for b in pool["blocks"].values())
    pump(a)
    snap = a.cache.snapshot()
    assert all(b["taken"] == [] for pool in snap.values() for b in pool["blocks"].values())
    assert_view_matches(store, a)


def test_block_removed_by_another_actor_leaves_the_view() -> None:
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf()
    a.add(Attachment("n1", "c1", "eth0"), nc)
    a.delete(Attachment("n1", "c1", "eth0"))
    pump(a)
    kvs, _ = store.read(BLOCKS, prefix_end(BLOCKS), 1)
    from ipamd.store.base import Delete

    store.txn([], [Delete(kvs[0].key)], [], 1)  # e.g. an empty block released by the operator
    pump(a)
    assert_view_matches(store, a)
    assert a.add(Attachment("n1", "c2", "eth0"), nc)[0].cidr == "10.1.2.2/24"


def test_named_pool_specs_follow_the_watch() -> None:
    """Named pools (docs/configuration.md "Named pools"): a create, a drain and a delete made through another daemon
    reach this daemon's spec cache through the watch, so its next ADD needs no failed compare to learn them."""
    from ipamd.domain.errors import InvalidConfig

    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    a.watcher.round()  # the watch starts from the sync
    b.pool_admin.create({"name": "p1", "cidr": "10.7.0.0/24"})
    b.pool_admin.create({"name": "p2", "cidr": "10.8.0.0/24"})
    pump(a)
    assert a.specs.get("p1") is not None
    nc = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "pools": [["p1", "p2"]]}}, "n1")
    assert a.add(Attachment("n1", "c1", "eth0"), nc)[0].cidr == "10.7.0.2/24"
    b.pool_admin.set_state("p1", "draining")
    pump(a)
    assert a.specs.get("p1")[0].state == "draining"  # type: ignore[index]
    txns = store.calls["txn"]
    assert a.add(Attachment("n1", "c2", "eth0"), nc)[0].cidr == "10.8.0.2/24"
    assert store.calls["txn"] - txns == 1  # the claim in p2, no failed compare first
    a.delete(Attachment("n1", "c1", "eth0"))
    b.pool_admin.delete("p1", 10**9)
    pump(a)
    assert a.specs.get("p1") is None
    with pytest.raises(InvalidConfig, match="unknown pool p1"):
        a.add(Attachment("n1", "c3", "eth0"), parse_netconf(
            {"name": "n1", "ipam": {"type": "ipamd-cni", "pools": [["p1"]]}}, "n1"))
