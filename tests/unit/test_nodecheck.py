"""The node check (issue 10 item 3, docs/namespace-checks.md "Node check"): the pure decision
(ipamd.domain.nodecheck: given the node's addresses and routes and a pool, ok or the conflicts) and the verdict
cache around it (ipamd.nodecheck.NodeCheck, with a double for the look). No namespace is read here.
"""

from __future__ import annotations

import ipaddress

import pytest

from ipamd.domain.addr import Range
from ipamd.domain.errors import InvalidConfig
from ipamd.domain.netcheck import Prefix
from ipamd.domain.netconf import parse_netconf
from ipamd.domain.nodecheck import NodeAddress, NodeRoute, NodeState, node_conflict_error, node_conflicts
from ipamd.metrics import Metrics
from ipamd.nodecheck import NodeCheck


def pool(subnet: str, gateway: str | None = None) -> Range:
    raw = {"subnet": subnet}
    if gateway:
        raw["gateway"] = gateway
    return Range.from_config(raw, "ipam.ranges[0][0]")


def addr(text: str, if_name: str = "eth0", kind: str = "") -> NodeAddress:
    return NodeAddress(Prefix.parse(text), if_name, kind)


def route(dst: str, via: str | None = None, dev: str = "eth0", kind: str = "", type_: str = "unicast") -> NodeRoute:
    net = ipaddress.ip_network(dst)
    gw = int(ipaddress.ip_address(via)) if via else None
    return NodeRoute(Prefix(net.version, int(net.network_address), net.prefixlen), gw, dev, kind, type_)


#: A typical node: a LAN address and its connected route, a default route, IPv6 the same, loopback.
NODE = NodeState(
    addresses=(addr("127.0.0.1/8", "lo"), addr("::1/128", "lo"), addr("192.168.1.10/24"), addr("fd12:3::10/64"),
               addr("fe80::1/64")),
    routes=(route("0.0.0.0/0", "192.168.1.1"), route("192.168.1.0/24"), route("10.1.0.0/16", "192.168.1.1"),
            route("::/0", "fd12:3::1"), route("fd12:3::/64"), route("fe80::/64"),
            route("fd34:1::/48", "fd12:3::1")),
)


@pytest.mark.parametrize("subnet, first", [
    ("192.168.1.0/24", "address 192.168.1.10/24 on eth0"),           # the brief's case: the node's LAN
    ("192.168.1.128/25", "address 192.168.1.10/24 on eth0"),         # inside the node's LAN, not its address
    ("192.168.0.0/16", "address 192.168.1.10/24 on eth0"),           # around it
    ("10.0.0.0/8", "route 10.1.0.0/16 via 192.168.1.1 dev eth0"),    # the brief's case: a route inside the pool
    ("10.1.2.0/24", None),                                           # inside a route via a router: allowed
    ("fd12:3::/64", "address fd12:3::10/64 on eth0"),                # IPv6 equivalents
    ("fd12:3::8000:0:0:0/65", "address fd12:3::10/64 on eth0"),
    ("fd34::/16", "route fd34:1::/48 via fd12:3::1 dev eth0"),
    ("fd34:1:2::/64", None),
])
def test_conflict_or_clear(subnet, first):
    """Issue 10 item 3: an address whose network overlaps the pool, or a route inside the pool, is a conflict; a
    pool inside a route via a gateway (the default route, a summary route) is not."""
    found = node_conflicts(pool(subnet), NODE)
    assert (str(found[0]) if found else None) == first


@pytest.mark.parametrize("subnet", ["10.99.3.0/24", "172.16.0.0/12", "fd00:99::/64", "100.64.0.0/10"])
def test_pools_that_overlap_nothing_are_clear(subnet):
    """A pool that overlaps nothing of the node is accepted (the default route contains every pool)."""
    assert node_conflicts(pool(subnet), NODE) == ()


