"""Field cases B01 and B02 (docs/field-cases.md "Concurrency and atomicity") against real etcd, real ipamd daemons and
real ipamd-cni shim processes.

Concurrent callers are released together from a :class:`threading.Barrier`; every call is a fresh shim process.
After each scenario the invariants of docs/etcd-layout.md are checked (``daemons`` fixture teardown, or
:func:`harness.assert_invariants` for daemons built here).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from harness import CniOutput, Daemon, assert_invariants, cni_config, new_prefix, run_cni, snapshot_counts, wait_for

from ipamd.store.base import prefix_end
from ipamd.store.etcd import EtcdStore

T = TypeVar("T")


def concurrently(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run every call on its own thread, all released at the same instant from one barrier; results in order."""
    barrier = threading.Barrier(len(calls))

    def released(fn: Callable[[], T]) -> T:
        barrier.wait(timeout=60)
        return fn()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(released, fn) for fn in calls]
        return [f.result() for f in futures]


def add(conf: dict, d: Daemon, cid: str) -> Callable[[], CniOutput]:
    return lambda: run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid)


def delete(conf: dict, d: Daemon, cid: str) -> Callable[[], CniOutput]:
    return lambda: run_cni("DEL", conf, socket=d.cni_socket, container_id=cid, netns="/var/run/netns/" + cid)


def read_kind(endpoints: str, prefix: str, kind: str) -> dict[str, bytes]:
    """All records of one kind (``"blocks/"``, ``"ips/"``, ``"handles/"``) under the prefix: key -> value."""
    store = EtcdStore(endpoints, prefix)
    try:
        kvs, _ = store.read(kind, prefix_end(kind), 10.0)
    finally:
        store.close()
    return {kv.key: kv.value for kv in kvs}


def block_owners(endpoints: str, prefix: str) -> dict[ipaddress.IPv4Network, str]:
    """Block records ``blocks/<network>/<subnet key>/<8-hex first address>-<prefix len>`` -> owner node."""
    import json

    out = {}
    for key, value in read_kind(endpoints, prefix, "blocks/").items():
        hexaddr, _, plen = key.rsplit("/", 1)[1].partition("-")
        net = ipaddress.ip_network((int(hexaddr, 16), int(plen)))
        out[net] = json.loads(value)["node"]
    return out


def only_address(out: CniOutput) -> ipaddress.IPv4Interface:
    assert out.rc == 0, out
    assert len(out.ips) == 1, out
    return ipaddress.ip_interface(out.ips[0])


def owning_block(blocks: dict[ipaddress.IPv4Network, str], ip: ipaddress.IPv4Address) -> ipaddress.IPv4Network:
    found = [net for net in blocks if ip in net]
    assert len(found) == 1, "address %s lies in blocks %s" % (ip, found)
    return found[0]


# -- B01 ----------------------------------------------------------------------------------------------------------


def test_b01_phase1_two_daemons_same_node_50_concurrent_adds(daemons):
    """B01 phase 1: two ipamd processes with the same node name A (a rolling restart) on two sockets; ADD c1..c25
    via the first and c26..c50 via the second, all 50 released together. Every ADD succeeds, the returned set is
    exactly 10.10.0.2-10.10.0.51, and etcd holds 50 address records and 50 handles."""
    first, second = daemons("A"), daemons("A")
    conf = cni_config("net1", subnet="10.10.0.0/26", blockSize=28)
    calls = [add(conf, first if n <= 25 else second, "c%d" % n) for n in range(1, 51)]

    outs = concurrently(calls)

    addresses = [only_address(o) for o in outs]
    assert all(a.network == ipaddress.ip_network("10.10.0.0/26") for a in addresses)
    got = sorted(a.ip for a in addresses)
    assert got == [ipaddress.ip_address("10.10.0.%d" % i) for i in range(2, 52)]
    counts = snapshot_counts(first.endpoints, first.prefix)
    assert (counts["ips"], counts["handles"]) == (50, 50)
    owners = block_owners(first.endpoints, first.prefix)
    assert owners == {ipaddress.ip_network("10.10.0.%d/28" % b): "A" for b in (0, 16, 32, 48)}


def test_b01_phase2_four_nodes_concurrent_adds_then_dels(daemons):
    """B01 phase 2: nodes A-D, 14 ADDs per node, all 56 released together: 56 distinct addresses, each node's
    addresses all inside one block that node owns. Then all 56 DELs together: every DEL is ok-empty and no address
    record or handle is left (empty blocks may stay owned)."""
    nodes = {name: daemons(name) for name in "ABCD"}
    conf = cni_config("net1", subnet="10.10.0.0/26", blockSize=28)
    plan = [(name, "c%s%d" % (name, i)) for name in "ABCD" for i in range(1, 15)]

    outs = concurrently([add(conf, nodes[name], cid) for name, cid in plan])

    addresses = [only_address(o).ip for o in outs]
    assert len(set(addresses)) == 56
    d = nodes["A"]
    owners = block_owners(d.endpoints, d.prefix)
    for name in "ABCD":
        mine = [ip for (node, _), ip in zip(plan, addresses, strict=False) if node == name]
        blocks = {owning_block(owners, ip) for ip in mine}
        assert len(blocks) == 1, "node %s got addresses in blocks %s" % (name, blocks)
        assert owners[blocks.pop()] == name
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert (counts["ips"], counts["handles"]) == (56, 56)

    dels = concurrently([delete(conf, nodes[name], cid) for name, cid in plan])

    assert [(o.rc, o.stdout) for o in dels] == [(0, "")] * 56, [o for o in dels if o.rc or o.stdout]
    assert read_kind(d.endpoints, d.prefix, "ips/") == {}
    assert read_kind(d.endpoints, d.prefix, "handles/") == {}


