"""Address arithmetic, ranges and blocks (ipamd.domain.addr): defaults, validation, first_free, blocks, keys.

Field cases: docs/cni-contract.md §5.2 (range defaults, "too small to allocate from"), T28-T32 (gateway, bounds,
/30, /31, host bits, /33); house style "a /64 never ends" (nothing here may enumerate a large range).
"""

from __future__ import annotations

import ipaddress
import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipamd.domain.addr import (
    Block,
    Range,
    addr_key,
    block_of,
    candidate_blocks,
    key_addr,
    parse_ip,
    parse_subnet,
    to_ip,
)
from ipamd.domain.errors import InvalidConfig


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def rng(subnet: str, **bounds: str) -> Range:
    return Range.from_config({"subnet": subnet, **bounds}, "ipam.ranges[0][0]")


def brute_usable(r: Range) -> list[int]:
    """Reference: every address of the (small) subnet that may be handed out, computed independently."""
    out = []
    for v in range(r.network, r.last + 1):
        if not r.start <= v <= r.end:
            continue
        if v == r.network or v == r.gateway or (r.family == 4 and v == r.last):
            continue
        if any(lo <= v <= hi for lo, hi in r.excludes):
            continue
        out.append(v)
    return out


# --- defaults (§5.2: start = network+1, end = broadcast-1 / last address, gateway = network+1) -----------------

@pytest.mark.parametrize("subnet, start, end, gateway", [
    ("10.1.2.0/24", "10.1.2.1", "10.1.2.254", "10.1.2.1"),
    ("10.1.2.0/30", "10.1.2.1", "10.1.2.2", "10.1.2.1"),
    ("10.0.0.0/8", "10.0.0.1", "10.255.255.254", "10.0.0.1"),
    ("2001:db8:1::/64", "2001:db8:1::1", "2001:db8:1:0:ffff:ffff:ffff:ffff", "2001:db8:1::1"),
    ("2001:db8::/126", "2001:db8::1", "2001:db8::3", "2001:db8::1"),
])
def test_range_defaults(subnet: str, start: str, end: str, gateway: str) -> None:
    r = rng(subnet)
    net = ipaddress.ip_network(subnet)
    assert r.family == net.version
    assert r.network == int(net.network_address)
    assert r.prefixlen == net.prefixlen
    assert (r.start, r.end, r.gateway) == (ip(start), ip(end), ip(gateway))
    assert r.last == int(net.broadcast_address)
    assert r.subnet == net


@pytest.mark.parametrize("bounds, start, end, gateway", [
    ({"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"}, "10.1.2.10", "10.1.2.11", "10.1.2.1"),  # T29
    ({"gateway": "10.1.2.254"}, "10.1.2.1", "10.1.2.254", "10.1.2.254"),  # T28
    ({"rangeStart": "", "rangeEnd": "", "gateway": ""}, "10.1.2.1", "10.1.2.254", "10.1.2.1"),  # "" = unset
    ({"rangeStart": "10.1.2.7", "rangeEnd": "10.1.2.7"}, "10.1.2.7", "10.1.2.7", "10.1.2.1"),
])
def test_range_explicit_bounds(bounds: dict[str, str], start: str, end: str, gateway: str) -> None:
    r = rng("10.1.2.0/24", **bounds)
    assert (r.start, r.end, r.gateway) == (ip(start), ip(end), ip(gateway))


def test_range_ipv6_range_end_may_be_last_address() -> None:
    # IPv6 has no broadcast address: the last address is a valid rangeEnd and usable (§5.2).
    r = rng("2001:db8::/120", rangeEnd="2001:db8::ff")
    assert r.end == ip("2001:db8::ff")
    assert r.usable(ip("2001:db8::ff"))


def test_subnet_key() -> None:
    assert rng("10.1.2.0/24").subnet_key == "0a010200-24"
    assert rng("2001:db8::/64").subnet_key == "20010db8000000000000000000000000-64"


