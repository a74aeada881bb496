"""The node's view of etcd: its pools' blocks, the addresses in its own blocks, its handles, and the reservations
of requests in flight. An optimisation only (docs/architecture.md): every write compares revisions, so a stale view
costs a failed compare and one more round trip, never a wrong answer.

Thread-safe: one lock guards everything; the pure policy (:mod:`ipamd.domain.policy`) runs under it. Picking an
address and reserving it happen under the same lock hold, so two requests of this daemon never pick the same
address. Memory is bounded by what the node holds plus one small record per claimed block of its pools; the handle
cache keeps at most ``handle_limit`` entries (least recently used out first).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Container, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import NamedTuple

from .domain.addr import Block
from .domain.model import (
    BLOCKS,
    COOLING,
    IPS,
    POOLS,
    HandleRecord,
    PoolRecord,
    cooling_key,
    decode_block_record,
    parse_block_key,
    parse_cooling_key,
    parse_ip_key,
    pool_network,
)
from .domain.netconf import Pool
from .domain.policy import BlockState, Decision, Pick, PoolState, choose, choose_requested
from .store.base import KV, WatchEvent, WatchUpdate

#: Default bound of the handle cache (entries). A handle that fell out costs its DEL one more round trip.
HANDLE_LIMIT = 16384
#: Own writes remembered until the watch has delivered them; past this many the view is re-read instead.
LOCAL_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Wait:
    """Another request of this daemon is claiming a block of the pool: wait for ``event``, then plan again (one
    claim per pool in flight, so a daemon's concurrent ADDs do not race each other for the same block: B49)."""

    event: threading.Event


class CachedHandle(NamedTuple):
    """A handle this node wrote or read: its ``mod_revision`` and the keys of its address records. A tuple of
    numbers and strings, so the garbage collector stops tracking it: thousands of them cost no collection time
    (B48)."""

    mod_revision: int
    ip_keys: tuple[str, ...]


class NodeCache:
    """See the module docstring. ``node`` is this daemon's node name."""

    def __init__(self, node: str, handle_limit: int = HANDLE_LIMIT) -> None:
        self.node = node
        self.handle_limit = handle_limit
        self._lock = threading.Lock()
        self._pools: dict[str, PoolState] = {}
        self._handles: OrderedDict[str, CachedHandle] = OrderedDict()
        self._reserved: dict[tuple[str, int], set[int]] = {}
        self._claims: dict[str, threading.Event] = {}
        #: every change up to this revision is in the view (the sync's revision, then the watch's)
        self.watch_revision = 0
        #: address keys this daemon wrote at a revision the watch has not delivered yet: older events are skipped
        self._local: dict[str, int] = {}
        #: this node's blocks gained or lost since the watch last asked: (pool id, block, revision)
        self._own_changes: list[tuple[bool, str, Block, int]] = []
        self.needs_resync = False

    # -- loading -------------------------------------------------------------------------------------------------

    def replace(self, pools: Iterable[KV], blocks: Iterable[KV], revision: int) -> None:
        """Replace the whole view (first sync, or a full re-read after the watch lost its history): ``pools`` and
        ``blocks`` are the pool and block records read at ``revision``. The addresses of this node's blocks are read
        when an ADD first needs them. Malformed records are skipped (``ipamctl check`` reports them)."""
        states: dict[str, PoolState] = {}
        for kv in pools:
            pool_id = kv.key.split("/", 1)[1]
            try:
                states[pool_id] = PoolState(pool_id, PoolRecord.decode(kv.value), kv.value, kv.mod_revision)
            except ValueError:
                continue
        for kv in blocks:
            try:
                pool_id, block = parse_block_key(kv.key)
                node = decode_block_record(kv.value)
                st = states[pool_id] if pool_id in states else states.setdefault(pool_id, PoolState(pool_id))
            except ValueError:
                continue
            st.set_block(BlockState(block, node, kv.mod_revision), self.node)
        for st in states.values():
            st.blocks_revision = revision
        with self._lock:
            self._pools = states
            self.watch_revision = revision
            self._local.clear()
            self._own_changes.clear()
            self.needs_resync = False

    def own_blocks(self) -> list[tuple[str, Block]]:
        """(pool id, block) of every block this node owns."""
        with self._lock:
            return [(pid, st.block) for pid, ps in self._pools.items() for st in ps.blocks.values()
                    if st.node == self.node]

    def own_block_revisions(self) -> list[tuple[str, Block, int, int]]:
        """(pool id, block, the block key's mod_revision as last seen, the revision of the last change to an address
        or cooling record of the block seen: :attr:`BlockState.changed`) of every block this node owns."""
        with self._lock:
            return [(pid, st.block, st.mod_revision, st.changed) for pid, ps in self._pools.items()
                    for st in ps.blocks.values() if st.node == self.node]

    def block_released(self, pool_id: str, block: Block, revision: int) -> None:
        """This node deleted its (empty) block at ``revision`` (:mod:`ipamd.blockrelease`): forget it now, as the
        watch would (the watch loop stops watching its address range). Idempotent; a block that is no longer ours
        in the view is left alone."""
        with self._lock:
            ps = self._pools.get(pool_id)
            st = ps.blocks.get(block.first) if ps is not None else None
            if ps is None or st is None or st.node != self.node or st.mod_revision > revision:
                return
            ps.remove_block(block.first)
            self._note_owner(pool_id, block, self.node, None, revision)

    def blocks_read(self, pool_id: str, kvs: Sequence[KV], revision: int) -> None:
        """The pool's whole block list read at ``revision`` (``blocks/<pool>/``): replaces the view's list, keeping
        the loaded addresses of blocks whose owner did not change."""
        with self._lock:
            ps = self._pool(pool_id)
            self._refresh_blocks(ps, kvs)
            ps.blocks_revision = max(ps.blocks_revision, revision)

    def pool_ids(self) -> list[str]:
        with self._lock:
            return list(self._pools)

    def pool_record(self, pool_id: str) -> tuple[PoolRecord | None, bytes | None, int]:
        """(record, its bytes, its mod_revision) as last seen; (None, None, 0) when there is none."""
        with self._lock:
            ps = self._pools.get(pool_id)
            if ps is None:
                return None, None, 0
            return ps.record, ps.record_raw, ps.record_revision

    def block_prefix(self, pool: Pool) -> int:
        """The pool's block size: fixed by its record (or its blocks) once a block was claimed, so a configuration
        asking for another size cannot make overlapping blocks; else the configuration's."""
        with self._lock:
            ps = self._pools.get(pool.id)
            prefix = ps.block_prefix if ps is not None else None
        return pool.block_prefix if prefix is None else prefix

    # -- planning ------------------------------------------------------------------------------------------------

    def plan(self, pool: Pool, requested: int | None = None, *,
             fresh: AbstractSet[int] = frozenset()) -> Decision | Wait:
        """The policy's decision for one address of ``pool`` (see :func:`ipamd.domain.policy.choose`), with the
        picked address reserved until :meth:`settle`. A claim while another claim of the pool is in flight in this
        daemon answers :class:`Wait`. Raises ``AddressUnavailable`` (101) for a requested address the pool cannot
        give."""
        with self._lock:
            ps = self._pool(pool.id)
            prefix = ps.block_prefix
            prefix = pool.block_prefix if prefix is None else prefix
            reserved = self._reserved.setdefault((pool.network, pool.range.family), set())
            if requested is not None:
                return choose_requested(pool, prefix, self.node, ps, requested)
            decision = choose(pool, prefix, self.node, ps, reserved, fresh=fresh)
            if isinstance(decision, Pick):
                if decision.mode == "claim":
                    if pool.id in self._claims:
                        return Wait(self._claims[pool.id])
                    self._claims[pool.id] = threading.Event()
                reserved.add(decision.value)
            return decision

    def settle(self, pool: Pool, pick: Pick, requested: bool) -> None:
        """End a pick's reservation (after its transaction committed, failed or raised); a claim in flight ends and
        its waiters plan again. Idempotent."""
        with self._lock:
            if not requested:
                self._reserved.get((pool.network, pool.range.family), set()).discard(pick.value)
                if pick.mode == "claim":
                    event = self._claims.pop(pool.id, None)
                    if event is not None:
                        event.set()
                ps = self._pools.get(pool.id)
                st = ps.blocks.get(pick.block.first) if ps is not None else None
                if ps is not None and st is not None and st.node == self.node:
                    ps.add_room(pick.block.first)  # it may have looked full only because of reservations

    def loaded(self, pool: Pool, block: Block, kvs: Iterable[KV], revision: int,
               cooling: Iterable[KV] | None = None) -> None:
        """Address records of ``block`` read from etcd at ``revision`` (a :class:`~ipamd.domain.policy.Load`
        answered), and its cooling records when they were read with them (``None``: not read, keep what is
        known)."""
        taken = {parse_ip_key(kv.key)[2] for kv in kvs}
        cool = _cooling_of(cooling)
        with self._lock:
            ps = self._pool(pool.id)
            st = ps.blocks.get(block.first)
            if st is None:
                ps.unclaimed_taken[block.first] = taken
                if cool is not None:
                    ps.unclaimed_cooling[block.first] = cool
                return
            st.set_taken(taken, revision, cool)
            if st.node == self.node:
                ps.add_room(block.first)

    # -- after a transaction -------------------------------------------------------------------------------------

    def committed_add(self, record: HandleRecord, picks: Sequence[tuple[Pool, Pick]], revision: int,
                      pool_puts: dict[str, tuple[PoolRecord, bytes]]) -> None:
        """An ADD committed at ``revision``: its addresses are taken, its claimed blocks ours, its pool records
        written, its handle known."""
        with self._lock:
            for pool_id, (rec, raw) in pool_puts.items():
                ps = self._pool(pool_id)
                ps.record, ps.record_raw, ps.record_revision = rec, raw, revision
            for (pool, pick), key in zip(picks, record.ip_keys, strict=True):
                ps = self._pool(pool.id)
                st = ps.blocks.get(pick.block.first)
                if pick.mode == "claim" or st is None:
                    foreign = ps.unclaimed_taken.pop(pick.block.first, set())
                    # a block we claimed was empty but for what other pools of the network hold (read with it)
                    cool = ps.unclaimed_cooling.pop(pick.block.first, {})
                    st = BlockState(pick.block, self.node, revision, set(foreign), read_revision=revision,
                                    cooling=cool)
                    ps.set_block(st, self.node)
                    self._note_owner(pool.id, pick.block, None, self.node, revision)
                if st.taken is not None:
                    st.taken.add(pick.value)
                st.changed = max(st.changed, revision)
                st.cooled(pick.value)
                self._wrote(key, revision)
                if pick.cooling_revision:
                    self._wrote(cooling_key(key), revision)
            self._put_handle(record.handle, CachedHandle(revision, record.ip_keys))

    def learned(self, pool: Pool, pick: Pick, blocks: Sequence[KV], ips: Sequence[KV], pool_kv: KV | None,
                revision: int, cooling: Sequence[KV] = ()) -> set[int]:
        """Refresh the view from a failed ADD's reads for one address, made at ``revision`` (see
        :class:`ipamd.txns.AddressReads`); returns the block's taken addresses as read."""
        taken = {parse_ip_key(kv.key)[2] for kv in ips}
        cool = _cooling_of(cooling) or {}
        with self._lock:
            ps = self._pool(pool.id)
            self._set_record(ps, pool_kv)
            if pick.mode == "claim":
                self._refresh_blocks(ps, blocks)
                ps.blocks_revision = max(ps.blocks_revision, revision)
            elif blocks:
                try:
                    node = decode_block_record(blocks[0].value)
                except ValueError:
                    node = ""
                old = ps.blocks.get(pick.block.first)
                keep = old.taken if old is not None and old.node == node else None
                ps.set_block(BlockState(pick.block, node, blocks[0].mod_revision, keep,
                                        cooling=old.cooling if old is not None and keep is not None else {}),
                             self.node)
                self._note_owner(pool.id, pick.block, old.node if old is not None else None, node,
                                 blocks[0].mod_revision)
            else:
                old = ps.blocks.get(pick.block.first)
                ps.remove_block(pick.block.first)
                if old is not None:
                    self._note_owner(pool.id, pick.block, old.node, None, 0)
            st = ps.blocks.get(pick.block.first)
            if st is not None:
                st.set_taken(taken, revision, cool)
            else:
                ps.unclaimed_taken[pick.block.first] = taken
                ps.unclaimed_cooling[pick.block.first] = cool
        return taken

    def released(self, handle: str, ip_keys: Sequence[str], revision: int, cooling: Container[str] = ()) -> None:
        """The attachment's address records ``ip_keys`` were deleted at ``revision`` (DEL, GC): free them in our
        view and forget the handle. ``cooling``: those of the keys whose cooling record the same transaction
        wrote (B09)."""
        with self._lock:
            self._handles.pop(handle, None)
            for key in ip_keys:
                self._wrote(key, revision)
                cools = key in cooling
                if cools:
                    self._wrote(cooling_key(key), revision)
                try:
                    network, family, value = parse_ip_key(key)
                except ValueError:
                    continue
                for ps in self._pools_of(network, family, value):
                    st = ps.block_containing(value)
                    if st is not None:
                        st.changed = max(st.changed, revision)
                        st.release(value)
                        if cools:
                            st.cooling[value] = revision
                        if st.node == self.node:
                            ps.add_room(st.block.first)
                    else:
                        for taken in ps.unclaimed_taken.values():
                            taken.discard(value)

    def cooldown_of(self, ip_key: str) -> tuple[str, int]:
        """``(pool id, releaseCooldownSeconds)`` of the pool an address record key lies in, from the pool records
        seen (``("", 0)``: no cooldown). Where widened subnets overlap, the longest cooldown wins."""
        try:
            network, family, value = parse_ip_key(ip_key)
        except ValueError:
            return "", 0
        with self._lock:
            best = ("", 0)
            for ps in self._pools_of(network, family, value):
                if ps.record is not None and ps.record.cooldown > best[1]:
                    best = (ps.pool_id, ps.record.cooldown)
            return best

    # -- the watch ------------------------------------------------------------------------------------------------

    def _wrote(self, key: str, revision: int) -> None:
        if self.watch_revision < revision:
            self._local[key] = revision
            if len(self._local) > LOCAL_LIMIT:  # the watch is far behind: read everything again instead
                self._local.clear()
                self.needs_resync = True

    def apply(self, update: WatchUpdate) -> None:
        """Apply what the watch delivered (docs/architecture.md "Watch"). An event older than what the view already
        holds is skipped: older than the block's or block list's last read, than a record's known mod_revision, or
        than our own write of that key."""
        with self._lock:
            for ev in update.events:
                key, rev = ev.kv.key, ev.kv.mod_revision
                try:
                    if key.startswith(IPS):
                        self._apply_address(ev, key, rev)
                    elif key.startswith(COOLING):
                        self._apply_cooling(ev, key, rev)
                    elif key.startswith(BLOCKS):
                        self._apply_block(ev, key, rev)
                    elif key.startswith(POOLS):
                        self._apply_pool(ev, key, rev)
                except ValueError:
                    continue  # something else wrote a malformed key or record: ipamctl check reports it
            if update.revision > self.watch_revision:
                self.watch_revision = update.revision
                self._local = {k: r for k, r in self._local.items() if r > update.revision}

    def _stale_blocks(self, key: str, rev: int,
                      parsed: tuple[str, int, int]) -> Iterator[tuple[PoolState, BlockState, set[int]]]:
        """``(pool state, block state, its taken set)`` of every loaded block holding the address ``parsed``
        (network, family, value) whose view is older than ``rev``; nothing when this daemon's own write of ``key``
        is newer. Marks every block holding it (loaded or not) as changed at ``rev``."""
        local = self._local.get(key)
        if local is not None and rev < local:
            return
        network, family, value = parsed
        for ps in self._pools_of(network, family, value):
            st = ps.block_containing(value)
            if st is None:
                continue
            if rev > st.changed:  # loaded or not: the empty-block release's evidence of use (ipamd.blockrelease)
                st.changed = rev
            if st.taken is not None and rev > st.read_revision:
                yield ps, st, st.taken

    def _apply_address(self, ev: WatchEvent, key: str, rev: int) -> None:
        value = (parsed := parse_ip_key(key))[2]
        for ps, st, taken in self._stale_blocks(key, rev, parsed):
            if ev.deleted:
                st.release(value)
                if st.node == self.node:
                    ps.add_room(st.block.first)
            else:
                taken.add(value)

    def _apply_cooling(self, ev: WatchEvent, key: str, rev: int) -> None:
        """A cooling record written by a release (its cooldown began at ``rev``) or gone (its lease expired, or an
        ADD took the address)."""
        value = (parsed := parse_cooling_key(key))[2]
        for ps, st, _taken in self._stale_blocks(key, rev, parsed):
            if ev.deleted:
                st.cooled(value)
                if st.node == self.node:
                    ps.add_room(st.block.first)
            else:
                st.cooling[value] = rev

    def _apply_block(self, ev: WatchEvent, key: str, rev: int) -> None:
        pool_id, block = parse_block_key(key)
        ps = self._pool(pool_id)
        if rev <= ps.blocks_revision:
            return
        old = ps.blocks.get(block.first)
        if old is not None and old.mod_revision > rev:
            return
        if ev.deleted:
            if old is not None:
                ps.remove_block(block.first)
                self._note_owner(pool_id, block, old.node, None, rev)
            return
        node = decode_block_record(ev.kv.value)
        keep = old.taken if old is not None and old.node == node else None
        ps.set_block(BlockState(block, node, rev, keep,
                                read_revision=old.read_revision if old is not None and keep is not None else 0,
                                cooling=old.cooling if old is not None and keep is not None else {}),
                     self.node)
        self._note_owner(pool_id, block, old.node if old is not None else None, node, rev)

    def _apply_pool(self, ev: WatchEvent, key: str, rev: int) -> None:
        ps = self._pool(key[len(POOLS):])
        if rev <= ps.record_revision:
            return
        if ev.deleted:
            ps.record, ps.record_raw, ps.record_revision = None, None, 0
        else:
            ps.record, ps.record_raw, ps.record_revision = PoolRecord.decode(ev.kv.value), ev.kv.value, rev

    def own_block_changes(self) -> list[tuple[bool, str, Block, int]]:
        """This node's blocks gained (True) or lost (False) since the last call: (gained, pool id, block,
        revision). The watch loop adds or removes the watch on their address ranges."""
        with self._lock:
            out, self._own_changes = self._own_changes, []
            return out

    def snapshot(self) -> dict[str, object]:
        """The view as plain data, for tests and ``ipamctl``: per pool, its record revision and its blocks (owner,
        mod_revision, taken addresses or None when not loaded)."""
        with self._lock:
            return {pool_id: {"record_revision": ps.record_revision,
                              "blocks": {st.block.key: {"node": st.node, "mod_revision": st.mod_revision,
                                                        "taken": sorted(st.taken) if st.taken is not None else None}
                                         for st in ps.blocks.values()}}
                    for pool_id, ps in self._pools.items()}

    def _pool(self, pool_id: str) -> PoolState:
        ps = self._pools.get(pool_id)
        if ps is None:
            ps = self._pools[pool_id] = PoolState(pool_id)
        return ps

    def _pools_of(self, network: str, family: int, value: int) -> list[PoolState]:
        """Pools of ``network`` whose subnet holds the address (one, or a few when subnets were widened)."""
        out = []
        for pool_id, ps in self._pools.items():
            subnet = ps.subnet
            if subnet.family == family and subnet.first <= value <= subnet.last and pool_network(pool_id) == network:
                out.append(ps)
        return out

    def _set_record(self, ps: PoolState, kv: KV | None) -> None:
        if kv is None:
            ps.record, ps.record_raw, ps.record_revision = None, None, 0
            return
        try:
            ps.record, ps.record_raw, ps.record_revision = PoolRecord.decode(kv.value), kv.value, kv.mod_revision
        except ValueError:
            ps.record, ps.record_raw, ps.record_revision = None, None, 0

    def _refresh_blocks(self, ps: PoolState, kvs: Sequence[KV]) -> None:
        """Replace a pool's block list with a fresh read (keeping the loaded addresses of blocks whose owner did
        not change)."""
        seen = set()
        for kv in kvs:
            try:
                _, block = parse_block_key(kv.key)
                node = decode_block_record(kv.value)
            except ValueError:
                continue
            seen.add(block.first)
            old = ps.blocks.get(block.first)
            keep = old.taken if old is not None and old.node == node else None
            ps.set_block(BlockState(block, node, kv.mod_revision, keep,
                                    read_revision=old.read_revision if old is not None and keep is not None else 0,
                                    cooling=old.cooling if old is not None and keep is not None else {}),
                         self.node)
            self._note_owner(ps.pool_id, block, old.node if old is not None else None, node, kv.mod_revision)
        for first in [f for f in ps.blocks if f not in seen]:
            old = ps.blocks[first]
            ps.remove_block(first)
            self._note_owner(ps.pool_id, old.block, old.node, None, 0)

    def _note_owner(self, pool_id: str, block: Block, before: str | None, after: str | None, revision: int) -> None:
        """Tell the watch loop when one of our blocks came or went."""
        if before != self.node and after == self.node:
            self._own_changes.append((True, pool_id, block, revision))
        elif before == self.node and after != self.node:
            self._own_changes.append((False, pool_id, block, revision))

    # -- handles -------------------------------------------------------------------------------------------------

    def handle(self, handle: str) -> CachedHandle | None:
        with self._lock:
            entry = self._handles.get(handle)
            if entry is not None:
                self._handles.move_to_end(handle)
            return entry

    def put_handle(self, handle: str, entry: CachedHandle | None) -> None:
        """Remember (or, with ``None``, forget) a handle's record and revision."""
        with self._lock:
            if entry is None:
                self._handles.pop(handle, None)
            else:
                self._put_handle(handle, entry)

    def _put_handle(self, handle: str, entry: CachedHandle) -> None:
        self._handles[handle] = entry
        self._handles.move_to_end(handle)
        while len(self._handles) > self.handle_limit:
            self._handles.popitem(last=False)

    def handle_count(self) -> int:
        with self._lock:
            return len(self._handles)


def _cooling_of(kvs: Iterable[KV] | None) -> dict[int, int] | None:
    """Cooling records as ``{address: mod_revision}`` (``None`` for ``None``); malformed keys are skipped."""
    if kvs is None:
        return None
    out: dict[int, int] = {}
    for kv in kvs:
        try:
            out[parse_cooling_key(kv.key)[2]] = kv.mod_revision
        except ValueError:
            continue
    return out
