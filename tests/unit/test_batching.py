"""Group commit (ipamd.batching): merged only when equivalent to one-by-one, each caller gets its own answer."""

from __future__ import annotations

import threading
import time

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


def test_a_merge_refused_for_too_many_operations_lowers_the_merge_limit() -> None:
    """B24: on an etcd with ``--max-txn-ops=16``, 40 transactions queued behind a slow one are merged into one of 40
    puts, which etcd refuses; every part is then answered on its own (all commit), and the merge limit halves below
    the refused size (40 -> 20 -> 10). Round after round the refused merges shrink, and from the third round on
    nothing is refused: every merge fits."""
    store = MemoryStore(max_txn_ops=16)
    group = GroupCommit(store, max_inflight=1)
    sizes: list[int] = []
    store.inject("txn", "action", times=-1, action=lambda: None,
                 match=lambda c, s, *rest: sizes.append(len(s)) is not None)  # records, never matches
    merged_per_round = []
    for r in range(4):
        store.inject("txn", "delay", seconds=0.4, times=1)
        slow = threading.Thread(target=put_if_absent, args=(group, "slow%d" % r))
        slow.start()
        time.sleep(0.1)  # the slow one holds the only send slot: the next 40 queue up
        before = len(sizes)
        results: list[bool] = []
        run_threads(40, lambda i, out=results, r=r: out.append(put_if_absent(group, "k%d-%d" % (r, i))))
        slow.join()
        assert len(results) == 40 and all(results)
        merged_per_round.append(max(sizes[before:]))
    assert store.count("k", "l", 1) == 160
    assert merged_per_round[0] > 16, merged_per_round  # the first merge took what was queued: refused
    assert group.max_ops <= 16, (group.max_ops, merged_per_round)
    assert all(n <= 16 for n in merged_per_round[2:]), merged_per_round  # later rounds: every merge fits
