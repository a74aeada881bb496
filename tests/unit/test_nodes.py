"""Node removal (ipamd.nodes) on the in-memory store: refused while the node's lease lives, releases everything the
node allocated, deletes its blocks once empty, keeps a block that holds other nodes' addresses (invariant 5),
idempotent. The same through ipamctl against real etcd: tests/integration/test_repair.py."""

from __future__ import annotations

import pytest

from ipamd.check import check_snapshot
from ipamd.domain.cni import Attachment
from ipamd.domain.netconf import parse_netconf
from ipamd.nodes import plan_removal, remove_node
from ipamd.service import IpamService
from ipamd.store.base import Put, prefix_end
from ipamd.store.memory import MemoryStore


def daemon(store: MemoryStore, node: str) -> IpamService:
    svc = IpamService(store, node)
    svc.sync()
    svc.set_ready()
    return svc


def test_remove_a_departed_node() -> None:
    store = MemoryStore()
    nc = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/27"}]],
                                               "blockSize": 28}}, "n1")
    a, b = daemon(store, "A"), daemon(store, "B")
    for i in range(14):
        a.add(Attachment("n1", "a%d" % i, "eth0"), nc)
    for i in range(15):
        b.add(Attachment("n1", "b%d" % i, "eth0"), nc)
    store.txn([], [Put("nodes/A", b"{}")], [], 1)
    plan = plan_removal(store.dump(), "A")
    assert plan.alive and len(plan.attachments) == 14 and len(plan.blocks) == 1
    with pytest.raises(ValueError):
        remove_node(store, plan)
    from ipamd.store.base import Delete

    store.txn([], [Delete("nodes/A")], [], 1)  # the lease expired
    result = remove_node(store, plan_removal(store.dump(), "A"))
    assert result.released == 14 and result.blocks_deleted == 1 and result.skipped == []
    assert store.count("handles/", prefix_end("handles/"), 1) == 15
    b.sync()
    assert b.add(Attachment("n1", "b-new", "eth0"), nc)[0].cidr == "10.1.2.2/27"  # A's block is free again
    assert check_snapshot(store.dump()) == []
    again = remove_node(store, plan_removal(store.dump(), "A"))
    assert (again.released, again.blocks_deleted) == (0, 0)


def test_a_block_holding_another_nodes_address_is_kept() -> None:
    store = MemoryStore()
    nc = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/28"}]],
                                               "blockSize": 28}}, "n1")
    a, b = daemon(store, "A"), daemon(store, "B")
    a.add(Attachment("n1", "a0", "eth0"), nc)
    b.add(Attachment("n1", "b0", "eth0"), nc)  # the only block is A's: B borrows from it
    result = remove_node(store, plan_removal(store.dump(), "A"))
    assert result.released == 1 and result.blocks_deleted == 0 and len(result.blocks_kept) == 1
    assert store.count("ips/", prefix_end("ips/"), 1) == 1
    assert check_snapshot(store.dump()) == []


def node_with(store: MemoryStore, name: str, count: int) -> IpamService:
    """Node ``name`` with ``count`` attachments ``<name>0..`` in 10.1.2.0/26 (blocks of /28)."""
    nc = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/26"}]],
                                               "blockSize": 28}}, "n1")
    svc = daemon(store, name)
    for i in range(count):
        svc.add(Attachment("n1", "%s%d" % (name, i), "eth0"), nc)
    return svc


def handles_of(store: MemoryStore) -> set[str]:
    return {kv.key.split("/")[2] for kv in store.read("handles/", prefix_end("handles/"), 1)[0]}


def test_two_removals_of_the_same_node_release_each_record_once() -> None:
    # two daemons plan from the same snapshot and both carry it out: the first releases everything, the second
    # finds every compare failed and releases nothing twice
    store = MemoryStore()
    node_with(store, "a", 1)
    node_with(store, "b", 20)
    first, second = plan_removal(store.dump(), "b"), plan_removal(store.dump(), "b")
    one, two = remove_node(store, first), remove_node(store, second)
    assert (one.released, one.blocks_deleted) == (20, 2)
    assert len(one.released_handles) == 20 and "n1/b0/eth0=10.1.2.16/26" in one.released_handles
    assert (two.released, two.blocks_deleted) == (0, 0) and len(two.skipped) == 22
    assert handles_of(store) == {"a0"} and check_snapshot(store.dump()) == []


def test_a_node_that_comes_back_during_its_removal_keeps_what_is_left() -> None:
    # the plan was read with no lease; the node's daemon then writes nodes/b again: no release may follow
    store = MemoryStore()
    node_with(store, "a", 1)
    node_with(store, "b", 3)
    plan = plan_removal(store.dump(), "b")
    store.txn([], [Put("nodes/b", b"{}")], [], 1)
    result = remove_node(store, plan)
    assert result.released == 0 and result.blocks_deleted == 0
    assert handles_of(store) == {"a0", "b0", "b1", "b2"}
