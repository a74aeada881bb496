"""The pure half of the namespace checks (ipamd.domain.netcheck): what an attachment should look like, the comparison
with what was observed, and the CHECK error it maps to (docs/namespace-checks.md, docs/errors.md 110-113).

No namespace is entered here: observations are built by hand, as ``ipamd.netns.observe`` would fill them.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipamd.domain.errors import (
    CheckAddressMismatch,
    CheckInterfaceDown,
    CheckInterfaceMissing,
    CheckRouteMissing,
)
from ipamd.domain.model import Allocation, HandleRecord
from ipamd.domain.netcheck import (
    ADDRESS_MISMATCH,
    GATEWAY_UNREACHABLE,
    INTERFACE_DOWN,
    INTERFACE_MISSING,
    NEIGHBOUR_UNRESOLVED,
    NETNS_MISSING,
    OBSERVE_FAILED,
    REASONS,
    ROUTE_MISSING,
    Expected,
    ExpectedRoute,
    Finding,
    GatewayProbe,
    Nexthop,
    Observation,
    ObservedInterface,
    ObservedRoute,
    Prefix,
    check_error,
    compare,
    expected_state,
)

NS = "/var/run/netns/pod1"


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


pfx = Prefix.parse


def alloc(cidr: str, gateway: str | None) -> Allocation:
    iface = ipaddress.ip_interface(cidr)
    return Allocation("net1/x", iface.version, int(iface.ip), iface.network.prefixlen,
                      ip(gateway) if gateway else None)


V4 = alloc("10.1.2.2/24", "10.1.2.1")
V6 = alloc("2001:db8:1::2/64", "2001:db8:1::1")
UP = ObservedInterface("eth0", 2, True, True, "UP")


def route(dst: str, gw: str | None = None, oif: int = 2, table: int = 254) -> ObservedRoute:
    return ObservedRoute(pfx(dst), table, (Nexthop(ip(gw) if gw else None, oif),))


def healthy_v4(**kw: object) -> Observation:
    base: dict[str, object] = {
        "interface": UP, "addresses": (pfx("10.1.2.2/24"), pfx("fe80::1/64")),
        "routes": (route("0.0.0.0/0", "10.1.2.1"), route("10.1.2.0/24"))}
    base.update(kw)
    return Observation(NS, "eth0", True, **base)  # type: ignore[arg-type]


def reasons(findings: tuple[Finding, ...]) -> list[str]:
    return [f.reason for f in findings]


# --- expected_state -----------------------------------------------------------------------------------------------

def test_expected_state_routes_go_via_the_gateway_of_their_family() -> None:
    exp = expected_state("eth0", [V4, V6], [("0.0.0.0/0", None), ("::/0", None), ("192.168.0.0/16", "10.1.2.254")])
    assert exp.if_name == "eth0"
    assert exp.addresses == (pfx("10.1.2.2/24"), pfx("2001:db8:1::2/64"))
    assert [str(r) for r in exp.routes] == ["0.0.0.0/0 via 10.1.2.1", "::/0 via 2001:db8:1::1",
                                            "192.168.0.0/16 via 10.1.2.254"]
    assert exp.gateways == ((4, ip("10.1.2.1")), (6, ip("2001:db8:1::1")))


def test_expected_state_skips_families_without_an_address_and_bad_routes() -> None:
    # docs/conformance.md T25: "::/0" in an IPv4-only network is echoed, but there is nothing to install it with
    exp = expected_state("eth0", [V4], [("0.0.0.0/0", None), ("::/0", None), ("bogus", None), ("0.0.0.0/0", None)])
    assert [str(r) for r in exp.routes] == ["0.0.0.0/0 via 10.1.2.1"]


def test_expected_state_without_gateway_is_an_on_link_route() -> None:
    exp = expected_state("eth0", [alloc("10.1.3.7/24", None)], [("10.9.0.0/16", None)])
    assert exp.routes == (ExpectedRoute(pfx("10.9.0.0/16"), None),)
    assert exp.gateways == ()
    assert str(exp.routes[0]) == "10.9.0.0/16"


def test_expected_state_masks_host_bits_of_old_records() -> None:
    exp = expected_state("eth0", [V4], [("10.9.0.5/16", None)])
    assert exp.routes[0].dst == pfx("10.9.0.0/16")


# --- compare ------------------------------------------------------------------------------------------------------

EXP = expected_state("eth0", [V4], [("0.0.0.0/0", None)])


def test_healthy_attachment_has_no_finding() -> None:
    assert compare(EXP, healthy_v4()) == ()


@pytest.mark.parametrize("observed, reason, words", [
    (Observation(NS, "eth0", False, error="does not exist"), NETNS_MISSING, [NS, "does not exist"]),
    (Observation(NS, "eth0", False, error="is not a network namespace"), NETNS_MISSING, ["not a network namespace"]),
    (Observation("", "eth0", False, error="is not an absolute path"), NETNS_MISSING, ["no network namespace"]),
    (Observation(NS, "eth0", True, error="cannot enter it: Permission denied"), OBSERVE_FAILED,
     [NS, "Permission denied"]),
    (Observation(NS, "eth0", True), INTERFACE_MISSING, ["eth0", "missing", NS]),
])
def test_what_hides_everything_else_is_reported_alone(observed: Observation, reason: str, words: list[str]) -> None:
    findings = compare(EXP, observed)
    assert reasons(findings) == [reason]
    for word in words:
        assert word in findings[0].message, findings


@pytest.mark.parametrize("iface, words", [
    (ObservedInterface("eth0", 2, False, False, "DOWN"), ["administratively down"]),
    (ObservedInterface("eth0", 2, True, False, "LOWERLAYERDOWN"), ["no carrier", "LOWERLAYERDOWN"]),
])
def test_interface_down_or_without_carrier(iface: ObservedInterface, words: list[str]) -> None:
    findings = compare(EXP, healthy_v4(interface=iface))
    assert reasons(findings) == [INTERFACE_DOWN]
    for word in words:
        assert word in findings[0].message


def test_address_missing_names_what_is_there() -> None:
    findings = compare(EXP, healthy_v4(addresses=(pfx("10.1.2.9/24"), pfx("fe80::1/64"))))
    assert reasons(findings) == [ADDRESS_MISMATCH]
    assert findings[0].message == "address 10.1.2.2/24 is missing on eth0 (IPv4 addresses there: 10.1.2.9/24)"


def test_address_with_another_prefix_is_a_mismatch() -> None:
    findings = compare(EXP, healthy_v4(addresses=(pfx("10.1.2.2/16"),)))
    assert reasons(findings) == [ADDRESS_MISMATCH]
    assert findings[0].message == "address 10.1.2.2 on eth0 has prefix /16, allocated /24"


@pytest.mark.parametrize("routes", [
    (),                                                              # deleted
    (route("0.0.0.0/0", "10.1.2.254"),),                             # via another gateway
    (route("0.0.0.0/0", "10.1.2.1", oif=3),),                        # through another interface
    (route("0.0.0.0/1", "10.1.2.1"),),                               # another destination
])
def test_route_missing(routes: tuple[ObservedRoute, ...]) -> None:
    findings = compare(EXP, healthy_v4(routes=routes))
    assert reasons(findings) == [ROUTE_MISSING]
    assert findings[0].message.startswith("route 0.0.0.0/0 via 10.1.2.1 dev eth0 is missing")


def test_route_missing_names_the_route_of_the_same_destination_it_found() -> None:
    findings = compare(EXP, healthy_v4(routes=(route("0.0.0.0/0", "10.1.2.254"),)))
    assert "(found: 0.0.0.0/0 via 10.1.2.254)" in findings[0].message


@pytest.mark.parametrize("routes", [
    (route("0.0.0.0/0", "10.1.2.1", table=100),),                    # moved to another table (sbr)
    (ObservedRoute(pfx("0.0.0.0/0"), 254, (Nexthop(ip("10.1.2.7"), 2), Nexthop(ip("10.1.2.1"), 2))),),  # multipath
])
def test_route_found_in_another_table_or_as_one_of_several_next_hops(routes: tuple[ObservedRoute, ...]) -> None:
    assert compare(EXP, healthy_v4(routes=routes)) == ()


def test_on_link_route_matches_any_next_hop_through_the_interface() -> None:
    exp = expected_state("eth0", [alloc("10.1.3.7/24", None)], [("10.9.0.0/16", None)])
    obs = healthy_v4(addresses=(pfx("10.1.3.7/24"),), routes=(route("10.9.0.0/16"),))
    assert compare(exp, obs) == ()
    assert reasons(compare(exp, healthy_v4(addresses=(pfx("10.1.3.7/24"),), routes=(route("10.9.0.0/16", oif=9),)))) \
        == [ROUTE_MISSING]


def probe(received: int, neighbour: str, error: str = "") -> GatewayProbe:
    return GatewayProbe(4, ip("10.1.2.1"), 1, received, 0.0002 if received else None, neighbour, error)


@pytest.mark.parametrize("probes, expected", [
    ((probe(1, "REACHABLE"),), []),
    ((probe(1, "STALE"),), []),
    ((probe(0, "INCOMPLETE"),), [GATEWAY_UNREACHABLE, NEIGHBOUR_UNRESOLVED]),
    ((probe(0, "REACHABLE"),), [GATEWAY_UNREACHABLE]),                # a gateway that drops echo requests
    ((probe(1, "NONE"),), [NEIGHBOUR_UNRESOLVED]),
    ((probe(0, "FAILED", "echo: Network is unreachable"),), [GATEWAY_UNREACHABLE, NEIGHBOUR_UNRESOLVED]),
])
def test_probes(probes: tuple[GatewayProbe, ...], expected: list[str]) -> None:
    findings = compare(EXP, healthy_v4(probes=probes, probed=True))
    assert reasons(findings) == expected
    if GATEWAY_UNREACHABLE in expected:
        assert "gateway 10.1.2.1 does not answer from eth0" in findings[0].message
        assert (probes[0].error or "0 of 1 echo replies") in findings[0].message


def test_findings_come_in_the_order_of_reasons() -> None:
    obs = healthy_v4(interface=ObservedInterface("eth0", 2, True, False, "LOWERLAYERDOWN"), addresses=(), routes=(),
                     probes=(probe(0, "INCOMPLETE"),), probed=True)
    assert reasons(compare(EXP, obs)) == [INTERFACE_DOWN, ADDRESS_MISMATCH, ROUTE_MISSING, GATEWAY_UNREACHABLE,
                                          NEIGHBOUR_UNRESOLVED]
    assert [r for r in REASONS if r in reasons(compare(EXP, obs))] == reasons(compare(EXP, obs))


# --- check_error --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("obs, cls, code", [
    (Observation(NS, "eth0", True), CheckInterfaceMissing, 110),
    (healthy_v4(interface=ObservedInterface("eth0", 2, False, False, "DOWN")), CheckInterfaceDown, 111),
    (healthy_v4(addresses=()), CheckAddressMismatch, 112),
    (healthy_v4(routes=()), CheckRouteMissing, 113),
])
def test_check_error_codes(obs: Observation, cls: type, code: int) -> None:
    err = check_error(compare(EXP, obs))
    assert type(err) is cls and err is not None and err.cni_code == code
    assert err.msg == compare(EXP, obs)[0].message


def test_check_error_first_mismatch_with_every_one_in_the_details() -> None:
    err = check_error(compare(EXP, healthy_v4(addresses=(), routes=(), probes=(probe(0, "FAILED"),), probed=True)))
    assert isinstance(err, CheckAddressMismatch)
    assert err.details.startswith("address_mismatch: address 10.1.2.2/24 is missing")
    assert "route_missing: route 0.0.0.0/0 via 10.1.2.1" in err.details
    assert "gateway_unreachable" not in err.details   # probes are not CHECK's


@pytest.mark.parametrize("obs", [
    healthy_v4(),
    healthy_v4(probes=(probe(0, "FAILED"),), probed=True),
    Observation(NS, "eth0", False, error="does not exist"),
    Observation(NS, "eth0", True, error="timed out entering the namespace"),
])
def test_no_check_error_for_healthy_probe_only_or_unobservable(obs: Observation) -> None:
    assert check_error(compare(EXP, obs)) is None


# --- a property: an observation that mirrors the expected state is healthy; each removal is found -----------------

@st.composite
def attachments(draw: st.DrawFn) -> tuple[Expected, Observation]:
    allocs = []
    if draw(st.booleans()):
        allocs.append(alloc("10.%d.%d.%d/%d" % (draw(st.integers(0, 255)), draw(st.integers(0, 255)),
                                                draw(st.integers(2, 250)), draw(st.integers(8, 30))),
                            draw(st.sampled_from(["10.0.0.1", None]))))
    if draw(st.booleans()) or not allocs:
        allocs.append(alloc("fd00:%x::%x/%d" % (draw(st.integers(0, 0xFFFF)), draw(st.integers(2, 0xFFFF)),
                                                 draw(st.integers(48, 126))), draw(st.sampled_from(["fd00::1", None]))))
    routes = draw(st.lists(st.sampled_from([("0.0.0.0/0", None), ("::/0", None), ("10.9.0.0/16", "10.0.0.9"),
                                            ("fd09::/32", None), ("192.168.0.0/16", None)]), max_size=4))
    exp = expected_state("eth0", allocs, routes)
    obs = Observation(NS, "eth0", True, UP, exp.addresses,
                      tuple(ObservedRoute(r.dst, draw(st.sampled_from([254, 100])), (Nexthop(r.gateway, 2),))
                            for r in exp.routes),
                      tuple(GatewayProbe(f, g, 1, 1, 0.001, "REACHABLE") for f, g in exp.gateways), True)
    return exp, obs


@settings(max_examples=200, deadline=None)
@given(attachments(), st.data())
def test_mirror_is_healthy_and_each_removal_is_found(case: tuple[Expected, Observation], data: st.DataObject) -> None:
    exp, obs = case
    assert compare(exp, obs) == ()
    if exp.addresses:
        gone = data.draw(st.sampled_from(exp.addresses))
        found = compare(exp, Observation(NS, "eth0", True, UP, tuple(a for a in obs.addresses if a != gone),
                                         obs.routes, obs.probes, True))
        assert reasons(found) == [ADDRESS_MISMATCH] and str(gone) in found[0].message
    if exp.routes:
        index = data.draw(st.integers(0, len(exp.routes) - 1))
        found = compare(exp, Observation(NS, "eth0", True, UP, obs.addresses,
                                         obs.routes[:index] + obs.routes[index + 1:], obs.probes, True))
        assert reasons(found) == [ROUTE_MISSING] and str(exp.routes[index]) in found[0].message


# --- the handle record keeps the result's routes ------------------------------------------------------------------

def test_handle_record_routes_round_trip_and_old_records_are_unchanged() -> None:
    rec = HandleRecord("net1", "c1", "eth0", "A", (V4,), "/var/run/netns/c1", {},
                       (("0.0.0.0/0", None), ("192.168.0.0/16", "10.1.2.254")))
    raw = rec.encode()
    assert b'"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.2.254"}]' in raw
    assert HandleRecord.decode(raw) == rec
    old = HandleRecord("net1", "c1", "eth0", "A", (V4,), "/var/run/netns/c1")
    assert b"routes" not in old.encode()
    assert HandleRecord.decode(old.encode()).routes == ()
