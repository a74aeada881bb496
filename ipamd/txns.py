"""One transaction type per operation: each builds its etcd request and decodes its own failure reads, by name.

The shapes are those of docs/etcd-layout.md "Transactions". The object that built a request is the only one that
knows where each failure read sits, so a caller never indexes ``reads[i]``: it asks the transaction for the
decoded result (``AddTxn.failure(result)`` -> :class:`AddFailure`). Pure: nothing here does I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field

from .domain.addr import Block
from .domain.model import (
    IpRecord,
    block_key,
    blocks_prefix,
    cooling_key,
    cooling_range,
    encode_block_record,
    handle_key,
    ip_key,
    ips_range,
    pool_key,
    pool_network,
    poolspec_key,
)
from .domain.netconf import Pool
from .domain.policy import Pick
from .store.base import KV, Compare, Delete, Get, Op, Put, StoreRejected, TxnResult, prefix_end

#: Operations per transaction list that we allow ourselves, under etcd's default ``--max-txn-ops`` of 128 (B24).
MAX_TXN_OPS = 120


class _Reads:
    """Failure-branch reads registered under a name; :meth:`decode` maps a result's reads back to the names."""

    __slots__ = ("names", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.names: list[str] = []

    def add(self, name: str, op: Get) -> None:
        self.ops.append(op)
        self.names.append(name)

    def decode(self, result: TxnResult) -> dict[str, tuple[KV, ...]]:
        if len(result.reads) != len(self.names):
            raise ValueError("transaction returned %d reads, %d were asked for" % (len(result.reads), len(self.names)))
        return dict(zip(self.names, result.reads, strict=True))


@dataclass(frozen=True, slots=True)
class PlannedAddress:
    """One address of an ADD: range-set ``index``, its ``pool``, the policy's ``pick``, whether it was
    ``requested`` by the caller, and the pool record guard (see :class:`PoolGuard`)."""

    index: int
    pool: Pool
    pick: Pick
    requested: bool
    guard: PoolGuard


@dataclass(frozen=True, slots=True)
class PoolGuard:
    """What an ADD does with the pool record: ``compare`` is ``("version", 0)`` (the record must not exist yet),
    ``("mod", R)`` (it must still be the one read at R) or ``None``; ``put`` the new record bytes or ``None``."""

    compare: tuple[str, int] | None
    put: bytes | None


@dataclass(frozen=True, slots=True)
class AddressReads:
    """What a failed ADD read for one of its addresses.

    ``blocks``: for a claim, every block record of the pool (who won what); otherwise the block record itself
    (empty when the block is gone). ``ips``: the address records of the block. ``pool``: the pool record, or None.
    ``cooling``: the cooling records of the block (B09).
    """

    blocks: tuple[KV, ...]
    ips: tuple[KV, ...]
    pool: KV | None
    cooling: tuple[KV, ...] = ()


@dataclass(frozen=True, slots=True)
class AddFailure:
    """A failed ADD: ``handle`` is the attachment's record when it already exists (a retried or concurrent ADD),
    and ``addresses`` maps range-set index -> :class:`AddressReads`."""

    handle: KV | None
    addresses: dict[int, AddressReads] = field(default_factory=dict)
    #: named pool -> its spec as read (None: deleted), for every spec the ADD compared
    specs: dict[str, KV | None] = field(default_factory=dict)


class AddTxn:
    """ADD (docs/etcd-layout.md "Transactions"): ``IF handle.version == 0 AND ip.version == 0 AND cooling guard AND
    block guard AND pool guard (per address) THEN put handle, ips (and claimed blocks, pool records; delete the
    cooling records overridden) ELSE get handle, and per address the block (or the pool's block list for a claim),
    the block's address records, its cooling records and the pool record``. The cooling guard is
    ``cooling.version == 0`` (the address is not cooling), or, for an address handed out in its cooldown (decision
    1) or in a pool without one, ``cooling.mod_revision == R`` and a delete of that record (B09).

    ``handle`` is the handle id, ``record`` the encoded :class:`~ipamd.domain.model.HandleRecord`, ``node`` this
    daemon's node. One round trip, all or nothing: a dual-stack ADD carries every address. ``specs`` maps the
    named pools of the planned addresses to the ``mod_revision`` of the spec planned with: each is compared, and
    read back on failure (:attr:`AddFailure.specs`). Address keys are under each pool's network (``network`` is
    the attachment's, kept for the handle's callers).
    """

    def __init__(self, handle: str, record: bytes, node: str, network: str,
                 planned: Sequence[PlannedAddress], specs: Mapping[str, int] | None = None) -> None:
        hkey = handle_key(handle)
        self.compares: list[Compare] = [Compare(hkey, "version", "==", 0)]
        self.success: list[Op] = [Put(hkey, record)]
        self._reads = _Reads()
        self._reads.add("handle", Get(hkey))
        self._indexes = [p.index for p in planned]
        self._specs = sorted((specs or {}).items())
        for name, revision in self._specs:
            # a named pool's spec as planned with (docs/etcd-layout.md "Named pools"): a drain or a delete that
            # committed first fails this ADD, and the failure read returns the spec
            skey = poolspec_key(name)
            self.compares.append(Compare(skey, "mod", "==", revision))
            self._reads.add("spec:" + name, Get(skey))
        for p in planned:
            pick = p.pick
            # the pool's network: the attachment's for a range of its configuration, ``@<name>`` for a named pool
            network = p.pool.network
            ikey = ip_key(network, pick.block.family, pick.value)
            bkey = block_key(p.pool.id, pick.block)
            ckey = cooling_key(ikey)
            self.compares.append(Compare(ikey, "version", "==", 0))
            self.success.append(Put(ikey, IpRecord(handle, node, p.pool.id).encode()))
            if pick.cooling_revision:
                self.compares.append(Compare(ckey, "mod", "==", pick.cooling_revision))
                self.success.append(Delete(ckey))
            else:
                self.compares.append(Compare(ckey, "version", "==", 0))
            if pick.mode == "claim":
                self.compares.append(Compare(bkey, "version", "==", 0))
                self.success.append(Put(bkey, encode_block_record(node)))
                prefix = blocks_prefix(p.pool.id)
                self._reads.add("blocks:%d" % p.index, Get(prefix, prefix_end(prefix)))
            else:
                self.compares.append(Compare(bkey, "mod", "==", pick.block_revision))
                self._reads.add("blocks:%d" % p.index, Get(bkey))
            start, end = ips_range(network, pick.block)
            self._reads.add("ips:%d" % p.index, Get(start, end))
            cstart, cend = cooling_range(network, pick.block)
            self._reads.add("cooling:%d" % p.index, Get(cstart, cend))
            pkey = pool_key(p.pool.id)
            if p.guard.compare is not None:
                self.compares.append(Compare(pkey, p.guard.compare[0], "==", p.guard.compare[1]))
            if p.guard.put is not None:
                self.success.append(Put(pkey, p.guard.put))
            self._reads.add("pool:%d" % p.index, Get(pkey))

    @property
    def failure(self) -> list[Op]:
        return self._reads.ops

    def decode_failure(self, result: TxnResult) -> AddFailure:
        """The failure branch's reads, by name. Raises ``ValueError`` if the result does not match the request."""
        reads = self._reads.decode(result)
        handle = reads["handle"]
        out = AddFailure(handle[0] if handle else None)
        for name, _ in self._specs:
            spec = reads["spec:" + name]
            out.specs[name] = spec[0] if spec else None
        for i in self._indexes:
            pool = reads["pool:%d" % i]
            out.addresses[i] = AddressReads(reads["blocks:%d" % i], reads["ips:%d" % i], pool[0] if pool else None,
                                            reads["cooling:%d" % i])
        return out


class _OneKeyTxn:
    """A transaction whose failure branch reads back the one key it compares (``key``)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._reads = _Reads()
        self._reads.add("key", Get(key))

    @property
    def failure(self) -> list[Op]:
        return self._reads.ops

    def decode_failure(self, result: TxnResult) -> KV | None:
        """The key's current record (None when it is gone)."""
        kvs = self._reads.decode(result)["key"]
        return kvs[0] if kvs else None


class DelTxn(_OneKeyTxn):
    """DEL (docs/etcd-layout.md "Transactions"): ``IF handle.mod_revision == R THEN delete every ip key, delete handle
    ELSE get handle``; :meth:`decode_failure` gives the handle's current record.

    ``revision`` 0 with no keys is the "I know of no record" form: it succeeds exactly when the handle is absent
    (nothing to release) and otherwise returns the record in the same round trip. ``cooling``: the cooling record
    puts of the released addresses whose pool has a cooldown (B09, :mod:`ipamd.cooling`), written in the same
    transaction.
    """

    def __init__(self, handle: str, revision: int, ip_keys: Sequence[str], cooling: Sequence[Put] = ()) -> None:
        hkey = handle_key(handle)
        super().__init__(hkey)
        self.compares = [Compare(hkey, "mod", "==", revision)]
        self.success: list[Op] = [*(Delete(k) for k in ip_keys), *cooling, Delete(hkey)] if revision else []


class ReleaseBatchTxn:
    """Release several attachments at once (GC, repair): ``IF every handle.mod_revision == R_read THEN delete their
    ip keys and handles``. ``items`` are ``(handle KV as read, its ip keys)``; built to fit :data:`MAX_TXN_OPS`
    (use :func:`batches`). ``also`` are further compares every release needs (node removal: the node record is still
    absent). ``cooling`` maps address keys to the cooling record put their release writes (B09). No failure reads:
    on a failed compare the caller retries the items one by one."""

    def __init__(self, items: Sequence[tuple[KV, Sequence[str]]], also: Sequence[Compare] = (),
                 cooling: Mapping[str, Put] | None = None) -> None:
        self.items = list(items)
        self.compares = [Compare(kv.key, "mod", "==", kv.mod_revision) for kv, _ in items] + list(also)
        self.success: list[Op] = []
        cooling = cooling or {}
        for kv, keys in items:
            self.success.extend(Delete(k) for k in keys)
            self.success.extend(cooling[k] for k in keys if k in cooling)
            self.success.append(Delete(kv.key))
        self.failure: list[Op] = []


def batches(items: Sequence[tuple[KV, Sequence[str]]], limit: int = MAX_TXN_OPS,
            cooling: Container[str] = ()) -> list[list[tuple[KV, Sequence[str]]]]:
    """Split release items into groups whose delete list stays within ``limit`` operations (B24); each address key
    in ``cooling`` costs one more (its cooling record put). An item larger than the limit on its own gets a group of
    its own (etcd will refuse it: never silently dropped)."""
    out: list[list[tuple[KV, Sequence[str]]]] = []
    ops = 0
    for item in items:
        need = len(item[1]) + 1 + sum(1 for k in item[1] if k in cooling)
        if not out or ops + need > limit:
            out.append([])
            ops = 0
        out[-1].append(item)
        ops += need
    return out


def too_many_ops(exc: BaseException) -> bool:
    """Whether ``exc`` is etcd refusing a transaction for its number of operations (``--max-txn-ops``, B24)."""
    return isinstance(exc, StoreRejected) and "too many operations" in exc.msg


def ops_of(items: Sequence[tuple[KV, Sequence[str]]], cooling: Container[str] = ()) -> int:
    """Operations the success list of :class:`ReleaseBatchTxn` of ``items`` carries (as :func:`batches` counts)."""
    return sum(len(keys) + 1 + sum(1 for k in keys if k in cooling) for _, keys in items)


class OpsLimit:
    """The most operations per transaction list that this process believes etcd accepts, learned downwards (B24).

    Starts at :data:`MAX_TXN_OPS` (under etcd's default ``--max-txn-ops`` of 128). An etcd started with a lower
    limit refuses a larger transaction as sent ("too many operations in txn request"); :meth:`lower` then halves the
    limit below the size that was refused, so every later batch of this process starts small enough. Never below 2
    (one address and its handle). Thread-safe; the value only ever goes down (restart the daemon after raising
    etcd's limit). docs/decisions.md "B24".
    """

    def __init__(self, start: int = MAX_TXN_OPS) -> None:
        self._value = start
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._value

    def lower(self, refused: int) -> int:
        """Record that a transaction of ``refused`` operations was refused; returns the new limit."""
        with self._lock:
            self._value = max(2, min(self._value, refused // 2))
            return self._value


Item = tuple[KV, Sequence[str]]


def send_in_batches(items: Sequence[Item], send: Callable[[list[Item]], None], limit: OpsLimit,
                    cooling: Container[str] = ()) -> None:
    """Call ``send(batch)`` for consecutive batches of ``items`` that fit ``limit`` (:func:`batches`), in order.

    When ``send`` raises :class:`StoreRejected` for too many operations (:func:`too_many_ops`) and the batch holds
    more than one item, the limit is lowered below the refused size and the rest (that batch included) is sent in
    batches of the new size; nothing is dropped and no item is sent twice after a refusal (a refused transaction applied
    nothing). A single item refused as too large, and every other error, propagates to the caller. ``cooling``:
    address keys whose release also puts a cooling record (one more operation each)."""
    start = 0
    while start < len(items):
        end, ops = start, 0
        while end < len(items):  # the next batch at the current limit (as batches() groups)
            need = ops_of(items[end:end + 1], cooling)
            if end > start and ops + need > limit.value:
                break
            ops += need
            end += 1
        batch = list(items[start:end])
        try:
            send(batch)
        except StoreRejected as exc:
            if len(batch) < 2 or not too_many_ops(exc):
                raise
            limit.lower(ops)  # at most half of what was refused: the next batch is smaller, down to one item
            continue
        start = end


class ClaimBlockTxn(_OneKeyTxn):
    """Claim one block for a node outside an ADD (a podCIDR block, ipamd/podcidr.py): ``IF blocks/<b>.version == 0
    THEN put blocks/<b> {"node"} ELSE get blocks/<b>`` (docs/etcd-layout.md "Transactions"). Never takes over a
    block someone owns: :meth:`decode_failure` returns the current owner's record. In a named pool (pool network
    ``@<name>``) it also compares ``poolspecs/<name>.version > 0``, as an ADD compares the spec: once a delete
    removed the spec nothing may be written into the pool, or its clean-up would miss the block (docs/etcd-layout.md
    "Named pools"); the failure then reads back no block (``decode_failure`` is ``None``)."""

    def __init__(self, pool_id: str, block: Block, node: str) -> None:
        super().__init__(block_key(pool_id, block))
        self.record = encode_block_record(node)
        self.compares = [Compare(self.key, "version", "==", 0)]
        named = pool_network(pool_id)
        if named.startswith("@"):
            self.compares.append(Compare(poolspec_key(named[1:]), "version", ">", 0))
        self.success: list[Op] = [Put(self.key, self.record)]


class ReleaseBlockTxn(_OneKeyTxn):
    """Release an empty block (docs/etcd-layout.md "Transactions", docs/decisions.md "Block lifecycle"):
    ``IF blocks/<b>.mod_revision == R AND every key of ips/<network>/<family>/[first, last] has version 0 (the
    range is empty) AND every key of the block's cooling range has version 0 THEN delete blocks/<b> ELSE get
    blocks/<b>``.

    The emptiness compares are etcd range compares (``Compare.range_end``: an empty range compares as one missing
    key). Race-free against an ADD into the block: the ADD compares ``block.mod_revision``, so if the release
    commits first the ADD's compare fails (the block is gone) and it retries with a fresh plan (claiming a block
    again); if the ADD commits first its address record makes this range compare fail. Either way no address
    record is ever left in a block without an owner (invariant 2, field case B02 "extra"). A block with cooling
    records (B09) is not released. :meth:`decode_failure` gives the block record now (None when gone).
    """

    def __init__(self, pool_id: str, network: str, block: Block, revision: int) -> None:
        super().__init__(block_key(pool_id, block))
        start, end = ips_range(network, block)
        cstart, cend = cooling_range(network, block)
        self.compares = [Compare(self.key, "mod", "==", revision), Compare(start, "version", "==", 0, end),
                         Compare(cstart, "version", "==", 0, cend)]
        self.success: list[Op] = [Delete(self.key)]
