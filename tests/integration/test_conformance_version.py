"""docs/cni-contract.md §6 cases 1-20: VERSION and dispatch (real daemon, real etcd, one shim process per call)."""

from __future__ import annotations

import json
import os

import pytest
from cni_conformance_util import (
    CHECK_VERSIONS,
    ENV,
    NO_ATTACHMENT,
    SUPPORTED,
    VERSIONS,
    assert_err,
    assert_ok_empty,
    assert_result,
    cfg,
    parse_stdout,
    run_shim_raw,
)
from harness import run_cni, snapshot_counts

# each test runs with the native and the Python plugin (tests/conftest.py)
pytestmark = pytest.mark.both_plugins

NO_ENV = {"container_id": None, "if_name": None, "netns": None, "cni_path": None}


def _assert_version_answer(out, version: str) -> None:
    assert out.rc == 0, out
    obj = parse_stdout(out)
    assert isinstance(obj, dict) and set(obj) == {"cniVersion", "supportedVersions"}, out
    assert obj["cniVersion"] == version, out
    # project decision §2.4: exactly what ADD can emit (no 0.1.0/0.2.0: legacy ip4/ip6 results not implemented)
    assert obj["supportedVersions"] == SUPPORTED, out


def _nothing_reserved(d) -> None:
    counts = snapshot_counts(d.endpoints, d.prefix)
    assert counts["handles"] == 0 and counts["ips"] == 0, counts


@pytest.mark.parametrize("daemon_up", [True, False], ids=["daemon-up", "daemon-down"])
def test_t01_version_only_command(daemons, daemon_up):
    """1. VERSION, only `CNI_COMMAND` set, stdin `{"cniVersion":"1.1.0"}` → exit 0, stdout
    `{"cniVersion":"1.1.0","supportedVersions":[…]}` containing all of 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0."""
    d = daemons("A")
    if not daemon_up:
        d.stop()
    out = run_cni("VERSION", None, socket=d.cni_socket, stdin=b'{"cniVersion":"1.1.0"}', **NO_ENV)
    _assert_version_answer(out, "1.1.0")


@pytest.mark.parametrize("daemon_up", [True, False], ids=["daemon-up", "daemon-down"])
def test_t02_version_echoes_request_version(daemons, daemon_up):
    """2. VERSION, stdin `{"cniVersion":"0.4.0"}` → `cniVersion` "0.4.0" echoed; same list."""
    d = daemons("A")
    if not daemon_up:
        d.stop()
    out = run_cni("VERSION", None, socket=d.cni_socket, stdin=b'{"cniVersion":"0.4.0"}', **NO_ENV)
    _assert_version_answer(out, "0.4.0")


@pytest.mark.parametrize("stdin_kind", ["empty", "dev-null", "garbage"])
@pytest.mark.parametrize("daemon_up", [True, False], ids=["daemon-up", "daemon-down"])
def test_t03_version_without_usable_stdin(daemons, daemon_up, stdin_kind):
    """3. VERSION with empty stdin, with `< /dev/null`, and with stdin `garbage` → exit 0, `cniVersion` "1.1.0"."""
    d = daemons("A")
    if not daemon_up:
        d.stop()
    env = {"CNI_COMMAND": "VERSION"}
    if stdin_kind == "empty":
        out = run_shim_raw(env, socket=d.cni_socket, input_=b"")
    elif stdin_kind == "garbage":
        out = run_shim_raw(env, socket=d.cni_socket, input_=b"garbage")
    else:
        with open("/dev/null", "rb") as devnull:
            out = run_shim_raw(env, socket=d.cni_socket, stdin=devnull)
    _assert_version_answer(out, "1.1.0")


@pytest.mark.parametrize("daemon_up", [True, False], ids=["daemon-up", "daemon-down"])
def test_t04_version_libcni_probe_env(daemons, daemon_up):
    """4. VERSION with libcni probe env (`CNI_NETNS=dummy CNI_IFNAME=dummy CNI_PATH=dummy`, no `CNI_CONTAINERID`)
    → same as 1."""
    d = daemons("A")
    if not daemon_up:
        d.stop()
    out = run_cni("VERSION", None, socket=d.cni_socket, stdin=b'{"cniVersion":"1.1.0"}', container_id=None,
                  netns="dummy", if_name="dummy", cni_path="dummy")
    _assert_version_answer(out, "1.1.0")


