"""Does a pool overlap the node's own networks? The pure decision (no I/O; docs/namespace-checks.md "Node check").

A pool whose subnet overlaps an address or a route of the node (its host network namespace) would hand pods
addresses the node already uses or reaches elsewhere: the node's own traffic to them would go to the pods, or the
pods' to the node's network (the seed's route validation; issue 10 item 3). ``ipamd.netns.observe_node`` fills a
:class:`NodeState` from the kernel; :func:`node_conflicts` compares it with one pool's range.

What counts (a pool ``P`` with subnet ``S`` and gateway ``G``):

- an **address** ``a/len`` on any interface conflicts when its network ``a/len`` overlaps ``S``;
- a **route** of the main table (unicast, blackhole, unreachable, prohibit; one per next hop of a multipath route)
  conflicts when its destination lies inside ``S`` (``10.1.0.0/16 via 192.168.1.1`` for pool ``10.0.0.0/8``), or
  when it is an on-link route (unicast, no gateway) to a network that contains ``S`` (the node's link reaches
  those addresses directly). A route via a gateway to a network that contains ``S`` (the default route, a
  summary route towards a router) is not a conflict: the pool's own, more specific routes take precedence on
  this node, and every pod subnet lies inside the default route.

Except what the CNI main plugins put on the node for pod traffic of this very pool (so a second ADD through
``bridge`` or ``ptp`` passes), on an interface whose kind is ``bridge`` or ``veth`` (:data:`POD_LINK_KINDS`):

- the address ``G`` with the pool's prefix length (``bridge`` with ``isGateway``: ``10.99.3.1/24`` on ``cni0``) or
  the full length (``ptp``: ``10.99.3.1/32`` on each host-side veth);
- an on-link route (unicast, no gateway) whose destination lies inside ``S``: the bridge's connected route
  (``10.99.3.0/24 dev cni0 proto kernel``) and ``ptp``'s per-pod routes (``10.99.3.5/32 dev veth1234``).

Everything else inside the pool is a conflict: ``10.99.3.1/24`` on ``eth0`` or on a ``dummy``, another address of
the subnet on the bridge, a route via a gateway into the pool even through a bridge.

Gateway modes (docs/configuration.md "Gateway modes"): in ``block`` mode the pool has no single gateway; what the
node carries is the gateway of its own block with the block's prefix or the full length (``bridge`` with
``isGateway``: ``10.99.3.65/26`` on ``cni0``), so any block's gateway address on a ``bridge`` or ``veth`` is the
pool's own. In ``block`` and ``pointToPoint`` modes pod traffic is routed: the node carries routes to other nodes'
blocks and to single pods (``10.99.3.128/26 via 192.168.1.2 dev eth0``, ``10.99.3.7 dev cali1234``, a blackhole
for its own block as Calico installs), so a unicast or blackhole route to a destination inside the subnet whose
prefix is the block size or longer is the pool's own, through any interface. A ``pointToPoint`` gateway
(169.254.1.1, fe80::1) lies outside every pool and never conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .addr import BITS, Range, to_ip
from .errors import InvalidConfig
from .netcheck import Prefix

#: Interface kinds (``IFLA_INFO_KIND``) on which a pool's own gateway address and on-link routes are expected.
POD_LINK_KINDS = frozenset({"bridge", "veth"})
#: Route types that are read; a local, broadcast, multicast or anycast route is the kernel's bookkeeping of an
#: address (and lives in the local table anyway).
ROUTE_TYPES = frozenset({"unicast", "blackhole", "unreachable", "prohibit"})


@dataclass(frozen=True, slots=True, order=True)
class NodeAddress:
    """An address of the node: ``prefix`` (address and prefix length) on interface ``if_name`` of kind ``kind``
    (``IFLA_INFO_KIND``: ``bridge``, ``veth``, ``dummy``...; ``""`` for a physical device or loopback)."""

    prefix: Prefix
    if_name: str
    kind: str = ""

    def __str__(self) -> str:
        return "address %s on %s" % (self.prefix, self.if_name)


@dataclass(frozen=True, slots=True, order=True)
class NodeRoute:
    """A route of the node's main table: ``dst``, next hop ``gateway`` (an int, or ``None`` on the link), output
    interface ``if_name`` (``""`` for none, e.g. a blackhole) of kind ``kind``, and ``type`` (``unicast``...)."""

    dst: Prefix
    gateway: int | None = None
    if_name: str = ""
    kind: str = ""
    type: str = "unicast"

    def __str__(self) -> str:
        text = "route %s" % self.dst if self.type == "unicast" else "%s route %s" % (self.type, self.dst)
        if self.gateway is not None:
            text += " via %s" % to_ip(self.dst.family, self.gateway)
        if self.if_name:
            text += " dev %s" % self.if_name
        return text


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the node holds: every address of every interface, and the main table's routes."""

    addresses: tuple[NodeAddress, ...] = ()
    routes: tuple[NodeRoute, ...] = ()