# --- usable() ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subnet, bounds, address, expected", [
    ("10.1.2.0/24", {}, "10.1.2.0", False),            # network address
    ("10.1.2.0/24", {}, "10.1.2.255", False),          # IPv4 broadcast
    ("10.1.2.0/24", {}, "10.1.2.1", False),            # default gateway
    ("10.1.2.0/24", {}, "10.1.2.2", True),
    ("10.1.2.0/24", {}, "10.1.2.254", True),
    ("10.1.2.0/24", {"gateway": "10.1.2.254"}, "10.1.2.1", True),
    ("10.1.2.0/24", {"gateway": "10.1.2.254"}, "10.1.2.254", False),
    ("10.1.2.0/24", {"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.20"}, "10.1.2.9", False),
    ("10.1.2.0/24", {"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.20"}, "10.1.2.10", True),
    ("10.1.2.0/24", {"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.20"}, "10.1.2.20", True),
    ("10.1.2.0/24", {"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.20"}, "10.1.2.21", False),
    ("10.1.2.0/24", {}, "10.1.3.2", False),            # outside the subnet
    ("2001:db8::/64", {}, "2001:db8::", False),        # IPv6 network address (subnet-router anycast)
    ("2001:db8::/64", {}, "2001:db8::1", False),       # IPv6 default gateway
    ("2001:db8::/64", {}, "2001:db8::2", True),
    ("2001:db8::/64", {}, "2001:db8::ffff:ffff:ffff:ffff", True),  # no broadcast in IPv6
])
def test_usable(subnet: str, bounds: dict[str, str], address: str, expected: bool) -> None:
    assert rng(subnet, **bounds).usable(ip(address)) is expected


@pytest.mark.parametrize("address, expected", [
    ("10.1.2.9", True), ("10.1.2.10", False), ("10.1.2.15", False), ("10.1.2.16", True),
    ("10.1.2.100", False), ("10.1.2.101", True),
])
def test_usable_excludes(address: str, expected: bool) -> None:
    base = rng("10.1.2.0/24")
    r = base.with_excludes(((ip("10.1.2.10"), ip("10.1.2.15")), (ip("10.1.2.100"), ip("10.1.2.100"))))
    assert r.usable(ip(address)) is expected


def test_with_excludes_keeps_only_overlapping_entries() -> None:
    r = rng("10.1.2.0/24").with_excludes(((ip("10.1.3.0"), ip("10.1.3.255")), (ip("10.1.1.250"), ip("10.1.2.3"))))
    assert r.excludes == ((ip("10.1.1.250"), ip("10.1.2.3")),)


# --- usable_count() ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subnet, bounds, expected", [
    ("10.1.2.0/24", {}, 253),                                                  # 256 - net - bcast - gw
    ("10.1.2.0/24", {"gateway": "10.1.2.254"}, 253),
    ("10.1.2.0/30", {}, 1),                                                    # T30: only .2
    ("10.1.2.0/29", {}, 5),                                                    # T30: exactly 5 ADDs
    ("10.1.2.0/24", {"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"}, 2),  # T29
    ("10.1.2.0/24", {"rangeStart": "10.1.2.1", "rangeEnd": "10.1.2.1"}, 0),    # only the gateway
    ("2001:db8::/126", {}, 2),                                                 # ::2, ::3
    ("2001:db8::/64", {}, (1 << 64) - 2),                                      # network and gateway excluded
])
def test_usable_count(subnet: str, bounds: dict[str, str], expected: int) -> None:
    assert rng(subnet, **bounds).usable_count() == expected


