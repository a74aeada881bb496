"""The service on the in-memory store: the compare-and-swap loop, failure decoding, retries, faults, GC — in
seconds. Each scenario keeps its real-etcd test in tests/integration (named in the docstring); this tier makes the
policy cheap to change. Every test ends with the invariant check (``assert_consistent``).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

import pytest

from ipamd.check import check_snapshot
from ipamd.domain.addr import Block
from ipamd.domain.cni import Attachment
from ipamd.domain.errors import AddressUnavailable, PoolExhausted, TryAgainLater
from ipamd.domain.model import HandleRecord, IpRecord, block_key, encode_block_record, handle_key, ip_key
from ipamd.domain.netconf import NetConf, parse_netconf
from ipamd.service import IpamService
from ipamd.store.base import Put, prefix_end
from ipamd.store.memory import MemoryStore


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def netconf(*subnets: str, name: str = "n1", **ipam: Any) -> NetConf:
    ranges = [[{"subnet": s}] for s in (subnets or ("10.1.2.0/24",))]
    return parse_netconf({"name": name, "ipam": {"type": "ipamd-cni", "ranges": ranges, "blockSize": 28,
                                                 **ipam}}, name)


def service(store: MemoryStore, node: str = "A", **kw: Any) -> IpamService:
    kw.setdefault("request_timeout", 2.0)
    kw.setdefault("etcd_timeout", 0.5)
    svc = IpamService(store, node, **kw)
    svc.sync()
    svc.set_ready()
    return svc


def att(cid: str, network: str = "n1", if_name: str = "eth0") -> Attachment:
    return Attachment(network, cid, if_name)


def assert_consistent(store: MemoryStore) -> None:
    violations = check_snapshot(store.dump())
    assert not violations, "\n".join(map(str, violations))


def cidrs(allocations: list[Any]) -> list[str]:
    return [a.cidr for a in allocations]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


# --- steady state -------------------------------------------------------------------------------------------------

def test_first_address_and_one_txn_per_add_and_del(store: MemoryStore) -> None:
    """docs/benchmarks.md: one transaction per steady-state ADD and DEL, no reads (integration: test_daemon)."""
    svc = service(store)
    nc = netconf()
    assert cidrs(svc.add(att("c0"), nc)) == ["10.1.2.2/24"]
    before = dict(store.calls)
    for i in range(1, 10):
        svc.add(att("c%d" % i), nc)
    for i in range(10):
        svc.delete(att("c%d" % i))
    assert store.calls["txn"] - before["txn"] == 19
    assert store.calls.get("read", 0) == before.get("read", 0)
    assert store.count("ips/", prefix_end("ips/"), 1) == 0
    assert_consistent(store)


def test_repeated_add_returns_the_same_address(store: MemoryStore) -> None:
    """T42, B06: a retried ADD never consumes a second address."""
    svc = service(store)
    first = svc.add(att("c1"), netconf())
    assert svc.add(att("c1"), netconf()) == first
    assert store.count("ips/", prefix_end("ips/"), 1) == 1
    assert_consistent(store)


# --- conflicts, failure reads and retries ----------------------------------------------------------------------------

def test_conflict_learned_from_failure_reads(store: MemoryStore) -> None:
    """Another node takes the address we picked between plan and commit: the failure branch tells us, the retry
    takes the next one, and no extra read is sent (integration: test_field_concurrency)."""
    a = service(store, "A")
    nc = netconf()
    a.add(att("c1"), nc)  # claims 10.1.2.0/28 and takes .2

    def thief() -> None:
        rec = HandleRecord("n1", "other", "eth0", "B", ())
        store.txn([], [Put(ip_key("n1", 4, ip("10.1.2.3")), IpRecord(rec.handle, "B", nc.range_sets[0][0].id)
                           .encode()), Put(handle_key(rec.handle), rec.encode())], [], 1)

    store.inject("txn", "action", action=thief)
    reads = store.calls.get("read", 0)
    assert cidrs(a.add(att("c2"), nc)) == ["10.1.2.4/24"]
    assert a.metrics.cas_conflicts.labels("ADD")._value.get() == 1
    assert store.calls.get("read", 0) == reads
    store.txn([], [Put(ip_key("n1", 4, ip("10.1.2.3")), b"")], [], 1)  # (leave the thief's records consistent)


def test_outcome_unknown_then_the_handle_answers(store: MemoryStore) -> None:
    """B06 / docs/architecture.md "Unknown outcome": the ADD committed but the answer was lost; the retry's compare on
    the handle fails and returns it, so the caller gets the committed address and nothing is doubled."""
    svc = service(store)
    store.inject("txn", "unknown")
    assert cidrs(svc.add(att("c1"), netconf())) == ["10.1.2.2/24"]
    assert store.count("ips/", prefix_end("ips/"), 1) == 1
    assert store.calls["txn"] == 3  # sync read + the lost one + the one that read the handle
    assert_consistent(store)


def test_unavailable_until_the_deadline_is_11_and_nothing_written(store: MemoryStore) -> None:
    """B22: etcd refuses until the request's deadline: code 11 naming etcd, no record."""
    svc = service(store, request_timeout=0.3)
    fault = store.inject("txn", "unavailable", times=-1)
    t0 = time.monotonic()
    with pytest.raises(TryAgainLater) as info:
        svc.add(att("c1"), netconf())
    assert "etcd unavailable" in info.value.msg
    assert time.monotonic() - t0 < 1.5
    assert fault.hits >= 2  # retried with backoff, not given up at once
    store.clear_faults()
    assert store.count("", "\xff", 1) == 0
    with pytest.raises(TryAgainLater):
        store.inject("txn", "unavailable", times=-1)
        svc.delete(att("c1"))


