"""A small kube-apiserver double on loopback that speaks the real REST and watch protocol for nodes, pods and
namespaces.

No kube-apiserver can be installed here, so the Kubernetes tests (docs/field-cases.md B20, B21; issue 8 item 6)
drive the real client library (``kubernetes``) against this server. What it implements, as the real one does
(api-concepts "Efficient detection of changes", "Watch bookmarks", "Retrieving large results sets in chunks"):

- ``GET /api/v1/nodes``, ``/api/v1/nodes/{name}``, ``/api/v1/pods``, ``/api/v1/namespaces/{ns}/pods``,
  ``/api/v1/namespaces/{ns}/pods/{name}``, ``/api/v1/namespaces`` and ``/api/v1/namespaces/{name}``; lists carry
  ``metadata.resourceVersion``; ``limit`` and ``continue`` page a consistent snapshot; ``fieldSelector`` with
  ``=``, ``==`` and ``!=`` on ``metadata.name``, ``metadata.namespace``, ``spec.nodeName`` (pods) and
  ``status.phase`` (pods, namespaces), others answer 400;
- ``watch=true`` with ``resourceVersion``: a chunked stream of JSON lines (``{"type","object"}``) with every change
  after that version, then new ones until ``timeoutSeconds``; without a version, synthetic ADDED events first. An
  object that starts or stops matching the field selector is ADDED or DELETED, as the real watch cache does;
- ``410 Gone`` for a version older than the last :meth:`FakeKube.compact`: as an HTTP status (``expire_as="status"``)
  or as an ``ERROR`` event in a 200 stream (``expire_as="event"``, what the watch cache does);
- ``BOOKMARK`` events (only the resourceVersion) when the watch asked for ``allowWatchBookmarks``: every
  ``bookmark_interval`` seconds and on :meth:`FakeKube.bookmark`;
- bearer-token authentication (401 ``Status`` otherwise) and optional TLS.

Faults for the tests: :meth:`drop_watches` (cut every open stream), :meth:`hang` (accept connections and never
answer), :meth:`fail_next` (answer the next requests with a status), :meth:`stop` / :meth:`start` on the same port
(API server unreachable). Every request is recorded in :attr:`requests`.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

_FIELDS = {
    "pods": {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"},
    "nodes": {"metadata.name"},
    "namespaces": {"metadata.name", "status.phase"},
}
_API_KIND = {"pods": "Pod", "nodes": "Node", "namespaces": "Namespace"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status(code: int, reason: str, message: str) -> Obj:
    """A ``metav1.Status`` failure object, as the API server sends it."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def parse_selector(kind: str, text: str) -> Callable[[Obj], bool]:
    """A field selector (``a=b,c!=d``) -> predicate. Raises ``ValueError`` for an unsupported field."""
    terms: list[tuple[str, bool, str]] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in item:
            name, value, equal = *item.split("!=", 1), False
        elif "==" in item:
            name, value, equal = *item.split("==", 1), True
        elif "=" in item:
            name, value, equal = *item.split("=", 1), True
        else:
            raise ValueError("invalid field selector %r" % item)
        if name not in _FIELDS[kind]:
            raise ValueError('field label not supported: "%s"' % name)
        terms.append((name, equal, value))
    return lambda obj: all((_field(obj, n) == v) == eq for n, eq, v in terms)


@dataclass
class _Event:
    rv: int
    kind: str
    type: str
    old: Obj | None
    new: Obj | None


class _Stream:
    """One open watch: the handler thread waits on the server's condition and sends what matches."""

    def __init__(self, kind: str, match: Callable[[Obj], bool], bookmarks: bool) -> None:
        self.kind, self.match, self.bookmarks = kind, match, bookmarks
        self.dropped = False
        self.bookmark_due = False


