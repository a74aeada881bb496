"""Test-only failpoints: named steps where a test can make the daemon pause, crash or fail.

Inert unless ``IPAMD_FAILPOINTS`` is set, e.g. ``add.after_pick=pause:3;add.after_commit=crash``
(docs/field-cases.md "Fault hooks"). Actions: ``crash`` (``os._exit(137)``, no cleanup), ``pause:SECONDS`` (every hit;
``pause:SECONDS:N`` only the first N), ``error``
(raises a plain ``RuntimeError``, which the CNI path reports as code 999), ``error:N`` (only the first N hits).
Points: ``add.after_pick``,
``add.after_commit``, ``del.before_commit``, ``gc.after_snapshot``, ``gc.before_delete``, ``gc.after_batch`` (a
release batch of GC committed; requests);
``sync.read``, ``lease.keepalive``, ``lease.grant``, ``lease.put`` (background loops, field case B53);
``noderemoval.after_plan`` (Kubernetes mode: a node's records read, before its removal);
``pooldelete.before_cleanup`` (``ipamctl pool delete``: the spec deleted, its records not yet).
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


class Failpoints:
    """Parsed failpoint table; :meth:`hit` is a no-op for points that are not set."""

    def __init__(self, spec: str = "") -> None:
        self._points: dict[str, str] = {}
        self._hits: dict[str, int] = {}
        for item in spec.split(";"):
            name, sep, action = item.strip().partition("=")
            if sep and name:
                self._points[name] = action

    @classmethod
    def from_env(cls) -> Failpoints:
        return cls(os.environ.get("IPAMD_FAILPOINTS", ""))

    def hit(self, point: str) -> None:
        """Run the action configured for ``point`` (if any)."""
        action = self._points.get(point)
        if not action:
            return
        log.warning("failpoint %s: %s", point, action)
        if action == "crash":
            os._exit(137)
        if action.startswith("pause:"):
            _, seconds, *times = action.split(":")
            n = self._hits[point] = self._hits.get(point, 0) + 1
            if not times or n <= int(times[0]):
                time.sleep(float(seconds))
        elif action == "error":
            raise RuntimeError("failpoint %s" % point)
        elif action.startswith("error:"):
            n = self._hits[point] = self._hits.get(point, 0) + 1
            if n <= int(action.split(":", 1)[1]):
                raise RuntimeError("failpoint %s (hit %d)" % (point, n))
