"""``exclude`` and ``strictAffinity`` for IPv4 and IPv6 (issue 10, item 9; field cases B29, B34 and decision 5 of
docs/field-cases.md), against real etcd, real ipamd daemons and the real plugin, one process per CNI call.

- Excluded addresses and ranges are never handed out, whatever block they sit in: single addresses, a CIDR that
  covers whole blocks, and an excluded run that crosses a block boundary. A pool is filled until code 100, and the
  addresses handed out are exactly the usable ones minus the excluded ones, in order.
- ``strictAffinity`` never borrows: a node whose blocks are full gets code 100 (details: the free addresses left in
  other nodes' blocks) even though another node's block has room; without it the node borrows.

The ``daemons`` fixture checks the invariants of docs/etcd-layout.md after every scenario.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from cni_conformance_util import assert_err
from harness import CniOutput, Daemon, cni_config, run_cni, snapshot_counts

from ipamd.store.base import prefix_end
from ipamd.store.etcd import EtcdStore


def add(d: Daemon, conf: Any, cid: str) -> CniOutput:
    return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid)


def address(out: CniOutput) -> str:
    assert out.rc == 0, out
    assert len(out.ips) == 1, out
    return out.ips[0]


def fill(d: Daemon, conf: Any, tag: str, limit: int) -> list[str]:
    """ADD until code 100 (at most ``limit`` ADDs); returns the addresses handed out, in order."""
    got = []
    for i in range(limit):
        out = add(d, conf, "%s%d" % (tag, i))
        if out.rc != 0:
            assert_err(out, 100, "1.1.0")
            return got
        got.append(address(out).split("/")[0])
    raise AssertionError("no code 100 after %d ADDs" % limit)


def claimed(d: Daemon, network: str) -> dict[str, str]:
    """``{block CIDR: owner node}`` of the network's block records."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        kvs, _ = store.read("blocks/%s/" % network, prefix_end("blocks/%s/" % network), 10)
    finally:
        store.close()
    out = {}
    for kv in kvs:
        hexaddr, _, plen = kv.key.rsplit("/", 1)[1].partition("-")
        out[str(ipaddress.ip_network((int(hexaddr, 16), int(plen))))] = json.loads(kv.value)["node"]
    return out


def expected(first: str, last: str, excluded: list[str]) -> list[str]:
    """Addresses from ``first`` to ``last`` in order, minus ``excluded`` (addresses or CIDRs)."""
    out = []
    nets = [ipaddress.ip_network(e) for e in excluded]
    a, z = ipaddress.ip_address(first), ipaddress.ip_address(last)
    while a <= z:
        if not any(a in n for n in nets):
            out.append(str(a))
        a += 1
    return out


EXCLUDE_CASES = [
    pytest.param(dict(subnet="10.90.0.0/26", blockSize=29,
                      exclude=["10.90.0.7", "10.90.0.8", "10.90.0.16/28", "10.90.0.45"]),
                 "10.90.0.2", "10.90.0.62", ["10.90.0.16/29", "10.90.0.24/29"], id="v4"),
    pytest.param(dict(subnet="fd00:90::/120", blockSize6=124,
                      exclude=["fd00:90::f", "fd00:90::10", "fd00:90::20/123", "fd00:90::ff"]),
                 "fd00:90::2", "fd00:90::ff", ["fd00:90::20/124", "fd00:90::30/124"], id="v6"),
]


