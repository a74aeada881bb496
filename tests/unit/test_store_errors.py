"""Every exception of the etcd client is translated at the store boundary (field case B53; docs/DEVELOPING.md "House
style"): callers only ever see the store's own errors, chained to the cause."""

from __future__ import annotations

import grpc
import pytest
from pyetcd import exceptions as etcd_exc

from ipamd.domain.errors import IpamError
from ipamd.store.base import StoreOutcomeUnknown, StoreRefused, StoreRejected, StoreUnavailable
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
    # what an operator's action clears is code 11 at once (B44, B45, B43)
    (FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"), False, StoreRefused),
    (FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"), True,
     StoreRefused),
    (FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"), False, StoreRefused),
    (FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or "
                  "password"), False, StoreRefused),
    (FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max"), True,
     StoreRejected),
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


@pytest.mark.parametrize("details, reason, words", [
    ("etcdserver: permission denied", "permission", ["lacks the permission", "read /t/pools/", "readwrite"]),
    ("etcdserver: mvcc: database space exceeded", "alarm", ["NOSPACE", "disarm"]),
    ("etcdserver: invalid auth token", "auth", ["credentials"]),
])
def test_refusals_name_their_cause(store: EtcdStore, details: str, reason: str, words: list[str]) -> None:
    """B44/B45: the error says what is missing (the permission and key, the alarm) so the log line is actionable."""
    code = grpc.StatusCode.PERMISSION_DENIED if reason == "permission" else grpc.StatusCode.UNKNOWN
    out = store._translate(FakeRpcError(code, details), False, "read", "pools/")
    assert isinstance(out, StoreRefused) and out.reason == reason and out.cni_code == 11
    for word in words:
        assert word in out.msg, out.msg


def test_errors_are_counted_by_kind() -> None:
    """docs/metrics.md ipamd_etcd_errors_total{kind}: the store's hook sees every failed call's kind."""
    kinds: list[str] = []
    s = EtcdStore("http://127.0.0.1:1", "/t/")
    s.on_error = kinds.append
    try:
        with pytest.raises(StoreUnavailable):
            s.read("k", None, 0.2)
        s._translate(FakeRpcError(grpc.StatusCode.PERMISSION_DENIED), False)
        s._translate(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "too many operations"), True)
    finally:
        s.close()
    assert kinds[0] in ("unavailable", "timeout") and kinds[1:] == ["refused", "rejected"], kinds
