"""The in-memory store (ipamd.store.memory) behaves as etcd v3 does for everything the service relies on.

The same properties are checked against a real etcd member in tests/integration/test_store_contract.py, with the
same test bodies, so the double cannot drift from the real thing (issue 6: "the fake never replaces them").
"""

from __future__ import annotations

import pytest
from store_contract import (
    CONTRACT,
    WATCH_CONTRACT,
    Clock,
    case_read_at_a_compacted_revision_fails,
    case_watch_from_compacted_history_fails,
)

from ipamd.store.base import StoreOutcomeUnknown, StoreRejected, StoreUnavailable
from ipamd.store.memory import MemoryStore


@pytest.mark.parametrize("case", CONTRACT + WATCH_CONTRACT, ids=lambda c: c.__name__)
def test_contract(case) -> None:  # type: ignore[no-untyped-def]
    case(MemoryStore())


def test_watch_from_compacted_history() -> None:
    store = MemoryStore()
    case_watch_from_compacted_history_fails(store, store.compact)


def test_broken_watch_raises_and_stays_dead() -> None:
    store = MemoryStore()
    watch = store.watch()
    watch.add("k", None, 1)
    store.break_watches()
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            watch.next(0.1)


def test_lease_expiry_deletes_keys() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    from ipamd.store.base import Put

    lease = store.grant_lease(10, 1)
    store.txn([], [Put("nodes/a", b"x", lease)], [], 1)
    assert store.keepalive(lease, 1) == 10
    clock.now += 9
    assert store.read("nodes/a", None, 1)[0]
    clock.now += 2
    assert store.read("nodes/a", None, 1)[0] == ()
    assert store.keepalive(lease, 1) == 0


def test_faults_unavailable_refused_delay_and_count() -> None:
    store = MemoryStore()
    fault = store.inject("read", "unavailable", times=2)
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            store.read("k", None, 1)
    assert store.read("k", None, 1) == ((), 1)
    assert fault.hits == 2 and store.calls["read"] == 3
    store.inject("count", "refused")
    with pytest.raises(StoreRejected):
        store.count("a", "b", 1)


def test_fault_unknown_outcome_applies_the_write() -> None:
    from ipamd.store.base import Put

    store = MemoryStore()
    store.inject("txn", "unknown")
    with pytest.raises(StoreOutcomeUnknown):
        store.txn([], [Put("k", b"v")], [], 1)
    assert store.read("k", None, 1)[0][0].value == b"v"


def test_fault_match_and_action() -> None:
    from ipamd.store.base import Put

    store = MemoryStore()
    store.inject("txn", "action", action=lambda: store.txn([], [Put("sneaky", b"1")], [], 1),
                 match=lambda compares, success, failure: any(getattr(op, "key", "") == "mine" for op in success))
    store.txn([], [Put("other", b"1")], [], 1)
    assert store.read("sneaky", None, 1)[0] == ()
    store.txn([], [Put("mine", b"1")], [], 1)
    assert store.read("sneaky", None, 1)[0]


def test_closed_store_is_unavailable() -> None:
    store = MemoryStore()
    store.close()
    with pytest.raises(StoreUnavailable):
        store.read("k", None, 1)


def test_read_at_a_compacted_revision() -> None:
    store = MemoryStore()
    case_read_at_a_compacted_revision_fails(store, store.compact)
