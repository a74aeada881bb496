"""The consistency check: the invariants of docs/etcd-layout.md "Invariants" verified over one snapshot of the key
space, and the repairs of what is broken (field cases B51, B52; issue 8 "Repair").

Pure: :func:`analyse` takes the key-values read at one revision and returns :class:`Finding` s, so ``ipamctl
check``, ``ipamctl repair``, the daemon and every test scenario share one definition. Three classes of finding:

- **violation**: an invariant is broken. Repairable (a delete that compares the revision it read) when the record
  is one of those the check knows how to remove safely: an address record whose handle does not exist; a handle
  whose address records are missing (with the address records that still name it).
- **leak**: consistent, but held by something that is gone: the block of a node that no longer exists (no
  ``nodes/<node>`` record) and that holds no address. Repairable; the delete also compares that the node is still
  gone and the block still empty (invariant 5: a block with allocations is never taken from its owner).
- The cooling records of released addresses (B09) must not coexist with an address record for the same address
  (invariant 6): a release writes the cooling record in the transaction that deletes the address record, and an
  ADD that takes a cooling address deletes the record in its own transaction. Not repairable by the check (the
  record ends with its lease).
- An address record of a named pool (network ``@<name>``) needs the pool's spec ``poolspecs/<name>``: a pool is
  deleted only when it holds no address (docs/etcd-layout.md "Named pools"), so an address without its spec is a
  violation of invariant 2 (``no-pool-spec``); its pool or block records without the spec (an interrupted
  ``ipamctl pool delete``) are a warning (``named-pool-leftover``) naming the command that removes them.
- **warning**: listed, never repaired: an address that was usable when it was allocated but is not under the
  pool's current configuration (a range narrowed or an exclude added under live pods, B51: the address record is
  older than the pool record's last change). It stays its holder's until DEL.

Linear in what it reads: every lookup is a dict access (the block holding an address is found by arithmetic on the
pool's block sizes, never by a walk over the blocks).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .domain.addr import BITS, Block, Range
from .domain.model import (
    BLOCKS,
    COOLING,
    HANDLES,
    IPS,
    NODES,
    POOLS,
    POOLSPECS,
    CoolingRecord,
    HandleRecord,
    IpRecord,
    PoolRecord,
    decode_block_record,
    handle_key,
    ip_key,
    ips_range,
    node_key,
    parse_block_key,
    parse_cooling_key,
    parse_handle_key,
    parse_ip_key,
    pool_network,
)
from .domain.poolspec import PoolSpec, name_of_network
from .store.base import KV, Compare, Delete, Store

#: The report format's version (``ipamctl check -o json``).
REPORT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Repair:
    """Deletes that remove a broken record, and the compares that make them safe (each deleted key's
    ``mod_revision`` as read, plus the finding's own guards)."""

    compares: tuple[Compare, ...]
    deletes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"compares": [[c.key, c.target, c.op, c.value, c.range_end] for c in self.compares],
                "deletes": list(self.deletes)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Repair:
        """Raises ``ValueError`` for a malformed repair."""
        try:
            compares = tuple(Compare(str(k), str(t), str(o), int(v), None if r is None else str(r))
                             for k, t, o, v, r in obj["compares"])
            deletes = tuple(str(k) for k in obj["deletes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("malformed repair: %s" % exc) from None
        if not deletes or any(c.target not in ("version", "mod", "create") or c.op not in ("==", "!=", "<", ">")
                              for c in compares):
            raise ValueError("malformed repair: %r" % (obj,))
        return cls(compares, deletes)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the check found: ``invariant`` (its number in docs/etcd-layout.md; 0 for an undecodable record),
    the ``key`` and its ``mod_revision`` as read, a ``message``, its ``severity`` (``violation``, ``leak``,
    ``warning``), a short ``kind``, and the :class:`Repair` when it can be removed safely."""

    invariant: int
    key: str
    message: str
    severity: str = "violation"
    kind: str = ""
    mod_revision: int = 0
    repair: Repair | None = field(default=None, compare=False)

    def __str__(self) -> str:
        tag = {"violation": "INV%d" % self.invariant, "leak": "LEAK", "warning": "WARN"}[self.severity]
        return "%s %s: %s%s" % (tag, self.key, self.message, " (repairable)" if self.repair is not None else "")

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "invariant": self.invariant, "kind": self.kind, "key": self.key,
                "mod_revision": self.mod_revision, "message": self.message,
                "repair": self.repair.to_json() if self.repair is not None else None}


#: The name the tests and older callers use for a broken invariant.
Violation = Finding


class _Blocks:
    """The claimed blocks of one pool, found by address in O(number of distinct block sizes)."""

    def __init__(self) -> None:
        self.by_first: dict[tuple[int, int], tuple[Block, str, KV]] = {}
        self.prefixes: set[int] = set()

    def add(self, block: Block, node: str, kv: KV) -> None:
        self.by_first[(block.prefixlen, block.first)] = (block, node, kv)
        self.prefixes.add(block.prefixlen)

    def holding(self, family: int, value: int, base: int) -> list[tuple[Block, str, KV]]:
        out = []
        for prefix in self.prefixes:
            size = 1 << (BITS[family] - prefix)
            hit = self.by_first.get((prefix, value - ((value - base) % size)))
            if hit is not None and hit[0].family == family:
                out.append(hit)
        return out


def analyse(kvs: Iterable[KV]) -> list[Finding]:
    """Every finding of one snapshot (keys relative to the prefix): invariants 1-3, the "block with an owner" half of
    2, leaked blocks of departed nodes, and B51 warnings. See the module docstring for the classes."""
    pools: dict[str, tuple[Range | None, int]] = {}
    blocks: dict[str, _Blocks] = {}
    ips: dict[str, tuple[IpRecord, KV]] = {}
    handles: dict[str, tuple[HandleRecord, KV]] = {}
    cooling: list[tuple[str, KV]] = []
    nodes: set[str] = set()
    specs: set[str] = set()
    bad_specs: set[str] = set()
    out: list[Finding] = []
    for kv in kvs:
        try:
            if kv.key.startswith(POOLSPECS):
                PoolSpec.decode(kv.value, kv.key[len(POOLSPECS):])
                specs.add(kv.key[len(POOLSPECS):])
            elif kv.key.startswith(POOLS):
                try:
                    pools[kv.key[len(POOLS):]] = (PoolRecord.decode(kv.value).range, kv.mod_revision)
                except ValueError:
                    pools[kv.key[len(POOLS):]] = (None, kv.mod_revision)
            elif kv.key.startswith(BLOCKS):
                pool_id, block = parse_block_key(kv.key)
                blocks.setdefault(pool_id, _Blocks()).add(block, decode_block_record(kv.value), kv)
            elif kv.key.startswith(IPS):
                parse_ip_key(kv.key)
                ips[kv.key] = (IpRecord.decode(kv.value), kv)
            elif kv.key.startswith(HANDLES):
                handles[parse_handle_key(kv.key)] = (HandleRecord.decode(kv.value), kv)
            elif kv.key.startswith(NODES):
                nodes.add(kv.key[len(NODES):])
            elif kv.key.startswith(COOLING):
                network, family, value = parse_cooling_key(kv.key)
                CoolingRecord.decode(kv.value)
                cooling.append((ip_key(network, family, value), kv))
        except ValueError as exc:
            if kv.key.startswith(POOLSPECS):
                bad_specs.add(kv.key[len(POOLSPECS):])
            out.append(Finding(0, kv.key, "undecodable record: %s" % exc, kind="undecodable",
                               mod_revision=kv.mod_revision))
    used_blocks: set[tuple[str, int, int]] = set()
    for key, (rec, kv) in ips.items():
        network, family, value = parse_ip_key(key)
        h = handles.get(rec.handle)
        if h is None:
            out.append(Finding(1, key, "names handle %r, which does not exist" % rec.handle,
                               kind="address-without-handle", mod_revision=kv.mod_revision,
                               repair=Repair((Compare(key, "mod", "==", kv.mod_revision),
                                              Compare(handle_key(rec.handle), "version", "==", 0)), (key,))))
        elif key not in h[0].ip_keys:
            out.append(Finding(1, key, "handle %r does not list this address" % rec.handle,
                               kind="address-not-listed", mod_revision=kv.mod_revision))
        rng, pool_revision = pools.get(rec.pool, (None, 0))
        spec_name = name_of_network(network)
        if spec_name is not None and spec_name not in specs:
            out.append(Finding(2, key, "address of named pool %s, whose spec %s%s is %s"
                               % (spec_name, POOLSPECS, spec_name,
                                  "not valid (see its own finding)" if spec_name in bad_specs else "missing"),
                               kind="no-pool-spec", mod_revision=kv.mod_revision))
        if rng is None or not rec.pool.startswith(network + "/"):
            out.append(Finding(2, key, "pool %r has no (valid) pool record in network %s" % (rec.pool, network),
                               kind="no-pool", mod_revision=kv.mod_revision))
        elif rng.family != family or not rng.usable(value):
            if kv.create_revision < pool_revision:  # allocated before the pool's configuration last changed (B51)
                out.append(Finding(2, key, "held by %s but not usable under pool %s as configured since revision "
                                   "%d (kept until DEL)" % (rec.handle, rng.subnet, pool_revision),
                                   severity="warning", kind="not-usable-since-narrowed", mod_revision=kv.mod_revision))
            else:
                out.append(Finding(2, key, "address is not usable in pool %s" % rng.subnet, kind="not-usable",
                                   mod_revision=kv.mod_revision))
        pool_blocks = blocks.get(rec.pool)
        holding = pool_blocks.holding(family, value, rng.network) if pool_blocks is not None and rng else []
        for blk, _, _ in holding:
            used_blocks.add((rec.pool, blk.prefixlen, blk.first))
        if not any(node for _, node, _ in holding):
            out.append(Finding(2, key, "address lies in no block of pool %r with an owner" % rec.pool,
                               kind="no-block-owner", mod_revision=kv.mod_revision))
    for key, kv in cooling:
        if key in ips:
            out.append(Finding(6, kv.key, "address %s is allocated (to %r) and also has a cooling record"
                               % (key, ips[key][0].handle), kind="allocated-and-cooling", mod_revision=kv.mod_revision))
    for handle, (hrec, kv) in handles.items():
        if hrec.handle != handle:
            out.append(Finding(1, HANDLES + handle, "record names attachment %r" % hrec.handle,
                               kind="handle-mismatch", mod_revision=kv.mod_revision))
        naming = [(a.ip_key, ips[a.ip_key][1]) for a in hrec.allocations
                  if a.ip_key in ips and ips[a.ip_key][0].handle == handle]
        named = {k for k, _ in naming}
        missing = [a.cidr for a in hrec.allocations if a.ip_key not in named]
        if missing:
            compares = (Compare(kv.key, "mod", "==", kv.mod_revision),
                        *(Compare(k, "mod", "==", ikv.mod_revision) for k, ikv in naming))
            out.append(Finding(1, HANDLES + handle, "address(es) %s have no record naming this handle"
                               % ", ".join(missing), kind="handle-without-addresses", mod_revision=kv.mod_revision,
                               repair=Repair(compares, (kv.key, *(k for k, _ in naming)))))
        seen_pools: set[str] = set()
        for alloc in hrec.allocations:
            if alloc.pool_id in seen_pools:
                out.append(Finding(3, HANDLES + handle, "two addresses in pool %s" % alloc.pool_id,
                                   kind="two-in-one-pool", mod_revision=kv.mod_revision))
            seen_pools.add(alloc.pool_id)
    for pool_id, pb in blocks.items():
        ordered = sorted((b for b, _, _ in pb.by_first.values()), key=lambda b: (b.family, b.first))
        for a, b in itertools.pairwise(ordered):
            if a.family == b.family and b.first <= a.last:
                out.append(Finding(3, BLOCKS + pool_id, "blocks %s and %s overlap" % (a.cidr(), b.cidr()),
                                   kind="blocks-overlap"))
        for blk, node, kv in pb.by_first.values():
            if node in nodes or (pool_id, blk.prefixlen, blk.first) in used_blocks:
                continue
            start, end = ips_range(pool_network(pool_id), blk)
            out.append(Finding(5, kv.key, "block of node %r, which no longer exists, holds no address" % node,
                               severity="leak", kind="block-of-departed-node", mod_revision=kv.mod_revision,
                               repair=Repair((Compare(kv.key, "mod", "==", kv.mod_revision),
                                              Compare(node_key(node), "version", "==", 0),
                                              Compare(start, "version", "==", 0, end)), (kv.key,))))
    for pool_id in sorted(set(pools) | set(blocks)):
        spec_name = name_of_network(pool_network(pool_id))
        if spec_name is not None and spec_name not in specs and spec_name not in bad_specs:
            out.append(Finding(2, POOLS + pool_id, "named pool %s has no spec %s%s: its pool and block records are "
                               "what an interrupted delete left; ipamctl pool delete %s removes them"
                               % (spec_name, POOLSPECS, spec_name, spec_name), severity="warning",
                               kind="named-pool-leftover", mod_revision=pools.get(pool_id, (None, 0))[1]))
    return out


def check_snapshot(kvs: Iterable[KV]) -> list[Finding]:
    """The violations of one snapshot (leaks and warnings left out): what every test scenario asserts is empty."""
    return [f for f in analyse(kvs) if f.severity == "violation"]


def read_snapshot(store: Store, timeout: float = 30.0) -> tuple[tuple[KV, ...], int]:
    """The whole prefix at one revision: ``(kvs, revision)``."""
    return store.read("", "\xff", timeout)


def counts(kvs: Iterable[KV]) -> dict[str, int]:
    """Records by kind (pools, blocks, ips, handles; cooling records are transient and not counted)."""
    out = {"pools": 0, "blocks": 0, "ips": 0, "handles": 0}
    for kv in kvs:
        kind = kv.key.split("/", 1)[0]
        if kind in out:
            out[kind] += 1
    return out


def check_store(store: Store, timeout: float = 30.0) -> tuple[list[Finding], dict[str, int]]:
    """Read the whole prefix at one revision and check it; returns ``(violations, counts by record kind)``."""
    kvs, _rev = read_snapshot(store, timeout)
    return check_snapshot(kvs), counts(kvs)


def report(kvs: Iterable[KV], revision: int, prefix: str, now: float | None = None) -> dict[str, Any]:
    """The machine-readable report of ``ipamctl check -o json``: when and at which revision it was read, the counts,
    every finding with its key, mod_revision and repair (docs/ipamctl.md "Report")."""
    kvs = list(kvs)
    created = time.time() if now is None else now
    return {"version": REPORT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
            "created_unix": created, "revision": revision, "prefix": prefix, "counts": counts(kvs),
            "findings": [f.to_json() for f in analyse(kvs)]}


def repairs_of(doc: dict[str, Any], max_age: float, now: float | None = None) -> list[tuple[str, Repair]]:
    """The repairs a report asks for, as ``(key, Repair)``. Raises ``ValueError`` for a report that is malformed,
    of another version, or older than ``max_age`` seconds (the records it describes may have changed since; every
    delete compares the revision it read anyway)."""
    if not isinstance(doc, dict) or doc.get("version") != REPORT_VERSION:
        raise ValueError("not an ipamctl check report of version %d" % REPORT_VERSION)
    created = doc.get("created_unix")
    if not isinstance(created, (int, float)):
        raise ValueError("the report has no creation time")
    age = (time.time() if now is None else now) - created
    if age > max_age:
        raise ValueError("the report is %.0f s old, more than %.0f s: run ipamctl check again" % (age, max_age))
    out = []
    for finding in doc.get("findings") or ():
        if isinstance(finding, dict) and finding.get("repair") and finding.get("severity") in ("violation", "leak"):
            out.append((str(finding.get("key")), Repair.from_json(finding["repair"])))
    return out


def apply_repair(store: Store, repair: Repair, timeout: float) -> bool:
    """One repair as one transaction: every compare must hold, then the deletes. Returns ``False`` when a compare
    failed (the records changed since they were read: nothing is deleted). Raises the store's errors."""
    return store.txn(list(repair.compares), [Delete(k) for k in repair.deletes], [], timeout).succeeded


__all__ = [
    "Finding",
    "Repair",
    "Violation",
    "analyse",
    "apply_repair",
    "check_snapshot",
    "check_store",
    "counts",
    "read_snapshot",
    "repairs_of",
    "report",
]
