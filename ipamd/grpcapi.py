"""The gRPC adapter: the ``ipamd.v1.Ipam`` servicer and ``grpc.health.v1`` on one unix-socket server.

Errors: :data:`ipamd.domain.errors.GRPC_STATUS_BY_CODE` picks the status; the CNI code is sent as trailing metadata
``ipamd-cni-code`` so ``ipamd_client`` rebuilds the same exception.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .deepcheck import Report
from .domain.cni import (
    Attachment,
    CniRequest,
    render_result,
    requested_addresses,
    validate_container_id,
    validate_if_name,
    validate_network_name,
)
from .domain.errors import GRPC_STATUS_BY_CODE, InvalidConfig, IpamError, TryAgainLater
from .domain.inventory import BlockInfo, NodeUsage, PoolInfo
from .domain.model import HandleRecord
from .domain.netcheck import CHECK_ERRORS
from .domain.netconf import parse_netconf
from .domain.poolspec import validate_pool_name
from .domain.status import DaemonStatus
from .inventory import AttachmentFilter
from .namedpools import PoolView
from .service import IpamService
from .sockets import Claim
from .v1 import ipam_pb2, ipam_pb2_grpc, pools_pb2, pools_pb2_grpc

log = logging.getLogger(__name__)

CODE_METADATA = "ipamd-cni-code"
SERVICE_NAME = "ipamd.v1.Ipam"
POOL_ADMIN_SERVICE_NAME = "ipamd.v1.PoolAdmin"


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
        def call(self: IpamServicer | PoolAdminServicer, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                out = fn(self, request, context)
            except IpamError as exc:
                err = exc
            except Exception as exc:
                log.exception("gRPC %s: unexpected error", verb)
                err = IpamError("internal error: %s" % exc.__class__.__name__, str(exc))
            else:
                self._count(verb, 0)
                return out
            self._count(verb, err.cni_code)
            context.set_trailing_metadata(((CODE_METADATA, str(err.cni_code)),))
            context.abort(grpc.StatusCode[GRPC_STATUS_BY_CODE.get(err.cni_code, "INTERNAL")],
                          err.msg + (": " + err.details if err.details else ""))
        call.__name__ = fn.__name__
        call.__doc__ = fn.__doc__
        return call
    return wrap


class IpamServicer(ipam_pb2_grpc.IpamServicer):
    """``ipamd.v1.Ipam`` over :class:`IpamService` (same service layer as the CNI path). ``status`` answers the
    ``Status`` call (the daemon's health and view; absent: the call answers UNAVAILABLE/11)."""

    def __init__(self, service: IpamService, status: Callable[[], DaemonStatus] | None = None) -> None:
        self.service = service
        self.status = status

    def _count(self, verb: str, code: int) -> None:
        m = self.service.metrics
        m.child(m.requests, "grpc." + verb, "ok" if code == 0 else "error", str(code)).inc()

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
        allocations = self.service.add(att, netconf, netns=request.netns, pod=dict(request.pod),
                                       requested_of=lambda resolved: requested_addresses(req, resolved))
        raw_version = conf.get("cniVersion")
        version = raw_version if isinstance(raw_version, str) and raw_version else "1.1.0"
        rec = HandleRecord(att.network, att.container_id, att.if_name, self.service.node, tuple(allocations),
                           request.netns, dict(request.pod))
        return ipam_pb2.AllocateResponse(allocation=_allocation_msg(rec),
                                         cni_result_json=json.dumps(render_result(
                                             version, allocations, self.service.with_pool_routes(netconf,
                                                                                                 allocations))))

    @_guard("Release")
    def Release(self, request: Any, context: grpc.ServicerContext) -> Any:
        return ipam_pb2.ReleaseResponse(released=self.service.delete(_attachment(request.attachment)))

    @_guard("GetAllocation")
    def GetAllocation(self, request: Any, context: grpc.ServicerContext) -> Any:
        rec = self.service.get(_attachment(request.attachment))
        if rec is None:
            return ipam_pb2.GetAllocationResponse(found=False)
        return ipam_pb2.GetAllocationResponse(found=True, allocation=_allocation_msg(rec))

    @_guard("Status")
    def Status(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self.status is None:
            raise TryAgainLater("status is not available on this server")
        st = self.status()
        return ipam_pb2.StatusResponse(
            node=st.node, version=st.version, ready=st.ready, not_ready_reason=st.not_ready_reason,
            not_ready_detail=st.not_ready_detail, sync_revision=st.sync_revision, watch_revision=st.watch_revision,
            etcd_reachable=st.etcd_reachable, etcd_error=st.etcd_error, etcd_endpoint=st.etcd_endpoint,
            etcd_version=st.etcd_version, etcd_member_id=st.etcd_member_id, etcd_leader=st.etcd_leader,
            etcd_revision=st.etcd_revision, etcd_alarms=list(st.etcd_alarms),
            pools=[ipam_pb2.PoolStatus(pool=p.pool, size=p.size, allocated=p.allocated, blocks=p.blocks,
                                       own_blocks=list(p.own_blocks)) for p in st.pools])

    @_guard("ListAllocations")
    def ListAllocations(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Attachments matching every filter given (:class:`ipamd.inventory.AttachmentFilter`), at one revision."""
        if request.network:
            validate_network_name(request.network)
        flt = AttachmentFilter(request.network, request.node, request.pool, request.namespace, request.pod)
        revision, records = self.service.inventory.attachments(flt)
        return ipam_pb2.ListAllocationsResponse(allocations=[_allocation_msg(r) for r in records],
                                                revision=revision)

    @_guard("ListPools")
    def ListPools(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.network.startswith("@"):  # a named pool's network (docs/configuration.md "Named pools")
            validate_pool_name(request.network[1:])
        elif request.network:
            validate_network_name(request.network)
        revision, pools = self.service.inventory.pools(request.network, request.pool)
        return ipam_pb2.ListPoolsResponse(revision=revision, pools=[_pool_msg(p) for p in pools])

    @_guard("ListBlocks")
    def ListBlocks(self, request: Any, context: grpc.ServicerContext) -> Any:
        revision, blocks, nodes = self.service.inventory.blocks(request.pool, request.node)
        return ipam_pb2.ListBlocksResponse(revision=revision, blocks=[_block_msg(b) for b in blocks],
                                           nodes=[_node_msg(n) for n in nodes])

    @_guard("Usage")
    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        revision, pools, nodes = self.service.inventory.usage()
        return ipam_pb2.UsageResponse(revision=revision, pools=[_pool_msg(p) for p in pools],
                                      nodes=[_node_msg(n) for n in nodes])

    @_guard("Reconcile")
    def Reconcile(self, request: Any, context: grpc.ServicerContext) -> Any:
        result = self.service.reconcile(dry_run=request.dry_run)
        return ipam_pb2.ReconcileResponse(
            revision=result.revision, examined=result.examined,
            released=[ipam_pb2.ReconcileItem(key=k, reason=r) for k, r in sorted(result.released.items())],
            waiting=[ipam_pb2.ReconcileItem(key=k, reason=result.candidates.get(k, ""), wait=w)
                     for k, w in sorted(result.waiting.items())])

    @_guard("Verify")
    def Verify(self, request: Any, context: grpc.ServicerContext) -> Any:
        """This node's attachments (of ``network``, of ``container_id``), each looked into by the daemon
        (:meth:`ipamd.deepcheck.NamespaceInspector.verify_all`). Read-only."""
        if request.network:
            validate_network_name(request.network)
        if request.container_id:
            validate_container_id(request.container_id)
        records = self.service.node_attachments(request.network, request.container_id)
        reports = self.service.inspector.verify_all(records, probe_count=request.probe_count or 1,
                                                    probe_timeout=request.probe_timeout or 1.0)
        return ipam_pb2.VerifyResponse(node=self.service.node, reports=[_report_msg(r) for r in reports])


def named_pool_obj(msg: Any) -> dict[str, Any]:
    """A ``NamedPool`` message as the spec object :func:`ipamd.domain.poolspec.parse_pool_spec` validates (fields
    left at their proto default are left out, so the spec's defaults apply)."""
    obj: dict[str, Any] = {"name": msg.name, "cidr": msg.cidr}
    if msg.block_size:
        obj["blockSize"] = msg.block_size
    if msg.gateway_mode:
        obj["gatewayMode"] = msg.gateway_mode
    if msg.gateway:
        obj["gateway"] = msg.gateway
    if msg.routes:
        obj["routes"] = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in msg.routes]
    if msg.exclude:
        obj["exclude"] = list(msg.exclude)
    if msg.release_cooldown_seconds:
        obj["releaseCooldownSeconds"] = msg.release_cooldown_seconds
    if msg.strict_affinity:
        obj["strictAffinity"] = True
    if msg.max_blocks_per_node:
        obj["maxBlocksPerNode"] = msg.max_blocks_per_node
    if msg.node_selector:
        obj["nodeSelector"] = dict(msg.node_selector)
    if msg.namespace_selector:
        obj["namespaceSelector"] = dict(msg.namespace_selector)
    if msg.state:
        obj["state"] = msg.state
    return obj


def _named_pool_msg(view: PoolView) -> pools_pb2.NamedPool:
    obj = view.spec.to_json()
    return pools_pb2.NamedPool(
        name=obj["name"], cidr=obj["cidr"], block_size=obj["blockSize"], gateway_mode=obj["gatewayMode"],
        gateway=obj.get("gateway", ""), routes=[pools_pb2.NamedPoolRoute(dst=r["dst"], gw=r.get("gw", ""))
                                                for r in obj["routes"]],
        exclude=obj["exclude"], release_cooldown_seconds=obj["releaseCooldownSeconds"],
        strict_affinity=obj["strictAffinity"], max_blocks_per_node=obj["maxBlocksPerNode"],
        node_selector=obj["nodeSelector"], namespace_selector=obj["namespaceSelector"], state=obj["state"],
        pool_id=view.spec.pool_id, allocated=view.allocated, size=str(view.size), blocks=view.blocks,
        spec_revision=view.spec_revision)


class PoolAdminServicer(pools_pb2_grpc.PoolAdminServicer):
    """``ipamd.v1.PoolAdmin`` (proto/ipamd/v1/pools.proto) over :class:`ipamd.namedpools.PoolAdmin`: named pools'
    specs in etcd (docs/configuration.md "Named pools"). Answers while the daemon is not ready too (the calls go to
    etcd directly). Errors as for :class:`IpamServicer`."""

    def __init__(self, service: IpamService) -> None:
        self.service = service

    def _count(self, verb: str, code: int) -> None:
        m = self.service.metrics
        m.child(m.requests, "grpc." + verb, "ok" if code == 0 else "error", str(code)).inc()

    @_guard("CreateNamedPool")
    def CreateNamedPool(self, request: Any, context: grpc.ServicerContext) -> Any:
        view = self.service.pool_admin.create(named_pool_obj(request.pool))
        return pools_pb2.CreateNamedPoolResponse(pool=_named_pool_msg(view))

    @_guard("ListNamedPools")
    def ListNamedPools(self, request: Any, context: grpc.ServicerContext) -> Any:
        revision, views = self.service.pool_admin.list()
        return pools_pb2.ListNamedPoolsResponse(revision=revision, pools=[_named_pool_msg(v) for v in views])

    @_guard("GetNamedPool")
    def GetNamedPool(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pools_pb2.GetNamedPoolResponse(pool=_named_pool_msg(self.service.pool_admin.show(request.name)))

    @_guard("DrainNamedPool")
    def DrainNamedPool(self, request: Any, context: grpc.ServicerContext) -> Any:
        view = self.service.pool_admin.set_state(request.name, "active" if request.undo else "draining")
        return pools_pb2.DrainNamedPoolResponse(pool=_named_pool_msg(view))

    @_guard("DeleteNamedPool")
    def DeleteNamedPool(self, request: Any, context: grpc.ServicerContext) -> Any:
        removed = self.service.pool_admin.delete(request.name, time.monotonic() + self.service.request_timeout)
        return pools_pb2.DeleteNamedPoolResponse(name=request.name, blocks_removed=removed)


def _pool_msg(p: PoolInfo) -> ipam_pb2.PoolInfo:
    return ipam_pb2.PoolInfo(pool=p.pool, network=p.network, subnet=p.subnet, range_start=p.range_start,
                             range_end=p.range_end, gateway=p.gateway, block_size=p.block_prefix, size=str(p.size),
                             allocated=p.allocated, free=str(p.free), blocks=p.blocks, utilisation=p.utilisation,
                             gateway_mode=p.gateway_mode)


def _block_msg(b: BlockInfo) -> ipam_pb2.BlockInfo:
    return ipam_pb2.BlockInfo(block=b.block, pool=b.pool, node=b.node, size=str(b.size), used=b.used,
                              free=str(b.free), borrowed=b.borrowed, node_borrowed_elsewhere=b.node_borrowed)


def _node_msg(n: NodeUsage) -> ipam_pb2.NodeUsage:
    return ipam_pb2.NodeUsage(node=n.node, alive=n.alive, blocks=n.blocks, capacity=str(n.capacity), used=n.used,
                              free=str(n.free), borrowed_in=n.borrowed_in, allocated=n.allocated,
                              borrowed_elsewhere=n.borrowed_elsewhere, utilisation=n.utilisation)


def _report_msg(report: Report) -> ipam_pb2.AttachmentReport:
    """A verify report as its proto message (docs/namespace-checks.md "Reading ipamctl verify")."""
    obs = report.observation
    return ipam_pb2.AttachmentReport(
        allocation=_allocation_msg(report.record), ok=report.ok,
        findings=[ipam_pb2.VerifyFinding(reason=f.reason, message=f.message,
                                         code=CHECK_ERRORS[f.reason].cni_code if f.reason in CHECK_ERRORS else 0)
                  for f in report.findings],
        netns_exists=obs.netns_exists, interface_state=obs.interface.state if obs.interface is not None else "",
        addresses=[str(a) for a in obs.addresses], routes=[str(r) for r in obs.routes],
        expected_routes=[str(r) for r in report.expected.routes],
        probes=[ipam_pb2.GatewayProbe(gateway=p.gateway_text, sent=p.sent, received=p.received,
                                      rtt_seconds=p.rtt or 0.0, neighbour=p.neighbour, error=p.error)
                for p in obs.probes])


@dataclass(frozen=True, slots=True)
class TcpListener:
    """The optional gRPC TCP listener: ``address`` ``host:port`` (port 0 picks one), the server's PEM ``cert`` and
    ``key`` files, and ``client_ca``: when set, clients must present a certificate signed by it (mutual TLS). There is
    no plain-text TCP listener (docs/operations.md "Local access")."""

    address: str
    cert: str
    key: str
    client_ca: str = ""

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials from the files; raises ``OSError`` when one cannot be read."""
        def read(path: str) -> bytes:
            with open(path, "rb") as fh:
                return fh.read()
        ca = read(self.client_ca) if self.client_ca else None
        return grpc.ssl_server_credentials([(read(self.key), read(self.cert))], root_certificates=ca,
                                           require_client_auth=ca is not None)


class GrpcServer:
    """gRPC server with the Ipam service and the health service (NOT_SERVING until ready) on the unix socket of
    ``claim`` (:mod:`ipamd.sockets`: mode, owner and replacement rules of field case B46) and, when ``tcp`` is
    given, on a TLS TCP listener. Raises :class:`ipamd.sockets.SocketError` for the unix socket, ``OSError`` when
    the TCP listener cannot be made."""

    def __init__(self, service: IpamService, claim: Claim, workers: int = 16, tcp: TcpListener | None = None,
                 status: Callable[[], DaemonStatus] | None = None) -> None:
        self.path = claim.path
        self._claim = claim
        self.server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
        ipam_pb2_grpc.add_IpamServicer_to_server(IpamServicer(service, status),  # type: ignore[no-untyped-call]
                                                 self.server)
        pools_pb2_grpc.add_PoolAdminServicer_to_server(PoolAdminServicer(service),  # type: ignore[no-untyped-call]
                                                       self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.set_serving(False)

        def bind(temp: str) -> None:
            if self.server.add_insecure_port("unix:" + temp) == 0:
                raise OSError("cannot listen on gRPC socket %s" % temp)
        claim.bind(bind)
        self.tcp_port = 0
        if tcp is not None:
            self.tcp_port = self.server.add_secure_port(tcp.address, tcp.credentials())
            if self.tcp_port == 0:
                raise OSError("cannot listen on gRPC address %s" % tcp.address)

    def set_serving(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", status)
        self.health.set(SERVICE_NAME, status)

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let calls in flight finish within ``grace`` seconds, remove the unix socket."""
        self.set_serving(False)
        self.server.stop(grace).wait()
        self._claim.release()
