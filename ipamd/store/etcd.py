"""The etcd v3 store: the only module that imports the etcd client (``etcd-sdk-python``, import name ``pyetcd``).

It uses the client's endpoints (several, with failover), auth and TLS, and builds ``TxnRequest`` messages itself
so that a transaction's response header revision reaches the service. Third-party errors are translated here,
chained with ``from``: gRPC UNAVAILABLE / no endpoint -> :class:`StoreUnavailable`; DEADLINE_EXCEEDED or a dropped
call after sending -> :class:`StoreOutcomeUnknown`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import exceptions as etcd_exc

from ..domain.errors import IpamError
from .base import (
    KV,
    Compare,
    Delete,
    Get,
    Op,
    Put,
    StoreCompacted,
    StoreOutcomeUnknown,
    StoreRejected,
    StoreUnavailable,
    TxnResult,
    WatchEvent,
    WatchUpdate,
    parse_endpoints,
)

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
        except Exception as exc:
            raise self._translate(exc, write=False) from exc

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

    def _add_ops(self, target: Any, ops: Sequence[Op]) -> None:
        """Append ``ops`` to a repeated ``RequestOp`` field in place (2-3x cheaper than building each message and
        its wrapper separately: this is on every ADD's path)."""
        prefix = self.prefix
        for op in ops:
            if isinstance(op, Put):
                put = target.add().request_put
                put.key = (prefix + op.key).encode()
                put.value = op.value
                if op.lease:
                    put.lease = op.lease
            elif isinstance(op, Delete):
                target.add().request_delete_range.key = (prefix + op.key).encode()
            elif isinstance(op, Get):
                rng = target.add().request_range
                rng.key = (prefix + op.key).encode()
                if op.range_end is not None:
                    rng.range_end = (prefix + op.range_end).encode()
            else:
                raise TypeError("unknown store op %r" % (op,))

    def _add_compares(self, target: Any, compares: Sequence[Compare]) -> None:
        prefix = self.prefix
        for c in compares:
            msg = target.add()
            msg.key = (prefix + c.key).encode()
            msg.target = _TARGETS[c.target]
            msg.result = _OPS[c.op]
            setattr(msg, _FIELDS[c.target], c.value)
            if c.range_end is not None:
                msg.range_end = (prefix + c.range_end).encode()

    def _call(self, stub_name: str, method: str, request: object, timeout: float, write: bool) -> Any:
        client = self._client
        try:
            with self._lock:
                stub = getattr(client, stub_name)
            return getattr(stub, method)(request, timeout, credentials=client.call_credentials,
                                         metadata=client.metadata)
        except Exception as exc:
            raise self._translate(exc, write) from exc

    def _translate(self, exc: BaseException, write: bool) -> IpamError:
        """The store error for any exception of the etcd client or gRPC (field case B53): unavailability and
        timeouts are :class:`StoreUnavailable` (:class:`StoreOutcomeUnknown` for a write that may have committed),
        refusals :class:`StoreRejected`; anything unexpected is :class:`StoreUnavailable` naming its class, so a
        caller retries within its deadline and never sees a foreign exception."""
        if isinstance(exc, IpamError):
            return exc
        if isinstance(exc, etcd_exc.NoServerAvailableError):
            return StoreUnavailable("no etcd endpoint available")
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
                client = getattr(self, "_client", None)  # None while the constructor authenticates
                if client is not None:
                    with self._lock:
                        ep = client.endpoint_in_use
                        if ep is not None:
                            ep.fail()
                        client._clear_old_stubs()
            details = exc.details() if callable(getattr(exc, "details", None)) else ""
            detail = "%s: %s" % (getattr(code, "name", code), details)
            if code in _PERMANENT:
                return StoreRejected("etcd refused the request: %s" % detail)
            if write and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
                return StoreOutcomeUnknown("etcd did not answer: %s" % detail)
            return StoreUnavailable("etcd request failed: %s" % detail)
        if isinstance(exc, etcd_exc.Etcd3Exception):
            return StoreUnavailable("etcd client error: %s" % (str(exc) or exc.__class__.__name__))
        if isinstance(exc, ValueError):  # the client's "Trying to use a failed node" without failover
            return StoreUnavailable("no etcd endpoint available: %s" % exc)
        return StoreUnavailable("unexpected etcd client error: %s: %s" % (exc.__class__.__name__, exc))

    # -- Store ---------------------------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
            timeout: float) -> TxnResult:
        """See :meth:`ipamd.store.base.Store.txn`."""
        req = etcdrpc.TxnRequest()
        self._add_compares(req.compare, compares)
        self._add_ops(req.success, success)
        self._add_ops(req.failure, failure)
        resp = self._call("kvstub", "Txn", req, timeout, write=True)
        reads = []
        for r in resp.responses:
            if r.WhichOneof("response") == "response_range":
                reads.append(tuple(self._kv(kv) for kv in r.response_range.kvs))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), tuple(reads))

    def read(self, key: str, range_end: str | None, timeout: float) -> tuple[tuple[KV, ...], int]:
        """See :meth:`ipamd.store.base.Store.read`."""
        resp = self._call("kvstub", "Range", self._range_request(key, range_end), timeout, write=False)
        return tuple(self._kv(kv) for kv in resp.kvs), int(resp.header.revision)

    def count(self, key: str, range_end: str, timeout: float) -> int:
        """See :meth:`ipamd.store.base.Store.count`."""
        req = self._range_request(key, range_end)
        req.count_only = True
        resp = self._call("kvstub", "Range", req, timeout, write=False)
        return int(resp.count)

    def grant_lease(self, ttl: int, timeout: float) -> int:
        resp = self._call("leasestub", "LeaseGrant", etcdrpc.LeaseGrantRequest(TTL=ttl), timeout, write=False)
        return int(resp.ID)

    def keepalive(self, lease_id: int, timeout: float) -> int:
        """See :meth:`ipamd.store.base.Store.keepalive` (one request/response pair of the LeaseKeepAlive stream)."""
        client = self._client
        try:
            with self._lock:
                stub = client.leasestub
            for resp in stub.LeaseKeepAlive(iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout,
                                            credentials=client.call_credentials, metadata=client.metadata):
                return int(resp.TTL)
        except Exception as exc:
            raise self._translate(exc, write=False) from exc
        return 0

    def revoke(self, lease_id: int, timeout: float) -> None:
        self._call("leasestub", "LeaseRevoke", etcdrpc.LeaseRevokeRequest(ID=lease_id), timeout, write=False)

    def watch(self) -> _EtcdWatch:
        """See :meth:`ipamd.store.base.Store.watch`: one gRPC Watch stream on the endpoint in use."""
        client = self._client
        try:
            with self._lock:
                stub = etcdrpc.WatchStub(client.channel)
        except Exception as exc:
            raise self._translate(exc, write=False) from exc
        return _EtcdWatch(self, stub, client.call_credentials, client.metadata)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            log.debug("closing the etcd client failed", exc_info=True)


