"""Address arithmetic on integers, ranges and blocks (pure; no I/O).

Addresses are ``int`` inside (with a family, 4 or 6), ``ipaddress`` objects or text only at the edges. Nothing here
enumerates ``hosts()`` or ``subnets()``: a /64 never ends, so every walk is bounded by what is allocated.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field

from .errors import InvalidConfig

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BITS = {4: 32, 6: 128}
HEX_WIDTH = {4: 8, 6: 32}

#: The gateway modes of a range (``ipam.gatewayMode``; docs/configuration.md "Gateway modes"): ``subnet`` (one
#: gateway for the pool, pods carry the subnet's prefix; host-local's behaviour, for ``bridge``), ``block`` (the
#: first usable address of each block is its node's gateway, pods carry the block's prefix) and ``pointToPoint``
#: (pods get a host prefix and a link-local gateway, :data:`LINK_LOCAL_GATEWAY`; for ``ptp``).
GATEWAY_MODES = ("subnet", "block", "pointToPoint")
#: The gateway of every pod in ``pointToPoint`` mode, by family: Calico's IPv4 169.254.1.1 and IPv6 fe80::1. The
#: main plugin puts it on the node's end of the pod's link (``ptp``: on the host-side veth).
LINK_LOCAL_GATEWAY = {4: int(ipaddress.IPv4Address("169.254.1.1")), 6: int(ipaddress.IPv6Address("fe80::1"))}

#: Address classes that cannot be a pool's subnet (field case B41; docs/decisions.md "Address classes"), with the
#: reason given in the code-7 message. A subnet that overlaps any of them is refused, so ``0.0.0.0/0`` or ``::/0``
#: are refused too. IPv4-mapped and IPv4-compatible IPv6 addresses name IPv4 hosts (RFC 4291 §2.5.5): a pod would
#: hold one address twice, and the kernel will not route them on an IPv6 link. Class E (240.0.0.0/4) is allowed:
#: some clusters use it for pods.
UNUSABLE_CLASSES: tuple[tuple[IPNetwork, str], ...] = tuple((ipaddress.ip_network(cidr), why) for cidr, why in (
    ("0.0.0.0/8", "'this network' (RFC 791, RFC 6890), never a host's address"),
    ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local (RFC 3927); a pool cannot be link-local, only a point-to-point gateway can"),
    ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("255.255.255.255/32", "the limited broadcast address (RFC 919)"),
    ("::ffff:0:0/96", "IPv4-mapped IPv6 (RFC 4291 2.5.5.2): use the IPv4 subnet itself"),
    ("::/96", "IPv4-compatible IPv6, the unspecified address and loopback (RFC 4291 2.5.2, 2.5.3, 2.5.5.1)"),
    ("100::/64", "the discard-only prefix (RFC 6666): routers drop its traffic"),
    ("fe80::/10", "link-local (RFC 4291 2.5.6); a pool cannot be link-local, only a point-to-point gateway can"),
    ("ff00::/8", "multicast (RFC 4291 2.7)"),
))


def unusable_class(net: IPNetwork) -> tuple[IPNetwork, str] | None:
    """The first class of :data:`UNUSABLE_CLASSES` that ``net`` overlaps, as ``(class network, reason)``, or None
    when pods can use addresses of ``net``. Pure; no enumeration."""
    for cls_net, why in UNUSABLE_CLASSES:
        if cls_net.version == net.version and net.overlaps(cls_net):
            return cls_net, why
    return None


def addr_key(family: int, value: int) -> str:
    """Canonical, order-preserving key text of an address: fixed-width lower-case hex (8 or 32 digits)."""
    return format(value, "0%dx" % HEX_WIDTH[family])


def key_addr(text: str) -> tuple[int, int]:
    """Inverse of :func:`addr_key`: ``(family, value)``; raises ``ValueError`` on a malformed key."""
    if len(text) == 8:
        return 4, int(text, 16)
    if len(text) == 32:
        return 6, int(text, 16)
    raise ValueError("not an address key: %r" % text)


def to_ip(family: int, value: int) -> IPAddress:
    """``int`` -> ``IPv4Address``/``IPv6Address``."""
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def parse_ip(text: object, what: str) -> IPAddress:
    """Parse a plain address (no prefix); raises :class:`InvalidConfig` naming ``what`` and the value."""
    if not isinstance(text, str):
        raise InvalidConfig("%s %r is not a string" % (what, text))
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise InvalidConfig("%s %r is not an IP address" % (what, text)) from None


def parse_subnet(text: object, what: str = "subnet") -> IPNetwork:
    """Parse a CIDR whose host bits are zero; raises :class:`InvalidConfig` naming ``what`` and the value."""
    if not isinstance(text, str) or "/" not in text:
        raise InvalidConfig("%s %r is not a CIDR (address/prefix)" % (what, text))
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise InvalidConfig("%s %s has host bits set" % (what, text)) from None
        raise InvalidConfig("%s %r is not a valid CIDR" % (what, text)) from None


def _merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint union of inclusive ``(lo, hi)`` spans (empty spans with lo > hi dropped)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(s for s in spans if s[0] <= s[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@dataclass(frozen=True, slots=True)
class Range:
    """One host-local range: a subnet and the inclusive span ``[start, end]`` allocations may come from.

    ``gateway`` (int or None) is never handed out, nor the network address, nor the IPv4 broadcast address, nor
    anything in ``excludes`` (list of ``(first, last)`` int pairs). Build it with :meth:`from_config`, which applies
    host-local's defaults (start = network+1, end = broadcast-1 for IPv4 or the last address for IPv6, gateway =
    network+1) and rejects bounds on the network/broadcast address (field case B29, decision 3).

    ``mode`` is the range's gateway mode (:data:`GATEWAY_MODES`); ``block_prefix`` the pool's block size (a prefix
    length) in the modes that need it (``block``, ``pointToPoint``; 0 in ``subnet`` mode). In ``block`` mode
    ``gateway`` is ``None`` and each block of ``block_prefix`` is a subnet of its own: its first address, its first
    usable address (the block's gateway, :meth:`block_gateway`) and, for IPv4, its last address are never handed
    out (docs/configuration.md "Gateway modes"). In ``pointToPoint`` mode ``gateway`` is ``None`` and no address of
    the range is reserved for one.
    """

    family: int
    network: int
    prefixlen: int
    start: int
    end: int
    gateway: int | None
    excludes: tuple[tuple[int, int], ...] = field(default=())
    mode: str = "subnet"
    block_prefix: int = 0

    @property
    def bits(self) -> int:
        return BITS[self.family]

    @property
    def per_block(self) -> bool:
        """True in ``block`` mode: every block reserves its own first, gateway and (IPv4) last address."""
        return self.mode == "block" and self.block_prefix > 0

    def _block_specials(self) -> tuple[int, ...]:
        """Offsets inside a block that are never handed out in ``block`` mode: the block's first address, its
        gateway (first + 1) and, for IPv4, its last (the broadcast address of the block as a subnet)."""
        size = 1 << (self.bits - self.block_prefix)
        return (0, 1, size - 1) if self.family == 4 else (0, 1)

    def block_gateway(self, value: int) -> int | None:
        """The gateway of the block holding ``value`` in ``block`` mode (the block's first usable address:
        its first address + 1, e.g. 10.1.2.65 for 10.1.2.64/26); ``None`` in the other modes. Pure."""
        if not self.per_block:
            return None
        size = 1 << (self.bits - self.block_prefix)
        return value - ((value - self.network) % size) + 1

    @property
    def last(self) -> int:
        """Last address of the subnet (the IPv4 broadcast address)."""
        return self.network + (1 << (self.bits - self.prefixlen)) - 1

    @property
    def subnet(self) -> IPNetwork:
        return ipaddress.ip_network((self.network, self.prefixlen))

    @property
    def subnet_key(self) -> str:
        """Key text of the subnet: ``<hex network>-<prefix>``, e.g. ``0a010200-24``."""
        return "%s-%d" % (addr_key(self.family, self.network), self.prefixlen)

    def contains(self, value: int) -> bool:
        return self.network <= value <= self.last

    def usable(self, value: int) -> bool:
        """True if ``value`` may be handed out: inside [start, end], not network/broadcast/gateway/excluded."""
        if value < self.start or value > self.end:
            return False
        if value == self.network or value == self.gateway:
            return False
        if self.family == 4 and value == self.last:
            return False
        if self.block_prefix and self.mode == "block" \
                and (value - self.network) % (1 << (self.bits - self.block_prefix)) in self._block_specials():
            return False
        return all(not lo <= value <= hi for lo, hi in self.excludes)

    def pod_address(self, value: int, block_prefix: int) -> tuple[int, int | None]:
        """``(prefix length, gateway)`` a pod holding ``value`` gets in the CNI result, by mode: ``subnet`` the
        subnet's prefix and the range's gateway; ``block`` the block's prefix (``block_prefix``, the pool's fixed
        block size) and the block's gateway (e.g. 10.1.2.66 -> ``(26, 10.1.2.65)``); ``pointToPoint`` the full
        length (/32, /128) and :data:`LINK_LOCAL_GATEWAY`. Pure (docs/configuration.md "Gateway modes")."""
        if self.mode == "block":
            size = 1 << (self.bits - block_prefix)
            return block_prefix, value - ((value - self.network) % size) + 1
        if self.mode == "pointToPoint":
            return self.bits, LINK_LOCAL_GATEWAY[self.family]
        return self.prefixlen, self.gateway

    def _count_specials(self, lo: int, hi: int) -> int:
        """``block`` mode: how many addresses of ``[lo, hi]`` are a block's first, gateway or IPv4 last address
        (arithmetic: one count per kind, no walk)."""
        size = 1 << (self.bits - self.block_prefix)
        return sum((hi - self.network - k) // size - (lo - 1 - self.network - k) // size
                   for k in self._block_specials())

    def usable_count(self, lo: int | None = None, hi: int | None = None) -> int:
        """Number of addresses that may be handed out (``free + allocated = usable_count``), in the whole range
        or in ``[lo, hi]`` (e.g. one block). Arithmetic only: no walk over the span."""
        start = self.start if lo is None else max(lo, self.start)
        end = self.end if hi is None else min(hi, self.end)
        if start > end:
            return 0
        if self.per_block:
            # the pool's network and IPv4 broadcast addresses are a block's first and last: counted there
            n = end - start + 1 - self._count_specials(start, end)
            for x, y in _merge_spans((max(x, start), min(y, end)) for x, y in self.excludes):
                n -= y - x + 1 - self._count_specials(x, y)
            return max(n, 0)
        specials = {v for v in (self.network, self.gateway, self.last if self.family == 4 else None)
                    if v is not None and start <= v <= end}
        n = end - start + 1 - len(specials)
        for x, y in _merge_spans((max(x, start), min(y, end)) for x, y in self.excludes):
            n -= y - x + 1 - sum(1 for v in specials if x <= v <= y)
        return max(n, 0)

    def first_free(self, lo: int, hi: int, taken: Container[int] | Iterable[int]) -> int | None:
        """Lowest usable address in ``[lo, hi]`` not in ``taken``; ``None`` if none.

        Cost is bounded by ``len(taken)`` plus the few special addresses, never by the span's size.
        """
        taken_set: Container[int] = taken if isinstance(taken, Container) else set(taken)
        lo = max(lo, self.start)
        hi = min(hi, self.end)
        value = lo
        while value <= hi:
            if value in taken_set or not self.usable(value):
                if not self.usable(value):
                    skip = self._skip_exclude(value)
                    if skip is not None:
                        value = skip
                        continue
                value += 1
                continue
            return value
        return None

    def _skip_exclude(self, value: int) -> int | None:
        for lo, hi in self.excludes:
            if lo <= value <= hi:
                return hi + 1
        return None

    def overlaps(self, other: Range) -> bool:
        return self.family == other.family and self.network <= other.last and other.network <= self.last

    @classmethod
    def from_config(cls, obj: object, where: str) -> Range:
        """Parse one range object ``{"subnet", "rangeStart"?, "rangeEnd"?, "gateway"?}`` of the ``ipam`` block.

        Raises :class:`InvalidConfig` (CNI code 7) with a message naming the field and value for: a bad or
        host-bits CIDR; a subnet overlapping an address class pods cannot use (:data:`UNUSABLE_CLASSES`: mapped and
        compatible IPv6, multicast, loopback, unspecified, link-local; field case B41); a subnet too small to allocate
        from (/31, /32, /127, /128; docs/cni-contract.md); bounds or a
        gateway outside the subnet; bounds or a gateway on the network or IPv4 broadcast address (the gateway must
        be a host address of its subnet: pre-flight validation, docs/namespace-checks.md); ``rangeStart`` >
        ``rangeEnd``.
        """
        if not isinstance(obj, dict):
            raise InvalidConfig("%s is not an object" % where)
        net = parse_subnet(obj.get("subnet"), "%s subnet" % where)
        family = net.version
        bits = BITS[family]
        unusable = unusable_class(net)
        if unusable is not None:
            raise InvalidConfig("%s subnet %s overlaps %s, %s" % (where, net, unusable[0], unusable[1]),
                                "docs/decisions.md \"Address classes\" lists the subnets a pool cannot use")
        if net.prefixlen >= bits - 1:
            raise InvalidConfig("network %s too small to allocate from" % net,
                                "%s: a pool needs at least one usable address besides network and gateway" % where)
        network = int(net.network_address)
        last = int(net.broadcast_address)

        def bound(name: str) -> int | None:
            raw = obj.get(name)
            if raw is None or raw == "":
                return None
            ip = parse_ip(raw, "%s %s" % (where, name))
            value = int(ip)
            if ip.version != family or not (network <= value <= last):
                raise InvalidConfig("%s %s is outside subnet %s" % (name, raw, net))
            return value

        start = bound("rangeStart")
        end = bound("rangeEnd")
        gateway = bound("gateway")
        for name, value in (("rangeStart", start), ("rangeEnd", end)):
            if value is None:
                continue
            if value == network:
                raise InvalidConfig("%s %s is the network address of subnet %s" % (name, to_ip(family, value), net))
            if family == 4 and value == last:
                raise InvalidConfig("%s %s is the broadcast address of subnet %s" % (name, to_ip(family, value), net))
        if start is None:
            start = network + 1
        if end is None:
            end = last - 1 if family == 4 else last
        if start > end:
            raise InvalidConfig("rangeStart %s is after rangeEnd %s" % (to_ip(family, start), to_ip(family, end)))
        if gateway is None:
            gateway = network + 1
        elif gateway == network:  # pre-flight: the gateway is a host address of its subnet (docs/namespace-checks.md)
            raise InvalidConfig("%s gateway %s is the network address of subnet %s" % (where, to_ip(family, gateway),
                                                                                       net))
        elif family == 4 and gateway == last:
            raise InvalidConfig("%s gateway %s is the broadcast address of subnet %s"
                                % (where, to_ip(family, gateway), net))
        return cls(family, network, net.prefixlen, start, end, gateway)

    def with_excludes(self, excludes: tuple[tuple[int, int], ...]) -> Range:
        mine = tuple((lo, hi) for lo, hi in excludes if lo <= self.last and hi >= self.network)
        return Range(self.family, self.network, self.prefixlen, self.start, self.end, self.gateway, mine, self.mode,
                     self.block_prefix)


@dataclass(frozen=True, slots=True)
class Block:
    """An aligned sub-range of a pool's subnet, the unit of node ownership (Calico's block).

    ``first``/``last`` are inclusive ints; ``prefixlen`` is the block size as a prefix length.
    """

    family: int
    first: int
    prefixlen: int

    @property
    def last(self) -> int:
        return self.first + (1 << (BITS[self.family] - self.prefixlen)) - 1

    @property
    def key(self) -> str:
        """Key text ``<hex first address>-<prefix>``; sorts in address order for one block size."""
        return "%s-%d" % (addr_key(self.family, self.first), self.prefixlen)

    @classmethod
    def from_key(cls, key: str) -> Block:
        hexpart, _, plen = key.partition("-")
        family, first = key_addr(hexpart)
        return cls(family, first, int(plen))

    def cidr(self) -> str:
        return "%s/%d" % (to_ip(self.family, self.first), self.prefixlen)


def block_of(rng: Range, block_prefix: int, value: int) -> Block:
    """The block of size ``block_prefix`` containing ``value``."""
    size = 1 << (BITS[rng.family] - block_prefix)
    return Block(rng.family, value - ((value - rng.network) % size), block_prefix)


def candidate_blocks(rng: Range, block_prefix: int, claimed: Container[int],
                     start: int | None = None) -> Iterator[Block]:
    """Unclaimed blocks of ``rng`` that hold at least one usable address, lowest first.

    ``claimed`` holds the first addresses of blocks already owned by some node (any container: a dict's keys view
    is used as is, never copied). The walk starts at the block holding ``max(rng.start, start)`` and skips claimed
    blocks; it is lazy, so a /64 of /122 blocks is fine. Cost: one step per claimed block passed over.
    """
    cursor = rng.start if start is None else max(rng.start, start)
    while cursor <= rng.end:
        # the next usable address (first_free jumps over excluded spans), then the block holding it
        value = rng.first_free(cursor, rng.end, ())
        if value is None:
            return
        blk = block_of(rng, block_prefix, value)
        if blk.first not in claimed:
            yield blk
        cursor = blk.last + 1
