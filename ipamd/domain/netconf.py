"""The network configuration as an IPAM plugin sees it: parsing and validation of the ``ipam`` block.

Host-local compatible (docs/cni-contract.md §5.2): ``ranges`` (a list of range sets, each a list of ranges),
the legacy single range (``subnet``/``rangeStart``/``rangeEnd``/``gateway`` directly under ``ipam``), ``routes``,
``dns``; plus our own keys (``socket``, ``blockSize``, ``blockSize6``, ``exclude``). Unknown ``ipam`` keys are
kept as warnings, never errors (§5.1 project decision).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .addr import BITS, GATEWAY_MODES, LINK_LOCAL_GATEWAY, Range, parse_ip, parse_subnet, to_ip
from .errors import InvalidConfig

#: Default block sizes (prefix lengths), Calico's defaults: 64 IPv4 addresses, 64 IPv6 addresses.
DEFAULT_BLOCK_PREFIX = {4: 26, 6: 122}

KNOWN_IPAM_KEYS = frozenset({
    "type", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "routes", "dns", "resolvConf", "dataDir",
    "socket", "blockSize", "blockSize6", "exclude", "strictAffinity", "checkNetns", "checkNode",
    "releaseCooldownSeconds", "gatewayMode", "maxBlocksPerNode", "pools",
})
#: Upper bound of ``releaseCooldownSeconds`` (one day): a cooling record's lease TTL, etcd time.
MAX_COOLDOWN = 86400
#: Upper bound of ``maxBlocksPerNode`` (a sanity bound on a typo, far above any real limit).
MAX_BLOCKS_PER_NODE = 1 << 20
ROUTE_KEYS_1_1 = ("mtu", "advmss", "priority", "table", "scope")
#: A named pool's name (docs/configuration.md "Named pools"): a DNS label-like word, at most 63 characters; never
#: ``/`` or ``@`` (its network ``@<name>`` is a key segment that no CNI network name can equal).
POOL_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
#: ``ipam`` keys that a named pool's spec owns: ignored (with a warning) beside ``ipam.pools``.
POOL_OWN_KEYS = ("blockSize", "blockSize6", "exclude", "strictAffinity", "releaseCooldownSeconds", "rangeStart",
                 "rangeEnd", "gateway", "gatewayMode", "maxBlocksPerNode")


@dataclass(frozen=True, slots=True)
class Pool:
    """One range of one network: the unit addresses are allocated from.

    ``id`` is ``<network>/<subnet key>`` (e.g. ``net1/0a0a0000-24``): pools of different networks are independent
    (docs/conformance.md T38), and two ranges of one network never share a subnet.
    ``block_prefix`` is the prefix length of its blocks. ``strict_affinity``: never borrow an address from a
    block another node owns (Calico's strictAffinity; field case B34). ``cooldown``: seconds a released address
    is not handed out again (``releaseCooldownSeconds``, field case B09; 0: off).
    ``gateway_mode``: how the range's pods get their prefix and gateway, one of "subnet", "block", "pointToPoint"
    (``gatewayMode``; the same as ``range.mode``; docs/configuration.md "Gateway modes").
    ``max_blocks``: the most blocks one node may own in the pool (``maxBlocksPerNode``; 0: no limit); a node at the
    limit borrows instead of claiming, or fails with code 100 under ``strictAffinity`` (docs/decisions.md "Block
    lifecycle").
    A named pool (docs/configuration.md "Named pools") has the network ``@<name>`` and the id
    ``@<name>/<subnet key>``; its spec's ``gatewayMode`` and ``maxBlocksPerNode`` give these two fields.
    """

    id: str
    network: str
    range: Range
    block_prefix: int
    strict_affinity: bool = False
    cooldown: int = 0
    gateway_mode: str = "subnet"
    max_blocks: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """A route for the result: ``dst`` CIDR text, optional ``gw`` text, and 1.1.0-only extras (``extra``)."""

    dst: str
    gw: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class NetConf:
    """A parsed network configuration: ``range_sets`` is a tuple of range sets, each a tuple of :class:`Pool`.

    ``check_netns``: CHECK also looks inside the namespace when ``CNI_NETNS`` names one (``ipam.checkNetns``,
    default true; docs/namespace-checks.md). ``check_node``: ADD refuses a pool that overlaps the node's own
    addresses or routes (``ipam.checkNode``, default true; docs/namespace-checks.md "Node check").
    ``pool_names``: the range sets of named pools (``ipam.pools``, each a tuple of pool names; docs/configuration.md
    "Named pools"); such a configuration has no ``range_sets`` until the daemon resolves the names against the pool
    specs (:func:`ipamd.domain.poolspec.resolve`), which also fills ``spec_revisions``: ``(pool name, mod_revision
    of its spec)`` for every candidate pool, the compares of its ADD.
    """

    name: str
    range_sets: tuple[tuple[Pool, ...], ...]
    routes: tuple[Route, ...] = ()
    dns: dict[str, Any] = field(default_factory=dict)
    socket: str | None = None
    warnings: tuple[str, ...] = ()
    check_netns: bool = True
    check_node: bool = True
    pool_names: tuple[tuple[str, ...], ...] = ()
    spec_revisions: tuple[tuple[str, int], ...] = ()

    def pool_for(self, value: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, Pool] | None:
        """``(range set index, pool)`` whose subnet contains ``value``, or ``None``."""
        iv = int(value)
        for idx, rset in enumerate(self.range_sets):
            for pool in rset:
                if pool.range.family == value.version and pool.range.contains(iv):
                    return idx, pool
        return None


def _block_prefix(ipam: dict[str, Any], family: int, rng: Range) -> int:
    key = "blockSize" if family == 4 else "blockSize6"
    raw = ipam.get(key)
    if raw is None:
        return max(DEFAULT_BLOCK_PREFIX[family], rng.prefixlen)
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidConfig("ipam.%s %r is not an integer prefix length" % (key, raw))
    if raw < rng.prefixlen or raw > BITS[family]:
        raise InvalidConfig("ipam.%s %d does not fit subnet %s (must be %d..%d)"
                            % (key, raw, rng.subnet, rng.prefixlen, BITS[family]))
    return raw


def _excludes(ipam: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    raw = ipam.get("exclude")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidConfig("ipam.exclude %r is not a list" % (raw,))
    out = []
    for item in raw:
        if isinstance(item, str) and "/" not in item:
            ip = parse_ip(item, "ipam.exclude entry")
            out.append((int(ip), int(ip)))
        else:
            net = parse_subnet(item, "ipam.exclude entry")
            out.append((int(net.network_address), int(net.broadcast_address)))
    return tuple(out)


def _routes(ipam: dict[str, Any]) -> tuple[Route, ...]:
    """``ipam.routes``: each ``dst`` a prefix with zero host bits, each ``gw`` a plain address of the family of its
    ``dst`` (pre-flight validation, docs/namespace-checks.md; reachability on the link is checked against the
    ranges by :func:`_check_route_gateways`)."""
    raw = ipam.get("routes")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidConfig("ipam.routes %r is not a list" % (raw,))
    routes = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidConfig("ipam.routes[%d] %r is not an object" % (i, item))
        dst = item.get("dst")
        net = parse_subnet(dst, "ipam.routes[%d].dst" % i)
        gw = item.get("gw")
        if gw is not None and gw != "":
            ip = parse_ip(gw, "ipam.routes[%d].gw" % i)
            if "%" in gw:
                raise InvalidConfig("ipam.routes[%d].gw %s is not a plain address (it names a zone)" % (i, gw))
            if ip.version != net.version:
                raise InvalidConfig("ipam.routes[%d].gw %s is not in the family of dst %s" % (i, gw, dst))
        else:
            gw = None
        extra = tuple((k, item[k]) for k in ROUTE_KEYS_1_1 if k in item)
        for key, value in extra:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidConfig("ipam.routes[%d].%s %r is not a non-negative integer" % (i, key, value))
        routes.append(Route(str(dst), gw, extra))
    return tuple(routes)


def _check_route_gateways(routes: tuple[Route, ...], range_sets: list[tuple[Pool, ...]]) -> None:
    """Every route ``gw`` must be reachable on the link: a host address inside a subnet of the network's ranges of
    its family, or the gateway of one of those ranges (the pool's own gateway is on the link by definition, also
    where it lies outside the subnet). Raises :class:`InvalidConfig` (7) naming the route. Pure."""
    for i, route in enumerate(routes):
        if route.gw is None:
            continue
        ip = ipaddress.ip_address(route.gw)
        value = int(ip)
        ranges = [p.range for rset in range_sets for p in rset if p.range.family == ip.version]
        if any(rng.gateway == value for rng in ranges):
            continue
        if any(rng.mode == "pointToPoint" and value == LINK_LOCAL_GATEWAY[rng.family] for rng in ranges):
            continue  # the link-local gateway of a pointToPoint range is on the link by definition
        inside = [rng for rng in ranges if rng.contains(value)]
        if not inside:
            where = ", ".join(str(rng.subnet) for rng in ranges) or "none: the network has no IPv%d range" \
                % ip.version
            raise InvalidConfig("ipam.routes[%d].gw %s is not reachable on the link: it is outside the network's "
                                "subnets (%s)" % (i, route.gw, where))
        rng = inside[0]
        if value == rng.network:
            raise InvalidConfig("ipam.routes[%d].gw %s is the network address of subnet %s" % (i, route.gw,
                                                                                             rng.subnet))
        if rng.family == 4 and value == rng.last:
            raise InvalidConfig("ipam.routes[%d].gw %s is the broadcast address of subnet %s" % (i, route.gw,
                                                                                               rng.subnet))


def _gateway_mode(raw: object, where: str) -> str:
    """A ``gatewayMode`` value, checked: one of :data:`GATEWAY_MODES` (case-sensitive, as CNI keys are)."""
    if raw not in GATEWAY_MODES:
        raise InvalidConfig("%s.gatewayMode %r is not one of %s" % (where, raw, ", ".join(GATEWAY_MODES)),
                            "docs/configuration.md \"Gateway modes\" describes them")
    return str(raw)


def _apply_mode(rng: Range, mode: str, raw_range: dict[str, Any], block_prefix: int, where: str) -> Range:
    """The range in ``mode`` (docs/configuration.md "Gateway modes"; docs/decisions.md "Gateway modes"). In
    ``block`` and ``pointToPoint`` modes there is no pool-wide gateway: a ``gateway`` key is a code-7 error (it
    would be silently meaningless), and in ``block`` mode the blocks must hold an address besides their first, their
    gateway and (IPv4) their last."""
    if mode == "subnet":
        return rng
    gw = raw_range.get("gateway")
    if gw is not None and gw != "":
        raise InvalidConfig("%s gateway %s cannot be set with gatewayMode %s" % (where, gw, mode),
                            "block: each node's block has its own gateway (its first usable address); "
                            "pointToPoint: every pod's gateway is the link-local %s; remove the gateway key"
                            % ("169.254.1.1" if rng.family == 4 else "fe80::1"))
    if mode == "block" and block_prefix > BITS[rng.family] - 2:
        raise InvalidConfig("%s gatewayMode block needs blocks of at least 4 addresses; the block size is /%d"
                            % (where, block_prefix), "set ipam.%s to at most %d"
                            % ("blockSize" if rng.family == 4 else "blockSize6", BITS[rng.family] - 2))
    return dataclasses.replace(rng, gateway=None, mode=mode, block_prefix=block_prefix)


def _default_routes(routes: tuple[Route, ...], configured: bool,
                    range_sets: list[tuple[Pool, ...]]) -> tuple[Route, ...]:
    """``pointToPoint`` ranges give their pods a default route via the link-local gateway, one per family, unless
    the configuration has a ``routes`` key (then those are the routes, as configured: ``[]`` means none)."""
    if configured:
        return routes
    families = sorted({p.range.family for rset in range_sets for p in rset if p.gateway_mode == "pointToPoint"})
    return tuple(Route("0.0.0.0/0" if fam == 4 else "::/0", str(to_ip(fam, LINK_LOCAL_GATEWAY[fam])))
                 for fam in families)


def _dns(ipam: dict[str, Any]) -> dict[str, Any]:
    raw = ipam.get("dns")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidConfig("ipam.dns %r is not an object" % (raw,))
    out: dict[str, Any] = {}
    for key in ("nameservers", "search", "options"):
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], list) or not all(isinstance(x, str) for x in raw[key]):
                raise InvalidConfig("ipam.dns.%s %r is not a list of strings" % (key, raw[key]))
            if raw[key]:
                out[key] = list(raw[key])
    if raw.get("domain"):
        if not isinstance(raw["domain"], str):
            raise InvalidConfig("ipam.dns.domain %r is not a string" % (raw["domain"],))
        out["domain"] = raw["domain"]
    return out


def parse_netconf(conf: dict[str, Any], name: str) -> NetConf:
    """Validate the ``ipam`` block of a network configuration (already a JSON object, ``name`` already checked).

    Returns a :class:`NetConf`. Raises :class:`InvalidConfig` (code 7) for: no ``ipam`` object; no ranges;
    malformed ranges (see :meth:`Range.from_config`); mixed families inside one range set; overlapping ranges
    within or across range sets; bad ``blockSize``, ``exclude``, ``routes`` or ``dns``; a gateway that is not a
    host address of its subnet; a route ``dst`` that is not a prefix (host bits set, no length), a route ``gw``
    that is not a plain address of the route's family reachable on the link (pre-flight validation,
    docs/namespace-checks.md); a ``checkNetns`` or ``checkNode`` that is not true or false; a
    ``releaseCooldownSeconds`` that is not an integer from 0 to :data:`MAX_COOLDOWN`; a ``gatewayMode`` (top level,
    or per range overriding it) that is not ``subnet``, ``block`` or ``pointToPoint``, a ``gateway`` with a mode
    other than ``subnet``, ``block`` mode with blocks smaller than 4 addresses or with ``strictAffinity`` false
    (docs/configuration.md "Gateway modes"). ``pointToPoint`` ranges add a default route via their link-local
    gateway when the configuration has no ``routes`` key; a ``maxBlocksPerNode`` that is not an integer
    from 0 to :data:`MAX_BLOCKS_PER_NODE`. Pure and deterministic.
    """
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise InvalidConfig("network %s has no ipam object" % name)
    warnings = tuple("ignoring unknown ipam key %r" % k for k in ipam if k not in KNOWN_IPAM_KEYS)
    raw_sets: list[Any] = []
    if ipam.get("subnet") is not None:
        raw_sets.append([{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}])
    ranges = ipam.get("ranges")
    pool_names = _pool_names(ipam)
    if pool_names and (raw_sets or ranges is not None):
        raise InvalidConfig("ipam.pools and ipam.%s are both set" % ("subnet" if raw_sets else "ranges"),
                            "a network configuration takes its addresses either from named pools (ipam.pools) or "
                            "from ranges (ipam.ranges or ipam.subnet), not both (docs/configuration.md)")
    if pool_names:
        return _named_netconf(ipam, name, pool_names, warnings)
    if ranges is not None:
        if not isinstance(ranges, list):
            raise InvalidConfig("ipam.ranges %r is not a list of range sets" % (ranges,))
        raw_sets.extend(ranges)
    if not raw_sets:
        raise InvalidConfig("ipam for network %s has no ranges" % name, "set ipam.ranges, ipam.subnet or ipam.pools")
    excludes = _excludes(ipam)
    strict = ipam.get("strictAffinity", False)
    if not isinstance(strict, bool):
        raise InvalidConfig("ipam.strictAffinity %r is not true or false" % (strict,))
    cooldown = ipam.get("releaseCooldownSeconds", 0)
    if cooldown is None:
        cooldown = 0
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or not 0 <= cooldown <= MAX_COOLDOWN:
        raise InvalidConfig("ipam.releaseCooldownSeconds %r is not an integer from 0 to %d"
                            % (cooldown, MAX_COOLDOWN))
    max_blocks = ipam.get("maxBlocksPerNode", 0)
    if max_blocks is None:
        max_blocks = 0
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or not 0 <= max_blocks <= MAX_BLOCKS_PER_NODE:
        raise InvalidConfig("ipam.maxBlocksPerNode %r is not an integer from 0 (no limit) to %d"
                            % (max_blocks, MAX_BLOCKS_PER_NODE))
    top_mode = _gateway_mode(ipam.get("gatewayMode", "subnet"), "ipam")
    range_sets: list[tuple[Pool, ...]] = []
    seen: list[Range] = []
    for i, raw_set in enumerate(raw_sets):
        if not isinstance(raw_set, list) or not raw_set:
            raise InvalidConfig("ipam.ranges[%d] %r is not a non-empty list of ranges" % (i, raw_set))
        pools: list[Pool] = []
        for j, raw_range in enumerate(raw_set):
            where = "ipam.ranges[%d][%d]" % (i, j)
            mode = top_mode
            if isinstance(raw_range, dict) and "gatewayMode" in raw_range:
                mode = _gateway_mode(raw_range["gatewayMode"], where)
            rng = Range.from_config(raw_range, where).with_excludes(excludes)
            block_prefix = _block_prefix(ipam, rng.family, rng)
            if isinstance(raw_range, dict):
                rng = _apply_mode(rng, mode, raw_range, block_prefix, where)
            for other in seen:
                if rng.overlaps(other):
                    raise InvalidConfig("%s subnet %s overlaps subnet %s" % (where, rng.subnet, other.subnet))
            if pools and pools[0].range.family != rng.family:
                raise InvalidConfig("%s subnet %s mixes address families in one range set" % (where, rng.subnet))
            seen.append(rng)
            if mode == "block" and ipam.get("strictAffinity") is False:
                raise InvalidConfig("%s gatewayMode block cannot be used with strictAffinity false" % where,
                                    "an address borrowed from another node's block would need that node's gateway; "
                                    "block mode never borrows (docs/decisions.md \"Gateway modes\")")
            pools.append(Pool("%s/%s" % (name, rng.subnet_key), name, rng, block_prefix,
                              strict or mode == "block", cooldown, mode, max_blocks=max_blocks))
        range_sets.append(tuple(pools))
    routes = _routes(ipam)
    _check_route_gateways(routes, range_sets)
    routes = _default_routes(routes, ipam.get("routes") is not None, range_sets)
    return NetConf(name=name, range_sets=tuple(range_sets), routes=routes, warnings=warnings, **_link_keys(ipam))


def _link_keys(ipam: dict[str, Any]) -> dict[str, Any]:
    """The keys that mean the same with ``ranges`` and with ``pools``: ``dns``, ``socket``, ``checkNetns`` and
    ``checkNode`` (booleans, default true), as :class:`NetConf` keyword arguments. Raises :class:`InvalidConfig`."""
    checks = {}
    for key, arg in (("checkNetns", "check_netns"), ("checkNode", "check_node")):
        value = ipam.get(key, True)
        if not isinstance(value, bool):
            raise InvalidConfig("ipam.%s %r is not true or false" % (key, value))
        checks[arg] = value
    socket = ipam.get("socket")
    return {"dns": _dns(ipam), "socket": socket if isinstance(socket, str) else None, **checks}


def _pool_names(ipam: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    """``ipam.pools``: a non-empty list of range sets, each a non-empty list of pool names, no name twice."""
    raw = ipam.get("pools")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise InvalidConfig("ipam.pools %r is not a non-empty list of range sets (lists of pool names)" % (raw,))
    seen: set[str] = set()
    out = []
    for i, rset in enumerate(raw):
        if not isinstance(rset, list) or not rset:
            raise InvalidConfig("ipam.pools[%d] %r is not a non-empty list of pool names" % (i, rset))
        names = []
        for j, item in enumerate(rset):
            if not isinstance(item, str) or not POOL_NAME_RE.fullmatch(item):
                raise InvalidConfig("ipam.pools[%d][%d] %r is not a pool name" % (i, j, item),
                                    "a pool name matches %s" % POOL_NAME_RE.pattern)
            if item in seen:
                raise InvalidConfig("ipam.pools[%d][%d] names pool %s a second time" % (i, j, item))
            seen.add(item)
            names.append(item)
        out.append(tuple(names))
    return tuple(out)


def _named_netconf(ipam: dict[str, Any], name: str, pool_names: tuple[tuple[str, ...], ...],
                   warnings: tuple[str, ...]) -> NetConf:
    """A configuration of named pools: the pools' own keys (blockSize, exclude, cooldown, ...) live in their specs,
    so those keys here are ignored with a warning."""
    ignored = tuple("ignoring ipam.%s: the named pools' specs say it" % k for k in POOL_OWN_KEYS if k in ipam)
    return NetConf(name=name, range_sets=(), routes=_routes(ipam), warnings=warnings + ignored,
                   pool_names=pool_names, **_link_keys(ipam))


def check_route_gateways(routes: tuple[Route, ...], range_sets: tuple[tuple[Pool, ...], ...]) -> None:
    """:func:`_check_route_gateways` for the range sets of resolved named pools. Raises :class:`InvalidConfig`."""
    _check_route_gateways(routes, list(range_sets))


#: Parsed configurations by (network name, repr of the ``ipam`` object): a runtime sends the same network
#: configuration on every call, and parsing it (addresses, ranges, routes) costs more than the rest of an ADD.
_PARSED: dict[tuple[str, str], NetConf] = {}
PARSED_LIMIT = 512


def parse_netconf_cached(conf: dict[str, Any], name: str) -> NetConf:
    """:func:`parse_netconf` remembered for identical ``ipam`` objects (bounded; :class:`NetConf` is immutable, so
    sharing it is safe). Same errors as :func:`parse_netconf`, which are not remembered."""
    key = (name, repr(conf.get("ipam")))
    found = _PARSED.get(key)
    if found is None:
        found = parse_netconf(conf, name)
        if len(_PARSED) >= PARSED_LIMIT:
            _PARSED.clear()
        _PARSED[key] = found
    return found
