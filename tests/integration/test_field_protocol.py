"""Field cases B35-B38 (docs/field-cases.md "CNI protocol surface") against real etcd, real ipamd daemons and real
ipamd-cni shim processes (one fresh process per CNI call, installed as operators install it).

Every response is checked strictly: exactly one JSON document on stdout (no trailing bytes, no duplicate keys; an
empty stdout where a document is expected fails), or nothing at all for DEL/CHECK/GC successes. The daemons run
with ``--log-level DEBUG`` (the harness's default), so any log line leaking onto stdout would show. The ``daemons``
fixture checks the invariants of docs/etcd-layout.md after every scenario.

This module runs on its own single-member etcd (the ``etcd`` fixture below overrides the session one): B36 and B38
assert that calls leave the *global* etcd revision unchanged, and on the shared session etcd any other writer (for
instance the lease of a daemon another test killed with SIGKILL expiring 30 s later and deleting its
``nodes/<node>`` key) would move that revision.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_conformance_util import (
    NO_ATTACHMENT,
    SUPPORTED,
    assert_err,
    assert_ok_empty,
    bridge_result,
    handle_ips,
    ip_records,
    parse_stdout,
    read_handle,
    revision,
    wait_registered,
)
from harness import CniOutput, Daemon, EtcdCluster, cni_config, run_cni, snapshot_counts

from ipamd.store.base import prefix_end
from ipamd.store.etcd import EtcdStore

# each test runs with the native and the Python plugin (tests/conftest.py)
pytestmark = pytest.mark.both_plugins

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "bridge_ipam_stdin_add.json"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """This module's own etcd (see the module docstring): nothing but this module's daemons writes to it."""
    cluster = EtcdCluster(1).start()
    yield cluster
    cluster.stop()


# -- helpers ------------------------------------------------------------------------------------------------------


def call(command: str, d: Daemon, conf: Any, cid: str | None = "c1", if_name: str | None = "eth0",
         **kw: Any) -> CniOutput:
    if cid is not None:
        kw.setdefault("netns", "/var/run/netns/" + (cid if "/" not in cid else "x"))
    return run_cni(command, conf, socket=d.cni_socket, container_id=cid, if_name=if_name, **kw)


def result(out: CniOutput) -> dict[str, Any]:
    """A successful ADD: exit 0 and exactly one strict JSON object on stdout; returns it."""
    assert out.rc == 0, out
    obj = parse_stdout(out)
    assert isinstance(obj, dict), out
    return obj


def address(out: CniOutput) -> str:
    obj = result(out)
    assert len(obj["ips"]) == 1, out
    return obj["ips"][0]["address"]




def records(d: Daemon) -> dict[str, tuple[bytes, int]]:
    """Every IPAM record under the daemon's prefix (not ``nodes/``): key -> (value, mod_revision)."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        kvs, _ = store.read("", prefix_end(""), 10)
    finally:
        store.close()
    return {kv.key: (kv.value, kv.mod_revision) for kv in kvs if not kv.key.startswith("nodes/")}


def counts(d: Daemon) -> tuple[int, int]:
    c = snapshot_counts(d.endpoints, d.prefix)
    return c["handles"], c["ips"]


def with_version(conf: dict[str, Any], version: str | None) -> dict[str, Any]:
    """``conf`` with ``cniVersion`` set to ``version`` (``None``: the key removed)."""
    out = dict(conf)
    if version is None:
        del out["cniVersion"]
    else:
        out["cniVersion"] = version
    return out


# -- B35 ----------------------------------------------------------------------------------------------------------


