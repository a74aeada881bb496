"""Automatic removal of nodes deleted from the Kubernetes API (issue 8 item 5; docs/ipamctl.md "Removing a node",
docs/configuration.md "Kubernetes mode").

In Kubernetes mode each daemon runs :meth:`NodeRemover.round` (a background loop under
:func:`ipamd.concurrency.supervise`). A node's attachments are released and its empty blocks deleted (with
:func:`ipamd.nodes.plan_removal` and :func:`ipamd.nodes.remove_node`, never forced) only when all of these hold
(:func:`decide`):

1. automatic removal is on (``--kube-node-removal-grace`` > 0) and the node is not this daemon's own;
2. the node view is current (listed, and nothing failed since) and *saw the node go*: a watch DELETED event, or the
   node missing from a new list after an earlier one listed it. A node the view merely does not know (never seen,
   view not listed yet, API server unreachable) is never removed: deletions that happened while this daemon was not
   running are left to ``ipamctl node remove``;
3. the deletion was seen at least the grace period ago (monotonic time of this process);
4. the node's liveness record ``nodes/<node>`` is absent from etcd (its lease expired or was revoked).

Both 2 and 4 are required (docs/decisions.md "Kubernetes mode"): a node whose lease expired but which is still in the
API may only be paused (SIGSTOP, a long GC pause, a partition) and keeps everything (docs/etcd-layout.md invariant 5);
a node deleted from the API whose daemon still renews its lease still runs pods.

Several daemons do this at once: every release and block delete compares the revision it read and that
``nodes/<node>`` is still absent, so each record is removed by exactly one of them, and a node whose daemon comes back
while the removal runs keeps what is left.

Cost: nothing is read from etcd while no node has been deleted for the grace period. For each such node, one read of
``nodes/<node>``, and, when its lease is gone, one read of every handle and block record of the prefix (the handles
name their node; they are not indexed by it). A node whose removal left nothing is not read again; one that left
something (a block holding other nodes' addresses, a record that changed under it) is tried again every
:data:`RETRY_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .domain.model import BLOCKS, HANDLES, node_key
from .failpoints import Failpoints
from .nodes import RemovalResult, plan_removal, remove_node
from .store.base import Store, prefix_end

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

#: Seconds before a node whose removal left something behind is tried again.
RETRY_SECONDS = 300.0
#: Released attachments named in the one log line of a removal (the rest are counted).
LOGGED_HANDLES = 20


class DeletionView(Protocol):
    """What :func:`decide` needs of the node view (``ipamd.kube.NodeSnapshot`` has it): whether the view is current
    (``synced``), the deletions it saw (``deleted``: name -> monotonic seconds when seen), and ``deleted_for``."""

    @property
    def synced(self) -> bool: ...

    @property
    def deleted(self) -> Mapping[str, float]: ...

    def deleted_for(self, name: str, now: float | None = None) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    """:func:`decide`'s answer for one node: ``remove`` or not, and a ``reason`` for logs."""

    remove: bool
    reason: str


def decide(view: DeletionView | None, node: str, own_node: str, grace: float, lease_alive: bool | None,
           now: float) -> Verdict:
    """Whether node ``node`` may be removed now (module docstring, rules 1-4). ``view`` is the node view's snapshot
    (``None`` before its first list); ``grace`` in seconds (0: off); ``lease_alive`` whether ``nodes/<node>`` exists
    in etcd (``None``: not read yet, never a removal); ``now`` monotonic seconds. Pure, never raises."""
    if grace <= 0:
        return Verdict(False, "automatic node removal is off (--kube-node-removal-grace 0)")
    if node == own_node:
        return Verdict(False, "node %s is this daemon's own node" % node)
    if view is None:
        return Verdict(False, "the node view has not listed yet")
    if not view.synced:
        return Verdict(False, "the node view is not current (API server unreachable or re-listing)")
    age = view.deleted_for(node, now)
    if age is None:
        return Verdict(False, "no deletion of node %s was seen (it exists, or this daemon never saw it go)" % node)
    if age < grace:
        return Verdict(False, "node %s was deleted from the API %.0f s ago, within the grace period of %g s"
                       % (node, age, grace))
    if lease_alive is None:
        return Verdict(False, "the lease record nodes/%s has not been read" % node)
    if lease_alive:
        return Verdict(False, "node %s was deleted from the API %.0f s ago but its lease nodes/%s is alive: its "
                       "daemon still runs" % (node, age, node))
    return Verdict(True, "node %s was deleted from the Kubernetes API %.0f s ago (grace %g s) and its lease "
                   "nodes/%s has expired" % (node, age, grace, node))


def due(view: DeletionView | None, own_node: str, grace: float, now: float) -> list[str]:
    """The nodes :func:`decide` could remove once their lease is read: deleted at least ``grace`` seconds ago as
    seen by a current view, this node excluded; sorted. Pure."""
    if view is None or grace <= 0 or not view.synced:
        return []
    return sorted(n for n in view.deleted
                  if n != own_node and (age := view.deleted_for(n, now)) is not None and age >= grace)