def test_bridge_gateway_and_connected_route_of_the_pool_are_its_own():
    """What the real bridge plugin puts on the node for this pool (isGateway: the gateway with the pool's prefix on
    the bridge, and the kernel's connected route) does not trip the check, in both families, so a second ADD works."""
    state = NodeState(
        addresses=(*NODE.addresses, addr("10.99.3.1/24", "cni0", "bridge"), addr("fd00:99::1/64", "cni0", "bridge")),
        routes=(*NODE.routes, route("10.99.3.0/24", dev="cni0", kind="bridge"),
                route("fd00:99::/64", dev="cni0", kind="bridge")))
    assert node_conflicts(pool("10.99.3.0/24"), state) == ()
    assert node_conflicts(pool("fd00:99::/64"), state) == ()


def test_ptp_host_side_addresses_and_pod_routes_are_the_pools_own():
    """ptp puts the gateway with the full length on each host-side veth and a /32 route per pod through it."""
    state = NodeState(addresses=(addr("10.99.3.1/32", "veth1", "veth"), addr("10.99.3.1/32", "veth2", "veth")),
                      routes=(route("10.99.3.5/32", dev="veth1", kind="veth"),
                              route("10.99.3.6/32", dev="veth2", kind="veth")))
    assert node_conflicts(pool("10.99.3.0/24"), state) == ()


@pytest.mark.parametrize("state, first", [
    # the gateway address, but on a physical interface or a dummy: the node's own network
    (NodeState(addresses=(addr("10.99.3.1/24", "eth1"),)), "address 10.99.3.1/24 on eth1"),
    (NodeState(addresses=(addr("10.99.3.1/24", "dummy0", "dummy"),)), "address 10.99.3.1/24 on dummy0"),
    # another address of the pool on the bridge, or the gateway with another prefix length
    (NodeState(addresses=(addr("10.99.3.7/24", "cni0", "bridge"),)), "address 10.99.3.7/24 on cni0"),
    (NodeState(addresses=(addr("10.99.3.1/16", "cni0", "bridge"),)), "address 10.99.3.1/16 on cni0"),
    # a route into the pool via a gateway, even through a bridge; an on-link route on a physical interface
    (NodeState(routes=(route("10.99.3.64/26", "10.99.3.2", "cni0", "bridge"),)),
     "route 10.99.3.64/26 via 10.99.3.2 dev cni0"),
    (NodeState(routes=(route("10.99.3.0/24", dev="eth1"),)), "route 10.99.3.0/24 dev eth1"),
    # an on-link route around the pool: the node's link reaches those addresses
    (NodeState(routes=(route("10.99.0.0/16", dev="eth1"),)), "route 10.99.0.0/16 dev eth1"),
    # a blackhole inside the pool would swallow pod traffic
    (NodeState(routes=(route("10.99.3.128/25", dev="", type_="blackhole"),)), "blackhole route 10.99.3.128/25"),
])
def test_what_is_not_the_pools_own_is_a_conflict(state, first):
    """Only the pool's gateway on a bridge/veth and on-link routes into the pool through a bridge/veth are exempt
    (docs/namespace-checks.md "Node check"); everything else inside the pool is a conflict."""
    found = node_conflicts(pool("10.99.3.0/24"), state)
    assert found and str(found[0]) == first


def test_another_family_never_conflicts():
    """An IPv6 pool is not compared with IPv4 addresses and routes, nor the other way round."""
    assert node_conflicts(pool("fd00:99::/64"), NodeState(addresses=(addr("10.0.0.1/8"),))) == ()
    assert node_conflicts(pool("10.99.3.0/24"), NodeState(routes=(route("::/0", "fd12:3::1"),))) == ()


def test_error_names_subnet_first_conflict_interface_and_lists_all():
    """The code-7 error names the pool's subnet, the node's address or route and its interface; details list all."""
    rng = pool("192.168.1.0/24")
    err = node_conflict_error(rng, "net1", "node-a", node_conflicts(rng, NODE))
    assert isinstance(err, InvalidConfig) and err.cni_code == 7
    assert err.msg == ("ipam subnet 192.168.1.0/24 of network net1 overlaps the node's address 192.168.1.10/24 on "
                       "eth0 (node node-a)")
    assert "route 192.168.1.0/24 dev eth0" in err.details


# -- the verdict cache (ipamd.nodecheck.NodeCheck) -----------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Looks:
    """A double for ``netns.observe_node``: returns ``state``, or raises ``error``; counts the looks."""

    def __init__(self, state: NodeState = NODE, error: Exception | None = None) -> None:
        self.state, self.error, self.count = state, error, 0

    def __call__(self) -> NodeState:
        self.count += 1
        if self.error is not None:
            raise self.error
        return self.state


