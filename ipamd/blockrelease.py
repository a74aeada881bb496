"""Empty-block release (docs/decisions.md "Block lifecycle", docs/etcd-layout.md "Transactions"): a node gives back
the blocks it owns that stayed empty for ``--empty-block-release-seconds``, keeping at least one block per pool.

Who: only the owner releases its own blocks, so "empty for how long" is local bookkeeping of the daemon that owns
the block: each pass reads, for every block this node owns, the block record, its address records and its cooling
records in one consistent read (up to :data:`BLOCKS_PER_READ` blocks per round trip). A block seen empty (no address
record, no cooling record) at the same block ``mod_revision`` in every pass for at least ``after`` seconds is due;
a pass that sees it hold anything, or at another revision, starts its clock again. Between passes (every
``min(after / 4, 30 s)``, at least 0.5 s) the etcd-side evidence of use is the revision of the last change to an
address or cooling record of the block that this daemon saw (its own ADDs and DELs, and the watch on its blocks'
ranges, which also delivers other nodes' borrows: :attr:`ipamd.domain.policy.BlockState.changed`): when it moved,
the clock starts again, so an address allocated and released between two passes counts as use. Nothing of this is
needed for safety: the release itself is the proof.

The proof is :class:`ipamd.txns.ReleaseBlockTxn`: it deletes the block record only if its ``mod_revision`` is the
one read AND etcd's range compares find no address record and no cooling record in the block's key ranges. An ADD
into the block compares the block's ``mod_revision``: if the release wins, the ADD's compare fails and it plans
again (claiming a block); if the ADD wins, the release's range compare fails. No address is ever left in a block
without an owner (invariant 2; field case B02 "extra").

Blocks of a pool in ``gatewayMode`` block are never released: the block's gateway address stays on the owner's
bridge (the bridge plugin never removes it), so another node claiming the block would meet a stale route here.

Per pool, the node keeps at least one block: when every block it owns there is due, the lowest is spared (the
policy allocates from the lowest block first, so that is the one the next ADD uses). A block with cooling records
waits until they expire (B09). The loop runs under :func:`ipamd.concurrency.supervise` and cannot die (B53).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .cache import NodeCache
from .domain.addr import Block
from .domain.model import block_key, cooling_range, decode_block_record, ips_range, pool_network
from .failpoints import Failpoints
from .metrics import Metrics
from .store.base import Get, Store
from .txns import ReleaseBlockTxn

log = logging.getLogger(__name__)

#: Blocks whose records are read per round trip (three Gets each, under etcd's 128 operations per transaction).
BLOCKS_PER_READ = 40
#: Longest pause between passes, seconds.
MAX_PASS_INTERVAL = 30.0


@dataclass(slots=True)
class _Empty:
    """A block seen empty: since when (monotonic seconds), at which block ``mod_revision``, and the last change to
    its records seen then (:attr:`ipamd.domain.policy.BlockState.changed`)."""

    since: float
    mod_revision: int
    changed: int


@dataclass(slots=True)
class ReleasePass:
    """One pass: ``owned`` blocks examined, ``empty`` seen empty, ``released`` block keys deleted, ``kept`` the
    block keys spared as their pool's last block, ``lost`` releases whose compare failed (the block changed)."""

    owned: int = 0
    empty: int = 0
    released: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


def release_block(store: Store, pool_id: str, block: Block, revision: int, timeout: float) -> tuple[bool, int]:
    """Delete the block record of ``block`` in ``pool_id`` if it is still at ``revision`` and holds no address record
    and no cooling record (:class:`ipamd.txns.ReleaseBlockTxn`). Returns ``(released, etcd revision after)``.

    One transaction; safe against any concurrent ADD (see the module docstring). Idempotent in effect: a block
    already gone fails the compare. Raises the store's errors (:class:`~ipamd.store.base.StoreUnavailable`, 11).
    """
    txn = ReleaseBlockTxn(pool_id, pool_network(pool_id), block, revision)
    res = store.txn(txn.compares, txn.success, txn.failure, timeout)
    return res.succeeded, res.revision


