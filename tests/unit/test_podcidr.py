"""A node's podCIDRs as its blocks (ipamd/podcidr.py, issue 8 item 6): the pure plan, and the claimer on the
in-memory store (etcd's compare semantics; tests/integration/test_kube_podcidr.py shows the same on real etcd)."""

from __future__ import annotations

import ipaddress
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipamd.cache import NodeCache
from ipamd.domain.addr import Block
from ipamd.domain.model import POOLS, PoolRecord, block_key, decode_block_record, encode_block_record, pool_key
from ipamd.domain.netconf import parse_netconf
from ipamd.podcidr import PodCidrClaimer, plan
from ipamd.store.base import Put, StoreUnavailable, prefix_end
from ipamd.store.memory import MemoryStore

POOL = "net1/0a3c0000-16"          # 10.60.0.0/16
POOL6 = "net1/fd000000000000000000000000000000-112"


def cidrs(planned: list) -> list[str]:
    return [p.block.cidr() for p in planned]


@pytest.mark.parametrize("pools, pod_cidrs, expected", [
    ([(POOL, 26)], ["10.60.1.0/24"], ["10.60.1.0/26", "10.60.1.64/26", "10.60.1.128/26", "10.60.1.192/26"]),
    ([(POOL, 24)], ["10.60.1.0/24"], ["10.60.1.0/24"]),
    ([(POOL, 26)], ["10.61.0.0/24"], []),                                   # disjoint
    ([(POOL, 26)], ["fd00::/120"], []),                                      # other family
    ([("net1/0a3c0100-24", 26)], ["10.60.0.0/16"],                           # the pool inside the podCIDR
     ["10.60.1.0/26", "10.60.1.64/26", "10.60.1.128/26", "10.60.1.192/26"]),
    ([(POOL6, 122)], ["fd00::/120"], ["fd00::/122", "fd00::40/122", "fd00::80/122", "fd00::c0/122"]),
    ([(POOL, 26), ("net2/0a3c0000-16", 25)], ["10.60.1.0/24"],               # one podCIDR, two pools
     ["10.60.1.0/26", "10.60.1.64/26", "10.60.1.128/26", "10.60.1.192/26", "10.60.1.0/25", "10.60.1.128/25"]),
])
def test_plan_cuts_the_overlap_into_pool_sized_blocks(pools: list[tuple[str, int]], pod_cidrs: list[str],
                                                      expected: list[str]) -> None:
    planned, skipped = plan(pools, pod_cidrs)
    assert cidrs(planned) == expected and not skipped


@pytest.mark.parametrize("pools, pod_cidr, reason", [
    ([(POOL, 26)], "10.60.1.0/28", "smaller than the pool's blocks (/26)"),
    ([("net1/fd000000000000000000000000000000-48", 122)], "fd00::/64", "blockSize of 72 or less"),
    ([(POOL, 26)], "10.60.1.1/24", "not a CIDR"),
    ([(POOL, 26)], "banana", "not a CIDR"),
])
def test_plan_skips_what_cannot_be_blocks(pools: list[tuple[str, int]], pod_cidr: str, reason: str) -> None:
    planned, skipped = plan(pools, [pod_cidr])
    assert not planned
    assert len(skipped) == 1 and reason in skipped[0].reason and skipped[0].pod_cidr == pod_cidr


@given(pool_prefix=st.integers(8, 28), block_extra=st.integers(0, 6), cidr_prefix=st.integers(8, 30),
       cidr_offset=st.integers(0, 2**32 - 1))
def test_plan_blocks_exactly_cover_the_overlap(pool_prefix: int, block_extra: int, cidr_prefix: int,
                                               cidr_offset: int) -> None:
    block_prefix = min(30, pool_prefix + block_extra)
    pool_net = ipaddress.ip_network("10.0.0.0/%d" % pool_prefix)
    cidr = ipaddress.ip_network((cidr_offset >> (32 - cidr_prefix) << (32 - cidr_prefix), cidr_prefix))
    pool_id = "n/%08x-%d" % (int(pool_net.network_address), pool_prefix)
    planned, skipped = plan([(pool_id, block_prefix)], [str(cidr)])
    if not cidr.overlaps(pool_net):
        assert not planned and not skipped
        return
    overlap = cidr if cidr.subnet_of(pool_net) else pool_net
    if overlap.prefixlen > block_prefix or 1 << (block_prefix - overlap.prefixlen) > 256:
        assert not planned and len(skipped) == 1
        return
    nets = [ipaddress.ip_network(p.block.cidr()) for p in planned]
    assert all(n.prefixlen == block_prefix and n.subnet_of(overlap) for n in nets)
    assert sum(n.num_addresses for n in nets) == overlap.num_addresses
    assert len(set(nets)) == len(nets)


def _pool_record(subnet: str, block: int) -> bytes:
    conf = parse_netconf({"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
                          "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": subnet}]]}}, "net1")
    return PoolRecord("net1", conf.range_sets[0][0].range, block).encode()


def store_with_pool(subnet: str = "10.60.0.0/16", block: int = 26) -> MemoryStore:
    store = MemoryStore()
    net = ipaddress.ip_network(subnet)
    pool_id = "net1/%08x-%d" % (int(net.network_address), net.prefixlen)
    store.txn([], [Put(pool_key(pool_id), _pool_record(subnet, block))], [], 1.0)
    return store


