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

__all__ = ["Address", "Allocation", "IpamClient", "IpamError", "ReconcileItem"]

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
class ReconcileItem:
    """One attachment (or broken record) the reconciler judged gone: its key, why, seconds left of its grace."""

    key: str
    reason: str
    wait: float


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

    def reconcile(self, dry_run: bool = False) -> tuple[list[ReconcileItem], list[ReconcileItem]]:
        """Run the daemon's reconciler now (``dry_run``: only say what it would do): ``(released, waiting)``, the
        attachments released (or that would be) and those seen gone but still within their grace period."""
        resp = self._call(self._stub.Reconcile, ipam_pb2.ReconcileRequest(dry_run=dry_run))
        return ([ReconcileItem(i.key, i.reason, i.wait) for i in resp.released],
                [ReconcileItem(i.key, i.reason, i.wait) for i in resp.waiting])

    def list(self, network: str = "") -> list[Allocation]:
        """Every allocation, or those of one network, in key order."""
        resp = self._call(self._stub.ListAllocations, ipam_pb2.ListAllocationsRequest(network=network))
        return [_from_msg(m) for m in resp.allocations]
