"""An in-memory store with etcd v3's semantics, for the fast test tier and for fault injection.

It implements :class:`ipamd.store.base.Store` the way etcd does (host-local keeps ``backend/testing/fake_store.go``
beside its allocator for the same reason): one global revision that a writing transaction raises by one;
``create_revision``, ``mod_revision`` and ``version`` per key; compares on all three (a missing key compares as 0);
at most ``max_txn_ops`` operations per compare/success/failure list; no key written twice in one transaction; a
request size limit; range reads in key order; count-only reads; leases whose expiry deletes their keys.

Faults are injected per call with :meth:`MemoryStore.inject`: ``unavailable`` (refused before anything happens),
``unknown`` (applied, then the answer is lost: :class:`StoreOutcomeUnknown`), ``refused``
(:class:`StoreRejected`), ``delay`` (the call takes that long, then proceeds), or an ``action`` run just before the
call (another writer sneaking in). It is a double for tests: every behaviour shown with it is also shown against a
real etcd (docs/DEVELOPING.md, the fast tier).
"""

from __future__ import annotations

import bisect
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .base import (
    KV,
    Compare,
    Delete,
    Op,
    Put,
    StoreCompacted,
    StoreOutcomeUnknown,
    StoreRejected,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
    WatchUpdate,
)

#: etcd's defaults: ``--max-txn-ops`` and ``--max-request-bytes``.
MAX_TXN_OPS = 128
MAX_REQUEST_BYTES = int(1.5 * 1024 * 1024)


@dataclass(slots=True)
class Fault:
    """One injected fault. ``kind``: ``unavailable``, ``unknown``, ``refused``, ``delay`` or ``action``; ``seconds``
    for ``delay``; ``action`` a callable run before the call (``action``); ``times`` how many matching calls it
    applies to (``-1``: all); ``match`` an optional predicate on the call's arguments."""

    kind: str
    seconds: float = 0.0
    action: Callable[[], None] | None = None
    times: int = 1
    match: Callable[..., bool] | None = None
    hits: int = 0


@dataclass(slots=True)
class _Lease:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


