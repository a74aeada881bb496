"""The etcd data model: key names under the prefix and the JSON records stored there (pure).

Layout (documented in docs/etcd-layout.md; all keys relative to the configured prefix, default ``/ipamd/v1/``)::

    pools/<network>/<subnet key>                  pool spec            (first claim; blockSize fixed then)
    blocks/<network>/<subnet key>/<block key>     {"node"}             (create-if-absent claim)
    ips/<network>/v4|v6/<address hex>             {"handle","node","pool"}  (ADD, with the handle)
    handles/<network>/<containerID>/<ifName>      the attachment        (ADD, with the addresses)
    nodes/<node>                                  liveness, on a lease

A pool id is ``<network>/<subnet key>``; subnet and block keys are ``<fixed-width hex>-<prefix>``, address keys
fixed-width hex under one directory per network and family, so one block's addresses are one contiguous, ordered
key range (design.md §2) and an address is unique within its network whatever pool (subnet) it came from: a
network whose subnet is changed or widened can never hand out an address an older pool still holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .addr import BITS, Block, addr_key, to_ip

POOLS = "pools/"
BLOCKS = "blocks/"
IPS = "ips/"
HANDLES = "handles/"
NODES = "nodes/"


def pool_key(pool_id: str) -> str:
    return POOLS + pool_id


def block_key(pool_id: str, block: Block) -> str:
    return "%s%s/%s" % (BLOCKS, pool_id, block.key)


def blocks_prefix(pool_id: str) -> str:
    return "%s%s/" % (BLOCKS, pool_id)


def pool_network(pool_id: str) -> str:
    """The network name of a pool id (``<network>/<subnet key>``)."""
    return pool_id.split("/", 1)[0]


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


def handle_key(handle: str) -> str:
    return HANDLES + handle


def node_key(node: str) -> str:
    return NODES + node


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact, key-sorted JSON bytes for an etcd value."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Allocation:
    """One allocated address of an attachment: the pool it came from and how to render it.

    ``value`` is the address as an int; ``prefixlen`` the pool subnet's prefix; ``gateway`` an int or None.
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
    def from_json(cls, obj: dict[str, Any]) -> "Allocation":
        import ipaddress

        iface = ipaddress.ip_interface(obj["address"])
        gw = obj.get("gateway")
        return cls(obj["pool"], iface.version, int(iface.ip), iface.network.prefixlen,
                   int(ipaddress.ip_address(gw)) if gw else None)


@dataclass(frozen=True, slots=True)
class HandleRecord:
    """The value at ``handles/<network>/<containerID>/<ifName>``: the attachment's allocations and metadata.

    ``pod`` holds Kubernetes metadata from ``CNI_ARGS`` (namespace, name, uid) — metadata, never a key.
    """

    network: str
    container_id: str
    if_name: str
    node: str
    allocations: tuple[Allocation, ...]
    netns: str = ""
    pod: dict[str, str] = field(default_factory=dict)

    @property
    def handle(self) -> str:
        return "%s/%s/%s" % (self.network, self.container_id, self.if_name)

    def encode(self) -> bytes:
        return dumps({"network": self.network, "containerID": self.container_id, "ifName": self.if_name,
                      "node": self.node, "ips": [a.to_json() for a in self.allocations],
                      "netns": self.netns, "pod": self.pod})

    @classmethod
    def decode(cls, raw: bytes) -> "HandleRecord":
        obj = json.loads(raw)
        return cls(obj["network"], obj["containerID"], obj["ifName"], obj.get("node", ""),
                   tuple(Allocation.from_json(a) for a in obj.get("ips", [])), obj.get("netns", ""),
                   dict(obj.get("pod") or {}))


def encode_ip_record(handle: str, node: str, pool_id: str) -> bytes:
    """Value at ``ips/<network>/v4|v6/<addr>``: ``{"handle", "node", "pool"}`` (small, constant-size; B05)."""
    return dumps({"handle": handle, "node": node, "pool": pool_id})


def encode_block_record(node: str) -> bytes:
    """Value at ``blocks/<pool>/<block>``: ``{"node"}``; the claim time is the key's create_revision in etcd."""
    return dumps({"node": node})


def decode(raw: bytes) -> dict[str, Any]:
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("record is not a JSON object")
    return obj
