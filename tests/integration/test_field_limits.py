"""Field cases B05 and B24 (docs/field-cases.md "Concurrency and atomicity" and "etcd-specific": etcd's request
limits) in full, against etcd processes started with the case's limits, real ipamd daemons and real ipamd-cni plugin
processes.

- B05: etcd with ``--max-request-bytes=65536``; 4,000 addresses on one node in one /20 block of a /16. No request is
  ever refused as too large, no value under the prefix grows with the pool (the largest stays far below 64 KiB and
  is the same size after 4,000 ADDs as after 100), and the cost of an ADD does not grow: counted from etcd's own
  metrics (transactions, ranges and bytes received per ADD over the first and the last hundred ADDs), never
  from wall-clock time (the measured latency ratio is in docs/benchmarks.md, from bench/b05.py).
- B24: 300 attachments released by one CNI GC (and by ``ipamctl node remove``) with etcd's default limit of 128
  operations per transaction and with ``--max-txn-ops=16``: every record and handle gone,
  ``ipamd_gc_released_total`` = 300, the invariants clean after each run.

The ``daemons`` fixture checks the invariants of docs/etcd-layout.md after every scenario; the scenarios here also
run ``ipamctl check`` themselves.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cni_conformance_util import NO_ATTACHMENT, assert_ok_empty
from harness import CniOutput, Daemon, EtcdCluster, cni_config, metric_sum, run_cni, snapshot_counts, wait_for
from ipamd_client import IpamClient

from ipamd.domain.errors import IpamError
from ipamd.embedded import free_port
from ipamd.store.base import prefix_end
from ipamd.store.etcd import EtcdStore


@pytest.fixture(scope="module")
def small_requests_etcd() -> Iterator[EtcdCluster]:
    """B05: a single-member etcd refusing requests over 64 KiB (``--max-request-bytes=65536``)."""
    cluster = EtcdCluster(1, extra=("--max-request-bytes=65536",)).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def few_ops_etcd() -> Iterator[EtcdCluster]:
    """B24: a single-member etcd refusing transactions of more than 16 operations (``--max-txn-ops=16``)."""
    cluster = EtcdCluster(1, extra=("--max-txn-ops=16",)).start()
    yield cluster
    cluster.stop()


def add(d: Daemon, conf: Any, cid: str) -> CniOutput:
    return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid)


def added(out: CniOutput) -> str:
    assert out.rc == 0, out
    assert len(out.ips) == 1, out
    return out.ips[0]



def ipamctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``ipamctl ARGS`` reading etcd directly (check, node remove), without the test's ``IPAMD_*`` variables."""
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", *args, "--etcd-endpoints", d.endpoints,
                           "--etcd-prefix", d.prefix], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL,
                          env={k: v for k, v in os.environ.items() if not k.startswith("IPAMD_")})


def assert_check_clean(d: Daemon) -> None:
    check = ipamctl(d, "check")
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check


KINDS = ("pools/", "blocks/", "ips/", "handles/", "cooling/", "nodes/")


def values(d: Daemon) -> dict[str, bytes]:
    """Every key under the daemon's prefix (every kind of docs/etcd-layout.md) -> its raw value."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        return {kv.key: kv.value for kind in KINDS for kv in store.read(kind, prefix_end(kind), 30.0)[0]}
    finally:
        store.close()


# -- B05 ----------------------------------------------------------------------------------------------------------


ETCD_COSTS = {
    "txn": ("grpc_server_handled_total", {"grpc_method": "Txn"}),
    "range": ("grpc_server_handled_total", {"grpc_method": "Range"}),
    "bytes_in": ("etcd_network_client_grpc_received_bytes_total", {}),
}


def etcd_costs(etcd: EtcdCluster) -> dict[str, float]:
    member = etcd.members[0]
    return {what: etcd.metric(member, name, **labels) for what, (name, labels) in ETCD_COSTS.items()}


def hundred_adds(d: Daemon, conf: Any, etcd: EtcdCluster, ids: list[str]) -> tuple[list[str], dict[str, float]]:
    """ADD each id through the plugin, one at a time; returns the addresses and etcd's cost per ADD."""
    before = etcd_costs(etcd)
    addresses = [added(add(d, conf, cid)) for cid in ids]
    after = etcd_costs(etcd)
    return addresses, {k: (after[k] - before[k]) / len(ids) for k in before}


