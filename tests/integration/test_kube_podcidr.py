"""Node podCIDRs served as blocks (ipamd/podcidr.py, issue 8 item 6) against real etcd, and Kubernetes mode in real
daemons (``--kubernetes --kubeconfig``) against the fake API server (tests/fakekube.py) through the real client.

Two nodes whose podCIDRs are identical or overlap race for the same blocks: etcd's create-if-absent compare gives
each block exactly one owner, the loser names the winner and never takes it over. Every scenario ends with the
invariants of docs/etcd-layout.md checked against etcd.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fakekube import FakeKube, write_kubeconfig
from harness import IPAMD, EtcdCluster, assert_invariants, cni_config, run_cni, wait_for

from ipamd.domain.addr import Block
from ipamd.domain.model import (
    POOLS,
    POOLSPECS,
    PoolRecord,
    block_key,
    decode_block_record,
    encode_block_record,
    pool_key,
)
from ipamd.domain.netconf import parse_netconf
from ipamd.namedpools import PoolAdmin
from ipamd.podcidr import ClaimReport, PodCidrClaimer
from ipamd.store.base import Put, prefix_end
from ipamd.store.etcd import EtcdStore

POOL = "net1/0a3e0000-16"   # 10.62.0.0/16, blocks of /26


@pytest.fixture
def store(etcd: EtcdCluster, prefix: str) -> Iterator[EtcdStore]:
    s = EtcdStore(etcd.endpoints, prefix)
    conf = parse_netconf(cni_config("net1", subnet="10.62.0.0/16"), "net1")
    s.txn([], [Put(pool_key(POOL), PoolRecord("net1", conf.range_sets[0][0].range, 26).encode())], [], 2.0)
    yield s
    s.close()
    assert_invariants(etcd.endpoints, prefix)


def owners(store: EtcdStore, prefix: str = "blocks/") -> dict[str, str]:
    kvs, _ = store.read(prefix, prefix_end(prefix), 2.0)
    return {Block.from_key(kv.key.rsplit("/", 1)[1]).cidr(): decode_block_record(kv.value) for kv in kvs}


def race(etcd: EtcdCluster, prefix: str, claims: dict[str, list[str]]) -> dict[str, ClaimReport]:
    """Each node claims its podCIDRs through its own etcd client, all released together from a barrier."""
    barrier = threading.Barrier(len(claims))
    reports: dict[str, ClaimReport] = {}
    errors: list[BaseException] = []

    def run(node: str, cidrs: list[str]) -> None:
        s = EtcdStore(etcd.endpoints, prefix)
        try:
            claimer = PodCidrClaimer(s, node, lambda: cidrs)
            barrier.wait(10)
            reports[node] = claimer.claim(cidrs)
        except BaseException as exc:
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=item) for item in claims.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return reports


def test_identical_pod_cidrs_one_owner_per_block(etcd: EtcdCluster, prefix: str, store: EtcdStore) -> None:
    reports = race(etcd, prefix, {"a": ["10.62.1.0/24"], "b": ["10.62.1.0/24"]})
    blocks = owners(store)
    assert sorted(blocks) == ["10.62.1.0/26", "10.62.1.128/26", "10.62.1.192/26", "10.62.1.64/26"]
    assert set(blocks.values()) <= {"a", "b"}
    for node, other in (("a", "b"), ("b", "a")):
        mine = {p.block.cidr() for p in reports[node].claimed}
        assert mine == {b for b, o in blocks.items() if o == node}
        # the loser of each block names its winner, and holds none of them
        assert {(p.block.cidr(), o) for p, o in reports[node].conflicts} == {(b, other) for b, o in blocks.items()
                                                                              if o == other}
    # a later round changes nothing: no block is ever taken over
    again = PodCidrClaimer(store, "b", lambda: None).claim(["10.62.1.0/24"])
    assert not again.claimed and owners(store) == blocks


def test_overlapping_pod_cidrs_one_owner_per_block(etcd: EtcdCluster, prefix: str, store: EtcdStore) -> None:
    reports = race(etcd, prefix, {"a": ["10.62.0.0/23"], "b": ["10.62.1.0/24"]})
    blocks = owners(store)
    assert len(blocks) == 8                          # the /23 is eight /26 blocks, each with one owner
    assert all(o == "a" for b, o in blocks.items() if b.startswith("10.62.0."))
    assert all(o in ("a", "b") for b, o in blocks.items() if b.startswith("10.62.1."))
    assert all(ipaddress.ip_network(p.block.cidr()).subnet_of(ipaddress.ip_network("10.62.1.0/24"))
               for p in reports["b"].claimed)
    assert len(reports["a"].claimed) + len(reports["b"].claimed) == 8


# -- real daemons in Kubernetes mode -----------------------------------------------------------------------------------

def test_daemons_claim_their_pod_cidrs_and_allocate_from_them(daemons: Callable[..., object], etcd: EtcdCluster,
                                                              prefix: str, fake: FakeKube, workdir: str) -> None:
    fake.add_node("a", ("10.63.1.0/24",))
    fake.add_node("b", ("10.63.2.0/24",))
    pool = "net-k/0a3f0000-16"
    s = EtcdStore(etcd.endpoints, prefix)
    try:  # a block of b's podCIDR that some other node holds already
        s.txn([], [Put(block_key(pool, Block(4, int(ipaddress.ip_address("10.63.2.64")), 26)),
                       encode_block_record("zzz"))], [], 2.0)
        kubeconfig = write_kubeconfig(os.path.join(workdir, "kubeconfig"), fake.url, fake.token)
        args = ["--kubernetes", "--kubeconfig", kubeconfig, "--kube-pod-cidr-blocks"]
        da = daemons(node="a", extra_args=args)
        db = daemons(node="b", extra_args=args)
        conf = cni_config("net-k", subnet="10.63.0.0/16", blockSize=26)
        first = run_cni("ADD", conf, socket=da.cni_socket, container_id="k1")  # type: ignore[attr-defined]
        assert first.code is None, first
        want = {"10.63.1.0/26": "a", "10.63.1.64/26": "a", "10.63.1.128/26": "a", "10.63.1.192/26": "a",
                "10.63.2.0/26": "b", "10.63.2.64/26": "zzz", "10.63.2.128/26": "b", "10.63.2.192/26": "b"}
        # within seconds of the pool's creation (the claimers react to the pool record, not to a 30 s timer)
        wait_for(lambda: all(owners(s, "blocks/%s/" % pool).get(b) == o for b, o in want.items()),
                 "both nodes to claim their podCIDR blocks", timeout=15)
        # b has no block but its podCIDR's: its first ADD takes the lowest address of its lowest one
        out = run_cni("ADD", conf, socket=db.cni_socket, container_id="k2")  # type: ignore[attr-defined]
        assert out.ips == ["10.63.2.0/16"], out
        assert "block 10.63.2.64/26 of pool net-k/0a3f0000-16 lies in podCIDR 10.63.2.0/24 of node b but is owned " \
               "by node zzz: not taken over" in db.log()  # type: ignore[attr-defined]
        # each daemon watches its own node's pods and every node
        for node in ("a", "b"):
            assert fake.requests_of("/api/v1/pods", fieldSelector="spec.nodeName=%s" % node, watch="true")
        assert fake.requests_of("/api/v1/nodes", watch="true", allowWatchBookmarks="true")
        for cid, d in (("k1", da), ("k2", db)):
            assert run_cni("DEL", conf, socket=d.cni_socket, container_id=cid).code is None  # type: ignore
        assert owners(s, "blocks/%s/" % pool)["10.63.2.64/26"] == "zzz"
    finally:
        s.close()


def test_daemon_with_an_unusable_kubeconfig_exits_2(etcd: EtcdCluster, prefix: str, workdir: str) -> None:
    # B54: a kubeconfig without a context is one log line and exit status 2, before the daemon serves
    path = Path(workdir) / "kubeconfig"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": []}))
    p = subprocess.run([*IPAMD, "--kubernetes", "--kubeconfig", str(path), "--node-name", "a", "--etcd-endpoints",
                        etcd.endpoints, "--etcd-prefix", prefix, "--cni-socket", os.path.join(workdir, "c.sock"),
                        "--grpc-socket", os.path.join(workdir, "g.sock")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "--kubeconfig %s" % path in lines[0], p.stderr
    assert not os.path.exists(os.path.join(workdir, "c.sock"))  # it never served


def test_no_block_claimed_in_a_named_pool_deleted_meanwhile(etcd: EtcdCluster, prefix: str,
                                                            store: EtcdStore) -> None:
    """A claim round reads ``pools/`` and sees named pool ``np``; the pool (empty) is deleted before the round's
    claim transactions: spec, pool record, blocks gone. Before, the claim (create-if-absent on the block key only)
    then wrote ``blocks/@np/…`` into the deleted pool, a block no spec and no pool record explains, which the next
    ``pool create np`` would inherit. Now a claim in a named pool compares that its spec exists (as an ADD compares
    it): nothing is written and nothing is reported as another node's."""
    admin = PoolAdmin(store)
    spec = admin.create({"name": "np", "cidr": "10.63.0.0/24", "blockSize": 26})
    pool = spec.spec.pool()
    store.txn([], [Put(pool_key(pool.id), PoolRecord(pool.network, pool.range, 26).encode())], [], 2.0)

    class DeleteAfterPoolsRead:
        """The store, with ``ipamctl pool delete np`` landing right after the round's read of ``pools/``."""

        def __init__(self) -> None:
            self.done = False

        def read(self, key: str, range_end: str | None, timeout: float, **kw: Any) -> Any:
            out = store.read(key, range_end, timeout, **kw)
            if key == POOLS and not self.done:
                self.done = True
                admin.delete("np", time.monotonic() + 5)
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

    wrapped = DeleteAfterPoolsRead()
    report = PodCidrClaimer(cast(Any, wrapped), "a", lambda: None).claim(["10.63.0.0/25"])
    assert wrapped.done
    assert owners(store, "blocks/@np/") == {}
    assert not report.claimed and not report.conflicts, report
    assert not store.read(POOLSPECS, prefix_end(POOLSPECS), 2.0)[0]
