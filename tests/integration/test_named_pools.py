"""Named pools (docs/configuration.md "Named pools", docs/etcd-layout.md "Named pools"; field case B27) against real
etcd, real daemons, real plugin processes and ``ipamctl`` as a process.

- ``ipamctl pool create|list|show|drain|delete``: exit statuses, tables and ``-o json``, validation as for a range
  (B41 address classes, B30 sizes);
- a network configuration naming pools (``"ipam": {"pools": [["v4"], ["v6"]]}``): dual-stack ADD, two networks
  sharing a pool never given one address, an unknown pool name (code 7), ``ranges`` and ``pools`` together (7);
- selection by namespace (``K8S_POD_NAMESPACE``) and by node labels (two daemons, different ``--node-labels``);
- B27: delete refused with the live count, drain (the next pool of the range set is used; none left: code 100),
  DEL releases through the handle, the empty pool is deleted and never used again;
- a delete racing an ADD (the ADD paused between its pick and its commit) leaves no address in a deleted pool.

Every scenario ends with the invariant check (the ``daemons`` fixture) and ``ipamctl check``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import pytest
from harness import cni_config, daemon_ipamctl, run_cni, wait_for

from ipamd.store.base import Put
from ipamd.store.etcd import EtcdStore
from ipamd.v1 import pools_pb2, pools_pb2_grpc

pytestmark = pytest.mark.both_plugins


def named(name: str, pools: list[list[str]], **ipam: Any) -> dict[str, Any]:
    conf = cni_config(name=name, subnet=None, **ipam)
    conf["ipam"]["pools"] = pools
    return conf


def k8s(ns: str, pod: str) -> str:
    return "IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=uid-%s" % (ns, pod, pod)


def ctl(d: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return daemon_ipamctl(d, *args)


def ok(d: Any, *args: str) -> str:
    out = ctl(d, *args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def check_ok(d: Any) -> None:
    """``ipamctl check`` on the daemon's etcd and prefix exits 0 (no violation, no leak)."""
    out = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", d.endpoints,
                          "--etcd-prefix", d.prefix], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr


def keys(d: Any, prefix: str) -> list[str]:
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        return [kv.key for kv in store.read(prefix, prefix + "\xff", 5)[0]]
    finally:
        store.close()


def test_ipamctl_pool_create_list_show_drain_delete(daemons: Any) -> None:
    """create/list/show/drain/delete: tables, -o json, exit statuses (0, 2 invalid or unknown, 3 in use)."""
    a = daemons("A")
    out = ok(a, "pool", "create", "blue", "--cidr", "10.80.0.0/24", "--block-size", "28", "--exclude", "10.80.0.5",
             "--route", "192.168.50.0/24,10.80.0.1", "--namespace-selector", "team=blue", "--max-blocks-per-node",
             "3", "--release-cooldown-seconds", "30", "--gateway-mode", "block")
    assert out.split("\n")[0].split() == ["NAME", "CIDR", "BLOCK", "GATEWAY", "STATE", "SIZE", "ALLOCATED", "BLOCKS",
                                          "MAX/NODE", "NODES", "NAMESPACES"]
    # block mode: each of the 16 /28 blocks keeps its first, gateway and last address: 16 * 13 - 1 excluded = 207
    assert out.split("\n")[1].split() == ["blue", "10.80.0.0/24", "/28", "block", "active", "207", "0", "0", "3",
                                          "*", "team=blue"]
    spec_file = a.dir + "/six.json"
    with open(spec_file, "w") as fh:
        json.dump({"cidr": "fd00:80::/64", "nodeSelector": {"zone": "x"}}, fh)
    ok(a, "pool", "create", "six", "--from-file", spec_file, "--node-selector", "zone=y")
    doc = json.loads(ok(a, "pool", "list", "-o", "json"))
    assert [p["name"] for p in doc["pools"]] == ["blue", "six"]
    six = doc["pools"][1]
    assert (six["blockSize"], six["gatewayMode"], six["state"], six["poolId"], six["nodeSelector"]) == \
        (122, "subnet", "active", "@six/fd000080000000000000000000000000-64", {"zone": "y"})
    assert six["size"] == 2**64 - 2
    blue = json.loads(ok(a, "pool", "show", "blue", "-o", "json"))
    assert blue["exclude"] == ["10.80.0.5"] and blue["routes"] == [{"dst": "192.168.50.0/24", "gw": "10.80.0.1"}]
    assert (blue["maxBlocksPerNode"], blue["releaseCooldownSeconds"], blue["namespaceSelector"]) == \
        (3, 30, {"team": "blue"})
    text = ok(a, "pool", "show", "blue")
    assert "state:                  active" in text and "cidr:                   10.80.0.0/24" in text
    # invalid specs: same validation (and messages) as a range of a network configuration
    for args, needle in ((("--cidr", "::ffff:10.1.0.0/120"), "IPv4-mapped"),   # B41
                         (("--cidr", "10.81.0.0/31"), "too small"),            # B30
                         (("--cidr", "10.81.0.0/24", "--gateway", "10.81.0.255"), "broadcast"),
                         (("--cidr", "10.81.0.0/24", "--block-size", "20"), "blockSize"),
                         (("--cidr", "10.81.0.1/24"), "10.81.0.1/24")):
        bad = ctl(a, "pool", "create", "bad", *args)
        assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)
    bad = ctl(a, "pool", "create", "Bad_Name", "--cidr", "10.81.0.0/24")
    assert bad.returncode == 2 and "invalid pool name" in bad.stderr
    again = ctl(a, "pool", "create", "blue", "--cidr", "10.82.0.0/24")
    assert again.returncode == 2 and "pool blue already exists" in again.stderr
    overlap = ctl(a, "pool", "create", "blue2", "--cidr", "10.80.0.128/25")
    assert overlap.returncode == 2 and "overlaps pool blue (10.80.0.0/24)" in overlap.stderr
    missing = ctl(a, "pool", "show", "nope")
    assert missing.returncode == 2 and "pool nope does not exist" in missing.stderr
    drained = json.loads(ok(a, "pool", "drain", "blue", "-o", "json"))
    assert drained["state"] == "draining"
    assert json.loads(ok(a, "pool", "drain", "blue", "-o", "json"))["state"] == "draining"  # idempotent
    assert json.loads(ok(a, "pool", "drain", "blue", "--undo", "-o", "json"))["state"] == "active"
    assert "pool blue deleted" in ok(a, "pool", "delete", "blue")
    assert ctl(a, "pool", "delete", "blue").returncode == 2
    assert [p["name"] for p in json.loads(ok(a, "pool", "list", "-o", "json"))["pools"]] == ["six"]
    check_ok(a)