@pytest.mark.parametrize("excludes", [
    ((10, 20),),
    ((10, 20), (30, 30)),
    ((0, 3),),                # covers network and gateway
    ((250, 255),),            # covers broadcast
    ((10, 20), (15, 25)),     # overlapping entries (ipam.exclude ["10.1.2.0/28", "10.1.2.5"] gives these)
    ((10, 20), (10, 20)),     # duplicate entries
    ((5, 5), (0, 255)),       # one entry inside another
])
def test_usable_count_matches_brute_force_with_excludes(excludes: tuple[tuple[int, int], ...]) -> None:
    base = rng("10.1.2.0/24")
    r = base.with_excludes(tuple((base.network + lo, base.network + hi) for lo, hi in excludes))
    assert r.usable_count() == len(brute_usable(r))


# --- first_free() -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subnet, bounds, taken, expected", [
    ("10.1.2.0/24", {}, [], "10.1.2.2"),                                 # §5.2: first ADD gets .2
    ("10.1.2.0/24", {"gateway": "10.1.2.254"}, [], "10.1.2.1"),         # T28
    ("10.1.2.0/24", {}, ["10.1.2.2", "10.1.2.3"], "10.1.2.4"),
    ("10.1.2.0/24", {}, ["10.1.2.3"], "10.1.2.2"),
    ("10.1.2.0/30", {}, [], "10.1.2.2"),                                 # T30
    ("10.1.2.0/30", {}, ["10.1.2.2"], None),                             # T30: c2 -> exhausted
    ("10.1.2.0/24", {"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"}, ["10.1.2.10"], "10.1.2.11"),
    ("10.1.2.0/24", {"rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"}, ["10.1.2.10", "10.1.2.11"], None),
    ("10.1.2.0/24", {"rangeStart": "10.1.2.254"}, [], "10.1.2.254"),
    ("2001:db8::/64", {}, [], "2001:db8::2"),
    ("2001:db8::/126", {}, ["2001:db8::2"], "2001:db8::3"),
])
def test_first_free(subnet: str, bounds: dict[str, str], taken: list[str], expected: str | None) -> None:
    r = rng(subnet, **bounds)
    got = r.first_free(r.network, r.last, {ip(t) for t in taken})
    assert got == (None if expected is None else ip(expected))


def test_first_free_accepts_any_iterable() -> None:
    r = rng("10.1.2.0/24")
    assert r.first_free(r.network, r.last, [ip("10.1.2.2")]) == ip("10.1.2.3")
    assert r.first_free(r.network, r.last, iter([ip("10.1.2.2")])) == ip("10.1.2.3")
    assert r.first_free(r.network, r.last, frozenset({ip("10.1.2.2")})) == ip("10.1.2.3")


@pytest.mark.parametrize("lo, hi, expected", [
    ("10.1.2.16", "10.1.2.31", "10.1.2.16"),    # one /28 block
    ("10.1.2.0", "10.1.2.15", "10.1.2.2"),      # first block: skips network and gateway
    ("10.1.2.240", "10.1.2.255", "10.1.2.240"),
    ("10.1.2.255", "10.1.2.255", None),         # only the broadcast
    ("10.1.2.0", "10.1.2.1", None),             # only network and gateway
    ("10.1.1.0", "10.1.3.255", "10.1.2.2"),     # wider than the range: clamped to [start, end]
])
def test_first_free_window(lo: str, hi: str, expected: str | None) -> None:
    r = rng("10.1.2.0/24")
    got = r.first_free(ip(lo), ip(hi), set())
    assert got == (None if expected is None else ip(expected))


def test_first_free_skips_excludes() -> None:
    base = rng("10.1.2.0/24")
    r = base.with_excludes(((ip("10.1.2.0"), ip("10.1.2.127")),))
    assert r.first_free(r.network, r.last, set()) == ip("10.1.2.128")


def test_first_free_on_a_64_is_bounded_by_taken_not_by_the_span() -> None:
    # A /64 has 2**64 addresses: the walk may only cost about len(taken). 100k taken must take well under a second.
    r = rng("2001:db8::/64")
    taken = set(range(r.start, r.start + 100_000))
    t0 = time.perf_counter()
    got = r.first_free(r.network, r.last, taken)
    assert got == r.start + 100_000
    # an exhausted window at the very end of the /64
    assert r.first_free(r.last - 10, r.last, set(range(r.last - 10, r.last + 1))) is None
    assert time.perf_counter() - t0 < 2.0


