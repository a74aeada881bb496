"""The gRPC adapter: the ``ipamd.v1.Ipam`` servicer and ``grpc.health.v1`` on one unix-socket server.

Errors: :data:`ipamd.domain.errors.GRPC_STATUS_BY_CODE` picks the status; the CNI code is sent as trailing metadata
``ipamd-cni-code`` so ``ipamd_client`` rebuilds the same exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .domain.cni import (
    Attachment,
    CniRequest,
    render_result,
    requested_addresses,
    validate_container_id,
    validate_if_name,
    validate_network_name,
)
from .domain.errors import GRPC_STATUS_BY_CODE, InvalidConfig, IpamError
from .domain.model import HandleRecord
from .domain.netconf import parse_netconf
from .service import IpamService
from .v1 import ipam_pb2, ipam_pb2_grpc

log = logging.getLogger(__name__)

CODE_METADATA = "ipamd-cni-code"
SERVICE_NAME = "ipamd.v1.Ipam"


def _allocation_msg(rec: HandleRecord) -> ipam_pb2.Allocation:
    return ipam_pb2.Allocation(
        attachment=ipam_pb2.Attachment(network=rec.network, container_id=rec.container_id, if_name=rec.if_name),
        addresses=[ipam_pb2.Address(address=a.cidr, gateway=a.to_json().get("gateway", ""), pool=a.pool_id)
                   for a in rec.allocations],
        node=rec.node, netns=rec.netns, pod=rec.pod)


def _attachment(msg: ipam_pb2.Attachment) -> Attachment:
    validate_network_name(msg.network)
    validate_container_id(msg.container_id)
    validate_if_name(msg.if_name)
    return Attachment(msg.network, msg.container_id, msg.if_name)


def _guard(verb: str) -> Callable[..., Any]:
    """Count the call and translate every error at this boundary: an :class:`IpamError` becomes its gRPC status,
    anything unexpected INTERNAL with code 999 (logged with its traceback); the CNI code travels in the trailing
    metadata either way (docs/errors.md)."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: IpamServicer, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                out = fn(self, request, context)
            except IpamError as exc:
                err = exc
            except Exception as exc:
                log.exception("gRPC %s: unexpected error", verb)
                err = IpamError("internal error: %s" % exc.__class__.__name__, str(exc))
            else:
                self._count(verb, "ok")
                return out
            self._count(verb, str(err.cni_code))
            context.set_trailing_metadata(((CODE_METADATA, str(err.cni_code)),))
            context.abort(grpc.StatusCode[GRPC_STATUS_BY_CODE.get(err.cni_code, "INTERNAL")],
                          err.msg + (": " + err.details if err.details else ""))
        call.__name__ = fn.__name__
        call.__doc__ = fn.__doc__
        return call
    return wrap


class IpamServicer(ipam_pb2_grpc.IpamServicer):
    """``ipamd.v1.Ipam`` over :class:`IpamService` (same service layer as the CNI path)."""

    def __init__(self, service: IpamService) -> None:
        self.service = service

    def _count(self, verb: str, outcome: str) -> None:
        m = self.service.metrics
        m.child(m.requests, "grpc." + verb, outcome).inc()

    @_guard("Allocate")
    def Allocate(self, request: Any, context: grpc.ServicerContext) -> Any:
        att = _attachment(request.attachment)
        try:
            conf = json.loads(request.network_config_json)
        except ValueError:
            raise InvalidConfig("network_config_json is not JSON") from None
        if not isinstance(conf, dict) or conf.get("name") != att.network:
            raise InvalidConfig("network_config_json must be an object whose name is %r" % att.network)
        netconf = parse_netconf(conf, att.network)
        req = CniRequest(command="ADD", env={}, conf=dict(conf), container_id=att.container_id,
                         if_name=att.if_name)
        if request.requested_addresses:
            req.conf["runtimeConfig"] = {"ips": list(request.requested_addresses)}
            req.conf.pop("args", None)
        requested = requested_addresses(req, netconf)
        allocations = self.service.add(att, netconf, requested=requested, netns=request.netns,
                                       pod=dict(request.pod))
        raw_version = conf.get("cniVersion")
        version = raw_version if isinstance(raw_version, str) and raw_version else "1.1.0"
        rec = HandleRecord(att.network, att.container_id, att.if_name, self.service.node, tuple(allocations),
                           request.netns, dict(request.pod))
        return ipam_pb2.AllocateResponse(allocation=_allocation_msg(rec),
                                         cni_result_json=json.dumps(render_result(version, allocations, netconf)))

    @_guard("Release")
    def Release(self, request: Any, context: grpc.ServicerContext) -> Any:
        return ipam_pb2.ReleaseResponse(released=self.service.delete(_attachment(request.attachment)))

    @_guard("GetAllocation")
    def GetAllocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        rec = self.service.get(_attachment(request.attachment))
        if rec is None:
            return ipam_pb2.GetAllocationResponse(found=False)
        return ipam_pb2.GetAllocationResponse(found=True, allocation=_allocation_msg(rec))

    @_guard("ListAllocations")
    def ListAllocations(self, request: Any, context: grpc.ServicerContext) -> Any:
        return ipam_pb2.ListAllocationsResponse(
            allocations=[_allocation_msg(r) for r in self.service.list_attachments(request.network)])


    @_guard("Reconcile")
    def Reconcile(self, request: Any, context: grpc.ServicerContext) -> Any:
        result = self.service.reconcile(dry_run=request.dry_run)
        return ipam_pb2.ReconcileResponse(
            revision=result.revision, examined=result.examined,
            released=[ipam_pb2.ReconcileItem(key=k, reason=r) for k, r in sorted(result.released.items())],
            waiting=[ipam_pb2.ReconcileItem(key=k, reason=result.candidates.get(k, ""), wait=w)
                     for k, w in sorted(result.waiting.items())])

class GrpcServer:
    """gRPC server on ``unix:<path>`` with the Ipam service and the health service (NOT_SERVING until ready)."""

    def __init__(self, service: IpamService, path: str, workers: int = 16) -> None:
        self.path = path
        self.server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
        ipam_pb2_grpc.add_IpamServicer_to_server(IpamServicer(service), self.server)  # type: ignore[no-untyped-call]
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.set_serving(False)
        if self.server.add_insecure_port("unix:" + path) == 0:
            raise OSError("cannot listen on gRPC socket %s" % path)

    def set_serving(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 5.0) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait()
