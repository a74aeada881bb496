"""Field cases B15, B17 and B18 (docs/field-cases.md "DEL semantics": GC) against real etcd, real ipamd daemons and real
ipamd-cni shim processes (one fresh process per CNI call).

CNI GC (docs/cni-contract.md §2.6) releases every attachment of the network named on stdin that is not in the
keep-list ``cni.dev/valid-attachments`` (or the legacy ``cni.dev/attachments``), keyed by (containerID, ifname),
and never an allocation made after its liveness snapshot. The ``daemons`` fixture checks the invariants of
docs/etcd-layout.md after every scenario.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cni_conformance_util import NO_ATTACHMENT, assert_ok_empty, handle_ips, ip_owner, ip_records, parse_stdout
from harness import CniOutput, Daemon, cni_config, run_cni, snapshot_counts

VALID = "cni.dev/valid-attachments"
LEGACY = "cni.dev/attachments"


def add(d: Daemon, conf: Any, cid: str, if_name: str = "eth0") -> CniOutput:
    return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, if_name=if_name,
                   netns="/var/run/netns/" + cid)


def assert_added(out: CniOutput, address: str) -> None:
    assert out.rc == 0, out
    assert [ip["address"] for ip in parse_stdout(out)["ips"]] == [address], out


def gc(d: Daemon, conf: Any, **keys: list[tuple[str, str]] | None) -> CniOutput:
    """``GC`` with ``conf`` plus the given keep-list keys (``valid=`` -> ``cni.dev/valid-attachments``,
    ``legacy=`` -> ``cni.dev/attachments``), each a list of (containerID, ifname); GC gets no attachment env."""
    body = dict(conf)
    for name, key in (("valid", VALID), ("legacy", LEGACY)):
        if keys.get(name) is not None:
            body[key] = [{"containerID": c, "ifname": i} for c, i in keys[name]]
    return run_cni("GC", body, socket=d.cni_socket, **NO_ATTACHMENT)



def held(d: Daemon, network: str, cid: str, if_name: str, address: str) -> bool:
    """The attachment's handle lists exactly ``address`` and the address record names that handle."""
    cidr = handle_ips(d, network, cid, if_name)
    return cidr is not None and [c.split("/")[0] for c in cidr] == [address] \
        and ip_owner(d, address) == "%s/%s/%s" % (network, cid, if_name)


def free(d: Daemon, network: str, cid: str, if_name: str, address: str) -> bool:
    return handle_ips(d, network, cid, if_name) is None and ip_records(d, address) == []


def counts(d: Daemon) -> tuple[int, int]:
    c = snapshot_counts(d.endpoints, d.prefix)
    return c["handles"], c["ips"]


# -- B15 ----------------------------------------------------------------------------------------------------------


def test_b15_gc_never_frees_an_allocation_newer_than_its_snapshot(daemons):
    """B15 (whereabouts #207): the reconciler's live set and the allocated set were read at different times, and a
    reservation made in between was deleted.

    Subnet 10.51.0.0/24. ``ADD c1`` (.2). ``GC net1 valid [c1/eth0]`` with ``FP(gc.after_snapshot=pause:3)``;
    during the pause ``ADD c2 eth0`` (.3). GC -> ok-empty; .2 kept for c1 and .3 kept for c2 (decision 2: GC never
    deletes an allocation whose create_revision is newer than the revision of its liveness snapshot)."""
    d = daemons("A", env={"IPAMD_FAILPOINTS": "gc.after_snapshot=pause:3"})
    conf = cni_config("net1", subnet="10.51.0.0/24", blockSize=28)
    assert_added(add(d, conf, "c1"), "10.51.0.2/24")

    outcome: dict[str, CniOutput] = {}
    collector = threading.Thread(target=lambda: outcome.setdefault("gc", gc(d, conf, valid=[("c1", "eth0")])))
    collector.start()
    time.sleep(1.0)
    assert collector.is_alive(), "GC was not paused at gc.after_snapshot"
    assert_added(add(d, conf, "c2"), "10.51.0.3/24")
    assert collector.is_alive(), "ADD c2 did not land inside the GC's pause"
    collector.join(30)
    assert not collector.is_alive()

    assert_ok_empty(outcome["gc"])
    assert held(d, "net1", "c1", "eth0", "10.51.0.2")
    assert held(d, "net1", "c2", "eth0", "10.51.0.3")
    assert counts(d) == (2, 2)


# -- B17 ----------------------------------------------------------------------------------------------------------


