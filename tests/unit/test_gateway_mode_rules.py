"""Gateway modes (``ipam.gatewayMode``; docs/configuration.md "Gateway modes", docs/decisions.md "Gateway modes"):
parsing and validation (code 7), which addresses each mode reserves, the prefix and gateway a pod gets, the result
shapes (IPv4 and IPv6), the pool record, the policy (block mode never borrows), the invariant check and the node
check. The service runs on the in-memory store here; the real-etcd proofs are
tests/integration/test_gateway_modes_etcd.py and tests/e2e/test_gateway_modes.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipamd.check import check_snapshot
from ipamd.domain.addr import Block, Range
from ipamd.domain.cni import Attachment, render_result
from ipamd.domain.errors import AddressUnavailable, InvalidConfig, PoolExhausted
from ipamd.domain.model import PoolRecord, ip_key
from ipamd.domain.netcheck import Prefix
from ipamd.domain.netconf import NetConf, parse_netconf
from ipamd.domain.nodecheck import NodeAddress, NodeRoute, NodeState, node_conflicts
from ipamd.domain.policy import BlockState, Exhausted, PoolState, choose, choose_requested
from ipamd.service import IpamService
from ipamd.store.base import Put
from ipamd.store.memory import MemoryStore


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def parse(**ipam: Any) -> NetConf:
    ipam.setdefault("ranges", [[{"subnet": "10.1.2.0/24"}]])
    return parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", **ipam}}, "n1")


def rng_of(**ipam: Any) -> Range:
    return parse(**ipam).range_sets[0][0].range


# --- parsing and validation ---------------------------------------------------------------------------------------

def test_default_is_subnet_mode_unchanged() -> None:
    """No gatewayMode: host-local's shape (gateway .1, subnet prefix), exactly as before gateway modes existed."""
    pool = parse().range_sets[0][0]
    assert (pool.gateway_mode, pool.range.mode, pool.range.gateway, pool.strict_affinity) == \
        ("subnet", "subnet", ip("10.1.2.1"), False)
    assert pool.range.pod_address(ip("10.1.2.66"), 26) == (24, ip("10.1.2.1"))
    assert parse().routes == ()


@pytest.mark.parametrize("ipam, words", [
    ({"gatewayMode": "Block"}, ["ipam.gatewayMode", "'Block'", "subnet, block, pointToPoint"]),
    ({"gatewayMode": 1}, ["ipam.gatewayMode", "1"]),
    ({"gatewayMode": None}, ["ipam.gatewayMode", "None"]),
    ({"ranges": [[{"subnet": "10.1.2.0/24", "gatewayMode": "p2p"}]]}, ["ipam.ranges[0][0].gatewayMode", "'p2p'"]),
    ({"gatewayMode": "block", "ranges": [[{"subnet": "10.1.2.0/24", "gateway": "10.1.2.1"}]]},
     ["gateway 10.1.2.1", "gatewayMode block"]),
    ({"gatewayMode": "pointToPoint", "subnet": "10.1.2.0/24", "gateway": "10.1.2.9", "ranges": None},
     ["gateway 10.1.2.9", "gatewayMode pointToPoint"]),
    ({"gatewayMode": "pointToPoint", "ranges": [[{"subnet": "fd00::/120", "gateway": "fd00::1"}]]},
     ["gateway fd00::1", "gatewayMode pointToPoint"]),
    ({"gatewayMode": "block", "blockSize": 31}, ["gatewayMode block", "/31"]),
    ({"gatewayMode": "block", "blockSize6": 127, "ranges": [[{"subnet": "fd00::/120"}]]},
     ["gatewayMode block", "/127"]),
    ({"gatewayMode": "block", "strictAffinity": False}, ["gatewayMode block", "strictAffinity false"]),
])
def test_invalid_gateway_mode_configs_are_code_7_naming_the_field(ipam: dict[str, Any], words: list[str]) -> None:
    """A bad mode, a pool gateway with a mode that has none, blocks too small for block mode, or block mode with
    borrowing: code 7 with a message naming the field and the value, before anything is written."""
    if ipam.get("ranges", "") is None:
        del ipam["ranges"]
        with pytest.raises(InvalidConfig) as exc:
            parse_netconf({"name": "n1", "ipam": {"type": "ipamd-cni", **ipam}}, "n1")
    else:
        with pytest.raises(InvalidConfig) as exc:
            parse(**ipam)
    assert exc.value.cni_code == 7
    for word in words:
        assert word in str(exc.value), str(exc.value)


