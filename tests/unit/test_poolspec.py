"""Named pools, fast tier (docs/configuration.md "Named pools"; field case B27): the spec parser and its validation
(as a range's: B29, B30, B41), label selectors and ``--node-labels`` parsing, ``ipam.pools`` in a network
configuration, the resolution of range sets (selection order, draining, unknown names), and the service on the
in-memory store: a stale spec cache learns a drain from the failed compare, and a delete racing an ADD never leaves
an address in a deleted pool. The real-etcd proofs are in tests/integration/test_named_pools.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from ipamd.check import analyse, check_snapshot
from ipamd.domain.cni import Attachment
from ipamd.domain.errors import InvalidConfig, PoolExhausted, PoolInUse, TryAgainLater
from ipamd.domain.model import poolspec_key
from ipamd.domain.netconf import parse_netconf
from ipamd.domain.poolspec import (
    PoolSpec,
    needs_namespace_labels,
    parse_labels,
    parse_pool_spec,
    resolve,
    selects,
)
from ipamd.service import IpamService
from ipamd.store.base import Delete, Put, prefix_end
from ipamd.store.memory import MemoryStore


def spec(**kw: Any) -> PoolSpec:
    obj = {"name": "p1", "cidr": "10.1.0.0/24", **kw}
    return parse_pool_spec(obj)


def named_conf(pools: Any, **ipam: Any) -> Any:
    return parse_netconf({"name": "net1", "ipam": {"type": "ipamd-cni", "pools": pools, **ipam}}, "net1")


# --- the spec ---------------------------------------------------------------------------------------------------

def test_defaults_and_round_trip() -> None:
    s4 = spec()
    assert (s4.block_prefix, s4.gateway_mode, s4.state, s4.max_blocks, s4.cooldown) == (26, "subnet", "active", 0, 0)
    assert s4.pool_id == "@p1/0a010000-24" and s4.network == "@p1"
    s6 = parse_pool_spec({"name": "p6", "cidr": "fd00:1::/64"})
    assert s6.block_prefix == 122
    full = spec(blockSize=28, gatewayMode="subnet", gateway="10.1.0.254", routes=[{"dst": "10.9.0.0/16"}],
                exclude=["10.1.0.10", "10.1.0.16/30"], releaseCooldownSeconds=5, strictAffinity=True,
                maxBlocksPerNode=2, nodeSelector={"zone": "a"}, namespaceSelector={"team": "x"}, state="draining")
    again = PoolSpec.decode(full.encode())
    assert again == full
    assert again.to_json()["exclude"] == ["10.1.0.10", "10.1.0.16-10.1.0.19"]
    pool = again.pool()
    assert (pool.gateway_mode, pool.max_blocks, pool.cooldown, pool.strict_affinity) == ("subnet", 2, 5, True)
    assert pool.range.gateway == int(ipaddress.ip_address("10.1.0.254"))


def test_gateway_modes_follow_the_network_configurations_rules() -> None:
    """A spec's gatewayMode shapes its range exactly as ``ipam.gatewayMode`` does (docs/configuration.md "Gateway
    modes"): no pool gateway, block mode never borrows, pointToPoint gets its default route unless routes are given."""
    p2p = spec(blockSize=28, gatewayMode="pointToPoint")
    assert PoolSpec.decode(p2p.encode()) == p2p
    pool = p2p.pool()
    assert (pool.gateway_mode, pool.range.mode, pool.range.gateway) == ("pointToPoint", "pointToPoint", None)
    assert [(r.dst, r.gw) for r in p2p.routes] == [("0.0.0.0/0", "169.254.1.1")]
    assert spec(gatewayMode="pointToPoint", routes=[]).routes == ()
    p2p6 = parse_pool_spec({"name": "p6", "cidr": "fd00:1::/64", "gatewayMode": "pointToPoint"})
    assert [(r.dst, r.gw) for r in p2p6.routes] == [("::/0", "fe80::1")]
    block = spec(blockSize=28, gatewayMode="block")
    assert (block.pool().range.mode, block.pool().range.block_prefix, block.pool().strict_affinity) == ("block", 28,
                                                                                                         True)
    assert PoolSpec.decode(block.encode()) == block


