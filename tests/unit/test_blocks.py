"""Block lifecycle on the fast tier (docs/decisions.md "Block lifecycle"): blocks without an allocatable address are
never claimed (IPv4 and IPv6), ``maxBlocksPerNode`` (borrow, or 100 under strictAffinity), and the release of
empty blocks on the in-memory store, including the race with an ADD (field case B02 "extra"). The real-etcd proofs
are tests/integration/test_block_lifecycle.py and tests/integration/test_field_concurrency.py.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from ipamd.blockrelease import BlockReleaser, release_block
from ipamd.check import check_snapshot
from ipamd.domain.addr import Block
from ipamd.domain.cni import Attachment
from ipamd.domain.errors import AddressUnavailable, InvalidConfig, PoolExhausted
from ipamd.domain.model import IPS, block_key, cooling_key, decode_block_record, ip_key
from ipamd.domain.netconf import NetConf, Pool, parse_netconf
from ipamd.domain.policy import BlockState, Exhausted, Pick, PoolState, choose, choose_requested
from ipamd.service import IpamService
from ipamd.store.base import KV, Delete, Put, WatchEvent, WatchUpdate, prefix_end
from ipamd.store.memory import MemoryStore


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def pool(subnet: str = "10.1.2.0/24", block: int = 28, **ipam: Any) -> Pool:
    conf = {"name": "n", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet, **ipam.pop("range", {})}]],
                                  "blockSize": block, "blockSize6": block, **ipam}}
    return parse_netconf(conf, "n").range_sets[0][0]


def state(p: Pool, blocks: list[tuple[str, str, set[str] | None]]) -> PoolState:
    ps = PoolState(p.id)
    for first, node, taken in blocks:
        b = Block(p.range.family, ip(first), p.block_prefix)
        ps.set_block(BlockState(b, node, 7, None if taken is None else {ip(t) for t in taken}), "A")
    return ps


def full(first: str, n: int) -> set[str]:
    base = ip(first)
    return {str(ipaddress.ip_address(base + i)) for i in range(n)}


# -- item 2: a block without an allocatable address is never claimed -------------------------------------------------


@pytest.mark.parametrize(("subnet", "block", "ipam", "want_block", "want"), [
    # IPv4: an exclude covers the whole first block (and the gateway in it)
    ("10.1.2.0/24", 28, {"exclude": ["10.1.2.0/28"]}, "10.1.2.16/28", "10.1.2.16"),
    # IPv4: the first two blocks lie below rangeStart
    ("10.1.2.0/24", 28, {"range": {"rangeStart": "10.1.2.40"}}, "10.1.2.32/28", "10.1.2.40"),
    # IPv4: the first block holds nothing but the network and the gateway (.2/.3 excluded)
    ("10.1.2.0/24", 30, {"exclude": ["10.1.2.2", "10.1.2.3"]}, "10.1.2.4/30", "10.1.2.4"),
    # IPv4: a range that ends before the last blocks: the walk stops, nothing above rangeEnd is claimed
    ("10.1.2.0/24", 28, {"exclude": ["10.1.2.0/27"], "range": {"rangeEnd": "10.1.2.40"}}, "10.1.2.32/28",
     "10.1.2.32"),
    # IPv6: /64 pool, /122 blocks, an exclude covering the first block
    ("fd00:1::/64", 122, {"exclude": ["fd00:1::/122"]}, "fd00:1::40/122", "fd00:1::40"),
    # IPv6: an exclude covering half of the /64: one jump, no walk over 2**57 blocks
    ("fd00:1::/64", 122, {"exclude": ["fd00:1::/65"]}, "fd00:1:0:0:8000::/122", "fd00:1:0:0:8000::"),
])
def test_claim_passes_over_blocks_without_an_allocatable_address(subnet: str, block: int, ipam: dict[str, Any],
                                                                 want_block: str, want: str) -> None:
    p = pool(subnet, block, **ipam)
    started = time.perf_counter()
    d = choose(p, block, "A", PoolState(p.id), set())
    assert time.perf_counter() - started < 0.5
    assert isinstance(d, Pick) and d.mode == "claim", d
    assert (d.block.cidr(), str(ipaddress.ip_address(d.value))) == (want_block, want)


def test_nothing_allocatable_in_any_unclaimed_block_is_not_a_claim() -> None:
    """Every block but the one node B owns is wholly excluded: A borrows, it never claims an excluded block."""
    p = pool("10.1.2.0/27", 28, exclude=["10.1.2.16/28"])
    ps = state(p, [("10.1.2.0", "B", {"10.1.2.2"})])
    d = choose(p, 28, "A", ps, set(), fresh={ip("10.1.2.0")})
    assert isinstance(d, Pick) and (d.mode, d.value) == ("borrow", ip("10.1.2.3"))


# -- item 3: maxBlocksPerNode -----------------------------------------------------------------------------------------


def test_max_blocks_parsed_and_validated() -> None:
    assert pool(maxBlocksPerNode=3).max_blocks == 3
    assert pool().max_blocks == 0
    for bad in (-1, "2", True, 1.5, 1 << 21):
        with pytest.raises(InvalidConfig) as exc:
            pool(maxBlocksPerNode=bad)
        assert "ipam.maxBlocksPerNode" in exc.value.msg


def test_at_max_blocks_the_node_borrows_instead_of_claiming() -> None:
    p = pool("10.1.2.0/26", 28, maxBlocksPerNode=2)
    ps = state(p, [("10.1.2.0", "A", full("10.1.2.2", 14)), ("10.1.2.16", "A", full("10.1.2.16", 16)),
                   ("10.1.2.32", "B", {"10.1.2.32"})])
    fresh = {ip("10.1.2.0"), ip("10.1.2.16"), ip("10.1.2.32")}
    d = choose(p, 28, "A", ps, set(), fresh=fresh)
    assert d == Pick(Block(4, ip("10.1.2.32"), 28), ip("10.1.2.33"), "borrow", 7)
    # one block under the limit: the lowest unclaimed block (.48/28) is claimed as before
    more = pool("10.1.2.0/26", 28, maxBlocksPerNode=3)
    d = choose(more, 28, "A", ps, set(), fresh=fresh)
    assert isinstance(d, Pick) and (d.mode, d.block.cidr()) == ("claim", "10.1.2.48/28")


def test_at_max_blocks_strict_affinity_is_exhausted_with_the_limit() -> None:
    p = pool("10.1.2.0/26", 28, maxBlocksPerNode=1, strictAffinity=True)
    ps = state(p, [("10.1.2.0", "A", full("10.1.2.2", 14)), ("10.1.2.16", "B", {"10.1.2.16"})])
    d = choose(p, 28, "A", ps, set(), fresh={ip("10.1.2.0"), ip("10.1.2.16")})
    assert d == Exhausted(owned=1, allocated=15, free_elsewhere=15, limit=1)


def test_requested_address_in_an_unclaimed_block_at_the_limit_is_101() -> None:
    p = pool("10.1.2.0/26", 28, maxBlocksPerNode=1)
    ps = state(p, [("10.1.2.0", "A", set())])
    with pytest.raises(AddressUnavailable) as exc:
        choose_requested(p, 28, "A", ps, ip("10.1.2.40"))
    assert "maxBlocksPerNode 1" in exc.value.msg
    assert choose_requested(p, 28, "A", ps, ip("10.1.2.5")).mode == "own"


# -- the service on the memory store ----------------------------------------------------------------------------------


def netconf(subnet: str = "10.1.2.0/24", **ipam: Any) -> NetConf:
    return parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]],
                                                 "blockSize": 28, **ipam}}, "n1")


def service(store: MemoryStore, node: str = "A") -> IpamService:
    svc = IpamService(store, node, request_timeout=2.0, etcd_timeout=0.5)
    svc.sync()
    svc.set_ready()
    return svc


def att(cid: str) -> Attachment:
    return Attachment("n1", cid, "eth0")


def owners(store: MemoryStore) -> dict[str, str]:
    kvs = store.read("blocks/", prefix_end("blocks/"), 1)[0]
    return {kv.key.rsplit("/", 1)[1]: decode_block_record(kv.value) for kv in kvs}


def assert_consistent(store: MemoryStore) -> None:
    violations = check_snapshot(store.dump())
    assert not violations, "\n".join(map(str, violations))


def test_max_blocks_strict_affinity_is_100_whose_details_name_the_limit() -> None:
    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    nc = netconf("10.1.2.0/26", maxBlocksPerNode=1, strictAffinity=True)
    for i in range(14):
        a.add(att("a%d" % i), nc)
    b.add(att("b0"), nc)  # A's view does not know this block (no watch runs here): the ADD at the limit reads
    with pytest.raises(PoolExhausted) as exc:
        a.add(att("a-more"), nc)
    assert exc.value.cni_code == 100
    assert "maxBlocksPerNode 1 reached" in exc.value.details and "strictAffinity" in exc.value.details
    assert owners(store) == {"0a010200-28": "A", "0a010210-28": "B"}  # .32/28 and .48/28 stay unclaimed
    nc_borrow = netconf("10.1.2.0/26", maxBlocksPerNode=1)
    assert [x.cidr for x in a.add(att("a-borrow"), nc_borrow)] == ["10.1.2.17/26"]
    assert owners(store) == {"0a010200-28": "A", "0a010210-28": "B"}
    assert_consistent(store)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def releaser(store: MemoryStore, svc: IpamService, after: float, clock: Clock) -> BlockReleaser:
    return BlockReleaser(store, svc.cache, svc.node, after=after, etcd_timeout=0.5, metrics=svc.metrics,
                         clock=clock)


def test_empty_blocks_released_after_the_time_keeping_one() -> None:
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf()
    for i in range(14 + 16 + 1):  # .0/28 (14 usable), .16/28 (16), one in .32/28
        a.add(att("c%d" % i), nc)
    assert sorted(owners(store)) == ["0a010200-28", "0a010210-28", "0a010220-28"]
    clock = Clock()
    rel = releaser(store, a, 60, clock)
    assert rel.run().empty == 0
    for i in range(31):
        a.delete(att("c%d" % i))
    first = rel.run()
    assert (first.owned, first.empty, first.released) == (3, 3, [])  # the clocks start now
    clock.now += 59
    assert rel.run().released == []
    clock.now += 1
    done = rel.run()
    assert done.released == ["blocks/n1/0a010200-24/0a010210-28", "blocks/n1/0a010200-24/0a010220-28"]
    assert done.kept == ["blocks/n1/0a010200-24/0a010200-28"]
    assert owners(store) == {"0a010200-28": "A"}
    assert a.metrics.blocks_released.labels("n1/0a010200-24")._value.get() == 2
    assert [o[1] for o in a.cache.own_block_revisions()] == [Block(4, ip("10.1.2.0"), 28)]
    # the lone block stays, however long it is empty
    clock.now += 3600
    assert rel.run().released == []
    # another node claims the released blocks, lowest first
    b = service(store, "B")
    assert [x.cidr for x in b.add(att("b0"), nc)] == ["10.1.2.16/24"]
    assert owners(store) == {"0a010200-28": "A", "0a010210-28": "B"}
    assert_consistent(store)


def test_a_block_used_again_restarts_its_clock_and_zero_never_releases() -> None:
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf()
    for i in range(15):
        a.add(att("c%d" % i), nc)  # .0/28 full, .16 in .16/28
    a.delete(att("c14"))
    clock = Clock()
    rel = releaser(store, a, 60, clock)
    rel.run()
    clock.now += 50
    a.add(att("again"), nc)  # .16 again: the block is not empty at the next pass
    rel.run()
    a.delete(att("again"))
    clock.now += 50
    assert rel.run().released == []  # empty since this pass only
    clock.now += 60
    assert rel.run().released == ["blocks/n1/0a010200-24/0a010210-28"]
    off = releaser(store, a, 0, clock)
    assert off.round() == 60.0 and store.calls.get("txn", 0) > 0
    assert_consistent(store)


def test_a_block_with_a_cooling_record_is_not_released() -> None:
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf(releaseCooldownSeconds=30)
    for i in range(15):
        a.add(att("c%d" % i), nc)
    a.delete(att("c14"))  # .16 cools in .16/28
    assert store.read(cooling_key(ip_key("n1", 4, ip("10.1.2.16"))), None, 1)[0]
    clock = Clock()
    rel = releaser(store, a, 1, clock)
    rel.run()
    clock.now += 10
    assert rel.run().released == []
    assert "0a010210-28" in owners(store)
    assert_consistent(store)


def test_release_racing_an_add_release_first_the_add_retries_into_an_owned_block() -> None:
    """B02 extra, release commits between the ADD's plan and its transaction: the ADD's block compare fails, it
    plans again and claims; its address ends in a block A owns. (Real etcd: test_b02_release_races_add.)"""
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf()
    a.add(att("c0"), nc)
    a.delete(att("c0"))
    (pool_id, block, revision, _), = a.cache.own_block_revisions()
    fired: list[bool] = []

    def release() -> None:
        fired.append(release_block(store, pool_id, block, revision, 1.0)[0])

    store.inject("txn", "action", action=release,
                 match=lambda compares, success, failure: any(getattr(op, "key", "").startswith(IPS) for op in success))
    got = a.add(att("c1"), nc)
    assert fired == [True]
    assert [x.cidr for x in got] == ["10.1.2.2/24"]
    assert owners(store) == {"0a010200-28": "A"}
    assert a.metrics.cas_conflicts.labels("ADD")._value.get() >= 1
    assert_consistent(store)


def test_release_racing_an_add_add_first_the_release_fails() -> None:
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf()
    a.add(att("c0"), nc)
    a.delete(att("c0"))
    (pool_id, block, revision, _), = a.cache.own_block_revisions()
    a.add(att("c1"), nc)  # lands in the block; the block key's revision does not change
    assert a.cache.own_block_revisions()[0][2] == revision
    assert release_block(store, pool_id, block, revision, 1.0)[0] is False
    assert owners(store) == {"0a010200-28": "A"}
    # a stale revision fails too, even for an empty block
    a.delete(att("c1"))
    assert release_block(store, pool_id, block, revision - 1, 1.0)[0] is False
    assert release_block(store, pool_id, block, revision, 1.0)[0] is True
    assert owners(store) == {}
    assert_consistent(store)


def test_release_compares_the_whole_block_range() -> None:
    """An address record anywhere in the block (here one another pool of the network wrote at the block's last
    address) keeps the block; one just past it does not."""
    store = MemoryStore()
    a = service(store, "A")
    a.add(att("c0"), netconf())
    a.delete(att("c0"))
    (pool_id, block, revision, _), = a.cache.own_block_revisions()
    inside, past = ip_key("n1", 4, ip("10.1.2.15")), ip_key("n1", 4, ip("10.1.2.16"))
    store.txn([], [Put(inside, b'{"handle":"x","node":"B","pool":"p"}')], [], 1)
    assert release_block(store, pool_id, block, revision, 1.0)[0] is False
    store.txn([], [Delete(inside), Put(past, b'{"handle":"x","node":"B","pool":"p"}')], [], 1)
    assert release_block(store, pool_id, block, revision, 1.0)[0] is True
    assert block_key(pool_id, block) not in {kv.key for kv in store.dump()}


def test_use_between_two_passes_restarts_the_clock() -> None:
    """An ADD and its DEL between two passes (each pass sees the block empty) is use: the clock starts again. The
    evidence is the revision of the last change seen, from this daemon's own writes or from the watch (another
    node borrowing from the block)."""
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf()
    for i in range(15):
        a.add(att("c%d" % i), nc)
    a.delete(att("c14"))  # .16/28 empty, .0/28 full
    clock = Clock()
    rel = releaser(store, a, 60, clock)
    rel.run()
    clock.now += 50
    a.add(att("x"), nc)
    a.delete(att("x"))  # unseen by any pass
    assert rel.run().released == []  # the change moved: empty since now
    clock.now += 20
    assert rel.run().released == []  # 70 s after the first pass, only 20 s after the use
    # a borrow by another node, seen by the watch only
    rev = store.revision + 1  # the revision of another node's borrow and release, as the watch reports it
    kv = KV(ip_key("n1", 4, ip("10.1.2.20")), b"", rev, rev, 0)
    a.cache.apply(WatchUpdate((WatchEvent(True, kv),), rev))
    clock.now += 45
    assert rel.run().released == []  # 65 s after the DEL of x, but the watch saw a change 45 s ago
    clock.now += 60
    assert rel.run().released == ["blocks/n1/0a010200-24/0a010210-28"]
    assert_consistent(store)


def test_blocks_of_a_block_mode_pool_are_never_released() -> None:
    """gatewayMode block: a block's gateway sits on its owner's bridge; the release loop leaves such blocks alone."""
    store = MemoryStore()
    a = service(store, "A")
    nc = netconf(gatewayMode="block")
    for i in range(14):  # 13 usable addresses per /28 block in block mode: two blocks
        a.add(att("c%d" % i), nc)
    for i in range(14):
        a.delete(att("c%d" % i))
    assert len(owners(store)) == 2
    clock = Clock()
    rel = releaser(store, a, 1, clock)
    rel.run()
    clock.now += 100
    assert (rel.run().owned, owners(store)) == (0, {"0a010200-28": "A", "0a010210-28": "A"})
    subnet_mode = netconf("10.9.0.0/24")  # the same daemon still releases in its subnet-mode pools
    for i in range(15):
        a.add(att("s%d" % i), subnet_mode)
    a.delete(att("s14"))
    rel.run()
    clock.now += 100
    assert rel.run().released == ["blocks/n1/0a090000-24/0a090010-28"]
    assert_consistent(store)
