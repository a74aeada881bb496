"""The etcd v3 store: the only module that imports the etcd client (``etcd-sdk-python``, import name ``pyetcd``).

It uses the client's generated gRPC stubs (``pyetcd.etcdrpc``) and keeps the rest to itself, because the parts of
the client it replaces were the cause of field cases B42, B43, B50 and B22's "no endpoint available":

- **Endpoints** (docs/architecture.md "etcd endpoints"): one gRPC channel per configured endpoint, opened lazily.
  Calls go to the endpoint in use; a connection failure or a timeout moves the store to the next endpoint in the
  list, and a read is tried on each other endpoint once within its own timeout. No endpoint is ever refused
  locally: with every member marked failed, the next call still goes out, so the daemon never answers "no endpoint
  available" while a member is reachable.
- **Authentication** (B42, B43): the token travels as plain ``token`` metadata, which gRPC sends on insecure
  (``http://``) channels too (its call credentials it refuses there). The first call authenticates; a call refused
  with an invalid or expired token (etcd: "invalid auth token", "revision of auth store is old", "user name is
  empty") authenticates again and is retried once, transparently. The password is read from its file at each
  authentication, so a rotated file needs no restart. Neither password nor token is ever logged.
- **Refusals an operator clears** (B44, B45): a missing permission, failed authentication or an etcd alarm
  (NOSPACE, CORRUPT) is :class:`StoreRefused` (code 11 at once, naming the cause), not "internal".
- **Connection set-up that follows etcd** (B50): the channel's connect timeout stays gRPC's 20 s (setting
  ``grpc.min_reconnect_backoff_ms`` would also cut it, and then an etcd whose answers take longer than that never
  connects at all), while reconnect backoff is capped at 1 s.

Every other third-party error is translated here too, chained with ``from``: UNAVAILABLE -> :class:`StoreUnavailable`;
DEADLINE_EXCEEDED or a dropped call after sending a write -> :class:`StoreOutcomeUnknown`; a request etcd refuses as
sent (too many operations, too large) -> :class:`StoreRejected`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from pyetcd import etcdrpc

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
    StoreRefused,
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
#: gRPC channel options: reconnect within a second once etcd is back (gRPC's default backoff grows to 120 s, so a
#: long outage would keep the daemon failing for minutes after etcd recovered), and accept large range reads
#: (GC, list and check read one prefix at a time; gRPC's default limit is 4 MiB, ~12k attachments). No
#: ``grpc.min_reconnect_backoff_ms``: gRPC also takes it as the connect timeout (B50, see the module docstring).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 512 << 20),
]
#: gRPC codes that say "this request will never succeed as sent" (too many txn ops, too large): not retried.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
              grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE}
#: Codes after which the endpoint in use is left for the next one.
_TRANSPORT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
#: etcd's messages for a token it no longer accepts (etcd's client re-authenticates on the same three).
_TOKEN_ERRORS = ("invalid auth token", "revision of auth store is old", "user name is empty")
#: etcd alarm types (etcdserverpb.AlarmType).
ALARMS = {1: "NOSPACE", 2: "CORRUPT"}
#: etcd releases with a known data-loss or inconsistency bug, and why (docs/operations.md "etcd versions").
KNOWN_BAD_VERSIONS = {
    "3.5.0": "data inconsistency after a crash under load (etcd-io/etcd #13766, fixed in 3.5.3)",
    "3.5.1": "data inconsistency after a crash under load (etcd-io/etcd #13766, fixed in 3.5.3)",
    "3.5.2": "data inconsistency after a crash under load (etcd-io/etcd #13766, fixed in 3.5.3)",
}


def version_problem(version: str) -> str | None:
    """Why etcd ``version`` (``"3.5.1"``) must not hold production data, or ``None`` when no known bug applies.
    Pure; the list is :data:`KNOWN_BAD_VERSIONS` (docs/operations.md "etcd versions")."""
    return KNOWN_BAD_VERSIONS.get(version.strip().lstrip("v"))


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    """One member's answer to Maintenance.Status plus the cluster's alarms: ``endpoint`` the URL asked,
    ``version`` etcd's release, ``member_id`` and ``leader`` member ids (``leader`` 0: none), ``revision`` the
    store's revision, ``raft_term``, ``db_size`` bytes, ``alarms`` e.g. ``("NOSPACE",)``."""

    endpoint: str
    version: str
    member_id: int
    leader: int
    revision: int
    raft_term: int
    db_size: int
    alarms: tuple[str, ...]