def test_unavailable_for_a_while_then_success(store: MemoryStore) -> None:
    svc = service(store)
    store.inject("txn", "unavailable", times=3)
    assert cidrs(svc.add(att("c1"), netconf())) == ["10.1.2.2/24"]
    assert_consistent(store)


def test_claim_lost_is_learned_from_the_failure_reads(store: MemoryStore) -> None:
    """B02/B49: node B claims the block A planned to claim between plan and commit. A's failure read returns the
    pool's block list; the retry claims another block, with no extra read (integration: test_field_concurrency)."""
    a = service(store, "A")
    nc = netconf()
    pool_id = nc.range_sets[0][0].id

    def b_claims() -> None:
        store.txn([], [Put(block_key(pool_id, Block(4, ip("10.1.2.0"), 28)), encode_block_record("B"))], [], 1)

    store.inject("txn", "action", action=b_claims)
    reads = store.calls.get("read", 0)
    got = a.add(att("c1"), nc)
    block = ipaddress.ip_network(got[0].cidr.split("/")[0] + "/28", strict=False)
    assert str(block) != "10.1.2.0/28"
    assert store.calls.get("read", 0) == reads
    owners = {kv.key.rsplit("/", 1)[1]: kv.value for kv in store.read("blocks/", prefix_end("blocks/"), 1)[0]}
    assert owners["0a010200-28"] == encode_block_record("B")
    assert_consistent(store)


def test_one_claim_in_flight_per_pool(store: MemoryStore) -> None:
    """B49: concurrent ADDs of one daemon in a fresh pool wait for the claim in flight instead of racing it."""
    svc = service(store)
    nc = netconf()
    store.inject("txn", "delay", seconds=0.2, times=1)
    barrier = threading.Barrier(8)
    out: list[str] = []

    def one(i: int) -> None:
        barrier.wait()
        out.extend(cidrs(svc.add(att("c%d" % i), nc)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out, key=lambda c: ip(c.split("/")[0])) == ["10.1.2.%d/24" % i for i in range(2, 10)]
    assert svc.metrics.cas_conflicts.labels("ADD")._value.get() == 0
    assert svc.metrics.etcd_txns.labels("ADD")._value.get() == 8  # one transaction per ADD, none lost to a race
    assert store.calls["txn"] <= 1 + 8  # the sync read, and at most one round trip per ADD (some may share one)
    assert_consistent(store)


def test_requested_address_taken_is_101(store: MemoryStore) -> None:
    a, b = service(store, "A"), service(store, "B")
    nc = netconf()
    a.add(att("c1"), nc)
    pool = nc.range_sets[0][0]
    with pytest.raises(AddressUnavailable):
        b.add(att("c2"), nc, requested={0: (pool, ip("10.1.2.2"))})
    assert cidrs(b.add(att("c3"), nc, requested={0: (pool, ip("10.1.2.9"))})) == ["10.1.2.9/24"]
    assert_consistent(store)


def test_borrow_when_every_block_is_claimed(store: MemoryStore) -> None:
    """B34, decision 5: a /27 of /28 blocks; B owns one, A the other and fills it; A then borrows from B's block."""
    a, b = service(store, "A"), service(store, "B")
    nc = netconf("10.1.2.0/27")
    b.add(att("b1"), nc)
    got = [a.add(att("a%d" % i), nc)[0].cidr for i in range(16)]
    assert got[-1] == "10.1.2.3/27"  # A's block .16/28 holds 15 (.31 is broadcast); the 16th is borrowed
    assert_consistent(store)


def test_exhausted_is_100_with_details(store: MemoryStore) -> None:
    svc = service(store)
    nc = netconf("10.1.2.0/28")
    for i in range(13):
        svc.add(att("c%d" % i), nc)
    with pytest.raises(PoolExhausted) as info:
        svc.add(att("full"), nc)
    assert "13 of 13" in info.value.details
    assert_consistent(store)


def test_dual_stack_all_or_nothing(store: MemoryStore) -> None:
    """A dual-stack ADD whose IPv6 range is full writes nothing for IPv4 either (docs/etcd-layout.md)."""
    svc = service(store)
    nc6 = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "fd00::/124"}]],
                                                "blockSize6": 124}}, "n1")
    for i in range(14):  # fd00::2 - fd00::f: the whole /124 but the network address and the gateway
        svc.add(att("six%d" % i), nc6)
    both = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/24"}],
                                                                                  [{"subnet": "fd00::/124"}]],
                                                 "blockSize6": 124}}, "n1")
    with pytest.raises(PoolExhausted):
        svc.add(att("dual"), both)
    assert store.count("ips/n1/v4/", prefix_end("ips/n1/v4/"), 1) == 0
    assert store.read(handle_key("n1/dual/eth0"), None, 1)[0] == ()
    svc.delete(att("six0"))
    assert cidrs(svc.add(att("dual"), both)) == ["10.1.2.2/24", "fd00::2/124"]
    assert_consistent(store)


