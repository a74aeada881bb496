"""docs/cni-contract.md §6 cases 59-71: CHECK, STATUS, GC (real daemon, real etcd, one shim process per call)."""

from __future__ import annotations

import pytest
from cni_conformance_util import (
    CHECK_VERSIONS,
    NO_ATTACHMENT,
    assert_err,
    assert_ok_empty,
    assert_result,
    bridge_result,
    cfg,
    handle_ips,
)
from harness import run_cni, snapshot_counts

# each test runs with the native and the Python plugin (tests/conftest.py)
pytestmark = pytest.mark.both_plugins


def _counts(d):
    return snapshot_counts(d.endpoints, d.prefix)


# -- CHECK ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "1.1.0"])
def test_t59_check_with_bridge_prevresult(daemons, version):
    """59. ADD c1 (0.4.0 and 1.1.0), then CHECK with `prevResult` = bridge-style result containing our IP →
    ok-empty."""
    d = daemons("A")
    add = run_cni("ADD", cfg(version), socket=d.cni_socket)
    assert assert_result(add, version)["ips"][0]["address"] == "10.1.2.2/24"
    before = _counts(d)
    conf = {**cfg(version), "prevResult": bridge_result(version, ("10.1.2.2/24", "10.1.2.1"))}
    assert_ok_empty(run_cni("CHECK", conf, socket=d.cni_socket))
    assert _counts(d) == before  # CHECK is read-only


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_t60_check_without_reservation(daemons, version):
    """60. CHECK for never-added key → err 102. CHECK after DEL → err 102."""
    d = daemons("A")
    prev = bridge_result(version, ("10.1.2.2/24", "10.1.2.1"))
    assert_err(run_cni("CHECK", {**cfg(version), "prevResult": prev}, socket=d.cni_socket), 102, version)
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    assert_ok_empty(run_cni("DEL", cfg(version), socket=d.cni_socket))
    assert_err(run_cni("CHECK", {**cfg(version), "prevResult": prev}, socket=d.cni_socket), 102, version)


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_t61_check_address_mismatch(daemons, version):
    """61. CHECK where `prevResult.ips[0].address` differs from the reservation → err 103."""
    d = daemons("A")
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    prev = bridge_result(version, ("10.1.2.3/24", "10.1.2.1"))
    assert_err(run_cni("CHECK", {**cfg(version), "prevResult": prev}, socket=d.cni_socket), 103, version)
    assert handle_ips(d, "testnet", "c1", "eth0") == ["10.1.2.2/24"]


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_t62_check_without_prevresult(daemons, version):
    """62. CHECK without `prevResult` after a valid ADD → ok-empty (reservation exists)."""
    d = daemons("A")
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    conf = cfg(version)
    assert "prevResult" not in conf
    assert_ok_empty(run_cni("CHECK", conf, socket=d.cni_socket))


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_t63_check_daemon_stopped(daemons, version):
    """63. CHECK with daemon stopped → err 11."""
    d = daemons("A")
    add = run_cni("ADD", cfg(version), socket=d.cni_socket)
    assert add.ips == ["10.1.2.2/24"], add
    d.stop()
    assert_err(run_cni("CHECK", {**cfg(version), "prevResult": add.json}, socket=d.cni_socket), 11, version)


# -- STATUS -----------------------------------------------------------------------------------------------------


def test_t64_status_ready(daemons):
    """64. STATUS CFG(1.1.0), env only `CNI_COMMAND=STATUS` (+`CNI_PATH`), daemon up → ok-empty."""
    d = daemons("A")
    assert_ok_empty(run_cni("STATUS", cfg("1.1.0"), socket=d.cni_socket, **NO_ATTACHMENT))
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts  # STATUS allocates nothing


def test_t65_status_daemon_stopped(daemons):
    """65 (first part). STATUS with daemon stopped → err 50."""
    d = daemons("A")
    d.stop()
    assert_err(run_cni("STATUS", cfg("1.1.0"), socket=d.cni_socket, **NO_ATTACHMENT), 50, "1.1.0")