def test_b01_two_nodes_100_concurrent_adds_then_dels(daemons):
    """B01 (the whereabouts #110 variant): nodes A and B, 100 concurrent ADDs through shim processes (50 per
    daemon) on a /24 with blockSize 28: 100 distinct addresses, each inside a block owned by the node of the daemon
    that answered. Then 100 concurrent DELs: no ``ips/`` or ``handles/`` key is left."""
    a, b = daemons("A"), daemons("B")
    conf = cni_config("net1", subnet="10.10.0.0/24", blockSize=28)
    plan = [(a if n % 2 else b, "c%d" % n) for n in range(1, 101)]

    outs = concurrently([add(conf, d, cid) for d, cid in plan])

    addresses = [only_address(o).ip for o in outs]
    assert len(set(addresses)) == 100
    owners = block_owners(a.endpoints, a.prefix)
    for (d, cid), ip in zip(plan, addresses, strict=False):
        assert owners[owning_block(owners, ip)] == d.node, "%s (%s via %s) is in a block of another node" % (
            ip, cid, d.node)
    assert len(read_kind(a.endpoints, a.prefix, "ips/")) == 100
    assert len(read_kind(a.endpoints, a.prefix, "handles/")) == 100

    dels = concurrently([delete(conf, d, cid) for d, cid in plan])

    assert [(o.rc, o.stdout) for o in dels] == [(0, "")] * 100, [o for o in dels if o.rc or o.stdout]
    assert read_kind(a.endpoints, a.prefix, "ips/") == {}
    assert read_kind(a.endpoints, a.prefix, "handles/") == {}


# -- B02 ----------------------------------------------------------------------------------------------------------

B02_GENERATIONS = 4
B02_POOLS_PER_GENERATION = 5
"""docs/field-cases.md asks for 20 runs of the race: 4 generations x 5 fresh pools = 20. A generation is the
literal repro (a fresh key prefix: no pool, no block, no node record; eight freshly started ipamd processes), and
in it five networks are raced one after the other, each a fresh pool (``pools/<network>/...`` and its blocks do not
exist, no daemon's view holds anything of it), so every race is the same first-claim race: eight daemons planning
the lowest block of an empty pool in the same instant. Starting eight daemons costs 2-6 s on this 2-core machine
(grpc/protobuf/etcd-client imports); a race costs well under a second. 20 generations would take one to two
minutes; this takes about 10-30 s."""


def _pool_owners(endpoints: str, prefix: str, network: str) -> dict[ipaddress.IPv4Network, str]:
    """Block records of one network's pools -> owner."""
    import json

    out = {}
    for key, value in read_kind(endpoints, prefix, "blocks/%s/" % network).items():
        hexaddr, _, plen = key.rsplit("/", 1)[1].partition("-")
        out[ipaddress.ip_network((int(hexaddr, 16), int(plen)))] = json.loads(value)["node"]
    return out


def _b02_race(nodes: Sequence[Daemon], endpoints: str, prefix: str, network: str) -> None:
    """One B02 race in the fresh pool of ``network``: every expectation of docs/field-cases.md B02."""
    conf = cni_config(network, subnet="10.20.0.0/24", blockSize=28)

    outs = concurrently([add(conf, d, "c" + d.node) for d in nodes])

    addresses = {d.node: only_address(o) for d, o in zip(nodes, outs, strict=True)}
    assert {str(a.ip) for a in addresses.values()} == {"10.20.0.%d" % i for i in (2, 16, 32, 48, 64, 80, 96, 112)}, \
        (network, addresses)
    assert all(str(a.network) == "10.20.0.0/24" for a in addresses.values())
    owners = _pool_owners(endpoints, prefix, network)
    assert len(owners) == 8, (network, owners)
    assert sorted(owners.values()) == [str(n) for n in range(1, 9)], (network, owners)
    assert set(owners) == {ipaddress.ip_network("10.20.0.%d/28" % (16 * i)) for i in range(8)}
    for node, addr in addresses.items():
        assert owners[owning_block(owners, addr.ip)] == node, (network, node, addr)