def test_per_range_mode_overrides_the_top_level() -> None:
    nc = parse(gatewayMode="block", ranges=[[{"subnet": "10.1.2.0/24"}],
                                            [{"subnet": "fd00::/120", "gatewayMode": "pointToPoint"}],
                                            [{"subnet": "10.9.0.0/24", "gatewayMode": "subnet"}]])
    modes = [(p.gateway_mode, p.range.mode, p.range.gateway) for rset in nc.range_sets for p in rset]
    assert modes == [("block", "block", None), ("pointToPoint", "pointToPoint", None),
                     ("subnet", "subnet", ip("10.9.0.1"))]
    # block mode never borrows (it is strictAffinity); the others keep the configuration's
    assert [p.strict_affinity for rset in nc.range_sets for p in rset] == [True, False, False]
    # pointToPoint adds its default route, one per family it is used in (here IPv6 only)
    assert [(r.dst, r.gw) for r in nc.routes] == [("::/0", "fe80::1")]


@pytest.mark.parametrize("routes, expected", [
    (None, [("0.0.0.0/0", "169.254.1.1"), ("::/0", "fe80::1")]),
    ([], []),
    ([{"dst": "10.0.0.0/8"}], [("10.0.0.0/8", None)]),
    ([{"dst": "10.0.0.0/8", "gw": "169.254.1.1"}], [("10.0.0.0/8", "169.254.1.1")]),
])
def test_point_to_point_default_routes_unless_configured(routes: Any, expected: list[Any]) -> None:
    """pointToPoint: a default route via the link-local gateway per family, unless ``routes`` is set (then those,
    and ``[]`` means none); a configured route via 169.254.1.1 is on the link by definition."""
    ipam: dict[str, Any] = {"gatewayMode": "pointToPoint",
                            "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/120"}]]}
    if routes is not None:
        ipam["routes"] = routes
    assert [(r.dst, r.gw) for r in parse(**ipam).routes] == expected


