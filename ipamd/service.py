"""The IPAM service: ADD, DEL, CHECK, GC and STATUS in CNI terms, on top of the store contract.

Every write has one shape (style.md "Concurrency and retries"): read what the cache knows -> pick (pure) ->
one transaction whose compares make a stale pick fail -> on conflict refresh from the failure branch's reads,
back off with jitter and retry within the request's deadline -> then a typed error (code 11). Correctness across
nodes rests only on the compares; inside one daemon, requests for one attachment are serialised.

Steady state (design.md §2): ADD into an owned block and DEL of a cached handle are one transaction each.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from contextlib import contextmanager

from .domain.addr import Block, block_of, candidate_blocks, to_ip
from .domain.cni import Attachment
from .domain.errors import (AddressUnavailable, CheckMismatch, CheckNoAllocation, NotAvailable, PoolExhausted,
                            TryAgainLater)
from .domain.model import (BLOCKS, POOLS, Allocation, HandleRecord, block_key, blocks_prefix, decode, dumps,
                           encode_block_record, encode_ip_record, handle_key, ips_range, pool_key, pool_network)
from .domain.netconf import NetConf, Pool
from .failpoints import Failpoints
from .metrics import Metrics
from .store.base import KV, Compare, Delete, Get, Op, Put, Store, StoreUnavailable, prefix_end

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _BlockState:
    """What this daemon knows of one block: owner node, the block key's mod_revision, and (when loaded) the
    addresses allocated in it."""

    block: Block
    node: str
    mod_revision: int
    taken: set[int] | None = None


@dataclass(slots=True)
class _Pick:
    """One planned allocation: pool, block, address and how the block is held (own, claim, borrow)."""

    index: int
    pool: Pool
    block: Block
    value: int
    mode: str
    block_revision: int = 0
    requested: bool = False


@dataclass(slots=True)
class _Cache:
    """Blocks by pool id -> {block first address: state}; handles this node wrote -> (record, mod_revision)."""

    blocks: dict[str, dict[int, _BlockState]] = field(default_factory=dict)
    handles: dict[str, tuple[HandleRecord, int]] = field(default_factory=dict)
    #: pool id -> (record bytes, mod_revision, block prefix): the first claim fixes a pool's block size
    pools: dict[str, tuple[bytes, int, int]] = field(default_factory=dict)
    #: (pool id, block first) -> addresses already taken in a block nobody owns in this pool (held through an
    #: overlapping pool of the same network, e.g. after the subnet was widened)
    unclaimed_taken: dict[tuple[str, int], set[int]] = field(default_factory=dict)


class IpamService:
    """The service layer shared by the CNI socket server and the gRPC API.

    ``store`` is any :class:`ipamd.store.base.Store`; ``node`` this daemon's node name; ``request_timeout`` the
    deadline in seconds for one request including its retries. Thread-safe.
    """

    def __init__(self, store: Store, node: str, *, request_timeout: float = 8.0, metrics: Metrics | None = None,
                 failpoints: Failpoints | None = None, etcd_timeout: float = 2.0) -> None:
        self.store = store
        self.node = node
        self.request_timeout = request_timeout
        self.etcd_timeout = etcd_timeout
        self.metrics = metrics or Metrics()
        self.failpoints = failpoints or Failpoints()
        self.ready = False
        self._cache = _Cache()
        self._cache_lock = threading.Lock()
        self._attachment_locks: dict[str, list[Any]] = {}
        self._pending: set[tuple[str, int, int]] = set()  # (network, family, address) picked, not committed
        self._locks_lock = threading.Lock()

    # -- start-up ------------------------------------------------------------------------------------------

    def sync(self) -> None:
        """First sync with etcd: load every block record and the address records of this node's blocks.

        Raises :class:`StoreUnavailable` if etcd cannot be read. Idempotent; :meth:`set_ready` follows it.
        """
        pool_kvs, _ = self.store.read(POOLS, prefix_end(POOLS), self.etcd_timeout)
        pools = {}
        for kv in pool_kvs:
            entry = self._pool_entry(kv)
            if entry is not None:
                pools[kv.key[len(POOLS):]] = entry
        kvs, _rev = self.store.read(BLOCKS, prefix_end(BLOCKS), self.etcd_timeout)
        blocks: dict[str, dict[int, _BlockState]] = {}
        for kv in kvs:
            pool_id, block = self._parse_block_key(kv.key)
            if block is None:
                continue
            node = decode(kv.value).get("node", "")
            blocks.setdefault(pool_id, {})[block.first] = _BlockState(block, node, kv.mod_revision)
        for pool_id, states in blocks.items():
            for st in states.values():
                if st.node == self.node:
                    st.taken = self._read_taken(pool_id, st.block)
        with self._cache_lock:
            self._cache.blocks = blocks
            self._cache.pools = pools

    @staticmethod
    def _pool_entry(kv: KV) -> tuple[bytes, int, int] | None:
        try:
            return kv.value, kv.mod_revision, int(decode(kv.value)["blockSize"])
        except (ValueError, KeyError, TypeError):
            return None

    def _block_prefix(self, pool: Pool) -> int:
        """The pool's block size: fixed by its record once a block was claimed (a config asking for another
        size cannot make overlapping blocks), else the configuration's."""
        with self._cache_lock:
            cached = self._cache.pools.get(pool.id)
        return cached[2] if cached is not None else pool.block_prefix

    def set_ready(self) -> None:
        """Start serving ADD (until then ADD/DEL/CHECK/GC answer code 11 and STATUS 50)."""
        self.ready = True
        self.metrics.ready.set(1)

    @staticmethod
    def _parse_block_key(key: str) -> tuple[str, Block | None]:
        rest = key[len(BLOCKS):]
        pool_id, _, bkey = rest.rpartition("/")
        try:
            return pool_id, Block.from_key(bkey)
        except ValueError:
            return pool_id, None

    def _read_taken(self, pool_id: str, block: Block, deadline: float | None = None) -> set[int]:
        if deadline is not None and time.monotonic() > deadline:
            raise TryAgainLater("deadline passed while scanning the blocks of pool %s" % pool_id)
        start, end = ips_range(pool_network(pool_id), block)
        kvs, _ = self.store.read(start, end, self.etcd_timeout)
        return {int(kv.key.rsplit("/", 1)[1], 16) for kv in kvs}

    # -- helpers -------------------------------------------------------------------------------------------

    @contextmanager
    def _serialised(self, handle: str) -> Iterator[None]:
        """Serialise requests for one attachment inside this daemon (field case B13)."""
        with self._locks_lock:
            entry = self._attachment_locks.setdefault(handle, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._locks_lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._attachment_locks[handle]

    def _require_ready(self) -> None:
        if not self.ready:
            raise TryAgainLater("ipamd on node %s is not ready: first sync with etcd not done" % self.node)

    def _backoff(self, attempt: int, deadline: float) -> None:
        delay = min(0.5, 0.005 * (2 ** min(attempt, 7))) * random.uniform(0.5, 1.5)
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    def _txn(self, verb: str, compares: list[Compare], success: list[Op], failure: list[Op],
             deadline: float):  # type: ignore[no-untyped-def]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlinePassed()
        self.metrics.etcd_txns.labels(verb).inc()
        try:
            return self.store.txn(compares, success, failure, min(remaining, self.etcd_timeout))
        except StoreUnavailable:
            self.metrics.etcd_errors.inc()
            raise

    def _retrying(self, verb: str, deadline: float, body: Callable[[], Any]) -> Any:
        """Run ``body`` until it returns non-``None``; store errors and conflicts (``None``) are retried with
        jittered backoff until ``deadline``, then raise :class:`TryAgainLater` chaining the last cause."""
        attempt = 0
        last: StoreUnavailable | None = None
        while True:
            try:
                out = body()
                if out is not None:
                    return out
                self.metrics.cas_conflicts.labels(verb).inc()
                log.debug("%s: compare failed, retrying (attempt %d)", verb, attempt)
            except StoreUnavailable as exc:
                last = exc
                log.debug("%s: etcd unavailable (%s), retrying", verb, exc)
            except _DeadlinePassed:
                pass
            attempt += 1
            if time.monotonic() >= deadline:
                if last is not None:
                    raise TryAgainLater("%s: etcd unavailable until the %.0f s deadline: %s"
                                        % (verb, self.request_timeout, last.msg)) from last
                raise TryAgainLater("%s did not complete within %.0f s (%d conflicting attempts)"
                                    % (verb, self.request_timeout, attempt))
            self._backoff(attempt, deadline)

    def _pool_states(self, pool_id: str) -> dict[int, _BlockState]:
        return self._cache.blocks.setdefault(pool_id, {})

    def _refresh_pool_blocks(self, pool_id: str, kvs: tuple[KV, ...]) -> None:
        """Replace the cached block list of a pool with a fresh range read (keeps loaded address sets)."""
        with self._cache_lock:
            old = self._pool_states(pool_id)
            new: dict[int, _BlockState] = {}
            for kv in kvs:
                _, block = self._parse_block_key(kv.key)
                if block is None:
                    continue
                prev = old.get(block.first)
                node = decode(kv.value).get("node", "")
                taken = prev.taken if prev is not None and prev.node == node else None
                new[block.first] = _BlockState(block, node, kv.mod_revision, taken)
            self._cache.blocks[pool_id] = new

    # -- ADD -----------------------------------------------------------------------------------------------

    def add(self, att: Attachment, netconf: NetConf, *, requested: dict[int, tuple[Pool, int]] | None = None,
            netns: str = "", pod: dict[str, str] | None = None) -> list[Allocation]:
        """Allocate one address per range set of ``netconf`` for ``att``, all or nothing, in one transaction.

        Idempotent: if the attachment already holds addresses they are returned unchanged and nothing is
        written (cni-conformance.md T42, field case B06). ``requested`` maps range-set index -> (pool, address)
        that must be honoured exactly. Raises :class:`PoolExhausted` (100), :class:`AddressUnavailable` (101),
        :class:`TryAgainLater` (11: not ready, etcd unreachable, deadline passed).
        """
        self._require_ready()
        deadline = time.monotonic() + self.request_timeout
        requested = requested or {}
        handle = att.handle
        with self._serialised(handle):
            def attempt() -> list[Allocation] | None:
                try:
                    picks = self._plan(netconf, requested, deadline)
                except (PoolExhausted, AddressUnavailable):
                    # a retried ADD of an attachment that already holds its addresses must succeed even when
                    # the pool is now full or its requested address is (by itself) taken (B06, T42)
                    existing = self._read_handle(handle)
                    if existing is not None:
                        return self._existing(existing, requested)
                    raise
                self._reserve(picks)
                try:
                    self.failpoints.hit("add.after_pick")
                    return self._commit_add(att, netconf, picks, netns, pod or {}, deadline)
                finally:
                    self._reserve(picks, release=True)
            return self._retrying("ADD", deadline, attempt)  # type: ignore[no-any-return]

    def _busy(self, pool: Pool, taken: set[int]) -> "_Busy":
        """``taken`` plus the addresses concurrent ADDs in this daemon have picked but not yet committed, so they
        pick different addresses instead of colliding on the lowest free one (field case B04)."""
        return _Busy(taken, self._pending, pool.network, pool.range.family)

    def _reserve(self, picks: list[_Pick], release: bool = False) -> None:
        with self._cache_lock:
            for p in picks:
                if not p.requested:
                    item = (p.pool.network, p.pool.range.family, p.value)
                    if release:
                        self._pending.discard(item)
                    else:
                        self._pending.add(item)

    @staticmethod
    def _existing(rec: HandleRecord, requested: dict[int, tuple[Pool, int]]) -> list[Allocation]:
        """The held allocations of a repeated ADD; a requested address it does not hold is a 101, never ignored."""
        held = {(a.family, a.value) for a in rec.allocations}
        for pool, value in requested.values():
            if (pool.range.family, value) not in held:
                raise AddressUnavailable("container %s interface %s already holds %s; requested %s"
                                         % (rec.container_id, rec.if_name, ", ".join(a.cidr for a in rec.allocations),
                                            to_ip(pool.range.family, value)))
        return list(rec.allocations)

    def _read_handle(self, handle: str) -> HandleRecord | None:
        kvs, _ = self.store.read(handle_key(handle), None, self.etcd_timeout)
        if not kvs:
            return None
        rec = HandleRecord.decode(kvs[0].value)
        with self._cache_lock:
            self._cache.handles[handle] = (rec, kvs[0].mod_revision)
        return rec

    def _plan(self, netconf: NetConf, requested: dict[int, tuple[Pool, int]], deadline: float) -> list[_Pick]:
        picks = []
        for index, rset in enumerate(netconf.range_sets):
            if index in requested:
                pool, value = requested[index]
                picks.append(self._pick_requested(index, pool, value))
            else:
                picks.append(self._pick_free(index, rset, deadline))
        return picks

    def _pick_requested(self, index: int, pool: Pool, value: int) -> _Pick:
        rng = pool.range
        if not rng.usable(value):
            what = "the gateway" if value == rng.gateway else "not allocatable"
            raise AddressUnavailable("requested address %s is %s in pool %s"
                                     % (to_ip(rng.family, value), what, rng.subnet))
        block = block_of(rng, self._block_prefix(pool), value)
        with self._cache_lock:
            st = self._pool_states(pool.id).get(block.first)
            if st is None:
                return _Pick(index, pool, block, value, "claim", requested=True)
            # a cached "taken" may be stale (released elsewhere): the transaction's compare decides
            mode = "own" if st.node == self.node else "borrow"
            return _Pick(index, pool, st.block, value, mode, st.mod_revision, requested=True)

    def _pick_free(self, index: int, rset: tuple[Pool, ...], deadline: float) -> _Pick:
        free_elsewhere = [0]  # free addresses in other nodes' blocks that strictAffinity forbids borrowing
        for pool in rset:
            pick = self._pick_in_pool(index, pool, deadline, free_elsewhere)
            if pick is not None:
                return pick
        pool = rset[0]
        subnets = ", ".join(str(p.range.subnet) for p in rset)
        self.metrics.pool_exhausted.labels(pool.id).inc()
        with self._cache_lock:
            allocated = sum(len(st.taken or ()) for p in rset for st in self._pool_states(p.id).values())
            mine = sum(1 for p in rset for st in self._pool_states(p.id).values() if st.node == self.node)
        usable = sum(p.range.usable_count() for p in rset)
        if any(p.strict_affinity for p in rset):
            raise PoolExhausted("no free address for node %s in pool %s (strictAffinity)" % (self.node, subnets),
                                "network %s: node %s owns %d block(s), all full; 0 unclaimed blocks; %d free "
                                "address(es) in blocks owned by other nodes, not borrowed because of strictAffinity"
                                % (pool.network, self.node, mine, free_elsewhere[0]))
        raise PoolExhausted("no free address in pool %s" % subnets,
                            "network %s: %d of %d usable addresses allocated; node %s owns %d block(s); "
                            "0 unclaimed blocks" % (pool.network, allocated, usable, self.node, mine))

    def _pick_in_pool(self, index: int, pool: Pool, deadline: float,
                      free_elsewhere: list[int] | None = None) -> _Pick | None:
        rng = pool.range
        # 1. the lowest free address in this node's blocks (lowest block first)
        with self._cache_lock:
            states = sorted(self._pool_states(pool.id).values(), key=lambda s: s.block.first)
            own = [s for s in states if s.node == self.node]
            for st in own:
                if st.taken is None:
                    continue
                value = rng.first_free(st.block.first, st.block.last, self._busy(pool, st.taken))
                if value is not None:
                    return _Pick(index, pool, st.block, value, "own", st.mod_revision)
        # our blocks look full or unloaded: reload them once (another actor may have released addresses)
        for st in own:
            taken = self._read_taken(pool.id, st.block, deadline)
            with self._cache_lock:
                st.taken = taken
            value = rng.first_free(st.block.first, st.block.last, self._busy(pool, taken))
            if value is not None:
                return _Pick(index, pool, st.block, value, "own", st.mod_revision)
        # 2. claim the lowest unclaimed block
        claimed = {s.block.first for s in states}
        for block in candidate_blocks(rng, self._block_prefix(pool), claimed):
            with self._cache_lock:
                foreign = self._cache.unclaimed_taken.get((pool.id, block.first), set())
            value = rng.first_free(block.first, block.last, self._busy(pool, foreign))
            if value is not None:
                return _Pick(index, pool, block, value, "claim")
        # 3. borrow from a block another node owns (decision 5 of field-cases.md)
        for st in states:
            if st.node == self.node:
                continue
            taken = self._read_taken(pool.id, st.block, deadline)
            with self._cache_lock:
                st.taken = taken
            if pool.strict_affinity:
                if free_elsewhere is not None:
                    free_elsewhere[0] += rng.usable_count(st.block.first, st.block.last) - sum(
                        1 for v in taken if rng.usable(v) and st.block.first <= v <= st.block.last)
                continue
            value = rng.first_free(st.block.first, st.block.last, self._busy(pool, taken))
            if value is not None:
                return _Pick(index, pool, st.block, value, "borrow", st.mod_revision)
        return None

    def _pool_spec(self, pool: Pool, block_prefix: int) -> bytes:
        rng = pool.range
        return dumps({"network": pool.network, "subnet": str(rng.subnet),
                      "rangeStart": str(to_ip(rng.family, rng.start)), "rangeEnd": str(to_ip(rng.family, rng.end)),
                      "gateway": str(to_ip(rng.family, rng.gateway)) if rng.gateway is not None else None,
                      "blockSize": block_prefix,
                      "exclude": ["%s-%s" % (to_ip(rng.family, lo), to_ip(rng.family, hi)) for lo, hi in rng.excludes]})

    def _commit_add(self, att: Attachment, netconf: NetConf, picks: list[_Pick], netns: str,
                    pod: dict[str, str], deadline: float) -> list[Allocation] | None:
        handle = att.handle
        allocations = tuple(Allocation(p.pool.id, p.pool.range.family, p.value, p.pool.range.prefixlen,
                                       p.pool.range.gateway) for p in picks)
        record = HandleRecord(att.network, att.container_id, att.if_name, self.node, allocations, netns, pod)
        hkey = handle_key(handle)
        compares = [Compare(hkey, "version", "==", 0)]
        success: list[Op] = [Put(hkey, record.encode())]
        failure: list[Op] = [Get(hkey)]
        pool_puts: dict[str, bytes] = {}
        for p, alloc in zip(picks, allocations):
            bkey = block_key(p.pool.id, p.block)
            compares.append(Compare(alloc.ip_key, "version", "==", 0))
            success.append(Put(alloc.ip_key, encode_ip_record(handle, self.node, p.pool.id)))
            if p.mode == "claim":
                compares.append(Compare(bkey, "version", "==", 0))
                success.append(Put(bkey, encode_block_record(self.node)))
                failure.append(Get(blocks_prefix(p.pool.id), prefix_end(blocks_prefix(p.pool.id))))
            else:
                compares.append(Compare(bkey, "mod", "==", p.block_revision))
                failure.append(Get(bkey))
            start, end = ips_range(att.network, p.block)
            failure.append(Get(start, end))
            # the pool record: created by the first claim (fixing the block size), rewritten only when the
            # configuration's range changed; a claim also proves the record (block size) it planned with
            with self._cache_lock:
                cached = self._cache.pools.get(p.pool.id)
            pkey = pool_key(p.pool.id)
            spec = self._pool_spec(p.pool, p.block.prefixlen if cached is None else cached[2])
            if cached is None:
                compares.append(Compare(pkey, "version", "==", 0))
            elif cached[0] != spec or p.mode == "claim":
                compares.append(Compare(pkey, "mod", "==", cached[1]))
            if cached is None or cached[0] != spec:
                success.append(Put(pkey, spec))
                pool_puts[p.pool.id] = spec
            failure.append(Get(pkey))
        res = self._txn("ADD", compares, success, failure, deadline)
        if res.succeeded:
            with self._cache_lock:
                for pool_id, spec in pool_puts.items():
                    self._cache.pools[pool_id] = (spec, res.revision, int(decode(spec)["blockSize"]))
            self._after_add(picks, record, res.revision)
            self.failpoints.hit("add.after_commit")
            return list(allocations)
        existing = res.reads[0]
        if existing:
            rec = HandleRecord.decode(existing[0].value)
            with self._cache_lock:
                self._cache.handles[handle] = (rec, existing[0].mod_revision)
            return self._existing(rec, {p.index: (p.pool, p.value) for p in picks if p.requested})
        self._learn_from_failure(picks, res.reads[1:])
        return None

    def _after_add(self, picks: list[_Pick], record: HandleRecord, revision: int) -> None:
        with self._cache_lock:
            self._cache.handles[record.handle] = (record, revision)
            for p in picks:
                states = self._pool_states(p.pool.id)
                st = states.get(p.block.first)
                if p.mode == "claim" or st is None:
                    foreign = self._cache.unclaimed_taken.pop((p.pool.id, p.block.first), set())
                    st = states[p.block.first] = _BlockState(p.block, self.node, revision, set(foreign))
                    self.metrics.block_claims.inc()
                if st.taken is not None:
                    st.taken.add(p.value)

    def _learn_from_failure(self, picks: list[_Pick], reads: tuple[tuple[KV, ...], ...]) -> None:
        """Refresh the cache from a failed ADD's reads (block record or pool block list, then the block's
        address records), and raise :class:`AddressUnavailable` for a requested address now known taken."""
        i = 0
        for p in picks:
            block_read, ips_read, pool_read = reads[i], reads[i + 1], reads[i + 2]
            i += 3
            with self._cache_lock:
                entry = self._pool_entry(pool_read[0]) if pool_read else None
                if entry is None:
                    self._cache.pools.pop(p.pool.id, None)
                else:
                    self._cache.pools[p.pool.id] = entry
            if p.mode == "claim":
                self._refresh_pool_blocks(p.pool.id, block_read)
            with self._cache_lock:
                states = self._pool_states(p.pool.id)
                if p.mode != "claim":
                    if block_read:
                        kv = block_read[0]
                        node = decode(kv.value).get("node", "")
                        states[p.block.first] = _BlockState(p.block, node, kv.mod_revision)
                    else:
                        states.pop(p.block.first, None)
                st = states.get(p.block.first)
                taken = {int(kv.key.rsplit("/", 1)[1], 16) for kv in ips_read}
                if st is not None:
                    st.taken = taken
                else:
                    self._cache.unclaimed_taken[(p.pool.id, p.block.first)] = taken
            if p.requested and p.value in taken:
                # a requested address someone else holds is final: 101, not a retry
                raise AddressUnavailable("requested address %s is already allocated"
                                         % to_ip(p.pool.range.family, p.value))

    # -- DEL -----------------------------------------------------------------------------------------------

    def delete(self, att: Attachment) -> int:
        """Release everything the attachment holds (by key, never by what a prevResult lists).

        Idempotent: an unknown or already released attachment succeeds and writes nothing (cni-conformance.md
        §2.2, field cases B10-B12). One transaction when the handle is cached, two otherwise. Returns the
        number of addresses released. Raises :class:`TryAgainLater` (11) when the release could not be recorded.
        """
        self._require_ready()
        deadline = time.monotonic() + self.request_timeout
        handle = att.handle
        hkey = handle_key(handle)
        with self._serialised(handle):
            with self._cache_lock:
                cached = self._cache.handles.get(handle)
            state: dict[str, Any] = {"record": cached[0] if cached else None, "rev": cached[1] if cached else 0}

            def attempt() -> int | None:
                rec: HandleRecord | None = state["record"]
                rev: int = state["rev"]
                success: list[Op] = []
                if rec is not None:
                    success = [*(Delete(a.ip_key) for a in rec.allocations), Delete(hkey)]
                self.failpoints.hit("del.before_commit")
                res = self._txn("DEL", [Compare(hkey, "mod", "==", rev)], success, [Get(hkey)], deadline)
                if res.succeeded:
                    self._after_delete(handle, rec)
                    return len(rec.allocations) if rec is not None else 0
                kvs = res.reads[0]
                state["record"] = HandleRecord.decode(kvs[0].value) if kvs else None
                state["rev"] = kvs[0].mod_revision if kvs else 0
                return None
            return self._retrying("DEL", deadline, attempt)  # type: ignore[no-any-return]

    def _after_delete(self, handle: str, rec: HandleRecord | None) -> None:
        with self._cache_lock:
            self._cache.handles.pop(handle, None)
            if rec is None:
                return
            # an address is unique per network, and may sit in blocks of several (overlapping) pools of it
            network = rec.network + "/"
            for pool_id, states in self._cache.blocks.items():
                if not pool_id.startswith(network):
                    continue
                subnet = Block.from_key(pool_id.rsplit("/", 1)[1])  # the pool's subnet, as a "block"
                for a in rec.allocations:
                    if a.family != subnet.family or not subnet.first <= a.value <= subnet.last:
                        continue
                    for st in states.values():  # blocks of one pool are few per node; usually one matches
                        if st.taken is not None and st.block.first <= a.value <= st.block.last:
                            st.taken.discard(a.value)
            for (pool_id, _first), taken in self._cache.unclaimed_taken.items():
                if pool_id.startswith(network):
                    taken.difference_update(a.value for a in rec.allocations)

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, att: Attachment) -> HandleRecord | None:
        """The attachment's record read from etcd (linearizable; never from the cache), or ``None``."""
        self._require_ready()
        return self._read_handle(att.handle)

    def list_attachments(self, network: str = "") -> list[HandleRecord]:
        """All attachments, or those of one ``network``, read from etcd in key order."""
        self._require_ready()
        prefix = handle_key(network + "/" if network else "")
        kvs, _ = self.store.read(prefix, prefix_end(prefix), self.etcd_timeout)
        return [HandleRecord.decode(kv.value) for kv in kvs]

    def check(self, att: Attachment, netconf: NetConf | None, prev_result: object) -> None:
        """CNI CHECK (cni-conformance.md §2.3): the attachment must hold an allocation, and every address of
        ``prev_result.ips`` inside our ranges must be one it holds. Read-only (B36).

        Raises :class:`CheckNoAllocation` (102), :class:`CheckMismatch` (103), :class:`TryAgainLater` (11).
        """
        rec = self.get(att)
        if rec is None:
            raise CheckNoAllocation("no allocation for container %s interface %s in network %s"
                                    % (att.container_id, att.if_name, att.network))
        held = {(a.family, a.value) for a in rec.allocations}
        ips = prev_result.get("ips") if isinstance(prev_result, dict) else None
        for entry in ips or ():
            text = entry.get("address") if isinstance(entry, dict) else None
            try:
                ip = ipaddress.ip_interface(text).ip if isinstance(text, str) else None
            except ValueError:
                ip = None
            if ip is None:
                continue
            ours = netconf.pool_for(ip) if netconf is not None else None
            if ours is None:
                continue
            if (ip.version, int(ip)) not in held:
                raise CheckMismatch("prevResult address %s is not allocated to container %s interface %s"
                                    % (text, att.container_id, att.if_name),
                                    "allocated: %s" % ", ".join(a.cidr for a in rec.allocations))

    def status(self, netconf: NetConf) -> None:
        """CNI STATUS: raise :class:`NotAvailable` (50) when ADD cannot be served (not ready, etcd unreachable,
        a range set with no free address). Read-only."""
        if not self.ready:
            raise NotAvailable("ipamd on node %s is not ready" % self.node)
        try:
            for rset in netconf.range_sets:
                if not any(self._has_free(pool) for pool in rset):
                    raise NotAvailable("no free address in pool %s" % ", ".join(str(p.range.subnet) for p in rset))
        except StoreUnavailable as exc:
            raise NotAvailable("etcd unavailable: %s" % exc.msg) from exc

    def _has_free(self, pool: Pool) -> bool:
        kvs, _ = self.store.read(blocks_prefix(pool.id), prefix_end(blocks_prefix(pool.id)), self.etcd_timeout)
        self._refresh_pool_blocks(pool.id, kvs)
        with self._cache_lock:
            states = list(self._pool_states(pool.id).values())
        if next(candidate_blocks(pool.range, self._block_prefix(pool), {s.block.first for s in states}), None):
            return True
        for st in states:
            taken = self._read_taken(pool.id, st.block)
            if pool.range.first_free(st.block.first, st.block.last, taken) is not None:
                return True
        return False

    def pool_usage(self) -> list[tuple[str, int, int]]:
        """``(pool id, usable, allocated)`` for every pool this daemon knows a record of; allocated is one
        count-only read per pool (addresses of the network inside the pool's subnet). For the metrics scrape."""
        from .check import pool_range

        with self._cache_lock:
            pools = [(pool_id, decode(entry[0])) for pool_id, entry in self._cache.pools.items()]
        out = []
        for pool_id, spec in pools:
            rng = pool_range(spec)
            if rng is None:
                continue
            first = Block(rng.family, rng.network, rng.prefixlen)
            start, end = ips_range(pool_network(pool_id), first)
            out.append((pool_id, rng.usable_count(), self.store.count(start, end, self.etcd_timeout)))
        return out

    # -- GC ------------------------------------------------------------------------------------------------

    def gc(self, network: str, valid: set[tuple[str, str]]) -> int:
        """Release every attachment of ``network`` allocated by this node whose (containerID, ifName) is not in
        ``valid`` (CNI GC, cni-conformance.md §2.6): the runtime's list names only the containers of its own node.
        Only this network's handles are read; other networks and other nodes are never touched.

        Snapshot rule (field case B15, decision 2): the revision R is taken first; a handle created after R is
        never released, and every delete compares the ``mod_revision`` it read. Deletes go in batches of at most
        :data:`GC_BATCH_OPS` operations (etcd's 128-op limit, B24). Continues past failures and then raises one
        :class:`TryAgainLater` summarising them; returns the number of attachments released.
        """
        self._require_ready()
        deadline = time.monotonic() + self.request_timeout
        with self._serialised("gc:" + network):
            prefix = handle_key(network + "/")
            _, snapshot_rev = self.store.read(prefix, None, self.etcd_timeout)  # revision R of the liveness set
            self.failpoints.hit("gc.after_snapshot")
            kvs, _ = self.store.read(prefix, prefix_end(prefix), self.etcd_timeout)
            stale: list[tuple[KV, HandleRecord]] = []
            for kv in kvs:
                if kv.create_revision > snapshot_rev:
                    continue
                rec = HandleRecord.decode(kv.value)
                # the runtime's keep-list names only this node's containers: another node's attachments are
                # not ours to judge (field case B21)
                if rec.node == self.node and (rec.container_id, rec.if_name) not in valid:
                    stale.append((kv, rec))
            failures: list[str] = []
            released = 0
            batch: list[tuple[KV, HandleRecord]] = []
            ops = 0

            def flush() -> None:
                nonlocal released, ops
                if batch:
                    released += self._gc_release(batch, deadline, failures)
                batch.clear()
                ops = 0

            for kv, rec in stale:
                try:
                    self.failpoints.hit("gc.before_delete")
                except RuntimeError as exc:
                    failures.append("%s: %s" % (rec.handle, exc))
                    continue
                need = len(rec.allocations) + 2
                if ops + need > GC_BATCH_OPS:
                    flush()
                batch.append((kv, rec))
                ops += need
            flush()
        self.metrics.gc_released.inc(released)
        if released:
            log.warning("GC released %d attachment(s) of network %s", released, network)
        if failures:
            raise TryAgainLater("GC of network %s released %d attachment(s), %d failed" %
                                (network, released, len(failures)), "; ".join(failures[:20]))
        return released

    def _gc_release(self, batch: list[tuple[KV, HandleRecord]], deadline: float, failures: list[str]) -> int:
        """Delete a batch in one transaction; on a failed compare fall back to one transaction per handle."""
        def ops_for(kv: KV, rec: HandleRecord) -> tuple[list[Compare], list[Op]]:
            deletes: list[Op] = [Delete(a.ip_key) for a in rec.allocations]
            return [Compare(kv.key, "mod", "==", kv.mod_revision)], deletes + [Delete(kv.key)]
        compares: list[Compare] = []
        success: list[Op] = []
        for kv, rec in batch:
            c, s = ops_for(kv, rec)
            compares += c
            success += s
        try:
            if self._txn("GC", compares, success, [], deadline).succeeded:
                for _, rec in batch:
                    self._after_delete(rec.handle, rec)
                return len(batch)
        except StoreUnavailable as exc:
            if len(batch) == 1:
                failures.append("%s: %s" % (batch[0][1].handle, exc.msg))
                return 0
        if len(batch) == 1:
            return 0  # changed since the snapshot (re-ADDed or released): not stale any more
        return sum(self._gc_release([item], deadline, failures) for item in batch)


class _Busy:
    """``value in busy``: taken in the block, or picked by a concurrent ADD of this daemon (same network)."""

    __slots__ = ("taken", "pending", "network", "family")

    def __init__(self, taken: set[int], pending: set[tuple[str, int, int]], network: str, family: int) -> None:
        self.taken, self.pending, self.network, self.family = taken, pending, network, family

    def __contains__(self, value: object) -> bool:
        return value in self.taken or (self.network, self.family, value) in self.pending


class _DeadlinePassed(Exception):
    """The request's deadline passed before its next etcd call (turned into code 11 with the last cause)."""


#: Operations per GC transaction, under etcd's default --max-txn-ops of 128.
GC_BATCH_OPS = 120
