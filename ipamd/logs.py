"""Logging set-up: one line per record, with the request's context rendered from ``extra``.

Modules log with ``logging.getLogger(__name__)``, %-style arguments and context in ``extra`` (docs/DEVELOPING.md
"House style"): ``log.info("CNI %s ok", verb, extra={"container_id": ..., "if_name": ...})``. The formatter appends
every context field it knows, in a fixed order, as ``key=value`` (docs/configuration.md "Log lines")::

    2026-11-30 10:00:00,123 INFO ipamd.cniserver: CNI ADD ok container=c1 ifname=eth0 network=net1
        addresses=10.1.2.2/24 duration_ms=1.4 code=0

With ``--log-format json`` each record is one JSON object per line (``python-json-logger``), the context fields under
the CNI names::

    {"time": "...", "level": "INFO", "logger": "ipamd.cniserver", "message": "CNI ADD ok", "containerID": "c1",
     "ifName": "eth0", "network": "net1", "addresses": ["10.1.2.2/24"], "duration_ms": 1.4, "code": 0}
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from pythonjsonlogger.json import JsonFormatter

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


#: JSON names of the context fields (the CNI spec's spelling where it has one).
JSON_NAMES = {"container_id": "containerID", "if_name": "ifName"}


class JsonContextFormatter(JsonFormatter):
    """One JSON object per record: time, level, logger, message, the context fields that are set (under
    :data:`JSON_NAMES`), and ``exc_info`` with a traceback."""

    def __init__(self) -> None:
        super().__init__(["asctime", "levelname", "name", "message"],
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                         reserved_attrs=[*_RESERVED, *CONTEXT_FIELDS])

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is None or value == "":
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, float):
                value = round(value, 3)
            log_data[JSON_NAMES.get(name, name)] = value


_RESERVED = ("args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelname", "levelno",
             "lineno", "module", "msecs", "message", "msg", "name", "pathname", "process", "processName",
             "relativeCreated", "stack_info", "thread", "threadName", "taskName")


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger: stderr, one line per record with context (``level`` is a level name; ``fmt``
    ``text`` or ``json``, see the module docstring).

    Records go through a queue to one writer thread (``logging.handlers.QueueListener``), so request threads never
    queue up behind each other on the stream's lock; the listener is stopped (and the queue flushed) at exit."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonContextFormatter() if fmt.lower() == "json"
                        else ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(records, stream)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(records)]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
