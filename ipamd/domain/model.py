"""The etcd data model: key names under the prefix and the records stored there (pure).

Every record's encoder, decoder and key parser lives here, once (docs/etcd-layout.md is the reference; all keys are
relative to the configured prefix, default ``/ipamd/v1/``)::

    pools/<network>/<subnet key>                  PoolRecord           (first claim; blockSize fixed then)
    blocks/<network>/<subnet key>/<block key>     BlockRecord {"node"} (create-if-absent claim)
    ips/<network>/v4|v6/<address hex>             IpRecord {"handle","node","pool"}  (ADD, with the handle)
    handles/<network>/<containerID>/<ifName>      HandleRecord         (ADD, with the addresses)
    cooling/<network>/v4|v6/<address hex>         CoolingRecord {"pool","seconds"} on a lease (release, B09)
    poolspecs/<name>                              PoolSpec (ipamd.domain.poolspec; admin API); its allocations
                                                  use the pool network ``@<name>`` in the keys above
    nodes/<node>                                  liveness, on a lease

A pool id is ``<network>/<subnet key>``; subnet and block keys are ``<fixed-width hex>-<prefix>``, address keys
fixed-width hex under one directory per network and family, so one block's addresses are one contiguous, ordered
key range and an address is unique within its network whatever pool (subnet) it came from: a network whose subnet
is changed or widened can never hand out an address an older pool still holds.

Decoders raise ``ValueError`` (``KeyError``/``TypeError`` are turned into it) for a malformed record, so a caller
has one exception to catch for "something else wrote this key".
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from .addr import BITS, GATEWAY_MODES, Block, Range, addr_key, key_addr, to_ip

POOLS = "pools/"
BLOCKS = "blocks/"
IPS = "ips/"
HANDLES = "handles/"
NODES = "nodes/"
COOLING = "cooling/"
#: Named pools' specs (docs/etcd-layout.md): ``poolspecs/<name>``. Not under ``pools/``, so the implicit pools'
#: readers never see them.
POOLSPECS = "poolspecs/"


# -- keys ------------------------------------------------------------------------------------------------------------

def pool_key(pool_id: str) -> str:
    return POOLS + pool_id


def poolspec_key(name: str) -> str:
    """``poolspecs/<name>``: a named pool's spec (:class:`ipamd.domain.poolspec.PoolSpec`)."""
    return POOLSPECS + name


def block_key(pool_id: str, block: Block) -> str:
    return "%s%s/%s" % (BLOCKS, pool_id, block.key)


def blocks_prefix(pool_id: str) -> str:
    return "%s%s/" % (BLOCKS, pool_id)


def pool_network(pool_id: str) -> str:
    """The network name of a pool id (``<network>/<subnet key>``)."""
    return pool_id.split("/", 1)[0]


def pool_subnet(pool_id: str) -> Block:
    """The subnet of a pool id as a :class:`Block` (first address and prefix). Raises ``ValueError``."""
    return Block.from_key(pool_id.rsplit("/", 1)[1])


def ip_key(network: str, family: int, value: int) -> str:
    """``ips/<network>/v4|v6/<fixed-width hex>``."""
    return "%s%s/v%d/%s" % (IPS, network, family, addr_key(family, value))


def ips_range(network: str, block: Block) -> tuple[str, str]:
    """``[start, end)`` key range holding exactly the address records of ``block`` in ``network``."""
    first = ip_key(network, block.family, block.first)
    end = block.last + 1
    if end >= 1 << BITS[block.family]:
        return first, "%s%s/v%d0" % (IPS, network, block.family)  # '0' sorts right after '/'
    return first, ip_key(network, block.family, end)


def cooling_key(ip_key_: str) -> str:
    """The cooling record of an address record key: ``ips/<network>/v4/<hex>`` -> ``cooling/<network>/v4/<hex>``
    (same layout, so one block's cooling records are one contiguous key range too). Raises ``ValueError``."""
    if not ip_key_.startswith(IPS):
        raise ValueError("not an address key: %r" % ip_key_)
    return COOLING + ip_key_[len(IPS):]


