"""What ``ipamctl pools``, ``blocks`` and ``usage`` show (docs/ipamctl.md "Pools, blocks and usage"), computed from
records read at one etcd revision (pure: no I/O).

Sizes come from integer arithmetic on a pool's range (:meth:`ipamd.domain.addr.Range.usable_count`), counts from the
records themselves, so an IPv6 /64 pool costs what is allocated in it, never its address space. Sizes are Python
ints: a pool may hold more than 2**64 addresses (an IPv6 /48), which is why the gRPC messages carry them as decimal
text.

Terms (docs/etcd-layout.md): a block's **used** addresses are the address records inside it, whichever node's
attachment holds them; **borrowed** are those held by attachments of another node than the block's owner (field case
B34: a node borrows when no block is left to claim); a node's **borrowed elsewhere** are its attachments' addresses
in blocks other nodes own.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .addr import Block, to_ip
from .cni import validate_network_name
from .errors import InvalidConfig
from .model import IpRecord, PoolRecord


def percent(part: int, whole: int) -> float:
    """``part`` of ``whole`` in percent (0.0 when ``whole`` is 0); exact enough for any pool size."""
    return part * 100.0 / whole if whole > 0 else 0.0


def format_percent(value: float) -> str:
    """``61.54%``; a non-zero share too small for two decimals (3 addresses of a /64) reads ``<0.01%``, not 0."""
    if 0 < value < 0.005:
        return "<0.01%"
    return "%.2f%%" % value


def parse_pool_ref(text: str) -> str:
    """A pool given by an operator as its id (``net1/0a010200-24``) or as ``<network>/<CIDR>`` (``net1/10.1.2.0/24``,
    ``net6/fd00:1::/64``) -> the pool id. Raises :class:`InvalidConfig` naming the value."""
    network, sep, rest = text.partition("/")
    if not sep or not rest:
        raise InvalidConfig("pool %r: expected <network>/<subnet>, e.g. net1/10.1.2.0/24 or net1/0a010200-24" % text)
    if network.startswith("@"):  # a named pool: @<name>/<subnet> (docs/configuration.md "Named pools")
        from .poolspec import validate_pool_name

        validate_pool_name(network[1:])
    else:
        validate_network_name(network)
    if "-" in rest and "." not in rest and ":" not in rest:
        try:
            return "%s/%s" % (network, Block.from_key(rest).key)
        except (ValueError, KeyError):
            raise InvalidConfig("pool %r: %r is not a subnet key" % (text, rest)) from None
    try:
        if "/" not in rest:
            raise ValueError(rest)
        net = ipaddress.ip_network(rest)
    except ValueError:
        raise InvalidConfig("pool %r: %r is not a subnet (a CIDR with its prefix length, no host bits)"
                            % (text, rest)) from None
    return "%s/%s" % (network, Block(net.version, int(net.network_address), net.prefixlen).key)


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """One pool record with its figures: ``size`` usable addresses of its range, ``allocated`` address records
    inside its subnet (any pool of the network: an address is unique in its network), ``blocks`` claimed by any
    node; ``block_prefix`` is the pool's fixed block size as a prefix length; ``gateway_mode`` the pool record's
    ``gatewayMode`` (docs/configuration.md "Gateway modes")."""

    pool: str
    network: str
    subnet: str
    range_start: str
    range_end: str
    gateway: str
    block_prefix: int
    size: int
    allocated: int
    blocks: int
    gateway_mode: str = "subnet"

    @property
    def free(self) -> int:
        return max(self.size - self.allocated, 0)

    @property
    def utilisation(self) -> float:
        """Allocated of size, in percent."""
        return percent(self.allocated, self.size)

    def to_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "network": self.network, "subnet": self.subnet, "rangeStart": self.range_start,
                "rangeEnd": self.range_end, "gateway": self.gateway or None, "blockSize": self.block_prefix,
                "gatewayMode": self.gateway_mode, "size": self.size, "allocated": self.allocated, "free": self.free,
                "blocks": self.blocks,
                "utilisation": self.utilisation}


def pool_info(pool_id: str, record: PoolRecord, allocated: int, blocks: int) -> PoolInfo:
    """A pool's figures from its record and two counts read at the snapshot's revision."""
    rng = record.range
    return PoolInfo(pool_id, record.network or pool_id.split("/", 1)[0], str(rng.subnet),
                    str(to_ip(rng.family, rng.start)), str(to_ip(rng.family, rng.end)),
                    str(to_ip(rng.family, rng.gateway)) if rng.gateway is not None else "", record.block_prefix,
                    rng.usable_count(), allocated, blocks, rng.mode)


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """One claimed block: its CIDR, pool and owner ``node``; ``size`` usable addresses of the pool's range inside
    it; ``used`` address records inside it; ``borrowed`` of those, held by attachments of other nodes;
    ``node_borrowed`` the owner's attachments' addresses in other nodes' blocks of the same pool."""

    block: str
    pool: str
    node: str
    size: int
    used: int
    borrowed: int
    node_borrowed: int

    @property
    def free(self) -> int:
        return max(self.size - self.used, 0)

    def to_json(self) -> dict[str, Any]:
        return {"block": self.block, "pool": self.pool, "node": self.node, "size": self.size, "used": self.used,
                "free": self.free, "borrowed": self.borrowed, "nodeBorrowedElsewhere": self.node_borrowed}