def test_route_via_link_local_gateway_is_refused_outside_point_to_point() -> None:
    with pytest.raises(InvalidConfig, match=re.escape("169.254.1.1 is not reachable on the link")):
        parse(routes=[{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])


# --- reserved addresses, prefix and gateway -----------------------------------------------------------------------

def test_block_mode_reserves_each_blocks_first_gateway_and_last_ipv4() -> None:
    rng = rng_of(gatewayMode="block", blockSize=26)
    unusable = [str(ipaddress.ip_address(v)) for v in range(rng.network, rng.last + 1) if not rng.usable(v)]
    assert unusable == ["10.1.2.0", "10.1.2.1", "10.1.2.63", "10.1.2.64", "10.1.2.65", "10.1.2.127", "10.1.2.128",
                        "10.1.2.129", "10.1.2.191", "10.1.2.192", "10.1.2.193", "10.1.2.255"]
    assert rng.usable_count() == 256 - 12
    assert rng.block_gateway(ip("10.1.2.100")) == ip("10.1.2.65")
    assert rng.pod_address(ip("10.1.2.66"), 26) == (26, ip("10.1.2.65"))  # the example


def test_block_mode_ipv6_reserves_first_and_gateway_only() -> None:
    rng = rng_of(gatewayMode="block", blockSize6=122, ranges=[[{"subnet": "fd00::/120"}]])
    unusable = [str(ipaddress.ip_address(v)) for v in range(rng.network, rng.last + 1) if not rng.usable(v)]
    assert unusable == ["fd00::", "fd00::1", "fd00::40", "fd00::41", "fd00::80", "fd00::81", "fd00::c0", "fd00::c1"]
    assert rng.usable_count() == 256 - 8
    assert rng.pod_address(ip("fd00::42"), 122) == (122, ip("fd00::41"))


@pytest.mark.parametrize("subnet, value, expected", [
    ("10.1.2.0/24", "10.1.2.1", (32, "169.254.1.1")),
    ("fd00::/120", "fd00::1", (128, "fe80::1")),
])
def test_point_to_point_pod_address_and_nothing_reserved_for_a_gateway(subnet: str, value: str,
                                                                        expected: tuple[int, str]) -> None:
    rng = rng_of(gatewayMode="pointToPoint", ranges=[[{"subnet": subnet}]])
    assert rng.gateway is None and rng.usable(ip(value))  # network+1 is a pod's, not a gateway's
    assert rng.pod_address(ip(value), 26) == (expected[0], ip(expected[1]))
    size = 256 if rng.family == 6 else 255
    assert rng.usable_count() == size - 1  # only the network (and the IPv4 broadcast) address


@settings(max_examples=200, deadline=None)
@given(prefix=st.integers(20, 28), block=st.integers(0, 8), start=st.integers(0, 300), length=st.integers(0, 600),
       excl=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 40)), max_size=3), v6=st.booleans())
def test_block_mode_usable_count_is_the_walk(prefix: int, block: int, start: int, length: int,
                                             excl: list[tuple[int, int]], v6: bool) -> None:
    """``usable_count`` (arithmetic) equals counting ``usable`` address by address, for any span, in block mode."""
    family, shift = (6, 96) if v6 else (4, 0)
    network = ip("fd00::") if v6 else ip("10.1.0.0")
    size = 1 << (32 - prefix)
    rng = Range(family, network, prefix + shift, network + 1, network + size - (1 if v6 else 2), None,
                tuple((network + a, network + a + n) for a, n in excl), "block", min(prefix + block, 30) + shift)
    lo, hi = network + start, network + start + length
    assert rng.usable_count(lo, hi) == sum(1 for v in range(max(lo, rng.start), min(hi, rng.end) + 1)
                                           if rng.usable(v))


# --- pool record --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["block", "pointToPoint"])
def test_pool_record_carries_the_mode(mode: str) -> None:
    pool = parse(gatewayMode=mode).range_sets[0][0]
    raw = PoolRecord("n1", pool.range, 27).encode()
    assert b'"gatewayMode":"%s"' % mode.encode() in raw and b'"gateway":null' in raw
    back = PoolRecord.decode(raw)
    assert (back.range.mode, back.range.gateway, back.range.block_prefix) == (mode, None, 27)


def test_old_pool_record_without_mode_reads_as_subnet_and_subnet_records_are_unchanged() -> None:
    old = (b'{"blockSize":26,"exclude":[],"gateway":"10.1.2.1","network":"n1","rangeEnd":"10.1.2.254",'
           b'"rangeStart":"10.1.2.1","subnet":"10.1.2.0/24"}')
    rec = PoolRecord.decode(old)
    assert (rec.range.mode, rec.range.gateway, rec.range.block_prefix) == ("subnet", ip("10.1.2.1"), 0)
    assert rec.encode() == old  # byte for byte: no gatewayMode key for subnet mode
    with pytest.raises(ValueError, match="gatewayMode"):
        PoolRecord.decode(old.replace(b'"exclude"', b'"gatewayMode":"bogus","exclude"'))


# --- policy -------------------------------------------------------------------------------------------------------