def test_b17_gc_and_del_with_several_interfaces_and_odd_ifnames(daemons):
    """B17 (whereabouts #130): the liveness test and the release key must use the exact interface name.

    Subnet 10.53.0.0/24. ``ADD c1 eth0``, ``ADD c1 net1``, ``ADD c1 hello``, ``ADD c1 a.b-c_d`` -> .2, .3, .4,
    .5. ``GC net1 valid [c1/eth0, c1/net1, c1/hello, c1/a.b-c_d]`` frees nothing; ``DEL c1 net1`` frees only .3;
    ``GC net1 valid [c1/eth0]`` frees .4 and .5 and keeps .2."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.53.0.0/24", blockSize=28)
    ifnames = ["eth0", "net1", "hello", "a.b-c_d"]
    for n, ifname in enumerate(ifnames, start=2):
        assert_added(add(d, conf, "c1", ifname), "10.53.0.%d/24" % n)

    assert_ok_empty(gc(d, conf, valid=[("c1", i) for i in ifnames]))
    for n, ifname in enumerate(ifnames, start=2):
        assert held(d, "net1", "c1", ifname, "10.53.0.%d" % n), ifname
    assert counts(d) == (4, 4)

    out = run_cni("DEL", conf, socket=d.cni_socket, container_id="c1", if_name="net1", netns="/var/run/netns/c1")
    assert_ok_empty(out)
    assert free(d, "net1", "c1", "net1", "10.53.0.3")
    assert held(d, "net1", "c1", "eth0", "10.53.0.2")
    assert held(d, "net1", "c1", "hello", "10.53.0.4")
    assert held(d, "net1", "c1", "a.b-c_d", "10.53.0.5")

    assert_ok_empty(gc(d, conf, valid=[("c1", "eth0")]))
    assert held(d, "net1", "c1", "eth0", "10.53.0.2")
    assert free(d, "net1", "c1", "hello", "10.53.0.4")
    assert free(d, "net1", "c1", "a.b-c_d", "10.53.0.5")
    assert counts(d) == (1, 1)


# -- B18 ----------------------------------------------------------------------------------------------------------


def test_b18_gc_keep_list_keys_and_network_scope(daemons):
    """B18 (cni #1101): a GC that read the wrong keep-list key would see "no valid attachments" and free the whole
    network; a GC must also stay inside the network named on stdin.

    ``net1`` subnet 10.54.0.0/24, ``net2`` subnet 10.55.0.0/24, one daemon. net1: ``ADD c1 eth0``, ``ADD c2 eth0``
    (.2, .3); net2: ``ADD c1 net1`` (10.55.0.2). ``GC net1`` with only ``cni.dev/valid-attachments`` = [c1/eth0,
    c2/eth0]; with only ``cni.dev/attachments`` = the same; with neither key; with
    ``cni.dev/valid-attachments: []``. The first three -> ok-empty and nothing freed (the third warns on stderr);
    the last frees 10.54.0.2 and .3; 10.55.0.2 (net2) untouched in every step."""
    d = daemons("A")
    net1 = cni_config("net1", subnet="10.54.0.0/24", blockSize=28)
    net2 = cni_config("net2", subnet="10.55.0.0/24", blockSize=28)
    assert_added(add(d, net1, "c1"), "10.54.0.2/24")
    assert_added(add(d, net1, "c2"), "10.54.0.3/24")
    assert_added(add(d, net2, "c1", "net1"), "10.55.0.2/24")
    both = [("c1", "eth0"), ("c2", "eth0")]

    def net1_kept() -> bool:
        return held(d, "net1", "c1", "eth0", "10.54.0.2") and held(d, "net1", "c2", "eth0", "10.54.0.3")

    def net2_kept() -> bool:
        return held(d, "net2", "c1", "net1", "10.55.0.2")

    assert_ok_empty(gc(d, net1, valid=both))
    assert net1_kept() and net2_kept()

    assert_ok_empty(gc(d, net1, legacy=both))
    assert net1_kept() and net2_kept()

    neither = gc(d, net1)
    assert_ok_empty(neither)
    assert VALID in neither.stderr, neither  # the warning names the missing key
    assert net1_kept() and net2_kept()
    assert counts(d) == (3, 3)

    assert_ok_empty(gc(d, net1, valid=[]))
    assert free(d, "net1", "c1", "eth0", "10.54.0.2")
    assert free(d, "net1", "c2", "eth0", "10.54.0.3")
    assert net2_kept()
    assert counts(d) == (1, 1)
