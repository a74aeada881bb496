"""Network configuration parsing (ipamd.domain.netconf.parse_netconf).

Field cases: docs/cni-contract.md §5.1 (unknown ipam keys warn), §5.2 (ranges, legacy form, routes, dns, overlap),
T25-T27 (routes, route extras, dns), T31-T35 (invalid ranges, no ipam/ranges, overlap, legacy form).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from ipamd.domain.errors import InvalidConfig
from ipamd.domain.netconf import DEFAULT_BLOCK_PREFIX, NetConf, Route, parse_netconf


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def conf(**ipam: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "testnet", "type": "bridge", "ipam": {"type": "ipamd-cni", **ipam}}


def parse(**ipam: Any) -> NetConf:
    return parse_netconf(conf(**ipam), "testnet")


def invalid(c: dict[str, Any]) -> InvalidConfig:
    with pytest.raises(InvalidConfig) as info:
        parse_netconf(c, "testnet")
    assert info.value.cni_code == 7
    return info.value


# --- ranges -----------------------------------------------------------------------------------------------------

def test_single_range_set() -> None:
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}]])
    assert nc.name == "testnet"
    assert len(nc.range_sets) == 1 and len(nc.range_sets[0]) == 1
    pool = nc.range_sets[0][0]
    assert pool.id == "testnet/0a010200-24"
    assert pool.network == "testnet"
    assert pool.range.subnet == ipaddress.ip_network("10.1.2.0/24")
    assert nc.routes == () and nc.dns == {} and nc.warnings == ()


def test_legacy_subnet_form_is_range_set_zero() -> None:
    # T35: ipam.subnet/rangeStart/rangeEnd/gateway directly under ipam.
    nc = parse(subnet="10.1.2.0/24", rangeStart="10.1.2.10", rangeEnd="10.1.2.20", gateway="10.1.2.254")
    assert len(nc.range_sets) == 1
    r = nc.range_sets[0][0].range
    assert (r.start, r.end, r.gateway) == (ip("10.1.2.10"), ip("10.1.2.20"), ip("10.1.2.254"))
    assert nc.warnings == ()


def test_legacy_subnet_is_prepended_to_ranges() -> None:
    nc = parse(subnet="10.1.2.0/24", ranges=[[{"subnet": "2001:db8:1::/64"}]])
    assert [str(rs[0].range.subnet) for rs in nc.range_sets] == ["10.1.2.0/24", "2001:db8:1::/64"]


def test_multiple_range_sets_keep_configuration_order() -> None:
    # DUAL(v) of cni-conformance §6 plus a second subnet inside the first set.
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.3.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
    assert [[str(p.range.subnet) for p in rs] for rs in nc.range_sets] == [
        ["10.1.2.0/24", "10.1.3.0/24"], ["2001:db8:1::/64"]]
    assert [p.id for rs in nc.range_sets for p in rs] == [
        "testnet/0a010200-24", "testnet/0a010300-24", "testnet/20010db8000100000000000000000000-64"]


def test_pool_for() -> None:
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.3.0/24"}], [{"subnet": "2001:db8:1::/64"}]])
    found = nc.pool_for(ipaddress.ip_address("10.1.3.7"))
    assert found is not None and found[0] == 0 and found[1].id == "testnet/0a010300-24"
    found = nc.pool_for(ipaddress.ip_address("2001:db8:1::9"))
    assert found is not None and found[0] == 1
    assert nc.pool_for(ipaddress.ip_address("10.1.4.1")) is None


@pytest.mark.parametrize("ranges, must_contain", [
    # T34: overlap across range sets
    ([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.128/25"}]], ["10.1.2.128/25", "10.1.2.0/24", "overlap"]),
    # overlap within one range set
    ([[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.0/25"}]], ["10.1.2.0/25", "overlap"]),
    # identical subnets in two sets
    ([[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/24"}]], ["10.1.2.0/24", "overlap"]),
    # bigger subnet after a smaller one
    ([[{"subnet": "10.1.2.0/25"}], [{"subnet": "10.1.0.0/16"}]], ["10.1.0.0/16", "overlap"]),
    ([[{"subnet": "2001:db8::/64"}], [{"subnet": "2001:db8::/48"}]], ["2001:db8::/48", "overlap"]),
])
def test_overlapping_ranges_are_invalid(ranges: list[Any], must_contain: list[str]) -> None:
    err = invalid(conf(ranges=ranges))
    for part in must_contain:
        assert part in err.msg


def test_legacy_subnet_overlapping_ranges_is_invalid() -> None:
    invalid(conf(subnet="10.1.2.0/24", ranges=[[{"subnet": "10.1.2.0/24"}]]))


def test_same_subnet_in_two_networks_is_fine() -> None:
    # T38: pools of different networks are independent, their ids differ by the network name.
    a = parse_netconf({**conf(ranges=[[{"subnet": "10.1.2.0/24"}]]), "name": "netA"}, "netA")
    b = parse_netconf({**conf(ranges=[[{"subnet": "10.1.2.0/24"}]]), "name": "netB"}, "netB")
    assert a.range_sets[0][0].id != b.range_sets[0][0].id


def test_mixed_families_in_one_range_set_are_invalid() -> None:
    err = invalid(conf(ranges=[[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]))
    assert "2001:db8::/64" in err.msg and "famil" in err.msg


def test_two_families_in_two_sets_are_fine() -> None:
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8::/64"}]])
    assert [rs[0].range.family for rs in nc.range_sets] == [4, 6]


@pytest.mark.parametrize("c, must_contain", [
    ({"cniVersion": "1.0.0", "name": "testnet", "type": "bridge"}, ["ipam"]),                       # T33 no ipam
    ({"cniVersion": "1.0.0", "name": "testnet", "ipam": "ipamd-cni"}, ["ipam"]),
    (conf(), ["ranges"]),                                                                             # T33
    (conf(ranges=[]), ["ranges"]),                                                                    # T33
    (conf(ranges=[[]]), ["ipam.ranges[0]"]),
    (conf(ranges=[{"subnet": "10.1.2.0/24"}]), ["ipam.ranges[0]"]),                                  # not nested
    (conf(ranges="10.1.2.0/24"), ["ipam.ranges", "10.1.2.0/24"]),
    (conf(ranges=[[{"subnet": "10.1.2.0/31"}]]), ["10.1.2.0/31", "too small"]),                      # T31
    (conf(ranges=[[{"subnet": "10.1.2.5/24"}]]), ["10.1.2.5/24"]),                                   # T31
    (conf(ranges=[[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}]]), ["rangeStart", "10.1.3.1"]),  # T32
    (conf(subnet="10.1.2.0/33"), ["10.1.2.0/33"]),                                                    # T32
])
def test_invalid_configs(c: dict[str, Any], must_contain: list[str]) -> None:
    err = invalid(c)
    for part in must_contain:
        assert part in err.msg, (part, err.msg)


# --- blockSize ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subnet, expected", [
    ("10.0.0.0/16", DEFAULT_BLOCK_PREFIX[4]),     # default /26
    ("10.1.2.0/24", DEFAULT_BLOCK_PREFIX[4]),
    ("10.1.2.0/28", 28),                           # default clamps to the pool prefix
    ("10.1.2.0/30", 30),
    ("2001:db8::/64", DEFAULT_BLOCK_PREFIX[6]),   # default /122
    ("2001:db8::/124", 124),
])
def test_block_size_default(subnet: str, expected: int) -> None:
    nc = parse(ranges=[[{"subnet": subnet}]])
    assert nc.range_sets[0][0].block_prefix == expected


@pytest.mark.parametrize("key, value, subnet, expected", [
    ("blockSize", 28, "10.1.2.0/24", 28),
    ("blockSize", 24, "10.1.2.0/24", 24),          # one block = the whole pool
    ("blockSize", 32, "10.1.2.0/24", 32),
    ("blockSize6", 120, "2001:db8::/64", 120),
    ("blockSize", 20, "2001:db8::/64", 122),       # blockSize applies to IPv4 only
])
def test_block_size_explicit(key: str, value: int, subnet: str, expected: int) -> None:
    nc = parse(ranges=[[{"subnet": subnet}]], **{key: value})
    assert nc.range_sets[0][0].block_prefix == expected


@pytest.mark.parametrize("key, value, subnet", [
    ("blockSize", "28", "10.1.2.0/24"),            # a string is not a prefix length
    ("blockSize", 28.0, "10.1.2.0/24"),
    ("blockSize", True, "10.1.2.0/24"),
    ("blockSize", 20, "10.1.2.0/24"),              # smaller than the pool prefix
    ("blockSize", 33, "10.1.2.0/24"),
    ("blockSize6", 48, "2001:db8::/64"),
    ("blockSize6", 129, "2001:db8::/64"),
    ("blockSize6", "122", "2001:db8::/64"),
])
def test_block_size_invalid(key: str, value: Any, subnet: str) -> None:
    err = invalid(conf(ranges=[[{"subnet": subnet}]], **{key: value}))
    assert key in err.msg and repr(value).strip("'") in err.msg


# --- exclude ------------------------------------------------------------------------------------------------------

def test_exclude_entries_apply_to_their_pools() -> None:
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]],
               exclude=["10.1.2.0/28", "10.1.3.77"])
    r0, r1 = nc.range_sets[0][0].range, nc.range_sets[1][0].range
    assert r0.excludes == ((ip("10.1.2.0"), ip("10.1.2.15")),)
    assert r1.excludes == ((ip("10.1.3.77"), ip("10.1.3.77")),)
    assert r0.first_free(r0.network, r0.last, ()) == ip("10.1.2.16")


@pytest.mark.parametrize("exclude", ["10.1.2.0/28", ["bogus"], ["10.1.2.5/24"], [5]])
def test_exclude_invalid(exclude: Any) -> None:
    err = invalid(conf(ranges=[[{"subnet": "10.1.2.0/24"}]], exclude=exclude))
    assert "exclude" in err.msg


# --- routes -------------------------------------------------------------------------------------------------------

def test_routes_parsed_with_gw_and_extras() -> None:
    # T25, T26
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}]], routes=[
        {"dst": "0.0.0.0/0"},
        {"dst": "192.168.0.0/16", "gw": "10.1.2.254"},
        {"dst": "::/0"},
        {"dst": "10.9.0.0/16", "mtu": 1400, "priority": 5, "unknown": 1},
        {"dst": "10.8.0.0/16", "gw": ""},
    ])
    assert nc.routes == (
        Route("0.0.0.0/0"),
        Route("192.168.0.0/16", "10.1.2.254"),
        Route("::/0"),
        Route("10.9.0.0/16", None, (("mtu", 1400), ("priority", 5))),
        Route("10.8.0.0/16"),
    )


def test_route_extras_all_kept() -> None:
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}]],
               routes=[{"dst": "10.9.0.0/16", "mtu": 1400, "advmss": 1360, "priority": 5, "table": 100,
                        "scope": 253}])
    assert dict(nc.routes[0].extra) == {"mtu": 1400, "advmss": 1360, "priority": 5, "table": 100, "scope": 253}


@pytest.mark.parametrize("routes, must_contain", [
    ([{"dst": "bogus"}], ["ipam.routes[0].dst", "bogus"]),
    ([{"dst": "0.0.0.0/0"}, {"gw": "10.1.2.1"}], ["ipam.routes[1].dst", "None"]),
    ([{"dst": 5}], ["ipam.routes[0].dst", "5"]),
    ([{"dst": "0.0.0.0/0", "gw": "nope"}], ["ipam.routes[0].gw", "nope"]),
    ([{"dst": "0.0.0.0/0", "gw": "2001:db8::1"}], ["ipam.routes[0].gw", "2001:db8::1"]),  # family mismatch
    (["0.0.0.0/0"], ["ipam.routes[0]"]),
    ({"dst": "0.0.0.0/0"}, ["ipam.routes"]),
])
def test_routes_invalid(routes: Any, must_contain: list[str]) -> None:
    err = invalid(conf(ranges=[[{"subnet": "10.1.2.0/24"}]], routes=routes))
    for part in must_contain:
        assert part in err.msg, (part, err.msg)


# --- pre-flight validation of routes (docs/namespace-checks.md "Pre-flight validation at ADD") -----------------------

DUAL = [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]


@pytest.mark.parametrize("routes", [
    [{"dst": "0.0.0.0/0", "gw": "10.1.2.254"}],                     # a host address inside the subnet
    [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}],                       # the range's gateway
    [{"dst": "::/0", "gw": "2001:db8:1::ffff"}, {"dst": "10.0.0.0/8", "gw": "10.1.2.9"}],
    [{"dst": "2001:db8:9::/48"}],                                   # no gw: via the allocation's gateway
    [{"dst": "192.168.0.0/16"}, {"dst": "::/0"}],                   # T25: a family without gw is fine
])
def test_route_gateways_reachable_on_the_link_pass(routes: list[dict[str, str]]) -> None:
    nc = parse(ranges=DUAL, routes=routes)
    assert [(r.dst, r.gw) for r in nc.routes] == [(r["dst"], r.get("gw")) for r in routes]


def test_route_gateway_may_be_a_ranges_gateway_outside_nothing_else() -> None:
    # the pool's own gateway is on the link by definition (point-to-point pools give a link-local one); it is
    # accepted even though it is not inside another range of the family
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24", "gateway": "10.1.2.254"}]],
               routes=[{"dst": "10.9.0.0/16", "gw": "10.1.2.254"}])
    assert nc.routes[0].gw == "10.1.2.254"


@pytest.mark.parametrize("ranges, routes, must_contain", [
    # dst: a prefix with zero host bits and a length
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "10.9.0.5/16"}], ["ipam.routes[0].dst", "10.9.0.5/16", "host bits"]),
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0"}],
     ["ipam.routes[1].dst", "10.9.0.0", "not a CIDR"]),
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "10.9.0.0/33"}], ["ipam.routes[0].dst", "10.9.0.0/33"]),
    # gw: a plain address of the dst's family
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "0.0.0.0/0", "gw": "10.1.2.1/24"}], ["ipam.routes[0].gw", "10.1.2.1/24"]),
    (DUAL, [{"dst": "::/0", "gw": "fe80::1%eth0"}], ["ipam.routes[0].gw", "fe80::1%eth0", "zone"]),
    (DUAL, [{"dst": "::/0", "gw": "10.1.2.1"}], ["ipam.routes[0].gw", "10.1.2.1", "family", "::/0"]),
    # gw: reachable on the link
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "0.0.0.0/0", "gw": "192.168.1.1"}],
     ["ipam.routes[0].gw", "192.168.1.1", "not reachable on the link", "10.1.2.0/24"]),
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "::/0", "gw": "2001:db8:1::1"}],
     ["ipam.routes[0].gw", "2001:db8:1::1", "no IPv6 range"]),
    (DUAL, [{"dst": "::/0", "gw": "fe80::1"}], ["ipam.routes[0].gw", "fe80::1", "2001:db8:1::/64"]),
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "10.9.0.0/16", "gw": "10.1.2.0"}],
     ["ipam.routes[0].gw", "10.1.2.0", "network address"]),
    ([[{"subnet": "10.1.2.0/24"}]], [{"dst": "10.9.0.0/16", "gw": "10.1.2.255"}],
     ["ipam.routes[0].gw", "10.1.2.255", "broadcast address"]),
])
def test_route_preflight_errors_name_the_field(ranges: Any, routes: Any, must_contain: list[str]) -> None:
    err = invalid(conf(ranges=ranges, routes=routes))
    for part in must_contain:
        assert part in err.msg, (part, err.msg)


@pytest.mark.parametrize("gateway, word", [("10.1.2.0", "network"), ("10.1.2.255", "broadcast")])
def test_gateway_must_be_a_host_address_of_its_subnet(gateway: str, word: str) -> None:
    """Field case B41, the gateway part (plugins #1294): the network or broadcast address cannot be a gateway."""
    err = invalid(conf(ranges=[[{"subnet": "10.1.2.0/24", "gateway": gateway}]]))
    assert "ipam.ranges[0][0] gateway %s is the %s address" % (gateway, word) in err.msg, err.msg
    legacy = invalid(conf(subnet="10.1.2.0/24", gateway=gateway))  # the legacy single range too
    assert gateway in legacy.msg and word in legacy.msg


# --- checkNetns ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ipam, expected", [({}, True), ({"checkNetns": False}, False), ({"checkNetns": True}, True)])
def test_check_netns_switch(ipam: dict[str, Any], expected: bool) -> None:
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}]], **ipam)
    assert nc.check_netns is expected and nc.warnings == ()


