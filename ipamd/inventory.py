"""Read-only views of the cluster's pools, blocks, usage and attachments, each read from etcd at one revision
(docs/ipamctl.md "Pools, blocks and usage"; the gRPC calls ListPools, ListBlocks, Usage, ListAllocations).

Every answer is one consistent snapshot: the first read fixes the revision and every later read of the same answer
asks etcd for that revision (``RangeRequest.revision``). Costs are bounded by records, never by address space:

- pools: one range read of ``pools/`` (of the network), then per pool two count-only reads (address records inside
  its subnet, its claimed blocks);
- blocks and usage: the pools, one range read of ``blocks/`` (of the pool), one of ``nodes/``, and per pool one range
  read of the address records inside its subnet (what ``ipamctl check`` reads of it: linear in what is allocated);
- attachments: one range read of ``handles/`` (of the network), filtered here.

A revision etcd compacted between two reads of one answer (:class:`StoreCompacted`) restarts the answer at a new
revision, at most three times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .domain.addr import Block
from .domain.errors import InvalidConfig
from .domain.inventory import (
    BlockInfo,
    BlockTally,
    NodeUsage,
    PoolInfo,
    parse_pool_ref,
    pool_info,
    tally_blocks,
)
from .domain.model import (
    BLOCKS,
    HANDLES,
    NODES,
    POOLS,
    HandleRecord,
    IpRecord,
    PoolRecord,
    blocks_prefix,
    decode_block_record,
    ips_range,
    parse_block_key,
    parse_ip_key,
    pool_network,
)
from .store.base import Store, StoreCompacted, prefix_end

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Snapshots tried when etcd compacts the revision of one under it.
ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class AttachmentFilter:
    """Which attachments ``ipamctl list`` wants ("" matches all): ``network``, ``node`` (the handle's node),
    ``pool`` (an id; an attachment with an address of it), ``namespace`` and ``pod`` (the handle's ``pod`` metadata,
    Kubernetes namespace and name)."""

    network: str = ""
    node: str = ""
    pool: str = ""
    namespace: str = ""
    pod: str = ""

    def matches(self, rec: HandleRecord) -> bool:
        return ((not self.network or rec.network == self.network) and (not self.node or rec.node == self.node)
                and (not self.pool or any(a.pool_id == self.pool for a in rec.allocations))
                and (not self.namespace or rec.pod.get("namespace") == self.namespace)
                and (not self.pod or rec.pod.get("name") == self.pod))


class Inventory:
    """The reader behind the read-only gRPC calls: ``store`` any :class:`ipamd.store.base.Store`, ``timeout`` seconds
    per etcd call. Thread-safe (no state). Every method raises the store's errors (:class:`TryAgainLater`, code 11,
    when etcd cannot be read) and :class:`InvalidConfig` (7) for a malformed filter."""

    def __init__(self, store: Store, timeout: float) -> None:
        self.store = store
        self.timeout = timeout

    def _snapshot(self, read: Callable[[], T]) -> T:
        for attempt in range(ATTEMPTS):
            try:
                return read()
            except StoreCompacted as exc:
                if attempt == ATTEMPTS - 1:
                    raise
                log.debug("inventory snapshot compacted under it (%s); reading again", exc.msg)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pool_records(self, network: str, pool: str) -> tuple[dict[str, PoolRecord], int]:
        """Pool records (of one ``network`` or one ``pool`` id) and the snapshot's revision. Undecodable records are
        skipped (``ipamctl check`` reports them)."""
        if pool:
            kvs, revision = self.store.read(POOLS + pool, None, self.timeout)
        else:
            start = POOLS + (network + "/" if network else "")
            kvs, revision = self.store.read(start, prefix_end(start), self.timeout)
        out: dict[str, PoolRecord] = {}
        for kv in kvs:
            try:
                out[kv.key[len(POOLS):]] = PoolRecord.decode(kv.value)
            except ValueError:
                log.warning("skipping undecodable pool record %s", kv.key)
        return out, revision

    @staticmethod
    def _pool_filter(pool: str) -> str:
        return parse_pool_ref(pool) if pool else ""

    def _pool_infos(self, records: dict[str, PoolRecord], revision: int) -> list[PoolInfo]:
        """Each pool's figures: two count-only reads at ``revision`` (its subnet's address records, its blocks)."""
        out = []
        for pid, record in sorted(records.items()):
            rng = record.range
            lo, hi = ips_range(pool_network(pid), Block(rng.family, rng.network, rng.prefixlen))
            bp = blocks_prefix(pid)
            out.append(pool_info(pid, record, self.store.count(lo, hi, self.timeout, revision=revision),
                                 self.store.count(bp, prefix_end(bp), self.timeout, revision=revision)))
        return out

    def _tally(self, records: dict[str, PoolRecord], revision: int, pool_id: str) -> BlockTally:
        """Blocks (of ``pool_id``, or all), the ``nodes/`` records and each pool's address records, read at
        ``revision``, tallied (:func:`ipamd.domain.inventory.tally_blocks`)."""
        start = blocks_prefix(pool_id) if pool_id else BLOCKS
        block_kvs, _ = self.store.read(start, prefix_end(start), self.timeout, revision=revision)
        blocks = []
        for kv in block_kvs:
            try:
                pid, block = parse_block_key(kv.key)
                blocks.append((pid, block, decode_block_record(kv.value)))
            except ValueError:
                log.warning("skipping undecodable block record %s", kv.key)
        node_kvs, _ = self.store.read(NODES, prefix_end(NODES), self.timeout, revision=revision)
        addresses: dict[str, list[tuple[int, IpRecord]]] = {}
        for pid, record in records.items():
            rng = record.range
            lo, hi = ips_range(pool_network(pid), Block(rng.family, rng.network, rng.prefixlen))
            ip_kvs, _ = self.store.read(lo, hi, self.timeout, revision=revision)
            found = addresses.setdefault(pid, [])
            for kv in ip_kvs:
                try:
                    found.append((parse_ip_key(kv.key)[2], IpRecord.decode(kv.value)))
                except ValueError:
                    log.warning("skipping undecodable address record %s", kv.key)
        return tally_blocks(records, blocks, addresses, [kv.key[len(NODES):] for kv in node_kvs])

    def pools(self, network: str = "", pool: str = "") -> tuple[int, list[PoolInfo]]:
        """``(revision, pools)`` in pool id order, of one ``network`` or one ``pool`` (an id or
        ``<network>/<CIDR>``) when given. Raises :class:`InvalidConfig` when ``pool`` names no pool."""
        pool_id = self._pool_filter(pool)

        def read() -> tuple[int, list[PoolInfo]]:
            records, rev = self._pool_records(network, pool_id)
            if pool_id and pool_id not in records:
                raise InvalidConfig("no pool %s (ipamctl pools lists them)" % pool)
            return rev, self._pool_infos(records, rev)
        return self._snapshot(read)

    def blocks(self, pool: str = "", node: str = "") -> tuple[int, list[BlockInfo], list[NodeUsage]]:
        """``(revision, blocks, nodes)``: every claimed block (of ``pool``; owned by ``node``) with its figures, and
        the nodes over the same pools (only ``node`` when given). Raises :class:`InvalidConfig` when ``pool`` names
        no pool."""
        pool_id = self._pool_filter(pool)

        def read() -> tuple[int, list[BlockInfo], list[NodeUsage]]:
            records, rev = self._pool_records("", pool_id)
            if pool_id and pool_id not in records:
                raise InvalidConfig("no pool %s (ipamctl pools lists them)" % pool)
            tally = self._tally(records, rev, pool_id)
            return (rev, [b for b in tally.blocks if not node or b.node == node],
                    [n for n in tally.nodes if not node or n.node == node])
        return self._snapshot(read)

    def usage(self) -> tuple[int, list[PoolInfo], list[NodeUsage]]:
        """``(revision, pools, nodes)``: every pool's figures and every node's (alive ones holding nothing, too),
        at one revision."""
        def read() -> tuple[int, list[PoolInfo], list[NodeUsage]]:
            records, rev = self._pool_records("", "")
            return rev, self._pool_infos(records, rev), list(self._tally(records, rev, "").nodes)
        return self._snapshot(read)

    def attachments(self, flt: AttachmentFilter) -> tuple[int, list[HandleRecord]]:
        """``(revision, records)`` of the attachments ``flt`` matches, in key order: one range read of the handles
        (of the filter's network, or of the pool's network)."""
        pool_id = self._pool_filter(flt.pool)
        if pool_id and pool_network(pool_id).startswith("@"):
            # a named pool's addresses belong to attachments of any network that names it
            flt = AttachmentFilter(flt.network, flt.node, pool_id, flt.namespace, flt.pod)
        elif pool_id:
            network = pool_network(pool_id)
            if flt.network and flt.network != network:
                raise InvalidConfig("pool %s is not of network %s" % (flt.pool, flt.network))
            flt = AttachmentFilter(network, flt.node, pool_id, flt.namespace, flt.pod)
        start = HANDLES + (flt.network + "/" if flt.network else "")
        kvs, revision = self.store.read(start, prefix_end(start), self.timeout)
        out = []
        for kv in kvs:
            try:
                rec = HandleRecord.decode(kv.value)
            except ValueError:
                log.warning("skipping undecodable handle record %s", kv.key)
                continue
            if flt.matches(rec):
                out.append(rec)
        return revision, out
