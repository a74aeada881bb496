"""End to end: deep CHECK, ``ipamctl verify`` and continuous health with Debian's real ``bridge`` and ``ptp`` plugins in
a network namespace each test creates (docs/namespace-checks.md).

Each test ADDs through the real main plugin (which calls ``ipamd-cni``, which asks the daemon), then breaks the
attachment the way it breaks in the field and reads the verdict twice: CNI CHECK through the main plugin (its IPAM
CHECK runs first and its error is the one printed) or through ``ipamd-cni`` alone, and ``ipamctl verify -o json``
against the daemon. What is deleted is always inside the test's namespace or the host end of the test's own veth;
probes go only to the attachment's gateway (the bridge, or the host end of the ptp veth). Fixtures and cleanup:
tests/e2e/conftest.py.

These tests judge the daemon's behaviour, so they run with the default plugin only (docs/decisions.md "Which tests
run both plugins").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import CniOutput, run_cni

from ipamd.embedded import free_port

pytestmark = [pytest.mark.e2e]

NETWORK = "ipamd-netns"
KINDS = ["bridge", "ptp"]


def conf_for(netenv: Any, kind: str, socket: str, **ipam: Any) -> dict[str, Any]:
    """A bridge (``isGateway``) or ptp network configuration with ``ipam.routes [{dst: 0.0.0.0/0}]``."""
    if kind == "bridge":
        return netenv.bridge_conf("1.0.0", NETWORK, socket=socket, **ipam)
    ipam_obj = {"type": "ipamd-cni", "ranges": [[{"subnet": netenv.subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                "socket": socket, **ipam}
    return {"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp", "ipMasq": False, "ipam": ipam_obj}


def ip_(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Pod:
    """One attachment made by the real main plugin ``kind`` in the test's namespace."""

    def __init__(self, netenv: Any, kind: str, socket: str) -> None:
        self.netenv, self.kind = netenv, kind
        self.conf = conf_for(netenv, kind, socket)
        self.cid = netenv.container_id()
        add = netenv.plugin(kind, "ADD", json.dumps(self.conf).encode(), self.cid)
        assert add.rc == 0, add
        self.result = add.json
        self.address = "10.99.%d.2/24" % netenv.third_octet
        assert [i["address"] for i in self.result["ips"]] == [self.address]
        self.gateway = netenv.gateway
        # the host end of the pod's veth: bridge lists [bridge, veth, eth0], ptp [veth, eth0]
        (self.host_veth,) = [i["name"] for i in self.result["interfaces"]
                             if not i.get("sandbox") and i["name"] != netenv.bridge]

    def stdin(self) -> bytes:
        return json.dumps({**self.conf, "prevResult": self.result}).encode()

    def check(self) -> CniOutput:
        """CNI CHECK through the main plugin, as a runtime sends it."""
        return self.netenv.plugin(self.kind, "CHECK", self.stdin(), self.cid)

    def ipam_check(self, netns: str | None = None) -> CniOutput:
        """CNI CHECK of ``ipamd-cni`` alone (what the main plugin runs first), with ``CNI_NETNS`` ``netns``."""
        return run_cni("CHECK", self.stdin(), socket=None, container_id=self.cid,
                       netns=netns or self.netenv.netns_path, env={"IPAMD_CNI_SOCKET": self.conf["ipam"]["socket"]})

    def delete(self) -> None:
        out = self.netenv.plugin(self.kind, "DEL", self.stdin(), self.cid)
        assert out.rc == 0, out


