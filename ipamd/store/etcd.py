"""The etcd v3 store: the only module that imports the etcd client (``etcd-sdk-python``, import name ``pyetcd``).

It uses the client's endpoints (several, with failover), auth and TLS, and builds ``TxnRequest`` messages itself
so that a transaction's response header revision reaches the service. Third-party errors are translated here,
chained with ``from``: gRPC UNAVAILABLE / no endpoint -> :class:`StoreUnavailable`; DEADLINE_EXCEEDED or a dropped
call after sending -> :class:`StoreOutcomeUnknown`.
"""

from __future__ import annotations

import logging
import threading
from typing import Sequence
from urllib.parse import urlsplit

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc

from .base import (KV, Compare, Delete, Get, Op, Put, StoreOutcomeUnknown, StoreRejected, StoreUnavailable,
                   TxnResult)

log = logging.getLogger(__name__)

_TARGETS = {
    "version": etcdrpc.Compare.VERSION,
    "mod": etcdrpc.Compare.MOD,
    "create": etcdrpc.Compare.CREATE,
}
_FIELDS = {"version": "version", "mod": "mod_revision", "create": "create_revision"}
_OPS = {
    "==": etcdrpc.Compare.EQUAL,
    "!=": etcdrpc.Compare.NOT_EQUAL,
    "<": etcdrpc.Compare.LESS,
    ">": etcdrpc.Compare.GREATER,
}
#: Seconds a failed endpoint is skipped before it is tried again (the client's default is 300 s).
ENDPOINT_RETRY_SECONDS = 1.0
#: gRPC channel options: reconnect within a second once etcd is back (gRPC's default backoff grows to 120 s, so a
#: long outage would keep the daemon failing for minutes after etcd recovered), and accept large range reads
#: (GC, list and check read one prefix at a time; gRPC's default limit is 4 MiB, ~12k attachments).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 512 << 20),
]
#: gRPC codes that say "this request will never succeed as sent" (too many txn ops, too large, auth): not retried.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
              grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE}


