"""The consistency check: the invariants of docs/etcd-layout.md (docs/etcd-layout.md "Invariants") verified over one
snapshot of the key space.

Pure: :func:`check_snapshot` takes the key-values read at one revision and returns the violations found, so
``ipamctl check``, the daemon and every test scenario share one definition. :func:`check_store` reads the snapshot
with one range read (one revision) and checks it. Linear in what it reads: every lookup is a dict access (the block
holding an address is found by arithmetic on the pool's block sizes, never by a walk over the blocks).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from .domain.addr import BITS, Block, Range
from .domain.model import (
    BLOCKS,
    HANDLES,
    IPS,
    POOLS,
    HandleRecord,
    IpRecord,
    PoolRecord,
    decode_block_record,
    parse_block_key,
    parse_handle_key,
    parse_ip_key,
)
from .store.base import KV, Store


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: ``invariant`` is its number in docs/etcd-layout.md, ``key`` the offending key."""

    invariant: int
    key: str
    message: str

    def __str__(self) -> str:
        return "INV%d %s: %s" % (self.invariant, self.key, self.message)


class _Blocks:
    """The claimed blocks of one pool, found by address in O(number of distinct block sizes)."""

    def __init__(self) -> None:
        self.by_first: dict[tuple[int, int], tuple[Block, str]] = {}
        self.prefixes: set[int] = set()

    def add(self, block: Block, node: str) -> None:
        self.by_first[(block.prefixlen, block.first)] = (block, node)
        self.prefixes.add(block.prefixlen)

    def owners(self, family: int, value: int, base: int) -> list[str]:
        out = []
        for prefix in self.prefixes:
            size = 1 << (BITS[family] - prefix)
            hit = self.by_first.get((prefix, value - ((value - base) % size)))
            if hit is not None and hit[0].family == family:
                out.append(hit[1])
        return out


def check_snapshot(kvs: Iterable[KV]) -> list[Violation]:
    """Check invariants 1-3 (and the "block with an owner" half of 2) on keys relative to the prefix.

    1. every address record names an existing handle that lists it, and every address a handle lists has a record
       naming that handle; 2. every address is usable in its pool and lies in a block with an owner; 3. no
       attachment holds two addresses of one pool, and the blocks of a pool do not overlap (address uniqueness is
       key uniqueness). Records that do not decode are reported with invariant 0.
    """
    pools: dict[str, Range | None] = {}
    blocks: dict[str, _Blocks] = {}
    ips: dict[str, IpRecord] = {}
    handles: dict[str, HandleRecord] = {}
    out: list[Violation] = []
    for kv in kvs:
        try:
            if kv.key.startswith(POOLS):
                try:
                    pools[kv.key[len(POOLS):]] = PoolRecord.decode(kv.value).range
                except ValueError:
                    pools[kv.key[len(POOLS):]] = None
            elif kv.key.startswith(BLOCKS):
                pool_id, block = parse_block_key(kv.key)
                blocks.setdefault(pool_id, _Blocks()).add(block, decode_block_record(kv.value))
            elif kv.key.startswith(IPS):
                parse_ip_key(kv.key)
                ips[kv.key] = IpRecord.decode(kv.value)
            elif kv.key.startswith(HANDLES):
                handles[parse_handle_key(kv.key)] = HandleRecord.decode(kv.value)
        except ValueError as exc:
            out.append(Violation(0, kv.key, "undecodable record: %s" % exc))
    for key, rec in ips.items():
        network, family, value = parse_ip_key(key)
        h = handles.get(rec.handle)
        if h is None:
            out.append(Violation(1, key, "names handle %r, which does not exist" % rec.handle))
        elif key not in h.ip_keys:
            out.append(Violation(1, key, "handle %r does not list this address" % rec.handle))
        rng = pools.get(rec.pool)
        if rng is None or not rec.pool.startswith(network + "/"):
            out.append(Violation(2, key, "pool %r has no (valid) pool record in network %s" % (rec.pool, network)))
        elif rng.family != family or not rng.usable(value):
            out.append(Violation(2, key, "address is not usable in pool %s" % rng.subnet))
        pool_blocks = blocks.get(rec.pool)
        base = rng.network if rng is not None else value
        owners = pool_blocks.owners(family, value, base) if pool_blocks is not None and rng is not None else []
        if not any(owners):
            out.append(Violation(2, key, "address lies in no block of pool %r with an owner" % rec.pool))
    for handle, h in handles.items():
        if h.handle != handle:
            out.append(Violation(1, HANDLES + handle, "record names attachment %r" % h.handle))
        seen_pools: set[str] = set()
        for alloc in h.allocations:
            ip_rec = ips.get(alloc.ip_key)
            if ip_rec is None or ip_rec.handle != handle:
                out.append(Violation(1, HANDLES + handle, "address %s has no record naming this handle" % alloc.cidr))
            if alloc.pool_id in seen_pools:
                out.append(Violation(3, HANDLES + handle, "two addresses in pool %s" % alloc.pool_id))
            seen_pools.add(alloc.pool_id)
    for pool_id, pb in blocks.items():
        ordered = sorted((b for b, _ in pb.by_first.values()), key=lambda b: (b.family, b.first))
        for a, b in itertools.pairwise(ordered):
            if a.family == b.family and b.first <= a.last:
                out.append(Violation(3, BLOCKS + pool_id, "blocks %s and %s overlap" % (a.cidr(), b.cidr())))
    return out


def check_store(store: Store, timeout: float = 30.0) -> tuple[list[Violation], dict[str, int]]:
    """Read the whole prefix at one revision and check it; returns ``(violations, counts by record kind)``."""
    kvs, _rev = store.read("", "\xff", timeout)
    counts = {"pools": 0, "blocks": 0, "ips": 0, "handles": 0}
    for kv in kvs:
        kind = kv.key.split("/", 1)[0]
        if kind in counts:
            counts[kind] += 1
    return check_snapshot(kvs), counts