def cooling_range(network: str, block: Block) -> tuple[str, str]:
    """``[start, end)`` key range holding exactly the cooling records of ``block`` in ``network``."""
    start, end = ips_range(network, block)
    return COOLING + start[len(IPS):], COOLING + end[len(IPS):]


def parse_cooling_key(key: str) -> tuple[str, int, int]:
    """``cooling/<network>/v4|v6/<hex>`` -> ``(network, family, address)``. Raises ``ValueError``."""
    if not key.startswith(COOLING):
        raise ValueError("not a cooling key: %r" % key)
    return parse_ip_key(IPS + key[len(COOLING):])


def handle_key(handle: str) -> str:
    return HANDLES + handle


def node_key(node: str) -> str:
    return NODES + node


def parse_block_key(key: str) -> tuple[str, Block]:
    """``blocks/<pool id>/<block key>`` -> ``(pool id, Block)``. Raises ``ValueError`` for any other key."""
    if not key.startswith(BLOCKS):
        raise ValueError("not a block key: %r" % key)
    pool_id, _, bkey = key[len(BLOCKS):].rpartition("/")
    if not pool_id:
        raise ValueError("not a block key: %r" % key)
    try:
        return pool_id, Block.from_key(bkey)
    except (ValueError, KeyError) as exc:
        raise ValueError("not a block key: %r (%s)" % (key, exc)) from None


def parse_ip_key(key: str) -> tuple[str, int, int]:
    """``ips/<network>/v4|v6/<hex>`` -> ``(network, family, address)``. Raises ``ValueError`` for any other key."""
    if not key.startswith(IPS):
        raise ValueError("not an address key: %r" % key)
    network, _, rest = key[len(IPS):].partition("/")
    fam, _, hexaddr = rest.partition("/")
    family, value = key_addr(hexaddr)
    if not network or fam != "v%d" % family:
        raise ValueError("not an address key: %r" % key)
    return network, family, value


def parse_handle_key(key: str) -> str:
    """``handles/<network>/<containerID>/<ifName>`` -> the handle id. Raises ``ValueError`` for any other key."""
    if not key.startswith(HANDLES) or key.count("/") != 3:
        raise ValueError("not a handle key: %r" % key)
    return key[len(HANDLES):]


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON bytes for an etcd value."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes) -> dict[str, Any]:
    """A record's JSON object. Raises ``ValueError`` when it is not JSON, not an object, or nested deeper than the
    interpreter's stack (a hostile or broken writer: ``RecursionError`` would otherwise escape every reader)."""
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise ValueError("record is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("record is not a JSON object")
    return obj


# -- records ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PoolRecord:
    """The value at ``pools/<pool id>``: the range the pool was last allocated from and its fixed block size.

    ``range`` is a :class:`Range` (subnet, start, end, gateway, excludes); ``block_prefix`` the prefix length of
    every block of the pool, fixed by the first claim so blocks never overlap (docs/etcd-layout.md);
    ``cooldown`` the configuration's ``releaseCooldownSeconds`` (field case B09): every release path reads it here,
    also those that see no network configuration (GC, reconciler, ipamctl). Stored only when > 0, so a record
    without a cooldown is byte for byte what it was before cooldowns existed. ``range.mode`` is the range's
    ``gatewayMode``, stored as ``gatewayMode`` only when it is not ``subnet`` (so ``ipamctl`` and the invariant check
    know which addresses a block reserves); a record without it reads as ``subnet``, as every record written before
    gateway modes existed (docs/etcd-layout.md).
    """

    network: str
    range: Range
    block_prefix: int
    cooldown: int = 0

    def encode(self) -> bytes:
        rng = self.range
        obj: dict[str, Any] = {
            "network": self.network, "subnet": str(rng.subnet),
            "rangeStart": str(to_ip(rng.family, rng.start)), "rangeEnd": str(to_ip(rng.family, rng.end)),
            "gateway": str(to_ip(rng.family, rng.gateway)) if rng.gateway is not None else None,
            "blockSize": self.block_prefix,
            "exclude": ["%s-%s" % (to_ip(rng.family, lo), to_ip(rng.family, hi)) for lo, hi in rng.excludes]}
        if self.cooldown:
            obj["releaseCooldownSeconds"] = self.cooldown
        if rng.mode != "subnet":
            obj["gatewayMode"] = rng.mode
        return dumps(obj)

    @classmethod
    def decode(cls, raw: bytes) -> PoolRecord:
        """Raises ``ValueError`` for a malformed record."""
        try:
            obj = decode(raw)
            net = ipaddress.ip_network(obj["subnet"])
            gw = obj.get("gateway")
            excludes = []
            for item in obj.get("exclude") or ():
                lo, _, hi = item.partition("-")
                excludes.append((int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))))
            prefix = obj["blockSize"]
            if isinstance(prefix, bool) or not isinstance(prefix, int):
                raise ValueError("blockSize %r is not an integer" % (prefix,))
            mode = obj.get("gatewayMode", "subnet")
            if mode not in GATEWAY_MODES:
                raise ValueError("gatewayMode %r is not one of %s" % (mode, ", ".join(GATEWAY_MODES)))
            rng = Range(net.version, int(net.network_address), net.prefixlen,
                        int(ipaddress.ip_address(obj["rangeStart"])), int(ipaddress.ip_address(obj["rangeEnd"])),
                        int(ipaddress.ip_address(gw)) if gw and mode == "subnet" else None, tuple(excludes),
                        str(mode), prefix if mode != "subnet" else 0)
            cooldown = obj.get("releaseCooldownSeconds", 0)
            if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
                raise ValueError("releaseCooldownSeconds %r is not a non-negative integer" % (cooldown,))
            return cls(str(obj.get("network", "")), rng, prefix, cooldown)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError("malformed pool record: %s" % exc) from None