@dataclass(frozen=True, slots=True)
class NodeUsage:
    """One node over the pools read: ``blocks`` it owns, their ``capacity`` (usable addresses) and ``used``
    addresses (any node's), ``borrowed_in`` of those held by other nodes' attachments, ``allocated`` addresses its
    own attachments hold (in its blocks or elsewhere), ``borrowed_elsewhere`` of those in other nodes' blocks;
    ``alive`` when its ``nodes/<node>`` record (its lease) exists."""

    node: str
    alive: bool
    blocks: int
    capacity: int
    used: int
    borrowed_in: int
    allocated: int
    borrowed_elsewhere: int

    @property
    def free(self) -> int:
        return max(self.capacity - self.used, 0)

    @property
    def utilisation(self) -> float:
        """Used of its blocks' capacity, in percent."""
        return percent(self.used, self.capacity)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "alive": self.alive, "blocks": self.blocks, "capacity": self.capacity,
                "used": self.used, "free": self.free, "borrowedIn": self.borrowed_in, "allocated": self.allocated,
                "borrowedElsewhere": self.borrowed_elsewhere, "utilisation": self.utilisation}


@dataclass(slots=True)
class _NodeTally:
    blocks: int = 0
    capacity: int = 0
    used: int = 0
    borrowed_in: int = 0
    allocated: int = 0
    borrowed_elsewhere: int = 0


@dataclass(frozen=True, slots=True)
class BlockTally:
    """The outcome of :func:`tally_blocks`: the blocks (in pool, then address order) and every node seen."""

    blocks: tuple[BlockInfo, ...]
    nodes: tuple[NodeUsage, ...] = field(default_factory=tuple)


def tally_blocks(pools: Mapping[str, PoolRecord], blocks: Iterable[tuple[str, Block, str]],
                 addresses: Mapping[str, Sequence[tuple[int, IpRecord]]],
                 alive: Iterable[str] = ()) -> BlockTally:
    """Blocks and nodes from the records of one snapshot.

    ``pools``: pool id -> record; ``blocks``: ``(pool id, block, owner node)`` of the claimed blocks;
    ``addresses``: pool id -> ``(address, record)`` of every address record inside the pool's subnet (one range
    read); ``alive``: the nodes with a ``nodes/`` record. Blocks of a pool without a record are skipped (nothing
    tells their usable size). An address counts as used in the block that contains it, whatever its record's pool;
    it counts for its node (allocated, borrowed elsewhere) only under its own pool, so overlapping pools of one
    network count each address once. Cost: O(records log blocks).
    """
    by_pool: dict[str, list[tuple[Block, str]]] = {}
    for pool_id, block, owner in blocks:
        if pool_id in pools:
            by_pool.setdefault(pool_id, []).append((block, owner))
    nodes: dict[str, _NodeTally] = {n: _NodeTally() for n in alive}
    out: list[BlockInfo] = []
    for pool_id in sorted(set(by_pool) | set(addresses)):
        record = pools.get(pool_id)
        if record is None:
            continue
        rng = record.range
        owned = sorted(by_pool.get(pool_id, ()), key=lambda bo: bo[0].first)
        firsts = [b.first for b, _ in owned]
        used = [0] * len(owned)
        borrowed = [0] * len(owned)
        node_borrowed: dict[str, int] = {}
        for value, rec in addresses.get(pool_id, ()):
            i = bisect.bisect_right(firsts, value) - 1
            inside = i >= 0 and value <= owned[i][0].last
            if inside:
                used[i] += 1
                if rec.node != owned[i][1]:
                    borrowed[i] += 1
            if rec.pool != pool_id:
                continue
            t = nodes.setdefault(rec.node, _NodeTally())
            t.allocated += 1
            if inside and rec.node != owned[i][1]:
                t.borrowed_elsewhere += 1
                node_borrowed[rec.node] = node_borrowed.get(rec.node, 0) + 1
        for i, (block, owner) in enumerate(owned):
            size = rng.usable_count(block.first, block.last)
            out.append(BlockInfo(block.cidr(), pool_id, owner, size, used[i], borrowed[i],
                                 node_borrowed.get(owner, 0)))
            t = nodes.setdefault(owner, _NodeTally())
            t.blocks += 1
            t.capacity += size
            t.used += used[i]
            t.borrowed_in += borrowed[i]
    live = set(alive)
    return BlockTally(tuple(out), tuple(
        NodeUsage(n, n in live, t.blocks, t.capacity, t.used, t.borrowed_in, t.allocated, t.borrowed_elsewhere)
        for n, t in sorted(nodes.items())))
