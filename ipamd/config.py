"""Daemon configuration: defaults < TOML file (``--config``) < ``IPAMD_*`` environment < flags, parsed and validated
once into a frozen :class:`DaemonConfig`. Flag names are the contract operators and tests rely on
(docs/configuration.md). A bad setting is one :class:`ConfigError` naming the setting, where it came from and what
is allowed; the daemon prints it on one line and exits with status 2 (field case B54).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .store.base import parse_endpoints


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it (and its source)."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything the daemon needs to start. Times are seconds."""

    node_name: str = ""
    etcd_endpoints: str = "http://127.0.0.1:2379"
    etcd_prefix: str = "/ipamd/v1/"
    etcd_ca_cert: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_user: str = ""
    etcd_password: str = ""
    etcd_password_file: str = ""
    cni_socket: str = "/run/ipamd/cni.sock"
    grpc_socket: str = "/run/ipamd/ipamd.sock"
    socket_group: str = ""
    grpc_address: str = ""
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    grpc_client_ca: str = ""
    metrics_address: str = ""
    embedded_etcd: str = ""
    request_timeout: float = 8.0
    etcd_timeout: float = 2.0
    gc_timeout: float = 300.0
    reconcile_interval: float = 300.0
    reconcile_grace: float = 600.0
    empty_block_release_seconds: float = 600.0
    node_lease_ttl: int = 30
    handle_cache_size: int = 16384
    log_level: str = "INFO"
    log_format: str = "text"
    health_interval: float = 0.0
    health_max_per_round: int = 64
    kubernetes: bool = False
    kubeconfig: str = ""
    kube_timeout: float = 10.0
    kube_pod_cidr_blocks: bool = False
    kube_node_removal_grace: float = 300.0
    node_check: bool = True
    node_netns: str = ""
    node_labels: str = ""


_FLOATS = {"request_timeout", "etcd_timeout", "gc_timeout", "reconcile_interval", "reconcile_grace", "health_interval",
           "kube_timeout", "kube_node_removal_grace", "empty_block_release_seconds"}