class _Endpoint:
    """One etcd client URL with its channel and stubs (created once: a stub costs a few microseconds per call)."""

    def __init__(self, host: str, port: int, secure: bool, creds: grpc.ChannelCredentials | None) -> None:
        netloc = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        self.url = "%s://%s" % ("https" if secure else "http", netloc)
        self.secure = secure
        if creds is not None:
            self.channel = grpc.secure_channel(netloc, creds, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(netloc, options=CHANNEL_OPTIONS)
        self.kv = etcdrpc.KVStub(self.channel)
        self.lease = etcdrpc.LeaseStub(self.channel)
        self.watch = etcdrpc.WatchStub(self.channel)
        self.auth = etcdrpc.AuthStub(self.channel)
        self.maintenance = etcdrpc.MaintenanceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


@dataclass(frozen=True, slots=True)
class _Token:
    """The auth token in use: ``generation`` counts authentications, so one stale token is replaced once however
    many calls saw it refused; ``metadata`` is what each call sends (``None`` without auth)."""

    generation: int
    metadata: tuple[tuple[str, str], ...] | None


def _read_secret(path: str) -> str:
    """The first line of a secret file, without its line end (``--etcd-password-file``)."""
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\r\n")


class EtcdStore:
    """:class:`ipamd.store.base.Store` on an etcd v3 cluster; every key is prefixed with ``prefix``.

    ``endpoints`` is the comma-separated URL list (``http://`` or ``https://``; https needs ``ca_cert``, and
    ``cert``/``key`` for client certificates). ``user`` with ``password`` (or ``password_file``, read at each
    authentication) enables etcd authentication. The constructor does no I/O: a store on an unreachable etcd is
    built, and its calls raise :class:`StoreUnavailable` until etcd answers. Thread-safe.

    Raises ``ValueError`` for an https endpoint without a CA certificate, ``OSError`` for an unreadable
    certificate file.
    """

    def __init__(self, endpoints: str, prefix: str, *, ca_cert: str | None = None, cert: str | None = None,
                 key: str | None = None, user: str | None = None, password: str | None = None,
                 password_file: str | None = None, timeout: float = 5.0) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        creds: grpc.ChannelCredentials | None = None
        self._endpoints: list[_Endpoint] = []
        for host, port, secure in parse_endpoints(endpoints):
            if secure and creds is None:
                if ca_cert is None:
                    raise ValueError("https etcd endpoint %s:%d needs a CA certificate" % (host, port))
                creds = grpc.ssl_channel_credentials(_read_file(ca_cert), _read_file(key) if key else None,
                                                     _read_file(cert) if cert else None)
            self._endpoints.append(_Endpoint(host, port, secure, creds if secure else None))
        self._current = 0
        self.user = user or None
        self._password = password
        self._password_file = password_file
        self._token = _Token(0, None)
        self._auth_disabled = False  # etcd said auth is not enabled: calls go without a token
        #: Optional hook ``(kind)`` called for every error of a call: "unavailable", "timeout", "refused",
        #: "rejected", "auth" (metrics: ipamd_etcd_errors_total{kind}).
        self.on_error: Callable[[str], None] | None = None
        #: Optional hook ``(op, seconds)`` called for every call that etcd answered (ipamd_etcd_request_duration).
        self.on_latency: Callable[[str, float], None] | None = None
        #: Set when etcd refused a write for permission (B44): the daemon's readiness probe then checks write
        #: permission too, until a check passes (``probe_etcd`` in ipamd/__main__.py clears it).
        self.write_refused = False
        if self.user and any(not ep.secure for ep in self._endpoints):
            log.warning("etcd authentication over http: the password and the token cross the network in clear "
                        "(%s); use https endpoints", ", ".join(ep.url for ep in self._endpoints if not ep.secure))

    # -- endpoints ----------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """URL of the endpoint calls go to now."""
        with self._lock:
            return self._endpoints[self._current].url

    def _endpoint(self) -> _Endpoint:
        with self._lock:
            return self._endpoints[self._current]

    def _failed(self, ep: _Endpoint, why: str) -> None:
        """Leave ``ep`` for the next endpoint (if it is still the one in use): it failed to answer."""
        with self._lock:
            if len(self._endpoints) == 1 or self._endpoints[self._current] is not ep:
                return
            self._current = (self._current + 1) % len(self._endpoints)
            nxt = self._endpoints[self._current].url
        log.info("etcd endpoint %s failed (%s); using %s", ep.url, why, nxt)

    # -- authentication -----------------------------------------------------------------------------------------

    def _token_now(self, ep: _Endpoint, deadline: float) -> _Token:
        token = self._token
        if self.user is None or self._auth_disabled or token.metadata is not None:
            return token
        return self._authenticate(ep, token.generation, deadline)

    def _authenticate(self, ep: _Endpoint, seen: int, deadline: float) -> _Token:
        """A fresh token unless another thread has already replaced generation ``seen``. Raises
        :class:`StoreRefused` (wrong user or password), :class:`StoreUnavailable` (etcd did not answer)."""
        with self._auth_lock:
            if self._token.generation != seen and self._token.metadata is not None:
                return self._token
            try:
                password = self._password if self._password_file is None else _read_secret(self._password_file)
            except OSError as exc:
                raise StoreRefused("cannot read the etcd password file %s: %s" % (self._password_file,
                                                                                exc.strerror or exc),
                                   "auth") from None
            try:
                resp = ep.auth.Authenticate(etcdrpc.AuthenticateRequest(name=self.user, password=password or ""),
                                            timeout=max(0.001, deadline - time.monotonic()))
            except grpc.RpcError as exc:
                details = _details(exc)
                if "authentication is not enabled" in details:
                    log.info("etcd at %s has authentication disabled; calls go without a token", ep.url)
                    self._auth_disabled = True
                    return self._token
                if _code(exc) in _TRANSPORT:
                    self._failed(ep, _code_name(exc))
                    self._count("timeout" if _code(exc) == grpc.StatusCode.DEADLINE_EXCEEDED else "unavailable")
                    raise StoreUnavailable("etcd authentication as %r did not complete at %s: %s: %s"
                                           % (self.user, ep.url, _code_name(exc), details)) from None
                self._count("auth")
                raise StoreRefused("etcd refused authentication as user %r at %s: %s" % (self.user, ep.url, details),
                                   "auth") from None
            self._auth_disabled = False
            self._token = _Token(self._token.generation + 1, (("token", resp.token),))
            log.debug("authenticated to etcd at %s as %r", ep.url, self.user)
            return self._token

    def _stale(self, token: _Token) -> None:
        """Forget ``token`` (etcd refused it on a stream): the next call authenticates again."""
        with self._auth_lock:
            if self._token.generation == token.generation and self._token.metadata is not None:
                self._token = _Token(token.generation, None)

    def _watch_error(self, ep: _Endpoint, token: _Token, exc: BaseException) -> IpamError:
        """The store error for a broken watch stream; a refused token is forgotten, a failed endpoint left."""
        if any(t in _details(exc) for t in _TOKEN_ERRORS):
            self._stale(token)
        elif _code(exc) in _TRANSPORT and _code(exc) != grpc.StatusCode.CANCELLED:
            self._failed(ep, _code_name(exc))
        return self._translate(exc, False, "watch")

    # -- calls --------------------------------------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        if self.on_error is not None:
            self.on_error(kind)

    def _call(self, op: str, fn: Callable[[_Endpoint, float, Any], Any], timeout: float, write: bool,
              key: str = "") -> Any:
        """Run ``fn(endpoint, seconds left, metadata)`` within ``timeout`` seconds, with the token, the re-auth and
        the failover rules of the module docstring; every error translated. ``op`` and ``key`` name the call in
        error messages ("read pools/")."""
        deadline = time.monotonic() + timeout
        ep = self._endpoint()
        tried = [ep]
        reauthed = False
        while True:
            started = time.monotonic()
            token = self._token_now(ep, deadline)
            try:
                out = fn(ep, max(0.001, deadline - time.monotonic()), token.metadata)
            except grpc.RpcError as exc:
                code, details = _code(exc), _details(exc)
                if (self.user is not None and not reauthed and not self._auth_disabled
                        and any(t in details for t in _TOKEN_ERRORS)):
                    reauthed = True  # a token etcd no longer accepts: authenticate again, retry once (B43)
                    log.info("etcd refused the auth token (%s); authenticating again", details)
                    self._authenticate(ep, token.generation, deadline)
                    continue
                if code in _TRANSPORT:
                    self._failed(ep, _code_name(exc))
                    if not write and code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                        nxt = self._endpoint()
                        if nxt not in tried:  # a read is safe to send again: try the next member at once
                            tried.append(nxt)
                            ep = nxt
                            continue
                raise self._translate(exc, write, op, key) from exc
            except IpamError:
                raise
            except Exception as exc:
                raise self._translate(exc, write, op, key) from exc
            if self.on_latency is not None:
                self.on_latency(op, time.monotonic() - started)
            return out

    def _translate(self, exc: BaseException, write: bool, op: str = "", key: str = "") -> IpamError:
        """The store error for any exception of gRPC or the etcd client (field case B53): unavailability and
        timeouts are :class:`StoreUnavailable` (:class:`StoreOutcomeUnknown` for a write that may have committed),
        what an operator must clear (permission, authentication, alarm) :class:`StoreRefused` (code 11),
        refusals of the request as sent :class:`StoreRejected`; anything unexpected is :class:`StoreUnavailable`
        naming its class, so a caller retries within its deadline and never sees a foreign exception."""
        if isinstance(exc, IpamError):
            return exc
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            code, details = _code(exc), _details(exc)
            detail = "%s: %s" % (_code_name(exc), details)
            what = ("%s %s%s" % (op, self.prefix, key)).strip()
            if code == grpc.StatusCode.PERMISSION_DENIED:
                self._count("refused")
                if write:
                    self.write_refused = True
                return StoreRefused("etcd user %r lacks the permission to %s (etcd: %s); grant its role readwrite on "
                                    "the prefix %s" % (self.user or "", what, details, self.prefix), "permission")
            if "space exceeded" in details or "corrupt" in details.lower():
                self._count("refused")
                alarm = "NOSPACE" if "space exceeded" in details else "CORRUPT"
                return StoreRefused("etcd alarm %s: etcd refuses writes (%s); an operator must free space (compact, "
                                    "defragment) and disarm the alarm (docs/operations.md \"etcd alarms\")"
                                    % (alarm, details), "alarm")
            if code == grpc.StatusCode.UNAUTHENTICATED or any(t in details for t in _TOKEN_ERRORS) \
                    or "authentication failed" in details:
                self._count("auth")
                return StoreRefused("etcd refused the credentials of user %r for %s: %s" % (self.user or "", what,
                                                                                           details), "auth")
            if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
                # a read at a revision etcd compacted away ("mvcc: required revision has been compacted"): the
                # reader takes a new snapshot (docs/ipamctl.md "Pools, blocks and usage")
                self._count("unavailable")
                return StoreCompacted("etcd compacted revision of %s: %s" % (what, detail), 0)
            if code in _PERMANENT:
                self._count("rejected")
                return StoreRejected("etcd refused the request: %s" % detail)
            self._count("timeout" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "unavailable")
            if write and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
                return StoreOutcomeUnknown("etcd did not answer: %s" % detail)
            return StoreUnavailable("etcd request failed: %s" % detail)
        self._count("unavailable")
        return StoreUnavailable("unexpected etcd client error: %s: %s" % (exc.__class__.__name__, exc))

    # -- request building ---------------------------------------------------------------------------------------

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

    # -- Store ---------------------------------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
            timeout: float) -> TxnResult:
        """See :meth:`ipamd.store.base.Store.txn`."""
        req = etcdrpc.TxnRequest()
        self._add_compares(req.compare, compares)
        self._add_ops(req.success, success)
        self._add_ops(req.failure, failure)
        first = success[0].key if success else (compares[0].key if compares else "")
        resp = self._call("txn", lambda ep, t, md: ep.kv.Txn(req, timeout=t, metadata=md), timeout, True, first)
        reads = []
        for r in resp.responses:
            if r.WhichOneof("response") == "response_range":
                reads.append(tuple(self._kv(kv) for kv in r.response_range.kvs))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), tuple(reads))

    def read(self, key: str, range_end: str | None, timeout: float, *,
             revision: int = 0) -> tuple[tuple[KV, ...], int]:
        """See :meth:`ipamd.store.base.Store.read`."""
        req = self._range_request(key, range_end)
        req.revision = revision
        resp = self._call("read", lambda ep, t, md: ep.kv.Range(req, timeout=t, metadata=md), timeout, False, key)
        return tuple(self._kv(kv) for kv in resp.kvs), int(resp.header.revision)

    def count(self, key: str, range_end: str, timeout: float, *, revision: int = 0) -> int:
        """See :meth:`ipamd.store.base.Store.count`."""
        req = self._range_request(key, range_end)
        req.count_only = True
        req.revision = revision
        resp = self._call("read", lambda ep, t, md: ep.kv.Range(req, timeout=t, metadata=md), timeout, False, key)
        return int(resp.count)

    def grant_lease(self, ttl: int, timeout: float) -> int:
        """See :meth:`ipamd.store.base.Store.grant_lease`."""
        req = etcdrpc.LeaseGrantRequest(TTL=ttl)
        resp = self._call("lease", lambda ep, t, md: ep.lease.LeaseGrant(req, timeout=t, metadata=md), timeout,
                          False)
        return int(resp.ID)

    def keepalive(self, lease_id: int, timeout: float) -> int:
        """See :meth:`ipamd.store.base.Store.keepalive` (one request/response pair of the LeaseKeepAlive stream)."""
        def once(ep: _Endpoint, left: float, md: Any) -> int:
            for resp in ep.lease.LeaseKeepAlive(iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=left,
                                                metadata=md):
                return int(resp.TTL)
            return 0
        return int(self._call("lease", once, timeout, False))

    def revoke(self, lease_id: int, timeout: float) -> None:
        """See :meth:`ipamd.store.base.Store.revoke`."""
        req = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        self._call("lease", lambda ep, t, md: ep.lease.LeaseRevoke(req, timeout=t, metadata=md), timeout, False)

    def status(self, timeout: float, endpoint: str | None = None) -> EtcdStatus:
        """Maintenance.Status of the endpoint in use (or of the one whose URL is ``endpoint``) and the cluster's
        alarms (Maintenance.Alarm GET), in two calls. Raises :class:`StoreUnavailable`, :class:`StoreRefused`.
        Read-only (ipamctl status, readiness: docs/operations.md "Health")."""
        def both(ep: _Endpoint, left: float, md: Any) -> EtcdStatus:
            st = ep.maintenance.Status(etcdrpc.StatusRequest(), timeout=left, metadata=md)
            alarms = ep.maintenance.Alarm(etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET), timeout=left,
                                          metadata=md)
            names = sorted({ALARMS.get(int(a.alarm), "ALARM%d" % a.alarm) for a in alarms.alarms if a.alarm})
            return EtcdStatus(ep.url, st.version, int(st.header.member_id), int(st.leader), int(st.header.revision),
                              int(st.raftTerm), int(st.dbSize), tuple(names))
        if endpoint is None:
            return self._call("status", both, timeout, False)  # type: ignore[no-any-return]
        chosen = [ep for ep in self._endpoints if ep.url == endpoint]
        if not chosen:
            raise ValueError("%s is not one of this store's endpoints" % endpoint)
        deadline = time.monotonic() + timeout
        token = self._token_now(chosen[0], deadline)
        try:
            return both(chosen[0], max(0.001, deadline - time.monotonic()), token.metadata)
        except Exception as exc:
            raise self._translate(exc, False, "status") from exc

    @property
    def endpoints(self) -> list[str]:
        """Every configured endpoint URL, in order."""
        return [ep.url for ep in self._endpoints]

    def watch(self) -> _EtcdWatch:
        """See :meth:`ipamd.store.base.Store.watch`: one gRPC Watch stream on the endpoint in use."""
        ep = self._endpoint()
        token = self._token_now(ep, time.monotonic() + self.timeout)
        return _EtcdWatch(self, ep, token)

    def close(self) -> None:
        for ep in self._endpoints:
            try:
                ep.close()
            except Exception:
                log.debug("closing the channel to %s failed", ep.url, exc_info=True)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _code(exc: BaseException) -> grpc.StatusCode | None:
    fn = getattr(exc, "code", None)
    return fn() if callable(fn) else None


