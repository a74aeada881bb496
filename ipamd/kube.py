"""Kubernetes mode: the live views of this node's pods and of the cluster's nodes (issue 8 item 6).

The only module that imports the Kubernetes client (``kubernetes``, docs/decisions.md "Dependencies"), and the one
place its errors are translated (:func:`_translated`)::

    IpamError
    ├── KubeError (999)            anything else the client raised, and malformed objects; the cause is chained
    │   ├── KubeConfigError        no usable in-cluster config or kubeconfig (the daemon exits 2 on it)
    │   └── KubeRejected           the API server refused the request as sent (401, 403, 404, 400, 422, ...)
    └── TryAgainLater (11)
        └── KubeUnavailable        unreachable, timed out, cut off, 429 or 5xx
            └── KubeExpired        410 Gone: the resourceVersion is too old (HTTP status or watch ERROR event)

What the daemon gets from the API (docs/architecture.md "Kubernetes mode"):

- :class:`NodeView` lists and watches every node: the current set of node names, each node's ``spec.podCIDRs``
  (served as blocks by :mod:`ipamd.podcidr`) and the node deletions it has seen (node removal, issue 8 item 5).
- :class:`PodView` lists and watches the pods of this node (field selector ``spec.nodeName=<node>``) and answers,
  for an attachment's sandbox (container) ID and pod UID, whether its pod is alive, terminating, gone (absent or
  finished) or unknown (:meth:`PodSnapshot.owner`; :class:`PodOwnerCheck` asks it for the reconciler). Matching
  is by pod UID, never by pod name (field case B20); a terminating pod keeps its addresses (field case B21); when
  the view is not current (no list yet, the API server unreachable, the watch broken or expired) the answer is
  "unknown", never "gone".
- :class:`NamespaceView` lists and watches every namespace (cluster-scoped) for its labels, which named pools'
  ``namespaceSelector`` matches (docs/configuration.md "Named pools"); when it is not current, or does not show the
  namespace yet, the answer is "unknown" (``None``) and a selector that needs those labels makes ADD answer 11.

Both views follow the API's list-then-watch protocol: a list gives the state and its ``resourceVersion``, a watch
from that version streams every change after it (with ``allowWatchBookmarks``, so a quiet watch still advances its
version), and a watch that ends at its server-side timeout is opened again from the last version seen. A ``410
Gone`` (the version fell out of the server's history), and any failure of a list or a watch, lead to a new list:
the view never resumes from a gap it cannot see. Each view's :meth:`round` is one list-and-watch cycle, meant for
:func:`ipamd.concurrency.supervise` (no error ends the loop, field case B53).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException, OpenApiException

from .cache import NodeCache
from .domain.errors import IpamError, TryAgainLater
from .domain.model import HandleRecord
from .noderemoval import NodeRemover
from .podcidr import PodCidrClaimer
from .store.base import Store

if TYPE_CHECKING:
    from .failpoints import Failpoints
    from .metrics import Metrics

log = logging.getLogger(__name__)

Obj = dict[str, Any]
T = TypeVar("T")

#: Where a pod's service account token and CA are mounted (in-cluster config).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Objects per list page (``limit``): a list of every node of a large cluster comes in pages of one snapshot.
PAGE_SIZE = 500
#: Seconds a watch stays open before the API server closes it (``timeoutSeconds``) and the view opens the next one.
WATCH_SECONDS = 60
#: Node deletions remembered (oldest forgotten first): bounded memory whatever the churn.
MAX_DELETED_NODES = 4096


class KubeError(IpamError):
    """An error from the Kubernetes client or a malformed API object (code 999); the client's exception is the
    ``__cause__``."""


class KubeConfigError(KubeError):
    """No usable API configuration: in-cluster environment missing, kubeconfig unreadable or without a context."""


class KubeRejected(KubeError):
    """The API server refused the request as sent (``status`` is the HTTP status): retrying it as is cannot help
    (missing RBAC permission, bad token, unsupported field selector)."""

    def __init__(self, msg: str, status: int) -> None:
        super().__init__(msg)
        self.status = status


class KubeUnavailable(TryAgainLater):
    """The API server could not be reached or did not answer in time (or answered 429/5xx) (code 11)."""


class KubeExpired(KubeUnavailable):
    """410 Gone: the watch's (or the continued list's) resourceVersion is older than the server's history; the view
    must list again."""


def _status_message(exc: ApiException) -> str:
    """The ``message`` of the API's Status body when there is one, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return str(exc.reason or "").strip()


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Translate every error the client raises inside the block into the tree above, naming ``what`` was asked
    and chaining the cause (the one translation boundary of the Kubernetes client)."""
    try:
        yield
    except IpamError:
        raise
    except ApiException as exc:
        status = int(exc.status or 0)
        text = "%s: HTTP %d %s" % (what, status, _status_message(exc))
        if status == 410:
            raise KubeExpired(text) from exc
        if status == 429 or status >= 500 or status == 0:
            raise KubeUnavailable(text) from exc
        raise KubeRejected(text, status) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, reset, timed out, TLS (ssl.SSLError)
        raise KubeUnavailable("%s: API server unreachable: %s" % (what, exc)) from exc
    except (OpenApiException, ValueError, KeyError, TypeError) as exc:
        raise KubeError("%s: unusable answer from the API server: %s: %s" % (what, type(exc).__name__, exc)) \
            from exc
    except Exception as exc:
        raise KubeError("%s: %s: %s" % (what, type(exc).__name__, exc)) from exc


class KubeWatch:
    """One watch request (``watch=true``): iterate for ``(type, object)`` pairs, ``type`` one of ADDED, MODIFIED,
    DELETED, BOOKMARK. Iteration ends when the server closes the stream at its timeout; it raises
    :class:`KubeExpired` for 410 Gone (as an HTTP status or as an ERROR event) and the other errors of
    :func:`_translated`. :meth:`stop` (from any thread) ends it at once."""

    def __init__(self, func: Callable[..., Any], what: str, kwargs: dict[str, Any]) -> None:
        self._watch = k8s_watch.Watch(return_type=object)  # events stay JSON objects: no model deserialisation
        self._func, self._what, self._kwargs = func, what, kwargs
        self._stopped = False

    def __iter__(self) -> Iterator[tuple[str, Obj]]:
        if self._stopped:  # the client's stream() forgets a stop() that came before it started
            return
        with _translated(self._what):
            for event in self._watch.stream(self._func, **self._kwargs):
                if self._stopped:
                    return
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise KubeError("%s: malformed watch event %r" % (self._what, event))
                yield str(event.get("type", "")), event["object"]

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


class KubeApi:
    """The API calls ipamd makes (list and watch), with errors translated. ``timeout`` (seconds) bounds each
    connect and each read of a list; a watch's read may wait its server-side timeout plus ``timeout``.
    Thread-safe (the client's connection pool is)."""

    KINDS = ("pods", "nodes", "namespaces")

    def __init__(self, api_client: Any, timeout: float = 10.0) -> None:
        self._client = api_client
        self._core = k8s_client.CoreV1Api(api_client)
        self.timeout = timeout

    @classmethod
    def connect(cls, kubeconfig: str = "", timeout: float = 10.0, *, service_account_dir: str = SERVICE_ACCOUNT_DIR,
                environ: Mapping[str, str] | None = None) -> KubeApi:
        """Load the configuration — the kubeconfig file when ``kubeconfig`` is set (its current context), else the
        pod's in-cluster config (``KUBERNETES_SERVICE_HOST``/``_PORT`` from ``environ``, the service account's
        token and CA from ``service_account_dir``) — and return a client. Makes no request. Raises
        :class:`KubeConfigError` naming what is missing."""
        cfg = k8s_client.Configuration()
        try:  # every failure to load a configuration is a configuration error (YAML, files, missing keys)
            if kubeconfig:
                k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg, persist_config=False)
            else:
                from kubernetes.config.incluster_config import InClusterConfigLoader

                InClusterConfigLoader(os.path.join(service_account_dir, "token"),
                                      os.path.join(service_account_dir, "ca.crt"),
                                      environ=os.environ if environ is None else environ).load_and_set(cfg)
        except Exception as exc:
            what = "--kubeconfig %s" % kubeconfig if kubeconfig else "in-cluster config"
            raise KubeConfigError("%s: %s" % (what, " ".join(str(exc).split()) or type(exc).__name__)) from exc
        # one attempt per call: the views' loops back off and retry (urllib3 would otherwise retry a read timeout
        # three times, and a black-holed API server would take four timeouts to notice)
        cfg.retries = 0
        return cls(k8s_client.ApiClient(cfg), timeout)

    def _lister(self, kind: str) -> Callable[..., Any]:
        if kind == "pods":
            return self._core.list_pod_for_all_namespaces  # type: ignore[no-any-return]
        if kind == "nodes":
            return self._core.list_node  # type: ignore[no-any-return]
        if kind == "namespaces":
            return self._core.list_namespace  # type: ignore[no-any-return]
        raise ValueError("kind %r is not one of %s" % (kind, self.KINDS))

    def list(self, kind: str, field_selector: str = "", page_size: int = PAGE_SIZE) -> tuple[list[Obj], str]:
        """Every ``kind`` ("pods", "nodes" or "namespaces") object matching ``field_selector``, in pages of
        ``page_size`` from one consistent snapshot: ``(items, resourceVersion)``. Raises :class:`KubeExpired` when a
        page's continue token expired (list again), the other errors of the tree."""
        func = self._lister(kind)
        items: list[Obj] = []
        token = ""
        what = "list %s%s" % (kind, " (%s)" % field_selector if field_selector else "")
        while True:
            with _translated(what):
                kwargs: dict[str, Any] = {"limit": page_size, "_preload_content": False,
                                          "_request_timeout": (self.timeout, self.timeout)}
                if field_selector:
                    kwargs["field_selector"] = field_selector
                if token:
                    kwargs["_continue"] = token
                body = json.loads(func(**kwargs).data)
                meta = body.get("metadata") or {}
                page = body.get("items") or []
                if not isinstance(page, list) or not all(isinstance(i, dict) for i in page):
                    raise ValueError("items is not a list of objects")
                items.extend(page)
                token = str(meta.get("continue") or "")
                if not token:
                    return items, str(meta.get("resourceVersion") or "")

    def watch(self, kind: str, resource_version: str, field_selector: str = "",
              seconds: int = WATCH_SECONDS) -> KubeWatch:
        """A watch of ``kind`` from ``resource_version`` (exclusive) with bookmarks, closed by the server after
        ``seconds``; nothing is sent before the first iteration."""
        kwargs: dict[str, Any] = {"resource_version": resource_version, "allow_watch_bookmarks": True,
                                  "timeout_seconds": int(seconds),
                                  "_request_timeout": (self.timeout, seconds + self.timeout)}
        if field_selector:
            kwargs["field_selector"] = field_selector
        return KubeWatch(self._lister(kind), "watch %s%s from %s" % (
            kind, " (%s)" % field_selector if field_selector else "", resource_version or "now"), kwargs)

    def close(self) -> None:
        with _translated("close the API client"):
            self._client.close()


