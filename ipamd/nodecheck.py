"""The node check: a pool that overlaps the node's own addresses or routes is refused at ADD (code 7), before
anything is written (docs/namespace-checks.md "Node check"; issue 10 item 3, the seed's route validation).

:class:`NodeCheck` joins the look (:func:`ipamd.netns.observe_node`, a seam: tests pass their own) and the pure
decision (:func:`ipamd.domain.nodecheck.node_conflicts`), and remembers verdicts:

- a pool found clear is not looked at again for ``ttl`` seconds (default 60), so ADDs into a pool in use cost a
  dictionary lookup; after that the next ADD into it looks again (one look serves every pool of that ADD);
- a refused pool is never remembered: each ADD into it looks again, so fixing the node takes effect at once;
- when the look fails (no permission, the helper died or did not answer within ``timeout``), the pool is allowed,
  with one WARNING line and ``ipamd_node_checks_total{result="unknown"}``, and not looked at again for
  ``retry_after`` seconds (default 10), so a broken helper costs an ADD at most one timeout per 10 s. ADD never
  fails because the daemon could not look.

At start-up (after the first sync) :meth:`check_known` checks every pool etcd has a record of, logs a WARNING
for each that overlaps the node, and remembers the clear ones.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable

from .domain.addr import Range
from .domain.netconf import NetConf, Pool
from .domain.nodecheck import NodeAddress, NodeRoute, NodeState, node_conflict_error, node_conflicts
from .metrics import Metrics

log = logging.getLogger(__name__)

#: ``observe() -> NodeState``; raises any exception when it cannot look.
ObserveNode = Callable[[], NodeState]
_Key = tuple[int, int, int, int | None, str, int]
_Verdict = tuple[str, Range, tuple[NodeAddress | NodeRoute, ...]]


def _in_force(rng: Range, block_prefix: int) -> Range:
    """``rng`` with the block size in force (the routed modes judge the node's block gateways and routes by it)."""
    if rng.mode == "subnet" or rng.block_prefix == block_prefix:
        return rng
    return dataclasses.replace(rng, block_prefix=block_prefix)


def _key(rng: Range) -> _Key:
    return rng.family, rng.network, rng.prefixlen, rng.gateway, rng.mode, rng.block_prefix


class NodeCheck:
    """Refuses pools that overlap the node (thread-safe: one look at a time, under a lock).

    ``node`` names the node in messages; ``observe`` reads the node's :class:`NodeState`; ``ttl`` how long a clear
    verdict is kept, ``retry_after`` how long after a failed look pools are allowed without looking, seconds;
    ``clock`` a monotonic clock (a seam for tests).
    """

    def __init__(self, node: str, observe: ObserveNode, *, ttl: float = 60.0, retry_after: float = 10.0,
                 metrics: Metrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.observe = observe
        self.ttl = ttl
        self.retry_after = retry_after
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._lock = threading.Lock()
        self._allowed: dict[_Key, float] = {}  # pool -> until when it is allowed without looking

    def require(self, netconf: NetConf, block_prefix: Callable[[Pool], int] | None = None) -> None:
        """Raise :class:`~ipamd.domain.errors.InvalidConfig` (code 7) naming the pool's subnet and the node's
        conflicting address or route (with its interface) if a pool of ``netconf`` overlaps the node; return when
        every pool is clear, remembered clear, or could not be checked. Nothing when ``netconf.check_node`` is
        false. Read-only. ``block_prefix(pool)``: the pool's block size in force (its record's, fixed by the first
        claim; the daemon's cache knows it), which decides in ``block`` mode which block gateways and prefixes the
        node carries, whatever the configuration's ``blockSize`` says (docs/configuration.md "Gateway modes");
        without it the configuration's is used."""
        if not netconf.check_node:
            return
        pools = [(p.network, p.range if block_prefix is None else _in_force(p.range, block_prefix(p)))
                 for rset in netconf.range_sets for p in rset]
        for network, rng, conflicts in self._verdicts(pools):
            if conflicts:
                raise node_conflict_error(rng, network, self.node, conflicts)

    def check_known(self, pools: Iterable[tuple[str, Range]]) -> int:
        """Check ``(network, range)`` pairs (the pools etcd has records of, at start-up): one WARNING line per pool
        that overlaps the node (ADD into it will be refused). Returns how many overlap. Never raises."""
        refused = 0
        try:
            for network, rng, conflicts in self._verdicts(list(pools)):
                if conflicts:
                    refused += 1
                    err = node_conflict_error(rng, network, self.node, conflicts)
                    log.warning("node check: %s; ADD into it will be refused: %s", err.msg, err.details)
        except Exception:  # a start-up check must never stop the daemon (logged with its traceback)
            log.exception("node check at start-up failed")
        return refused

    def _verdicts(self, pools: list[tuple[str, Range]]) -> list[_Verdict]:
        """``(network, range, conflicts)`` for each pool not remembered as allowed; looks at most once."""
        out: list[_Verdict] = []
        if all(self._allowed.get(_key(r), 0.0) > self.clock() for _, r in pools):
            return out  # the common case, without waiting for a look another ADD is making
        with self._lock:
            now = self.clock()
            todo = [(n, r) for n, r in pools if self._allowed.get(_key(r), 0.0) <= now]
            if not todo:
                return out
            try:
                state = self.observe()
            except Exception as exc:  # noqa: BLE001 - a failure to look never fails ADD
                for _network, rng in todo:
                    self._allowed[_key(rng)] = now + self.retry_after
                    self.metrics.child(self.metrics.node_checks, "unknown").inc()
                log.warning("node check: cannot read node %s's addresses and routes (%s: %s); allowing pool(s) %s "
                            "unchecked for %g s", self.node, exc.__class__.__name__, exc,
                            ", ".join(str(r.subnet) for _, r in todo), self.retry_after)
                return out
            if len(self._allowed) > 4096:
                self._allowed = {k: v for k, v in self._allowed.items() if v > now}
            for network, rng in todo:
                conflicts = node_conflicts(rng, state)
                if conflicts:
                    self._allowed.pop(_key(rng), None)
                    self.metrics.child(self.metrics.node_checks, "conflict").inc()
                else:
                    self._allowed[_key(rng)] = now + self.ttl
                    self.metrics.child(self.metrics.node_checks, "ok").inc()
                out.append((network, rng, conflicts))
        return out

