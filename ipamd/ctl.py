"""``ipamctl``: the operator's CLI (docs/ipamctl.md).

Commands:
    ipamctl list [--network NET]                  allocations, via the node's ipamd gRPC API
    ipamctl get NET CONTAINERID IFNAME
    ipamctl release NET CONTAINERID IFNAME        release one attachment (idempotent)
    ipamctl check [etcd options]                  the invariants of the data model, read from etcd
    ipamctl status [-o json]                      the daemon's health, its view of etcd, this node's pools

``--socket`` (default ``IPAMD_GRPC_SOCKET``, else ``/run/ipamd/ipamd.sock``) picks the daemon. ``check`` takes the
daemon's own etcd settings: ``--config FILE`` (the daemon's TOML), ``IPAMD_ETCD_*`` variables and ``--etcd-*``
flags, with the daemon's precedence. It exits 0 when every invariant holds, 1 otherwise, printing each violation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipamd_client import IpamClient

_ETCD_FLAGS = ("etcd_endpoints", "etcd_prefix", "etcd_ca_cert", "etcd_cert", "etcd_key", "etcd_user",
               "etcd_password", "etcd_password_file")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="gRPC socket of the node's ipamd (default: $IPAMD_GRPC_SOCKET or /run/ipamd/ipamd.sock)")
    p = argparse.ArgumentParser(prog="ipamctl", parents=[common],
                                description="Operate ipamd: list, get and release allocations; check etcd.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", parents=[common], help="list allocations (prints one line per attachment)")
    ls.add_argument("--network", default="", help="only this network")
    for name in ("get", "release"):
        sp = sub.add_parser(name, parents=[common], help="%s one attachment" % name)
        sp.add_argument("network")
        sp.add_argument("container_id")
        sp.add_argument("if_name")
    st = sub.add_parser("status", parents=[common], help="the daemon's readiness, etcd (reachable, version, leader, "
                        "revision), sync state and this node's pools and blocks")
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    ck = sub.add_parser("check", help="check the data-model invariants against etcd")
    ck.add_argument("--config", help="the daemon's TOML file (its etcd_* keys are used)")
    for flag in _ETCD_FLAGS:
        ck.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None)
    return p


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
                      password=cfg.etcd_password or None, password_file=cfg.etcd_password_file or None)
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


def _status(client: IpamClient, output: str) -> int:
    """``ipamctl status``: print the daemon's Status (docs/operations.md "Health"); exit 0 when it is ready, 1 when
    it is not (so scripts can wait on it)."""
    st = client.status()
    if output == "json":
        print(json.dumps(dataclasses.asdict(st), indent=2))
        return 0 if st.ready else 1
    print("node %s, ipamd %s: %s" % (st.node, st.version, "ready" if st.ready else "NOT READY (%s: %s)"
                                     % (st.not_ready_reason, st.not_ready_detail)))
    if st.etcd_reachable:
        print("etcd %s: version %s, member %x, leader %s, revision %d%s"
              % (st.etcd_endpoint, st.etcd_version, st.etcd_member_id,
                 "%x" % st.etcd_leader if st.etcd_leader else "none", st.etcd_revision,
                 ", ALARMS " + ",".join(st.etcd_alarms) if st.etcd_alarms else ""))
    else:
        print("etcd %s: unreachable: %s" % (st.etcd_endpoint, st.etcd_error))
    print("sync: view read at revision %d, up to date to revision %d" % (st.sync_revision, st.watch_revision))
    for p in st.pools:
        print("pool %s: %d of %d allocated, %d block(s) claimed, %d of them here: %s"
              % (p.pool, p.allocated, p.size, p.blocks, len(p.own_blocks), " ".join(p.own_blocks) or "-"))
    if not st.pools:
        print("no pools yet")
    return 0 if st.ready else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    socket = getattr(args, "socket", None) or os.environ.get("IPAMD_GRPC_SOCKET") or "/run/ipamd/ipamd.sock"

    from .domain.errors import IpamError

    try:
        if args.cmd == "check":
            return _check(args)

        from ipamd_client import IpamClient

        with IpamClient(socket) as client:
            if args.cmd == "status":
                return _status(client, args.output)
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
