"""The abbreviated IPAM result per cniVersion (ipamd.domain.cni.render_result).

Field cases: docs/cni-contract.md §3.1-3.2, T21-T27 (ips[].version only before 1.0.0, route extras only for
1.1.0, dns omitted when empty, never "interfaces" or "ips[].interface", cniVersion echoed).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from ipamd.domain.cni import SUPPORTED_VERSIONS, render_result
from ipamd.domain.model import Allocation
from ipamd.domain.netconf import NetConf, parse_netconf

LEGACY = ("0.3.0", "0.3.1", "0.4.0")
MODERN = ("1.0.0", "1.1.0")

V4 = Allocation("testnet/0a010200-24", 4, int(ipaddress.ip_address("10.1.2.2")), 24,
                int(ipaddress.ip_address("10.1.2.1")))
V6 = Allocation("testnet/20010db8000100000000000000000000-64", 6, int(ipaddress.ip_address("2001:db8:1::2")), 64,
                int(ipaddress.ip_address("2001:db8:1::1")))
NO_GW = Allocation("testnet/0a010300-24", 4, int(ipaddress.ip_address("10.1.3.7")), 24, None)


def netconf(**ipam: Any) -> NetConf:
    c = {"cniVersion": "1.0.0", "name": "testnet",
         "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
                  **ipam}}
    return parse_netconf(c, "testnet")


def assert_no_interfaces(result: dict[str, Any]) -> None:
    # T23
    assert "interfaces" not in result
    assert all("interface" not in entry for entry in result["ips"])
    json.loads(json.dumps(result))  # one JSON object


@pytest.mark.parametrize("version", LEGACY)
def test_legacy_versions_carry_ip_version(version: str) -> None:
    # T21, T24 (the §3.2 0.4.0 example without dns)
    result = render_result(version, [V4, V6], netconf(routes=[{"dst": "0.0.0.0/0"}]))
    assert result == {
        "cniVersion": version,
        "ips": [{"version": "4", "address": "10.1.2.2/24", "gateway": "10.1.2.1"},
                {"version": "6", "address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    assert_no_interfaces(result)


@pytest.mark.parametrize("version", MODERN)
def test_modern_versions_have_no_ip_version(version: str) -> None:
    # T22 (the §3.2 1.1.0 example)
    result = render_result(version, [V4, V6], netconf(routes=[{"dst": "0.0.0.0/0"}]))
    assert result == {
        "cniVersion": version,
        "ips": [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"},
                {"address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    assert_no_interfaces(result)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_no_gateway_no_gateway_key(version: str) -> None:
    result = render_result(version, [NO_GW], None)
    assert result["ips"][0]["address"] == "10.1.3.7/24"
    assert "gateway" not in result["ips"][0]
    assert_no_interfaces(result)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_cni_version_echoed_and_order_kept(version: str) -> None:
    result = render_result(version, [V6, V4], None)
    assert result["cniVersion"] == version
    assert [e["address"] for e in result["ips"]] == ["2001:db8:1::2/64", "10.1.2.2/24"]
    assert set(result) == {"cniVersion", "ips"}   # no routes, no dns without a netconf


ROUTES = [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.2.254"}, {"dst": "::/0"},
          {"dst": "10.9.0.0/16", "mtu": 1400, "priority": 5}]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_routes_and_extras(version: str) -> None:
    # T25: entries without gw have no gw key; T26: extras (mtu, priority) only for 1.1.0.
    result = render_result(version, [V4], netconf(routes=ROUTES))
    extra = {"mtu": 1400, "priority": 5} if version == "1.1.0" else {}
    assert result["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.2.254"},
                                {"dst": "::/0"}, {"dst": "10.9.0.0/16", **extra}]


def test_all_route_extras_for_1_1_0() -> None:
    nc = netconf(routes=[{"dst": "10.9.0.0/16", "mtu": 1400, "advmss": 1360, "priority": 5, "table": 100,
                          "scope": 253}])
    assert render_result("1.1.0", [V4], nc)["routes"] == [
        {"dst": "10.9.0.0/16", "mtu": 1400, "advmss": 1360, "priority": 5, "table": 100, "scope": 253}]
    assert render_result("1.0.0", [V4], nc)["routes"] == [{"dst": "10.9.0.0/16"}]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_dns_rendered_when_configured(version: str) -> None:
    # T27
    result = render_result(version, [V4], netconf(dns={"nameservers": ["10.1.2.1"], "search": ["a.local"]}))
    assert result["dns"] == {"nameservers": ["10.1.2.1"], "search": ["a.local"]}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("dns", [None, {}, {"nameservers": []}])
def test_dns_omitted_when_empty(version: str, dns: dict[str, Any] | None) -> None:
    nc = netconf() if dns is None else netconf(dns=dns)
    result = render_result(version, [V4], nc)
    assert "dns" not in result
    assert "routes" not in result   # none configured


def test_dns_is_a_copy() -> None:
    nc = netconf(dns={"nameservers": ["10.1.2.1"]})
    result = render_result("1.0.0", [V4], nc)
    result["dns"]["domain"] = "x"
    assert "domain" not in nc.dns


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_empty_allocation_list(version: str) -> None:
    assert render_result(version, [], None) == {"cniVersion": version, "ips": []}


def test_allocation_json_round_trip() -> None:
    for alloc in (V4, V6, NO_GW):
        assert Allocation.from_json(alloc.to_json()) == alloc