def _span(p: Prefix) -> tuple[int, int]:
    size = 1 << (BITS[p.family] - p.prefixlen)
    first = p.value & ~(size - 1)
    return first, first + size - 1


def _subnet(rng: Range) -> Prefix:
    return Prefix(rng.family, rng.network, rng.prefixlen)


def _inside(inner: Prefix, outer: Prefix) -> bool:
    (a, b), (c, d) = _span(inner), _span(outer)
    return inner.family == outer.family and c <= a and b <= d


def _overlaps(x: Prefix, y: Prefix) -> bool:
    (a, b), (c, d) = _span(x), _span(y)
    return x.family == y.family and a <= d and c <= b


def pool_owns_address(rng: Range, address: NodeAddress) -> bool:
    """True if ``address`` is the one a main plugin puts on the node for pool ``rng``: the pool's gateway (in
    ``block`` mode: a block's gateway, with the block's prefix), with the pool's prefix length or the full length,
    on a ``bridge`` or ``veth``."""
    p = address.prefix
    if address.kind not in POD_LINK_KINDS or p.family != rng.family:
        return False
    if rng.per_block:  # gatewayMode block: a block's gateway with the block's prefix (or the full length)
        return (rng.contains(p.value) and rng.block_gateway(p.value) == p.value
                and p.prefixlen in (rng.block_prefix, BITS[rng.family]))
    return (rng.gateway is not None and p.value == rng.gateway
            and p.prefixlen in (rng.prefixlen, BITS[rng.family]))


def pool_owns_route(rng: Range, route: NodeRoute) -> bool:
    """True if ``route`` is one a main plugin (or the kernel, for the bridge's address) puts on the node for pod
    traffic of pool ``rng``: unicast, on the link (no gateway), through a ``bridge`` or ``veth``, to a
    destination inside the pool's subnet; in ``block`` and ``pointToPoint`` modes also a unicast (any next hop, any
    interface) or blackhole route to a block or pod of the pool (inside the subnet, prefix at least the block
    size)."""
    if rng.mode != "subnet" and rng.block_prefix and route.type in ("unicast", "blackhole") \
            and route.dst.prefixlen >= rng.block_prefix and _inside(route.dst, _subnet(rng)):
        return True  # routed modes: block and pod routes of the pool, through any interface (module docstring)
    return (route.type == "unicast" and route.gateway is None and route.kind in POD_LINK_KINDS
            and _inside(route.dst, _subnet(rng)))


def address_conflicts(rng: Range, address: NodeAddress) -> bool:
    """True if the node's ``address`` makes pool ``rng`` unusable on this node (its network overlaps the pool's
    subnet and it is not the pool's own gateway address, :func:`pool_owns_address`)."""
    return _overlaps(address.prefix, _subnet(rng)) and not pool_owns_address(rng, address)


def route_conflicts(rng: Range, route: NodeRoute) -> bool:
    """True if the node's ``route`` makes pool ``rng`` unusable on this node: its destination lies inside the pool's
    subnet, or it is an on-link route (unicast, no gateway) to a network containing it (not the default route);
    and it is not one of the pool's own routes (:func:`pool_owns_route`). See the module docstring."""
    if route.type not in ROUTE_TYPES:
        return False
    subnet = _subnet(rng)
    inside = _inside(route.dst, subnet)
    on_link_around = (route.type == "unicast" and route.gateway is None and route.dst.prefixlen > 0
                      and _inside(subnet, route.dst))
    return (inside or on_link_around) and not pool_owns_route(rng, route)


def node_conflicts(rng: Range, state: NodeState) -> tuple[NodeAddress | NodeRoute, ...]:
    """Everything on the node that pool ``rng`` overlaps: the conflicting addresses (sorted), then the conflicting
    routes (sorted). Empty: the pool may be used on this node. Pure and deterministic."""
    addresses = sorted(a for a in state.addresses if address_conflicts(rng, a))
    routes = sorted(r for r in state.routes if route_conflicts(rng, r))
    return (*addresses, *routes)


def node_conflict_error(rng: Range, network: str, node: str,
                        conflicts: tuple[NodeAddress | NodeRoute, ...]) -> InvalidConfig:
    """The code-7 error for a pool that overlaps the node: the message names the pool's subnet and the first
    conflict (its interface), the details list every conflict. ``conflicts`` must not be empty."""
    first = conflicts[0]
    msg = "ipam subnet %s of network %s overlaps the node's %s (node %s)" % (rng.subnet, network, first, node)
    details = ("node %s: %s. A pool must not overlap the node's own addresses or routes: pods would take "
               "addresses the node uses or reaches through them (docs/namespace-checks.md \"Node check\")"
               % (node, "; ".join(str(c) for c in conflicts)))
    return InvalidConfig(msg, details)