# -- objects ---------------------------------------------------------------------------------------------------------

def _meta(obj: Obj, what: str) -> Obj:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise KubeError("%s without metadata" % what)
    return meta


def _section(obj: Obj, name: str) -> Obj:
    """``obj[name]`` when it is an object, else an empty one (an API object may omit ``spec`` or ``status``)."""
    value = obj.get(name)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the views keep of a pod: its ``uid`` (the identity, never the name: B20), ``namespace``/``name``
    (for logs), ``terminating`` (``metadata.deletionTimestamp`` is set: deletion started, the pod still runs out
    its grace period, B21), the deletion time and grace seconds as the API gave them, ``phase`` and ``pod_ips``."""

    uid: str
    namespace: str
    name: str
    terminating: bool
    deletion_timestamp: str | None
    grace_seconds: int | None
    phase: str
    pod_ips: tuple[str, ...]

    @property
    def finished(self) -> bool:
        """The pod reached a terminal phase (Succeeded or Failed, e.g. a completed Job or an evicted pod): kubelet
        has stopped its sandbox and never starts it again."""
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def from_obj(cls, obj: Obj) -> PodInfo:
        """Raises :class:`KubeError` for an object without ``metadata.uid``."""
        meta = _meta(obj, "pod")
        uid = meta.get("uid")
        if not isinstance(uid, str) or not uid:
            raise KubeError("pod %s/%s without metadata.uid" % (meta.get("namespace"), meta.get("name")))
        status = _section(obj, "status")
        ips = tuple(str(p.get("ip")) for p in status.get("podIPs") or () if isinstance(p, dict) and p.get("ip"))
        grace = meta.get("deletionGracePeriodSeconds")
        deletion = meta.get("deletionTimestamp")
        return cls(uid, str(meta.get("namespace", "")), str(meta.get("name", "")), deletion is not None,
                   str(deletion) if deletion is not None else None,
                   grace if isinstance(grace, int) and not isinstance(grace, bool) else None,
                   str(status.get("phase", "")), ips)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the views keep it: ``name``, ``uid``, ``pod_cidrs`` (``spec.podCIDRs``, or the older single
    ``spec.podCIDR``), ``ready`` (the Ready condition is True), ``deleting`` (``deletionTimestamp`` set) and
    ``labels`` (``metadata.labels`` as sorted pairs; named pools' ``nodeSelector`` matches them)."""

    name: str
    uid: str
    pod_cidrs: tuple[str, ...]
    ready: bool
    deleting: bool
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_obj(cls, obj: Obj) -> NodeInfo:
        """Raises :class:`KubeError` for an object without ``metadata.name``."""
        meta, name, labels = _named(obj, "node")
        spec = _section(obj, "spec")
        cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        status = _section(obj, "status")
        ready = any(isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or ())
        return cls(name, str(meta.get("uid", "")), tuple(str(c) for c in cidrs), ready,
                   meta.get("deletionTimestamp") is not None, labels)


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """A namespace as the namespace view keeps it: ``name`` and ``labels`` (``metadata.labels`` as sorted pairs;
    named pools' ``namespaceSelector`` matches them)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_obj(cls, obj: Obj) -> NamespaceInfo:
        """Raises :class:`KubeError` for an object without ``metadata.name``."""
        _, name, labels = _named(obj, "namespace")
        return cls(name, labels)


def _named(obj: Obj, kind: str) -> tuple[Obj, str, tuple[tuple[str, str], ...]]:
    """``(metadata, metadata.name, metadata.labels as sorted pairs)`` of a cluster-scoped object (a node or a
    namespace; labels that are not a map read as none). Raises :class:`KubeError` without ``metadata.name``."""
    meta = _meta(obj, kind)
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise KubeError("%s without metadata.name" % kind)
    labels = meta.get("labels") or {}
    return meta, name, tuple(sorted((str(k), str(v)) for k, v in labels.items())) if isinstance(labels, dict) else ()


def _resource_version(obj: Obj) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


# -- list and watch --------------------------------------------------------------------------------------------------

class _Reflector(Generic[T]):
    """List-then-watch of one kind into a dict by key (the protocol of the module docstring). Subclasses give the
    decoder and the key, and may react to removals (:meth:`_removed`) and additions (:meth:`_added`)."""

    def __init__(self, api: KubeApi, kind: str, field_selector: str, watch_seconds: int) -> None:
        self.api, self.kind, self.field_selector, self.watch_seconds = api, kind, field_selector, watch_seconds
        self._lock = threading.Lock()
        self._items: dict[str, T] = {}
        self._rv = ""
        self._listed = False      # a list has completed once
        self._synced = False      # a list completed and nothing failed since
        self._fresh_at = 0.0      # monotonic time of the last answer that proved the view current
        self._stream: KubeWatch | None = None
        self._closed = False
        #: lists done, relists after 410 Gone, watch events applied (counters for metrics and tests)
        self.lists = 0
        self.expired = 0
        self.events = 0

    # subclass hooks
    def _decode(self, obj: Obj) -> T:
        raise NotImplementedError

    def _key(self, item: T) -> str:
        raise NotImplementedError

    def _added(self, key: str, item: T, now: float) -> None:
        """Called under the lock when ``key`` appears (watch ADDED or found by a list)."""

    def _removed(self, key: str, item: T, now: float) -> None:
        """Called under the lock when ``key`` disappears (watch DELETED or missing from a new list)."""

    def round(self) -> float:
        """List when needed, then watch until the server ends the stream. Returns 0 (watch again at once).
        Raises what the API calls raise (after marking the view not current); 410 Gone is not an error: it
        schedules a new list and returns."""
        if self._closed:
            return 0.5
        try:
            if not self._synced:
                self._relist()
            stream = self.api.watch(self.kind, self._rv, self.field_selector, self.watch_seconds)
            self._stream = stream
            if self._closed:  # close() ran between the two lines above and could not stop this stream
                return 0.5
            for type_, obj in stream:
                self._apply(type_, obj)
            with self._lock:
                self._fresh_at = time.monotonic()  # the server ended the watch in order: nothing was missed
            return 0.0
        except KubeExpired as exc:
            with self._lock:
                self._synced = False
                self.expired += 1
            log.info("%s: %s; listing again", self.kind, exc)
            return 0.0
        except Exception:
            with self._lock:
                self._synced = False
            if self._closed:  # close() cut the stream: not an error
                return 0.5
            raise
        finally:
            self._stream = None

    def _relist(self) -> None:
        objs, rv = self.api.list(self.kind, self.field_selector)
        items = {}
        for obj in objs:
            item = self._decode(obj)
            items[self._key(item)] = item
        now = time.monotonic()
        with self._lock:
            for key, item in self._items.items():
                if key not in items:
                    self._removed(key, item, now)
            for key, item in items.items():
                if key not in self._items:
                    self._added(key, item, now)
            self._items = items
            self._rv = rv
            self._listed = self._synced = True
            self._fresh_at = now
            self.lists += 1
        log.debug("%s: listed %d at resourceVersion %s", self.kind, len(items), rv)

    def _apply(self, type_: str, obj: Obj) -> None:
        rv = _resource_version(obj)
        now = time.monotonic()
        if type_ == "BOOKMARK":
            with self._lock:
                self._rv = rv or self._rv
                self._fresh_at = now
            return
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            raise KubeError("%s: unknown watch event type %r" % (self.kind, type_))
        item = self._decode(obj)
        key = self._key(item)
        with self._lock:
            old = self._items.get(key)
            if type_ == "DELETED":
                if old is not None:
                    del self._items[key]
                    self._removed(key, old, now)
            else:
                self._items[key] = item
                if old is None:
                    self._added(key, item, now)
            self._rv = rv or self._rv
            self._fresh_at = now
            self.events += 1

    def close(self) -> None:
        """Stop the open watch (if any) and every later round; the view is no longer current (answers turn
        "unknown"). Idempotent."""
        self._closed = True
        with self._lock:
            self._synced = False
        stream = self._stream
        if stream is not None:
            stream.stop()


class NodeView(_Reflector[NodeInfo]):
    """Every node of the cluster, by name, from a list and a watch (module docstring). Thread-safe: one thread runs
    :meth:`round` (:func:`ipamd.concurrency.supervise`), any thread may take a :meth:`snapshot`.

    Deletions: a node removed by a watch DELETED event, or missing from a later list, is remembered with the
    monotonic time it was seen gone (at most :data:`MAX_DELETED_NODES`, oldest forgotten first); a node created
    again under the same name is forgotten. Deletions that happened while the daemon was not running are not
    events: compare the owners recorded in etcd with :attr:`NodeSnapshot.names` for those.
    """

    def __init__(self, api: KubeApi, watch_seconds: int = WATCH_SECONDS, own_node: str = "") -> None:
        super().__init__(api, "nodes", "", watch_seconds)
        self._deleted: OrderedDict[str, float] = OrderedDict()
        self._own_node = own_node
        self._own_missing_reported = False

    def _relist(self) -> None:
        super()._relist()
        if self._own_node:  # a wrong node name makes the pod view empty: say so (its answers stay "unknown")
            with self._lock:
                missing = self._own_node not in self._items
            if missing and not self._own_missing_reported:
                log.error("node %s is not in the Kubernetes API: its pods are never judged gone; set --node-name "
                          "(or NODE_NAME) to the node's Kubernetes name", self._own_node,
                          extra={"node": self._own_node})
            self._own_missing_reported = missing

    def _decode(self, obj: Obj) -> NodeInfo:
        return NodeInfo.from_obj(obj)

    def _key(self, item: NodeInfo) -> str:
        return item.name

    def _added(self, key: str, item: NodeInfo, now: float) -> None:
        self._deleted.pop(key, None)

    def _removed(self, key: str, item: NodeInfo, now: float) -> None:
        self._deleted[key] = now
        self._deleted.move_to_end(key)
        while len(self._deleted) > MAX_DELETED_NODES:
            self._deleted.popitem(last=False)
        log.info("node %s deleted from the Kubernetes API", key, extra={"node": key})

    def snapshot(self) -> NodeSnapshot | None:
        """The view now, ``None`` until the first list completed. A copy: later changes do not show in it."""
        with self._lock:
            if not self._listed:
                return None
            return NodeSnapshot(dict(self._items), dict(self._deleted), self._synced, self._rv, self._fresh_at)

    def knows(self, name: str) -> bool:
        """Whether the view is current and node ``name`` exists (O(1), no copy)."""
        with self._lock:
            return self._synced and name in self._items

    def labels(self, name: str) -> dict[str, str] | None:
        """``metadata.labels`` of node ``name``; ``None`` when the view is not current or has no such node."""
        with self._lock:
            node = self._items.get(name) if self._synced else None
            return dict(node.labels) if node is not None else None

    def pod_cidrs(self, name: str) -> tuple[str, ...] | None:
        """``spec.podCIDRs`` of node ``name``; ``None`` when the view is not current or has no such node."""
        with self._lock:
            node = self._items.get(name) if self._synced else None
            return node.pod_cidrs if node is not None else None


class NamespaceView(_Reflector[NamespaceInfo]):
    """Every namespace of the cluster, by name, with its labels, from a list and a watch (module docstring), for
    named pools' ``namespaceSelector``. Thread-safe: one thread runs :meth:`round`, any thread asks :meth:`labels`.

    Why a watch and not a ``get`` per ADD with a short cache: an ADD then never waits for the API server (a cache
    miss would put a round trip, or a timeout, inside the CNI deadline), a changed label is seen as soon as the watch
    delivers it (a cache would serve the old one for its TTL), and the cost is small and known: namespaces are few
    (tens to a few thousand) and rarely change, and the list-and-watch code is the node view's.
    """

    def __init__(self, api: KubeApi, watch_seconds: int = WATCH_SECONDS) -> None:
        super().__init__(api, "namespaces", "", watch_seconds)

    def _decode(self, obj: Obj) -> NamespaceInfo:
        return NamespaceInfo.from_obj(obj)

    def _key(self, item: NamespaceInfo) -> str:
        return item.name

    @property
    def current(self) -> bool:
        """A list completed and no list or watch failed since."""
        with self._lock:
            return self._synced

    def labels(self, name: str) -> dict[str, str] | None:
        """``metadata.labels`` of namespace ``name`` plus ``kubernetes.io/metadata.name: <name>`` (which the API
        server sets on every namespace; added here too so the answer never lacks it); ``None`` ("unknown") when the
        view is not current (not listed yet, the API server unreachable, the watch broken or expired) or does not
        show ``name`` (created a moment ago and not yet delivered by the watch). O(labels)."""
        with self._lock:
            ns = self._items.get(name) if self._synced else None
            if ns is None:
                return None
            return {**dict(ns.labels), "kubernetes.io/metadata.name": name}


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """The node view at one moment: ``nodes`` by name, ``deleted`` (name -> monotonic seconds when the deletion
    was seen), ``synced`` (the view was current: False while the API server is unreachable or the watch is being
    re-established), the ``resource_version`` it reflects and ``fresh_at`` (monotonic time of the last answer
    that proved it current)."""

    nodes: Mapping[str, NodeInfo]
    deleted: Mapping[str, float]
    synced: bool
    resource_version: str
    fresh_at: float

    @property
    def names(self) -> frozenset[str]:
        """The names of the nodes that exist now."""
        return frozenset(self.nodes)

    def deleted_for(self, name: str, now: float | None = None) -> float | None:
        """Seconds since node ``name``'s deletion was seen (``now`` defaults to ``time.monotonic()``); ``None``
        when no deletion of it was seen or it exists again."""
        at = self.deleted.get(name)
        if at is None or name in self.nodes:
            return None
        return (time.monotonic() if now is None else now) - at


class OwnerState(enum.Enum):
    """Whether an attachment's pod is still there (:meth:`PodSnapshot.owner`)."""

    ALIVE = "alive"
    """A pod with the attachment's UID is on this node and not being deleted: keep."""
    TERMINATING = "terminating"
    """Its pod is being deleted but still running out its grace period: keep until the runtime's DEL, a CNI GC
    without it, or the node's removal (B21)."""
    GONE = "gone"
    """No pod with the attachment's UID is on this node, or its pod has finished (phase Succeeded or Failed), as of
    a current view: a candidate (after a grace period and a second observation; the reconciler decides)."""
    UNKNOWN = "unknown"
    """The view cannot tell (not listed yet, API server unreachable, watch broken, this node not in the API, or
    the attachment carries no pod UID): never a reason to release."""


