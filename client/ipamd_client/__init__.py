"""Python client library for the ipamd gRPC API (``ipamd.v1.Ipam``, proto/ipamd/v1/ipam.proto).

Talk to the node's daemon on its unix socket, or to a daemon's TLS TCP listener::

    from ipamd_client import IpamClient, PoolExhausted, TryAgainLater

    with IpamClient("/run/ipamd/ipamd.sock") as client:
        conf = {"cniVersion": "1.1.0", "name": "net1",
                "ipam": {"type": "ipamd-cni", "ranges": [[{"subnet": "10.1.2.0/24"}]]}}
        try:
            allocation, cni_result = client.allocate(conf, "c1", "eth0")
            print(allocation.addresses[0].address)          # 10.1.2.2/24
        except PoolExhausted as exc:                        # CNI code 100
            print("full:", exc.msg, exc.details)
        except TryAgainLater:                               # code 11: not ready, etcd away; retry later
            raise
        print(client.get("net1", "c1", "eth0"))             # Allocation or None
        print([a.container_id for a in client.list("net1")])
        print([a.container_id for a in client.list(node="node1", namespace="default")])
        revision, pools = client.pools()                  # PoolInfo: size, allocated, free, blocks, utilisation
        revision, blocks, nodes = client.blocks(pool="net1/10.1.2.0/24")   # BlockInfo, NodeUsage
        print(client.release("net1", "c1", "eth0"))        # 1 (addresses released; 0 when nothing was held)
        client.create_pool({"name": "pool-v4", "cidr": "10.8.0.0/16", "nodeSelector": {"zone": "a"}})
        print([p["name"] for p in client.named_pools()[1]])  # named pools (docs/configuration.md "Named pools")
        client.drain_pool("pool-v4")                       # no new allocations; delete_pool once it is empty
        st = client.status()
        print(st.ready, st.not_ready_reason, st.etcd_version, [p.own_blocks for p in st.pools])

    # the TCP listener (--grpc-address with TLS; a client certificate when the daemon asks for one)
    IpamClient(address="node1:9466", ca_cert="ca.pem", cert="client.pem", key="client-key.pem")

Errors: every method raises the exception class the daemon raised, rebuilt from the CNI code the daemon sends in
the trailing metadata ``ipamd-cni-code`` (docs/errors.md): :class:`InvalidConfig` (7), :class:`TryAgainLater` (11),
:class:`PoolExhausted` (100), :class:`AddressUnavailable` (101), ... all subclasses of :class:`IpamError`, each
with ``cni_code``, ``msg`` and ``details``. A daemon that cannot be reached (no socket, TLS refused, deadline) is
:class:`TryAgainLater` naming the target.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from ipamd.domain.errors import (
    AddressUnavailable,
    CheckMismatch,
    CheckNoAllocation,
    DecodeFailure,
    IncompatibleVersion,
    InvalidConfig,
    InvalidEnvironment,
    IOFailure,
    IpamError,
    NotAvailable,
    PoolExhausted,
    PoolInUse,
    TryAgainLater,
    UnsupportedField,
    error_for_code,
)
from ipamd.domain.inventory import BlockInfo, NodeUsage, PoolInfo
from ipamd.domain.poolspec import parse_pool_spec
from ipamd.domain.status import DaemonStatus as Status
from ipamd.domain.status import PoolStatus
from ipamd.v1 import ipam_pb2, ipam_pb2_grpc, pools_pb2, pools_pb2_grpc

__all__ = [
    "Address", "AddressUnavailable", "Allocation", "AttachmentReport", "BlockInfo", "CheckMismatch",
    "CheckNoAllocation", "DecodeFailure", "GatewayProbe", "IOFailure", "IncompatibleVersion", "InvalidConfig",
    "InvalidEnvironment", "IpamClient", "IpamError", "NodeUsage", "NotAvailable", "PoolExhausted", "PoolInUse",
    "PoolInfo", "PoolStatus", "ReconcileItem", "Status",
    "TryAgainLater", "UnsupportedField", "VerifyFinding",
]

DEFAULT_SOCKET = "/run/ipamd/ipamd.sock"
#: Trailing metadata key that carries the CNI code of an error (ipamd/grpcapi.py sends it).
CODE_METADATA = "ipamd-cni-code"
T = TypeVar("T")
# IpamClient.list shadows the builtin inside the class body: its methods' annotations use these
_Allocations = list["Allocation"]
_Pools = list[PoolInfo]
_Blocks = list[BlockInfo]
_Nodes = list[NodeUsage]
_Specs = list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Address:
    """An allocated address: ``address`` with prefix (``10.1.2.2/24``), ``gateway`` ("" if none), pool id."""

    address: str
    gateway: str
    pool: str


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one attachment (network, container_id, if_name) holds, one address per range set, in range-set order;
    ``node`` is the node whose daemon allocated it, ``pod`` the Kubernetes metadata given at allocation."""

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