def test_block_mode_never_borrows_and_refuses_requested_addresses_in_other_blocks() -> None:
    """docs/decisions.md "Gateway modes": an address of another node's block would need that node's gateway."""
    pool = parse(gatewayMode="block", ranges=[[{"subnet": "10.1.2.0/26"}]], blockSize=27).range_sets[0][0]
    state = PoolState(pool.id)
    for first, node in ((ip("10.1.2.0"), "B"), (ip("10.1.2.32"), "B")):
        st_ = BlockState(Block(4, first, 27), node, 5, set())
        state.set_block(st_, "A")
    decision = choose(pool, 27, "A", state, set(), fresh={ip("10.1.2.0"), ip("10.1.2.32")})
    assert isinstance(decision, Exhausted) and decision.free_elsewhere == 2 * (32 - 3)
    with pytest.raises(AddressUnavailable, match=re.escape("block 10.1.2.32/27 of node B")):
        choose_requested(pool, 27, "A", state, ip("10.1.2.40"))
    with pytest.raises(AddressUnavailable, match="the gateway of its block"):
        choose_requested(pool, 27, "B", state, ip("10.1.2.33"))


def test_block_mode_uses_the_block_size_in_force() -> None:
    """The pool record's block size (fixed by the first claim) decides the reserved addresses, not blockSize."""
    pool = parse(gatewayMode="block", blockSize=26).range_sets[0][0]
    with pytest.raises(AddressUnavailable, match="the gateway of its block"):
        choose_requested(pool, 28, "A", PoolState(pool.id), ip("10.1.2.17"))
    assert choose_requested(pool, 26, "A", PoolState(pool.id), ip("10.1.2.17")).value == ip("10.1.2.17")


@pytest.mark.parametrize("subnet, fixed, size", [("10.1.2.0/24", 32, 26), ("10.1.2.0/24", 31, 26),
                                                 ("fd00::/120", 128, 122), ("fd00::/120", 127, 122)])
def test_block_mode_on_a_pool_whose_record_fixed_tiny_blocks_is_code_7(subnet: str, fixed: int, size: int) -> None:
    """A pool first claimed in subnet mode with /32 (or /31, /128, /127) blocks, then configured in block mode
    with a valid blockSize: the record's size is in force and leaves no address in any block. The ADD is 7 naming
    the fixed size, not 100 "0 unclaimed blocks" (there are plenty, none usable)."""
    store = MemoryStore()
    a = service(store, "A")
    a.add(Attachment("n1", "s0", "eth0"), parse(blockSize=fixed, blockSize6=fixed, ranges=[[{"subnet": subnet}]]))
    blk = parse(gatewayMode="block", blockSize=size, blockSize6=size, ranges=[[{"subnet": subnet}]])
    with pytest.raises(InvalidConfig, match=re.escape("has blocks of /%d, fixed by its first claim" % fixed)):
        a.add(Attachment("n1", "b1", "eth0"), blk)
    pool = blk.range_sets[0][0]
    value = pool.range.network + 5
    with pytest.raises(InvalidConfig, match="gatewayMode block needs blocks of at least 4 addresses"):
        a.add(Attachment("n1", "b2", "eth0"), blk, requested={0: (pool, value)})
    assert not check_snapshot(store.dump())


# --- the service: result shapes per mode, v4 and v6, and the invariant check -------------------------------------

def service(store: MemoryStore, node: str = "A") -> IpamService:
    svc = IpamService(store, node, request_timeout=2.0, etcd_timeout=0.5)
    svc.sync()
    svc.set_ready()
    return svc


