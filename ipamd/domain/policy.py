"""The allocation policy (pure: no I/O, no locks): which address an ADD takes in one pool.

Given a pool, this node's view of the pool's blocks (:class:`PoolState`) and the addresses other requests of this
daemon have reserved, :func:`choose` answers one of

- :class:`Pick` ``own``: the lowest free address of this node's lowest block with room;
- :class:`Pick` ``claim``: the lowest free address of the lowest unclaimed block that holds an allocatable address
  (a block wholly excluded, outside ``rangeStart``..``rangeEnd`` or holding only the gateway is passed over, never
  claimed), so a fresh pool fills like host-local, and eight nodes starting at once own the eight lowest blocks
  (field case B02);
- :class:`Load`: the caller must read the address records of these blocks first, then ask again (a block of ours
  not loaded yet; our full blocks before giving up on them; other nodes' blocks before borrowing);
- :class:`Pick` ``borrow``: a free address in another node's block (field case B34, decision 5), unless the pool
  sets ``strictAffinity``;
- a node that owns ``maxBlocksPerNode`` blocks of the pool (:attr:`Pool.max_blocks`) claims no more: it borrows,
  or (strictAffinity) is :class:`Exhausted` with ``limit`` set (docs/decisions.md "Block lifecycle");
- :class:`Exhausted`: nothing is free for this node.

Release cooldown (field case B09, decision 1): in a pool with ``cooldown`` > 0 an address with a cooling record
(:attr:`BlockState.cooling`) is passed over like a taken one. When nothing else is free for this node, the cooling
address whose cooldown began earliest (lowest ``mod_revision`` of its record) is handed out instead of answering
:class:`Exhausted`: a :class:`Pick` with ``bypass`` set. A pick of a cooling address (a bypass, or any address of a
pool without a cooldown) carries the record's revision, which the ADD compares and deletes.

This is Calico's split (``ipam_block.go`` beside its reader/writer, docs/architecture.md): the arithmetic here, the
datastore in the transactions, the locking in the cache. Cost per call is bounded by the size of one block plus the
blocks it has to pass over, never by what the node or the cluster holds: full blocks leave :attr:`PoolState.room`
once and come back only when one of their addresses is released.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Container
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from .addr import BITS, Block, Range, block_of, candidate_blocks, to_ip
from .errors import AddressUnavailable, InvalidConfig
from .model import PoolRecord, pool_subnet
from .netconf import Pool


@dataclass(slots=True)
class BlockState:
    """What this daemon knows of one claimed block: owner ``node``, the block key's ``mod_revision``, and (when
    loaded) ``taken``, the addresses that have a record in it. ``hint``: every address of the block below it is taken
    or not usable (0: nothing known), so a pick starts at the frontier instead of walking the whole block; whoever
    replaces ``taken`` or removes from it lowers the hint (:meth:`set_taken`, :meth:`release`). ``cooling``: the
    addresses of the block with a cooling record, each with the record's ``mod_revision`` (when its cooldown began;
    known with ``taken``). ``changed``: the etcd revision of the last change to an address or cooling record of
    the block this daemon saw (its own writes, the watch), loaded or not: the empty-block release restarts its clock
    when it moves (docs/decisions.md "Block lifecycle")."""

    block: Block
    node: str
    mod_revision: int
    taken: set[int] | None = None
    hint: int = 0
    read_revision: int = 0
    cooling: dict[int, int] = field(default_factory=dict)
    changed: int = 0

    def set_taken(self, taken: set[int] | None, revision: int = 0, cooling: dict[int, int] | None = None) -> None:
        """Replace the address set (and the cooling records, when given) with one read at ``revision`` (changes up
        to it are in the set)."""
        self.taken = taken
        self.hint = 0
        self.read_revision = revision
        if cooling is not None:
            self.cooling = cooling

    def cooled(self, value: int) -> None:
        """The cooling record of ``value`` is gone (expired, or deleted by an ADD)."""
        if self.cooling.pop(value, None) is not None:
            self.hint = min(self.hint, value)

    def release(self, value: int) -> None:
        if self.taken is not None:
            self.taken.discard(value)
        self.hint = min(self.hint, value)


@dataclass(slots=True)
class PoolState:
    """This daemon's view of one pool. Mutable; the cache owns it and holds its lock while the policy runs.

    - ``record``/``record_raw``/``record_revision``: the pool record in etcd (None/0 when there is none);
    - ``blocks``: every claimed block of the pool (any node), by first address;
    - ``room``: sorted first addresses of this node's blocks not known to be full under ``room_range``;
    - ``claim_floor``: no unclaimed block lies below it (the claim walk starts there);
    - ``unclaimed_taken``: addresses known taken in blocks nobody owns (held through an overlapping pool of the
      same network, e.g. after the subnet was widened); ``unclaimed_cooling`` the cooling records known there;
    - ``blocks_revision``: the revision of the last full read of the block list (changes up to it are in it);
    - ``subnet``: the pool's subnet as a :class:`Block`, from the pool id (``ValueError`` if malformed).
    """

    pool_id: str
    record: PoolRecord | None = None
    record_raw: bytes | None = None
    record_revision: int = 0
    blocks: dict[int, BlockState] = field(default_factory=dict)
    room: list[int] = field(default_factory=list)
    room_range: Range | None = None
    claim_floor: int = 0
    unclaimed_taken: dict[int, set[int]] = field(default_factory=dict)
    unclaimed_cooling: dict[int, dict[int, int]] = field(default_factory=dict)
    blocks_revision: int = 0
    subnet: Block = field(init=False)

    def __post_init__(self) -> None:
        self.subnet = pool_subnet(self.pool_id)  # raises ValueError for a malformed pool id

    def add_room(self, first: int) -> None:
        """Mark one of our blocks as possibly having room (idempotent)."""
        i = bisect.bisect_left(self.room, first)
        if i == len(self.room) or self.room[i] != first:
            self.room.insert(i, first)

    def drop_room(self, first: int) -> None:
        i = bisect.bisect_left(self.room, first)
        if i < len(self.room) and self.room[i] == first:
            del self.room[i]

    def reset_room(self, node: str, rng: Range | None) -> None:
        """Every block of ``node`` may have room again (the range changed, or after a full reload)."""
        self.room = sorted(first for first, st in self.blocks.items() if st.node == node)
        for st in self.blocks.values():
            st.hint = 0  # what was unusable under the old range may be usable now
        self.room_range = rng
        self.claim_floor = 0  # blocks without a usable address under the old range may have one now

    def set_block(self, st: BlockState, node: str) -> None:
        """Record a block (claimed by anyone); ours gets a place in ``room``."""
        self.blocks[st.block.first] = st
        if st.node == node:
            self.add_room(st.block.first)
        else:
            self.drop_room(st.block.first)

    def remove_block(self, first: int) -> None:
        self.blocks.pop(first, None)
        self.drop_room(first)
        self.claim_floor = min(self.claim_floor, first)

    @property
    def block_prefix(self) -> int | None:
        """The pool's block size: its record's, else that of any block seen, else ``None`` (nothing claimed)."""
        if self.record is not None:
            return self.record.block_prefix
        for st in self.blocks.values():
            return st.block.prefixlen
        return None

    def block_containing(self, value: int) -> BlockState | None:
        """The claimed block holding ``value`` (arithmetic on the pool's block size; no walk), or ``None``."""
        prefix = self.block_prefix
        if prefix is None:
            return None
        size = 1 << (BITS[self.subnet.family] - prefix)
        return self.blocks.get(value - ((value - self.subnet.first) % size))


@dataclass(frozen=True, slots=True)
class Pick:
    """One planned allocation: ``value`` in ``block``; ``mode`` is ``own``, ``claim`` or ``borrow``;
    ``block_revision`` the block key's mod_revision the transaction compares (0 for a claim);
    ``cooling_revision`` the mod_revision of the address's cooling record, which the transaction compares and
    deletes (0: none known, the transaction compares that there is none); ``bypass``: the address is still in its
    pool's cooldown and was handed out because nothing else was free (B09, decision 1)."""

    block: Block
    value: int
    mode: str
    block_revision: int = 0
    cooling_revision: int = 0
    bypass: bool = False


@dataclass(frozen=True, slots=True)
class Load:
    """Read the address records of ``blocks`` (then ask again with them in ``fresh``)."""

    blocks: tuple[Block, ...]


@dataclass(frozen=True, slots=True)
class Exhausted:
    """No address for this node: ``owned`` blocks of ours (all full), ``allocated`` addresses seen in the pool's
    blocks, ``free_elsewhere`` free addresses in other nodes' blocks that ``strictAffinity`` forbids borrowing;
    ``limit``: the pool's ``maxBlocksPerNode`` when the node owns that many blocks, so it claimed no more (0: no
    limit reached)."""

    owned: int
    allocated: int
    free_elsewhere: int
    limit: int = 0


Decision = Pick | Load | Exhausted


class Busy:
    """``value in busy``: taken in the block, reserved by a concurrent ADD of this daemon (same network and
    family), so concurrent ADDs pick different addresses instead of colliding on the lowest free one (B04), or in
    its cooldown (``cooling``; B09)."""

    __slots__ = ("cooling", "reserved", "taken")

    def __init__(self, taken: Container[int], reserved: Container[int], cooling: Container[int] = ()) -> None:
        self.taken, self.reserved, self.cooling = taken, reserved, cooling

    def __contains__(self, value: object) -> bool:
        return value in self.taken or value in self.reserved or value in self.cooling


def sized(pool: Pool, block_prefix: int) -> Pool:
    """``pool`` with its range's reserved addresses computed for the block size in force (the pool record's, fixed
    by the first claim, which may differ from the configuration's ``blockSize``): in ``block`` mode each block's
    first, gateway and IPv4 last addresses depend on it. The same ``pool`` when nothing changes (the common case).

    Raises :class:`InvalidConfig` (7) in ``block`` mode when the size in force leaves a block fewer than 4
    addresses (a pool whose first claim, in another mode, fixed ``/31`` or ``/32`` blocks): no block could hold a
    pod besides its first, gateway and last address, and the configuration's own ``blockSize`` cannot change that
    (docs/configuration.md "Gateway modes")."""
    rng = pool.range
    if rng.mode == "subnet" or rng.block_prefix == block_prefix:
        return pool
    if rng.mode == "block" and block_prefix > BITS[rng.family] - 2:
        raise InvalidConfig("pool %s has blocks of /%d, fixed by its first claim; gatewayMode block needs blocks of "
                            "at least 4 addresses" % (rng.subnet, block_prefix),
                            "the pool record's blockSize cannot change under live blocks: use another subnet for "
                            "gatewayMode block, or keep this pool's mode")
    return dataclasses.replace(pool, range=dataclasses.replace(rng, block_prefix=block_prefix))


def choose(pool: Pool, block_prefix: int, node: str, state: PoolState, reserved: Container[int], *,
           fresh: AbstractSet[int] = frozenset()) -> Decision:
    """The next free address for ``node`` in ``pool`` (see the module docstring for the order).

    ``block_prefix`` is the pool's block size (its record's once one exists); ``reserved`` the addresses of the
    pool's network and family that concurrent ADDs of this daemon have picked; ``fresh`` the first addresses of
    blocks whose address records were read during this request (they are not asked for again). Prunes
    ``state.room`` of blocks found full and moves ``state.claim_floor`` up; otherwise does not change ``state``.
    Deterministic. In ``block`` mode the pool never borrows (it is built with ``strict_affinity``; docs/decisions.md
    "Gateway modes").
    """
    pool = sized(pool, block_prefix)
    rng = pool.range
    cooling_on = pool.cooldown > 0
    if state.room_range != rng:
        state.reset_room(node, rng)
    # 1. the lowest free address in this node's blocks, lowest block first
    for first in tuple(state.room):
        st = state.blocks.get(first)
        if st is None or st.node != node:
            state.drop_room(first)
            continue
        if st.taken is None:
            return Load((st.block,))
        value = None if gateway_held(rng, st.block, st.taken) else _first_free_own(rng, st, reserved, cooling_on)
        if value is not None:
            return Pick(st.block, value, "own", st.mod_revision, st.cooling.get(value, 0))
        state.drop_room(first)  # full (or full of reservations: the cache puts it back when they settle)
    # 2. claim the lowest unclaimed block with a free address, unless the node owns maxBlocksPerNode blocks
    limit = pool.max_blocks if pool.max_blocks and at_block_limit(pool, node, state) else 0
    for n, blk in enumerate(() if limit else
                            candidate_blocks(rng, block_prefix, state.blocks, state.claim_floor)):
        if n == 0:  # every block the walk passed over to get here is claimed: start here next time
            state.claim_floor = max(state.claim_floor, blk.first)
        cool = state.unclaimed_cooling.get(blk.first, {})
        if gateway_held(rng, blk, state.unclaimed_taken.get(blk.first, ())):
            continue
        value = rng.first_free(blk.first, blk.last, Busy(state.unclaimed_taken.get(blk.first, ()), reserved,
                                                          cool if cooling_on else ()))
        if value is not None:
            return Pick(blk, value, "claim", 0, cool.get(value, 0))
    # 3. our full blocks: re-read once per request before giving up on them (another actor may have released)
    ours = [st for st in state.blocks.values() if st.node == node]
    stale = tuple(st.block for st in ours if st.block.first not in fresh)
    if stale:
        return Load(stale)
    # 4. other nodes' blocks: read, then borrow (unless strictAffinity)
    others = sorted((st for st in state.blocks.values() if st.node != node), key=lambda s: s.block.first)
    unread = tuple(st.block for st in others if st.block.first not in fresh or st.taken is None)
    if unread:
        return Load(unread)
    free_elsewhere = 0
    for st in others:
        taken = st.taken or set()
        if pool.strict_affinity:
            free_elsewhere += rng.usable_count(st.block.first, st.block.last) - sum(
                1 for v in taken if rng.usable(v) and st.block.first <= v <= st.block.last)
            continue
        value = rng.first_free(st.block.first, st.block.last, Busy(taken, reserved,
                                                                   st.cooling if cooling_on else ()))
        if value is not None:
            return Pick(st.block, value, "borrow", st.mod_revision, st.cooling.get(value, 0))
    if cooling_on:
        bypass = _earliest_cooling(pool, block_prefix, node, state, reserved, claim=not limit)
        if bypass is not None:
            return bypass
    allocated = sum(len(st.taken or ()) for st in state.blocks.values())
    return Exhausted(len(ours), allocated, free_elsewhere, limit)


def gateway_held(rng: Range, block: Block, taken: Container[int] | None) -> bool:
    """True in ``block`` mode when the block's gateway address (its first + 1) has an address record: it was
    handed to a pod before the pool switched to ``gatewayMode`` block (subnet or pointToPoint mode reserve no such
    address). A new pod of the block would get that pod's address as its gateway, and the bridge would put it on
    the node beside the pod, so the block gives no address until that pod is gone (docs/decisions.md "Gateway
    modes"). ``taken``: the block's address records as known (``None``: not read, nothing known). Pure."""
    return rng.per_block and taken is not None and block.first + 1 in taken


def at_block_limit(pool: Pool, node: str, state: PoolState) -> bool:
    """True when ``node`` owns at least ``pool.max_blocks`` blocks of the pool (never with ``max_blocks`` 0).
    Cost: one pass over the pool's claimed blocks, only when the node's own blocks are full."""
    if not pool.max_blocks:
        return False
    return sum(1 for st in state.blocks.values() if st.node == node) >= pool.max_blocks


def _earliest_cooling(pool: Pool, block_prefix: int, node: str, state: PoolState,
                      reserved: Container[int], claim: bool = True) -> Pick | None:
    """Decision 1 (B09): nothing is free but addresses in their cooldown; the one whose cooldown began earliest
    (lowest record revision, then lowest address), in our blocks, unclaimed blocks (only with ``claim``: not at
    ``maxBlocksPerNode``), or (unless strictAffinity) other nodes' blocks. Cost: the cooling records known in the
    pool's blocks, only on the way to exhaustion."""
    rng = pool.range
    best: tuple[int, int, Pick] | None = None
    for st in state.blocks.values():
        if (st.node != node and pool.strict_affinity) or gateway_held(rng, st.block, st.taken):
            continue
        taken = st.taken or set()
        for value, rev in st.cooling.items():
            if st.block.first <= value <= st.block.last and rng.usable(value) and value not in taken \
                    and value not in reserved and (best is None or (rev, value) < best[:2]):
                best = (rev, value, Pick(st.block, value, "own" if st.node == node else "borrow", st.mod_revision,
                                         rev, True))
    for first, cool in state.unclaimed_cooling.items() if claim else ():
        if first in state.blocks:
            continue
        taken = state.unclaimed_taken.get(first, set())
        if rng.per_block and first + 1 in taken:
            continue
        for value, rev in cool.items():
            if rng.usable(value) and value not in taken and value not in reserved \
                    and (best is None or (rev, value) < best[:2]):
                best = (rev, value, Pick(block_of(rng, block_prefix, value), value, "claim", 0, rev, True))
    return best[2] if best is not None else None


def _first_free_own(rng: Range, st: BlockState, reserved: Container[int], cooling_on: bool = False) -> int | None:
    """The lowest free address of one of our blocks, starting at its hint (then moving the hint up to the first
    address not taken or cooling): amortised, each address is walked over once per fill of the block."""
    taken = st.taken if st.taken is not None else set()
    cooling: Container[int] = st.cooling if cooling_on else ()
    busy: Container[int] = Busy(taken, (), cooling) if cooling_on and st.cooling else taken
    value = rng.first_free(max(st.hint, st.block.first), st.block.last, busy)
    if value is None:
        st.hint = st.block.last + 1
        return None
    st.hint = value
    if value not in reserved:
        return value
    return rng.first_free(value + 1, st.block.last, Busy(taken, reserved, cooling))


def choose_requested(pool: Pool, block_prefix: int, node: str, state: PoolState, value: int) -> Pick | Load:
    """The pick for a requested address (docs/cni-contract.md §5.3): in our block, in another node's block
    (borrowed), or claiming the unclaimed block that holds it (so every address lies in an owned block,
    invariant 2). Whether it is free is for the transaction's compare to decide (a cached "taken" may be stale).
    A requested address in its cooldown is given (the caller named it; docs/decisions.md "Release cooldown").

    Raises :class:`AddressUnavailable` (101) when the address is not allocatable in the pool (gateway, network,
    IPv4 broadcast, excluded, outside the range; in ``block`` mode a block's first, gateway or IPv4 last address),
    or, in ``block`` mode, lies in another node's block (no borrowing: docs/decisions.md "Gateway modes"), or lies
    in an unclaimed block while the node already owns ``maxBlocksPerNode`` blocks of the pool (docs/decisions.md
    "Block lifecycle"), or, in ``block`` mode, lies in a block whose gateway a pod holds (:func:`gateway_held`);
    to know that, a claimed block whose addresses were not read yet is answered with a :class:`Load` first.
    Raises :class:`InvalidConfig` (7) as :func:`sized`.
    """
    pool = sized(pool, block_prefix)
    rng = pool.range
    if not rng.usable(value):
        what = "the gateway" if value == rng.gateway else "not allocatable"
        if rng.per_block and rng.block_gateway(value) == value:
            what = "the gateway of its block"
        raise AddressUnavailable("requested address %s is %s in pool %s" % (to_ip(rng.family, value), what,
                                                                          rng.subnet))
    block = block_of(rng, block_prefix, value)
    st = state.blocks.get(block.first)
    if st is not None and st.node != node and rng.mode == "block":
        raise AddressUnavailable("requested address %s is in block %s of node %s; gatewayMode block never borrows "
                                 "(its gateway is on that node)" % (to_ip(rng.family, value), block.cidr(), st.node))
    if rng.per_block and st is not None and st.taken is None:
        return Load((st.block,))  # block mode: whether its gateway is a pod's is known once its addresses are read
    held = state.unclaimed_taken.get(block.first) if st is None else st.taken
    if gateway_held(rng, block, held):
        raise AddressUnavailable("requested address %s is in block %s, whose gateway %s is held by a pod allocated "
                                 "before the pool's gatewayMode became block" % (to_ip(rng.family, value),
                                                                                block.cidr(),
                                                                                to_ip(rng.family, block.first + 1)))
    if st is None:
        if at_block_limit(pool, node, state):
            raise AddressUnavailable("requested address %s lies in an unclaimed block of pool %s and node %s already "
                                     "owns maxBlocksPerNode %d block(s)" % (to_ip(rng.family, value), rng.subnet,
                                                                            node, pool.max_blocks))
        return Pick(block, value, "claim", 0, state.unclaimed_cooling.get(block.first, {}).get(value, 0))
    return Pick(st.block, value, "own" if st.node == node else "borrow", st.mod_revision, st.cooling.get(value, 0))