def _pool_from_msg(m: Any) -> PoolInfo:
    return PoolInfo(m.pool, m.network, m.subnet, m.range_start, m.range_end, m.gateway, m.block_size, int(m.size),
                    m.allocated, m.blocks, m.gateway_mode or "subnet")


def _block_from_msg(m: Any) -> BlockInfo:
    return BlockInfo(m.block, m.pool, m.node, int(m.size), m.used, m.borrowed, m.node_borrowed_elsewhere)


def _node_from_msg(m: Any) -> NodeUsage:
    return NodeUsage(m.node, m.alive, m.blocks, int(m.capacity), m.used, m.borrowed_in, m.allocated,
                     m.borrowed_elsewhere)


def named_pool_json(m: Any) -> dict[str, Any]:
    """A ``NamedPool`` message as the spec object of docs/configuration.md "Named pools", plus its usage
    (``poolId``, ``allocated``, ``size``, ``blocks``, ``specRevision``)."""
    out: dict[str, Any] = {
        "name": m.name, "cidr": m.cidr, "blockSize": m.block_size, "gatewayMode": m.gateway_mode,
        "routes": [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in m.routes], "exclude": list(m.exclude),
        "releaseCooldownSeconds": m.release_cooldown_seconds, "strictAffinity": m.strict_affinity,
        "maxBlocksPerNode": m.max_blocks_per_node, "nodeSelector": dict(m.node_selector),
        "namespaceSelector": dict(m.namespace_selector), "state": m.state, "poolId": m.pool_id,
        "allocated": m.allocated, "size": int(m.size or 0), "blocks": m.blocks, "specRevision": m.spec_revision}
    if m.gateway:
        out["gateway"] = m.gateway
    return out


def named_pool_msg(spec: dict[str, Any]) -> Any:
    """A spec object (keys of docs/configuration.md "Named pools") as a ``NamedPool`` message.

    The object is validated first as the daemon validates a stored spec
    (:func:`ipamd.domain.poolspec.parse_pool_spec`), because the message cannot say everything a JSON object can:
    an unknown key (``nodeSelecter``) would be dropped and the pool made without the intended selector, a
    ``"strictAffinity": "no"`` read as true, a ``false`` one left out, a route's keys other than ``dst`` and ``gw``
    lost. Raises :class:`InvalidConfig` (7) with the daemon's message for any of those; nothing is sent."""
    parse_pool_spec(spec)
    for i, route in enumerate(spec.get("routes") or []):
        extra = sorted(set(route) - {"dst", "gw"})
        if extra:
            raise InvalidConfig("pool %s routes[%d] has key(s) %s, which the PoolAdmin API does not carry"
                                % (spec.get("name"), i, ", ".join(extra)), "a named pool's routes are dst and gw")
    return pools_pb2.NamedPool(
        name=spec.get("name", ""), cidr=spec.get("cidr", ""), block_size=spec.get("blockSize") or 0,
        gateway_mode=spec.get("gatewayMode", ""), gateway=spec.get("gateway") or "",
        routes=[pools_pb2.NamedPoolRoute(dst=r.get("dst", ""), gw=r.get("gw") or "") for r in spec.get("routes", [])],
        exclude=spec.get("exclude", []), release_cooldown_seconds=spec.get("releaseCooldownSeconds") or 0,
        strict_affinity=bool(spec.get("strictAffinity", False)),
        max_blocks_per_node=spec.get("maxBlocksPerNode") or 0, node_selector=spec.get("nodeSelector") or {},
        namespace_selector=spec.get("namespaceSelector") or {}, state=spec.get("state", ""))


