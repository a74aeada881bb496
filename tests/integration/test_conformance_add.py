"""docs/cni-contract.md §6 cases 21-50: ADD results (real daemon, real etcd, one shim process per call)."""

from __future__ import annotations

import ipaddress
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from cni_conformance_util import (
    CHECK_VERSIONS,
    LEGACY_VERSIONS,
    VERSIONS,
    assert_err,
    assert_ok_empty,
    assert_result,
    cfg,
    dual,
    expected,
    handle_ips,
    ip_records,
    normalised,
    read_handle,
)
from harness import run_cni, snapshot_counts

# each test runs with the native and the Python plugin (tests/conftest.py)
pytestmark = pytest.mark.both_plugins

NEW_VERSIONS = ("1.0.0", "1.1.0")


def _counts(d):
    return snapshot_counts(d.endpoints, d.prefix)


@pytest.mark.parametrize("version", LEGACY_VERSIONS)
def test_t21_add_result_legacy_versions(daemons, version):
    """21. ADD CFG(0.3.0), CFG(0.3.1), CFG(0.4.0) → `{"cniVersion":v,"ips":[{"version":"4",
    "address":"10.1.2.2/24","gateway":"10.1.2.1"}],"routes":[{"dst":"0.0.0.0/0"}]}` (an empty `dns:{}` is
    tolerated)."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version), socket=d.cni_socket)
    assert normalised(assert_result(out, version)) == {
        "cniVersion": version,
        "ips": [{"version": "4", "address": "10.1.2.2/24", "gateway": "10.1.2.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }


@pytest.mark.parametrize("version", NEW_VERSIONS)
def test_t22_add_result_1x_versions(daemons, version):
    """22. ADD CFG(1.0.0), CFG(1.1.0) → same but `ips[0]` has **no** `version` key; `cniVersion` = v."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version), socket=d.cni_socket)
    assert normalised(assert_result(out, version)) == {
        "cniVersion": version,
        "ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_t23_add_result_is_abbreviated_and_strict(daemons, version):
    """23. Every ADD result: no `interfaces` key, no `ips[].interface`, `cniVersion` == request, stdout parses as
    one JSON object (also with debug logging on).

    The harness runs every daemon with ``--log-level DEBUG``; the config here also carries an unknown ipam key (a
    stderr warning) and dns, so stdout must stay clean while stderr has content."""
    d = daemons("A")
    conf = dual(version, dns={"nameservers": ["10.1.2.1"]}, unknownKey=True)
    out = run_cni("ADD", conf, socket=d.cni_socket)
    obj = assert_result(out, version)  # strict one-document parse, no interfaces, no ips[].interface
    assert set(obj) <= {"cniVersion", "ips", "routes", "dns"}, obj
    assert len(obj["ips"]) == 2
    assert "unknownKey" in out.stderr, out  # the warning went to stderr, not stdout


def test_t24_add_dual_stack(daemons):
    """24. ADD DUAL(0.4.0) → 2 ips: `version` "4" `10.1.2.2/24` gw `10.1.2.1`, then `version` "6"
    `2001:db8:1::2/64` gw `2001:db8:1::1`."""
    d = daemons("A")
    out = run_cni("ADD", dual("0.4.0"), socket=d.cni_socket)
    obj = normalised(assert_result(out, "0.4.0"))
    assert obj == {
        "cniVersion": "0.4.0",
        "ips": [{"version": "4", "address": "10.1.2.2/24", "gateway": "10.1.2.1"},
                {"version": "6", "address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_t25_routes_echoed(daemons, version):
    """25. Routes `[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.2.254"},{"dst":"::/0"}]` → echoed;
    entries without `gw` have no `gw` key."""
    d = daemons("A")
    routes = [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.2.254"}, {"dst": "::/0"}]
    out = run_cni("ADD", cfg(version, routes=routes), socket=d.cni_socket)
    obj = assert_result(out, version)
    assert obj["routes"] == routes, obj
    assert normalised(obj) == expected(version, ("10.1.2.2/24", "10.1.2.1"), routes=routes)


@pytest.mark.parametrize("version", VERSIONS)
def test_t26_route_extras_only_in_1_1_0(daemons, version):
    """26. Route `{"dst":"10.9.0.0/16","mtu":1400,"priority":5}` → with 1.1.0 result keeps `mtu`/`priority`; with
    1.0.0 and 0.4.0 only `dst`."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version, routes=[{"dst": "10.9.0.0/16", "mtu": 1400, "priority": 5}]),
                  socket=d.cni_socket)
    obj = assert_result(out, version)
    if version == "1.1.0":
        assert obj["routes"] == [{"dst": "10.9.0.0/16", "mtu": 1400, "priority": 5}], obj
    else:
        assert obj["routes"] == [{"dst": "10.9.0.0/16"}], obj


@pytest.mark.parametrize("version", VERSIONS)
def test_t27_dns(daemons, version):
    """27. `ipam.dns` `{"nameservers":["10.1.2.1"],"search":["a.local"]}` → result `dns` identical; without dns
    config → `dns` absent or `{}`."""
    d = daemons("A")
    dns = {"nameservers": ["10.1.2.1"], "search": ["a.local"]}
    out = run_cni("ADD", cfg(version, dns=dns), socket=d.cni_socket)
    obj = assert_result(out, version)
    assert obj["dns"] == dns, obj
    assert obj == expected(version, ("10.1.2.2/24", "10.1.2.1"), dns=dns)
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id="c2")
    obj = assert_result(out, version)
    assert obj.get("dns", {}) == {}, obj
    assert normalised(obj) == expected(version, ("10.1.2.3/24", "10.1.2.1"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t28_explicit_gateway(daemons, version):
    """28. Explicit `gateway` `10.1.2.254` → first ADD gets `10.1.2.1/24` with gateway `10.1.2.254`; `.254` is never
    handed out.

    "Never handed out" is shown twice: a second network whose only non-gateway usable address in its range is
    `.253` (rangeStart .253, gateway .254, .255 broadcast) gives out .253 and then reports exhaustion, and a
    request for `.254` is refused (101)."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version, ranges=[[{"subnet": "10.1.2.0/24", "gateway": "10.1.2.254"}]]),
                  socket=d.cni_socket)
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.1/24", "10.1.2.254"))
    tail = cfg(version, name="tailnet",
               ranges=[[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.253", "gateway": "10.1.2.254"}]])
    out = run_cni("ADD", tail, socket=d.cni_socket, container_id="t1")
    assert out.ips == ["10.1.2.253/24"], out
    assert_err(run_cni("ADD", tail, socket=d.cni_socket, container_id="t2"), 100, version)
    assert handle_ips(d, "tailnet", "t2", "eth0") is None
    req = cfg(version, ranges=[[{"subnet": "10.1.2.0/24", "gateway": "10.1.2.254"}]])
    req["args"] = {"cni": {"ips": ["10.1.2.254"]}}
    assert_err(run_cni("ADD", req, socket=d.cni_socket, container_id="c3"), 101, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_t29_range_start_end(daemons, version):
    """29. `rangeStart` `10.1.2.10`, `rangeEnd` `10.1.2.11` → c1 gets `.10`, c2 gets `.11`, c3 → err 100, no
    reservation for c3."""
    d = daemons("A")
    conf = cfg(version, ranges=[[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"}]])
    out = run_cni("ADD", conf, socket=d.cni_socket, container_id="c1")
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.10/24", "10.1.2.1"))
    out = run_cni("ADD", conf, socket=d.cni_socket, container_id="c2")
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.11/24", "10.1.2.1"))
    assert_err(run_cni("ADD", conf, socket=d.cni_socket, container_id="c3"), 100, version)
    assert read_handle(d, "testnet", "c3", "eth0") is None
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (2, 2), counts


@pytest.mark.parametrize("version", VERSIONS)
def test_t30_small_subnets(daemons, version):
    """30. Subnet `10.1.2.0/30` → c1 gets `10.1.2.2/30`; c2 → err 100. Subnet `/29` → exactly 5 ADDs succeed."""
    d = daemons("A")
    conf = cfg(version, subnet="10.1.2.0/30")
    out = run_cni("ADD", conf, socket=d.cni_socket, container_id="c1")
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.2/30", "10.1.2.1"))
    assert_err(run_cni("ADD", conf, socket=d.cni_socket, container_id="c2"), 100, version)
    assert read_handle(d, "testnet", "c2", "eth0") is None
    conf29 = cfg(version, name="net29", subnet="10.1.3.0/29")
    got = []
    for i in range(5):
        out = run_cni("ADD", conf29, socket=d.cni_socket, container_id="p%d" % i)
        assert_result(out, version)
        got += out.ips
    assert sorted(got) == ["10.1.3.%d/29" % i for i in range(2, 7)], got
    assert_err(run_cni("ADD", conf29, socket=d.cni_socket, container_id="p5"), 100, version)
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (6, 6), counts


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("subnet", ["10.1.2.0/31", "10.1.2.0/32", "2001:db8::/127", "2001:db8::/128",
                                    "10.1.2.5/24"])
def test_t31_subnet_too_small_or_host_bits(daemons, version, subnet):
    """31. Subnet `/31`, `/32`, `2001:db8::/127` → err 7 (too small); subnet `10.1.2.5/24` → err 7 (host bits).
    (/128 added from §4's list for code 7.)"""
    d = daemons("A")
    assert_err(run_cni("ADD", cfg(version, subnet=subnet), socket=d.cni_socket), 7, version)
    assert _counts(d)["handles"] == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("rng", [{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"},
                                 {"subnet": "10.1.2.0/24", "gateway": "10.1.3.1"},
                                 {"subnet": "10.1.2.0/33"}],
                         ids=["rangeStart-outside", "gateway-outside", "prefix-33"])
def test_t32_range_fields_outside_subnet(daemons, version, rng):
    """32. `rangeStart` `10.1.3.1` for subnet `10.1.2.0/24`; `gateway` outside subnet; subnet `10.1.2.0/33` →
    err 7."""
    d = daemons("A")
    assert_err(run_cni("ADD", cfg(version, ranges=[[rng]]), socket=d.cni_socket), 7, version)
    assert _counts(d)["handles"] == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", ["no-ipam", "no-ranges", "empty-ranges"])
def test_t33_missing_ranges(daemons, version, variant):
    """33. No `ipam` key; `ipam` without `ranges`/`subnet`; `ranges: []` → err 7."""
    d = daemons("A")
    conf = cfg(version)
    if variant == "no-ipam":
        del conf["ipam"]
    elif variant == "no-ranges":
        del conf["ipam"]["ranges"]
    else:
        conf["ipam"]["ranges"] = []
    assert_err(run_cni("ADD", conf, socket=d.cni_socket), 7, version)
    assert _counts(d)["handles"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_t34_overlapping_range_sets(daemons, version):
    """34. Overlapping range sets `[[10.1.2.0/24],[10.1.2.128/25]]` → err 7."""
    d = daemons("A")
    conf = cfg(version, ranges=[[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.128/25"}]])
    assert_err(run_cni("ADD", conf, socket=d.cni_socket), 7, version)
    assert _counts(d)["handles"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_t35_legacy_subnet_form(daemons, version):
    """35. Legacy form `ipam.subnet` = `10.1.2.0/24` (no `ranges`) → same result as test 21/22."""
    d = daemons("A")
    conf = cfg(version, subnet=None)
    conf["ipam"]["subnet"] = "10.1.2.0/24"
    assert "ranges" not in conf["ipam"]
    out = run_cni("ADD", conf, socket=d.cni_socket)
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.2/24", "10.1.2.1"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t36_extra_top_level_keys(daemons, version):
    """36. Extra top-level keys (`isGateway`, `mtu`, `capabilities`, `runtimeConfig.portMappings`,
    `args.cni.labels`) → success, unaffected."""
    d = daemons("A")
    conf = cfg(version)
    conf.update({
        "isGateway": True, "ipMasq": True, "mtu": 1400,
        "capabilities": {"portMappings": True, "ips": True},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
        "cni.dev/extra": {"x": 1},
    })
    out = run_cni("ADD", conf, socket=d.cni_socket)
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.2/24", "10.1.2.1"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t37_same_container_two_interfaces(daemons, version):
    """37. ADD c1/eth0 and c1/net1 (same id, two ifnames) → two different IPs; DEL c1/eth0 frees only eth0's IP
    (CHECK c1/net1 still ok)."""
    d = daemons("A")
    conf = cfg(version)
    eth0 = run_cni("ADD", conf, socket=d.cni_socket, if_name="eth0")
    net1 = run_cni("ADD", conf, socket=d.cni_socket, if_name="net1")
    assert assert_result(eth0, version) and assert_result(net1, version)
    assert eth0.ips == ["10.1.2.2/24"] and net1.ips == ["10.1.2.3/24"], (eth0, net1)
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket, if_name="eth0"))
    assert handle_ips(d, "testnet", "c1", "eth0") is None
    assert handle_ips(d, "testnet", "c1", "net1") == ["10.1.2.3/24"]
    check_version = version if version in CHECK_VERSIONS else "0.4.0"
    check_conf = {**cfg(check_version), "prevResult": net1.json}
    assert_ok_empty(run_cni("CHECK", check_conf, socket=d.cni_socket, if_name="net1"))
    assert ip_records(d, "10.1.2.2") == [] and len(ip_records(d, "10.1.2.3")) == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_t38_networks_are_independent(daemons, version):
    """38. ADD c1/eth0 in network `netA` and in network `netB` (same subnet config, different `name`) → both get
    `10.1.2.2/24` (independent pools); DEL in netA leaves netB's reservation."""
    d = daemons("A")
    a = run_cni("ADD", cfg(version, name="netA"), socket=d.cni_socket)
    b = run_cni("ADD", cfg(version, name="netB"), socket=d.cni_socket)
    assert normalised(assert_result(a, version)) == expected(version, ("10.1.2.2/24", "10.1.2.1"))
    assert normalised(assert_result(b, version)) == expected(version, ("10.1.2.2/24", "10.1.2.1"))
    assert_ok_empty(run_cni("DEL", cfg(version, name="netA"), socket=d.cni_socket))
    assert handle_ips(d, "netA", "c1", "eth0") is None
    assert handle_ips(d, "netB", "c1", "eth0") == ["10.1.2.2/24"]


@pytest.mark.parametrize("version", VERSIONS)
def test_t39_cni_args_ip(daemons, version):
    """39. ADD `CNI_ARGS=IgnoreUnknown=1;IP=10.1.2.88` → `10.1.2.88/24`."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, args="IgnoreUnknown=1;IP=10.1.2.88")
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.88/24", "10.1.2.1"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t40_args_cni_ips_beats_cni_args_ip(daemons, version):
    """40. ADD with `args.cni.ips:["10.1.2.77"]` **and** `CNI_ARGS=IP=10.1.2.88` → `10.1.2.77/24` only; `.88` stays
    free."""
    d = daemons("A")
    conf = cfg(version)
    conf["args"] = {"cni": {"ips": ["10.1.2.77"]}}
    out = run_cni("ADD", conf, socket=d.cni_socket, args="IP=10.1.2.88")
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.77/24", "10.1.2.1"))
    assert ip_records(d, "10.1.2.88") == []  # .88 not reserved
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (1, 1), counts
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id="c2", args="IP=10.1.2.88")
    assert out.ips == ["10.1.2.88/24"], out


@pytest.mark.parametrize("version", VERSIONS)
def test_t41_runtime_config_ips(daemons, version):
    """41. ADD with `runtimeConfig.ips:["10.1.2.99/24"]` → `10.1.2.99/24`."""
    d = daemons("A")
    conf = cfg(version)
    conf["capabilities"] = {"ips": True}
    conf["runtimeConfig"] = {"ips": ["10.1.2.99/24"]}
    out = run_cni("ADD", conf, socket=d.cni_socket)
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.99/24", "10.1.2.1"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t42_repeated_add_returns_existing(daemons, version):
    """42. ADD c1/eth0 twice (no DEL) → second call exit 0 with identical `ips`; pool usage unchanged (host-local
    would error)."""
    d = daemons("A")
    first = run_cni("ADD", cfg(version), socket=d.cni_socket)
    r1 = assert_result(first, version)
    before = _counts(d)
    second = run_cni("ADD", cfg(version), socket=d.cni_socket)
    r2 = assert_result(second, version)
    assert r2["ips"] == r1["ips"] == expected(version, ("10.1.2.2/24", "10.1.2.1"))["ips"]
    assert normalised(r2) == normalised(r1)
    assert _counts(d) == before == {**before, "handles": 1, "ips": 1}


@pytest.mark.parametrize("version", VERSIONS)
def test_t43_requested_ip_in_no_range(daemons, version):
    """43. ADD requesting `10.1.3.5` (in no range) → err 101; a following plain ADD for c2 gets `10.1.2.2` (nothing
    leaked)."""
    d = daemons("A")
    conf = cfg(version)
    conf["args"] = {"cni": {"ips": ["10.1.3.5"]}}
    assert_err(run_cni("ADD", conf, socket=d.cni_socket), 101, version)
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (0, 0), counts
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id="c2")
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.2/24", "10.1.2.1"))


@pytest.mark.parametrize("version", VERSIONS)
def test_t44_requested_ip_taken_or_gateway(daemons, version):
    """44. ADD c2 requesting the IP already held by c1 → err 101; c1 unaffected. Requesting the gateway → err
    101."""
    d = daemons("A")
    c1 = run_cni("ADD", cfg(version), socket=d.cni_socket)
    assert c1.ips == ["10.1.2.2/24"], c1
    taken = cfg(version)
    taken["args"] = {"cni": {"ips": ["10.1.2.2"]}}
    assert_err(run_cni("ADD", taken, socket=d.cni_socket, container_id="c2"), 101, version)
    gw = cfg(version)
    gw["args"] = {"cni": {"ips": ["10.1.2.1"]}}
    assert_err(run_cni("ADD", gw, socket=d.cni_socket, container_id="c3"), 101, version)
    assert_err(run_cni("ADD", cfg(version), socket=d.cni_socket, container_id="c4", args="IP=10.1.2.1"), 101,
               version)
    assert handle_ips(d, "testnet", "c1", "eth0") == ["10.1.2.2/24"]
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (1, 1), counts
    again = run_cni("ADD", cfg(version), socket=d.cni_socket)  # c1's own view is unchanged
    assert again.ips == ["10.1.2.2/24"], again


@pytest.mark.parametrize("version", VERSIONS)
def test_t45_dual_v6_exhausted_rolls_back_v4(daemons, version):
    """45. ADD DUAL where the v6 set is exhausted (tiny `rangeStart`=`rangeEnd` already used) → err 100 and the v4
    address is rolled back."""
    d = daemons("A")
    ranges = [[{"subnet": "10.1.2.0/24"}],
              [{"subnet": "2001:db8:1::/64", "rangeStart": "2001:db8:1::2", "rangeEnd": "2001:db8:1::2"}]]
    conf = cfg(version, ranges=ranges)
    c1 = run_cni("ADD", conf, socket=d.cni_socket)
    assert normalised(assert_result(c1, version)) == expected(version, ("10.1.2.2/24", "10.1.2.1"),
                                                             ("2001:db8:1::2/64", "2001:db8:1::1"))
    assert_err(run_cni("ADD", conf, socket=d.cni_socket, container_id="c2"), 100, version)
    assert read_handle(d, "testnet", "c2", "eth0") is None
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (1, 2), counts
    assert ip_records(d, "10.1.2.3") == []  # the v4 address c2 would have got is not held
    assert_ok_empty(run_cni("DEL", conf, socket=d.cni_socket))
    c2 = run_cni("ADD", conf, socket=d.cni_socket, container_id="c2")
    assert c2.ips == ["10.1.2.2/24", "2001:db8:1::2/64"], c2


@pytest.mark.parametrize("version", VERSIONS)
def test_t46_requested_ip_unparseable(daemons, version):
    """46. Requested IP `10.1.2.300` → err 7."""
    d = daemons("A")
    conf = cfg(version)
    conf["args"] = {"cni": {"ips": ["10.1.2.300"]}}
    assert_err(run_cni("ADD", conf, socket=d.cni_socket), 7, version)
    assert_err(run_cni("ADD", cfg(version), socket=d.cni_socket, args="IgnoreUnknown=1;IP=10.1.2.300"), 7, version)
    rc = cfg(version)
    rc["runtimeConfig"] = {"ips": ["10.1.2.300/24"]}
    assert_err(run_cni("ADD", rc, socket=d.cni_socket), 7, version)
    assert _counts(d)["handles"] == 0


K8S_ORDERS = [
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID={uid}",
    "K8S_POD_UID={uid};K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_NAME=p;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns",
    "K8S_POD_NAME=p;K8S_POD_UID={uid};IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;K8S_POD_INFRA_CONTAINER_ID={cid}",
]


@pytest.mark.parametrize("version", VERSIONS)
def test_t47_kubernetes_args_recorded(daemons, version):
    """47. CNI_ARGS `IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1;
    K8S_POD_UID=8f0e-…` in any order → success; daemon records pod ns/name/uid for c1.

    Read back from the handle record in etcd (``handles/<network>/<containerID>/<ifName>``, ``pod`` object)."""
    d = daemons("A")
    uid = "8f0e2c4a-1b3d-4e5f-9a7b-6c8d0e2f4a6b"
    for i, order in enumerate(K8S_ORDERS):
        cid = "c%d" % (i + 1)
        out = run_cni("ADD", cfg(version), socket=d.cni_socket, container_id=cid,
                      args=order.format(cid=cid, uid=uid))
        assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.%d/24" % (i + 2), "10.1.2.1"))
        rec = read_handle(d, "testnet", cid, "eth0")
        assert rec is not None
        assert rec["pod"] == {"namespace": "ns", "name": "p", "uid": uid}, rec
        assert rec["containerID"] == cid and rec["ifName"] == "eth0" and rec["network"] == "testnet", rec


@pytest.mark.parametrize("version", VERSIONS)
def test_t48_cni_args_without_equals(daemons, version):
    """48. CNI_ARGS `FOO` (no `=`) → ADD err 4 naming `CNI_ARGS`; the same value on DEL → ok-empty."""
    d = daemons("A")
    err = assert_err(run_cni("ADD", cfg(version), socket=d.cni_socket, args="FOO"), 4, version)
    assert "CNI_ARGS" in err["msg"], err
    assert _counts(d)["handles"] == 0
    assert_ok_empty(run_cni("DEL", cfg(version), socket=d.cni_socket, args="FOO"))
    # and a DEL with that CNI_ARGS still releases a real reservation
    assert run_cni("ADD", cfg(version), socket=d.cni_socket).ips == ["10.1.2.2/24"]
    assert_ok_empty(run_cni("DEL", cfg(version), socket=d.cni_socket, args="FOO"))
    assert _counts(d)["handles"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_t49_hundred_concurrent_adds(daemons, version):
    """49. 100 concurrent ADDs with distinct ids on a /24 → all succeed, 100 distinct addresses, none =
    gateway/network/broadcast."""
    d = daemons("A")
    conf = cfg(version)
    n = 100
    barrier = threading.Barrier(n)

    def one(i: int):
        barrier.wait()
        return run_cni("ADD", conf, socket=d.cni_socket, container_id="pod-%03d" % i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        outs = list(pool.map(one, range(n)))
    addrs = []
    for out in outs:
        obj = assert_result(out, version)
        assert len(obj["ips"]) == 1 and obj["ips"][0]["gateway"] == "10.1.2.1", obj
        addrs += out.ips
    assert len(set(addrs)) == n, sorted(addrs)
    net = ipaddress.ip_network("10.1.2.0/24")
    for a in addrs:
        iface = ipaddress.ip_interface(a)
        assert iface.network == net, a
        assert iface.ip not in (net.network_address, net.broadcast_address, ipaddress.ip_address("10.1.2.1")), a
    counts = _counts(d)
    assert (counts["handles"], counts["ips"]) == (n, n), counts


@pytest.mark.parametrize("version", VERSIONS)
def test_t50_netns_path_not_opened(daemons, version):
    """50. ADD with `CNI_NETNS=/does/not/exist` → success (IPAM never opens the netns)."""
    d = daemons("A")
    out = run_cni("ADD", cfg(version), socket=d.cni_socket, netns="/does/not/exist")
    assert normalised(assert_result(out, version)) == expected(version, ("10.1.2.2/24", "10.1.2.1"))
