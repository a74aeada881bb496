"""Named pools in etcd: the daemon's cache of their specs, and the admin operations (create, list, show, drain,
delete) behind the ``ipamd.v1.PoolAdmin`` gRPC service and ``ipamctl pool`` (docs/configuration.md "Named pools",
docs/etcd-layout.md "Named pools").

The cache is filled by the daemon's sync (one range read of ``poolspecs/`` at the view's revision) and kept fresh
by the view's watch (ipamd/watcher.py); a name the cache does not know is read from etcd before an ADD calls it
unknown, so an ADD right after ``pool create`` (through any daemon) sees the pool. Correctness never rests on the
cache: every ADD from a named pool compares the spec's ``mod_revision`` it planned with, and its failure branch
returns the spec, so a drained or deleted pool is learned in the same round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .concurrency import remaining
from .domain.errors import InvalidConfig, PoolInUse, TryAgainLater
from .domain.model import BLOCKS, COOLING, IPS, POOLS, POOLSPECS, poolspec_key
from .domain.poolspec import PoolSpec, parse_pool_spec, pool_network_of, validate_pool_name
from .failpoints import Failpoints
from .store.base import KV, Compare, Delete, Get, Op, Put, Store, WatchUpdate, prefix_end
from .txns import MAX_TXN_OPS

log = logging.getLogger(__name__)


class PoolSpecCache:
    """Name -> (spec, mod_revision) as last seen; thread-safe. Malformed specs are skipped (``ipamctl check``
    reports them). Memory: one small entry per named pool."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, tuple[PoolSpec, int]] = {}

    def replace(self, kvs: Iterable[KV]) -> None:
        """Every spec read at one revision (the daemon's sync)."""
        fresh: dict[str, tuple[PoolSpec, int]] = {}
        for kv in kvs:
            try:
                spec = PoolSpec.decode(kv.value, kv.key[len(POOLSPECS):])
            except ValueError:
                continue
            fresh[spec.name] = (spec, kv.mod_revision)
        with self._lock:
            self._specs = fresh

    def learned(self, name: str, kv: KV | None) -> None:
        """A spec read from etcd (``None``: there is none), newer than or as new as what the cache holds."""
        with self._lock:
            old = self._specs.get(name)
            if kv is None:
                self._specs.pop(name, None)
                return
            if old is not None and old[1] > kv.mod_revision:
                return
            try:
                self._specs[name] = (PoolSpec.decode(kv.value, name), kv.mod_revision)
            except ValueError:
                self._specs.pop(name, None)

    def apply(self, update: WatchUpdate) -> None:
        """The spec events of a watch update (other keys are ignored)."""
        with self._lock:
            for ev in update.events:
                if not ev.kv.key.startswith(POOLSPECS):
                    continue
                name = ev.kv.key[len(POOLSPECS):]
                old = self._specs.get(name)
                if old is not None and old[1] > ev.kv.mod_revision:
                    continue
                if ev.deleted:
                    self._specs.pop(name, None)
                    continue
                try:
                    self._specs[name] = (PoolSpec.decode(ev.kv.value, name), ev.kv.mod_revision)
                except ValueError:
                    self._specs.pop(name, None)

    def get(self, name: str) -> tuple[PoolSpec, int] | None:
        with self._lock:
            return self._specs.get(name)

    def subset(self, names: Iterable[str]) -> dict[str, tuple[PoolSpec, int]]:
        """The known specs among ``names``."""
        with self._lock:
            return {n: self._specs[n] for n in names if n in self._specs}


@dataclass(frozen=True, slots=True)
class PoolView:
    """A named pool as ``ipamctl pool list|show`` shows it: its spec, the revision of the spec, the number of
    address records (``allocated``), usable addresses (``size``) and claimed blocks (``blocks``), all read at
    ``revision``."""

    spec: PoolSpec
    spec_revision: int
    allocated: int
    size: int
    blocks: int
    revision: int

    def to_json(self) -> dict[str, object]:
        out = self.spec.to_json()
        out.update({"allocated": self.allocated, "size": self.size, "blocks": self.blocks,
                    "poolId": self.spec.pool_id, "specRevision": self.spec_revision})
        return out


def _prefix(kind: str, name: str) -> str:
    return "%s%s/" % (kind, pool_network_of(name))


