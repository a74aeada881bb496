"""The invariant checker (ipamd.check.check_snapshot) on hand-built snapshots of the key space.

Invariants (ipamd/check.py, docs/etcd-layout.md): 1 = address records and handles name each other; 2 = every address is
usable in its pool and lies in a block with an owner; 3 = no attachment holds two addresses of one pool, blocks of
a pool do not overlap.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from ipamd.check import Violation, check_snapshot
from ipamd.domain.addr import Block
from ipamd.domain.model import (
    Allocation,
    HandleRecord,
    block_key,
    encode_block_record,
    encode_ip_record,
    handle_key,
    ip_key,
    pool_key,
)
from ipamd.store.base import KV

POOL = "net1/0a010200-24"
POOL6 = "net1/20010db8000000000000000000000000-64"


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


class Snapshot:
    """Builds key-values the way the service writes them (ipamd/service.py _pool_spec/_commit_add)."""

    def __init__(self) -> None:
        self.kv: dict[str, bytes] = {}

    def pool(self, pool_id: str = POOL, subnet: str = "10.1.2.0/24", start: str = "10.1.2.1",
             end: str = "10.1.2.254", gateway: str | None = "10.1.2.1", exclude: list[str] | None = None) -> None:
        spec = {"network": pool_id.partition("/")[0], "subnet": subnet, "rangeStart": start, "rangeEnd": end,
                "gateway": gateway, "blockSize": 26, "exclude": exclude or []}
        self.kv[pool_key(pool_id)] = json.dumps(spec).encode()

    def block(self, first: str, prefix: int = 26, node: str = "n1", pool_id: str = POOL) -> None:
        addr = ipaddress.ip_address(first)
        self.kv[block_key(pool_id, Block(addr.version, int(addr), prefix))] = encode_block_record(node)

    def attach(self, cid: str, addresses: list[tuple[str, str]], *, ip_records: bool = True,
               handle: bool = True, if_name: str = "eth0") -> str:
        """``addresses`` = [(pool id, "a.b.c.d/prefix")]; writes the handle and (optionally) the ip records."""
        allocs = []
        for pool_id, cidr in addresses:
            iface = ipaddress.ip_interface(cidr)
            allocs.append(Allocation(pool_id, iface.version, int(iface.ip), iface.network.prefixlen, None))
        rec = HandleRecord("net1", cid, if_name, "n1", tuple(allocs))
        if handle:
            self.kv[handle_key(rec.handle)] = rec.encode()
        if ip_records:
            for a in allocs:
                self.kv[a.ip_key] = encode_ip_record(rec.handle, "n1", a.pool_id)
        return rec.handle

    def kvs(self) -> list[KV]:
        """Revisions in the order the daemon writes: pool records first (the first claim), then the rest."""
        order = sorted(self.kv.items(), key=lambda kv: (not kv[0].startswith("pools/"), kv[0]))
        return [KV(k, v, i + 1, i + 1, 1) for i, (k, v) in enumerate(order)]


def consistent() -> Snapshot:
    s = Snapshot()
    s.pool()
    s.pool(POOL6, "2001:db8::/64", "2001:db8::1", "2001:db8::ffff:ffff:ffff:ffff", "2001:db8::1")
    s.block("10.1.2.0")
    s.block("10.1.2.64", node="n2")
    s.block("2001:db8::", 122, pool_id=POOL6)
    s.attach("c1", [(POOL, "10.1.2.2/24"), (POOL6, "2001:db8::2/64")])
    s.attach("c2", [(POOL, "10.1.2.3/24")])
    s.attach("c3", [(POOL, "10.1.2.65/24")])
    s.attach("c1", [(POOL, "10.1.2.4/24")], if_name="net1")
    return s


def invariants(violations: list[Violation]) -> set[int]:
    return {v.invariant for v in violations}


def test_consistent_snapshot_has_no_violations() -> None:
    assert check_snapshot(consistent().kvs()) == []


def test_empty_snapshot_has_no_violations() -> None:
    assert check_snapshot([]) == []


def test_unrelated_keys_ignored() -> None:
    kvs = [*consistent().kvs(), KV("nodes/n1", b'{"x":1}', 1, 1, 1)]
    assert check_snapshot(kvs) == []


def test_ip_record_whose_handle_is_missing() -> None:
    s = consistent()
    s.attach("ghost", [(POOL, "10.1.2.10/24")], handle=False)
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {1}
    assert violations[0].key == ip_key("net1", 4, ip("10.1.2.10"))
    assert "net1/ghost/eth0" in violations[0].message


def test_ip_record_naming_a_handle_that_does_not_list_it() -> None:
    s = consistent()
    s.kv[ip_key("net1", 4, ip("10.1.2.11"))] = encode_ip_record("net1/c2/eth0", "n1", POOL)
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {1}
    assert violations[0].key == ip_key("net1", 4, ip("10.1.2.11"))


def test_handle_listing_an_address_without_record() -> None:
    s = consistent()
    h = s.attach("c9", [(POOL, "10.1.2.12/24")], ip_records=False)
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {1}
    assert violations[0].key == handle_key(h)
    assert "10.1.2.12/24" in violations[0].message


def test_handle_listing_an_address_whose_record_names_another_handle() -> None:
    s = consistent()
    h = s.attach("c9", [(POOL, "10.1.2.13/24")], ip_records=False)
    s.kv[ip_key("net1", 4, ip("10.1.2.13"))] = encode_ip_record("net1/c2/eth0", "n1", POOL)
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {1}
    assert handle_key(h) in {v.key for v in violations}


@pytest.mark.parametrize("address", [
    "10.1.2.1/24",     # the gateway
    "10.1.2.0/24",     # the network address
])
def test_address_outside_usable_set(address: str) -> None:
    s = consistent()
    s.attach("c9", [(POOL, address)])
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {2}
    assert [v.key for v in violations] == [ip_key("net1", 4, int(ipaddress.ip_interface(address).ip))]
    assert "not usable" in violations[0].message


def test_address_outside_range_bounds() -> None:
    s = Snapshot()
    s.pool(start="10.1.2.10", end="10.1.2.20")
    s.block("10.1.2.0")
    s.attach("c1", [(POOL, "10.1.2.30/24")])
    assert invariants(check_snapshot(s.kvs())) == {2}


def test_address_in_excluded_span() -> None:
    s = Snapshot()
    s.pool(exclude=["10.1.2.5-10.1.2.9"])
    s.block("10.1.2.0")
    s.attach("c1", [(POOL, "10.1.2.10/24")])
    assert check_snapshot(s.kvs()) == []
    s.attach("c2", [(POOL, "10.1.2.7/24")])
    assert invariants(check_snapshot(s.kvs())) == {2}


def test_broadcast_address_not_usable() -> None:
    s = Snapshot()
    s.pool(end="10.1.2.255")   # even a pool record with a bound on the broadcast: never usable
    s.block("10.1.2.192")
    s.attach("c1", [(POOL, "10.1.2.255/24")])
    assert invariants(check_snapshot(s.kvs())) == {2}


def test_address_in_no_block() -> None:
    s = consistent()
    s.attach("c9", [(POOL, "10.1.2.200/24")])   # no block covers .192/26
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {2}
    assert "block" in violations[0].message


def test_address_in_a_block_without_owner() -> None:
    s = consistent()
    s.block("10.1.2.128", node="")
    s.attach("c9", [(POOL, "10.1.2.130/24")])
    assert invariants(check_snapshot(s.kvs())) == {2}


def test_address_in_a_block_of_another_pool() -> None:
    s = consistent()
    other = "net1/0a010300-24"
    s.pool(other, "10.1.3.0/24", "10.1.3.1", "10.1.3.254", "10.1.3.1")
    s.block("10.1.2.192", pool_id=other)   # a block key under the wrong pool does not count
    s.attach("c9", [(POOL, "10.1.2.200/24")])
    assert 2 in invariants(check_snapshot(s.kvs()))


def test_address_of_a_pool_without_pool_record() -> None:
    s = consistent()
    other = "net1/0a010300-24"
    s.block("10.1.3.0", pool_id=other)
    s.attach("c9", [(other, "10.1.3.5/24")])
    assert invariants(check_snapshot(s.kvs())) == {2}


def test_two_addresses_of_one_pool_in_a_handle() -> None:
    s = consistent()
    h = s.attach("c9", [(POOL, "10.1.2.20/24"), (POOL, "10.1.2.21/24")])
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {3}
    assert [v.key for v in violations] == [handle_key(h)]


def test_overlapping_blocks() -> None:
    s = consistent()
    s.block("10.1.2.0", prefix=28, node="n3")    # inside 10.1.2.0/26
    violations = check_snapshot(s.kvs())
    assert invariants(violations) == {3}


def test_handle_record_naming_another_attachment() -> None:
    s = consistent()
    rec = HandleRecord("net1", "cX", "eth0", "n1", ())
    s.kv[handle_key("net1/cY/eth0")] = rec.encode()
    assert invariants(check_snapshot(s.kvs())) == {1}


@pytest.mark.parametrize("key, value", [
    (handle_key("net1/c9/eth0"), b"not json"),
    (ip_key("net1", 4, ip("10.1.2.50")), b"{"),
    (block_key(POOL, Block(4, ip("10.1.2.128"), 26)), b"]"),
])
def test_undecodable_records_reported(key: str, value: bytes) -> None:
    s = consistent()
    s.kv[key] = value
    violations = check_snapshot(s.kvs())
    assert key in {v.key for v in violations}


def test_violation_str() -> None:
    v = Violation(2, "ips/x", "msg")
    assert str(v) == "INV2 ips/x: msg"


def test_snapshot_helper_matches_model_layout() -> None:
    # The helper writes exactly the keys of the documented layout.
    s = consistent()
    prefixes: dict[str, Any] = {}
    for key in s.kv:
        prefixes.setdefault(key.split("/", 1)[0], 0)
    assert set(prefixes) == {"pools", "blocks", "ips", "handles"}


# --- B51 warnings, leaks, repairs (ipamd.check.analyse / report / repairs_of / apply_repair) --------------------------

from ipamd.check import Finding, Repair, analyse, apply_repair, repairs_of, report  # noqa: E402
from ipamd.store.memory import MemoryStore  # noqa: E402


def load(snapshot: Snapshot) -> MemoryStore:
    """The snapshot written into a memory store in the same order (pools first), so revisions match."""
    from ipamd.store.base import Put

    store = MemoryStore()
    for kv in snapshot.kvs():
        store.txn([], [Put(kv.key, kv.value)], [], 1)
    return store


def test_b51_address_no_longer_usable_after_a_narrowing_is_a_warning() -> None:
    """B51: the pool record changed (an exclude added) after the address was allocated: a warning with the holder,
    not a violation; an address allocated after the change that is not usable stays a violation."""
    s = consistent()
    kvs = s.kvs()
    # the pool record is rewritten after every address record (the narrowing): highest revision
    narrowed = [KV(kv.key, kv.value if kv.key != "pools/" + POOL else json.dumps(
        {**json.loads(kv.value), "exclude": ["10.1.2.2-10.1.2.3"]}).encode(), kv.create_revision,
        len(kvs) + 1 if kv.key == "pools/" + POOL else kv.mod_revision, 1) for kv in kvs]
    findings = analyse(narrowed)
    warnings = [f for f in findings if f.severity == "warning"]
    assert {f.key for f in warnings} == {ip_key("net1", 4, ip("10.1.2.2")), ip_key("net1", 4, ip("10.1.2.3"))}
    assert all(f.kind == "not-usable-since-narrowed" and f.repair is None for f in warnings)
    assert check_snapshot(narrowed) == []


def test_block_of_a_departed_node_holding_nothing_is_a_repairable_leak() -> None:
    s = consistent()
    s.block("10.1.2.128", node="gone")
    s.kv["nodes/n1"] = b"{}"
    s.kv["nodes/n2"] = b"{}"
    leaks = [f for f in analyse(s.kvs()) if f.severity == "leak"]
    assert [f.key for f in leaks] == [block_key(POOL, Block(4, ip("10.1.2.128"), 26))]
    assert leaks[0].repair is not None and leaks[0].repair.deletes == (leaks[0].key,)
    # the live nodes' blocks, used or not, are never leaks; nor a departed node's block that still holds an address
    s.attach("c7", [(POOL, "10.1.2.130/24")])
    assert [f for f in analyse(s.kvs()) if f.severity == "leak"] == []


def test_repairs_remove_exactly_the_broken_records() -> None:
    """B52: an address record without its handle, and a handle whose address records are missing; the live
    allocations around them are untouched and the store is clean afterwards."""
    s = consistent()
    s.attach("ghost", [(POOL, "10.1.2.10/24")], handle=False)
    s.attach("hollow", [(POOL, "10.1.2.11/24"), (POOL6, "2001:db8::11/64")], ip_records=False)
    s.kv[ip_key("net1", 6, ip("2001:db8::11"))] = encode_ip_record("net1/hollow/eth0", "n1", POOL6)
    store = load(s)
    doc = report(store.dump(), store.revision, "/p/")
    repairs = repairs_of(doc, max_age=60)
    assert sorted(k for k, _ in repairs) == sorted([ip_key("net1", 4, ip("10.1.2.10")),
                                                    handle_key("net1/hollow/eth0")])
    before = {kv.key for kv in store.dump()}
    for _, repair in repairs:
        assert apply_repair(store, repair, 1)
    after = {kv.key for kv in store.dump()}
    assert before - after == {ip_key("net1", 4, ip("10.1.2.10")), handle_key("net1/hollow/eth0"),
                              ip_key("net1", 6, ip("2001:db8::11"))}
    assert check_snapshot(store.dump()) == []


def test_repair_is_skipped_when_the_record_changed_since_the_report() -> None:
    """Each delete compares what the report read: a record rewritten since, or a handle that appeared since (a late
    ADD committed after the snapshot), makes the repair do nothing (decision 2)."""
    from ipamd.store.base import Put

    s = consistent()
    s.attach("ghost", [(POOL, "10.1.2.10/24")], handle=False)
    store = load(s)
    ((key, repair),) = repairs_of(report(store.dump(), store.revision, "/p/"), max_age=60)
    store.txn([], [Put(handle_key("net1/ghost/eth0"), b"{}")], [], 1)  # the handle appears
    assert not apply_repair(store, repair, 1)
    assert store.read(key, None, 1)[0]
    ((key, repair),) = repairs_of(report(s.kvs(), store.revision, "/p/"), max_age=60)
    fresh = load(s)
    fresh.txn([], [Put(key, encode_ip_record("net1/ghost/eth0", "n1", POOL))], [], 1)  # rewritten since
    assert not apply_repair(fresh, repair, 1)
    assert fresh.read(key, None, 1)[0]


@pytest.mark.parametrize("doc, why", [
    ({"version": 9}, "version"),
    ({"version": 1}, "creation time"),
    ({"version": 1, "created_unix": 0.0, "findings": []}, "old"),
])
def test_reports_refused(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError) as info:
        repairs_of(doc, max_age=600)
    assert why in str(info.value)


def test_warnings_are_never_repaired_even_if_a_report_says_so() -> None:
    import time

    forged = {"version": 1, "created_unix": time.time(), "findings": [
        {"severity": "warning", "key": "ips/x", "repair": {"compares": [], "deletes": ["ips/x"]}}]}
    assert repairs_of(forged, max_age=60) == []


def test_repair_json_round_trip_and_malformed() -> None:
    from ipamd.store.base import Compare

    r = Repair((Compare("a", "mod", "==", 3), Compare("b/", "version", "==", 0, "b0")), ("a",))
    assert Repair.from_json(json.loads(json.dumps(r.to_json()))) == r
    for bad in ({"compares": [], "deletes": []}, {"compares": [["a", "value", "==", 1, None]], "deletes": ["a"]},
                {"deletes": ["a"]}):
        with pytest.raises(ValueError):
            Repair.from_json(bad)


def test_finding_text() -> None:
    assert str(Finding(0, "k", "m", severity="leak")) == "LEAK k: m"
    assert str(Finding(2, "k", "m", severity="warning")) == "WARN k: m"