def test_t65_status_pool_exhausted_then_freed(daemons):
    """65 (second part). STATUS with the /30 pool fully used → err 50; after DEL → ok-empty."""
    d = daemons("A")
    conf = cfg("1.1.0", subnet="10.1.2.0/30")
    assert_ok_empty(run_cni("STATUS", conf, socket=d.cni_socket, **NO_ATTACHMENT))
    assert run_cni("ADD", conf, socket=d.cni_socket).ips == ["10.1.2.2/30"]
    assert_err(run_cni("STATUS", conf, socket=d.cni_socket, **NO_ATTACHMENT), 50, "1.1.0")
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket))
    assert_ok_empty(run_cni("STATUS", conf, socket=d.cni_socket, **NO_ATTACHMENT))


def test_t66_add_del_not_blocked_after_status_50(daemons):
    """66. ADD/DEL still behave normally (not blocked) after a STATUS that returned 50."""
    d = daemons("A")
    conf = cfg("1.1.0", subnet="10.1.2.0/30")
    assert run_cni("ADD", conf, socket=d.cni_socket).ips == ["10.1.2.2/30"]
    assert_err(run_cni("STATUS", conf, socket=d.cni_socket, **NO_ATTACHMENT), 50, "1.1.0")
    # ADD fails only on its own merits (the pool really is full) ...
    assert_err(run_cni("ADD", conf, socket=d.cni_socket, container_id="c2"), 100, "1.1.0")
    # ... an idempotent re-ADD of c1 and a DEL work ...
    assert run_cni("ADD", conf, socket=d.cni_socket).ips == ["10.1.2.2/30"]
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket))
    # ... and once there is room ADD succeeds, even though the last STATUS said 50
    assert run_cni("ADD", conf, socket=d.cni_socket, container_id="c2").ips == ["10.1.2.2/30"]
    # a different, non-full network is served normally after a STATUS 50 for this one
    other = cfg("1.1.0", name="othernet")
    assert_err(run_cni("STATUS", conf, socket=d.cni_socket, **NO_ATTACHMENT), 50, "1.1.0")
    assert run_cni("ADD", other, socket=d.cni_socket, container_id="c3").ips == ["10.1.2.2/24"]


# -- GC ---------------------------------------------------------------------------------------------------------


def _add_three(d) -> None:
    conf = cfg("1.1.0")
    for cid, ifname, ip in (("c1", "eth0", "10.1.2.2/24"), ("c2", "eth0", "10.1.2.3/24"),
                            ("c3", "net1", "10.1.2.4/24")):
        out = run_cni("ADD", conf, socket=d.cni_socket, container_id=cid, if_name=ifname)
        assert out.ips == [ip], out


def _held(d) -> dict[str, list[str] | None]:
    return {"c1/eth0": handle_ips(d, "testnet", "c1", "eth0"), "c2/eth0": handle_ips(d, "testnet", "c2", "eth0"),
            "c3/net1": handle_ips(d, "testnet", "c3", "net1")}


