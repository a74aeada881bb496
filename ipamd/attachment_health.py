"""Continuous health of this node's attachments (docs/namespace-checks.md "Continuous health"): opt-in with
``--health-interval``, run by ``concurrency.supervise`` like every background loop.

Each round looks at up to ``--health-max-per-round`` attachments with the checks of ``ipamctl verify``
(:meth:`ipamd.deepcheck.NamespaceInspector.verify`: namespace, interface, addresses, routes, gateway echo,
neighbour state). A pass over all of this node's attachments starts with one etcd range read of the handles and
goes on over as many rounds as it needs. It counts ``ipamd_attachment_checks_total{result}``, keeps
``ipamd_attachments_unhealthy{reason}`` (each unhealthy attachment under its first reason) and logs each transition
once: WARNING when an attachment turns unhealthy or its reason changes, INFO when it is healthy again.

It never releases or changes anything: reclaiming what a vanished pod held is the runtime's DEL, CNI GC, or the
reconciler's job. Memory: one pass's records and the unhealthy attachments, pruned at the start of each pass.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING

from .domain.cni import Attachment
from .domain.model import HandleRecord
from .domain.netcheck import REASONS

if TYPE_CHECKING:
    from .deepcheck import NamespaceInspector
    from .service import IpamService

log = logging.getLogger(__name__)


class HealthMonitor:
    """The health loop of one daemon. ``service`` gives the node's attachments, readiness and metrics;
    ``inspector`` (default ``service.inspector``) looks into namespaces; ``interval`` is the pause after each round
    in seconds; ``max_per_round`` bounds the attachments looked at per round (so a round costs at most that many
    namespace inspections, each bounded by the inspector's timeout and probes); a round ends early once ``stop``
    is set. Not thread-safe: one loop thread calls :meth:`round`."""

    def __init__(self, service: IpamService, *, interval: float, max_per_round: int = 64,
                 inspector: NamespaceInspector | None = None, stop: threading.Event | None = None) -> None:
        self.service = service
        self.inspector = inspector or service.inspector
        self.metrics = service.metrics
        self.interval = interval
        self.max_per_round = max(1, max_per_round)
        self._stop = stop or threading.Event()
        self._queue: deque[HandleRecord] = deque()
        #: handle -> (reason, message) of the attachments whose last check failed
        self.unhealthy: dict[str, tuple[str, str]] = {}
        self._export()

    def round(self) -> float:
        """One round: start a pass when the last one is done (one etcd read), look at up to ``max_per_round``
        attachments, update the gauge. Returns the seconds to wait before the next round. Raises what the store
        raises (``TryAgainLater``); ``supervise`` logs, counts and retries it."""
        if not self.service.ready:
            return min(self.interval, 1.0)
        if not self._queue:
            records = self.service.node_attachments()
            present = {r.handle for r in records}
            for handle in [h for h in self.unhealthy if h not in present]:
                del self.unhealthy[handle]  # released since: no longer ours to judge
            self._queue.extend(records)
        for _ in range(min(self.max_per_round, len(self._queue))):
            if self._stop.is_set():  # the daemon is stopping: do not hold it up for the rest of the round
                break
            self._judge(self._queue.popleft())
        self._export()
        return self.interval

    def _judge(self, record: HandleRecord) -> None:
        report = self.inspector.verify(record)
        att = Attachment(record.network, record.container_id, record.if_name)
        if not report.ok and self.service.get(att) != record:
            return  # released (or replaced) while we looked: the DEL took the interface first
        m = self.metrics
        m.child(m.attachment_checks, "ok" if report.ok else "unhealthy").inc()
        before = self.unhealthy.get(record.handle)
        ctx = {"handle": record.handle, "node": record.node}
        if report.ok:
            if before is not None:
                del self.unhealthy[record.handle]
                log.info("attachment %s is healthy again (was %s)", record.handle, before[0], extra=ctx)
            return
        now = (report.reason, report.findings[0].message)
        self.unhealthy[record.handle] = now
        if before is None or before[0] != now[0]:
            log.warning("attachment %s is unhealthy in %s: %s", record.handle, record.netns or "(no netns)",
                        "; ".join(str(f) for f in report.findings), extra=ctx)

    def _export(self) -> None:
        counts = dict.fromkeys(REASONS, 0)
        for reason, _ in self.unhealthy.values():
            counts[reason] = counts.get(reason, 0) + 1
        for reason, n in counts.items():
            self.metrics.child(self.metrics.attachments_unhealthy, reason).set(n)