def test_dual_stack_add_from_named_pools_and_two_networks_share_one_pool(daemons: Any) -> None:
    """ADD from named pools v4+v6 in one transaction; two networks naming one pool never get the same address;
    the pool's routes and gateway are in the result; DEL releases through the handle."""
    a = daemons("A")
    ok(a, "pool", "create", "shared4", "--cidr", "10.83.0.0/24", "--route", "10.99.0.0/16")
    ok(a, "pool", "create", "shared6", "--cidr", "fd00:83::/64")
    net1 = named("net1", [["shared4"], ["shared6"]])
    net2 = named("net2", [["shared4"]])
    first = run_cni("ADD", net1, socket=a.cni_socket, container_id="c1")
    assert first.rc == 0, first
    assert first.ips == ["10.83.0.2/24", "fd00:83::2/64"]
    assert [ip["gateway"] for ip in first.json["ips"]] == ["10.83.0.1", "fd00:83::1"]
    assert {"dst": "10.99.0.0/16"} in first.json["routes"]
    second = run_cni("ADD", net2, socket=a.cni_socket, container_id="c1")  # same container ID, other network
    assert second.ips == ["10.83.0.3/24"]
    third = run_cni("ADD", net1, socket=a.cni_socket, container_id="c2")
    assert third.ips == ["10.83.0.4/24", "fd00:83::3/64"]
    # the address records live under the pool network @shared4, once, whatever network asked
    assert keys(a, "ips/@shared4/") == ["ips/@shared4/v4/0a530002", "ips/@shared4/v4/0a530003",
                                        "ips/@shared4/v4/0a530004"]
    assert keys(a, "ips/net1/") == [] and keys(a, "ips/net2/") == []
    shown = json.loads(ok(a, "pool", "show", "shared4", "-o", "json"))
    assert (shown["allocated"], shown["blocks"]) == (3, 1)
    listed = json.loads(ok(a, "list", "--pool", "@shared4/10.83.0.0/24", "-o", "json"))
    assert sorted((x["network"], x["containerID"]) for x in listed["allocations"]) == \
        [("net1", "c1"), ("net1", "c2"), ("net2", "c1")]
    assert run_cni("DEL", net2, socket=a.cni_socket, container_id="c1").rc == 0
    again = run_cni("ADD", net2, socket=a.cni_socket, container_id="c3")
    assert again.ips == ["10.83.0.3/24"]
    check_ok(a)


def test_named_pools_in_block_and_point_to_point_modes(daemons: Any) -> None:
    """A named pool's gatewayMode shapes the result as a network's gatewayMode does (docs/configuration.md "Gateway
    modes"): block mode gives each node its block's gateway and prefix, pointToPoint a /32 or /128 with the
    link-local gateway and its default route; a gateway key beside either mode is refused with exit status 2."""
    a, b = daemons("A"), daemons("B")
    ok(a, "pool", "create", "blk4", "--cidr", "10.86.0.0/24", "--block-size", "26", "--gateway-mode", "block")
    ok(a, "pool", "create", "p2p6", "--cidr", "fd00:86::/64", "--gateway-mode", "pointToPoint")
    refused = ctl(a, "pool", "create", "bad", "--cidr", "10.87.0.0/24", "--gateway-mode", "pointToPoint",
                  "--gateway", "10.87.0.1")
    assert refused.returncode == 2 and "cannot be set with gatewayMode pointToPoint" in refused.stderr, refused
    net = named("net1", [["blk4"], ["p2p6"]])
    on_a = run_cni("ADD", net, socket=a.cni_socket, container_id="c1")
    on_b = run_cni("ADD", net, socket=b.cni_socket, container_id="c2")
    assert on_a.rc == 0 and on_b.rc == 0, (on_a, on_b)
    # each node claims its own block: B's IPv4 block is .64/26 (gateway .65), its IPv6 /122 block starts at ::40
    assert (on_a.ips, on_b.ips) == (["10.86.0.2/26", "fd00:86::1/128"], ["10.86.0.66/26", "fd00:86::40/128"])
    assert [ip["gateway"] for ip in on_a.json["ips"]] == ["10.86.0.1", "fe80::1"]
    assert on_b.json["ips"][0]["gateway"] == "10.86.0.65"
    assert {"dst": "::/0", "gw": "fe80::1"} in on_a.json["routes"]
    for d, cid in ((a, "c1"), (b, "c2")):
        assert run_cni("DEL", net, socket=d.cni_socket, container_id=cid).rc == 0
    check_ok(a)