def test_first_free_huge_exclude_is_skipped_not_walked() -> None:
    # An exclude of 2**63 addresses in a /64: first_free jumps over it.
    base = rng("2001:db8::/64")
    r = base.with_excludes(((base.network, base.network + (1 << 63) - 1),))
    t0 = time.perf_counter()
    assert r.first_free(r.network, r.last, set()) == base.network + (1 << 63)
    assert time.perf_counter() - t0 < 1.0


# --- blocks ------------------------------------------------------------------------------------------------------

def test_candidate_blocks_24_with_28_blocks() -> None:
    r = rng("10.1.2.0/24")
    blocks = list(candidate_blocks(r, 28, ()))
    assert [b.cidr() for b in blocks] == ["10.1.2.%d/28" % (16 * i) for i in range(16)]
    assert all(b.prefixlen == 28 and b.family == 4 for b in blocks)


def test_candidate_blocks_skips_claimed() -> None:
    r = rng("10.1.2.0/24")
    claimed = {ip("10.1.2.0"), ip("10.1.2.32")}
    blocks = list(candidate_blocks(r, 28, claimed))
    assert [b.cidr() for b in blocks][:3] == ["10.1.2.16/28", "10.1.2.48/28", "10.1.2.64/28"]
    assert len(blocks) == 14


def test_candidate_blocks_follows_range_bounds() -> None:
    r = rng("10.1.2.0/24", rangeStart="10.1.2.20", rangeEnd="10.1.2.40")
    assert [b.cidr() for b in candidate_blocks(r, 28, ())] == ["10.1.2.16/28", "10.1.2.32/28"]


def test_candidate_blocks_skips_blocks_without_usable_address() -> None:
    # /30 blocks of a /24: 10.1.2.0/30 holds .2 (usable); a block that is wholly excluded is skipped.
    base = rng("10.1.2.0/24")
    r = base.with_excludes(((ip("10.1.2.4"), ip("10.1.2.7")),))
    firsts = [b.cidr() for b in itertools.islice(candidate_blocks(r, 30, ()), 3)]
    assert firsts == ["10.1.2.0/30", "10.1.2.8/30", "10.1.2.12/30"]


def test_candidate_blocks_single_block_pool() -> None:
    r = rng("10.1.2.0/28")
    assert [b.cidr() for b in candidate_blocks(r, 28, ())] == ["10.1.2.0/28"]
    assert list(candidate_blocks(r, 28, {r.network})) == []


def test_candidate_blocks_64_with_122_blocks_is_lazy() -> None:
    r = rng("2001:db8:1::/64")
    t0 = time.perf_counter()
    first3 = [b.cidr() for b in itertools.islice(candidate_blocks(r, 122, ()), 3)]
    assert first3 == ["2001:db8:1::/122", "2001:db8:1::40/122", "2001:db8:1::80/122"]
    claimed = {ip("2001:db8:1::"), ip("2001:db8:1::40")}
    nxt = next(candidate_blocks(r, 122, claimed))
    assert nxt.cidr() == "2001:db8:1::80/122"
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("subnet, prefix, address, first", [
    ("10.1.2.0/24", 28, "10.1.2.0", "10.1.2.0"),
    ("10.1.2.0/24", 28, "10.1.2.15", "10.1.2.0"),
    ("10.1.2.0/24", 28, "10.1.2.16", "10.1.2.16"),
    ("10.1.2.0/24", 26, "10.1.2.200", "10.1.2.192"),
    ("10.1.2.0/24", 24, "10.1.2.255", "10.1.2.0"),
    ("2001:db8::/64", 122, "2001:db8::7f", "2001:db8::40"),
    ("2001:db8::/64", 122, "2001:db8::ffff:ffff:ffff:ffff", "2001:db8::ffff:ffff:ffff:ffc0"),
])
def test_block_of(subnet: str, prefix: int, address: str, first: str) -> None:
    r = rng(subnet)
    b = block_of(r, prefix, ip(address))
    assert b == Block(r.family, ip(first), prefix)
    assert b.first <= ip(address) <= b.last
    assert b.last - b.first + 1 == 1 << (r.bits - prefix)