def test_t67_gc_valid_attachments(daemons):
    """67. ADD c1/eth0, c2/eth0, c3/net1; GC CFG(1.1.0) + `"cni.dev/valid-attachments":[{"containerID":"c1",
    "ifname":"eth0"}]`, env `CNI_COMMAND=GC CNI_PATH=…` only → ok-empty; c2 and c3 released, c1 kept."""
    d = daemons("A")
    _add_three(d)
    conf = {**cfg("1.1.0"), "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    assert_ok_empty(run_cni("GC", conf, socket=d.cni_socket, **NO_ATTACHMENT))
    assert _held(d) == {"c1/eth0": ["10.1.2.2/24"], "c2/eth0": None, "c3/net1": None}
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (1, 1), counts


def test_t68_gc_legacy_attachments_key(daemons):
    """68. Same with only the legacy key `cni.dev/attachments` → same outcome."""
    d = daemons("A")
    _add_three(d)
    conf = {**cfg("1.1.0"), "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    assert_ok_empty(run_cni("GC", conf, socket=d.cni_socket, **NO_ATTACHMENT))
    assert _held(d) == {"c1/eth0": ["10.1.2.2/24"], "c2/eth0": None, "c3/net1": None}
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (1, 1), counts


def test_t69_gc_empty_list_only_this_network(daemons):
    """69. GC with `[]` → all reservations of `testnet` released; reservations of `othernet` untouched."""
    d = daemons("A")
    _add_three(d)
    other = cfg("1.1.0", name="othernet")
    for cid in ("c1", "c9"):
        assert run_cni("ADD", other, socket=d.cni_socket, container_id=cid).ips, cid
    conf = {**cfg("1.1.0"), "cni.dev/valid-attachments": []}
    assert_ok_empty(run_cni("GC", conf, socket=d.cni_socket, **NO_ATTACHMENT))
    assert _held(d) == {"c1/eth0": None, "c2/eth0": None, "c3/net1": None}
    assert handle_ips(d, "othernet", "c1", "eth0") == ["10.1.2.2/24"]
    assert handle_ips(d, "othernet", "c9", "eth0") == ["10.1.2.3/24"]
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (2, 2), counts


def test_t70_gc_without_key_releases_nothing(daemons):
    """70. GC with neither key → ok-empty, nothing released, warning on stderr."""
    d = daemons("A")
    _add_three(d)
    before = _counts(d)
    out = run_cni("GC", cfg("1.1.0"), socket=d.cni_socket, **NO_ATTACHMENT)
    assert_ok_empty(out)
    assert out.stderr.strip(), out
    assert _counts(d) == before
    assert _held(d) == {"c1/eth0": ["10.1.2.2/24"], "c2/eth0": ["10.1.2.3/24"], "c3/net1": ["10.1.2.4/24"]}


def test_t71_gc_daemon_stopped(daemons):
    """71 (first part). GC with daemon stopped → err 11."""
    d = daemons("A")
    _add_three(d)
    d.stop()
    conf = {**cfg("1.1.0"), "cni.dev/valid-attachments": []}
    assert_err(run_cni("GC", conf, socket=d.cni_socket, **NO_ATTACHMENT), 11, "1.1.0")
    assert _held(d) == {"c1/eth0": ["10.1.2.2/24"], "c2/eth0": ["10.1.2.3/24"], "c3/net1": ["10.1.2.4/24"]}


def test_t71_gc_partial_failure_continues(daemons):
    """71 (second part). GC where one release fails (fault-inject) → remaining stale entries still released, then
    an error is returned.

    Fault: ``IPAMD_FAILPOINTS=gc.before_delete=error:1`` makes exactly the first stale release fail. Of the three
    stale attachments (c2, c3, c4; c1 is valid) two must be released and one kept, c1 untouched, and the call must
    end in one well-formed error (code 11: the caller should retry). A second GC then releases the last one."""
    d = daemons("A", env={"IPAMD_FAILPOINTS": "gc.before_delete=error:1"})
    _add_three(d)
    assert run_cni("ADD", cfg("1.1.0"), socket=d.cni_socket, container_id="c4").ips == ["10.1.2.5/24"]
    conf = {**cfg("1.1.0"), "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    assert_err(run_cni("GC", conf, socket=d.cni_socket, **NO_ATTACHMENT), 11, "1.1.0")
    held = {**_held(d), "c4/eth0": handle_ips(d, "testnet", "c4", "eth0")}
    assert held["c1/eth0"] == ["10.1.2.2/24"], held
    stale_left = [k for k in ("c2/eth0", "c3/net1", "c4/eth0") if held[k] is not None]
    assert len(stale_left) == 1, held
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (2, 2), counts
    assert_ok_empty(run_cni("GC", conf, socket=d.cni_socket, **NO_ATTACHMENT))
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (1, 1), counts