def owners(store: MemoryStore) -> dict[str, str]:
    kvs, _ = store.read("blocks/", prefix_end("blocks/"), 1.0)
    return {kv.key.rsplit("/", 1)[1]: decode_block_record(kv.value) for kv in kvs}


def test_claimer_claims_then_is_idempotent() -> None:
    store = store_with_pool()
    claimer = PodCidrClaimer(store, "a", lambda: ["10.60.1.0/24"])
    first = claimer.claim(["10.60.1.0/24"])
    assert cidrs(first.claimed) == ["10.60.1.0/26", "10.60.1.64/26", "10.60.1.128/26", "10.60.1.192/26"]
    assert set(owners(store).values()) == {"a"} and len(owners(store)) == 4
    txns = store.calls.get("txn", 0)
    again = claimer.claim(["10.60.1.0/24"])
    assert not again.claimed and len(again.owned) == 4 and not again.conflicts
    assert store.calls.get("txn", 0) == txns  # nothing left to claim: reads only


def test_block_owned_by_another_node_is_never_taken_over(caplog: pytest.LogCaptureFixture) -> None:
    store = store_with_pool()
    taken = block_key(POOL, Block(4, int(ipaddress.ip_address("10.60.1.64")), 26))
    store.txn([], [Put(taken, encode_block_record("b"))], [], 1.0)
    caplog.set_level(logging.INFO, logger="ipamd.podcidr")
    claimer = PodCidrClaimer(store, "a", lambda: ["10.60.1.0/24"], interval=0.0)
    claimer.round()
    claimer.round()
    assert owners(store)["0a3c0140-26"] == "b"
    assert sorted(k for k, v in owners(store).items() if v == "a") == ["0a3c0100-26", "0a3c0180-26", "0a3c01c0-26"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["block 10.60.1.64/26 of pool %s lies in podCIDR 10.60.1.0/24 of node a but is owned by node b: "
                      "not taken over" % POOL]  # once, not once per round
    assert claimer.rounds == 2


def test_claim_that_loses_the_race_reports_the_winner() -> None:
    # the read saw the block free; another node's claim commits before ours: the compare fails, the owner is named
    store = store_with_pool()
    key = block_key(POOL, Block(4, int(ipaddress.ip_address("10.60.1.0")), 26))
    store.inject("txn", "action", action=lambda: store.txn([], [Put(key, encode_block_record("b"))], [], 1.0),
                 match=lambda compares, *_: compares and compares[0].key == key)
    report = PodCidrClaimer(store, "a", lambda: None).claim(["10.60.1.0/24"])
    assert [(p.block.cidr(), owner) for p, owner in report.conflicts] == [("10.60.1.0/26", "b")]
    assert len(report.claimed) == 3 and owners(store)["0a3c0100-26"] == "b"


def test_round_waits_for_pod_cidrs_and_a_pool() -> None:
    store = MemoryStore()
    # the cache knows the pool's id from another node's block before the pool record exists
    other = block_key(POOL, Block(4, int(ipaddress.ip_address("10.60.9.0")), 26))
    store.txn([], [Put(other, encode_block_record("z"))], [], 1.0)
    blocks, rev = store.read("blocks/", prefix_end("blocks/"), 1.0)
    cidrs_now: list[list[str] | None] = [None]
    cache = NodeCache("a")
    cache.replace((), blocks, rev)
    claimer = PodCidrClaimer(store, "a", lambda: cidrs_now[0], cache, interval=3600)
    reads = store.calls["read"]
    claimer.round()
    assert claimer.rounds == 0 and store.calls["read"] == reads  # the node's podCIDRs are not known yet
    cidrs_now[0] = ["10.60.1.0/24"]
    claimer.round()
    assert claimer.rounds == 1 and owners(store) == {"0a3c0900-26": "z"}  # no pool record: nothing to claim
    claimer.round()
    assert claimer.rounds == 1                              # nothing changed: no etcd read
    store.txn([], [Put(pool_key(POOL), _pool_record("10.60.0.0/16", 26))], [], 1.0)
    pools, rev = store.read(POOLS, prefix_end(POOLS), 1.0)
    cache.replace(pools, blocks, rev)                       # the cache (its watch) learns the pool record
    claimer.round()
    assert claimer.rounds == 2 and len(owners(store)) == 5
    # and the cache holds the claimed blocks as this node's at once, before any watch
    assert sorted(b.cidr() for _, b in cache.own_blocks()) == ["10.60.1.0/26", "10.60.1.128/26",
                                                              "10.60.1.192/26", "10.60.1.64/26"]


def test_store_errors_propagate_and_the_next_round_claims() -> None:
    store = store_with_pool()
    claimer = PodCidrClaimer(store, "a", lambda: ["10.60.1.0/24"], interval=0.0)
    store.inject("txn", "unavailable")
    with pytest.raises(StoreUnavailable):
        claimer.round()
    store.inject("txn", "unknown")           # committed, but the answer was lost
    with pytest.raises(StoreUnavailable):
        claimer.round()
    claimer.round()
    assert len(owners(store)) == 4 and set(owners(store).values()) == {"a"}