@pytest.mark.parametrize("block, key", [
    (Block(4, ip("10.1.2.16"), 28), "0a010210-28"),
    (Block(4, 0, 26), "00000000-26"),
    (Block(6, ip("2001:db8::40"), 122), "20010db8000000000000000000000040-122"),
])
def test_block_key_round_trip(block: Block, key: str) -> None:
    assert block.key == key
    assert Block.from_key(key) == block


@pytest.mark.parametrize("bad", ["", "0a01-28", "zzzzzzzz-28", "0a010210", "0a010210-x"])
def test_block_from_key_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        Block.from_key(bad)


@given(st.integers(0, (1 << 32) - 1), st.integers(0, 32))
def test_block_key_round_trip_v4_property(first: int, prefix: int) -> None:
    b = Block(4, first, prefix)
    assert Block.from_key(b.key) == b


@given(st.integers(0, (1 << 128) - 1), st.integers(0, 128))
def test_block_key_round_trip_v6_property(first: int, prefix: int) -> None:
    b = Block(6, first, prefix)
    assert Block.from_key(b.key) == b


def test_block_keys_sort_in_address_order() -> None:
    r = rng("10.0.0.0/16")
    blocks = list(itertools.islice(candidate_blocks(r, 26, ()), 300))
    assert sorted(blocks, key=lambda b: b.key) == blocks


# --- addr_key ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family, text, key", [
    (4, "0.0.0.0", "00000000"),
    (4, "10.1.2.3", "0a010203"),
    (4, "255.255.255.255", "ffffffff"),
    (6, "::", "0" * 32),
    (6, "2001:db8::1", "20010db8000000000000000000000001"),
])
def test_addr_key(family: int, text: str, key: str) -> None:
    assert addr_key(family, ip(text)) == key
    assert key_addr(key) == (family, ip(text))


@pytest.mark.parametrize("bad", ["", "0a0102", "0a01020304", "0" * 31])
def test_key_addr_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        key_addr(bad)


@given(st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1))
def test_addr_key_order_is_numeric_order_v4(a: int, b: int) -> None:
    ka, kb = addr_key(4, a), addr_key(4, b)
    assert (ka < kb) == (a < b) and (ka == kb) == (a == b)
    assert key_addr(ka) == (4, a)


@given(st.integers(0, (1 << 128) - 1), st.integers(0, (1 << 128) - 1))
def test_addr_key_order_is_numeric_order_v6(a: int, b: int) -> None:
    ka, kb = addr_key(6, a), addr_key(6, b)
    assert (ka < kb) == (a < b) and (ka == kb) == (a == b)
    assert key_addr(ka) == (6, a)


def test_to_ip() -> None:
    assert to_ip(4, ip("10.1.2.3")) == ipaddress.IPv4Address("10.1.2.3")
    assert to_ip(6, 1) == ipaddress.IPv6Address("::1")


# --- validation errors (code 7, message names the field and the value) ----------------------------------------