def ipamctl_verify(d: Any, *args: str) -> tuple[int, Any, str]:
    """``ipamctl verify -o json`` against daemon ``d``: (exit status, parsed stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "ipamd.ctl", "--socket", d.grpc_socket, "verify", "-o", "json",
                        "--probe-timeout", "0.5", *args], capture_output=True, text=True, timeout=120)
    return p.returncode, json.loads(p.stdout) if p.stdout else None, p.stderr


def only(report: Any) -> dict[str, Any]:
    (attachment,) = report["attachments"]
    return attachment  # type: ignore[no-any-return]


def reasons(attachment: dict[str, Any]) -> list[str]:
    return [f["reason"] for f in attachment["findings"]]


def assert_check_fails(out: CniOutput, code: int, *words: str) -> None:
    assert out.rc != 0 and out.code == code, out
    for word in words:
        assert word in out.json["msg"], out


# --- a fresh attachment -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_fresh_attachment_passes_check_and_verify(netenv, daemons, kind):
    """docs/namespace-checks.md: right after ADD the interface is up with its address and the default route via the
    gateway: CHECK (main plugin, and ipamd-cni alone) passes, and verify reports it healthy with the gateway
    answering its echo and a resolved neighbour entry; exit 0. Text mode prints one OK line."""
    d = daemons("A")
    pod = Pod(netenv, kind, d.cni_socket)
    out = pod.check()
    assert (out.rc, out.stdout) == (0, ""), out
    alone = pod.ipam_check()
    assert (alone.rc, alone.stdout) == (0, "") and "store only" not in alone.stderr, alone

    rc, report, err = ipamctl_verify(d, "--all")
    assert rc == 0, (report, err)
    att = only(report)
    assert (att["containerID"], att["ifName"], att["netns"], att["ok"]) == (pod.cid, "eth0", netenv.netns_path, True)
    assert att["findings"] == [] and att["netnsExists"] and att["interface"] == "up"
    assert pod.address in att["addresses"]
    assert "0.0.0.0/0 via %s" % pod.gateway in att["routes"]
    assert att["expectedRoutes"] == ["0.0.0.0/0 via %s" % pod.gateway]
    (probe,) = att["gateways"]
    assert (probe["gateway"], probe["sent"], probe["received"], probe["error"]) == (pod.gateway, 1, 1, "")
    assert probe["neighbour"] in ("REACHABLE", "STALE", "DELAY", "PROBE") and probe["rttSeconds"] > 0
    assert report["failing"] == 0 and "1 attachment(s) verified, 0 failing" in err

    text = subprocess.run([sys.executable, "-m", "ipamd.ctl", "verify", "--socket", d.grpc_socket, "--container",
                           pod.cid], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    (line,) = text.stdout.splitlines()
    assert line.startswith("OK\t%s/%s/eth0\tnetns=%s\t" % (NETWORK, pod.cid, netenv.netns_path)), line
    assert "gateway %s echo 1/1" % pod.gateway in line
    pod.delete()


def test_verify_selects_this_nodes_attachments(netenv, daemons):
    """ipamctl verify --network / --container pick attachments; a container with none on this node is exit 1;
    an attachment allocated through another node's daemon is not this node's to look into."""
    a, b = daemons("A"), daemons("B")
    pod = Pod(netenv, "bridge", a.cni_socket)
    assert ipamctl_verify(a, "--network", NETWORK)[0] == 0
    rc, report, err = ipamctl_verify(a, "--network", "othernet")
    assert (rc, report["attachments"]) == (0, []), err
    rc, report, err = ipamctl_verify(a, "--container", "nosuchcontainer")
    assert rc == 1 and report["attachments"] == [] and "has no attachment on node A" in err
    rc, report, err = ipamctl_verify(b, "--all")
    assert (rc, report["node"], report["attachments"]) == (0, "B", []), err
    no_filter = subprocess.run([sys.executable, "-m", "ipamd.ctl", "verify", "--socket", a.grpc_socket],
                               capture_output=True, text=True, timeout=60)
    assert no_filter.returncode == 2 and "--all" in no_filter.stderr
    pod.delete()


def helpers_of(pid: int) -> list[int]:
    """PIDs of the namespace helper processes (ipamd/nshelper.py) whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"nshelper.py" in cmdline:
            out.append(int(entry.name))
    return out


def test_the_namespace_helper_is_one_process_and_ends_with_the_daemon(netenv, daemons):
    """docs/namespace-checks.md "How the daemon looks": the sockets come from one helper process the daemon starts on
    first use and reuses; when the daemon stops, the helper is gone too."""
    d = daemons("A")
    pod = Pod(netenv, "bridge", d.cni_socket)
    assert d.proc is not None and helpers_of(d.proc.pid) == []
    assert ipamctl_verify(d, "--all")[0] == 0
    assert (pod.check().rc, ipamctl_verify(d, "--all")[0]) == (0, 0)
    (helper,) = helpers_of(d.proc.pid)
    pod.delete()
    assert d.stop() == 0
    assert not Path("/proc/%d" % helper).exists()


# --- broken inside the namespace ----------------------------------------------------------------------------------

