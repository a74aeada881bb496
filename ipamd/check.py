"""The consistency check: the invariants of design.md §2 verified over one snapshot of the key space.

Pure: :func:`check_snapshot` takes the key-values read at one revision and returns the violations found, so
``ipamctl check``, the daemon and every test scenario share one definition. :func:`check_store` reads the
snapshot with one range read (one revision) and checks it.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable

from .domain.addr import Block, Range, key_addr
from .domain.model import BLOCKS, HANDLES, IPS, POOLS, HandleRecord
from .store.base import KV, Store


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: ``invariant`` is its number in design.md §2, ``key`` the offending key."""

    invariant: int
    key: str
    message: str

    def __str__(self) -> str:
        return "INV%d %s: %s" % (self.invariant, self.key, self.message)


def pool_range(spec: dict) -> Range | None:
    """The :class:`Range` a pool record describes, or ``None`` if the record is malformed."""
    try:
        net = ipaddress.ip_network(spec["subnet"])
        gw = spec.get("gateway")
        excludes = []
        for item in spec.get("exclude") or ():
            lo, _, hi = item.partition("-")
            excludes.append((int(ipaddress.ip_address(lo)), int(ipaddress.ip_address(hi))))
        return Range(net.version, int(net.network_address), net.prefixlen,
                     int(ipaddress.ip_address(spec["rangeStart"])), int(ipaddress.ip_address(spec["rangeEnd"])),
                     int(ipaddress.ip_address(gw)) if gw else None, tuple(excludes))
    except (KeyError, ValueError):
        return None


def check_snapshot(kvs: Iterable[KV]) -> list[Violation]:
    """Check invariants 1-3 (and the "block with an owner" half of 2) on keys relative to the prefix.

    1. every address record names an existing handle that lists it, and every address a handle lists has a
       record naming that handle; 2. every address is usable in its pool and lies in a block with an owner;
    3. no attachment holds two addresses of one pool (address uniqueness is key uniqueness).
    """
    pools: dict[str, Range | None] = {}
    blocks: dict[str, list[tuple[Block, str]]] = {}
    ips: dict[str, dict] = {}
    handles: dict[str, HandleRecord] = {}
    out: list[Violation] = []
    for kv in kvs:
        try:
            if kv.key.startswith(POOLS):
                pools[kv.key[len(POOLS):]] = pool_range(json.loads(kv.value))
            elif kv.key.startswith(BLOCKS):
                pool_id, _, bkey = kv.key[len(BLOCKS):].rpartition("/")
                blocks.setdefault(pool_id, []).append((Block.from_key(bkey), json.loads(kv.value).get("node", "")))
            elif kv.key.startswith(IPS):
                ips[kv.key[len(IPS):]] = json.loads(kv.value)
            elif kv.key.startswith(HANDLES):
                handles[kv.key[len(HANDLES):]] = HandleRecord.decode(kv.value)
        except (ValueError, KeyError, TypeError) as exc:
            out.append(Violation(0, kv.key, "undecodable record: %s" % exc))
    for rest, rec in ips.items():
        network, _, hexaddr = rest.rpartition("/")
        network = network.rsplit("/", 1)[0]  # ips/<network>/v4|v6/<hex>
        pool_id = str(rec.get("pool", ""))
        handle = rec.get("handle", "")
        h = handles.get(handle)
        if h is None:
            out.append(Violation(1, IPS + rest, "names handle %r, which does not exist" % handle))
        elif not any(a.ip_key == IPS + rest for a in h.allocations):
            out.append(Violation(1, IPS + rest, "handle %r does not list this address" % handle))
        try:
            family, value = key_addr(hexaddr)
        except ValueError:
            out.append(Violation(0, IPS + rest, "malformed address key"))
            continue
        rng = pools.get(pool_id)
        if rng is None or not pool_id.startswith(network + "/"):
            out.append(Violation(2, IPS + rest, "pool %r has no (valid) pool record in network %s"
                                 % (pool_id, network)))
        elif rng.family != family or not rng.usable(value):
            out.append(Violation(2, IPS + rest, "address is not usable in pool %s" % rng.subnet))
        owners = [node for blk, node in blocks.get(pool_id, ()) if blk.family == family
                  and blk.first <= value <= blk.last]
        if not owners or not owners[0]:
            out.append(Violation(2, IPS + rest, "address lies in no block of pool %r with an owner" % pool_id))
    for handle, h in handles.items():
        if h.handle != handle:
            out.append(Violation(1, HANDLES + handle, "record names attachment %r" % h.handle))
        seen_pools: set[str] = set()
        for alloc in h.allocations:
            ip_rec = ips.get(alloc.ip_key[len(IPS):])
            if ip_rec is None or ip_rec.get("handle") != handle:
                out.append(Violation(1, HANDLES + handle, "address %s has no record naming this handle" % alloc.cidr))
            if alloc.pool_id in seen_pools:
                out.append(Violation(3, HANDLES + handle, "two addresses in pool %s" % alloc.pool_id))
            seen_pools.add(alloc.pool_id)
    for pool_id, blks in blocks.items():
        firsts = sorted(blks, key=lambda b: b[0].first)
        for (a, _), (b, _) in zip(firsts, firsts[1:]):
            if b.first <= a.last:
                out.append(Violation(3, BLOCKS + pool_id, "blocks %s and %s overlap" % (a.cidr(), b.cidr())))
    return out


def check_store(store: Store, timeout: float = 10.0) -> tuple[list[Violation], dict[str, int]]:
    """Read the whole prefix at one revision and check it; returns ``(violations, counts by record kind)``."""
    kvs, _rev = store.read("", "\xff", timeout)
    counts = {"pools": 0, "blocks": 0, "ips": 0, "handles": 0}
    for kv in kvs:
        for kind in counts:
            if kv.key.startswith(kind + "/"):
                counts[kind] += 1
    return check_snapshot(kvs), counts