@pytest.mark.parametrize("mode, subnet, block, version, first", [
    ("subnet", "10.1.2.0/24", 26, "1.0.0", {"address": "10.1.2.2/24", "gateway": "10.1.2.1"}),
    ("block", "10.1.2.0/24", 26, "1.0.0", {"address": "10.1.2.2/26", "gateway": "10.1.2.1"}),
    ("pointToPoint", "10.1.2.0/24", 26, "1.0.0", {"address": "10.1.2.1/32", "gateway": "169.254.1.1"}),
    ("subnet", "fd00::/120", 122, "0.4.0", {"version": "6", "address": "fd00::2/120", "gateway": "fd00::1"}),
    ("block", "fd00::/120", 122, "0.4.0", {"version": "6", "address": "fd00::2/122", "gateway": "fd00::1"}),
    ("pointToPoint", "fd00::/120", 122, "0.4.0", {"version": "6", "address": "fd00::1/128", "gateway": "fe80::1"}),
])
def test_result_shapes_per_mode(mode: str, subnet: str, block: int, version: str, first: dict[str, str]) -> None:
    store = MemoryStore()
    svc = service(store)
    nc = parse(gatewayMode=mode, blockSize=block, blockSize6=block, ranges=[[{"subnet": subnet}]])
    out = render_result(version, svc.add(Attachment("n1", "c1", "eth0"), nc), nc)
    assert out["ips"] == [first]
    default = "0.0.0.0/0" if ":" not in subnet else "::/0"
    assert out.get("routes") == ([{"dst": default, "gw": first["gateway"]}] if mode == "pointToPoint" else None)
    # the repeated ADD answers the stored shape; CHECK against it passes
    assert render_result(version, svc.add(Attachment("n1", "c1", "eth0"), nc), nc) == out
    assert not check_snapshot(store.dump())


def test_block_mode_second_block_gets_its_own_gateway_and_invariant_2_flags_a_block_gateway() -> None:
    """Two nodes: A's block 10.1.2.0/26 (gateway .1), B's 10.1.2.64/26 (gateway .65, pod .66/26: the issue's
    example). An address record planted at B's block gateway is an invariant-2 violation."""
    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    nc = parse(gatewayMode="block", blockSize=26)
    assert [x.cidr for x in a.add(Attachment("n1", "c1", "eth0"), nc)] == ["10.1.2.2/26"]
    got = b.add(Attachment("n1", "c2", "eth0"), nc)
    assert [(x.cidr, x.gateway) for x in got] == [("10.1.2.66/26", ip("10.1.2.65"))]
    assert not check_snapshot(store.dump())
    pool_id = nc.range_sets[0][0].id
    store.txn([], [Put(ip_key("n1", 4, ip("10.1.2.65")),
                       b'{"handle":"n1/c2/eth0","node":"B","pool":"%s"}' % pool_id.encode())], [], 1)
    found = [v for v in check_snapshot(store.dump()) if v.invariant == 2 and "0a010241" in v.key]
    assert found and "not usable" in str(found[0]), check_snapshot(store.dump())


def test_block_mode_exhaustion_does_not_borrow_from_another_node() -> None:
    store = MemoryStore()
    a, b = service(store, "A"), service(store, "B")
    nc = parse(gatewayMode="block", blockSize=27, ranges=[[{"subnet": "10.1.2.0/26"}]])
    a.add(Attachment("n1", "a0", "eth0"), nc)
    for i in range(29):  # B's block 10.1.2.32/27 holds 29 pods (.34-.62); A's has room, not for B
        b.add(Attachment("n1", "b%d" % i, "eth0"), nc)
    with pytest.raises(PoolExhausted):
        b.add(Attachment("n1", "b29", "eth0"), nc)
    assert not check_snapshot(store.dump())