# --- DEL ----------------------------------------------------------------------------------------------------------

def test_del_uncached_takes_two_txns_and_unknown_is_idempotent(store: MemoryStore) -> None:
    a = service(store, "A")
    a.add(att("c1"), netconf())
    b = service(store, "B")
    txns = store.calls["txn"]
    assert b.delete(att("c1")) == 1
    assert store.calls["txn"] - txns == 2
    assert b.delete(att("c1")) == 0
    assert b.delete(att("never")) == 0
    assert_consistent(store)


def test_del_outcome_unknown(store: MemoryStore) -> None:
    svc = service(store)
    svc.add(att("c1"), netconf())
    store.inject("txn", "unknown")
    svc.delete(att("c1"))
    assert store.count("", "\xff", 1) == 2  # the pool and block records stay
    assert_consistent(store)


def test_del_of_an_undecodable_handle_removes_the_key(store: MemoryStore) -> None:
    svc = service(store)
    store.txn([], [Put(handle_key("n1/junk/eth0"), b"not json")], [], 1)
    svc.delete(att("junk"))
    assert store.read(handle_key("n1/junk/eth0"), None, 1)[0] == ()


def test_released_address_is_reused_by_this_node(store: MemoryStore) -> None:
    svc = service(store)
    nc = netconf()
    for i in range(3):
        svc.add(att("c%d" % i), nc)
    svc.delete(att("c0"))
    assert cidrs(svc.add(att("again"), nc)) == ["10.1.2.2/24"]


def test_handle_cache_is_bounded(store: MemoryStore) -> None:
    svc = service(store, handle_limit=10)
    nc = netconf("10.1.0.0/16")
    for i in range(50):
        svc.add(att("c%d" % i), nc)
    assert svc.cache.handle_count() == 10
    for i in range(50):
        svc.delete(att("c%d" % i))  # evicted ones take two transactions, and still work
    assert store.count("ips/", prefix_end("ips/"), 1) == 0
    assert_consistent(store)


# --- GC (B15, B24, B47) --------------------------------------------------------------------------------------------

def test_gc_batches_under_the_op_limit(store: MemoryStore) -> None:
    svc = service(store)
    nc = netconf("10.1.0.0/16")
    for i in range(300):
        svc.add(att("c%d" % i), nc)
    txns = store.calls["txn"]
    assert svc.gc("n1", {("c0", "eth0")}) == 299
    assert store.calls["txn"] - txns == 5  # 299 * (1 ip + 1 handle) = 598 deletes in batches of <= 120 ops
    assert store.count("handles/", prefix_end("handles/"), 1) == 1
    assert_consistent(store)