class NodeRemover:
    """The background loop of automatic node removal (module docstring). ``view()`` returns the node view's
    snapshot (``KubeMode.nodes.snapshot``); ``grace`` seconds (> 0); ``etcd_timeout`` bounds each transaction and
    the one-key read, ``read_timeout`` each read of the handle and block records. ``metrics`` (optional) counts
    removals; ``failpoints`` (tests) may pause at ``noderemoval.after_plan``, between reading a node's records and
    removing them. One thread runs :meth:`round`."""

    def __init__(self, store: Store, own_node: str, grace: float, view: Callable[[], DeletionView | None],
                 etcd_timeout: float = 2.0, read_timeout: float = 30.0, metrics: Metrics | None = None,
                 retry: float = RETRY_SECONDS, clock: Callable[[], float] = time.monotonic,
                 failpoints: Failpoints | None = None) -> None:
        self.store, self.own_node, self.grace, self.view = store, own_node, grace, view
        self.etcd_timeout, self.read_timeout = etcd_timeout, max(read_timeout, etcd_timeout)
        self.metrics, self.retry, self.clock = metrics, retry, clock
        self.failpoints = failpoints or Failpoints()
        #: node -> (monotonic time its deletion was seen, monotonic time of the next attempt): bounded by the
        #: view's deletions (entries of nodes the view forgot are dropped)
        self._next: dict[str, tuple[float, float]] = {}
        self._alive_reported: set[tuple[str, float]] = set()

    @property
    def period(self) -> float:
        """Seconds between rounds: a quarter of the grace period, from 0.5 to 10."""
        return min(10.0, max(0.5, self.grace / 4))

    def round(self) -> float:
        """Look at the node view once and remove every node :func:`decide` allows. Returns the seconds until the next
        round. Raises the store's errors (the loop backs off and retries; a node not finished is tried again)."""
        view = self.view()
        if view is None:
            return self.period
        now = self.clock()
        for name in [n for n in self._next if n not in view.deleted]:
            del self._next[name]
        self._alive_reported = {k for k in self._alive_reported if view.deleted.get(k[0]) == k[1]}
        failed: Exception | None = None
        for node in due(view, self.own_node, self.grace, now):
            seen = view.deleted[node]
            at_seen, next_at = self._next.get(node, (seen, 0.0))
            if at_seen == seen and now < next_at:
                continue
            try:
                self._next[node] = (seen, now + self.remove(node, view, now))
            except Exception as exc:  # noqa: BLE001 - the node stays due; the others still get their turn
                failed = failed or exc
        if failed is not None:
            raise failed  # the loop logs it, backs off and runs the next round
        return self.period

    def remove(self, node: str, view: DeletionView, now: float) -> float:
        """Check ``nodes/<node>`` in etcd, and when :func:`decide` says so, remove the node. Returns the seconds before
        the node is worth looking at again: 0 while its lease is alive (the next round reads it again),
        :attr:`retry` when something of it is left, infinity when nothing is. Raises the store's errors."""
        node_kvs, _ = self.store.read(node_key(node), None, self.etcd_timeout)
        verdict = decide(view, node, self.own_node, self.grace, bool(node_kvs), now)
        if not verdict.remove:
            seen = (node, view.deleted.get(node, 0.0))
            if seen not in self._alive_reported:
                self._alive_reported.add(seen)
                log.info("node %s not removed: %s", node, verdict.reason, extra={"node": node})
            return 0.0
        handles, _ = self.store.read(HANDLES, prefix_end(HANDLES), self.read_timeout)
        blocks, _ = self.store.read(BLOCKS, prefix_end(BLOCKS), self.read_timeout)
        plan = plan_removal([*node_kvs, *handles, *blocks], node)
        if not plan.attachments and not plan.blocks:
            log.debug("node %s: nothing of it left in etcd", node, extra={"node": node})
            return float("inf")
        self.failpoints.hit("noderemoval.after_plan")
        result = remove_node(self.store, plan, timeout=self.etcd_timeout)
        self._report(node, verdict.reason, result)
        return self.retry if result.blocks_kept or result.skipped else float("inf")

    def _report(self, node: str, reason: str, result: RemovalResult) -> None:
        """One log line per removal, naming what was released; the counters."""
        if self.metrics is not None:
            if result.released or result.blocks_deleted:
                self.metrics.node_removals.inc()
            self.metrics.node_removal_released.inc(result.released)
            self.metrics.node_removal_blocks_deleted.inc(result.blocks_deleted)
        shown = result.released_handles[:LOGGED_HANDLES]
        more = len(result.released_handles) - len(shown)
        log.info("node %s removed: %s; released %d attachment(s)%s%s, deleted %d block(s)%s%s", node, reason,
                 result.released, (": " + " ".join(shown)) if shown else "", " and %d more" % more if more else "",
                 result.blocks_deleted,
                 "; kept %d block(s) still holding other nodes' addresses: %s"
                 % (len(result.blocks_kept), " ".join(result.blocks_kept)) if result.blocks_kept else "",
                 "; skipped %d changed under it (another daemon removing it too, or the node came back)"
                 % len(result.skipped) if result.skipped else "",
                 extra={"node": node, "released": result.released, "blocks_deleted": result.blocks_deleted})
