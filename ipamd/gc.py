"""Garbage collection for the CNI GC verb (docs/cni-contract.md §2.6): release this node's attachments of one network
that the runtime no longer lists.

Rules (docs/decisions.md "GC"):

- Only this network's handles are read, and only this node's are judged: the runtime's keep-list names the
  containers of its own node (field case B21).
- Snapshot rule (field case B15, decision 2): the revision R is read first; a handle created after R is never
  released, and every delete compares the ``mod_revision`` it read.
- Deletes go in batches under etcd's 128-operation limit (B24); a batch whose compare fails is retried one
  attachment at a time (the one that changed is no longer stale and is skipped).
- Time (B47): the release runs in a background job with its own budget (``gc_timeout``). The request waits for it
  until its own deadline; if the job is not done by then, the request answers 11 naming how much was released so
  far, and the job goes on. A later GC of the network waits for a running job before it scans again. GC never
  answers 999: every failure is counted, logged and reported as code 11.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .cache import NodeCache
from .concurrency import DeadlinePassed, KeyedLocks, remaining
from .cooling import CoolingLeases, lease_is_gone
from .domain.errors import IpamError, TryAgainLater
from .domain.model import HandleRecord, handle_key
from .failpoints import Failpoints
from .metrics import Metrics
from .store.base import KV, Store, StoreOutcomeUnknown, StoreUnavailable, prefix_end
from .txns import OpsLimit, ReleaseBatchTxn, send_in_batches, too_many_ops

log = logging.getLogger(__name__)


@dataclass(slots=True)
class GcJob:
    """One background release: ``total`` attachments to release, ``released`` so far, ``failures`` (messages),
    ``done`` set when it ended."""

    network: str
    total: int
    released: int = 0
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class GarbageCollector:
    """CNI GC for one daemon. ``gc_timeout`` is the budget in seconds of one background release job. ``ops_limit``:
    the operations per transaction etcd accepts, learned from its refusals (B24; a new :class:`OpsLimit` if not
    given)."""

    def __init__(self, store: Store, cache: NodeCache, node: str, *, metrics: Metrics, failpoints: Failpoints,
                 etcd_timeout: float, gc_timeout: float, cooling: CoolingLeases | None = None,
                 ops_limit: OpsLimit | None = None) -> None:
        self.ops_limit = ops_limit if ops_limit is not None else OpsLimit()
        self.store, self.cache, self.node = store, cache, node
        self.cooling = cooling if cooling is not None else CoolingLeases(store)
        self.metrics, self.failpoints = metrics, failpoints
        self.etcd_timeout, self.gc_timeout = etcd_timeout, gc_timeout
        self._locks = KeyedLocks()
        self._jobs: dict[str, GcJob] = {}
        self._jobs_lock = threading.Lock()

    def collect(self, network: str, valid: set[tuple[str, str]], deadline: float) -> int:
        """Release every attachment of ``network`` allocated by this node whose (containerID, ifName) is not in
        ``valid``; returns how many were released. Raises :class:`TryAgainLater` (11) when etcd cannot be read, when
        a previous job is still running at ``deadline``, or when this one is not done by then (it goes on)."""
        with self._locks.hold("gc:" + network):
            running = self._job(network)
            if running is not None and not running.done.wait(max(0.0, deadline - time.monotonic())):
                raise TryAgainLater("GC of network %s: an earlier GC is still releasing (%d of %d so far); call "
                                    "GC again" % (network, running.released, running.total))
            try:
                stale = self._scan(network, valid, deadline)
            except DeadlinePassed:
                raise TryAgainLater("GC of network %s: no time left to read its attachments" % network) from None
            if not stale:
                return 0
            job = GcJob(network, len(stale))
            with self._jobs_lock:
                self._jobs[network] = job
            threading.Thread(target=self._run, args=(job, stale), name="gc-%s" % network, daemon=True).start()
            if not job.done.wait(max(0.0, deadline - time.monotonic())):
                raise TryAgainLater("GC of network %s: released %d of %d attachment(s) so far; the rest is being "
                                    "released in the background, call GC again for the result"
                                    % (network, job.released, job.total))
        if job.failures:
            raise TryAgainLater("GC of network %s released %d attachment(s), %d failed"
                                % (network, job.released, len(job.failures)), "; ".join(job.failures[:20]))
        return job.released

    def _job(self, network: str) -> GcJob | None:
        with self._jobs_lock:
            return self._jobs.get(network)

    def _scan(self, network: str, valid: set[tuple[str, str]], deadline: float) -> list[tuple[KV, HandleRecord]]:
        prefix = handle_key(network + "/")
        timeout = min(remaining(deadline), self.etcd_timeout)
        _, snapshot = self.store.read(prefix, None, timeout)  # revision R of the liveness set
        self.failpoints.hit("gc.after_snapshot")
        kvs, _ = self.store.read(prefix, prefix_end(prefix), min(remaining(deadline), max(self.etcd_timeout, 5.0)))
        stale: list[tuple[KV, HandleRecord]] = []
        for kv in kvs:
            if kv.create_revision > snapshot:
                continue
            try:
                rec = HandleRecord.decode(kv.value)
            except ValueError:
                log.warning("GC of network %s: skipping undecodable handle %s (see ipamctl check)", network, kv.key)
                continue
            if rec.node == self.node and (rec.container_id, rec.if_name) not in valid:
                stale.append((kv, rec))
        return stale

    def _run(self, job: GcJob, stale: Sequence[tuple[KV, HandleRecord]]) -> None:
        """The background release: batches, each retried on transient errors until the job's budget ends."""
        budget_end = time.monotonic() + self.gc_timeout
        try:
            items: list[tuple[KV, HandleRecord]] = []
            for kv, rec in stale:
                try:
                    self.failpoints.hit("gc.before_delete")
                except RuntimeError as exc:
                    job.failures.append("%s: %s" % (rec.handle, exc))
                    continue
                items.append((kv, rec))
            by_key = {kv.key: rec for kv, rec in items}
            cooling = {k for _, rec in items for k in rec.ip_keys if self.cache.cooldown_of(k)[1] > 0}
            send_in_batches([(kv, rec.ip_keys) for kv, rec in items],
                            lambda batch: self._release(job, [(kv, by_key[kv.key]) for kv, _ in batch], budget_end),
                            self.ops_limit, cooling)
        except Exception as exc:
            log.exception("GC of network %s: unexpected error", job.network)
            job.failures.append("unexpected error: %s" % exc)
        finally:
            self.metrics.gc_released.inc(job.released)
            if job.released:
                log.warning("GC released %d of %d stale attachment(s) of network %s", job.released, job.total,
                            job.network)
            job.done.set()

    def _release(self, job: GcJob, batch: list[tuple[KV, HandleRecord]], budget_end: float,
                 uncertain: bool = False) -> None:
        """``uncertain``: an earlier attempt of these deletes may have committed unseen (StoreOutcomeUnknown)."""
        delay = 0.05
        while True:
            try:
                # B09: cooling records of the released addresses, in the same transaction (leases from etcd)
                cooling = self.cooling.puts([k for _, rec in batch for k in rec.ip_keys], self.cache.cooldown_of,
                                            self.etcd_timeout)
                txn = ReleaseBatchTxn([(kv, rec.ip_keys) for kv, rec in batch], cooling=cooling)
                self.metrics.etcd_txns.labels("GC").inc()
                res = self.store.txn(txn.compares, txn.success, txn.failure, self.etcd_timeout)
                break
            except StoreUnavailable as exc:
                if lease_is_gone(exc):
                    self.cooling.forget()  # etcd's NOT_FOUND for the lease: the put did not commit
                uncertain = uncertain or (isinstance(exc, StoreOutcomeUnknown) and not lease_is_gone(exc))
                if time.monotonic() + delay >= budget_end:
                    job.failures.extend("%s: %s" % (rec.handle, exc.msg) for _, rec in batch)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except IpamError as exc:  # refused by etcd (StoreRejected): report, never 999
                if too_many_ops(exc) and len(batch) > 1:
                    raise  # etcd's --max-txn-ops is lower than ours: send_in_batches splits the batch (B24)
                if lease_is_gone(exc) and time.monotonic() + delay < budget_end:
                    self.cooling.forget()  # a cooling lease ended early (etcd restored?): a new one next time
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                job.failures.extend("%s: %s" % (rec.handle, exc.msg) for _, rec in batch)
                return
        if res.succeeded:
            for _, rec in batch:
                self.cache.released(rec.handle, rec.ip_keys, res.revision, cooling)
            job.released += len(batch)
            self.failpoints.hit("gc.after_batch")  # tests: a daemon killed between two committed batches (B24)
            return
        if len(batch) > 1:
            for item in batch:  # someone changed one of them since the snapshot: find which, one by one
                self._release(job, [item], budget_end, uncertain)
            return
        # a single attachment that changed since the snapshot (re-ADDed or released) is not stale any more, unless
        # it is gone because our own unseen attempt deleted it
        kv, rec = batch[0]
        if uncertain:
            try:
                kvs, revision = self.store.read(kv.key, None, self.etcd_timeout)
            except IpamError:
                kvs, revision = (kv,), 0
            if not kvs:
                self.cache.released(rec.handle, rec.ip_keys, revision)
                job.released += 1