def test_b05_values_stay_small_and_add_cost_stays_flat_with_4000_held(small_requests_etcd, daemons):
    """B05 (etcd #9925, torus #120, whereabouts #110, calico #4259): etcd started with ``--max-request-bytes=65536``;
    subnet 10.41.0.0/16, ``blockSize`` 20 (4,096 addresses per block); 4,000 addresses allocated on node A: the
    first hundred and the last hundred ADDs through the plugin, one at a time, the 3,800 between through the gRPC
    API 16 at a time.

    Expected: every ADD succeeds (no "request is too large" anywhere, the daemon's log included); all 4,000
    addresses in the one block 10.41.0.0/20, in order from .0.2; the largest value under the prefix stays below
    64 KiB - in fact under 1 KiB, and after 4,000 ADDs it is the size it was after 100 but for an address's
    digits, while the pool and block records are byte for byte unchanged (nothing grows with the pool); and the
    4,000th ADD costs what the first did, counted from etcd's own metrics: per ADD of the last hundred, the same
    number of etcd transactions (one each), no read (the readiness probe's aside), and the bytes etcd
    received within 10% (container IDs are of one width, so requests differ only in the address). Bytes etcd
    sent are not compared: they include the watch stream, whose events etcd coalesces by timing."""
    port = free_port()
    d = daemons("A", endpoints_=small_requests_etcd.endpoints,
                extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    conf = cni_config("b05", subnet="10.41.0.0/16", blockSize=20)
    first, cost_first = hundred_adds(d, conf, small_requests_etcd, ["c%05d" % i for i in range(100)])
    assert first == ["10.41.%d.%d/16" % divmod(i + 2, 256) for i in range(100)]
    at_100 = values(d)
    largest_at_100 = max(len(v) for v in at_100.values())
    pool_and_blocks_at_100 = {k: v for k, v in at_100.items() if k.startswith(("pools/", "blocks/"))}

    errors: list[IpamError] = []

    def bulk(chunk: list[str]) -> None:
        with IpamClient(d.grpc_socket, timeout=60) as client:
            for cid in chunk:
                try:
                    client.allocate(conf, cid, "eth0")
                except IpamError as exc:
                    errors.append(exc)

    middle = ["c%05d" % i for i in range(100, 3900)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(bulk, [middle[i::16] for i in range(16)]))
    assert errors == []

    last, cost_last = hundred_adds(d, conf, small_requests_etcd, ["c%05d" % i for i in range(3900, 4000)])
    assert all(a.startswith("10.41.") for a in last), last

    everything = values(d)
    ips = [k for k in everything if k.startswith("ips/")]
    assert len(ips) == 4000 and len([k for k in everything if k.startswith("handles/")]) == 4000
    held = sorted(int(k.rsplit("/", 1)[1], 16) & 0xFFF for k in ips)
    assert held == list(range(2, 4002))  # one /20 block, lowest free address first, no gap, no duplicate
    assert [k for k in everything if k.startswith("blocks/")] == ["blocks/b05/0a290000-16/0a290000-20"]
    largest = max(len(v) for v in everything.values())
    assert largest < 65536
    # nothing grows with the pool: the largest value (a handle) differs from the one at 100 by an address's digits
    assert largest_at_100 <= largest <= largest_at_100 + 8 and largest < 1024, (largest, largest_at_100)
    assert {k: v for k, v in everything.items() if k.startswith(("pools/", "blocks/"))} == pool_and_blocks_at_100
    # the same from etcdctl, as the case reads it
    dump = json.loads(small_requests_etcd.etcdctl("get", "--prefix", d.prefix, "-w", "json"))
    assert len(dump["kvs"]) == len(everything)
    assert max(len(base64.b64decode(kv["value"])) for kv in dump["kvs"]) == largest

    # the 4,000th ADD costs what the first did
    assert cost_last["txn"] == cost_first["txn"] == 1.0, (cost_first, cost_last)
    # no read per ADD: the readiness probe's one read every 2 s is all (docs/operations.md "Health")
    assert cost_first["range"] <= 0.05 and cost_last["range"] <= 0.05, (cost_first, cost_last)
    assert cost_last["bytes_in"] <= 1.1 * cost_first["bytes_in"], (cost_first, cost_last)
    assert "too large" not in d.log()
    assert metric_sum(port, "ipamd_pool_exhausted_total") == 0


# -- B24 ----------------------------------------------------------------------------------------------------------


def add_300(d: Daemon, conf: Any) -> list[str]:
    """ADD c000..c299 through the plugin, 4 plugin processes at a time; returns the addresses."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda i: added(add(d, conf, "c%03d" % i)), range(300)))


def gc(d: Daemon, conf: Any, valid: list[tuple[str, str]]) -> CniOutput:
    body = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": i} for c, i in valid]})
    return run_cni("GC", body, socket=d.cni_socket, **NO_ATTACHMENT)


@pytest.mark.parametrize("limited", [False, True], ids=["default-128-ops", "max-txn-ops-16"])
def test_b24_gc_releases_300_attachments_in_batches_within_the_limit(daemons, request, limited):
    """B24 (pachyderm #2738, etcd #7826): subnet 10.61.0.0/22; ``ADD`` 300 containers on node A; ``GC net1 valid
    []`` -> ok-empty; all 300 address records and handles gone; ``ipamd_gc_released_total`` = 300; ``ipamctl
    check`` clean. Run once on etcd's default limit (128 operations per transaction) and once on an etcd started
    with ``--max-txn-ops=16``, where the daemon's batches of up to 120 operations are refused and it must split
    them until they fit (each batch with its own compares, each address record removed with its handle)."""
    etcd: EtcdCluster = request.getfixturevalue("few_ops_etcd" if limited else "etcd")
    port = free_port()
    d = daemons("A", endpoints_=etcd.endpoints, extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    conf = cni_config("net1", subnet="10.61.0.0/22")
    addresses = add_300(d, conf)
    assert len(set(addresses)) == 300
    assert snapshot_counts(d.endpoints, d.prefix)["handles"] == 300

    assert_ok_empty(gc(d, conf, []))
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert counts["ips"] == 0 and counts["handles"] == 0, counts
    assert not [k for k in values(d) if k.startswith(("ips/", "handles/"))]
    assert metric_sum(port, "ipamd_gc_released_total") == 300
    assert_check_clean(d)
    # the released addresses are allocatable again, lowest first
    assert added(add(d, conf, "again")) == "10.61.0.2/22"
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket, container_id="again"))


@pytest.mark.parametrize("limited", [False, True], ids=["default-128-ops", "max-txn-ops-16"])
def test_b24_node_removal_releases_300_attachments_and_every_block(daemons, request, limited):
    """B24, third run: 300 containers on node A (subnet 10.61.0.0/22, so A holds several blocks); A is stopped for
    good, its lease expires, and ``ipamctl node remove A --yes`` (docs/operations.md "Node removal") releases all
    300 attachments and deletes every block A owned, in batches within the limit (default, and
    ``--max-txn-ops=16``); ``ipamctl check`` clean; node B then claims the lowest block again."""
    etcd: EtcdCluster = request.getfixturevalue("few_ops_etcd" if limited else "etcd")
    a = daemons("A", endpoints_=etcd.endpoints, extra_args=["--node-lease-ttl", "2", "--etcd-timeout", "1"])
    conf = cni_config("net1", subnet="10.61.0.0/22")
    add_300(a, conf)
    owned = [k for k in values(a) if k.startswith("blocks/")]
    assert len(owned) > 1, owned
    a.stop()
    store = EtcdStore(a.endpoints, a.prefix)
    try:
        wait_for(lambda: not store.read("nodes/A", None, 2)[0], "A's lease to expire", timeout=30)
    finally:
        store.close()
    done = ipamctl(a, "node", "remove", "A", "--yes")
    assert done.returncode == 0, done
    assert "released 300 attachment(s), deleted %d block(s)" % len(owned) in done.stdout, done
    left = values(a)
    assert not [k for k in left if k.startswith(("ips/", "handles/", "blocks/"))], sorted(left)[:10]
    assert_check_clean(a)
    b = daemons("B", endpoints_=etcd.endpoints)
    assert added(add(b, conf, "b1")) == "10.61.0.2/22"


def test_b24_gc_killed_between_batches_keeps_the_invariants_and_a_rerun_finishes(daemons):
    """B24: "INV holds even if the daemon is killed mid-way; a re-run finishes the job". 300 containers on node A
    (subnet 10.61.0.0/22); ``GC net1 valid []`` with the failpoint ``gc.after_batch=crash``: the daemon dies right
    after its first release batch committed (60 attachments: 120 operations). The GC answers 11 (the plugin lost
    the daemon), never success; ``ipamctl check`` is clean on what is left (every released address went with its
    handle; 240 attachments remain, whole). A restarted daemon's GC finishes: ok-empty, its
    ``ipamd_gc_released_total`` = 240, nothing left, check clean."""
    conf = cni_config("net1", subnet="10.61.0.0/22")
    a = daemons("A", env={"IPAMD_FAILPOINTS": "gc.after_batch=crash"})
    add_300(a, conf)
    out = gc(a, conf, [])
    assert out.rc != 0 and out.code == 11, out
    assert a.proc is not None and a.proc.wait(10) == 137
    counts = snapshot_counts(a.endpoints, a.prefix)
    assert counts["handles"] == counts["ips"] == 240, counts
    assert_check_clean(a)

    port = free_port()
    again = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    assert_ok_empty(gc(again, conf, []))
    counts = snapshot_counts(again.endpoints, again.prefix)
    assert counts["handles"] == counts["ips"] == 0, counts
    assert metric_sum(port, "ipamd_gc_released_total") == 240
    assert_check_clean(again)
