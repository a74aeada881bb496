"""The pure figures of ``ipamctl pools``, ``blocks`` and ``usage`` (ipamd.domain.inventory), their rendering
(ipamd.ctl) and the snapshot reader over the in-memory store (ipamd.inventory); docs/ipamctl.md "Pools, blocks and
usage". The same figures against real etcd and daemons: tests/integration/test_ipamctl_inventory.py."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipamd.ctl import render_table
from ipamd.domain.addr import Block, Range, block_of
from ipamd.domain.errors import InvalidConfig
from ipamd.domain.inventory import format_percent, parse_pool_ref, percent, pool_info, tally_blocks
from ipamd.domain.model import Allocation as ModelAllocation
from ipamd.domain.model import (
    HandleRecord,
    IpRecord,
    PoolRecord,
    block_key,
    encode_block_record,
    encode_ip_record,
    ip_key,
    pool_key,
)
from ipamd.inventory import AttachmentFilter, Inventory
from ipamd.store.base import Put
from ipamd.store.memory import MemoryStore


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def record(subnet: str, block: int, network: str = "net1") -> PoolRecord:
    return PoolRecord(network, Range.from_config({"subnet": subnet}, "range"), block)


@pytest.mark.parametrize("text,want", [
    ("net1/10.1.2.0/24", "net1/0a010200-24"),
    ("net1/0a010200-24", "net1/0a010200-24"),
    ("net6/fd00:1::/64", "net6/fd000001000000000000000000000000-64"),
    ("net6/fd000001000000000000000000000000-64", "net6/fd000001000000000000000000000000-64"),
])
def test_pool_ref_as_id_or_cidr(text: str, want: str) -> None:
    assert parse_pool_ref(text) == want


@pytest.mark.parametrize("text", ["net1", "net1/", "net1/10.1.2.1/24", "net1/zz-24", "bad name/10.0.0.0/24",
                                  "net1/10.1.2.0"])
def test_pool_ref_malformed_is_code_7_naming_it(text: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_pool_ref(text)
    assert info.value.cni_code == 7


def test_percent_and_its_text() -> None:
    assert percent(8, 13) == pytest.approx(61.538461538)
    assert percent(1, 0) == 0.0
    assert format_percent(percent(8, 13)) == "61.54%"
    assert format_percent(0.0) == "0.00%"
    assert format_percent(percent(3, 2**64 - 2)) == "<0.01%"  # non-zero never reads as 0


def test_pool_info_of_an_ipv6_64_is_integer_arithmetic() -> None:
    """A /64 with the default gateway: 2**64 - 2 usable (network and gateway out; IPv6 has no broadcast)."""
    info = pool_info("net6/fd000001000000000000000000000000-64", record("fd00:1::/64", 122, "net6"), 3, 2)
    assert (info.size, info.allocated, info.free, info.blocks) == (2**64 - 2, 3, 2**64 - 5, 2)
    assert (info.subnet, info.range_start, info.range_end, info.gateway) == (
        "fd00:1::/64", "fd00:1::1", "fd00:1::ffff:ffff:ffff:ffff", "fd00:1::1")
    assert info.to_json()["size"] == 18446744073709551614
    big = pool_info("n/x", record("fd00:2::/48", 122), 0, 0)
    assert big.size == 2**80 - 2  # more than a uint64: the gRPC message carries it as text


def test_tally_two_nodes_with_a_borrow() -> None:
    """10.9.0.0/28 in /29 blocks: A owns .0/29 (6 usable: .0 network, .1 gateway) and fills it, B owns .8/29 (7
    usable: .15 is the broadcast address) and holds .8; A borrowed .9 from B's block (field case B34)."""
    pid = "net1/0a090000-28"
    rec = record("10.9.0.0/28", 29)
    blocks = [(pid, Block(4, ip("10.9.0.0"), 29), "A"), (pid, Block(4, ip("10.9.0.8"), 29), "B")]
    addrs = [(ip("10.9.0.%d" % i), IpRecord("net1/a%d/eth0" % i, "A", pid)) for i in range(2, 8)]
    addrs += [(ip("10.9.0.8"), IpRecord("net1/b1/eth0", "B", pid)), (ip("10.9.0.9"), IpRecord("net1/a9/eth0", "A",
                                                                                              pid))]
    tally = tally_blocks({pid: rec}, blocks, {pid: addrs}, alive=["A", "B", "C"])
    got = [(b.block, b.node, b.size, b.used, b.free, b.borrowed, b.node_borrowed) for b in tally.blocks]
    assert got == [("10.9.0.0/29", "A", 6, 6, 0, 0, 1), ("10.9.0.8/29", "B", 7, 2, 5, 1, 0)]
    nodes = {n.node: n for n in tally.nodes}
    assert (nodes["A"].blocks, nodes["A"].capacity, nodes["A"].used, nodes["A"].allocated,
            nodes["A"].borrowed_elsewhere, nodes["A"].borrowed_in) == (1, 6, 6, 7, 1, 0)
    assert (nodes["B"].blocks, nodes["B"].capacity, nodes["B"].used, nodes["B"].allocated,
            nodes["B"].borrowed_elsewhere, nodes["B"].borrowed_in) == (1, 7, 2, 1, 0, 1)
    assert nodes["C"].alive and (nodes["C"].blocks, nodes["C"].allocated, nodes["C"].utilisation) == (0, 0, 0.0)
    assert nodes["A"].utilisation == 100.0