def parse_endpoints(text: str) -> list[tuple[str, int, bool]]:
    """``"http://127.0.0.1:2379,https://h:2379"`` -> ``[(host, port, secure)]``; raises ``ValueError``."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        url = urlsplit(item if "://" in item else "http://" + item)
        if url.hostname is None or url.port is None:
            raise ValueError("etcd endpoint %r needs host:port" % item)
        out.append((url.hostname, url.port, url.scheme == "https"))
    if not out:
        raise ValueError("no etcd endpoints in %r" % text)
    return out


class EtcdStore:
    """:class:`ipamd.store.base.Store` on an etcd v3 cluster; every key is prefixed with ``prefix``.

    ``endpoints`` is the comma-separated URL list; requests go to one endpoint and move to the next after a
    connection failure. Thread-safe: the gRPC channels are shared, failover bookkeeping is under a lock.
    """

    def __init__(self, endpoints: str, prefix: str, *, ca_cert: str | None = None, cert: str | None = None,
                 key: str | None = None, user: str | None = None, password: str | None = None,
                 timeout: float = 5.0) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        creds = None
        eps = []
        for host, port, secure in parse_endpoints(endpoints):
            if secure and creds is None:
                if ca_cert is None:
                    raise ValueError("https etcd endpoint %s:%d needs a CA certificate" % (host, port))
                creds = pyetcd.MultiEndpointEtcd3Client.get_secure_creds(ca_cert, key, cert)
            eps.append(pyetcd.Endpoint(host, port, secure=secure, creds=creds if secure else None,
                                       time_retry=ENDPOINT_RETRY_SECONDS, opts=CHANNEL_OPTIONS))
        try:
            self._client = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, user=user,
                                                           password=password, failover=True)
        except grpc.RpcError as exc:
            raise StoreUnavailable("cannot authenticate to etcd at %s: %s" % (endpoints, exc.code())) from exc

    # -- helpers -------------------------------------------------------------------------------------------

    def _k(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    def _kv(self, kv: etcdrpc.KeyValue) -> KV:
        return KV(kv.key.decode()[len(self.prefix):], kv.value, kv.create_revision, kv.mod_revision, kv.version)

    def _range_request(self, key: str, range_end: str | None) -> etcdrpc.RangeRequest:
        req = etcdrpc.RangeRequest(key=self._k(key))
        if range_end is not None:
            req.range_end = self._k(range_end)
        return req

    def _op(self, op: Op) -> etcdrpc.RequestOp:
        if isinstance(op, Put):
            return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=self._k(op.key), value=op.value,
                                                                    lease=op.lease))
        if isinstance(op, Delete):
            return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=self._k(op.key)))
        if isinstance(op, Get):
            return etcdrpc.RequestOp(request_range=self._range_request(op.key, op.range_end))
        raise TypeError("unknown store op %r" % (op,))

    def _compare(self, c: Compare) -> etcdrpc.Compare:
        msg = etcdrpc.Compare(key=self._k(c.key), target=_TARGETS[c.target], result=_OPS[c.op])
        setattr(msg, _FIELDS[c.target], c.value)
        return msg

    def _call(self, stub_name: str, method: str, request: object, timeout: float, write: bool) -> object:
        client = self._client
        try:
            with self._lock:
                stub = getattr(client, stub_name)
            return getattr(stub, method)(request, timeout, credentials=client.call_credentials,
                                         metadata=client.metadata)
        except etcd_exc.NoServerAvailableError as exc:
            raise StoreUnavailable("no etcd endpoint available") from exc
        except ValueError as exc:  # the client's "Trying to use a failed node" without failover
            raise StoreUnavailable("no etcd endpoint available: %s" % exc) from exc
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
                with self._lock:
                    ep = client.endpoint_in_use
                    if ep is not None:
                        ep.fail()
                    client._clear_old_stubs()
            detail = "%s: %s" % (code.name, exc.details())
            if code in _PERMANENT:
                raise StoreRejected("etcd refused the request: %s" % detail) from exc
            if write and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
                raise StoreOutcomeUnknown("etcd did not answer: %s" % detail) from exc
            raise StoreUnavailable("etcd request failed: %s" % detail) from exc

    # -- Store ---------------------------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
            timeout: float) -> TxnResult:
        """See :meth:`ipamd.store.base.Store.txn`."""
        req = etcdrpc.TxnRequest(compare=[self._compare(c) for c in compares],
                                 success=[self._op(o) for o in success],
                                 failure=[self._op(o) for o in failure])
        resp = self._call("kvstub", "Txn", req, timeout, write=True)
        reads = []
        for r in resp.responses:  # type: ignore[attr-defined]
            if r.WhichOneof("response") == "response_range":
                reads.append(tuple(self._kv(kv) for kv in r.response_range.kvs))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), tuple(reads))  # type: ignore[attr-defined]

    def read(self, key: str, range_end: str | None, timeout: float) -> tuple[tuple[KV, ...], int]:
        """See :meth:`ipamd.store.base.Store.read`."""
        resp = self._call("kvstub", "Range", self._range_request(key, range_end), timeout, write=False)
        return tuple(self._kv(kv) for kv in resp.kvs), int(resp.header.revision)  # type: ignore[attr-defined]

    def count(self, key: str, range_end: str, timeout: float) -> int:
        """See :meth:`ipamd.store.base.Store.count`."""
        req = self._range_request(key, range_end)
        req.count_only = True
        resp = self._call("kvstub", "Range", req, timeout, write=False)
        return int(resp.count)  # type: ignore[attr-defined]

    def grant_lease(self, ttl: int, timeout: float) -> int:
        resp = self._call("leasestub", "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=ttl), timeout, write=False)
        return int(resp.ID)  # type: ignore[attr-defined]

    def keepalive(self, lease_id: int, timeout: float) -> int:
        # LeaseKeepAlive is a stream; one request/response pair refreshes the lease.
        client = self._client
        try:
            with self._lock:
                stub = client.leasestub
            for resp in stub.LeaseKeepAlive(iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout,
                                            credentials=client.call_credentials, metadata=client.metadata):
                return int(resp.TTL)
        except grpc.RpcError as exc:
            raise StoreUnavailable("etcd lease keepalive failed: %s" % exc.code().name) from exc
        return 0

    def revoke(self, lease_id: int, timeout: float) -> None:
        self._call("leasestub", "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease_id), timeout, write=False)

    def close(self) -> None:
        self._client.close()
