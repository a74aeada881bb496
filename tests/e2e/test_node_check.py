"""End to end: the node check (issue 10 item 3, docs/namespace-checks.md "Node check") with a real daemon, real etcd
and Debian's real ``bridge`` plugin.

The real host is not changed: each test makes a network namespace that acts as the node (``--node-netns``), with
an "uplink" veth pair holding 10.77.5.10/24 and fd77:5::10/64 and routes 10.78.1.0/24 via 10.77.5.1 and
fd78:1::/64 via fd77:5::1. The bridge plugin runs inside it (``ip netns exec``), so the bridge and its gateway
address land there too, as they would on a node. Deleting the namespace removes all of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness import CniOutput, cni_config, run_cni, wait_for

from ipamd import netns

pytestmark = [pytest.mark.e2e]

CNI_DIR = "/usr/lib/cni"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def node_netns() -> Iterator[str]:
    """A namespace that acts as the node: its own addresses and routes; deleted (with all of it) after the test."""
    name = "ipamdtest-" + uuid.uuid4().hex[:5]
    ip("netns", "add", name)
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1"],
                    ["link", "set", "uplink0", "up"], ["link", "set", "uplink1", "up"],
                    ["addr", "add", "10.77.5.10/24", "dev", "uplink0"],
                    ["addr", "add", "fd77:5::10/64", "dev", "uplink0", "nodad"],
                    ["route", "add", "10.78.1.0/24", "via", "10.77.5.1", "dev", "uplink0"],
                    ["route", "add", "fd78:1::/64", "via", "fd77:5::1", "dev", "uplink0"]):
            ip("-n", name, *cmd)
        yield "/var/run/netns/" + name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


def all_keys(etcd: Any, prefix: str) -> list[str]:
    return [k for k in etcd.etcdctl("get", "--prefix", prefix, "--keys-only").splitlines()
            if k and not k.startswith(prefix + "nodes/")]


@pytest.mark.parametrize("subnet, conflict", [
    ("10.77.5.0/24", "address 10.77.5.10/24 on uplink0"),
    ("10.78.0.0/16", "route 10.78.1.0/24 via 10.77.5.1 dev uplink0"),
    ("fd77:5::/64", "address fd77:5::10/64 on uplink0"),
    ("fd78::/16", "route fd78:1::/64 via fd77:5::1 dev uplink0"),
])
def test_add_into_a_pool_that_overlaps_the_node_is_refused_with_code_7(daemons, etcd, prefix, node_netns, subnet,
                                                                       conflict):
    """Issue 10 item 3: a pool overlapping an address or a route of the node (IPv4, IPv6) → code 7 naming the pool's
    subnet and the node's address or route with its interface; nothing is written to etcd. A pool that overlaps
    nothing works on the same daemon."""
    d = daemons("A", extra_args=["--node-check", "true", "--node-netns", node_netns])
    out = run_cni("ADD", cni_config("nodenet", subnet=subnet), socket=d.cni_socket, container_id="c1")
    assert (out.rc, out.code) == (1, 7), out
    msg = out.json["msg"]
    assert subnet in msg and conflict in msg, msg
    assert all_keys(etcd, prefix) == []

    ok = run_cni("ADD", cni_config("othernet", subnet="10.99.200.0/24"), socket=d.cni_socket, container_id="c2")
    assert ok.rc == 0, ok
    assert ok.ips == ["10.99.200.2/24"]


def test_the_node_check_off_lets_the_same_pool_through_and_start_up_warns(daemons, node_netns):
    """``ipam.checkNode: false`` opts a network out (routed set-ups); the daemon does not look. A daemon started
    later checks the pool records etcd holds and warns about the overlapping one."""
    args = ["--node-check", "true", "--node-netns", node_netns]
    d = daemons("A", extra_args=args)
    out = run_cni("ADD", cni_config("nodenet", subnet="10.77.5.0/24", checkNode=False), socket=d.cni_socket)
    assert out.rc == 0, out
    d.stop()
    d = daemons("A", extra_args=args)
    wait_for(lambda: "ADD into it will be refused" in d.log(), "the start-up warning")
    assert "ipam subnet 10.77.5.0/24 of network nodenet overlaps the node's address 10.77.5.10/24 on uplink0" \
        in d.log()


def test_a_failure_to_look_allows_the_add_with_a_warning(daemons):
    """Never fail ADD for a failure to look: a --node-netns that does not exist is a look that fails; the pool is
    allowed and the daemon logs why."""
    d = daemons("A", extra_args=["--node-check", "true", "--node-netns", "/var/run/netns/ipamdtest-none"])
    out = run_cni("ADD", cni_config("nodenet", subnet="10.99.201.0/24"), socket=d.cni_socket)
    assert out.rc == 0, out
    wait_for(lambda: "cannot read node A's addresses and routes" in d.log(), "the warning")


def test_observe_node_reads_the_own_namespace_without_the_helper():
    """The daemon's default (no --node-netns): its own namespace, the host's; loopback is always there."""
    state = netns.observe_node()
    assert any(str(a) == "address 127.0.0.1/8 on lo" for a in state.addresses)


def bridge(netenv: Any, node_netns: str, command: str, conf: dict[str, Any], container_id: str,
           pod_netns: str) -> CniOutput:
    """The real bridge plugin run inside the node's namespace, as a runtime on that node would run it."""
    env = netenv.env(command, container_id, netns=pod_netns)
    p = subprocess.run(["ip", "netns", "exec", os.path.basename(node_netns), os.path.join(CNI_DIR, "bridge")],
                       input=json.dumps(conf).encode(), capture_output=True, timeout=60, env=env)
    return CniOutput(p.returncode, p.stdout.decode(), p.stderr.decode())


def test_the_bridge_gateway_of_the_pool_does_not_trip_it_on_repeated_adds(daemons, netenv, extra_netns, node_netns):
    """The real bridge plugin puts the pool's gateway (10.99.N.1/24) on its bridge in the node's namespace, and the
    kernel its connected route: both are the pool's own, so the next ADDs pass, also after the daemon restarts
    (a fresh look, and the start-up check of the pool's record)."""
    d = daemons("A", extra_args=["--node-check", "true", "--node-netns", node_netns])
    conf = netenv.bridge_conf("1.0.0", "nodebr", socket=d.cni_socket)
    first = bridge(netenv, node_netns, "ADD", conf, netenv.container_id(), netenv.netns_path)
    assert first.rc == 0, first
    shown = json.loads(ip("-n", os.path.basename(node_netns), "-j", "addr", "show", "dev", netenv.bridge))
    assert "%s/24" % netenv.gateway in ["%s/%d" % (a["local"], a["prefixlen"]) for a in shown[0]["addr_info"]]

    d.stop()
    d = daemons("A", extra_args=["--node-check", "true", "--node-netns", node_netns])
    conf = netenv.bridge_conf("1.0.0", "nodebr", socket=d.cni_socket)
    for _ in range(2):
        again = bridge(netenv, node_netns, "ADD", conf, netenv.container_id(), extra_netns())
        assert again.rc == 0, again
    assert "overlaps the node" not in d.log()