class PoolAdmin:
    """The admin operations on named pools, each one etcd transaction with compares (docs/etcd-layout.md "Named
    pools"). ``timeout`` bounds each call in seconds. Every method raises :class:`TryAgainLater` (11) when etcd
    cannot be reached in time. ``failpoints``: ``pooldelete.before_cleanup`` (tests)."""

    def __init__(self, store: Store, timeout: float = 8.0, failpoints: Failpoints | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self.failpoints = failpoints or Failpoints()

    def create(self, obj: object) -> PoolView:
        """Validate ``obj`` (:func:`ipamd.domain.poolspec.parse_pool_spec`) and store it: ``IF poolspecs/<name>.version
        == 0 AND every spec of poolspecs/ has mod_revision <= R (the revision the other specs were read at) THEN
        put``, so two creates of overlapping pools cannot both commit. Raises :class:`InvalidConfig` (7) for an
        invalid spec, a name already taken, or a CIDR that overlaps another named pool's (an address would be handed
        out by both). Not idempotent by design: a second create of the same name is refused.

        A delete of the same name that was interrupted after its spec was gone (daemon killed, etcd lost) left
        the old pool's blocks, pool and cooling records under ``@<name>``; they are removed first (the delete's
        clean-up, which compares that no spec exists), so the new pool never runs on the old one's block size or
        lists the old CIDR's records as its own."""
        spec = parse_pool_spec(obj)
        key = poolspec_key(spec.name)
        self._cleanup(spec.name, time.monotonic() + self.timeout)
        for _ in range(5):
            kvs, revision = self.store.read(POOLSPECS, prefix_end(POOLSPECS), self.timeout)
            for kv in kvs:
                if kv.key == key:
                    raise InvalidConfig("pool %s already exists" % spec.name, "ipamctl pool show %s" % spec.name)
                try:
                    other = PoolSpec.decode(kv.value, kv.key[len(POOLSPECS):])
                except ValueError:
                    continue
                if other.range.overlaps(spec.range):
                    raise InvalidConfig("pool %s cidr %s overlaps pool %s (%s)" % (spec.name, spec.range.subnet,
                                                                                  other.name, other.range.subnet),
                                        "named pools may not overlap: an address would be handed out by both")
            res = self.store.txn([Compare(key, "version", "==", 0),
                                  Compare(POOLSPECS, "mod", "<", revision + 1, prefix_end(POOLSPECS))],
                                 [Put(key, spec.encode())], [], self.timeout)
            if res.succeeded:
                log.info("named pool %s created: %s", spec.name, spec.range.subnet)
                return PoolView(spec, res.revision, 0, spec.range.usable_count(), 0, res.revision)
        raise TryAgainLater("pool %s: the named pools changed under every attempt to create it" % spec.name)

    def _read(self, name: str) -> tuple[KV, PoolSpec]:
        validate_pool_name(name)
        kvs, _ = self.store.read(poolspec_key(name), None, self.timeout)
        if not kvs:
            raise InvalidConfig("pool %s does not exist" % name, "ipamctl pool list")
        try:
            return kvs[0], PoolSpec.decode(kvs[0].value, name)
        except ValueError as exc:
            raise InvalidConfig("pool %s: the stored spec is not valid (%s)" % (name, exc)) from None

    def _view(self, kv: KV, spec: PoolSpec, revision: int) -> PoolView:
        allocated = self.store.count(_prefix(IPS, spec.name), prefix_end(_prefix(IPS, spec.name)), self.timeout,
                                     revision=revision)
        blocks = self.store.count(_prefix(BLOCKS, spec.name), prefix_end(_prefix(BLOCKS, spec.name)), self.timeout,
                                  revision=revision)
        return PoolView(spec, kv.mod_revision, allocated, spec.range.usable_count(), blocks, revision)

    def list(self) -> tuple[int, list[PoolView]]:
        """``(revision, pools)`` in name order: one range read of ``poolspecs/``, then two count-only reads per pool
        at that revision."""
        kvs, revision = self.store.read(POOLSPECS, prefix_end(POOLSPECS), self.timeout)
        out = []
        for kv in kvs:
            try:
                spec = PoolSpec.decode(kv.value, kv.key[len(POOLSPECS):])
            except ValueError:
                log.warning("skipping malformed pool spec %s", kv.key)
                continue
            out.append(self._view(kv, spec, revision))
        return revision, out

    def show(self, name: str) -> PoolView:
        """One pool. Raises :class:`InvalidConfig` (7) when there is none of that name."""
        validate_pool_name(name)
        kvs, revision = self.store.read(poolspec_key(name), None, self.timeout)
        if not kvs:
            raise InvalidConfig("pool %s does not exist" % name, "ipamctl pool list")
        try:
            spec = PoolSpec.decode(kvs[0].value, name)
        except ValueError as exc:
            raise InvalidConfig("pool %s: the stored spec is not valid (%s)" % (name, exc)) from None
        return self._view(kvs[0], spec, revision)

    def set_state(self, name: str, state: str) -> PoolView:
        """Drain (``draining``) or re-activate (``active``) a pool: ``IF poolspecs/<name>.mod_revision == R THEN put``
        (retried on a concurrent change). Idempotent. Draining: no new allocations from the pool (the next pool of
        the range set is used), existing ones are kept, DEL empties it (field case B27)."""
        for _ in range(5):
            kv, spec = self._read(name)
            if spec.state == state:
                return self.show(name)
            new = spec.with_state(state)
            res = self.store.txn([Compare(kv.key, "mod", "==", kv.mod_revision)], [Put(kv.key, new.encode())], [],
                                 self.timeout)
            if res.succeeded:
                log.info("named pool %s is now %s", name, state)
                return self.show(name)
        raise TryAgainLater("pool %s changed under every attempt to set its state" % name)

    def delete(self, name: str, deadline: float) -> int:
        """Delete an empty pool: ``IF poolspecs/<name>.mod_revision == R AND ips/@<name>/ is empty (version == 0 over
        the range) THEN delete poolspecs/<name>``; then its empty block, pool and cooling records (read, and deleted
        each comparing the mod_revision read, in batches under etcd's operation limit). Every ADD from the pool
        compares the spec's mod_revision, so an ADD and a delete can never both commit: no address is ever left in a
        deleted pool. Returns the number of block records removed.

        Idempotent for the records: a pool whose spec is gone but whose records remain (an interrupted delete) is
        cleaned up by a second delete. Raises :class:`PoolInUse` (120, FAILED_PRECONDITION) with the count of live
        addresses, :class:`InvalidConfig` (7) when there is no such pool and nothing to clean up.
        """
        validate_pool_name(name)
        key = poolspec_key(name)
        ips_lo = _prefix(IPS, name)
        kvs, _ = self.store.read(key, None, self.timeout)
        if kvs:
            live = self.store.count(ips_lo, prefix_end(ips_lo), self.timeout)
            if live:
                raise PoolInUse("pool %s still holds %d address(es)" % (name, live),
                                "drain it (ipamctl pool drain %s), release its attachments (DEL), then delete it"
                                % name)
            res = self.store.txn([Compare(key, "mod", "==", kvs[0].mod_revision),
                                  Compare(ips_lo, "version", "==", 0, prefix_end(ips_lo))],
                                 [Delete(key)], [Get(key), Get(ips_lo, prefix_end(ips_lo))], self.timeout)
            if not res.succeeded:
                spec_now, ips_now = res.reads
                if ips_now:
                    raise PoolInUse("pool %s still holds %d address(es)" % (name, len(ips_now)),
                                    "an ADD took an address while the delete was sent")
                raise TryAgainLater("pool %s changed while it was being deleted%s" % (
                    name, "" if spec_now else " (deleted by someone else)"))
            log.info("named pool %s deleted", name)
            self.failpoints.hit("pooldelete.before_cleanup")
        removed = self._cleanup(name, deadline)
        if not kvs and not removed:
            raise InvalidConfig("pool %s does not exist" % name, "ipamctl pool list")
        return removed

    def _cleanup(self, name: str, deadline: float) -> int:
        """Delete the records a deleted pool left: its blocks and pool records (empty: the spec delete proved no
        address exists, and no ADD can add one without the spec) and its cooling records. Each delete compares the
        mod_revision read. Returns the number of block records deleted."""
        gets = [Get(p, prefix_end(p)) for p in (_prefix(BLOCKS, name), _prefix(POOLS, name), _prefix(COOLING, name))]
        res = self.store.txn([Compare(poolspec_key(name), "version", "==", 0)], gets, [],
                             min(self.timeout, max(remaining(deadline), 0.1)))
        if not res.succeeded:  # recreated meanwhile: its records are the new pool's
            return 0
        blocks = len(res.reads[0])
        items: list[KV] = [kv for reads in res.reads for kv in reads]
        for i in range(0, len(items), MAX_TXN_OPS // 2):
            chunk = items[i:i + MAX_TXN_OPS // 2]
            compares = [Compare(poolspec_key(name), "version", "==", 0)]
            compares += [Compare(kv.key, "mod", "==", kv.mod_revision) for kv in chunk]
            ops: list[Op] = [Delete(kv.key) for kv in chunk]
            self.store.txn(compares, ops, [], min(self.timeout, max(remaining(deadline), 0.1)))
        return blocks

