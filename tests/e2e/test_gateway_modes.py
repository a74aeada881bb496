"""End to end: the three gateway modes (``ipam.gatewayMode``; docs/configuration.md "Gateway modes") through
Debian's real main plugins calling ``ipamd-cni``: ``subnet`` and ``block`` with ``bridge``, ``pointToPoint`` with
``ptp``, in a network namespace each test creates (fixtures and cleanup: tests/e2e/conftest.py).

Each test reads the address and routes inside the namespace with ``ip -n NS -j``, sends an ICMP echo from the
namespace to the gateway (raw socket inside the namespace: no ``ping`` binary is needed), runs CNI CHECK through
the main plugin (exit 0), DELs, and runs ``ipamctl check`` (exit 0, no records left). What ``ptp`` changes on the
node that the fixtures do not restore (IPv6 forwarding) is put back by the test.

These tests judge the daemon's behaviour, so they run with the default plugin only (docs/decisions.md "Which tests
run both plugins").
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e]

NETWORK = "ipamd-gwmode"
IP6_FORWARD = "/proc/sys/net/ipv6/conf/all/forwarding"

#: Runs inside the namespace (``ip netns exec``): one ICMP/ICMPv6 echo to argv[1] out of interface argv[2];
#: exit 0 on the matching reply within 3 s, 1 otherwise. The kernel fills in the ICMPv6 checksum; IPv4's is ours.
PING = r"""
import os, socket, struct, sys, time
dst, ifname = sys.argv[1], sys.argv[2]
v6 = ":" in dst
fam, proto, req, rep = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6
                        else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0))
s = socket.socket(fam, socket.SOCK_RAW, proto)
s.setsockopt(socket.SOL_SOCKET, 25, ifname.encode())
ident = os.getpid() & 0xffff
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xffff)
    return ~(t + (t >> 16)) & 0xffff
body = struct.pack("!BBHHH", req, 0, 0, ident, 1) + b"ipamd"
if not v6:
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
s.sendto(body, (dst, 0, 0, socket.if_nametoindex(ifname)) if v6 else (dst, 0))
end = time.monotonic() + 3
while time.monotonic() < end:
    s.settimeout(max(end - time.monotonic(), 0.01))
    try:
        data, src = s.recvfrom(2048)
    except socket.timeout:
        break
    icmp = data if v6 else data[(data[0] & 15) * 4:]
    if src[0].split("%")[0] == dst and icmp[0] == rep and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


def ping(netns: str, address: str, if_name: str = "eth0", attempts: int = 3) -> bool:
    """An ICMP echo from ``if_name`` in ``netns`` to ``address`` is answered (a few tries: the node's end of a new
    link may still be settling)."""
    for _ in range(attempts):
        p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-I", "-c", PING, address, if_name],
                           capture_output=True, text=True, timeout=30)
        if p.returncode == 0:
            return True
    return False


def ip_json(*args: str) -> Any:
    p = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True, timeout=30)
    return json.loads(p.stdout or "[]")


def ns_addresses(netns: str, family: str, if_name: str = "eth0") -> list[str]:
    """Global addresses of ``family`` (``inet``/``inet6``) on ``if_name`` in ``netns``, as ``address/len``."""
    return ["%s/%d" % (a["local"], a["prefixlen"]) for link in ip_json("-n", netns, "addr", "show")
            if link.get("ifname") == if_name for a in link.get("addr_info", [])
            if a.get("family") == family and a.get("scope") == "global"]


def ns_routes(netns: str, v6: bool = False) -> list[tuple[str, str | None, str | None]]:
    """``(dst, gateway, dev)`` of the namespace's main-table routes."""
    return [(r["dst"], r.get("gateway"), r.get("dev"))
            for r in ip_json(*(["-6"] if v6 else []), "-n", netns, "route", "show")]


def ipamctl_check(d: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", d.endpoints,
                           "--etcd-prefix", d.prefix], capture_output=True, text=True, timeout=60)


