"""What an attachment should look like inside its network namespace, what was seen there, and the comparison of the
two (pure: no I/O; docs/namespace-checks.md).

The daemon builds :class:`Expected` from what it handed out (the handle's allocations, the result's routes),
``ipamd.netns.observe`` fills an :class:`Observation` from the kernel, and :func:`compare` lists what differs as
:class:`Finding` values, most fundamental first. CNI CHECK raises :func:`check_error` of the findings; ``ipamctl
verify``, the continuous health loop and the reconciler read the findings themselves.

Reasons (the ``reason`` of a finding, the ``reason`` label of ``ipamd_attachments_unhealthy``), in the order
:func:`compare` reports them::

    netns_missing          the recorded namespace path does not exist or is not a network namespace
    observe_failed         the namespace could not be looked at (permission, timeout)
    interface_missing      no interface CNI_IFNAME in the namespace                         CHECK: code 110
    interface_down         the interface is administratively down or has no carrier         CHECK: code 111
    address_mismatch       an allocated address is not on the interface, or has another prefix CHECK: code 112
    route_missing          a route of the result is not there through the interface         CHECK: code 113
    gateway_unreachable    no echo reply from the gateway (probes only: verify, health)
    neighbour_unresolved   the gateway's ARP/NDP entry is not resolved (probes only)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .addr import BITS, to_ip
from .errors import (
    CheckAddressMismatch,
    CheckInterfaceDown,
    CheckInterfaceMissing,
    CheckRouteMissing,
    IpamError,
)
from .model import Allocation

NETNS_MISSING = "netns_missing"
OBSERVE_FAILED = "observe_failed"
INTERFACE_MISSING = "interface_missing"
INTERFACE_DOWN = "interface_down"
ADDRESS_MISMATCH = "address_mismatch"
ROUTE_MISSING = "route_missing"
GATEWAY_UNREACHABLE = "gateway_unreachable"
NEIGHBOUR_UNRESOLVED = "neighbour_unresolved"

#: Every reason, in the order :func:`compare` reports them.
REASONS = (NETNS_MISSING, OBSERVE_FAILED, INTERFACE_MISSING, INTERFACE_DOWN, ADDRESS_MISMATCH, ROUTE_MISSING,
           GATEWAY_UNREACHABLE, NEIGHBOUR_UNRESOLVED)

#: The reasons CHECK fails with, and their exceptions (codes in docs/errors.md).
CHECK_ERRORS: dict[str, type[IpamError]] = {
    INTERFACE_MISSING: CheckInterfaceMissing,
    INTERFACE_DOWN: CheckInterfaceDown,
    ADDRESS_MISMATCH: CheckAddressMismatch,
    ROUTE_MISSING: CheckRouteMissing,
}

#: Neighbour (ARP/NDP) states in which the gateway's link-layer address is known (linux ``NUD_*`` names).
RESOLVED_NEIGHBOUR_STATES = frozenset({"REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"})


@dataclass(frozen=True, slots=True, order=True)
class Prefix:
    """An address with a prefix length: an interface address (``10.1.2.2/24``) or a route destination
    (``0.0.0.0/0``). ``value`` is the address as an int, ``family`` 4 or 6."""

    family: int
    value: int
    prefixlen: int

    def __str__(self) -> str:
        return "%s/%d" % (to_ip(self.family, self.value), self.prefixlen)

    @classmethod
    def parse(cls, text: str) -> Prefix:
        """``"10.1.2.2/24"`` (host bits kept) -> :class:`Prefix`; raises ``ValueError`` for anything else."""
        iface = ipaddress.ip_interface(text)
        return cls(iface.version, int(iface.ip), iface.network.prefixlen)

    @property
    def network(self) -> Prefix:
        """The same prefix with its host bits cleared."""
        host = (1 << (BITS[self.family] - self.prefixlen)) - 1
        return Prefix(self.family, self.value & ~host, self.prefixlen)


@dataclass(frozen=True, slots=True)
class ExpectedRoute:
    """A route of the result as the main plugin installs it: ``dst`` through the interface, via ``gateway`` (an int;
    ``None``: a route on the link with no gateway)."""

    dst: Prefix
    gateway: int | None

    def __str__(self) -> str:
        via = " via %s" % to_ip(self.dst.family, self.gateway) if self.gateway is not None else ""
        return "%s%s" % (self.dst, via)


@dataclass(frozen=True, slots=True)
class Expected:
    """What the attachment should look like: interface ``if_name`` up, holding ``addresses`` (with their prefixes),
    with ``routes`` through it; ``gateways`` are the ``(family, address)`` pairs the probes go to (the allocations'
    own gateways, nothing else)."""

    if_name: str
    addresses: tuple[Prefix, ...]
    routes: tuple[ExpectedRoute, ...]
    gateways: tuple[tuple[int, int], ...]


def expected_state(if_name: str, allocations: Iterable[Allocation],
                   routes: Iterable[tuple[str, str | None]]) -> Expected:
    """:class:`Expected` for an attachment holding ``allocations`` whose result carried ``routes`` (``(dst, gw)``
    text pairs, as in the CNI result; docs/cni-contract.md §3.1).

    A route without ``gw`` goes via the gateway of the first allocation of its family that has one, as the
    reference plugins install it (``ipam.ConfigureIface``), else on the link with no gateway. Routes of a family
    the attachment holds no address of are not expected (the main plugin has no address to give them). A route that
    does not parse is skipped (records are validated when written). Pure and deterministic.
    """
    allocs = tuple(allocations)
    gateway_of: dict[int, int] = {}
    for a in allocs:
        if a.gateway is not None:
            gateway_of.setdefault(a.family, a.gateway)
    families = {a.family for a in allocs}
    expected_routes: list[ExpectedRoute] = []
    for dst_text, gw_text in routes:
        try:
            net = ipaddress.ip_network(dst_text, strict=False)
            gw = int(ipaddress.ip_address(gw_text)) if gw_text else gateway_of.get(net.version)
        except ValueError:
            continue
        if net.version not in families:
            continue
        route = ExpectedRoute(Prefix(net.version, int(net.network_address), net.prefixlen), gw)
        if route not in expected_routes:
            expected_routes.append(route)
    gateways = tuple(dict.fromkeys((a.family, a.gateway) for a in allocs if a.gateway is not None))
    return Expected(if_name, tuple(Prefix(a.family, a.value, a.prefixlen) for a in allocs), tuple(expected_routes),
                    gateways)


@dataclass(frozen=True, slots=True)
class ObservedInterface:
    """The interface as the kernel reports it: ``index`` in its namespace, ``admin_up`` (IFF_UP), ``carrier``
    (IFF_LOWER_UP: the other end of a veth is up), ``oper_state`` (``UP``, ``DOWN``, ``LOWERLAYERDOWN``, ...)."""

    name: str
    index: int
    admin_up: bool
    carrier: bool
    oper_state: str = ""

    @property
    def state(self) -> str:
        """``up``, ``down`` (administratively) or ``no-carrier``."""
        if not self.admin_up:
            return "down"
        return "up" if self.carrier else "no-carrier"


@dataclass(frozen=True, slots=True)
class Nexthop:
    """One next hop of a route: ``gateway`` (int or ``None``) through interface index ``oif``."""

    gateway: int | None
    oif: int | None


@dataclass(frozen=True, slots=True)
class ObservedRoute:
    """A route of the namespace: ``dst`` in routing ``table`` with its next hops (several for a multipath route)."""

    dst: Prefix
    table: int
    nexthops: tuple[Nexthop, ...]

    def __str__(self) -> str:
        hops = ", ".join("via %s" % to_ip(self.dst.family, h.gateway) if h.gateway is not None else "on link"
                         for h in self.nexthops)
        return "%s %s%s" % (self.dst, hops, "" if self.table == 254 else " table %d" % self.table)


@dataclass(frozen=True, slots=True)
class GatewayProbe:
    """The post-creation tests for one gateway: ``sent`` echo requests, ``received`` replies, ``rtt`` the best
    round trip in seconds (``None`` without a reply), ``neighbour`` the gateway's ARP/NDP state after the echo
    (a linux ``NUD_*`` name, ``NONE`` when there is no entry), ``error`` why the probe could not run ("" if it
    did)."""

    family: int
    gateway: int
    sent: int
    received: int
    rtt: float | None
    neighbour: str
    error: str = ""

    @property
    def gateway_text(self) -> str:
        return str(to_ip(self.family, self.gateway))


@dataclass(frozen=True, slots=True)
class Observation:
    """What ``ipamd.netns.observe`` saw in the namespace at ``netns_path``.

    ``netns_exists`` is false when the path does not exist or is not a network namespace (``error`` says which);
    ``error`` alone (with ``netns_exists`` true) means the namespace could not be looked at (permission, timeout).
    ``interface`` is ``None`` when the interface is missing; ``addresses`` are the interface's addresses (IPv4 and
    IPv6, link-local included); ``routes`` the routes of every table with a next hop through the interface;
    ``probes`` one per gateway probed (empty when probes were not asked for: ``probed`` false); ``elsewhere`` the
    addresses of the namespace's other interfaces as ``(interface name, Prefix)`` pairs, read only when asked for
    (the reconciler's look: an allocated address that moved to another interface is still in use).
    """

    netns_path: str
    if_name: str
    netns_exists: bool
    interface: ObservedInterface | None = None
    addresses: tuple[Prefix, ...] = ()
    routes: tuple[ObservedRoute, ...] = ()
    probes: tuple[GatewayProbe, ...] = ()
    probed: bool = False
    error: str = ""
    elsewhere: tuple[tuple[str, Prefix], ...] = ()


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that differs: ``reason`` (one of :data:`REASONS`) and a message naming what differs."""

    reason: str
    message: str

    def __str__(self) -> str:
        return "%s: %s" % (self.reason, self.message)


def _has_route(route: ExpectedRoute, observed: Iterable[ObservedRoute], index: int) -> bool:
    for r in observed:
        if r.dst != route.dst:
            continue
        for hop in r.nexthops:
            if hop.oif == index and (route.gateway is None or hop.gateway == route.gateway):
                return True
    return False


def compare(expected: Expected, observed: Observation) -> tuple[Finding, ...]:
    """Everything in which ``observed`` differs from ``expected``, most fundamental first (the order of
    :data:`REASONS`); empty when the attachment is healthy. Pure.

    - namespace missing, or not observable: that finding alone (nothing else can be judged);
    - interface missing: that finding alone;
    - interface down or without carrier;
    - each expected address not on the interface, or there with another prefix length;
    - each expected route with no route of the same destination in any table through the interface via the
      expected gateway (a later plugin such as ``sbr`` may move routes to another table; docs/cni-contract.md §2.3);
    - with probes: each gateway that sent no echo reply, each whose neighbour entry is not resolved.
    """
    path, if_name = observed.netns_path, expected.if_name
    if not observed.netns_exists:
        if not path:
            return (Finding(NETNS_MISSING, "no network namespace was recorded at ADD"),)
        return (Finding(NETNS_MISSING, "network namespace %s %s" % (path, observed.error or "does not exist")),)
    if observed.error:
        return (Finding(OBSERVE_FAILED, "cannot look into network namespace %s: %s" % (path, observed.error)),)
    iface = observed.interface
    if iface is None:
        return (Finding(INTERFACE_MISSING, "interface %s is missing in network namespace %s" % (if_name, path)),)
    out: list[Finding] = []
    if iface.state != "up":
        why = "administratively down" if iface.state == "down" else "up but has no carrier (operstate %s)" \
            % (iface.oper_state or "unknown")
        out.append(Finding(INTERFACE_DOWN, "interface %s in %s is %s" % (if_name, path, why)))
    held = {(a.family, a.value): a for a in observed.addresses}
    for want in expected.addresses:
        found = held.get((want.family, want.value))
        if found is None:
            have = ", ".join(str(a) for a in observed.addresses if a.family == want.family) or "none"
            out.append(Finding(ADDRESS_MISMATCH, "address %s is missing on %s (IPv%d addresses there: %s)"
                               % (want, if_name, want.family, have)))
        elif found.prefixlen != want.prefixlen:
            out.append(Finding(ADDRESS_MISMATCH, "address %s on %s has prefix /%d, allocated /%d"
                               % (to_ip(want.family, want.value), if_name, found.prefixlen, want.prefixlen)))
    for route in expected.routes:
        if not _has_route(route, observed.routes, iface.index):
            same_dst = [str(r) for r in observed.routes if r.dst == route.dst]
            out.append(Finding(ROUTE_MISSING, "route %s dev %s is missing%s"
                               % (route, if_name, " (found: %s)" % "; ".join(same_dst) if same_dst else "")))
    for probe in observed.probes:
        if probe.received == 0:
            why = probe.error or "0 of %d echo replies" % probe.sent
            out.append(Finding(GATEWAY_UNREACHABLE, "gateway %s does not answer from %s: %s"
                               % (probe.gateway_text, if_name, why)))
    for probe in observed.probes:
        if probe.neighbour not in RESOLVED_NEIGHBOUR_STATES:
            out.append(Finding(NEIGHBOUR_UNRESOLVED, "neighbour entry of gateway %s on %s is %s"
                               % (probe.gateway_text, if_name, probe.neighbour or "NONE")))
    return tuple(out)


def check_error(findings: Iterable[Finding]) -> IpamError | None:
    """The CHECK error for ``findings`` (docs/errors.md 110-113): the class of the first finding CHECK fails
    with, its message that finding's, the details every such finding; ``None`` when there is none (probe findings
    and an unobservable namespace do not fail CHECK)."""
    failing = [f for f in findings if f.reason in CHECK_ERRORS]
    if not failing:
        return None
    first = failing[0]
    return CHECK_ERRORS[first.reason](first.message, "; ".join(str(f) for f in failing))
