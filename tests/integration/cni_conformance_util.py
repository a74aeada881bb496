"""Shared helpers for the docs/cni-contract.md §6 tests (test_conformance_*.py).

Fixtures of §6: ``ENV`` is what :func:`harness.run_cni` sets by default (``CNI_CONTAINERID=c1``,
``CNI_NETNS=/var/run/netns/none``, ``CNI_IFNAME=eth0``, ``CNI_PATH=/opt/cni/bin``); :func:`cfg` is ``CFG(v)`` and
:func:`dual` is ``DUAL(v)``. The assertion helpers parse stdout strictly: exactly one JSON document, no duplicate
keys, no NaN/Infinity, nothing before or after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from harness import CniOutput, Daemon, cni_config, installed_shim
from ipamd_cni import SUPPORTED_VERSIONS

from ipamd.store.etcd import EtcdStore

VERSIONS = SUPPORTED_VERSIONS  # the protocol's one Python home (client/ipamd_cni.py)
LEGACY_VERSIONS = ("0.3.0", "0.3.1", "0.4.0")  # results carry ips[].version
CHECK_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")  # CHECK exists from 0.4.0 on
SUPPORTED = list(SUPPORTED_VERSIONS)

ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
DEFAULT_ROUTES = [{"dst": "0.0.0.0/0"}]
DUAL_RANGES = [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]
#: GC/STATUS get no attachment: run_cni(..., **NO_ATTACHMENT) leaves only CNI_COMMAND and CNI_PATH set.
NO_ATTACHMENT: dict[str, Any] = {"container_id": None, "if_name": None, "netns": None}


def cfg(version: str, **kw: Any) -> dict[str, Any]:
    """``CFG(v)``: bridge config, ``ranges [[10.1.2.0/24]]``, ``routes [{"dst":"0.0.0.0/0"}]``."""
    kw.setdefault("routes", DEFAULT_ROUTES)
    return cni_config(version=version, **kw)


def dual(version: str, **kw: Any) -> dict[str, Any]:
    """``DUAL(v)``: CFG with range sets ``[[10.1.2.0/24], [2001:db8:1::/64]]``."""
    kw.setdefault("routes", DEFAULT_ROUTES)
    return cni_config(version=version, ranges=DUAL_RANGES, **kw)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), "duplicate keys in JSON object: %r" % keys
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise AssertionError("non-standard JSON constant %s on stdout" % name)


def strict_json(text: str) -> Any:
    """Parse ``text`` as exactly one strict JSON document (raises AssertionError/ValueError otherwise)."""
    assert text.strip(), "stdout is empty, expected one JSON document"
    assert "Traceback" not in text, "traceback on stdout: %r" % text
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def parse_stdout(out: CniOutput) -> Any:
    """:func:`strict_json` of ``out.stdout``, failing with the whole output in the message."""
    try:
        return strict_json(out.stdout)
    except (AssertionError, ValueError) as exc:
        raise AssertionError("stdout is not one strict JSON document (%s): %r" % (exc, out)) from None


def assert_ok_empty(out: CniOutput) -> None:
    """"ok-empty": exit 0 and nothing at all on stdout."""
    assert out.rc == 0, out
    assert out.stdout == "", out


def assert_err(out: CniOutput, code: int, cni_version: str | None = None) -> dict[str, Any]:
    """"err N": non-zero exit and one well-formed error object with ``code`` N on stdout; returns it."""
    assert out.rc != 0, out
    obj = parse_stdout(out)
    assert isinstance(obj, dict), out
    assert obj.get("code") == code, out
    assert type(obj["code"]) is int, out
    assert isinstance(obj.get("msg"), str) and obj["msg"], out
    assert set(obj) <= {"cniVersion", "code", "msg", "details"}, out
    if "details" in obj:
        assert isinstance(obj["details"], str), out
    assert isinstance(obj.get("cniVersion"), str), out  # project decision §4: included
    if cni_version is not None:
        assert obj["cniVersion"] == cni_version, out
    return obj


def assert_result(out: CniOutput, version: str) -> dict[str, Any]:
    """A successful ADD: exit 0, one JSON object, ``cniVersion`` == request, abbreviated IPAM result (§3.1)."""
    assert out.rc == 0, out
    obj = parse_stdout(out)
    assert isinstance(obj, dict), out
    assert obj.get("cniVersion") == version, out
    assert "interfaces" not in obj, out
    assert isinstance(obj.get("ips"), list) and obj["ips"], out
    for ip in obj["ips"]:
        assert "interface" not in ip, out
        if version in LEGACY_VERSIONS:
            assert ip.get("version") in ("4", "6"), out
        else:
            assert "version" not in ip, out
    return obj


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """The result with an empty ``dns: {}`` dropped (tolerated by §3.1 / T21)."""
    out = dict(obj)
    if out.get("dns") == {}:
        del out["dns"]
    return out


def ip_entry(version: str, address: str, gateway: str | None) -> dict[str, Any]:
    """An expected ``ips[]`` entry in the shape of ``version`` (``version`` key only before 1.0.0)."""
    entry: dict[str, Any] = {}
    if version in LEGACY_VERSIONS:
        entry["version"] = "6" if ":" in address else "4"
    entry["address"] = address
    if gateway is not None:
        entry["gateway"] = gateway
    return entry


def expected(version: str, *ips: tuple[str, str | None], routes: list[dict[str, Any]] | None = None,
             dns: dict[str, Any] | None = None) -> dict[str, Any]:
    """The exact expected ADD result: ``ips`` given as ``(address, gateway)`` pairs."""
    out: dict[str, Any] = {"cniVersion": version, "ips": [ip_entry(version, a, g) for a, g in ips]}
    routes = DEFAULT_ROUTES if routes is None else routes
    if routes:
        out["routes"] = routes
    if dns:
        out["dns"] = dns
    return out


def bridge_result(version: str, *ips: tuple[str, str]) -> dict[str, Any]:
    """A full bridge-style result (``interfaces``, ``ips[].interface``), as libcni caches and sends as prevResult."""
    result: dict[str, Any] = {
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:01:02:01"},
            {"name": "veth1a2b3c4d", "mac": "46:8c:0f:11:22:33"},
            {"name": "eth0", "mac": "0a:58:0a:01:02:02", "sandbox": "/var/run/netns/none"},
        ],
        "ips": [],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }
    for address, gateway in ips:
        entry = ip_entry(version, address, gateway)
        entry["interface"] = 2
        result["ips"].append(entry)
    return result


def read_handle(daemon: Any, network: str, container_id: str, if_name: str) -> dict[str, Any] | None:
    """The handle record ``<prefix>handles/<network>/<containerID>/<ifName>`` from etcd, or ``None``."""
    store = EtcdStore(daemon.endpoints, daemon.prefix)
    try:
        kvs, _ = store.read("handles/%s/%s/%s" % (network, container_id, if_name), None, 5)
    finally:
        store.close()
    return json.loads(kvs[0].value) if kvs else None


def handle_ips(daemon: Any, network: str, container_id: str, if_name: str) -> list[str] | None:
    rec = read_handle(daemon, network, container_id, if_name)
    return None if rec is None else [ip["address"] for ip in rec["ips"]]


def ip_records(daemon: Any, address: str) -> list[str]:
    """Keys of the address records (``<prefix>ips/<pool>/<hex>``) for ``address`` in any pool; [] if free."""
    import ipaddress

    ip = ipaddress.ip_address(address)
    hexkey = format(int(ip), "08x" if ip.version == 4 else "032x")
    store = EtcdStore(daemon.endpoints, daemon.prefix)
    try:
        kvs, _ = store.read("ips/", "ips0", 5)
    finally:
        store.close()
    return [kv.key for kv in kvs if kv.key.endswith("/" + hexkey)]


def run_shim_raw(env: dict[str, str], *, socket: str | None, stdin: Any = None, input_: bytes | None = None,
                 timeout: float = 60.0) -> CniOutput:
    """Run the shim with exactly the ``CNI_*`` variables in ``env`` (none added), stdin from ``stdin`` (a file
    object, fd or ``subprocess.DEVNULL``) or ``input_`` bytes. For cases run_cni cannot express (no
    ``CNI_COMMAND`` at all, stdin that is a directory or /dev/null)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_") and not k.startswith("IPAMD_")}
    e.update(env)
    if socket is not None:
        e["IPAMD_CNI_SOCKET"] = socket
    if input_ is not None:
        p = subprocess.run([installed_shim()], input=input_, capture_output=True, env=e,
                           timeout=timeout)
    else:
        p = subprocess.run([installed_shim()], stdin=stdin, capture_output=True, env=e,
                           timeout=timeout)
    return CniOutput(p.returncode, p.stdout.decode(), p.stderr.decode())


def revision(d: Daemon) -> int:
    """The etcd store revision (header of a read of one absent key)."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        return store.read("x", None, 5)[1]
    finally:
        store.close()


def wait_registered(d: Daemon, timeout: float = 10.0) -> None:
    """Wait for the daemon's ``nodes/<node>`` liveness key. The lease thread writes it in parallel with the first
    sync, so it can land just after the daemon reports SERVING; after it, an idle daemon writes nothing (lease
    keepalives are not writes), so the store revision is quiet."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        deadline = time.monotonic() + timeout
        while not store.read("nodes/" + d.node, None, 5)[0]:
            assert time.monotonic() < deadline, "nodes/%s never written" % d.node
            time.sleep(0.05)
    finally:
        store.close()


def ip_owner(d: Daemon, address: str) -> str | None:
    """The ``handle`` named by the address record of ``address`` (any pool), or ``None`` when it is free."""
    import json

    keys = ip_records(d, address)
    if not keys:
        return None
    assert len(keys) == 1, keys
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        kvs, _ = store.read(keys[0], None, 5)
    finally:
        store.close()
    return json.loads(kvs[0].value)["handle"]