def encode_block_record(node: str) -> bytes:
    """Value at ``blocks/<pool>/<block>``: ``{"node"}``; the claim time is the key's create_revision in etcd."""
    return dumps({"node": node})


def decode_block_record(raw: bytes) -> str:
    """The owner node of a block record ("" when the record names none). Raises ``ValueError``."""
    node = decode(raw).get("node", "")
    if not isinstance(node, str):
        raise ValueError("block record node %r is not a string" % (node,))
    return node


@dataclass(frozen=True, slots=True)
class IpRecord:
    """The value at ``ips/<network>/v4|v6/<addr>``: the handle holding it, the node that allocated it, its pool
    (small and constant-size, field case B05)."""

    handle: str
    node: str
    pool: str

    def encode(self) -> bytes:
        return dumps({"handle": self.handle, "node": self.node, "pool": self.pool})

    @classmethod
    def decode(cls, raw: bytes) -> IpRecord:
        """Raises ``ValueError`` for a malformed record."""
        obj = decode(raw)
        parts = (obj.get("handle", ""), obj.get("node", ""), obj.get("pool", ""))
        if not all(isinstance(p, str) for p in parts):
            raise ValueError("malformed address record %r" % (obj,))
        return cls(*parts)


@dataclass(frozen=True, slots=True)
class CoolingRecord:
    """The value at ``cooling/<network>/v4|v6/<addr>``: a released address in its cooldown (field case B09). It is
    written by the release's own transaction, on an etcd lease whose TTL covers ``seconds`` (so etcd, not a local
    clock, ends it, and it survives any daemon restart); the cooldown began at the key's ``mod_revision``."""

    pool: str
    seconds: int

    def encode(self) -> bytes:
        return dumps({"pool": self.pool, "seconds": self.seconds})

    @classmethod
    def decode(cls, raw: bytes) -> CoolingRecord:
        """Raises ``ValueError`` for a malformed record."""
        obj = decode(raw)
        pool, seconds = obj.get("pool", ""), obj.get("seconds", 0)
        if not isinstance(pool, str) or isinstance(seconds, bool) or not isinstance(seconds, int):
            raise ValueError("malformed cooling record %r" % (obj,))
        return cls(pool, seconds)