class MemoryStore:
    """See the module docstring. ``clock`` (seconds, monotonic) drives lease expiry; tests may pass a fake one."""

    def __init__(self, *, max_txn_ops: int = MAX_TXN_OPS, max_request_bytes: int = MAX_REQUEST_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.clock = clock
        self.revision = 1
        self.calls: dict[str, int] = {}
        self._lock = threading.RLock()
        self._data: dict[str, KV] = {}
        self._keys: list[str] = []
        self._leases: dict[int, _Lease] = {}
        self._key_lease: dict[str, int] = {}
        self._next_lease = 0x1000
        self._faults: dict[str, list[Fault]] = {}
        self._history: list[tuple[int, WatchEvent]] = []
        self._writing: int | None = None
        self.compacted = 0
        self._watches: list[_MemoryWatch] = []
        self.closed = False

    # -- faults --------------------------------------------------------------------------------------------------

    def inject(self, method: str, kind: str, *, times: int = 1, seconds: float = 0.0,
               action: Callable[[], None] | None = None, match: Callable[..., bool] | None = None) -> Fault:
        """Make the next ``times`` calls of ``method`` (``txn``, ``read``, ``count``, ``grant_lease``, ``keepalive``,
        ``revoke``) that satisfy ``match(*args)`` fail or stall as ``kind`` says (see :class:`Fault`). Returns the
        fault; its ``hits`` counts the calls it applied to."""
        if kind not in ("unavailable", "unknown", "refused", "delay", "action"):
            raise ValueError("unknown fault kind %r" % kind)
        fault = Fault(kind, seconds, action, times, match)
        with self._lock:
            self._faults.setdefault(method, []).append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault(self, method: str, args: tuple[object, ...]) -> Fault | None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            for fault in self._faults.get(method, ()):
                if fault.times == 0 or (fault.match is not None and not fault.match(*args)):
                    continue
                if fault.times > 0:
                    fault.times -= 1
                fault.hits += 1
                return fault
        return None

    def _before(self, method: str, args: tuple[object, ...]) -> Fault | None:
        """Apply a fault that acts before the call; return one that acts after it (``unknown``)."""
        if self.closed:
            raise StoreUnavailable("store is closed")
        fault = self._fault(method, args)
        if fault is None:
            return None
        if fault.kind == "unavailable":
            raise StoreUnavailable("injected: etcd unavailable")
        if fault.kind == "refused":
            raise StoreRejected("injected: etcd refused the request")
        if fault.kind == "delay":
            time.sleep(fault.seconds)
        if fault.kind == "action" and fault.action is not None:
            fault.action()
        return fault if fault.kind == "unknown" else None

    # -- helpers -------------------------------------------------------------------------------------------------

    def _expire(self) -> None:
        now = self.clock()
        dead = [lid for lid, lease in self._leases.items() if lease.expires <= now]
        if dead:
            self.revision += 1
            for lid in dead:
                for key in self._leases.pop(lid).keys:
                    self._remove(key)
            self._publish()

    def _record(self, event: WatchEvent) -> None:
        self._history.append((event.kv.mod_revision, event))

    def _publish(self) -> None:
        """Hand the events of the revision just written to every watch (called with the lock held)."""
        for w in self._watches:
            w.deliver(self.revision)

    def _range(self, key: str, range_end: str | None) -> list[KV]:
        if range_end is None:
            kv = self._data.get(key)
            return [kv] if kv is not None else []
        lo = bisect.bisect_left(self._keys, key)
        hi = len(self._keys) if range_end == "\0" else bisect.bisect_left(self._keys, range_end)
        return [self._data[k] for k in self._keys[lo:max(lo, hi)]]

    def _remove(self, key: str) -> bool:
        if key not in self._data:
            return False
        self._record(WatchEvent(True, KV(key, b"", 0, self.revision if self._writing is None else self._writing, 0)))
        del self._data[key]
        del self._keys[bisect.bisect_left(self._keys, key)]
        lid = self._key_lease.pop(key, None)
        if lid is not None and lid in self._leases:
            self._leases[lid].keys.discard(key)
        return True

    def _put(self, op: Put, revision: int) -> None:
        old = self._data.get(op.key)
        if old is None:
            bisect.insort(self._keys, op.key)
            kv = KV(op.key, op.value, revision, revision, 1)
        else:
            kv = KV(op.key, op.value, old.create_revision, revision, old.version + 1)
        self._data[op.key] = kv
        self._record(WatchEvent(False, kv))
        old_lease = self._key_lease.pop(op.key, None)
        if old_lease is not None and old_lease in self._leases:
            self._leases[old_lease].keys.discard(op.key)
        if op.lease:
            if op.lease not in self._leases:
                raise StoreRejected("etcd refused the request: NOT_FOUND: requested lease not found")
            self._leases[op.lease].keys.add(op.key)
            self._key_lease[op.key] = op.lease

    def _compare(self, c: Compare) -> bool:
        kvs: list[KV | None] = list(self._range(c.key, c.range_end)) if c.range_end is not None else \
            [self._data.get(c.key)]
        return all(self._compare_one(c, kv) for kv in kvs or [None])

    @staticmethod
    def _compare_one(c: Compare, kv: KV | None) -> bool:
        actual = 0 if kv is None else {"version": kv.version, "mod": kv.mod_revision,
                                       "create": kv.create_revision}[c.target]
        return {"==": actual == c.value, "!=": actual != c.value, "<": actual < c.value,
                ">": actual > c.value}[c.op]

    def _validate(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> None:
        for ops in (compares, success, failure):
            if len(ops) > self.max_txn_ops:
                raise StoreRejected("etcd refused the request: INVALID_ARGUMENT: etcdserver: too many operations "
                                    "in txn request")
        size = 0
        for ops_list in (success, failure):
            written: set[str] = set()
            for op in ops_list:
                if isinstance(op, (Put, Delete)):
                    if op.key in written:
                        raise StoreRejected("etcd refused the request: INVALID_ARGUMENT: etcdserver: duplicate key "
                                            "given in txn request")
                    written.add(op.key)
                size += len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
        size += sum(len(c.key) + 16 for c in compares)
        if size > self.max_request_bytes:
            raise StoreRejected("etcd refused the request: INVALID_ARGUMENT: etcdserver: request is too large")

    # -- Store ---------------------------------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
            timeout: float) -> TxnResult:
        """See :meth:`ipamd.store.base.Store.txn`."""
        after = self._before("txn", (compares, success, failure))
        with self._lock:
            self._expire()
            self._validate(compares, success, failure)
            ok = all(self._compare(c) for c in compares)
            ops = success if ok else failure
            writes = any(isinstance(op, (Put, Delete)) for op in ops)
            revision = self.revision + 1 if writes else self.revision
            reads: list[tuple[KV, ...]] = []
            self._writing = revision
            for op in ops:
                if isinstance(op, Put):
                    self._put(op, revision)
                elif isinstance(op, Delete):
                    self._remove(op.key)
                else:
                    reads.append(tuple(self._range(op.key, op.range_end)))
            self._writing = None
            self.revision = revision
            self._publish()
            result = TxnResult(ok, revision, tuple(reads))
        if after is not None:
            raise StoreOutcomeUnknown("injected: etcd did not answer (the transaction committed: %s)" % ok)
        return result

    def read(self, key: str, range_end: str | None, timeout: float, *,
             revision: int = 0) -> tuple[tuple[KV, ...], int]:
        """See :meth:`ipamd.store.base.Store.read`."""
        self._before("read", (key, range_end))
        with self._lock:
            self._expire()
            return tuple(self._range_at(key, range_end, revision)), self.revision

    def count(self, key: str, range_end: str, timeout: float, *, revision: int = 0) -> int:
        """See :meth:`ipamd.store.base.Store.count`."""
        self._before("count", (key, range_end))
        with self._lock:
            self._expire()
            return len(self._range_at(key, range_end, revision))

    def _range_at(self, key: str, range_end: str | None, revision: int) -> list[KV]:
        """The range as it was at ``revision`` (0 or the current one: as it is), rebuilt from the history kept for
        watches: each key changed after ``revision`` takes its last event at or before it, or is absent when it was
        created later. Raises :class:`StoreCompacted` as etcd does when that history is gone."""
        now = self._range(key, range_end)
        if revision <= 0 or revision >= self.revision:
            return now
        if revision < self.compacted:
            raise StoreCompacted("mvcc: required revision %d has been compacted" % revision, self.compacted)

        def inside(k: str) -> bool:
            return k == key if range_end is None else key <= k and (range_end == "\0" or k < range_end)

        before: dict[str, WatchEvent] = {}
        after: dict[str, WatchEvent] = {}
        for rev, ev in self._history:
            if not inside(ev.kv.key):
                continue
            if rev <= revision:
                before[ev.kv.key] = ev
            else:
                after.setdefault(ev.kv.key, ev)
        out = {kv.key: kv for kv in now if kv.key not in after}
        for k, first_after in after.items():
            last = before.get(k)
            if last is not None:
                if not last.deleted:
                    out[k] = last.kv
            elif self.compacted and (first_after.deleted or first_after.kv.create_revision <= revision):
                # it existed then, but the write that made it is compacted away
                raise StoreCompacted("mvcc: required revision %d has been compacted" % revision, self.compacted)
        return [out[k] for k in sorted(out)]

    def grant_lease(self, ttl: int, timeout: float) -> int:
        self._before("grant_lease", (ttl,))
        with self._lock:
            self._next_lease += 1
            self._leases[self._next_lease] = _Lease(ttl, self.clock() + ttl)
            return self._next_lease

    def keepalive(self, lease_id: int, timeout: float) -> int:
        self._before("keepalive", (lease_id,))
        with self._lock:
            self._expire()
            lease = self._leases.get(lease_id)
            if lease is None:
                return 0
            lease.expires = self.clock() + lease.ttl
            return lease.ttl

    def revoke(self, lease_id: int, timeout: float) -> None:
        self._before("revoke", (lease_id,))
        with self._lock:
            lease = self._leases.pop(lease_id, None)
            if lease is not None and lease.keys:
                self.revision += 1
                for key in list(lease.keys):
                    self._remove(key)
                self._publish()

    def watch(self) -> _MemoryWatch:
        """See :meth:`ipamd.store.base.Store.watch`."""
        self._before("watch", ())
        w = _MemoryWatch(self)
        with self._lock:
            self._watches.append(w)
        return w

    def compact(self, revision: int) -> None:
        """Drop the history up to ``revision`` (etcd's compaction): a watch added later from a revision at or
        below it fails with :class:`StoreCompacted` (open watches are ahead of it: they get every change as it
        happens)."""
        with self._lock:
            self.compacted = max(self.compacted, revision)
            self._history = [(r, e) for r, e in self._history if r > revision]

    def close(self) -> None:
        self.closed = True
        with self._lock:
            for w in self._watches:
                w.fail(StoreUnavailable("store is closed"))

    def break_watches(self) -> None:
        """End every open watch with :class:`StoreUnavailable` (etcd went away under them)."""
        with self._lock:
            for w in self._watches:
                w.fail(StoreUnavailable("injected: the watch stream broke"))
            self._watches = []

    # -- for tests -----------------------------------------------------------------------------------------------

    def dump(self) -> tuple[KV, ...]:
        """Every key-value, in key order (what ``check_store`` reads)."""
        with self._lock:
            self._expire()
            return tuple(self._data[k] for k in self._keys)


class _MemoryWatch:
    """:class:`ipamd.store.base.Watch` on a :class:`MemoryStore`: replays history from each range's start revision,
    then receives every new revision's events."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._ranges: dict[str, tuple[str | None, int]] = {}  # key -> (range_end, next revision wanted)
        self._updates: queue.Queue[WatchUpdate | StoreUnavailable] = queue.Queue()
        self._dead = False

    @staticmethod
    def _inside(key: str, start: str, end: str | None) -> bool:
        return key == start if end is None else start <= key and (end == "\0" or key < end)

    def add(self, key: str, range_end: str | None, start_revision: int) -> None:
        with self._store._lock:
            if start_revision <= self._store.compacted:
                self.fail(StoreCompacted("history compacted up to %d" % self._store.compacted, self._store.compacted))
                return
            self._ranges[key] = (range_end, start_revision)
            events = tuple(e for r, e in self._store._history
                           if r >= start_revision and self._inside(e.kv.key, key, range_end))
            if events:
                self._updates.put(WatchUpdate(events, self._store.revision))

    def remove(self, key: str) -> None:
        with self._store._lock:
            self._ranges.pop(key, None)

    def deliver(self, revision: int) -> None:
        events = tuple(e for r, e in self._store._history if r == revision
                       and any(self._inside(e.kv.key, k, end) for k, (end, _) in self._ranges.items()))
        if events:
            self._updates.put(WatchUpdate(events, revision))

    def fail(self, exc: StoreUnavailable) -> None:
        self._dead = True
        self._updates.put(exc)

    def progress(self) -> None:
        self._updates.put(WatchUpdate((), self._store.revision))

    def next(self, timeout: float) -> WatchUpdate | None:
        try:
            item = self._updates.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, StoreUnavailable):
            self._updates.put(item)
            raise item
        return item

    def close(self) -> None:
        with self._store._lock:
            if self in self._store._watches:
                self._store._watches.remove(self)
