"""Kubernetes mode's views (ipamd/kube.py) driven through the real client library (``kubernetes``) against the fake
API server on loopback (tests/fakekube.py), which speaks the real REST and watch protocol.

Field cases B20 (StatefulSet name reuse: matched by sandbox and pod UID, never by name) and B21 (terminating pods
keep their addresses), issue 8 item 6: list and watch with a field selector, relist on 410 Gone (HTTP status and
ERROR event), bookmarks, node deletions, an unreachable or black-holed API server makes the view "unknown" (never
"gone"), every client error translated, and the loops never die (B53).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakekube import FakeKube, write_kubeconfig
from harness import wait_for

from ipamd.concurrency import supervise
from ipamd.kube import (
    KubeApi,
    KubeConfigError,
    KubeError,
    KubeExpired,
    KubeRejected,
    KubeUnavailable,
    NodeView,
    OwnerState,
    PodView,
)

#: Server-side watch timeout in these tests (seconds): a watch ends and is re-opened this often.
WATCH = 1


@pytest.fixture
def kubeconfig(fake: FakeKube, tmp_path: Path) -> str:
    return write_kubeconfig(str(tmp_path / "kubeconfig"), fake.url, fake.token)


@pytest.fixture
def api(kubeconfig: str) -> Iterator[KubeApi]:
    a = KubeApi.connect(kubeconfig, timeout=2.0)
    yield a
    a.close()


class Loops:
    """Runs views' rounds under :func:`supervise` in threads, counting errors; stops and joins them at exit."""

    def __init__(self, *views: NodeView | PodView) -> None:
        self.views = views
        self.stop = threading.Event()
        self.errors = 0
        self.threads = [threading.Thread(target=supervise, args=(v.kind, v.round, self.stop, self._error, 0.05, 0.3),
                                         daemon=True) for v in views]

    def _error(self) -> None:
        self.errors += 1

    def __enter__(self) -> Loops:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for v in self.views:
            v.close()
        for t in self.threads:
            t.join(10)
        assert not any(t.is_alive() for t in self.threads)


def synced(view: PodView | NodeView) -> bool:
    snap = view.snapshot()
    return snap is not None and snap.synced


# -- list and watch ----------------------------------------------------------------------------------------------------

def test_pod_view_lists_and_watches_only_this_nodes_pods(fake: FakeKube, api: KubeApi) -> None:
    fake.add_node("n1")
    fake.add_pod("default", "a", "n1", uid="ua")
    fake.add_pod("default", "elsewhere", "n2", uid="ux")
    nodes = NodeView(api, WATCH)
    pods = PodView(api, "n1", nodes, WATCH)
    assert pods.snapshot() is None and nodes.snapshot() is None  # nothing until the first list
    with Loops(nodes, pods):
        wait_for(lambda: synced(pods) and synced(nodes), "the first lists")
        snap = pods.snapshot()
        assert snap is not None
        assert set(snap.pods) == {"ua"}
        assert snap.owner("sandbox-a", "ua").state is OwnerState.ALIVE
        assert snap.owner("sandbox-x", "ux").state is OwnerState.GONE  # a pod of another node is not ours
        fake.add_pod("kube-system", "b", "n1", uid="ub")
        wait_for(lambda: "ub" in pods.snapshot().pods, "the watch to deliver the new pod")  # type: ignore[union-attr]
        fake.delete_pod("default", "a")
        wait_for(lambda: pods.snapshot().owner("sandbox-a", "ua").state is OwnerState.GONE,  # type: ignore[union-attr]
                 "the watch to deliver the deletion")
    lists = fake.requests_of("/api/v1/pods", fieldSelector="spec.nodeName=n1")
    assert lists and all("watch" in p or p.get("limit") for p in lists)
    watches = fake.requests_of("/api/v1/pods", fieldSelector="spec.nodeName=n1", watch="true",
                               allowWatchBookmarks="true")
    assert watches and all(p.get("resourceVersion") for p in watches)
    assert not fake.requests_of("/api/v1/pods", fieldSelector="")  # never all pods of the cluster


def test_pod_that_moves_into_the_selector_is_added(fake: FakeKube, api: KubeApi) -> None:
    # a pending pod bound to this node later: the field-selected watch reports it as ADDED
    fake.add_node("n1")
    fake.add_pod("default", "pending", "", uid="up", phase="Pending")
    pods = PodView(api, "n1", None, WATCH)
    with Loops(pods):
        wait_for(lambda: synced(pods), "the first list")
        assert pods.snapshot().owner("s", "up").state is OwnerState.GONE  # type: ignore[union-attr]
        fake.update_pod("default", "pending", lambda o: o["spec"].update(nodeName="n1"))
        wait_for(lambda: pods.snapshot().owner("s", "up").state is OwnerState.ALIVE,  # type: ignore[union-attr]
                 "the bound pod")


def test_statefulset_name_reuse_is_matched_by_uid_never_by_name(fake: FakeKube, api: KubeApi) -> None:
    # B20: web-0 (uid u1, sandbox s-old) replaced by web-0 (uid u2, sandbox s-new): only the old one is gone
    fake.add_node("n1")
    fake.add_pod("default", "web-0", "n1", uid="u1")
    nodes, pods = NodeView(api, WATCH), PodView(api, "n1", None, WATCH)
    with Loops(nodes, pods):
        wait_for(lambda: synced(pods), "the first list")
        assert pods.snapshot().owner("s-old", "u1").state is OwnerState.ALIVE  # type: ignore[union-attr]
        fake.delete_pod("default", "web-0")
        fake.add_pod("default", "web-0", "n1", uid="u2")
        wait_for(lambda: "u2" in pods.snapshot().pods, "the new web-0")  # type: ignore[union-attr]
        snap = pods.snapshot()
        assert snap is not None
        old, new = snap.owner("s-old", "u1"), snap.owner("s-new", "u2")
        assert old.state is OwnerState.GONE and old.pod is None
        assert new.state is OwnerState.ALIVE and new.pod is not None
        assert (new.pod.namespace, new.pod.name, new.container_id) == ("default", "web-0", "s-new")
        # the name alone proves nothing: an attachment whose UID no pod has is gone though web-0 exists
        assert snap.owner("s-other", "u-never-seen").state is OwnerState.GONE
        # and an attachment without a pod UID is never judged
        assert snap.owner("s-plain", "").state is OwnerState.UNKNOWN


def test_terminating_pod_keeps_its_owner_until_deleted(fake: FakeKube, api: KubeApi) -> None:
    # B21: deletion started with a 60 s grace period: terminating (never gone) until the pod object is gone
    fake.add_node("n1")
    fake.add_pod("default", "t1", "n1", uid="ut")
    pods = PodView(api, "n1", None, WATCH)
    with Loops(pods):
        wait_for(lambda: synced(pods), "the first list")
        fake.mark_terminating("default", "t1", grace=60)
        wait_for(lambda: pods.snapshot().owner("t1-sandbox", "ut").state  # type: ignore[union-attr]
                 is OwnerState.TERMINATING, "the terminating pod")
        first = pods.events
        wait_for(lambda: len(fake.requests_of("/api/v1/pods", watch="true")) >= 3, "two more watches")
        own = pods.snapshot().owner("t1-sandbox", "ut")  # type: ignore[union-attr]
        assert pods.events >= first
        assert own.state is OwnerState.TERMINATING and own.pod is not None
        assert own.pod.terminating and own.pod.grace_seconds == 60 and own.pod.deletion_timestamp
        fake.delete_pod("default", "t1")
        wait_for(lambda: pods.snapshot().owner("t1-sandbox", "ut").state  # type: ignore[union-attr]
                 is OwnerState.GONE, "the deletion")


def test_finished_pod_is_gone(fake: FakeKube, api: KubeApi) -> None:
    # a completed Job's pod (or an evicted one) stays in the API, but kubelet has stopped its sandbox for good
    fake.add_node("n1")
    fake.add_pod("default", "job-x", "n1", uid="uj")
    fake.add_pod("default", "evicted", "n1", uid="ue", phase="Failed")
    pods = PodView(api, "n1", None, WATCH)
    with Loops(pods):
        wait_for(lambda: synced(pods), "the first list")
        snap = pods.snapshot()
        assert snap is not None
        assert snap.owner("s", "uj").state is OwnerState.ALIVE
        evicted = snap.owner("s2", "ue")
        assert evicted.state is OwnerState.GONE and "phase Failed" in evicted.reason and evicted.pod is not None
        fake.update_pod("default", "job-x", lambda o: o["status"].update(phase="Succeeded"))
        wait_for(lambda: pods.snapshot().owner("s", "uj").state is OwnerState.GONE,  # type: ignore[union-attr]
                 "the finished Job pod")
        fake.mark_terminating("default", "evicted")  # being deleted: terminating wins, whatever the phase
        wait_for(lambda: pods.snapshot().owner("s2", "ue").state  # type: ignore[union-attr]
                 is OwnerState.TERMINATING, "the deletion of the evicted pod")


# -- 410 Gone and bookmarks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("expire_as", ["event", "status"])
def test_relist_on_410_gone(fake: FakeKube, api: KubeApi, expire_as: str) -> None:
    # rounds are run by hand: list + a watch that ends at its timeout; between them the server's history is compacted
    fake.expire_as = expire_as
    fake.add_node("n1")
    fake.add_pod("default", "a", "n1", uid="ua")
    pods = PodView(api, "n1", None, WATCH)
    assert pods.round() == 0.0  # list, then a watch until the server ends it
    assert pods.lists == 1 and pods.snapshot().owner("s", "ua").state is OwnerState.ALIVE  # type: ignore[union-attr]
    fake.delete_pod("default", "a")   # never seen by a watch: the next one asks from before the compaction
    fake.compact()
    assert pods.round() == 0.0        # 410 Gone: not an error; the view is no longer current
    assert pods.expired == 1 and pods.lists == 1
    assert pods.snapshot().owner("s", "ua").state is OwnerState.UNKNOWN  # type: ignore[union-attr]
    assert pods.round() == 0.0        # a new list, then a watch from its version
    assert pods.lists == 2
    assert pods.snapshot().owner("s", "ua").state is OwnerState.GONE  # type: ignore[union-attr]
    gone = [p for p in fake.requests_of("/api/v1/pods", watch="true")]
    assert len(gone) >= 3 and gone[-1]["resourceVersion"] == pods.snapshot().resource_version  # type: ignore[union-attr]


@pytest.mark.parametrize("bookmarks", [True, False])
def test_bookmarks_keep_a_quiet_watch_current(api: KubeApi, kubeconfig: str, fake: FakeKube,
                                              bookmarks: bool) -> None:
    # pods of other nodes advance the server's version; only bookmarks tell this node's watch about it, so that the
    # next watch starts after a compaction instead of falling into 410 and a relist
    fake.bookmark_interval = 0.2 if bookmarks else None
    fake.add_node("n1")
    fake.add_pod("default", "a", "n1", uid="ua")
    pods = PodView(api, "n1", None, WATCH)
    timer = threading.Timer(0.3, lambda: fake.add_pod("default", "busy", "n2", uid="ub"))
    timer.start()
    pods.round()
    timer.join()
    listed_at = fake.requests_of("/api/v1/pods", watch="true")[0]["resourceVersion"]
    snap = pods.snapshot()
    assert snap is not None
    if bookmarks:
        assert int(snap.resource_version) == fake.rv > int(listed_at)
    else:
        assert snap.resource_version == listed_at
    fake.compact()
    pods.round()
    assert (pods.expired, pods.lists) == ((0, 1) if bookmarks else (1, 1))
    assert fake.requests_of("/api/v1/pods", watch="true")[-1]["resourceVersion"] == snap.resource_version


def test_watch_without_version_resumes_only_after_a_list(fake: FakeKube, api: KubeApi) -> None:
    # the client never watches "from now" (that would miss what happened before): every watch carries a version
    fake.add_node("n1")
    pods = PodView(api, "n1", None, WATCH)
    pods.round()
    assert all(p.get("resourceVersion") not in (None, "", "0") for p in fake.requests_of("/api/v1/pods",
                                                                                           watch="true"))


# -- nodes -------------------------------------------------------------------------------------------------------------

def test_node_view_names_pod_cidrs_and_deletions(fake: FakeKube, api: KubeApi) -> None:
    fake.add_node("n1", ("10.244.1.0/24", "fd00:1::/64"))
    fake.add_node("n2", ("10.244.2.0/24",))
    fake.add_node("n3")
    nodes = NodeView(api, WATCH)
    with Loops(nodes):
        wait_for(lambda: synced(nodes), "the node list")
        snap = nodes.snapshot()
        assert snap is not None and snap.names == {"n1", "n2", "n3"}
        assert nodes.pod_cidrs("n1") == ("10.244.1.0/24", "fd00:1::/64") and nodes.pod_cidrs("n3") == ()
        assert nodes.pod_cidrs("nope") is None
        fake.delete_node("n2")
        wait_for(lambda: "n2" not in nodes.snapshot().names, "the node deletion")  # type: ignore[union-attr]
        snap = nodes.snapshot()
        assert snap is not None
        since = snap.deleted_for("n2")
        assert since is not None and 0 <= since < 20
        assert snap.deleted_for("n1") is None
        fake.add_node("n2")  # the same name again (a new node object): no longer deleted
        wait_for(lambda: "n2" in nodes.snapshot().names, "the node's return")  # type: ignore[union-attr]
        assert nodes.snapshot().deleted_for("n2") is None  # type: ignore[union-attr]


def test_node_deleted_while_the_watch_was_away_is_seen_by_the_relist(fake: FakeKube, api: KubeApi) -> None:
    fake.add_node("n1")
    fake.add_node("n3")
    nodes = NodeView(api, WATCH)
    nodes.round()
    fake.delete_node("n3")
    fake.compact()   # the DELETED event is gone from the server's history
    nodes.round()    # 410
    nodes.round()    # relist: n3 is missing, so it was deleted
    snap = nodes.snapshot()
    assert snap is not None and snap.synced and snap.names == {"n1"}
    assert snap.deleted_for("n3") is not None and nodes.expired == 1