def test_t05_no_command_prints_about(daemons):
    """5. No `CNI_COMMAND` at all → exit 0, stdout empty, stderr contains plugin name and supported versions."""
    d = daemons("A")
    out = run_shim_raw(dict(ENV), socket=d.cni_socket, input_=json.dumps(cfg("1.1.0")).encode())
    assert_ok_empty(out)
    assert "ipamd-cni" in out.stderr, out
    for v in SUPPORTED:
        assert v in out.stderr, out
    _nothing_reserved(d)


@pytest.mark.parametrize("version", VERSIONS)
def test_t06_unknown_command(daemons, version):
    """6. `CNI_COMMAND=FOO` with valid ENV+CFG → err 4, msg contains `unknown CNI_COMMAND: FOO`.
    `CNI_COMMAND=add` (lower case) → err 4."""
    d = daemons("A")
    out = run_cni("FOO", cfg(version), socket=d.cni_socket)
    err = assert_err(out, 4, version)
    assert "unknown CNI_COMMAND: FOO" in err["msg"], out
    out = run_cni("add", cfg(version), socket=d.cni_socket)
    err = assert_err(out, 4, version)
    assert "unknown CNI_COMMAND: add" in err["msg"], out
    _nothing_reserved(d)


@pytest.mark.parametrize("version", VERSIONS)
def test_t07_add_missing_containerid_and_ifname(daemons, version):
    """7. ADD with `CNI_CONTAINERID` and `CNI_IFNAME` unset → err 4, msg names **both** variables."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id=None, if_name=None)
    err = assert_err(out, 4, version)
    assert "CNI_CONTAINERID" in err["msg"] and "CNI_IFNAME" in err["msg"], out
    assert "CNI_NETNS" not in err["msg"], out
    _nothing_reserved(d)


@pytest.mark.parametrize("command,version", [("ADD", v) for v in VERSIONS] + [("CHECK", v) for v in CHECK_VERSIONS])
def test_t08_empty_netns(daemons, command, version):
    """8. ADD with `CNI_NETNS=""` → err 4 naming `CNI_NETNS`. CHECK likewise."""
    d = daemons("A")
    conf = cfg(version)
    if command == "CHECK":
        add = run_cni("ADD", conf, socket=d.cni_socket)
        assert_result(add, version)
        conf = {**conf, "prevResult": add.json}
    out = run_cni(command, conf, socket=d.cni_socket, netns="")
    err = assert_err(out, 4, version)
    assert "CNI_NETNS" in err["msg"], out
    assert "CNI_CONTAINERID" not in err["msg"] and "CNI_IFNAME" not in err["msg"], out
    if command == "ADD":
        _nothing_reserved(d)


@pytest.mark.parametrize("version", VERSIONS)
def test_t09_ifname_length(daemons, version):
    """9. ADD with `CNI_IFNAME=abcdefghijklmnop` (16) → err 4; with `abcdefghijklmno` (15) → success."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, if_name="abcdefghijklmnop")
    assert_err(out, 4, version)
    _nothing_reserved(d)
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, if_name="abcdefghijklmno")
    assert assert_result(out, version)
    assert out.ips == ["10.1.2.2/24"]


@pytest.mark.parametrize("version", VERSIONS)
def test_t10_ifname_invalid_chars(daemons, version):
    """10. ADD with `CNI_IFNAME` each of `.`, `..`, `eth/0`, `eth:0`, `eth 0`, `eth\\t0` → err 4."""
    d = daemons("A")
    for name in (".", "..", "eth/0", "eth:0", "eth 0", "eth\t0"):
        out = run_cni("ADD", cfg(version), socket=d.cni_socket, if_name=name)
        assert_err(out, 4, version)
    _nothing_reserved(d)


@pytest.mark.parametrize("version", VERSIONS)
def test_t11_container_id_validation(daemons, version):
    """11. ADD with `CNI_CONTAINERID` `-abc`, `_abc`, `abc$`, `a b`, `abc/def` → err 4; `a_b.c-D9` and a 1000-char
    alnum id → success."""
    d = daemons("A")
    for cid in ("-abc", "_abc", "abc$", "a b", "abc/def"):
        out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id=cid)
        assert_err(out, 4, version)
    _nothing_reserved(d)
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id="a_b.c-D9")
    assert_result(out, version)
    assert out.ips == ["10.1.2.2/24"]
    long_id = ("a1B2c3D4e5" * 100)
    assert len(long_id) == 1000
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id=long_id)
    assert_result(out, version)
    assert out.ips == ["10.1.2.3/24"]