def test_unknown_pool_name_and_pools_beside_ranges_are_code_7(daemons: Any) -> None:
    a = daemons("A")
    out = run_cni("ADD", named("net1", [["nosuch"]]), socket=a.cni_socket)
    assert out.code == 7 and "unknown pool nosuch" in out.json["msg"], out
    both = named("net1", [["nosuch"]])
    both["ipam"]["ranges"] = [[{"subnet": "10.84.0.0/24"}]]
    out = run_cni("ADD", both, socket=a.cni_socket)
    assert out.code == 7 and "ipam.pools and ipam.ranges are both set" in out.json["msg"], out
    # an ADD right after pool create (through another daemon) finds the pool: a name the cache does not know is
    # read from etcd before it is called unknown
    b = daemons("B")
    ok(b, "pool", "create", "fresh", "--cidr", "10.84.0.0/24")
    assert run_cni("ADD", named("net1", [["fresh"]]), socket=a.cni_socket).ips == ["10.84.0.2/24"]
    check_ok(a)


def test_selection_by_namespace(daemons: Any) -> None:
    """The first pool in list order whose namespaceSelector matches the pod's namespace; none: code 7 naming the
    namespace, the node and the pools considered."""
    a = daemons("A")
    ok(a, "pool", "create", "team-a", "--cidr", "10.85.1.0/24",
       "--namespace-selector", "kubernetes.io/metadata.name=team-a")
    ok(a, "pool", "create", "team-b", "--cidr", "10.85.2.0/24",
       "--namespace-selector", "kubernetes.io/metadata.name=team-b")
    conf = named("net1", [["team-a", "team-b"]])
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="p1", args=k8s("team-b", "p1")).ips == \
        ["10.85.2.2/24"]
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="p2", args=k8s("team-a", "p2")).ips == \
        ["10.85.1.2/24"]
    out = run_cni("ADD", conf, socket=a.cni_socket, container_id="p3", args=k8s("other", "p3"))
    assert out.code == 7, out
    assert "no pool of team-a, team-b selects namespace other on node A" in out.json["msg"]
    out = run_cni("ADD", conf, socket=a.cni_socket, container_id="p4")  # no K8S_POD_NAMESPACE
    assert out.code == 7 and "namespace (none)" in out.json["msg"], out
    check_ok(a)


def test_selection_by_node_labels(daemons: Any) -> None:
    """Two daemons with different --node-labels take addresses from the pools their labels select."""
    a = daemons("A", extra_args=["--node-labels", "zone=a,rack=r1"])
    b = daemons("B", env={"IPAMD_NODE_LABELS": "zone=b"})
    ok(a, "pool", "create", "zone-a", "--cidr", "10.86.1.0/24", "--node-selector", "zone=a")
    ok(a, "pool", "create", "zone-b", "--cidr", "10.86.2.0/24", "--node-selector", "zone=b")
    ok(a, "pool", "create", "anywhere", "--cidr", "10.86.3.0/24")
    conf = named("net1", [["zone-a", "zone-b", "anywhere"]])
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="x1").ips == ["10.86.1.2/24"]
    assert run_cni("ADD", conf, socket=b.cni_socket, container_id="x2").ips == ["10.86.2.2/24"]
    only_b = named("net2", [["zone-b"]])
    out = run_cni("ADD", only_b, socket=a.cni_socket, container_id="x3")
    assert out.code == 7 and "on node A" in out.json["msg"] and "zone=a" in out.json["details"], out
    # a full zone pool falls through to the next matching pool of the range set
    ok(a, "pool", "create", "tiny", "--cidr", "10.86.4.0/30", "--node-selector", "zone=b")
    tiny_first = named("net3", [["tiny", "anywhere"]])
    assert run_cni("ADD", tiny_first, socket=b.cni_socket, container_id="t1").ips == ["10.86.4.2/30"]
    assert run_cni("ADD", tiny_first, socket=b.cni_socket, container_id="t2").ips == ["10.86.3.2/24"]
    check_ok(a)


