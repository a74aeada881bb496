"""Decoding one CNI call (ipamd.domain.cni.decode_request, requested_addresses, decode_version_request).

Processing order and codes: docs/cni-contract.md §1.3-1.4 and cases T5-T19, T39-T48, T58a; CNI_ARGS §5.4;
requested addresses §5.3.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

import pytest

from ipamd.domain.cni import (
    ABOUT,
    SUPPORTED_VERSIONS,
    AboutRequest,
    Attachment,
    CniRequest,
    decode_request,
    decode_version_request,
    parse_cni_args,
    requested_addresses,
    validate_container_id,
    validate_if_name,
    version_tuple,
)
from ipamd.domain.errors import IpamError
from ipamd.domain.netconf import NetConf, parse_netconf

ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def cfg(version: Any = "1.0.0", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "testnet", "type": "bridge", "bridge": "cni0",
                           "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/24"}]],
                                    "routes": [{"dst": "0.0.0.0/0"}]}}
    if version is not None:
        out["cniVersion"] = version
    out.update(extra)
    return out


def stdin(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def env(command: str | None, **over: str | None) -> dict[str, str]:
    e = dict(ENV)
    if command is not None:
        e["CNI_COMMAND"] = command
    for k, v in over.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def decode(e: Mapping[str, str], data: bytes | None, stdin_error: str | None = None) -> CniRequest:
    return decode_request(e, data, stdin_error)


def code_of(e: Mapping[str, str], data: bytes | None, stdin_error: str | None = None) -> IpamError:
    with pytest.raises(IpamError) as info:
        decode(e, data, stdin_error)
    return info.value


# --- command and required variables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("e", [{}, {"CNI_COMMAND": ""}, {**ENV}, {**ENV, "CNI_COMMAND": ""}])
def test_no_command_is_about(e: dict[str, str]) -> None:
    # T5: no CNI_COMMAND -> about on stderr, exit 0 (the adapter prints ABOUT).
    with pytest.raises(AboutRequest):
        decode(e, stdin(cfg()))
    assert "0.3.0" in ABOUT and "1.1.0" in ABOUT


@pytest.mark.parametrize("command", ["FOO", "add", "Add", "VERSION "])
def test_unknown_command_is_code_4(command: str) -> None:
    # T6
    err = code_of(env(command), stdin(cfg()))
    assert err.cni_code == 4
    assert "unknown CNI_COMMAND: %s" % command in err.msg


def test_unknown_command_with_bad_stdin_gives_6() -> None:
    # §1.4 step 1: skel notices an unknown command only after decoding stdin, so a bad stdin wins.
    assert code_of(env("FOO"), b"{").cni_code == 6


@pytest.mark.parametrize("command, unset, names", [
    ("ADD", ["CNI_CONTAINERID", "CNI_IFNAME"], "[CNI_CONTAINERID,CNI_IFNAME]"),          # T7
    ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"], "[CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME]"),
    ("ADD", ["CNI_NETNS"], "[CNI_NETNS]"),                                                 # T8
    ("CHECK", ["CNI_NETNS"], "[CNI_NETNS]"),                                               # T8
    ("CHECK", ["CNI_IFNAME"], "[CNI_IFNAME]"),
    ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"], "[CNI_CONTAINERID,CNI_IFNAME]"),
])
def test_missing_vars_reported_all_at_once(command: str, unset: list[str], names: str) -> None:
    err = code_of(env(command, **{v: None for v in unset}), stdin(cfg()))
    assert err.cni_code == 4
    assert err.msg == "required env variables %s missing" % names


@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_empty_var_is_missing(var: str) -> None:
    # §1.1: libcni exports "" for values it does not have; "" is unset.
    err = code_of(env("ADD", **{var: ""}), stdin(cfg()))
    assert err.cni_code == 4 and var in err.msg


def test_missing_vars_checked_before_stdin() -> None:
    # §1.4: step 2 (env) before steps 4-6 (stdin).
    assert code_of(env("ADD", CNI_IFNAME=None), b"{").cni_code == 4
    assert code_of(env("ADD", CNI_IFNAME=None), None, "Is a directory").cni_code == 4


def test_del_does_not_need_netns() -> None:
    # T53: DEL with CNI_NETNS unset.
    req = decode(env("DEL", CNI_NETNS=None), stdin(cfg()))
    assert req.netns == "" and req.container_id == "c1" and req.if_name == "eth0"


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_need_no_attachment(command: str) -> None:
    # T64, T67: only CNI_COMMAND (+ CNI_PATH).
    req = decode({"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}, stdin(cfg("1.1.0")))
    assert req.command == command and req.cni_version == "1.1.0"
    assert req.container_id == "" and req.if_name == ""


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_ignore_attachment_values(command: str) -> None:
    # libcni passes "" for them; even odd values are not validated for GC/STATUS.
    decode({"CNI_COMMAND": command, "CNI_CONTAINERID": "-bad", "CNI_IFNAME": "x" * 20}, stdin(cfg("1.1.0")))


def test_cni_path_not_required() -> None:
    # §1.2 project decision.
    req = decode(env("ADD", CNI_PATH=None), stdin(cfg()))
    assert req.command == "ADD"


def test_netns_not_opened() -> None:
    # T50
    req = decode(env("ADD", CNI_NETNS="/does/not/exist"), stdin(cfg()))
    assert req.netns == "/does/not/exist"


def test_decoded_fields_and_attachment() -> None:
    req = decode(env("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=p"), stdin(cfg("0.4.0")))
    assert (req.command, req.cni_version, req.container_id, req.if_name, req.netns) == (
        "ADD", "0.4.0", "c1", "eth0", "/var/run/netns/none")
    assert req.name == "testnet"
    assert req.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "p"}
    assert req.attachment == Attachment("testnet", "c1", "eth0")
    assert req.attachment.handle == "testnet/c1/eth0"
    assert req.conf["ipam"]["type"] == "ipamd-cni"
    assert req.warnings == []


# --- container ID / interface name validation (§1.3, T9-T11, T57) -----------------------------------------------------

@pytest.mark.parametrize("cid", ["-abc", "_abc", ".abc", "abc$", "a b", "abc/def", "abc\n", "ab\u00e9", "a;b"])
def test_invalid_container_id(cid: str) -> None:
    err = code_of(env("ADD", CNI_CONTAINERID=cid), stdin(cfg()))
    assert err.cni_code == 4 and "containerID" in err.msg


@pytest.mark.parametrize("cid", ["c1", "a_b.c-D9", "0abc", "Z", "a" * 1000, "f" * 64])
def test_valid_container_id(cid: str) -> None:
    assert decode(env("ADD", CNI_CONTAINERID=cid), stdin(cfg())).container_id == cid


@pytest.mark.parametrize("name", ["abcdefghijklmnop", ".", "..", "eth/0", "eth:0", "eth 0", "eth\t0", "eth\n",
                                  "\u00e9" * 8, "eth\u00a00"])
def test_invalid_if_name(name: str) -> None:
    err = code_of(env("ADD", CNI_IFNAME=name), stdin(cfg()))
    assert err.cni_code == 4


@pytest.mark.parametrize("name", ["abcdefghijklmno", "eth0", "net1", "a", "eth@0", "e-t_h.0", "\u00e9" * 7, "..."])
def test_valid_if_name(name: str) -> None:
    assert decode(env("ADD", CNI_IFNAME=name), stdin(cfg())).if_name == name


def test_if_name_validated_on_del() -> None:
    # T57
    assert code_of(env("DEL", CNI_IFNAME="abcdefghijklmnop"), stdin(cfg())).cni_code == 4


def test_container_id_validated_on_check() -> None:
    assert code_of(env("CHECK", CNI_CONTAINERID="a b"), stdin(cfg("1.0.0"))).cni_code == 4


def test_validators_directly() -> None:
    validate_container_id("abc")
    validate_if_name("eth0")


@pytest.mark.parametrize("cid", ["", "-a", "a b"])
def test_validate_container_id_rejects(cid: str) -> None:
    # the validators are also used on their own (gRPC API, ipamd/grpcapi.py _attachment): they must reject ""
    with pytest.raises(IpamError) as info:
        validate_container_id(cid)
    assert info.value.cni_code == 4


@pytest.mark.parametrize("name", ["", "a" * 16, ".", "a:b"])
def test_validate_if_name_rejects(name: str) -> None:
    # §1.3: 1..15 bytes; libcni ValidateInterfaceName rejects "" ("interface name is empty")
    with pytest.raises(IpamError) as info:
        validate_if_name(name)
    assert info.value.cni_code == 4


# --- network name (§1.3, T12) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [None, "", "te%%st", "-net", 5, "net/1"])
def test_invalid_network_name(name: Any) -> None:
    c = cfg()
    if name is None:
        del c["name"]
    else:
        c["name"] = name
    assert code_of(env("ADD"), stdin(c)).cni_code == 7


def test_valid_network_name() -> None:
    assert decode(env("ADD"), stdin({**cfg(), "name": "net.1_a-b"})).name == "net.1_a-b"


def test_name_checked_before_version() -> None:
    # §1.4 step 5 (name -> 7) before steps 6-7 (version -> 6 / 1).
    c = cfg("9.9.9")
    del c["name"]
    assert code_of(env("ADD"), stdin(c)).cni_code == 7


# --- stdin (§1.4 steps 4-5, T13-T14) -------------------------------------------------------------------------------

def test_stdin_read_error_is_5() -> None:
    err = code_of(env("ADD"), None, "Is a directory")
    assert err.cni_code == 5 and "Is a directory" in err.msg


@pytest.mark.parametrize("data", [b"{", b"[]", b"", None, b"null", b'"x"', b"5", b"\xff\xfe{", b"garbage"])
def test_stdin_not_a_json_object_is_6(data: bytes | None) -> None:
    assert code_of(env("ADD"), data).cni_code == 6


def test_stdin_error_checked_after_env() -> None:
    assert code_of(env("ADD", CNI_CONTAINERID="-x"), None, "boom").cni_code == 4


# --- CNI_ARGS (§5.4, T39, T47, T48) -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("", {}),
    ("IgnoreUnknown=1;IP=10.1.2.88", {"IgnoreUnknown": "1", "IP": "10.1.2.88"}),
    ("K8S_POD_UID=8f0e-1;IgnoreUnknown=true;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1",
     {"K8S_POD_UID": "8f0e-1", "IgnoreUnknown": "true", "K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p",
      "K8S_POD_INFRA_CONTAINER_ID": "c1"}),
    ("A=b=c", {"A": "b=c"}),                # split on the first '='
    ("A=", {"A": ""}),                      # empty value tolerated
    ("A=1;;B=2;", {"A": "1", "B": "2"}),    # empty pairs skipped
    ("ip=1;IP=2", {"ip": "1", "IP": "2"}),  # keys case-sensitive
    ("X=a-b_c.d:e", {"X": "a-b_c.d:e"}),
])
def test_parse_cni_args(raw: str, expected: dict[str, str]) -> None:
    assert parse_cni_args(raw, strict=True) == expected
    assert parse_cni_args(raw, strict=False) == expected


@pytest.mark.parametrize("raw", ["FOO", "A=1;FOO", "IgnoreUnknown=1;K8S_POD_NAME"])
def test_cni_args_without_equals_strict_on_add(raw: str) -> None:
    # T48: ADD -> code 4 naming CNI_ARGS.
    err = code_of(env("ADD", CNI_ARGS=raw), stdin(cfg()))
    assert err.cni_code == 4 and "CNI_ARGS" in err.msg


@pytest.mark.parametrize("command, version", [("DEL", "1.0.0"), ("CHECK", "1.0.0"), ("GC", "1.1.0"),
                                              ("STATUS", "1.1.0")])
def test_cni_args_without_equals_lenient_elsewhere(command: str, version: str) -> None:
    # T48: the same value on DEL -> ok; CHECK likewise (§5.4).
    req = decode(env(command, CNI_ARGS="FOO;A=1"), stdin(cfg(version)))
    assert req.args == {"A": "1"}


# --- cniVersion (§1.4 steps 6-7, T15-T19, T58a) ---------------------------------------------------------------------

@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_supported_versions(version: str) -> None:
    assert decode(env("ADD"), stdin(cfg(version))).cni_version == version


@pytest.mark.parametrize("version, code", [
    (None, 1),          # T17: absent means 0.1.0 -> unsupported
    ("", 1),            # "" is absent
    ("0.1.0", 1),
    ("0.2.0", 1),       # T17
    ("9.9.9", 1),       # T16
    ("abc", 1),         # ADD compares strings: unparseable -> 1
    ("1.0", 1),
    (1.0, 6),           # T15: a number
    (1, 6),
    (["1.0.0"], 6),
    (True, 6),
])
def test_add_version_codes(version: Any, code: int) -> None:
    err = code_of(env("ADD"), stdin(cfg(version)))
    assert err.cni_code == code


def test_incompatible_version_message_lists_supported() -> None:
    # T16
    err = code_of(env("ADD"), stdin(cfg("9.9.9")))
    assert err.msg == "incompatible CNI versions"
    assert "9.9.9" in err.details
    for v in SUPPORTED_VERSIONS:
        assert v in err.details


@pytest.mark.parametrize("command, version, code", [
    ("CHECK", "0.3.1", 1),      # T18
    ("CHECK", "0.3.0", 1),
    ("CHECK", None, 1),         # absent -> 0.1.0 < 0.4.0
    ("CHECK", "abc", 6),        # T18: unparseable on CHECK -> 6
    ("CHECK", "1.0", 6),
    ("CHECK", 1.0, 6),
    ("CHECK", "9.9.9", 1),      # passes the minimum, still unsupported
    ("GC", "1.0.0", 1),         # T19
    ("STATUS", "1.0.0", 1),     # T19
    ("GC", "0.4.0", 1),
    ("STATUS", None, 1),
    ("GC", "abc", 6),
    ("STATUS", "abc", 6),
    ("GC", "1.2.0", 1),
])
def test_verb_version_gates(command: str, version: Any, code: int) -> None:
    e = env(command) if command == "CHECK" else {"CNI_COMMAND": command}
    err = code_of(e, stdin(cfg(version)))
    assert err.cni_code == code


def test_check_version_gate_message() -> None:
    err = code_of(env("CHECK"), stdin(cfg("0.3.1")))
    assert err.msg == "config version does not allow CHECK"


@pytest.mark.parametrize("command, version", [("CHECK", "0.4.0"), ("CHECK", "1.0.0"), ("CHECK", "1.1.0"),
                                              ("GC", "1.1.0"), ("STATUS", "1.1.0")])
def test_verb_version_gates_pass(command: str, version: str) -> None:
    e = env(command) if command == "CHECK" else {"CNI_COMMAND": command}
    assert decode(e, stdin(cfg(version))).cni_version == version


@pytest.mark.parametrize("version", [None, "", "9.9.9", "0.2.0", "abc"])
def test_del_with_unusable_version_releases_anyway(version: Any) -> None:
    # T58a, §2.2 project decision: no error, a warning.
    req = decode(env("DEL"), stdin(cfg(version)))
    assert req.command == "DEL" and req.container_id == "c1"
    assert len(req.warnings) == 1 and "cniVersion" in req.warnings[0]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_del_with_supported_version(version: str) -> None:
    req = decode(env("DEL"), stdin(cfg(version)))
    assert req.cni_version == version and req.warnings == []


def test_del_still_rejects_bad_env_and_undecodable_json() -> None:
    # §2.2: invalid env and undecodable JSON still produce 4 / 6.
    assert code_of(env("DEL", CNI_CONTAINERID="a b"), stdin(cfg())).cni_code == 4
    assert code_of(env("DEL"), b"{").cni_code == 6


def test_version_is_not_decoded_here() -> None:
    with pytest.raises(IpamError) as info:
        decode(env("VERSION"), stdin(cfg()))
    assert info.value.cni_code == 4


@pytest.mark.parametrize("data, expected", [
    (b'{"cniVersion":"1.1.0"}', "1.1.0"),     # T1
    (b'{"cniVersion":"0.4.0"}', "0.4.0"),     # T2
    (b"", "1.1.0"),                           # T3
    (None, "1.1.0"),
    (b"garbage", "1.1.0"),
    (b'{"cniVersion":1.0}', "1.1.0"),
    (b'{"cniVersion":""}', "1.1.0"),
    (b"[]", "1.1.0"),
    (b"\xff", "1.1.0"),
    (b'{"cniVersion":"9.9.9"}', "9.9.9"),     # echoed whatever it is (§2.4)
])
def test_decode_version_request(data: bytes | None, expected: str) -> None:
    assert decode_version_request(data) == expected


@pytest.mark.parametrize("text, expected", [
    ("1.0.0", (1, 0, 0)), ("0.4.0", (0, 4, 0)), ("10.20.30", (10, 20, 30)),
    ("1.0", None), ("abc", None), ("", None), ("1.0.0.0", None), ("1.a.0", None), ("-1.0.0", None),
])
def test_version_tuple(text: str, expected: tuple[int, int, int] | None) -> None:
    assert version_tuple(text) == expected


# --- requested addresses (§5.3, T39-T46) ---------------------------------------------------------------------------

DUAL = [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]


def requested(conf_extra: dict[str, Any], cni_args: str = "", ranges: Any = None) -> dict[int, tuple[str, int]]:
    c = cfg(**conf_extra)
    if ranges is not None:
        c["ipam"]["ranges"] = ranges
    req = decode(env("ADD", CNI_ARGS=cni_args), stdin(c))
    nc: NetConf = parse_netconf(req.conf, req.name)
    return {idx: (pool.id, str(ipaddress.ip_address(v))) for idx, (pool, v) in requested_addresses(req, nc).items()}


def requested_error(conf_extra: dict[str, Any], cni_args: str = "") -> IpamError:
    with pytest.raises(IpamError) as info:
        requested(conf_extra, cni_args)
    return info.value


POOL4 = "testnet/0a010200-24"
POOL6 = "testnet/20010db8000100000000000000000000-64"


@pytest.mark.parametrize("conf_extra, cni_args, expected", [
    ({}, "", {}),
    ({}, "IgnoreUnknown=1;IP=10.1.2.88", {0: (POOL4, "10.1.2.88")}),                      # T39
    ({}, "IP=10.1.2.88/24", {0: (POOL4, "10.1.2.88")}),
    ({"args": {"cni": {"ips": ["10.1.2.77"]}}}, "IP=10.1.2.88", {0: (POOL4, "10.1.2.77")}),  # T40
    ({"args": {"cni": {"ips": []}}}, "IP=10.1.2.88", {}),            # args.cni.ips present: CNI_ARGS IP ignored
    ({"runtimeConfig": {"ips": ["10.1.2.99/24"]}}, "", {0: (POOL4, "10.1.2.99")}),          # T41
    ({"runtimeConfig": {"ips": ["10.1.2.99/24"]}}, "IP=10.1.2.99", {0: (POOL4, "10.1.2.99")}),
    ({"args": {"cni": {"ips": ["10.1.2.77"]}}, "runtimeConfig": {"ips": ["10.1.2.77/24"]}}, "",
     {0: (POOL4, "10.1.2.77")}),                                       # the same address from both sources
    ({"args": {"cni": {"labels": []}}}, "IP=10.1.2.88", {0: (POOL4, "10.1.2.88")}),  # no args.cni.ips key
    ({"args": {"cni": {"ips": ["2001:db8:1::5"]}}, "runtimeConfig": {"ips": ["10.1.2.5"]}}, "",
     {0: (POOL4, "10.1.2.5"), 1: (POOL6, "2001:db8:1::5")}),           # union across sources and sets
    ({}, "IP=10.1.2.5,2001:db8:1::5", {0: (POOL4, "10.1.2.5"), 1: (POOL6, "2001:db8:1::5")}),
])
def test_requested_addresses(conf_extra: dict[str, Any], cni_args: str,
                             expected: dict[int, tuple[str, str]]) -> None:
    assert requested(conf_extra, cni_args, DUAL) == expected


@pytest.mark.parametrize("conf_extra, cni_args, code", [
    ({"args": {"cni": {"ips": ["10.1.2.300"]}}}, "", 7),                    # T46
    ({"runtimeConfig": {"ips": ["bogus"]}}, "", 7),
    ({}, "IP=nope", 7),
    ({"args": {"cni": {"ips": "10.1.2.5"}}}, "", 7),                          # not a list
    ({"args": {"cni": {"ips": [5]}}}, "", 7),                                 # not a string
    ({"args": {"cni": {"ips": ["10.1.3.5"]}}}, "", 101),                      # T43: in no range
    ({}, "IP=10.1.3.5", 101),
    ({"runtimeConfig": {"ips": ["2001:db8:2::1"]}}, "", 101),
    ({"args": {"cni": {"ips": ["10.1.2.5", "10.1.2.6"]}}}, "", 101),          # two addresses for one set
    ({"args": {"cni": {"ips": ["10.1.2.5"]}}, "runtimeConfig": {"ips": ["10.1.2.6"]}}, "", 101),
])
def test_requested_addresses_errors(conf_extra: dict[str, Any], cni_args: str, code: int) -> None:
    err = requested_error(conf_extra, cni_args)
    assert err.cni_code == code


def test_requested_address_error_names_the_source_and_value() -> None:
    err = requested_error({"args": {"cni": {"ips": ["10.1.2.300"]}}})
    assert "args.cni.ips" in err.msg and "10.1.2.300" in err.msg
    err = requested_error({}, "IP=10.1.3.5")
    assert "10.1.3.5" in err.msg