def test_switch_to_block_mode_skips_blocks_whose_gateway_a_live_pod_holds() -> None:
    """Subnet mode handed out 10.1.2.2-.17 (blocks /28); the network then switches to gatewayMode block. Block
    10.1.2.16/28's gateway .17 is a live pod's address: an ADD must not give a pod .18/28 with gateway .17 (the
    bridge would put the pod's address on the node), nor take an address requested there; it claims the next
    block instead. Once that pod is DELed, the block gives addresses again."""
    store = MemoryStore()
    a = service(store, "A")
    sub = parse(blockSize=28)
    for i in range(16):
        a.add(Attachment("n1", "s%d" % i, "eth0"), sub)
    blk = parse(gatewayMode="block", blockSize=28)
    got = a.add(Attachment("n1", "b1", "eth0"), blk)
    assert [(x.cidr, x.gateway) for x in got] == [("10.1.2.34/28", ip("10.1.2.33"))]
    with pytest.raises(AddressUnavailable, match=re.escape("whose gateway 10.1.2.17 is held")):
        a.add(Attachment("n1", "b2", "eth0"), blk, requested={0: (blk.range_sets[0][0], ip("10.1.2.20"))})
    # a daemon that has not read the block yet (a restart) reads it before answering a requested address
    fresh_daemon = service(store, "A")
    with pytest.raises(AddressUnavailable, match=re.escape("whose gateway 10.1.2.17 is held")):
        fresh_daemon.add(Attachment("n1", "b2", "eth0"), blk,
                         requested={0: (blk.range_sets[0][0], ip("10.1.2.20"))})
    a.delete(Attachment("n1", "s15", "eth0"))
    got = a.add(Attachment("n1", "b3", "eth0"), blk)
    assert [(x.cidr, x.gateway) for x in got] == [("10.1.2.18/28", ip("10.1.2.17"))]
    assert not check_snapshot(store.dump())


# --- node check ---------------------------------------------------------------------------------------------------

def pfx(text: str) -> Prefix:
    iface = ipaddress.ip_interface(text)
    return Prefix(iface.version, int(iface.ip), iface.network.prefixlen)


@pytest.mark.parametrize("mode, thing, conflicts", [
    ("block", NodeAddress(pfx("10.1.2.65/26"), "cni0", "bridge"), False),
    ("block", NodeAddress(pfx("10.1.2.65/32"), "veth1", "veth"), False),
    ("block", NodeAddress(pfx("10.1.2.66/26"), "cni0", "bridge"), True),
    ("block", NodeAddress(pfx("10.1.2.65/26"), "eth0", ""), True),
    ("subnet", NodeAddress(pfx("10.1.2.65/26"), "cni0", "bridge"), True),
    ("block", NodeRoute(pfx("10.1.2.128/26"), ip("192.168.1.2"), "eth0"), False),
    ("pointToPoint", NodeRoute(pfx("10.1.2.7/32"), None, "cali1", "veth"), False),
    ("pointToPoint", NodeRoute(pfx("10.1.2.128/26"), ip("192.168.1.2"), "eth0"), False),
    ("block", NodeRoute(pfx("10.1.2.64/26"), None, "", "", "blackhole"), False),
    ("block", NodeRoute(pfx("10.1.2.0/25"), ip("192.168.1.2"), "eth0"), True),
    ("block", NodeRoute(pfx("10.1.2.64/26"), None, "", "", "unreachable"), True),
    ("subnet", NodeRoute(pfx("10.1.2.128/26"), ip("192.168.1.2"), "eth0"), True),
])
def test_node_check_accepts_what_the_modes_put_on_the_node(mode: str, thing: Any, conflicts: bool) -> None:
    """docs/namespace-checks.md "Node check": in block mode the node's bridge carries its block's gateway; in the
    routed modes the node carries routes to blocks and pods of the pool. Everything else still conflicts."""
    rng = rng_of(gatewayMode=mode, blockSize=26)
    state = NodeState(addresses=(thing,) if isinstance(thing, NodeAddress) else (),
                      routes=(thing,) if isinstance(thing, NodeRoute) else ())
    assert bool(node_conflicts(rng, state)) is conflicts


