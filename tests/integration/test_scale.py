"""Cost that does not grow (docs/benchmarks.md), against real etcd and real daemons: field cases B47, B48 and B49.

Speed itself is measured in bench/core.py; these tests pin the properties that make it flat, counted from etcd's
own metrics: one transaction and no read per ADD with thousands held, no code 11 on a healthy etcd, GC that never
answers 999 and always finishes, a herd of daemons within 1.1 transactions per ADD.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import Daemon, EtcdCluster, cni_config, run_cni
from ipamd_client import IpamClient

from ipamd.domain.errors import IpamError


def allocate_many(daemon: Daemon, conf: dict, ids: list[str], threads: int = 16) -> list[IpamError]:
    """Allocate one attachment per id through the daemon's gRPC API, ``threads`` at a time; returns the errors."""
    errors: list[IpamError] = []

    def one(chunk: list[str]) -> None:
        with IpamClient(daemon.grpc_socket, timeout=60) as client:
            for cid in chunk:
                try:
                    client.allocate(conf, cid, "eth0")
                except IpamError as exc:
                    errors.append(exc)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, [ids[i::threads] for i in range(threads)]))
    return errors


def txn_and_range(etcd: EtcdCluster) -> tuple[float, float]:
    if not etcd.members:
        pytest.skip("counts etcd's own metrics per member: needs the etcd processes the suite starts")
    txn = sum(etcd.metric(m, "grpc_server_handled_total", grpc_method="Txn") for m in etcd.members if m.proc)
    rng = sum(etcd.metric(m, "grpc_server_handled_total", grpc_method="Range") for m in etcd.members if m.proc)
    return txn, rng


def test_b48_thousands_held_on_one_node(etcd: EtcdCluster, daemons) -> None:  # type: ignore[no-untyped-def]
    """B48: 5,000 ADDs on one node (16 in flight) into a /16 with blockSize 26, then single ADDs: every ADD
    succeeds (no 11 on a healthy etcd) and each later ADD is still one etcd transaction and no read."""
    d = daemons("A")
    conf = cni_config("b48", subnet="10.48.0.0/16", blockSize=26)
    errors = allocate_many(d, conf, ["c%d" % i for i in range(5000)])
    assert errors == []
    txn0, range0 = txn_and_range(etcd)
    for i in range(40):
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id="late%d" % i)
        assert out.rc == 0, out
    txn1, range1 = txn_and_range(etcd)
    # the readiness probe reads one key every 2 s; nothing else reads
    assert txn1 - txn0 == 40
    assert range1 - range0 <= 20


def test_b47_gc_with_more_to_release_than_one_deadline(etcd: EtcdCluster, daemons) -> None:  # type: ignore[no-untyped-def]
    """B47: one daemon with --request-timeout 0.3; 6,000 attachments in one network; CNI GC with an empty keep-list.
    Never 999: each call either succeeds or answers 11 naming how much was released so far; GC called again
    finishes; every attachment is released and the invariants hold (fixture teardown)."""
    conf = cni_config("b47", subnet="10.47.0.0/16", blockSize=26)
    filler = daemons("A")
    assert allocate_many(filler, conf, ["c%d" % i for i in range(6000)]) == []
    filler.stop()
    d = daemons("A", extra_args=["--request-timeout", "0.3", "--etcd-timeout", "0.3"])
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": []})
    answers = []
    for _ in range(200):
        out = run_cni("GC", gc_conf, socket=d.cni_socket, container_id=None, if_name=None, netns=None)
        answers.append(out.code if out.rc else 0)
        assert out.rc == 0 or out.code == 11, out
        if out.rc == 0:
            break
        assert "released" in out.json["msg"] or "still releasing" in out.json["msg"], out
    assert answers[-1] == 0, answers
    assert 11 in answers, "6,000 releases fit in 0.3 s: the test no longer shows B47"
    with IpamClient(d.grpc_socket) as client:
        assert client.list("b47") == []


def test_b49_herd_of_daemons_in_a_fresh_pool(etcd_cluster: EtcdCluster, daemons) -> None:  # type: ignore[no-untyped-def]
    """B49: four daemons on a three-member etcd, a fresh /16 with blockSize 26, 400 ADDs each with 8 in flight:
    at most 1.1 etcd transactions per ADD (etcd's own Txn count over every member), every ADD succeeds, all
    addresses distinct."""
    nodes = [daemons(n) for n in "ABCD"]
    conf = cni_config("b49", subnet="10.49.0.0/16", blockSize=26)
    txn0, _ = txn_and_range(etcd_cluster)
    barrier = threading.Barrier(4)
    results: dict[str, list[IpamError]] = {}

    def herd(d: Daemon) -> None:
        barrier.wait()
        results[d.node] = allocate_many(d, conf, ["%s-%d" % (d.node, i) for i in range(400)], threads=8)

    ts = [threading.Thread(target=herd, args=(d,)) for d in nodes]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    txn1, _ = txn_and_range(etcd_cluster)
    assert all(errors == [] for errors in results.values()), results
    per_add = (txn1 - txn0) / 1600
    assert per_add <= 1.1, per_add
    with IpamClient(nodes[0].grpc_socket) as client:
        addresses = [a.addresses[0].address for a in client.list("b49")]
    assert len(addresses) == len(set(addresses)) == 1600