def test_b27_refused_delete_drain_del_then_delete(daemons: Any) -> None:
    """B27 with named pools: delete refused with the live count; drain moves new ADDs to the next pool (none:
    code 100 naming the draining pool); DEL releases through the handle; the empty pool is deleted, its blocks
    and records are gone, and it is never used again."""
    a = daemons("A")
    ok(a, "pool", "create", "old", "--cidr", "10.64.0.0/24")
    ok(a, "pool", "create", "new", "--cidr", "10.65.0.0/24")
    conf = named("net1", [["old", "new"]])
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="c1").ips == ["10.64.0.2/24"]
    refused = ctl(a, "pool", "delete", "old")
    assert refused.returncode == 3, refused
    assert "pool old still holds 1 address(es)" in refused.stderr
    # the admin API's status and CNI code
    with grpc.insecure_channel("unix:" + a.grpc_socket) as ch, pytest.raises(grpc.RpcError) as info:
        pools_pb2_grpc.PoolAdminStub(ch).DeleteNamedPool(pools_pb2.DeleteNamedPoolRequest(name="old"), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("ipamd-cni-code", "120") in tuple(info.value.trailing_metadata())
    assert keys(a, "poolspecs/") == ["poolspecs/new", "poolspecs/old"]
    ok(a, "pool", "drain", "old")
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="c2").ips == ["10.65.0.2/24"]
    only_old = named("net2", [["old"]])
    out = run_cni("ADD", only_old, socket=a.cni_socket, container_id="c3")
    assert out.code == 100 and "pool old is draining" in out.json["msg"], out
    # CHECK still knows the drained pool's address
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.64.0.2/24"}]}
    check_conf = dict(conf, prevResult=prev)
    assert run_cni("CHECK", check_conf, socket=a.cni_socket, container_id="c1").rc == 0
    # DEL c1 with a configuration that no longer names the pool: released through the handle
    assert run_cni("DEL", named("net1", [["new"]]), socket=a.cni_socket, container_id="c1").rc == 0
    assert keys(a, "ips/@old/") == []
    assert "pool old deleted (1 empty block(s) removed)" in ok(a, "pool", "delete", "old")
    assert keys(a, "poolspecs/") == ["poolspecs/new"]
    assert keys(a, "blocks/@old/") == [] and keys(a, "pools/@old/") == []
    out = run_cni("ADD", conf, socket=a.cni_socket, container_id="c4")
    assert out.code == 7 and "unknown pool old" in out.json["msg"], out
    assert run_cni("ADD", named("net1", [["new"]]), socket=a.cni_socket, container_id="c4").ips == ["10.65.0.3/24"]
    check_ok(a)


def test_delete_racing_an_add_strands_no_address(daemons: Any) -> None:
    """The ADD picks its address from the pool (spec revision R) and pauses; the pool, still empty, is deleted;
    the ADD's commit compares the spec's revision, fails, and answers code 7: no address in a deleted pool."""
    a = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_pick=pause:2:1"})
    ok(a, "pool", "create", "racy", "--cidr", "10.87.0.0/24")
    conf = named("net1", [["racy"]])
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(run_cni("ADD", conf, socket=a.cni_socket, container_id="r1")))
    t.start()
    deleted = None
    for _ in range(100):  # the delete goes while the ADD is paused after its pick
        if "add.after_pick" in a.log():
            deleted = ctl(a, "pool", "delete", "racy")
            break
        time.sleep(0.02)
    t.join(30)
    assert deleted is not None and deleted.returncode == 0, deleted
    out = result[0]
    assert out.code == 7 and "unknown pool racy" in out.json["msg"], out
    assert keys(a, "ips/@racy/") == [] and keys(a, "handles/net1/") == [] and keys(a, "poolspecs/") == []
    check_ok(a)


def test_kubernetes_node_labels_select_pools(daemons: Any, fake: Any, workdir: str) -> None:
    """Kubernetes mode: the Node object's labels (fake API server) are matched by nodeSelector, followed by the
    watch when they change; --node-labels win on a conflict."""
    from fakekube import write_kubeconfig

    fake.add_node("k1")
    kubeconfig = write_kubeconfig(workdir + "/kubeconfig", fake.url, fake.token)
    d = daemons("k1", extra_args=["--kubernetes", "--kubeconfig", kubeconfig, "--node-labels", "tier=gold"])
    ok(d, "pool", "create", "east", "--cidr", "10.89.1.0/24", "--node-selector", "topology.kubernetes.io/zone=east")
    ok(d, "pool", "create", "gold", "--cidr", "10.89.2.0/24", "--node-selector", "tier=gold")
    east = named("net1", [["east"]])
    out = run_cni("ADD", east, socket=d.cni_socket, container_id="k1")
    assert out.code == 7, out  # the node has no zone label yet
    fake.update_node("k1", lambda o: o["metadata"].__setitem__("labels", {"topology.kubernetes.io/zone": "east",
                                                                          "tier": "silver"}))
    wait_for(lambda: run_cni("ADD", east, socket=d.cni_socket, container_id="k1").ips == ["10.89.1.2/24"],
             "the node's new label to select pool east", timeout=15)
    assert run_cni("ADD", named("net2", [["gold"]]), socket=d.cni_socket, container_id="k2").ips == ["10.89.2.2/24"]
    check_ok(d)


def kube_daemon(daemons: Any, fake: Any, workdir: str, name: str = "k1") -> Any:
    from fakekube import write_kubeconfig

    fake.add_node(name)
    kubeconfig = write_kubeconfig(workdir + "/kubeconfig", fake.url, fake.token)
    return daemons(name, extra_args=["--kubernetes", "--kubeconfig", kubeconfig])


