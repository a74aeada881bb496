"""Looking inside a pod's network namespace from the daemon, with ``pyroute2`` (docs/namespace-checks.md).

One function, :func:`observe`, used by deep CHECK, ``ipamctl verify``, the continuous health loop and the
reconciler: does the namespace recorded at ADD still exist, is its interface there and up, which addresses and
routes does it hold, and (when asked) does the attachment's gateway answer an echo and is its neighbour entry
resolved. What it sees is an :class:`ipamd.domain.netcheck.Observation`; comparing it with what was handed out is
the domain's job (:func:`ipamd.domain.netcheck.compare`).

No thread of the daemon ever enters a namespace (``setns`` would move only that thread, and every later request it
serves would run in the pod's namespace), and the daemon never forks (a child of a multi-threaded process may
inherit another thread's locks). Each socket is created inside the namespace by a small single-threaded helper
process (:mod:`ipamd.nshelper`) and handed back; a socket stays bound to the namespace it was created in, so the
daemon then uses it from any thread. pyroute2 reads links, addresses, routes and neighbours over the netlink
socket; a raw ICMP (ICMPv6) socket, bound to the interface, sends the echo requests. This is the only module that
imports pyroute2 (never the CNI plugin: its import alone costs more than a CNI call).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import random
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_ROUTE

from .domain.addr import to_ip
from .domain.netcheck import GatewayProbe, Nexthop, Observation, ObservedInterface, ObservedRoute, Prefix
from .domain.nodecheck import NodeAddress, NodeRoute, NodeState
from .nshelper import NamespaceSocketError, NamespaceSockets

__all__ = ["NEIGHBOUR_STATES", "NodeUnobservable", "Observation", "close", "observe", "observe_node"]

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTN_UNICAST = 1
#: Route types (``RTN_*``) the node check reads, by value (ipamd/domain/nodecheck.py ``ROUTE_TYPES``).
NODE_ROUTE_TYPES = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
RT_TABLE_MAIN = 254
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
#: linux ``NUD_*`` neighbour states by value.
NEIGHBOUR_STATES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
                    0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
_ECHO = {4: (8, 0), 6: (128, 129)}  # family -> (echo request type, echo reply type)
#: At most this many echo requests per gateway, and this long for each reply (seconds).
MAX_PROBE_COUNT = 10
MAX_PROBE_TIMEOUT = 5.0
#: Seconds to create a probe's socket in the namespace (the namespace was entered already for the reads).
PROBE_SOCKET_TIMEOUT = 2.0

# pyroute2 logs every netlink message at DEBUG: a namespace check would drown the daemon's own DEBUG lines.
logging.getLogger("pyroute2").setLevel(logging.INFO)

#: The helper process that makes sockets inside namespaces (ipamd/nshelper.py), shared by every caller.
_SOCKETS = NamespaceSockets()


class _Unobservable(Exception):
    """The namespace cannot be looked at; ``missing``: it does not exist or is not a network namespace."""

    def __init__(self, why: str, missing: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.missing = missing


def observe(netns_path: str, if_name: str, *, gateways: Sequence[tuple[int, int]] = (), probe_count: int = 1,
            probe_timeout: float = 1.0, timeout: float = 5.0, routes: bool = True,
            all_addresses: bool = False) -> Observation:
    """Look at interface ``if_name`` inside the network namespace at ``netns_path`` (an absolute path such as
    ``/var/run/netns/x`` or ``/proc/PID/ns/net``; the CNI_NETNS recorded at ADD).

    Returns an :class:`Observation`: whether the namespace exists, the interface (index, up, carrier), its
    addresses with prefix lengths, the unicast routes of every table with a next hop through it, and, for each
    ``(family, address)`` in ``gateways``, a probe: ``probe_count`` (1..10) ICMP/ICMPv6 echo requests sent from
    the interface, each waiting at most ``probe_timeout`` seconds (at most 5) for its reply, then the gateway's
    neighbour (ARP/NDP) state. Probes go only to the addresses given; pass the attachment's own gateways.
    ``routes=False`` skips the route dump (``routes`` stays empty); ``all_addresses=True`` reads the addresses of
    every interface of the namespace and returns the other interfaces' in ``elsewhere`` (also when ``if_name`` is
    missing). The reconciler asks for ``routes=False, all_addresses=True`` (docs/namespace-checks.md "Reconciler").

    Never raises for what it finds: a missing path or one that is not a network namespace gives
    ``netns_exists=False``; a namespace it cannot enter (permission) or that does not answer within ``timeout``
    seconds gives ``error``; a probe that cannot run gives that probe's ``error``. ``timeout`` bounds entering the
    namespace and reading it; probes add at most ``len(gateways) * (probe_count * probe_timeout + 2)`` seconds.
    Read-only: nothing in the namespace is changed (an echo request may create a neighbour entry, as any traffic
    would). Needs CAP_SYS_ADMIN (enter the namespace) and CAP_NET_RAW (probes). Thread-safe; the sockets come from
    the helper process (:mod:`ipamd.nshelper`, one request per socket, well under a millisecond each).
    """
    count = max(1, min(int(probe_count), MAX_PROBE_COUNT))
    wait = max(0.01, min(float(probe_timeout), MAX_PROBE_TIMEOUT))
    deadline = time.monotonic() + max(timeout, 0.1)
    probed = bool(gateways)
    try:
        fd = _open_netns(netns_path)
    except _Unobservable as exc:
        return Observation(netns_path, if_name, not exc.missing, probed=probed, error=exc.why)
    try:
        sock = _socket_in(fd, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE, deadline)
        try:
            ipr = IPRoute(use_socket=sock)
        except Exception as exc:  # noqa: BLE001 - pyroute2's errors are translated at this boundary
            sock.close()
            raise _Unobservable("netlink: %s: %s" % (exc.__class__.__name__, exc)) from None
        with ipr:
            iface, addresses, found_routes, elsewhere = _read_links(ipr, if_name, routes, all_addresses)
            if iface is None:
                return Observation(netns_path, if_name, True, probed=probed, elsewhere=elsewhere)
            probes = tuple(_probe(fd, ipr, iface, family, gw, count, wait) for family, gw in gateways)
        return Observation(netns_path, if_name, True, iface, addresses, found_routes, probes, probed,
                           elsewhere=elsewhere)
    except _Unobservable as exc:
        return Observation(netns_path, if_name, not exc.missing, probed=probed, error=exc.why)
    finally:
        os.close(fd)


class NodeUnobservable(Exception):
    """The node's addresses and routes could not be read (``why``: cannot enter the namespace, netlink failed)."""


