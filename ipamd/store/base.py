"""The store contract the service sees: versioned key-values and compare-and-swap transactions.

Only :mod:`ipamd.store.etcd` implements it against a real datastore; tests may wrap it to inject faults. The
shape is etcd v3's (Calico's ``lib/backend/etcdv3`` follows the same idea): every write is a transaction whose
compares make a stale reader fail, and a failed compare returns the current values in the same round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from ..domain.errors import IpamError, TryAgainLater


class StoreUnavailable(TryAgainLater):
    """The datastore could not be reached or refused service (CNI code 11). The request did not commit."""


class StoreOutcomeUnknown(StoreUnavailable):
    """The request was sent but no answer came (deadline, dropped connection): it may or may not have committed.

    Callers resolve it by reading the key that proves the outcome (the handle; docs/etcd-layout.md "Unknown outcome").
    """


class StoreRejected(IpamError):
    """etcd refused the request as sent (too many operations, too large, permission): retrying cannot help, so it
    is reported at once with etcd's own message (code 999), never as "try again later"."""


class StoreRefused(TryAgainLater):
    """etcd refuses every request of this kind until an operator acts: a missing permission (field case B44),
    credentials it does not accept, or an alarm such as NOSPACE (B45). Code 11 at once, naming the cause: not
    retried within the request (it cannot clear by itself in seconds) and not 999 (nothing is broken in ipamd).
    ``reason`` is ``permission``, ``auth`` or ``alarm`` (readiness reasons, docs/operations.md "Health")."""

    def __init__(self, msg: str, reason: str, details: str = "") -> None:
        super().__init__(msg, details)
        self.reason = reason


class StoreCompacted(StoreUnavailable):
    """A watch asked for history etcd has compacted away (``compact_revision``): the watcher must read the current
    state again and watch from there (docs/architecture.md "Watch")."""

    def __init__(self, msg: str, compact_revision: int) -> None:
        super().__init__(msg)
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KV:
    """A key-value with etcd's versions: ``create_revision``, ``mod_revision`` and per-key ``version``."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``target`` of ``key`` compared to ``value``: target is ``version``, ``mod`` or ``create``; op ``==``, ``!=``,
    ``<`` or ``>``. With ``range_end``, every key of ``[key, range_end)`` must satisfy it, and an empty range
    compares as one missing key (so ``version == 0`` over a range means "the range is empty"), as etcd does."""

    key: str
    target: str
    op: str
    value: int
    range_end: str | None = None


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class Get:
    """Read one key, or the range ``[key, range_end)`` when ``range_end`` is set."""

    key: str
    range_end: str | None = None


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change seen by a watch: a put (``deleted`` False, ``kv`` the new value) or a delete (``kv.key`` and
    ``kv.mod_revision``, the revision of the delete; empty value)."""

    deleted: bool
    kv: KV


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """What a watch delivered: ``events`` in revision order, and ``revision``: every change to every watched range
    up to this revision has been delivered (0: no such promise; a progress report has no events)."""

    events: tuple[WatchEvent, ...]
    revision: int


class Watch(Protocol):
    """A stream of changes to some key ranges, created by :meth:`Store.watch`. One consumer thread calls
    :meth:`next`; any thread may :meth:`add` or :meth:`remove` ranges. When the stream breaks, :meth:`next` raises
    (:class:`StoreCompacted` when history is gone, :class:`StoreUnavailable` otherwise) and the watch is dead."""

    def add(self, key: str, range_end: str | None, start_revision: int) -> None:
        """Watch ``[key, range_end)`` (or the one key) from ``start_revision`` on."""
        ...

    def remove(self, key: str) -> None:
        """Stop watching the range that starts at ``key`` (no error if there is none)."""
        ...

    def next(self, timeout: float) -> WatchUpdate | None:
        """The next update, ``None`` when nothing came within ``timeout`` seconds."""
        ...

    def progress(self) -> None:
        """Ask for a progress report (an update with no events and the current revision)."""
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Outcome of :meth:`Store.txn`: which branch ran, the store revision after it, and one list of :class:`KV`
    per :class:`Get` of that branch, in order."""

    succeeded: bool
    revision: int
    reads: tuple[tuple[KV, ...], ...]


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's ``range_end`` for a prefix read)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return raw.decode("latin-1")
        raw.pop()
    return "\0"


def parse_endpoint(item: str) -> tuple[str, int, bool]:
    """One etcd client URL (``http://host:port``, ``https://host:port``, or ``host:port`` for http) ->
    ``(host, port, secure)``. Raises ``ValueError`` naming what is wrong."""
    url = urlsplit(item if "://" in item else "http://" + item)
    if "@" in url.netloc:  # never used by the client, and it would be logged: refuse it without echoing it (B54)
        raise ValueError("etcd endpoint %r: credentials in the URL are not used; give only scheme://host:port and "
                         "the user with --etcd-user and --etcd-password-file"
                         % url._replace(netloc="***@" + url.netloc.rpartition("@")[2]).geturl())
    if url.scheme not in ("http", "https"):
        raise ValueError("etcd endpoint %r: scheme must be http or https" % item)
    try:
        port = url.port
    except ValueError:
        raise ValueError("etcd endpoint %r: port must be 1-65535" % item) from None
    if not url.hostname or port is None or port == 0:
        raise ValueError("etcd endpoint %r: needs host:port, e.g. http://127.0.0.1:2379" % item)
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError("etcd endpoint %r: only scheme://host:port is allowed" % item)
    return url.hostname, port, url.scheme == "https"


def parse_endpoints(text: str) -> list[tuple[str, int, bool]]:
    """``"http://127.0.0.1:2379,https://h:2379"`` -> ``[(host, port, secure)]``; raises ``ValueError``."""
    out = [parse_endpoint(item.strip()) for item in text.split(",") if item.strip()]
    if not out:
        raise ValueError("no etcd endpoints in %r" % text)
    return out


class Store(Protocol):
    """What the service needs from a datastore. Keys are relative to the store's prefix; values are bytes.

    All methods raise :class:`StoreUnavailable` when the datastore cannot be reached before ``timeout`` seconds
    and :class:`StoreOutcomeUnknown` when a write may have committed unseen.
    """

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
            timeout: float) -> TxnResult:
        """One atomic transaction (etcd ``Txn``): at most 128 operations per branch (etcd's default limit)."""
        ...

    def read(self, key: str, range_end: str | None, timeout: float, *,
             revision: int = 0) -> tuple[tuple[KV, ...], int]:
        """Serializable-free (linearizable) read of a key or range: ``(kvs, revision)``. With ``revision`` > 0 the
        range as it was at that revision (etcd ``RangeRequest.revision``), so several reads make one consistent
        snapshot; raises :class:`StoreCompacted` when etcd has compacted that revision away."""
        ...

    def count(self, key: str, range_end: str, timeout: float, *, revision: int = 0) -> int:
        """Number of keys in ``[key, range_end)`` (etcd ``count_only``: nothing but the number is sent), at
        ``revision`` when it is > 0 (as :meth:`read`)."""
        ...

    def grant_lease(self, ttl: int, timeout: float) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        ...

    def keepalive(self, lease_id: int, timeout: float) -> int:
        """Refresh a lease; returns the remaining TTL (0 or less when it has expired)."""
        ...

    def revoke(self, lease_id: int, timeout: float) -> None:
        ...

    def watch(self) -> Watch:
        """A new, empty :class:`Watch` (add ranges to it)."""
        ...

    def close(self) -> None:
        ...