def test_kubernetes_namespace_labels_select_pools(daemons: Any, fake: Any, workdir: str) -> None:
    """Kubernetes mode: namespaceSelector matches the Namespace objects' labels (fake API server): pods of namespaces
    labelled team=a and team=b get addresses from pools ta and tb, a namespace with neither matches nothing (7); a
    label changed on a Namespace is seen by the next ADD once the watch delivered it."""
    fake.add_namespace("alpha", {"team": "a"})
    fake.add_namespace("beta", {"team": "b"})
    fake.add_namespace("gamma")
    d = kube_daemon(daemons, fake, workdir)
    ok(d, "pool", "create", "ta", "--cidr", "10.93.1.0/24", "--namespace-selector", "team=a")
    ok(d, "pool", "create", "tb", "--cidr", "10.93.2.0/24", "--namespace-selector", "team=b")
    conf = named("net1", [["ta", "tb"]])

    def add(ns: str, pod: str) -> Any:
        return run_cni("ADD", conf, socket=d.cni_socket, container_id=pod, args=k8s(ns, pod))

    wait_for(lambda: add("alpha", "a1").code != 11, "the namespace view to list", timeout=15)
    assert add("alpha", "a1").ips == ["10.93.1.2/24"]
    assert add("beta", "b1").ips == ["10.93.2.2/24"]
    out = add("gamma", "g1")
    assert out.code == 7 and "no pool of ta, tb selects namespace gamma" in out.json["msg"], out
    assert "team=a" in out.json["details"], out
    fake.label_namespace("gamma", {"team": "b"})
    wait_for(lambda: add("gamma", "g1").ips == ["10.93.2.3/24"], "gamma's new label to select pool tb", timeout=15)
    fake.label_namespace("alpha", {"team": "b"})
    wait_for(lambda: add("alpha", "a2").ips == ["10.93.2.4/24"], "alpha's new label to select pool tb", timeout=15)
    assert add("alpha", "a1").ips == ["10.93.1.2/24"]  # a retried ADD keeps what it has (T42)
    assert len(keys(d, "ips/@ta/")) == 1, keys(d, "ips/@ta/")
    assert len(keys(d, "ips/@tb/")) == 3
    check_ok(d)


def test_kubernetes_namespace_labels_unknown_is_try_again_later(daemons: Any, fake: Any, workdir: str) -> None:
    """The API server unreachable (the namespace view not current): an ADD whose pools select by namespace labels
    answers 11 and writes nothing; a pool selected by the name label alone is still served; a namespace the view
    does not show yet is 11 too; a retried ADD of an attachment that holds its address still answers it (T42, B06);
    once the server is back, the next ADD gets the labelled pool."""
    fake.add_namespace("alpha", {"team": "a"})
    d = kube_daemon(daemons, fake, workdir)
    ok(d, "pool", "create", "ta", "--cidr", "10.94.1.0/24", "--namespace-selector", "team=a")
    ok(d, "pool", "create", "rest", "--cidr", "10.94.9.0/24")
    ok(d, "pool", "create", "ops", "--cidr", "10.94.3.0/24", "--namespace-selector",
       "kubernetes.io/metadata.name=ops")
    conf = named("net1", [["ta", "rest"]])
    ops = named("net2", [["ops"]])

    def add(ns: str, pod: str, c: Any = conf) -> Any:
        return run_cni("ADD", c, socket=d.cni_socket, container_id=pod, args=k8s(ns, pod))

    wait_for(lambda: add("alpha", "a1").code != 11, "the namespace view to list", timeout=15)
    assert add("alpha", "a1").ips == ["10.94.1.2/24"]
    out = add("fresh", "f1")  # no such Namespace (yet): its labels are unknown, never "none"
    assert out.code == 11 and "labels of namespace fresh are not known" in out.json["msg"], out
    fake.stop()
    wait_for(lambda: add("alpha", "a2").code == 11, "the view to notice the API server is gone", timeout=15)
    out = add("alpha", "a2")
    assert "pool ta" in out.json["msg"] and "team=a" in out.json["details"], out
    assert not [k for k in keys(d, "handles/net1/") if "a2" in k], keys(d, "handles/net1/")
    assert add("ops", "o1", ops).ips == ["10.94.3.2/24"]  # decidable by the name label alone
    assert add("alpha", "a1").ips == ["10.94.1.2/24"]  # a retried ADD answers what it holds, labels unknown or not
    assert len(keys(d, "ips/@rest/")) == 0  # never the catch-all pool in place of ta
    check_ok(d)
    fake.start()
    wait_for(lambda: add("alpha", "a2").code != 11, "the view to list again", timeout=30)
    assert add("alpha", "a2").ips == ["10.94.1.3/24"]
    assert len(keys(d, "ips/@rest/")) == 0
    check_ok(d)


