"""The CNI invocation contract for an IPAM plugin: environment, stdin, versions, results (pure; no I/O).

Rules and their order follow docs/cni-contract.md §1.3-1.4 (mirroring the reference ``pkg/skel`` so error codes
match the reference plugins), result shapes follow §3, and the project decisions marked there are applied:
DEL never blocks on an unusable ``cniVersion`` (§2.2), VERSION never fails (§2.4).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ipamd_cni import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS  # the protocol's one Python home (docs/cni-socket.md)

from .addr import to_ip
from .errors import DecodeFailure, IncompatibleVersion, InvalidConfig, InvalidEnvironment
from .model import Allocation
from .netconf import NetConf, Pool

VERBS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
ABOUT = "ipamd-cni: cluster-wide IPAM backed by etcd; CNI protocol versions %s" % ", ".join(SUPPORTED_VERSIONS)

#: libcni pkg/utils: container IDs and network names.
_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
}


def version_tuple(text: str) -> tuple[int, int, int] | None:
    """``"1.0.0"`` -> ``(1, 0, 0)``; ``None`` when not a dotted triple of integers."""
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def validate_container_id(value: str) -> None:
    """libcni ``ValidateContainerID``: non-empty, ``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$``, any length. Raises code 4."""
    if not _ID_RE.fullmatch(value):
        raise InvalidEnvironment("invalid characters in containerID", "CNI_CONTAINERID %r" % value)


def validate_network_name(value: object) -> None:
    """The network configuration's ``name``: required, same rule as a container ID (§1.3). Raises code 7."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidConfig("invalid network name %r" % (value,), "name must match %s" % _ID_RE.pattern)


def validate_if_name(value: str) -> None:
    """libcni ``ValidateInterfaceName``: 1..15 bytes (IFNAMSIZ), not ``.``/``..``, no ``/``, ``:`` or whitespace."""
    if not value:
        raise InvalidEnvironment("interface name is empty", "CNI_IFNAME must be 1 to 15 bytes")
    if len(value.encode()) > 15:
        raise InvalidEnvironment("interface name is too long", "CNI_IFNAME %r is longer than 15 bytes" % value)
    if value in (".", ".."):
        raise InvalidEnvironment("interface name is . or ..", "CNI_IFNAME %r" % value)
    if any(ch in "/:" or ch.isspace() for ch in value):
        raise InvalidEnvironment("interface name contains / or : or whitespace", "CNI_IFNAME %r" % value)


def parse_cni_args(raw: str, strict: bool) -> dict[str, str]:
    """Parse ``CNI_ARGS`` (``K=V;K2=V2``; split on the first ``=``; keys case-sensitive; unknown keys ignored).

    A pair without ``=`` raises :class:`InvalidEnvironment` (code 4) when ``strict`` (ADD), else is skipped
    (DEL/CHECK; docs/cni-contract.md §5.4).
    """
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            if strict:
                raise InvalidEnvironment("invalid CNI_ARGS pair %r" % pair, "CNI_ARGS %r: expected KEY=VALUE" % raw)
            continue
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class Attachment:
    """The CNI attachment, the only key allocations are stored and released by: (network, containerID, ifName)."""

    network: str
    container_id: str
    if_name: str

    @property
    def handle(self) -> str:
        """Handle id ``<network>/<containerID>/<ifName>``; ``/`` never occurs in a validated part (B38)."""
        return "%s/%s/%s" % (self.network, self.container_id, self.if_name)


@dataclass(slots=True)
class CniRequest:
    """One decoded plugin call. ``conf`` is the stdin object; ``cni_version`` is what ADD answers with."""

    command: str
    env: Mapping[str, str]
    conf: dict[str, Any] = field(default_factory=dict)
    cni_version: str = "1.1.0"
    container_id: str = ""
    if_name: str = ""
    netns: str = ""
    args: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.conf.get("name", ""))

    @property
    def attachment(self) -> Attachment:
        return Attachment(self.name, self.container_id, self.if_name)


