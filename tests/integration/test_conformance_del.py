"""docs/cni-contract.md §6 cases 51-58a: DEL (real daemon, real etcd, one shim process per call)."""

from __future__ import annotations

import pytest
from cni_conformance_util import (
    CHECK_VERSIONS,
    VERSIONS,
    assert_err,
    assert_ok_empty,
    assert_result,
    bridge_result,
    cfg,
    expected,
    handle_ips,
    ip_records,
    normalised,
)
from harness import run_cni, snapshot_counts

# each test runs with the native and the Python plugin (tests/conftest.py)
pytestmark = pytest.mark.both_plugins


def _counts(d):
    return snapshot_counts(d.endpoints, d.prefix)


@pytest.mark.parametrize("version", VERSIONS)
def test_t51_del_never_added(daemons, version):
    """51. DEL for never-added container → ok-empty (every version)."""
    d = daemons("A")
    assert_ok_empty(run_cni("DEL", cfg(version), socket=d.cni_socket))
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts


@pytest.mark.parametrize("version", VERSIONS)
def test_t52_del_twice_and_reuse(daemons, version):
    """52. ADD c1; DEL c1; DEL c1 again → both ok-empty; address reusable afterwards.

    A /30 has exactly one allocatable address (.2), so "reusable" is exact: c2 must get 10.1.2.2."""
    d = daemons("A")
    conf = cfg(version, subnet="10.1.2.0/30")
    c1 = run_cni("ADD", conf, socket=d.cni_socket)
    assert normalised(assert_result(c1, version)) == expected(version, ("10.1.2.2/30", "10.1.2.1"))
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket))
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket))
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts
    c2 = run_cni("ADD", conf, socket=d.cni_socket, container_id="c2")
    assert normalised(assert_result(c2, version)) == expected(version, ("10.1.2.2/30", "10.1.2.1"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t53_del_without_netns_or_prevresult(daemons, version):
    """53. DEL with `CNI_NETNS` unset and no `prevResult` → ok-empty, reservation gone."""
    d = daemons("A")
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    conf = cfg(version)
    assert "prevResult" not in conf
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket, netns=None))
    assert handle_ips(d, "testnet", "c1", "eth0") is None
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts
    # and with CNI_NETNS="" (libcni exports every variable, "" when it has none)
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket, netns=""))
    assert _counts(d)["handles"] == 0


def test_t54_del_with_full_bridge_prevresult(daemons):
    """54. DEL CFG(1.1.0) with `prevResult` = full bridge result (`interfaces`, `ips[].interface:2`) → ok-empty,
    released."""
    d = daemons("A")
    add = run_cni("ADD", cfg("1.1.0"), socket=d.cni_socket)
    assert add.ips == ["10.1.2.2/24"], add
    conf = {**cfg("1.1.0"), "prevResult": bridge_result("1.1.0", ("10.1.2.2/24", "10.1.2.1"))}
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket))
    assert handle_ips(d, "testnet", "c1", "eth0") is None
    assert ip_records(d, "10.1.2.2") == []
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts


@pytest.mark.parametrize("version", CHECK_VERSIONS)
def test_t55_del_releases_by_key_not_prevresult(daemons, version):
    """55. DEL with a `prevResult` listing a different IP than reserved → releases the reserved one (by key); the
    listed IP untouched.

    (prevResult on DEL exists from 0.4.0 on.) The listed IP is c2's reservation, which must survive."""
    d = daemons("A")
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    c2 = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id="c2")
    assert c2.ips == ["10.1.2.3/24"], c2
    conf = {**cfg(version), "prevResult": bridge_result(version, ("10.1.2.3/24", "10.1.2.1"))}
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket))
    assert handle_ips(d, "testnet", "c1", "eth0") is None
    assert ip_records(d, "10.1.2.2") == []
    assert handle_ips(d, "testnet", "c2", "eth0") == ["10.1.2.3/24"]
    assert len(ip_records(d, "10.1.2.3")) == 1
    check = {**cfg(version), "prevResult": c2.json}
    assert_ok_empty(run_cni("CHECK", check, socket=d.cni_socket, container_id="c2"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t56_del_daemon_stopped_then_restarted(daemons, version):
    """56. DEL with daemon stopped → err 11; restart daemon, DEL → ok-empty."""
    d = daemons("A")
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    d.stop()
    assert_err(run_cni("DEL", cfg(version), socket=d.cni_socket), 11, version)
    assert handle_ips(d, "testnet", "c1", "eth0") == ["10.1.2.2/24"]  # nothing released while down
    d.start()
    assert_ok_empty(run_cni("DEL", cfg(version), socket=d.cni_socket))
    assert handle_ips(d, "testnet", "c1", "eth0") is None
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts


@pytest.mark.parametrize("version", VERSIONS)
def test_t57_del_validates_ifname(daemons, version):
    """57. DEL with `CNI_IFNAME` of 16 chars → err 4 (validation still applies)."""
    d = daemons("A")
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    assert_err(run_cni("DEL", cfg(version), socket=d.cni_socket, if_name="abcdefghijklmnop"), 4, version)
    assert handle_ips(d, "testnet", "c1", "eth0") == ["10.1.2.2/24"]


@pytest.mark.parametrize("version", VERSIONS)
def test_t58_del_after_failed_add(daemons, version):
    """58. ADD fails (exhausted) then runtime-style DEL for same key → ok-empty."""
    d = daemons("A")
    conf = cfg(version, subnet="10.1.2.0/30")
    assert run_cni("ADD", conf, socket=d.cni_socket).ips == ["10.1.2.2/30"]
    assert_err(run_cni("ADD", conf, socket=d.cni_socket, container_id="c2"), 100, version)
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket, container_id="c2"))
    assert handle_ips(d, "testnet", "c1", "eth0") == ["10.1.2.2/30"]  # c1 untouched
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (1, 1), counts


@pytest.mark.parametrize("variant", ["9.9.9", "absent", "empty"])
def test_t58a_del_with_unusable_version_still_releases(daemons, variant):
    """58a. DEL with `cniVersion` `9.9.9`, absent, or `""` after a valid 1.0.0 ADD of the same key → ok-empty,
    address released, warning on stderr."""
    d = daemons("A")
    add = run_cni("ADD", cfg("1.0.0"), socket=d.cni_socket)
    assert normalised(assert_result(add, "1.0.0")) == expected("1.0.0", ("10.1.2.2/24", "10.1.2.1"))
    conf = cfg("1.0.0")
    if variant == "absent":
        del conf["cniVersion"]
    else:
        conf["cniVersion"] = "" if variant == "empty" else variant
    out = run_cni("DEL", conf, socket=d.cni_socket)
    assert_ok_empty(out)
    assert out.stderr.strip(), out  # the warning
    assert "cniVersion" in out.stderr, out
    assert handle_ips(d, "testnet", "c1", "eth0") is None
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts
