"""The reconciler in Kubernetes mode: a real daemon (``--kubernetes --kubeconfig``) judges its attachments by the pods
of its node, through the real client against the fake API server (tests/fakekube.py). Passes are driven with
``ipamctl gc`` (interval 0), so each step is one observation.

Field cases B20 (web-0 re-created with a new UID: only the old sandbox's address goes) and B21 (a terminating pod
keeps its address; an unreachable API server releases nothing), the repros of docs/field-cases.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from fakekube import FakeKube, write_kubeconfig
from harness import Daemon, cni_config, run_cni, wait_for
from harness import daemon_ipamctl as ipamctl
from harness import handle_ids as handles


def pod_args(name: str, uid: str) -> str:
    return "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=%s" \
        % (name, uid)


def test_reconciler_releases_by_pod_uid_and_keeps_terminating_pods(daemons: Callable[..., Daemon], fake: FakeKube,
                                                                   workdir: str) -> None:
    """B20: s-old (web-0, uid u1) and s-new (web-0, uid u2): only s-old is released. B21: t1's pod is terminating
    with a 60 s grace period: kept, pass after pass, until the runtime's DEL; an attachment without a pod UID is
    never judged by the API."""
    fake.add_node("a")
    fake.add_pod("default", "web-0", "a", uid="u1")
    fake.add_pod("default", "t1", "a", uid="ut")
    kubeconfig = write_kubeconfig(os.path.join(workdir, "kubeconfig"), fake.url, fake.token)
    d = daemons("a", extra_args=["--kubernetes", "--kubeconfig", kubeconfig, "--reconcile-interval", "0",
                                 "--reconcile-grace", "1"])
    conf = cni_config("k8s", subnet="10.57.0.0/24")
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="s-old", args=pod_args("web-0", "u1")).ips \
        == ["10.57.0.2/24"]
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="t1", args=pod_args("t1", "ut")).rc == 0
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="plain").rc == 0  # no pod metadata at all
    fake.delete_pod("default", "web-0")                       # the StatefulSet re-creates web-0 ...
    fake.add_pod("default", "web-0", "a", uid="u2")           # ... with a new UID and a new sandbox
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="s-new", args=pod_args("web-0", "u2")).ips \
        == ["10.57.0.5/24"]
    fake.mark_terminating("default", "t1", grace=60)
    # the daemon's pod view has seen all of it once the dry run names s-old (and only s-old)
    wait_for(lambda: "handles/k8s/s-old/eth0: no pod with uid u1 on node a" in ipamctl(d, "gc", "--dry-run").stdout,
             "the pod view to see web-0's new UID")
    first = ipamctl(d, "gc")
    assert first.returncode == 0 and "waiting" in first.stdout, first
    for name in ("s-new", "t1", "plain"):
        assert name not in first.stdout, first.stdout
    time.sleep(1.2)  # past the 1 s grace period
    done = ipamctl(d, "gc")
    assert "released handles/k8s/s-old/eth0: no pod with uid u1" in done.stdout, done
    assert handles(d) == {"s-new", "t1", "plain"}
    # t1 stays while terminating, however many passes; the runtime's DEL releases it
    time.sleep(1.2)
    again = ipamctl(d, "gc")
    assert "t1" not in again.stdout and handles(d) == {"s-new", "t1", "plain"}, again
    assert run_cni("DEL", conf, socket=d.cni_socket, container_id="t1", args=pod_args("t1", "ut")).rc == 0
    # s-old's address is free again, and the new web-0 keeps its own
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="later").ips == ["10.57.0.2/24"]
    for cid in ("s-new", "plain", "later"):
        assert run_cni("DEL", conf, socket=d.cni_socket, container_id=cid).rc == 0


def test_unreachable_api_server_releases_nothing(daemons: Callable[..., Daemon], fake: FakeKube,
                                                 workdir: str) -> None:
    """B21: pods deleted while the API server cannot be reached are "unknown", never released; once it answers
    again the reconciler sees them gone and, after its grace period, releases them."""
    fake.add_node("a")
    fake.add_pod("default", "p1", "a", uid="up1")
    kubeconfig = write_kubeconfig(os.path.join(workdir, "kubeconfig"), fake.url, fake.token)
    d = daemons("a", extra_args=["--kubernetes", "--kubeconfig", kubeconfig, "--kube-timeout", "1",
                                 "--reconcile-interval", "0", "--reconcile-grace", "1"])
    conf = cni_config("k8s", subnet="10.58.0.0/24")
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="p1", args=pod_args("p1", "up1")).rc == 0
    wait_for(lambda: fake.requests_of("/api/v1/pods", fieldSelector="spec.nodeName=a", watch="true"),
             "the daemon's pod watch")
    fake.stop()
    fake.delete_pod("default", "p1")
    for _ in range(3):
        out = ipamctl(d, "gc")
        assert out.returncode == 0 and "p1" not in out.stdout, out
        time.sleep(0.6)
    assert handles(d) == {"p1"}
    fake.start()
    wait_for(lambda: "handles/k8s/p1/eth0: no pod with uid up1" in ipamctl(d, "gc").stdout,
             "the view to come back and see p1 gone", timeout=60)
    time.sleep(1.2)
    assert "released handles/k8s/p1/eth0" in ipamctl(d, "gc").stdout
    assert handles(d) == set()