def encode_ip_record(handle: str, node: str, pool_id: str) -> bytes:
    """Value at ``ips/<network>/v4|v6/<addr>`` (see :class:`IpRecord`)."""
    return IpRecord(handle, node, pool_id).encode()


@dataclass(frozen=True, slots=True)
class Allocation:
    """One allocated address of an attachment: the pool it came from and how to render it.

    ``value`` is the address as an int; ``prefixlen`` the prefix the pod carries and ``gateway`` its gateway (an int
    or None), by the pool's gateway mode (:meth:`ipamd.domain.addr.Range.pod_address`): the subnet's prefix and
    gateway, the block's, or a host prefix and a link-local gateway.
    """

    pool_id: str
    family: int
    value: int
    prefixlen: int
    gateway: int | None

    @property
    def cidr(self) -> str:
        """``address/prefix`` as in a CNI result, e.g. ``10.1.2.2/24``."""
        return "%s/%d" % (to_ip(self.family, self.value), self.prefixlen)

    @property
    def ip_key(self) -> str:
        return ip_key(pool_network(self.pool_id), self.family, self.value)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pool": self.pool_id, "address": self.cidr}
        if self.gateway is not None:
            out["gateway"] = str(to_ip(self.family, self.gateway))
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Allocation:
        iface = ipaddress.ip_interface(obj["address"])
        gw = obj.get("gateway")
        return cls(obj["pool"], iface.version, int(iface.ip), iface.network.prefixlen,
                   int(ipaddress.ip_address(gw)) if gw else None)


@dataclass(frozen=True, slots=True)
class HandleRecord:
    """The value at ``handles/<network>/<containerID>/<ifName>``: the attachment's allocations and metadata.

    ``pod`` holds Kubernetes metadata from ``CNI_ARGS`` (namespace, name, uid) — metadata, never a key.
    ``netns_seen``: the daemon could see ``netns`` when it allocated, so the reconciler may judge the attachment by
    whether it still exists (docs/architecture.md "Reconciler"); records written before it existed read as False.
    ``routes`` are the result's routes as ``(dst, gw or None)`` text pairs, what ``ipamctl verify`` and the health
    loop expect inside the namespace (docs/namespace-checks.md); stored only when there are any, so a record
    without routes is byte for byte what it was before they were recorded.
    """

    network: str
    container_id: str
    if_name: str
    node: str
    allocations: tuple[Allocation, ...]
    netns: str = ""
    pod: dict[str, str] = field(default_factory=dict)
    routes: tuple[tuple[str, str | None], ...] = ()
    netns_seen: bool = False

    @property
    def handle(self) -> str:
        return "%s/%s/%s" % (self.network, self.container_id, self.if_name)

    @property
    def ip_keys(self) -> tuple[str, ...]:
        return tuple(a.ip_key for a in self.allocations)

    def encode(self) -> bytes:
        obj: dict[str, Any] = {"network": self.network, "containerID": self.container_id, "ifName": self.if_name,
                               "node": self.node, "ips": [a.to_json() for a in self.allocations],
                               "netns": self.netns, "pod": self.pod}
        if self.routes:
            obj["routes"] = [{"dst": dst, "gw": gw} if gw else {"dst": dst} for dst, gw in self.routes]
        if self.netns_seen:
            obj["netnsSeen"] = True
        return dumps(obj)

    @classmethod
    def decode(cls, raw: bytes) -> HandleRecord:
        """Raises ``ValueError`` for a malformed record."""
        try:
            obj = decode(raw)
            routes = tuple((str(r["dst"]), str(r["gw"]) if r.get("gw") else None) for r in obj.get("routes") or ())
            return cls(obj["network"], obj["containerID"], obj["ifName"], obj.get("node", ""),
                       tuple(Allocation.from_json(a) for a in obj.get("ips", [])), obj.get("netns", ""),
                       dict(obj.get("pod") or {}), routes, obj.get("netnsSeen") is True)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError("malformed handle record: %s" % exc) from None
