"""The store contract as executable cases: each takes a fresh, empty :class:`ipamd.store.base.Store` and asserts
etcd v3's semantics. Run against the in-memory store (tests/unit/test_memory_store.py) and against a real etcd
(tests/integration/test_store_contract.py), so the double cannot drift from etcd.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ipamd.store.base import Compare, Delete, Get, Put, Store, StoreRejected, prefix_end

T = 5.0


class Clock:
    """A settable monotonic clock for lease tests."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def put(store: Store, key: str, value: bytes = b"v") -> int:
    return store.txn([], [Put(key, value)], [], T).revision


def case_put_versions(store: Store) -> None:
    r1 = put(store, "a")
    kv = store.read("a", None, T)[0][0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (r1, r1, 1)
    r2 = put(store, "a", b"w")
    kv = store.read("a", None, T)[0][0]
    assert r2 == r1 + 1
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"w", r1, r2, 2)


def case_one_revision_per_writing_txn(store: Store) -> None:
    r0 = put(store, "x")
    res = store.txn([], [Put("a", b"1"), Put("b", b"2"), Delete("x")], [], T)
    assert res.succeeded and res.revision == r0 + 1
    a, b = store.read("a", prefix_end("b"), T)[0]
    assert a.mod_revision == b.mod_revision == r0 + 1
    ro = store.txn([], [Get("a")], [], T)
    assert ro.revision == r0 + 1 and ro.reads[0][0].value == b"1"


def case_compares(store: Store) -> None:
    r = put(store, "k")
    cases = [
        (Compare("missing", "version", "==", 0), True), (Compare("missing", "mod", "==", 0), True),
        (Compare("missing", "create", "==", 0), True), (Compare("k", "version", "==", 0), False),
        (Compare("k", "version", "==", 1), True), (Compare("k", "mod", "==", r), True),
        (Compare("k", "mod", "==", r - 1), False), (Compare("k", "create", "==", r), True),
        (Compare("k", "mod", "!=", r), False), (Compare("k", "mod", "<", r + 1), True),
        (Compare("k", "mod", ">", r), False), (Compare("k", "version", ">", 0), True),
    ]
    for compare, expected in cases:
        assert store.txn([compare], [], [], T).succeeded is expected, compare
    both = store.txn([Compare("k", "version", "==", 1), Compare("missing", "version", "==", 1)], [], [], T)
    assert not both.succeeded


def case_range_compares(store: Store) -> None:
    """Every key of the range must satisfy the compare; an empty range compares as a missing key."""
    assert store.txn([Compare("e/", "version", "==", 0, prefix_end("e/"))], [], [], T).succeeded
    r1 = put(store, "e/a")
    assert not store.txn([Compare("e/", "version", "==", 0, prefix_end("e/"))], [], [], T).succeeded
    assert store.txn([Compare("e/", "mod", "<", r1 + 1, prefix_end("e/"))], [], [], T).succeeded
    r2 = put(store, "e/b")
    assert not store.txn([Compare("e/", "mod", "<", r2, prefix_end("e/"))], [], [], T).succeeded
    assert store.txn([Compare("e/", "mod", ">", 0, prefix_end("e/"))], [], [], T).succeeded


def case_failure_reads_in_order(store: Store) -> None:
    put(store, "p/1", b"1")
    put(store, "p/2", b"2")
    put(store, "q", b"q")
    res = store.txn([Compare("q", "version", "==", 0)], [Put("never", b"x")],
                    [Get("q"), Get("p/", prefix_end("p/")), Get("missing")], T)
    assert not res.succeeded
    assert [[kv.value for kv in r] for r in res.reads] == [[b"q"], [b"1", b"2"], []]
    assert store.read("never", None, T)[0] == ()


def case_range_half_open_and_count(store: Store) -> None:
    for key in ("r/a", "r/b", "r/c", "r0"):
        put(store, key)
    kvs, _ = store.read("r/a", "r/c", T)
    assert [kv.key for kv in kvs] == ["r/a", "r/b"]
    assert [kv.key for kv in store.read("r/", prefix_end("r/"), T)[0]] == ["r/a", "r/b", "r/c"]
    assert store.count("r/", prefix_end("r/"), T) == 3
    assert store.count("s/", prefix_end("s/"), T) == 0


def case_too_many_ops_refused(store: Store) -> None:
    with pytest.raises(StoreRejected):
        store.txn([], [Put("m/%03d" % i, b"") for i in range(129)], [], T)
    assert store.read("m/", prefix_end("m/"), T)[0] == ()
    store.txn([], [Put("m/%03d" % i, b"") for i in range(128)], [], T)
    assert store.count("m/", prefix_end("m/"), T) == 128


def case_duplicate_key_refused(store: Store) -> None:
    with pytest.raises(StoreRejected):
        store.txn([], [Put("d", b"1"), Delete("d")], [], T)
    assert store.read("d", None, T)[0] == ()


def case_delete_and_recreate(store: Store) -> None:
    r1 = put(store, "k")
    store.txn([Compare("k", "mod", "==", r1)], [Delete("k")], [], T)
    assert store.read("k", None, T)[0] == ()
    r3 = put(store, "k")
    kv = store.read("k", None, T)[0][0]
    assert (kv.create_revision, kv.version) == (r3, 1)


