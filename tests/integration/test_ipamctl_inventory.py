"""``ipamctl pools``, ``blocks``, ``usage`` and ``list`` filters against real etcd and two real daemons (docs/ipamctl.md
"Pools, blocks and usage"), with a borrow (field case B34) and an IPv6 /64 pool, checking the exact figures in the
text tables and in ``-o json``.

The scenario (:func:`cluster`):

- net4, 10.9.0.0/28 in /29 blocks (13 usable): A claims 10.9.0.0/29 (6 usable: .0 network, .1 gateway) and fills
  it with a1-a6 (.2-.7); B claims 10.9.0.8/29 (7 usable: .15 broadcast) for b1 (.8); A's a7 finds no block left to
  claim and borrows .9 from B's block.
- net6, fd00:9::/64 in /122 blocks (2**64 - 2 usable): A claims fd00:9::/122 for x1, x2 (::2, ::3; 62 usable), B
  claims fd00:9::40/122 for y1 (::40; 64 usable).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import cni_config, daemon_ipamctl, run_cni

P4 = "net4/0a090000-28"
P6 = "net6/fd000009000000000000000000000000-64"
SIZE6 = 2**64 - 2


def k8s(ns: str, name: str) -> str:
    return "IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=uid-%s" % (ns, name, name)


@pytest.fixture
def cluster(daemons: Any) -> tuple[Any, Any]:
    a, b = daemons("A"), daemons("B")
    net4 = cni_config(name="net4", subnet="10.9.0.0/28", blockSize=29)
    net6 = cni_config(name="net6", subnet="fd00:9::/64")

    def add(d: Any, conf: dict[str, Any], cid: str, ns: str, want: str) -> None:
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, args=k8s(ns, cid))
        assert out.ips == [want], out

    for i in range(1, 7):
        add(a, net4, "a%d" % i, "web", "10.9.0.%d/28" % (i + 1))
    add(b, net4, "b1", "db", "10.9.0.8/28")
    add(a, net4, "a7", "web", "10.9.0.9/28")  # borrowed from B's block
    add(a, net6, "x1", "web", "fd00:9::2/64")
    add(a, net6, "x2", "web", "fd00:9::3/64")
    add(b, net6, "y1", "db", "fd00:9::40/64")
    return a, b


def ok(d: Any, *args: str) -> str:
    out = daemon_ipamctl(d, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def rows(text: str) -> list[list[str]]:
    """The table's rows split on whitespace, header first."""
    return [line.split() for line in text.splitlines() if line.strip()]


def test_pools_figures_in_text_and_json(cluster: tuple[Any, Any]) -> None:
    a, b = cluster
    text = ok(b, "pools")  # any node's daemon answers for the cluster
    assert rows(text) == [
        ["POOL", "SUBNET", "RANGE", "BLOCK", "GATEWAY", "SIZE", "ALLOCATED", "FREE", "BLOCKS", "USED%"],
        [P4, "10.9.0.0/28", "10.9.0.1-10.9.0.14", "/29", "10.9.0.1", "13", "8", "5", "2", "61.54%"],
        [P6, "fd00:9::/64", "fd00:9::1-fd00:9::ffff:ffff:ffff:ffff", "/122", "fd00:9::1", str(SIZE6), "3",
         str(SIZE6 - 3), "2", "<0.01%"],
    ]
    doc = json.loads(ok(a, "pools", "-o", "json"))
    assert doc["revision"] > 0
    p4, p6 = doc["pools"]
    assert p4 == {"pool": P4, "network": "net4", "subnet": "10.9.0.0/28", "rangeStart": "10.9.0.1",
                  "rangeEnd": "10.9.0.14", "gateway": "10.9.0.1", "blockSize": 29, "gatewayMode": "subnet", "size": 13,
                  "allocated": 8, "free": 5, "blocks": 2, "utilisation": pytest.approx(800 / 13)}
    assert (p6["size"], p6["allocated"], p6["free"], p6["blocks"], p6["blockSize"]) == (SIZE6, 3, SIZE6 - 3, 2, 122)
    assert p6["utilisation"] == pytest.approx(300 / SIZE6)
    one = json.loads(ok(a, "pools", "--pool", "net6/fd00:9::/64", "-o", "json"))["pools"]
    assert [p["pool"] for p in one] == [P6]
    assert [p["pool"] for p in json.loads(ok(a, "pools", "--network", "net4", "-o", "json"))["pools"]] == [P4]