def test_node_check_judges_block_mode_by_the_block_size_in_force() -> None:
    """A block-mode pool first claimed with blockSize 28 (its record fixes /28); the bridge then carries
    10.1.2.1/28. A configuration saying blockSize 26 still allocates /28 blocks, and the service's node check
    accepts .1/28 as the pool's own (judged by the configuration's /26 it refused every ADD with 7)."""
    from ipamd.nodecheck import NodeCheck

    store = MemoryStore()
    svc = service(store, "A")
    first = parse(gatewayMode="block", blockSize=28)
    assert [x.cidr for x in svc.add(Attachment("n1", "c1", "eth0"), first)] == ["10.1.2.2/28"]
    bridge = NodeState(addresses=(NodeAddress(pfx("10.1.2.1/28"), "cni0", "bridge"),),
                       routes=(NodeRoute(pfx("10.1.2.0/28"), None, "cni0", "bridge"),))
    svc.node_check = NodeCheck("A", lambda: bridge)
    resized = parse(gatewayMode="block", blockSize=26)
    assert [(x.cidr, x.gateway) for x in svc.add(Attachment("n1", "c2", "eth0"), resized)] == \
        [("10.1.2.3/28", ip("10.1.2.1"))]
    # a stranger's address inside the pool is still a conflict
    svc.node_check = NodeCheck("A", lambda: NodeState(addresses=(NodeAddress(pfx("10.1.2.17/28"), "eth9", ""),)))
    with pytest.raises(InvalidConfig, match=re.escape("overlaps the node's address 10.1.2.17/28 on eth9")):
        svc.add(Attachment("n1", "c3", "eth0"), resized)
    assert not check_snapshot(store.dump())


@pytest.mark.parametrize("before, after, holder", [
    ({"gatewayMode": "pointToPoint"}, {}, "10.1.2.1"),  # pointToPoint hands out network+1, subnet's gateway
    ({}, {"ranges": [[{"subnet": "10.1.2.0/24", "gateway": "10.1.2.2"}]]}, "10.1.2.2"),  # the gateway moved
    ({"gatewayMode": "pointToPoint", "ranges": [[{"subnet": "10.1.2.0/25"}]]}, {}, "10.1.2.1"),  # a new, wider pool
])
def test_switch_to_a_gateway_a_live_pod_holds_is_code_7(before: dict[str, Any], after: dict[str, Any],
                                                        holder: str) -> None:
    """A configuration change that makes the pool-wide gateway an address a live pod holds: the ADD is 7 naming
    the holder (it used to give every new pod that pod's address as gateway), the pool record keeps the previous
    configuration, nothing is left reserved (the next ADD of the old configuration and, after the holder's DEL,
    of the new one succeed)."""
    store = MemoryStore()
    svc = service(store, "A")
    old = parse(**before)
    got = [svc.add(Attachment("n1", "p%d" % i, "eth0"), old)[0].cidr.split("/")[0] for i in range(2)]
    assert holder in got
    new = parse(**after)
    pool_id = new.range_sets[0][0].id
    record = store.read("pools/" + pool_id, None, 1)[0]
    with pytest.raises(InvalidConfig, match=re.escape("gateway %s of pool 10.1.2.0/24 is the address of n1/p"
                                                      % holder)):
        svc.add(Attachment("n1", "s1", "eth0"), new)
    assert store.read("pools/" + pool_id, None, 1)[0] == record
    assert svc.add(Attachment("n1", "p2", "eth0"), old)  # the old configuration still works (no leaked claim)
    # a repeated ADD of the holder with the new configuration answers what it holds (B06, T42)
    holder_att = Attachment("n1", "p%d" % got.index(holder), "eth0")
    assert [a.value for a in svc.add(holder_att, new)] == [ip(holder)]
    svc.delete(Attachment("n1", "p%d" % got.index(holder), "eth0"))
    (alloc,) = svc.add(Attachment("n1", "s1", "eth0"), new)
    assert alloc.gateway == ip(holder) and alloc.value != ip(holder)
    assert not check_snapshot(store.dump())