@dataclass(frozen=True, slots=True)
class Ownership:
    """The answer for one attachment: its ``state``, the ``container_id`` and ``pod_uid`` asked about, the ``pod``
    found (None when there is none) and a ``reason`` for logs and dry runs."""

    state: OwnerState
    container_id: str
    pod_uid: str
    pod: PodInfo | None
    reason: str


@dataclass(frozen=True, slots=True)
class PodSnapshot:
    """The pods of ``node`` at one moment, by UID (``pods``), with ``synced`` (the view was current),
    ``node_known`` (the node view was current and lists ``node``: without it the field selector could be matching
    the wrong name), the ``resource_version`` and ``fresh_at`` (monotonic)."""

    node: str
    pods: Mapping[str, PodInfo]
    synced: bool
    node_known: bool
    resource_version: str
    fresh_at: float

    def owner(self, container_id: str, pod_uid: str) -> Ownership:
        """Is the pod of the attachment with sandbox ``container_id`` (the handle's ``container_id``,
        ``CNI_CONTAINERID``) and pod UID ``pod_uid`` (``K8S_POD_UID`` from ``CNI_ARGS``, the handle's
        ``pod["uid"]``) alive, terminating, gone (absent, or finished) or unknown? Terminating comes first: a pod
        being deleted keeps its addresses whatever its phase.

        Matched by UID only, never by namespace/name: a StatefulSet pod re-created under the same name has a new
        UID, so the old sandbox's attachment is GONE and the new one's ALIVE (field case B20). The API does not
        publish sandbox IDs: two sandboxes of one live pod are both ALIVE (the runtime's DEL or CNI GC tells them
        apart). Pure; O(1).
        """
        if not pod_uid:
            return Ownership(OwnerState.UNKNOWN, container_id, pod_uid, None,
                             "the attachment carries no pod UID (K8S_POD_UID in CNI_ARGS)")
        if not self.synced:
            return Ownership(OwnerState.UNKNOWN, container_id, pod_uid, None,
                             "the pod view of node %s is not current (API server unreachable or re-listing)"
                             % self.node)
        if not self.node_known:
            return Ownership(OwnerState.UNKNOWN, container_id, pod_uid, None,
                             "node %s is not in the Kubernetes API (or the node view is not current)" % self.node)
        pod = self.pods.get(pod_uid)
        if pod is None:
            return Ownership(OwnerState.GONE, container_id, pod_uid, None,
                             "no pod with uid %s on node %s at resourceVersion %s"
                             % (pod_uid, self.node, self.resource_version))
        if pod.terminating:
            return Ownership(OwnerState.TERMINATING, container_id, pod_uid, pod,
                             "pod %s/%s is terminating (deletionTimestamp %s, grace %s s)"
                             % (pod.namespace, pod.name, pod.deletion_timestamp, pod.grace_seconds))
        if pod.finished:
            return Ownership(OwnerState.GONE, container_id, pod_uid, pod,
                             "pod %s/%s (uid %s) has finished (phase %s): its sandbox is stopped for good"
                             % (pod.namespace, pod.name, pod_uid, pod.phase))
        return Ownership(OwnerState.ALIVE, container_id, pod_uid, pod,
                         "pod %s/%s (uid %s) is on node %s" % (pod.namespace, pod.name, pod_uid, self.node))