@pytest.mark.parametrize("conf, must_contain", [
    # bad CIDR
    ({"subnet": "foo"}, ["subnet", "foo"]),
    ({"subnet": "10.1.2.0"}, ["subnet", "10.1.2.0"]),                       # no prefix
    ({"subnet": "10.1.2.0/33"}, ["subnet", "10.1.2.0/33"]),                 # T32
    ({"subnet": "2001:db8::/129"}, ["subnet", "2001:db8::/129"]),
    ({"subnet": 24}, ["subnet", "24"]),
    ({}, ["subnet", "None"]),
    # host bits (T31)
    ({"subnet": "10.1.2.5/24"}, ["subnet", "10.1.2.5/24", "host bits"]),
    ({"subnet": "2001:db8::5/64"}, ["subnet", "2001:db8::5/64", "host bits"]),
    # too small (T31; §5.2 message)
    ({"subnet": "10.1.2.0/31"}, ["10.1.2.0/31", "too small to allocate from"]),
    ({"subnet": "10.1.2.0/32"}, ["10.1.2.0/32", "too small to allocate from"]),
    ({"subnet": "2001:db8::/127"}, ["2001:db8::/127", "too small to allocate from"]),
    ({"subnet": "2001:db8::/128"}, ["2001:db8::/128", "too small to allocate from"]),
    # bounds and gateway outside the subnet (T32)
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}, ["rangeStart", "10.1.3.1", "outside", "10.1.2.0/24"]),
    ({"subnet": "10.1.2.0/24", "rangeEnd": "10.1.3.1"}, ["rangeEnd", "10.1.3.1", "outside"]),
    ({"subnet": "10.1.2.0/24", "gateway": "10.1.3.1"}, ["gateway", "10.1.3.1", "outside"]),
    ({"subnet": "10.1.2.0/24", "gateway": "2001:db8::1"}, ["gateway", "2001:db8::1"]),   # other family
    ({"subnet": "10.1.2.0/24", "rangeStart": "bogus"}, ["rangeStart", "bogus"]),
    ({"subnet": "10.1.2.0/24", "gateway": "10.1.2.1/24"}, ["gateway", "10.1.2.1/24"]),  # a CIDR, not an address
    # bounds on the network / broadcast address
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.0"}, ["rangeStart", "10.1.2.0", "network address"]),
    ({"subnet": "10.1.2.0/24", "rangeEnd": "10.1.2.255"}, ["rangeEnd", "10.1.2.255", "broadcast"]),
    ({"subnet": "2001:db8::/64", "rangeStart": "2001:db8::"}, ["rangeStart", "2001:db8::", "network address"]),
    # pre-flight (docs/namespace-checks.md): the gateway is a host address of its subnet
    ({"subnet": "10.1.2.0/24", "gateway": "10.1.2.0"},
     ["ipam.ranges[0][0] gateway", "10.1.2.0", "network address", "10.1.2.0/24"]),
    ({"subnet": "10.1.2.0/24", "gateway": "10.1.2.255"},
     ["ipam.ranges[0][0] gateway", "10.1.2.255", "broadcast address", "10.1.2.0/24"]),
    ({"subnet": "2001:db8::/64", "gateway": "2001:db8::"}, ["ipam.ranges[0][0] gateway", "2001:db8::", "network"]),
    # inverted range
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.20", "rangeEnd": "10.1.2.10"},
     ["rangeStart", "10.1.2.20", "rangeEnd", "10.1.2.10"]),
])
def test_range_validation_errors(conf: dict[str, object], must_contain: list[str]) -> None:
    with pytest.raises(InvalidConfig) as info:
        Range.from_config(conf, "ipam.ranges[0][0]")
    assert info.value.cni_code == 7
    for part in must_contain:
        assert part in info.value.msg, (part, info.value.msg)


def test_range_from_config_rejects_non_object() -> None:
    with pytest.raises(InvalidConfig) as info:
        Range.from_config(["10.1.2.0/24"], "ipam.ranges[0][0]")
    assert "ipam.ranges[0][0]" in info.value.msg


@pytest.mark.parametrize("text", ["10.1.2.0/24", "2001:db8::/64", "0.0.0.0/0"])
def test_parse_subnet_ok(text: str) -> None:
    assert parse_subnet(text) == ipaddress.ip_network(text)