def test_tally_counts_an_address_of_an_overlapping_older_pool_once_for_its_node() -> None:
    """A network whose subnet was widened from /24 to /23 (tests/integration/test_pools.py): the /24 pool's address
    is used space in the /23 pool's block too, but its node holds it once."""
    old, new = "net1/0a1f0000-24", "net1/0a1f0000-23"
    recs = {old: record("10.31.0.0/24", 26), new: record("10.31.0.0/23", 26)}
    held = (ip("10.31.0.2"), IpRecord("net1/old1/eth0", "A", old))
    blocks = [(old, Block(4, ip("10.31.0.0"), 26), "A"), (new, Block(4, ip("10.31.0.0"), 26), "A")]
    tally = tally_blocks(recs, blocks, {old: [held], new: [held]})
    assert [b.used for b in tally.blocks] == [1, 1]
    assert [(n.node, n.allocated) for n in tally.nodes] == [("A", 1)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 62), st.sampled_from("ABC")), unique_by=lambda t: t[0], max_size=40),
       st.lists(st.sampled_from("ABC"), min_size=8, max_size=8))
def test_tally_conserves_addresses(held: list[tuple[int, str]], owners: list[str]) -> None:
    """free + used = size per block; every record is used once; borrowed in = borrowed elsewhere, summed."""
    pid = "net1/0a0a0000-26"
    rec = record("10.10.0.0/26", 29)
    base = ip("10.10.0.0")
    claimed = {block_of(rec.range, 29, base + v).first for v, _ in held}
    blocks = [(pid, Block(4, first, 29), owners[(first - base) // 8]) for first in sorted(claimed)]
    addrs = [(base + v, IpRecord("net1/c%d/eth0" % v, node, pid)) for v, node in held]
    tally = tally_blocks({pid: rec}, blocks, {pid: addrs})
    assert sum(b.used for b in tally.blocks) == len(held)
    for b in tally.blocks:
        assert b.free + b.used == b.size
    assert sum(n.borrowed_in for n in tally.nodes) == sum(n.borrowed_elsewhere for n in tally.nodes)
    assert sum(n.allocated for n in tally.nodes) == len(held)


def test_render_table_aligns_columns() -> None:
    text = render_table(["POOL", "SIZE"], [["net1/0a010200-24", "253"], ["n6", "18446744073709551614"]])
    assert text.splitlines() == ["POOL              SIZE",
                                 "net1/0a010200-24  253",
                                 "n6                18446744073709551614"]


def _seed(store: MemoryStore) -> int:
    """Pool 10.9.0.0/28 in /29 blocks as in test_tally_two_nodes_with_a_borrow, written as the daemons would."""
    pid = "net1/0a090000-28"
    ops = [Put(pool_key(pid), record("10.9.0.0/28", 29).encode()),
           Put(block_key(pid, Block(4, ip("10.9.0.0"), 29)), encode_block_record("A")),
           Put(block_key(pid, Block(4, ip("10.9.0.8"), 29)), encode_block_record("B"))]
    for value, node, cid, pod in ((ip("10.9.0.2"), "A", "a2", {"namespace": "web", "name": "front"}),
                                  (ip("10.9.0.8"), "B", "b1", {"namespace": "db", "name": "pg"}),
                                  (ip("10.9.0.9"), "A", "a9", {})):
        h = HandleRecord("net1", cid, "eth0", node, (ModelAllocation(pid, 4, value, 28, ip("10.9.0.1")),), "", pod)
        ops += [Put(ip_key("net1", 4, value), encode_ip_record(h.handle, node, pid)), Put("handles/" + h.handle,
                                                                                          h.encode())]
    return store.txn([], ops, [], 5).revision


def test_inventory_reads_one_snapshot_even_when_a_write_lands_between_its_reads() -> None:
    """A release committed after the pools read and before the counts is not in the answer: every read asks for
    the first read's revision."""
    store = MemoryStore()
    rev = _seed(store)
    inv = Inventory(store, 5)

    def release() -> None:
        from ipamd.store.base import Delete
        store.txn([], [Delete(ip_key("net1", 4, ip("10.9.0.2"))), Delete("handles/net1/a2/eth0")], [], 5)
    store.inject("count", "action", action=release)
    got_rev, pools = inv.pools()
    assert got_rev == rev and [(p.allocated, p.blocks, p.size) for p in pools] == [(3, 2, 13)]
    assert inv.pools()[1][0].allocated == 2  # the next answer sees the release


def test_inventory_blocks_usage_and_filters_over_the_memory_store() -> None:
    store = MemoryStore()
    _seed(store)
    inv = Inventory(store, 5)
    _rev, blocks, nodes = inv.blocks(pool="net1/10.9.0.0/28")
    assert [(b.block, b.node, b.used, b.borrowed, b.node_borrowed) for b in blocks] == [
        ("10.9.0.0/29", "A", 1, 0, 1), ("10.9.0.8/29", "B", 2, 1, 0)]
    assert [(n.node, n.allocated, n.borrowed_elsewhere) for n in nodes] == [("A", 2, 1), ("B", 1, 0)]
    assert [b.block for b in inv.blocks(node="B")[1]] == ["10.9.0.8/29"]
    with pytest.raises(InvalidConfig):
        inv.blocks(pool="net1/10.99.0.0/24")
    _rev, pools, nodes = inv.usage()
    assert [(p.pool, p.allocated) for p in pools] == [("net1/0a090000-28", 3)]
    assert [n.node for n in nodes] == ["A", "B"]

    def ids(**kw: str) -> list[str]:
        return [r.container_id for r in inv.attachments(AttachmentFilter(**kw))[1]]
    assert ids() == ["a2", "a9", "b1"]
    assert ids(node="A") == ["a2", "a9"]
    assert ids(namespace="db") == ["b1"]
    assert ids(namespace="web", pod="front") == ["a2"]
    assert ids(pool="net1/10.9.0.0/28", node="B") == ["b1"]
    assert ids(network="other") == []
    with pytest.raises(InvalidConfig):
        ids(network="other", pool="net1/10.9.0.0/28")