def _code_name(exc: BaseException) -> str:
    code = _code(exc)
    return getattr(code, "name", str(code))


def _details(exc: BaseException) -> str:
    fn = getattr(exc, "details", None)
    out = fn() if callable(fn) else None
    return out if isinstance(out, str) else ""


_CLOSE = object()
#: Seconds after which an idle watch stream asks etcd for a progress report.
WATCH_TICK = 1.0
#: Seconds without any answer after which a watch stream counts as dead (a black-holed connection never errors,
#: and the creates sent into it are lost): it is cancelled, so the watcher opens a new one (B22, B53).
WATCH_SILENCE = 10.0


class _EtcdWatch:
    """:class:`ipamd.store.base.Watch` over one bidirectional etcd Watch stream.

    Requests (create, cancel, progress) go through a queue the stream reads; when nothing was asked for
    :data:`WATCH_TICK` seconds the stream asks for a progress report by itself, so :meth:`next`, which reads the
    responses in the caller's thread (no extra thread hop per message), comes back at least that often; a stream
    that has not answered for :data:`WATCH_SILENCE` seconds is cancelled (a black-holed connection never fails). etcd
    assigns watch ids in the order of the create requests, so pending creates are matched first in, first out. A
    compacted start revision or a broken stream ends the watch: :meth:`next` raises the translated error, then and
    on every later call.
    """

    def __init__(self, store: EtcdStore, endpoint: _Endpoint, token: _Token) -> None:
        self._store = store
        self._endpoint = endpoint
        self._token = token
        self._requests: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[str | None] = []  # keys of creates not yet acknowledged, in order (None: removed since)
        self._ids: dict[str, int] = {}  # range start key -> etcd watch id
        self._live: set[int] = set()  # watch ids whose events are delivered
        self._closed = False
        self._error: IpamError | None = None
        self._heard = time.monotonic()  # when etcd last answered on this stream
        self._silent = False
        self._call = endpoint.watch.Watch(self._request_iter(), metadata=token.metadata)

    def _request_iter(self) -> Any:
        while True:
            try:
                item = self._requests.get(timeout=WATCH_TICK)
            except queue.Empty:
                if time.monotonic() - self._heard > WATCH_SILENCE:
                    self._silent = True
                    self._call.cancel()  # next() raises: the watcher opens a new stream
                    return
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
            self._heard = time.monotonic()
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
                if any(t in resp.cancel_reason for t in _TOKEN_ERRORS):
                    self._store._stale(self._token)  # the next watch authenticates again (B43)
                raise StoreUnavailable("etcd cancelled a watch: %s" % resp.cancel_reason)
        except IpamError as exc:
            self._error = exc
            raise
        except Exception as exc:
            if self._silent:
                self._store._failed(self._endpoint, "watch stream silent")
                self._error = StoreUnavailable("etcd at %s did not answer on the watch stream for %.0f s"
                                               % (self._endpoint.url, WATCH_SILENCE))
            elif self._closed:
                self._error = StoreUnavailable("watch closed")
            else:
                self._error = self._store._watch_error(self._endpoint, self._token, exc)
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
