"""Field cases B29, B30 and B34 (docs/field-cases.md "etcd-specific": ranges, tiny pools, exhaustion) against real etcd,
real ipamd daemons and real ipamd-cni shim processes (one fresh process per CNI call).

Which addresses of a range may ever be handed out (never the network address, the IPv4 broadcast or the gateway;
bounds on them are refused), which pools are too small to allocate from, and what a full pool answers. The
``daemons`` fixture checks the invariants of docs/etcd-layout.md after every scenario.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.request
from typing import Any

import pytest
from cni_conformance_util import assert_err, assert_ok_empty, handle_ips, parse_stdout, read_handle
from harness import CniOutput, Daemon, cni_config, metric_sum, run_cni, snapshot_counts
from prometheus_client.parser import text_string_to_metric_families

from ipamd.embedded import free_port
from ipamd.store.base import prefix_end
from ipamd.store.etcd import EtcdStore


def add(d: Daemon, conf: Any, cid: str, if_name: str = "eth0", **kw: Any) -> CniOutput:
    return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, if_name=if_name,
                   netns="/var/run/netns/" + cid, **kw)


def delete(d: Daemon, conf: Any, cid: str, if_name: str = "eth0") -> CniOutput:
    return run_cni("DEL", conf, socket=d.cni_socket, container_id=cid, if_name=if_name,
                   netns="/var/run/netns/" + cid)


def added(out: CniOutput) -> dict[str, Any]:
    """A successful ADD: exit 0 and one strict JSON result with one address; returns the result."""
    assert out.rc == 0, out
    obj = parse_stdout(out)
    assert len(obj["ips"]) == 1, out
    return obj


def address(out: CniOutput) -> str:
    return added(out)["ips"][0]["address"]


def read_kind(d: Daemon, kind: str) -> dict[str, dict[str, Any]]:
    """All records of one kind (``"blocks/"``, ``"ips/"``, ...) under the daemon's prefix: key -> decoded value."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        kvs, _ = store.read(kind, prefix_end(kind), 10.0)
    finally:
        store.close()
    return {kv.key: json.loads(kv.value) for kv in kvs}


def blocks(d: Daemon, network: str) -> dict[str, str]:
    """``{block CIDR: owner node}`` of every block record of ``network``."""
    out = {}
    for key, value in read_kind(d, "blocks/%s/" % network).items():
        hexaddr, _, plen = key.rsplit("/", 1)[1].partition("-")
        out[str(ipaddress.ip_network((int(hexaddr, 16), int(plen))))] = value["node"]
    return out


def counts(d: Daemon) -> dict[str, int]:
    return snapshot_counts(d.endpoints, d.prefix)


def nothing_written(d: Daemon) -> bool:
    return counts(d) == {"pools": 0, "blocks": 0, "ips": 0, "handles": 0}


# -- B29 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bounds, fields", [
    pytest.param({"subnet": "10.69.0.0/16", "rangeStart": "10.69.0.0"}, ["rangeStart"], id="a-start-on-network"),
    pytest.param({"subnet": "10.69.0.0/16", "rangeEnd": "10.69.255.255"}, ["rangeEnd"], id="b-end-on-broadcast"),
    pytest.param({"subnet": "10.69.0.0/16", "rangeStart": "10.69.0.20", "rangeEnd": "10.69.0.10"},
                 ["rangeStart", "rangeEnd"], id="c-start-after-end"),
    pytest.param({"subnet": "10.69.0.0/16", "gateway": "10.70.0.1"}, ["gateway"], id="d-gateway-outside"),
])
def test_b29_bounds_on_network_broadcast_inverted_or_outside_are_code_7(daemons, bounds, fields):
    """B29 (a)-(d) (cni PR #391, plugins #1295): subnet 10.69.0.0/16 with (a) ``rangeStart`` 10.69.0.0, (b)
    ``rangeEnd`` 10.69.255.255, (c) ``rangeStart`` 10.69.0.20 and ``rangeEnd`` 10.69.0.10, (d) gateway 10.70.0.1
    -> code 7 whose msg names the offending field (decision 3: bounds on the network/broadcast address are
    rejected, not clamped); nothing is written to etcd."""
    d = daemons("A")
    conf = cni_config("net1", ranges=[[bounds]], blockSize=28)
    err = assert_err(add(d, conf, "c1"), 7, "1.1.0")
    for field in fields:
        assert field in err["msg"], err
    assert nothing_written(d)


