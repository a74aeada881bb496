"""Block lifecycle against real etcd, real daemons and real shim processes (docs/decisions.md "Block lifecycle"):
empty blocks released after ``--empty-block-release-seconds`` and claimable again, blocks without an allocatable
address never claimed (IPv4 and IPv6), ``maxBlocksPerNode`` (borrow, or 100 under strictAffinity), and block
claims while the etcd leader is SIGKILLed. Every scenario ends with the invariant check (the ``daemons`` fixture,
or :func:`harness.assert_invariants`), and ``ipamctl check`` where named.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Daemon, assert_invariants, cni_config, metric_sum, run_cni, wait_for
from test_field_concurrency import block_owners, read_kind

from ipamd.embedded import free_port

RELEASE_FAST = ["--empty-block-release-seconds", "1"]


def add(conf: dict, d, cid: str):
    return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid)


def delete(conf: dict, d, cid: str):
    return run_cni("DEL", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid)


def ipamctl_check(endpoints: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", endpoints,
                           "--etcd-prefix", prefix], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_empty_blocks_released_after_the_time_and_claimed_by_another_node(daemons):
    """Node A allocates into three blocks, then DELs everything: with ``--empty-block-release-seconds 1`` only its
    lowest block stays owned (a node keeps one block per pool); node B's next ADDs claim the released blocks,
    lowest first. ``ipamctl check`` clean."""
    a = daemons("A", extra_args=RELEASE_FAST)
    conf = cni_config("net1", subnet="10.30.0.0/24", blockSize=28)
    cids = ["c%d" % i for i in range(31)]  # .0/28 holds 14 usable addresses, .16/28 16, then one in .32/28
    for cid in cids:
        assert add(conf, a, cid).rc == 0
    assert block_owners(a.endpoints, a.prefix) == {net("10.30.0.%d/28" % f): "A" for f in (0, 16, 32)}
    for cid in cids:
        assert delete(conf, a, cid).rc == 0

    wait_for(lambda: len(block_owners(a.endpoints, a.prefix)) == 1, "A to release two of its three empty blocks",
             timeout=30)
    assert block_owners(a.endpoints, a.prefix) == {net("10.30.0.0/28"): "A"}
    assert Path(a.log_path).read_text().count("released block") == 2  # one INFO line per release

    b = daemons("B", extra_args=RELEASE_FAST)
    got = [add(conf, b, "b%d" % i) for i in range(17)]
    assert [o.rc for o in got] == [0] * 17
    assert got[0].ips == ["10.30.0.16/24"] and got[16].ips == ["10.30.0.32/24"]
    assert block_owners(a.endpoints, a.prefix) == {net("10.30.0.0/28"): "A", net("10.30.0.16/28"): "B",
                                                   net("10.30.0.32/28"): "B"}
    # A, whose lone block stayed, still allocates from it
    assert add(conf, a, "a-again").ips == ["10.30.0.2/24"]
    check = ipamctl_check(a.endpoints, a.prefix)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr


def test_blocks_wholly_excluded_are_never_claimed_ipv4_and_ipv6(daemons):
    """Item 2: a dual-stack network whose exclude list covers the first IPv4 /28 block (gateway included) and the
    first IPv6 /122 block of a /64: the first ADD gets 10.31.0.16 and fd00:31::40, a second node the next blocks,
    and no block record is ever written for the excluded blocks."""
    a, b = daemons("A"), daemons("B")
    conf = cni_config("net1", ranges=[[{"subnet": "10.31.0.0/24"}], [{"subnet": "fd00:31::/64"}]], blockSize=28,
                      blockSize6=122, exclude=["10.31.0.0/28", "fd00:31::/122"])
    first = add(conf, a, "a1")
    assert first.rc == 0 and first.ips == ["10.31.0.16/24", "fd00:31::40/64"], first
    second = add(conf, b, "b1")
    assert second.rc == 0 and second.ips == ["10.31.0.32/24", "fd00:31::80/64"], second
    assert block_owners_any(a) == {"10.31.0.16/28": "A", "10.31.0.32/28": "B", "fd00:31::40/122": "A",
                                   "fd00:31::80/122": "B"}


def block_owners_any(d) -> dict[str, str]:
    """Block records of both families -> owner (``block_owners`` parses IPv4 keys only)."""
    import json

    from ipamd.domain.addr import Block

    return {Block.from_key(k.rsplit("/", 1)[1]).cidr(): json.loads(v)["node"]
            for k, v in read_kind(d.endpoints, d.prefix, "blocks/").items()}


def test_max_blocks_per_node_borrow_or_100_under_strict_affinity(daemons):
    """Item 3: ``maxBlocksPerNode`` 1 on a /26 of /28 blocks. B owns .16/28 with one address; A fills .0/28. A's
    next ADD borrows B's .17 instead of claiming .32/28; with ``strictAffinity`` (another network, same shape) it
    fails with 100 whose details name the limit, and no third block is claimed in either network."""
    a, b = daemons("A"), daemons("B")
    for name, strict in (("net1", False), ("net2", True)):
        conf = cni_config(name, subnet="10.32.0.0/26", blockSize=28, maxBlocksPerNode=1, strictAffinity=strict)
        assert add(conf, b, "b-" + name).ips == ["10.32.0.2/26"]  # B claims .0/28 first
        got = [add(conf, a, "%s-%d" % (name, i)) for i in range(16)]  # .16/28: 16 usable
        assert [o.rc for o in got] == [0] * 16
        assert got[-1].ips == ["10.32.0.31/26"]
        more = add(conf, a, name + "-more")
        if strict:
            assert more.rc != 0 and more.code == 100, more
            details = more.json["details"]
            assert "maxBlocksPerNode 1 reached" in details and "strictAffinity" in details, details
            assert "13 free address(es) in blocks owned by other nodes" in details, details
        else:
            assert more.rc == 0 and more.ips == ["10.32.0.3/26"], more  # borrowed from B's block
        owners = {k: v for k, v in block_owners_any(a).items()}
        assert owners == {"10.32.0.0/28": "B", "10.32.0.16/28": "A"}, owners
    check = ipamctl_check(a.endpoints, a.prefix)
    assert check.returncode == 0, check.stdout + check.stderr


CLAIM_NODES = "ABCD"
ADDS_PER_NODE = 12
KILL_AFTER = 8


def test_block_claims_survive_an_etcd_leader_kill(etcd_cluster, daemons):
    """Item 9: four daemons on a three-member etcd, each running 12 ADDs three at a time in a fresh /24 of /30
    blocks (so about every third ADD claims a block); the etcd leader is SIGKILLed after the 8th answer. Every ADD
    succeeds or answers 11; every acknowledged ADD is in etcd afterwards with the address it was given; no address
    twice; every address lies in a block owned by the node that answered; one owner per block; retrying the failed
    ones succeeds; invariants and ``ipamctl check`` clean on the survivors."""
    nodes = {n: daemons(n) for n in CLAIM_NODES}
    conf = cni_config("net1", subnet="10.33.0.0/24", blockSize=30)
    answered = 0
    enough = threading.Event()
    lock = threading.Lock()

    def one(node: str, cid: str):
        out = add(conf, nodes[node], cid)
        nonlocal answered
        with lock:
            answered += 1
            if answered >= KILL_AFTER:
                enough.set()
        return out

    plan = [(n, "%s%d" % (n, i)) for i in range(ADDS_PER_NODE) for n in CLAIM_NODES]
    leader = etcd_cluster.leader()  # asked first: asking takes etcdctl calls, long enough for every ADD to finish
    with ThreadPoolExecutor(max_workers=3 * len(CLAIM_NODES)) as pool:
        futures = [pool.submit(one, n, cid) for n, cid in plan]
        assert enough.wait(120), "the ADDs never reached %d answers" % KILL_AFTER
        leader.kill()
        with lock:
            at_kill = answered
        outs = {cid: f.result() for (_, cid), f in zip(plan, futures, strict=True)}

    assert at_kill < len(plan), "every ADD had answered before the kill"
    survivors = ",".join(m.endpoint for m in etcd_cluster.members if m.proc is not None)
    for cid, out in outs.items():
        assert out.rc == 0 or out.code == 11, (cid, out)
    acked = {cid: out.ips[0] for cid, out in outs.items() if out.rc == 0}
    print("leader killed after %d of %d answers; %d ADDs answered 11" % (at_kill, len(plan), len(plan) - len(acked)))
    assert len(set(acked.values())) == len(acked), "duplicate addresses: %s" % sorted(acked.values())
    etcd_cluster.wait_healthy()
    handles = read_handles(survivors, nodes["A"].prefix)
    for cid, cidr in acked.items():  # every acknowledged ADD is in etcd with the address it answered
        assert handles.get(cid) == [cidr], (cid, cidr, handles.get(cid))
    node_of = dict((cid, n) for n, cid in plan)
    for cid in sorted(set(outs) - set(acked)):
        out = add(conf, nodes[node_of[cid]], cid)
        assert out.rc == 0, (cid, out)
        acked[cid] = out.ips[0]
    assert len(set(acked.values())) == len(plan)
    owners = block_owners(survivors, nodes["A"].prefix)
    assert len(owners) >= 3 * len(CLAIM_NODES), owners  # 2-4 usable addresses per /30 block: many claims
    for cid, cidr in acked.items():
        ipa = ipaddress.ip_interface(cidr).ip
        blocks = [b for b in owners if ipa in b]
        assert len(blocks) == 1 and owners[blocks[0]] == node_of[cid], (cid, cidr, blocks)
    counts = assert_invariants(survivors, nodes["A"].prefix)
    assert (counts["ips"], counts["handles"]) == (len(plan), len(plan))
    check = ipamctl_check(survivors, nodes["A"].prefix)
    assert check.returncode == 0, check.stdout + check.stderr
    leader.start(new=False)  # so the fixture's own check (all three endpoints) can run at teardown
    etcd_cluster.wait_healthy()


def read_handles(endpoints: str, prefix: str) -> dict[str, list[str]]:
    """containerID -> the addresses its handle lists."""
    import json

    out = {}
    for value in read_kind(endpoints, prefix, "handles/").values():
        rec = json.loads(value)
        out[rec["containerID"]] = [ip["address"] for ip in rec["ips"]]
    return out




@pytest.mark.parametrize("failpoint", ["blockrelease.before_release=pause:2:1", "blockrelease.read=error:3"])
def test_block_release_loop_survives_etcd_killed_and_unexpected_errors(own_etcd, prefix, workdir, failpoint):
    """B53 for the ``blockrelease`` loop: etcd SIGKILLed while the loop is paused just before its release
    transaction (the release meets a dead etcd), or a non-etcd error raised in its read three times. The loop
    logs, counts (``ipamd_background_errors_total{loop="blockrelease"}``) and goes on: the empty block is released
    afterwards (``ipamd_blocks_released_total`` 1) and the invariants hold."""
    port = free_port()
    d = Daemon(own_etcd.endpoints, prefix, "A", workdir, env={"IPAMD_FAILPOINTS": failpoint},
               extra_args=[*RELEASE_FAST, "--metrics-address", "127.0.0.1:%d" % port, "--etcd-timeout", "0.5",
                           "--request-timeout", "3"])
    d.start()
    try:
        conf = cni_config("net1", subnet="10.34.0.0/24", blockSize=28)
        for i in range(15):  # .0/28 full, one address in .16/28
            assert add(conf, d, "c%d" % i).rc == 0
        assert delete(conf, d, "c14").rc == 0  # .16/28 is empty now; .0/28 keeps the node's one block anyway
        if failpoint.startswith("blockrelease.before_release"):
            wait_for(lambda: "failpoint blockrelease.before_release: pause" in Path(d.log_path).read_text(),
                     "the release pause", timeout=30)
            member = own_etcd.members[0]
            member.kill()
            time.sleep(2.5)  # the paused release now runs against a dead etcd, fails, backs off, retries
            member.start(new=False)
            own_etcd.wait_healthy()
        wait_for(lambda: metric_sum(port, "ipamd_blocks_released_total") == 1, "the release", timeout=40)
        assert metric_sum(port, "ipamd_background_errors_total", loop="blockrelease") > 0
        assert block_owners(own_etcd.endpoints, prefix) == {net("10.34.0.0/28"): "A"}
        assert d.proc is not None and d.proc.poll() is None
        out = add(conf, d, "c-after")
        assert out.rc == 0 and out.ips == ["10.34.0.16/24"], out  # claims the released block again
    finally:
        assert d.stop() == 0
    assert_invariants(own_etcd.endpoints, prefix)
