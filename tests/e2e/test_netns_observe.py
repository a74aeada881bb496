"""The contract of ``ipamd.netns.observe`` (docs/namespace-checks.md), on namespaces the test builds by hand: a "pod"
namespace and a "gateway" namespace joined by a veth pair, both created here and deleted after (so every probe
stays between two namespaces of the test). The reconciler, deep CHECK, verify and the health loop all read
namespaces through this one function.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipamd import netns
from ipamd.domain.netcheck import Nexthop, Prefix
from ipamd.nshelper import NamespaceSocketError

pytestmark = [pytest.mark.e2e]


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


pfx = Prefix.parse


def run(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Pair:
    """``pod`` and ``gw`` namespaces; ``eth0`` in pod (10.250.N.2/24, fd00:N::2/64) peered with ``gwside`` in gw
    (10.250.N.1/24, fd00:N::1/64); default routes via .1 / ::1, a multipath route and one in table 100."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.pod, self.gw = "ipamdtest-p" + tag, "ipamdtest-g" + tag
        self.path = "/var/run/netns/" + self.pod
        self.n = int(tag[:2], 16)

    def setup(self) -> Pair:
        n = self.n
        run("netns", "add", self.pod)
        run("netns", "add", self.gw)
        run("-n", self.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "gwside", "netns", self.gw)
        for ns, dev, last in ((self.pod, "eth0", 2), (self.gw, "gwside", 1)):
            run("-n", ns, "addr", "add", "10.250.%d.%d/24" % (n, last), "dev", dev)
            run("-n", ns, "addr", "add", "fd00:%x::%d/64" % (n, last), "dev", dev, "nodad")
            run("-n", ns, "link", "set", dev, "up")
        run("-n", self.pod, "route", "add", "default", "via", "10.250.%d.1" % n)
        run("-n", self.pod, "-6", "route", "add", "default", "via", "fd00:%x::1" % n)
        run("-n", self.pod, "route", "add", "10.9.0.0/16", "nexthop", "via", "10.250.%d.1" % n, "dev", "eth0",
            "nexthop", "via", "10.250.%d.9" % n, "dev", "eth0")
        run("-n", self.pod, "route", "add", "10.8.0.0/16", "via", "10.250.%d.1" % n, "table", "100")
        return self

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until no IPv6 address is tentative (link-local DAD takes about a second after the link comes up;
        until then neighbour discovery, and so the first IPv6 echo, can fail)."""
        deadline = time.monotonic() + timeout
        for ns in (self.pod, self.gw):
            while subprocess.run(["ip", "-n", ns, "-6", "addr", "show", "tentative"], capture_output=True,
                                 text=True, timeout=30).stdout.strip():
                if time.monotonic() > deadline:
                    raise TimeoutError("IPv6 addresses of %s still tentative" % ns)
                time.sleep(0.05)

    def teardown(self) -> None:
        for ns in (self.pod, self.gw):
            if os.path.exists("/var/run/netns/" + ns):
                run("netns", "del", ns)


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p.setup()
    finally:
        p.teardown()
        netns.close()   # the helper process this test process started


def test_observe_reads_interface_addresses_and_routes_of_every_table(pair: Pair) -> None:
    n = pair.n
    obs = netns.observe(pair.path, "eth0")
    assert obs.netns_exists and obs.error == "" and not obs.probed and obs.probes == ()
    assert obs.interface is not None and obs.interface.state == "up" and obs.interface.oper_state == "UP"
    assert pfx("10.250.%d.2/24" % n) in obs.addresses and pfx("fd00:%x::2/64" % n) in obs.addresses
    routes = {(str(r.dst), r.table): r.nexthops for r in obs.routes}
    idx = obs.interface.index
    assert routes[("0.0.0.0/0", 254)] == (Nexthop(ip("10.250.%d.1" % n), idx),)
    assert routes[("::/0", 254)] == (Nexthop(ip("fd00:%x::1" % n), idx),)
    assert routes[("10.8.0.0/16", 100)] == (Nexthop(ip("10.250.%d.1" % n), idx),)
    assert routes[("10.9.0.0/16", 254)] == (Nexthop(ip("10.250.%d.1" % n), idx), Nexthop(ip("10.250.%d.9" % n), idx))
    assert all(r.dst.family in (4, 6) for r in obs.routes)


def test_observe_probes_ipv4_and_ipv6_gateways_and_reads_their_neighbour_state(pair: Pair) -> None:
    n = pair.n
    pair.settle()
    silent = ip("10.250.%d.77" % n)   # on the link, nobody has it
    started = time.monotonic()
    obs = netns.observe(pair.path, "eth0", gateways=[(4, ip("10.250.%d.1" % n)), (6, ip("fd00:%x::1" % n)),
                                                     (4, silent)], probe_count=2, probe_timeout=0.3)
    took = time.monotonic() - started
    v4, v6, dead = obs.probes
    assert obs.probed
    assert (v4.sent, v4.received, v4.error) == (2, 2, "") and v4.rtt is not None and v4.rtt > 0
    assert v4.neighbour in ("REACHABLE", "DELAY", "STALE", "PROBE")
    assert (v6.sent, v6.received) == (2, 2) and v6.neighbour in ("REACHABLE", "DELAY", "STALE", "PROBE")
    assert (dead.sent, dead.received, dead.rtt) == (2, 0, None) and dead.neighbour in ("INCOMPLETE", "FAILED")
    assert took < 2 * 0.3 + 2.0   # the silent gateway costs its probes' time, bounded (no timing beyond that)


@pytest.mark.parametrize("path, exists, words", [
    ("/var/run/netns/ipamdtest-nonexistent", False, "does not exist"),
    ("relative/path", False, "absolute"),
    ("/etc/hostname", False, "not a network namespace"),
    ("/", False, "not a network namespace"),
])
def test_observe_reports_what_is_not_a_namespace_without_raising(pair: Pair, path: str, exists: bool,
                                                                  words: str) -> None:
    obs = netns.observe(path, "eth0", gateways=[(4, ip("10.250.%d.1" % pair.n))])
    assert (obs.netns_exists, obs.interface, obs.probes) == (exists, None, ())
    assert words in obs.error


def test_observe_missing_interface_and_down_interface(pair: Pair) -> None:
    assert netns.observe(pair.path, "eth9").interface is None
    assert netns.observe(pair.path, "eth9").netns_exists
    run("-n", pair.gw, "link", "set", "gwside", "down")
    obs = netns.observe(pair.path, "eth0")
    assert obs.interface is not None and obs.interface.state == "no-carrier"
    run("-n", pair.pod, "link", "set", "eth0", "down")
    obs = netns.observe(pair.path, "eth0", gateways=[(4, ip("10.250.%d.1" % pair.n))], probe_timeout=0.2)
    assert obs.interface is not None and obs.interface.state == "down"
    assert obs.probes[0].received == 0


def test_observe_after_the_helper_died_starts_a_new_one(pair: Pair) -> None:
    assert netns.observe(pair.path, "eth0").interface is not None
    helper = netns._SOCKETS._proc
    assert helper is not None and helper.poll() is None
    os.kill(helper.pid, signal.SIGKILL)   # the helper this test process started, by its PID
    helper.wait()
    obs = netns.observe(pair.path, "eth0")
    assert obs.interface is not None or obs.error   # the request in flight may fail; it never hangs or raises
    assert netns.observe(pair.path, "eth0").interface is not None
    assert netns._SOCKETS._proc is not None and netns._SOCKETS._proc.pid != helper.pid


def test_helper_refuses_a_file_that_is_not_a_namespace_with_einval(pair: Pair, tmp_path: Path) -> None:
    f = tmp_path / "plain"
    f.write_text("x")
    fd = os.open(str(f), os.O_RDONLY)
    try:
        with pytest.raises(NamespaceSocketError) as info:
            netns._SOCKETS.socket_in(fd, 16, 2, 0)   # AF_NETLINK, SOCK_DGRAM
        assert info.value.errno == 22
    finally:
        os.close(fd)