def test_b35_cni_version_mismatch_missing_version_on_del_and_result_shape(daemons):
    """B35 (plugins #425, containerd 1.6.0-1.6.3 empty-version teardown): base config with ``cniVersion`` varied.

    VERSION probe lists exactly what ADD can emit (every listed version is accepted by ADD and echoed in its
    result; 0.2.0 and 9.9.9 are not listed and ADD refuses them with code 1). ``ADD c1`` with 9.9.9 -> code 1,
    nothing written to etcd; ``ADD c1`` with 0.3.1 -> ``ips[].version "4"``; ``ADD c2`` with 1.0.0 -> no
    ``version``; ``DEL c1`` with ``cniVersion`` absent and (after c1 is added again) with ``""`` -> ok-empty, the
    address released, a warning on stderr (decision 6); ``CHECK c2`` with 0.3.1 and ``GC`` with 1.0.0 -> code 1
    and nothing released."""
    d = daemons("A")
    base = cni_config("net1", subnet="10.10.0.0/24", blockSize=28)

    probe = run_cni("VERSION", {"cniVersion": "1.1.0"}, socket=d.cni_socket, container_id=None,
                    if_name="dummy", netns="dummy", cni_path="dummy")
    assert result(probe) == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}, probe
    listed = result(probe)["supportedVersions"]
    probe_net = cni_config("probe", subnet="10.11.0.0/24", blockSize=28)
    for n, version in enumerate(listed):
        out = result(call("ADD", d, with_version(probe_net, version), "v%d" % n))
        assert out["cniVersion"] == version, out
        assert [("version" in ip) for ip in out["ips"]] == [not version.startswith("1.")], out
        assert_ok_empty(call("DEL", d, with_version(probe_net, version), "v%d" % n))

    before = records(d)
    for unlisted in ("9.9.9", "0.2.0"):
        assert_err(call("ADD", d, with_version(base, unlisted), "c1"), 1)
    assert records(d) == before, "a refused ADD wrote to etcd"
    assert read_handle(d, "net1", "c1", "eth0") is None

    assert result(call("ADD", d, with_version(base, "0.3.1"), "c1")) == {
        "cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.10.0.2/24", "gateway": "10.10.0.1"}]}
    c2 = call("ADD", d, with_version(base, "1.0.0"), "c2")
    assert result(c2) == {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.3/24", "gateway": "10.10.0.1"}]}

    absent = call("DEL", d, with_version(base, None), "c1")
    assert_ok_empty(absent)
    assert "cniVersion" in absent.stderr, absent
    assert read_handle(d, "net1", "c1", "eth0") is None and ip_records(d, "10.10.0.2") == []

    assert address(call("ADD", d, with_version(base, "0.3.1"), "c1")) == "10.10.0.2/24"
    empty = call("DEL", d, with_version(base, ""), "c1")
    assert_ok_empty(empty)
    assert "cniVersion" in empty.stderr, empty
    assert read_handle(d, "net1", "c1", "eth0") is None and ip_records(d, "10.10.0.2") == []

    before = records(d)
    prev = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.10.0.3/24", "gateway": "10.10.0.1"}]}
    assert_err(call("CHECK", d, {**with_version(base, "0.3.1"), "prevResult": prev}, "c2"), 1)
    gc = {**with_version(base, "1.0.0"), "cni.dev/valid-attachments": []}
    assert_err(run_cni("GC", gc, socket=d.cni_socket, **NO_ATTACHMENT), 1)
    assert records(d) == before
    assert handle_ips(d, "net1", "c2", "eth0") == ["10.10.0.3/24"]


# -- B36 ----------------------------------------------------------------------------------------------------------


def test_b36_check_is_read_only_restart_safe_and_uses_prev_result(daemons):
    """B36 (plugins PR #264): subnet 10.81.0.0/24; ``ADD c1 eth0`` (.2).

    ``CHECK c1 eth0`` with a bridge-style prevResult (``interfaces``, ``ips[].interface``) holding 10.81.0.2/24
    plus an IPv6 address from another IPAM -> ok-empty (addresses outside our ranges are ignored). Restart ipamd;
    repeat -> ok-empty (state comes from etcd, not memory). prevResult 10.81.0.9/24 -> code 103. ``CHECK cX eth0``
    -> code 102. ``GC net1 valid []``, then ``CHECK c1 eth0`` -> code 102. CHECK never writes: the etcd revision
    is unchanged across every CHECK. Daemon down -> code 11."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.81.0.0/24", blockSize=28)
    assert address(call("ADD", d, conf, "c1")) == "10.81.0.2/24"
    held = bridge_result("1.1.0", ("10.81.0.2/24", "10.81.0.1"), ("fd00:ee::5/64", "fd00:ee::1"))
    wrong = bridge_result("1.1.0", ("10.81.0.9/24", "10.81.0.1"))

    def check(cid: str, prev: dict[str, Any]) -> CniOutput:
        before = revision(d)
        out = call("CHECK", d, {**conf, "prevResult": prev}, cid)
        assert revision(d) == before, ("CHECK wrote to etcd", out)
        return out

    wait_registered(d)
    assert_ok_empty(check("c1", held))

    d.stop()
    d.start()
    wait_registered(d)
    assert_ok_empty(check("c1", held))
    assert_err(check("c1", wrong), 103, "1.1.0")
    assert_err(check("cX", held), 102, "1.1.0")

    gc = {**conf, "cni.dev/valid-attachments": []}
    assert_ok_empty(run_cni("GC", gc, socket=d.cni_socket, **NO_ATTACHMENT))
    assert counts(d) == (0, 0)
    assert_err(check("c1", held), 102, "1.1.0")

    d.stop()
    assert_err(call("CHECK", d, {**conf, "prevResult": held}, "c1"), 11, "1.1.0")


# -- B37 ----------------------------------------------------------------------------------------------------------


def test_b37_stdin_robustness_unknown_fields_bad_types_and_broken_json(daemons):
    """B37 (cni PR #247, kubernetes #66481, linkerd2 #3941): subnet 10.82.0.0/24.

    Base config plus ``"isGateway":true,"ipMasq":true,"mtu":1450,"args":{"cni":{"labels":[...]}},
    "runtimeConfig":{"portMappings":[]},"capabilities":{"portMappings":true},"dns":{}``; ``ADD c1`` -> exit 0,
    .2, unaffected by the extra keys. (c1 is then deleted so the next case can show where allocation starts.) An
    unknown ``ipam`` key ``"rangestart":"10.82.0.50"`` (wrong case) -> accepted with a stderr warning naming the
    key, and allocation starts at .2 (the typo had no effect); ``ipam.blockSize`` as the string ``"28"`` -> code
    7 naming blockSize; stdin empty or truncated (``{"cniVersion":"1.1.0"``) -> code 6. Every response is zero or
    one strict JSON document, with the daemon at DEBUG."""
    d = daemons("A")
    assert d.proc is not None and "DEBUG" in d.proc.args[d.proc.args.index("--log-level") + 1]
    base = cni_config("net1", subnet="10.82.0.0/24", blockSize=28)
    extras = {**base, "isGateway": True, "ipMasq": True, "mtu": 1450,
              "args": {"cni": {"labels": [{"key": "a", "value": "b"}]}},
              "runtimeConfig": {"portMappings": []}, "capabilities": {"portMappings": True}, "dns": {}}
    assert result(call("ADD", d, extras, "c1")) == {
        "cniVersion": "1.1.0", "ips": [{"address": "10.82.0.2/24", "gateway": "10.82.0.1"}]}
    assert_ok_empty(call("DEL", d, extras, "c1"))

    typo = {**base, "ipam": {**base["ipam"], "rangestart": "10.82.0.50"}}
    out = call("ADD", d, typo, "c2")
    assert address(out) == "10.82.0.2/24"
    assert "rangestart" in out.stderr, out

    as_string = {**base, "ipam": {**base["ipam"], "blockSize": "28"}}
    err = assert_err(call("ADD", d, as_string, "c3"), 7, "1.1.0")
    assert "blockSize" in err["msg"], err
    assert read_handle(d, "net1", "c3", "eth0") is None

    assert_err(call("ADD", d, None, "c4", stdin=b""), 6)
    assert_err(call("ADD", d, None, "c4", stdin=b'{"cniVersion":"1.1.0"'), 6)
    assert read_handle(d, "net1", "c4", "eth0") is None
    assert counts(d) == (1, 1)


def test_b37_replayed_bridge_stdin_add_check_del(daemons):
    """B37: the exact stdin the real bridge plugin hands its IPAM plugin (captured in the e2e tier,
    tests/fixtures/bridge_ipam_stdin_add.json: cniVersion 1.0.0, ``isGateway``, ``ipMasq``, ``bridge``, ``ipam``
    with routes, no ``ipam.socket``), with the environment bridge passes (CNI_COMMAND, CNI_CONTAINERID,
    CNI_IFNAME, CNI_NETNS, CNI_PATH), replayed for ADD, CHECK and DEL. CHECK and DEL get the stdin the way
    libcni builds it: the config plus ``prevResult`` = the bridge-shaped final result (``interfaces``,
    ``ips[].interface``) made from the ADD's answer, re-encoded with sorted keys. The socket comes from
    ``IPAMD_CNI_SOCKET``. Each answer: one strict JSON result for ADD, nothing for CHECK and DEL."""
    d = daemons("A")
    raw = FIXTURE.read_bytes()
    conf = json.loads(raw)
    assert "socket" not in conf["ipam"]
    cid = "4f1c3a9e" * 8
    netns = "/var/run/netns/cni-4f1c3a9e-0000-0000-0000-000000000000"
    env = dict(container_id=cid, if_name="eth0", netns=netns, cni_path="/opt/cni/bin")

    add = run_cni("ADD", None, socket=d.cni_socket, stdin=raw, **env)
    answer = result(add)
    assert answer == {"cniVersion": "1.0.0", "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}]}, add

    prev = {"cniVersion": answer["cniVersion"],
            "interfaces": [{"name": "ipamdtest0", "mac": "0a:58:0a:63:00:01"},
                           {"name": "veth4f1c3a9e", "mac": "46:8c:0f:11:22:33"},
                           {"name": "eth0", "mac": "0a:58:0a:63:00:02", "sandbox": netns}],
            "ips": [{**ip, "interface": 2} for ip in answer["ips"]],
            "routes": answer["routes"], "dns": {}}
    with_prev = json.dumps({**conf, "prevResult": prev}, sort_keys=True, separators=(",", ":")).encode()

    assert_ok_empty(run_cni("CHECK", None, socket=d.cni_socket, stdin=with_prev, **env))
    assert handle_ips(d, "ipamd-e2e", cid, "eth0") == ["10.99.0.2/24"]
    assert_ok_empty(run_cni("DEL", None, socket=d.cni_socket, stdin=with_prev, **env))
    assert read_handle(d, "ipamd-e2e", cid, "eth0") is None
    assert ip_records(d, "10.99.0.2") == []


# -- B38 ----------------------------------------------------------------------------------------------------------


def test_b38_container_id_and_ifname_validation_and_key_safety(daemons):
    """B38 (cni #679, cni PR #341, calico PR #5506): subnet 10.83.0.0/24.

    ``ADD`` with ``CNI_CONTAINERID`` ``../../x``, ``abc/def``, ``c1 `` (trailing space), ``c1`` + newline, empty
    -> code 4; ifnames ``eth0:1``, ``a b``, ``.``, ``..``, ``x/y``, 16 characters -> code 4; network name
    ``net/1`` -> code 7; etcd unchanged (revision). IDs ``a``, a 64-hex ID and a 1,000-character alphanumeric ID
    round-trip: ADD then DEL with the same ID frees exactly what the ADD took. ``ADD a.b`` on ifname ``c`` and
    ``ADD a`` on ifname ``b.c`` are two attachments with two addresses (handle keys cannot collide: ``/`` never
    occurs in a validated part); ``C1`` and ``c1`` are distinct; a 15-character ifname works. ``DEL`` with an
    invalid ID -> code 4, nothing deleted (revision unchanged)."""
    d = daemons("A")
    conf = cni_config("net1", subnet="10.83.0.0/24", blockSize=28)
    wait_registered(d)

    before = revision(d)
    for bad in ("../../x", "abc/def", "c1 ", "c1\n", ""):
        assert_err(call("ADD", d, conf, bad), 4, "1.1.0")
    for bad in ("eth0:1", "a b", ".", "..", "x/y", "abcdefghijklmnop"):
        assert_err(call("ADD", d, conf, "c1", bad), 4, "1.1.0")
    assert_err(call("ADD", d, cni_config("net/1", subnet="10.83.0.0/24", blockSize=28), "c1"), 7, "1.1.0")
    assert revision(d) == before, "a refused ADD wrote to etcd"

    long_id = ("Ab0" * 334)[:1000]
    ids = ["a", "0123456789abcdef" * 4, long_id]
    for n, cid in enumerate(ids, start=2):
        assert address(call("ADD", d, conf, cid)) == "10.83.0.%d/24" % n
        rec = read_handle(d, "net1", cid, "eth0")
        assert rec is not None and rec["containerID"] == cid
    for n, cid in enumerate(ids, start=2):
        assert_ok_empty(call("DEL", d, conf, cid))
        assert read_handle(d, "net1", cid, "eth0") is None
        assert ip_records(d, "10.83.0.%d" % n) == []
        for m, other in enumerate(ids[n - 1:], start=n + 1):  # the later IDs keep theirs
            assert handle_ips(d, "net1", other, "eth0") == ["10.83.0.%d/24" % m]
    assert counts(d) == (0, 0)

    assert address(call("ADD", d, conf, "a.b", "c")) == "10.83.0.2/24"
    assert address(call("ADD", d, conf, "a", "b.c")) == "10.83.0.3/24"
    assert handle_ips(d, "net1", "a.b", "c") == ["10.83.0.2/24"]
    assert handle_ips(d, "net1", "a", "b.c") == ["10.83.0.3/24"]
    assert address(call("ADD", d, conf, "C1")) == "10.83.0.4/24"
    assert address(call("ADD", d, conf, "c1")) == "10.83.0.5/24"
    assert handle_ips(d, "net1", "C1", "eth0") == ["10.83.0.4/24"]
    assert handle_ips(d, "net1", "c1", "eth0") == ["10.83.0.5/24"]
    assert address(call("ADD", d, conf, "c1", "abcdefghijklmno")) == "10.83.0.6/24"
    assert counts(d) == (5, 5)

    before, kept = revision(d), records(d)
    for bad in ("../../x", "abc/def", "c1 ", "c1\n", "a.b/c"):
        assert_err(call("DEL", d, conf, bad), 4, "1.1.0")
    assert revision(d) == before, "a refused DEL wrote to etcd"
    assert records(d) == kept