def observe_node(netns_path: str = "", *, timeout: float = 2.0) -> NodeState:
    """The node's own addresses and routes (docs/namespace-checks.md "Node check"): every address of every
    interface (with the interface's name and kind, ``IFLA_INFO_KIND``) and the routes of the main table of the
    network namespace at ``netns_path`` (``""``: the daemon's own, the host's; a path such as
    ``/var/run/netns/x``: that namespace, entered by the helper process, as tests do). A multipath route gives one
    :class:`NodeRoute` per next hop. Three netlink dumps (links, addresses, routes) on one socket.

    Raises :class:`NodeUnobservable` when it cannot look (cannot enter the namespace, no answer from the helper
    within ``timeout`` seconds, a netlink error). Read-only; thread-safe.
    """
    deadline = time.monotonic() + max(timeout, 0.1)
    try:
        if netns_path:
            fd = _open_netns(netns_path)
            try:
                sock = _socket_in(fd, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE, deadline)
            finally:
                os.close(fd)
        else:  # our own namespace: no need to enter anything, nor for CAP_SYS_ADMIN
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    except _Unobservable as exc:
        raise NodeUnobservable("network namespace %s %s" % (netns_path, exc.why)) from None
    except OSError as exc:
        raise NodeUnobservable("netlink socket: %s" % (exc.strerror or exc)) from None
    try:
        ipr = IPRoute(use_socket=sock)
    except Exception as exc:  # noqa: BLE001 - pyroute2's errors are translated at this boundary
        sock.close()
        raise NodeUnobservable("netlink: %s: %s" % (exc.__class__.__name__, exc)) from None
    try:
        with ipr:
            links = {int(m["index"]): (str(m.get("ifname") or ""), str(m.get(("linkinfo", "kind")) or ""))
                     for m in ipr.get_links()}
            addresses = []
            for m in ipr.get_addr():
                if not m.get("address"):
                    continue
                name, kind = links.get(int(m["index"]), ("#%d" % int(m["index"]), ""))
                addresses.append(NodeAddress(_prefix(m.get("address"), int(m["prefixlen"])), name, kind))
            routes = [r for m in ipr.get_routes(family=socket.AF_UNSPEC, table=RT_TABLE_MAIN)
                      for r in _node_routes(m, links)]
    except Exception as exc:  # noqa: BLE001 - netlink errors of any kind are translated at this boundary
        raise NodeUnobservable("netlink: %s: %s" % (exc.__class__.__name__, exc)) from None
    return NodeState(tuple(sorted(addresses)), tuple(sorted(routes)))


