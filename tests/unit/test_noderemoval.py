"""Automatic removal of nodes deleted from the Kubernetes API (ipamd/noderemoval.py, issue 8 item 5): the decision
(docs/configuration.md "Kubernetes mode") and the loop on the in-memory store. A node is removed only when the node
view saw it deleted at least the grace period ago *and* its lease record ``nodes/<node>`` is gone; a paused node
(lease expired, still in the API) keeps everything (docs/etcd-layout.md invariant 5). The same with real daemons,
real etcd and the fake API server: tests/integration/test_kube_node_removal.py."""

from __future__ import annotations

import pytest

from ipamd.check import check_snapshot
from ipamd.domain.cni import Attachment
from ipamd.domain.netconf import parse_netconf
from ipamd.kube import NodeInfo, NodeSnapshot
from ipamd.metrics import Metrics
from ipamd.noderemoval import NodeRemover, decide, due
from ipamd.service import IpamService
from ipamd.store.base import Delete, Put, prefix_end
from ipamd.store.memory import MemoryStore

GRACE = 60.0
NOW = 1000.0


def node(name: str) -> NodeInfo:
    return NodeInfo(name, "uid-" + name, (), True, False)


def view(nodes: tuple[str, ...] = ("a",), deleted: dict[str, float] | None = None,
         synced: bool = True) -> NodeSnapshot:
    """A node view's snapshot: ``nodes`` exist, ``deleted`` maps a name to the monotonic time its deletion was seen."""
    return NodeSnapshot({n: node(n) for n in nodes}, dict(deleted or {}), synced, "7", NOW)


@pytest.mark.parametrize("snap, name, lease_alive, grace, remove, why", [
    # deleted long enough and the lease gone: the one case that removes
    (view(deleted={"b": NOW - 61}), "b", False, GRACE, True, "has expired"),
    # the lease is alive: its daemon still runs (or runs again), whatever the API says
    (view(deleted={"b": NOW - 3600}), "b", True, GRACE, False, "is alive"),
    # deleted too recently
    (view(deleted={"b": NOW - 59}), "b", False, GRACE, False, "within the grace period"),
    # exactly the grace period: due
    (view(deleted={"b": NOW - 60}), "b", False, GRACE, True, "has expired"),
    # the view has not listed yet, or is not current
    (None, "b", False, GRACE, False, "has not listed"),
    (view(deleted={"b": NOW - 3600}, synced=False), "b", False, GRACE, False, "not current"),
    # a node the view never saw go: still in the API (a paused node, invariant 5), or never seen at all
    (view(nodes=("a", "b")), "b", False, GRACE, False, "no deletion of node b was seen"),
    (view(), "ghost", False, GRACE, False, "no deletion of node ghost was seen"),
    # deleted, then created again under the same name
    (view(nodes=("a", "b"), deleted={"b": NOW - 3600}), "b", False, GRACE, False, "no deletion"),
    # this daemon's own node, even deleted with its lease gone
    (view(nodes=(), deleted={"a": NOW - 3600}), "a", False, GRACE, False, "own node"),
    # automatic removal off
    (view(deleted={"b": NOW - 3600}), "b", False, 0.0, False, "off"),
    # the lease not read
    (view(deleted={"b": NOW - 3600}), "b", None, GRACE, False, "has not been read"),
])
def test_decide(snap: NodeSnapshot | None, name: str, lease_alive: bool | None, grace: float, remove: bool,
                why: str) -> None:
    verdict = decide(snap, name, "a", grace, lease_alive, NOW)
    assert verdict.remove is remove and why in verdict.reason, verdict


def test_due_lists_only_observed_deletions_past_the_grace_period() -> None:
    snap = view(nodes=("a", "c"), deleted={"a": NOW - 999, "b": NOW - 61, "c": NOW - 999, "d": NOW - 1, "e": 0.0})
    assert due(snap, "a", GRACE, NOW) == ["b", "e"]
    assert due(view(deleted={"b": 0.0}, synced=False), "a", GRACE, NOW) == []
    assert due(None, "a", GRACE, NOW) == []
    assert due(snap, "a", 0.0, NOW) == []