_INTS = {"node_lease_ttl", "handle_cache_size", "health_max_per_round"}
_BOOLS = {"kubernetes", "kube_pod_cidr_blocks", "node_check"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
#: Longest ``--kube-node-removal-grace``, seconds (a week).
MAX_NODE_REMOVAL_GRACE = 7 * 86400
#: Longest unix socket path (``sun_path`` is 108 bytes with its terminating NUL).
MAX_SOCKET_PATH = 107
_NODE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_HELP = {
    "node_name": "this node's name (default: NODE_NAME with --kubernetes, else the hostname)",
    "etcd_endpoints": "comma-separated etcd client URLs (http:// or https://); the client fails over between them",
    "etcd_prefix": "key prefix of all ipamd keys (default /ipamd/v1/)",
    "etcd_ca_cert": "CA certificate for https endpoints",
    "etcd_cert": "client certificate for etcd (with --etcd-key)",
    "etcd_key": "client key for etcd (with --etcd-cert)",
    "etcd_user": "etcd user (with --etcd-password)",
    "etcd_password": "etcd password (prefer --etcd-password-file or IPAMD_ETCD_PASSWORD: a flag is visible to "
                     "every local user in the process list)",
    "etcd_password_file": "file whose first line is the etcd password (read at each authentication)",
    "cni_socket": "unix socket ipamd-cni talks to (default /run/ipamd/cni.sock)",
    "grpc_socket": "unix socket of the gRPC API and health service (default /run/ipamd/ipamd.sock)",
    "socket_group": "group (name or number) given access to both sockets (mode 0660, directories the daemon creates "
                    "0750); default: owner only (0600, 0700)",
    "grpc_address": "host:port of an optional gRPC TCP listener (needs --grpc-tls-cert and --grpc-tls-key)",
    "grpc_tls_cert": "server certificate (PEM) of the gRPC TCP listener",
    "grpc_tls_key": "server key (PEM) of the gRPC TCP listener",
    "grpc_client_ca": "CA (PEM) whose client certificates the gRPC TCP listener requires (off when empty)",
    "metrics_address": "host:port of the Prometheus /metrics endpoint (off when empty)",
    "embedded_etcd": "start a one-member etcd with its data in DIR, stopped with the daemon (demo, single machine)",
    "request_timeout": "deadline of one request including retries, seconds (default 8)",
    "etcd_timeout": "deadline of one etcd call, seconds (default 2; at most --request-timeout)",
    "gc_timeout": "budget of one background GC release, seconds (default 300)",
    "reconcile_interval": "seconds between reconciler passes; 0 turns the reconciler off (default 300)",
    "reconcile_grace": "seconds an attachment must stay gone before the reconciler releases it (default 600)",
    "empty_block_release_seconds": "seconds a block this node owns must stay empty (no address, no cooling record) "
                                   "before the node releases it, keeping at least one block per pool; 0: never "
                                   "(default 600)",
    "node_lease_ttl": "TTL of the node liveness lease, whole seconds >= 2 (default 30)",
    "handle_cache_size": "handles kept in memory for one-transaction DELs (default 16384)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text (one line per record, context as key=value) or json (one JSON object per line)",
    "health_interval": "seconds between rounds of the continuous health check of this node's attachments "
                       "(docs/namespace-checks.md); 0 (the default) turns it off",
    "health_max_per_round": "attachments looked at per health round, 1-10000 (default 64)",
    "kubernetes": "Kubernetes mode: watch this node's pods and the cluster's nodes (in-cluster config, or "
                  "--kubeconfig)",
    "kubeconfig": "kubeconfig file for --kubernetes (its current context; default: the pod's in-cluster config)",
    "kube_timeout": "deadline of one Kubernetes API call (connect, and each read of a list), seconds (default 10)",
    "kube_pod_cidr_blocks": "with --kubernetes: claim the blocks inside this node's spec.podCIDRs for it",
    "kube_node_removal_grace": "with --kubernetes: seconds after a node's deletion from the API (seen by this daemon) "
                               "before its addresses and blocks are removed, once its lease has expired too; 0 turns "
                               "automatic node removal off (default 300)",
    "node_check": "refuse ADD into a pool that overlaps the node's own addresses or routes (docs/namespace-checks.md "
                  "\"Node check\"; default true)",
    "node_netns": "network namespace (a path such as /var/run/netns/x) whose addresses and routes the node check "
                  "reads instead of the daemon's own (tests; default: the daemon's own, the host's)",
    "node_labels": "this node's labels as k=v,k2=v2, matched by named pools' nodeSelector (docs/configuration.md "
                   "\"Named pools\"); in Kubernetes mode the Node object's labels are added (these win)",
}


def _coerce(name: str, value: Any, where: str) -> Any:
    if name in _BOOLS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError("%s: %s=%r is not a boolean (true or false)" % (where, name, value))
    try:
        if name in _FLOATS:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if name in _INTS:
            if isinstance(value, (bool, float)):
                raise TypeError
            return int(value)
    except (TypeError, ValueError):
        raise ConfigError("%s: %s=%r is not a%s number" % (where, name, value,
                                                             " whole" if name in _INTS else "")) from None
    if name == "etcd_endpoints" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if name == "node_labels" and isinstance(value, dict):  # TOML: node_labels = {zone = "a"}
        return ",".join("%s=%s" % (k, v) for k, v in value.items())
    if not isinstance(value, str):
        raise ConfigError("%s: %s=%r is not a string" % (where, name, value))
    return value


def parse_listen_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (port 0 picks one) -> ``(host, port)``. Raises :class:`ConfigError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError("%r is not host:port (port 0-65535)" % text)
    return host.strip("[]"), int(port)


def _positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else "must be a number of seconds > 0"


def _socket_path(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value.encode()) > MAX_SOCKET_PATH:
        return "is longer than %d bytes (the unix socket limit)" % MAX_SOCKET_PATH
    return None


def _endpoints(value: str) -> str | None:
    try:
        parse_endpoints(value)
    except ValueError as exc:
        return str(exc)
    return None


def _optional(parse: Callable[[str], object]) -> Callable[[str], str | None]:
    """A check for an optional setting: "" passes, else ``parse(value)`` must not raise :class:`ConfigError`."""
    def check(value: str) -> str | None:
        if not value:
            return None
        try:
            parse(value)
        except ConfigError as exc:
            return str(exc)
        return None
    return check


def resolve_group(value: str) -> int:
    """A group name or number -> its gid. Raises :class:`ConfigError` when no such group exists."""
    import grp

    try:
        return grp.getgrgid(int(value)).gr_gid if value.isdigit() else grp.getgrnam(value).gr_gid
    except (KeyError, OverflowError):
        raise ConfigError("%r is not a group of this system" % value) from None


def _labels(value: str) -> str | None:
    from .domain.errors import InvalidConfig
    from .domain.poolspec import parse_labels

    try:
        parse_labels(value, "node_labels")
    except InvalidConfig as exc:
        return "must be k=v,k2=v2 with Kubernetes label keys and values (%s)" % exc.msg
    return None


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "node_labels": _labels,
    "node_name": lambda v: None if _NODE_RE.fullmatch(v) else
    "must be 1-253 letters, digits, '.', '-' or '_', starting and ending with a letter or digit",
    "etcd_endpoints": _endpoints,
    "etcd_prefix": lambda v: None if v and not any(c.isspace() for c in v) else "must be non-empty, no spaces",
    "cni_socket": _socket_path,
    "grpc_socket": _socket_path,
    "metrics_address": _optional(parse_listen_address),
    "request_timeout": _positive,
    "etcd_timeout": _positive,
    "gc_timeout": _positive,
    "reconcile_interval": lambda v: None if math.isfinite(v) and v >= 0 else "must be seconds >= 0 (0: off)",
    "reconcile_grace": lambda v: None if math.isfinite(v) and v >= 0 else "must be seconds >= 0",
    "empty_block_release_seconds": lambda v: None if math.isfinite(v) and v >= 0 else "must be seconds >= 0 (0: never)",
    "node_lease_ttl": lambda v: None if 2 <= v <= 86400 else "must be whole seconds from 2 to 86400",
    "handle_cache_size": lambda v: None if 0 <= v <= 10_000_000 else "must be 0 to 10000000",
    "log_level": lambda v: None if v.upper() in LOG_LEVELS else "must be one of %s" % ", ".join(LOG_LEVELS),
    "log_format": lambda v: None if v.lower() in LOG_FORMATS else "must be one of %s" % ", ".join(LOG_FORMATS),
    "grpc_address": _optional(parse_listen_address),
    "socket_group": _optional(resolve_group),
    "health_interval": lambda v: None if v == 0 or (math.isfinite(v) and 0.1 <= v <= 86400) else
    "must be 0 (off) or seconds from 0.1 to 86400",
    "health_max_per_round": lambda v: None if 1 <= v <= 10_000 else "must be 1 to 10000",
    "kube_timeout": _positive,
    "kube_node_removal_grace": lambda v: None if v == 0 or (math.isfinite(v) and 1 <= v <= MAX_NODE_REMOVAL_GRACE)
    else "must be 0 (off) or seconds from 1 to %d" % MAX_NODE_REMOVAL_GRACE,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipamd", description="ipamd: per-node IPAM daemon backed by etcd. "
                                "Subcommand: 'ipamd install-cni DIR' installs the CNI plugin.")
    p.add_argument("--config", help="TOML file with the same keys as the flags (snake_case)")
    from .metrics import package_version

    p.add_argument("--version", action="version", version="ipamd " + package_version("ipamd"))
    for f in fields(DaemonConfig):
        if f.name in _BOOLS:  # "--kubernetes" alone is true; "--kubernetes false" is accepted too
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=_HELP.get(f.name),
                           nargs="?", const="true", metavar="BOOL")
            continue
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=_HELP.get(f.name),
                       metavar="DIR" if f.name == "embedded_etcd" else None)
    return p


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Parse ``argv`` (without the program name) with the file and ``environ`` (default ``os.environ``), then
    validate every setting (see :func:`validate`).

    Raises :class:`ConfigError` with a message naming the bad key, its source and what is allowed; argparse's own
    ``SystemExit(2)`` for an unknown flag.
    """
    environ = os.environ if environ is None else environ
    args = parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    names = {f.name for f in fields(DaemonConfig)}
    if args.config:
        try:
            with open(args.config, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("cannot read config %s: %s" % (args.config, exc)) from None
        for key, value in doc.items():
            if key not in names:
                raise ConfigError("%s: unknown key %r" % (args.config, key))
            values[key] = _coerce(key, value, args.config)
            sources[key] = args.config
    for name in names:
        env_value = environ.get("IPAMD_" + name.upper())
        if env_value:
            values[name] = _coerce(name, env_value, "IPAMD_" + name.upper())
            sources[name] = "IPAMD_" + name.upper()
    for name in names:
        flag = getattr(args, name)
        if flag is not None:
            values[name] = _coerce(name, flag, "--" + name.replace("_", "-"))
            sources[name] = "--" + name.replace("_", "-")
    if not values.get("node_name") and values.get("kubernetes") and environ.get("NODE_NAME"):
        values["node_name"] = environ["NODE_NAME"]  # the downward API's spec.nodeName (docs/configuration.md)
        sources["node_name"] = "NODE_NAME"
    if not values.get("node_name"):
        values["node_name"] = socket.gethostname()
        sources["node_name"] = "the hostname"
    prefix = values.get("etcd_prefix", "/ipamd/v1/")
    if prefix and not prefix.endswith("/"):
        values["etcd_prefix"] = prefix + "/"
    cfg = DaemonConfig(**values)
    validate(cfg, sources)
    _validate_kubernetes(cfg, sources, environ)
    return cfg


def validate(cfg: DaemonConfig, sources: Mapping[str, str] | None = None) -> None:
    """Check every setting and the relations between them; raises :class:`ConfigError` for the first bad one,
    naming it (as a flag) and its source."""
    sources = sources or {}

    def fail(name: str, why: str) -> ConfigError:
        where = sources.get(name)
        return ConfigError("--%s%s %s" % (name.replace("_", "-"), " (from %s)" % where if where and
                                          not where.startswith("--") else "", why))

    for name, check in _CHECKS.items():
        why = check(getattr(cfg, name))
        if why is not None:
            raise fail(name, ("%r: " % getattr(cfg, name) if name not in ("etcd_endpoints", "metrics_address")
                              else "") + why)
    if cfg.etcd_timeout > cfg.request_timeout:
        raise fail("etcd_timeout", "%g must not exceed --request-timeout %g (one etcd call must fit in a request)"
                   % (cfg.etcd_timeout, cfg.request_timeout))
    if bool(cfg.etcd_cert) != bool(cfg.etcd_key):
        raise fail("etcd_cert" if cfg.etcd_key else "etcd_key", "is required with --%s"
                   % ("etcd-key" if cfg.etcd_key else "etcd-cert"))
    if cfg.etcd_password and cfg.etcd_password_file:
        raise fail("etcd_password_file", "and --etcd-password are exclusive: give one")
    has_password = bool(cfg.etcd_password or cfg.etcd_password_file)
    if bool(cfg.etcd_user) != has_password:
        raise fail("etcd_password" if cfg.etcd_user else "etcd_user",
                   "is required with --%s" % ("etcd-user" if cfg.etcd_user else "etcd-password"))
    if cfg.gc_timeout < cfg.request_timeout:
        raise fail("gc_timeout", "%g must be at least --request-timeout %g (a GC request waits for its release up "
                   "to the request deadline)" % (cfg.gc_timeout, cfg.request_timeout))
    if cfg.node_lease_ttl < 2 * cfg.etcd_timeout:
        raise fail("node_lease_ttl", "%d must be at least twice --etcd-timeout %g (a keep-alive must fit in the "
                   "lease's life with room for one retry)" % (cfg.node_lease_ttl, cfg.etcd_timeout))
    if cfg.grpc_address and not (cfg.grpc_tls_cert and cfg.grpc_tls_key):
        raise fail("grpc_address", "needs --grpc-tls-cert and --grpc-tls-key: the TCP listener serves TLS only")
    if bool(cfg.grpc_tls_cert) != bool(cfg.grpc_tls_key):
        raise fail("grpc_tls_cert" if cfg.grpc_tls_key else "grpc_tls_key", "is required with --%s"
                   % ("grpc-tls-key" if cfg.grpc_tls_key else "grpc-tls-cert"))
    if cfg.node_netns and not cfg.node_netns.startswith("/"):
        raise fail("node_netns", "%r is not an absolute path" % cfg.node_netns)
    if cfg.grpc_client_ca and not cfg.grpc_address:
        raise fail("grpc_client_ca", "needs --grpc-address (client certificates apply to the TCP listener)")
    secure = any(s for _, _, s in parse_endpoints(cfg.etcd_endpoints))
    if secure and not cfg.etcd_ca_cert:
        raise fail("etcd_ca_cert", "is required for https etcd endpoints")
    for name in ("etcd_ca_cert", "etcd_cert", "etcd_key", "etcd_password_file", "grpc_tls_cert", "grpc_tls_key",
                 "grpc_client_ca"):
        path = getattr(cfg, name)
        if path and not os.access(path, os.R_OK):
            raise fail(name, "%r is not a readable file" % path)


#: A Kubernetes object name (RFC 1123 subdomain), which a node name must be in Kubernetes mode.
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def _validate_kubernetes(cfg: DaemonConfig, sources: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """The Kubernetes settings (docs/configuration.md "Kubernetes mode"): the others need ``--kubernetes``; it needs
    ``--kubeconfig`` (a readable file) or the in-cluster environment, and a node name Kubernetes accepts."""

    def where(name: str) -> str:
        src = sources.get(name)
        return " (from %s)" % src if src and not src.startswith("--") else ""

    for name in ("kubeconfig", "kube_pod_cidr_blocks", "kube_node_removal_grace"):
        if (getattr(cfg, name) if name != "kube_node_removal_grace" else name in sources) and not cfg.kubernetes:
            raise ConfigError("--%s%s needs --kubernetes" % (name.replace("_", "-"), where(name)))
    if not cfg.kubernetes:
        return
    if cfg.kubeconfig and not os.access(cfg.kubeconfig, os.R_OK):
        raise ConfigError("--kubeconfig%s %r is not a readable file" % (where("kubeconfig"), cfg.kubeconfig))
    if not cfg.kubeconfig and not (environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBERNETES_SERVICE_PORT")):
        raise ConfigError("--kubernetes%s needs --kubeconfig outside a pod (KUBERNETES_SERVICE_HOST and "
                          "KUBERNETES_SERVICE_PORT are not set, so there is no in-cluster config)"
                          % where("kubernetes"))
    if not _K8S_NAME_RE.fullmatch(cfg.node_name):
        raise ConfigError("--node-name%s %r is not a Kubernetes node name (lower-case letters, digits, '-' and '.', "
                          "at most 253, starting and ending with a letter or digit)"
                          % (where("node_name"), cfg.node_name))
