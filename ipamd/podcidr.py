"""A node's Kubernetes ``spec.podCIDRs`` served as its blocks (issue 8 item 6; the seed's CIDR discovery).

Where the cluster hands each node a pod CIDR (kube-controller-manager ``--allocate-node-cidrs``), the node's
addresses should come from it. A pool's blocks all have the size its record fixed (docs/etcd-layout.md), so for
every pool whose subnet overlaps one of the node's podCIDRs, this node claims every pool-sized block inside the
overlap, each with a create-if-absent transaction (:class:`ipamd.txns.ClaimBlockTxn`): etcd decides, so no two
nodes ever own one block, whatever the API says. A block another node already owns is reported (one ERROR line
per block and owner) and never taken over. Blocks this node already owns are left as they are, so a round is
idempotent and cheap: one range read of the pool records, one of the planned blocks of each pool, and one
transaction per block still unclaimed.

A pool only exists (with its block size) once an ADD allocated from it, so :class:`PodCidrClaimer` runs as a
background loop: it claims at start, whenever the node's podCIDRs or the set of pools the daemon's cache knows
change (a local check every second: a new pool is claimed into within about a second of its creation, on every
node), and every ``interval`` seconds besides. A block it claims goes into the cache at once, as the watch would
deliver it (docs/architecture.md "Watch"), so the node's next ADD allocates from it.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .cache import NodeCache
from .domain.addr import BITS, Block
from .domain.model import POOLS, PoolRecord, block_key, decode_block_record, pool_subnet
from .store.base import KV, Store, WatchEvent, WatchUpdate, prefix_end
from .txns import ClaimBlockTxn

log = logging.getLogger(__name__)

#: The most blocks one podCIDR may become in one pool: an IPv6 /64 podCIDR in a pool of /122 blocks would be 2**58
#: of them; such a pair is skipped with a warning naming the block size that would fit.
MAX_BLOCKS_PER_CIDR = 256
#: Seconds between the local checks for new pools or podCIDRs.
POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class PlannedBlock:
    """One block to hold for this node: ``block`` of pool ``pool_id``, inside the node's ``pod_cidr``."""

    pool_id: str
    block: Block
    pod_cidr: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A podCIDR (or a podCIDR/pool pair, ``pool_id`` empty for the podCIDR alone) that cannot serve as blocks,
    and why."""

    pod_cidr: str
    pool_id: str
    reason: str


def plan(pools: Iterable[tuple[str, int]], pod_cidrs: Sequence[str],
         limit: int = MAX_BLOCKS_PER_CIDR) -> tuple[list[PlannedBlock], list[Skipped]]:
    """The blocks that make up ``pod_cidrs`` in each pool: ``pools`` are ``(pool id, block prefix length)``.

    For each podCIDR and each pool of the same family whose subnet overlaps it (CIDRs overlap only by nesting),
    the overlap is cut into blocks of the pool's size. Skipped, with the reason: a podCIDR that does not parse,
    an overlap smaller than one block, an overlap of more than ``limit`` blocks. Pure; cost linear in the blocks
    returned.
    """
    planned: list[PlannedBlock] = []
    skipped: list[Skipped] = []
    pools = list(pools)
    for text in pod_cidrs:
        try:
            cidr = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            skipped.append(Skipped(text, "", "not a CIDR: %s" % exc))
            continue
        family = cidr.version
        bits = BITS[family]
        for pool_id, prefix in pools:
            subnet = pool_subnet(pool_id)
            if subnet.family != family:
                continue
            pool_net = ipaddress.ip_network((subnet.first, subnet.prefixlen))
            if cidr.subnet_of(pool_net):  # type: ignore[arg-type]
                first, plen = int(cidr.network_address), cidr.prefixlen
            elif pool_net.subnet_of(cidr):  # type: ignore[arg-type]
                first, plen = subnet.first, subnet.prefixlen
            else:
                continue
            if plen > prefix:
                skipped.append(Skipped(text, pool_id, "the overlap /%d is smaller than the pool's blocks (/%d)"
                                       % (plen, prefix)))
                continue
            count = 1 << (prefix - plen)
            if count > limit:
                skipped.append(Skipped(text, pool_id, "the overlap /%d would be %d blocks of /%d (at most %d; a "
                                       "blockSize of %d or less would fit)" % (plen, count, prefix, limit,
                                                                               plen + limit.bit_length() - 1)))
                continue
            size = 1 << (bits - prefix)
            planned.extend(PlannedBlock(pool_id, Block(family, first + i * size, prefix), text)
                           for i in range(count))
    return planned, skipped


@dataclass
class ClaimReport:
    """What one claim round found: blocks ``claimed`` now, blocks this node already ``owned``, ``conflicts``
    (block, the other owner) and ``skipped`` podCIDRs."""

    claimed: list[PlannedBlock] = field(default_factory=list)
    owned: list[PlannedBlock] = field(default_factory=list)
    conflicts: list[tuple[PlannedBlock, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class PodCidrClaimer:
    """Claims this ``node``'s podCIDR blocks in etcd (module docstring). ``pod_cidrs()`` gives the node's podCIDRs
    (``None`` while they are not known, e.g. before the node view's first list); ``cache`` (optional) is the
    daemon's view, whose pool set triggers a claim when it changes and which learns each claimed block at once;
    ``etcd_timeout`` bounds each etcd call; ``interval`` is the longest time between two claims (seconds).
    :meth:`round` is meant for :func:`ipamd.concurrency.supervise`; it raises the store's errors (the loop backs
    off and tries again)."""

    def __init__(self, store: Store, node: str, pod_cidrs: Callable[[], Sequence[str] | None],
                 cache: NodeCache | None = None, etcd_timeout: float = 2.0, interval: float = 30.0) -> None:
        self.store, self.node, self.pod_cidrs, self.cache = store, node, pod_cidrs, cache
        self.etcd_timeout, self.interval = etcd_timeout, interval
        self._reported: set[tuple[str, str]] = set()
        self._no_cidrs_reported = False
        self._inputs: tuple[tuple[str, ...], frozenset[tuple[str, int]] | None] | None = None
        self._next = 0.0
        #: claim rounds run (each reads etcd); the local checks in between are not counted
        self.rounds = 0

    def claim(self, pod_cidrs: Sequence[str]) -> ClaimReport:
        """One claim round for ``pod_cidrs`` against the pools that exist now. Idempotent: blocks already this
        node's are only reported as owned. Raises :class:`ipamd.store.base.StoreUnavailable` (or its subclasses)
        when etcd cannot be reached; a transaction whose outcome is unknown is resolved by the next round's read.
        """
        kvs, _ = self.store.read(POOLS, prefix_end(POOLS), self.etcd_timeout)
        pools: list[tuple[str, int]] = []
        for kv in kvs:
            pool_id = kv.key[len(POOLS):]
            try:
                pool_subnet(pool_id)
                pools.append((pool_id, PoolRecord.decode(kv.value).block_prefix))
            except ValueError as exc:
                log.warning("podCIDR blocks: pool record %s is unusable (%s); skipped", kv.key, exc)
        planned, skipped = plan(pools, pod_cidrs)
        report = ClaimReport(skipped=skipped)
        by_pool: dict[str, list[PlannedBlock]] = {}
        for p in planned:
            by_pool.setdefault(p.pool_id, []).append(p)
        for pool_id, blocks in by_pool.items():
            start = block_key(pool_id, blocks[0].block)
            end = block_key(pool_id, blocks[-1].block) + "\0"
            owned_kvs, _ = self.store.read(start, end, self.etcd_timeout)
            owners = {kv.key: kv.value for kv in owned_kvs}
            for p in blocks:
                raw = owners.get(block_key(pool_id, p.block))
                if raw is None:
                    txn = ClaimBlockTxn(pool_id, p.block, self.node)
                    result = self.store.txn(txn.compares, txn.success, txn.failure, self.etcd_timeout)
                    if result.succeeded:
                        report.claimed.append(p)
                        if self.cache is not None:  # as the watch would deliver it, so the next ADD uses it
                            kv = KV(txn.key, txn.record, result.revision, result.revision, 1)
                            self.cache.apply(WatchUpdate((WatchEvent(False, kv),), 0))
                        continue
                    current = txn.decode_failure(result)
                    if current is None:  # no owner: a named pool deleted since the read (its spec compare failed)
                        log.info("podCIDR blocks: pool %s is gone; not claiming %s", pool_id, p.block.cidr())
                        break
                    raw = current.value
                try:
                    owner = decode_block_record(raw)
                except ValueError:
                    owner = "?"
                if owner == self.node:
                    report.owned.append(p)
                else:
                    report.conflicts.append((p, owner))
        return report

    def _pools_seen(self) -> frozenset[tuple[str, int]] | None:
        """The pools the cache knows with their record's mod_revision (0: no record yet, so no block size)."""
        if self.cache is None:
            return None
        return frozenset((pid, self.cache.pool_record(pid)[2]) for pid in self.cache.pool_ids())

    def round(self) -> float:
        """Claim when the podCIDRs or the cache's pools changed or ``interval`` passed, and log what is new;
        returns the pause before the next check."""
        cidrs = self.pod_cidrs()
        if cidrs is None:
            return POLL_SECONDS
        inputs = (tuple(cidrs), self._pools_seen())
        if inputs == self._inputs and time.monotonic() < self._next:
            return POLL_SECONDS
        if not cidrs:
            if not self._no_cidrs_reported:
                log.info("node %s has no spec.podCIDRs: no podCIDR blocks to claim", self.node,
                         extra={"node": self.node})
                self._no_cidrs_reported = True
            self._inputs, self._next = inputs, time.monotonic() + self.interval
            return POLL_SECONDS
        self._no_cidrs_reported = False
        report = self.claim(cidrs)
        self.rounds += 1
        self._inputs, self._next = inputs, time.monotonic() + self.interval
        for p in report.claimed:
            log.info("claimed block %s of pool %s for node %s (podCIDR %s)", p.block.cidr(), p.pool_id, self.node,
                     p.pod_cidr, extra={"node": self.node, "block": p.block.cidr()})
        for p, owner in report.conflicts:
            if (block_key(p.pool_id, p.block), owner) in self._reported:
                continue
            self._reported.add((block_key(p.pool_id, p.block), owner))
            log.error("block %s of pool %s lies in podCIDR %s of node %s but is owned by node %s: not taken over",
                      p.block.cidr(), p.pool_id, p.pod_cidr, self.node, owner or "(none)",
                      extra={"node": self.node, "block": p.block.cidr()})
        for s in report.skipped:
            key = ("skip:%s:%s" % (s.pod_cidr, s.pool_id), s.reason)
            if key not in self._reported:
                self._reported.add(key)
                log.warning("podCIDR %s%s cannot serve as blocks: %s", s.pod_cidr,
                            " in pool %s" % s.pool_id if s.pool_id else "", s.reason, extra={"node": self.node})
        return POLL_SECONDS