def _node_routes(msg: Any, links: dict[int, tuple[str, str]]) -> list[NodeRoute]:
    kind = NODE_ROUTE_TYPES.get(int(msg["type"]))
    if kind is None or msg["family"] not in (socket.AF_INET, socket.AF_INET6):
        return []
    if int(msg.get("table") or msg["table"]) != RT_TABLE_MAIN:
        return []
    family = 4 if msg["family"] == socket.AF_INET else 6
    dst_text = msg.get("dst")
    dst = _prefix(dst_text, int(msg["dst_len"])) if dst_text else Prefix(family, 0, 0)
    hops: list[tuple[int | None, int | None]] = []
    multipath = msg.get("multipath")
    if multipath:
        for hop in multipath:
            hops.append((_address(dict(hop.get("attrs") or ()).get("RTA_GATEWAY")), hop.get("oif")))
    else:
        hops.append((_address(msg.get("gateway")), msg.get("oif")))
    out = []
    for gateway, oif in hops:
        name, link_kind = links.get(int(oif), ("#%d" % int(oif), "")) if oif else ("", "")
        out.append(NodeRoute(dst, gateway, name, link_kind, kind))
    return out


def close() -> None:
    """Stop the helper process (the daemon calls it on shutdown; the next :func:`observe` would start a new one).
    Idempotent."""
    _SOCKETS.close()


def _open_netns(path: str) -> int:
    """An fd on the namespace file: the helper enters exactly this namespace even if the path is
    replaced meanwhile."""
    if not path.startswith("/"):
        raise _Unobservable("is not an absolute path", missing=True)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Unobservable("does not exist", missing=True) from None
    except (NotADirectoryError, IsADirectoryError) as exc:
        raise _Unobservable("is not a network namespace (%s)" % exc.strerror, missing=True) from None
    except OSError as exc:
        raise _Unobservable("cannot open %s: %s" % (path, exc.strerror or exc)) from None