def _b02_generation(endpoints: str, workdir: str) -> None:
    prefix = new_prefix()
    nodes = [Daemon(endpoints, prefix, str(n), workdir) for n in range(1, 9)]
    try:
        for d in nodes:
            d.start(wait_ready=False)
        for d in nodes:
            d.wait_ready(60)
        for k in range(1, B02_POOLS_PER_GENERATION + 1):
            _b02_race(nodes, endpoints, prefix, "net%d" % k)
    finally:
        for d in nodes:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.terminate()
        for d in nodes:
            d.stop()
    counts = assert_invariants(endpoints, prefix)
    n = 8 * B02_POOLS_PER_GENERATION
    assert (counts["blocks"], counts["ips"], counts["handles"]) == (n, n, n)


def test_b02_eight_nodes_claim_first_blocks_at_once(etcd, workdir):
    """B02: eight daemons (nodes 1-8) on subnet 10.20.0.0/24 with blockSize 28 each get their first ADD at the same
    instant: 8 ADDs succeed, exactly 8 block records with 8 different owners, the addresses are the first usable
    address of the 8 lowest blocks, each inside its own node's block. 20 races (:data:`B02_GENERATIONS` x
    :data:`B02_POOLS_PER_GENERATION`), each generation on a fresh prefix with fresh daemons and ending with the
    invariant check."""
    started = time.monotonic()
    for _ in range(B02_GENERATIONS):
        _b02_generation(etcd.endpoints, workdir)
    assert B02_GENERATIONS * B02_POOLS_PER_GENERATION >= 20
    print("B02: %d races in %.1f s" % (B02_GENERATIONS * B02_POOLS_PER_GENERATION, time.monotonic() - started))


def _block_of_node(endpoints: str, prefix: str, node: str) -> tuple[str, int]:
    """(block key, mod_revision) of the one block record ``node`` owns under the prefix."""
    import json

    store = EtcdStore(endpoints, prefix)
    try:
        kvs, _ = store.read("blocks/", prefix_end("blocks/"), 10.0)
    finally:
        store.close()
    mine = [(kv.key, kv.mod_revision) for kv in kvs if json.loads(kv.value)["node"] == node]
    assert len(mine) == 1, mine
    return mine[0]


def _release(endpoints: str, prefix: str, key: str, revision: int) -> bool:
    """The new release path (ipamd.blockrelease.release_block), driven directly from the test."""
    from ipamd.blockrelease import release_block
    from ipamd.domain.model import parse_block_key

    pool_id, block = parse_block_key(key)
    store = EtcdStore(endpoints, prefix)
    try:
        return release_block(store, pool_id, block, revision, 10.0)[0]
    finally:
        store.close()


def test_b02_release_races_add(etcd, daemons):
    """B02 extra: while node 3 runs an ADD, its empty block is released by a second actor (the release transaction
    of ipamd.blockrelease, run from the test). Node 3's daemon pauses between its pick and its transaction
    (failpoint ``add.after_pick``), the release commits in that pause: the ADD's block compare fails, it retries
    and lands in a block that node 3 owns afterwards. The other order: an ADD that committed first makes the release
    fail (the block's address range is not empty). Never an address in a block without an owner; ``ipamctl check``
    (the invariant check) clean."""
    d3 = daemons("3", env={"IPAMD_FAILPOINTS": "add.after_pick=pause:1.5"})
    conf = cni_config("net1", subnet="10.20.0.0/24", blockSize=28)
    assert only_address(add(conf, d3, "c0")()).ip == ipaddress.ip_address("10.20.0.2")
    assert delete(conf, d3, "c0")().rc == 0
    key, revision = _block_of_node(d3.endpoints, d3.prefix, "3")  # empty, owned by node 3
    log_path = Path(d3.log_path)
    pauses = log_path.read_text().count("failpoint add.after_pick")

    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(add(conf, d3, "c1"))
        wait_for(lambda: log_path.read_text().count("failpoint add.after_pick") > pauses, "node 3's ADD to pick")
        released = _release(d3.endpoints, d3.prefix, key, revision)
        out = running.result()

    assert released, "the release did not commit while the ADD was paused"
    got = only_address(out)
    owners = block_owners(d3.endpoints, d3.prefix)
    assert owners[owning_block(owners, got.ip)] == "3", (got, owners)
    assert log_path.read_text().count("failpoint add.after_pick") >= pauses + 2  # the ADD planned again
    # the other order: the ADD committed first, so the release's range compare fails and the block stays
    key, revision = _block_of_node(d3.endpoints, d3.prefix, "3")
    assert _release(d3.endpoints, d3.prefix, key, revision) is False
    assert owners == block_owners(d3.endpoints, d3.prefix)
    counts = assert_invariants(d3.endpoints, d3.prefix)
    assert (counts["blocks"], counts["ips"], counts["handles"]) == (1, 1, 1)
    check = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", d3.endpoints,
                            "--etcd-prefix", d3.prefix], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert check.returncode == 0 and "OK: all invariants hold" in check.stdout, check.stdout + check.stderr
