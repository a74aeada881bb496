"""Every exception of the etcd client is translated at the store boundary (field case B53; docs/DEVELOPING.md "House
style"): callers only ever see the store's own errors, chained to the cause."""

from __future__ import annotations

import grpc
import pytest
from pyetcd import exceptions as etcd_exc

from ipamd.domain.errors import IpamError
from ipamd.store.base import StoreOutcomeUnknown, StoreRejected, StoreUnavailable
from ipamd.store.etcd import EtcdStore


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "x") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.fixture(scope="module")
def store() -> EtcdStore:
    return EtcdStore("http://127.0.0.1:1", "/t/")  # never connects: translation only


@pytest.mark.parametrize("exc, write, expected", [
    (FakeRpcError(grpc.StatusCode.UNAVAILABLE), False, StoreUnavailable),
    (FakeRpcError(grpc.StatusCode.UNAVAILABLE), True, StoreOutcomeUnknown),
    (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED), True, StoreOutcomeUnknown),
    (FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED), False, StoreUnavailable),
    (FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "too many operations in txn request"), True, StoreRejected),
    (FakeRpcError(grpc.StatusCode.PERMISSION_DENIED), False, StoreRejected),
    (FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED), True, StoreRejected),
    (FakeRpcError(grpc.StatusCode.INTERNAL), False, StoreUnavailable),
    (etcd_exc.NoServerAvailableError("none"), False, StoreUnavailable),
    (etcd_exc.ConnectionFailedError(), False, StoreUnavailable),
    (etcd_exc.ConnectionTimeoutError(), True, StoreUnavailable),
    (ValueError("Trying to use a failed node"), False, StoreUnavailable),
    (RuntimeError("something in the client broke"), False, StoreUnavailable),
    (AttributeError("'NoneType' object has no attribute 'x'"), True, StoreUnavailable),
])
def test_translation(store: EtcdStore, exc: BaseException, write: bool, expected: type) -> None:
    out = store._translate(exc, write)
    assert type(out) is expected
    assert isinstance(out, IpamError) and out.msg


def test_calls_are_translated_and_chained(store: EtcdStore) -> None:
    with pytest.raises(StoreUnavailable) as info:
        store.read("k", None, 0.2)
    assert info.value.__cause__ is not None
    with pytest.raises(StoreUnavailable):
        store.keepalive(1, 0.2)
    with pytest.raises(StoreUnavailable):
        store.grant_lease(5, 0.2)