def test_own_node_missing_from_the_api_is_unknown(fake: FakeKube, api: KubeApi,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # B21: a wrong node name selects no pods: every attachment would look gone; the view says unknown, logs why
    fake.add_node("n1")
    caplog.set_level(logging.ERROR, logger="ipamd.kube")
    nodes = NodeView(api, WATCH, own_node="ghost")
    pods = PodView(api, "ghost", nodes, WATCH)
    with Loops(nodes, pods):
        wait_for(lambda: synced(pods) and synced(nodes), "both lists")
        own = pods.snapshot().owner("s", "u1")  # type: ignore[union-attr]
        assert own.state is OwnerState.UNKNOWN and "ghost" in own.reason
    assert any("node ghost is not in the Kubernetes API" in r.getMessage() for r in caplog.records)


# -- failures: unknown, never gone; loops never die --------------------------------------------------------------------

def test_unreachable_api_server_is_unknown_never_gone(fake: FakeKube, api: KubeApi) -> None:
    # B21, B53: a pod deleted while the API server cannot be reached is "unknown" until a new list shows it gone
    fake.add_node("n1")
    fake.add_pod("default", "a", "n1", uid="ua")
    nodes = NodeView(api, WATCH)
    pods = PodView(api, "n1", nodes, WATCH)
    with Loops(nodes, pods) as loops:
        wait_for(lambda: synced(pods) and synced(nodes), "the first lists")
        fake.stop()
        fake.delete_pod("default", "a")  # happens while ipamd cannot see it
        wait_for(lambda: not synced(pods), "the view to notice")
        before = loops.errors
        wait_for(lambda: loops.errors >= before + 2, "failed rounds to be retried")
        assert pods.snapshot().owner("s", "ua").state is OwnerState.UNKNOWN  # type: ignore[union-attr]
        assert all(t.is_alive() for t in loops.threads)
        fake.start()
        wait_for(lambda: synced(pods) and synced(nodes), "the views to come back")
        assert pods.snapshot().owner("s", "ua").state is OwnerState.GONE  # type: ignore[union-attr]


def test_black_holed_api_server_is_unknown(fake: FakeKube, api: KubeApi) -> None:
    # B21: accepted connections that never answer: the watch's read timeout (watch timeout + kube timeout) notices
    fake.add_node("n1")
    fake.add_pod("default", "a", "n1", uid="ua")
    pods = PodView(api, "n1", None, WATCH)
    with Loops(pods):
        wait_for(lambda: synced(pods), "the first list")
        fake.hang()
        fake.delete_pod("default", "a")
        wait_for(lambda: not synced(pods), "the read timeout", timeout=30)
        assert pods.snapshot().owner("s", "ua").state is OwnerState.UNKNOWN  # type: ignore[union-attr]
        fake.hang(False)
        wait_for(lambda: synced(pods), "the view to come back", timeout=30)
        assert pods.snapshot().owner("s", "ua").state is OwnerState.GONE  # type: ignore[union-attr]


def test_malformed_objects_and_server_errors_never_end_the_loop(fake: FakeKube, api: KubeApi) -> None:
    # B53: a malformed object or a 500 fails one round; the loop backs off and the view recovers
    fake.add_node("n1")
    fake.add_pod("default", "a", "n1", uid="ua")
    pods = PodView(api, "n1", None, WATCH)
    with Loops(pods) as loops:
        wait_for(lambda: synced(pods), "the first list")
        fake.update_pod("default", "a", lambda o: o["metadata"].pop("uid"))  # a pod without a uid: KubeError
        wait_for(lambda: loops.errors >= 1, "the malformed event to fail a round")
        assert pods.snapshot().owner("s", "ua").state is OwnerState.UNKNOWN  # type: ignore[union-attr]
        fake.fail_next(3, 500)
        fake.update_pod("default", "a", lambda o: o["metadata"].update(uid="ua"))
        wait_for(lambda: synced(pods) and pods.snapshot().owner("s", "ua").state  # type: ignore[union-attr]
                 is OwnerState.ALIVE, "the view to recover")
        assert loops.errors >= 2 and all(t.is_alive() for t in loops.threads)


def test_close_ends_an_open_watch_at_once(fake: FakeKube, api: KubeApi) -> None:
    # daemon stop: a watch the server would keep open for 30 s more ends when the view is closed
    fake.add_node("n1")
    pods = PodView(api, "n1", None, watch_seconds=30)
    done = threading.Event()
    t = threading.Thread(target=lambda: (pods.round(), done.set()), daemon=True)
    t.start()
    wait_for(lambda: fake.watch_count("pods") == 1, "the watch to open")
    started = time.monotonic()
    pods.close()
    assert done.wait(10), "round() still running after close()"
    assert time.monotonic() - started < 10
    assert pods.round() == 0.5 and pods.lists == 1  # a closed view makes no more requests
    assert pods.snapshot().owner("s", "u").state is OwnerState.UNKNOWN  # type: ignore[union-attr]
    t.join(5)


# -- errors are translated at the client's boundary ----------------------------------------------------------------

def test_errors_are_translated(fake: FakeKube, api: KubeApi, tmp_path: Path) -> None:
    fake.add_node("n1")
    for code, kind in ((500, KubeUnavailable), (503, KubeUnavailable), (429, KubeUnavailable),
                       (403, KubeRejected), (404, KubeRejected)):
        fake.fail_next(1, code)
        with pytest.raises(kind) as info:
            api.list("nodes")
        assert "HTTP %d" % code in str(info.value) and info.value.__cause__ is not None
        if isinstance(info.value, KubeRejected):
            assert info.value.status == code
    with pytest.raises(KubeRejected) as rejected:
        api.list("pods", "spec.bogus=1")
    assert rejected.value.status == 400 and "field label not supported" in str(rejected.value)
    bad = KubeApi.connect(write_kubeconfig(str(tmp_path / "bad"), fake.url, "wrong-token"), timeout=2.0)
    with pytest.raises(KubeRejected) as unauthorized:
        bad.list("nodes")
    assert unauthorized.value.status == 401
    bad.close()
    fake.compact()
    with pytest.raises(KubeExpired):
        list(api.watch("nodes", "1", seconds=WATCH))
    fake.stop()
    with pytest.raises(KubeUnavailable) as down:
        api.list("nodes")
    assert "unreachable" in str(down.value) and down.value.cni_code == 11
    with pytest.raises(KubeUnavailable):
        list(api.watch("pods", "5", "spec.nodeName=n1", seconds=WATCH))


def test_list_pages_come_from_one_snapshot(fake: FakeKube, api: KubeApi) -> None:
    for i in range(7):
        fake.add_pod("default", "p%d" % i, "n1", uid="u%d" % i)
    items, rv = api.list("pods", "spec.nodeName=n1", page_size=3)
    assert sorted(i["metadata"]["uid"] for i in items) == ["u%d" % i for i in range(7)]
    assert rv == str(fake.rv)
    pages = fake.requests_of("/api/v1/pods", limit="3")
    assert len(pages) == 3 and "continue" not in pages[0] and all("continue" in p for p in pages[1:])


def test_bad_kubeconfig_and_missing_in_cluster_config(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("{not yaml: [")
    with pytest.raises(KubeConfigError) as info:
        KubeApi.connect(str(broken))
    assert str(broken) in str(info.value) and info.value.__cause__ is not None
    with pytest.raises(KubeConfigError) as incluster:
        KubeApi.connect("", service_account_dir=str(tmp_path), environ={})
    assert "in-cluster" in str(incluster.value)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def test_in_cluster_config_over_tls(tmp_path: Path) -> None:
    # the pod's service account: token and CA files, KUBERNETES_SERVICE_HOST/PORT; the API server on https
    if not os.path.exists("/usr/bin/openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = str(tmp_path / "tls.key"), str(tmp_path / "ca.crt")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    (tmp_path / "token").write_text("sa-token")
    with FakeKube(token="sa-token", tls=(cert, key)) as fake:
        fake.add_node("n1", ("10.244.1.0/24",))
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(fake.port)}
        api = KubeApi.connect("", timeout=2.0, service_account_dir=str(tmp_path), environ=env)
        items, _ = api.list("nodes")
        assert [i["metadata"]["name"] for i in items] == ["n1"]
        api.close()
        # a CA that did not sign the server's certificate: the TLS failure is "unreachable", never a success
        other = tmp_path / "other"
        other.mkdir()
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(other / "k"), "-out",
                 str(other / "ca.crt"), "-days", "1", "-subj", "/CN=other")
        (other / "token").write_text("sa-token")
        wrong = KubeApi.connect("", timeout=2.0, service_account_dir=str(other), environ=env)
        with pytest.raises(KubeUnavailable):
            wrong.list("nodes")
        wrong.close()


def test_unexpected_client_errors_become_kube_errors() -> None:
    # anything else the client raises is translated too (no raw third-party exception leaves ipamd/kube.py)
    from ipamd.kube import _translated

    with pytest.raises(KubeError) as info, _translated("probe"):
        raise RuntimeError("surprise")
    assert "probe" in str(info.value) and isinstance(info.value.__cause__, RuntimeError)