def case_lease_revoke_deletes_keys(store: Store) -> None:
    lease = store.grant_lease(30, T)
    store.txn([], [Put("nodes/n", b"x", lease)], [], T)
    assert store.keepalive(lease, T) > 0
    store.revoke(lease, T)
    assert store.read("nodes/n", None, T)[0] == ()


def case_reads_at_a_revision(store: Store) -> None:
    """Reads and count-only reads at a past revision see the range as it was then (one consistent snapshot over
    several reads, docs/ipamctl.md "Pools, blocks and usage"): later puts, changes and deletes are invisible."""
    put(store, "s/a", b"1")
    r = put(store, "s/b", b"2")
    put(store, "s/a", b"changed")
    put(store, "s/c")
    store.txn([], [Delete("s/b")], [], T)
    kvs, _ = store.read("s/", prefix_end("s/"), T, revision=r)
    assert [(kv.key, kv.value) for kv in kvs] == [("s/a", b"1"), ("s/b", b"2")]
    assert store.count("s/", prefix_end("s/"), T, revision=r) == 2
    assert store.count("s/", prefix_end("s/"), T) == 2  # now: s/a and s/c
    assert [kv.value for kv in store.read("s/a", None, T, revision=r)[0]] == [b"1"]
    assert store.read("s/c", None, T, revision=r)[0] == ()


def case_read_at_a_compacted_revision_fails(store: Store, compact: Callable[[int], None]) -> None:
    from ipamd.store.base import StoreCompacted

    r1 = put(store, "d/a")
    r2 = put(store, "d/a", b"w")
    compact(r2)
    with pytest.raises(StoreCompacted):
        store.read("d/", prefix_end("d/"), T, revision=r1)


CONTRACT: list[Callable[[Store], None]] = [
    case_put_versions, case_one_revision_per_writing_txn, case_compares, case_range_compares,
    case_failure_reads_in_order,
    case_range_half_open_and_count, case_too_many_ops_refused, case_duplicate_key_refused,
    case_delete_and_recreate, case_lease_revoke_deletes_keys, case_reads_at_a_revision,
]


# -- watches ---------------------------------------------------------------------------------------------------------

def collect(watch, want: int, timeout: float = 5.0) -> list:  # type: ignore[no-untyped-def]
    """The next ``want`` events of a watch (fails after ``timeout``)."""
    import time

    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        update = watch.next(max(0.01, deadline - time.monotonic()))
        assert update is not None or time.monotonic() < deadline, "only %d of %d events" % (len(out), want)
        if update is not None:
            out.extend(update.events)
    return out


def case_watch_puts_and_deletes_in_order(store: Store) -> None:
    start = put(store, "w/before") + 1
    watch = store.watch()
    try:
        watch.add("w/", prefix_end("w/"), start)
        r1 = put(store, "w/a", b"1")
        r2 = store.txn([], [Put("w/b", b"2"), Delete("w/a")], [], T).revision
        put(store, "x/outside")
        events = collect(watch, 3)
        assert [(e.deleted, e.kv.key, e.kv.mod_revision) for e in events] == [
            (False, "w/a", r1), (False, "w/b", r2), (True, "w/a", r2)]
        assert events[1].kv.value == b"2"
    finally:
        watch.close()


def case_watch_replays_history_from_its_start(store: Store) -> None:
    r1 = put(store, "h/a")
    put(store, "h/b")
    watch = store.watch()
    try:
        watch.add("h/", prefix_end("h/"), r1)
        assert [e.kv.key for e in collect(watch, 2)] == ["h/a", "h/b"]
    finally:
        watch.close()


def case_watch_remove_and_progress(store: Store) -> None:
    import time

    watch = store.watch()
    try:
        r0 = put(store, "p/0")
        watch.add("p/", prefix_end("p/"), r0 + 1)
        watch.add("q/", prefix_end("q/"), r0 + 1)
        time.sleep(0.2)  # let etcd acknowledge both creates
        watch.remove("p/")
        time.sleep(0.2)
        put(store, "p/1")
        r2 = put(store, "q/1")
        assert [e.kv.key for e in collect(watch, 1)] == ["q/1"]
        watch.progress()
        deadline = time.monotonic() + 5
        while True:
            update = watch.next(1.0)
            if update is not None and not update.events and update.revision >= r2:
                break
            assert time.monotonic() < deadline and (update is None or not update.events), update
    finally:
        watch.close()



WATCH_CONTRACT: list[Callable[[Store], None]] = [
    case_watch_puts_and_deletes_in_order, case_watch_replays_history_from_its_start, case_watch_remove_and_progress,
]


def case_watch_from_compacted_history_fails(store: Store, compact: Callable[[int], None]) -> None:
    from ipamd.store.base import StoreCompacted

    r1 = put(store, "c/a")
    r2 = put(store, "c/b")
    compact(r2)
    watch = store.watch()
    try:
        watch.add("c/", prefix_end("c/"), r1)
        with pytest.raises(StoreCompacted) as info:
            for _ in range(50):
                watch.next(0.1)
        assert info.value.compact_revision >= r2
    finally:
        watch.close()