@pytest.mark.parametrize("kw, needle", [
    ({"cidr": "::ffff:10.1.0.0/120"}, "IPv4-mapped"),                  # B41
    ({"cidr": "224.0.0.0/24"}, "multicast"),                           # B41
    ({"cidr": "10.1.0.0/31"}, "too small"),                            # B30
    ({"cidr": "10.1.0.1/24"}, "10.1.0.1/24"),                          # host bits
    ({"gateway": "10.1.0.0"}, "network address"),                      # B41 gateway
    ({"gateway": "10.1.0.255"}, "broadcast"),
    ({"gateway": "10.2.0.1"}, "outside subnet"),
    ({"blockSize": 20}, "blockSize"),
    ({"blockSize": 33}, "blockSize"),
    ({"gatewayMode": "bridge"}, "gatewayMode"),
    ({"gatewayMode": "pointToPoint", "gateway": "10.1.0.254"}, "cannot be set with gatewayMode"),
    ({"gatewayMode": "block", "gateway": "10.1.0.1"}, "cannot be set with gatewayMode"),
    ({"gatewayMode": "block", "blockSize": 31}, "at least 4 addresses"),
    ({"gatewayMode": "block", "strictAffinity": False}, "strictAffinity false"),
    ({"state": "gone"}, "state"),
    ({"maxBlocksPerNode": -1}, "maxBlocksPerNode"),
    ({"maxBlocksPerNode": 10**12}, "maxBlocksPerNode 1000000000000 is not an integer from 0 (no limit) to 1048576"),
    ({"releaseCooldownSeconds": 86401}, "releaseCooldownSeconds"),
    ({"strictAffinity": "yes"}, "strictAffinity"),
    ({"exclude": "10.1.0.5"}, "exclude"),
    ({"exclude": ["10.1.0.9-10.1.0.5"]}, "backwards"),
    ({"routes": [{"dst": "10.9.0.1/16"}]}, "routes[0].dst"),
    ({"routes": [{"dst": "10.9.0.0/16", "gw": "10.3.0.1"}]}, "not reachable"),
    ({"nodeSelector": {"zone": 1}}, "nodeSelector"),
    ({"namespaceSelector": ["a"]}, "namespaceSelector"),
    ({"name": "Bad"}, "invalid pool name"),
    ({"name": "a/b"}, "invalid pool name"),
    ({"name": "@x"}, "invalid pool name"),
    ({"colour": "red"}, "unknown key"),
])
def test_invalid_specs_are_code_7_naming_the_field(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        spec(**kw)
    assert info.value.cni_code == 7
    assert needle in info.value.msg + info.value.details


def test_selectors_and_labels() -> None:
    assert selects((), {})
    assert selects((("zone", "a"),), {"zone": "a", "rack": "1"})
    assert not selects((("zone", "a"),), {"zone": "b"})
    assert not selects((("zone", "a"), ("rack", "1")), {"zone": "a"})
    assert parse_labels(" zone=a, rack=r1 ,") == {"zone": "a", "rack": "r1"}
    assert parse_labels("") == {}
    for bad in ("zone", "zo ne=a", "zone=a b"):
        with pytest.raises(InvalidConfig):
            parse_labels(bad)


# --- ipam.pools and resolution ------------------------------------------------------------------------------------

def test_ipam_pools_parse_and_exclusive_with_ranges() -> None:
    nc = named_conf([["a", "b"], ["c"]])
    assert nc.pool_names == (("a", "b"), ("c",)) and nc.range_sets == ()
    with pytest.raises(InvalidConfig, match=re.escape("ipam.pools and ipam.ranges are both set")):
        named_conf([["a"]], ranges=[[{"subnet": "10.1.0.0/24"}]])
    with pytest.raises(InvalidConfig, match=re.escape("ipam.pools and ipam.subnet are both set")):
        named_conf([["a"]], subnet="10.1.0.0/24")
    for bad in ([], [[]], "a", [["A"]], [["a"], ["a"]]):
        with pytest.raises(InvalidConfig):
            named_conf(bad)
    assert any("blockSize" in w for w in named_conf([["a"]], blockSize=28).warnings)


def specs_of(*specs: PoolSpec) -> dict[str, tuple[PoolSpec, int]]:
    return {s.name: (s, i + 1) for i, s in enumerate(specs)}


def test_resolution_order_selectors_draining_and_unknown() -> None:
    za = parse_pool_spec({"name": "za", "cidr": "10.1.0.0/24", "nodeSelector": {"zone": "a"}})
    web = parse_pool_spec({"name": "web", "cidr": "10.2.0.0/24",
                           "namespaceSelector": {"kubernetes.io/metadata.name": "web"}})
    rest = parse_pool_spec({"name": "rest", "cidr": "10.3.0.0/24"})
    v6 = parse_pool_spec({"name": "v6", "cidr": "fd00:1::/64"})
    specs = specs_of(za, web, rest, v6)
    nc = named_conf([["za", "web", "rest"], ["v6"]])
    got = resolve(nc, specs, "n1", {"zone": "a"}, "web")
    assert [[p.id for p in rset] for rset in got.range_sets] == \
        [["@za/0a010000-24", "@web/0a020000-24", "@rest/0a030000-24"], ["@v6/fd000001000000000000000000000000-64"]]
    assert dict(got.spec_revisions) == {"za": 1, "web": 2, "rest": 3, "v6": 4}
    got = resolve(nc, specs, "n1", {"zone": "b"}, "db")
    assert [p.id for p in got.range_sets[0]] == ["@rest/0a030000-24"]
    with pytest.raises(InvalidConfig) as info:
        resolve(named_conf([["za", "web"]]), specs, "n1", {"zone": "b"}, "db")
    assert "no pool of za, web selects namespace db on node n1" in info.value.msg
    assert "zone=b" in info.value.details
    with pytest.raises(InvalidConfig, match="unknown pool nope"):
        resolve(named_conf([["za", "nope"]]), specs, "n1", {}, "")
    drained = specs_of(za.with_state("draining"), web, rest, v6)
    got = resolve(nc, drained, "n1", {"zone": "a"}, "db")
    assert [p.id for p in got.range_sets[0]] == ["@rest/0a030000-24"]
    with pytest.raises(PoolExhausted, match="pool za is draining"):
        resolve(named_conf([["za"]]), drained, "n1", {"zone": "a"}, "db")
    assert resolve(named_conf([["za"]]), drained, "n1", {"zone": "a"}, "db", include_draining=True).range_sets
    with pytest.raises(InvalidConfig, match="mixes address families"):
        resolve(named_conf([["rest", "v6"]]), specs, "n1", {}, "")


def test_namespace_labels_select_and_unknown_labels_are_try_again_later() -> None:
    """namespaceSelector matches the namespace's labels (Kubernetes mode: the Namespace object's) plus the name
    label; while they are unknown, a range set with a node-matching pool whose selector needs another label is 11,
    never resolved with the name label alone (which would skip pool a and pick the catch-all)."""
    a = parse_pool_spec({"name": "a", "cidr": "10.1.0.0/24", "namespaceSelector": {"team": "a"}})
    b = parse_pool_spec({"name": "b", "cidr": "10.2.0.0/24", "namespaceSelector": {"team": "b"}})
    byname = parse_pool_spec({"name": "byname", "cidr": "10.3.0.0/24",
                              "namespaceSelector": {"kubernetes.io/metadata.name": "ops"}})
    other = parse_pool_spec({"name": "other", "cidr": "10.4.0.0/24",
                             "namespaceSelector": {"kubernetes.io/metadata.name": "x", "team": "a"}})
    elsewhere = parse_pool_spec({"name": "elsewhere", "cidr": "10.5.0.0/24", "nodeSelector": {"zone": "z"},
                                 "namespaceSelector": {"team": "a"}})
    rest = parse_pool_spec({"name": "rest", "cidr": "10.6.0.0/24"})
    specs = specs_of(a, b, byname, other, elsewhere, rest)
    nc = named_conf([["a", "b", "rest"]])
    got = resolve(nc, specs, "n1", {}, "ns1", {"team": "b"})
    assert [p.id for p in got.range_sets[0]] == ["@b/0a020000-24", "@rest/0a060000-24"]
    got = resolve(nc, specs, "n1", {}, "ns1", {"team": "a"})
    assert [p.id for p in got.range_sets[0]] == ["@a/0a010000-24", "@rest/0a060000-24"]
    with pytest.raises(TryAgainLater) as info:
        resolve(nc, specs, "n1", {}, "ns1", None, namespace_unknown=True)
    assert info.value.cni_code == 11
    assert "labels of namespace ns1 are not known" in info.value.msg and "pool a, b" in info.value.msg
    assert "team=a" in info.value.details
    # decidable without the labels: name-label selectors, a name label naming another namespace, another node's pool
    got = resolve(named_conf([["other", "elsewhere", "byname", "rest"]]), specs, "n1", {}, "ops", None,
                  namespace_unknown=True)
    assert [p.id for p in got.range_sets[0]] == ["@byname/0a030000-24", "@rest/0a060000-24"]
    # STATUS (any namespace) never needs them
    assert resolve(nc, specs, "n1", {}, "", None, any_namespace=True, namespace_unknown=True).range_sets
    assert needs_namespace_labels((("team", "a"),), "ns1")
    assert needs_namespace_labels((("kubernetes.io/metadata.name", "ns1"), ("team", "a")), "ns1")
    assert not needs_namespace_labels((("kubernetes.io/metadata.name", "ns2"), ("team", "a")), "ns1")
    assert not needs_namespace_labels((("kubernetes.io/metadata.name", "ns1"),), "ns1")
    assert not needs_namespace_labels((), "ns1")


def test_service_asks_the_namespace_labels_source_and_answers_11_when_unknown() -> None:
    """IpamService.resolve passes the source's labels; a source answering None (view not current) is code 11 for a
    selector that needs them; without a source (outside Kubernetes mode) only the name label counts, as before."""
    store = MemoryStore()
    create(store, name="a", cidr="10.1.0.0/24", namespaceSelector={"team": "a"})
    create(store, name="rest", cidr="10.6.0.0/24")
    known: dict[str, dict[str, str]] = {"ns1": {"team": "a"}}
    asked: list[str] = []

    def source(ns: str) -> dict[str, str] | None:
        asked.append(ns)
        return known.get(ns)

    svc = service(store, namespace_labels=source)
    nc = named_conf([["a", "rest"]])
    assert [p.id for p in svc.resolve(nc, "ns1").range_sets[0]] == ["@a/0a010000-24", "@rest/0a060000-24"]
    with pytest.raises(TryAgainLater):
        svc.resolve(nc, "ns2")
    assert asked == ["ns1", "ns2"]
    plain = service(store)
    assert [p.id for p in plain.resolve(nc, "ns1").range_sets[0]] == ["@rest/0a060000-24"]


# --- the service on the memory store ------------------------------------------------------------------------------

def service(store: MemoryStore, node: str = "A", **kw: Any) -> IpamService:
    svc = IpamService(store, node, request_timeout=2.0, etcd_timeout=0.5, **kw)
    svc.sync()
    svc.set_ready()
    return svc


def create(store: MemoryStore, **obj: Any) -> None:
    s = parse_pool_spec(obj)
    store.txn([], [Put(poolspec_key(s.name), s.encode())], [], 1)


def consistent(store: MemoryStore) -> None:
    violations = check_snapshot(store.dump())
    assert not violations, "\n".join(map(str, violations))


def test_stale_cache_learns_a_drain_from_the_failed_compare() -> None:
    """Daemon B never hears of the drain (no watch in this tier): its ADD compares the spec revision it planned
    with, fails, learns the spec from the failure read and takes the next pool (B27)."""
    store = MemoryStore()
    create(store, name="old", cidr="10.64.0.0/24")
    create(store, name="new", cidr="10.65.0.0/24")
    a, b = service(store, "A"), service(store, "B")
    nc = named_conf([["old", "new"]])
    assert [x.cidr for x in b.add(Attachment("net1", "c0", "eth0"), nc)] == ["10.64.0.2/24"]
    a.pool_admin.set_state("old", "draining")
    assert b.specs.get("old")[0].state == "active"  # type: ignore[index]
    got = b.add(Attachment("net1", "c1", "eth0"), nc)
    assert [x.cidr for x in got] == ["10.65.0.2/24"]
    assert b.specs.get("old")[0].state == "draining"  # type: ignore[index]
    with pytest.raises(PoolInUse, match="pool old still holds 1 address"):
        a.pool_admin.delete("old", 10**9)
    b.delete(Attachment("net1", "c0", "eth0"))
    assert a.pool_admin.delete("old", 10**9) == 1
    assert store.count("blocks/@old/", prefix_end("blocks/@old/"), 1) == 0
    assert store.count("pools/@old/", prefix_end("pools/@old/"), 1) == 0
    consistent(store)


def test_delete_between_pick_and_commit_fails_the_add() -> None:
    """The store's ``action`` fault runs the delete just before the ADD's transaction: the ADD's compare on the
    spec's revision fails, the re-resolution finds no pool (7), and no address is left in a deleted pool."""
    store = MemoryStore()
    create(store, name="racy", cidr="10.87.0.0/24")
    svc = service(store)
    admin = IpamService(store, "X").pool_admin
    store.inject("txn", "action", action=lambda: admin.delete("racy", 10**9))
    with pytest.raises(InvalidConfig, match="unknown pool racy"):
        svc.add(Attachment("net1", "r1", "eth0"), named_conf([["racy"]]))
    assert store.count("ips/", prefix_end("ips/"), 1) == 0
    assert store.count("poolspecs/", prefix_end("poolspecs/"), 1) == 0
    consistent(store)


def test_a_stored_spec_must_name_the_pool_of_its_key() -> None:
    """``poolspecs/a`` holding a spec named ``b`` (written by hand) is malformed: decode refuses it, the cache
    leaves it out (sync and watch alike), ``ipamctl check`` reports it (invariant 0, undecodable)."""
    raw = spec(name="b").encode()
    assert PoolSpec.decode(raw, "b").name == "b"
    with pytest.raises(ValueError, match="stored as pool a but names pool b"):
        PoolSpec.decode(raw, "a")
    store = MemoryStore()
    store.txn([], [Put(poolspec_key("a"), raw)], [], 1)
    svc = service(store)
    assert svc.specs.get("a") is None and svc.specs.get("b") is None
    with pytest.raises(InvalidConfig, match="stored spec poolspecs/a is not valid"):
        svc.add(Attachment("net1", "c1", "eth0"), named_conf([["a"]]))
    findings = analyse(store.dump())
    assert [(f.invariant, f.key, f.kind) for f in findings] == [(0, "poolspecs/a", "undecodable")]
    assert "names pool b" in findings[0].message


def test_a_spec_nested_too_deeply_is_malformed() -> None:
    """``[[[[…`` deeper than the interpreter's stack raises ``ValueError`` (skipped, reported), not ``RecursionError``
    (which reached every caller: pool create's overlap scan, the sync, ``ipamctl check``)."""
    with pytest.raises(ValueError, match="nested too deeply"):
        PoolSpec.decode(b"[" * 100000, "deep")
    store = MemoryStore()
    store.txn([], [Put(poolspec_key("deep"), b"[" * 100000)], [], 1)
    assert [f.kind for f in analyse(store.dump())] == ["undecodable"]


def test_check_warns_of_the_records_an_interrupted_delete_left() -> None:
    """Block and pool records of a named pool without its spec (the delete's clean-up never ran): one warning per
    pool naming ``ipamctl pool delete``; not a violation (nothing is wrong with an address)."""
    store = MemoryStore()
    create(store, name="gone", cidr="10.88.0.0/24")
    svc = service(store)
    att = Attachment("net1", "c1", "eth0")
    svc.add(att, named_conf([["gone"]]))
    svc.delete(att)
    store.txn([], [Put("nodes/A", b"{}")], [], 1)  # node A is alive (its lease record)
    assert not analyse(store.dump())
    store.txn([], [Delete(poolspec_key("gone"))], [], 1)  # the delete's first transaction, and no clean-up
    findings = analyse(store.dump())
    assert [(f.severity, f.kind, f.key) for f in findings] == [("warning", "named-pool-leftover",
                                                                 "pools/@gone/0a580000-24")]
    assert "ipamctl pool delete gone removes them" in findings[0].message
    assert not check_snapshot(store.dump())


def test_check_flags_an_address_of_a_named_pool_without_its_spec() -> None:
    store = MemoryStore()
    create(store, name="gone", cidr="10.88.0.0/24")
    svc = service(store)
    svc.add(Attachment("net1", "c1", "eth0"), named_conf([["gone"]]))
    assert not check_snapshot(store.dump())
    store.txn([], [Delete(poolspec_key("gone"))], [], 1)  # behind the admin API's back
    found = {f.kind: f.message for f in analyse(store.dump())}
    assert "poolspecs/gone is missing" in found["no-pool-spec"]
    store.txn([], [Put(poolspec_key("gone"), b"{not json")], [], 1)  # a spec there, but malformed: not "missing"
    found = {f.kind: f.message for f in analyse(store.dump())}
    assert "poolspecs/gone is not valid" in found["no-pool-spec"] and "undecodable" in found


def test_status_resolution_ignores_the_namespace_selector() -> None:
    """STATUS carries no pod namespace: every pool's namespaceSelector counts as matching (docs/cni-contract.md
    §2.5); the node selector still applies."""
    web = parse_pool_spec({"name": "web", "cidr": "10.2.0.0/24", "namespaceSelector": {"team": "web"},
                           "nodeSelector": {"zone": "a"}})
    specs = specs_of(web)
    with pytest.raises(InvalidConfig):
        resolve(named_conf([["web"]]), specs, "n1", {"zone": "a"}, "")
    assert resolve(named_conf([["web"]]), specs, "n1", {"zone": "a"}, "", any_namespace=True).range_sets
    with pytest.raises(InvalidConfig):
        resolve(named_conf([["web"]]), specs, "n1", {"zone": "b"}, "", any_namespace=True)


def test_create_refuses_an_overlapping_pool_also_when_racing() -> None:
    """Two named pools may not overlap (an address would be handed out by both): refused at once, and also when
    the other pool is created between this create's read and its transaction (the range compare on poolspecs/)."""
    store = MemoryStore()
    admin = IpamService(store, "X").pool_admin
    admin.create({"name": "a", "cidr": "10.1.0.0/16"})
    with pytest.raises(InvalidConfig, match=re.escape("pool b cidr 10.1.2.0/24 overlaps pool a")):
        admin.create({"name": "b", "cidr": "10.1.2.0/24"})
    admin.create({"name": "v6", "cidr": "fd00::/64"})  # another family never overlaps
    fault = store.inject("txn", "action", action=lambda: admin.create({"name": "c", "cidr": "10.2.0.0/24"}),
                         match=lambda compares, *_: any(c.key == "poolspecs/d" for c in compares))
    with pytest.raises(InvalidConfig, match=re.escape("pool d cidr 10.2.0.0/25 overlaps pool c")):
        admin.create({"name": "d", "cidr": "10.2.0.0/25"})
    assert fault.hits == 1
    assert store.count("poolspecs/", prefix_end("poolspecs/"), 1) == 3
