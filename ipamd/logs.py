"""Logging set-up: one line per record, with the request's context rendered from ``extra``.

Modules log with ``logging.getLogger(__name__)``, %-style arguments and context in ``extra`` (docs/DEVELOPING.md
"House style"): ``log.info("CNI %s ok", verb, extra={"container_id": ..., "if_name": ...})``. The formatter appends
every context field it knows, in a fixed order, as ``key=value`` (docs/configuration.md "Log lines")::

    2026-11-30 10:00:00,123 INFO ipamd.cniserver: CNI ADD ok container=c1 ifname=eth0 network=net1
        addresses=10.1.2.2/24 duration_ms=1.4 code=0
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener

#: Context fields rendered after the message, in this order (the ``extra`` keys modules use).
CONTEXT_FIELDS = ("container_id", "if_name", "network", "addresses", "handle", "pool", "block", "node",
                  "duration_ms", "code")
_LABELS = {"container_id": "container", "if_name": "ifname"}


class ContextFormatter(logging.Formatter):
    """A formatter that appends the known context fields of a record as ``key=value`` pairs."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        parts = []
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is None or value == "":
                continue
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value) or "-"
            elif isinstance(value, float):
                value = "%.1f" % value
            parts.append("%s=%s" % (_LABELS.get(name, name), value))
        if not parts:
            return text
        head, sep, tail = text.partition("\n")  # keep a traceback after the context
        return head + " " + " ".join(parts) + sep + tail


def setup(level: str) -> None:
    """Configure the root logger: stderr, one line per record with context (``level`` is a level name).

    Records go through a queue to one writer thread (``logging.handlers.QueueListener``), so request threads never
    queue up behind each other on the stream's lock; the listener is stopped (and the queue flushed) at exit."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(records, stream)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(records)]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