def test_drained_pool_retried_add_status_and_requested_address(daemons: Any) -> None:
    """After a drain: a retried ADD of an attachment that holds an address of the pool returns it unchanged (T42,
    B06); STATUS answers 50 when every pool of a range set is draining, 0 while one is active; a requested address
    in the draining pool is 101 (B27: no new allocation from it)."""
    a = daemons("A")
    ok(a, "pool", "create", "d1", "--cidr", "10.90.0.0/24", "--namespace-selector", "kubernetes.io/metadata.name=x")
    conf = named("net1", [["d1"]])
    first = run_cni("ADD", conf, socket=a.cni_socket, container_id="c1", args=k8s("x", "c1"))
    assert first.ips == ["10.90.0.2/24"], first
    assert run_cni("STATUS", conf, socket=a.cni_socket, container_id=None, if_name=None, netns=None).rc == 0
    ok(a, "pool", "drain", "d1")
    again = run_cni("ADD", conf, socket=a.cni_socket, container_id="c1", args=k8s("x", "c1"))
    assert again.rc == 0 and again.ips == ["10.90.0.2/24"], again
    status = run_cni("STATUS", conf, socket=a.cni_socket, container_id=None, if_name=None, netns=None)
    assert status.code == 50 and "pool d1 is draining" in status.json["msg"], status
    wanted = dict(conf, runtimeConfig={"ips": ["10.90.0.9"]})
    out = run_cni("ADD", wanted, socket=a.cni_socket, container_id="c2", args=k8s("x", "c2"))
    assert out.code == 100 and "pool d1 is draining" in out.json["msg"], out  # nothing left in the range set
    ok(a, "pool", "create", "d2", "--cidr", "10.91.0.0/24")
    both = named("net1", [["d1", "d2"]])
    out = run_cni("ADD", dict(both, runtimeConfig={"ips": ["10.90.0.9"]}), socket=a.cni_socket, container_id="c2",
                  args=k8s("x", "c2"))
    assert out.code == 101 and "10.90.0.9 is in pool d1" in out.json["msg"], out
    assert run_cni("STATUS", both, socket=a.cni_socket, container_id=None, if_name=None, netns=None).rc == 0
    ok(a, "pool", "drain", "d1", "--undo")
    out = run_cni("ADD", wanted, socket=a.cni_socket, container_id="c2", args=k8s("x", "c2"))
    assert out.ips == ["10.90.0.9/24"], out
    assert run_cni("DEL", conf, socket=a.cni_socket, container_id="c1").rc == 0
    assert run_cni("DEL", conf, socket=a.cni_socket, container_id="c2").rc == 0
    assert "pool d1 deleted" in ok(a, "pool", "delete", "d1")
    check_ok(a)