def _attachment(network: str, container_id: str, if_name: str) -> Any:
    return ipam_pb2.Attachment(network=network, container_id=container_id, if_name=if_name)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class IpamClient:
    """A connection to one ipamd: its unix ``socket`` (default :data:`DEFAULT_SOCKET`), or its TLS TCP listener at
    ``address`` (``host:port``) with the CA that signed the daemon's certificate (``ca_cert``) and, when the daemon
    requires one, a client ``cert`` and ``key`` (PEM files). ``timeout`` is the deadline of each call in seconds.
    Use it as a context manager, or call :meth:`close`. Thread-safe (one gRPC channel).

    Every method raises the daemon's :class:`IpamError` subclass; :class:`TryAgainLater` (code 11) also when the
    daemon cannot be reached. Raises ``OSError`` here when a certificate file cannot be read.
    """

    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 10.0, *, address: str | None = None,
                 ca_cert: str | None = None, cert: str | None = None, key: str | None = None) -> None:
        self.timeout = timeout
        if address is not None:
            if ca_cert is None:
                raise ValueError("address %s needs ca_cert: the daemon's TCP listener serves TLS only" % address)
            creds = grpc.ssl_channel_credentials(_read(ca_cert), _read(key) if key else None,
                                                 _read(cert) if cert else None)
            self._channel = grpc.secure_channel(address, creds)
            self.target = address
        else:
            self._channel = grpc.insecure_channel("unix:" + socket)
            self.target = socket
        self._stub = ipam_pb2_grpc.IpamStub(self._channel)  # type: ignore[no-untyped-call]
        self._pools = pools_pb2_grpc.PoolAdminStub(self._channel)  # type: ignore[no-untyped-call]
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
                if key == CODE_METADATA:
                    code = int(value)
            if code is None:
                raise TryAgainLater("ipamd on %s: %s" % (self.target, call.details())) from exc
            raise error_for_code(code, call.details() or "") from exc

    def allocate(self, network_config: dict[str, Any], container_id: str, if_name: str, *,
                 requested: list[str] | None = None, netns: str = "",
                 pod: dict[str, str] | None = None) -> tuple[Allocation, dict[str, Any]]:
        """Allocate one address per range set for the attachment (network = ``network_config["name"]``), all or
        nothing. Idempotent per attachment: a second call returns what the first allocated. ``requested``
        addresses are honoured exactly or the call raises :class:`AddressUnavailable`.

        Returns the allocation and the CNI result (a dict, in the configuration's ``cniVersion``). Raises
        :class:`InvalidConfig`, :class:`PoolExhausted`, :class:`AddressUnavailable`, :class:`TryAgainLater`.
        """
        req = ipam_pb2.AllocateRequest(
            attachment=_attachment(network_config["name"], container_id, if_name),
            network_config_json=json.dumps(network_config), requested_addresses=requested or [], netns=netns,
            pod=pod or {})
        resp = self._call(self._stub.Allocate, req)
        return _from_msg(resp.allocation), json.loads(resp.cni_result_json)

    def release(self, network: str, container_id: str, if_name: str) -> int:
        """Release what the attachment holds; returns how many addresses were released (0 if none). Idempotent.
        Raises :class:`InvalidConfig` for a malformed attachment, :class:`TryAgainLater` when it was not recorded."""
        resp = self._call(self._stub.Release,
                          ipam_pb2.ReleaseRequest(attachment=_attachment(network, container_id, if_name)))
        return int(resp.released)

    def get(self, network: str, container_id: str, if_name: str) -> Allocation | None:
        """The attachment's allocation as stored in etcd (a linearizable read), or ``None``."""
        resp = self._call(self._stub.GetAllocation,
                          ipam_pb2.GetAllocationRequest(attachment=_attachment(network, container_id, if_name)))
        return _from_msg(resp.allocation) if resp.found else None

    def reconcile(self, dry_run: bool = False) -> tuple[list[ReconcileItem], list[ReconcileItem]]:
        """Run the daemon's reconciler now (``dry_run``: only say what it would do): ``(released, waiting)``, the
        attachments released (or that would be) and those seen gone but still within their grace period."""
        resp = self._call(self._stub.Reconcile, ipam_pb2.ReconcileRequest(dry_run=dry_run))
        return ([ReconcileItem(i.key, i.reason, i.wait) for i in resp.released],
                [ReconcileItem(i.key, i.reason, i.wait) for i in resp.waiting])

    def list(self, network: str = "", *, node: str = "", pool: str = "", namespace: str = "",
             pod: str = "") -> list[Allocation]:
        """Every allocation, or those matching every filter given, in key order (read from etcd). See
        :meth:`list_allocations`, which also returns the revision."""
        return self.list_allocations(network, node=node, pool=pool, namespace=namespace, pod=pod)[1]

    def list_allocations(self, network: str = "", *, node: str = "", pool: str = "", namespace: str = "",
                         pod: str = "") -> tuple[int, _Allocations]:
        """``(revision, allocations)``: the attachments of ``network``, allocated by ``node``, holding an address of
        ``pool`` (an id ``net1/0a010200-24`` or ``net1/10.1.2.0/24``), of Kubernetes ``namespace`` and ``pod`` name
        ("" matches all), in handle key order, read from etcd at one revision. Raises :class:`InvalidConfig` for a
        malformed network or pool, :class:`TryAgainLater` when etcd or the daemon cannot be reached."""
        resp = self._call(self._stub.ListAllocations, ipam_pb2.ListAllocationsRequest(
            network=network, node=node, pool=pool, namespace=namespace, pod=pod))
        return int(resp.revision), [_from_msg(m) for m in resp.allocations]

    def pools(self, network: str = "", pool: str = "") -> tuple[int, _Pools]:
        """``(revision, pools)``: every pool record (of ``network``; only ``pool`` when given, an id or
        ``<network>/<CIDR>``) with its size, allocated, free, claimed blocks and utilisation, read from etcd at one
        revision (count-only reads; an IPv6 /64 costs what is allocated in it). Sizes are ints of any size. Raises
        :class:`InvalidConfig` for a malformed pool or one that does not exist, :class:`TryAgainLater`."""
        resp = self._call(self._stub.ListPools, ipam_pb2.ListPoolsRequest(network=network, pool=pool))
        return int(resp.revision), [_pool_from_msg(m) for m in resp.pools]

    def blocks(self, pool: str = "", node: str = "") -> tuple[int, _Blocks, _Nodes]:
        """``(revision, blocks, nodes)``: every claimed block (of ``pool``, owned by ``node`` when given) with its
        owner, size, used, free and borrowed addresses (held by other nodes' attachments) and the owner's addresses
        borrowed elsewhere; and the nodes' figures over the same pools. One etcd revision; costs one range read of
        the address records of each pool read. Raises :class:`InvalidConfig`, :class:`TryAgainLater`."""
        resp = self._call(self._stub.ListBlocks, ipam_pb2.ListBlocksRequest(pool=pool, node=node))
        return (int(resp.revision), [_block_from_msg(m) for m in resp.blocks],
                [_node_from_msg(m) for m in resp.nodes])

    def usage(self) -> tuple[int, _Pools, _Nodes]:
        """``(revision, pools, nodes)``: per-pool and per-node utilisation at one etcd revision (nodes: every node
        owning a block, holding an address, or alive). Raises :class:`TryAgainLater`."""
        resp = self._call(self._stub.Usage, ipam_pb2.UsageRequest())
        return int(resp.revision), [_pool_from_msg(m) for m in resp.pools], [_node_from_msg(m) for m in resp.nodes]

    def status(self) -> Status:
        """The daemon's health, its view of etcd and its pools (answers while the daemon is not ready, too)."""
        r = self._call(self._stub.Status, ipam_pb2.StatusRequest())
        return Status(r.node, r.version, r.ready, r.not_ready_reason, r.not_ready_detail, r.sync_revision,
                      r.watch_revision, r.etcd_reachable, r.etcd_error, r.etcd_endpoint, r.etcd_version,
                      r.etcd_member_id, r.etcd_leader, r.etcd_revision, tuple(r.etcd_alarms),
                      tuple(PoolStatus(p.pool, p.size, p.allocated, p.blocks, tuple(p.own_blocks)) for p in r.pools))

    # -- named pools (ipamd.v1.PoolAdmin, proto/ipamd/v1/pools.proto) -------------------------------------------

    def create_pool(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create a named pool from its spec object (docs/configuration.md "Named pools"); returns it as stored.
        Raises :class:`InvalidConfig` (7) for an invalid spec or a name already taken."""
        return named_pool_json(self._call(self._pools.CreateNamedPool,
                                          pools_pb2.CreateNamedPoolRequest(pool=named_pool_msg(spec))).pool)

    def named_pools(self) -> tuple[int, _Specs]:
        """``(revision, pools)``: every named pool with its usage, read at one etcd revision."""
        resp = self._call(self._pools.ListNamedPools, pools_pb2.ListNamedPoolsRequest())
        return resp.revision, [named_pool_json(m) for m in resp.pools]

    def named_pool(self, name: str) -> dict[str, Any]:
        """One named pool with its usage. Raises :class:`InvalidConfig` (7) when there is none of that name."""
        return named_pool_json(self._call(self._pools.GetNamedPool, pools_pb2.GetNamedPoolRequest(name=name)).pool)

    def drain_pool(self, name: str, undo: bool = False) -> dict[str, Any]:
        """Set the pool ``draining`` (no new allocations; existing kept; field case B27), or ``active`` again with
        ``undo``. Idempotent."""
        return named_pool_json(self._call(self._pools.DrainNamedPool,
                                          pools_pb2.DrainNamedPoolRequest(name=name, undo=undo)).pool)

    def delete_pool(self, name: str) -> int:
        """Delete an empty named pool and its records; returns the number of block records removed. Raises
        :class:`PoolInUse` (120) with the count of live addresses, :class:`InvalidConfig` (7) for an unknown name."""
        return int(self._call(self._pools.DeleteNamedPool, pools_pb2.DeleteNamedPoolRequest(name=name)).blocks_removed)

    def verify(self, network: str = "", container_id: str = "", *, probe_count: int = 1,
               probe_timeout: float = 1.0) -> tuple[str, tuple[AttachmentReport, ...]]:
        """Ask the daemon to look inside the namespaces of its node's attachments (of ``network`` and
        ``container_id`` when given): ``(node, reports)``. Probes: ``probe_count`` echo requests per gateway
        (at most 10), ``probe_timeout`` seconds per reply (at most 5). Read-only. Give the client a ``timeout``
        that covers the probes of every attachment."""
        resp = self._call(self._stub.Verify, ipam_pb2.VerifyRequest(
            network=network, container_id=container_id, probe_count=probe_count, probe_timeout=probe_timeout))
        return resp.node, tuple(_report_from_msg(m) for m in resp.reports)
