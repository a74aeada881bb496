"""Field cases B10-B13 (docs/field-cases.md "DEL semantics") against real etcd, real ipamd daemons and real ipamd-cni
shim processes (one fresh process per CNI call).

DEL releases by the attachment key (network, containerID, ifName), is idempotent, never needs the netns or a
prevResult, and is serialised with an ADD of the same attachment. The ``daemons`` fixture checks the invariants of
docs/etcd-layout.md after every scenario.

This module runs on its own single-member etcd (the ``etcd`` fixture below overrides the session one): B10 asserts
that a DEL of nothing leaves the *global* etcd revision unchanged, and on the shared session etcd any other writer
(for instance the lease of a daemon another test killed with SIGKILL expiring 30 s later and deleting its
``nodes/<node>`` key) would move that revision.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cni_conformance_util import (
    assert_err,
    assert_ok_empty,
    handle_ips,
    ip_owner,
    ip_records,
    parse_stdout,
    read_handle,
    revision,
    wait_registered,
)
from harness import CniOutput, Daemon, EtcdCluster, cni_config, run_cni, snapshot_counts


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """This module's own etcd (see the module docstring): nothing but this module's daemons writes to it."""
    cluster = EtcdCluster(1).start()
    yield cluster
    cluster.stop()


# -- helpers ------------------------------------------------------------------------------------------------------


def add(d: Daemon, conf: Any, cid: str, if_name: str = "eth0", **kw: Any) -> CniOutput:
    kw.setdefault("netns", "/var/run/netns/" + cid)
    return run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, if_name=if_name, **kw)


def delete(d: Daemon, conf: Any, cid: str, if_name: str = "eth0", **kw: Any) -> CniOutput:
    kw.setdefault("netns", "/var/run/netns/" + cid)
    return run_cni("DEL", conf, socket=d.cni_socket, container_id=cid, if_name=if_name, **kw)


def assert_added(out: CniOutput, address: str) -> None:
    """A successful ADD: exit 0, one strict JSON document, exactly ``address``."""
    assert out.rc == 0, out
    obj = parse_stdout(out)
    assert [ip["address"] for ip in obj["ips"]] == [address], out





def counts(d: Daemon) -> tuple[int, int]:
    c = snapshot_counts(d.endpoints, d.prefix)
    return c["handles"], c["ips"]


# -- B10 ----------------------------------------------------------------------------------------------------------


def test_b10_del_unknown_twice_and_after_failed_add(daemons):
    """B10 (whereabouts #70): DEL must treat "nothing to release" as success, so a runtime's cleanup loop after a
    failed ADD ends.

    Subnet 10.46.0.0/29 (usable .2-.6). ``DEL cX eth0`` (never added) -> ok-empty and the etcd revision unchanged;
    ``ADD c1``; ``DEL c1``; ``DEL c1`` -> both ok-empty; ``ADD c2..c6`` -> .2..6; ``ADD c7`` -> code 100;
    ``DEL c7`` -> ok-empty, no record for c7; ``DEL c2 net9`` -> ok-empty and c2/eth0 still holds .2. The DELs
    that find nothing (cX, the second c1, c7, c2/net9) write nothing at all: the revision stays put for each.

    The /29 is smaller than the base config's blockSize 28, which would be a block size shorter than the pool
    prefix (code 7 by decision 4), so blockSize is left out (the pool's default)."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.46.0.0/29")
    wait_registered(d)

    before = revision(d)
    assert_ok_empty(delete(d, conf, "cX"))
    assert revision(d) == before, "DEL of a never-added container wrote to etcd"

    assert_added(add(d, conf, "c1"), "10.46.0.2/29")
    assert_ok_empty(delete(d, conf, "c1"))
    assert read_handle(d, "net1", "c1", "eth0") is None
    assert ip_records(d, "10.46.0.2") == []
    before = revision(d)
    assert_ok_empty(delete(d, conf, "c1"))
    assert revision(d) == before, "second DEL of c1 wrote to etcd"

    for i in range(2, 7):
        assert_added(add(d, conf, "c%d" % i), "10.46.0.%d/29" % i)
    assert counts(d) == (5, 5)

    before = revision(d)
    assert_err(add(d, conf, "c7"), 100, "1.1.0")
    assert_ok_empty(delete(d, conf, "c7"))
    assert revision(d) == before, "the failed ADD c7 or its cleanup DEL wrote to etcd"
    assert read_handle(d, "net1", "c7", "eth0") is None
    assert counts(d) == (5, 5)

    assert_ok_empty(delete(d, conf, "c2", "net9"))
    assert revision(d) == before, "DEL c2/net9 (never added) wrote to etcd"
    assert handle_ips(d, "net1", "c2", "eth0") == ["10.46.0.2/29"]
    assert ip_owner(d, "10.46.0.2") == "net1/c2/eth0"
    assert counts(d) == (5, 5)


# -- B11 ----------------------------------------------------------------------------------------------------------


def test_b11_del_with_netns_unset_gone_or_stale_after_reboot(daemons, workdir):
    """B11 (plugins #252, containerd/cri #948): after a reboot or a crashed sandbox the netns is gone; DEL must
    release anyway.

    Subnet 10.47.0.0/24. ``ADD c1``, ``ADD c2`` -> .2, .3. ``DEL c1`` with ``CNI_NETNS`` unset and ``DEL c2`` with
    ``CNI_NETNS=/var/run/netns/gone`` (does not exist) -> ok-empty, address released. Reboot-like: ``ADD c3``
    (-> .2, freed by c1's DEL); stop ipamd; delete the netns file; start a new ipamd with the same node name;
    ``DEL c3`` with the stale path -> ok-empty and .2 released.

    "The shim never opens the netns for DEL (or ADD)": every ADD's ``CNI_NETNS`` is a FIFO, which blocks any
    ``open()`` for lack of a peer, so a plugin that opened it would hang past the call's timeout instead of
    answering."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.47.0.0/24", blockSize=28)

    def fifo(name: str) -> str:
        path = os.path.join(workdir, "netns-" + name)
        os.mkfifo(path)
        return path

    assert_added(add(d, conf, "c1", netns=fifo("c1"), timeout=20), "10.47.0.2/24")
    assert_added(add(d, conf, "c2", netns=fifo("c2"), timeout=20), "10.47.0.3/24")

    assert_ok_empty(delete(d, conf, "c1", netns=None, timeout=20))
    assert read_handle(d, "net1", "c1", "eth0") is None
    assert ip_records(d, "10.47.0.2") == []

    assert not os.path.exists("/var/run/netns/gone")
    assert_ok_empty(delete(d, conf, "c2", netns="/var/run/netns/gone", timeout=20))
    assert read_handle(d, "net1", "c2", "eth0") is None
    assert ip_records(d, "10.47.0.3") == []

    c3_netns = fifo("c3")
    assert_added(add(d, conf, "c3", netns=c3_netns, timeout=20), "10.47.0.2/24")
    d.stop()
    os.unlink(c3_netns)  # the reboot wiped /var/run/netns/*
    rebooted = daemons("A")
    assert_ok_empty(delete(rebooted, conf, "c3", netns=c3_netns, timeout=20))
    assert read_handle(rebooted, "net1", "c3", "eth0") is None
    assert ip_records(rebooted, "10.47.0.2") == []
    assert counts(rebooted) == (0, 0)


# -- B12 ----------------------------------------------------------------------------------------------------------


def test_b12_del_with_missing_or_stale_prev_result_releases_by_key(daemons):
    """B12 (plugins PR #390): the address to release always comes from the handle of (network, containerID,
    ifname), never from prevResult.

    Subnet 10.48.0.0/24. ``ADD c1`` (.2); ``DEL c1`` without prevResult -> ok-empty, .2 released; ``ADD c2`` (.2
    again). ``DEL c1 eth0`` again with the stale prevResult ``{"ips":[{"address":"10.48.0.2/24"}]}`` -> ok-empty
    and c2 keeps .2. ``ADD c9`` with ``CNI_ARGS=IgnoreUnknown=1;IP=10.48.0.9``; ``ADD c3`` (.3); ``DEL c3`` with a
    prevResult listing 10.48.0.9/24 -> ok-empty, .3 released, .9 still c9's.

    "cooldown 0": ipamd has no release cooldown option (yet); reuse is immediate by default, which is what this
    case needs."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.48.0.0/24", blockSize=28)

    assert_added(add(d, conf, "c1"), "10.48.0.2/24")
    assert "prevResult" not in conf
    assert_ok_empty(delete(d, conf, "c1"))
    assert read_handle(d, "net1", "c1", "eth0") is None
    assert ip_records(d, "10.48.0.2") == []
    assert_added(add(d, conf, "c2"), "10.48.0.2/24")

    stale = {**conf, "prevResult": {"ips": [{"address": "10.48.0.2/24"}]}}
    assert_ok_empty(delete(d, stale, "c1"))
    assert handle_ips(d, "net1", "c2", "eth0") == ["10.48.0.2/24"]
    assert ip_owner(d, "10.48.0.2") == "net1/c2/eth0"

    assert_added(add(d, conf, "c9", args="IgnoreUnknown=1;IP=10.48.0.9"), "10.48.0.9/24")
    assert_added(add(d, conf, "c3"), "10.48.0.3/24")
    wrong = {**conf, "prevResult": {"cniVersion": "1.1.0",
                                    "ips": [{"address": "10.48.0.9/24", "gateway": "10.48.0.1"}]}}
    assert_ok_empty(delete(d, wrong, "c3"))
    assert read_handle(d, "net1", "c3", "eth0") is None
    assert ip_records(d, "10.48.0.3") == []
    assert handle_ips(d, "net1", "c9", "eth0") == ["10.48.0.9/24"]
    assert ip_owner(d, "10.48.0.9") == "net1/c9/eth0"
    assert handle_ips(d, "net1", "c2", "eth0") == ["10.48.0.2/24"]
    assert counts(d) == (2, 2)


# -- B13 ----------------------------------------------------------------------------------------------------------


def test_b13_del_while_add_of_same_attachment_in_flight(daemons):
    """B13 (Azure CNS #4829): a DEL arriving while the ADD of the same attachment is still in flight.

    Subnet 10.49.0.0/24, ``FP(add.after_pick=pause:3)`` on A. ``ADD c1 eth0 @A``; 1 s later (the ADD has picked
    its address and is paused before its transaction) ``DEL c1 eth0 @A``; wait for both; then ``ADD c2 eth0 @A``.
    Operations on one attachment are serialised: the DEL waits for the ADD, releases its address and answers
    ok-empty (accepted alternative: the ADD fails and commits nothing). Afterwards there is no handle and no address
    record for c1, and c2 gets 10.49.0.2/24."""
    d = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_pick=pause:3"})
    conf = cni_config("net1", subnet="10.49.0.0/24", blockSize=28)

    outcome: dict[str, CniOutput] = {}
    adder = threading.Thread(target=lambda: outcome.setdefault("add", add(d, conf, "c1")))
    adder.start()
    time.sleep(1.0)
    assert adder.is_alive(), "the ADD was not paused at add.after_pick"
    removed = delete(d, conf, "c1")
    adder.join(30)
    assert not adder.is_alive()

    assert_ok_empty(removed)
    first = outcome["add"]
    if first.rc == 0:
        assert_added(first, "10.49.0.2/24")
    else:  # the accepted alternative: the ADD was aborted with an error object and committed nothing
        parse_stdout(first)
        assert isinstance(first.code, int), first
    assert read_handle(d, "net1", "c1", "eth0") is None
    assert ip_records(d, "10.49.0.2") == []
    assert counts(d) == (0, 0)

    assert_added(add(d, conf, "c2"), "10.49.0.2/24")
    assert ip_owner(d, "10.49.0.2") == "net1/c2/eth0"
    assert counts(d) == (1, 1)


def test_b13_variant_del_then_add_reordered(daemons):
    """B13 variant (runtime reordering): ``DEL c1``, then ``ADD c1`` -> DEL ok-empty (nothing there), ADD -> .2,
    and .2 stays allocated to c1.

    Made a race rather than two calls one after the other: ``FP(del.before_commit=pause:2)`` holds the DEL inside
    the daemon (it has read "nothing there" and not yet sent its transaction) while the ADD arrives 1 s later. An
    implementation that let the ADD commit first would have the late DEL find the handle and release the address
    the runtime believes c1 now has."""
    d = daemons("A", env={"IPAMD_FAILPOINTS": "del.before_commit=pause:2"})
    conf = cni_config("net1", subnet="10.49.0.0/24", blockSize=28)

    outcome: dict[str, CniOutput] = {}
    remover = threading.Thread(target=lambda: outcome.setdefault("del", delete(d, conf, "c1")))
    remover.start()
    time.sleep(1.0)
    assert remover.is_alive(), "the DEL was not paused at del.before_commit"
    added = add(d, conf, "c1")
    remover.join(30)
    assert not remover.is_alive()

    assert_ok_empty(outcome["del"])
    assert_added(added, "10.49.0.2/24")
    time.sleep(0.5)
    assert handle_ips(d, "net1", "c1", "eth0") == ["10.49.0.2/24"]
    assert ip_owner(d, "10.49.0.2") == "net1/c1/eth0"
    assert counts(d) == (1, 1)