@pytest.mark.parametrize("value", ["false", 0, None, [False]])
def test_check_netns_must_be_a_boolean(value: Any) -> None:
    err = invalid(conf(ranges=[[{"subnet": "10.1.2.0/24"}]], checkNetns=value))
    assert "ipam.checkNetns" in err.msg and repr(value) in err.msg


# --- dns ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dns, expected", [
    ({"nameservers": ["10.1.2.1"], "search": ["a.local"]}, {"nameservers": ["10.1.2.1"], "search": ["a.local"]}),
    ({"nameservers": ["10.1.2.1"], "domain": "a.local", "options": ["ndots:5"]},
     {"nameservers": ["10.1.2.1"], "domain": "a.local", "options": ["ndots:5"]}),
    ({}, {}),
    ({"nameservers": [], "search": None, "domain": ""}, {}),
])
def test_dns(dns: dict[str, Any], expected: dict[str, Any]) -> None:
    assert parse(ranges=[[{"subnet": "10.1.2.0/24"}]], dns=dns).dns == expected


@pytest.mark.parametrize("dns, must_contain", [
    (["10.1.2.1"], ["ipam.dns"]),
    ({"nameservers": "10.1.2.1"}, ["ipam.dns.nameservers"]),
    ({"search": [1]}, ["ipam.dns.search"]),
    ({"domain": 5}, ["ipam.dns.domain"]),
])
def test_dns_invalid(dns: Any, must_contain: list[str]) -> None:
    err = invalid(conf(ranges=[[{"subnet": "10.1.2.0/24"}]], dns=dns))
    for part in must_contain:
        assert part in err.msg


