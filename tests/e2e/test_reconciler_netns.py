"""End to end: the reconciler looks inside namespaces that still exist (issue 8 item 4; docs/namespace-checks.md
"Reconciler", docs/architecture.md "Reconciler").

Real parts only: network namespaces the test creates (``ip netns add``), Debian's ``bridge`` and ``ptp`` plugins
from /usr/lib/cni calling ``ipamd-cni``, a real daemon (root, so it can enter the namespaces) on the session etcd.
Two pods of one network, each in its own namespace; then the first pod's address is deleted from its eth0, or its
eth0 is deleted, inside its namespace, which stays. ``ipamctl gc`` (the Reconcile RPC) twice across the daemon's
1-second grace releases that attachment, its address is handed out again, and the healthy pod next to it is not
touched; ``ipamctl check`` is clean at the end. Fixtures and cleanup (namespaces, bridge, veths): tests/e2e/conftest.py.

These tests judge the daemon's behaviour, so they run with the default plugin only (docs/decisions.md "Which tests
run both plugins").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from harness import daemon_ipamctl as ipamctl
from harness import handle_ids, run_cni

from ipamd.embedded import free_port

pytestmark = [pytest.mark.e2e]

NETWORK = "ipamd-recon"


def conf_for(netenv: Any, kind: str, socket: str) -> dict[str, Any]:
    """A bridge (``isGateway``) or ptp network configuration with ``ipam.routes [{dst: 0.0.0.0/0}]``."""
    if kind == "bridge":
        return netenv.bridge_conf("1.0.0", NETWORK, socket=socket)  # type: ignore[no-any-return]
    return {"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp", "ipMasq": False,
            "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": netenv.subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                     "socket": socket}}


class Pod:
    """One attachment ``eth0`` made by the real main plugin ``kind`` in the namespace at ``netns``."""

    def __init__(self, netenv: Any, kind: str, socket: str, netns: str) -> None:
        self.netenv, self.kind, self.netns = netenv, kind, netns
        self.conf = conf_for(netenv, kind, socket)
        self.cid = netenv.container_id()
        out = netenv.plugin(kind, "ADD", json.dumps(self.conf).encode(), self.cid, netns=netns)
        assert out.rc == 0, out
        self.result = out.json
        (self.address,) = [i["address"] for i in self.result["ips"]]
        self.ip = self.address.split("/")[0]
        self.key = "handles/%s/%s/eth0" % (NETWORK, self.cid)

    @property
    def name(self) -> str:
        return os.path.basename(self.netns)

    def cni(self, command: str) -> Any:
        stdin = json.dumps({**self.conf, "prevResult": self.result}).encode()
        return self.netenv.plugin(self.kind, command, stdin, self.cid, netns=self.netns)


def ip_(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def released_total(port: int, reason: str) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('ipamd_reconcile_released_total{reason="%s"}' % reason):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


BREAKS = {
    # what is deleted inside the namespace -> (the reason ipamctl gc prints, the metrics label)
    "address": ("address {ip} not on eth0 in {netns}", "netns_address"),
    "interface": ("interface eth0 is missing in {netns}", "netns_interface"),
}


@pytest.mark.parametrize("what", list(BREAKS))
@pytest.mark.parametrize("kind", ["bridge", "ptp"])
def test_attachment_gone_inside_a_live_namespace_is_released(netenv, extra_netns, daemons, etcd, prefix, kind,
                                                             what):
    """Issue 8 item 4: "the netns recorded at ADD no longer holds the attachment's address on its interface".
    The namespace itself stays, so only a look inside it (pyroute2 from the daemon's helper) can tell. The first
    ``ipamctl gc`` notes it (waiting for the grace), ``--dry-run`` after the grace says it would be released, the
    second ``ipamctl gc`` releases it with its own reason and metrics label; the healthy pod in the other namespace
    is examined and kept (its CHECK still passes); the address is allocatable again; the runtime's late DEL of the
    released attachment succeeds; ``ipamctl check`` is clean."""
    port = free_port()
    d = daemons("A", extra_args=["--reconcile-interval", "0", "--reconcile-grace", "1",
                                 "--metrics-address", "127.0.0.1:%d" % port])
    broken = Pod(netenv, kind, d.cni_socket, netenv.netns_path)
    healthy = Pod(netenv, kind, d.cni_socket, extra_netns())
    assert handle_ids(d) == {broken.cid, healthy.cid}
    first = ipamctl(d, "gc")  # both healthy: nothing is a candidate
    assert first.returncode == 0 and first.stdout == "", first

    if what == "address":
        ip_("-n", broken.name, "addr", "del", broken.address, "dev", "eth0")
        assert "eth0" in netenv.links() and netenv.addresses() == []
    else:
        ip_("-n", broken.name, "link", "del", "eth0")  # the veth pair goes with it
        assert "eth0" not in netenv.links()
    assert os.path.exists(broken.netns)  # the namespace itself is still there
    reason = BREAKS[what][0].format(ip=broken.ip, netns=broken.netns)

    noted = ipamctl(d, "gc")
    assert noted.returncode == 0, noted
    assert noted.stdout.splitlines() == ["waiting 1 s more: %s: %s" % (broken.key, reason)], noted.stdout
    assert handle_ids(d) == {broken.cid, healthy.cid}
    time.sleep(1.2)
    dry = ipamctl(d, "gc", "--dry-run")
    assert dry.stdout.splitlines() == ["would release %s: %s" % (broken.key, reason)], dry.stdout
    assert handle_ids(d) == {broken.cid, healthy.cid}
    done = ipamctl(d, "gc")
    assert done.returncode == 0 and done.stdout.splitlines() == ["released %s: %s" % (broken.key, reason)], done
    assert "1 released, 0 waiting" in done.stderr
    assert handle_ids(d) == {healthy.cid}
    assert released_total(port, BREAKS[what][1]) == 1
    assert released_total(port, "netns") == 0
    assert "reconciler: released %s/%s/eth0 (%s)" % (NETWORK, broken.cid, reason) in d.log()

    # the healthy pod next to it: kept, and still whole
    again = ipamctl(d, "gc")
    assert again.stdout == "" and handle_ids(d) == {healthy.cid}, again
    out = healthy.cni("CHECK")
    assert (out.rc, out.stdout) == (0, ""), out

    # the released address is free: the next ADD of the network gets it
    reuse = run_cni("ADD", conf_for(netenv, kind, d.cni_socket), socket=d.cni_socket, container_id="reuse")
    assert reuse.ips == [broken.address], reuse
    assert run_cni("DEL", conf_for(netenv, kind, d.cni_socket), socket=d.cni_socket, container_id="reuse").rc == 0

    # the runtime's DEL comes late: the attachment is already released, DEL still succeeds
    late = broken.cni("DEL")
    assert late.rc == 0, late
    assert healthy.cni("DEL").rc == 0
    assert handle_ids(d) == set()
    check = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", d.endpoints,
                            "--etcd-prefix", d.prefix], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL,
                           env={k: v for k, v in os.environ.items() if not k.startswith("IPAMD_")})
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check
    assert etcd.etcdctl("get", "--prefix", prefix + "ips/", "--keys-only").split() == []


def test_a_namespace_that_cannot_be_looked_into_is_not_released(netenv, daemons, tmp_path):
    """Never a release on a failure to look: a path recorded at ADD that exists but is not a network namespace
    (a plain file; the daemon's helper cannot enter it) is "unknown" pass after pass, past the grace; an
    attachment in a real namespace whose address is on its interface stays too; nothing is a candidate."""
    d = daemons("A", extra_args=["--reconcile-interval", "0", "--reconcile-grace", "1"])
    pod = Pod(netenv, "bridge", d.cni_socket, netenv.netns_path)
    plain = tmp_path / "not-a-netns"
    plain.touch()
    conf = conf_for(netenv, "bridge", d.cni_socket)
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="plainfile", netns=str(plain)).rc == 0
    for _ in range(2):
        out = ipamctl(d, "gc")
        assert (out.returncode, out.stdout) == (0, ""), out
        time.sleep(1.1)
    assert handle_ids(d) == {pod.cid, "plainfile"}
    assert run_cni("DEL", conf, socket=d.cni_socket, container_id="plainfile", netns=str(plain)).rc == 0
    assert pod.cni("DEL").rc == 0