def test_concurrent_adds_and_a_delete_from_a_barrier(daemons: Any) -> None:
    """Eight ADDs through two daemons and a delete released together: either the delete commits first (every ADD
    that follows answers 7 and holds nothing) or an ADD does (the delete is refused with the count); never an address
    in a deleted pool."""
    a, b = daemons("A"), daemons("B")
    ok(a, "pool", "create", "herd", "--cidr", "10.92.0.0/24", "--block-size", "28")
    conf = named("net1", [["herd"]])
    barrier = threading.Barrier(9)
    adds: list[Any] = []
    deleted: list[Any] = []

    def add(i: int) -> None:
        barrier.wait(30)
        adds.append(run_cni("ADD", conf, socket=(a, b)[i % 2].cni_socket, container_id="h%d" % i))

    def delete() -> None:
        barrier.wait(30)
        deleted.append(ctl(a, "pool", "delete", "herd"))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)] + [threading.Thread(target=delete)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    held = keys(a, "ips/@herd/")
    got = [x for x in adds if x.rc == 0]
    assert all(x.code == 7 for x in adds if x.rc != 0), adds
    assert len(held) == len(got) == len({ip for x in got for ip in x.ips})
    if deleted[0].returncode == 0:
        assert keys(a, "poolspecs/") == [] and held == [] and keys(a, "blocks/@herd/") == []
    else:
        assert deleted[0].returncode == 3 and "still holds" in deleted[0].stderr, deleted[0]
        assert keys(a, "poolspecs/") == ["poolspecs/herd"] and held
    check_ok(a)


def put_raw(d: Any, key: str, value: bytes) -> None:
    """Write one key under the daemon's prefix as an operator's ``etcdctl put`` would (no validation)."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        assert store.txn([], [Put(key, value)], [], 5).succeeded
    finally:
        store.close()


def test_hand_written_spec_under_another_name_is_refused_everywhere(daemons: Any) -> None:
    """A spec written by hand at ``poolspecs/mism`` whose ``name`` says ``other`` (copied from another pool and
    edited): before, the daemons cached it as ``other`` after a sync and as ``mism`` from the watch, an ADD naming
    ``mism`` compared ``poolspecs/other`` and retried 40 times into code 11, and ``pool list`` showed a pool
    ``other`` that ``pool show other`` called missing. Now it is a malformed spec like any other: ADD answers code 7
    at once naming the stored spec, ``pool list`` leaves it out, ``ipamctl check`` reports it, and ``pool delete
    mism`` removes it; the daemons keep serving."""
    a, b = daemons("A"), daemons("B")
    ok(a, "pool", "create", "blue", "--cidr", "10.88.0.0/24")
    spec = json.loads(ok(a, "pool", "show", "blue", "-o", "json"))
    for extra in ("allocated", "size", "blocks", "poolId", "specRevision"):
        spec.pop(extra)
    spec.update(name="other", cidr="10.89.0.0/24")
    put_raw(a, "poolspecs/mism", json.dumps(spec).encode())
    c = daemons("C")  # learns the spec from its first sync, A and B from their watch
    for d in (a, b, c):
        started = time.monotonic()
        out = run_cni("ADD", named("net2", [["mism"]]), socket=d.cni_socket, container_id="m-" + d.node)
        assert out.code == 7, (d.node, out)
        assert "stored spec poolspecs/mism is not valid" in out.json["msg"], out
        assert "stored as pool mism but names pool other" in out.json["msg"], out
        assert time.monotonic() - started < 5, out
        out = run_cni("ADD", named("net2", [["other"]]), socket=d.cni_socket, container_id="o-" + d.node)
        assert out.code == 7 and "unknown pool other" in out.json["msg"], out
        assert d.health() == "SERVING"
    assert [p["name"] for p in json.loads(ok(a, "pool", "list", "-o", "json"))["pools"]] == ["blue"]
    shown = ctl(a, "pool", "show", "mism")
    assert shown.returncode == 2 and "names pool other" in shown.stderr, shown
    report = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", a.endpoints,
                             "--etcd-prefix", a.prefix], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert report.returncode == 1 and "poolspecs/mism" in report.stdout and "names pool other" in report.stdout, \
        report
    assert keys(a, "ips/") == [] and keys(a, "handles/") == []
    assert "pool mism deleted" in ok(a, "pool", "delete", "mism")
    assert run_cni("ADD", named("net2", [["blue"]]), socket=c.cni_socket, container_id="ok").ips == ["10.88.0.2/24"]
    assert run_cni("DEL", named("net2", [["blue"]]), socket=c.cni_socket, container_id="ok").rc == 0
    check_ok(a)


def test_create_after_an_interrupted_delete_starts_clean(daemons: Any) -> None:
    """The daemon serving ``pool delete`` dies after deleting the spec and before removing the pool's records
    (failpoint ``pooldelete.before_cleanup=crash``); the operator creates the pool again (same CIDR with another
    block size; another CIDR) through another daemon. Before, the new pool ran on the old pool's /28 blocks and pool
    record (the block size in force is the pool record's) while ``pool show`` said /26, and the old CIDR's records
    stayed listed under the new pool. Now create finishes the interrupted clean-up first."""
    a = daemons("A", env={"IPAMD_FAILPOINTS": "pooldelete.before_cleanup=crash"})
    b = daemons("B")
    conf = named("net1", [["blue"], ["red"]])
    ok(b, "pool", "create", "blue", "--cidr", "10.84.0.0/24", "--block-size", "28")
    ok(b, "pool", "create", "red", "--cidr", "10.85.0.0/24", "--block-size", "28")
    assert run_cni("ADD", conf, socket=b.cni_socket, container_id="c1").ips == ["10.84.0.2/24", "10.85.0.2/24"]
    assert run_cni("DEL", conf, socket=b.cni_socket, container_id="c1").rc == 0
    interrupted = ctl(a, "pool", "delete", "blue")
    assert interrupted.returncode != 0 and a.proc is not None and a.proc.wait(10) == 137, interrupted
    a = daemons("A2", env={"IPAMD_FAILPOINTS": "pooldelete.before_cleanup=crash"})
    assert ctl(a, "pool", "delete", "red").returncode != 0 and a.proc is not None and a.proc.wait(10) == 137
    assert keys(b, "poolspecs/") == []
    assert keys(b, "blocks/@blue/") == ["blocks/@blue/0a540000-24/0a540000-28"]  # the interrupted delete's leftovers
    assert keys(b, "pools/@red/") == ["pools/@red/0a550000-24"]
    report = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", b.endpoints,
                             "--etcd-prefix", b.prefix], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert report.returncode == 0 and "OK: all invariants hold (2 warning(s))" in report.stdout, report
    assert "WARN pools/@red/0a550000-24: named pool red has no spec poolspecs/red" in report.stdout, report
    assert "ipamctl pool delete blue removes them" in report.stdout, report
    ok(b, "pool", "create", "blue", "--cidr", "10.84.0.0/24")  # blockSize 26 now
    ok(b, "pool", "create", "red", "--cidr", "10.86.0.0/24")
    assert keys(b, "blocks/@blue/") == [] and keys(b, "pools/@red/") == [] and keys(b, "blocks/@red/") == []
    out = run_cni("ADD", conf, socket=b.cni_socket, container_id="c2", args="IP=10.84.0.40")
    assert out.ips == ["10.84.0.40/24", "10.86.0.2/24"], out
    assert keys(b, "blocks/@blue/") == ["blocks/@blue/0a540000-24/0a540000-26"]
    assert keys(b, "pools/@red/") == ["pools/@red/0a560000-24"]
    blue = json.loads(ok(b, "pool", "show", "blue", "-o", "json"))
    assert (blue["blockSize"], blue["blocks"], blue["allocated"]) == (26, 1, 1)
    pools = json.loads(ok(b, "pools", "-o", "json"))
    assert sorted((p["pool"], p["blockSize"]) for p in pools["pools"]) == \
        [("@blue/0a540000-24", 26), ("@red/0a560000-24", 26)], pools
    assert run_cni("DEL", conf, socket=b.cni_socket, container_id="c2").rc == 0
    check_ok(b)


@pytest.mark.parametrize("obj, needle", [
    ({"nodeSelecter": {"zone": "a"}}, "unknown key(s) nodeSelecter"),   # was: created, selecting every node
    ({"strictAffinity": "no"}, "strictAffinity 'no' is not true or false"),  # was: created with strictAffinity true
    ({"gatewayMode": "block", "strictAffinity": False}, "strictAffinity false"),  # was: created (false not sent)
    ({"routes": [{"dst": "10.9.0.0/16", "gw": "10.59.0.1", "mtu": 1400}]}, "routes[0] has key(s) mtu"),  # was: mtu lost
    ({"blockSize": "28"}, "blockSize '28' is not an integer"),          # was: a Python traceback, exit 1
    ({"maxBlocksPerNode": 2**40}, "maxBlocksPerNode"),                   # was: a traceback (int32 overflow)
    ({"releaseCooldownSeconds": 1.5}, "releaseCooldownSeconds 1.5"),     # was: a traceback
    ({"nodeSelector": {"zone": 1}}, "nodeSelector value 1"),             # was: a traceback
    ({"exclude": "10.59.0.5"}, "exclude '10.59.0.5' is not a list"),     # was: "entry '1' is not an IP address"
])
def test_pool_create_from_file_refuses_what_the_api_would_drop(daemons: Any, obj: dict[str, Any],
                                                                needle: str) -> None:
    """``ipamctl pool create --from-file`` goes through the ``NamedPool`` message, which carries no unknown key, no
    ``false`` and no route key but ``dst``/``gw``: a spec file is validated as the daemon validates a stored spec
    before it is sent, so each of these is exit 2 (code 7) naming the field, and no pool is created."""
    a = daemons("A")
    path = a.dir + "/spec.json"
    with open(path, "w") as fh:
        json.dump({"cidr": "10.59.0.0/24", **obj}, fh)
    out = ctl(a, "pool", "create", "p1", "--from-file", path)
    assert out.returncode == 2 and "error 7" in out.stderr and needle in out.stderr, out
    assert "Traceback" not in out.stderr
    assert keys(a, "poolspecs/") == []
    good = ctl(a, "pool", "create", "p1", "--cidr", "10.59.0.0/24", "--strict-affinity")
    assert good.returncode == 0 and json.loads(ok(a, "pool", "show", "p1", "-o", "json"))["strictAffinity"] is True
    assert "pool p1 deleted" in ok(a, "pool", "delete", "p1")


def test_spec_nested_too_deeply_is_malformed_not_an_internal_error(daemons: Any) -> None:
    """``poolspecs/deep`` holding ``[[[[…`` 100000 deep (written by hand): before, decoding it raised
    ``RecursionError`` (not ``ValueError``), so every ``pool create`` answered ``error 999: internal error`` and
    ``ipamctl check`` died with a traceback. Now it is a malformed spec like any other: creates, lists and ADDs go
    on, a daemon started afterwards syncs and becomes ready, ``ipamctl check`` reports it, delete removes it."""
    a = daemons("A")
    ok(a, "pool", "create", "v4", "--cidr", "10.57.0.0/24")
    put_raw(a, "poolspecs/deep", b"[" * 100000)
    created = ctl(a, "pool", "create", "v5", "--cidr", "10.58.0.0/24")
    assert created.returncode == 0, created
    assert [p["name"] for p in json.loads(ok(a, "pool", "list", "-o", "json"))["pools"]] == ["v4", "v5"]
    b = daemons("B")  # its first sync reads the spec
    conf = named("n1", [["v4"], ["v5"]])
    for d in (a, b):
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id="c-" + d.node)
        assert out.rc == 0, out
        deep = run_cni("ADD", named("n2", [["deep"]]), socket=d.cni_socket, container_id="d-" + d.node)
        assert deep.code == 7 and "nested too deeply" in deep.json["msg"], deep
        assert d.health() == "SERVING"
    report = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", a.endpoints,
                             "--etcd-prefix", a.prefix], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert report.returncode == 1 and "poolspecs/deep" in report.stdout and "Traceback" not in report.stderr, report
    assert "pool deep deleted" in ok(a, "pool", "delete", "deep")
    for d in (a, b):
        assert run_cni("DEL", conf, socket=d.cni_socket, container_id="c-" + d.node).rc == 0
    check_ok(a)


def test_keys_a_spec_owns_beside_pools_are_ignored_with_a_warning(daemons: Any) -> None:
    """``maxBlocksPerNode`` and ``gatewayMode`` beside ``ipam.pools`` are the spec's (as ``strictAffinity``): the
    ADD follows the spec and says so on stderr. Before, both were dropped without a word: a node went on claiming
    a second block past ``"maxBlocksPerNode": 1`` and got the subnet's gateway despite ``"gatewayMode": "block"``."""
    a = daemons("A")
    ok(a, "pool", "create", "v4", "--cidr", "10.57.0.0/24", "--block-size", "30")
    conf = named("n1", [["v4"]], maxBlocksPerNode=1, gatewayMode="block")
    for i in range(3):
        out = run_cni("ADD", conf, socket=a.cni_socket, container_id="c%d" % i)
        assert out.ips == ["10.57.0.%d/24" % (i + 2)], out
        assert "ignoring ipam.maxBlocksPerNode: the named pools' specs say it" in out.stderr, out
        assert "ignoring ipam.gatewayMode: the named pools' specs say it" in out.stderr, out
    for i in range(3):
        assert run_cni("DEL", conf, socket=a.cni_socket, container_id="c%d" % i).rc == 0
    check_ok(a)