# --- unknown keys, socket --------------------------------------------------------------------------------------------

def test_unknown_ipam_keys_warn_naming_the_key() -> None:
    # §5.1 project decision: unknown keys inside ipam -> ignore + warning.
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}]], fooBar=1, rangez=[])
    assert len(nc.warnings) == 2
    assert any("fooBar" in w for w in nc.warnings)
    assert any("rangez" in w for w in nc.warnings)


def test_known_host_local_keys_do_not_warn() -> None:
    nc = parse(ranges=[[{"subnet": "10.1.2.0/24"}]], dataDir="/var/lib/cni", resolvConf="/etc/resolv.conf",
               socket="/run/x.sock")
    assert nc.warnings == ()
    assert nc.socket == "/run/x.sock"


def test_unknown_top_level_keys_ignored() -> None:
    # T36
    c = {**conf(ranges=[[{"subnet": "10.1.2.0/24"}]]), "isGateway": True, "mtu": 1400,
         "capabilities": {"ips": True}, "runtimeConfig": {"portMappings": []}, "args": {"cni": {"labels": []}}}
    assert parse_netconf(c, "testnet").warnings == ()


def test_socket_non_string_ignored() -> None:
    assert parse(ranges=[[{"subnet": "10.1.2.0/24"}]], socket=5).socket is None