@pytest.mark.parametrize("text", ["10.1.2.3/32", "x", None, 5, "10.1.2.3 "])
def test_parse_ip_errors_name_field_and_value(text: object) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_ip(text, "ipam.routes[0].gw")
    assert info.value.cni_code == 7
    assert "ipam.routes[0].gw" in info.value.msg
    assert repr(text) in info.value.msg


# --- properties (hypothesis): first_free is the lowest free usable address; free + allocated = capacity ------------

@st.composite
def small_ranges(draw: st.DrawFn, excludes: bool = False) -> Range:
    prefix = draw(st.integers(24, 30))
    base = draw(st.integers(0, (1 << (32 - prefix)) * 16)) << (32 - prefix)
    network = ipaddress.ip_network((ip("10.0.0.0") + base, prefix))
    net, last = int(network.network_address), int(network.broadcast_address)
    start = draw(st.integers(net + 1, last - 1))
    end = draw(st.integers(start, last - 1))
    conf: dict[str, str] = {"subnet": str(network)}
    if draw(st.booleans()):
        conf["rangeStart"] = str(ipaddress.IPv4Address(start))
    if draw(st.booleans()):
        conf["rangeEnd"] = str(ipaddress.IPv4Address(end))
    if draw(st.booleans()):
        # a host address of the subnet (the network and broadcast addresses are refused, test_gateway_host_address)
        conf["gateway"] = str(ipaddress.IPv4Address(draw(st.integers(net + 1, last - 1))))
    r = Range.from_config(conf, "ipam.ranges[0][0]")
    if not excludes:
        return r
    # possibly overlapping, possibly reaching outside the subnet (ipam.exclude allows both)
    spans = draw(st.lists(st.tuples(st.integers(net - 4, last + 4), st.integers(0, 8)), max_size=3))
    return r.with_excludes(tuple((lo, lo + n) for lo, n in spans))


@settings(max_examples=200, deadline=None)
@given(st.one_of(small_ranges(), small_ranges(excludes=True)), st.data())
def test_first_free_is_lowest_usable_non_taken(r: Range, data: st.DataObject) -> None:
    taken = data.draw(st.sets(st.integers(r.network, r.last)))
    lo = data.draw(st.integers(r.network - 2, r.last + 2))
    hi = data.draw(st.integers(lo, r.last + 2))
    expected = next((v for v in brute_usable(r) if lo <= v <= hi and v not in taken), None)
    assert r.first_free(lo, hi, taken) == expected
    assert r.first_free(r.network, r.last, taken) == next((v for v in brute_usable(r) if v not in taken), None)


@settings(max_examples=300, deadline=None)
@given(st.one_of(small_ranges(), small_ranges(excludes=True)))
def test_usable_count_matches_brute_force_property(r: Range) -> None:
    assert r.usable_count() == len(brute_usable(r))


@settings(max_examples=200, deadline=None)
@given(small_ranges(), st.data())
def test_free_plus_allocated_equals_usable_count(r: Range, data: st.DataObject) -> None:
    check_free_plus_allocated(r, data)


@settings(max_examples=200, deadline=None)
@given(small_ranges(excludes=True), st.data())
def test_free_plus_allocated_equals_usable_count_with_excludes(r: Range, data: st.DataObject) -> None:
    check_free_plus_allocated(r, data)


def check_free_plus_allocated(r: Range, data: st.DataObject) -> None:
    """Allocate a random part of the pool, then drain the rest with first_free the way an allocator walks (each
    search starts after the previous pick): no address is handed out twice, and free + allocated = usable_count."""
    usable = brute_usable(r)
    allocated = set(data.draw(st.sets(st.sampled_from(usable)))) if usable else set()
    n_allocated = len(allocated)
    free = 0
    lo = r.network
    while (value := r.first_free(lo, r.last, allocated)) is not None:
        assert value not in allocated and r.usable(value)
        allocated.add(value)
        free += 1
        lo = value + 1
    assert r.first_free(r.network, r.last, allocated) is None
    assert free + n_allocated == r.usable_count()
