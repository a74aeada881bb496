"""The store contract (tests/store_contract.py) against a real etcd member: the same cases the in-memory store
passes in the unit tier, so the double used by the fast service tests cannot drift from etcd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import EtcdCluster
from store_contract import (
    CONTRACT,
    WATCH_CONTRACT,
    case_read_at_a_compacted_revision_fails,
    case_watch_from_compacted_history_fails,
)

from ipamd.store.etcd import EtcdStore


@pytest.fixture
def store(etcd: EtcdCluster, prefix: str) -> Iterator[EtcdStore]:
    s = EtcdStore(etcd.endpoints, prefix)
    yield s
    s.close()


@pytest.mark.parametrize("case", CONTRACT + WATCH_CONTRACT, ids=lambda c: c.__name__)
def test_contract(case, store: EtcdStore) -> None:  # type: ignore[no-untyped-def]
    case(store)


def test_watch_from_compacted_history(store: EtcdStore, etcd: EtcdCluster) -> None:
    case_watch_from_compacted_history_fails(store, lambda rev: etcd.etcdctl("compact", str(rev)))


def test_read_at_a_compacted_revision(store: EtcdStore, etcd: EtcdCluster) -> None:
    case_read_at_a_compacted_revision_fails(store, lambda rev: etcd.etcdctl("compact", str(rev)))
