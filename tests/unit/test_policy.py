"""The pure allocation policy (ipamd.domain.policy): own block, claim, load, borrow, exhausted; cost flat in what
the node holds (field cases B34, B48, B49; docs/etcd-layout.md "Allocation order")."""

from __future__ import annotations

import ipaddress

import pytest

from ipamd.domain.addr import Block
from ipamd.domain.errors import AddressUnavailable
from ipamd.domain.netconf import Pool, parse_netconf
from ipamd.domain.policy import BlockState, Busy, Exhausted, Load, Pick, PoolState, choose, choose_requested


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def pool(subnet: str = "10.1.2.0/24", block: int = 28, **ipam: object) -> Pool:
    conf = {"name": "n", "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]], "blockSize": block,
                                  "blockSize6": block, **ipam}}
    return parse_netconf(conf, "n").range_sets[0][0]


def state(p: Pool, blocks: list[tuple[str, str, set[str] | None]] = ()) -> PoolState:  # type: ignore[assignment]
    ps = PoolState(p.id)
    for first, node, taken in blocks:
        b = Block(p.range.family, ip(first), p.block_prefix)
        ps.set_block(BlockState(b, node, 7, None if taken is None else {ip(t) for t in taken}), "A")
    return ps


def test_fresh_pool_claims_lowest_block_and_address() -> None:
    p = pool()
    d = choose(p, 28, "A", state(p), set())
    assert d == Pick(Block(4, ip("10.1.2.0"), 28), ip("10.1.2.2"), "claim")


def test_own_block_lowest_free_first() -> None:
    p = pool()
    ps = state(p, [("10.1.2.16", "A", {"10.1.2.16"}), ("10.1.2.0", "A", {"10.1.2.2", "10.1.2.3"})])
    d = choose(p, 28, "A", ps, set())
    assert d == Pick(Block(4, ip("10.1.2.0"), 28), ip("10.1.2.4"), "own", 7)


def test_reserved_addresses_are_skipped() -> None:
    p = pool()
    ps = state(p, [("10.1.2.0", "A", {"10.1.2.2"})])
    d = choose(p, 28, "A", ps, {ip("10.1.2.3"), ip("10.1.2.4")})
    assert isinstance(d, Pick) and d.value == ip("10.1.2.5")


def test_unloaded_own_block_asks_for_a_load() -> None:
    p = pool()
    ps = state(p, [("10.1.2.0", "A", None)])
    assert choose(p, 28, "A", ps, set()) == Load((Block(4, ip("10.1.2.0"), 28),))


def test_full_own_block_leaves_room_and_next_block_is_claimed() -> None:
    p = pool()
    full = {"10.1.2.%d" % i for i in range(2, 16)}
    ps = state(p, [("10.1.2.0", "A", full)])
    d = choose(p, 28, "A", ps, set())
    assert d == Pick(Block(4, ip("10.1.2.16"), 28), ip("10.1.2.16"), "claim")
    assert ps.room == []  # the full block is not visited again until an address of it is released
    ps.add_room(ip("10.1.2.0"))
    assert ps.room == [ip("10.1.2.0")]


def test_claim_skips_other_nodes_blocks() -> None:
    p = pool()
    ps = state(p, [("10.1.2.0", "B", set()), ("10.1.2.32", "C", set())])
    d = choose(p, 28, "A", ps, set())
    assert isinstance(d, Pick) and (d.block.cidr(), d.mode) == ("10.1.2.16/28", "claim")


def test_own_full_blocks_are_reloaded_before_borrowing() -> None:
    p = pool("10.1.2.0/27", 28)
    full0 = {"10.1.2.%d" % i for i in range(2, 16)}
    full1 = {"10.1.2.%d" % i for i in range(16, 31)}
    ps = state(p, [("10.1.2.0", "A", full0), ("10.1.2.16", "B", full1)])
    d = choose(p, 28, "A", ps, set())
    assert d == Load((Block(4, ip("10.1.2.0"), 28),))
    d = choose(p, 28, "A", ps, set(), fresh={ip("10.1.2.0")})
    assert d == Load((Block(4, ip("10.1.2.16"), 28),))  # other nodes' blocks are read before borrowing


def test_borrow_from_another_nodes_block() -> None:
    p = pool("10.1.2.0/27", 28)
    full0 = {"10.1.2.%d" % i for i in range(2, 16)}
    ps = state(p, [("10.1.2.0", "A", full0), ("10.1.2.16", "B", {"10.1.2.16"})])
    fresh = {ip("10.1.2.0"), ip("10.1.2.16")}
    assert choose(p, 28, "A", ps, set(), fresh=fresh) == Pick(Block(4, ip("10.1.2.16"), 28), ip("10.1.2.17"),
                                                              "borrow", 7)