class AboutRequest(Exception):
    """Raised by :func:`decode_request` when ``CNI_COMMAND`` is absent: print :data:`ABOUT` to stderr, exit 0."""


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "") or ""


def _no_constants(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)


_STRICT = json.JSONDecoder(parse_constant=_no_constants)


def loads_strict(data: bytes) -> Any:
    """``json.loads`` that refuses ``NaN``/``Infinity`` (not JSON; Go's decoder rejects them in our output).
    Raises ``ValueError`` (``UnicodeDecodeError`` for bytes that are not UTF-8)."""
    if isinstance(data, (bytes, bytearray)):  # as json.loads does: detect UTF-8/16/32, strip a UTF-8 BOM
        return _STRICT.decode(data.decode(json.detect_encoding(data), "surrogatepass"))
    return _STRICT.decode(data)


def decode_version_request(stdin: bytes | None) -> str:
    """VERSION's answer version: the stdin's string ``cniVersion`` if any, else ``"1.1.0"`` (§2.4; never fails)."""
    try:
        obj = loads_strict(stdin or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "1.1.0"
    if isinstance(obj, dict) and isinstance(obj.get("cniVersion"), str) and obj["cniVersion"]:
        return str(obj["cniVersion"])
    return "1.1.0"


def decode_request(env: Mapping[str, str], stdin: bytes | None, stdin_error: str | None) -> CniRequest:
    """Decode one call in skel's order (docs/cni-contract.md §1.4) into a :class:`CniRequest`.

    Raises :class:`AboutRequest` (no command), :class:`InvalidEnvironment` (4: missing/invalid variables, unknown
    command, malformed ``CNI_ARGS`` on ADD), ``IOFailure`` (5: stdin unreadable), :class:`DecodeFailure`
    (6: not a JSON object, non-string ``cniVersion``, unparseable version on CHECK/GC/STATUS),
    :class:`InvalidConfig` (7: missing/invalid ``name``), :class:`IncompatibleVersion` (1). VERSION is not
    decoded here (see :func:`decode_version_request`). DEL with an unusable ``cniVersion`` is returned with a
    warning instead of an error (§2.2 project decision).
    """
    from .errors import IOFailure

    command = _env(env, "CNI_COMMAND")
    if not command:
        raise AboutRequest()
    req = CniRequest(command=command, env=env)
    missing = [v for v in _REQUIRED.get(command, ()) if not _env(env, v)]
    if missing:
        raise InvalidEnvironment("required env variables [%s] missing" % ",".join(missing))
    if command in _REQUIRED:
        req.container_id = _env(env, "CNI_CONTAINERID")
        req.if_name = _env(env, "CNI_IFNAME")
        req.netns = _env(env, "CNI_NETNS")
        validate_container_id(req.container_id)
        validate_if_name(req.if_name)
    req.args = parse_cni_args(_env(env, "CNI_ARGS"), strict=(command == "ADD"))
    if stdin_error is not None:
        raise IOFailure("error reading from stdin: %s" % stdin_error)
    try:
        conf = loads_strict(stdin or b"")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise DecodeFailure("error parsing network configuration: %s" % exc) from None
    if not isinstance(conf, dict):
        raise DecodeFailure("network configuration is not a JSON object")
    req.conf = conf
    validate_network_name(conf.get("name"))
    raw_version = conf.get("cniVersion", "")
    if command == "DEL":
        if isinstance(raw_version, str) and raw_version in SUPPORTED_VERSIONS:
            req.cni_version = raw_version
        else:
            req.warnings.append("cniVersion %r is not usable; releasing by key anyway" % (raw_version,))
        return req
    if not isinstance(raw_version, str):
        raise DecodeFailure("cniVersion %r is not a string" % (raw_version,))
    version = raw_version or "0.1.0"
    if command not in VERBS or command == "VERSION":
        raise InvalidEnvironment("unknown CNI_COMMAND: %s" % command)
    minimum = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}.get(command)
    if minimum is not None:
        parsed = version_tuple(version)
        if parsed is None:
            raise DecodeFailure("cniVersion %r is not a version" % version)
        if parsed < minimum:
            raise IncompatibleVersion("config version does not allow %s" % command,
                                      "config is %r, %s needs >= %s" % (version, command, ".".join(map(str, minimum))))
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion("incompatible CNI versions",
                                  "config is %r, plugin supports %s" % (version, json.dumps(list(SUPPORTED_VERSIONS))))
    req.cni_version = version
    return req


