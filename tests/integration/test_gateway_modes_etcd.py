"""Gateway modes against real etcd and real daemons (docs/configuration.md "Gateway modes"): in ``block`` mode two
nodes each get their own block's gateway and prefix, never borrow, and the pool record in etcd carries the mode;
``pointToPoint`` beside it in a dual-stack network. The ``daemons`` fixture runs the invariant check after each
test (invariant 2 with the block gateways reserved).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from harness import cni_config, daemon_ipamctl, run_cni

from ipamd.domain.model import PoolRecord
from ipamd.store.etcd import EtcdStore


def test_two_nodes_in_block_mode_each_get_their_own_blocks_gateway(daemons):
    """Node A claims 10.34.0.0/26 (gateway .1), node B 10.34.0.64/26 (gateway .65): each pod carries its block's
    /26 and its node's gateway, no pod ever holds a block's first, gateway or last address, and an address
    requested in the other node's block is refused (101: block mode never borrows). CHECK passes for both."""
    a, b = daemons("A"), daemons("B")
    conf = cni_config(name="blk", version="1.0.0", subnet="10.34.0.0/24", gatewayMode="block", blockSize=26)
    got = {}
    for name, d, cid in (("a1", a, "a1"), ("b1", b, "b1"), ("a2", a, "a2"), ("b2", b, "b2")):
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id=cid)
        assert out.rc == 0, out
        got[name] = [(i["address"], i["gateway"]) for i in out.json["ips"]]
        assert "routes" not in out.json  # block mode adds none of its own
    assert got == {"a1": [("10.34.0.2/26", "10.34.0.1")], "b1": [("10.34.0.66/26", "10.34.0.65")],
                   "a2": [("10.34.0.3/26", "10.34.0.1")], "b2": [("10.34.0.67/26", "10.34.0.65")]}
    for d, cid in ((a, "a1"), (b, "b1")):
        add = run_cni("ADD", conf, socket=d.cni_socket, container_id=cid)  # a repeated ADD: the same answer
        check = run_cni("CHECK", {**conf, "prevResult": add.json}, socket=d.cni_socket, container_id=cid)
        assert (check.rc, check.stdout) == (0, ""), check

    other = {**conf, "args": {"cni": {"ips": ["10.34.0.10"]}}}
    refused = run_cni("ADD", other, socket=b.cni_socket, container_id="b3")
    assert refused.code == 101 and "node A" in refused.json["msg"], refused
    gw = {**conf, "args": {"cni": {"ips": ["10.34.0.65"]}}}
    refused = run_cni("ADD", gw, socket=b.cni_socket, container_id="b4")
    assert refused.code == 101 and "gateway of its block" in refused.json["msg"], refused

    store = EtcdStore(a.endpoints, a.prefix)
    try:
        kvs, _ = store.read("pools/blk/", "pools/blk0", 5.0)
    finally:
        store.close()
    (kv,) = kvs
    rec = PoolRecord.decode(kv.value)
    assert (rec.range.mode, rec.range.gateway, rec.block_prefix) == ("block", None, 26)
    assert json.loads(kv.value)["gatewayMode"] == "block"
    listed = daemon_ipamctl(a, "pools", "-o", "json")  # the operator's view names the mode
    assert listed.returncode == 0, listed.stderr
    (pool,) = json.loads(listed.stdout)["pools"]
    assert (pool["gatewayMode"], pool["gateway"], pool["size"]) == ("block", None, 4 * 61)
    table = daemon_ipamctl(a, "pools")
    assert table.stdout.splitlines()[1].split()[4] == "block", table.stdout

    check = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", a.endpoints,
                            "--etcd-prefix", a.prefix], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr
    for d, cid in ((a, "a1"), (b, "b1"), (a, "a2"), (b, "b2")):
        assert run_cni("DEL", conf, socket=d.cni_socket, container_id=cid).rc == 0


def test_dual_stack_block_ipv4_and_point_to_point_ipv6(daemons):
    """Per-range modes in one network: IPv4 in block mode, IPv6 in pointToPoint (a /128, gateway fe80::1, and the
    ::/0 default route the mode adds because the configuration has no routes)."""
    d = daemons("A")
    conf = cni_config(name="ds", version="1.0.0", subnet=None, gatewayMode="block", blockSize=26,
                      ranges=[[{"subnet": "10.35.0.0/24"}], [{"subnet": "fd35::/120", "gatewayMode": "pointToPoint"}]])
    out = run_cni("ADD", conf, socket=d.cni_socket, container_id="c1")
    assert out.rc == 0, out
    assert out.json["ips"] == [{"address": "10.35.0.2/26", "gateway": "10.35.0.1"},
                               {"address": "fd35::1/128", "gateway": "fe80::1"}]
    assert out.json["routes"] == [{"dst": "::/0", "gw": "fe80::1"}]
    check = run_cni("CHECK", {**conf, "prevResult": out.json}, socket=d.cni_socket, container_id="c1")
    assert (check.rc, check.stdout) == (0, ""), check
    assert run_cni("DEL", conf, socket=d.cni_socket, container_id="c1").rc == 0


