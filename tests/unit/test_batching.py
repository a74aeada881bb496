"""Group commit (ipamd.batching): merged only when equivalent to one-by-one, each caller gets its own answer."""

from __future__ import annotations

import threading

import pytest

from ipamd.batching import GroupCommit
from ipamd.store.base import Compare, Get, Put, StoreOutcomeUnknown, StoreUnavailable
from ipamd.store.memory import MemoryStore


def put_if_absent(group: GroupCommit, key: str) -> bool:
    return group.txn([Compare(key, "version", "==", 0)], [Put(key, b"x")], [Get(key)], 5).succeeded


def run_threads(n: int, fn) -> None:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        fn(i)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_concurrent_independent_transactions_share_round_trips() -> None:
    store = MemoryStore()
    store.inject("txn", "delay", seconds=0.02, times=-1)  # a round trip takes time, so others queue behind it
    sizes: list[int] = []
    group = GroupCommit(store, on_send=sizes.append)
    results: dict[int, bool] = {}
    run_threads(32, lambda i: results.__setitem__(i, put_if_absent(group, "k/%d" % i)))
    assert all(results.values()) and len(results) == 32
    assert store.count("k/", "k0", 1) == 32
    assert sum(sizes) == 32 and len(sizes) < 32 and max(sizes) > 1


def test_a_failing_part_learns_its_own_failure_and_the_others_commit() -> None:
    store = MemoryStore()
    store.txn([], [Put("k/taken", b"old")], [], 1)
    store.inject("txn", "delay", seconds=0.05, times=1)
    group = GroupCommit(store, max_inflight=1)
    results: dict[str, object] = {}

    def one(i: int) -> None:
        key = "k/taken" if i == 0 else "k/%d" % i
        res = group.txn([Compare(key, "version", "==", 0)], [Put(key, b"new")], [Get(key)], 5)
        results[key] = res

    run_threads(8, one)
    taken = results["k/taken"]
    assert not taken.succeeded and taken.reads[0][0].value == b"old"  # type: ignore[attr-defined]
    assert all(r.succeeded for k, r in results.items() if k != "k/taken")  # type: ignore[attr-defined]


def test_parts_touching_the_same_key_are_never_merged() -> None:
    """Serial equivalence: 16 threads increment one counter by compare-and-swap; with merging of dependent parts
    increments would be lost. Every increment must count."""
    store = MemoryStore()
    store.txn([], [Put("counter", b"0")], [], 1)
    store.inject("txn", "delay", seconds=0.002, times=-1)
    group = GroupCommit(store)

    def increment(_: int) -> None:
        for _ in range(10):
            while True:
                kv = store.read("counter", None, 1)[0][0]
                res = group.txn([Compare("counter", "mod", "==", kv.mod_revision)],
                                [Put("counter", str(int(kv.value) + 1).encode())], [], 5)
                if res.succeeded:
                    break

    run_threads(16, increment)
    assert store.read("counter", None, 1)[0][0].value == b"160"


@pytest.mark.parametrize("kind, error", [("unavailable", StoreUnavailable), ("unknown", StoreOutcomeUnknown)])
def test_errors_reach_every_part(kind: str, error: type) -> None:
    store = MemoryStore()
    store.inject("txn", "delay", seconds=0.05, times=1)
    store.inject("txn", kind, times=1, match=lambda c, s, f: len(s) > 1)  # the merged round trip
    group = GroupCommit(store, max_inflight=1)
    outcomes: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            outcomes[i] = put_if_absent(group, "e/%d" % i)
        except error as exc:
            outcomes[i] = exc

    run_threads(6, one)
    failed = [o for o in outcomes.values() if isinstance(o, error)]
    assert failed, outcomes
    assert all(o is True or isinstance(o, error) for o in outcomes.values())


def test_success_branch_with_reads_goes_alone() -> None:
    store = MemoryStore()
    sizes: list[int] = []
    group = GroupCommit(store, on_send=sizes.append)
    res = group.txn([], [Put("a", b"1"), Get("a")], [], 1)
    assert res.succeeded and res.reads[0][0].value == b"1" and sizes == [1]
