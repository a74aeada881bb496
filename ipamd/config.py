"""Daemon configuration: defaults < TOML file (``--config``) < ``IPAMD_*`` environment < flags, parsed once into a
frozen :class:`DaemonConfig`. Flag names are the contract operators and tests rely on (docs/configuration.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence


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
    cni_socket: str = "/run/ipamd/cni.sock"
    grpc_socket: str = "/run/ipamd/ipamd.sock"
    metrics_address: str = ""
    embedded_etcd: str = ""
    request_timeout: float = 8.0
    etcd_timeout: float = 2.0
    node_lease_ttl: int = 30
    log_level: str = "INFO"


_FLOATS = {"request_timeout", "etcd_timeout"}
_INTS = {"node_lease_ttl"}
_HELP = {
    "node_name": "this node's name (default: the hostname)",
    "etcd_endpoints": "comma-separated etcd client URLs; the client fails over between them",
    "etcd_prefix": "key prefix of all ipamd keys (default /ipamd/v1/)",
    "etcd_ca_cert": "CA certificate for https endpoints",
    "etcd_cert": "client certificate for etcd",
    "etcd_key": "client key for etcd",
    "etcd_user": "etcd user (with --etcd-password)",
    "etcd_password": "etcd password",
    "cni_socket": "unix socket ipamd-cni talks to (default /run/ipamd/cni.sock)",
    "grpc_socket": "unix socket of the gRPC API and health service (default /run/ipamd/ipamd.sock)",
    "metrics_address": "host:port of the Prometheus /metrics endpoint (off when empty)",
    "embedded_etcd": "start a one-member etcd with its data in DIR, stopped with the daemon (demo, single machine)",
    "request_timeout": "deadline of one request including retries, seconds (default 8)",
    "etcd_timeout": "deadline of one etcd call, seconds (default 2)",
    "node_lease_ttl": "TTL of the node liveness lease, seconds (default 30)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def _coerce(name: str, value: Any, where: str) -> Any:
    try:
        if name in _FLOATS:
            return float(value)
        if name in _INTS:
            return int(value)
    except (TypeError, ValueError):
        raise SystemExit("ipamd: %s: %s=%r is not a number" % (where, name, value)) from None
    if name == "etcd_endpoints" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise SystemExit("ipamd: %s: %s=%r is not a string" % (where, name, value))
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ipamd", description="ipamd: per-node IPAM daemon backed by etcd. "
                                "Subcommand: 'ipamd install-cni DIR' installs the CNI plugin.")
    p.add_argument("--config", help="TOML file with the same keys as the flags (snake_case)")
    for f in fields(DaemonConfig):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=_HELP.get(f.name),
                       metavar="DIR" if f.name == "embedded_etcd" else None)
    return p


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Parse ``argv`` (without the program name) with the file and ``environ`` (default ``os.environ``).

    Raises ``SystemExit`` with a message naming the bad key or value.
    """
    environ = os.environ if environ is None else environ
    args = parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    names = {f.name for f in fields(DaemonConfig)}
    if args.config:
        try:
            with open(args.config, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit("ipamd: cannot read config %s: %s" % (args.config, exc)) from None
        for key, value in doc.items():
            if key not in names:
                raise SystemExit("ipamd: %s: unknown key %r" % (args.config, key))
            values[key] = _coerce(key, value, args.config)
    for name in names:
        env_value = environ.get("IPAMD_" + name.upper())
        if env_value:
            values[name] = _coerce(name, env_value, "IPAMD_" + name.upper())
    for name in names:
        flag = getattr(args, name)
        if flag is not None:
            values[name] = _coerce(name, flag, "--" + name.replace("_", "-"))
    if not values.get("node_name"):
        values["node_name"] = socket.gethostname()
    prefix = values.get("etcd_prefix", "/ipamd/v1/")
    if not prefix.endswith("/"):
        values["etcd_prefix"] = prefix + "/"
    return DaemonConfig(**values)
