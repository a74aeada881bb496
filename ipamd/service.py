"""The IPAM service: ADD, DEL, CHECK, GC and STATUS in CNI terms, wiring the policy, the cache, the transactions and
the store (docs/architecture.md).

Every write has one shape (docs/architecture.md "Requests and retries"): plan from the cache (pure policy, address
reserved) -> one transaction whose compares make a stale plan fail -> on failure learn from its reads, back off with
jitter and
retry within the request's deadline -> then a typed error (code 11). Correctness across nodes rests only on the
compares; inside one daemon, requests for one attachment are serialised.

Steady state (docs/etcd-layout.md): ADD into an owned block and DEL of a cached handle are one transaction each.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .batching import GroupCommit
from .cache import CachedHandle, NodeCache, Wait
from .concurrency import DeadlinePassed, KeyedLocks, remaining, retry_until
from .cooling import CoolingLeases, lease_is_gone
from .deepcheck import NamespaceInspector
from .domain.addr import Block, to_ip
from .domain.cni import Attachment
from .domain.errors import (
    AddressUnavailable,
    CheckMismatch,
    CheckNoAllocation,
    InvalidConfig,
    NotAvailable,
    PoolExhausted,
    TryAgainLater,
)
from .domain.model import (
    BLOCKS,
    POOLS,
    POOLSPECS,
    Allocation,
    HandleRecord,
    IpRecord,
    PoolRecord,
    blocks_prefix,
    cooling_range,
    handle_key,
    ip_key,
    ips_range,
    pool_network,
    pool_subnet,
    poolspec_key,
)
from .domain.netconf import NetConf, Pool
from .domain.policy import Exhausted, Load, Pick
from .domain.poolspec import PoolSpec, name_of_network, resolve, with_pool_routes
from .failpoints import Failpoints
from .gc import GarbageCollector
from .inventory import Inventory
from .metrics import Metrics
from .namedpools import PoolAdmin, PoolSpecCache
from .nodecheck import NodeCheck
from .reconciler import NetnsCheck, PassResult, Reconciler
from .store.base import KV, Get, Store, StoreRefused, StoreRejected, StoreUnavailable, TxnResult, prefix_end
from .txns import AddTxn, DelTxn, PlannedAddress, PoolGuard
from .watcher import ViewWatcher

log = logging.getLogger(__name__)

#: More blocks than this to load at once are read with one range read over the pool's subnet.
LOAD_ONE_BY_ONE = 4


@dataclass(slots=True)
class _AddState:
    """What one ADD carries from attempt to attempt: the blocks whose addresses it read, per pool."""

    fresh: dict[str, set[int]] = field(default_factory=dict)
    #: pools whose block list this ADD read again (at maxBlocksPerNode, before answering 100)
    blocks_read: set[str] = field(default_factory=set)


def _check_requested_pools(netconf: NetConf, requested: dict[int, tuple[Pool, int]]) -> None:
    """A requested address of a named pool must lie in a pool that is a candidate now (not draining, selected):
    raises :class:`AddressUnavailable` (101) otherwise (field case B27: no new allocation from a draining pool)."""
    for index, (pool, value) in requested.items():
        rset = netconf.range_sets[index] if index < len(netconf.range_sets) else ()
        if all(p.id != pool.id for p in rset):
            raise AddressUnavailable("requested address %s is in pool %s, which gives no new addresses here (draining, "
                                     "or not selected)" % (to_ip(pool.range.family, value), pool.network[1:]))


class IpamService:
    """The service layer shared by the CNI socket server and the gRPC API. Thread-safe.

    ``store`` is any :class:`ipamd.store.base.Store`; ``node`` this daemon's node name; ``request_timeout`` the
    deadline in seconds of one request including its retries; ``etcd_timeout`` of one etcd call; ``gc_timeout`` the
    budget of one background GC release; ``handle_limit`` the handle cache's bound; ``reconcile_interval`` and
    ``reconcile_grace`` the reconciler's (ipamd.reconciler; interval 0: off); ``inspector`` looks into
    namespaces for CHECK (:class:`ipamd.deepcheck.NamespaceInspector`; a double in tests); ``node_check`` refuses
    pools that overlap the node's own addresses and routes at ADD (:class:`ipamd.nodecheck.NodeCheck`; ``None``:
    no such check, as in the in-memory tests); ``node_labels`` this node's labels, matched by named pools'
    ``nodeSelector`` (docs/configuration.md "Named pools"); ``namespace_labels`` looks up a namespace's labels
    (Kubernetes mode: the Namespace object's, ``None`` when they are not known now; without it, only
    ``kubernetes.io/metadata.name``).
    """

    def __init__(self, store: Store, node: str, *, request_timeout: float = 8.0, etcd_timeout: float = 2.0,
                 gc_timeout: float = 300.0, handle_limit: int = 16384, metrics: Metrics | None = None,
                 failpoints: Failpoints | None = None, reconcile_interval: float = 0.0,
                 reconcile_grace: float = 600.0, inspector: NamespaceInspector | None = None,
                 node_check: NodeCheck | None = None, node_labels: Mapping[str, str] | None = None,
                 namespace_labels: Callable[[str], Mapping[str, str] | None] | None = None) -> None:
        self.store = store
        self.node = node
        self.request_timeout = request_timeout
        self.etcd_timeout = etcd_timeout
        self.metrics = metrics or Metrics()
        self.failpoints = failpoints or Failpoints()
        self.inspector = inspector or NamespaceInspector(timeout=min(5.0, request_timeout))
        self.node_check = node_check
        self.cache = NodeCache(node, handle_limit)
        self.node_labels: dict[str, str] = dict(node_labels or {})
        #: more labels of this node, looked up at each resolution (Kubernetes mode: the Node object's); the
        #: configured ``node_labels`` win on a conflict
        self.node_labels_source: Callable[[], Mapping[str, str] | None] | None = None
        self.namespace_labels = namespace_labels
        #: named pools' specs (ipamd.namedpools), synced with the view and followed by its watch
        self.specs = PoolSpecCache()
        self.pool_admin = PoolAdmin(store, request_timeout, self.failpoints)
        self.ready = False
        #: why ADD cannot be served although the first sync is done ("" when it can); STATUS answers 50 with it
        self.unhealthy = ""
        self.revision = 0
        self._locks = KeyedLocks()
        self._specs: dict[tuple[str, object, int, int], bytes] = {}
        self.group = GroupCommit(store, on_send=self._sent)
        #: the leases of the cooling records this daemon's releases write (B09; ipamd.cooling)
        self.cooling = CoolingLeases(store)
        self.watcher = ViewWatcher(store, self.cache, self.sync, self.specs)
        # the netns check looks inside each namespace once per pass (docs/namespace-checks.md "Reconciler")
        self.reconciler = Reconciler(store, self.cache, node, checks=[NetnsCheck(look=self.inspector.presence)],
                                     interval=reconcile_interval, grace=reconcile_grace, etcd_timeout=etcd_timeout,
                                     metrics=self.metrics, cooling=self.cooling)
        self.gc_runner = GarbageCollector(store, self.cache, node, metrics=self.metrics, failpoints=self.failpoints,
                                          etcd_timeout=etcd_timeout, gc_timeout=gc_timeout, cooling=self.cooling)
        #: pools, blocks, usage and filtered attachment lists, each read at one etcd revision (read-only; answers
        #: while not ready too: an operator needs them most when something is wrong)
        self.inventory = Inventory(store, request_timeout)

    def _sent(self, parts: int) -> None:
        self.metrics.etcd_round_trips.inc()
        self.metrics.etcd_batch_parts.observe(parts)

    # -- start-up ------------------------------------------------------------------------------------------------

    def sync(self) -> int:
        """Read every pool and block record at one revision and rebuild the cache from them (the addresses of this
        node's blocks are loaded when an ADD first needs them). Returns the revision read.

        Raises :class:`StoreUnavailable` (11) if etcd cannot be read. Idempotent; :meth:`set_ready` follows it.
        """
        res = self.store.txn([], [Get(POOLS, prefix_end(POOLS)), Get(BLOCKS, prefix_end(BLOCKS)),
                                  Get(POOLSPECS, prefix_end(POOLSPECS))], [], max(self.etcd_timeout, 5.0))
        pools, blocks, specs = res.reads
        self.specs.replace(specs)
        self.cache.replace(pools, blocks, res.revision)
        self.revision = res.revision
        return res.revision

    def set_ready(self) -> None:
        """Start serving ADD (until then ADD/DEL/CHECK/GC answer code 11 and STATUS 50)."""
        self.ready = True
        self.metrics.ready.set(1)

    def _require_ready(self) -> None:
        if not self.ready:
            raise TryAgainLater("ipamd on node %s is not ready: first sync with etcd not done" % self.node)

    def _txn(self, verb: str, txn: AddTxn | DelTxn, deadline: float, batch: bool = False) -> TxnResult:
        """One transaction within the request's deadline; ``batch``: it may share a round trip with concurrent ones
        (ipamd.batching: only when that equals sending them one by one)."""
        timeout = min(remaining(deadline), self.etcd_timeout)
        self.metrics.child(self.metrics.etcd_txns, verb).inc()
        if batch:  # etcd errors are counted by the store's hook (ipamd_etcd_errors_total{kind})
            return self.group.txn(txn.compares, txn.success, txn.failure, timeout)
        self._sent(1)  # one transaction, one round trip: the batch histogram counts it as a batch of one
        return self.store.txn(txn.compares, txn.success, txn.failure, timeout)

    def _read(self, key: str, range_end: str | None, deadline: float | None = None) -> tuple[KV, ...]:
        timeout = self.etcd_timeout if deadline is None else min(remaining(deadline), self.etcd_timeout)
        return self.store.read(key, range_end, timeout)[0]

    # -- named pools ---------------------------------------------------------------------------------------------

    def resolve(self, netconf: NetConf, namespace: str = "", *, include_draining: bool = False,
                any_namespace: bool = False, deadline: float | None = None) -> NetConf:
        """``netconf`` with its named pools (``ipam.pools``) resolved into range sets for a pod of ``namespace`` on
        this node (:func:`ipamd.domain.poolspec.resolve`: selectors, draining, the first matching pool first). Specs
        come from the cache; a name it does not know is read from etcd first, so a pool created a moment ago
        through any daemon is found. A configuration of ranges is returned as it is.

        Raises :class:`~ipamd.domain.errors.InvalidConfig` (7: unknown pool, nothing selects the pod),
        :class:`PoolExhausted` (100: every selected pool is draining), :class:`TryAgainLater` (11).
        """
        if not netconf.pool_names:
            return netconf
        names = [n for rset in netconf.pool_names for n in rset]
        specs = self.specs.subset(names)
        for name in names:
            if name not in specs:
                kvs = self._read(poolspec_key(name), None, deadline)
                self.specs.learned(name, kvs[0] if kvs else None)
                found = self.specs.get(name)
                if found is not None:
                    specs[name] = found
                elif kvs:  # a spec is stored but not valid: say so, not "unknown pool ... create it"
                    try:
                        PoolSpec.decode(kvs[0].value, name)
                    except ValueError as exc:
                        raise InvalidConfig("pool %s: the stored spec %s%s is not valid (%s)"
                                            % (name, POOLSPECS, name, exc),
                                            "ipamctl check reports it; delete it (ipamctl pool delete %s) and "
                                            "create it again" % name) from None
        labels = self.namespace_labels(namespace) if self.namespace_labels is not None and namespace else None
        unknown = self.namespace_labels is not None and bool(namespace) and labels is None
        node_labels = self.node_labels
        if self.node_labels_source is not None:
            node_labels = {**(self.node_labels_source() or {}), **self.node_labels}
        return resolve(netconf, specs, self.node, node_labels, namespace, labels,
                       include_draining=include_draining, any_namespace=any_namespace, namespace_unknown=unknown)

    def with_pool_routes(self, netconf: NetConf, allocations: list[Allocation] | tuple[Allocation, ...]) -> NetConf:
        """``netconf`` with the routes of the named pools ``allocations`` came from appended (their specs as this
        daemon knows them); unchanged for a configuration of ranges. For the CNI result and the handle record."""
        if not netconf.pool_names:
            return netconf
        names = dict.fromkeys(n for a in allocations if (n := name_of_network(pool_network(a.pool_id))) is not None)
        specs = self.specs.subset(names)
        return with_pool_routes(netconf, (specs[n][0] for n in names if n in specs))

    # -- ADD -----------------------------------------------------------------------------------------------------

    def add(self, att: Attachment, netconf: NetConf, *, requested: dict[int, tuple[Pool, int]] | None = None,
            netns: str = "", pod: dict[str, str] | None = None,
            requested_of: Callable[[NetConf], dict[int, tuple[Pool, int]]] | None = None) -> list[Allocation]:
        """Allocate one address per range set of ``netconf`` for ``att``, all or nothing, in one transaction.

        Idempotent: if the attachment already holds addresses they are returned unchanged and nothing is written
        (docs/conformance.md T42, field case B06), also when its named pools cannot be resolved now (a namespace's
        labels unknown, a pool drained, deleted or no longer selecting the pod). ``requested`` maps range-set index
        -> (pool, address) that must be honoured exactly; or ``requested_of(resolved netconf)`` gives them once the
        named pools are resolved (the CNI and gRPC callers: requested addresses are looked up in the named pools).
        Raises :class:`PoolExhausted` (100), :class:`AddressUnavailable` (101),
        :class:`TryAgainLater` (11: not ready, etcd unreachable, deadline passed, a namespace's labels unknown),
        :class:`~ipamd.domain.errors.InvalidConfig` (7) when a pool overlaps the node's own addresses or routes
        (``node_check``; before anything is read or written).
        """
        self._require_ready()
        deadline = time.monotonic() + self.request_timeout
        try:
            resolved = self.resolve(netconf, (pod or {}).get("namespace", ""), include_draining=True,
                                    deadline=deadline)
        except (TryAgainLater, InvalidConfig, PoolExhausted):
            existing = self._read_handle(att.handle, deadline)  # B06, T42: a retried ADD answers what it holds
            if existing is None:
                raise
            return self._existing(existing, {})
        if requested_of is not None:
            requested = requested_of(resolved)
        if self.node_check is not None:
            self.node_check.require(resolved, self.cache.block_prefix)
        wanted = requested or {}
        state = _AddState()
        with self._locks.hold(att.handle):
            return retry_until(deadline, "ADD",
                               lambda: self._add_once(att, netconf, wanted, netns, pod or {}, state, deadline),
                               self.metrics.child(self.metrics.cas_conflicts, "ADD").inc,
                               self.metrics.child(self.metrics.retries, "ADD").inc)

    def _add_once(self, att: Attachment, netconf: NetConf, requested: dict[int, tuple[Pool, int]], netns: str,
                  pod: dict[str, str], state: _AddState, deadline: float) -> list[Allocation] | None:
        planned: list[PlannedAddress] = []
        try:
            try:
                # named pools are resolved again on every attempt: a failed compare on a spec taught the cache
                netconf = self.resolve(netconf, pod.get("namespace", ""), deadline=deadline)
                if netconf.pool_names:
                    _check_requested_pools(netconf, requested)
                for index, rset in enumerate(netconf.range_sets):
                    planned.append(self._plan(index, rset, requested.get(index), state, deadline))
            except (PoolExhausted, AddressUnavailable, InvalidConfig):
                # a retried ADD of an attachment that already holds its addresses must succeed even when the pool
                # is now full, its requested address is (by itself) taken (B06, T42), or the pool's new
                # configuration cannot be used yet (its gateway is a pod's, its blocks too small for block mode)
                existing = self._read_handle(att.handle, deadline)
                if existing is not None:
                    return self._existing(existing, requested)
                raise
            self.failpoints.hit("add.after_pick")
            routed = self.with_pool_routes(netconf, [Allocation(p.pool.id, p.pool.range.family, p.pick.value,
                                                                p.pool.range.prefixlen, None) for p in planned])
            return self._commit_add(att, planned, netns, pod, tuple((r.dst, r.gw) for r in routed.routes), deadline,
                                    dict(netconf.spec_revisions))
        finally:
            for p in planned:
                self.cache.settle(p.pool, p.pick, p.requested)

    def _plan(self, index: int, rset: tuple[Pool, ...], requested: tuple[Pool, int] | None, state: _AddState,
              deadline: float) -> PlannedAddress:
        if requested is not None:
            pool, value = requested
            decision = self.cache.plan(pool, value)
            if isinstance(decision, Load):  # block mode: the block's addresses first (is its gateway a pod's?)
                self._load(pool, decision.blocks, deadline)
                decision = self.cache.plan(pool, value)
            if not isinstance(decision, Pick):  # choose_requested answers a Pick (or a Load once) or raises
                raise TryAgainLater("no plan for requested address %s" % to_ip(pool.range.family, value))
            return PlannedAddress(index, pool, decision, True, self._settled_guard(pool, decision, True))
        exhausted: list[tuple[Pool, Exhausted]] = []
        for pool in rset:
            fresh = state.fresh.setdefault(pool.id, set())
            while True:
                decision = self.cache.plan(pool, fresh=fresh)
                if isinstance(decision, Pick):
                    return PlannedAddress(index, pool, decision, False, self._settled_guard(pool, decision, False))
                if isinstance(decision, Wait):
                    if not decision.event.wait(remaining(deadline)):
                        raise DeadlinePassed()
                    continue
                if isinstance(decision, Load):
                    self._load(pool, decision.blocks, deadline)
                    fresh.update(b.first for b in decision.blocks)
                    continue
                if decision.limit and pool.id not in state.blocks_read:
                    # at maxBlocksPerNode no claim teaches us the block list: read it once before answering 100,
                    # so a block the watch has not delivered yet can still be borrowed from
                    state.blocks_read.add(pool.id)
                    prefix = blocks_prefix(pool.id)
                    kvs, revision = self.store.read(prefix, prefix_end(prefix),
                                                    min(remaining(deadline), self.etcd_timeout))
                    self.cache.blocks_read(pool.id, kvs, revision)
                    continue
                exhausted.append((pool, decision))
                break
        raise self._exhausted(exhausted)

    def _load(self, pool: Pool, blocks: tuple[Block, ...], deadline: float) -> None:
        """Read the address records of ``blocks`` into the cache: one range read each, or one over the pool's
        subnet when there are many (only on the way to exhaustion: our full blocks, other nodes' blocks). In a pool
        with a cooldown the block's cooling records come with its address records, in the same round trip."""
        if pool.cooldown > 0:
            for block in blocks:
                start, end = ips_range(pool.network, block)
                cstart, cend = cooling_range(pool.network, block)
                res = self.store.txn([], [Get(start, end), Get(cstart, cend)], [],
                                     min(remaining(deadline), self.etcd_timeout))
                self.cache.loaded(pool, block, res.reads[0], res.revision, res.reads[1])
            return
        if len(blocks) <= LOAD_ONE_BY_ONE:
            for block in blocks:
                start, end = ips_range(pool.network, block)
                kvs, revision = self.store.read(start, end, min(remaining(deadline), self.etcd_timeout))
                self.cache.loaded(pool, block, kvs, revision)
            return
        subnet = Block(pool.range.family, pool.range.network, pool.range.prefixlen)
        start, end = ips_range(pool.network, subnet)
        kvs, revision = self.store.read(start, end, min(remaining(deadline), self.etcd_timeout))
        by_block: dict[int, list[KV]] = {b.first: [] for b in blocks}
        size = blocks[0].last - blocks[0].first + 1
        for kv in kvs:
            value = int(kv.key.rsplit("/", 1)[1], 16)
            first = value - ((value - pool.range.network) % size)
            if first in by_block:
                by_block[first].append(kv)
        for block in blocks:
            self.cache.loaded(pool, block, by_block[block.first], revision)

    def _exhausted(self, found: list[tuple[Pool, Exhausted]]) -> PoolExhausted:
        pool = found[0][0]
        subnets = ", ".join(str(p.range.subnet) for p, _ in found)
        owned = sum(e.owned for _, e in found)
        self.metrics.pool_exhausted.labels(pool.id).inc()
        limits = [e.limit for _, e in found if e.limit]
        # at maxBlocksPerNode the unclaimed blocks were not looked at: say why instead of counting them
        unclaimed = ("maxBlocksPerNode %d reached, so no further block is claimed (unclaimed blocks may remain)"
                     % limits[0]) if limits else "0 unclaimed blocks"
        if any(p.strict_affinity for p, _ in found):
            reason = "maxBlocksPerNode, strictAffinity" if limits else "strictAffinity"
            return PoolExhausted("no free address for node %s in pool %s (%s)" % (self.node, subnets, reason),
                                 "network %s: node %s owns %d block(s), all full; %s; %d free "
                                 "address(es) in blocks owned by other nodes, not borrowed because of "
                                 "strictAffinity" % (pool.network, self.node, owned, unclaimed,
                                                     sum(e.free_elsewhere for _, e in found)))
        usable = sum(p.range.usable_count() for p, _ in found)
        return PoolExhausted("no free address in pool %s" % subnets,
                             "network %s: %d of %d usable addresses allocated; node %s owns %d block(s); %s"
                             % (pool.network, sum(e.allocated for _, e in found), usable, self.node, owned,
                                unclaimed))

    def _settled_guard(self, pool: Pool, pick: Pick, requested: bool) -> PoolGuard:
        """:meth:`_guard`, ending the pick's reservation (and a claim in flight) when it raises: the pick is not
        planned yet, so :meth:`_add_once` would not settle it."""
        try:
            return self._guard(pool, pick)
        except BaseException:
            self.cache.settle(pool, pick, requested)
            raise

    def _guard(self, pool: Pool, pick: Pick) -> PoolGuard:
        """The pool record part of an ADD: created by the first claim (fixing the block size), rewritten only when
        the configuration's range changed; a claim also proves the record (block size) it planned with."""
        record, raw, revision = self.cache.pool_record(pool.id)
        prefix = pick.block.prefixlen if record is None else record.block_prefix
        spec = self._spec(pool, prefix)
        if raw != spec and (record is not None or self._overlapped(pool)):
            self._gateway_free(pool)  # a changed configuration, or a new pool over another of the network
        if record is None:
            return PoolGuard(("version", 0), spec)
        if raw != spec:
            return PoolGuard(("mod", revision), spec)
        return PoolGuard(("mod", revision) if pick.mode == "claim" else None, None)

    def _overlapped(self, pool: Pool) -> bool:
        """True if the view knows another pool of ``pool``'s network whose subnet holds ``pool``'s gateway (a
        widened or moved subnet): only then can a new pool's gateway already be a pod's address. No I/O."""
        gw = pool.range.gateway
        if gw is None:
            return False
        for pid in self.cache.pool_ids():
            if pid == pool.id or pool_network(pid) != pool.network:
                continue
            try:
                other = pool_subnet(pid)
            except ValueError:
                continue
            if other.family == pool.range.family and other.first <= gw <= other.last:
                return True
        return False

    def _gateway_free(self, pool: Pool) -> None:
        """Before an ADD writes a pool record (the configuration changed: another mode, another gateway; or a new
        pool over a network's live addresses, e.g. a widened subnet), make sure the pool-wide gateway it would hand
        out is not a live pod's address (allocated in ``pointToPoint`` mode, which reserves no gateway, or in
        ``block`` mode, or before the gateway moved): every new pod would get
        that pod's address as its gateway, and ``bridge`` with ``isGateway`` would put it on the node. Raises
        :class:`InvalidConfig` (7) naming the holder; the record keeps its old configuration until the pod is gone
        (docs/decisions.md "Gateway modes"). One read, only when the record is written. Raises the store's errors."""
        gw = pool.range.gateway
        if gw is None:
            return
        kvs, _ = self.store.read(ip_key(pool.network, pool.range.family, gw), None, self.etcd_timeout)
        if not kvs:
            return
        try:
            holder = IpRecord.decode(kvs[0].value).handle
        except ValueError:
            holder = "an undecodable address record"
        raise InvalidConfig("gateway %s of pool %s is the address of %s (allocated under the pool's previous "
                            "configuration)" % (to_ip(pool.range.family, gw), pool.range.subnet, holder),
                            "every new pod would get that pod's address as its gateway: DEL it (or keep the "
                            "previous gatewayMode/gateway) before switching the network's configuration")

    def _spec(self, pool: Pool, prefix: int) -> bytes:
        """The pool record this configuration asks for (its cooldown included, so every release path can read it)."""
        key = (pool.id, pool.range, prefix, pool.cooldown)
        spec = self._specs.get(key)
        if spec is None:
            if len(self._specs) > 1024:
                self._specs.clear()
            spec = self._specs[key] = PoolRecord(pool.network, pool.range, prefix, pool.cooldown).encode()
        return spec

    def _commit_add(self, att: Attachment, planned: list[PlannedAddress], netns: str, pod: dict[str, str],
                    routes: tuple[tuple[str, str | None], ...], deadline: float,
                    spec_revisions: dict[str, int] | None = None) -> list[Allocation] | None:
        allocations = tuple(Allocation(p.pool.id, p.pool.range.family, p.pick.value,
                                       *p.pool.range.pod_address(p.pick.value, p.pick.block.prefixlen))
                            for p in planned)
        # the reconciler may judge this attachment by its netns only if this daemon can see it (docs/architecture.md)
        record = HandleRecord(att.network, att.container_id, att.if_name, self.node, allocations, netns, pod,
                              routes, netns_seen=bool(netns) and os.path.exists(netns))
        used = {name for p in planned if (name := name_of_network(p.pool.network)) is not None}
        specs = {n: r for n, r in (spec_revisions or {}).items() if n in used}
        txn = AddTxn(att.handle, record.encode(), self.node, att.network, planned, specs)
        # claims and pool record writes go alone: they are the contended ones, and their failure reads matter
        alone = any(p.pick.mode == "claim" or p.guard.put is not None for p in planned)
        res = self._txn("ADD", txn, deadline, batch=not alone)
        if res.succeeded:
            puts = {p.pool.id: (PoolRecord.decode(p.guard.put), p.guard.put) for p in planned
                    if p.guard.put is not None}
            self.cache.committed_add(record, [(p.pool, p.pick) for p in planned], res.revision, puts)
            for p in planned:
                if p.pick.mode == "claim":
                    self.metrics.block_claims.inc()
                elif p.pick.mode == "borrow":
                    self.metrics.child(self.metrics.borrowed, p.pool.id).inc()
                if p.pick.bypass:
                    self.metrics.child(self.metrics.cooldown_bypass, p.pool.id).inc()
                    log.info("ADD: only addresses in their cooldown were left in pool %s; gave %s, whose cooldown "
                             "began earliest (revision %d)", p.pool.id, to_ip(p.pool.range.family, p.pick.value),
                             p.pick.cooling_revision, extra={"container_id": att.container_id,
                                                             "if_name": att.if_name, "network": att.network})
            self.failpoints.hit("add.after_commit")
            return list(allocations)
        failure = txn.decode_failure(res)
        for name, kv in failure.specs.items():
            self.specs.learned(name, kv)
        if failure.handle is not None:
            existing = HandleRecord.decode(failure.handle.value)
            self.cache.put_handle(att.handle, CachedHandle(failure.handle.mod_revision, existing.ip_keys))
            return self._existing(existing, {p.index: (p.pool, p.pick.value) for p in planned if p.requested})
        for p in planned:
            reads = failure.addresses[p.index]
            taken = self.cache.learned(p.pool, p.pick, reads.blocks, reads.ips, reads.pool, res.revision,
                                       reads.cooling)
            if p.requested and p.pick.value in taken:
                # a requested address someone else holds is final: 101, not a retry
                raise AddressUnavailable("requested address %s is already allocated"
                                         % to_ip(p.pool.range.family, p.pick.value))
        return None

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

    def _read_handle(self, handle: str, deadline: float | None = None) -> HandleRecord | None:
        kvs = self._read(handle_key(handle), None, deadline)
        if not kvs:
            return None
        rec = HandleRecord.decode(kvs[0].value)
        self.cache.put_handle(handle, CachedHandle(kvs[0].mod_revision, rec.ip_keys))
        return rec

    # -- DEL -----------------------------------------------------------------------------------------------------

    def delete(self, att: Attachment) -> int:
        """Release everything the attachment holds (by key, never by what a prevResult lists).

        Idempotent: an unknown or already released attachment succeeds and writes nothing (docs/cni-contract.md
        §2.2, field cases B10-B12). One transaction when the handle is cached, two otherwise. An address whose pool
        has a cooldown gets its cooling record in the same transaction (B09; a lease grant first, once per lease
        window: ipamd.cooling). Returns the number of addresses released. Raises :class:`TryAgainLater` (11) when the
        release could not be recorded.
        """
        self._require_ready()
        deadline = time.monotonic() + self.request_timeout
        handle = att.handle
        with self._locks.hold(handle):
            cached = self.cache.handle(handle)
            known: list[CachedHandle] = [cached if cached is not None else CachedHandle(0, ())]

            def once() -> int | None:
                for _ in range(2):  # a failure that teaches us the record is retried at once, not after a backoff
                    revision, keys = known[0]
                    cooling = self.cooling.puts(keys, self.cache.cooldown_of,
                                                min(remaining(deadline), self.etcd_timeout)) if revision else {}
                    txn = DelTxn(handle, revision, keys, tuple(cooling.values()))
                    self.failpoints.hit("del.before_commit")
                    try:
                        res = self._txn("DEL", txn, deadline, batch=revision != 0)
                    except (StoreRejected, StoreUnavailable) as exc:
                        # etcd answers NOT_FOUND ("requested lease not found"), which the store reports as
                        # unavailable (a write) or rejected (the memory store)
                        if not lease_is_gone(exc):
                            raise
                        self.cooling.forget()  # the lease ended before its window did (etcd restored?): new one
                        continue
                    if res.succeeded:
                        self.cache.released(handle, keys, res.revision, cooling)
                        return len(keys)
                    kv = txn.decode_failure(res)
                    known[0] = CachedHandle(kv.mod_revision, self._keys_to_release(kv)) if kv is not None \
                        else CachedHandle(0, ())
                return None
            return retry_until(deadline, "DEL", once, self.metrics.child(self.metrics.cas_conflicts, "DEL").inc,
                               self.metrics.child(self.metrics.retries, "DEL").inc)

    @staticmethod
    def _keys_to_release(kv: KV) -> tuple[str, ...]:
        """The address record keys a handle lists; an undecodable handle is released by its key alone (its address
        records, if any, are for the repair path: ipamctl check)."""
        try:
            return HandleRecord.decode(kv.value).ip_keys
        except ValueError:
            log.warning("DEL: handle %s is not a valid record; deleting the key alone", kv.key)
            return ()

    # -- reads ---------------------------------------------------------------------------------------------------

    def get(self, att: Attachment) -> HandleRecord | None:
        """The attachment's record read from etcd (linearizable; never from the cache), or ``None``."""
        self._require_ready()
        return self._read_handle(att.handle)

    def list_attachments(self, network: str = "") -> list[HandleRecord]:
        """All attachments, or those of one ``network``, read from etcd in key order."""
        self._require_ready()
        prefix = handle_key(network + "/" if network else "")
        return [HandleRecord.decode(kv.value) for kv in self._read(prefix, prefix_end(prefix))]

    def node_attachments(self, network: str = "", container_id: str = "") -> list[HandleRecord]:
        """This node's attachments (handles whose ``node`` is this daemon's), of one ``network`` and one
        ``container_id`` when given, read from etcd in key order: one range read over the handles (of the network,
        or of every network). Raises :class:`TryAgainLater` (11)."""
        return [r for r in self.list_attachments(network)
                if r.node == self.node and (not container_id or r.container_id == container_id)]

    def check(self, att: Attachment, netconf: NetConf | None, prev_result: object, netns: str = "") -> list[str]:
        """CNI CHECK (docs/cni-contract.md §2.3): the attachment must hold an allocation, and every address of
        ``prev_result.ips`` inside our ranges must be one it holds. Read-only (B36).

        Then, unless ``netconf.check_netns`` is off, the deep check inside ``netns`` (``CNI_NETNS``;
        docs/namespace-checks.md): the interface is up, holds the allocations, has the result's routes. Returns notes
        for stderr (the namespace is not there, so CHECK compared the store only).

        Raises :class:`CheckNoAllocation` (102), :class:`CheckMismatch` (103), :class:`TryAgainLater` (11), and
        from the deep check ``CheckInterfaceMissing`` (110), ``CheckInterfaceDown`` (111), ``CheckAddressMismatch``
        (112), ``CheckRouteMissing`` (113).
        """
        rec = self.get(att)
        if netconf is not None:
            netconf = self.resolve(netconf, rec.pod.get("namespace", "") if rec is not None else "",
                                   include_draining=True)
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
            if ip is None or netconf is None or netconf.pool_for(ip) is None:
                continue
            if (ip.version, int(ip)) not in held:
                raise CheckMismatch("prevResult address %s is not allocated to container %s interface %s"
                                    % (text, att.container_id, att.if_name),
                                    "allocated: %s" % ", ".join(a.cidr for a in rec.allocations))
        if netconf is None or not netconf.check_netns or not netns:
            return []
        note = self.inspector.check(rec, tuple((r.dst, r.gw) for r in netconf.routes), netns, att.if_name)
        return [note] if note else []

    def status(self, netconf: NetConf) -> None:
        """CNI STATUS: raise :class:`NotAvailable` (50) when ADD cannot be served (not ready, etcd unreachable, a
        range set with no free address). One count-only read per pool. Read-only."""
        if not self.ready:
            raise NotAvailable("ipamd on node %s is not ready" % self.node)
        if self.unhealthy:  # set by the daemon's readiness probe (etcd alarm, permission, unreachable: B45)
            raise NotAvailable("ipamd on node %s cannot serve ADD now: %s" % (self.node, self.unhealthy))
        try:
            try:
                netconf = self.resolve(netconf, any_namespace=True)
            except PoolExhausted as exc:  # every pool of a range set is draining
                raise NotAvailable(exc.msg, exc.details) from exc
            for rset in netconf.range_sets:
                if not any(self._free(pool) > 0 for pool in rset):
                    raise NotAvailable("no free address in pool %s" % ", ".join(str(p.range.subnet) for p in rset))
        except (StoreUnavailable, StoreRefused) as exc:
            raise NotAvailable("etcd unavailable: %s" % exc.msg) from exc

    def _free(self, pool: Pool) -> int:
        """Usable addresses of the pool's range minus the address records inside it (a count-only read)."""
        rng = pool.range
        start, end = ips_range(pool.network, Block(rng.family, rng.network, rng.prefixlen))
        return rng.usable_count() - self.store.count(start, end, self.etcd_timeout)

    def pool_usage(self) -> list[tuple[str, int, int]]:
        """``(pool id, usable, allocated)`` for every pool this daemon knows a record of; allocated is one count-only
        read per pool (addresses of the network inside the pool's subnet). For the metrics scrape."""
        out = []
        for pool_id in self.cache.pool_ids():
            record = self.cache.pool_record(pool_id)[0]
            if record is None:
                continue
            rng = record.range
            start, end = ips_range(pool_network(pool_id), Block(rng.family, rng.network, rng.prefixlen))
            out.append((pool_id, rng.usable_count(), self.store.count(start, end, self.etcd_timeout)))
        return out

    def reconcile(self, dry_run: bool) -> PassResult:
        """One reconciler pass now (ipamd.reconciler; ``ipamctl gc``). Raises :class:`TryAgainLater` (11) when not
        ready or when etcd cannot be read."""
        self._require_ready()
        return self.reconciler.run(dry_run)

    # -- GC ------------------------------------------------------------------------------------------------------

    def gc(self, network: str, valid: set[tuple[str, str]]) -> int:
        """CNI GC of ``network`` with the runtime's keep-list ``valid`` (see :mod:`ipamd.gc`). Returns the number of
        attachments released; raises :class:`TryAgainLater` (11), never anything else."""
        self._require_ready()
        return self.gc_runner.collect(network, valid, time.monotonic() + self.request_timeout)