_CLOSE = object()
#: Seconds after which an idle watch stream asks etcd for a progress report.
WATCH_TICK = 1.0


class _EtcdWatch:
    """:class:`ipamd.store.base.Watch` over one bidirectional etcd Watch stream.

    Requests (create, cancel, progress) go through a queue the stream reads; when nothing was asked for
    :data:`WATCH_TICK` seconds the stream asks for a progress report by itself, so :meth:`next`, which reads the
    responses in the caller's thread (no extra thread hop per message), comes back at least that often. etcd
    assigns watch ids in the order of the create requests, so pending creates are matched first in, first out. A
    compacted start revision or a broken stream ends the watch: :meth:`next` raises the translated error, then and
    on every later call.
    """

    def __init__(self, store: EtcdStore, stub: Any, credentials: Any, metadata: Any) -> None:
        self._store = store
        self._requests: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[str | None] = []  # keys of creates not yet acknowledged, in order (None: removed since)
        self._ids: dict[str, int] = {}  # range start key -> etcd watch id
        self._live: set[int] = set()  # watch ids whose events are delivered
        self._closed = False
        self._error: IpamError | None = None
        self._call = stub.Watch(self._request_iter(), credentials=credentials, metadata=metadata)

    def _request_iter(self) -> Any:
        while True:
            try:
                item = self._requests.get(timeout=WATCH_TICK)
            except queue.Empty:
                item = etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest())
            if item is _CLOSE:
                return
            yield item

    def add(self, key: str, range_end: str | None, start_revision: int) -> None:
        req = etcdrpc.WatchCreateRequest(key=self._store._k(key), start_revision=start_revision)
        if range_end is not None:
            req.range_end = self._store._k(range_end)
        with self._lock:
            self._pending.append(key)
            self._requests.put(etcdrpc.WatchRequest(create_request=req))

    def remove(self, key: str) -> None:
        with self._lock:
            watch_id = self._ids.pop(key, None)
            if watch_id is None:
                # not acknowledged yet: cancel it when its create is answered
                self._pending = [None if k == key else k for k in self._pending]
                return
            self._live.discard(watch_id)
        self._cancel(watch_id)

    def _cancel(self, watch_id: int) -> None:
        self._requests.put(etcdrpc.WatchRequest(cancel_request=etcdrpc.WatchCancelRequest(watch_id=watch_id)))

    def progress(self) -> None:
        self._requests.put(etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest()))

    def next(self, timeout: float) -> WatchUpdate | None:
        """The next response as an update (``None`` for one that only acknowledged a create). Blocks until etcd
        answers: at most about :data:`WATCH_TICK` seconds when the stream is healthy (``timeout`` is not used)."""
        if self._error is not None:
            raise self._error
        try:
            try:
                resp = next(self._call)
            except StopIteration:
                raise StoreUnavailable("etcd closed the watch stream") from None
            if resp.compact_revision:
                raise StoreCompacted("etcd compacted the watched history up to revision %d" % resp.compact_revision,
                                     resp.compact_revision)
            if resp.created:
                with self._lock:
                    key = self._pending.pop(0) if self._pending else None
                    if key is not None:
                        self._ids[key] = resp.watch_id
                        self._live.add(resp.watch_id)
                if key is None:
                    self._cancel(resp.watch_id)
            if resp.canceled and resp.cancel_reason:
                raise StoreUnavailable("etcd cancelled a watch: %s" % resp.cancel_reason)
        except IpamError as exc:
            self._error = exc
            raise
        except Exception as exc:
            self._error = StoreUnavailable("watch closed") if self._closed else self._store._translate(exc, False)
            raise self._error from exc
        if resp.created and not resp.events:
            return None
        if not resp.events:
            # a progress report: etcd sends one only when every watch of the stream is synced, so its revision
            # is a promise for all of them
            return WatchUpdate((), int(resp.header.revision))
        if resp.watch_id not in self._live:
            return None  # a range removed meanwhile
        prefix = len(self._store.prefix)
        # events promise nothing about the stream's other watches: no revision claimed
        return WatchUpdate(tuple(WatchEvent(ev.type == 1, KV(ev.kv.key.decode()[prefix:], ev.kv.value,
                                                              ev.kv.create_revision, ev.kv.mod_revision,
                                                              ev.kv.version))
                                 for ev in resp.events), 0)

    def close(self) -> None:
        self._closed = True
        self._requests.put(_CLOSE)
        try:
            self._call.cancel()
        except Exception:
            log.debug("cancelling the etcd watch failed", exc_info=True)
