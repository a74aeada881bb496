"""Readiness with its reason (docs/operations.md "Health"): one object that the daemon's sync loop sets and that the
health service, the metrics, STATUS and the log follow.

Not ready, with the reason as a fixed word (the ``reason`` label of ``ipamd_not_ready``) and a sentence for people:

- ``first_sync``: the first read of the pool and block records (and the node record) is not done yet;
- ``etcd_unavailable``: etcd does not answer (no member reachable, no leader, too slow for ``--etcd-timeout``);
- ``etcd_permission``: the etcd user lacks a permission on the prefix (field case B44);
- ``etcd_auth``: etcd does not accept the user's credentials;
- ``etcd_alarm``: etcd has raised an alarm (NOSPACE, CORRUPT) and refuses writes (field case B45).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .domain.status import DaemonStatus, PoolStatus
from .metrics import Metrics
from .store.base import StoreRefused

log = logging.getLogger("ipamd")

__all__ = ["REASONS", "DaemonStatus", "PoolStatus", "Readiness", "reason_of"]

REASONS = ("first_sync", "etcd_unavailable", "etcd_permission", "etcd_auth", "etcd_alarm")


def reason_of(exc: Exception) -> str:
    """The readiness reason for an error of the store: ``etcd_permission``, ``etcd_auth``, ``etcd_alarm`` for a
    :class:`StoreRefused`, ``etcd_unavailable`` for anything else."""
    if isinstance(exc, StoreRefused):
        return {"permission": "etcd_permission", "auth": "etcd_auth", "alarm": "etcd_alarm"}.get(exc.reason,
                                                                                              "etcd_unavailable")
    return "etcd_unavailable"


class Readiness:
    """Ready, or not ready with a reason from :data:`REASONS` and a detail sentence. Starts not ready
    (``first_sync``). Each change is logged once (WARNING when it turns not ready, INFO when ready again), sets
    ``ipamd_ready`` and ``ipamd_not_ready{reason}``, and calls ``on_change(ready, detail)`` (the health service,
    the service's STATUS). Thread-safe; setting the same state again does nothing."""

    def __init__(self, metrics: Metrics, on_change: Callable[[bool, str], None] | None = None) -> None:
        self._metrics = metrics
        self._on_change = on_change
        self._lock = threading.Lock()
        self.reason: str | None = "first_sync"
        self.detail = "first sync with etcd not done"
        self._publish()

    @property
    def ready(self) -> bool:
        return self.reason is None

    def set(self, reason: str | None, detail: str = "") -> None:
        """Ready (``reason`` None) or not ready for ``reason`` (one of :data:`REASONS`), ``detail`` for people."""
        if reason is not None and reason not in REASONS:
            raise ValueError("unknown readiness reason %r" % reason)
        with self._lock:
            if reason == self.reason and (reason is None or detail == self.detail):
                return
            was = self.reason
            self.reason, self.detail = reason, detail if reason is not None else ""
            self._publish()
        if reason is None:
            log.info("ready%s", " again (was: %s)" % was if was != "first_sync" else "")
        elif reason != was:
            log.warning("not ready: %s: %s", reason, detail)
        if self._on_change is not None:
            self._on_change(reason is None, "" if reason is None else "%s: %s" % (reason, detail))

    def _publish(self) -> None:
        self._metrics.ready.set(1 if self.reason is None else 0)
        for r in REASONS:
            self._metrics.not_ready.labels(r).set(1 if r == self.reason else 0)

