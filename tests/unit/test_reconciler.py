"""The reconciler (ipamd.reconciler) on the in-memory store: this node's attachments whose owner is gone are released
only after a second observation past the grace period, never one created after the snapshot, never one judged
"unknown"; broken records of its own blocks are removed (B52); a dry run changes nothing. The same against real
etcd and real daemons: tests/integration/test_reconciler_etcd.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipamd.check import check_snapshot
from ipamd.domain.cni import Attachment
from ipamd.domain.model import HandleRecord, IpRecord, handle_key, ip_key
from ipamd.domain.netconf import parse_netconf
from ipamd.reconciler import ALIVE, GONE, UNKNOWN, NetnsCheck
from ipamd.service import IpamService
from ipamd.store.base import Put, prefix_end
from ipamd.store.memory import MemoryStore

NC = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.0.0/16"}]],
                                           "blockSize": 26}}, "n1")


def daemon(store: MemoryStore, node: str = "A", grace: float = 0.0) -> IpamService:
    svc = IpamService(store, node, reconcile_interval=60, reconcile_grace=grace)
    svc.sync()
    svc.set_ready()
    return svc


def add(svc: IpamService, cid: str, netns: str = "") -> None:
    svc.add(Attachment("n1", cid, "eth0"), NC, netns=netns)


def held(store: MemoryStore) -> set[str]:
    return {kv.key.rsplit("/", 2)[1] for kv in store.read("handles/", prefix_end("handles/"), 1)[0]}


def test_netns_check_verdicts(tmp_path: Path) -> None:
    ns = tmp_path / "ns"
    ns.touch()
    check = NetnsCheck()
    rec = HandleRecord("n1", "c", "eth0", "A", (), str(ns), {}, netns_seen=True)
    assert check.verdict(rec)[0] == ALIVE
    ns.unlink()
    assert check.verdict(rec) == (GONE, "netns %s is gone" % ns)
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
