"""Removing a departed node (issue 8 "Node removal"; docs/ipamctl.md "Removing a node"): release every
attachment the node allocated and delete its blocks once they are empty.

Safety (docs/etcd-layout.md invariant 5): a node whose ``nodes/<node>`` record is still on a live lease is refused
unless forced (it may only be paused); every release compares the handle's ``mod_revision`` as read and, unless
forced, that the node record is still absent (a daemon that comes back while the removal runs keeps what is left);
a block is deleted only when no address record is left in it (a range compare in the same transaction) and, unless
forced, the node record is still absent. A block that still holds addresses of other nodes' attachments (borrowed
into it) is kept and listed: its addresses stay their holders' until DEL. Used by ``ipamctl node remove`` and, in
Kubernetes mode, by the automatic removal of nodes deleted from the API (:mod:`ipamd.noderemoval`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .cooling import CoolingLeases
from .domain.model import (
    BLOCKS,
    HANDLES,
    POOLS,
    HandleRecord,
    PoolRecord,
    decode_block_record,
    ips_range,
    node_key,
    parse_block_key,
    pool_network,
)
from .store.base import KV, Compare, Delete, Store
from .txns import OpsLimit, ReleaseBatchTxn, send_in_batches


@dataclass(slots=True)
class NodeRemovalPlan:
    """What removing ``node`` would do, read from one snapshot: the attachments it allocated (handle KV and record),
    its blocks, and whether the node record is still alive; ``cooldowns``: each pool's ``releaseCooldownSeconds``
    from its record (the released addresses cool, B09)."""

    node: str
    alive: bool
    attachments: list[tuple[KV, HandleRecord]] = field(default_factory=list)
    blocks: list[KV] = field(default_factory=list)
    cooldowns: dict[str, int] = field(default_factory=dict)

    def cooldown_by_key(self) -> dict[str, tuple[str, int]]:
        """``{address key: (pool id, seconds)}`` for the plan's attachments' addresses in pools with a cooldown."""
        return {a.ip_key: (a.pool_id, self.cooldowns[a.pool_id]) for _, rec in self.attachments
                for a in rec.allocations if self.cooldowns.get(a.pool_id)}

    def describe(self) -> list[str]:
        """One line per attachment and block, for ``ipamctl node remove`` to show before it acts."""
        lines = ["node %s: %s; %d attachment(s), %d address(es), %d block(s)"
                 % (self.node, "lease ALIVE" if self.alive else "no live lease", len(self.attachments),
                    sum(len(r.allocations) for _, r in self.attachments), len(self.blocks))]
        lines += ["  release %s %s" % (r.handle, ",".join(a.cidr for a in r.allocations)) for _, r in self.attachments]
        lines += ["  delete block %s (when empty)" % kv.key for kv in self.blocks]
        return lines


def plan_removal(kvs: Iterable[KV], node: str) -> NodeRemovalPlan:
    """Read ``node``'s attachments and blocks from a snapshot of the whole prefix (see
    :func:`ipamd.check.read_snapshot`). Undecodable records are left to ``ipamctl check``/``repair``."""
    plan = NodeRemovalPlan(node, alive=False)
    for kv in kvs:
        try:
            if kv.key == node_key(node):
                plan.alive = True
            elif kv.key.startswith(HANDLES):
                rec = HandleRecord.decode(kv.value)
                if rec.node == node:
                    plan.attachments.append((kv, rec))
            elif kv.key.startswith(BLOCKS) and decode_block_record(kv.value) == node:
                plan.blocks.append(kv)
            elif kv.key.startswith(POOLS):
                cooldown = PoolRecord.decode(kv.value).cooldown
                if cooldown:
                    plan.cooldowns[kv.key[len(POOLS):]] = cooldown
        except ValueError:
            continue
    return plan


@dataclass(slots=True)
class RemovalResult:
    """What :func:`remove_node` did: attachments released (``released_handles``: each as ``handle=addresses``),
    blocks deleted, blocks kept (not empty), and the attachments or blocks skipped because they changed since the
    plan was read (or the node record came back)."""

    released: int = 0
    released_handles: list[str] = field(default_factory=list)
    blocks_deleted: int = 0
    blocks_kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def remove_node(store: Store, plan: NodeRemovalPlan, *, force: bool = False, timeout: float = 10.0,
                cooling: CoolingLeases | None = None) -> RemovalResult:
    """Carry out a plan. Raises ``ValueError`` when the node's lease is alive and ``force`` is not set; the store's
    errors otherwise. ``timeout`` (seconds) bounds each etcd call. Idempotent, and safe to run from several
    processes at once: every delete compares what it read, so each attachment and block is removed by exactly one
    of them and the others count it as skipped. Released addresses of pools with a cooldown get their cooling
    records in the same transactions (B09; leases from ``cooling``, or new ones)."""
    if plan.alive and not force:
        raise ValueError("node %s still holds a live lease (nodes/%s): it may only be paused; stop it for good, wait "
                         "for its lease to expire, or force" % (plan.node, plan.node))
    out = RemovalResult()
    records = {kv.key: rec for kv, rec in plan.attachments}
    absent = [] if force else [Compare(node_key(plan.node), "version", "==", 0)]
    leases = cooling if cooling is not None else CoolingLeases(store)
    cooldowns = plan.cooldown_by_key()
    puts = leases.puts(list(cooldowns), lambda k: cooldowns.get(k, ("", 0)), timeout)

    def released(kv: KV) -> None:
        rec = records[kv.key]
        out.released += 1
        out.released_handles.append("%s=%s" % (rec.handle, ",".join(a.cidr for a in rec.allocations)))

    # a batch stays within etcd's per-request limit of compares too: one per handle plus the node record's
    def send(batch: list[tuple[KV, Sequence[str]]]) -> None:
        txn = ReleaseBatchTxn(batch, absent, puts)
        if store.txn(txn.compares, txn.success, txn.failure, timeout).succeeded:
            for kv, _ in batch:
                released(kv)
            return
        for kv, keys in batch:  # one of them changed since the plan (or the node came back): each on its own
            one = ReleaseBatchTxn([(kv, keys)], absent, puts)
            if store.txn(one.compares, one.success, one.failure, timeout).succeeded:
                released(kv)
            else:
                out.skipped.append(records[kv.key].handle)

    # batches shrink when etcd's --max-txn-ops is lower than ours (B24): a refused batch applied nothing
    send_in_batches([(kv, rec.ip_keys) for kv, rec in plan.attachments], send, OpsLimit(), puts)
    for kv in plan.blocks:
        pool_id, block = parse_block_key(kv.key)
        start, end = ips_range(pool_network(pool_id), block)
        compares = [Compare(kv.key, "mod", "==", kv.mod_revision), Compare(start, "version", "==", 0, end)]
        if not force:
            compares.append(Compare(node_key(plan.node), "version", "==", 0))
        if store.txn(compares, [Delete(kv.key)], [], timeout).succeeded:
            out.blocks_deleted += 1
        elif store.count(start, end, timeout):
            out.blocks_kept.append(kv.key)
        else:
            out.skipped.append(kv.key)
    return out