class PodView(_Reflector[PodInfo]):
    """The pods of node ``node`` (field selector ``spec.nodeName=<node>``), by UID, from a list and a watch
    (module docstring). ``nodes`` (optional) is the node view that confirms the node exists. Thread-safe: one thread
    runs :meth:`round`, any thread may take a :meth:`snapshot`."""

    def __init__(self, api: KubeApi, node: str, nodes: NodeView | None = None,
                 watch_seconds: int = WATCH_SECONDS) -> None:
        super().__init__(api, "pods", "spec.nodeName=%s" % node, watch_seconds)
        self.node, self.nodes = node, nodes

    def _decode(self, obj: Obj) -> PodInfo:
        return PodInfo.from_obj(obj)

    def _key(self, item: PodInfo) -> str:
        return item.uid

    def snapshot(self) -> PodSnapshot | None:
        """The view now (a copy), ``None`` until the first list completed."""
        node_known = self.nodes.knows(self.node) if self.nodes is not None else True
        with self._lock:
            if not self._listed:
                return None
            return PodSnapshot(self.node, dict(self._items), self._synced, node_known, self._rv, self._fresh_at)


class PodOwnerCheck:
    """The reconciler's owner check in Kubernetes mode (``ipamd.reconciler.OwnerCheck``, name ``kubernetes``): an
    attachment's pod in this node's pod view, by the handle's sandbox (``container_id``) and ``pod["uid"]``.

    Verdicts ``(verdict, reason)``: "gone" for :attr:`OwnerState.GONE`; "alive" for ALIVE and for TERMINATING (a
    terminating pod keeps its addresses until the runtime's DEL, a CNI GC without it, or its node's removal: field
    case B21); "unknown" otherwise (no pod UID, the view not current, this node not in the API), which never
    releases anything. One snapshot serves the verdicts of ``reuse`` seconds (one reconciler pass), so a pass costs
    one copy of the node's pods, not one per attachment. Never raises.
    """

    name = "kubernetes"

    def __init__(self, pods: PodView, reuse: float = 1.0) -> None:
        self.pods, self.reuse = pods, reuse
        self._snap: PodSnapshot | None = None
        self._taken = -1e9

    def verdict(self, record: HandleRecord) -> tuple[str, str]:
        now = time.monotonic()
        if self._snap is None or now - self._taken >= self.reuse:
            self._snap, self._taken = self.pods.snapshot(), now
        snap = self._snap
        if snap is None:
            return OwnerState.UNKNOWN.value, "the pod view has not listed yet"
        own = snap.owner(record.container_id, str(record.pod.get("uid", "")))
        if own.state is OwnerState.TERMINATING:
            return OwnerState.ALIVE.value, own.reason
        return own.state.value, own.reason