@pytest.mark.parametrize("ipam, first, last, empty_blocks", EXCLUDE_CASES)
def test_excluded_addresses_and_ranges_are_never_handed_out(daemons, ipam, first, last, empty_blocks):
    """Item 9 / B29: a pool of 8 (IPv4 /26, blocks /29) or 16 (IPv6 /120, blocks /124) blocks with excludes: a
    run of two single addresses across a block boundary (.7 | .8, ::f | ::10), a CIDR covering two whole blocks
    (10.90.0.16/28, fd00:90::20/123), and one address inside a block (.45, and ::ff, the last of the subnet).
    Filling the pool on one node until code 100 hands out exactly the usable addresses (from the first after the
    gateway to the last before the broadcast, IPv6 having none) minus the excluded ones, in order; the blocks
    that hold only excluded addresses are never claimed; a request for an excluded address by ``IP=`` is 101; and
    after a DEL of everything the next fill hands out the same set again."""
    d = daemons("A")
    conf = cni_config("ex", subnet=ipam.pop("subnet"), **ipam)
    want = expected(first, last, conf["ipam"]["exclude"])
    got = fill(d, conf, "c", len(want) + 5)
    assert got == want
    owned = claimed(d, "ex")
    assert all(node == "A" for node in owned.values())
    assert not set(empty_blocks) & set(owned), owned
    for excluded in conf["ipam"]["exclude"]:
        one = str(ipaddress.ip_network(excluded)[0])
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id="want", args="IP=" + one)
        assert_err(out, 101, "1.1.0")
    for i in range(len(got)):
        assert run_cni("DEL", conf, socket=d.cni_socket, container_id="c%d" % i).rc == 0
    assert snapshot_counts(d.endpoints, d.prefix)["ips"] == 0
    assert fill(d, conf, "again", len(want) + 5) == want


STRICT_CASES = [
    # (ipam, A's usable count, B's first address, free left in B's block, the address A borrows once B took 2)
    pytest.param(dict(subnet="10.80.0.0/27", blockSize=28), 14, "10.80.0.16", 14, "10.80.0.18", id="v4"),
    pytest.param(dict(subnet="fd00:91::/123", blockSize6=124), 14, "fd00:91::10", 15, "fd00:91::12", id="v6"),
]


@pytest.mark.parametrize("ipam, a_usable, b_first, free_elsewhere, borrowed", STRICT_CASES)
def test_strict_affinity_never_borrows(daemons, ipam, a_usable, b_first, free_elsewhere, borrowed):
    """Item 9 / B34 decision 5, IPv4 and IPv6: two blocks in the pool; A fills its block, B claims the other with
    one ADD. With ``strictAffinity`` A's next ADDs are code 100 (three times: it never borrows, and nothing is
    written), the details counting the free addresses left in B's block, while B still allocates from its own
    block; without ``strictAffinity`` A borrows the lowest free address of B's block, recorded as A's."""
    a, b = daemons("A"), daemons("B")
    subnet = ipam.pop("subnet")
    loose = cni_config("aff", subnet=subnet, **ipam)
    strict = cni_config("aff", subnet=subnet, strictAffinity=True, **ipam)
    got = [address(add(a, strict, "a%d" % i)).split("/")[0] for i in range(a_usable)]
    assert len(set(got)) == a_usable
    assert address(add(b, strict, "b0")).split("/")[0] == b_first
    assert sorted(claimed(a, "aff").values()) == ["A", "B"]
    for i in range(3):
        err = assert_err(add(a, strict, "refused%d" % i), 100, "1.1.0")
        assert "strictAffinity" in err["msg"], err
        assert "%d free address(es) in blocks owned by other nodes" % free_elsewhere in err["details"], err
    assert snapshot_counts(a.endpoints, a.prefix)["ips"] == a_usable + 1
    # B's block still serves B
    assert address(add(b, strict, "b1")).split("/")[0] == str(ipaddress.ip_address(b_first) + 1)
    # without strictAffinity, A borrows from B's block
    out = address(add(a, loose, "a-borrow")).split("/")[0]
    assert out == borrowed
    store = EtcdStore(a.endpoints, a.prefix)
    try:
        kvs, _ = store.read("handles/aff/a-borrow/eth0", None, 10)
    finally:
        store.close()
    assert len(kvs) == 1 and b'"node":"A"' in kvs[0].value.replace(b" ", b""), kvs
    assert sorted(claimed(a, "aff").values()) == ["A", "B"]
