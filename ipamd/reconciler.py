"""The periodic reconciler (issue 8; docs/architecture.md "Reconciler"): beside the runtime's CNI GC, the daemon
itself finds this node's attachments whose owner is gone and releases them, and removes the broken records of its
own blocks (an address record whose handle does not exist, field case B52).

Scope and cost: it reads the address records of this node's blocks (one range read each) and, in batches, the
handles they name; an attachment whose every address was borrowed from another node's block is left to the CNI GC.
So a pass costs what the node holds, not what the cluster holds.

Who judges an owner (:class:`OwnerCheck`): the network namespace recorded at ADD (only when the daemon could see it
then: ``HandleRecord.netns_seen``): gone when the path no longer exists, or when one look inside it
(:class:`NetnsCheck`, pyroute2 through :mod:`ipamd.netns`) finds its interface missing or holding none of the
attachment's addresses; in Kubernetes mode, the pods of this node. A check answers ``alive``, ``gone`` (with a
reason and a kind, the metrics label) or ``unknown``; unknown never releases anything, and a failure to look is
unknown.

Safety (field case B15, decision 2): an attachment is released only when it was seen gone in two passes at least
``grace`` seconds apart with the same ``mod_revision``; nothing created after the pass's snapshot revision is
judged; every release compares the ``mod_revision`` it read; releases go in batches under etcd's op limit (B24).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .cache import NodeCache
from .cooling import CoolingLeases, lease_is_gone
from .domain.addr import to_ip
from .domain.errors import IpamError
from .domain.model import HandleRecord, IpRecord, handle_key, ips_range, pool_network
from .domain.netcheck import Observation
from .metrics import Metrics
from .store.base import KV, Compare, Delete, Get, Store
from .txns import OpsLimit, ReleaseBatchTxn, send_in_batches, too_many_ops

log = logging.getLogger(__name__)

ALIVE, GONE, UNKNOWN = "alive", "gone", "unknown"
#: Handles read per transaction (each a Get), under etcd's op limit.
READ_BATCH = 100


class Verdict(NamedTuple):
    """A check's answer: ``state`` (ALIVE, GONE or UNKNOWN), ``reason`` (why, for logs and ``ipamctl gc``) and
    ``kind``, the ``reason`` label of ``ipamd_reconcile_released_total`` (docs/metrics.md); "" means the check's
    name. A plain ``(state, reason)`` pair is a verdict of kind "" too."""

    state: str
    reason: str
    kind: str = ""


class OwnerCheck(Protocol):
    """Judges whether an attachment's owner still exists. ``verdict`` returns ``(ALIVE|GONE|UNKNOWN, reason)`` or a
    :class:`Verdict`; it must not raise for an ordinary "cannot tell" (answer UNKNOWN)."""

    name: str

    def verdict(self, record: HandleRecord) -> tuple[str, str] | Verdict:
        ...


#: What the netns check's looks into a namespace return (:meth:`ipamd.deepcheck.NamespaceInspector.presence`).
Look = Callable[[HandleRecord], Observation]

#: ``reason`` labels of the netns check's GONE verdicts (docs/metrics.md).
NETNS_GONE, INTERFACE_GONE, ADDRESS_GONE = "netns", "netns_interface", "netns_address"


class NetnsCheck:
    """The network namespace recorded at ADD (docs/architecture.md "Reconciler", docs/namespace-checks.md
    "Reconciler"). Judges only records whose namespace the daemon could see when it allocated (``netns_seen``);
    the others are UNKNOWN.

    - the path no longer exists (the runtime removes it when the sandbox goes): GONE, kind ``netns``,
      "netns /var/run/netns/x is gone";
    - with ``look`` (one observation of the namespace, :meth:`ipamd.deepcheck.NamespaceInspector.presence`):

      - interface ``if_name`` missing and none of the attachment's addresses on another interface there: GONE,
        kind ``netns_interface``, "interface eth0 is missing in /var/run/netns/x";
      - the interface holds none of the attachment's allocated addresses (compared by address; a prefix length
        that differs still holds it) and no other interface there holds one: GONE, kind ``netns_address``,
        "address 10.1.2.3 not on eth0 in /var/run/netns/x" ("addresses A, B not on ..." for several);
      - any allocated address on the interface, or on another interface of the namespace: ALIVE (an attachment
        that lost one of two addresses still uses the other; releasing the handle would hand that one out twice);
      - the observation failed (cannot enter, helper died, timeout) or the path is not a network namespace:
        UNKNOWN. After ``max_failures`` failed observations in a row the check stops looking for ``pause``
        seconds and answers UNKNOWN at once, so a broken helper costs a pass ``max_failures`` timeouts, not one
        per attachment;
    - without ``look``: ALIVE while the path exists.

    One ``exists`` call, then at most one ``look``, per verdict (a second ``exists`` only after a failed look, to
    tell a namespace removed meanwhile from one that cannot be entered). Never raises for an ordinary failure
    (``look`` must not raise either; :meth:`~ipamd.deepcheck.NamespaceInspector.presence` does not). Thread-safe.
    """

    name = "netns"

    def __init__(self, exists: Callable[[str], bool] = os.path.exists, look: Look | None = None, *,
                 max_failures: int = 3, pause: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.exists, self.look = exists, look
        self.max_failures, self.pause, self.clock = max(1, max_failures), pause, clock
        self._lock = threading.Lock()
        self._failures = 0
        self._last_error = ""
        self._paused_until = 0.0

    def verdict(self, record: HandleRecord) -> Verdict:
        path = record.netns
        if not record.netns_seen or not path:
            return Verdict(UNKNOWN, "namespace not seen at ADD")
        if not self.exists(path):
            return Verdict(GONE, "netns %s is gone" % path, NETNS_GONE)
        if self.look is None:
            return Verdict(ALIVE, "")
        with self._lock:
            if self.clock() < self._paused_until:
                return Verdict(UNKNOWN, "not looking into namespaces for a while after %d failures in a row (last: "
                                        "%s)" % (self.max_failures, self._last_error))
        seen = self.look(record)
        if seen.error or not seen.netns_exists:
            if not self.exists(path):  # removed while we looked
                return Verdict(GONE, "netns %s is gone" % path, NETNS_GONE)
            if not seen.netns_exists:  # a path that is not (or no longer) a namespace: never judged by
                return Verdict(UNKNOWN, "netns %s is not a network namespace (%s)" % (path, seen.error))
            self._failed(seen.error)
            return Verdict(UNKNOWN, "cannot look into netns %s: %s" % (path, seen.error))
        with self._lock:
            self._failures = 0
        return address_verdict(record, seen)

    def _failed(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = error
            if self._failures >= self.max_failures:
                self._failures = 0
                self._paused_until = self.clock() + self.pause
                log.warning("reconciler: %d namespace observations failed in a row (last: %s); not looking into "
                            "namespaces for %.0f s", self.max_failures, error, self.pause)


def address_verdict(record: HandleRecord, seen: Observation) -> Verdict:
    """The verdict of one successful observation ``seen`` (``netns_exists`` and no ``error``) of ``record``'s
    namespace: see :class:`NetnsCheck`. Pure."""
    wanted = [(a.family, a.value) for a in record.allocations]
    if not wanted:
        return Verdict(UNKNOWN, "no addresses recorded")
    own = {(p.family, p.value) for p in seen.addresses}
    if seen.interface is not None and own.intersection(wanted):
        return Verdict(ALIVE, "")
    moved = ["%s on %s" % (to_ip(p.family, p.value), name) for name, p in seen.elsewhere
             if (p.family, p.value) in wanted]
    if moved:
        return Verdict(ALIVE, "%s in %s" % (", ".join(moved), seen.netns_path))
    if seen.interface is None:
        return Verdict(GONE, "interface %s is missing in %s" % (record.if_name, seen.netns_path), INTERFACE_GONE)
    text = ", ".join(str(to_ip(f, v)) for f, v in wanted)
    return Verdict(GONE, "address%s %s not on %s in %s" % ("es" if len(wanted) > 1 else "", text, record.if_name,
                                                          seen.netns_path), ADDRESS_GONE)


@dataclass(slots=True)
class Suspect:
    """An attachment (or a broken record) seen gone: since when (monotonic seconds), at which ``mod_revision``, why."""

    first_seen: float
    mod_revision: int
    reason: str


@dataclass(slots=True)
class PassResult:
    """One pass: ``candidates`` seen gone now (handle or key -> reason), ``released`` (key -> reason),
    ``waiting`` (seen gone, within the grace period), ``errors`` (messages)."""

    revision: int = 0
    examined: int = 0
    candidates: dict[str, str] = field(default_factory=dict)
    released: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Reconciler:
    """One daemon's reconciler. ``interval`` seconds between passes (0: off), ``grace`` seconds an attachment must
    stay gone before it is released; ``checks`` judge owners (the first that says ALIVE or GONE decides);
    ``ops_limit``: the operations per transaction etcd accepts, learned from its refusals (B24)."""

    def __init__(self, store: Store, cache: NodeCache, node: str, *, checks: Sequence[OwnerCheck], interval: float,
                 grace: float, etcd_timeout: float, metrics: Metrics, cooling: CoolingLeases | None = None,
                 ops_limit: OpsLimit | None = None) -> None:
        self.store, self.cache, self.node = store, cache, node
        self.ops_limit = ops_limit if ops_limit is not None else OpsLimit()
        self.checks = list(checks)
        self.interval, self.grace, self.etcd_timeout = interval, grace, etcd_timeout
        self.metrics = metrics
        self.cooling = cooling if cooling is not None else CoolingLeases(store)
        self._suspects: dict[str, Suspect] = {}
        self._last = 0.0

    def round(self) -> float:
        """For :func:`ipamd.concurrency.supervise`: a pass when one is due; returns the seconds to the next."""
        if self.interval <= 0:
            return 60.0
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            result = self.run(dry_run=False)
            if result.released or result.candidates:
                log.info("reconciler: %d attachment(s) examined, %d seen gone, %d released", result.examined,
                         len(result.candidates), len(result.released))
        return max(1.0, self.interval - (time.monotonic() - self._last))

    # -- one pass ----------------------------------------------------------------------------------------------

    def run(self, dry_run: bool) -> PassResult:
        """One pass (see the module docstring). With ``dry_run`` nothing is released and the suspects are not
        updated: the result says what a pass would release now (``released``) and what is waiting for its grace
        period (``waiting``). Raises the store's errors (the caller retries)."""
        out = PassResult()
        now = time.monotonic()
        ips, out.revision = self._own_addresses()
        handles = self._handles({rec.handle for _, rec in ips if rec.node == self.node})
        gone: dict[str, _Gone] = {}
        for kv, rec in ips:
            if rec.node == self.node and rec.handle not in handles and kv.create_revision <= out.revision:
                gone[kv.key] = _Gone("repair", "address record without its handle (B52)", kv.mod_revision,
                                     kv, None, rec)
        for hkv, hrec in handles.values():
            out.examined += 1
            if hkv.create_revision > out.revision:
                continue  # younger than the snapshot: not judged (decision 2)
            verdict, kind, reason = self._verdict(hrec)
            if verdict == GONE:
                gone[hkv.key] = _Gone(kind, reason, hkv.mod_revision, hkv, hrec, None)
        due: list[_Gone] = []
        for key, g in gone.items():
            out.candidates[key] = g.reason
            seen = self._suspects.get(key)
            if seen is None or seen.mod_revision != g.mod_revision:
                if not dry_run:
                    self._suspects[key] = Suspect(now, g.mod_revision, g.reason)
                out.waiting[key] = self.grace
            elif now - seen.first_seen >= self.grace:
                due.append(g)
            else:
                out.waiting[key] = self.grace - (now - seen.first_seen)
                if not dry_run:
                    self.metrics.reconcile_too_young.inc()
        self.metrics.reconcile_candidates.set(len(gone))
        if dry_run:
            out.released = {g.kv.key: g.reason for g in due}
            return out
        self._suspects = {k: v for k, v in self._suspects.items() if k in gone}
        self._release([g for g in due if g.handle is not None], out)
        for g in due:
            if g.address is not None and self._repair(g.kv, g.address):
                out.released[g.kv.key] = g.reason
                self._suspects.pop(g.kv.key, None)
                self.metrics.child(self.metrics.reconcile_released, g.kind).inc()
        return out

    def _verdict(self, record: HandleRecord) -> tuple[str, str, str]:
        """(verdict, kind: the deciding verdict's kind or its check's name, reason)."""
        for check in self.checks:
            try:
                answer = check.verdict(record)
                verdict, reason = answer[0], answer[1]
                kind = (answer[2] if len(answer) > 2 else "") or check.name
            except Exception as exc:  # noqa: BLE001 - a check that fails cannot tell (never a release)
                log.warning("reconciler: %s check failed for %s: %s", check.name, record.handle, exc)
                continue
            if verdict != UNKNOWN:
                return verdict, kind, reason
        return UNKNOWN, "", ""

    def _own_addresses(self) -> tuple[list[tuple[KV, IpRecord]], int]:
        """The address records of this node's blocks, and the revision of the first read (the pass's snapshot)."""
        out: list[tuple[KV, IpRecord]] = []
        revision = 0
        for pool_id, block in self.cache.own_blocks():
            start, end = ips_range(pool_network(pool_id), block)
            kvs, rev = self.store.read(start, end, self.etcd_timeout)
            revision = revision or rev
            for kv in kvs:
                try:
                    out.append((kv, IpRecord.decode(kv.value)))
                except ValueError:
                    continue  # ipamctl check reports it
        if not revision:
            revision = self.store.read(handle_key(""), None, self.etcd_timeout)[1]
        return out, revision

    def _handles(self, ids: set[str]) -> dict[str, tuple[KV, HandleRecord]]:
        """The named handles that exist, read in batches of Gets (one round trip per :data:`READ_BATCH`)."""
        out: dict[str, tuple[KV, HandleRecord]] = {}
        ordered = sorted(ids)
        for i in range(0, len(ordered), READ_BATCH):
            chunk = ordered[i:i + READ_BATCH]
            res = self.store.txn([], [Get(handle_key(h)) for h in chunk], [], self.etcd_timeout)
            for h, kvs in zip(chunk, res.reads, strict=True):
                if kvs:
                    try:
                        out[h] = (kvs[0], HandleRecord.decode(kvs[0].value))
                    except ValueError:
                        continue
        return out

    def _repair(self, kv: KV, rec: IpRecord) -> bool:
        """Delete an address record whose handle does not exist, comparing both (B52); the address cools like any
        released one (B09)."""
        cooling = self.cooling.puts([kv.key], self.cache.cooldown_of, self.etcd_timeout)
        res = self.store.txn([Compare(kv.key, "mod", "==", kv.mod_revision),
                              Compare(handle_key(rec.handle), "version", "==", 0)],
                             [Delete(kv.key), *cooling.values()], [], self.etcd_timeout)
        if res.succeeded:
            self.cache.released(rec.handle, (kv.key,), res.revision, cooling)
            log.warning("reconciler: removed address record %s whose handle %s does not exist", kv.key, rec.handle)
        return res.succeeded

    def _release(self, due: list[_Gone], out: PassResult) -> None:
        """Release attachments in batches (one transaction per batch, each handle comparing the revision read; a
        batch that fails is retried one by one, and one that changed since it was read is left alone)."""
        by_key = {g.kv.key: g for g in due}
        items = [(g.kv, g.handle.ip_keys) for g in due if g.handle is not None]
        try:  # B09: the released addresses of pools with a cooldown get their cooling records in the same txn
            cooling = self.cooling.puts([k for _, keys in items for k in keys], self.cache.cooldown_of,
                                        self.etcd_timeout)
        except IpamError as exc:
            out.errors.append(str(exc))
            return
        def send(batch: list[tuple[KV, Sequence[str]]]) -> None:
            groups = [batch]
            while groups:
                group = groups.pop()
                txn = ReleaseBatchTxn(group, cooling=cooling)
                try:
                    res = self.store.txn(txn.compares, txn.success, txn.failure, self.etcd_timeout)
                except IpamError as exc:
                    if too_many_ops(exc) and len(group) > 1 and group is batch:
                        raise  # etcd's --max-txn-ops is lower than ours: send_in_batches splits it (B24)
                    if lease_is_gone(exc):
                        self.cooling.forget()
                    out.errors.append(str(exc))
                    continue
                if not res.succeeded:
                    if len(group) > 1:
                        groups.extend([item] for item in group)
                    continue  # a single one that changed since read is not stale any more
                for kv, _ in group:
                    g = by_key[kv.key]
                    rec = g.handle
                    if rec is None:
                        continue
                    self.cache.released(rec.handle, rec.ip_keys, res.revision, cooling)
                    out.released[kv.key] = g.reason
                    self._suspects.pop(kv.key, None)
                    self.metrics.child(self.metrics.reconcile_released, g.kind).inc()
                    log.warning("reconciler: released %s (%s)", rec.handle, g.reason, extra={
                        "container_id": rec.container_id, "if_name": rec.if_name, "network": rec.network,
                        "addresses": [a.cidr for a in rec.allocations]})

        send_in_batches(items, send, self.ops_limit, cooling)


@dataclass(slots=True)
class _Gone:
    """A candidate: what judged it (``kind``: netns, netns_interface, netns_address, kubernetes, repair), why, the
    revision it was read at, and the record: a handle to release, or an address record to remove."""

    kind: str
    reason: str
    mod_revision: int
    kv: KV
    handle: HandleRecord | None
    address: IpRecord | None
