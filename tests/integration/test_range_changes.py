"""Ranges that grow, shrink or move, and excludes added, under live allocations (issue 10 item 6; field cases B27
and B51; docs/operations.md "Changing a range under live pods"), against real etcd, real daemons, the real plugin
and the real ``ipamctl check``.

Every scenario holds addresses under one configuration, changes the configuration, and then shows:

- live attachments keep their addresses (a repeated ADD returns the same one) until their DEL, which releases by
  key with the new configuration on stdin;
- new ADDs follow the new configuration only;
- ``ipamctl check`` finds no violation; an address the new configuration no longer allows is a warning (B51), as
  many as there are such holders, and none once they are gone; an address released under the new configuration
  is never handed out again if the configuration no longer allows it;
- a concurrent-allocation pass afterwards (two daemons, every ADD released from one barrier) never double-books:
  every address is distinct and distinct from the live ones, and each is allowed by the new configuration.

The ``daemons`` fixture also checks the invariants of docs/etcd-layout.md after every scenario.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

from cni_conformance_util import assert_err, assert_ok_empty, handle_ips, ip_records
from harness import CniOutput, Daemon, cni_config, run_cni, snapshot_counts


def add(d: Daemon, conf: Any, cid: str, **kw: Any) -> CniOutput:
    return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid, **kw)


def delete(d: Daemon, conf: Any, cid: str) -> CniOutput:
    return run_cni("DEL", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid)


def address(out: CniOutput) -> str:
    """The one address of a successful ADD, without its prefix length."""
    assert out.rc == 0, out
    assert len(out.ips) == 1, out
    return out.ips[0].split("/")[0]


def n(text: str) -> int:
    """The last octet of an IPv4 address."""
    return int(text.rsplit(".", 1)[1])


def check(d: Daemon) -> tuple[list[str], str]:
    """``ipamctl check`` (etcd directly): asserts exit 0 (no violation); returns its WARN lines and its stdout."""
    out = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", d.endpoints,
                          "--etcd-prefix", d.prefix], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL,
                         env={k: v for k, v in os.environ.items() if not k.startswith("IPAMD_")})
    assert out.returncode == 0, out
    assert "INV" not in out.stdout, out.stdout
    return [line for line in out.stdout.splitlines() if line.startswith("WARN")], out.stdout


def assert_warnings(d: Daemon, handles: list[str]) -> None:
    """``ipamctl check`` passes with exactly one warning per handle in ``handles`` (B51), each naming it."""
    warns, text = check(d)
    assert len(warns) == len(handles), text
    for handle in handles:
        assert sum(handle in w for w in warns) == 1, (handle, text)
    if handles:
        assert "(%d warning(s))" % len(handles) in text, text
    else:
        assert "OK: all invariants hold" in text, text


def concurrent_pass(nodes: list[Daemon], conf: Any, per_node: int, live: set[str], tag: str) -> list[str]:
    """``per_node`` ADDs on each daemon, four plugin processes per daemon, all released from one barrier; every
    ADD must succeed. Asserts no address is handed out twice or is one of ``live``; returns the addresses."""
    results: dict[str, CniOutput] = {}
    ids = [(d, "%s-%s-%d" % (tag, d.node, i)) for d in nodes for i in range(per_node)]
    barrier = threading.Barrier(len(nodes) * 4)

    def worker(k: int) -> None:
        barrier.wait()
        for d, cid in ids[k::len(nodes) * 4]:
            results[cid] = add(d, conf, cid)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(nodes) * 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [address(results[cid]) for _, cid in ids]
    assert len(set(got)) == len(got), sorted(got)
    assert not set(got) & live, sorted(set(got) & live)
    return got


# -- (a) grow ------------------------------------------------------------------------------------------------------


def test_range_end_widened_under_live_pods(daemons):
    """(a) ``rangeEnd`` widened: subnet 10.66.0.0/24 with ``rangeEnd`` .10 (usable .2-.10), ``blockSize`` 28; nine
    ADDs fill it (.2-.10) and the tenth is 100. The configuration's ``rangeEnd`` becomes .40: the live nine keep
    their addresses (a repeated ADD returns the same one), new ADDs get .11, .12, ...; ``ipamctl check`` is clean
    (no warning: nothing became unusable); a concurrent pass of 2 x 10 ADDs on two nodes fills .13-.40 (minus
    what is taken) without double booking, every address within the new range."""
    a, b = daemons("A"), daemons("B")
    narrow = cni_config("grow", ranges=[[{"subnet": "10.66.0.0/24", "rangeEnd": "10.66.0.10"}]], blockSize=28)
    wide = cni_config("grow", ranges=[[{"subnet": "10.66.0.0/24", "rangeEnd": "10.66.0.40"}]], blockSize=28)
    live = [address(add(a, narrow, "live%d" % i)) for i in range(9)]
    assert [n(x) for x in live] == list(range(2, 11))
    assert_err(add(a, narrow, "full"), 100, "1.1.0")

    assert [address(add(a, wide, "new%d" % i)) for i in range(2)] == ["10.66.0.11", "10.66.0.12"]
    assert [address(add(a, wide, "live%d" % i)) for i in range(9)] == live  # kept, same answer
    assert_warnings(a, [])
    got = concurrent_pass([a, b], wide, 10, set(live) | {"10.66.0.11", "10.66.0.12"}, "pass")
    assert all(13 <= n(x) <= 40 for x in got), sorted(got, key=n)
    assert snapshot_counts(a.endpoints, a.prefix)["ips"] == 31
    assert_warnings(a, [])


def test_subnet_widened_from_25_to_24_under_live_pods(daemons):
    """(a) subnet widened /25 -> /24: 10.67.0.0/25 (usable .2-.126) holds .2-.6 on A. The configuration becomes
    10.67.0.0/24 (a new pool beside the old one; address keys are per network, so the two cannot book one address
    twice). New ADDs skip the live .2-.6; the live ones keep their addresses; ``ipamctl check`` is clean. A
    concurrent pass on two nodes then fills the whole /24 until 100: the addresses handed out are exactly .7-.254
    (.127 and .128, the /25's broadcast and the next half's first, included), never a live one. Each live
    attachment's DEL with the /24 configuration on stdin releases its /25 address (found through the handle), and
    the released addresses are handed out again under the /24."""
    a, b = daemons("A"), daemons("B")
    old = cni_config("wide", subnet="10.67.0.0/25", blockSize=28)
    new = cni_config("wide", subnet="10.67.0.0/24", blockSize=28)
    live = [address(add(a, old, "live%d" % i)) for i in range(5)]
    assert [n(x) for x in live] == [2, 3, 4, 5, 6]
    assert address(add(a, new, "first")) == "10.67.0.7"
    assert address(add(a, new, "live0")) == "10.67.0.2"  # kept
    assert_warnings(a, [])

    got = concurrent_pass([a, b], new, 60, set(live) | {"10.67.0.7"}, "pass")
    rest = []
    for i in range(300):  # fill the rest one by one, alternating nodes, until 100
        out = add((a, b)[i % 2], new, "fill%d" % i)
        if out.rc != 0:
            assert_err(out, 100, "1.1.0")
            break
        rest.append(address(out))
    handed = sorted(n(x) for x in ["10.67.0.7", *got, *rest])
    assert handed == list(range(7, 255)), handed
    assert_warnings(a, [])

    for i, held in enumerate(live):
        assert_ok_empty(delete(a, new, "live%d" % i))
        assert handle_ips(a, "wide", "live%d" % i, "eth0") is None
        assert ip_records(a, held) == []
    again = sorted(n(address(add((a, b)[i % 2], new, "again%d" % i))) for i in range(5))
    assert again == [2, 3, 4, 5, 6]
    assert_err(add(a, new, "over"), 100, "1.1.0")
    assert_warnings(a, [])


def test_subnet_narrowed_from_24_to_25_under_live_pods(daemons):
    """Shrink, the other way: 10.68.0.0/24 holds .2 and .200 (``IP=``). The configuration becomes 10.68.0.0/25, a
    new pool: .200 stays its holder's (repeated ADD), new ADDs come from the /25 only and skip the live .2; the
    check is clean with no warning (docs/operations.md "Changing a range under live pods": .200 is usable in the
    pool it was allocated from, whose record is unchanged). ``DEL`` with the /25 configuration releases .200, and a
    concurrent pass that fills the /25 until 100 hands out exactly .3-.126, never .200 or anything above .127."""
    a, b = daemons("A"), daemons("B")
    old = cni_config("narrow", subnet="10.68.0.0/24", blockSize=28)
    new = cni_config("narrow", subnet="10.68.0.0/25", blockSize=28)
    assert address(add(a, old, "low")) == "10.68.0.2"
    assert address(add(a, old, "high", args="IP=10.68.0.200")) == "10.68.0.200"
    assert address(add(a, new, "high")) == "10.68.0.200"
    assert address(add(a, new, "n0")) == "10.68.0.3"
    assert_warnings(a, [])
    assert_ok_empty(delete(a, new, "high"))
    assert ip_records(a, "10.68.0.200") == []
    got = concurrent_pass([a, b], new, 40, {"10.68.0.2", "10.68.0.3"}, "pass")
    rest = []
    for i in range(100):
        out = add((a, b)[i % 2], new, "fill%d" % i)
        if out.rc != 0:
            assert_err(out, 100, "1.1.0")
            break
        rest.append(address(out))
    assert sorted(n(x) for x in ["10.68.0.3", *got, *rest]) == list(range(3, 127))
    assert_warnings(a, [])


# -- (b) move ------------------------------------------------------------------------------------------------------


def test_b27_subnet_moved_to_a_disjoint_one(daemons):
    """(b) B27's first variant: ``net1`` with subnet 10.64.0.0/24; ``ADD c1`` -> 10.64.0.2/24. The configuration
    changes to 10.65.0.0/24; ``ADD c2`` -> 10.65.0.2/24; c1's repeated ADD still answers 10.64.0.2/24 (kept until
    DEL); ``ipamctl check`` clean. ``DEL c1`` with the new configuration on stdin -> ok-empty and 10.64.0.2 released
    (address record and handle gone: found through the handle, not the current configuration). Later ADDs never
    use the old subnet; a concurrent pass on two nodes hands out only 10.65.0.x, never twice."""
    a, b = daemons("A"), daemons("B")
    old = cni_config("net1", subnet="10.64.0.0/24")
    new = cni_config("net1", subnet="10.65.0.0/24")
    c1 = add(a, old, "c1")
    assert c1.ips == ["10.64.0.2/24"], c1
    c2 = add(a, new, "c2")
    assert c2.ips == ["10.65.0.2/24"], c2
    again = add(a, new, "c1")
    assert again.ips == ["10.64.0.2/24"], again
    assert_warnings(a, [])

    assert_ok_empty(delete(a, new, "c1"))
    assert handle_ips(a, "net1", "c1", "eth0") is None
    assert ip_records(a, "10.64.0.2") == []
    assert snapshot_counts(a.endpoints, a.prefix)["ips"] == 1
    assert add(a, new, "c3").ips == ["10.65.0.3/24"]
    got = concurrent_pass([a, b], new, 10, {"10.65.0.2", "10.65.0.3"}, "pass")
    assert all(x.startswith("10.65.0.") for x in got), got
    assert_warnings(a, [])


# -- (c) exclude added under a live address --------------------------------------------------------------------


def test_exclude_added_covering_a_live_address(daemons):
    """(c) B51 through the plugin: subnet 10.62.0.0/27 (usable .2-.30), ``blockSize`` 28; c1, c2, c3 hold .2, .3,
    .4. The configuration gains ``exclude`` [.3, 10.62.0.8/29]: c2 keeps .3 (its repeated ADD answers .3, its
    CHECK passes), ``ipamctl check`` lists exactly one warning, naming c2's handle; new ADDs skip .3 and .8-.15.
    After ``DEL c2`` the check is clean, ``IP=10.62.0.3`` is 101, and filling the pool concurrently on two nodes
    until 100 hands out every usable address but .3 and .8-.15, never one twice."""
    a, b = daemons("A"), daemons("B")
    before = cni_config("exc", subnet="10.62.0.0/27", blockSize=28)
    after = cni_config("exc", subnet="10.62.0.0/27", blockSize=28, exclude=["10.62.0.3", "10.62.0.8/29"])
    assert [address(add(a, before, "c%d" % i)) for i in (1, 2, 3)] == ["10.62.0.2", "10.62.0.3", "10.62.0.4"]

    assert address(add(a, after, "c2")) == "10.62.0.3"
    chk = run_cni("CHECK", dict(after, prevResult={"cniVersion": "1.1.0", "ips": [
        {"address": "10.62.0.3/27", "gateway": "10.62.0.1"}]}), socket=a.cni_socket, container_id="c2",
        netns="/var/run/netns/c2")
    assert chk.rc == 0, chk
    assert address(add(a, after, "n1")) == "10.62.0.5"
    assert_warnings(a, ["exc/c2/eth0"])

    assert_ok_empty(delete(a, after, "c2"))
    assert_warnings(a, [])
    assert_err(add(a, after, "want", args="IP=10.62.0.3"), 101, "1.1.0")
    got = concurrent_pass([a, b], after, 4, {"10.62.0.2", "10.62.0.4", "10.62.0.5"}, "pass")
    rest = []
    for i in range(40):
        out = add((a, b)[i % 2], after, "fill%d" % i)
        if out.rc != 0:
            assert_err(out, 100, "1.1.0")
            break
        rest.append(address(out))
    handed = sorted(n(x) for x in ["10.62.0.2", "10.62.0.4", "10.62.0.5", *got, *rest])
    assert handed == [2, 4, 5, 6, 7, *range(16, 31)], handed
    assert_warnings(a, [])


# -- (d) rangeStart moved past live addresses ------------------------------------------------------------------


def test_range_start_moved_past_live_addresses(daemons):
    """(d) ``rangeStart`` moved past live addresses: subnet 10.63.0.0/24, ``blockSize`` 28; c1..c5 hold .2-.6.
    ``rangeStart`` becomes 10.63.0.20: the five keep their addresses (repeated ADDs answer the same), ``ipamctl
    check`` lists five warnings, one per holder; new ADDs start at .20. After the five DELs (new configuration on
    stdin) the check is clean, none of .2-.6 is ever handed out again (``IP=10.63.0.2`` is 101, and a concurrent
    pass on two nodes hands out only .20 and above, never twice)."""
    a, b = daemons("A"), daemons("B")
    before = cni_config("start", subnet="10.63.0.0/24", blockSize=28)
    after = cni_config("start", ranges=[[{"subnet": "10.63.0.0/24", "rangeStart": "10.63.0.20"}]], blockSize=28)
    live = [address(add(a, before, "c%d" % i)) for i in range(1, 6)]
    assert [n(x) for x in live] == [2, 3, 4, 5, 6]

    assert address(add(a, after, "n1")) == "10.63.0.20"
    assert [address(add(a, after, "c%d" % i)) for i in range(1, 6)] == live
    assert_warnings(a, ["start/c%d/eth0" % i for i in range(1, 6)])

    for i in range(1, 6):
        assert_ok_empty(delete(a, after, "c%d" % i))
    assert_warnings(a, [])
    assert_err(add(a, after, "want", args="IP=10.63.0.2"), 101, "1.1.0")
    got = concurrent_pass([a, b], after, 12, {"10.63.0.20"}, "pass")
    assert all(n(x) >= 21 for x in got), sorted(got, key=n)
    assert snapshot_counts(a.endpoints, a.prefix)["ips"] == 25
    assert_warnings(a, [])