@pytest.mark.parametrize("version", VERSIONS)
def test_t12_network_name_validation(daemons, version):
    """12. ADD with `name` missing → err 7; `name` `te%%st` → err 7; `name` `net.1_a-b` → success."""
    d = daemons("A")
    conf = cfg(version)
    del conf["name"]
    assert_err(run_cni("ADD", conf, socket=d.cni_socket), 7, version)
    assert_err(run_cni("ADD", cfg(version, name="te%%st"), socket=d.cni_socket), 7, version)
    _nothing_reserved(d)
    out = run_cni("ADD", cfg(version, name="net.1_a-b"), socket=d.cni_socket)
    assert_result(out, version)
    assert out.ips == ["10.1.2.2/24"]


def test_t13_stdin_is_a_directory(daemons):
    """13. ADD with stdin redirected from a directory (`< /`, read gives EISDIR) → err 5."""
    d = daemons("A")
    fd = os.open("/", os.O_RDONLY)
    try:
        out = run_shim_raw({"CNI_COMMAND": "ADD", **ENV}, socket=d.cni_socket, stdin=fd)
    finally:
        os.close(fd)
    assert_err(out, 5)
    _nothing_reserved(d)


@pytest.mark.parametrize("stdin", [b"{", b"[]", b""], ids=["open-brace", "array", "empty"])
def test_t14_stdin_not_a_json_object(daemons, stdin):
    """14. ADD with stdin `{` → err 6; stdin `[]` → err 6; stdin empty → err 6."""
    d = daemons("A")
    out = run_cni("ADD", None, socket=d.cni_socket, stdin=stdin)
    assert_err(out, 6)
    _nothing_reserved(d)


def test_t15_cniversion_not_a_string(daemons):
    """15. ADD with `"cniVersion": 1.0` (number) → err 6."""
    d = daemons("A")
    conf = cfg("1.0.0")
    conf["cniVersion"] = 1.0
    assert_err(run_cni("ADD", conf, socket=d.cni_socket), 6)
    _nothing_reserved(d)


def test_t16_unsupported_version(daemons):
    """16. ADD with `cniVersion` `9.9.9` → err 1, msg `incompatible CNI versions`, details list supported
    versions."""
    d = daemons("A")
    err = assert_err(run_cni("ADD", cfg("9.9.9"), socket=d.cni_socket), 1)
    assert err["msg"] == "incompatible CNI versions", err
    for v in SUPPORTED:
        assert v in err.get("details", ""), err
    _nothing_reserved(d)


@pytest.mark.parametrize("variant", ["absent", "0.2.0"])
def test_t17_legacy_versions_refused(daemons, variant):
    """17. ADD with no `cniVersion` key (means 0.1.0) and with `0.2.0` → err 1 (unless legacy supported)."""
    d = daemons("A")
    conf = cfg("0.2.0")
    if variant == "absent":
        del conf["cniVersion"]
    err = assert_err(run_cni("ADD", conf, socket=d.cni_socket), 1)
    assert err["msg"] == "incompatible CNI versions", err
    _nothing_reserved(d)


@pytest.mark.parametrize("version,code", [("0.3.1", 1), ("abc", 6)])
def test_t18_check_version_gate(daemons, version, code):
    """18. CHECK with `cniVersion` 0.3.1 → err 1; CHECK with `cniVersion` `abc` → err 6."""
    d = daemons("A")
    assert_result(run_cni("ADD", cfg("1.1.0"), socket=d.cni_socket), "1.1.0")
    assert_err(run_cni("CHECK", cfg(version), socket=d.cni_socket), code)


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_t19_gc_status_need_1_1_0(daemons, command):
    """19. GC and STATUS with `cniVersion` 1.0.0 → err 1."""
    d = daemons("A")
    assert_result(run_cni("ADD", cfg("1.0.0"), socket=d.cni_socket), "1.0.0")
    before = snapshot_counts(d.endpoints, d.prefix)
    conf = cfg("1.0.0")
    if command == "GC":
        conf["cni.dev/valid-attachments"] = []
    assert_err(run_cni(command, conf, socket=d.cni_socket, **NO_ATTACHMENT), 1, "1.0.0")
    assert snapshot_counts(d.endpoints, d.prefix) == before  # GC refused: nothing released


def test_t20_internal_exception_is_999(daemons):
    """20. Unexpected internal exception (fault-inject) → err 999 (≥100), JSON still well-formed, no traceback on
    stdout."""
    d = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_pick=error"})
    out = run_cni("ADD", cfg("1.1.0"), socket=d.cni_socket)
    assert_err(out, 999, "1.1.0")
    assert "Traceback" not in out.stdout and "Traceback" not in out.stderr, out
    _nothing_reserved(d)