BREAKS = {
    # what is deleted -> (CHECK code, words of its message, verify's first reason)
    "default-route": (113, ["route 0.0.0.0/0 via", "missing"], "route_missing"),
    "address": (112, ["address", "missing on eth0"], "address_mismatch"),
    "interface": (110, ["interface eth0 is missing"], "interface_missing"),
}


def break_pod(pod: Pod, what: str) -> None:
    ns = pod.netenv.netns
    if what == "default-route":
        ip_("-n", ns, "route", "del", "default")
    elif what == "address":
        ip_("-n", ns, "addr", "del", pod.address, "dev", "eth0")
    else:
        ip_("-n", ns, "link", "del", "eth0")   # the veth pair goes with it


@pytest.mark.parametrize("what", list(BREAKS))
@pytest.mark.parametrize("kind", KINDS)
def test_broken_inside_the_namespace(netenv, daemons, etcd, prefix, kind, what):
    """The issue's cases: deleting the default route, the address or the interface inside the namespace makes CHECK
    fail with the documented code (docs/errors.md 113, 112, 110; through the main plugin, whose IPAM CHECK runs
    first) and verify report it (exit 1). Nothing is released: the handle is still in etcd."""
    d = daemons("A")
    pod = Pod(netenv, kind, d.cni_socket)
    break_pod(pod, what)
    code, words, reason = BREAKS[what]
    assert_check_fails(pod.check(), code, *words)
    assert_check_fails(pod.ipam_check(), code, *words)

    rc, report, err = ipamctl_verify(d, "--all")
    att = only(report)
    assert rc == 1 and not att["ok"] and report["failing"] == 1, (report, err)
    assert reasons(att)[0] == reason, att
    assert att["findings"][0]["code"] == code
    if what == "address":   # deleting the last address flushes the routes through the interface too
        assert reasons(att)[:2] == ["address_mismatch", "route_missing"] and pod.address not in att["addresses"]
    if what == "interface":
        assert att["interface"] == "" and reasons(att) == ["interface_missing"]
    assert etcd.etcdctl("get", "--prefix", prefix + "handles/", "--keys-only").split() \
        == [prefix + "handles/%s/%s/eth0" % (NETWORK, pod.cid)]
    pod.delete()


# --- the host side ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_host_side_of_the_veth_down_or_deleted(netenv, daemons, kind):
    """The host end of the pod's veth goes down: the pod's eth0 stays (administratively up) but loses its carrier,
    so CHECK fails with 111 and verify reports the interface down and the gateway unreachable (its echo goes
    nowhere). Deleting the host end deletes the pair (the kernel removes both ends of a veth), so verify then
    reports the interface missing and CHECK 110."""
    d = daemons("A")
    pod = Pod(netenv, kind, d.cni_socket)
    ip_("link", "set", pod.host_veth, "down")
    assert_check_fails(pod.ipam_check(), 111, "interface eth0", "no carrier")
    rc, report, err = ipamctl_verify(d, "--all")
    att = only(report)
    assert rc == 1 and att["interface"] == "no-carrier", (att["findings"], err)
    assert reasons(att)[0] == "interface_down" and "gateway_unreachable" in reasons(att), att
    assert att["gateways"][0]["received"] == 0

    ip_("link", "del", pod.host_veth)
    assert_check_fails(pod.ipam_check(), 110, "interface eth0 is missing")
    rc, report, err = ipamctl_verify(d, "--all")
    assert rc == 1 and reasons(only(report)) == ["interface_missing"], (report, err)
    pod.delete()


@pytest.mark.parametrize("kind", KINDS)
def test_gateway_unreachable_while_everything_else_is_in_place(netenv, daemons, kind):
    """The post-creation tests catch what CHECK cannot see: the pod's neighbour entry for the gateway is replaced
    by a link-layer address nobody has (interface, address and routes untouched), so the echo gets no reply:
    CHECK passes, verify reports gateway_unreachable alone (the entry itself is PERMANENT, i.e. resolved).
    The frames go to an unknown MAC on the test's own link and are dropped there."""
    d = daemons("A")
    pod = Pod(netenv, kind, d.cni_socket)
    ip_("-n", netenv.netns, "neigh", "replace", pod.gateway, "lladdr", "02:00:5e:00:53:01", "dev", "eth0",
        "nud", "permanent")
    out = pod.check()
    assert (out.rc, out.stdout) == (0, ""), out
    rc, report, err = ipamctl_verify(d, "--all", "--count", "2")
    att = only(report)
    assert rc == 1 and reasons(att) == ["gateway_unreachable"], (report, err)
    assert att["findings"][0]["code"] == 0
    assert (att["gateways"][0]["sent"], att["gateways"][0]["received"], att["gateways"][0]["neighbour"]) \
        == (2, 0, "PERMANENT")
    pod.delete()