class FakeKube:
    """The API server double. ``token``: required bearer token (None: no auth). ``expire_as``: how a watch from an
    expired resourceVersion is refused ("event": ERROR event in a 200 stream, "status": HTTP 410).
    ``bookmark_interval``: seconds between BOOKMARK events on watches that asked for them (None: only on
    :meth:`bookmark`). ``tls``: ``(certfile, keyfile)`` to serve https."""

    def __init__(self, token: str | None = "test-token", expire_as: str = "event",
                 bookmark_interval: float | None = None, tls: tuple[str, str] | None = None,
                 max_watch_seconds: float = 30.0) -> None:
        self.token, self.expire_as, self.bookmark_interval, self.tls = token, expire_as, bookmark_interval, tls
        self.max_watch_seconds = max_watch_seconds
        self.cond = threading.Condition()
        self.rv = 100
        self.compacted = 0
        self.objects: dict[str, dict[str, Obj]] = {"pods": {}, "nodes": {}, "namespaces": {}}
        self.history: list[_Event] = []
        self.streams: set[_Stream] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._failures: list[int] = []
        self._hang = threading.Event()
        self._pages: dict[str, tuple[int, list[Obj]]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.port = 0

    # -- lifecycle -----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def start(self) -> FakeKube:
        """Listen on 127.0.0.1 (a free port the first time, the same port after :meth:`stop`)."""
        fake = self

        class Handler(_Handler):
            server_fake = fake

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakekube", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (the API server is unreachable until :meth:`start`)."""
        self._hang.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.drop_watches()
        with self.cond:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------------------------------

    def drop_watches(self) -> None:
        """Cut every open watch stream without a final chunk (a dropped connection)."""
        with self.cond:
            for s in self.streams:
                s.dropped = True
            self.cond.notify_all()

    def hang(self, on: bool = True) -> None:
        """While on, requests are accepted and never answered (a black-holed API server); open watches go silent."""
        if on:
            self._hang.set()
        else:
            self._hang.clear()
        with self.cond:
            self.cond.notify_all()

    def fail_next(self, count: int, code: int = 500) -> None:
        """Answer the next ``count`` requests with HTTP ``code`` and a Status body."""
        with self.cond:
            self._failures.extend([code] * count)

    def compact(self) -> int:
        """Forget the history up to now: a watch or continue token from an older resourceVersion gets 410 Gone.
        Returns the compacted revision."""
        with self.cond:
            self.compacted = self.rv
            self.history.clear()
            self._pages.clear()
            return self.compacted

    def bookmark(self) -> None:
        """Send a BOOKMARK now on every open watch that allowed them."""
        with self.cond:
            for s in self.streams:
                s.bookmark_due = True
            self.cond.notify_all()

    def watch_count(self, kind: str) -> int:
        with self.cond:
            return sum(1 for s in self.streams if s.kind == kind)

    def requests_of(self, path: str, **params: str) -> list[dict[str, str]]:
        """Recorded requests to ``path`` whose parameters include ``params``."""
        with self.cond:
            return [p for pth, p in self.requests if pth == path and all(p.get(k) == v for k, v in params.items())]

    # -- objects -------------------------------------------------------------------------------------------------

    def _commit(self, kind: str, key: str, type_: str, new: Obj | None) -> Obj:
        with self.cond:
            self.rv += 1
            old = self.objects[kind].get(key)
            if new is None:
                if old is None:
                    raise KeyError(key)
                gone = copy.deepcopy(old)
                gone["metadata"]["resourceVersion"] = str(self.rv)
                del self.objects[kind][key]
                self.history.append(_Event(self.rv, kind, "DELETED", old, gone))
                self.cond.notify_all()
                return gone
            new["metadata"]["resourceVersion"] = str(self.rv)
            self.objects[kind][key] = new
            self.history.append(_Event(self.rv, kind, type_, old, copy.deepcopy(new)))
            self.cond.notify_all()
            return copy.deepcopy(new)

    def add_node(self, name: str, pod_cidrs: tuple[str, ...] = (), uid: str | None = None,
                 ready: bool = True) -> Obj:
        spec: Obj = {}
        if pod_cidrs:
            spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
        obj = {"metadata": {"name": name, "uid": uid or str(uuid.uuid4()), "creationTimestamp": _now()},
               "spec": spec,
               "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
        return self._commit("nodes", name, "ADDED", obj)

    def update_node(self, name: str, change: Callable[[Obj], None]) -> Obj:
        with self.cond:
            obj = copy.deepcopy(self.objects["nodes"][name])
            change(obj)
            return self._commit("nodes", name, "MODIFIED", obj)

    def delete_node(self, name: str) -> Obj:
        return self._commit("nodes", name, "DELETED", None)

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        """A Namespace with ``labels`` plus ``kubernetes.io/metadata.name`` (which the real API server always
        sets)."""
        obj = {"metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
                            "labels": {**(labels or {}), "kubernetes.io/metadata.name": name}},
               "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        return self._commit("namespaces", name, "ADDED", obj)

    def label_namespace(self, name: str, labels: dict[str, str | None]) -> Obj:
        """Set (a value) or remove (``None``) labels of namespace ``name``, as ``kubectl label`` does."""
        def change(obj: Obj) -> None:
            current = obj["metadata"].setdefault("labels", {})
            for k, v in labels.items():
                if v is None:
                    current.pop(k, None)
                else:
                    current[k] = v
        with self.cond:
            obj = copy.deepcopy(self.objects["namespaces"][name])
            change(obj)
            return self._commit("namespaces", name, "MODIFIED", obj)

    def delete_namespace(self, name: str) -> Obj:
        return self._commit("namespaces", name, "DELETED", None)

    def add_pod(self, namespace: str, name: str, node: str, uid: str | None = None, pod_ips: tuple[str, ...] = (),
                phase: str = "Running") -> Obj:
        obj = {"metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                            "creationTimestamp": _now()},
               "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}],
                        "terminationGracePeriodSeconds": 30},
               "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in pod_ips]}}
        if pod_ips:
            obj["status"]["podIP"] = pod_ips[0]
        return self._commit("pods", "%s/%s" % (namespace, name), "ADDED", obj)

    def update_pod(self, namespace: str, name: str, change: Callable[[Obj], None]) -> Obj:
        with self.cond:
            obj = copy.deepcopy(self.objects["pods"]["%s/%s" % (namespace, name)])
            change(obj)
            return self._commit("pods", "%s/%s" % (namespace, name), "MODIFIED", obj)

    def mark_terminating(self, namespace: str, name: str, grace: int = 60) -> Obj:
        """What a graceful delete does first: ``deletionTimestamp`` (now + grace) and the grace period are set."""
        def change(obj: Obj) -> None:
            obj["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time()
                                                                                                    + grace))
            obj["metadata"]["deletionGracePeriodSeconds"] = grace
        return self.update_pod(namespace, name, change)

    def delete_pod(self, namespace: str, name: str) -> Obj:
        return self._commit("pods", "%s/%s" % (namespace, name), "DELETED", None)

    # -- protocol ------------------------------------------------------------------------------------------------

    def _take_failure(self) -> int | None:
        with self.cond:
            return self._failures.pop(0) if self._failures else None

    def list_page(self, kind: str, match: Callable[[Obj], bool], namespace: str | None, limit: int,
                  token: str) -> tuple[int, Obj]:
        with self.cond:
            if token:
                if token not in self._pages:
                    return 410, status(410, "Expired", "The provided continue parameter is too old to display a "
                                                        "consistent list result.")
                rv, items = self._pages.pop(token)
            else:
                rv = self.rv
                items = [copy.deepcopy(o) for _, o in sorted(self.objects[kind].items())
                         if match(o) and (namespace is None or o["metadata"].get("namespace") == namespace)]
            meta: Obj = {"resourceVersion": str(rv)}
            if limit and len(items) > limit:
                nxt = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()
                self._pages[nxt] = (rv, items[limit:])
                meta["continue"] = nxt
                meta["remainingItemCount"] = len(items) - limit
                items = items[:limit]
            return 200, {"kind": _API_KIND[kind] + "List", "apiVersion": "v1", "metadata": meta,
                         "items": items}

    def stream_events(self, stream: _Stream, since: int | None, namespace: str | None,
                      timeout: float) -> Iterator[Obj]:
        """Watch events for ``stream`` after ``since`` (None: synthetic ADDED for the current objects first),
        until ``timeout`` seconds, a drop, or a hang."""
        kind, match = stream.kind, stream.match
        api_kind = _API_KIND[kind]

        def wrap(type_: str, obj: Obj) -> Obj:
            return {"type": type_, "object": {"kind": api_kind, "apiVersion": "v1", **obj}}

        def in_ns(obj: Obj | None) -> bool:
            return obj is not None and (namespace is None or obj["metadata"].get("namespace") == namespace) \
                and match(obj)

        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval if self.bookmark_interval else None
        with self.cond:
            if since is None:
                pending: list[Obj] = [wrap("ADDED", copy.deepcopy(o)) for _, o in sorted(self.objects[kind].items())
                                      if in_ns(o)]
                cursor = self.rv
            else:
                pending, cursor = [], since
        yield from pending
        while True:
            out: list[Obj] = []
            with self.cond:
                while True:
                    if stream.dropped or self._hang.is_set():
                        return
                    now = time.monotonic()
                    if now >= deadline:
                        return
                    for e in self.history:
                        if e.rv <= cursor or e.kind != kind:
                            continue
                        was, now_in = in_ns(e.old), in_ns(e.new)
                        if e.type == "DELETED" and was and e.new is not None:
                            out.append(wrap("DELETED", copy.deepcopy(e.new)))
                        elif e.type != "DELETED" and e.new is not None and now_in:
                            out.append(wrap("MODIFIED" if was else "ADDED", copy.deepcopy(e.new)))
                        elif e.type != "DELETED" and was and not now_in and e.new is not None:
                            out.append(wrap("DELETED", copy.deepcopy(e.new)))
                    cursor = self.rv
                    due = stream.bookmarks and (stream.bookmark_due or (next_bookmark is not None
                                                                         and now >= next_bookmark))
                    if due:
                        stream.bookmark_due = False
                        if self.bookmark_interval:
                            next_bookmark = now + self.bookmark_interval
                        out.append({"type": "BOOKMARK", "object": {"kind": api_kind, "apiVersion": "v1",
                                                                   "metadata": {"resourceVersion": str(self.rv)}}})
                    if out:
                        break
                    wait = deadline - now
                    if next_bookmark is not None and stream.bookmarks:
                        wait = min(wait, max(0.0, next_bookmark - now))
                    self.cond.wait(min(wait, 0.5))
            yield from out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake: FakeKube

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read fake.requests instead
        return

    def setup(self) -> None:
        super().setup()
        with self.server_fake.cond:
            self.server_fake._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server_fake.cond:
                self.server_fake._conns.discard(self.connection)

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, obj: Obj) -> None:
        data = json.dumps(obj).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        fake = self.server_fake
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with fake.cond:
            fake.requests.append((url.path, params))
        if fake._hang.is_set():
            while fake._hang.is_set():
                time.sleep(0.05)
            self.close_connection = True
            return
        scheme, _, credentials = (self.headers.get("Authorization") or "").partition(" ")
        if fake.token is not None and (scheme.lower() != "bearer" or credentials.strip() != fake.token):
            self._send_json(401, status(401, "Unauthorized", "Unauthorized"))
            return
        code = fake._take_failure()
        if code is not None:
            self._send_json(code, status(code, "InternalError" if code >= 500 else "BadRequest",
                                         "injected failure %d" % code))
            return
        parts = [p for p in url.path.split("/") if p]
        namespace = None
        if parts[:2] != ["api", "v1"]:
            self._send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        rest = parts[2:]
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in _API_KIND or (rest[0] != "pods" and namespace is not None):
            self._send_json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        kind = rest[0]
        if len(rest) == 2:
            key = "%s/%s" % (namespace, rest[1]) if kind == "pods" else rest[1]
            with fake.cond:
                obj = fake.objects[kind].get(key)
                obj = copy.deepcopy(obj) if obj is not None else None
            if obj is None:
                self._send_json(404, status(404, "NotFound", '%s "%s" not found' % (kind, rest[1])))
            else:
                self._send_json(200, {"kind": _API_KIND[kind], "apiVersion": "v1", **obj})
            return
        try:
            match = parse_selector(kind, params.get("fieldSelector", ""))
        except ValueError as exc:
            self._send_json(400, status(400, "BadRequest", str(exc)))
            return
        if params.get("watch") not in ("true", "1"):
            code, body = fake.list_page(kind, match, namespace, int(params.get("limit") or 0),
                                        params.get("continue", ""))
            self._send_json(code, body)
            return
        self._watch(kind, match, namespace, params)

    def _watch(self, kind: str, match: Callable[[Obj], bool], namespace: str | None, params: dict[str, str]) -> None:
        fake = self.server_fake
        rv_text = params.get("resourceVersion", "")
        since: int | None = None
        if rv_text not in ("", "0"):
            try:
                since = int(rv_text)
            except ValueError:
                self._send_json(400, status(400, "BadRequest", "invalid resourceVersion %r" % rv_text))
                return
        expired = since is not None and since < fake.compacted
        gone = status(410, "Expired", "too old resource version: %s (%d)" % (rv_text, fake.compacted))
        if expired and fake.expire_as == "status":
            self._send_json(410, gone)
            return
        timeout = min(float(params.get("timeoutSeconds") or fake.max_watch_seconds), fake.max_watch_seconds)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        stream = _Stream(kind, match, params.get("allowWatchBookmarks") in ("true", "1"))
        with fake.cond:
            fake.streams.add(stream)
        try:
            if expired:
                self._chunk({"type": "ERROR", "object": gone})
            else:
                for ev in fake.stream_events(stream, since, namespace, timeout):
                    self._chunk(ev)
            if stream.dropped or fake._hang.is_set():
                while fake._hang.is_set():
                    time.sleep(0.05)
                self.close_connection = True
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            with fake.cond:
                fake.streams.discard(stream)


def write_kubeconfig(path: str, server: str, token: str | None, ca_file: str | None = None) -> str:
    """A kubeconfig (JSON is YAML) with one cluster, user and context pointing at ``server``."""
    cluster: Obj = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = ca_file
    user: Obj = {"token": token} if token else {}
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
           "clusters": [{"name": "fake", "cluster": cluster}],
           "users": [{"name": "fake", "user": user}],
           "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}
    with open(path, "w") as fh:
        json.dump(doc, fh)
    return path
