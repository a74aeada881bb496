"""The namespace checks against a real daemon and etcd, in the cases that need no namespace (docs/namespace-checks.md):
pre-flight validation refuses a configuration before anything is written, CHECK with a ``CNI_NETNS`` that does not
exist stays store-only and says so, and ``ipamctl verify`` reports an attachment whose namespace is gone. The cases
with real namespaces and the real bridge and ptp plugins are in tests/e2e/test_netns_check.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import cni_config, run_cni


def keys(etcd, prefix: str) -> list[str]:
    return etcd.etcdctl("get", "--prefix", prefix, "--keys-only").split()


@pytest.mark.parametrize("ipam, field", [
    ({"routes": [{"dst": "0.0.0.0/0", "gw": "192.168.7.1"}]}, "ipam.routes[0].gw"),
    ({"routes": [{"dst": "10.9.0.5/16"}]}, "ipam.routes[0].dst"),
    ({"ranges": [[{"subnet": "10.77.0.0/24", "gateway": "10.77.0.255"}]]}, "ipam.ranges[0][0] gateway"),
    ({"checkNetns": "yes"}, "ipam.checkNetns"),
])
def test_preflight_refuses_before_anything_is_written(daemons, etcd, prefix, ipam, field):
    """Code 7 naming the field, and not one key under the test's prefix but the node's liveness record: no pool
    record, no block claim, no address, no handle."""
    d = daemons("A")
    conf = cni_config("pre", subnet="10.77.0.0/24")
    conf["ipam"].update(ipam)
    out = run_cni("ADD", conf, socket=d.cni_socket)
    assert out.rc != 0 and out.code == 7, out
    assert field in out.json["msg"], out
    assert keys(etcd, prefix) == [prefix + "nodes/A"]


def test_check_with_a_netns_that_does_not_exist_is_store_only_and_says_so(daemons):
    """docs/cni-contract.md §2.3: the conformance cases' CNI_NETNS (/var/run/netns/none) does not exist, so CHECK
    compares the store only, exit 0, and a line on stderr says so; a mismatch with the store is still 103."""
    d = daemons("A")
    conf = cni_config("chk", subnet="10.78.0.0/24")
    add = run_cni("ADD", conf, socket=d.cni_socket)
    assert add.rc == 0, add
    out = run_cni("CHECK", {**conf, "prevResult": add.json}, socket=d.cni_socket)
    assert (out.rc, out.stdout) == (0, ""), out
    assert "ipamd: CNI_NETNS /var/run/netns/none does not exist: CHECK compared the store only" in out.stderr
    off = run_cni("CHECK", {**conf, "ipam": {**conf["ipam"], "checkNetns": False}, "prevResult": add.json},
                  socket=d.cni_socket)
    assert (off.rc, off.stdout, off.stderr) == (0, "", ""), off
    wrong = {**add.json, "ips": [{"address": "10.78.0.9/24"}]}
    assert run_cni("CHECK", {**conf, "prevResult": wrong}, socket=d.cni_socket).code == 103


def test_verify_reports_a_namespace_that_is_gone(daemons):
    """ipamctl verify on an attachment whose recorded namespace does not exist: netns_missing, exit 1; the daemon
    keeps serving."""
    d = daemons("A")
    conf = cni_config("ver", subnet="10.79.0.0/24")
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="v1", netns="/var/run/netns/ipamd-gone").rc == 0
    p = subprocess.run([sys.executable, "-m", "ipamd.ctl", "verify", "--socket", d.grpc_socket, "--all", "-o",
                        "json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    (att,) = json.loads(p.stdout)["attachments"]
    assert (att["containerID"], att["netnsExists"], att["ok"]) == ("v1", False, False)
    assert att["findings"] == [{"reason": "netns_missing", "code": 0,
                                "message": "network namespace /var/run/netns/ipamd-gone does not exist"}]
    assert att["expectedRoutes"] == [] and att["gateways"] == []
    assert d.health() == "SERVING"


def test_verify_filters_all_is_alone_and_the_empty_match_names_both_filters(daemons):
    """``--all`` with a filter is a usage error (exit 2); ``--network`` and ``--container`` together match both, and
    an empty match says so naming the network (a container that exists in another network is not 'missing')."""
    d = daemons("A")
    assert run_cni("ADD", cni_config("ver", subnet="10.79.0.0/24"), socket=d.cni_socket, container_id="v1",
                   netns="/var/run/netns/ipamd-gone").rc == 0

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ipamd.ctl", "verify", "--socket", d.grpc_socket, *args],
                              capture_output=True, text=True, timeout=60)

    both = verify("--all", "--network", "ver")
    assert both.returncode == 2 and "--all selects every attachment" in both.stderr, both
    elsewhere = verify("--network", "other", "--container", "v1")
    assert elsewhere.returncode == 1 and "container v1 has no attachment on node A in network other" in \
        elsewhere.stderr, elsewhere
    here = verify("--network", "ver", "--container", "v1")
    assert here.returncode == 1 and "netns_missing" in here.stdout, here  # found, and its namespace is gone