# --- the namespace is gone ----------------------------------------------------------------------------------------

def test_deleted_namespace_is_reported_not_crashed_on(netenv, daemons):
    """The namespace recorded at ADD is deleted (no DEL came): verify reports netns_missing and exits 1, and the
    daemon goes on serving; CHECK with that CNI_NETNS stays store-only and says so on stderr (exit 0)."""
    d = daemons("A")
    pod = Pod(netenv, "bridge", d.cni_socket)
    ip_("netns", "del", netenv.netns)
    rc, report, err = ipamctl_verify(d, "--all")
    att = only(report)
    assert rc == 1 and not att["netnsExists"] and reasons(att) == ["netns_missing"], (report, err)
    assert netenv.netns_path in att["findings"][0]["message"]
    out = pod.ipam_check()
    assert (out.rc, out.stdout) == (0, ""), out
    assert "CNI_NETNS %s does not exist: CHECK compared the store only" % netenv.netns_path in out.stderr
    assert d.health() == "SERVING" and ipamctl_verify(d, "--all")[0] == 1
    pod.delete()


def test_check_netns_false_keeps_check_store_only(netenv, daemons):
    """``"checkNetns": false`` in the ipam block: CHECK does not look inside (a deleted route is not its
    business), and says nothing about it."""
    d = daemons("A")
    pod = Pod(netenv, "bridge", d.cni_socket)
    pod.conf["ipam"]["checkNetns"] = False
    ip_("-n", netenv.netns, "route", "del", "default")
    out = pod.ipam_check()
    assert (out.rc, out.stdout, out.stderr) == (0, "", ""), out
    pod.delete()


# --- continuous health --------------------------------------------------------------------------------------------

def scrape(port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + "{") and all('%s="%s"' % kv in line for kv in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.1)


def test_continuous_health_reports_transitions_once_and_releases_nothing(netenv, daemons, etcd, prefix):
    """docs/namespace-checks.md "Continuous health": with --health-interval the daemon checks its attachments
    round after round; a deleted default route shows as ipamd_attachments_unhealthy{reason="route_missing"} 1
    and one WARNING line however many rounds see it; putting the route back brings the gauge to 0 and one INFO
    line. The attachment is never released."""
    port = free_port()
    d = daemons("A", extra_args=["--health-interval", "0.2", "--metrics-address", "127.0.0.1:%d" % port])
    pod = Pod(netenv, "bridge", d.cni_socket)
    wait_for(lambda: scrape(port, "ipamd_attachment_checks_total", result="ok") >= 1, "a healthy check")
    assert scrape(port, "ipamd_attachments_unhealthy", reason="route_missing") == 0

    ip_("-n", netenv.netns, "route", "del", "default")
    wait_for(lambda: scrape(port, "ipamd_attachments_unhealthy", reason="route_missing") == 1, "the gauge")
    seen = scrape(port, "ipamd_attachment_checks_total", result="unhealthy")
    wait_for(lambda: scrape(port, "ipamd_attachment_checks_total", result="unhealthy") >= seen + 3, "more rounds")
    ip_("-n", netenv.netns, "route", "add", "default", "via", pod.gateway, "dev", "eth0")
    wait_for(lambda: scrape(port, "ipamd_attachments_unhealthy", reason="route_missing") == 0, "recovery")
    wait_for(lambda: "is healthy again" in Path(d.log_path).read_text(), "the recovery line")

    handle = "%s/%s/eth0" % (NETWORK, pod.cid)
    log = Path(d.log_path).read_text()
    unhealthy = [line for line in log.splitlines() if "attachment %s is unhealthy" % handle in line]
    assert len(unhealthy) == 1 and "WARNING" in unhealthy[0] and "route_missing" in unhealthy[0], log
    assert len([line for line in log.splitlines() if "attachment %s is healthy again" % handle in line]) == 1
    assert etcd.etcdctl("get", "--prefix", prefix + "handles/", "--keys-only").split() == [prefix + "handles/" +
                                                                                         handle]
    pod.delete()