def netconf(*subnets: str, check_node: bool = True):
    return parse_netconf({"cniVersion": "1.0.0", "name": "net1", "type": "bridge",
                          "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": s}] for s in subnets],
                                   "checkNode": check_node}}, "net1")


def counts(metrics: Metrics) -> dict[str, float]:
    return {r: metrics.node_checks.labels(r)._value.get() for r in ("ok", "conflict", "unknown")}


def test_clear_pools_are_remembered_for_the_ttl_and_one_look_serves_an_add():
    """A clear pool is not looked at again for ``ttl`` seconds; an ADD with two new pools looks once."""
    looks, clock, metrics = Looks(), Clock(), Metrics()
    check = NodeCheck("node-a", looks, ttl=60, clock=clock, metrics=metrics)
    check.require(netconf("10.99.3.0/24", "fd00:99::/64"))
    check.require(netconf("10.99.3.0/24"))
    assert looks.count == 1
    clock.now += 61
    check.require(netconf("10.99.3.0/24"))
    assert looks.count == 2
    assert counts(metrics) == {"ok": 3, "conflict": 0, "unknown": 0}


def test_a_refused_pool_is_looked_at_again_on_each_add():
    """A refusal is not remembered: once the node is fixed, the next ADD passes."""
    looks, metrics = Looks(), Metrics()
    check = NodeCheck("node-a", looks, clock=Clock(), metrics=metrics)
    with pytest.raises(InvalidConfig, match=r"192\.168\.1\.0/24 .* address 192\.168\.1\.10/24 on eth0"):
        check.require(netconf("192.168.1.0/24"))
    looks.state = NodeState()
    check.require(netconf("192.168.1.0/24"))
    assert looks.count == 2
    assert counts(metrics) == {"ok": 1, "conflict": 1, "unknown": 0}


def test_a_failure_to_look_allows_the_pool_counts_it_and_waits_before_looking_again(caplog):
    """Never fail ADD for a failure to look: allowed, one WARNING, counted as unknown, no new look for
    ``retry_after`` seconds."""
    looks, clock, metrics = Looks(error=PermissionError("Operation not permitted")), Clock(), Metrics()
    check = NodeCheck("node-a", looks, retry_after=10, clock=clock, metrics=metrics)
    check.require(netconf("192.168.1.0/24"))
    check.require(netconf("192.168.1.0/24"))
    assert looks.count == 1
    assert "cannot read node node-a's addresses and routes" in caplog.text
    clock.now += 11
    looks.error = None
    with pytest.raises(InvalidConfig):
        check.require(netconf("192.168.1.0/24"))
    assert counts(metrics) == {"ok": 0, "conflict": 1, "unknown": 1}


def test_check_node_false_skips_the_look():
    """``ipam.checkNode: false`` turns the check off for that network (routed set-ups whose node routes other
    nodes' blocks of the pool)."""
    looks = Looks()
    NodeCheck("node-a", looks).require(netconf("192.168.1.0/24", check_node=False))
    assert looks.count == 0


def test_check_known_warns_about_each_overlapping_pool_and_never_raises(caplog):
    """At start-up every pool etcd has a record of is checked: a WARNING per pool whose ADDs will be refused."""
    check = NodeCheck("node-a", Looks(), clock=Clock())
    assert check.check_known([("net1", pool("192.168.1.0/24")), ("net2", pool("10.99.3.0/24"))]) == 1
    assert "ipam subnet 192.168.1.0/24 of network net1 overlaps" in caplog.text
    assert NodeCheck("node-a", Looks(error=OSError("boom"))).check_known([("net1", pool("10.0.0.0/8"))]) == 0


def test_checknode_must_be_a_boolean():
    with pytest.raises(InvalidConfig, match=r"ipam\.checkNode 'no' is not true or false"):
        parse_netconf({"cniVersion": "1.0.0", "name": "n", "type": "bridge",
                       "ipam": {"type": "ipamd-cni", "subnet": "10.1.2.0/24", "checkNode": "no"}}, "n")