def test_b29_slash30_hands_out_only_dot2(daemons):
    """B29 (e) (whereabouts #38): subnet 10.71.0.0/30: ``ADD c1`` -> 10.71.0.2/30, ``ADD c2`` -> code 100; .0
    (network), .1 (gateway) and .3 (broadcast) are never handed out.

    The /30 is smaller than the base config's blockSize 28, which would be a block size shorter than the pool
    prefix (code 7 by decision 4), so blockSize is left out (the pool's default)."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.71.0.0/30")
    assert added(add(d, conf, "c1"))["ips"] == [{"address": "10.71.0.2/30", "gateway": "10.71.0.1"}]
    assert_err(add(d, conf, "c2"), 100, "1.1.0")
    assert read_handle(d, "net1", "c2", "eth0") is None
    assert list(read_kind(d, "ips/")) == ["ips/net1/v4/0a470002"]


def test_b29_gateway_at_the_top_frees_dot1_and_is_never_handed_out(daemons):
    """B29 (f) (plugins #109): subnet 10.72.0.0/24 with gateway 10.72.0.254: ``ADD c1`` -> 10.72.0.1/24 (gateway
    10.72.0.254 in the result) and .254 is never handed out: allocating until the pool is full yields exactly
    .1-.253 in order, then code 100."""
    d = daemons("A")
    conf = cni_config("net1", ranges=[[{"subnet": "10.72.0.0/24", "gateway": "10.72.0.254"}]], blockSize=28)
    assert added(add(d, conf, "c1"))["ips"] == [{"address": "10.72.0.1/24", "gateway": "10.72.0.254"}]
    for n in range(2, 254):
        assert address(add(d, conf, "c%d" % n)) == "10.72.0.%d/24" % n
    assert_err(add(d, conf, "c254"), 100, "1.1.0")
    assert counts(d)["ips"] == 253
    taken = {int(key.rsplit("/", 1)[1], 16) & 0xFF for key in read_kind(d, "ips/")}
    assert taken == set(range(1, 254))


def test_b29_ipv6_without_gateway_until_exhausted(daemons):
    """B29 (g): subnet fd00:69::/120, no gateway: ``ADD`` until exhausted -> first fd00:69::2 (the gateway
    defaults to ::1), then every address in order up to fd00:69::ff (IPv6 has no broadcast), then code 100.

    (The base config's blockSize 28 is an IPv4 block size; IPv6 pools use blockSize6, default /122.)"""
    d = daemons("A")
    conf = cni_config("net1", subnet="fd00:69::/120", blockSize=28)
    first = added(add(d, conf, "c2"))
    assert first["ips"] == [{"address": "fd00:69::2/120", "gateway": "fd00:69::1"}]
    for n in range(3, 256):
        assert address(add(d, conf, "c%d" % n)) == "fd00:69::%x/120" % n
    assert_err(add(d, conf, "c256"), 100, "1.1.0")
    assert counts(d)["ips"] == 254


# -- B41 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ranges, field, cls", [
    pytest.param([[{"subnet": "::ffff:10.1.0.0/120"}]], "ipam.ranges[0][0] subnet", "::ffff:0:0/96", id="mapped"),
    pytest.param([[{"subnet": "::ffff:0.0.0.0/96"}]], "ipam.ranges[0][0] subnet", "::ffff:0:0/96", id="all-mapped"),
    pytest.param([[{"subnet": "10.1.0.0/24"}], [{"subnet": "::ffff:10.1.0.0/120"}]], "ipam.ranges[1][0] subnet",
                 "::ffff:0:0/96", id="v4-and-its-mapped-twin"),
    pytest.param([[{"subnet": "fe80::/64"}]], "ipam.ranges[0][0] subnet", "fe80::/10", id="link-local-v6"),
    pytest.param([[{"subnet": "224.10.0.0/24"}]], "ipam.ranges[0][0] subnet", "224.0.0.0/4", id="multicast"),
    pytest.param([[{"subnet": "10.2.0.0/24", "gateway": "10.2.0.0"}]], "gateway 10.2.0.0", "network address",
                 id="gateway-network"),
    pytest.param([[{"subnet": "10.2.0.0/24", "gateway": "10.2.0.255"}]], "gateway 10.2.0.255", "broadcast address",
                 id="gateway-broadcast"),
])
def test_b41_subnets_and_gateways_pods_cannot_use_are_code_7_before_anything_is_written(daemons, ranges, field,
                                                                                         cls):
    """B41 (plugins #1294) through a real daemon and plugin process: the repro's mapped ranges, a v4 range set
    beside its mapped twin, and gateways on the network or broadcast address are code 7 whose msg names the range
    field and the class; a good ADD afterwards works and nothing of the refused ones was written."""
    d = daemons("A")
    err = assert_err(add(d, cni_config("net1", ranges=ranges), "c1"), 7, "1.1.0")
    assert field in err["msg"] and cls in err["msg"], err
    assert nothing_written(d)
    assert address(add(d, cni_config("net1", ranges=[[{"subnet": "10.3.0.0/24"}]]), "c2")).startswith("10.3.0.")
    assert counts(d)["handles"] == 1


