"""``ipamctl``: the operator's CLI (docs/ipamctl.md).

Commands:
    ipamctl list [--network NET]                  allocations, via the node's ipamd gRPC API
    ipamctl get NET CONTAINERID IFNAME
    ipamctl release NET CONTAINERID IFNAME        release one attachment (idempotent)
    ipamctl check [etcd options]                  the invariants of the data model, read from etcd
    ipamctl verify (--all | --network NET | --container ID) [-o json]
                                                  look inside this node's attachments' namespaces

``--socket`` (default ``IPAMD_GRPC_SOCKET``, else ``/run/ipamd/ipamd.sock``) picks the daemon. ``check`` takes the
daemon's own etcd settings: ``--config FILE`` (the daemon's TOML), ``IPAMD_ETCD_*`` variables and ``--etcd-*``
flags, with the daemon's precedence. It exits 0 when every invariant holds, 1 otherwise, printing each violation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

_ETCD_FLAGS = ("etcd_endpoints", "etcd_prefix", "etcd_ca_cert", "etcd_cert", "etcd_key", "etcd_user",
               "etcd_password")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="gRPC socket of the node's ipamd (default: $IPAMD_GRPC_SOCKET or /run/ipamd/ipamd.sock)")
    p = argparse.ArgumentParser(prog="ipamctl", parents=[common],
                                description="Operate ipamd: list, get and release allocations; check etcd; verify "
                                "attachments inside their namespaces.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", parents=[common], help="list allocations (prints one line per attachment)")
    ls.add_argument("--network", default="", help="only this network")
    for name in ("get", "release"):
        sp = sub.add_parser(name, parents=[common], help="%s one attachment" % name)
        sp.add_argument("network")
        sp.add_argument("container_id")
        sp.add_argument("if_name")
    ck = sub.add_parser("check", help="check the data-model invariants against etcd")
    ck.add_argument("--config", help="the daemon's TOML file (its etcd_* keys are used)")
    for flag in _ETCD_FLAGS:
        ck.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None)
    _verify_parser(sub, common)
    return p


def _verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                   common: argparse.ArgumentParser) -> None:
    """``ipamctl verify`` (docs/ipamctl.md, docs/namespace-checks.md)."""
    vf = sub.add_parser("verify", parents=[common],
                        help="look inside the network namespaces of this node's attachments (one line each)")
    vf.add_argument("--all", action="store_true", help="every attachment of the daemon's node")
    vf.add_argument("--network", default="", help="only this network")
    vf.add_argument("--container", default="", help="only this container ID")
    vf.add_argument("-o", "--output", choices=("text", "json"), default="text")
    vf.add_argument("--count", type=int, default=1, choices=range(1, 11), metavar="N",
                    help="echo requests per gateway, 1-10 (default 1)")
    vf.add_argument("--probe-timeout", type=float, default=1.0, metavar="SECONDS",
                    help="wait for each echo reply, 0.01-5 s (default 1)")
    vf.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                    help="how long the daemon may take for all attachments (default 120)")


def _verify_line(r: Any) -> str:
    """One attachment of ``ipamctl verify``: status, handle, namespace, then findings and what was seen."""
    a = r.allocation
    seen = ["%s %s" % (a.if_name, r.interface_state or "missing")] if r.netns_exists else []
    if r.interface_state:
        seen.append("addresses %s" % (", ".join(r.addresses) or "none"))
        seen.append("routes %s" % (", ".join(r.routes) or "none"))
    for p in r.probes:
        rtt = " %.2f ms" % (p.rtt_seconds * 1000) if p.received else ""
        seen.append("gateway %s echo %d/%d%s neighbour %s%s" % (p.gateway, p.received, p.sent, rtt, p.neighbour,
                                                               " (%s)" % p.error if p.error else ""))
    details = [str("%s: %s" % (f.reason, f.message)) for f in r.findings] + seen
    return "%s\t%s/%s/%s\tnetns=%s\t%s" % ("OK" if r.ok else "FAIL", a.network, a.container_id, a.if_name,
                                           a.netns or "-", "; ".join(details))


def _verify_json(r: Any) -> dict[str, Any]:
    a = r.allocation
    return {"network": a.network, "containerID": a.container_id, "ifName": a.if_name, "netns": a.netns,
            "ok": r.ok, "findings": [{"reason": f.reason, "message": f.message, "code": f.code} for f in r.findings],
            "netnsExists": r.netns_exists, "interface": r.interface_state, "addresses": list(r.addresses),
            "routes": list(r.routes), "expectedRoutes": list(r.expected_routes),
            "gateways": [{"gateway": p.gateway, "sent": p.sent, "received": p.received, "rttSeconds": p.rtt_seconds,
                          "neighbour": p.neighbour, "error": p.error} for p in r.probes]}


def _verify(args: argparse.Namespace, socket: str) -> int:
    """Exit 0 when every attachment is healthy, 1 when one is not (or ``--container`` matches none), 2 on
    errors (raised to :func:`main`)."""
    from ipamd_client import IpamClient

    if not (args.all or args.network or args.container):
        print("ipamctl verify: say which attachments: --all, --network NET or --container ID", file=sys.stderr)
        return 2
    if not 0.01 <= args.probe_timeout <= 5:
        print("ipamctl verify: --probe-timeout must be 0.01 to 5 seconds", file=sys.stderr)
        return 2
    with IpamClient(socket, timeout=args.timeout) as client:
        node, reports = client.verify(args.network, args.container, probe_count=args.count,
                                      probe_timeout=args.probe_timeout)
    failing = sum(1 for r in reports if not r.ok)
    if args.output == "json":
        print(json.dumps({"node": node, "attachments": [_verify_json(r) for r in reports], "failing": failing},
                         indent=2))
    else:
        for r in reports:
            print(_verify_line(r))
    print("node %s: %d attachment(s) verified, %d failing" % (node, len(reports), failing), file=sys.stderr)
    if args.container and not reports:
        print("ipamctl verify: container %s has no attachment on node %s" % (args.container, node), file=sys.stderr)
        return 1
    return 1 if failing else 0


def _check(args: argparse.Namespace) -> int:
    from . import config
    from .check import check_store
    from .store.etcd import EtcdStore

    argv = ["--config", args.config] if args.config else []
    for flag in _ETCD_FLAGS:
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    try:
        cfg = config.load(argv)
    except config.ConfigError as exc:
        print("ipamctl: %s" % exc, file=sys.stderr)
        return 2
    store = EtcdStore(cfg.etcd_endpoints, cfg.etcd_prefix, ca_cert=cfg.etcd_ca_cert or None,
                      cert=cfg.etcd_cert or None, key=cfg.etcd_key or None, user=cfg.etcd_user or None,
                      password=cfg.etcd_password or None)
    try:
        violations, counts = check_store(store)
    finally:
        store.close()
    print("etcd %s prefix %s: %s" % (cfg.etcd_endpoints, cfg.etcd_prefix,
                                     ", ".join("%s=%d" % kv for kv in counts.items())))
    for v in violations:
        print(v)
    print("OK: all invariants hold" if not violations else "FAILED: %d violation(s)" % len(violations))
    return 0 if not violations else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    socket = getattr(args, "socket", None) or os.environ.get("IPAMD_GRPC_SOCKET") or "/run/ipamd/ipamd.sock"

    from .domain.errors import IpamError

    try:
        if args.cmd == "check":
            return _check(args)
        if args.cmd == "verify":
            return _verify(args, socket)

        from ipamd_client import IpamClient

        with IpamClient(socket) as client:
            if args.cmd == "list":
                allocations = client.list(args.network)
                for a in allocations:
                    print("%s/%s/%s\t%s\tnode=%s" % (a.network, a.container_id, a.if_name,
                                                    ",".join(x.address for x in a.addresses), a.node))
                print("%d attachment(s)" % len(allocations), file=sys.stderr)
            elif args.cmd == "get":
                found = client.get(args.network, args.container_id, args.if_name)
                if found is None:
                    print("not found", file=sys.stderr)
                    return 1
                print(json.dumps({"network": found.network, "containerID": found.container_id,
                                  "ifName": found.if_name, "addresses": [x.address for x in found.addresses],
                                  "node": found.node, "pod": found.pod}, indent=2))
            elif args.cmd == "release":
                print("released %d address(es)" % client.release(args.network, args.container_id, args.if_name))
        return 0
    except IpamError as exc:
        print("ipamctl: error %d: %s" % (exc.cni_code, exc.msg), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