class KubeMode:
    """Kubernetes mode in the daemon (``--kubernetes``, docs/configuration.md): the API client, the node view,
    this node's pod view, with ``--kube-pod-cidr-blocks`` the podCIDR block claimer, and with a
    ``node_removal_grace`` > 0 (seconds, ``--kube-node-removal-grace``) the removal of nodes deleted from the API
    (:class:`ipamd.noderemoval.NodeRemover` over :meth:`NodeView.snapshot`), and the namespace view
    (:attr:`namespaces`, whose :meth:`NamespaceView.labels` named pools' ``namespaceSelector`` matches). :meth:`loops`
    are the background rounds for :func:`ipamd.concurrency.supervise`; :attr:`owner_check` is the reconciler's check
    (:class:`PodOwnerCheck` over :attr:`pods`)."""

    def __init__(self, api: KubeApi, node: str, store: Store | None = None, cache: NodeCache | None = None,
                 pod_cidr_blocks: bool = False, etcd_timeout: float = 2.0,
                 watch_seconds: int = WATCH_SECONDS, node_removal_grace: float = 0.0,
                 metrics: Metrics | None = None, failpoints: Failpoints | None = None) -> None:
        self.api = api
        self.nodes = NodeView(api, watch_seconds, own_node=node)
        self.pods = PodView(api, node, self.nodes, watch_seconds)
        self.namespaces = NamespaceView(api, watch_seconds)
        #: for the reconciler's checks (ipamd.reconciler): judges attachments by this node's pods
        self.owner_check = PodOwnerCheck(self.pods)
        self.claimer: PodCidrClaimer | None = None
        if pod_cidr_blocks and store is not None:
            self.claimer = PodCidrClaimer(store, node, lambda: self.nodes.pod_cidrs(node), cache, etcd_timeout)
        self.remover: NodeRemover | None = None
        if node_removal_grace > 0 and store is not None:
            self.remover = NodeRemover(store, node, node_removal_grace, self.nodes.snapshot, etcd_timeout,
                                       metrics=metrics, failpoints=failpoints)

    def loops(self) -> list[tuple[str, Callable[[], float | None]]]:
        """``(name, round)`` of each background loop: ``kube-nodes``, ``kube-pods``, ``kube-namespaces``,
        ``podcidr`` (with podCIDR blocks) and ``kube-node-removal`` (with a node removal grace period)."""
        out: list[tuple[str, Callable[[], float | None]]] = [("kube-nodes", self.nodes.round),
                                                              ("kube-pods", self.pods.round),
                                                              ("kube-namespaces", self.namespaces.round)]
        if self.claimer is not None:
            out.append(("podcidr", self.claimer.round))
        if self.remover is not None:
            out.append(("kube-node-removal", self.remover.round))
        return out

    def close(self) -> None:
        """Stop the open watches and close the client; idempotent."""
        self.pods.close()
        self.nodes.close()
        self.namespaces.close()
        try:
            self.api.close()
        except KubeError as exc:
            log.debug("Kubernetes client not closed cleanly: %s", exc)