def test_switch_to_block_mode_never_gives_a_live_pods_address_as_gateway(daemons):
    """A network in subnet mode (blockSize 28) holds 10.36.0.2-.17; its configuration switches to gatewayMode
    block. Block 10.36.0.16/28's gateway .17 is pod s15's address: the next ADD claims 10.36.0.32/28 (pod .34/28,
    gateway .33) instead of giving .18/28 with gateway .17, and an address requested in 10.36.0.16/28 is 101 (also
    from the restarted daemon, which has not read that block yet).
    After s15's DEL the block serves again. ``ipamctl check`` exits 0 (the old pods are warnings)."""
    a = daemons("A")
    sub = cni_config(name="sw", version="1.0.0", subnet="10.36.0.0/24", blockSize=28)
    for i in range(16):
        assert run_cni("ADD", sub, socket=a.cni_socket, container_id="s%d" % i).rc == 0
    blk = cni_config(name="sw", version="1.0.0", subnet="10.36.0.0/24", blockSize=28, gatewayMode="block")
    out = run_cni("ADD", blk, socket=a.cni_socket, container_id="b1")
    assert out.rc == 0 and out.json["ips"] == [{"address": "10.36.0.34/28", "gateway": "10.36.0.33"}], out
    req = run_cni("ADD", {**blk, "args": {"cni": {"ips": ["10.36.0.20"]}}}, socket=a.cni_socket, container_id="b2")
    assert req.code == 101 and "gateway 10.36.0.17 is held" in req.json["msg"], req
    a.stop()  # a restarted daemon has not read the block's addresses: it reads them before answering
    a.start()
    req = run_cni("ADD", {**blk, "args": {"cni": {"ips": ["10.36.0.21"]}}}, socket=a.cni_socket, container_id="b2")
    assert req.code == 101 and "gateway 10.36.0.17 is held" in req.json["msg"], req
    check = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", a.endpoints,
                            "--etcd-prefix", a.prefix], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr
    assert run_cni("DEL", sub, socket=a.cni_socket, container_id="s15").rc == 0
    out = run_cni("ADD", blk, socket=a.cni_socket, container_id="b3")
    assert out.rc == 0 and out.json["ips"] == [{"address": "10.36.0.18/28", "gateway": "10.36.0.17"}], out
    for cid in ["s%d" % i for i in range(15)] + ["b1", "b3"]:
        assert run_cni("DEL", blk, socket=a.cni_socket, container_id=cid).rc == 0


def test_block_mode_on_a_pool_with_host_blocks_fixed_is_code_7(daemons):
    """A pool first claimed with blockSize 32 (subnet mode), then configured in gatewayMode block with the default
    /26: the record's /32 is in force, no block holds a pod. ADD is 7 naming the fixed size (was 100, "0 unclaimed
    blocks"); the live pod keeps its address, ``ipamctl check`` exits 0."""
    a = daemons("A")
    sub = cni_config(name="hb", version="1.0.0", subnet="10.37.0.0/24", blockSize=32)
    assert run_cni("ADD", sub, socket=a.cni_socket, container_id="s0").rc == 0
    blk = cni_config(name="hb", version="1.0.0", subnet="10.37.0.0/24", gatewayMode="block")
    out = run_cni("ADD", blk, socket=a.cni_socket, container_id="b1")
    assert out.code == 7 and "has blocks of /32, fixed by its first claim" in out.json["msg"], out
    check = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", a.endpoints,
                            "--etcd-prefix", a.prefix], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr
    assert run_cni("DEL", sub, socket=a.cni_socket, container_id="s0").rc == 0


def test_switch_to_subnet_mode_while_a_pod_holds_the_gateway_is_code_7(daemons):
    """pointToPoint hands out network+1 (10.38.0.1/32 to p0 on node A). The network's configuration switches to
    subnet mode, whose gateway is .1: node B's ADD (which would claim a block) is 7 naming p0 (it used to give
    every new pod gateway 10.38.0.1, p0's address), the pool record stays pointToPoint, and B's next ADD with the
    old configuration is answered at once (the refused claim left nothing in flight). After p0's DEL the new
    configuration works: 10.38.0.x/24 via .1."""
    a, b = daemons("A"), daemons("B")
    ptp = cni_config(name="p2s", version="1.0.0", subnet="10.38.0.0/24", gatewayMode="pointToPoint", blockSize=28)
    out = run_cni("ADD", ptp, socket=a.cni_socket, container_id="p0")
    assert out.rc == 0 and out.json["ips"] == [{"address": "10.38.0.1/32", "gateway": "169.254.1.1"}], out
    sub = cni_config(name="p2s", version="1.0.0", subnet="10.38.0.0/24", blockSize=28)
    refused = run_cni("ADD", sub, socket=b.cni_socket, container_id="s1")
    assert refused.code == 7 and "gateway 10.38.0.1 of pool 10.38.0.0/24 is the address of p2s/p0/eth0" \
        in refused.json["msg"], refused
    store = EtcdStore(a.endpoints, a.prefix)
    try:
        (kv,) = store.read("pools/p2s/", "pools/p2s0", 5.0)[0]
    finally:
        store.close()
    assert PoolRecord.decode(kv.value).range.mode == "pointToPoint"
    started = time.monotonic()
    again = run_cni("ADD", ptp, socket=b.cni_socket, container_id="p1")
    assert again.rc == 0 and time.monotonic() - started < 2.0, again
    repeated = run_cni("ADD", sub, socket=a.cni_socket, container_id="p0")  # B06: the holder's retried ADD
    assert repeated.rc == 0 and repeated.json["ips"] == [{"address": "10.38.0.1/32", "gateway": "169.254.1.1"}]
    assert run_cni("DEL", ptp, socket=a.cni_socket, container_id="p0").rc == 0
    out = run_cni("ADD", sub, socket=b.cni_socket, container_id="s1")
    assert out.rc == 0 and out.json["ips"][0]["gateway"] == "10.38.0.1", out
    assert out.json["ips"][0]["address"] != "10.38.0.1/24"
    for d, conf, cid in ((b, ptp, "p1"), (b, sub, "s1")):
        assert run_cni("DEL", conf, socket=d.cni_socket, container_id=cid).rc == 0