def test_blocks_show_the_borrow_both_ways(cluster: tuple[Any, Any]) -> None:
    a, _b = cluster
    text = ok(a, "blocks")
    assert rows(text)[:5] == [
        ["BLOCK", "POOL", "NODE", "SIZE", "USED", "FREE", "BORROWED", "NODE-BORROWED-ELSEWHERE"],
        ["10.9.0.0/29", P4, "A", "6", "6", "0", "0", "1"],
        ["10.9.0.8/29", P4, "B", "7", "2", "5", "1", "0"],
        ["fd00:9::/122", P6, "A", "62", "2", "60", "0", "0"],
        ["fd00:9::40/122", P6, "B", "64", "1", "63", "0", "0"],
    ]
    assert "node A holds 1 address(es) borrowed in other nodes' blocks" in text
    doc = json.loads(ok(a, "blocks", "--pool", "net4/10.9.0.0/28", "-o", "json"))
    assert doc["blocks"] == [
        {"block": "10.9.0.0/29", "pool": P4, "node": "A", "size": 6, "used": 6, "free": 0, "borrowed": 0,
         "nodeBorrowedElsewhere": 1},
        {"block": "10.9.0.8/29", "pool": P4, "node": "B", "size": 7, "used": 2, "free": 5, "borrowed": 1,
         "nodeBorrowedElsewhere": 0}]
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert (nodes["A"]["allocated"], nodes["A"]["borrowedElsewhere"], nodes["B"]["borrowedIn"]) == (7, 1, 1)
    only_b = json.loads(ok(a, "blocks", "--node", "B", "-o", "json"))
    assert [x["block"] for x in only_b["blocks"]] == ["10.9.0.8/29", "fd00:9::40/122"]
    assert [n["node"] for n in only_b["nodes"]] == ["B"]


def test_usage_per_pool_and_per_node(cluster: tuple[Any, Any]) -> None:
    a, _b = cluster
    text = ok(a, "usage")
    pools, _, nodes = text.partition("\n\n")
    assert rows(pools)[1][4:] == ["10.9.0.1", "13", "8", "5", "2", "61.54%"]
    assert rows(nodes) == [
        ["NODE", "ALIVE", "BLOCKS", "CAPACITY", "USED", "FREE", "USED%", "BORROWED-IN", "ALLOCATED",
         "BORROWED-ELSEWHERE"],
        ["A", "yes", "2", "68", "8", "60", "11.76%", "0", "9", "1"],
        ["B", "yes", "2", "71", "3", "68", "4.23%", "1", "2", "0"],
    ]
    doc = json.loads(ok(a, "usage", "-o", "json"))
    assert [(n["node"], n["alive"], n["blocks"], n["capacity"], n["used"], n["free"], n["borrowedIn"],
             n["allocated"], n["borrowedElsewhere"]) for n in doc["nodes"]] == [
        ("A", True, 2, 68, 8, 60, 0, 9, 1), ("B", True, 2, 71, 3, 68, 1, 2, 0)]
    assert [(p["pool"], p["allocated"]) for p in doc["pools"]] == [(P4, 8), (P6, 3)]
    # --watch: one JSON document per line, --count of them
    lines = ok(a, "usage", "-o", "json", "--watch", "0.1", "--count", "2").splitlines()
    assert len(lines) == 2 and all(json.loads(line)["pools"] == doc["pools"] for line in lines)


def test_list_filters_table_and_json(cluster: tuple[Any, Any]) -> None:
    a, _b = cluster

    def ids(*args: str) -> list[str]:
        doc = json.loads(ok(a, "list", "-o", "json", *args))
        return [x["containerID"] for x in doc["allocations"]]

    assert ids("--node", "B") == ["b1", "y1"]
    assert ids("--pool", "net4/10.9.0.0/28", "--node", "A") == ["a%d" % i for i in range(1, 8)]
    assert ids("--pool", P6) == ["x1", "x2", "y1"]
    assert ids("--network", "net6", "--namespace", "db") == ["y1"]
    assert ids("--namespace", "web", "--pod", "a7") == ["a7"]
    assert ids("--pod", "nosuchpod") == []
    doc = json.loads(ok(a, "list", "-o", "json", "--pod", "b1"))
    assert doc["allocations"] == [{"network": "net4", "containerID": "b1", "ifName": "eth0",
                                   "addresses": ["10.9.0.8/28"], "pools": [P4], "node": "B",
                                   "netns": "/var/run/netns/none",
                                   "pod": {"namespace": "db", "name": "b1", "uid": "uid-b1"}}]
    table = rows(ok(a, "list", "--node", "B"))
    assert table == [["ATTACHMENT", "ADDRESSES", "NODE", "NAMESPACE", "POD"],
                     ["net4/b1/eth0", "10.9.0.8/28", "B", "db", "b1"],
                     ["net6/y1/eth0", "fd00:9::40/64", "B", "db", "y1"]]


def test_usage_errors_exit_2_and_daemon_errors_exit_1(cluster: tuple[Any, Any], tmp_path: Any) -> None:
    a, _b = cluster
    for args, says in ((("blocks", "--pool", "net4/10.9.0.1/28"), "not a subnet"),
                       (("pools", "--pool", "net4/10.99.0.0/24"), "no pool net4/10.99.0.0/24"),
                       (("list", "--network", "net6", "--pool", P4), "is not of network net6"),
                       (("usage", "--count", "2"), "only with --watch"),
                       (("pools", "--bogus"), "unrecognized arguments")):
        out = daemon_ipamctl(a, *args)
        assert out.returncode == 2 and says in out.stderr, (args, out.stderr)
    gone = daemon_ipamctl(a, "--socket", str(tmp_path / "no.sock"), "pools")
    assert gone.returncode == 1 and gone.stderr.startswith("ipamctl: error 11: "), gone.stderr