# -- B30 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subnet", ["10.73.0.0/31", "10.73.1.7/32", "fd00:73::/127", "fd00:73::5/128"])
def test_b30_tiny_subnets_are_too_small_to_allocate_from(daemons, subnet):
    """B30 (plugins #908), decision 4: subnets 10.73.0.0/31, 10.73.1.7/32, fd00:73::/127, fd00:73::5/128; ``ADD``
    three times each -> code 7 "too small to allocate from", the msg naming the subnet; nothing written.

    The base config's blockSize 28 is left out: for an IPv4 /31 or /32 it would be a block size shorter than the
    pool prefix, itself code 7 by decision 4, and the case is about the subnet size."""
    d = daemons("A")
    conf = cni_config("net1", subnet=subnet)
    for cid in ("c1", "c2", "c3"):
        err = assert_err(add(d, conf, cid), 7, "1.1.0")
        assert "too small to allocate from" in err["msg"], err
        assert subnet in err["msg"], err
    assert nothing_written(d)


def test_b30_block_size_31_and_32_work_and_shorter_than_pool_is_code_7(daemons):
    """B30, decision 4: subnet 10.73.2.0/24 with ``blockSize`` 31 and with ``blockSize`` 32 works (blocks are an
    internal unit; network/broadcast/gateway rules apply to the pool, not to each block): three ADDs each -> .2,
    .3, .4, in blocks 10.73.2.2/31 + 10.73.2.4/31, resp. 10.73.2.2/32 + .3/32 + .4/32, all owned by A (the
    blocks .0/31 and .0/32, .1/32 hold only the network address and the gateway and are never claimed). A
    ``blockSize`` shorter than the pool prefix (23 for a /24) -> code 7 naming blockSize, nothing written.

    The two block sizes are two networks (``net31``, ``net32``) on the same subnet: pools of different networks
    are independent."""
    d = daemons("A")
    short = cni_config("net23", subnet="10.73.2.0/24", blockSize=23)
    err = assert_err(add(d, short, "c1"), 7, "1.1.0")
    assert "blockSize" in err["msg"], err
    assert nothing_written(d)

    for size, want_blocks in ((31, ["10.73.2.2/31", "10.73.2.4/31"]),
                              (32, ["10.73.2.2/32", "10.73.2.3/32", "10.73.2.4/32"])):
        network = "net%d" % size
        conf = cni_config(network, subnet="10.73.2.0/24", blockSize=size)
        for n, cid in enumerate(("c1", "c2", "c3"), start=2):
            assert added(add(d, conf, cid))["ips"] == [{"address": "10.73.2.%d/24" % n, "gateway": "10.73.2.1"}]
        assert blocks(d, network) == {b: "A" for b in want_blocks}


# -- B34 ----------------------------------------------------------------------------------------------------------



