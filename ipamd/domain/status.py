"""What ``ipamctl status`` shows (the gRPC ``Status`` call, docs/operations.md "Health"), as plain values: the
daemon builds them (ipamd/health.py, ipamd/__main__.py), the client library returns them (client/ipamd_client).
Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One pool in :class:`DaemonStatus`: ``size`` usable addresses, ``allocated`` cluster-wide, ``blocks`` claimed by
    any node, ``own_blocks`` this node's blocks as CIDRs."""

    pool: str
    size: int
    allocated: int
    blocks: int
    own_blocks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What ``ipamctl status`` shows (the gRPC ``Status`` call): readiness with its reason, the revisions of the view,
    what the etcd member in use reports (``etcd_error`` says why it could not be asked), and this node's pools.
    Revisions are etcd revisions; ``etcd_member_id``/``etcd_leader`` are etcd member ids (0: unknown, no leader)."""

    node: str
    version: str
    ready: bool
    not_ready_reason: str
    not_ready_detail: str
    sync_revision: int
    watch_revision: int
    etcd_reachable: bool
    etcd_error: str
    etcd_endpoint: str
    etcd_version: str
    etcd_member_id: int
    etcd_leader: int
    etcd_revision: int
    etcd_alarms: tuple[str, ...]
    pools: tuple[PoolStatus, ...] = field(default_factory=tuple)