def assert_verified(d: Any, cid: str, gateways: list[str]) -> None:
    """``ipamctl verify`` (the daemon's own look into the namespace, with an echo to each gateway and its ARP/NDP
    entry) finds the attachment healthy and every gateway answering."""
    p = subprocess.run([sys.executable, "-m", "ipamd.ctl", "--socket", d.grpc_socket, "verify", "-o", "json",
                        "--probe-timeout", "1", "--container", cid], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    (attachment,) = json.loads(p.stdout)["attachments"]
    assert attachment["findings"] == [], attachment
    assert [(g["gateway"], g["received"] > 0) for g in attachment["gateways"]] == [(gw, True) for gw in gateways]


def keys(etcd: Any, prefix: str, kind: str) -> list[str]:
    out = etcd.etcdctl("get", "--prefix", prefix + kind + "/", "--keys-only")
    return [line for line in out.splitlines() if line]


def with_prev(conf: dict[str, Any], result: Any) -> bytes:
    return json.dumps({**conf, "prevResult": result}).encode()


def add_check_del(netenv: Any, d: Any, etcd: Any, prefix: str, kind: str, conf: dict[str, Any],
                  check_inside: Any) -> dict[str, Any]:
    """ADD through ``kind``; ``check_inside(result)`` asserts on the namespace; CHECK passes; DEL releases and
    ``ipamctl check`` is clean. Returns the ADD result."""
    cid = netenv.container_id()
    add = netenv.plugin(kind, "ADD", json.dumps(conf).encode(), cid)
    assert add.rc == 0, add
    check_inside(add.json)
    check = netenv.plugin(kind, "CHECK", with_prev(conf, add.json), cid)
    assert (check.rc, check.stdout) == (0, ""), check
    assert_verified(d, cid, [ip["gateway"] for ip in add.json["ips"]])
    ok = ipamctl_check(d)
    assert ok.returncode == 0 and "OK: all invariants hold" in ok.stdout, ok.stdout + ok.stderr
    rm = netenv.plugin(kind, "DEL", with_prev(conf, add.json), cid)
    assert (rm.rc, rm.stdout) == (0, ""), rm
    assert "eth0" not in [link["ifname"] for link in ip_json("-n", netenv.netns, "link", "show")]
    assert keys(etcd, prefix, "handles") == [] and keys(etcd, prefix, "ips") == []
    clean = ipamctl_check(d)
    assert clean.returncode == 0 and "OK: all invariants hold" in clean.stdout, clean.stdout + clean.stderr
    return add.json  # type: ignore[no-any-return]


@pytest.fixture
def ipv6_forwarding() -> Iterator[None]:
    """``ptp`` turns on IPv6 forwarding on the node; put back what it was."""
    before = Path(IP6_FORWARD).read_text()
    try:
        yield
    finally:
        Path(IP6_FORWARD).write_text(before)


def bridge_conf(netenv: Any, socket: str, **ipam: Any) -> dict[str, Any]:
    """A bridge (``isGateway``, ``ipMasq``: its iptables rules are removed by DEL, and by the fixture if not)."""
    conf = netenv.bridge_conf("1.0.0", NETWORK, socket=socket, **ipam)
    conf["ipMasq"] = True
    return conf  # type: ignore[no-any-return]


def test_subnet_mode_with_bridge(netenv, daemons, etcd, prefix):
    """gatewayMode subnet (the default, host-local's shape): the pod carries the subnet's prefix, the pool's one
    gateway is on the bridge; echo to it, CHECK, DEL, ipamctl check clean."""
    d = daemons("A")
    conf = bridge_conf(netenv, d.cni_socket, gatewayMode="subnet")
    n = netenv.third_octet

    def inside(result: dict[str, Any]) -> None:
        assert [(i["address"], i["gateway"]) for i in result["ips"]] == [("10.99.%d.2/24" % n, "10.99.%d.1" % n)]
        assert ns_addresses(netenv.netns, "inet") == ["10.99.%d.2/24" % n]
        routes = ns_routes(netenv.netns)
        assert ("default", "10.99.%d.1" % n, "eth0") in routes, routes
        assert ("10.99.%d.0/24" % n, None, "eth0") in routes, routes
        bridge = [a for link in ip_json("addr", "show", "dev", netenv.bridge) for a in link.get("addr_info", [])
                  if a.get("family") == "inet"]
        assert ["%s/%d" % (a["local"], a["prefixlen"]) for a in bridge] == ["10.99.%d.1/24" % n]
        assert ping(netenv.netns, "10.99.%d.1" % n)

    add_check_del(netenv, d, etcd, prefix, "bridge", conf, inside)


def test_block_mode_with_bridge(netenv, daemons, etcd, prefix):
    """gatewayMode block: the node's block 10.99.N.64/26 (rangeStart puts the first claim there) has its first
    usable address .65 as gateway; the pod gets .66/26 (never .64 or .65), bridge with isGateway puts .65/26 on
    the bridge; echo to it, CHECK, DEL, ipamctl check clean (invariant 2 knows .65 is not allocatable)."""
    d = daemons("A")
    n = netenv.third_octet
    conf = bridge_conf(netenv, d.cni_socket, gatewayMode="block", blockSize=26,
                       ranges=[[{"subnet": netenv.subnet, "rangeStart": "10.99.%d.64" % n}]])
    gateway = "10.99.%d.65" % n

    def inside(result: dict[str, Any]) -> None:
        assert [(i["address"], i["gateway"]) for i in result["ips"]] == [("10.99.%d.66/26" % n, gateway)]
        assert ns_addresses(netenv.netns, "inet") == ["10.99.%d.66/26" % n]
        routes = ns_routes(netenv.netns)
        assert ("default", gateway, "eth0") in routes, routes
        assert ("10.99.%d.64/26" % n, None, "eth0") in routes, routes
        bridge = [a for link in ip_json("addr", "show", "dev", netenv.bridge) for a in link.get("addr_info", [])
                  if a.get("family") == "inet"]
        assert ["%s/%d" % (a["local"], a["prefixlen"]) for a in bridge] == [gateway + "/26"]
        assert ping(netenv.netns, gateway)
        pool = etcd.etcdctl("get", "--prefix", prefix + "pools/", "--print-value-only")
        assert '"gatewayMode":"block"' in pool and '"gateway":null' in pool, pool

    add_check_del(netenv, d, etcd, prefix, "bridge", conf, inside)


def test_point_to_point_mode_with_ptp_ipv6(netenv, daemons, etcd, prefix, ipv6_forwarding):
    """gatewayMode pointToPoint, IPv6, through ptp: the pod gets a /128 (the subnet's first address after the
    network address: nothing is reserved for a gateway), gateway fe80::1, and the default route via fe80::1 that
    the mode adds when the configuration has no routes; ptp puts fe80::1 on the node's end of the veth. Echo to
    fe80::1 from the pod, CHECK (deep: address and routes in the namespace), DEL, ipamctl check clean. DAD is off
    in the test's namespace (the node's is untouched)."""
    subprocess.run(["ip", "netns", "exec", netenv.netns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0"], check=True, timeout=30)
    d = daemons("A")
    subnet = "fd99:%x::/120" % netenv.third_octet
    pod = "fd99:%x::1" % netenv.third_octet
    conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp", "ipMasq": False,
            "ipam": {"type": "ipamd-cni", "socket": d.cni_socket, "gatewayMode": "pointToPoint",
                     "ranges": [[{"subnet": subnet}]]}}

    def inside(result: dict[str, Any]) -> None:
        assert [(i["address"], i["gateway"]) for i in result["ips"]] == [(pod + "/128", "fe80::1")]
        assert result["routes"] == [{"dst": "::/0", "gw": "fe80::1"}]
        assert ns_addresses(netenv.netns, "inet6") == [pod + "/128"]
        routes = ns_routes(netenv.netns, v6=True)
        assert ("default", "fe80::1", "eth0") in routes, routes
        assert ("fe80::1", None, "eth0") in routes, routes
        (veth,) = [i["name"] for i in result["interfaces"] if not i.get("sandbox")]
        host = [a["local"] for link in ip_json("addr", "show", "dev", veth) for a in link.get("addr_info", [])]
        assert "fe80::1" in host, host
        assert ping(netenv.netns, "fe80::1")

    add_check_del(netenv, d, etcd, prefix, "ptp", conf, inside)


@pytest.mark.parametrize("routes", ["default", "none"])
def test_point_to_point_mode_with_ptp_ipv4_is_refused_by_ptp_1_1_1(netenv, daemons, etcd, prefix, ipv6_forwarding,
                                                                    routes):
    """gatewayMode pointToPoint, IPv4, through Debian's ptp 1.1.1, which cannot configure an IPv4 /32 with a
    link-local gateway (docs/decisions.md "Gateway modes"): with the mode's default route it adds the result's
    routes before its own on-link route to the gateway ("failed to add route ... via 169.254.1.1 ...: network is
    unreachable"); with ``"routes": []`` it then deletes the kernel's prefix route of the address, which a /32 does
    not have ("failed to delete route ... 10.99.N.1/32 ...: no such process"). Pinned, so a newer ptp that fixes
    this shows up: ADD fails with that error, ptp's own rollback (IPAM DEL) releases the address, nothing is left
    in etcd or in the namespace, and ipamctl check is clean. The IPv4 shape itself is proven in the namespace by
    test_point_to_point_mode_ipv4_in_a_routed_namespace."""
    d = daemons("A")
    ipam: dict[str, Any] = {"type": "ipamd-cni", "socket": d.cni_socket, "gatewayMode": "pointToPoint",
                            "ranges": [[{"subnet": netenv.subnet}]]}
    if routes == "none":
        ipam["routes"] = []
    conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp", "ipMasq": False, "ipam": ipam}
    cid = netenv.container_id()
    add = netenv.plugin("ptp", "ADD", json.dumps(conf).encode(), cid)
    assert add.rc != 0, add
    msg = add.json["msg"]
    if routes == "default":
        assert "failed to add route" in msg and "via 169.254.1.1" in msg and "unreachable" in msg, add
    else:
        assert "failed to delete route" in msg and "10.99.%d.1/32" % netenv.third_octet in msg, add
    assert keys(etcd, prefix, "handles") == [] and keys(etcd, prefix, "ips") == []
    # ptp 1.1.1 leaves its veth pair behind after a failed ADD; the DEL a runtime sends after a failed ADD
    # (CNI spec) removes it, and releasing again is a no-op for ipamd
    rm = netenv.plugin("ptp", "DEL", json.dumps(conf).encode(), cid)
    assert (rm.rc, rm.stdout) == (0, ""), rm
    assert "eth0" not in [link["ifname"] for link in ip_json("-n", netenv.netns, "link", "show")]
    clean = ipamctl_check(d)
    assert clean.returncode == 0 and "OK: all invariants hold" in clean.stdout, clean.stdout + clean.stderr


def test_point_to_point_mode_ipv4_in_a_routed_namespace(netenv, daemons, etcd, prefix):
    """gatewayMode pointToPoint, IPv4, the namespace wired from ipamd's result the way a routed plugin (Calico's)
    wires it, since Debian's ptp cannot (test above): ipamd-cni ADD answers 10.99.N.1/32 (no address reserved
    for a gateway), gateway 169.254.1.1 and a default route via it; the test puts the /32 on the pod's end of a
    veth, 169.254.1.1/32 on the node's end, an on-link route to the gateway and the default route via it. Echo to
    169.254.1.1, deep CHECK through ipamd-cni (addresses and routes in the namespace) exits 0, a removed default
    route makes it fail (code 113: the check really looks), DEL releases, ipamctl check clean."""
    from harness import run_cni

    d = daemons("A")
    n = netenv.third_octet
    conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "ptp",
            "ipam": {"type": "ipamd-cni", "gatewayMode": "pointToPoint", "ranges": [[{"subnet": netenv.subnet}]]}}
    cid = netenv.container_id()
    add = run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, netns=netenv.netns_path)
    assert add.rc == 0, add
    assert add.json["ips"] == [{"address": "10.99.%d.1/32" % n, "gateway": "169.254.1.1"}]
    assert add.json["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    host = netenv.netns[:10] + "h" + netenv.netns[-4:]  # 15 characters, unique to the test
    for cmd in (["link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", netenv.netns],
                ["addr", "add", "169.254.1.1/32", "dev", host], ["link", "set", host, "up"],
                ["route", "add", "10.99.%d.1/32" % n, "dev", host],
                ["-n", netenv.netns, "addr", "add", "10.99.%d.1/32" % n, "dev", "eth0"],
                ["-n", netenv.netns, "link", "set", "eth0", "up"],
                ["-n", netenv.netns, "route", "add", "169.254.1.1/32", "dev", "eth0", "scope", "link"],
                ["-n", netenv.netns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]):
        subprocess.run(["ip", *cmd], check=True, capture_output=True, timeout=30)
    try:
        assert ns_addresses(netenv.netns, "inet") == ["10.99.%d.1/32" % n]
        assert ("default", "169.254.1.1", "eth0") in ns_routes(netenv.netns)
        assert ping(netenv.netns, "169.254.1.1")
        stdin = with_prev(conf, add.json)
        check = run_cni("CHECK", conf, stdin=stdin, socket=d.cni_socket, container_id=cid, netns=netenv.netns_path)
        assert (check.rc, check.stdout) == (0, ""), check
        assert_verified(d, cid, ["169.254.1.1"])
        subprocess.run(["ip", "-n", netenv.netns, "route", "del", "default"], check=True, timeout=30)
        broken = run_cni("CHECK", conf, stdin=stdin, socket=d.cni_socket, container_id=cid,
                         netns=netenv.netns_path)
        assert broken.rc != 0 and broken.code == 113 and "169.254.1.1" in broken.json["msg"], broken
    finally:
        subprocess.run(["ip", "link", "del", host], capture_output=True, timeout=30)
    rm = run_cni("DEL", conf, socket=d.cni_socket, container_id=cid, netns=netenv.netns_path)
    assert (rm.rc, rm.stdout) == (0, ""), rm
    assert keys(etcd, prefix, "handles") == [] and keys(etcd, prefix, "ips") == []
    clean = ipamctl_check(d)
    assert clean.returncode == 0 and "OK: all invariants hold" in clean.stdout, clean.stdout + clean.stderr



def test_block_mode_blocksize_changed_in_the_configuration_keeps_the_node_check_passing(netenv, daemons, etcd,
                                                                                         prefix, extra_netns):
    """The block size in force is the pool record's (docs/configuration.md "Gateway modes"): a network in block mode
    with blockSize 28 puts 10.99.N.1/28 on the bridge; its configuration then says blockSize 26. The next ADD
    through the bridge (a second namespace) gets 10.99.N.3/28 via .1 (the record's /28), and the node
    check accepts the bridge's .1/28 as the pool's own (it judged by the configuration's /26 and refused every ADD
    with 7). CHECK passes for both; DEL; ipamctl check clean."""
    d = daemons("A", extra_args=["--node-check", "true"])
    n = netenv.third_octet
    first = bridge_conf(netenv, d.cni_socket, gatewayMode="block", blockSize=28)
    cid = netenv.container_id()
    add1 = netenv.plugin("bridge", "ADD", json.dumps(first).encode(), cid)
    assert add1.rc == 0, add1
    assert [(i["address"], i["gateway"]) for i in add1.json["ips"]] == [("10.99.%d.2/28" % n, "10.99.%d.1" % n)]
    resized = bridge_conf(netenv, d.cni_socket, gatewayMode="block", blockSize=26)
    cid2, ns2 = netenv.container_id(), extra_netns()
    add2 = netenv.plugin("bridge", "ADD", json.dumps(resized).encode(), cid2, netns=ns2)
    assert add2.rc == 0, add2
    assert [(i["address"], i["gateway"]) for i in add2.json["ips"]] == [("10.99.%d.3/28" % n, "10.99.%d.1" % n)]
    bridge = [a for link in ip_json("addr", "show", "dev", netenv.bridge) for a in link.get("addr_info", [])
              if a.get("family") == "inet"]
    assert ["%s/%d" % (a["local"], a["prefixlen"]) for a in bridge] == ["10.99.%d.1/28" % n]
    runs = ((first, add1, cid, None), (resized, add2, cid2, ns2))
    for conf, add, c, ns in runs:
        check = netenv.plugin("bridge", "CHECK", with_prev(conf, add.json), c, netns=ns)
        assert (check.rc, check.stdout) == (0, ""), check
    for conf, add, c, ns in runs:
        rm = netenv.plugin("bridge", "DEL", with_prev(conf, add.json), c, netns=ns)
        assert (rm.rc, rm.stdout) == (0, ""), rm
    assert keys(etcd, prefix, "handles") == [] and keys(etcd, prefix, "ips") == []
    clean = ipamctl_check(d)
    assert clean.returncode == 0 and "OK: all invariants hold" in clean.stdout, clean.stdout + clean.stderr