def gauge(port: int, name: str, pool: str) -> float | None:
    """The sample ``name{pool="<pool>"}`` on the daemon's /metrics (``None`` when absent)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels.get("pool") == pool:
                return s.value
    return None


@pytest.mark.both_plugins
def test_b34_pool_exhausted_error_code_message_and_single_json(daemons, plugin):
    """B34 (calico cni-plugin #25, kubernetes #66481), single node, with the native plugin and the Python one:
    subnet 10.79.0.0/29 (usable .2-.6): ``ADD c1..c5`` -> .2-.6; ``ADD c6`` -> exit status 1 and stdout exactly
    one JSON object ``{"cniVersion":"1.1.0","code":100,"msg":"no free address in pool 10.79.0.0/29","details":
    "network net1: 5 of 5 usable addresses allocated; node A owns 1 block(s); 0 unclaimed blocks"}`` and nothing
    else (no log line, no second document, no traceback on either stream); ``ipamd_pool_exhausted_total`` +1 and
    the free-addresses gauge ``ipamd_pool_free_addresses`` reads 0; nothing is recorded for c6. ``DEL c6`` ->
    ok-empty (the gauge still 0); ``DEL c3`` -> the gauge reads 1; ``ADD c6`` -> .4, the gauge 0 again, the
    counter unchanged.

    The /29 is smaller than the base config's blockSize 28, which would be a block size shorter than the pool
    prefix (code 7 by decision 4), so blockSize is left out."""
    port = free_port()
    d = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    conf = cni_config("net1", subnet="10.79.0.0/29")
    pool = "net1/0a4f0000-29"
    for n in range(1, 6):
        assert address(add(d, conf, "c%d" % n)) == "10.79.0.%d/29" % (n + 1)
    before = metric_sum(port, "ipamd_pool_exhausted_total")
    assert gauge(port, "ipamd_pool_free_addresses", pool) == 0

    full = add(d, conf, "c6")
    assert full.rc == 1, full
    err = assert_err(full, 100, "1.1.0")
    assert full.stdout.count("{") == 1 and full.stdout.rstrip("\n").endswith("}"), full  # one object, no other
    assert err == {"cniVersion": "1.1.0", "code": 100, "msg": "no free address in pool 10.79.0.0/29",
                   "details": "network net1: 5 of 5 usable addresses allocated; node A owns 1 block(s); "
                              "0 unclaimed blocks"}, err
    assert "Traceback" not in full.stderr, full
    assert metric_sum(port, "ipamd_pool_exhausted_total") == before + 1
    assert gauge(port, "ipamd_pool_exhausted_total", pool) == 1
    assert gauge(port, "ipamd_pool_free_addresses", pool) == 0
    assert gauge(port, "ipamd_pool_allocated_addresses", pool) == 5
    assert read_handle(d, "net1", "c6", "eth0") is None

    assert_ok_empty(delete(d, conf, "c6"))
    assert gauge(port, "ipamd_pool_free_addresses", pool) == 0
    assert_ok_empty(delete(d, conf, "c3"))
    assert read_handle(d, "net1", "c3", "eth0") is None
    assert gauge(port, "ipamd_pool_free_addresses", pool) == 1
    assert address(add(d, conf, "c6")) == "10.79.0.4/29"
    assert handle_ips(d, "net1", "c6", "eth0") == ["10.79.0.4/29"]
    assert gauge(port, "ipamd_pool_free_addresses", pool) == 0
    assert metric_sum(port, "ipamd_pool_exhausted_total") == before + 1
    assert counts(d)["ips"] == 5


def test_b34_two_nodes_full_block_borrows_from_the_other_nodes_block_unless_strict_affinity(daemons):
    """B34 two-node case, decision 5: subnet 10.80.0.0/27, ``blockSize`` 28 (A gets .0/28 = 14 usable, .2-.15; B
    gets .16/28 = 15 usable, .16-.30). Fill A's block on A; B claims .16/28 with one ADD (-> .16).

    - With ``strictAffinity`` on the pool, one more ``ADD @A`` -> exit 1, one JSON object with code 100 whose msg
      names strictAffinity and whose details count the 14 free addresses in blocks owned by other nodes;
      ``ipamd_pool_exhausted_total`` +1 on A; nothing recorded.
    - Without it (borrowing is the default), the same ``ADD @A`` succeeds with the lowest free address of B's
      block, .17, whose address record (and handle) names node A, while the block stays B's.
    """
    port = free_port()
    a = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    b = daemons("B")
    conf = cni_config("net1", subnet="10.80.0.0/27", blockSize=28)
    strict = cni_config("net1", subnet="10.80.0.0/27", blockSize=28, strictAffinity=True)
    for n in range(2, 16):
        assert address(add(a, conf, "a%d" % n)) == "10.80.0.%d/27" % n
    assert blocks(a, "net1") == {"10.80.0.0/28": "A"}
    assert address(add(b, conf, "b1")) == "10.80.0.16/27"
    assert blocks(a, "net1") == {"10.80.0.0/28": "A", "10.80.0.16/28": "B"}

    before = metric_sum(port, "ipamd_pool_exhausted_total")
    refused = add(a, strict, "a16")
    assert refused.rc == 1, refused
    err = assert_err(refused, 100, "1.1.0")
    assert set(err) == {"cniVersion", "code", "msg", "details"}, err
    assert err["msg"] == "no free address for node A in pool 10.80.0.0/27 (strictAffinity)", err
    assert "14 free address(es) in blocks owned by other nodes" in err["details"], err
    assert "0 unclaimed blocks" in err["details"], err
    assert metric_sum(port, "ipamd_pool_exhausted_total") == before + 1
    assert read_handle(a, "net1", "a16", "eth0") is None and counts(a)["ips"] == 15

    borrowed = ipaddress.ip_interface(address(add(a, conf, "a16")))
    assert str(borrowed) == "10.80.0.17/27", borrowed
    key = "ips/net1/v4/%08x" % int(borrowed.ip)
    assert read_kind(a, "ips/")[key] == {"handle": "net1/a16/eth0", "node": "A", "pool": "net1/0a500000-27"}
    handle = read_handle(a, "net1", "a16", "eth0")
    assert handle is not None and handle["node"] == "A", handle
    assert blocks(a, "net1") == {"10.80.0.0/28": "A", "10.80.0.16/28": "B"}
    assert counts(a)["ips"] == 16