def test_strict_affinity_never_borrows_and_counts_free_elsewhere() -> None:
    p = pool("10.1.2.0/27", 28, strictAffinity=True)
    full0 = {"10.1.2.%d" % i for i in range(2, 16)}
    ps = state(p, [("10.1.2.0", "A", full0), ("10.1.2.16", "B", {"10.1.2.16"})])
    d = choose(p, 28, "A", ps, set(), fresh={ip("10.1.2.0"), ip("10.1.2.16")})
    assert d == Exhausted(owned=1, allocated=15, free_elsewhere=14)  # .17-.30 (.31 is the broadcast)


def test_exhausted_pool() -> None:
    p = pool("10.1.2.0/28", 28)
    ps = state(p, [("10.1.2.0", "B", {"10.1.2.%d" % i for i in range(2, 15)})])
    assert choose(p, 28, "A", ps, set(), fresh={ip("10.1.2.0")}) == Exhausted(0, 13, 0)


def test_range_change_resets_room() -> None:
    p = pool()
    ps = state(p, [("10.1.2.0", "A", {"10.1.2.%d" % i for i in range(2, 16)})])
    choose(p, 28, "A", ps, set())
    assert ps.room == []
    wider = pool(exclude=["10.1.2.200"])
    choose(wider, 28, "A", ps, set())
    assert ps.room_range == wider.range


def test_claim_floor_moves_past_claimed_blocks_and_back_on_release() -> None:
    p = pool("10.1.0.0/16", 26)
    ps = state(p, [("10.1.%d.%d" % (i // 4, (i % 4) * 64), "B", set()) for i in range(100)])
    d = choose(p, 26, "A", ps, set())
    assert isinstance(d, Pick) and d.block.cidr() == "10.1.25.0/26"
    assert ps.claim_floor == ip("10.1.25.0")
    ps.remove_block(ip("10.1.3.64"))
    assert ps.claim_floor == ip("10.1.3.64")
    d = choose(p, 26, "A", ps, set())
    assert isinstance(d, Pick) and d.block.cidr() == "10.1.3.64/26"


def test_cost_does_not_grow_with_what_the_node_holds() -> None:
    """B48: with thousands of full blocks of ours, a pick visits the one block with room, not the others. The
    policy's state is instrumented: every BlockState it reads is counted."""
    p = pool("10.0.0.0/12", 26)
    reads = {"n": 0}

    class Counting(dict):  # type: ignore[type-arg]
        def get(self, key, default=None):  # type: ignore[no-untyped-def]
            reads["n"] += 1
            return super().get(key, default)

    ps = state(p)
    ps.blocks = Counting()
    for i in range(2000):
        first = ip("10.0.0.0") + 64 * i
        ps.set_block(BlockState(Block(4, first, 26), "A", 1, set(range(first, first + 64))), "A")
    last = ip("10.0.0.0") + 64 * 2000
    ps.set_block(BlockState(Block(4, last, 26), "A", 1, set()), "A")
    first_pick = choose(p, 26, "A", ps, set())  # drops the full blocks from room once
    assert isinstance(first_pick, Pick) and first_pick.block.first == last
    reads["n"] = 0
    for _ in range(10):
        d = choose(p, 26, "A", ps, set())
        assert isinstance(d, Pick) and d.block.first == last
    assert reads["n"] <= 10


def test_busy_container() -> None:
    busy = Busy({1, 2}, {5})
    assert 1 in busy and 5 in busy and 3 not in busy


@pytest.mark.parametrize("address, mode", [("10.1.2.5", "own"), ("10.1.2.20", "borrow"), ("10.1.2.40", "claim")])
def test_requested(address: str, mode: str) -> None:
    p = pool()
    ps = state(p, [("10.1.2.0", "A", set()), ("10.1.2.16", "B", set())])
    d = choose_requested(p, 28, "A", ps, ip(address))
    assert d.mode == mode and d.value == ip(address)
    assert d.block.first <= ip(address) <= d.block.last


@pytest.mark.parametrize("address", ["10.1.2.1", "10.1.2.0", "10.1.2.255"])
def test_requested_unusable_is_101(address: str) -> None:
    p = pool()
    with pytest.raises(AddressUnavailable):
        choose_requested(p, 28, "A", state(p), ip(address))


def test_ipv6_pool_large() -> None:
    """A /48 with /122 blocks: nothing is enumerated (docs/etcd-layout.md)."""
    p = pool("2001:db8::/48", 122)
    d = choose(p, 122, "A", state(p), set())
    assert d == Pick(Block(6, ip("2001:db8::"), 122), ip("2001:db8::2"), "claim")