class BlockReleaser:
    """The empty-block release loop of one daemon (see the module docstring). ``after``: seconds a block must stay
    empty (``--empty-block-release-seconds``; 0: never release); ``clock``: monotonic seconds (tests);
    ``failpoints``: ``blockrelease.read`` (before a pass reads) and ``blockrelease.before_release`` (before each
    release transaction), for the loop tests (B53)."""

    def __init__(self, store: Store, cache: NodeCache, node: str, *, after: float, etcd_timeout: float,
                 metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 failpoints: Failpoints | None = None) -> None:
        self.store, self.cache, self.node = store, cache, node
        self.after, self.etcd_timeout, self.metrics, self.clock = after, etcd_timeout, metrics, clock
        self.failpoints = failpoints or Failpoints()
        self._empty: dict[tuple[str, int], _Empty] = {}

    @property
    def interval(self) -> float:
        """Seconds between passes: a quarter of ``after``, from 0.5 to :data:`MAX_PASS_INTERVAL`."""
        return max(0.5, min(MAX_PASS_INTERVAL, self.after / 4))

    def round(self) -> float:
        """For :func:`ipamd.concurrency.supervise`: one pass; returns the seconds to the next (60 when off)."""
        if self.after <= 0:
            return 60.0
        self.run()
        return self.interval

    def run(self) -> ReleasePass:
        """One pass: read this node's blocks, update the empty clocks, release the due ones (keeping one block per
        pool). Raises the store's errors (the loop retries); a release already committed stays counted."""
        out = ReleasePass()
        now = self.clock()
        owned = [o for o in self.cache.own_block_revisions() if not self._gateway_on_node(o[0])]
        out.owned = len(owned)
        seen: dict[tuple[str, int], _Empty] = {}
        by_pool: dict[str, list[tuple[Block, int, bool]]] = {}
        for i in range(0, len(owned), BLOCKS_PER_READ):
            chunk = owned[i:i + BLOCKS_PER_READ]
            ops: list[Get] = []
            for pool_id, block, _, _ in chunk:
                network = pool_network(pool_id)
                ops += [Get(block_key(pool_id, block)), Get(*ips_range(network, block)),
                        Get(*cooling_range(network, block))]
            self.failpoints.hit("blockrelease.read")
            res = self.store.txn([], ops, [], self.etcd_timeout)
            for n, (pool_id, block, _, changed) in enumerate(chunk):
                bkv, ips, cooling = res.reads[3 * n:3 * n + 3]
                try:
                    ours = bool(bkv) and decode_block_record(bkv[0].value) == self.node
                except ValueError:
                    ours = False
                if not ours:
                    continue  # gone or not ours any more: the watch will tell the cache
                revision = bkv[0].mod_revision
                empty = not ips and not cooling
                key = (pool_id, block.first)
                if empty:
                    out.empty += 1
                    known = self._empty.get(key)
                    same = known is not None and (known.mod_revision, known.changed) == (revision, changed)
                    seen[key] = known if same and known is not None else _Empty(now, revision, changed)
                by_pool.setdefault(pool_id, []).append((block, revision, empty))
        self._empty = seen
        for pool_id, blocks in by_pool.items():
            due = [(b, rev) for b, rev, empty in blocks if empty and now - seen[(pool_id, b.first)].since >= self.after]
            if not due:
                continue
            if len(due) == len(blocks):  # a node keeps at least one block per pool: the lowest
                spared = min(due, key=lambda d: d[0].first)
                due.remove(spared)
                out.kept.append(block_key(pool_id, spared[0]))
            for block, revision in due:
                self._release(pool_id, block, revision, now, out)
        return out

    def _gateway_on_node(self, pool_id: str) -> bool:
        """True for a pool in ``gatewayMode`` block (its record says so): each block's gateway address sits on its
        owner's bridge, and the bridge plugin never removes it, so a released block claimed by another node would
        leave a stale connected route on this one. Such blocks are never released (docs/decisions.md)."""
        record = self.cache.pool_record(pool_id)[0]
        return record is not None and record.range.mode == "block"

    def _release(self, pool_id: str, block: Block, revision: int, now: float, out: ReleasePass) -> None:
        key = block_key(pool_id, block)
        self.failpoints.hit("blockrelease.before_release")
        released, at = release_block(self.store, pool_id, block, revision, self.etcd_timeout)
        self._empty.pop((pool_id, block.first), None)
        if not released:
            out.lost.append(key)  # an ADD (or a borrow, a cooling record) got there first, or the block changed
            return
        self.cache.block_released(pool_id, block, at)
        out.released.append(key)
        self.metrics.child(self.metrics.blocks_released, pool_id).inc()
        log.info("released block %s of pool %s: empty for at least %.0f s", block.cidr(), pool_id, self.after,
                 extra={"pool": pool_id, "block": block.cidr()})