def requested_addresses(req: CniRequest, netconf: NetConf) -> dict[int, tuple[Pool, int]]:
    """Requested addresses by range-set index: ``{set index: (pool, address int)}``.

    Sources (docs/cni-contract.md §5.3 project decision): ``args.cni.ips`` ∪ ``runtimeConfig.ips``, plus ``CNI_ARGS``
    ``IP`` only when ``args.cni.ips`` is absent. A prefix, if given, is ignored (the pool's prefix is used).
    Raises :class:`InvalidConfig` (7) for an unparseable address or a list that is not a list of strings, and
    ``AddressUnavailable`` (101) for an address in no range or two addresses for one range set.
    """
    from .errors import AddressUnavailable

    raw: list[Any] = []
    args_ips = None
    args = req.conf.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        args_ips = args["cni"].get("ips")
    rc = req.conf.get("runtimeConfig")
    rc_ips = rc.get("ips") if isinstance(rc, dict) else None
    for where, value in (("args.cni.ips", args_ips), ("runtimeConfig.ips", rc_ips)):
        if value is None:
            continue
        if not isinstance(value, list):
            raise InvalidConfig("%s %r is not a list of addresses" % (where, value))
        raw.extend((where, v) for v in value)
    if args_ips is None and req.args.get("IP"):
        raw.extend(("CNI_ARGS IP", v) for v in req.args["IP"].split(","))
    out: dict[int, tuple[Pool, int]] = {}
    for where, text in raw:
        if not isinstance(text, str):
            raise InvalidConfig("%s entry %r is not a string" % (where, text))
        try:
            ip = ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
        except ValueError:
            raise InvalidConfig("%s entry %r is not an IP address" % (where, text)) from None
        found = netconf.pool_for(ip)
        if found is None:
            raise AddressUnavailable("requested address %s is in no range of network %s" % (ip, netconf.name))
        idx, pool = found
        if idx in out and out[idx][1] != int(ip):
            raise AddressUnavailable("requested addresses %s and %s are both in range set %d"
                                     % (to_ip(pool.range.family, out[idx][1]), ip, idx))
        out[idx] = (pool, int(ip))
    return out


def render_result(cni_version: str, addresses: list[Allocation], netconf: NetConf | None) -> dict[str, Any]:
    """The abbreviated IPAM result (docs/cni-contract.md §3.1) for ``cni_version``.

    ``addresses`` are the attachment's allocations in range-set order. 0.3.x/0.4.0 entries carry ``version``; 1.x do
    not; route extras (``mtu``, ``priority``, ...) only for 1.1.0; ``dns`` omitted when empty; never
    ``interfaces`` or ``ips[].interface``.
    """
    legacy = not cni_version.startswith("1.")
    ips = []
    for alloc in addresses:
        entry: dict[str, Any] = {}
        if legacy:
            entry["version"] = str(alloc.family)
        entry["address"] = alloc.cidr
        if alloc.gateway is not None:
            entry["gateway"] = str(to_ip(alloc.family, alloc.gateway))
        ips.append(entry)
    result: dict[str, Any] = {"cniVersion": cni_version, "ips": ips}
    if netconf is not None and netconf.routes:
        routes = []
        for r in netconf.routes:
            route: dict[str, Any] = {"dst": r.dst}
            if r.gw:
                route["gw"] = r.gw
            if cni_version == "1.1.0":
                route.update(dict(r.extra))
            routes.append(route)
        result["routes"] = routes
    if netconf is not None and netconf.dns:
        result["dns"] = dict(netconf.dns)
    return result