# --- address classes (field case B41) ------------------------------------------------------------------------------

@pytest.mark.parametrize("ranges, field, cls", [
    ([[{"subnet": "::ffff:10.1.0.0/120"}]], "ipam.ranges[0][0] subnet ::ffff:a01:0/120", "::ffff:0:0/96"),
    ([[{"subnet": "::ffff:0.0.0.0/96"}]], "ipam.ranges[0][0] subnet ::ffff:0:0/96", "::ffff:0:0/96"),
    ([[{"subnet": "10.1.0.0/24"}], [{"subnet": "::ffff:10.1.0.0/120"}]], "ipam.ranges[1][0]", "::ffff:0:0/96"),
    ([[{"subnet": "::10.1.0.0/120"}]], "ipam.ranges[0][0]", "::/96"),
    ([[{"subnet": "::/64"}]], "ipam.ranges[0][0]", "::ffff:0:0/96"),
    ([[{"subnet": "::/120"}]], "ipam.ranges[0][0]", "::/96"),
    ([[{"subnet": "::/0"}]], "ipam.ranges[0][0]", "::ffff:0:0/96"),
    ([[{"subnet": "fe80::/64"}]], "ipam.ranges[0][0]", "fe80::/10"),
    ([[{"subnet": "100::/120"}]], "ipam.ranges[0][0]", "100::/64"),
    ([[{"subnet": "ff02::/120"}]], "ipam.ranges[0][0]", "ff00::/8"),
    ([[{"subnet": "224.1.0.0/24"}]], "ipam.ranges[0][0]", "224.0.0.0/4"),
    ([[{"subnet": "127.0.0.0/24"}]], "ipam.ranges[0][0]", "127.0.0.0/8"),
    ([[{"subnet": "0.0.0.0/24"}]], "ipam.ranges[0][0]", "0.0.0.0/8"),
    ([[{"subnet": "0.0.0.0/0"}]], "ipam.ranges[0][0]", "0.0.0.0/8"),
    ([[{"subnet": "169.254.1.0/24"}]], "ipam.ranges[0][0]", "169.254.0.0/16"),
    ([[{"subnet": "10.1.0.0/24"}, {"subnet": "126.0.0.0/7"}]], "ipam.ranges[0][1]", "127.0.0.0/8"),
])
def test_address_classes_pods_cannot_use_are_refused(ranges: Any, field: str, cls: str) -> None:
    """Field case B41: mapped, compatible, link-local, multicast, loopback and unspecified subnets are code 7 naming
    the range and the class, at parse time (so before anything is written)."""
    err = invalid(conf(ranges=ranges))
    assert err.cni_code == 7
    assert field in err.msg and ("overlaps %s" % cls) in err.msg, err.msg
    legacy = ranges[0][0]["subnet"]
    if len(ranges) == 1 and len(ranges[0]) == 1:  # the legacy single range is judged the same way
        assert "overlaps %s" % cls in invalid(conf(subnet=legacy)).msg


@pytest.mark.parametrize("subnet", ["10.0.0.0/8", "100.64.0.0/10", "192.168.0.0/24", "240.0.0.0/24",
                                    "2001:db8::/64", "fd00::/48", "64:ff9b::/120", "::1:0:0:0/120"])
def test_usable_classes_are_accepted(subnet: str) -> None:
    nc = parse(ranges=[[{"subnet": subnet}]])
    assert str(nc.range_sets[0][0].range.subnet) == subnet