# -- the loop on the in-memory store -----------------------------------------------------------------------------------

NC = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/26"}]],
                                           "blockSize": 28}}, "n1")


def daemon(store: MemoryStore, name: str, count: int) -> IpamService:
    """Node ``name`` with its lease record and ``count`` attachments ``<name>0..``."""
    svc = IpamService(store, name)
    svc.sync()
    svc.set_ready()
    store.txn([], [Put("nodes/" + name, b"{}")], [], 1)
    for i in range(count):
        svc.add(Attachment("n1", "%s%d" % (name, i), "eth0"), NC)
    return svc


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def handles_of(store: MemoryStore) -> set[str]:
    return {kv.key.split("/")[2] for kv in store.read("handles/", prefix_end("handles/"), 1)[0]}


def block_owners(store: MemoryStore) -> list[str]:
    return sorted(kv.value.decode() for kv in store.read("blocks/", prefix_end("blocks/"), 1)[0])


def test_remover_waits_for_the_grace_period_and_the_lease() -> None:
    store = MemoryStore()
    daemon(store, "a", 3)
    daemon(store, "b", 17)  # two blocks of b
    snap = [view(nodes=("a", "b"))]
    clock = Clock(NOW)
    metrics = Metrics()
    remover = NodeRemover(store, "a", GRACE, lambda: snap[0], metrics=metrics, clock=clock)
    before = handles_of(store)
    # b still in the API, lease expired: paused, keeps everything (invariant 5), however long
    store.txn([], [Delete("nodes/b")], [], 1)
    clock.now += 3600
    remover.round()
    assert handles_of(store) == before
    # b deleted from the API (seen now), lease alive: nothing, before or after the grace period
    store.txn([], [Put("nodes/b", b"{}")], [], 1)
    snap[0] = view(nodes=("a",), deleted={"b": clock.now})
    clock.now += GRACE + 1
    remover.round()
    assert handles_of(store) == before
    # the lease expires: the next round removes b (no retry delay after a live lease)
    store.txn([], [Delete("nodes/b")], [], 1)
    clock.now += 1
    assert remover.round() == 10.0
    assert handles_of(store) == {"a0", "a1", "a2"}
    assert all('"a"' in owner for owner in block_owners(store)), block_owners(store)
    assert metrics.node_removals._value.get() == 1
    assert metrics.node_removal_released._value.get() == 17
    assert metrics.node_removal_blocks_deleted._value.get() == 2
    assert check_snapshot(store.dump()) == []
    # done: later rounds read nothing from etcd (the node's entry is finished)
    reads: list[str] = []
    real_read = store.read
    store.read = lambda key, end, timeout: reads.append(key) or real_read(key, end, timeout)  # type: ignore
    clock.now += 3600
    remover.round()
    assert reads == [] and metrics.node_removals._value.get() == 1


def test_remover_never_removes_its_own_node_nor_one_seen_too_recently() -> None:
    store = MemoryStore()
    daemon(store, "a", 2)
    daemon(store, "b", 2)
    store.txn([], [Delete("nodes/a"), Delete("nodes/b")], [], 1)
    clock = Clock(NOW)
    remover = NodeRemover(store, "a", GRACE, lambda: view(nodes=(), deleted={"a": NOW - 3600, "b": NOW - 30}),
                          clock=clock)
    remover.round()
    assert handles_of(store) == {"a0", "a1", "b0", "b1"}
    clock.now += 31
    remover.round()
    assert handles_of(store) == {"a0", "a1"}


def test_remover_with_an_unsynced_view_removes_nothing() -> None:
    store = MemoryStore()
    daemon(store, "a", 1)
    daemon(store, "b", 1)
    store.txn([], [Delete("nodes/b")], [], 1)
    for snap in (None, view(deleted={"b": 0.0}, synced=False)):
        NodeRemover(store, "a", GRACE, lambda s=snap: s, clock=Clock(NOW)).round()  # type: ignore[misc]
        assert handles_of(store) == {"a0", "b0"}