def _socket_in(fd: int, family: int, kind: int, proto: int, deadline: float) -> socket.socket:
    """A socket created inside the namespace ``fd`` by the helper process. Raises :class:`_Unobservable`."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Unobservable("timed out")
    try:
        return _SOCKETS.socket_in(fd, family, kind, proto, timeout=left)
    except NamespaceSocketError as exc:
        if exc.errno == errno.EINVAL:
            raise _Unobservable("is not a network namespace", missing=True) from None
        raise _Unobservable("cannot enter it: %s" % (exc.strerror or exc)) from None
    except OSError as exc:  # the socket itself (e.g. EMFILE)
        raise _Unobservable("cannot make a socket in it: %s" % (exc.strerror or exc)) from None


def _read_links(ipr: Any, if_name: str, with_routes: bool = True, all_addresses: bool = False
                ) -> tuple[ObservedInterface | None, tuple[Prefix, ...], tuple[ObservedRoute, ...],
                           tuple[tuple[str, Prefix], ...]]:
    """The interface, its addresses, the routes through it and (``all_addresses``) the other interfaces'
    addresses. Raises :class:`_Unobservable` for any netlink failure."""
    try:
        every_link = ipr.get_links()  # one dump, as `ip link` does
        names = {int(m["index"]): str(m.get("ifname") or "") for m in every_link}
        links = [m for m in every_link if m.get("ifname") == if_name]
        elsewhere: tuple[tuple[str, Prefix], ...] = ()
        own: list[Prefix] = []
        index = int(links[0]["index"]) if links else None
        if all_addresses:
            other: list[tuple[str, Prefix]] = []
            for m in ipr.get_addr():
                if not m.get("address"):
                    continue
                pfx = _prefix(m.get("address"), int(m["prefixlen"]))
                if int(m["index"]) == index:
                    own.append(pfx)
                else:
                    other.append((names.get(int(m["index"]), "#%d" % int(m["index"])), pfx))
            elsewhere = tuple(sorted(other))
        if not links or index is None:
            return None, (), (), elsewhere
        link = links[0]
        flags = int(link["flags"])
        iface = ObservedInterface(if_name, index, bool(flags & IFF_UP), bool(flags & IFF_LOWER_UP),
                                  str(link.get("operstate") or ""))
        if not all_addresses:
            own = [_prefix(m.get("address"), int(m["prefixlen"]))
                   for m in ipr.get_addr(index=index) if m.get("address")]
        routes: tuple[ObservedRoute, ...] = ()
        if with_routes:
            routes = tuple(r for r in (_route(m) for m in ipr.get_routes(family=socket.AF_UNSPEC))
                           if r is not None and any(h.oif == index for h in r.nexthops))
        return iface, tuple(sorted(own)), routes, elsewhere
    except Exception as exc:  # noqa: BLE001 - netlink errors of any kind are translated at this boundary
        raise _Unobservable("netlink: %s: %s" % (exc.__class__.__name__, exc)) from None


def _prefix(text: str, prefixlen: int) -> Prefix:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    return Prefix(ip.version, int(ip), prefixlen)


def _route(msg: Any) -> ObservedRoute | None:
    if msg["type"] != RTN_UNICAST or msg["family"] not in (socket.AF_INET, socket.AF_INET6):
        return None
    family = 4 if msg["family"] == socket.AF_INET else 6
    dst_text = msg.get("dst")
    dst = _prefix(dst_text, int(msg["dst_len"])) if dst_text else Prefix(family, 0, 0)
    hops: list[Nexthop] = []
    multipath = msg.get("multipath")
    if multipath:
        for hop in multipath:
            gw = dict(hop.get("attrs") or ()).get("RTA_GATEWAY")
            hops.append(Nexthop(_address(gw), hop.get("oif")))
    else:
        hops.append(Nexthop(_address(msg.get("gateway")), msg.get("oif")))
    return ObservedRoute(dst, int(msg.get("table") or msg["table"]), tuple(hops))


def _address(text: str | None) -> int | None:
    if not text:
        return None
    return int(ipaddress.ip_address(text.split("%", 1)[0]))


# -- probes ----------------------------------------------------------------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(family: int, ident: int, seq: int) -> bytes:
    payload = b"ipamd-verify"
    header = struct.pack("!BBHHH", _ECHO[family][0], 0, 0, ident, seq)
    if family == 6:  # the kernel fills in the ICMPv6 checksum (it covers a pseudo-header we do not build)
        return header + payload
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", _ECHO[family][0], 0, csum, ident, seq) + payload


def _is_reply(family: int, data: bytes, source: str, gateway: str, ident: int, seq: int) -> bool:
    if family == 4:
        if len(data) < 20:
            return False
        data = data[(data[0] & 0x0F) * 4:]  # a raw IPv4 socket receives the IP header too
        reply_type = _ECHO[4][1]
    else:
        reply_type = _ECHO[6][1]
    if len(data) < 8 or source.split("%", 1)[0] != gateway:
        return False
    kind, _code, _csum, got_ident, got_seq = struct.unpack("!BBHHH", data[:8])
    return bool(kind == reply_type and got_ident == ident and got_seq == seq)


def _probe(fd: int, ipr: Any, iface: ObservedInterface, family: int, gateway: int, count: int,
           wait: float) -> GatewayProbe:
    """Echo ``count`` times from the interface to ``gateway``, then read the gateway's neighbour state."""
    gw = str(to_ip(family, gateway))
    sent = received = 0
    best: float | None = None
    try:
        sock = _socket_in(fd, socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW,
                          socket.IPPROTO_ICMP if family == 4 else socket.IPPROTO_ICMPV6,
                          time.monotonic() + PROBE_SOCKET_TIMEOUT)
    except _Unobservable as exc:
        return GatewayProbe(family, gateway, 0, 0, None, _neighbour(ipr, iface, family, gw), "socket: %s" % exc.why)
    error = ""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, iface.name.encode())
        ident = random.randrange(1, 0x10000)
        target: tuple[Any, ...] = (gw, 0) if family == 4 else (gw, 0, 0, iface.index)
        for seq in range(1, count + 1):
            started = time.monotonic()
            sock.sendto(_echo_request(family, ident, seq), target)
            sent += 1
            if _await_reply(sock, family, gw, ident, seq, started + wait):
                received += 1
                took = time.monotonic() - started
                best = took if best is None else min(best, took)
    except OSError as exc:
        error = "echo: %s" % (exc.strerror or exc)
    finally:
        sock.close()
    return GatewayProbe(family, gateway, sent, received, best, _neighbour(ipr, iface, family, gw), error)


def _await_reply(sock: socket.socket, family: int, gateway: str, ident: int, seq: int, until: float) -> bool:
    """Wait for the matching echo reply (a raw socket sees every ICMP packet of the namespace)."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return False
        data, source = sock.recvfrom(2048)
        if _is_reply(family, data, source[0], gateway, ident, seq):
            return True


def _neighbour(ipr: Any, iface: ObservedInterface, family: int, gateway: str) -> str:
    """The gateway's neighbour state on the interface (``NONE`` without an entry, ``UNKNOWN`` if unreadable)."""
    try:
        entries = ipr.get_neighbours(family=socket.AF_INET if family == 4 else socket.AF_INET6, ifindex=iface.index)
        return _state_name(m["state"] for m in entries if (m.get("dst") or "").split("%", 1)[0] == gateway)
    except Exception:  # noqa: BLE001 - the state is informative; an unreadable table is reported as UNKNOWN
        return "UNKNOWN"


def _state_name(states: Iterable[int]) -> str:
    for state in states:
        return NEIGHBOUR_STATES.get(int(state), "0x%x" % int(state))
    return "NONE"