def test_gc_splits_batches_etcd_refuses_for_too_many_operations() -> None:
    """B24: an etcd started with ``--max-txn-ops=16`` refuses the 120-operation batches; GC lowers its limit and
    splits them until they fit (every transaction of the GC within 16 operations after the first refusals), and
    releases everything; node removal the same."""
    store = MemoryStore(max_txn_ops=16)
    svc = service(store)
    nc = netconf("10.1.0.0/16")
    for i in range(300):
        svc.add(att("c%d" % i), nc)
    sizes: list[int] = []
    store.inject("txn", "action", times=-1, action=lambda: None,
                 match=lambda c, s, *rest: sizes.append(len(s)) is not None)  # records, never matches
    assert svc.gc("n1", {("c0", "eth0")}) == 299
    assert store.count("handles/", prefix_end("handles/"), 1) == 1
    refused = [n for n in sizes if n > 16]
    assert refused and sizes[len(refused):] and max(sizes[len(refused):]) <= 16, sizes
    assert svc.gc_runner.ops_limit.value <= 16
    assert svc.metrics.gc_released._value.get() == 299
    assert_consistent(store)


def test_gc_over_the_deadline_answers_11_then_finishes(store: MemoryStore) -> None:
    """B47: more to release than one request deadline: 11 naming the progress, never 999; the rest is released in
    the background and the next GC answers success."""
    svc = service(store, request_timeout=0.3)
    nc = netconf("10.1.0.0/16")
    for i in range(600):
        svc.add(att("c%d" % i), nc)
    store.inject("txn", "delay", seconds=0.1, times=-1, match=lambda c, s, f: len(c) > 1)
    with pytest.raises(TryAgainLater) as info:
        svc.gc("n1", set())
    assert "so far" in info.value.msg
    deadline = time.monotonic() + 10
    while True:
        try:
            svc.gc("n1", set())
            break
        except TryAgainLater:
            assert time.monotonic() < deadline
    assert store.count("handles/", prefix_end("handles/"), 1) == 0
    assert svc.metrics.gc_released._value.get() == 600
    assert_consistent(store)


def test_gc_never_releases_what_was_created_after_its_snapshot(store: MemoryStore) -> None:
    """B15, decision 2."""
    svc = service(store)
    nc = netconf()

    def add_during_snapshot(key: str, range_end: str | None) -> bool:
        return range_end is not None and key.startswith("handles/")  # the read after the snapshot revision

    store.inject("read", "action", action=lambda: svc.add(att("young"), nc), match=add_during_snapshot)
    assert svc.gc("n1", set()) == 0
    assert store.read(handle_key("n1/young/eth0"), None, 1)[0]


def test_gc_releases_only_this_node(store: MemoryStore) -> None:
    a, b = service(store, "A"), service(store, "B")
    nc = netconf()
    a.add(att("a1"), nc)
    b.add(att("b1"), nc)
    assert a.gc("n1", set()) == 1
    assert store.read(handle_key("n1/b1/eth0"), None, 1)[0]


def test_gc_unavailable_is_11(store: MemoryStore) -> None:
    svc = service(store, request_timeout=0.3)
    svc.add(att("c1"), netconf())
    store.inject("read", "unavailable", times=-1)
    with pytest.raises(TryAgainLater):
        svc.gc("n1", set())


# --- B48, B49 ------------------------------------------------------------------------------------------------------

def test_thousands_held_cost_no_reads_per_add(store: MemoryStore) -> None:
    """B48: with 5,000 held on the node an ADD is still one transaction and no read."""
    svc = service(store)
    nc = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.2.0.0/16"}]],
                                               "blockSize": 26}}, "n1")
    for i in range(5000):
        svc.add(att("c%d" % i), nc)
    before = dict(store.calls)
    for i in range(100):
        svc.add(att("x%d" % i), nc)
    assert store.calls["txn"] - before["txn"] == 100
    assert store.calls.get("read", 0) == before.get("read", 0)


def test_herd_of_daemons_in_a_fresh_pool(store: MemoryStore) -> None:
    """B49 in the fast tier: 4 nodes x 8 threads x 50 ADDs in a fresh /16: transactions per ADD <= 1.1 (the real
    etcd version is tests/integration/test_scale.py)."""
    nodes = [service(store, n) for n in "ABCD"]
    nc = parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.3.0.0/16"}]],
                                               "blockSize": 26}}, "n1")
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def worker(svc: IpamService, t: int) -> None:
        barrier.wait()
        try:
            for i in range(50):
                svc.add(att("%s-%d-%d" % (svc.node, t, i)), nc)
        except BaseException as exc:
            errors.append(exc)

    txns = store.calls["txn"]
    threads = [threading.Thread(target=worker, args=(svc, t)) for svc in nodes for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    per_add = (store.calls["txn"] - txns) / 1600
    assert per_add <= 1.1, per_add
    assert store.count("ips/", prefix_end("ips/"), 1) == 1600
    assert_consistent(store)


def test_not_ready_is_11(store: MemoryStore) -> None:
    svc = IpamService(store, "A")
    with pytest.raises(TryAgainLater):
        svc.add(att("c1"), netconf())
