"""Python client library for the ipamd gRPC API (``ipamd.v1.Ipam`` on the daemon's unix socket).

Errors come back as the same exceptions the daemon raised (:mod:`ipamd.domain.errors`): the CNI code travels
in the trailing metadata ``ipamd-cni-code`` and :func:`ipamd.domain.errors.error_for_code` rebuilds the class.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from ipamd.domain.errors import IpamError, TryAgainLater, error_for_code
from ipamd.v1 import ipam_pb2, ipam_pb2_grpc

__all__ = ["Address", "Allocation", "AttachmentReport", "GatewayProbe", "IpamClient", "IpamError", "VerifyFinding"]

DEFAULT_SOCKET = "/run/ipamd/ipamd.sock"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Address:
    """An allocated address: ``address`` with prefix (``10.1.2.2/24``), ``gateway`` ("" if none), pool id."""

    address: str
    gateway: str
    pool: str


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one attachment (network, container_id, if_name) holds, one address per range set."""

    network: str
    container_id: str
    if_name: str
    addresses: tuple[Address, ...]
    node: str = ""
    netns: str = ""
    pod: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifyFinding:
    """What differs inside an attachment's namespace: ``reason`` (``route_missing``, ...), a message, and the CNI
    code CHECK fails with for it (110-113; 0 for reasons CHECK does not judge)."""

    reason: str
    message: str
    code: int


@dataclass(frozen=True, slots=True)
class GatewayProbe:
    """Echo requests ``sent`` to ``gateway`` and ``received`` replies, the best round trip in seconds (0 without a
    reply), the gateway's neighbour (ARP/NDP) state, and ``error`` when the probe could not run."""

    gateway: str
    sent: int
    received: int
    rtt_seconds: float
    neighbour: str
    error: str


@dataclass(frozen=True, slots=True)
class AttachmentReport:
    """What the daemon saw in one attachment's namespace (docs/namespace-checks.md): ``ok`` when nothing differs,
    the findings most fundamental first, the interface state (``up``, ``down``, ``no-carrier``, "" when missing),
    the addresses and routes there, the routes expected, and the gateway probes."""

    allocation: Allocation
    ok: bool
    findings: tuple[VerifyFinding, ...]
    netns_exists: bool
    interface_state: str
    addresses: tuple[str, ...]
    routes: tuple[str, ...]
    expected_routes: tuple[str, ...]
    probes: tuple[GatewayProbe, ...]


def _report_from_msg(msg: Any) -> AttachmentReport:
    return AttachmentReport(
        _from_msg(msg.allocation), msg.ok,
        tuple(VerifyFinding(f.reason, f.message, f.code) for f in msg.findings), msg.netns_exists,
        msg.interface_state, tuple(msg.addresses), tuple(msg.routes), tuple(msg.expected_routes),
        tuple(GatewayProbe(p.gateway, p.sent, p.received, p.rtt_seconds, p.neighbour, p.error) for p in msg.probes))


def _from_msg(msg: Any) -> Allocation:
    a = msg.attachment
    return Allocation(a.network, a.container_id, a.if_name,
                      tuple(Address(x.address, x.gateway, x.pool) for x in msg.addresses), msg.node, msg.netns,
                      dict(msg.pod))


def _attachment(network: str, container_id: str, if_name: str) -> Any:
    return ipam_pb2.Attachment(network=network, container_id=container_id, if_name=if_name)


class IpamClient:
    """A connection to one ipamd. ``socket`` is the gRPC unix socket path; ``timeout`` seconds per call.

    Every method raises the daemon's :class:`IpamError` subclass (e.g. ``PoolExhausted``, code 100), or
    :class:`TryAgainLater` (code 11) when the daemon cannot be reached.
    """

    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._channel = grpc.insecure_channel("unix:" + socket)
        self._stub = ipam_pb2_grpc.IpamStub(self._channel)  # type: ignore[no-untyped-call]
        self.socket = socket

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> IpamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[..., T], request: Any) -> T:
        try:
            return fn(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            call: Any = exc  # a grpc.Call: trailing_metadata() and details()
            code = None
            for key, value in call.trailing_metadata() or ():
                if key == "ipamd-cni-code":
                    code = int(value)
            if code is None:
                raise TryAgainLater("ipamd on %s: %s" % (self.socket, call.details())) from exc
            raise error_for_code(code, call.details() or "") from exc

    def allocate(self, network_config: dict[str, Any], container_id: str, if_name: str, *,
                 requested: list[str] | None = None, netns: str = "",
                 pod: dict[str, str] | None = None) -> tuple[Allocation, dict[str, Any]]:
        """Allocate for the attachment (network = ``network_config["name"]``); idempotent per attachment.

        Returns the allocation and the CNI result (a dict, in the config's cniVersion).
        """
        req = ipam_pb2.AllocateRequest(
            attachment=_attachment(network_config["name"], container_id, if_name),
            network_config_json=json.dumps(network_config), requested_addresses=requested or [], netns=netns,
            pod=pod or {})
        resp = self._call(self._stub.Allocate, req)
        return _from_msg(resp.allocation), json.loads(resp.cni_result_json)

    def release(self, network: str, container_id: str, if_name: str) -> int:
        """Release what the attachment holds; returns how many addresses were released (0 if none)."""
        resp = self._call(self._stub.Release,
                          ipam_pb2.ReleaseRequest(attachment=_attachment(network, container_id, if_name)))
        return int(resp.released)

    def get(self, network: str, container_id: str, if_name: str) -> Allocation | None:
        """The attachment's allocation as stored in etcd, or ``None``."""
        resp = self._call(self._stub.GetAllocation,
                          ipam_pb2.GetAllocationRequest(attachment=_attachment(network, container_id, if_name)))
        return _from_msg(resp.allocation) if resp.found else None

    def list(self, network: str = "") -> list[Allocation]:
        """Every allocation, or those of one network, in key order."""
        resp = self._call(self._stub.ListAllocations, ipam_pb2.ListAllocationsRequest(network=network))
        return [_from_msg(m) for m in resp.allocations]

    def verify(self, network: str = "", container_id: str = "", *, probe_count: int = 1,
               probe_timeout: float = 1.0) -> tuple[str, tuple[AttachmentReport, ...]]:
        """Ask the daemon to look inside the namespaces of its node's attachments (of ``network`` and
        ``container_id`` when given): ``(node, reports)``. Probes: ``probe_count`` echo requests per gateway
        (at most 10), ``probe_timeout`` seconds per reply (at most 5). Read-only. Give the client a ``timeout``
        that covers the probes of every attachment."""
        resp = self._call(self._stub.Verify, ipam_pb2.VerifyRequest(
            network=network, container_id=container_id, probe_count=probe_count, probe_timeout=probe_timeout))
        return resp.node, tuple(_report_from_msg(m) for m in resp.reports)
